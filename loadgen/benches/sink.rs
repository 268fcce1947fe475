//! The sink's per-request CPU path without HTTP: parse a PutRecords body, unpack every
//! record into trades, and run the per-trade checks, as one request task does.
//!
//! Throughput is in trades, so results read as trades/s on one core. Bodies are shaped
//! like the ingestor's: aggregated records of about 256 KiB (its default), four to a
//! request (1 MiB, its default request size), and for contrast plain records, one trade
//! each, 500 to a request.
//!
//! Run: `cargo bench -p tickpipe-loadgen --bench sink`.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use loadgen::sink::{Request, Verifier, decode_trades, parse_request};
use wire::finnhub::Trade;
use wire::kpl::Aggregator;
use wire::record::{Receipt, encode};

const TARGET: Option<&str> = Some("Kinesis_20131202.PutRecords");
const AGGREGATE_BYTES: usize = 256 * 1024;
const SYMBOLS: usize = 50;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// One user record per trade, cycling through `SYMBOLS` symbols, numbered from 0.
fn user_records(n: usize) -> Vec<(String, Vec<u8>)> {
    let rt = now_us();
    (0..n)
        .map(|i| {
            let symbol = format!("SYN:{:04}", i % SYMBOLS);
            let codes = ["1", "12"];
            let trade = Trade {
                symbol: &symbol,
                price: 100.0 + (i % 997) as f64 * 0.01,
                time_ms: rt / 1000,
                volume: (1 + i % 300) as f64,
                conditions: if i.is_multiple_of(3) {
                    codes.into_iter().collect()
                } else {
                    Default::default()
                },
            };
            let mut out = Vec::new();
            let receipt = Receipt { src: "bench-host.1a2b", seq: i as u64, rt_us: rt };
            encode(&mut out, &trade, receipt);
            (symbol, out)
        })
        .collect()
}

/// A PutRecords body of `records` (data, partition key) and the trades it holds.
fn body(records: &[(Vec<u8>, String)]) -> Vec<u8> {
    let records: Vec<_> = records
        .iter()
        .map(|(d, k)| {
            serde_json::json!({"Data": loadgen::sink::encode_base64(d), "PartitionKey": k})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"StreamName": "bench", "Records": records})).unwrap()
}

fn aggregated_body(aggregates: usize) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut trades = 0;
    let mut agg = Aggregator::new();
    let mut pending = user_records(aggregates * 4000).into_iter();
    while out.len() < aggregates {
        let (key, data) = pending.next().expect("enough trades for every aggregate");
        if agg.len_with(&key, data.len()) > AGGREGATE_BYTES {
            let (bytes, first) = agg.finish().unwrap();
            out.push((bytes, first));
        }
        agg.push(&key, &data);
        trades += 1;
    }
    // The trade pushed after the last finish is not in the body.
    trades -= agg.records() as u64;
    (body(&out), trades)
}

fn plain_body(records: usize) -> (Vec<u8>, u64) {
    let out: Vec<_> = user_records(records).into_iter().map(|(k, d)| (d, k)).collect();
    (body(&out), records as u64)
}

/// What one request task does to a body, less placement and HTTP.
fn verify_request(body: &[u8], verifier: &mut Verifier) -> u64 {
    let Ok(Request::PutRecords(put)) = parse_request(TARGET, None, body) else {
        panic!("bench bodies are valid PutRecords")
    };
    let mut trades = Vec::new();
    for record in put.records {
        decode_trades(record.data.into(), &record.partition_key, &mut trades);
    }
    verifier.observe_all(&trades, now_us());
    trades.len() as u64
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sink_verify");
    for (name, (body, trades)) in
        [("aggregated_4x256KiB", aggregated_body(4)), ("plain_500", plain_body(500))]
    {
        let mut check = Verifier::new();
        assert_eq!(verify_request(&body, &mut check), trades);
        assert_eq!(check.totals().duplicates, 0);
        group.throughput(Throughput::Elements(trades));
        group.bench_function(name, |b| {
            // A fresh verifier each time, so every trade is new rather than a duplicate.
            b.iter_batched(
                Verifier::new,
                |mut v| black_box(verify_request(black_box(&body), &mut v)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Frame decoding for frames of 1, 10 and 100 trades, throughput as trades/s. `decode`:
//! the strict scanner the ingestor tries first, simd-json zero-copy (its general path) and
//! serde_json on the same bytes. `decode_encode`: frame to user records, scanner with the
//! numbers copied as text against simd-json with the numbers printed again.
//!
//! `cargo bench -p tickpipe-benches --bench decode`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use wire::finnhub::{Conditions, Frame, Trade, scan, write_trade_frame};
use wire::record::{self, Receipt};

/// A frame shaped like Finnhub's: US equities with condition codes on some trades.
fn frame(trades: usize) -> Vec<u8> {
    let symbols = ["AAPL", "MSFT", "NVDA", "BINANCE:BTCUSDT", "AMZN"];
    let list: Vec<Trade<'_>> = (0..trades)
        .map(|i| Trade {
            symbol: symbols[i % symbols.len()],
            price: 146.76 + i as f64 * 0.01,
            time_ms: 1_628_238_530_221 + i as u64,
            volume: (i % 300 + 1) as f64,
            conditions: if i.is_multiple_of(3) {
                ["1", "24", "12"].into_iter().collect()
            } else {
                Conditions::default()
            },
        })
        .collect();
    let mut out = Vec::new();
    write_trade_frame(&mut out, &list);
    out
}

/// The same shape for serde_json, borrowing strings where it can.
#[derive(Deserialize)]
#[allow(dead_code)]
struct JsonFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    data: Vec<JsonTrade<'a>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct JsonTrade<'a> {
    s: &'a str,
    p: f64,
    t: u64,
    v: f64,
    #[serde(borrow, default)]
    c: Option<Vec<&'a str>>,
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for trades in [1usize, 10, 100] {
        let bytes = frame(trades);
        group.throughput(Throughput::Elements(trades as u64));
        let mut buffers = simd_json::Buffers::default();
        let mut scratch = bytes.clone();
        group.bench_with_input(BenchmarkId::new("simd_json", trades), &bytes, |b, bytes| {
            b.iter(|| {
                // simd-json parses in place, so each run starts from a fresh copy.
                scratch.copy_from_slice(bytes);
                let frame = wire::finnhub::decode_with_buffers(&mut scratch, &mut buffers)
                    .expect("the bench frame is valid");
                std::hint::black_box(&frame);
            })
        });
        group.bench_with_input(BenchmarkId::new("serde_json", trades), &bytes, |b, bytes| {
            b.iter(|| {
                let frame: JsonFrame<'_> =
                    serde_json::from_slice(bytes).expect("the bench frame is valid");
                std::hint::black_box(&frame);
            })
        });
        group.bench_with_input(BenchmarkId::new("scan", trades), &bytes, |b, bytes| {
            b.iter(|| {
                let n = scan::trades(bytes, |t| {
                    std::hint::black_box(t);
                });
                assert_eq!(n, Some(trades), "the bench frame is in the scanner's subset");
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decode_encode");
    let receipt = Receipt { src: "ip-10-0-0-7.7f3a", seq: 81234, rt_us: 1_628_238_530_225_123 };
    for trades in [1usize, 10, 100] {
        let bytes = frame(trades);
        group.throughput(Throughput::Elements(trades as u64));
        let mut out = Vec::new();
        group.bench_with_input(BenchmarkId::new("scan", trades), &bytes, |b, bytes| {
            b.iter(|| {
                out.clear();
                scan::trades(bytes, |t| record::encode_raw(&mut out, t, receipt))
                    .expect("the bench frame is in the scanner's subset");
                std::hint::black_box(&out);
            })
        });
        let mut buffers = simd_json::Buffers::default();
        let mut scratch = bytes.clone();
        group.bench_with_input(BenchmarkId::new("simd_json", trades), &bytes, |b, bytes| {
            b.iter(|| {
                out.clear();
                scratch.copy_from_slice(bytes);
                let frame = wire::finnhub::decode_with_buffers(&mut scratch, &mut buffers)
                    .expect("the bench frame is valid");
                let Frame::Trades(list) = frame else { panic!("the bench frame holds trades") };
                for t in &list {
                    record::encode(&mut out, t, receipt);
                }
                std::hint::black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);

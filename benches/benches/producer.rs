//! The ingestor's CPU path from websocket frame to PutRecords request records: decode,
//! user-record encoding, shard routing and KPL aggregation (MD5 included), with and
//! without aggregation. Network and SDK serialization are not included; the loadgen run
//! reports measure those end to end. Throughput reads as trades/s.
//!
//! `cargo bench -p tickpipe-benches --bench producer`

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ingestor::batcher::{Batch, Batcher, BatcherConfig, ServiceFactory, ShardHandle};
use ingestor::decode::{Decoded, Decoder};
use ingestor::stats::Stats;
use tokio::sync::mpsc;
use wire::finnhub::{Conditions, Trade, write_trade_frame};
use wire::shard::{Shard, ShardMap};

const SHARDS: usize = 8;
const TRADES_PER_FRAME: usize = 10;
const FRAMES: usize = 1000;

/// Frames shaped like Finnhub's, over 50 symbols.
fn frames() -> Vec<Vec<u8>> {
    let symbols: Vec<String> = (0..50).map(|i| format!("SYM{i}")).collect();
    (0..FRAMES)
        .map(|f| {
            let trades: Vec<Trade<'_>> = (0..TRADES_PER_FRAME)
                .map(|i| {
                    let n = f * TRADES_PER_FRAME + i;
                    Trade {
                        symbol: &symbols[n * 7 % symbols.len()],
                        price: 100.0 + (n % 1000) as f64 * 0.01,
                        time_ms: 1_700_000_000_000 + n as u64,
                        volume: (n % 300 + 1) as f64,
                        conditions: if n.is_multiple_of(3) {
                            ["1", "12"].into_iter().collect()
                        } else {
                            Conditions::default()
                        },
                    }
                })
                .collect();
            let mut out = Vec::new();
            write_trade_frame(&mut out, &trades);
            out
        })
        .collect()
}

fn producer(c: &mut Criterion) {
    let frames = frames();
    let mut group = c.benchmark_group("producer");
    group.throughput(Throughput::Elements((FRAMES * TRADES_PER_FRAME) as u64));
    for aggregation in [true, false] {
        let label = if aggregation { "aggregated" } else { "plain" };
        group.bench_function(BenchmarkId::new(label, TRADES_PER_FRAME), |b| {
            let stats = Arc::new(Stats::default());
            let (queues, mut receivers): (Vec<_>, Vec<mpsc::UnboundedReceiver<Batch>>) =
                (0..SHARDS).map(|_| mpsc::unbounded_channel()).unzip();
            let mut queues = queues.into_iter();
            let factory: ServiceFactory = Box::new(move |_: &Shard| ShardHandle {
                queue: queues.next().expect("one queue per shard"),
                task: None,
            });
            let config = BatcherConfig {
                aggregation,
                aggregate_max_bytes: 256 * 1024,
                max_request_bytes: 1024 * 1024,
                linger: Duration::from_secs(3600),
            };
            let mut batcher =
                Batcher::new(config, ShardMap::uniform(SHARDS), factory, stats.clone());
            let (spare_tx, spare_rx) = ingestor::decode::spares(64);
            let mut decoder = Decoder::new("bench.1".into(), stats).with_spares(spare_rx);
            let mut scratch = Vec::new();
            b.iter(|| {
                for frame in &frames {
                    scratch.clear();
                    scratch.extend_from_slice(frame);
                    let mut chunk = decoder.chunk();
                    if let Decoded::Trades(_) = decoder.decode(&mut scratch, 1, &mut chunk) {
                        batcher.route(&chunk);
                    }
                    if let Some(spare) = chunk.recycle() {
                        let _ = spare_tx.try_send(spare);
                    }
                }
                batcher.flush_all();
                for rx in &mut receivers {
                    while let Ok(batch) = rx.try_recv() {
                        std::hint::black_box(batch);
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, producer);
criterion_main!(benches);

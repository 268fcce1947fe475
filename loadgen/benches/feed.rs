//! The feed's cost per trade, two ways.
//!
//! 1. Criterion, in memory: building frames from the synthetic feed's pre-built decks (a
//!    copy and a 13-digit time patch per trade) against encoding the same trades with
//!    `write_trade_frame` each time, as a feed without decks would. Throughput is in
//!    trades, so results read as trades/s on one core.
//! 2. Over a real socket: a feed on a thread of its own (a one-thread runtime) sends to
//!    one websocket client on another thread as fast as that client reads, for a few
//!    seconds per frame size; the feed thread's user + system CPU time comes from
//!    `/proc/thread-self/stat`. Printed as trades per CPU-second of the feed: trades/s per
//!    core, websocket framing and system calls included.
//!
//! Run: `cargo bench -p tickpipe-loadgen --bench feed`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, handshake};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, UPGRADE};
use loadgen::feed::{Feed, FeedConfig, FrameSize, MAX_RATE, SyntheticConfig, SyntheticFrames};
use loadgen::run::{count, thread_cpu_seconds};
use tokio::sync::oneshot;
use wire::finnhub::{ClientMessage, Trade, write_trade_frame};

/// Trades per measured batch.
const BATCH: usize = 10_000;

/// Symbols subscribed, Zipf-skewed as the feed does by default.
const SYMBOLS: [&str; 8] =
    ["AAPL", "MSFT", "NVDA", "AMZN", "TSLA", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "META"];

/// How long each socket measurement sends.
const SOCKET_SECONDS: Duration = Duration::from_secs(3);

/// A fixed time for in-memory frames; any 13-digit millisecond time will do.
const TIME_MS: u64 = 1_712_345_678_901;

fn config(per_frame: usize) -> SyntheticConfig {
    SyntheticConfig {
        rate: MAX_RATE,
        frame_size: FrameSize::fixed(per_frame),
        seed: 1,
        ..SyntheticConfig::default()
    }
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("synthetic_frames");
    group.throughput(Throughput::Elements(BATCH as u64));
    for per_frame in [1, 10, 100] {
        let mut deck = SyntheticFrames::new(&config(per_frame), &SYMBOLS);
        group.bench_function(format!("prebuilt/{per_frame}_per_frame"), |b| {
            b.iter(|| black_box(deck.next(BATCH, TIME_MS).1))
        });

        // The same trades encoded afresh each time, for contrast.
        let (bytes, _) = deck.next(BATCH, TIME_MS);
        let text = String::from_utf8(bytes.to_vec()).expect("frames are JSON text");
        let mut buffers: Vec<Vec<u8>> =
            text.split_inclusive(r#""type":"trade"}"#).map(|f| f.as_bytes().to_vec()).collect();
        let frames: Vec<Vec<Trade<'_>>> = buffers
            .iter_mut()
            .map(|buf| match wire::finnhub::decode(buf) {
                Ok(wire::finnhub::Frame::Trades(trades)) => trades,
                other => panic!("not a trade frame: {other:?}"),
            })
            .collect();
        let mut out = Vec::with_capacity(text.len());
        group.bench_function(format!("encoded/{per_frame}_per_frame"), |b| {
            b.iter(|| {
                out.clear();
                for trades in &frames {
                    write_trade_frame(&mut out, trades);
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frames);

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// Reads and discards frames until `until`; returns how many arrived.
async fn read_for(addr: SocketAddr, until: Instant) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the feed");
    let req = hyper::Request::builder()
        .uri(format!("http://{addr}/"))
        .header("Host", addr.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await.expect("handshake");
    let mut ws = FragmentCollector::new(ws);
    for symbol in SYMBOLS {
        let msg = ClientMessage::Subscribe(symbol).to_json();
        ws.write_frame(Frame::text(Payload::Borrowed(msg.as_bytes()))).await.expect("subscribe");
    }
    let mut frames = 0;
    while Instant::now() < until {
        let frame = ws.read_frame().await.expect("the feed keeps sending");
        if frame.opcode == OpCode::Text {
            frames += 1;
        }
    }
    frames
}

/// Runs the feed flat out to one client for [`SOCKET_SECONDS`]; returns trades sent and
/// the feed thread's CPU seconds.
fn socket_run(per_frame: usize) -> (u64, f64) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let addr = listener.local_addr().expect("bound address");
    let feed = Feed::new(FeedConfig::synthetic(config(per_frame))).expect("valid config");
    let handle = feed.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let feed_thread = std::thread::spawn(move || {
        runtime().block_on(async move {
            let cpu_before = thread_cpu_seconds().expect("/proc/thread-self/stat");
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            feed.serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("the feed serves");
            thread_cpu_seconds().expect("/proc/thread-self/stat") - cpu_before
        })
    });
    let until = Instant::now() + SOCKET_SECONDS;
    let client = std::thread::spawn(move || runtime().block_on(read_for(addr, until)));
    client.join().expect("the client thread");
    let sent = handle.stats().trades_sent;
    let _ = stop.send(());
    let cpu = feed_thread.join().expect("the feed thread");
    (sent, cpu)
}

fn main() {
    benches();
    // `cargo test --benches` runs this binary too; the socket runs are for `cargo bench`.
    if std::env::args().any(|a| a == "--bench") {
        println!("\nfeed over a websocket, one client, {SOCKET_SECONDS:?} per row:");
        println!(
            "{:>16} {:>14} {:>10} {:>22}",
            "trades/frame", "trades sent", "feed CPU", "trades/s per core"
        );
        for per_frame in [1, 10, 100] {
            let (sent, cpu) = socket_run(per_frame);
            let per_core = if cpu > 0.0 { (sent as f64 / cpu) as u64 } else { 0 };
            println!("{per_frame:>16} {:>14} {:>9.2}s {:>22}", count(sent), cpu, count(per_core));
        }
    }
    Criterion::default().configure_from_args().final_summary();
}

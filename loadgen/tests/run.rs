//! `loadgen run` wired end to end: its feed, its sink, and in place of the ingestor a
//! scripted client in this test that reads the feed's websocket and writes every trade to
//! the sink with `aws-sdk-kinesis`, as the ingestor does.
//!
//! Why not the real ingestor: it is another crate's binary, and Cargo only builds the
//! binaries of the package under test for its tests (`CARGO_BIN_EXE_*`). The scripted
//! client makes the test exact instead: it knows which trades it lost or sent twice on
//! purpose, and the report must say the same. Starting, measuring and stopping a child
//! process is tested in `run/child.rs` with a shell child, and a child that exits at once
//! is tested here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, handshake};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, UPGRADE};
use hyper_util::rt::TokioIo;
use loadgen::feed::{Capture, FeedConfig, FrameSize, ReplayConfig, Speed, SyntheticConfig};
use loadgen::run::{IngestorLaunch, Run, RunConfig, RunError, RunReport, Until};
use loadgen::sink::SinkConfig;
use tokio::net::TcpStream;
use wire::finnhub::{ClientMessage, Frame as FinnhubFrame, decode};
use wire::record::{Receipt, encode};

const SYMBOLS: [&str; 3] = ["AAPL", "MSFT", "NVDA"];

/// Longest wait for a run; generous for a loaded 2-core machine.
const RUN_WAIT: Duration = Duration::from_secs(60);

fn config(trades: u64) -> RunConfig {
    RunConfig {
        feed: FeedConfig::synthetic(SyntheticConfig {
            rate: 4_000.0,
            frame_size: FrameSize { min: 1, max: 10 },
            seed: 17,
            ..SyntheticConfig::default()
        }),
        feed_listen: "127.0.0.1:0".into(),
        sink: SinkConfig { limits: None, ..SinkConfig::default() },
        sink_listen: "127.0.0.1:0".into(),
        ingestor: None,
        until: Until { duration: None, trades: Some(trades) },
        settle: Duration::from_secs(5),
        warmup: Duration::ZERO,
        stop_timeout: Duration::from_secs(10),
        progress_every: Duration::from_millis(200),
        print_progress: true,
    }
}

/// What the scripted client did on purpose.
#[derive(Debug, Default, Clone, Copy)]
struct Forwarded {
    trades: u64,
    skipped: u64,
    doubled: u64,
}

/// How the scripted client misbehaves: skip every `skip_every`-th trade, send every
/// `double_every`-th twice (0 for never).
#[derive(Debug, Clone, Copy)]
struct Mischief {
    skip_every: u64,
    double_every: u64,
}

const HONEST: Mischief = Mischief { skip_every: 0, double_every: 0 };

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

fn kinesis(sink: SocketAddr) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(format!("http://{sink}"))
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// Reads the feed until it closes and writes every trade to the sink, one PutRecords per
/// frame, as plain user records; misbehaves as told.
async fn scripted_ingestor(
    feed: SocketAddr,
    sink: SocketAddr,
    symbols: Vec<String>,
    mischief: Mischief,
) -> Forwarded {
    let client = kinesis(sink);
    let stream = TcpStream::connect(feed).await.unwrap();
    let req = hyper::Request::builder()
        .uri(format!("http://{feed}/"))
        .header("Host", feed.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await.unwrap();
    let mut ws: FragmentCollector<TokioIo<hyper::upgrade::Upgraded>> = FragmentCollector::new(ws);
    for symbol in &symbols {
        let msg = ClientMessage::Subscribe(symbol).to_json();
        ws.write_frame(Frame::text(Payload::Borrowed(msg.as_bytes()))).await.unwrap();
    }
    let mut done = Forwarded::default();
    let mut seq = 0u64;
    loop {
        let frame = ws.read_frame().await.expect("the feed closes cleanly");
        match frame.opcode {
            OpCode::Close => return done,
            OpCode::Text => {}
            _ => continue,
        }
        let mut payload = frame.payload.to_vec();
        let Ok(FinnhubFrame::Trades(trades)) = decode(&mut payload) else { continue };
        let mut entries = Vec::new();
        for trade in &trades {
            seq += 1;
            done.trades += 1;
            if mischief.skip_every > 0 && seq.is_multiple_of(mischief.skip_every) {
                done.skipped += 1;
                continue;
            }
            let copies = if mischief.double_every > 0 && seq.is_multiple_of(mischief.double_every) {
                done.doubled += 1;
                2
            } else {
                1
            };
            let mut data = Vec::new();
            let rt_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64;
            encode(&mut data, trade, Receipt { src: "scripted.test", seq, rt_us });
            for _ in 0..copies {
                let entry = PutRecordsRequestEntry::builder()
                    .partition_key(trade.symbol)
                    .data(Blob::new(data.clone()))
                    .build()
                    .unwrap();
                entries.push(entry);
            }
        }
        if entries.is_empty() {
            continue;
        }
        let out = client
            .put_records()
            .stream_name("tickpipe-trades")
            .set_records(Some(entries))
            .send()
            .await
            .expect("the sink accepts the batch");
        assert_eq!(out.failed_record_count(), Some(0), "the sink has no limits in this test");
    }
}

/// Binds a run, starts the scripted client against it, executes, and returns both sides.
async fn run_with_client(config: RunConfig, mischief: Mischief) -> (RunReport, Forwarded) {
    let run = Run::bind(config).await.unwrap();
    let (feed, sink) = (run.feed_addr(), run.sink_addr());
    let symbols = SYMBOLS.iter().map(|s| (*s).to_owned()).collect();
    let client = tokio::spawn(scripted_ingestor(feed, sink, symbols, mischief));
    let report = tokio::time::timeout(RUN_WAIT, run.execute(std::future::pending()))
        .await
        .expect("the run finished in time")
        .unwrap();
    let forwarded = client.await.unwrap();
    (report, forwarded)
}

#[tokio::test]
async fn every_trade_forwarded_is_counted_once() {
    let (report, forwarded) = run_with_client(config(3_000), HONEST).await;
    assert!(report.trades_sent >= 3_000, "{report:#?}");
    assert_eq!(forwarded.trades, report.trades_sent, "the client saw every trade sent");
    assert_eq!(report.trades_received, report.trades_sent);
    assert_eq!((report.lost, report.duplicated, report.reordered), (0, 0, 0));
    assert!(report.lossless());
    assert_eq!(report.latency_us.samples, report.trades_received);
    assert!(report.load_secs > 0.0 && report.sent_per_sec > 0.0);
    assert!(report.feed.cpu_seconds >= 0.0);
    assert!(report.ingestor.is_none());
    assert_eq!(report.feed_stats.trades_sent, report.trades_sent);
    assert_eq!(report.source, "synthetic");

    let table = report.table();
    for row in ["trades sent", "lost", "latency p99.9", "feed trades/s per core"] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["lost"], 0);
    assert_eq!(json["trades_sent"], report.trades_sent);
    assert!(json["latency_us"]["p99.9"].is_u64(), "{json}");
    assert!(json["sink"]["records_written"].as_u64().unwrap() > 0, "{json}");
}

#[tokio::test]
async fn a_warm_up_leaves_early_trades_out_of_latency_only() {
    let config = RunConfig {
        until: Until { duration: Some(Duration::from_millis(1500)), trades: None },
        warmup: Duration::from_millis(500),
        ..config(1)
    };
    let (report, _) = run_with_client(config, HONEST).await;
    assert!(report.lossless(), "{report:#?}");
    let samples = report.latency_us.samples;
    assert!(samples > 0, "trades after the warm-up are measured");
    assert!(samples < report.trades_received, "{samples} of {}", report.trades_received);
    assert_eq!(report.latency_warmup_secs, 0.5);
    assert!(report.table().contains("latency warm-up left out"));
}

#[test]
fn a_warm_up_as_long_as_the_run_is_refused() {
    let config = RunConfig {
        until: Until { duration: Some(Duration::from_secs(2)), trades: None },
        warmup: Duration::from_secs(2),
        ..config(1)
    };
    let err = config.validate().unwrap_err();
    assert!(matches!(err, RunError::InvalidConfig { flag: "--warmup", .. }), "{err}");
    assert!(err.to_string().contains("shorter than --duration"), "{err}");
}

#[tokio::test]
async fn lost_and_doubled_trades_show_in_the_report() {
    let mischief = Mischief { skip_every: 10, double_every: 7 };
    let (report, forwarded) = run_with_client(config(2_000), mischief).await;
    assert!(forwarded.skipped > 0 && forwarded.doubled > 0, "{forwarded:?}");
    assert_eq!(forwarded.trades, report.trades_sent);
    assert_eq!(report.lost, forwarded.skipped, "{report:#?}");
    assert_eq!(report.duplicated, forwarded.doubled, "{report:#?}");
    assert_eq!(report.trades_received, report.trades_sent - forwarded.skipped);
    assert!(!report.lossless());
}

#[tokio::test]
async fn a_replay_run_tells_the_ingestor_the_capture_symbols() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/synthetic-capture.tsv");
    let capture = Capture::load(std::path::Path::new(path)).unwrap();
    let symbols = capture.symbols().to_vec();
    let trades = capture.trade_count() as u64;
    let replay = ReplayConfig { capture: Arc::new(capture), speed: Speed::Max, looped: false };
    let config = RunConfig {
        feed: FeedConfig::replay(replay),
        // The whole capture, once: the feed stops sending when the capture ends.
        until: Until { duration: Some(Duration::from_secs(3)), trades: Some(trades) },
        ..config(1)
    };
    let run = Run::bind(config).await.unwrap();
    let launch = IngestorLaunch { program: "ingestor".into(), extra_args: vec![], log: None };
    let command = run.ingestor_command(&launch);
    let at = command.args.iter().position(|a| a == "--symbols").expect("--symbols passed");
    assert_eq!(command.args[at + 1], symbols.join(","));
    assert!(command.args.windows(2).any(|w| w == ["--url", &format!("ws://{}", run.feed_addr())]));
    assert!(command.args.windows(2).any(|w| w == ["--metrics-listen", "off"]));
    let endpoint = ("AWS_ENDPOINT_URL_KINESIS".to_owned(), format!("http://{}", run.sink_addr()));
    assert!(command.env.contains(&endpoint), "{:?}", command.env);
    assert!(command.env_remove.iter().any(|k| k == "FINNHUB_TOKEN"));

    let (feed, sink) = (run.feed_addr(), run.sink_addr());
    let client = tokio::spawn(scripted_ingestor(feed, sink, symbols, HONEST));
    let report =
        tokio::time::timeout(RUN_WAIT, run.execute(std::future::pending())).await.unwrap().unwrap();
    client.await.unwrap();
    assert_eq!(report.source, "replay");
    assert_eq!(report.trades_sent, trades);
    assert_eq!(report.lost, 0);
}

#[tokio::test]
async fn an_ingestor_that_exits_at_once_ends_the_run_with_an_error() {
    let config = RunConfig {
        ingestor: Some(IngestorLaunch { program: "false".into(), extra_args: vec![], log: None }),
        until: Until { duration: Some(Duration::from_secs(30)), trades: None },
        ..config(1)
    };
    let run = Run::bind(config).await.unwrap();
    let err = tokio::time::timeout(RUN_WAIT, run.execute(std::future::pending()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RunError::IngestorExited(_)), "{err}");
    assert!(!err.is_retryable());
}

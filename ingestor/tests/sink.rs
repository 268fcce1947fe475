//! The ingestor against `loadgen sink`, which enforces Kinesis' shard limits and injects
//! the failures no local Kinesis produces: partial failures, 5xx answers, requests slow
//! enough to time out, and a reshard in the middle of the run.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use clap::Parser;
use ingestor::config::IngestorConfig;
use ingestor::stats::Stats;
use loadgen::feed::{Capture, Feed, FeedConfig, FrameSize, ReplayConfig, Speed, SyntheticConfig};
use loadgen::sink::{FaultConfig, ShardLimits, Sink, SinkConfig, SinkHandle};
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: IngestorConfig,
}

const SYMBOLS: &str = "AAPL,MSFT,NVDA,TSLA,AMZN,META,GOOGL,BINANCE:BTCUSDT,BINANCE:ETHUSDT,SPY";

struct Running {
    feed_addr: std::net::SocketAddr,
    sink_addr: std::net::SocketAddr,
    sink: SinkHandle,
    stop: Vec<oneshot::Sender<()>>,
}

/// Starts a synthetic feed at `rate` trades/s and a sink, both on port 0.
async fn start(rate: f64, sink_config: SinkConfig) -> anyhow::Result<Running> {
    let feed = FeedConfig::synthetic(SyntheticConfig {
        rate,
        frame_size: FrameSize { min: 1, max: 20 },
        seed: 7,
        ..SyntheticConfig::default()
    });
    start_with(feed, sink_config).await
}

/// Starts a feed and a sink, both on port 0.
async fn start_with(feed: FeedConfig, sink_config: SinkConfig) -> anyhow::Result<Running> {
    let feed = Feed::new(feed)?;
    let feed_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let feed_addr = feed_listener.local_addr()?;
    let (stop_feed, feed_stopped) = oneshot::channel::<()>();
    tokio::spawn(feed.serve(feed_listener, async {
        let _ = feed_stopped.await;
    }));
    let sink = Sink::new(sink_config)?;
    let handle = sink.handle();
    let sink_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink_listener.local_addr()?;
    let (stop_sink, sink_stopped) = oneshot::channel::<()>();
    tokio::spawn(sink.serve(sink_listener, async {
        let _ = sink_stopped.await;
    }));
    Ok(Running { feed_addr, sink_addr, sink: handle, stop: vec![stop_feed, stop_sink] })
}

fn config(r: &Running, extra: &[&str]) -> anyhow::Result<IngestorConfig> {
    config_for(r, SYMBOLS, extra)
}

fn config_for(r: &Running, symbols: &str, extra: &[&str]) -> anyhow::Result<IngestorConfig> {
    let url = format!("ws://{}/", r.feed_addr);
    let mut args = vec!["ingestor", "--url", &url, "--symbols", symbols];
    args.extend_from_slice(&["--metrics-listen", "off", "--linger", "10ms"]);
    args.extend_from_slice(extra);
    Ok(Cli::try_parse_from(args)?.config)
}

async fn kinesis_sdk(sink: std::net::SocketAddr) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(format!("http://{sink}"))
        .load()
        .await
}

/// Runs the ingestor in-process until the sink has seen `trades` trades, then stops it
/// and returns its stats once it has flushed.
async fn ingest_until(
    r: &Running,
    config: IngestorConfig,
    trades: u64,
) -> anyhow::Result<Arc<Stats>> {
    let sdk = kinesis_sdk(r.sink_addr).await;
    let client = ingestor::kinesis_client(&sdk, &config);
    let stats = Arc::new(Stats::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ingestor::run(config, client, stats.clone(), async {
        let _ = stopped.await;
    }));
    r.sink.wait_for_trades(trades, Duration::from_secs(120)).await;
    let _ = stop.send(());
    let report = task.await??;
    assert!(report.summary.lossless(), "{:?}", report.summary);
    // Every byte counted in was counted out again.
    assert_eq!(stats.buffered_bytes.load(Relaxed), 0, "buffer accounting balances");
    Ok(stats)
}

/// Partial failures, 5xx answers, timeouts and a reshard, all in one run: every received
/// trade arrives, no symbol's trades are reordered, and duplicates appear only where a
/// request timed out on the ingestor's side but was written by the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_and_reorder_nothing() -> anyhow::Result<()> {
    let r = start(
        4000.0,
        SinkConfig {
            stream: "tickpipe-trades".into(),
            shards: 4,
            limits: Some(ShardLimits::default()),
            faults: FaultConfig {
                fail_rate: 0.05,
                error_rate: 0.05,
                slow_rate: 0.03,
                slow_delay: Duration::from_millis(700),
                reshard_after: Some(Duration::from_secs(2)),
                seed: 11,
            },
        },
    )
    .await?;
    let config =
        config(&r, &["--put-timeout", "300ms", "--retry-min", "10ms", "--retry-max", "200ms"])?;
    let stats = ingest_until(&r, config, 16_000).await?;
    let report = r.sink.report();
    let s = stats.summary();
    let distinct = report.stats.trades - report.stats.duplicates;
    assert_eq!(distinct, s.received, "every received trade arrived: {report:#?}");
    assert_eq!(report.missing, 0);
    assert_eq!(report.stats.reorders, 0, "no symbol's trades were reordered");
    assert!(report.stats.records_failed > 0 && report.stats.requests_failed > 0, "faults hit");
    assert!(report.stats.reshards > 0, "the sink resharded");
    assert!(stats.shard_mispredictions.load(Relaxed) > 0, "the reshard was noticed");
    assert!(stats.records_retried.load(Relaxed) > 0);
    if report.stats.duplicates > 0 {
        // Only a request the ingestor gave up on can have been written twice.
        assert!(stats.requests_uncertain.load(Relaxed) > 0);
        assert!(report.stats.delayed_records_written > 0);
    }
    for stop in r.stop {
        let _ = stop.send(());
    }
    Ok(())
}

/// Fed faster than its two shards accept, the ingestor paces itself: it applies
/// backpressure to the websocket and the sink, enforcing Kinesis' real limits, throttles
/// under 1% of the records. One record per trade here, so the 1,000 records/s limit is
/// the one that binds, and there are thousands of records to count throttles over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_stream_is_rarely_throttled() -> anyhow::Result<()> {
    let r = start(
        6_000.0,
        SinkConfig {
            stream: "tickpipe-trades".into(),
            shards: 2,
            limits: Some(ShardLimits::default()),
            faults: FaultConfig::default(),
        },
    )
    .await?;
    // Two shards take about 2,000 records/s, a third of what the feed sends. A small
    // buffer keeps the backlog, and so the flush at the end, to a second or two.
    let config = config(
        &r,
        &["--aggregation", "off", "--max-frame-bytes", "65536", "--max-buffered-bytes", "524288"],
    )?;
    let stats = ingest_until(&r, config, 12_000).await?;
    let report = r.sink.report();
    let put = report.stats.records_written;
    let throttled = report.stats.records_throttled;
    assert!(put >= 12_000);
    assert!(
        (throttled as f64) < 0.01 * (put + throttled) as f64,
        "{throttled} throttled of {} records",
        put + throttled
    );
    assert!(stats.backpressure_waits.load(Relaxed) > 0, "the websocket was slowed down");
    assert_eq!(report.stats.trades - report.stats.duplicates, stats.summary().received);
    for stop in r.stop {
        let _ = stop.send(());
    }
    Ok(())
}

/// SIGTERM to the real binary under load: it stops reading, flushes, exits 0, and the
/// sink holds exactly the trades the ingestor says it received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() -> anyhow::Result<()> {
    let r = start(
        20_000.0,
        SinkConfig {
            stream: "tickpipe-trades".into(),
            shards: 8,
            limits: None,
            faults: FaultConfig::default(),
        },
    )
    .await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ingestor"))
        .args(["--url", &format!("ws://{}/", r.feed_addr), "--symbols", SYMBOLS])
        .args(["--metrics-listen", "off", "--log-json", "--linger", "50ms"])
        .env("AWS_ENDPOINT_URL_KINESIS", format!("http://{}", r.sink_addr))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    r.sink.wait_for_trades(20_000, Duration::from_secs(60)).await;
    let pid = child.id().expect("the child is running") as i32;
    // SAFETY: kill(2) with a pid we spawned and still own; no memory is involved.
    let rc = unsafe { libc_kill(pid, SIGTERM) };
    assert_eq!(rc, 0, "sending SIGTERM");

    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut received = None;
    while let Some(line) = lines.next_line().await? {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("ingestor stopped")) {
            received = v["fields"]["received"].as_u64();
        }
    }
    let status = child.wait().await?;
    assert!(status.success(), "the ingestor exits 0 when nothing was lost: {status}");
    let received = received.expect("the ingestor logs what it received");
    assert!(received >= 20_000);
    let report = r.sink.report();
    assert_eq!(report.stats.trades - report.stats.duplicates, received);
    assert_eq!(report.missing, 0);
    for stop in r.stop {
        let _ = stop.send(());
    }
    Ok(())
}

const SIGTERM: i32 = 15;

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The capture shipped with the repository, replayed at full speed through the ingestor
/// into the sink: every trade in it arrives once, in order per symbol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_capture_replays_through_the_ingestor_intact() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../loadgen/testdata/synthetic-capture.tsv");
    let capture = Arc::new(Capture::load(&path)?);
    let expected = capture.trade_count() as u64;
    assert!(expected > 1000, "the capture holds a real run's worth of trades");
    let symbols = capture.symbols().join(",");
    let feed = FeedConfig::replay(ReplayConfig { capture, speed: Speed::Max, looped: false });
    let sink = SinkConfig {
        stream: "tickpipe-trades".into(),
        shards: 4,
        limits: Some(ShardLimits::default()),
        faults: FaultConfig::default(),
    };
    let r = start_with(feed, sink).await?;
    let config = config_for(&r, &symbols, &[])?;
    let stats = ingest_until(&r, config, expected).await?;
    let report = r.sink.report();
    assert_eq!(stats.summary().received, expected, "the ingestor read every captured trade");
    assert_eq!(report.stats.trades, expected);
    assert_eq!(report.stats.duplicates, 0);
    assert_eq!(report.stats.reorders, 0);
    assert_eq!(report.missing, 0);
    assert_eq!(report.stats.undecodable_user_records, 0);
    for stop in r.stop {
        let _ = stop.send(());
    }
    Ok(())
}

/// The batches of different shards travel together: with six of eight shards busy, the
/// sink sees several Kinesis records per PutRecords request (one per shard and request
/// would be 1.0), and nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_share_requests() -> anyhow::Result<()> {
    let r = start(
        5_000.0,
        SinkConfig {
            stream: "tickpipe-trades".into(),
            shards: 8,
            limits: Some(ShardLimits::default()),
            faults: FaultConfig::default(),
        },
    )
    .await?;
    let config = config(&r, &[])?;
    let stats = ingest_until(&r, config, 10_000).await?;
    let report = r.sink.report();
    let (records, requests) = (report.stats.records_written, report.stats.put_requests);
    assert_eq!(requests, stats.put_requests.load(Relaxed), "every request was counted");
    assert!(records >= 2 * requests, "{records} records in {requests} requests");
    assert_eq!(report.stats.reorders, 0);
    assert_eq!(report.stats.trades - report.stats.duplicates, stats.summary().received);
    for stop in r.stop {
        let _ = stop.send(());
    }
    Ok(())
}

//! The tickpipe ingestor: Finnhub websocket in, Kinesis PutRecords out.
//!
//! ```text
//! source (tokio task)        batcher (thread)            service (task per shard)
//! websocket -> decode  ==>   route by shard -> pack  ->  PutRecords, retry failures
//!              crossbeam      KPL aggregate / batch       backoff + jitter, in order
//!              (bounded)                  tokio mpsc (bounded)
//! ```
//!
//! - `config`: flags and their validation.
//! - `source`: websocket connection, subscription, reconnects, silence watchdog.
//! - `decode`: frames to user records, zero-copy, no allocation per trade.
//! - `batcher`: shard prediction, aggregation, request building, linger.
//! - `service`: PutRecords per shard with retries of only the failed records.
//! - `shards`: the shard map from ListShards.
//! - `retry`: exponential backoff with full jitter.
//! - `stats` and `metrics`: counters, latency histogram and the Prometheus endpoint.
//!
//! Every stage is bounded, so when Kinesis falls behind the websocket is no longer read
//! and memory stays flat. On shutdown the source stops first, the batcher flushes
//! everything it holds, and the services drain their queues until acknowledged or until
//! the deadline; [`Report`] then says what was sent and what was not.

pub mod batcher;
pub mod config;
pub mod decode;
pub mod metrics;
pub mod retry;
pub mod service;
pub mod shards;
pub mod source;
pub mod stats;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::batcher::{Batcher, BatcherConfig};
use crate::config::{Aggregation, IngestorConfig, Listen};
use crate::decode::Decoder;
use crate::retry::Backoff;
use crate::service::ShardService;
use crate::source::{FeedUrl, Source};
use crate::stats::{Dropped, Stats, Summary};

/// Batches queued per shard ahead of its service. Small on purpose: a deep queue only
/// hides a slow shard and holds memory.
const SHARD_QUEUE_BATCHES: usize = 4;

/// What a run did, for the final log line and the exit code.
#[derive(Debug, Clone)]
pub struct Report {
    pub summary: Summary,
    pub elapsed: Duration,
    pub shards: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

/// A Kinesis client for the ingestor: the SDK's own retries are off, because the
/// services retry only failed records and must count every attempt, and each attempt
/// has a timeout.
pub fn kinesis_client(
    sdk: &aws_config::SdkConfig,
    config: &IngestorConfig,
) -> aws_sdk_kinesis::Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(config.put_timeout)
        .build();
    let kinesis = aws_sdk_kinesis::config::Builder::from(sdk)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(timeouts)
        .build();
    aws_sdk_kinesis::Client::from_conf(kinesis)
}

/// A name for this process that no other ingestor shares: host, process id and a random
/// suffix, so that two starts on one host never reuse `(src, seq)` pairs.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ingestor".to_owned());
    format!("{host}.{}.{:04x}", std::process::id(), rand::random::<u16>())
}

/// Runs the ingestor until `shutdown` completes, then flushes and reports.
pub async fn run(
    config: IngestorConfig,
    client: aws_sdk_kinesis::Client,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Report> {
    config.validate()?;
    let started = Instant::now();
    let url = FeedUrl::parse(&config.url, config.token.as_ref().map(|t| t.expose()))
        .map_err(|e| anyhow::anyhow!("--url: {e}"))?;
    let map = shards::load(&client, &config.stream)
        .await
        .with_context(|| format!("reading the shard map of stream {:?}", config.stream))?;
    let shard_count = map.len();
    let src = instance_name();
    info!(
        stream = %config.stream,
        shards = shard_count,
        url = url.redacted(),
        src = %src,
        aggregation = ?config.aggregation,
        linger = ?config.linger,
        "ingestor starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    if let Listen::At(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen: cannot listen on {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics at /metrics");
        tokio::spawn(metrics::serve(listener, stats.clone(), shard_count, stop_rx.clone()));
    }

    let backoff = Backoff { base: config.retry_min, max: config.retry_max };
    let mut queues = Vec::with_capacity(shard_count);
    let mut services = Vec::with_capacity(shard_count);
    for shard in map.shards() {
        let (tx, rx) = mpsc::channel(SHARD_QUEUE_BATCHES);
        queues.push(tx);
        let service = ShardService {
            shard_id: shard.id.clone(),
            client: client.clone(),
            stream: config.stream.clone(),
            backoff,
            max_attempts: config.put_max_attempts,
            stats: stats.clone(),
        };
        services.push(tokio::spawn(service.run(rx)));
    }

    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded(config.channel_frames);
    let batcher = Batcher::new(
        BatcherConfig {
            aggregation: config.aggregation == Aggregation::On,
            aggregate_max_bytes: config.aggregate_max_bytes,
            max_request_bytes: config.max_request_bytes,
            linger: config.linger,
        },
        map,
        queues,
        stats.clone(),
    );
    let batcher = std::thread::Builder::new()
        .name("batcher".into())
        .spawn(move || batcher.run(chunk_rx))
        .context("starting the batcher thread")?;

    let source = Source {
        url,
        symbols: config.symbol_list(),
        config: config.clone(),
        decoder: Decoder::new(src.into(), stats.clone()),
        out: chunk_tx,
        stats: stats.clone(),
        shutdown: stop_rx.clone(),
    };
    source.run().await;
    // The source has returned and dropped its sender; the batcher now flushes and the
    // services drain. All of that must finish within the deadline.
    let deadline = config.shutdown_deadline;
    let before = stats.summary();
    info!(
        buffered = before.received - before.acked - before.dropped,
        deadline = ?deadline,
        "flushing buffered trades"
    );
    let drain = async {
        let _ = tokio::task::spawn_blocking(move || batcher.join()).await;
        for s in services {
            let _ = s.await;
        }
    };
    if tokio::time::timeout(deadline, drain).await.is_err() {
        let s = stats.summary();
        let lost = s.unaccounted();
        stats.drop_trades(Dropped::ShutdownDeadline, lost);
        error!(trades = lost, deadline = ?deadline, "shutdown deadline passed; dropped unacknowledged trades");
    }

    let summary = stats.summary();
    let report = Report {
        summary,
        elapsed: started.elapsed(),
        shards: shard_count,
        p50_us: stats.latency_quantile_us(0.5),
        p99_us: stats.latency_quantile_us(0.99),
        p999_us: stats.latency_quantile_us(0.999),
    };
    if summary.lossless() {
        info!(
            received = summary.received,
            acked = summary.acked,
            invalid = summary.invalid,
            rejected_frames = summary.rejected_frames,
            p99_ms = report.p99_us as f64 / 1000.0,
            "ingestor stopped; every received trade was acknowledged"
        );
    } else {
        warn!(
            received = summary.received,
            acked = summary.acked,
            dropped = summary.dropped,
            "ingestor stopped with trades lost"
        );
    }
    Ok(report)
}

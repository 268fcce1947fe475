//! The tickpipe ingestor: Finnhub websocket in, Kinesis PutRecords out.
//!
//! ```text
//! source (tokio task)     batcher (thread)          service (task per shard)   collector
//! websocket -> decode ==> route by shard -> pack -> retry failures, in order, -> PutRecords
//!             crossbeam   KPL aggregate / batch     backoff + jitter, paced     many shards
//!             (bounded)               tokio mpsc    by a token bucket           per request
//! ```
//!
//! - `config`: flags and their validation.
//! - `source`: websocket connection, subscription, reconnects, silence watchdog.
//! - `decode`: frames to user records, zero-copy, no allocation per trade.
//! - `batcher`: shard prediction, aggregation, request building, linger.
//! - `service`: a shard's batches, in order, with retries of only the failed records.
//! - `collector`: the batches of many shards packed into shared PutRecords requests.
//! - `limiter`: each shard's write budget and throttling feedback.
//! - `shards`: the shard map from ListShards (re-read periodically and on surprises).
//! - `retry`: exponential backoff with full jitter.
//! - `stats` and `metrics`: counters, latency histogram and the Prometheus endpoint.
//!
//! Memory is bounded by a cap on the bytes held between the websocket and Kinesis'
//! acknowledgement: when Kinesis falls behind, the websocket is no longer read. On shutdown the source stops first, the batcher flushes
//! everything it holds, and the services drain their queues until acknowledged or until
//! the deadline; [`Report`] then says what was sent and what was not.

pub mod batcher;
pub mod collector;
pub mod config;
pub mod decode;
pub mod limiter;
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
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info, warn};
use wire::limits::{PUT_RECORDS_MAX_RECORDS, SHARD_MAX_BYTES_PER_SEC, SHARD_MAX_RECORDS_PER_SEC};
use wire::shard::{Shard, ShardMap};

use crate::batcher::{Batcher, BatcherConfig, ServiceFactory, ShardHandle};
use crate::collector::{Collector, RequestLimits};
use crate::config::{Aggregation, IngestorConfig, Listen};
use crate::decode::Decoder;
use crate::limiter::ShardLimiter;
use crate::retry::Backoff;
use crate::service::ShardService;
use crate::source::{FeedUrl, Source};
use crate::stats::{Dropped, Stats, Summary};

/// Emptied chunks kept for reuse between the batcher and the decoder: enough to cover the
/// frames in flight between them when the batcher keeps up.
const SPARE_CHUNKS: usize = 64;

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
        tokio::spawn(metrics::serve(listener, stats.clone(), stop_rx.clone()));
    }

    let backoff = Backoff { base: config.retry_min, max: config.retry_max };
    let stale_map = Arc::new(Notify::new());
    let fraction = config.shard_rate_fraction;
    let service_config = config.clone();
    let service_stats = stats.clone();
    let collector = Collector::start(
        client.clone(),
        config.stream.clone(),
        RequestLimits {
            max_records: PUT_RECORDS_MAX_RECORDS,
            max_bytes: config.max_request_bytes,
            max_in_flight: config.max_in_flight_requests,
        },
        stats.clone(),
    );
    let service_stale = stale_map.clone();
    let runtime = Handle::current();
    let spawner = runtime.clone();
    let start_service: ServiceFactory = Box::new(move |shard: &Shard| {
        let (queue, rx) = mpsc::unbounded_channel();
        let limiter = (!service_config.no_shard_rate_limit).then(|| {
            ShardLimiter::new(
                f64::from(SHARD_MAX_RECORDS_PER_SEC) * fraction,
                f64::from(SHARD_MAX_BYTES_PER_SEC) * fraction,
                Instant::now(),
            )
        });
        let service = ShardService {
            shard_id: shard.id.clone(),
            collector: collector.clone(),
            backoff,
            max_attempts: service_config.put_max_attempts,
            limiter,
            record_ttl: service_config.record_ttl,
            stats: service_stats.clone(),
            stale_map: service_stale.clone(),
        };
        ShardHandle { queue, task: Some(spawner.spawn(service.run(rx))) }
    });

    let (map_tx, map_rx) = crossbeam_channel::bounded(1);
    tokio::spawn(refresh_shards(
        client.clone(),
        config.stream.clone(),
        config.shard_refresh,
        stale_map,
        map_tx,
        stop_rx.clone(),
    ));

    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded(config.channel_frames);
    let (spare_tx, spare_rx) = decode::spares(SPARE_CHUNKS);
    let batcher = Batcher::new(
        BatcherConfig {
            aggregation: config.aggregation == Aggregation::On,
            aggregate_max_bytes: config.aggregate_max_bytes,
            max_request_bytes: config.max_request_bytes,
            linger: config.linger,
        },
        map,
        start_service,
        stats.clone(),
    );
    let batcher = std::thread::Builder::new()
        .name("batcher".into())
        .spawn(move || batcher.run(chunk_rx, spare_tx, map_rx, runtime))
        .context("starting the batcher thread")?;

    let source = Source {
        url,
        symbols: config.symbol_list(),
        config: config.clone(),
        decoder: Decoder::new(src.into(), stats.clone()).with_spares(spare_rx),
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
    // The batcher thread returns once its shard services have drained.
    let drain = tokio::task::spawn_blocking(move || batcher.join());
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

/// Re-reads the shard map every `every`, and at once when a service reports a stale map,
/// passing changed maps to the batcher. A failed read is logged and tried again later;
/// the old map stays in use meanwhile, which costs only prediction accuracy.
async fn refresh_shards(
    client: aws_sdk_kinesis::Client,
    stream: String,
    every: Duration,
    stale: Arc<Notify>,
    maps: crossbeam_channel::Sender<ShardMap>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A burst of mispredictions right after a reshard should cause one re-read, not
    // one per record.
    const MIN_GAP: Duration = Duration::from_secs(1);
    let mut last: Option<ShardMap> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stale.notified() => {}
            _ = shutdown.changed() => return,
        }
        match shards::load(&client, &stream).await {
            Ok(map) if last.as_ref() != Some(&map) => {
                last = Some(map.clone());
                // The batcher compares with its own map; an unchanged map costs nothing.
                if maps.try_send(map).is_err() {
                    warn!("shard map update skipped: the previous one is still pending");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not refresh the shard map"),
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}

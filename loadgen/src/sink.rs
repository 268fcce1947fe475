//! A Kinesis stand-in that enforces real shard limits, injects faults and verifies every
//! trade written to it.
//!
//! The sink speaks the Kinesis JSON protocol (`POST /`, `X-Amz-Target:
//! Kinesis_20131202.<Op>`, `application/x-amz-json-1.1`) well enough that `aws-sdk-kinesis`
//! cannot tell it from the service: PutRecords, PutRecord, ListShards, DescribeStream,
//! DescribeStreamSummary and ListStreams on one stream of N simulated shards. It refuses
//! what Kinesis refuses, with the same error types, and throttles each shard to its write
//! limits by failing single records with `ProvisionedThroughputExceededException`.
//!
//! Flow: [`Sink::serve`] accepts connections; `http` caps and reads each request body;
//! `request` parses and validates it; `handler` injects faults (`faults`), places records
//! on shards (`stream`, whose limits live in `throttle`), and hands the accepted records to
//! `verify`, which unpacks them into trades and checks duplicates (`seen`), per-symbol order
//! and latency; `response` writes the answer and `stats` counts everything.
//!
//! Files:
//! - `http.rs`: connections, the body-size cap, the answers to non-Kinesis HTTP.
//! - `request.rs`: [`parse_request`], the target header and JSON body to a [`Request`],
//!   with every request-level limit checked.
//! - `api.rs`: [`ApiError`], the AWS error types, their statuses and JSON bodies.
//! - `handler.rs`: one operation at a time, from parsed request to response.
//! - `stream.rs`: shards, hash-key routing, sequence numbers, resharding, shard listings.
//! - `throttle.rs`: the per-shard records/s and bytes/s limiter.
//! - `faults.rs`: the seeded dice for injected failures, errors and delays.
//! - `verify.rs`: deaggregation, user-record decoding and the per-trade checks.
//! - `seen.rs`: the set of `(src, seq)` already received, as a sliding bitmap.
//! - `response.rs`: the JSON shapes Kinesis answers with.
//! - `stats.rs`: counters, [`SinkHandle`], [`SinkStats`], [`SinkReport`], progress lines.

mod api;
mod faults;
mod handler;
mod http;
mod request;
mod response;
mod seen;
mod stats;
mod stream;
mod throttle;
mod verify;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use wire::limits::{SHARD_MAX_BYTES_PER_SEC, SHARD_MAX_RECORDS_PER_SEC};

pub use api::ApiError;
pub use request::{
    CONTENT_TYPE_JSON, DescribeStream, ListShards, ListStreams, MAX_BODY_BYTES, PutRecord,
    PutRecords, Record, Request, ShardFilter, StreamRef, TARGET_HEADER, TARGET_PREFIX,
    encode_base64, parse_request,
};
pub use seen::{Insert, SeqSet};
pub use stats::{LatencyReport, ShardReport, SinkHandle, SinkReport, SinkStats, log_progress};
pub use verify::{Verifier, decode_trades};

use faults::Faults;
use stats::Counters;
use stream::Stream;

/// Shards a new sink stream has unless told otherwise, as the local stream in the design.
pub const DEFAULT_SHARDS: usize = 4;

/// Most shards a sink stream may start with. Kinesis' default account limit is 500 (200
/// in some regions); a reshard doubles the count once more.
pub const MAX_SHARDS: usize = 500;

/// Shortest reshard delay accepted; anything shorter races the client's first ListShards.
pub const MIN_RESHARD_AFTER: Duration = Duration::from_millis(1);

/// Longest injected delay accepted; longer stalls shutdown for no benefit.
pub const MAX_SLOW_DELAY: Duration = Duration::from_secs(300);

/// How long connections get to finish their request once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Per-shard write limits. `None` turns the limiter off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLimits {
    /// Records accepted per shard in any one-second window.
    pub records_per_sec: u32,
    /// Bytes (data plus partition key) accepted per shard in any one-second window.
    pub bytes_per_sec: u32,
}

impl Default for ShardLimits {
    /// The Kinesis limits: 1,000 records/s and 1 MiB/s per shard.
    fn default() -> Self {
        Self { records_per_sec: SHARD_MAX_RECORDS_PER_SEC, bytes_per_sec: SHARD_MAX_BYTES_PER_SEC }
    }
}

/// What goes wrong on purpose. Every rate is a fraction from 0 to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Fraction of records in PutRecords failed with `InternalFailure` in a 200 answer.
    pub fail_rate: f64,
    /// Fraction of write requests answered 500 `InternalFailure` or 503
    /// `ServiceUnavailable`, with nothing written.
    pub error_rate: f64,
    /// Fraction of write requests held for [`FaultConfig::slow_delay`] before they are
    /// processed; they are written even when the client has given up by then.
    pub slow_rate: f64,
    pub slow_delay: Duration,
    /// Split every shard in two this long after the sink starts.
    pub reshard_after: Option<Duration>,
    /// Seed for the fault dice; the same seed and the same requests give the same faults.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            error_rate: 0.0,
            slow_rate: 0.0,
            slow_delay: Duration::from_secs(2),
            reshard_after: None,
            seed: 0,
        }
    }
}

/// How the sink behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// The one stream the sink serves; any other name is `ResourceNotFoundException`.
    pub stream: String,
    /// Open shards at start, hash-key space split evenly.
    pub shards: usize,
    /// Per-shard write limits; `None` accepts everything.
    pub limits: Option<ShardLimits>,
    pub faults: FaultConfig,
}

impl Default for SinkConfig {
    /// The design's local stream (`tickpipe-trades`, 4 shards) with Kinesis' limits and
    /// no faults.
    fn default() -> Self {
        Self {
            stream: "tickpipe-trades".into(),
            shards: DEFAULT_SHARDS,
            limits: Some(ShardLimits::default()),
            faults: FaultConfig::default(),
        }
    }
}

impl SinkConfig {
    /// Refuses values the sink cannot honour, naming the flag that sets them.
    pub fn validate(&self) -> Result<(), SinkError> {
        let invalid = |flag, reason: String| Err(SinkError::InvalidConfig { flag, reason });
        if !request::valid_stream_name(&self.stream) {
            return invalid(
                "--stream",
                format!(
                    "must be 1 to 128 characters of a-z, A-Z, 0-9, '_', '.' and '-', got {:?}",
                    self.stream
                ),
            );
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return invalid("--shards", format!("must be 1 to {MAX_SHARDS}, got {}", self.shards));
        }
        if let Some(limits) = self.limits {
            if limits.records_per_sec == 0 {
                return invalid(
                    "--shard-records-per-sec",
                    "must be at least 1; use --unlimited to switch limits off".into(),
                );
            }
            if limits.bytes_per_sec == 0 {
                return invalid(
                    "--shard-bytes-per-sec",
                    "must be at least 1; use --unlimited to switch limits off".into(),
                );
            }
        }
        let f = &self.faults;
        for (flag, rate) in [
            ("--fail-rate", f.fail_rate),
            ("--error-rate", f.error_rate),
            ("--slow-rate", f.slow_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return invalid(flag, format!("must be a fraction from 0 to 1, got {rate}"));
            }
        }
        if f.slow_delay > MAX_SLOW_DELAY {
            return invalid(
                "--slow-delay",
                format!("must be at most {MAX_SLOW_DELAY:?}, got {:?}", f.slow_delay),
            );
        }
        if f.reshard_after.is_some_and(|d| d < MIN_RESHARD_AFTER) {
            return invalid(
                "--reshard-after",
                format!("must be at least {MIN_RESHARD_AFTER:?}; leave it unset for no reshard"),
            );
        }
        Ok(())
    }
}

/// Why the sink could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{flag} {reason}")]
    InvalidConfig { flag: &'static str, reason: String },
    #[error("the listening socket failed: {0}")]
    Listener(#[source] std::io::Error),
}

impl SinkError {
    /// A bad configuration stays bad; a listener failure may pass once the address frees.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::InvalidConfig { .. } => false,
            Self::Listener(_) => true,
        }
    }
}

/// What every connection and request task shares.
pub(crate) struct Shared {
    /// Locked once per request; always taken before `verifier`, never after, so that
    /// trades are verified in the order their records were given sequence numbers.
    stream: Mutex<Stream>,
    verifier: Mutex<Verifier>,
    faults: Faults,
    counters: Counters,
    started: Instant,
}

/// A configured sink, ready to serve.
pub struct Sink {
    shared: Arc<Shared>,
}

impl Sink {
    /// Checks the configuration and creates the stream. The reshard clock starts here.
    pub fn new(config: SinkConfig) -> Result<Self, SinkError> {
        config.validate()?;
        let started = Instant::now();
        let shared = Shared {
            stream: Mutex::new(Stream::new(&config, started)),
            verifier: Mutex::new(Verifier::new()),
            faults: Faults::new(&config.faults),
            counters: Counters::default(),
            started,
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// A handle to watch the sink's counters and take reports while it serves.
    pub fn handle(&self) -> SinkHandle {
        SinkHandle::new(self.shared.clone())
    }

    /// Answers one request as if it had come over HTTP as `POST /` with these headers,
    /// without a socket: the HTTP status and the JSON body. It counts and verifies like
    /// any other request; the fuzz targets drive the sink through it.
    pub async fn answer(
        &self,
        target: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        Counters::add(&self.shared.counters.requests, 1);
        let result = if body.len() > MAX_BODY_BYTES {
            Err(request::body_too_large())
        } else {
            handler::handle(&self.shared, target, content_type, body).await
        };
        let (status, body, _) = handler::conclude(&self.shared, result);
        (status.as_u16(), body)
    }

    /// Accepts connections on `listener` until `shutdown` resolves, lets open requests
    /// finish (for a few seconds at most), and returns the final report.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<SinkReport, SinkError> {
        let addr = listener.local_addr().map_err(SinkError::Listener)?;
        let handle = self.handle();
        {
            let stream = lock(&self.shared.stream);
            info!(
                listen = %addr,
                stream = stream.name(),
                shards = stream.open_shards(),
                limits = ?stream.limits(),
                faults = ?self.shared.faults.config(),
                "sink started"
            );
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Answers are small and the latency they carry is what benches read.
                        if let Err(err) = stream.set_nodelay(true) {
                            warn!(peer = %peer, error = %err, "could not disable Nagle's algorithm");
                        }
                        let task = http::serve_tcp(stream, peer, self.shared.clone(), stop_rx.clone());
                        tasks.spawn(task);
                    }
                    Err(err) => {
                        warn!(error = %err, "accept failed; retrying");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => log_panic(done),
            }
        }

        info!(open = tasks.len(), "sink stopping: finishing open requests");
        // The send fails only when no receiver is left, which means no connection is open.
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(done) = tasks.join_next().await {
                log_panic(done);
            }
        })
        .await;
        if drained.is_err() {
            warn!(remaining = tasks.len(), "connections did not close in time; dropping them");
            tasks.shutdown().await;
        }
        let report = handle.report();
        info!(
            trades = report.stats.trades,
            duplicates = report.stats.duplicates,
            reorders = report.stats.reorders,
            missing = report.missing,
            throttled = report.stats.records_throttled,
            latency_p99_us = report.latency_us.p99,
            "sink stopped"
        );
        Ok(report)
    }
}

/// Serves `config` on `listener` until `shutdown` resolves. See [`Sink`] to watch the
/// counters while it runs.
pub async fn serve(
    listener: TcpListener,
    config: SinkConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<SinkReport, SinkError> {
    Sink::new(config)?.serve(listener, shutdown).await
}

/// Takes a lock, ignoring poisoning: every critical section leaves its data consistent
/// between statements that can panic, and a panicking request task must not take the
/// whole sink down with it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resolves once shutdown has been signalled (or the signal's sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // Drops the borrow guard at once; it must not be held across the caller's awaits.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done
        && err.is_panic()
    {
        error!(error = %err, "a sink connection task panicked");
    }
}

//! The sink's counters, the [`SinkStats`] snapshot and [`SinkReport`] read from them, and
//! the [`SinkHandle`] through which a caller watches a running sink.
//!
//! Request-level counters are plain atomics bumped once per request. The per-trade totals
//! (trades, duplicates, reorders) and the latency histogram belong to the verifier and are
//! read under its lock, which a snapshot holds for microseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Shared, lock};

/// Counters shared by every request task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub put_requests: AtomicU64,
    pub rejected_requests: AtomicU64,
    pub records_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub records_throttled: AtomicU64,
    pub records_failed: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_delayed: AtomicU64,
    pub delayed_records_written: AtomicU64,
    pub undecodable_records: AtomicU64,
    pub undecodable_user_records: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        // Relaxed: each counter is independent and only read for reporting.
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A snapshot of the sink's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// Kinesis API requests answered, of every operation, errors included.
    pub requests: u64,
    /// Valid PutRecords and PutRecord requests.
    pub put_requests: u64,
    /// Requests refused as invalid (4xx other than throttling): bad JSON, limits, unknown
    /// stream or operation.
    pub rejected_requests: u64,
    /// Kinesis records written (acknowledged with a sequence number).
    pub records_written: u64,
    /// Data plus partition-key bytes of the records written.
    pub bytes_written: u64,
    /// Records refused with `ProvisionedThroughputExceededException`.
    pub records_throttled: u64,
    /// Records failed on purpose with `InternalFailure` (`--fail-rate`).
    pub records_failed: u64,
    /// Write requests answered 500 or 503 on purpose (`--error-rate`).
    pub requests_failed: u64,
    /// Write requests held back on purpose (`--slow-rate`).
    pub requests_delayed: u64,
    /// Records written by delayed requests: each may also arrive again, if the client gave
    /// up waiting and retried, so each is a possible duplicate.
    pub delayed_records_written: u64,
    /// Trades decoded from the records written, duplicates included.
    pub trades: u64,
    /// Trades whose `(src, seq)` had arrived before.
    pub duplicates: u64,
    /// Trades that arrived after a later trade of the same `(src, symbol)`.
    pub reorders: u64,
    /// Records that looked aggregated but failed their checksum or protobuf decoding.
    pub undecodable_records: u64,
    /// User records that were not valid trade JSON.
    pub undecodable_user_records: u64,
    /// Times every shard was split.
    pub reshards: u64,
}

/// Percentiles of receive-to-arrival latency, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyReport {
    /// Trades measured: every trade that was not a duplicate.
    pub samples: u64,
    pub p50: u64,
    pub p99: u64,
    #[serde(rename = "p99.9")]
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// What one shard took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardReport {
    pub shard_id: String,
    pub parent_shard_id: Option<String>,
    pub open: bool,
    pub records: u64,
    pub bytes: u64,
}

/// Everything the sink saw, for the end of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkReport {
    #[serde(flatten)]
    pub stats: SinkStats,
    /// Ingestor instances (`src` values) seen.
    pub sources: u64,
    /// Sequence numbers below each source's highest that never arrived: trades lost on
    /// the way, or still in flight when the report was taken.
    pub missing: u64,
    /// Sequence numbers the duplicate check's window slid past unseen (see `seen.rs`);
    /// nonzero only in runs where a trade stayed missing for tens of millions of trades.
    pub dedup_evicted: u64,
    pub latency_us: LatencyReport,
    pub shards: Vec<ShardReport>,
    /// Time since the sink was created.
    pub elapsed_secs: f64,
}

/// A cheap, cloneable view of a running sink.
#[derive(Clone)]
pub struct SinkHandle {
    shared: Arc<Shared>,
}

impl SinkHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The counters as they are now.
    pub fn stats(&self) -> SinkStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Stream before verifier, the order every request takes them in.
        let reshards = lock(&self.shared.stream).reshards();
        let totals = lock(&self.shared.verifier).totals();
        SinkStats {
            requests: get(&c.requests),
            put_requests: get(&c.put_requests),
            rejected_requests: get(&c.rejected_requests),
            records_written: get(&c.records_written),
            bytes_written: get(&c.bytes_written),
            records_throttled: get(&c.records_throttled),
            records_failed: get(&c.records_failed),
            requests_failed: get(&c.requests_failed),
            requests_delayed: get(&c.requests_delayed),
            delayed_records_written: get(&c.delayed_records_written),
            trades: totals.trades,
            duplicates: totals.duplicates,
            reorders: totals.reorders,
            undecodable_records: get(&c.undecodable_records),
            undecodable_user_records: get(&c.undecodable_user_records),
            reshards,
        }
    }

    /// The full report as it stands now.
    pub fn report(&self) -> SinkReport {
        let stats = self.stats();
        let shards = lock(&self.shared.stream)
            .totals()
            .into_iter()
            .map(|s| ShardReport {
                shard_id: s.id,
                parent_shard_id: s.parent,
                open: s.open,
                records: s.records,
                bytes: s.bytes,
            })
            .collect();
        let verifier = lock(&self.shared.verifier);
        let h = verifier.latency_us();
        let latency_us = LatencyReport {
            samples: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: if h.is_empty() { 0.0 } else { h.mean() },
        };
        SinkReport {
            stats,
            sources: verifier.sources() as u64,
            missing: verifier.missing(),
            dedup_evicted: verifier.evicted(),
            latency_us,
            shards,
            elapsed_secs: self.shared.started.elapsed().as_secs_f64(),
        }
    }

    /// Leaves trades the ingestor received before now out of the latency percentiles;
    /// see [`crate::sink::Verifier::measure_latency_from`].
    pub fn measure_latency_from_now(&self) {
        lock(&self.shared.verifier).measure_latency_from(super::handler::now_us());
    }

    /// Polls until at least `trades` trades have arrived, or `timeout` passes; returns the
    /// stats either way, for the caller to judge.
    pub async fn wait_for_trades(&self, trades: u64, timeout: Duration) -> SinkStats {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if stats.trades >= trades || Instant::now() >= deadline {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Logs one INFO line every `every`: the rates of the last period and the running totals
/// of what verification found. Runs until dropped.
pub async fn log_progress(handle: SinkHandle, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    // The first tick completes at once; skip it so the first line covers a full period.
    ticker.tick().await;
    let mut last = handle.stats();
    let mut last_at = Instant::now();
    loop {
        ticker.tick().await;
        let now = handle.stats();
        let secs = last_at.elapsed().as_secs_f64().max(f64::EPSILON);
        last_at = Instant::now();
        let per_sec = |new: u64, old: u64| (new.saturating_sub(old) as f64 / secs).round() as u64;
        tracing::info!(
            trades_per_sec = per_sec(now.trades, last.trades),
            records_per_sec = per_sec(now.records_written, last.records_written),
            throttled_per_sec = per_sec(now.records_throttled, last.records_throttled),
            duplicates = now.duplicates,
            reorders = now.reorders,
            trades = now.trades,
            "sink progress"
        );
        last = now;
    }
}

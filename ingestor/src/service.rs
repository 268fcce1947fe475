//! PutRecords: one service task per shard, retrying only what failed.
//!
//! A shard's batches are sent one at a time, in order, and a batch is retried until every
//! record in it is acknowledged or its attempts run out. Holding the next batch back until
//! then is what keeps each symbol's trades in order. Different shards run in parallel;
//! their batches travel together in shared requests (see `collector`).
//!
//! Retries use exponential backoff with full jitter. A request that timed out or broke in
//! transport may still have been written; it is retried anyway (at least once beats at
//! most once) and counted, so that duplicates downstream can be explained.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tokio::sync::{Notify, mpsc};
use tracing::{error, warn};

use crate::batcher::{Batch, Entry};
use crate::collector::{Collector, Failure};
use crate::limiter::ShardLimiter;
use crate::retry::Backoff;
use crate::source::now_us;
use crate::stats::{Dropped, Stats};

/// The error code Kinesis gives a record refused for exceeding its shard's throughput.
const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// Sends one shard's batches.
pub struct ShardService {
    pub shard_id: String,
    /// Packs this shard's batches into requests with other shards' batches.
    pub collector: Collector,
    pub backoff: Backoff,
    pub max_attempts: u32,
    /// The shard's write budget; `None` leaves pacing to Kinesis (on-demand streams).
    pub limiter: Option<ShardLimiter>,
    /// Records whose oldest trade is older than this are dropped instead of sent.
    pub record_ttl: Option<Duration>,
    pub stats: Arc<Stats>,
    /// Woken when a record lands on another shard than predicted: the map is stale.
    pub stale_map: Arc<Notify>,
}

impl ShardService {
    /// Sends batches until the batcher hangs up.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Batch>) {
        while let Some(batch) = rx.recv().await {
            self.put(batch.entries).await;
        }
    }

    async fn put(&mut self, mut pending: Vec<Entry>) {
        let stats = self.stats.clone();
        let mut attempt = 0u32;
        let mut last_error = String::new();
        loop {
            if let Some(ttl) = self.record_ttl {
                pending = self.drop_expired(pending, ttl);
                if pending.is_empty() {
                    return;
                }
            }
            let bytes = pending.iter().map(Entry::billed_bytes).sum();
            if let Some(limiter) = &mut self.limiter {
                let wait = limiter.reserve(pending.len(), bytes, Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let records = pending
                .iter()
                .map(|e| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(e.data.clone()))
                        .partition_key(&e.partition_key)
                        .build()
                        .expect("data and partition key, the required fields, are set")
                })
                .collect();
            match self.collector.put(records, bytes).await {
                Ok(results) => {
                    let mut failed = Vec::new();
                    let mut throttled = 0u64;
                    let now = now_us();
                    let mut mispredicted = 0u64;
                    let (mut accepted_records, mut accepted_bytes) = (0u64, 0u64);
                    for (i, entry) in pending.into_iter().enumerate() {
                        // A response shorter than the request would be a service bug;
                        // treating the missing results as failures loses nothing.
                        let Some(r) = results.get(i) else {
                            failed.push(entry);
                            continue;
                        };
                        match r.error_code() {
                            None => {
                                if r.shard_id().is_some_and(|s| s != self.shard_id) {
                                    mispredicted += 1;
                                }
                                accepted_records += 1;
                                accepted_bytes += entry.billed_bytes() as u64;
                                self.acked(&entry, now);
                            }
                            Some(code) => {
                                if code == THROTTLED {
                                    throttled += 1;
                                }
                                last_error = format!("{code}: {}", r.error_message().unwrap_or(""));
                                failed.push(entry);
                            }
                        }
                    }
                    stats.records_throttled.fetch_add(throttled, Relaxed);
                    if mispredicted > 0 {
                        stats.shard_mispredictions.fetch_add(mispredicted, Relaxed);
                        self.stale_map.notify_one();
                    }
                    if let Some(limiter) = &mut self.limiter {
                        if throttled > 0 { limiter.throttled() } else { limiter.accepted() }
                    }
                    let factor = self.limiter.as_ref().map_or(1.0, ShardLimiter::factor);
                    stats.shard_put(&self.shard_id, accepted_records, accepted_bytes, factor);
                    if failed.is_empty() {
                        break;
                    }
                    pending = failed;
                }
                Err(e) => {
                    last_error = e.message;
                    if e.failure == Failure::Fatal {
                        self.drop_all(&pending, Dropped::Rejected, &last_error);
                        break;
                    }
                    if e.stream_missing {
                        self.stale_map.notify_one();
                    }
                }
            }
            attempt += 1;
            if attempt >= self.max_attempts {
                self.drop_all(&pending, Dropped::RetriesExhausted, &last_error);
                break;
            }
            stats.records_retried.fetch_add(pending.len() as u64, Relaxed);
            let delay = self.backoff.delay(attempt - 1);
            if attempt == 1 || attempt.is_power_of_two() {
                warn!(
                    shard = %self.shard_id,
                    records = pending.len(),
                    attempt,
                    error = %last_error,
                    retry_in = ?delay,
                    "retrying records Kinesis did not accept"
                );
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn acked(&self, entry: &Entry, now: u64) {
        let s = &self.stats;
        s.trades_acked.fetch_add(entry.trades(), Relaxed);
        s.kinesis_records_put.fetch_add(1, Relaxed);
        s.kinesis_bytes_put.fetch_add(entry.billed_bytes() as u64, Relaxed);
        s.record_latencies(now, entry.receive_times.iter().copied());
        s.release(entry.budget);
    }

    /// Drops the entries whose oldest trade has waited longer than `ttl`.
    fn drop_expired(&self, pending: Vec<Entry>, ttl: Duration) -> Vec<Entry> {
        let cutoff = now_us().saturating_sub(ttl.as_micros() as u64);
        let (expired, live): (Vec<Entry>, Vec<Entry>) = pending
            .into_iter()
            .partition(|e| e.receive_times.iter().min().is_some_and(|&t| t < cutoff));
        if !expired.is_empty() {
            self.drop_all(&expired, Dropped::Expired, "record time to live passed");
        }
        live
    }

    fn drop_all(&self, entries: &[Entry], why: Dropped, cause: &str) {
        let trades: u64 = entries.iter().map(Entry::trades).sum();
        self.stats.drop_trades(why, trades);
        self.stats.release(entries.iter().map(|e| e.budget).sum());
        error!(
            shard = %self.shard_id,
            trades,
            records = entries.len(),
            reason = why.label(),
            error = %cause,
            "dropped trades Kinesis did not accept"
        );
    }
}

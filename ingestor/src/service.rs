//! PutRecords: one service task per shard, retrying only what failed.
//!
//! A shard's batches are sent one at a time, in order, and a batch is retried until every
//! record in it is acknowledged or its attempts run out. Holding the next batch back until
//! then is what keeps each symbol's trades in order. Different shards run in parallel on
//! one pooled HTTP client.
//!
//! Retries use exponential backoff with full jitter. A request that timed out or broke in
//! transport may still have been written; it is retried anyway (at least once beats at
//! most once) and counted, so that duplicates downstream can be explained.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::batcher::{Batch, Entry};
use crate::retry::Backoff;
use crate::source::now_us;
use crate::stats::{Dropped, Stats};

/// The error code Kinesis gives a record refused for exceeding its shard's throughput.
const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// How a failed PutRecords call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retry; nothing was written.
    Retry,
    /// Retry; the request may have been written (timeout, broken connection).
    RetryUncertain,
    /// Do not retry: the request itself is wrong (bad stream, no permission).
    Fatal,
}

/// Sorts a PutRecords error into retry or give up.
pub fn classify(err: &SdkError<PutRecordsError>) -> Failure {
    match err {
        SdkError::ServiceError(ctx) => match ctx.err() {
            PutRecordsError::ProvisionedThroughputExceededException(_)
            | PutRecordsError::KmsThrottlingException(_)
            | PutRecordsError::InternalFailureException(_) => Failure::Retry,
            // A stream that is still being created comes back; attempts are bounded, so
            // a stream that never appears still ends in a counted drop.
            PutRecordsError::ResourceNotFoundException(_) => Failure::Retry,
            PutRecordsError::InvalidArgumentException(_)
            | PutRecordsError::AccessDeniedException(_)
            | PutRecordsError::KmsAccessDeniedException(_)
            | PutRecordsError::KmsDisabledException(_)
            | PutRecordsError::KmsInvalidStateException(_)
            | PutRecordsError::KmsNotFoundException(_)
            | PutRecordsError::KmsOptInRequired(_) => Failure::Fatal,
            _ => {
                let status = ctx.raw().status().as_u16();
                if status >= 500 || status == 429 { Failure::Retry } else { Failure::Fatal }
            }
        },
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::RetryUncertain
        }
        _ => Failure::Fatal,
    }
}

/// Sends one shard's batches.
pub struct ShardService {
    pub shard_id: String,
    pub client: Client,
    pub stream: String,
    pub backoff: Backoff,
    pub max_attempts: u32,
    pub stats: Arc<Stats>,
}

impl ShardService {
    /// Sends batches until the batcher hangs up.
    pub async fn run(self, mut rx: mpsc::Receiver<Batch>) {
        while let Some(batch) = rx.recv().await {
            self.put(batch.entries).await;
        }
    }

    async fn put(&self, mut pending: Vec<Entry>) {
        let stats = &self.stats;
        let batch_bytes: usize = pending.iter().map(Entry::billed_bytes).sum();
        let mut attempt = 0u32;
        let mut last_error = String::new();
        loop {
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
            stats.put_requests.fetch_add(1, Relaxed);
            stats.in_flight_requests.fetch_add(1, Relaxed);
            let result = self
                .client
                .put_records()
                .stream_name(&self.stream)
                .set_records(Some(records))
                .send()
                .await;
            stats.in_flight_requests.fetch_sub(1, Relaxed);
            match result {
                Ok(out) => {
                    let results = out.records();
                    let mut failed = Vec::new();
                    let mut throttled = 0u64;
                    let now = now_us();
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
                                    stats.shard_mispredictions.fetch_add(1, Relaxed);
                                }
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
                    if failed.is_empty() {
                        break;
                    }
                    pending = failed;
                }
                Err(e) => {
                    let failure = classify(&e);
                    last_error = DisplayErrorContext(&e).to_string();
                    if failure == Failure::Fatal {
                        self.drop_all(&pending, Dropped::Rejected, &last_error);
                        break;
                    }
                    if failure == Failure::RetryUncertain {
                        stats.requests_uncertain.fetch_add(1, Relaxed);
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
        stats.buffered_bytes.fetch_sub(batch_bytes as i64, Relaxed);
    }

    fn acked(&self, entry: &Entry, now: u64) {
        let s = &self.stats;
        s.trades_acked.fetch_add(entry.trades(), Relaxed);
        s.kinesis_records_put.fetch_add(1, Relaxed);
        s.kinesis_bytes_put.fetch_add(entry.billed_bytes() as u64, Relaxed);
        s.record_latencies(now, entry.receive_times.iter().copied());
    }

    fn drop_all(&self, entries: &[Entry], why: Dropped, cause: &str) {
        let trades: u64 = entries.iter().map(Entry::trades).sum();
        self.stats.drop_trades(why, trades);
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

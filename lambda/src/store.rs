//! Writes one transformed batch to DynamoDB and says which Kinesis record, if any, must be
//! read again.
//!
//! Three kinds of write run side by side, each in its own file: trade items in
//! BatchWriteItem requests ([`crate::trades`]), candles by read-modify-write
//! ([`crate::candles`]), and latest prices by conditional update ([`crate::latest`]). A
//! semaphore shared by every clone of the [`Store`] bounds the requests in flight, so the
//! local runner's shard tasks together respect the same limit as one Lambda invocation.
//!
//! Every write knows the Kinesis records it draws on. When a write still fails after its
//! retries, the earliest of those records is reported; the batch is then read again from
//! there, which is safe because trade keys are deterministic and candles skip what their
//! high-water marks say they already hold.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, warn};

use crate::retry::{self, Backoff};
use crate::transform::{Origin, Transformed};
use crate::{candles, latest, trades};

/// Default time a trade item lives before DynamoDB's TTL removes it.
pub const DEFAULT_TRADE_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default attempts per request, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Default ceiling of the first retry delay.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Default ceiling of every retry delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default DynamoDB requests in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// How the store writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub table: String,
    /// Trade items expire this long after the trade's own time.
    pub trade_ttl: Duration,
    /// Attempts per request before the write counts as failed, the first included.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// DynamoDB requests in flight at once, across all clones of the store.
    pub max_in_flight: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            table: wire::table::DEFAULT_TABLE.to_owned(),
            trade_ttl: DEFAULT_TRADE_TTL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff { base: DEFAULT_BACKOFF_BASE, max: DEFAULT_BACKOFF_MAX },
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// Why a write did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{op} failed with {code}: {message}")]
    Sdk { op: &'static str, code: String, message: String, retryable: bool },
    #[error("{remaining} trade items still unprocessed after {attempts} attempts")]
    Unprocessed { remaining: usize, attempts: u32 },
    #[error("candle {pk}/{sk} changed between read and write {attempts} times in a row")]
    Contended { pk: String, sk: String, attempts: u32 },
    #[error("stored item {pk}/{sk} is not a valid candle: {reason}")]
    Corrupt { pk: String, sk: String, reason: String },
    #[error("write task ended abnormally: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether the same write may succeed later. Reading the batch again retries it either
    /// way; a non-retryable error means an operator must act first.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sdk { retryable, .. } => *retryable,
            StoreError::Unprocessed { .. } | StoreError::Contended { .. } => true,
            StoreError::Corrupt { .. } | StoreError::Task(_) => false,
        }
    }

    pub(crate) fn sdk<E>(op: &'static str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        StoreError::Sdk {
            op,
            code: retry::error_code(err).to_owned(),
            message: DisplayErrorContext(err).to_string(),
            retryable: retry::is_retryable(err),
        }
    }
}

/// A write that gave up, and the earliest Kinesis record it drew on.
#[derive(Debug)]
pub(crate) struct Failed {
    pub origin: usize,
    pub error: StoreError,
}

/// What writing one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Earliest Kinesis record (index into the batch) whose effects are not all stored.
    pub first_failed_origin: Option<usize>,
    pub trades_written: usize,
    pub candles_written: usize,
    /// Candles whose every trade was already folded in (a retried batch).
    pub candles_unchanged: usize,
    pub latest_updated: usize,
    /// Latest-price writes refused because the stored price is as new or newer.
    pub latest_stale: usize,
    /// Writes that failed after their retries.
    pub failed_writes: usize,
}

/// The result of one write task.
enum Part {
    Trades(usize),
    Candle { written: bool },
    Latest { updated: bool },
}

/// Writes batches to one table. Cheap to clone; clones share the in-flight limit.
#[derive(Clone)]
pub struct Store {
    client: Client,
    config: Arc<StoreConfig>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Store {
    pub fn new(client: Client, config: StoreConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Self { client, config: Arc::new(config), permits }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Attempts per request, never fewer than one.
    pub(crate) fn attempts(&self) -> u32 {
        self.config.max_attempts.max(1)
    }

    pub(crate) fn table(&self) -> &str {
        &self.config.table
    }

    /// Writes everything in `batch`; `origins` are the batch's Kinesis records, which the
    /// batch's records and deltas index into.
    pub async fn write(&self, batch: Transformed, origins: Arc<[Origin]>) -> WriteOutcome {
        let mut tasks: JoinSet<Result<Part, Failed>> = JoinSet::new();
        for chunk in trades::requests(&batch.trades, self.config.trade_ttl) {
            let store = self.clone();
            tasks.spawn(async move {
                let _permit = store.permit().await;
                trades::write(&store, chunk).await.map(Part::Trades)
            });
        }
        for delta in batch.candles {
            let (store, origins) = (self.clone(), origins.clone());
            tasks.spawn(async move {
                let _permit = store.permit().await;
                candles::write(&store, &delta, &origins)
                    .await
                    .map(|written| Part::Candle { written })
                    .map_err(|error| Failed { origin: delta.first_origin(), error })
            });
        }
        for price in batch.latest {
            let store = self.clone();
            tasks.spawn(async move {
                let _permit = store.permit().await;
                latest::write(&store, &price)
                    .await
                    .map(|updated| Part::Latest { updated })
                    .map_err(|error| Failed { origin: price.origin, error })
            });
        }

        let mut outcome = WriteOutcome::default();
        while let Some(joined) = tasks.join_next().await {
            let failed = match joined {
                Ok(Ok(part)) => {
                    outcome.count(part);
                    continue;
                }
                Ok(Err(failed)) => failed,
                // A panicking write could have touched anything, so the whole batch
                // counts as not stored.
                Err(e) => Failed { origin: 0, error: StoreError::Task(e.to_string()) },
            };
            outcome.failed_writes += 1;
            let seq = origins.get(failed.origin).map_or("", |o| o.sequence_number.as_str());
            if failed.error.is_retryable() {
                warn!(sequence_number = seq, error = %failed.error, "write gave up after retries");
            } else {
                error!(
                    sequence_number = seq,
                    error = %failed.error,
                    "write failed and will keep failing until an operator acts"
                );
            }
            let first = outcome.first_failed_origin.get_or_insert(failed.origin);
            *first = (*first).min(failed.origin);
        }
        outcome
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.permits.acquire().await.expect("the store never closes its semaphore")
    }
}

impl WriteOutcome {
    fn count(&mut self, part: Part) {
        match part {
            Part::Trades(n) => self.trades_written += n,
            Part::Candle { written: true } => self.candles_written += 1,
            Part::Candle { written: false } => self.candles_unchanged += 1,
            Part::Latest { updated: true } => self.latest_updated += 1,
            Part::Latest { updated: false } => self.latest_stale += 1,
        }
    }
}

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A number attribute from a float, written as the user record writes it ("43", "146.76").
pub(crate) fn n_f64(v: f64) -> AttributeValue {
    let mut out = Vec::with_capacity(24);
    wire::json::write_f64(&mut out, v);
    AttributeValue::N(String::from_utf8(out).expect("number formatting writes ASCII"))
}

/// A number attribute from an integer.
pub(crate) fn n_u64(v: u64) -> AttributeValue {
    AttributeValue::N(itoa::Buffer::new().format(v).to_owned())
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// The key attributes of an item.
pub(crate) fn key(pk: String, sk: String) -> Item {
    HashMap::from([(wire::table::PK.to_owned(), s(pk)), (wire::table::SK.to_owned(), s(sk))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_compactly() {
        assert_eq!(n_f64(43.0), AttributeValue::N("43".into()));
        assert_eq!(n_f64(146.76), AttributeValue::N("146.76".into()));
        assert_eq!(n_u64(1628238530221), AttributeValue::N("1628238530221".into()));
    }

    #[test]
    fn errors_know_if_they_are_retryable() {
        assert!(StoreError::Unprocessed { remaining: 1, attempts: 8 }.is_retryable());
        let corrupt = StoreError::Corrupt { pk: "p".into(), sk: "s".into(), reason: "x".into() };
        assert!(!corrupt.is_retryable());
    }
}

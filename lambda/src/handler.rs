//! The Kinesis event handler: one batch of Kinesis records in, batch item failures out.
//!
//! Each Kinesis record, in order, is base64-decoded (by the event type), deaggregated
//! (aggregated and plain records alike) and split into user records, which are decoded and
//! validated. A record that can never succeed, a corrupt aggregate or an undecodable user
//! record, is counted, logged at ERROR with its sequence number, and skipped: a poison
//! record must not hold its shard back forever. The rest goes through
//! [`crate::transform`] to the [`Store`].
//!
//! When some write still fails after its retries, the response names the first Kinesis
//! record whose effects are not all stored, and Lambda retries from there.

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::streams::KinesisEventResponse;
use bytes::Bytes;
use tracing::{Instrument, debug, error, field, info_span, warn};
use wire::kpl::{self, KplError};
use wire::record::{self, RecordError};

use crate::position::{self, is_sequence_number};
use crate::store::{Store, WriteOutcome};
use crate::transform::{self, InvalidTrade, Origin, SourcedRecord};

/// Why a Kinesis record or one of its user records was skipped.
#[derive(Debug, thiserror::Error)]
pub enum PoisonError {
    #[error("sequence number is not a decimal number")]
    SequenceNumber,
    #[error(transparent)]
    Aggregate(#[from] KplError),
    #[error(transparent)]
    Decode(#[from] RecordError),
    #[error("user record is not a storable trade: {0}")]
    Invalid(#[from] InvalidTrade),
}

impl PoisonError {
    /// Poison is in the data: the same bytes fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// A batch taken apart, ready for [`transform::transform`].
#[derive(Debug, Default)]
pub struct Unpacked {
    /// One per Kinesis record of the event, in order.
    pub origins: Vec<Origin>,
    /// Valid user records in arrival order.
    pub records: Vec<SourcedRecord>,
    /// Kinesis records skipped whole (bad sequence number, corrupt aggregate).
    pub poison_records: usize,
    /// User records skipped (undecodable or not a storable trade).
    pub poison_user_records: usize,
}

/// Counts of what one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub kinesis_records: usize,
    /// Valid user records found, duplicates included.
    pub user_records: usize,
    pub poison_records: usize,
    pub poison_user_records: usize,
    /// User records repeated within the batch, stored once.
    pub duplicates: usize,
    pub write: WriteOutcome,
}

/// The handler's answer and what it did.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    pub response: KinesisEventResponse,
    pub stats: BatchStats,
}

impl BatchOutcome {
    /// The sequence number Lambda should retry from, if any.
    pub fn retry_from(&self) -> Option<&str> {
        self.response.batch_item_failures.first().and_then(|f| f.item_identifier.as_deref())
    }
}

/// Handles one Kinesis event: the Lambda entry point.
pub async fn handle(event: KinesisEvent, store: &Store) -> KinesisEventResponse {
    handle_batch(event, store, None).await.response
}

/// Handles one Kinesis event inside a span carrying the request id, and returns counts.
pub async fn handle_batch(
    event: KinesisEvent,
    store: &Store,
    request_id: Option<&str>,
) -> BatchOutcome {
    let span = info_span!("invocation", request_id = field::Empty, records = event.records.len());
    if let Some(id) = request_id {
        span.record("request_id", id);
    }
    process(event, store).instrument(span).await
}

async fn process(event: KinesisEvent, store: &Store) -> BatchOutcome {
    let unpacked = unpack(event);
    let mut stats = BatchStats {
        kinesis_records: unpacked.origins.len(),
        user_records: unpacked.records.len(),
        poison_records: unpacked.poison_records,
        poison_user_records: unpacked.poison_user_records,
        ..BatchStats::default()
    };
    let batch = transform::transform(unpacked.records);
    stats.duplicates = batch.duplicates;
    let origins: Arc<[Origin]> = unpacked.origins.into();
    stats.write = store.write(batch, origins.clone()).await;

    let mut response = KinesisEventResponse::default();
    if let Some(first) = stats.write.first_failed_origin {
        let seq = &origins[first].sequence_number;
        warn!(
            sequence_number = %seq,
            shard = %origins[first].shard,
            failed_writes = stats.write.failed_writes,
            "batch not fully stored; reporting a batch item failure so it is read again"
        );
        response.add_failure(seq.as_str());
    }
    debug!(
        kinesis_records = stats.kinesis_records,
        user_records = stats.user_records,
        trades_written = stats.write.trades_written,
        candles_written = stats.write.candles_written,
        candles_unchanged = stats.write.candles_unchanged,
        latest_updated = stats.write.latest_updated,
        duplicates = stats.duplicates,
        poison_records = stats.poison_records,
        poison_user_records = stats.poison_user_records,
        "batch handled"
    );
    BatchOutcome { response, stats }
}

/// Takes a Kinesis event apart into positions and valid user records, skipping and
/// logging poison.
pub fn unpack(event: KinesisEvent) -> Unpacked {
    let mut out =
        Unpacked { origins: Vec::with_capacity(event.records.len()), ..Unpacked::default() };
    for mut r in event.records {
        let shard = position::shard_of(r.event_id.as_deref(), r.event_source_arn.as_deref());
        let origin = Origin { shard: shard.to_owned(), sequence_number: r.kinesis.sequence_number };
        let index = out.origins.len();
        let data = Bytes::from(std::mem::take(&mut *r.kinesis.data));
        let user_records = if is_sequence_number(&origin.sequence_number) {
            kpl::deaggregate(data, &r.kinesis.partition_key).map_err(PoisonError::from)
        } else {
            Err(PoisonError::SequenceNumber)
        };
        match user_records {
            Ok(user_records) => {
                for (sub, u) in user_records.iter().enumerate() {
                    let sub = u32::try_from(sub)
                        .expect("a 1 MiB record holds far fewer than 2^32 user records");
                    match decode(&u.data) {
                        Ok(record) => {
                            out.records.push(SourcedRecord { record, origin: index, sub })
                        }
                        Err(reason) => {
                            out.poison_user_records += 1;
                            error!(
                                sequence_number = %origin.sequence_number,
                                shard = %origin.shard,
                                sub,
                                %reason,
                                "skipping a user record that can never be stored"
                            );
                        }
                    }
                }
            }
            Err(reason) => {
                out.poison_records += 1;
                error!(
                    sequence_number = %origin.sequence_number,
                    shard = %origin.shard,
                    %reason,
                    "skipping a Kinesis record that can never be unpacked"
                );
            }
        }
        out.origins.push(origin);
    }
    out
}

fn decode(data: &[u8]) -> Result<wire::record::UserRecord, PoisonError> {
    let record = record::decode(data)?;
    transform::validate(&record)?;
    Ok(record)
}

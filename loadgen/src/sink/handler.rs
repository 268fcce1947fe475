//! One Kinesis operation at a time, from the parsed request to the JSON answer.
//!
//! A write goes: stream check → injected request fault (error or delay) → hash keys and
//! trade decoding, outside any lock → under the stream lock, placement on shards (injected
//! record failures, throttling, sequence numbers) and, under the verifier lock taken inside
//! it, the checks of every trade written → the answer. Holding the stream lock across the
//! checks is what makes the verifier see trades in sequence-number order; the expensive
//! part, decoding, is already done by then.

use std::ops::Range;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::StatusCode;
use tracing::debug;

use super::api::ApiError;
use super::faults::RequestFault;
use super::request::{PutRecord, PutRecords, Record, Request, parse_request};
use super::response::{PutRecordOutput, PutRecordsOutput, PutRecordsResult, to_json};
use super::stats::Counters;
use super::stream::{Placement, Stream, sequence_number};
use super::verify::{Observed, Unpacked, Verifier, decode_trades};
use super::{Shared, lock};

/// The error code of a record failed on purpose, as Kinesis words a server-side failure.
const INTERNAL_FAILURE: &str = "InternalFailure";
const INTERNAL_FAILURE_MESSAGE: &str = "Internal service failure.";
const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// Answers one request: `Ok` with a 200 body, or the error to answer with.
pub async fn handle(
    shared: &Shared,
    target: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let request = parse_request(target, content_type, body)?;
    if matches!(request, Request::PutRecords(_) | Request::PutRecord(_)) {
        Counters::add(&shared.counters.put_requests, 1);
    }
    match request {
        Request::PutRecords(put) => put_records(shared, put).await,
        Request::PutRecord(put) => put_record(shared, put).await,
        Request::ListShards(req) => {
            let mut stream = lock(&shared.stream);
            stream.reshard_if_due(Instant::now());
            stream.list_shards(&req).map(|out| to_json(&out))
        }
        Request::DescribeStream(req) => {
            let mut stream = lock(&shared.stream);
            stream.reshard_if_due(Instant::now());
            stream.describe(&req).map(|out| to_json(&out))
        }
        Request::DescribeStreamSummary(req) => {
            let mut stream = lock(&shared.stream);
            stream.reshard_if_due(Instant::now());
            stream.summary(&req).map(|out| to_json(&out))
        }
        Request::ListStreams(req) => Ok(to_json(&lock(&shared.stream).list_streams(req.limit))),
    }
}

/// Turns a handler result into the status, JSON body and `x-amzn-ErrorType` of the answer,
/// counting refusals: every 4xx but throttling, which is the client's pace, not its fault.
pub fn conclude(
    shared: &Shared,
    result: Result<Vec<u8>, ApiError>,
) -> (StatusCode, Vec<u8>, Option<&'static str>) {
    match result {
        Ok(body) => (StatusCode::OK, body, None),
        Err(err) => {
            if err.status().is_client_error() && !matches!(err, ApiError::Throughput(_)) {
                Counters::add(&shared.counters.rejected_requests, 1);
                debug!(status = err.status().as_u16(), error = %err, "request refused");
            }
            (err.status(), err.body(), Some(err.code()))
        }
    }
}

/// Rolls the request-level dice: fails the request, or waits and reports that it did.
async fn request_fault(shared: &Shared) -> Result<bool, ApiError> {
    match shared.faults.roll_request() {
        RequestFault::None => Ok(false),
        RequestFault::Fail(err) => {
            Counters::add(&shared.counters.requests_failed, 1);
            Err(err)
        }
        RequestFault::Delay(delay) => {
            Counters::add(&shared.counters.requests_delayed, 1);
            tokio::time::sleep(delay).await;
            Ok(true)
        }
    }
}

/// Records decoded into trades, ready to verify once their placement is known.
struct Decoded {
    trades: Vec<Observed>,
    /// The trades of record `i` are `trades[ranges[i].clone()]`.
    ranges: Vec<Range<usize>>,
    unpacked: Vec<Unpacked>,
}

fn decode(records: &mut [Record<'_>]) -> Decoded {
    let mut trades = Vec::new();
    let mut ranges = Vec::with_capacity(records.len());
    let mut unpacked = Vec::with_capacity(records.len());
    for record in records {
        let start = trades.len();
        let data = Bytes::from(std::mem::take(&mut record.data));
        unpacked.push(decode_trades(data, &record.partition_key, &mut trades));
        ranges.push(start..trades.len());
    }
    Decoded { trades, ranges, unpacked }
}

/// Places records and verifies the trades of those written, under both locks. Returns each
/// record's placement.
fn place_and_verify(
    shared: &Shared,
    stream: &mut Stream,
    keys: &[(u128, usize)],
    decoded: &Decoded,
) -> Vec<Placement> {
    // Taken under the lock, so the limiter's clock never runs backwards.
    let now = Instant::now();
    stream.reshard_if_due(now);
    let placements = stream.place(keys, now, &shared.faults);
    let arrival_us = now_us();
    let mut verifier: std::sync::MutexGuard<'_, Verifier> = lock(&shared.verifier);
    for (placement, range) in placements.iter().zip(&decoded.ranges) {
        if matches!(placement, Placement::Written { .. }) {
            verifier.observe_all(&decoded.trades[range.clone()], arrival_us);
        }
    }
    placements
}

/// Counts what the placements did, once per request.
fn count(
    shared: &Shared,
    placements: &[Placement],
    keys: &[(u128, usize)],
    decoded: &Decoded,
    delayed: bool,
) {
    let c = &shared.counters;
    let (mut written, mut bytes, mut throttled, mut failed) = (0, 0, 0, 0);
    let (mut bad_records, mut bad_user_records) = (0, 0);
    for ((placement, &(_, size)), unpacked) in placements.iter().zip(keys).zip(&decoded.unpacked) {
        match placement {
            Placement::Written { .. } => {
                written += 1;
                bytes += size as u64;
                bad_records += u64::from(unpacked.undecodable_record);
                bad_user_records += unpacked.undecodable_user_records;
            }
            Placement::Throttled { .. } => throttled += 1,
            Placement::Failed { .. } => failed += 1,
        }
    }
    Counters::add(&c.records_written, written);
    Counters::add(&c.bytes_written, bytes);
    Counters::add(&c.records_throttled, throttled);
    Counters::add(&c.records_failed, failed);
    Counters::add(&c.undecodable_records, bad_records);
    Counters::add(&c.undecodable_user_records, bad_user_records);
    if delayed {
        Counters::add(&c.delayed_records_written, written);
    }
}

async fn put_records(shared: &Shared, put: PutRecords<'_>) -> Result<Vec<u8>, ApiError> {
    let PutRecords { stream: stream_ref, mut records } = put;
    lock(&shared.stream).check(&stream_ref)?;
    let delayed = request_fault(shared).await?;
    let keys: Vec<(u128, usize)> =
        records.iter().map(|r| (r.hash_key(), r.billed_bytes())).collect();
    let decoded = decode(&mut records);
    let results = {
        let mut stream = lock(&shared.stream);
        let placements = place_and_verify(shared, &mut stream, &keys, &decoded);
        count(shared, &placements, &keys, &decoded, delayed);
        placements
            .iter()
            .map(|&placement| match placement {
                Placement::Written { shard, seq } => PutRecordsResult::Written {
                    sequence_number: sequence_number(seq),
                    shard_id: stream.shard_id(shard).to_owned(),
                },
                Placement::Throttled { shard } => PutRecordsResult::Failed {
                    error_code: THROTTLED,
                    error_message: stream.throttled_message(shard),
                },
                Placement::Failed { .. } => PutRecordsResult::Failed {
                    error_code: INTERNAL_FAILURE,
                    error_message: INTERNAL_FAILURE_MESSAGE.into(),
                },
            })
            .collect()
    };
    Ok(to_json(&PutRecordsOutput::new(results)))
}

async fn put_record(shared: &Shared, put: PutRecord<'_>) -> Result<Vec<u8>, ApiError> {
    let PutRecord { stream: stream_ref, record } = put;
    lock(&shared.stream).check(&stream_ref)?;
    let delayed = request_fault(shared).await?;
    let keys = [(record.hash_key(), record.billed_bytes())];
    let decoded = decode(&mut [record]);
    let mut stream = lock(&shared.stream);
    let placements = place_and_verify(shared, &mut stream, &keys, &decoded);
    count(shared, &placements, &keys, &decoded, delayed);
    match placements[0] {
        Placement::Written { shard, seq } => Ok(to_json(&PutRecordOutput::new(
            stream.shard_id(shard).to_owned(),
            sequence_number(seq),
        ))),
        Placement::Throttled { shard } => {
            Err(ApiError::Throughput(stream.throttled_message(shard)))
        }
        Placement::Failed { .. } => Err(ApiError::InternalFailure(INTERNAL_FAILURE_MESSAGE.into())),
    }
}

/// Microseconds since the Unix epoch, the unit of a user record's `rt`.
pub(crate) fn now_us() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

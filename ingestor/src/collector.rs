//! PutRecords requests: the batches of many shards share one call.
//!
//! Shard services submit the records they are ready to send; the collector packs the
//! submissions waiting for it into one request (at most 500 records and the configured
//! byte cap), sends it, and hands each service the results of its own records. A service
//! submits one batch at a time and waits for its results, so a request never holds two
//! batches of one shard and a shard's order stays the service's business.
//!
//! Most of the CPU a request costs (request building, JSON, signing, HTTP) is paid per
//! request, not per record. The batcher flushes its shards together, so their batches
//! arrive here within microseconds of each other and leave as one request instead of one
//! per shard. Requests run concurrently up to a limit; while every slot is busy,
//! submissions pile up and leave together in the next request.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, PutRecordsResultEntry};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::stats::Stats;

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

/// A whole request failed; every batch in it gets a copy.
#[derive(Debug, Clone)]
pub struct RequestError {
    pub failure: Failure,
    pub message: String,
    /// The stream was not found: it may have been recreated, so the shard map is stale.
    pub stream_missing: bool,
}

impl RequestError {
    fn from_sdk(err: &SdkError<PutRecordsError>) -> Self {
        let stream_missing = matches!(
            err,
            SdkError::ServiceError(c)
                if matches!(c.err(), PutRecordsError::ResourceNotFoundException(_))
        );
        Self {
            failure: classify(err),
            message: DisplayErrorContext(err).to_string(),
            stream_missing,
        }
    }
}

/// The results of one batch, in the order of its records, or why the request failed.
pub type Reply = Result<Vec<PutRecordsResultEntry>, RequestError>;

#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Records per request, at most the API's 500.
    pub max_records: usize,
    /// Billed bytes (data plus partition keys) per request, at most the API's 5 MiB.
    pub max_bytes: usize,
    /// Requests sent at once.
    pub max_in_flight: usize,
}

/// One shard's batch, waiting for a request.
struct Submission {
    records: Vec<PutRecordsRequestEntry>,
    bytes: usize,
    reply: oneshot::Sender<Reply>,
}

/// Submits batches to the collector task; cheap to clone, one per shard service.
#[derive(Clone)]
pub struct Collector {
    tx: mpsc::UnboundedSender<Submission>,
}

impl Collector {
    /// Starts the collector task on the current runtime. It ends once every handle is
    /// dropped and the requests it started have been answered.
    pub fn start(client: Client, stream: String, limits: RequestLimits, stats: Arc<Stats>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = Arc::new(Sender { client, stream, stats });
        tokio::spawn(collect(rx, sender, limits));
        Self { tx }
    }

    /// Sends `records` (billed at `bytes`) in the next request and returns their results.
    pub async fn put(&self, records: Vec<PutRecordsRequestEntry>, bytes: usize) -> Reply {
        let (reply, answer) = oneshot::channel();
        let stopped = || RequestError {
            failure: Failure::Fatal,
            message: "the request collector has stopped".into(),
            stream_missing: false,
        };
        if self.tx.send(Submission { records, bytes, reply }).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The submissions packed into one request.
#[derive(Default)]
struct Request {
    records: Vec<PutRecordsRequestEntry>,
    bytes: usize,
    /// Each batch's record count and where its results go, in request order.
    parts: Vec<(usize, oneshot::Sender<Reply>)>,
}

impl Request {
    fn fits(&self, s: &Submission, limits: &RequestLimits) -> bool {
        self.records.len() + s.records.len() <= limits.max_records
            && self.bytes + s.bytes <= limits.max_bytes
    }

    fn push(&mut self, s: Submission) {
        self.parts.push((s.records.len(), s.reply));
        self.bytes += s.bytes;
        self.records.extend(s.records);
    }
}

/// How long a request waits for more batches after its first. Tokio's timer ticks in
/// milliseconds, so this adds one to two milliseconds to every request; that buys one
/// request per flush instead of a few, and costs little against a linger of 20 ms.
const GATHER: Duration = Duration::from_millis(1);

async fn collect(
    mut rx: mpsc::UnboundedReceiver<Submission>,
    sender: Arc<Sender>,
    limits: RequestLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut carried: Option<Submission> = None;
    loop {
        let first = match carried.take() {
            Some(s) => s,
            None => match rx.recv().await {
                Some(s) => s,
                None => break,
            },
        };
        // Wait for a slot before gathering: whatever arrives meanwhile joins this request.
        let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let mut request = Request::default();
        request.push(first);
        // The services woken by the same flush reach this point one by one, over some
        // tens of microseconds: wait a moment for the rest of them.
        let deadline = tokio::time::Instant::now() + GATHER;
        while let Ok(Some(s)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            // Every batch fits an empty request; the batcher sizes them so.
            if !request.fits(&s, &limits) {
                carried = Some(s);
                break;
            }
            request.push(s);
        }
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.send(request).await;
            drop(permit);
        });
    }
    // Wait for the requests still out, so that the task's end means all were answered.
    let _ = slots.acquire_many(limits.max_in_flight as u32).await;
}

struct Sender {
    client: Client,
    stream: String,
    stats: Arc<Stats>,
}

impl Sender {
    async fn send(&self, request: Request) {
        let Request { records, parts, .. } = request;
        let stats = &self.stats;
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
                let mut results = out.records.into_iter();
                for (n, reply) in parts {
                    // A short response leaves the last batches short; their services
                    // treat the missing results as failures.
                    let _ = reply.send(Ok(results.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                let err = RequestError::from_sdk(&e);
                if err.failure == Failure::RetryUncertain {
                    stats.requests_uncertain.fetch_add(1, Relaxed);
                }
                for (_, reply) in parts {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

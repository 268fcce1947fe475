//! The local runner: polls every shard of a stream the way Lambda's event source mapping
//! does and hands each batch to the same [`handle_batch`] that Lambda calls.
//!
//! One task per shard: GetShardIterator (TRIM_HORIZON or LATEST), then GetRecords in a
//! loop. Each non-empty response becomes a [`KinesisEvent`], built by deserializing the
//! JSON Lambda sends so that the handler sees exactly what it sees in AWS. When the
//! handler reports a batch item failure, the shard backs off and reads again from that
//! sequence number (AT_SEQUENCE_NUMBER), as Lambda does. An empty response waits one poll
//! interval.
//!
//! Resharding: a shard whose GetRecords returns no next iterator is closed and drained.
//! A shard starts only once its parents are drained (or gone from the stream), so one
//! symbol's trades are handled in order across a split or merge. The shard list is
//! refreshed whenever a shard closes and every [`SHARD_REFRESH_INTERVAL`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_sdk_kinesis::Client as KinesisClient;
use aws_sdk_kinesis::types::{Record, Shard, ShardIteratorType};
use base64::Engine as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::{LocalConfig, StartPosition};
use crate::handler::{BatchStats, handle_batch};
use crate::retry;
use crate::store::Store;

/// How often the shard list is read again even when no shard closed, to notice shards
/// that appear without one of ours closing (a reshard begun before the runner started).
pub const SHARD_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Account id in the ARN the runner gives itself as the invoking identity; Lambda would
/// put the function's execution role there.
const LOCAL_ROLE_ARN: &str = "arn:aws:iam::000000000000:role/tickpipe-local";

/// A Kinesis call that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LocalError {
    #[error("{op} on stream {stream} failed with {code}: {message}")]
    Kinesis { op: &'static str, stream: String, code: String, message: String, retryable: bool },
    #[error("could not build the Kinesis event for the handler: {0}")]
    Event(String),
}

impl LocalError {
    pub fn is_retryable(&self) -> bool {
        match self {
            LocalError::Kinesis { retryable, .. } => *retryable,
            LocalError::Event(_) => false,
        }
    }

    fn kinesis<E>(
        op: &'static str,
        stream: &str,
        err: &aws_sdk_kinesis::error::SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
    ) -> Self
    where
        E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        LocalError::Kinesis {
            op,
            stream: stream.to_owned(),
            code: retry::error_code(err).to_owned(),
            message: aws_sdk_kinesis::error::DisplayErrorContext(err).to_string(),
            retryable: retry::is_retryable(err),
        }
    }
}

/// Totals over a run of the local runner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalStats {
    /// Batches handed to the handler, retried ones included.
    pub batches: u64,
    /// Batches the handler reported as not fully stored.
    pub failed_batches: u64,
    pub kinesis_records: u64,
    pub user_records: u64,
    pub trades_written: u64,
    pub candles_written: u64,
    pub latest_updated: u64,
    pub duplicates: u64,
    pub poison_records: u64,
    pub poison_user_records: u64,
    /// Shards read to their end after a reshard.
    pub shards_drained: u64,
}

impl LocalStats {
    fn add(&mut self, b: &BatchStats, failed: bool) {
        self.batches += 1;
        self.failed_batches += u64::from(failed);
        self.kinesis_records += b.kinesis_records as u64;
        self.user_records += b.user_records as u64;
        self.trades_written += b.write.trades_written as u64;
        self.candles_written += b.write.candles_written as u64;
        self.latest_updated += b.write.latest_updated as u64;
        self.duplicates += b.duplicates as u64;
        self.poison_records += b.poison_records as u64;
        self.poison_user_records += b.poison_user_records as u64;
    }
}

/// What every shard task shares.
struct Context {
    config: LocalConfig,
    kinesis: KinesisClient,
    store: Store,
    stream_arn: String,
    region: String,
    stats: Mutex<LocalStats>,
}

/// How a shard task ended.
enum ShardEnd {
    /// Read to its end: the shard is closed and everything in it handled.
    Drained,
    /// Shutdown came first.
    Stopped,
}

/// Polls every shard of `config.stream` until `shutdown` completes, writing through
/// `dynamo`. Returns the totals.
pub async fn run_local(
    config: LocalConfig,
    kinesis: KinesisClient,
    dynamo: aws_sdk_dynamodb::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<LocalStats> {
    let summary = kinesis
        .describe_stream_summary()
        .stream_name(&config.stream)
        .send()
        .await
        .map_err(|e| LocalError::kinesis("DescribeStreamSummary", &config.stream, &e))
        .with_context(|| format!("reading stream {}", config.stream))?;
    let stream_arn =
        summary.stream_description_summary().map(|s| s.stream_arn().to_owned()).unwrap_or_default();
    let region = kinesis.config().region().map(|r| r.to_string()).unwrap_or_default();
    let store = Store::new(dynamo, config.store.clone());
    info!(
        stream = config.stream,
        table = store.config().table,
        batch_size = config.batch_size,
        poll_interval = ?config.poll_interval,
        start_position = ?config.start_position,
        "local runner starting"
    );
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // The receivers may all be gone already when the run ended on its own.
        let _ = stop_tx.send(true);
    });
    let ctx = Arc::new(Context {
        config,
        kinesis,
        store,
        stream_arn,
        region,
        stats: Mutex::new(LocalStats::default()),
    });
    let result = supervise(&ctx, stop).await;
    let stats = ctx.stats.lock().expect("stats lock is never held across a panic").clone();
    info!(
        batches = stats.batches,
        kinesis_records = stats.kinesis_records,
        trades_written = stats.trades_written,
        poison = stats.poison_records + stats.poison_user_records,
        "local runner stopped"
    );
    result.map(|()| stats)
}

/// Starts shard tasks in lineage order and keeps them running until shutdown.
async fn supervise(ctx: &Arc<Context>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut tasks: JoinSet<(String, Result<ShardEnd, LocalError>)> = JoinSet::new();
    let mut started: HashSet<String> = HashSet::new();
    let mut drained: HashSet<String> = HashSet::new();
    let mut first_listing = true;
    let mut progress = tokio::time::interval(ctx.config.progress_interval);
    progress.reset();
    let mut refresh = tokio::time::interval(SHARD_REFRESH_INTERVAL);
    let mut last_progress = (Instant::now(), LocalStats::default());

    loop {
        if *stop.borrow() {
            break;
        }
        match list_shards(ctx).await {
            Ok(shards) => {
                start_ready_shards(
                    ctx,
                    &shards,
                    first_listing,
                    &mut started,
                    &mut drained,
                    &mut tasks,
                    &stop,
                );
                first_listing = false;
            }
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "could not list shards; trying again later")
            }
            Err(e) => return Err(e).context("listing shards"),
        }
        if tasks.is_empty() && !first_listing {
            info!(stream = ctx.config.stream, "every shard is closed and drained");
            return Ok(());
        }
        // Wait for a shard to close, a refresh, a progress line, or shutdown.
        loop {
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let (shard, end) = joined.context("shard task panicked")?;
                    match end {
                        Ok(ShardEnd::Drained) => {
                            info!(shard, "shard closed and drained");
                            ctx.stats.lock().expect("stats lock is never held across a panic").shards_drained += 1;
                            drained.insert(shard);
                            break;
                        }
                        Ok(ShardEnd::Stopped) => {}
                        Err(e) => {
                            error!(shard, error = %e, "shard cannot be read; stopping");
                            return Err(e).with_context(|| format!("reading shard {shard}"));
                        }
                    }
                }
                _ = refresh.tick() => break,
                _ = progress.tick() => log_progress(ctx, &mut last_progress, tasks.len()),
                _ = stop.changed() => break,
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((shard, Err(e))) = joined {
            warn!(shard, error = %e, "shard task ended with an error during shutdown");
        }
    }
    Ok(())
}

fn start_ready_shards(
    ctx: &Arc<Context>,
    shards: &[Shard],
    first_listing: bool,
    started: &mut HashSet<String>,
    drained: &mut HashSet<String>,
    tasks: &mut JoinSet<(String, Result<ShardEnd, LocalError>)>,
    stop: &watch::Receiver<bool>,
) {
    let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id()).collect();
    let is_closed =
        |s: &Shard| s.sequence_number_range().is_some_and(|r| r.ending_sequence_number().is_some());
    // From LATEST, shards already closed at startup hold nothing new.
    if first_listing && ctx.config.start_position == StartPosition::Latest {
        for s in shards.iter().filter(|s| is_closed(s)) {
            drained.insert(s.shard_id().to_owned());
        }
    }
    for s in shards {
        let id = s.shard_id();
        if started.contains(id) || drained.contains(id) {
            continue;
        }
        // A parent that is no longer listed has been trimmed away: nothing left to wait for.
        let parent_done =
            |p: Option<&str>| p.is_none_or(|p| drained.contains(p) || !listed.contains(p));
        if !(parent_done(s.parent_shard_id()) && parent_done(s.adjacent_parent_shard_id())) {
            continue;
        }
        // Only shards open at startup honour LATEST; children of a reshard are read from
        // their start, or their first records would be skipped.
        let start = if first_listing && ctx.config.start_position == StartPosition::Latest {
            ShardIteratorType::Latest
        } else {
            ShardIteratorType::TrimHorizon
        };
        info!(shard = id, start = start.as_str(), "polling shard");
        started.insert(id.to_owned());
        let (ctx, id, stop) = (ctx.clone(), id.to_owned(), stop.clone());
        tasks.spawn(async move {
            let end = poll_shard(&ctx, &id, start, stop).await;
            (id, end)
        });
    }
}

fn log_progress(ctx: &Context, last: &mut (Instant, LocalStats), active_shards: usize) {
    let now = Instant::now();
    let stats = ctx.stats.lock().expect("stats lock is never held across a panic").clone();
    let secs = now.duration_since(last.0).as_secs_f64().max(f64::EPSILON);
    let rate = (stats.trades_written - last.1.trades_written) as f64 / secs;
    info!(
        active_shards,
        batches = stats.batches,
        kinesis_records = stats.kinesis_records,
        trades_written = stats.trades_written,
        trades_per_sec = rate.round() as u64,
        failed_batches = stats.failed_batches,
        poison = stats.poison_records + stats.poison_user_records,
        "progress"
    );
    *last = (now, stats);
}

/// Every shard of the stream, following `next_token` (which must be sent alone).
async fn list_shards(ctx: &Context) -> Result<Vec<Shard>, LocalError> {
    let stream = &ctx.config.stream;
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let request = ctx.kinesis.list_shards();
        let request = match next_token.take() {
            Some(token) => request.next_token(token),
            None => request.stream_name(stream),
        };
        let out =
            request.send().await.map_err(|e| LocalError::kinesis("ListShards", stream, &e))?;
        shards.extend_from_slice(out.shards());
        match out.next_token() {
            Some(token) => next_token = Some(token.to_owned()),
            None => return Ok(shards),
        }
    }
}

/// Where to (re)open a shard iterator.
enum Resume {
    Start(ShardIteratorType),
    At(String),
    After(String),
}

/// Reads one shard until it is drained or shutdown comes.
async fn poll_shard(
    ctx: &Context,
    shard: &str,
    start: ShardIteratorType,
    mut stop: watch::Receiver<bool>,
) -> Result<ShardEnd, LocalError> {
    let stream = &ctx.config.stream;
    let backoff = ctx.config.retry_backoff;
    let mut resume = Resume::Start(start);
    let mut iterator: Option<String> = None;
    // Consecutive failures, for the backoff; reset by every success.
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return Ok(ShardEnd::Stopped);
        }
        let current = match iterator.take() {
            Some(it) => it,
            None => match shard_iterator(ctx, shard, &resume).await {
                Ok(Some(it)) => it,
                Ok(None) => return Ok(ShardEnd::Drained),
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    warn!(shard, error = %e, "could not open shard iterator; retrying");
                    if sleep_or_stop(backoff.delay(failures), &mut stop).await {
                        return Ok(ShardEnd::Stopped);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let read = tokio::select! {
            read = ctx.kinesis.get_records().shard_iterator(&current).limit(ctx.config.batch_size).send() => read,
            _ = stop.changed() => return Ok(ShardEnd::Stopped),
        };
        let out = match read {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_expired_iterator_exception()) => {
                // Iterators live five minutes; open a new one where this one stood.
                continue;
            }
            Err(e) => {
                let e = LocalError::kinesis("GetRecords", stream, &e);
                if !e.is_retryable() {
                    return Err(e);
                }
                failures += 1;
                warn!(shard, error = %e, "GetRecords failed; retrying");
                iterator = Some(current);
                if sleep_or_stop(backoff.delay(failures), &mut stop).await {
                    return Ok(ShardEnd::Stopped);
                }
                continue;
            }
        };
        let next = out.next_shard_iterator().map(str::to_owned);
        if out.records().is_empty() {
            failures = 0;
            let Some(next) = next else { return Ok(ShardEnd::Drained) };
            iterator = Some(next);
            if sleep_or_stop(ctx.config.poll_interval, &mut stop).await {
                return Ok(ShardEnd::Stopped);
            }
            continue;
        }

        let last_seq = out.records().last().map(|r| r.sequence_number().to_owned());
        let event = build_event(out.records(), shard, &ctx.stream_arn, &ctx.region)?;
        let outcome = handle_batch(event, &ctx.store, None).await;
        let retry_from = outcome.retry_from().map(str::to_owned);
        ctx.stats
            .lock()
            .expect("stats lock is never held across a panic")
            .add(&outcome.stats, retry_from.is_some());
        match retry_from {
            Some(seq) => {
                failures += 1;
                warn!(
                    shard,
                    sequence_number = seq,
                    attempt = failures,
                    "batch not fully stored; reading it again"
                );
                resume = Resume::At(seq);
                if sleep_or_stop(backoff.delay(failures), &mut stop).await {
                    return Ok(ShardEnd::Stopped);
                }
            }
            None => {
                failures = 0;
                if let Some(seq) = last_seq {
                    resume = Resume::After(seq);
                }
                match next {
                    Some(next) => iterator = Some(next),
                    None => return Ok(ShardEnd::Drained),
                }
            }
        }
    }
}

async fn shard_iterator(
    ctx: &Context,
    shard: &str,
    resume: &Resume,
) -> Result<Option<String>, LocalError> {
    let request = ctx.kinesis.get_shard_iterator().stream_name(&ctx.config.stream).shard_id(shard);
    let request = match resume {
        Resume::Start(kind) => request.shard_iterator_type(kind.clone()),
        Resume::At(seq) => request
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number(seq),
        Resume::After(seq) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
    };
    let out = request
        .send()
        .await
        .map_err(|e| LocalError::kinesis("GetShardIterator", &ctx.config.stream, &e))?;
    Ok(out.shard_iterator().map(str::to_owned))
}

/// Sleeps for `d`; returns true if shutdown came first.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

/// The event Lambda would send for `records` of `shard`, built from the same JSON.
pub fn build_event(
    records: &[Record],
    shard: &str,
    stream_arn: &str,
    region: &str,
) -> Result<KinesisEvent, LocalError> {
    let base64 = base64::engine::general_purpose::STANDARD;
    let records = records
        .iter()
        .map(|r| EventRecordJson {
            kinesis: KinesisJson {
                kinesis_schema_version: "1.0",
                partition_key: r.partition_key().unwrap_or_default(),
                sequence_number: r.sequence_number(),
                data: base64.encode(r.data().as_ref()),
                approximate_arrival_timestamp: r
                    .approximate_arrival_timestamp()
                    .map_or(0.0, |t| t.as_secs_f64()),
            },
            event_source: "aws:kinesis",
            event_version: "1.0",
            event_id: format!("{shard}:{}", r.sequence_number()),
            event_name: "aws:kinesis:record",
            invoke_identity_arn: LOCAL_ROLE_ARN,
            aws_region: region,
            event_source_arn: stream_arn,
        })
        .collect();
    let json = serde_json::to_value(EventJson { records })
        .map_err(|e| LocalError::Event(e.to_string()))?;
    serde_json::from_value(json).map_err(|e| LocalError::Event(e.to_string()))
}

/// The shape of Lambda's Kinesis event, for serializing only.
#[derive(Serialize)]
struct EventJson<'a> {
    #[serde(rename = "Records")]
    records: Vec<EventRecordJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventRecordJson<'a> {
    kinesis: KinesisJson<'a>,
    event_source: &'static str,
    event_version: &'static str,
    #[serde(rename = "eventID")]
    event_id: String,
    event_name: &'static str,
    invoke_identity_arn: &'static str,
    aws_region: &'a str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KinesisJson<'a> {
    kinesis_schema_version: &'static str,
    partition_key: &'a str,
    sequence_number: &'a str,
    data: String,
    approximate_arrival_timestamp: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::{Blob, DateTime};

    #[test]
    fn events_look_like_lambdas() {
        let record = Record::builder()
            .sequence_number("49568167373333333333")
            .partition_key("AAPL")
            .data(Blob::new(b"{\"s\":\"AAPL\"}".to_vec()))
            .approximate_arrival_timestamp(DateTime::from_secs(1480641523))
            .build()
            .unwrap();
        let event = build_event(
            &[record],
            "shardId-000000000003",
            "arn:aws:kinesis:us-east-1:000000000000:stream/s",
            "us-east-1",
        )
        .unwrap();
        let r = &event.records[0];
        assert_eq!(r.event_id.as_deref(), Some("shardId-000000000003:49568167373333333333"));
        assert_eq!(r.event_source.as_deref(), Some("aws:kinesis"));
        assert_eq!(r.kinesis.partition_key, "AAPL");
        assert_eq!(r.kinesis.sequence_number, "49568167373333333333");
        assert_eq!(&r.kinesis.data[..], b"{\"s\":\"AAPL\"}");
        assert_eq!(r.kinesis.approximate_arrival_timestamp.timestamp(), 1480641523);
    }
}

//! Support for tickpipe's end-to-end tests: clients for the local stand-ins, uniquely
//! named streams and tables, and bounded waits.
//!
//! The tests in `tests/` run the real parts in-process (the loadgen feed over a real
//! websocket, the ingestor, the Lambda runner) against the local Kinesis and DynamoDB
//! stand-ins that `scripts/test.sh` starts on free ports and names in
//! `TICKPIPE_TEST_KINESIS_ENDPOINT` and `TICKPIPE_TEST_DYNAMODB_ENDPOINT`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use aws_sdk_kinesis::types::StreamStatus;
use clap::Parser;
use ingestor::config::IngestorConfig;
use ingestor::stats::Stats;
use loadgen::feed::{Feed, FeedConfig, FeedHandle, Script};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The endpoint a test needs, from the environment `scripts/test.sh` sets up.
pub fn endpoint(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test.sh, which starts the stand-ins")
    })
}

/// AWS configuration for a local stand-in: fixed region and throwaway credentials.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "test", "test", None, None, "e2e",
        ))
        .endpoint_url(endpoint)
        .load()
        .await
}

pub async fn kinesis_config() -> aws_config::SdkConfig {
    sdk_config(&endpoint("TICKPIPE_TEST_KINESIS_ENDPOINT")).await
}

pub async fn dynamodb_config() -> aws_config::SdkConfig {
    sdk_config(&endpoint("TICKPIPE_TEST_DYNAMODB_ENDPOINT")).await
}

/// A name no other test in any concurrent run uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id())
}

/// Polls `check` until it returns `Some`, or fails after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a stream and waits until it is active.
pub async fn create_stream(
    client: &aws_sdk_kinesis::Client,
    name: &str,
    shards: i32,
) -> anyhow::Result<()> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .with_context(|| format!("creating stream {name}"))?;
    wait_for("the stream to become active", Duration::from_secs(30), || async {
        let out = client.describe_stream_summary().stream_name(name).send().await?;
        let active = out
            .stream_description_summary()
            .is_some_and(|s| *s.stream_status() == StreamStatus::Active);
        Ok(active.then_some(()))
    })
    .await
}

/// Creates a table with tickpipe's key schema and waits until it is active.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) -> anyhow::Result<()> {
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type are set")
    };
    let key = |n: &str, t| {
        KeySchemaElement::builder().attribute_name(n).key_type(t).build().expect("name and type")
    };
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .with_context(|| format!("creating table {name}"))?;
    wait_for("the table to become active", Duration::from_secs(30), || async {
        let out = client.describe_table().table_name(name).send().await?;
        let active = out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active);
        Ok(active.then_some(()))
    })
    .await
}

#[derive(Parser)]
struct IngestorCli {
    #[command(flatten)]
    config: IngestorConfig,
}

/// A scripted feed on port 0 and an in-process ingestor reading it into a stream.
pub struct Ingest {
    pub feed: FeedHandle,
    pub stats: Arc<Stats>,
    stop_feed: oneshot::Sender<()>,
    stop_ingestor: oneshot::Sender<()>,
    feed_task: JoinHandle<Result<loadgen::feed::FeedStats, loadgen::feed::FeedError>>,
    ingestor_task: JoinHandle<anyhow::Result<ingestor::Report>>,
}

/// Starts `script` on a feed and an ingestor subscribed to `symbols` that writes to
/// `stream` through the Kinesis configured in `sdk`. `extra` are more ingestor flags.
pub async fn start_ingest(
    sdk: &aws_config::SdkConfig,
    script: Script,
    symbols: &[&str],
    stream: &str,
    extra: &[&str],
) -> anyhow::Result<Ingest> {
    let feed = Feed::new(FeedConfig::scripted(script))?;
    let handle = feed.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/", listener.local_addr()?);
    let (stop_feed, feed_stopped) = oneshot::channel::<()>();
    let feed_task = tokio::spawn(feed.serve(listener, async {
        let _ = feed_stopped.await;
    }));
    let symbols = symbols.join(",");
    let mut args = vec!["ingestor", "--url", &url, "--symbols", &symbols, "--stream", stream];
    args.extend_from_slice(&["--linger", "10ms", "--metrics-listen", "off"]);
    args.extend_from_slice(extra);
    let config = IngestorCli::try_parse_from(args)?.config;
    let stats = Arc::new(Stats::default());
    let client = ingestor::kinesis_client(sdk, &config);
    let (stop_ingestor, ingestor_stopped) = oneshot::channel::<()>();
    let ingestor_task = tokio::spawn(ingestor::run(config, client, stats.clone(), async {
        let _ = ingestor_stopped.await;
    }));
    Ok(Ingest { feed: handle, stats, stop_feed, stop_ingestor, feed_task, ingestor_task })
}

impl Ingest {
    /// Waits until the script is sent and the ingestor has received and Kinesis has
    /// acknowledged exactly `expected` trades.
    pub async fn wait_acked(&self, expected: u64) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(60), self.feed.script_done()).await?;
        wait_for("every trade acknowledged", Duration::from_secs(60), || async {
            let s = self.stats.summary();
            Ok((s.received == expected && s.acked == expected).then_some(()))
        })
        .await
    }

    /// Stops the ingestor (it flushes), then the feed, and returns the ingestor's report.
    pub async fn stop(self) -> anyhow::Result<ingestor::Report> {
        let _ = self.stop_ingestor.send(());
        let report = self.ingestor_task.await??;
        let _ = self.stop_feed.send(());
        self.feed_task.await??;
        Ok(report)
    }
}

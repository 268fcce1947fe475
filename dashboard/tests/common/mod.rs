//! Helpers the dashboard's integration tests share: a DynamoDB client for dynalite, table
//! setup, items in the Lambda's schema, an in-process dashboard on port 0, and a tiny
//! HTTP client.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, TableStatus, WriteRequest,
};
use bytes::Bytes;
use dashboard::DashboardConfig;
use http_body_util::{BodyExt as _, Empty};
use hyper::http::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire::table;

pub const ENDPOINT_VAR: &str = "TICKPIPE_TEST_DYNAMODB_ENDPOINT";

/// The dynalite endpoint `scripts/test.sh` started. A missing endpoint fails the test: a
/// test that silently passes without its server proves nothing.
pub fn dynamo_endpoint() -> String {
    std::env::var(ENDPOINT_VAR).unwrap_or_else(|_| {
        panic!(
            "{ENDPOINT_VAR} is not set: run scripts/test.sh, which starts dynalite on a free \
             port and exports it"
        )
    })
}

/// SDK config for a local endpoint with dummy credentials, set here rather than through
/// the process environment so tests can run in parallel.
pub fn sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            Credentials::new("test", "test", None, None, "test"),
        ))
        .endpoint_url(endpoint)
        .build()
}

/// A client with the dashboard's own timeouts, as `main` would build it.
pub fn client(endpoint: &str, config: &DashboardConfig) -> Client {
    dashboard::dynamo_client_from(&sdk_config(endpoint), config)
}

/// A table name no other test (or earlier run against the same dynalite) uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("ms since 1970 fit in u64")
}

/// Creates the table with the schema the Lambda writes (string `pk` and `sk`) and waits
/// until it is ACTIVE.
pub async fn create_table(client: &Client, name: &str) -> anyhow::Result<()> {
    let key =
        |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    client
        .create_table()
        .table_name(name)
        .key_schema(key(table::PK, KeyType::Hash)?)
        .key_schema(key(table::SK, KeyType::Range)?)
        .attribute_definitions(attr(table::PK)?)
        .attribute_definitions(attr(table::SK)?)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("creating table {name}"), e))?;
    // Writes to a table that is still CREATING fail with ResourceNotFoundException, in
    // dynalite (even with --createTableMs 0) as in DynamoDB.
    eventually("the table to become ACTIVE", Duration::from_secs(30), || async {
        let described = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeTable", e))?;
        let status = described.table().and_then(|t| t.table_status());
        Ok((status == Some(&TableStatus::Active)).then_some(()))
    })
    .await
}

/// An SDK error with its whole chain of causes; its `Display` alone says "service error".
pub fn sdk_error(what: &str, e: impl std::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", DisplayErrorContext(&e))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A latest-price item as the Lambda writes it.
pub fn latest_item(symbol: &str, price: f64, t: u64) -> Vec<(&'static str, AttributeValue)> {
    vec![
        (table::PK, s(table::LATEST_PK)),
        (table::SK, s(symbol)),
        (table::PRICE, n(price)),
        (table::T, n(t)),
        (table::UPDATED_AT, n(t + 42)),
    ]
}

#[derive(Debug, Clone, Copy)]
pub struct TestCandle {
    pub t: u64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    pub count: u64,
}

/// A 1-minute candle item as the Lambda writes it, high-water marks included.
pub fn candle_item(symbol: &str, c: &TestCandle) -> Vec<(&'static str, AttributeValue)> {
    let notional = c.volume * (c.open + c.close) / 2.0;
    vec![
        (table::PK, s(table::candle_pk(symbol, table::CANDLE_1M))),
        (table::SK, s(table::candle_sk(c.t))),
        (table::OPEN, n(c.open)),
        (table::HIGH, n(c.high)),
        (table::LOW, n(c.low)),
        (table::CLOSE, n(c.close)),
        (table::VOLUME, n(c.volume)),
        (table::NOTIONAL, n(notional)),
        (table::COUNT, n(c.count)),
        (table::VWAP, n(notional / c.volume)),
        (table::FIRST_T, n(c.t + 1)),
        (table::LAST_T, n(c.t + 59_000)),
        (
            table::HIGH_WATER,
            AttributeValue::M(
                [(
                    "shardId-000000000000".to_owned(),
                    s("49590338271490256608559692538361571095921575989136588898"),
                )]
                .into(),
            ),
        ),
    ]
}

pub async fn put(
    client: &Client,
    table_name: &str,
    item: Vec<(&'static str, AttributeValue)>,
) -> anyhow::Result<()> {
    let item = item.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    client
        .put_item()
        .table_name(table_name)
        .set_item(Some(item))
        .send()
        .await
        .map_err(|e| sdk_error("PutItem", e))?;
    Ok(())
}

/// Writes many items 25 at a time (the BatchWriteItem limit); dynalite never leaves
/// unprocessed items, and the test checks that it did not.
pub async fn put_many(
    client: &Client,
    table_name: &str,
    items: Vec<Vec<(&'static str, AttributeValue)>>,
) -> anyhow::Result<()> {
    let requests: Vec<WriteRequest> = items
        .into_iter()
        .map(|item| {
            let item = item.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let put = PutRequest::builder().set_item(Some(item)).build()?;
            Ok(WriteRequest::builder().put_request(put).build())
        })
        .collect::<anyhow::Result<_>>()?;
    for chunk in requests.chunks(wire::limits::BATCH_WRITE_MAX_ITEMS) {
        let out = client
            .batch_write_item()
            .request_items(table_name, chunk.to_vec())
            .send()
            .await
            .map_err(|e| sdk_error("BatchWriteItem", e))?;
        let unprocessed = out.unprocessed_items().map_or(0, |m| m.values().map(Vec::len).sum());
        anyhow::ensure!(unprocessed == 0, "dynalite left {unprocessed} items unprocessed");
    }
    Ok(())
}

/// A dashboard served in-process on a port the kernel picked; stops when dropped.
pub struct Dashboard {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Dashboard {
    pub async fn start(client: Client, config: DashboardConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // A dropped sender means the test is over: stop as well.
            let _ = stopped.await;
        };
        let task = tokio::spawn(dashboard::run(config, client, listener, shutdown));
        Ok(Self { addr, stop: Some(stop), task: Some(task) })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("stop runs once");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .context("dashboard did not stop within 10s")??
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection, bounded to 15 s.
pub async fn request(addr: SocketAddr, method: Method, path: &str) -> anyhow::Result<Reply> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Reply { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .with_context(|| format!("{path}: no answer within 15s"))?
}

pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    request(addr, Method::GET, path).await
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Helpers shared by the integration tests: events built from real user records, clients
//! for the local stand-ins, unique names, bounded polling.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use base64::Engine as _;
use lambda::StoreConfig;
use lambda::retry::Backoff;
use wire::finnhub::Trade;
use wire::kpl::Aggregator;
use wire::record::Receipt;

pub const DYNAMODB_ENV: &str = "TICKPIPE_TEST_DYNAMODB_ENDPOINT";
pub const KINESIS_ENV: &str = "TICKPIPE_TEST_KINESIS_ENDPOINT";
pub const SRC: &str = "test.1";
pub const REGION: &str = "us-east-1";

/// The endpoint in `var`; without it the test fails, never passes silently.
pub fn endpoint(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: this test needs the local stand-ins. Run scripts/test.sh, which \
             starts them on free ports and exports {DYNAMODB_ENV} and {KINESIS_ENV}."
        ),
    }
}

async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(REGION)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .load()
        .await
}

pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(&endpoint(DYNAMODB_ENV)).await)
}

pub async fn kinesis_client() -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::new(&sdk_config(&endpoint(KINESIS_ENV)).await)
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// A store config that retries quickly, for tests.
pub fn store_config(table: &str) -> StoreConfig {
    StoreConfig {
        table: table.to_owned(),
        max_attempts: 4,
        backoff: Backoff { base: Duration::from_millis(1), max: Duration::from_millis(5) },
        ..StoreConfig::default()
    }
}

/// Creates a table with the tickpipe schema and waits until it is active.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key =
        |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
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
        .expect("create table");
    poll_until(Duration::from_secs(30), "table to become active", || async {
        let out = client.describe_table().table_name(name).send().await.ok()?;
        (out.table()?.table_status() == Some(&TableStatus::Active)).then_some(())
    })
    .await;
}

/// Calls `f` until it returns `Some`, at most `limit` long, and returns that value.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub type Item = HashMap<String, AttributeValue>;

/// All items under one partition key.
pub async fn query(client: &aws_sdk_dynamodb::Client, table: &str, pk: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("query");
        items.extend(out.items().iter().cloned());
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return items;
        }
    }
}

pub async fn get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    sk: &str,
) -> Option<Item> {
    client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.to_owned()))
        .key("sk", AttributeValue::S(sk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item()
        .cloned()
}

pub fn n(item: &Item, name: &str) -> f64 {
    item[name].as_n().unwrap_or_else(|_| panic!("{name} is not a number")).parse().unwrap()
}

/// One trade as the ingestor writes it.
pub fn user_record(symbol: &str, price: f64, volume: f64, t: u64, seq: u64) -> Vec<u8> {
    user_record_with(symbol, price, volume, t, seq, &[])
}

pub fn user_record_with(
    symbol: &str,
    price: f64,
    volume: f64,
    t: u64,
    seq: u64,
    conditions: &[&str],
) -> Vec<u8> {
    let trade = Trade {
        symbol,
        price,
        time_ms: t,
        volume,
        conditions: conditions.iter().copied().collect(),
    };
    let mut out = Vec::new();
    wire::record::encode(&mut out, &trade, Receipt { src: SRC, seq, rt_us: t * 1000 + 7 });
    out
}

/// Packs user records (partition key, data) into one aggregated record.
pub fn aggregate(records: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut agg = Aggregator::new();
    for (key, data) in records {
        agg.push(key, data);
    }
    agg.finish().expect("at least one record").0
}

/// A Kinesis record as Lambda delivers it.
pub struct KRecord<'a> {
    pub shard: &'a str,
    pub seq: &'a str,
    pub partition_key: &'a str,
    pub data: Vec<u8>,
}

/// The event Lambda would send, built from its JSON form.
pub fn event(records: &[KRecord<'_>]) -> KinesisEvent {
    let b64 = base64::engine::general_purpose::STANDARD;
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r.partition_key,
                    "sequenceNumber": r.seq,
                    "data": b64.encode(&r.data),
                    "approximateArrivalTimestamp": 1628238530.5
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("{}:{}", r.shard, r.seq),
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/test",
                "awsRegion": REGION,
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/test"
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).expect("valid event")
}

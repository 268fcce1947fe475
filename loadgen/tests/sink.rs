//! The sink against the real `aws-sdk-kinesis` client and against raw HTTP, each test on
//! its own port-0 sink.
//!
//! The SDK clients here have retries switched off, so that every error the sink gives is
//! the error the test sees, and each test names its own limits and faults.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{Credentials, Region};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::put_records::{PutRecordsError, PutRecordsOutput};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use clap::Parser;
use loadgen::cli::{Cli, Command, SinkArgs};
use loadgen::sink::{
    FaultConfig, ShardLimits, Sink, SinkConfig, SinkError, SinkHandle, SinkReport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire::finnhub::Trade;
use wire::kpl::Aggregator;
use wire::record::{Receipt, encode};
use wire::shard::ShardMap;

const STREAM: &str = "sink-test";

/// Longest wait for anything the sink should do promptly; generous for a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Harness: a sink on port 0, an SDK client for it, and user records to send.

struct TestSink {
    addr: SocketAddr,
    handle: SinkHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<SinkReport, SinkError>>,
}

impl TestSink {
    async fn start(config: SinkConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Sink::new(config).unwrap();
        let handle = sink.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sink.serve(listener, async {
            let _ = stopped.await;
        }));
        Self { addr, handle, stop: Some(stop), task }
    }

    async fn stop(mut self) -> SinkReport {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task).await.unwrap().unwrap().unwrap()
    }

    async fn client(&self) -> Client {
        client_for(self.addr, Duration::from_secs(10)).await
    }
}

fn config(shards: usize, limits: Option<ShardLimits>) -> SinkConfig {
    SinkConfig { stream: STREAM.into(), shards, limits, faults: FaultConfig::default() }
}

/// An SDK client for `addr`, with test credentials, no retries and `timeout` per attempt.
async fn client_for(addr: SocketAddr, timeout: Duration) -> Client {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(format!("http://{addr}"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(TimeoutConfig::builder().operation_attempt_timeout(timeout).build())
        .load()
        .await;
    Client::new(&sdk)
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// The user record of one trade of `symbol`, numbered `seq` by ingestor `src`, received
/// just now.
fn user_record(symbol: &str, src: &str, seq: u64) -> Vec<u8> {
    user_record_at(symbol, src, seq, now_us())
}

/// As [`user_record`], received at `rt_us`.
fn user_record_at(symbol: &str, src: &str, seq: u64, rt_us: u64) -> Vec<u8> {
    let trade = Trade {
        symbol,
        price: 100.25,
        time_ms: now_us() / 1000,
        volume: 10.0,
        conditions: Default::default(),
    };
    let mut out = Vec::new();
    encode(&mut out, &trade, Receipt { src, seq, rt_us });
    out
}

/// Trades `seqs` of `src`, cycling over `symbols`, packed into one aggregated record.
fn aggregate(src: &str, symbols: &[&str], seqs: std::ops::Range<u64>) -> (Vec<u8>, String) {
    let mut agg = Aggregator::new();
    for seq in seqs {
        let symbol = symbols[seq as usize % symbols.len()];
        agg.push(symbol, &user_record(symbol, src, seq));
    }
    agg.finish().unwrap()
}

fn entry(data: impl Into<Vec<u8>>, key: &str) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .data(Blob::new(data.into()))
        .partition_key(key)
        .build()
        .unwrap()
}

async fn put(
    client: &Client,
    records: Vec<PutRecordsRequestEntry>,
) -> Result<PutRecordsOutput, SdkError<PutRecordsError>> {
    client.put_records().stream_name(STREAM).set_records(Some(records)).send().await
}

/// The error code and message of a failed call, as the SDK read them.
fn code_and_message<E: ProvideErrorMetadata>(err: &E) -> (String, String) {
    (err.code().unwrap_or("").to_owned(), err.message().unwrap_or("").to_owned())
}

fn written(out: &PutRecordsOutput) -> usize {
    out.records().iter().filter(|r| r.error_code().is_none()).count()
}

// ---------------------------------------------------------------------------------------
// Protocol: what the SDK sends, and that it reads every answer.

/// What the Rust SDK actually puts on the wire, read from a bare socket: the JSON 1.1
/// protocol, not CBOR, so the sink's JSON-only parser is the right one.
#[tokio::test]
async fn the_sdk_sends_aws_json_1_1() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = client_for(addr, Duration::from_secs(2)).await;
    let call = tokio::spawn(async move { put(&client, vec![entry("x", "AAPL")]).await });
    let (mut socket, _) = tokio::time::timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let (head, body) = read_http_message(&mut socket).await.unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("post / http/1.1"), "{head}");
    assert!(head.contains("content-type: application/x-amz-json-1.1\r\n"), "{head}");
    assert!(head.contains("x-amz-target: kinesis_20131202.putrecords\r\n"), "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["StreamName"], STREAM);
    assert_eq!(json["Records"][0]["Data"], "eA==");
    drop(socket);
    assert!(call.await.unwrap().is_err(), "no answer was given");
}

#[tokio::test]
async fn records_land_on_the_shard_that_owns_their_hash_key() {
    let sink = TestSink::start(config(4, None)).await;
    let client = sink.client().await;

    let listed = client.list_shards().stream_name(STREAM).send().await.unwrap();
    let shards: Vec<wire::shard::Shard> = listed
        .shards()
        .iter()
        .map(|s| {
            let range = s.hash_key_range().unwrap();
            wire::shard::Shard {
                id: s.shard_id().to_owned(),
                start: range.starting_hash_key().parse().unwrap(),
                end: range.ending_hash_key().parse().unwrap(),
            }
        })
        .collect();
    let map = ShardMap::new(shards).unwrap();
    assert_eq!(map, ShardMap::uniform(4));

    let symbols = ["AAPL", "MSFT", "AMZN", "NVDA", "TSLA", "BINANCE:BTCUSDT", "X", "Y"];
    let records: Vec<_> = (0..40u64)
        .map(|seq| {
            let s = symbols[seq as usize % symbols.len()];
            entry(user_record(s, "host.a", seq), s)
        })
        .collect();
    let out = put(&client, records).await.unwrap();
    assert_eq!(out.failed_record_count(), Some(0));
    let mut last_seq = std::collections::HashMap::<String, String>::new();
    for (i, r) in out.records().iter().enumerate() {
        let symbol = symbols[i % symbols.len()];
        let shard = r.shard_id().unwrap();
        assert_eq!(shard, map.shard_for(symbol).id, "{symbol}");
        let seq = r.sequence_number().unwrap().to_owned();
        assert_eq!(seq.len(), 56);
        if let Some(prev) = last_seq.insert(shard.to_owned(), seq.clone()) {
            assert!(seq > prev, "sequence numbers must increase within {shard}");
        }
    }

    let summary = client.describe_stream_summary().stream_name(STREAM).send().await.unwrap();
    let summary = summary.stream_description_summary().unwrap();
    assert_eq!(summary.open_shard_count(), 4);
    assert_eq!(summary.stream_name(), STREAM);
    let described = client.describe_stream().stream_name(STREAM).send().await.unwrap();
    assert_eq!(described.stream_description().unwrap().shards().len(), 4);
    let streams = client.list_streams().send().await.unwrap();
    assert_eq!(streams.stream_names(), [STREAM]);

    let one = client
        .put_record()
        .stream_name(STREAM)
        .partition_key("AAPL")
        // Received five seconds ago: the slowest trade of the run.
        .data(Blob::new(user_record_at("AAPL", "host.a", 40, now_us() - 5_000_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(one.shard_id(), map.shard_for("AAPL").id);

    let report = sink.stop().await;
    assert_eq!(report.stats.trades, 41);
    assert_eq!((report.stats.duplicates, report.stats.reorders, report.missing), (0, 0, 0));
    assert_eq!(report.stats.records_written, 41);
    assert_eq!(report.shards.iter().map(|s| s.records).sum::<u64>(), 41);
    assert_eq!(report.latency_us.samples, 41);
    let max = report.latency_us.max;
    assert!((5_000_000..5_000_000 + WAIT.as_micros() as u64).contains(&max), "{max}");
    assert!(report.latency_us.p50 < 5_000_000, "{:?}", report.latency_us);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["trades"], 41);
    assert!(json["latency_us"]["p99.9"].is_u64());
    assert_eq!(json["shards"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn list_shards_pages_with_max_results_and_next_token() {
    let sink = TestSink::start(config(7, None)).await;
    let client = sink.client().await;
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            None => client.list_shards().stream_name(STREAM).max_results(3),
            Some(token) => client.list_shards().next_token(token).max_results(3),
        };
        let out = request.send().await.unwrap();
        pages += 1;
        assert!(out.shards().len() <= 3);
        ids.extend(out.shards().iter().map(|s| s.shard_id().to_owned()));
        next = out.next_token().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..7).map(|i| format!("shardId-{i:012}")).collect();
    assert_eq!(ids, expected);

    let both = client.list_shards().stream_name(STREAM).next_token("abc").send().await;
    let err = both.unwrap_err().into_service_error();
    assert!(err.is_invalid_argument_exception(), "{err:?}");
    sink.stop().await;
}

#[tokio::test]
async fn an_unknown_stream_is_not_found() {
    let sink = TestSink::start(config(1, None)).await;
    let client = sink.client().await;
    let err = client.put_records().stream_name("nope").records(entry("x", "k")).send().await;
    let err = err.unwrap_err().into_service_error();
    assert!(err.is_resource_not_found_exception(), "{err:?}");
    assert_eq!(err.message(), Some("Stream nope under account 000000000000 not found."));
    let err = client.list_shards().stream_name("nope").send().await.unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());
    sink.stop().await;
}

// ---------------------------------------------------------------------------------------
// Request limits: refused whole, with the errors Kinesis gives.

#[tokio::test]
async fn more_than_500_records_are_a_validation_error() {
    let sink = TestSink::start(config(4, None)).await;
    let client = sink.client().await;
    let records = |n| (0..n).map(|i| entry("x", &format!("k{i}"))).collect::<Vec<_>>();

    let err = put(&client, records(501)).await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 400);
    let (code, message) = code_and_message(&err.into_service_error());
    assert_eq!(code, "ValidationException");
    assert_eq!(
        message,
        "1 validation error detected: Value at 'records' failed to satisfy constraint: \
         Member must have length less than or equal to 500"
    );
    let out = put(&client, records(500)).await.unwrap();
    assert_eq!((out.records().len(), out.failed_record_count()), (500, Some(0)));

    let report = sink.stop().await;
    assert_eq!(report.stats.records_written, 500);
    assert_eq!(report.stats.rejected_requests, 1);
}

#[tokio::test]
async fn a_request_over_5_mib_is_refused_and_5_mib_is_not() {
    let sink = TestSink::start(config(4, None)).await;
    let client = sink.client().await;
    // Five records of exactly 1 MiB (data plus the one-byte key): 5 MiB in all.
    let full = || (0..5).map(|_| entry(vec![7u8; MIB - 1], "k")).collect::<Vec<_>>();

    let mut over = full();
    over.push(entry(Vec::new(), "k"));
    let err = put(&client, over).await.unwrap_err().into_service_error();
    assert!(err.is_invalid_argument_exception(), "{err:?}");
    assert_eq!(err.message(), Some("Records size exceeds 5 MB limit"));

    let out = put(&client, full()).await.unwrap();
    assert_eq!(out.failed_record_count(), Some(0));

    let mut big = full();
    big.truncate(1);
    big.push(entry(vec![7u8; MIB], "k"));
    let err = put(&client, big).await.unwrap_err().into_service_error();
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "ValidationException");
    assert!(message.contains("'records.2.member.data'"), "{message}");

    let report = sink.stop().await;
    assert_eq!(report.stats.records_written, 5);
    assert_eq!(report.stats.bytes_written, 5 * MIB as u64);
}

#[tokio::test]
async fn partition_keys_may_hold_1_to_256_characters() {
    let sink = TestSink::start(config(4, None)).await;
    let client = sink.client().await;
    let key = "é".repeat(256);
    let out = put(&client, vec![entry("x", &key)]).await.unwrap();
    assert_eq!(out.failed_record_count(), Some(0));

    let long = format!("{key}e");
    let err = put(&client, vec![entry("x", "ok"), entry("x", &long)]).await.unwrap_err();
    let (code, message) = code_and_message(&err.into_service_error());
    assert_eq!(code, "ValidationException");
    assert!(message.contains("at 'records.2.member.partitionKey'"), "{message}");
    assert!(message.contains("less than or equal to 256"), "{message}");
    sink.stop().await;
}

// ---------------------------------------------------------------------------------------
// Shard limits: single records fail with ProvisionedThroughputExceededException.

#[tokio::test]
async fn a_burst_past_the_shard_limit_is_throttled_record_by_record() {
    const LIMIT: u32 = 20;
    let limits = ShardLimits { records_per_sec: LIMIT, bytes_per_sec: MIB as u32 };
    let sink = TestSink::start(config(1, Some(limits))).await;
    let client = sink.client().await;
    let mut seq = 0u64;
    let mut batch = |n: usize| {
        (0..n)
            .map(|_| {
                seq += 1;
                entry(user_record("AAPL", "host.t", seq - 1), "AAPL")
            })
            .collect::<Vec<_>>()
    };

    // (sent at, answered at, records written) for every request.
    let mut log: Vec<(Instant, Instant, usize)> = Vec::new();
    let sent = Instant::now();
    let out = put(&client, batch(50)).await.unwrap();
    log.push((sent, Instant::now(), written(&out)));
    assert_eq!(out.failed_record_count(), Some(30));
    for (i, r) in out.records().iter().enumerate() {
        if i < LIMIT as usize {
            assert!(r.sequence_number().is_some(), "record {i} should be written");
        } else {
            assert_eq!(r.error_code(), Some("ProvisionedThroughputExceededException"));
            assert_eq!(
                r.error_message(),
                Some(
                    "Rate exceeded for shard shardId-000000000000 in stream sink-test under account 000000000000."
                )
            );
        }
    }

    // Keep offering five records every 20 ms for 2.5 s.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while sent.elapsed() < Duration::from_millis(2500) {
        tick.tick().await;
        let at = Instant::now();
        let out = put(&client, batch(5)).await.unwrap();
        log.push((at, Instant::now(), written(&out)));
    }

    // Any run of requests that fits inside one second, judged by the client's clocks
    // (from the first send to the last answer), wrote at most LIMIT records.
    for k in 0..log.len() {
        let mut sum = 0;
        for m in k..log.len() {
            if log[m].1 - log[k].0 >= Duration::from_secs(1) {
                break;
            }
            sum += log[m].2;
            assert!(sum <= LIMIT as usize, "{sum} records written within a second");
        }
    }
    let total: usize = log.iter().map(|l| l.2).sum();
    assert!(total >= 2 * LIMIT as usize, "only {total} written in 2.5 s");

    let report = sink.stop().await;
    assert_eq!(report.stats.records_written as usize, total);
    // Throttled records are not trades received.
    assert_eq!(report.stats.trades as usize, total);
    assert!(report.stats.records_throttled >= 30);
}

#[tokio::test]
async fn the_bytes_limit_throttles_too() {
    let limits = ShardLimits { records_per_sec: 1000, bytes_per_sec: 1000 };
    let sink = TestSink::start(config(1, Some(limits))).await;
    let client = sink.client().await;
    // 99 bytes of data and a one-byte key: 100 bytes each, ten fit in a second.
    let out = put(&client, (0..20).map(|_| entry(vec![1u8; 99], "k")).collect()).await.unwrap();
    assert_eq!(written(&out), 10);
    assert_eq!(out.failed_record_count(), Some(10));

    let throttled = client
        .put_record()
        .stream_name(STREAM)
        .partition_key("k")
        .data(Blob::new(vec![1u8; 10]))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(throttled.is_provisioned_throughput_exceeded_exception(), "{throttled:?}");
    sink.stop().await;
}

// ---------------------------------------------------------------------------------------
// Fault injection.

#[tokio::test]
async fn injected_record_failures_come_at_about_the_rate_asked() {
    let mut config = config(4, None);
    config.faults = FaultConfig { fail_rate: 0.25, seed: 7, ..FaultConfig::default() };
    let sink = TestSink::start(config).await;
    let client = sink.client().await;
    let mut failed = 0;
    for round in 0..4 {
        let records = (0..500).map(|i| entry("x", &format!("k{round}.{i}"))).collect();
        let out = put(&client, records).await.unwrap();
        for r in out.records() {
            if let Some(code) = r.error_code() {
                assert_eq!(code, "InternalFailure");
                failed += 1;
            }
        }
        assert_eq!(
            out.failed_record_count(),
            Some(out.records().iter().filter(|r| r.error_code().is_some()).count() as i32)
        );
    }
    // 2000 records at 25%: 500 expected, 19 standard deviations wide on either side.
    assert!((380..=620).contains(&failed), "{failed} of 2000 failed");
    let report = sink.stop().await;
    assert_eq!(report.stats.records_failed, failed);
    assert_eq!(report.stats.records_written, 2000 - failed);
}

#[tokio::test]
async fn injected_request_errors_are_500_or_503_and_write_nothing() {
    let mut config = config(1, None);
    config.faults = FaultConfig { error_rate: 0.5, seed: 11, ..FaultConfig::default() };
    let sink = TestSink::start(config).await;
    let client = sink.client().await;
    let (mut errors, mut statuses) = (0u64, std::collections::BTreeSet::new());
    for i in 0..100 {
        match put(&client, vec![entry(user_record("A", "host.e", i), "A")]).await {
            Ok(out) => assert_eq!(out.failed_record_count(), Some(0)),
            Err(err) => {
                let status = err.raw_response().unwrap().status().as_u16();
                let (code, _) = code_and_message(&err.into_service_error());
                match status {
                    500 => assert_eq!(code, "InternalFailure"),
                    503 => assert_eq!(code, "ServiceUnavailable"),
                    other => panic!("status {other}"),
                }
                statuses.insert(status);
                errors += 1;
            }
        }
    }
    assert!((30..=70).contains(&errors), "{errors} of 100 failed");
    assert_eq!(statuses.len(), 2, "both kinds of error should appear");
    let report = sink.stop().await;
    assert_eq!(report.stats.requests_failed, errors);
    assert_eq!(report.stats.trades, 100 - errors);
    // Nothing of a failed request was written: its trade is a gap (unless it came after
    // the last trade that got through, where no later trade reveals it).
    assert!(report.missing <= errors && report.missing + 5 >= errors, "{}", report.missing);
}

#[tokio::test]
async fn a_slow_request_is_written_after_the_client_gave_up() {
    let mut config = config(1, None);
    config.faults = FaultConfig {
        slow_rate: 1.0,
        slow_delay: Duration::from_millis(800),
        seed: 3,
        ..FaultConfig::default()
    };
    let sink = TestSink::start(config).await;
    let client = client_for(sink.addr, Duration::from_millis(200)).await;
    let (data, key) = aggregate("host.s", &["A", "B"], 0..25);
    let err = put(&client, vec![entry(data, &key)]).await.unwrap_err();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");

    let stats = sink.handle.wait_for_trades(25, WAIT).await;
    assert_eq!(stats.trades, 25);
    assert_eq!(stats.requests_delayed, 1);
    assert_eq!(stats.delayed_records_written, 1);
    sink.stop().await;
}

#[tokio::test]
async fn a_reshard_shows_in_list_shards_and_moves_records_to_children() {
    let mut config = config(2, None);
    config.faults =
        FaultConfig { reshard_after: Some(Duration::from_millis(300)), ..FaultConfig::default() };
    let sink = TestSink::start(config).await;
    let client = sink.client().await;
    let before = client.list_shards().stream_name(STREAM).send().await.unwrap();
    assert_eq!(before.shards().len(), 2);
    let old_owner = before.shards()[0].shard_id().to_owned();

    let deadline = Instant::now() + WAIT;
    let after = loop {
        let out = client.list_shards().stream_name(STREAM).send().await.unwrap();
        if out.shards().len() != 2 || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after.shards().len(), 6);
    let closed: Vec<_> = after
        .shards()
        .iter()
        .filter(|s| s.sequence_number_range().unwrap().ending_sequence_number().is_some())
        .map(|s| s.shard_id())
        .collect();
    assert_eq!(closed, ["shardId-000000000000", "shardId-000000000001"]);
    let children: Vec<_> =
        after.shards().iter().filter(|s| s.parent_shard_id() == Some(&old_owner)).collect();
    assert_eq!(children.len(), 2);

    // A key the old map put on shard 0 is written anyway, to the child that owns it now.
    let key = (0..)
        .map(|i| format!("K{i}"))
        .find(|k| ShardMap::uniform(2).shard_for(k).id == old_owner)
        .unwrap();
    let out = put(&client, vec![entry(user_record(&key, "h", 0), &key)]).await.unwrap();
    let landed = out.records()[0].shard_id().unwrap();
    assert_ne!(landed, old_owner);
    assert!(children.iter().any(|c| c.shard_id() == landed), "{landed}");

    let report = sink.stop().await;
    assert_eq!(report.stats.reshards, 1);
    assert_eq!(report.shards.len(), 6);
    assert_eq!(report.shards.iter().filter(|s| s.open).count(), 4);
}

// ---------------------------------------------------------------------------------------
// Verification.

#[tokio::test]
async fn duplicates_reorders_and_undecodable_records_are_counted() {
    let sink = TestSink::start(config(4, None)).await;
    let client = sink.client().await;
    let (agg, key) = aggregate("host.v", &["AAPL", "MSFT", "TSLA"], 0..30);
    put(&client, vec![entry(agg.clone(), &key)]).await.unwrap();
    // The same aggregated record again, as after a retry whose first answer was lost.
    put(&client, vec![entry(agg, &key)]).await.unwrap();

    // Seq 31 before 30, same symbol, in one request: one reorder.
    let out = put(
        &client,
        vec![
            entry(user_record("NVDA", "host.v", 31), "NVDA"),
            entry(user_record("NVDA", "host.v", 30), "NVDA"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.failed_record_count(), Some(0));

    let (mut corrupt, key) = aggregate("host.v", &["X"], 100..105);
    corrupt[10] ^= 0x55;
    put(&client, vec![entry(corrupt, &key), entry("not a trade", "X")]).await.unwrap();

    let report = sink.stop().await;
    let s = report.stats;
    assert_eq!(s.trades, 62);
    assert_eq!(s.duplicates, 30);
    assert_eq!(s.reorders, 1);
    assert_eq!(s.undecodable_records, 1);
    assert_eq!(s.undecodable_user_records, 1);
    assert_eq!(report.missing, 0);
    assert_eq!(report.sources, 1);
    assert_eq!(report.latency_us.samples, 32);
    assert!(report.latency_us.max < 60_000_000, "{:?}", report.latency_us);
}

// ---------------------------------------------------------------------------------------
// Hostile HTTP: AWS-style errors, and the sink keeps serving.

/// Reads one HTTP message (head and Content-Length body) from `socket`; `None` if the
/// connection closed or broke first.
async fn read_http_message(socket: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
        })
        .map_or(0, |v| v.parse::<usize>().unwrap());
    while buf.len() < head_end + len {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[head_end..head_end + len].to_vec()))
}

/// Sends `request` on a fresh connection and reads the answer's status and JSON body.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, serde_json::Value) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let (head, body) =
        tokio::time::timeout(WAIT, read_http_message(&mut socket)).await.unwrap().unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn post(target: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {target}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn hostile_requests_get_aws_errors_and_the_sink_keeps_serving() {
    let sink = TestSink::start(config(2, None)).await;
    let json = "application/x-amz-json-1.1";
    let put_target = "Kinesis_20131202.PutRecords";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", post(put_target, json, "{\"StreamName\":"), 400, "SerializationException"),
        (
            "wrong types",
            post(put_target, json, r#"{"StreamName":"sink-test","Records":{"a":1}}"#),
            400,
            "SerializationException",
        ),
        (
            "bad base64",
            post(
                put_target,
                json,
                r#"{"StreamName":"sink-test","Records":[{"Data":"%%%","PartitionKey":"k"}]}"#,
            ),
            400,
            "SerializationException",
        ),
        (
            "missing records",
            post(put_target, json, r#"{"StreamName":"sink-test"}"#),
            400,
            "ValidationException",
        ),
        ("unknown target", post("Kinesis_20131202.Explode", json, "{}"), 400, "UnknownOperationException"),
        ("foreign target", post("DynamoDB_20120810.GetItem", json, "{}"), 400, "UnknownOperationException"),
        (
            "missing target",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            400,
            "UnknownOperationException",
        ),
        (
            "CBOR",
            post("Kinesis_20131202.ListShards", "application/x-amz-cbor-1.1", "\u{a0}"),
            400,
            "SerializationException",
        ),
        ("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405, "UnknownOperationException"),
        (
            "huge declared body",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {put_target}\r\nContent-Length: {}\r\n\r\n",
                64 * MIB
            )
            .into_bytes(),
            413,
            "InvalidArgumentException",
        ),
        (
            "not UTF-8",
            {
                let mut r = post(put_target, json, "{\"StreamName\":\"xx\"}");
                let n = r.len();
                r[n - 4] = 0xff;
                r
            },
            400,
            "SerializationException",
        ),
    ];
    for (name, request, status, code) in cases {
        let (got_status, body) = raw(sink.addr, &request).await;
        assert_eq!(got_status, status, "{name}: {body}");
        assert_eq!(body["__type"], code, "{name}: {body}");
        assert!(body["message"].is_string(), "{name}: {body}");
    }

    // A chunked body that never ends before the cap: refused once the cap is reached.
    // The sink may close with bytes unread, so the answer can be lost to a reset; what
    // matters is that it stops reading and keeps serving.
    let mut socket = TcpStream::connect(sink.addr).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {put_target}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", MIB, "a".repeat(MIB));
    for _ in 0..9 {
        if socket.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    if let Ok(Some((head, _))) = tokio::time::timeout(WAIT, read_http_message(&mut socket)).await {
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    }

    // Bytes that are not HTTP at all.
    let mut socket = TcpStream::connect(sink.addr).await.unwrap();
    socket.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, socket.read_to_end(&mut rest)).await.unwrap();

    // Still serving.
    let client = sink.client().await;
    let out = put(&client, vec![entry(user_record("A", "h", 0), "A")]).await.unwrap();
    assert_eq!(out.failed_record_count(), Some(0));
    let report = sink.stop().await;
    assert_eq!(report.stats.trades, 1);
    assert!(report.stats.rejected_requests >= 11, "{:?}", report.stats);
}

// ---------------------------------------------------------------------------------------
// Flags.

fn sink_args(args: &[&str]) -> SinkArgs {
    let cli = Cli::try_parse_from(["loadgen", "sink"].iter().chain(args)).unwrap();
    let Command::Sink(args) = cli.command else { panic!("parsed as another subcommand") };
    args
}

#[test]
fn flags_default_to_the_kinesis_limits() {
    let args = sink_args(&[]);
    assert_eq!(args.listen, "127.0.0.1:4566");
    assert_eq!(args.stream, "tickpipe-trades");
    let config = args.sink_config(1).unwrap();
    assert_eq!(config.shards, 4);
    assert_eq!(config.limits, Some(ShardLimits { records_per_sec: 1000, bytes_per_sec: 1 << 20 }));
    assert_eq!(config.faults, FaultConfig { seed: 1, ..FaultConfig::default() });

    let args = sink_args(&["--unlimited", "--reshard-after", "30s", "--slow-delay", "6s"]);
    let config = args.sink_config(1).unwrap();
    assert_eq!(config.limits, None);
    assert_eq!(config.faults.reshard_after, Some(Duration::from_secs(30)));
    assert_eq!(config.faults.slow_delay, Duration::from_secs(6));
}

#[test]
fn bad_flag_values_name_their_flag() {
    for (flags, flag) in [
        (&["--shards", "0"][..], "--shards"),
        (&["--shards", "501"], "--shards"),
        (&["--fail-rate", "1.5"], "--fail-rate"),
        (&["--error-rate=-0.1"], "--error-rate"),
        (&["--slow-rate", "NaN"], "--slow-rate"),
        (&["--shard-records-per-sec", "0"], "--shard-records-per-sec"),
        (&["--shard-bytes-per-sec", "0"], "--shard-bytes-per-sec"),
        (&["--stream", "no spaces"], "--stream"),
        (&["--progress-every", "0s"], "--progress-every"),
        (&["--slow-delay", "1h"], "--slow-delay"),
    ] {
        let err = sink_args(flags).sink_config(1).unwrap_err();
        assert!(err.to_string().starts_with(flag), "{flags:?}: {err}");
        assert!(!err.is_retryable());
    }
    assert!(Cli::try_parse_from(["loadgen", "sink", "--slow-delay", "100"]).is_err());
}

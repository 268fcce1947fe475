//! The local runner against kinesis-local and dynalite: records put on a stream with the
//! SDK end up as trades and candles in the table, across shards and across a reshard.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use common::{aggregate, create_table, poll_until, query, store_config, unique, user_record};
use lambda::retry::Backoff;
use lambda::{LocalConfig, LocalStats, StartPosition, run_local};
use tokio::sync::oneshot;

const SYMBOLS: [&str; 6] = ["AAPL", "MSFT", "AMZN", "GOOG", "TSLA", "NVDA"];
/// Trades packed into one aggregated record.
const PER_RECORD: usize = 20;
const WAIT: Duration = Duration::from_secs(60);
const T0: u64 = 1_700_000_040_000;

fn config(stream: &str, table: &str) -> LocalConfig {
    LocalConfig {
        stream: stream.to_owned(),
        store: store_config(table),
        // Small batches, so that each shard takes several GetRecords rounds.
        batch_size: 3,
        poll_interval: Duration::from_millis(20),
        start_position: StartPosition::TrimHorizon,
        progress_interval: Duration::from_secs(1),
        retry_backoff: Backoff { base: Duration::from_millis(5), max: Duration::from_millis(50) },
    }
}

async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream");
    wait_active(client, name).await;
}

async fn wait_active(client: &aws_sdk_kinesis::Client, name: &str) {
    poll_until(WAIT, "stream to become active", || async {
        let out = client.describe_stream_summary().stream_name(name).send().await.ok()?;
        (out.stream_description_summary()?.stream_status() == &StreamStatus::Active).then_some(())
    })
    .await;
}

/// Puts `per_symbol` trades of every symbol, aggregated `PER_RECORD` to a record, plus one
/// plain record per symbol. Trade seqs start at `first_seq`. Returns the shards written.
async fn put_trades(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    per_symbol: usize,
    first_seq: u64,
) -> HashSet<String> {
    let mut seq = first_seq;
    let mut entries = Vec::new();
    for symbol in SYMBOLS {
        let trades: Vec<(&str, Vec<u8>)> = (0..per_symbol)
            .map(|i| {
                seq += 1;
                (symbol, user_record(symbol, 100.0 + i as f64, 1.0, T0 + seq, seq))
            })
            .collect();
        for chunk in trades.chunks(PER_RECORD) {
            entries.push((symbol, aggregate(chunk)));
        }
        seq += 1;
        entries.push((symbol, user_record(symbol, 99.0, 2.0, T0 + seq, seq)));
    }
    let request = entries.into_iter().map(|(key, data)| {
        PutRecordsRequestEntry::builder().partition_key(key).data(Blob::new(data)).build().unwrap()
    });
    let out = client
        .put_records()
        .stream_name(stream)
        .set_records(Some(request.collect()))
        .send()
        .await
        .expect("put records");
    assert_eq!(out.failed_record_count(), Some(0));
    out.records().iter().filter_map(|r| r.shard_id().map(str::to_owned)).collect()
}

/// Trade items and candle counts per symbol, once every symbol has `want` of both.
async fn wait_for_trades(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
    want: usize,
) -> BTreeMap<&'static str, (usize, u64)> {
    poll_until(WAIT, &format!("{want} trades per symbol to be stored"), || async {
        let mut seen = BTreeMap::new();
        for symbol in SYMBOLS {
            let trades = query(dynamo, table, &format!("T#{symbol}")).await.len();
            let counted: f64 = query(dynamo, table, &format!("C#{symbol}#1m"))
                .await
                .iter()
                .map(|c| common::n(c, "count"))
                .sum();
            seen.insert(symbol, (trades, counted as u64));
        }
        seen.values()
            .all(|&(trades, counted)| trades == want && counted == want as u64)
            .then_some(seen)
    })
    .await
}

async fn stop(
    stop_tx: oneshot::Sender<()>,
    runner: tokio::task::JoinHandle<anyhow::Result<LocalStats>>,
) -> LocalStats {
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), runner)
        .await
        .expect("the runner stops promptly on shutdown")
        .expect("runner task")
        .expect("runner result")
}

fn spawn_runner(
    config: LocalConfig,
    kinesis: aws_sdk_kinesis::Client,
    dynamo: aws_sdk_dynamodb::Client,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<LocalStats>>) {
    let (tx, rx) = oneshot::channel::<()>();
    let runner = tokio::spawn(run_local(config, kinesis, dynamo, async move {
        let _ = rx.await;
    }));
    (tx, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_stores_what_the_stream_holds() {
    let kinesis = common::kinesis_client().await;
    let dynamo = common::dynamodb_client().await;
    let (stream, table) = (unique("lambda-runner"), unique("lambda-runner"));
    create_stream(&kinesis, &stream, 2).await;
    create_table(&dynamo, &table).await;

    let shards = put_trades(&kinesis, &stream, 40, 0).await;
    assert_eq!(shards.len(), 2, "the symbols spread over both shards");
    let (stop_tx, runner) = spawn_runner(config(&stream, &table), kinesis.clone(), dynamo.clone());
    wait_for_trades(&dynamo, &table, 41).await;

    // Records put while the runner waits on empty shards are picked up too.
    put_trades(&kinesis, &stream, 10, 1_000).await;
    wait_for_trades(&dynamo, &table, 52).await;

    let stats = stop(stop_tx, runner).await;
    let total = (SYMBOLS.len() * 52) as u64;
    assert_eq!(stats.trades_written, total);
    assert_eq!(stats.user_records, total);
    assert_eq!(stats.kinesis_records, (SYMBOLS.len() * (2 + 1 + 1 + 1)) as u64);
    assert_eq!(stats.poison_records + stats.poison_user_records, 0);
    assert_eq!(stats.failed_batches, 0);
    assert!(stats.batches >= stats.kinesis_records / 3, "batches of at most 3 records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_follows_a_reshard_to_the_child_shards() {
    let kinesis = common::kinesis_client().await;
    let dynamo = common::dynamodb_client().await;
    let (stream, table) = (unique("lambda-reshard"), unique("lambda-reshard"));
    create_stream(&kinesis, &stream, 1).await;
    create_table(&dynamo, &table).await;

    put_trades(&kinesis, &stream, 20, 0).await;
    let (stop_tx, runner) = spawn_runner(config(&stream, &table), kinesis.clone(), dynamo.clone());
    wait_for_trades(&dynamo, &table, 21).await;

    let shards = kinesis.list_shards().stream_name(&stream).send().await.unwrap();
    let parent = shards.shards()[0].shard_id().to_owned();
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&parent)
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await
        .expect("split shard");
    wait_active(&kinesis, &stream).await;
    let written = put_trades(&kinesis, &stream, 20, 1_000).await;
    assert!(!written.contains(&parent), "new records go to the child shards");
    wait_for_trades(&dynamo, &table, 42).await;

    let stats = stop(stop_tx, runner).await;
    assert_eq!(stats.shards_drained, 1, "the parent was read to its end");
    assert_eq!(stats.trades_written, (SYMBOLS.len() * 42) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_read_again_from_the_reported_record() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use aws_sdk_dynamodb::Client;
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    use aws_sdk_dynamodb::operation::batch_write_item::{
        BatchWriteItemError, BatchWriteItemOutput,
    };
    use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
    use aws_sdk_dynamodb::operation::put_item::PutItemOutput;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
    use aws_sdk_dynamodb::types::error::ResourceNotFoundException;
    use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};

    // Real Kinesis, and a DynamoDB whose first three BatchWriteItem calls fail outright.
    let kinesis = common::kinesis_client().await;
    let stream = unique("lambda-reread");
    create_stream(&kinesis, &stream, 1).await;
    let table = "reread";
    let written = Arc::new(Mutex::new(HashSet::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let write = {
        let (written, calls) = (written.clone(), calls.clone());
        mock!(Client::batch_write_item).then_compute_response(move |input| {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                return MockResponse::Error(BatchWriteItemError::ResourceNotFoundException(
                    ResourceNotFoundException::builder().message("not yet").build(),
                ));
            }
            for w in &input.request_items().unwrap()[table] {
                let sk = w.put_request().unwrap().item()["sk"].as_s().unwrap().clone();
                written.lock().unwrap().insert(sk);
            }
            MockResponse::Output(BatchWriteItemOutput::builder().build())
        })
    };
    let get = mock!(Client::get_item).then_output(|| GetItemOutput::builder().build());
    let put = mock!(Client::put_item).then_output(|| PutItemOutput::builder().build());
    let update = mock!(Client::update_item).then_output(|| UpdateItemOutput::builder().build());
    let dynamo =
        mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&write, &get, &put, &update], |c| c
            .retry_config(RetryConfig::disabled()));

    put_trades(&kinesis, &stream, 20, 0).await;
    let total = SYMBOLS.len() * 21;
    let (stop_tx, runner) = spawn_runner(config(&stream, table), kinesis, dynamo);
    poll_until(WAIT, "every trade to be written", || async {
        (written.lock().unwrap().len() == total).then_some(())
    })
    .await;

    let stats = stop(stop_tx, runner).await;
    assert!(stats.failed_batches >= 1, "{stats:?}");
    assert!(calls.load(Ordering::SeqCst) > 3);
    // Re-reading repeats whole batches, so trade writes may repeat; none is missing.
    assert!(stats.trades_written >= total as u64);
    assert_eq!(written.lock().unwrap().len(), total);
}

//! Failures no local server produces, injected at the SDK layer with aws-smithy-mocks:
//! UnprocessedItems, throttling, server errors, write conflicts. Each test checks what the
//! handler reports back to Lambda.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::operation::batch_write_item::{BatchWriteItemError, BatchWriteItemOutput};
use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::put_item::{PutItemError, PutItemOutput};
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::error::{ConditionalCheckFailedException, ResourceNotFoundException};
use aws_sdk_dynamodb::types::{AttributeValue, WriteRequest};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use common::{KRecord, aggregate, event, store_config, user_record};
use lambda::candles;
use lambda::transform::{Candle, HighWater};
use lambda::{Store, handle, handle_batch};

const TABLE: &str = "faults";
const THROTTLED: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}"#;

fn client(rules: &[&Rule]) -> Client {
    mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, rules, |c| c
        .retry_config(RetryConfig::disabled()))
}

fn get_nothing() -> Rule {
    mock!(Client::get_item).then_output(|| GetItemOutput::builder().build())
}

fn put_ok() -> Rule {
    mock!(Client::put_item).then_output(|| PutItemOutput::builder().build())
}

fn update_ok() -> Rule {
    mock!(Client::update_item).then_output(|| UpdateItemOutput::builder().build())
}

fn write_ok() -> Rule {
    mock!(Client::batch_write_item).then_output(|| BatchWriteItemOutput::builder().build())
}

/// Sort key of a put request.
fn sk(w: &WriteRequest) -> String {
    w.put_request().unwrap().item()["sk"].as_s().unwrap().clone()
}

fn requests(
    input: &aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput,
) -> Vec<WriteRequest> {
    input.request_items().unwrap()[TABLE].clone()
}

fn unprocessed(items: Vec<WriteRequest>) -> BatchWriteItemOutput {
    BatchWriteItemOutput::builder().unprocessed_items(TABLE, items).build()
}

/// One aggregated Kinesis record per entry of `per_record`, holding that many AAPL trades;
/// trade seqs count up across records. Sequence numbers are 1000, 2000, ...
fn aggregated_records(per_record: &[u64]) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut seq = 0;
    let mut seqs = Vec::new();
    let mut datas = Vec::new();
    for (i, n) in per_record.iter().enumerate() {
        let trades: Vec<(&str, Vec<u8>)> = (0..*n)
            .map(|_| {
                seq += 1;
                ("AAPL", user_record("AAPL", 100.0 + seq as f64, 1.0, 1_700_000_000_000 + seq, seq))
            })
            .collect();
        seqs.push(format!("{}", (i + 1) * 1000));
        datas.push(aggregate(&trades));
    }
    (seqs, datas)
}

fn event_of(
    seqs: &[String],
    datas: Vec<Vec<u8>>,
) -> aws_lambda_events::event::kinesis::KinesisEvent {
    let records: Vec<KRecord<'_>> = seqs
        .iter()
        .zip(datas)
        .map(|(seq, data)| KRecord {
            shard: "shardId-000000000000",
            seq,
            partition_key: "AAPL",
            data,
        })
        .collect();
    event(&records)
}

/// Trade seq encoded at the end of a trade sort key.
fn trade_seq(sk: &str) -> u64 {
    sk.rsplit('#').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn unprocessed_items_twice_then_success_writes_everything() {
    let written = Arc::new(Mutex::new(HashSet::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let batch = {
        let (written, calls) = (written.clone(), calls.clone());
        mock!(Client::batch_write_item).then_compute_output(move |input| {
            let mut items = requests(input);
            let call = calls.fetch_add(1, Ordering::SeqCst);
            // First call: the last 5 come back; second: everything sent comes back.
            let back = match call {
                0 => items.split_off(items.len() - 5),
                1 => std::mem::take(&mut items),
                _ => Vec::new(),
            };
            written.lock().unwrap().extend(items.iter().map(sk));
            unprocessed(back)
        })
    };
    let (get, put, update) = (get_nothing(), put_ok(), update_ok());
    let store = Store::new(client(&[&batch, &get, &put, &update]), store_config(TABLE));
    let (seqs, datas) = aggregated_records(&[20]);

    let outcome = handle_batch(event_of(&seqs, datas), &store, Some("req-1")).await;

    assert!(outcome.response.batch_item_failures.is_empty(), "{:?}", outcome.response);
    assert_eq!(batch.num_calls(), 3);
    let written = written.lock().unwrap();
    assert_eq!(written.len(), 20);
    assert_eq!(outcome.stats.write.trades_written, 20);
    assert_eq!(outcome.stats.write.candles_written, 1);
    assert_eq!(outcome.stats.write.latest_updated, 1);
}

#[tokio::test]
async fn persistent_unprocessed_items_name_the_first_record_not_stored() {
    // Records of 10 trades each; the trades of the second record (seqs 11..=20) are never
    // processed. They share a BatchWriteItem request with trades of the first record.
    let written = Arc::new(Mutex::new(HashSet::new()));
    let batch = {
        let written = written.clone();
        mock!(Client::batch_write_item).then_compute_output(move |input| {
            let (back, done): (Vec<_>, Vec<_>) =
                requests(input).into_iter().partition(|w| (11..=20).contains(&trade_seq(&sk(w))));
            written.lock().unwrap().extend(done.iter().map(|w| trade_seq(&sk(w))));
            unprocessed(back)
        })
    };
    let (get, put, update) = (get_nothing(), put_ok(), update_ok());
    let config = store_config(TABLE);
    let attempts = config.max_attempts as usize;
    let store = Store::new(client(&[&batch, &get, &put, &update]), config);
    let (seqs, datas) = aggregated_records(&[10, 10, 10]);

    let response = handle(event_of(&seqs, datas), &store).await;

    let failures: Vec<_> =
        response.batch_item_failures.iter().map(|f| f.item_identifier.clone().unwrap()).collect();
    assert_eq!(failures, ["2000"], "the second record is the first not fully stored");
    // Every trade outside the second record was written.
    let written = written.lock().unwrap();
    let want: HashSet<u64> = (1..=10).chain(21..=30).collect();
    assert_eq!(*written, want);
    // 30 trades make two requests; the first is retried until attempts run out.
    assert_eq!(batch.num_calls(), 1 + attempts);
}

#[tokio::test]
async fn throttling_is_retried() {
    let batch = mock!(Client::batch_write_item)
        .sequence()
        .http_status(400, Some(THROTTLED.to_owned()))
        .times(2)
        .output(|| BatchWriteItemOutput::builder().build())
        .build();
    let (get, put, update) = (get_nothing(), put_ok(), update_ok());
    let store = Store::new(client(&[&batch, &get, &put, &update]), store_config(TABLE));
    let (seqs, datas) = aggregated_records(&[5]);

    let outcome = handle_batch(event_of(&seqs, datas), &store, None).await;

    assert!(outcome.response.batch_item_failures.is_empty(), "{:?}", outcome.response);
    assert_eq!(batch.num_calls(), 3, "two throttled attempts, then the one that worked");
    assert_eq!(outcome.stats.write.trades_written, 5);
}

#[tokio::test]
async fn errors_that_cannot_succeed_are_not_retried_but_still_reported() {
    let batch = mock!(Client::batch_write_item).then_error(|| {
        BatchWriteItemError::ResourceNotFoundException(
            ResourceNotFoundException::builder().message("no such table").build(),
        )
    });
    let (get, put, update) = (get_nothing(), put_ok(), update_ok());
    let store = Store::new(client(&[&batch, &get, &put, &update]), store_config(TABLE));
    let (seqs, datas) = aggregated_records(&[3, 3]);

    let response = handle(event_of(&seqs, datas), &store).await;

    assert_eq!(batch.num_calls(), 1, "a missing table is not retried");
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(response.batch_item_failures[0].item_identifier.as_deref(), Some("1000"));
}

#[tokio::test]
async fn a_failed_candle_names_the_earliest_record_of_that_candle() {
    // AAPL in the first record, MSFT in the second and third. MSFT's candle cannot be
    // written (server errors throughout); AAPL's can.
    let msft_put = mock!(Client::put_item)
        .match_requests(|p| p.item().unwrap()["pk"].as_s().unwrap() == "C#MSFT#1m")
        .sequence()
        .http_status(500, None)
        .repeatedly()
        .build();
    let (write, get, put, update) = (write_ok(), get_nothing(), put_ok(), update_ok());
    let store = Store::new(client(&[&write, &get, &msft_put, &put, &update]), store_config(TABLE));
    let t = 1_700_000_000_000;
    let records = [
        KRecord {
            shard: "shardId-1",
            seq: "11",
            partition_key: "AAPL",
            data: user_record("AAPL", 1.0, 1.0, t, 1),
        },
        KRecord {
            shard: "shardId-1",
            seq: "12",
            partition_key: "MSFT",
            data: user_record("MSFT", 2.0, 1.0, t, 2),
        },
        KRecord {
            shard: "shardId-1",
            seq: "13",
            partition_key: "MSFT",
            data: user_record("MSFT", 3.0, 1.0, t, 3),
        },
    ];

    let outcome = handle_batch(event(&records), &store, None).await;

    assert_eq!(outcome.retry_from(), Some("12"));
    assert_eq!(outcome.stats.write.candles_written, 1, "AAPL's candle still got written");
    assert_eq!(outcome.stats.write.failed_writes, 1);
}

#[tokio::test]
async fn a_candle_changed_between_read_and_write_is_read_again() {
    let t = 1_700_000_000_000;
    let bucket = wire::table::bucket_start(t, wire::table::CANDLE_1M_MS);
    let stored = move |version| {
        let hw = HighWater::new();
        candles::item(
            "C#AAPL#1m".into(),
            wire::table::candle_sk(bucket),
            &Candle::of(50.0, 2.0, t - 1),
            &hw,
            version,
        )
    };
    // Two reads: version 3, then (after someone else wrote) version 4.
    let get = mock!(Client::get_item)
        .sequence()
        .output(move || GetItemOutput::builder().set_item(Some(stored(3))).build())
        .output(move || GetItemOutput::builder().set_item(Some(stored(4))).build())
        .build();
    let puts = Arc::new(Mutex::new(Vec::<HashMap<String, AttributeValue>>::new()));
    let put = {
        let puts = puts.clone();
        mock!(Client::put_item).then_compute_response(move |p| {
            puts.lock().unwrap().push(p.item().unwrap().clone());
            let expected = p.expression_attribute_values().unwrap()[":v"].as_n().unwrap().clone();
            if expected == "3" {
                aws_smithy_mocks::MockResponse::Error(
                    PutItemError::ConditionalCheckFailedException(
                        ConditionalCheckFailedException::builder().message("changed").build(),
                    ),
                )
            } else {
                aws_smithy_mocks::MockResponse::Output(PutItemOutput::builder().build())
            }
        })
    };
    let (write, update) = (write_ok(), update_ok());
    let store = Store::new(client(&[&write, &get, &put, &update]), store_config(TABLE));
    let records = [KRecord {
        shard: "shardId-1",
        seq: "77",
        partition_key: "AAPL",
        data: user_record("AAPL", 60.0, 1.0, t, 1),
    }];

    let outcome = handle_batch(event(&records), &store, None).await;

    assert!(outcome.response.batch_item_failures.is_empty());
    assert_eq!((get.num_calls(), put.num_calls()), (2, 2));
    let puts = puts.lock().unwrap();
    let last = candles::parse(&puts[1]).unwrap();
    assert_eq!(last.version, 5, "written over the version read second");
    assert_eq!(last.candle.count, 2);
    assert_eq!((last.candle.open, last.candle.close), (50.0, 60.0));
    assert_eq!(last.high_water["shardId-1"].sequence_number, "77");
}

#[tokio::test]
async fn an_older_latest_price_is_not_a_failure() {
    let update = mock!(Client::update_item).then_error(|| {
        UpdateItemError::ConditionalCheckFailedException(
            ConditionalCheckFailedException::builder().message("newer stored").build(),
        )
    });
    let (write, get, put) = (write_ok(), get_nothing(), put_ok());
    let store = Store::new(client(&[&write, &get, &put, &update]), store_config(TABLE));
    let (seqs, datas) = aggregated_records(&[2]);

    let outcome = handle_batch(event_of(&seqs, datas), &store, None).await;

    assert!(outcome.response.batch_item_failures.is_empty());
    assert_eq!(update.num_calls(), 1);
    assert_eq!((outcome.stats.write.latest_updated, outcome.stats.write.latest_stale), (0, 1));
}

#[tokio::test]
async fn poison_is_skipped_and_counted_not_reported() {
    let (write, get, put, update) = (write_ok(), get_nothing(), put_ok(), update_ok());
    let store = Store::new(client(&[&write, &get, &put, &update]), store_config(TABLE));
    let t = 1_700_000_000_000;
    let mut corrupt = aggregate(&[("AAPL", user_record("AAPL", 1.0, 1.0, t, 1))]);
    let n = corrupt.len();
    corrupt[n - 1] ^= 0xff; // breaks the MD5 trailer
    let half_good = aggregate(&[
        ("AAPL", user_record("AAPL", 2.0, 1.0, t, 2)),
        ("AAPL", b"{\"s\":\"AAPL\"}".to_vec()),
        ("AAPL", user_record("AAPL", -2.0, 1.0, t, 3)),
    ]);
    let records = [
        KRecord { shard: "shardId-1", seq: "1", partition_key: "AAPL", data: corrupt },
        KRecord {
            shard: "shardId-1",
            seq: "2",
            partition_key: "AAPL",
            data: b"Hello World".to_vec(),
        },
        KRecord { shard: "shardId-1", seq: "3", partition_key: "AAPL", data: half_good },
        KRecord {
            shard: "shardId-1",
            seq: "4",
            partition_key: "AAPL",
            data: user_record("AAPL", 4.0, 1.0, t, 4),
        },
    ];

    let outcome = handle_batch(event(&records), &store, None).await;

    assert!(outcome.response.batch_item_failures.is_empty());
    let s = &outcome.stats;
    assert_eq!((s.kinesis_records, s.poison_records, s.poison_user_records), (4, 1, 3));
    assert_eq!((s.user_records, s.write.trades_written), (2, 2));
}

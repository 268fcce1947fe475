//! The Kinesis event fixture: Lambda's documented event shape carrying one poison record
//! (AWS's own "Hello World" sample), one plain user record and one aggregated record.
//! Parse, serialize, parse again; then handle it and check what would be written.

mod common;

use std::sync::{Arc, Mutex};

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::streams::KinesisEventResponse;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemOutput;
use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::put_item::PutItemOutput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use lambda::{Store, handle_batch};

const FIXTURE: &str = include_str!("fixtures/kinesis-event.json");

#[test]
fn the_fixture_round_trips() {
    let parsed: KinesisEvent = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(parsed.records.len(), 3);
    let again: KinesisEvent =
        serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
    assert_eq!(parsed, again);
    assert_eq!(&parsed.records[0].kinesis.data[..], b"Hello World");
}

#[test]
fn the_response_has_lambdas_shape() {
    let mut response = KinesisEventResponse::default();
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        serde_json::json!({"batchItemFailures": []})
    );
    response.add_failure("4956");
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": "4956"}]})
    );
}

#[tokio::test]
async fn the_fixture_is_handled() {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let write = {
        let keys = keys.clone();
        mock!(Client::batch_write_item).then_compute_output(move |input| {
            for w in &input.request_items().unwrap()["fixture"] {
                let item = w.put_request().unwrap().item();
                let key = |k: &str| item[k].as_s().unwrap().clone();
                keys.lock().unwrap().push((key("pk"), key("sk")));
            }
            BatchWriteItemOutput::builder().build()
        })
    };
    let get = mock!(Client::get_item).then_output(|| GetItemOutput::builder().build());
    let put = mock!(Client::put_item).then_output(|| PutItemOutput::builder().build());
    let update = mock!(Client::update_item).then_output(|| UpdateItemOutput::builder().build());
    let client =
        mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&write, &get, &put, &update], |c| c
            .retry_config(RetryConfig::disabled()));
    let store = Store::new(client, common::store_config("fixture"));

    let event: KinesisEvent = serde_json::from_str(FIXTURE).unwrap();
    let outcome = handle_batch(event, &store, Some("c6af9ac6-7b61-11e6-9a41-93e812345678")).await;

    assert!(outcome.response.batch_item_failures.is_empty());
    assert_eq!((outcome.stats.kinesis_records, outcome.stats.poison_user_records), (3, 1));
    let mut keys = keys.lock().unwrap().clone();
    keys.sort();
    let want = [
        ("T#AAPL", "1628238530221#ip-10-0-0-7.7f3a#00000000000000081234"),
        ("T#MSFT", "1700000000100#ip-10-0-0-7.7f3a#00000000000000081235"),
        ("T#MSFT", "1700000000200#ip-10-0-0-7.7f3a#00000000000000081236"),
    ];
    let keys: Vec<(&str, &str)> = keys.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
    assert_eq!(keys, want);
    // One candle and one latest price per symbol.
    assert_eq!((put.num_calls(), update.num_calls()), (2, 2));
}

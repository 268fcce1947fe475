//! The handler against a real DynamoDB API (dynalite): what a batch stores, and that
//! handling it again, wholly or in part, counts nothing twice.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{KRecord, aggregate, create_table, event, get, n, query, store_config, unique};
use common::{user_record, user_record_with};
use lambda::{Store, handle_batch};

const SHARD0: &str = "shardId-000000000000";
const SHARD1: &str = "shardId-000000000001";
/// The start of a minute, so bucket arithmetic in the test stays readable.
const T0: u64 = 1_700_000_040_000;

fn s(item: &common::Item, name: &str) -> String {
    item[name].as_s().unwrap().clone()
}

fn mark(item: &common::Item, shard: &str) -> String {
    item["hw"].as_m().unwrap()[shard].as_s().unwrap().clone()
}

#[tokio::test]
async fn a_batch_is_stored_and_a_repeat_changes_nothing() {
    let client = common::dynamodb_client().await;
    let table = unique("lambda-handler");
    create_table(&client, &table).await;
    let store = Store::new(client.clone(), store_config(&table));

    let first = || {
        event(&[
            KRecord {
                shard: SHARD0,
                seq: "100",
                partition_key: "AAPL",
                data: aggregate(&[
                    ("AAPL", user_record_with("AAPL", 10.0, 2.0, T0 + 500, 1, &["1", "12"])),
                    ("MSFT", user_record("MSFT", 300.0, 1.0, T0 + 100, 2)),
                    ("AAPL", user_record("AAPL", 11.0, 1.0, T0 + 100, 3)),
                ]),
            },
            KRecord {
                shard: SHARD0,
                seq: "200",
                partition_key: "AAPL",
                data: user_record("AAPL", 9.5, 4.0, T0 + 900, 4),
            },
            KRecord {
                shard: SHARD0,
                seq: "300",
                partition_key: "AAPL",
                data: aggregate(&[
                    // A price update at the same t as trade 4, arriving later: the close.
                    ("AAPL", user_record("AAPL", 12.0, 0.0, T0 + 900, 5)),
                    ("AAPL", user_record("AAPL", 13.0, 1.0, T0 + 60_005, 6)),
                    ("MSFT", user_record("MSFT", 301.0, 2.0, T0 + 50, 7)),
                ]),
            },
        ])
    };

    let outcome = handle_batch(first(), &store, Some("req-1")).await;
    assert!(outcome.response.batch_item_failures.is_empty(), "{:?}", outcome.response);
    assert_eq!(outcome.stats.write.trades_written, 7);
    assert_eq!(outcome.stats.write.candles_written, 3);

    // Trade items.
    let aapl_trades = query(&client, &table, "T#AAPL").await;
    let msft_trades = query(&client, &table, "T#MSFT").await;
    assert_eq!((aapl_trades.len(), msft_trades.len()), (5, 2));
    let t1 = aapl_trades
        .iter()
        .find(|i| s(i, "sk") == format!("{}#test.1#{:020}", T0 + 500, 1))
        .expect("trade 1 stored under its key");
    assert_eq!((n(t1, "price"), n(t1, "volume")), (10.0, 2.0));
    assert_eq!(
        t1["conditions"],
        AttributeValue::L(vec![AttributeValue::S("1".into()), AttributeValue::S("12".into())])
    );
    assert_eq!(n(t1, "rt"), ((T0 + 500) * 1000 + 7) as f64);
    assert_eq!(n(t1, "expires_at"), ((T0 + 500) / 1000 + 7 * 86_400) as f64);
    assert!(
        !aapl_trades
            .iter()
            .any(|i| s(i, "sk").ends_with("#00000000000000000004") && i.contains_key("conditions"))
    );

    // Candles.
    let aapl = get(&client, &table, "C#AAPL#1m", &format!("{T0:013}")).await.unwrap();
    assert_eq!((n(&aapl, "open"), n(&aapl, "close")), (11.0, 12.0));
    assert_eq!((n(&aapl, "high"), n(&aapl, "low")), (12.0, 9.5));
    assert_eq!((n(&aapl, "volume"), n(&aapl, "notional"), n(&aapl, "count")), (7.0, 69.0, 4.0));
    assert!((n(&aapl, "vwap") - 69.0 / 7.0).abs() < 1e-9);
    assert_eq!((n(&aapl, "first_t"), n(&aapl, "last_t")), ((T0 + 100) as f64, (T0 + 900) as f64));
    assert_eq!(mark(&aapl, SHARD0), "300:0");
    let aapl_next =
        get(&client, &table, "C#AAPL#1m", &format!("{:013}", T0 + 60_000)).await.unwrap();
    assert_eq!((n(&aapl_next, "count"), n(&aapl_next, "close")), (1.0, 13.0));
    let msft = get(&client, &table, "C#MSFT#1m", &format!("{T0:013}")).await.unwrap();
    assert_eq!((n(&msft, "open"), n(&msft, "close")), (301.0, 300.0));
    assert_eq!((n(&msft, "volume"), n(&msft, "notional"), n(&msft, "count")), (3.0, 902.0, 2.0));
    assert_eq!(mark(&msft, SHARD0), "300:2");

    // Latest prices.
    let latest = get(&client, &table, "L", "AAPL").await.unwrap();
    assert_eq!((n(&latest, "price"), n(&latest, "t")), (13.0, (T0 + 60_005) as f64));
    assert!(n(&latest, "updated_at") > 0.0);
    assert_eq!(n(&get(&client, &table, "L", "MSFT").await.unwrap(), "price"), 300.0);

    // The same batch again, as after a Lambda retry: nothing changes.
    let again = handle_batch(first(), &store, Some("req-2")).await;
    assert!(again.response.batch_item_failures.is_empty());
    assert_eq!((again.stats.write.candles_written, again.stats.write.candles_unchanged), (0, 3));
    assert_eq!(again.stats.write.latest_stale, 2);
    assert_eq!(get(&client, &table, "C#AAPL#1m", &format!("{T0:013}")).await.unwrap(), aapl);
    assert_eq!(get(&client, &table, "C#MSFT#1m", &format!("{T0:013}")).await.unwrap(), msft);
    assert_eq!(query(&client, &table, "T#AAPL").await.len(), 5);

    // A retry from the third record plus one new record: only the new trade is added.
    let overlap = event(&[
        KRecord {
            shard: SHARD0,
            seq: "300",
            partition_key: "AAPL",
            data: aggregate(&[
                ("AAPL", user_record("AAPL", 12.0, 0.0, T0 + 900, 5)),
                ("AAPL", user_record("AAPL", 13.0, 1.0, T0 + 60_005, 6)),
                ("MSFT", user_record("MSFT", 301.0, 2.0, T0 + 50, 7)),
            ]),
        },
        KRecord {
            shard: SHARD0,
            seq: "400",
            partition_key: "AAPL",
            data: user_record("AAPL", 14.0, 1.0, T0 + 950, 8),
        },
    ]);
    let partial = handle_batch(overlap, &store, None).await;
    assert!(partial.response.batch_item_failures.is_empty());
    assert_eq!(
        (partial.stats.write.candles_written, partial.stats.write.candles_unchanged),
        (1, 2)
    );
    let aapl = get(&client, &table, "C#AAPL#1m", &format!("{T0:013}")).await.unwrap();
    assert_eq!((n(&aapl, "count"), n(&aapl, "volume"), n(&aapl, "close")), (5.0, 8.0, 14.0));
    assert_eq!(mark(&aapl, SHARD0), "400:0");

    // Another shard's positions are not hidden by this shard's mark, even when lower.
    let other = event(&[KRecord {
        shard: SHARD1,
        seq: "100",
        partition_key: "AAPL",
        data: user_record("AAPL", 8.0, 1.0, T0 + 10, 9),
    }]);
    assert!(handle_batch(other, &store, None).await.response.batch_item_failures.is_empty());
    let aapl = get(&client, &table, "C#AAPL#1m", &format!("{T0:013}")).await.unwrap();
    assert_eq!((n(&aapl, "count"), n(&aapl, "open"), n(&aapl, "low")), (6.0, 8.0, 8.0));
    assert_eq!(
        (mark(&aapl, SHARD0), mark(&aapl, SHARD1)),
        ("400:0".to_owned(), "100:0".to_owned())
    );

    client.delete_table().table_name(&table).send().await.unwrap();
}

#[tokio::test]
async fn a_missing_table_is_reported_as_a_failure() {
    let client = common::dynamodb_client().await;
    let store = Store::new(client, store_config(&unique("lambda-missing")));
    let ev = event(&[KRecord {
        shard: SHARD0,
        seq: "5",
        partition_key: "A",
        data: user_record("A", 1.0, 1.0, T0, 1),
    }]);
    let outcome = handle_batch(ev, &store, None).await;
    assert_eq!(outcome.retry_from(), Some("5"));
    assert_eq!(outcome.stats.write.failed_writes, 3, "the trade, the candle and the latest price");
}

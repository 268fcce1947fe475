//! The whole pipeline on one machine: a scripted Finnhub feed over a real websocket, the
//! ingestor, the local Kinesis stand-in, the Lambda handler under the local runner, and
//! the local DynamoDB stand-in. Every trade sent must be stored exactly once, and the
//! 1-minute candles and latest prices must equal those computed directly from the trades.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use e2e::{
    create_stream, create_table, dynamodb_config, kinesis_config, start_ingest, unique_name,
    wait_for,
};
use lambda::config::LocalConfig;
use lambda::store::StoreConfig;
use loadgen::feed::{Script, ScriptFrame, ScriptTrade};
use tokio::sync::oneshot;
use wire::table;

const SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "BINANCE:BTCUSDT", "NVDA", "OANDA:EUR_USD"];
/// A minute boundary, so the script spans known candle buckets.
const START_MS: u64 = 1_700_000_040_000;

/// 400 trades over about three and a half minutes of exchange time, in frames of 1 to 6.
fn trades() -> Vec<ScriptTrade> {
    (0..400u64)
        .map(|i| ScriptTrade {
            symbol: SYMBOLS[(i * 3 % 5) as usize].to_owned(),
            // A wandering price with some repeats, so open/high/low/close all differ.
            price: 100.0 + ((i * 37) % 23) as f64 * 0.5 - ((i * 11) % 7) as f64 * 0.25,
            time_ms: START_MS + i * 523,
            volume: ((i * 13) % 40) as f64,
            conditions: if i.is_multiple_of(4) { vec!["12".into()] } else { vec![] },
        })
        .collect()
}

fn script(trades: &[ScriptTrade]) -> Script {
    let mut frames = Vec::new();
    let mut rest = trades;
    let mut n = 0;
    while !rest.is_empty() {
        let take = (n % 6 + 1).min(rest.len());
        frames.push(ScriptFrame::Trades(rest[..take].to_vec()));
        rest = &rest[take..];
        n += 1;
    }
    Script::new(frames).wait_for(SYMBOLS)
}

#[derive(Debug, PartialEq)]
struct Candle {
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    count: u64,
}

/// Candles computed straight from the trades, per symbol and bucket start.
fn expected_candles(trades: &[ScriptTrade]) -> HashMap<(String, u64), Candle> {
    let mut out: HashMap<(String, u64), Candle> = HashMap::new();
    // Exchange times increase through the script, so the first trade seen in a bucket
    // opens it and the last one closes it.
    for t in trades {
        let bucket = table::bucket_start(t.time_ms, table::CANDLE_1M_MS);
        let c = out.entry((t.symbol.clone(), bucket)).or_insert(Candle {
            open: t.price,
            high: t.price,
            low: t.price,
            close: t.price,
            volume: 0.0,
            count: 0,
        });
        c.high = c.high.max(t.price);
        c.low = c.low.min(t.price);
        c.close = t.price;
        c.volume += t.volume;
        c.count += 1;
    }
    out
}

fn num(item: &HashMap<String, AttributeValue>, name: &str) -> f64 {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse().expect("a DynamoDB number"),
        other => panic!("attribute {name} is not a number: {other:?}"),
    }
}

fn string<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    match item.get(name) {
        Some(AttributeValue::S(s)) => s,
        other => panic!("attribute {name} is not a string: {other:?}"),
    }
}

/// Every item under one partition key, following pagination.
async fn query_all(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
    pk: &str,
) -> anyhow::Result<Vec<HashMap<String, AttributeValue>>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(table_name)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
            .set_exclusive_start_key(start)
            .consistent_read(true)
            .send()
            .await?;
        items.extend(out.items().iter().cloned());
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(items);
        }
    }
}

async fn stored_trades(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
) -> anyhow::Result<Vec<(String, HashMap<String, AttributeValue>)>> {
    let mut all = Vec::new();
    for s in SYMBOLS {
        for item in query_all(client, table_name, &table::trade_pk(s)).await? {
            all.push((s.to_owned(), item));
        }
    }
    Ok(all)
}

async fn run_lambda_until_stored(
    kinesis: aws_sdk_kinesis::Client,
    dynamo: aws_sdk_dynamodb::Client,
    config: LocalConfig,
    check: impl AsyncFn() -> anyhow::Result<bool>,
) -> anyhow::Result<lambda::local::LocalStats> {
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = tokio::spawn(lambda::local::run_local(config, kinesis, dynamo, async {
        let _ = stopped.await;
    }));
    let waited = wait_for("the runner to store everything", Duration::from_secs(90), || async {
        Ok(check().await?.then_some(()))
    })
    .await;
    let _ = stop.send(());
    let stats = runner.await??;
    waited?;
    Ok(stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_to_dynamodb_stores_every_trade_once_with_exact_candles() -> anyhow::Result<()> {
    let ksdk = kinesis_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&ksdk);
    let dynamo = aws_sdk_dynamodb::Client::new(&dynamodb_config().await);
    let stream = unique_name("pipeline");
    let table_name = unique_name("pipeline");
    create_stream(&kinesis, &stream, 4).await?;
    create_table(&dynamo, &table_name).await?;

    let sent = trades();
    let run = start_ingest(&ksdk, script(&sent), &SYMBOLS, &stream, &[]).await?;

    let local = LocalConfig {
        stream: stream.clone(),
        store: StoreConfig { table: table_name.clone(), ..StoreConfig::default() },
        poll_interval: Duration::from_millis(50),
        ..LocalConfig::default()
    };
    let expected = sent.len();
    let all_stored = || async { Ok(stored_trades(&dynamo, &table_name).await?.len() >= expected) };
    let first =
        run_lambda_until_stored(kinesis.clone(), dynamo.clone(), local.clone(), all_stored).await?;

    run.wait_acked(expected as u64).await?;
    let report = run.stop().await?;
    assert!(report.summary.lossless(), "{:?}", report.summary);
    assert_eq!(first.poison_records, 0);

    // Every trade stored exactly once, with the values that were sent.
    let stored = stored_trades(&dynamo, &table_name).await?;
    assert_eq!(stored.len(), expected);
    let mut seen = vec![false; expected];
    for (symbol, item) in &stored {
        let sk = string(item, table::SK);
        let seq: usize = sk.rsplit('#').next().unwrap().parse()?;
        assert!(!seen[seq], "trade {seq} stored twice");
        seen[seq] = true;
        let original = &sent[seq];
        assert_eq!(symbol, &original.symbol);
        assert!(sk.starts_with(&format!("{:013}#", original.time_ms)), "{sk}");
        assert_eq!(num(item, table::PRICE), original.price);
        assert_eq!(num(item, table::VOLUME), original.volume);
    }

    let check_candles = async || -> anyhow::Result<()> {
        let want = expected_candles(&sent);
        let mut got = BTreeMap::new();
        for s in SYMBOLS {
            for item in
                query_all(&dynamo, &table_name, &table::candle_pk(s, table::CANDLE_1M)).await?
            {
                let bucket: u64 = string(&item, table::SK).parse()?;
                let candle = Candle {
                    open: num(&item, table::OPEN),
                    high: num(&item, table::HIGH),
                    low: num(&item, table::LOW),
                    close: num(&item, table::CLOSE),
                    volume: num(&item, table::VOLUME),
                    count: num(&item, table::COUNT) as u64,
                };
                got.insert((s.to_owned(), bucket), candle);
            }
        }
        assert_eq!(got.len(), want.len(), "one candle per symbol and minute");
        for (key, candle) in &got {
            assert_eq!(Some(candle), want.get(key), "candle {key:?}");
        }
        let latest = query_all(&dynamo, &table_name, table::LATEST_PK).await?;
        assert_eq!(latest.len(), SYMBOLS.len());
        for item in &latest {
            let symbol = string(item, table::SK);
            let last = sent.iter().rev().find(|t| t.symbol == symbol).unwrap();
            assert_eq!(num(item, table::PRICE), last.price, "latest price of {symbol}");
            assert_eq!(num(item, table::T) as u64, last.time_ms);
        }
        Ok(())
    };
    check_candles().await?;

    // Lambda delivers at least once. Handing the whole stream to the handler again, as
    // retried batches would, must change nothing: trade keys are deterministic and
    // candles remember which records they already hold.
    let store = lambda::store::Store::new(dynamo.clone(), local.store.clone());
    let shards = kinesis.list_shards().stream_name(&stream).send().await?;
    let mut replayed = 0;
    for shard in shards.shards() {
        let mut iterator = kinesis
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator
            .expect("an open shard has an iterator");
        loop {
            let page = kinesis.get_records().shard_iterator(&iterator).send().await?;
            if page.records().is_empty() {
                break;
            }
            replayed += page.records().len();
            let event =
                lambda::local::build_event(page.records(), shard.shard_id(), "arn", "us-east-1")?;
            let response = lambda::handler::handle(event, &store).await;
            assert!(response.batch_item_failures.is_empty(), "replay failed");
            match page.next_shard_iterator {
                Some(next) => iterator = next,
                None => break,
            }
        }
    }
    assert!(replayed > 0, "the replay handed records to the handler");
    assert_eq!(stored_trades(&dynamo, &table_name).await?.len(), expected);
    check_candles().await?;
    Ok(())
}

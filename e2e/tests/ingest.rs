//! The ingestor end to end: a scripted Finnhub feed over a real websocket, the ingestor,
//! and the local Kinesis stand-in. Every valid trade must arrive exactly once and in
//! order per symbol; malformed frames, unknown types and invalid numbers must be counted
//! and skipped without stopping anything.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use e2e::{create_stream, kinesis_config, start_ingest, unique_name, wait_for};
use ingestor::stats::Rejected;
use loadgen::feed::{Script, ScriptFrame, ScriptTrade};

const SYMBOLS: [&str; 6] = ["AAPL", "MSFT", "BINANCE:BTCUSDT", "OANDA:EUR_USD", "TSLA", "NVDA"];

/// A deterministic script: `frames` trade frames of 1 to 17 trades each, with bad frames
/// of every kind mixed in. Returns the script and the valid trades in send order.
fn script(frames: usize) -> (Script, Vec<ScriptTrade>) {
    let mut out = Vec::new();
    let mut valid = Vec::new();
    let mut n = 0u64;
    for f in 0..frames {
        let mut trades = Vec::new();
        for _ in 0..(f % 17 + 1) {
            let symbol = SYMBOLS[(n * 7 % 6) as usize];
            let trade = ScriptTrade {
                symbol: symbol.to_owned(),
                price: 100.0 + (n % 97) as f64 * 0.25,
                time_ms: 1_700_000_000_000 + n * 13,
                volume: (n % 9) as f64,
                conditions: if n.is_multiple_of(5) {
                    vec!["1".into(), "12".into()]
                } else {
                    vec![]
                },
            };
            n += 1;
            valid.push(trade.clone());
            trades.push(trade);
        }
        out.push(ScriptFrame::Trades(trades));
        match f % 10 {
            3 => out.push(ScriptFrame::Text(b"{\"type\":\"trade\",\"data\":[{".to_vec())),
            5 => out.push(ScriptFrame::Text(br#"{"type":"news","items":[]}"#.to_vec())),
            7 => out.push(ScriptFrame::Text(
                br#"{"type":"trade","data":[{"s":"AAPL","p":"12x","t":1,"v":1}]}"#.to_vec(),
            )),
            9 => out.push(ScriptFrame::Trades(vec![ScriptTrade {
                symbol: "AAPL".into(),
                price: -1.0,
                time_ms: 1,
                volume: 1.0,
                conditions: vec![],
            }])),
            _ => {}
        }
    }
    (Script::new(out).wait_for(SYMBOLS), valid)
}

/// Reads every record of every shard and returns the user records inside, decoded.
async fn read_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<Vec<wire::record::UserRecord>> {
    Ok(read_shards(client, stream).await?.into_iter().flat_map(|s| s.records).collect())
}

/// One shard's user records in stream order, and its parent after a reshard.
struct ShardRecords {
    id: String,
    parent: Option<String>,
    records: Vec<wire::record::UserRecord>,
}

async fn read_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<Vec<ShardRecords>> {
    let shards = client.list_shards().stream_name(stream).send().await?;
    let mut all = Vec::new();
    for shard in shards.shards() {
        let mut out = Vec::new();
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator
            .expect("an open shard has an iterator");
        loop {
            let page = client.get_records().shard_iterator(&iterator).send().await?;
            for r in page.records() {
                let data = bytes::Bytes::copy_from_slice(r.data().as_ref());
                for user in wire::kpl::deaggregate(data, r.partition_key().unwrap_or_default())? {
                    let rec = wire::record::decode(&user.data)?;
                    assert_eq!(rec.symbol, user.partition_key, "partition key is the symbol");
                    out.push(rec);
                }
            }
            match page.next_shard_iterator {
                Some(next) if !page.records().is_empty() => iterator = next,
                _ => break,
            }
        }
        all.push(ShardRecords {
            id: shard.shard_id().to_owned(),
            parent: shard.parent_shard_id().map(str::to_owned),
            records: out,
        });
    }
    Ok(all)
}

async fn ingest_script(aggregation: &str) -> anyhow::Result<()> {
    let sdk = kinesis_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let stream = unique_name("ingest");
    create_stream(&kinesis, &stream, 4).await?;

    let (script, sent) = script(120);
    let run =
        start_ingest(&sdk, script, &SYMBOLS, &stream, &["--aggregation", aggregation]).await?;
    let expected = sent.len() as u64;
    run.wait_acked(expected).await?;
    let stats = run.stats.clone();
    let report = run.stop().await?;

    assert!(report.summary.lossless(), "{:?}", report.summary);
    assert_eq!(report.summary.received, expected);
    // Twelve of each bad kind went out (frames 3, 5, 7 and 9 of every ten).
    assert_eq!(stats.rejected_frames(Rejected::Malformed), 24, "truncated JSON and '12x' prices");
    assert_eq!(stats.rejected_frames(Rejected::UnknownType), 12);
    assert_eq!(stats.trades_invalid.load(Relaxed), 12, "negative prices");

    let got = read_stream(&kinesis, &stream).await?;
    assert_eq!(got.len(), sent.len(), "every valid trade exactly once");
    // One ingestor numbered the trades in receive order, so seq maps back to `sent`.
    let src = &got[0].src;
    let mut by_symbol: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut seen = vec![false; sent.len()];
    for rec in &got {
        assert_eq!(&rec.src, src);
        let original = &sent[rec.seq as usize];
        assert!(!seen[rec.seq as usize], "trade {} arrived twice", rec.seq);
        seen[rec.seq as usize] = true;
        assert_eq!(rec.symbol, original.symbol);
        assert_eq!(rec.price, original.price);
        assert_eq!(rec.time_ms, original.time_ms);
        assert_eq!(rec.volume, original.volume);
        assert_eq!(rec.conditions, original.conditions);
        by_symbol.entry(original.symbol.as_str()).or_default().push(rec.seq);
    }
    // Records of a shard come back in write order; a symbol lives on one shard.
    for (symbol, seqs) in by_symbol {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{symbol} out of order: {seqs:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_trades_arrive_once_and_in_order() -> anyhow::Result<()> {
    ingest_script("on").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_trades_arrive_once_and_in_order() -> anyhow::Result<()> {
    ingest_script("off").await
}

/// The stream is resharded from 2 to 4 shards while trades flow. The ingestor notices
/// records landing on unexpected shards, re-reads the map, drains the old shards and
/// carries on: nothing is lost or duplicated, and for each symbol every trade written to
/// a parent shard precedes every trade written to its child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_loses_and_reorders_nothing() -> anyhow::Result<()> {
    use aws_sdk_kinesis::types::ScalingType;

    let sdk = kinesis_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let stream = unique_name("reshard");
    create_stream(&kinesis, &stream, 2).await?;

    // Paced so that the reshard lands in the middle of the script.
    let (script, sent) = script(200);
    let script = script.pace(Duration::from_millis(15));
    let run = start_ingest(&sdk, script, &SYMBOLS, &stream, &[]).await?;
    let stats = run.stats.clone();

    wait_for("a third of the script", Duration::from_secs(60), || async {
        Ok((run.feed.script_frames_sent() > 80).then_some(()))
    })
    .await?;
    kinesis
        .update_shard_count()
        .stream_name(&stream)
        .target_shard_count(4)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await?;

    run.wait_acked(sent.len() as u64).await?;
    let report = run.stop().await?;
    assert!(report.summary.lossless(), "{:?}", report.summary);

    let shards = read_shards(&kinesis, &stream).await?;
    assert!(shards.len() > 2, "the stream was resharded: {} shards", shards.len());
    assert!(stats.shard_mispredictions.load(Relaxed) > 0, "the reshard was noticed");
    let total: usize = shards.iter().map(|s| s.records.len()).sum();
    assert_eq!(total, sent.len(), "every trade exactly once");
    // Within a shard, each symbol's trades are in receive order.
    for s in &shards {
        let mut last: HashMap<&str, u64> = HashMap::new();
        for r in &s.records {
            if let Some(prev) = last.insert(r.symbol.as_str(), r.seq) {
                assert!(prev < r.seq, "{} out of order in {}", r.symbol, s.id);
            }
        }
    }
    // Across a reshard, a parent's trades of a symbol all precede its child's.
    for child in shards.iter().filter(|s| s.parent.is_some()) {
        let parent = shards.iter().find(|p| Some(&p.id) == child.parent.as_ref()).unwrap();
        for r in &child.records {
            let later = parent.records.iter().filter(|p| p.symbol == r.symbol && p.seq > r.seq);
            assert_eq!(later.count(), 0, "{} reordered across the reshard", r.symbol);
        }
    }
    Ok(())
}

//! Records aggregated by `wire` deaggregate with AWS's own Python library
//! (`aws-kinesis-agg`), and records that library aggregates decode with `wire`.
//!
//! The Python side runs in the virtualenv that `scripts/setup.sh` makes
//! (`.local/venv`), or in the interpreter named by `TICKPIPE_PYTHON`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bytes::Bytes;
use serde_json::{Value, json};
use wire::finnhub::{Conditions, Trade};
use wire::kpl::{Aggregator, deaggregate};
use wire::record::{self, Receipt};

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TICKPIPE_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with aws-kinesis-agg at {}: run scripts/test.sh (or scripts/setup.sh python)",
        venv.display()
    );
    venv
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn bridge(args: &[&str], input: &Value) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kpl_interop.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Real-shaped user records: trades of a few symbols, some with condition codes.
fn user_records(n: usize) -> Vec<(String, Vec<u8>)> {
    let symbols = ["AAPL", "MSFT", "BINANCE:BTCUSDT", "OANDA:EUR_USD", "Ünïcode"];
    (0..n)
        .map(|i| {
            let symbol = symbols[i % symbols.len()];
            let codes: Conditions = ["1", "24", "12"].into_iter().take(i % 4).collect();
            let trade = Trade {
                symbol,
                price: 100.0 + i as f64 * 0.01,
                time_ms: 1_700_000_000_000 + i as u64,
                volume: (i % 50) as f64,
                conditions: codes,
            };
            let mut data = Vec::new();
            let receipt = Receipt { src: "interop.1", seq: i as u64, rt_us: 1_700_000_000_000_000 };
            record::encode(&mut data, &trade, receipt);
            (symbol.to_owned(), data)
        })
        .collect()
}

#[test]
fn aws_library_deaggregates_what_wire_aggregates() {
    let users = user_records(1000);
    // Pack into aggregated records of at most ~25 KB, as the ingestor does per shard.
    let mut aggregated = Vec::new();
    let mut agg = Aggregator::new();
    for (pk, data) in &users {
        if !agg.is_empty() && agg.len_with(pk, data.len()) > 25_000 {
            aggregated.push(agg.finish().unwrap());
        }
        agg.push(pk, data);
    }
    aggregated.push(agg.finish().unwrap());
    assert!(aggregated.len() > 3, "the test should cover several aggregated records");
    // A plain record among them must pass through untouched.
    let plain = b"{\"plain\":true}".to_vec();
    let mut input: Vec<Value> =
        aggregated.iter().map(|(data, pk)| json!({"pk": pk, "data": hex(data)})).collect();
    input.push(json!({"pk": "PLAIN", "data": hex(&plain)}));

    let out = bridge(&["deaggregate"], &Value::Array(input));
    // The library treats a record whose checksum or protobuf it cannot read as plain,
    // so a broken encoder would show up here as too few records.
    assert_eq!(out.len(), users.len() + 1);
    for ((pk, data), got) in users.iter().zip(&out) {
        assert_eq!(got["pk"], json!(pk));
        assert_eq!(unhex(got["data"].as_str().unwrap()), *data);
    }
    let last = out.last().unwrap();
    assert_eq!(
        (last["pk"].as_str().unwrap(), unhex(last["data"].as_str().unwrap())),
        ("PLAIN", plain)
    );
}

#[test]
fn wire_deaggregates_what_the_aws_library_aggregates() {
    let users = user_records(700);
    let input: Vec<Value> =
        users.iter().map(|(pk, data)| json!({"pk": pk, "data": hex(data)})).collect();
    let aggregated = bridge(&["aggregate", "30000"], &Value::Array(input));
    assert!(aggregated.len() > 3, "the library should have made several aggregated records");
    let mut got = Vec::new();
    for rec in &aggregated {
        let data = unhex(rec["data"].as_str().unwrap());
        assert!(wire::kpl::is_aggregated(&data));
        let pk = rec["pk"].as_str().unwrap();
        for user in deaggregate(Bytes::from(data), pk).unwrap() {
            got.push((user.partition_key, user.data.to_vec()));
        }
    }
    assert_eq!(got, users);
    // And every user record decodes as a trade.
    for (_, data) in &got {
        record::decode(data).unwrap();
    }
}

//! The dashboard's HTTP API against the real server on port 0: validation answers, the
//! page's headers, DynamoDB outages (a closed port, a server that never answers), and
//! the happy paths against dynalite.

mod common;

use std::time::{Duration, Instant};

use common::{Dashboard, TestCandle, get, request};
use dashboard::DashboardConfig;
use hyper::http::{Method, StatusCode};
use tokio::net::TcpListener;

/// An endpoint where nothing listens: bind port 0, note the port, close it.
async fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("bound listener has an address");
    drop(listener);
    format!("http://{addr}")
}

/// A dashboard whose DynamoDB endpoint refuses connections: requests that reach DynamoDB
/// fail with 503, so a validation answer of 400 proves validation ran first.
async fn dashboard_without_dynamo() -> Dashboard {
    let config = DashboardConfig::new("tickpipe-unreachable");
    let client = common::client(&closed_endpoint().await, &config);
    Dashboard::start(client, config).await.expect("start dashboard")
}

fn assert_json_error(reply: &common::Reply, status: StatusCode, needles: &[&str]) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("cache-control"), "no-store");
    let body = reply.json();
    let error = body["error"].as_str().unwrap_or_else(|| panic!("no error field: {body}"));
    for needle in needles {
        assert!(error.contains(needle), "{error:?} should mention {needle:?}");
    }
}

#[tokio::test]
async fn bad_requests_get_clear_json_4xx() -> anyhow::Result<()> {
    let server = dashboard_without_dynamo().await;
    let addr = server.addr;
    let long = "X".repeat(65);
    let cases: &[(&str, &[&str])] = &[
        ("/api/candles", &["symbol"]),
        ("/api/candles?limit=5", &["symbol"]),
        ("/api/candles?symbol=", &["symbol", "1 to 64"]),
        ("/api/candles?symbol=AA%00PL", &["control"]),
        ("/api/candles?symbol=AA%0APL", &["control"]),
        ("/api/candles?symbol=AAPL&limit=0", &["limit", "1 to 1440"]),
        ("/api/candles?symbol=AAPL&limit=1441", &["limit", "1 to 1440"]),
        ("/api/candles?symbol=AAPL&limit=ten", &["limit", "1 to 1440", "ten"]),
        ("/api/candles?symbol=AAPL&limit=-3", &["limit", "1 to 1440"]),
        ("/api/candles?symbol=AAPL&limit=99999999999999999999999", &["limit"]),
        ("/api/candles?symbol=A&symbol=B", &["symbol"]),
    ];
    for (path, needles) in cases {
        let reply = get(addr, path).await?;
        assert_json_error(&reply, StatusCode::BAD_REQUEST, needles);
        assert_eq!(reply.json()["retryable"], false, "{path}");
    }
    let reply = get(addr, &format!("/api/candles?symbol={long}")).await?;
    assert_json_error(&reply, StatusCode::BAD_REQUEST, &["symbol", "64", "got 65"]);

    for path in ["/nope", "/api", "/api/latest/AAPL", "/api/candles/AAPL", "/index.html"] {
        let reply = get(addr, path).await?;
        assert_json_error(&reply, StatusCode::NOT_FOUND, &["no such route", "/api/latest"]);
    }
    for method in [Method::POST, Method::DELETE, Method::PUT] {
        let reply = request(addr, method.clone(), "/api/latest").await?;
        assert_json_error(&reply, StatusCode::METHOD_NOT_ALLOWED, &["GET"]);
    }
    server.stop().await
}

#[tokio::test]
async fn unreachable_dynamodb_is_a_retryable_503() -> anyhow::Result<()> {
    let server = dashboard_without_dynamo().await;
    for path in ["/api/latest", "/api/candles?symbol=AAPL&limit=10"] {
        let reply = get(server.addr, path).await?;
        assert_json_error(&reply, StatusCode::SERVICE_UNAVAILABLE, &["unavailable"]);
        assert_eq!(reply.json()["retryable"], true);
    }
    let health = get(server.addr, "/healthz").await?;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.json()["status"], "unavailable");
    // The server survives the failures and still serves the page.
    assert_eq!(get(server.addr, "/").await?.status, StatusCode::OK);
    server.stop().await
}

#[tokio::test]
async fn silent_dynamodb_times_out_within_the_budget() -> anyhow::Result<()> {
    // A server that accepts connections and never answers, the way a hung endpoint does.
    let silent = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", silent.local_addr()?);
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let mut config = DashboardConfig::new("tickpipe-silent");
    config.dynamo_timeout = Duration::from_millis(400);
    let server = Dashboard::start(common::client(&endpoint, &config), config).await?;

    let start = Instant::now();
    let reply = get(server.addr, "/api/latest").await?;
    let took = start.elapsed();
    assert_json_error(&reply, StatusCode::SERVICE_UNAVAILABLE, &["unavailable"]);
    // 400 ms budget; generous slack for a loaded 2-core machine, but far below the SDK's
    // defaults, which would wait much longer.
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    held.abort();
    server.stop().await
}

#[tokio::test]
async fn page_is_self_contained_and_locked_down() -> anyhow::Result<()> {
    let server = dashboard_without_dynamo().await;
    let page = get(server.addr, "/").await?;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let csp = page.header("content-security-policy");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text();
    for asset in ["/app.js", "/style.css", "/favicon.svg"] {
        assert!(html.contains(&format!("\"{asset}\"")), "page should load {asset}");
        let reply = get(server.addr, asset).await?;
        assert_eq!(reply.status, StatusCode::OK, "{asset}");
        assert_eq!(reply.header("x-content-type-options"), "nosniff", "{asset}");
        // Nothing from the network: the only absolute URL allowed is the SVG namespace,
        // which names a vocabulary and is never fetched.
        let text = reply.text().replace("http://www.w3.org/2000/svg", "");
        assert!(!text.contains("http://") && !text.contains("https://"), "{asset} links out");
    }
    assert!(!html.replace("http://www.w3.org/2000/svg", "").contains("http"), "page links out");
    // No inline script or style for the CSP to block.
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("style="));
    server.stop().await
}

#[tokio::test]
async fn latest_candles_and_health_against_dynalite() -> anyhow::Result<()> {
    let endpoint = common::dynamo_endpoint();
    let table = common::unique_name("dash-api");
    let config = DashboardConfig::new(&table);
    let client = common::client(&endpoint, &config);
    common::create_table(&client, &table).await?;

    // Enough latest items, each padded to 1 KB, that one Query page (1 MB) cannot hold
    // them all: the answer is complete only if the server follows pagination.
    let symbols: usize = 1_200;
    let t0 = 1_700_000_000_000u64;
    let pad = "p".repeat(1_000);
    let items = (0..symbols)
        .map(|i| {
            let mut item =
                common::latest_item(&format!("SYM{i:05}"), 100.0 + i as f64 / 100.0, t0 + i as u64);
            item.push(("pad", aws_sdk_dynamodb::types::AttributeValue::S(pad.clone())));
            item
        })
        .collect();
    common::put_many(&client, &table, items).await?;

    let minute = wire::table::CANDLE_1M_MS;
    let base = wire::table::bucket_start(t0, minute);
    let candles: Vec<TestCandle> = (0..5u32)
        .map(|i| {
            let open = 50.0 + f64::from(i);
            TestCandle {
                t: base + u64::from(i) * minute,
                open,
                high: open + 2.0,
                low: open - 1.0,
                close: open + 0.5,
                volume: 10.0 + f64::from(i),
                count: 3 + u64::from(i),
            }
        })
        .collect();
    for candle in &candles {
        common::put(&client, &table, common::candle_item("AAPL", candle)).await?;
    }
    // Another symbol's candle with a later bucket must not leak into AAPL's answer.
    let other = TestCandle { t: base + 9 * minute, ..candles[0] };
    common::put(&client, &table, common::candle_item("MSFT", &other)).await?;

    let server = Dashboard::start(client.clone(), config).await?;

    let latest = get(server.addr, "/api/latest").await?;
    assert_eq!(latest.status, StatusCode::OK, "{}", latest.text());
    assert_eq!(latest.header("cache-control"), "no-store");
    let body = latest.json();
    let list = body["symbols"].as_array().expect("symbols array");
    assert_eq!(list.len(), symbols, "every latest item, across pages");
    assert_eq!(body["truncated"], false);
    assert_eq!(list[0]["symbol"], "SYM00000");
    assert_eq!(list[0]["price"], 100.0);
    assert_eq!(list[0]["t"], t0);
    assert_eq!(list[0]["updated_at"], t0 + 42);
    assert_eq!(list[1199]["symbol"], "SYM01199");
    assert_eq!(list[1199]["price"], 100.0 + 1199.0 / 100.0);
    assert!(list[0].get("pad").is_none(), "only the documented fields");

    let default = get(server.addr, "/api/candles?symbol=AAPL").await?.json();
    assert_eq!(default["symbol"], "AAPL");
    assert_eq!(default["interval"], "1m");
    let times: Vec<u64> = default["candles"]
        .as_array()
        .expect("candles")
        .iter()
        .map(|c| c["t"].as_u64().expect("t"))
        .collect();
    assert_eq!(times, candles.iter().map(|c| c.t).collect::<Vec<_>>(), "all five, oldest first");

    let newest = get(server.addr, "/api/candles?symbol=AAPL&limit=2").await?.json();
    let newest = newest["candles"].as_array().expect("candles");
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[0]["t"], candles[3].t, "the newest two, oldest of them first");
    assert_eq!(newest[1]["t"], candles[4].t);
    let last = &newest[1];
    assert_eq!(last["open"], 54.0);
    assert_eq!(last["high"], 56.0);
    assert_eq!(last["low"], 53.0);
    assert_eq!(last["close"], 54.5);
    assert_eq!(last["volume"], 14.0);
    assert_eq!(last["count"], 7);
    assert_eq!(last["vwap"], 54.25);
    assert_eq!(last["first_t"], candles[4].t + 1);
    assert!(last.get("hw").is_none(), "high-water marks stay inside");

    let none = get(server.addr, "/api/candles?symbol=NOPE&limit=5").await?;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.json()["candles"], serde_json::json!([]));

    // Symbols with a venue prefix and spaces round-trip through the query string.
    let venue = TestCandle { t: base, ..candles[0] };
    common::put(&client, &table, common::candle_item("IC MARKETS:1", &venue)).await?;
    let spaced = get(server.addr, "/api/candles?symbol=IC%20MARKETS%3A1").await?.json();
    assert_eq!(spaced["symbol"], "IC MARKETS:1");
    assert_eq!(spaced["candles"].as_array().map(Vec::len), Some(1));

    let health = get(server.addr, "/healthz").await?;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text());
    assert_eq!(health.json()["table"], table.as_str());
    server.stop().await?;

    // A table that does not exist is an operator's mistake: 502, not retryable; health 503.
    let missing = DashboardConfig::new(common::unique_name("dash-missing"));
    let server = Dashboard::start(common::client(&endpoint, &missing), missing).await?;
    let reply = get(server.addr, "/api/latest").await?;
    assert_json_error(&reply, StatusCode::BAD_GATEWAY, &["does not exist"]);
    assert_eq!(reply.json()["retryable"], false);
    assert_eq!(get(server.addr, "/healthz").await?.status, StatusCode::SERVICE_UNAVAILABLE);
    server.stop().await
}

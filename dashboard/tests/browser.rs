//! The page in real headless Chromium against dynalite: it lists the symbols with their
//! prices, draws one candle element per candle, follows a deep link and a click, picks up
//! a new price and a new candle without reloading, and reports a failing table in its
//! status line. A screenshot lands in `target/tmp/` for a human to look at.
//!
//! The first run uses `--dump-dom` with a virtual-time budget. The live part drives one
//! browser over the DevTools protocol (a websocket), so the test can change DynamoDB
//! while the same page stays open and poll the DOM until the change shows.

mod common;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use common::{Dashboard, TestCandle};
use dashboard::DashboardConfig;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, handshake};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use wire::table::{CANDLE_1M_MS, bucket_start};

const CHROMIUM_DEFAULT: &str = "/usr/bin/chromium";
/// Longest one Chromium run may take before its whole process group is killed.
const CHROMIUM_RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Virtual time the `--dump-dom` and `--screenshot` runs give the page: a few polls.
const VIRTUAL_TIME_BUDGET_MS: u32 = 4_000;
/// How long the live checks wait for the page to show a change (it polls every second).
const LIVE_DEADLINE: Duration = Duration::from_secs(20);

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| CHROMIUM_DEFAULT.into(), PathBuf::from);
    assert!(
        path.exists(),
        "Chromium not found at {}: run scripts/test.sh, which installs it, or set CHROMIUM",
        path.display()
    );
    path
}

/// A fresh Chromium profile directory, removed when dropped.
struct Profile(PathBuf);

impl Profile {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(common::unique_name("tickpipe-chromium"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a Chromium process group when dropped: the browser, its renderers and helpers,
/// even when the test fails half-way.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn chromium_args(profile: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1440,900",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let mut dir = OsString::from("--user-data-dir=");
    dir.push(profile);
    args.push(dir);
    args
}

fn spawn_chromium(
    profile: &Path,
    extra: &[String],
    url: &str,
) -> anyhow::Result<(tokio::process::Child, ProcessGroup)> {
    let child = tokio::process::Command::new(chromium())
        .args(chromium_args(profile))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting Chromium")?;
    let pgid = child.id().context("Chromium exited at once")?;
    Ok((child, ProcessGroup(pgid)))
}

/// Runs Chromium to completion (`--dump-dom`, `--screenshot`) and returns its stdout.
async fn run_chromium(extra: &[String], url: &str) -> anyhow::Result<String> {
    let profile = Profile::new()?;
    let (child, _group) = spawn_chromium(&profile.0, extra, url)?;
    let output = tokio::time::timeout(CHROMIUM_RUN_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("Chromium did not finish within {CHROMIUM_RUN_TIMEOUT:?}"))??;
    anyhow::ensure!(
        output.status.success(),
        "Chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn budget_flag() -> String {
    format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}")
}

/// The serialized `<tr>` of `symbol` in a dumped DOM.
fn row<'a>(dom: &'a str, symbol: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-symbol=\"{symbol}\""))
        .unwrap_or_else(|| panic!("no row for {symbol} in the DOM:\n{dom}"));
    let end = dom[start..].find("</tr>").expect("rows are closed") + start;
    &dom[start..end]
}

/// Text of the element with `id` in a dumped DOM.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"));
    let start = dom[open..].find('>').expect("tag ends") + open + 1;
    let end = dom[start..].find('<').expect("text ends") + start;
    &dom[start..end]
}

/// Prices as the page formats them for values from 1 to 1000: two decimals, no grouping.
fn two_decimals(p: f64) -> String {
    format!("{p:.2}")
}

/// 1-minute candles with a deterministic random walk ending in the current minute, with
/// one minute missing so the chart's gap handling is exercised too.
fn walk_candles(now: u64, minutes: u64, gap: u64) -> Vec<TestCandle> {
    let last = bucket_start(now, CANDLE_1M_MS);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 10_000) as f64 / 10_000.0
    };
    let cents = |p: f64| (p * 100.0).round() / 100.0;
    let mut price = 187.40;
    let mut out = Vec::new();
    for i in 0..minutes {
        let open = cents(price);
        let close = cents(open + (next() - 0.47) * 0.9);
        let high = cents(open.max(close) + next() * 0.35);
        let low = cents(open.min(close) - next() * 0.35);
        price = close;
        if i == gap {
            continue;
        }
        let volume = (800.0 + next() * 4_200.0).round();
        out.push(TestCandle {
            t: last - (minutes - 1 - i) * CANDLE_1M_MS,
            open,
            high,
            low,
            close,
            volume,
            count: (volume / 40.0) as u64,
        });
    }
    out
}

/// A DevTools protocol session on one page target.
struct Cdp {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    next_id: u64,
    /// Uncaught exceptions and console errors the page reported.
    page_errors: Vec<Value>,
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

impl Cdp {
    /// Finds the page target of the browser whose profile is `profile` and connects to it.
    async fn attach(profile: &Path) -> anyhow::Result<Self> {
        // Chromium writes the port it picked for --remote-debugging-port=0 into the profile.
        let port_file = profile.join("DevToolsActivePort");
        let port: u16 = common::eventually("DevToolsActivePort", LIVE_DEADLINE, || async {
            Ok(std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok())))
        })
        .await?;
        let devtools = SocketAddr::from(([127, 0, 0, 1], port));
        let ws_path = common::eventually("a page target", LIVE_DEADLINE, || async {
            let targets = common::get(devtools, "/json/list").await?.json();
            let page = targets.as_array().into_iter().flatten().find(|t| t["type"] == "page");
            Ok(page.and_then(|p| p["webSocketDebuggerUrl"].as_str()).map(|url| {
                let after_scheme = url.trim_start_matches("ws://");
                after_scheme[after_scheme.find('/').unwrap_or(0)..].to_owned()
            }))
        })
        .await?;

        let stream = TcpStream::connect(devtools).await?;
        let request = hyper::Request::builder()
            .method("GET")
            .uri(ws_path)
            .header("host", devtools.to_string())
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", handshake::generate_key())
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())?;
        let (ws, _) = handshake::client(&SpawnExecutor, request, stream).await?;
        Ok(Self { ws: FragmentCollector::new(ws), next_id: 1, page_errors: Vec::new() })
    }

    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.write_frame(Frame::text(Payload::Owned(message.into_bytes()))).await?;
        let answer = async {
            loop {
                let frame = self.ws.read_frame().await?;
                match frame.opcode {
                    OpCode::Text => {}
                    OpCode::Close => anyhow::bail!("DevTools closed the connection"),
                    _ => continue,
                }
                let message: Value = serde_json::from_slice(&frame.payload)?;
                if message["id"] == id {
                    if let Some(error) = message.get("error") {
                        anyhow::bail!("{method} failed: {error}");
                    }
                    return Ok(message["result"].clone());
                }
                let event = message["method"].as_str().unwrap_or("");
                let console_error =
                    event == "Runtime.consoleAPICalled" && message["params"]["type"] == "error";
                if event == "Runtime.exceptionThrown" || console_error {
                    self.page_errors.push(message["params"].clone());
                }
            }
        };
        tokio::time::timeout(LIVE_DEADLINE, answer)
            .await
            .with_context(|| format!("no answer to {method} within {LIVE_DEADLINE:?}"))?
    }

    /// Evaluates `expression` in the page and returns its value as JSON.
    async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            anyhow::bail!("{expression} threw: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `expression` until it yields something other than null or false.
    async fn wait_for(&mut self, what: &str, expression: &str) -> anyhow::Result<Value> {
        let start = std::time::Instant::now();
        loop {
            let value = self.eval(expression).await?;
            if !value.is_null() && value != false {
                return Ok(value);
            }
            anyhow::ensure!(
                start.elapsed() < LIVE_DEADLINE,
                "timed out after {LIVE_DEADLINE:?} waiting for {what}; last: {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The page state the live checks look at, in one evaluation.
const SNAPSHOT_JS: &str = r##"(() => {
  // Until the navigation commits, the document is about:blank.
  if (!document.getElementById("chart")) return {};
  const row = (s) => document.querySelector(`tr[data-symbol="${s}"]`);
  const price = (s) => row(s) && row(s).querySelector("td.price").dataset.price;
  return {
    hash: location.hash,
    chart: document.getElementById("chart").dataset.symbol,
    candles: document.querySelectorAll("#chart [data-candle]").length,
    selected: [...document.querySelectorAll("tr.selected")].map((r) => r.dataset.symbol),
    emptyChart: document.getElementById("chart-empty").hidden ? null
      : document.getElementById("chart-empty").textContent,
    msft: price("MSFT"),
    msftDir: row("MSFT") && row("MSFT").dataset.dir,
    msftTick: row("MSFT") && row("MSFT").querySelector("td.tick").textContent,
    close: document.getElementById("c-close").textContent,
    status: document.getElementById("status").dataset.state,
    statusText: document.getElementById("status-text").textContent,
    marker: window.__tickpipeMarker || null,
  };
})()"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_symbols_and_candles_and_stays_live() -> anyhow::Result<()> {
    let endpoint = common::dynamo_endpoint();
    chromium(); // fail before any setup when Chromium is missing
    let table = common::unique_name("dash-browser");
    let config = DashboardConfig::new(&table);
    let client = common::client(&endpoint, &config);
    common::create_table(&client, &table).await?;

    let now = common::now_ms();
    let candles = walk_candles(now, 48, 20);
    let last_candle = *candles.last().expect("candles were made");
    let latest = [
        ("AAPL", last_candle.close, now - 1_200),
        ("BINANCE:BTCUSDT", 67_123.5, now - 300),
        ("MSFT", 411.08, now - 2_500),
    ];
    for (symbol, price, t) in latest {
        common::put(&client, &table, common::latest_item(symbol, price, t)).await?;
    }
    let items = candles.iter().map(|c| common::candle_item("AAPL", c)).collect();
    common::put_many(&client, &table, items).await?;

    let server = Dashboard::start(client.clone(), config).await?;
    let url = server.url("/");

    // 1. One page load, dumped after a few seconds of virtual time.
    let dom = run_chromium(&[budget_flag(), "--dump-dom".into()], &url).await?;
    let aapl = row(&dom, "AAPL");
    assert!(aapl.contains(&format!("data-price=\"{}\"", last_candle.close)), "{aapl}");
    assert!(aapl.contains(&format!(">{}<", two_decimals(last_candle.close))), "{aapl}");
    assert!(aapl.contains("selected"), "the first symbol is selected: {aapl}");
    let btc = row(&dom, "BINANCE:BTCUSDT");
    assert!(btc.contains("data-price=\"67123.5\"") && btc.contains(">67,123.50<"), "{btc}");
    assert!(btc.contains(">BTCUSDT<") && btc.contains(">BINANCE<"), "venue shown apart: {btc}");
    let msft = row(&dom, "MSFT");
    assert!(msft.contains("data-price=\"411.08\"") && msft.contains(">411.08<"), "{msft}");
    assert_eq!(dom.matches("<tr data-symbol=\"").count(), 3, "one row per symbol");
    let chart = &dom[dom.find("<svg id=\"chart\"").expect("chart")..];
    let chart_tag = &chart[..chart.find('>').expect("tag ends")];
    assert!(chart_tag.contains("data-symbol=\"AAPL\""), "charting AAPL: {chart_tag}");
    assert_eq!(dom.matches("data-candle=\"").count(), candles.len(), "one element per candle");
    for c in &candles {
        assert!(dom.contains(&format!("data-candle=\"{}\"", c.t)), "candle {} drawn", c.t);
    }
    assert_eq!(text_of(&dom, "c-close"), two_decimals(last_candle.close));
    assert_eq!(text_of(&dom, "c-open"), two_decimals(last_candle.open));
    assert_eq!(text_of(&dom, "c-count"), last_candle.count.to_string());
    assert_eq!(text_of(&dom, "selected-symbol"), "AAPL");
    assert!(dom.contains("id=\"status\" class=\"status\" data-state=\"live\""), "status is live");

    // 2. A screenshot for a human; see the report for what it looked like.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(&[budget_flag(), format!("--screenshot={}", shot.display())], &url).await?;
    let png =
        std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot");
    eprintln!("screenshot: {}", shot.display());

    // 3. One page kept open: deep link, click, live updates, and an outage.
    let profile = Profile::new()?;
    let (_browser, _group) = spawn_chromium(
        &profile.0,
        &["--remote-debugging-port=0".into(), "--remote-debugging-address=127.0.0.1".into()],
        "about:blank",
    )?;
    let mut cdp = Cdp::attach(&profile.0).await?;
    cdp.call("Runtime.enable", json!({})).await?;
    cdp.call("Page.navigate", json!({ "url": format!("{url}#MSFT") })).await?;

    let state = cdp
        .wait_for(
            "the deep-linked symbol",
            &format!(
                "(() => {{ const s = {SNAPSHOT_JS}; return s.msft && s.emptyChart ? s : null }})()"
            ),
        )
        .await?;
    assert_eq!(state["chart"], "MSFT", "{state}");
    assert_eq!(state["selected"], json!(["MSFT"]), "{state}");
    assert_eq!(state["candles"], 0, "MSFT has no candles: {state}");
    assert!(state["emptyChart"].as_str().unwrap_or("").contains("No 1-minute candles for MSFT"));

    cdp.eval(r#"document.querySelector('tr[data-symbol="AAPL"]').click()"#).await?;
    let expected = candles.len();
    let state = cdp
        .wait_for(
            "AAPL's candles after a click",
            &format!("(() => {{ const s = {SNAPSHOT_JS}; return s.candles === {expected} ? s : null }})()"),
        )
        .await?;
    assert_eq!(state["hash"], "#AAPL", "{state}");
    assert_eq!(state["selected"], json!(["AAPL"]), "{state}");

    // Changes in DynamoDB must appear in the same page: no reload drops this marker.
    cdp.eval("window.__tickpipeMarker = 'still here'").await?;
    let later = common::now_ms();
    common::put(&client, &table, common::latest_item("MSFT", 412.57, later)).await?;
    let next = TestCandle {
        t: last_candle.t + CANDLE_1M_MS,
        open: last_candle.close,
        high: last_candle.close + 0.8,
        low: last_candle.close - 0.1,
        close: last_candle.close + 0.6,
        volume: 2_000.0,
        count: 50,
    };
    common::put(&client, &table, common::candle_item("AAPL", &next)).await?;
    let grown = expected + 1;
    let state = cdp
        .wait_for(
            "the new price and candle",
            &format!(
                "(() => {{ const s = {SNAPSHOT_JS}; \
                 return s.msft === '412.57' && s.candles === {grown} ? s : null }})()"
            ),
        )
        .await?;
    assert_eq!(state["marker"], "still here", "the page reloaded: {state}");
    assert_eq!(state["msftDir"], "up", "{state}");
    assert!(state["msftTick"].as_str().unwrap_or("").starts_with('▲'), "{state}");
    assert_eq!(state["close"], two_decimals(next.close), "stats follow the newest candle");
    assert_eq!(state["status"], "live");
    assert!(cdp.page_errors.is_empty(), "page errors: {:?}", cdp.page_errors);

    // An outage shows in the status line, and the page keeps its data on screen.
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .map_err(|e| common::sdk_error("DeleteTable", e))?;
    let state = cdp
        .wait_for(
            "the status line to report the failure",
            &format!(
                "(() => {{ const s = {SNAPSHOT_JS}; return s.status === 'error' ? s : null }})()"
            ),
        )
        .await?;
    let text = state["statusText"].as_str().unwrap_or("");
    assert!(text.contains("502") && text.contains("does not exist"), "{text}");
    assert_eq!(state["msft"], "412.57", "data stays visible: {state}");
    assert_eq!(state["marker"], "still here");

    drop(cdp);
    server.stop().await
}

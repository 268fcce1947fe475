//! The feed against a real websocket client over TCP, each test on its own port-0 server.
//!
//! Where a test must show that something does *not* arrive, it uses the server's own
//! ordering instead of a sleep: the server applies client messages in order and answers an
//! invalid subscribe with an error frame, so every frame after that error frame was built
//! after the messages sent before it. A silenced connection answers nothing, so the
//! silence test alone watches a window many ping intervals long.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError, handshake};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use loadgen::feed::{
    Burst, Capture, Faults, Feed, FeedConfig, FeedHandle, FeedStats, FrameSize, ReplayConfig,
    Script, ScriptFrame, ScriptTrade, Speed, Stall, SyntheticConfig, TOO_MANY_SYMBOLS, Token,
    Universe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire::finnhub::{ClientMessage, decode};

/// Longest wait for any one expected frame; generous for a loaded 2-core machine.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A symbol no exchange lists; subscribing to it makes the server answer with an error
/// frame, which marks a point in the server's processing order.
const MARKER: &str = "not a symbol!";

// ---------------------------------------------------------------------------------------
// Test harness: a feed on port 0 and a websocket client.

struct TestFeed {
    addr: SocketAddr,
    handle: FeedHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<FeedStats>>,
}

impl TestFeed {
    async fn start(config: FeedConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let feed = Feed::new(config).unwrap();
        let handle = feed.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            Ok(feed.serve(listener, shutdown).await?)
        });
        Self { addr, handle, stop: Some(stop), task }
    }

    async fn stop(mut self) -> FeedStats {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(FRAME_WAIT, self.task).await.unwrap().unwrap().unwrap()
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr, "/").await.unwrap()
    }
}

fn synthetic(rate: f64) -> FeedConfig {
    FeedConfig::synthetic(SyntheticConfig { rate, seed: 1, ..SyntheticConfig::default() })
}

/// What the client received, decoded.
#[derive(Debug, Clone, PartialEq)]
enum Msg {
    Trades(Vec<ScriptTrade>),
    Ping,
    Error(String),
    /// A text frame that is not a known Finnhub message, as received.
    Other(Vec<u8>),
    /// A websocket control frame: pong or close.
    Control(OpCode, Vec<u8>),
}

struct Client {
    ws: FragmentCollector<TokioIo<Upgraded>>,
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

impl Client {
    async fn connect(addr: SocketAddr, path: &str) -> Result<Self, WebSocketError> {
        let stream = TcpStream::connect(addr).await?;
        let req = hyper::Request::builder()
            .method("GET")
            .uri(format!("http://{addr}{path}"))
            .header("Host", addr.to_string())
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .header("Sec-WebSocket-Key", handshake::generate_key())
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await?;
        Ok(Self { ws: FragmentCollector::new(ws) })
    }

    async fn send_text(&mut self, text: &[u8]) {
        self.ws.write_frame(Frame::text(Payload::Borrowed(text))).await.unwrap();
    }

    async fn subscribe(&mut self, symbol: &str) {
        self.send_text(ClientMessage::Subscribe(symbol).to_json().as_bytes()).await;
    }

    async fn unsubscribe(&mut self, symbol: &str) {
        self.send_text(ClientMessage::Unsubscribe(symbol).to_json().as_bytes()).await;
    }

    /// The next frame, raw; panics if none arrives in time.
    async fn next_raw(&mut self) -> (OpCode, Vec<u8>) {
        let frame = tokio::time::timeout(FRAME_WAIT, self.ws.read_frame())
            .await
            .expect("no frame arrived in time")
            .expect("the connection failed");
        (frame.opcode, frame.payload.to_vec())
    }

    /// The next frame, decoded.
    async fn next(&mut self) -> Msg {
        let (opcode, mut payload) = self.next_raw().await;
        if opcode != OpCode::Text {
            return Msg::Control(opcode, payload);
        }
        let raw = payload.clone();
        match decode(&mut payload) {
            Ok(wire::finnhub::Frame::Trades(trades)) => Msg::Trades(
                trades
                    .iter()
                    .map(|t| ScriptTrade {
                        symbol: t.symbol.to_owned(),
                        price: t.price,
                        time_ms: t.time_ms,
                        volume: t.volume,
                        conditions: t.conditions.as_slice().iter().map(|c| c.to_string()).collect(),
                    })
                    .collect(),
            ),
            Ok(wire::finnhub::Frame::Ping) => Msg::Ping,
            Ok(wire::finnhub::Frame::Error(msg)) => Msg::Error(msg.to_owned()),
            _ => Msg::Other(raw),
        }
    }

    /// Reads until an error frame arrives and returns its message, with the trades read
    /// on the way.
    async fn until_error(&mut self) -> (String, Vec<ScriptTrade>) {
        let mut trades = Vec::new();
        loop {
            match self.next().await {
                Msg::Error(msg) => return (msg, trades),
                Msg::Trades(t) => trades.extend(t),
                Msg::Ping => {}
                other => panic!("unexpected frame before the error: {other:?}"),
            }
        }
    }

    /// Subscribes to the marker and reads up to its error frame: afterwards every message
    /// sent before is known to be applied.
    async fn sync(&mut self) -> Vec<ScriptTrade> {
        self.subscribe(MARKER).await;
        let (msg, trades) = self.until_error().await;
        assert!(msg.starts_with("Invalid symbol"), "expected the marker's error, got {msg:?}");
        trades
    }

    /// Reads trades until `want` of them have arrived.
    async fn trades(&mut self, want: usize) -> Vec<ScriptTrade> {
        let mut trades = Vec::new();
        while trades.len() < want {
            match self.next().await {
                Msg::Trades(t) => trades.extend(t),
                Msg::Ping => {}
                other => panic!("unexpected frame: {other:?}"),
            }
        }
        trades
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + FRAME_WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Synthetic trades and subscriptions.

#[tokio::test]
async fn subscribed_symbols_get_trades_and_nothing_else() {
    let config = FeedConfig::synthetic(SyntheticConfig {
        rate: 500.0,
        frame_size: FrameSize { min: 1, max: 5 },
        seed: 3,
        ..SyntheticConfig::default()
    });
    let feed = TestFeed::start(config).await;
    let mut a = feed.client().await;
    let mut b = feed.client().await;
    a.subscribe("AAPL").await;
    a.subscribe("BINANCE:BTCUSDT").await;
    b.subscribe("MSFT").await;

    let before = now_ms();
    let trades = a.trades(100).await;
    for t in &trades {
        assert!(["AAPL", "BINANCE:BTCUSDT"].contains(&t.symbol.as_str()), "{t:?}");
        assert!(t.price > 0.0 && t.volume >= 1.0 && t.volume.fract() == 0.0, "{t:?}");
        assert!(t.time_ms + 60_000 > before && t.time_ms < now_ms() + 60_000, "{t:?}");
    }
    for symbol in ["AAPL", "BINANCE:BTCUSDT"] {
        assert!(trades.iter().any(|t| t.symbol == symbol), "no trade for {symbol}");
    }
    assert!(b.trades(20).await.iter().all(|t| t.symbol == "MSFT"));

    let stats = feed.handle.stats();
    assert_eq!(stats.connections_open, 2);
    assert_eq!(stats.subscriptions, 3);
    assert!(stats.trades_sent >= 120 && stats.frames_sent <= stats.trades_sent);
}

#[tokio::test]
async fn unsubscribe_stops_a_symbols_trades() {
    let feed = TestFeed::start(synthetic(1_000.0)).await;
    let mut client = feed.client().await;
    client.subscribe("AAA").await;
    client.subscribe("BBB").await;
    while !client.trades(1).await.iter().any(|t| t.symbol == "AAA") {}

    client.unsubscribe("AAA").await;
    client.sync().await;
    // Every trade from here on was built after the unsubscribe was applied.
    let after = client.trades(200).await;
    assert!(after.iter().all(|t| t.symbol == "BBB"), "AAA trades after unsubscribing");
    assert_eq!(feed.handle.stats().subscriptions, 1);
}

#[tokio::test]
async fn invalid_symbols_get_an_error_frame() {
    let feed = TestFeed::start(synthetic(50.0)).await;
    let mut client = feed.client().await;
    let too_long = "X".repeat(33);
    for bad in ["", "A B", "AAPL$", "ÄPFEL", too_long.as_str()] {
        client.subscribe(bad).await;
        let (msg, _) = client.until_error().await;
        assert!(msg.starts_with("Invalid symbol"), "{bad:?} -> {msg:?}");
    }
    // The longest valid symbol is accepted: the next error is the marker's, not its own.
    let longest = "Y".repeat(32);
    client.subscribe(&longest).await;
    client.sync().await;
    assert!(client.trades(1).await.iter().all(|t| t.symbol == longest));
    assert_eq!(feed.handle.stats().error_frames_sent, 6);
}

#[tokio::test]
async fn too_many_symbols_get_an_error_frame() {
    let feed = TestFeed::start(FeedConfig { max_symbols: Some(3), ..synthetic(300.0) }).await;
    let mut client = feed.client().await;
    for s in ["A", "B", "C", "A"] {
        client.subscribe(s).await;
    }
    client.subscribe("D").await;
    let (msg, _) = client.until_error().await;
    assert_eq!(msg, TOO_MANY_SYMBOLS);

    // Making room lets D in: the next error is the marker's.
    client.unsubscribe("A").await;
    client.subscribe("D").await;
    client.sync().await;
    let trades = client.trades(60).await;
    assert!(trades.iter().any(|t| t.symbol == "D"));
    assert!(trades.iter().all(|t| t.symbol != "A"));
}

#[tokio::test]
async fn malformed_client_messages_are_counted_and_ignored() {
    let feed = TestFeed::start(synthetic(200.0)).await;
    let mut client = feed.client().await;
    client.send_text(b"{").await;
    client.send_text(br#"{"type":"hello","symbol":"AAPL"}"#).await;
    client.send_text(br#"{"type":"subscribe"}"#).await;
    client.ws.write_frame(Frame::binary(Payload::Borrowed(b"\x00\x01"))).await.unwrap();
    client.subscribe("AAPL").await;
    client.sync().await;
    assert_eq!(feed.handle.stats().malformed_messages, 4);
    assert!(client.trades(5).await.iter().all(|t| t.symbol == "AAPL"));
}

#[tokio::test]
async fn the_rate_is_kept_not_exceeded() {
    const RATE: f64 = 2_000.0;
    const WANT: usize = 1_000;
    let feed = TestFeed::start(FeedConfig::synthetic(SyntheticConfig {
        rate: RATE,
        frame_size: FrameSize { min: 1, max: 10 },
        seed: 5,
        ..SyntheticConfig::default()
    }))
    .await;
    let mut client = feed.client().await;
    let started = Instant::now();
    client.subscribe("AAA").await;
    client.trades(WANT).await;
    let elapsed = started.elapsed();
    // The pacer owes nothing at subscribe time, so WANT trades take at least WANT / RATE,
    // less one tick of rounding; a loaded machine may take longer, but not 10x longer.
    let floor = Duration::from_secs_f64(WANT as f64 / RATE) - Duration::from_millis(20);
    assert!(elapsed >= floor, "{WANT} trades in {elapsed:?}: faster than {RATE}/s");
    assert!(elapsed < floor * 10, "{WANT} trades took {elapsed:?} at {RATE}/s");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_trades() {
    async fn first_trades(seed: u64) -> Vec<(f64, f64, Vec<String>)> {
        let feed = TestFeed::start(FeedConfig::synthetic(SyntheticConfig {
            rate: 2_000.0,
            frame_size: FrameSize { min: 1, max: 4 },
            seed,
            ..SyntheticConfig::default()
        }))
        .await;
        let mut client = feed.client().await;
        client.subscribe("AAA").await;
        let trades = client.trades(200).await;
        trades.into_iter().take(200).map(|t| (t.price, t.volume, t.conditions)).collect()
    }
    let first = first_trades(11).await;
    assert_eq!(first, first_trades(11).await);
    assert_ne!(first, first_trades(12).await);
    assert!(first.iter().any(|(_, _, codes)| !codes.is_empty()), "no condition codes ever");
}

// ---------------------------------------------------------------------------------------
// Handshake, keep-alive and the websocket protocol.

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401() {
    let config = FeedConfig { token: Some(Token::new("s3 cret")), ..synthetic(200.0) };
    let feed = TestFeed::start(config).await;
    for path in ["/", "/?token=wrong", "/?token=", "/?tok=s3+cret"] {
        let refused = Client::connect(feed.addr, path).await.err();
        assert!(
            matches!(refused, Some(WebSocketError::InvalidStatusCode(401))),
            "{path}: {refused:?}"
        );
    }
    let mut client = Client::connect(feed.addr, "/any/path?x=1&token=s3%20cret").await.unwrap();
    client.subscribe("AAPL").await;
    assert_eq!(client.trades(1).await[0].symbol, "AAPL");
    assert_eq!(feed.handle.stats().handshakes_rejected, 4);
}

#[tokio::test]
async fn plain_http_gets_426() {
    let feed = TestFeed::start(synthetic(50.0)).await;
    let mut stream = TcpStream::connect(feed.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(FRAME_WAIT, stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
}

#[tokio::test]
async fn pings_arrive_at_the_configured_interval() {
    const INTERVAL: Duration = Duration::from_millis(100);
    let feed = TestFeed::start(FeedConfig { ping_interval: INTERVAL, ..synthetic(50.0) }).await;
    let connected = Instant::now();
    let mut client = feed.client().await;
    let mut arrivals = Vec::new();
    for _ in 0..4 {
        // Nothing is subscribed, so pings are all that may arrive.
        assert_eq!(client.next().await, Msg::Ping);
        arrivals.push(connected.elapsed());
    }
    // Timers never fire early; arrivals may bunch up after a late one, so check the total.
    assert!(arrivals[0] >= INTERVAL, "first ping after {:?}", arrivals[0]);
    assert!(arrivals[3] >= INTERVAL * 4 - INTERVAL / 2, "4 pings in {:?}", arrivals[3]);
    assert!(arrivals[3] < INTERVAL * 40, "4 pings took {:?}", arrivals[3]);
    assert!(feed.handle.stats().pings_sent >= 4);
}

#[tokio::test]
async fn websocket_pings_and_closes_are_answered() {
    let feed = TestFeed::start(synthetic(50.0)).await;
    let mut client = feed.client().await;
    client
        .ws
        .write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"hi")))
        .await
        .unwrap();
    assert_eq!(client.next().await, Msg::Control(OpCode::Pong, b"hi".to_vec()));

    client.ws.write_frame(Frame::close(1000, b"bye")).await.unwrap();
    let (opcode, payload) = client.next_raw().await;
    assert_eq!(opcode, OpCode::Close);
    assert_eq!(payload[..2], 1000u16.to_be_bytes());
    let handle = feed.handle.clone();
    eventually("the server closed its side", || handle.stats().connections_open == 0).await;
}

#[tokio::test]
async fn shutdown_closes_connections_as_going_away() {
    let feed = TestFeed::start(synthetic(100.0)).await;
    let mut client = feed.client().await;
    client.subscribe("AAPL").await;
    client.trades(1).await;
    let handle = feed.handle.clone();
    let stopping = tokio::spawn(feed.stop());
    loop {
        match client.next().await {
            Msg::Control(OpCode::Close, payload) => {
                assert_eq!(payload[..2], 1001u16.to_be_bytes());
                break;
            }
            Msg::Trades(_) | Msg::Ping => {}
            other => panic!("unexpected frame: {other:?}"),
        }
    }
    let stats = stopping.await.unwrap();
    assert_eq!(stats.websocket_sessions, 1);
    assert_eq!(stats.connections_open, 0);
    assert_eq!(stats, handle.stats());
}

// ---------------------------------------------------------------------------------------
// Scripted frames.

fn trade(symbol: &str, n: u64, codes: &[&str]) -> ScriptTrade {
    ScriptTrade {
        symbol: symbol.to_owned(),
        price: 100.0 + n as f64 / 100.0,
        time_ms: 1_700_000_000_000 + n,
        volume: n as f64,
        conditions: codes.iter().map(|c| c.to_string()).collect(),
    }
}

#[tokio::test]
async fn scripted_frames_arrive_in_order_once() {
    let script = Script::new([
        ScriptFrame::Trades(vec![trade("AAPL", 1, &[])]),
        ScriptFrame::Text(b"{not json".to_vec()),
        ScriptFrame::Trades(vec![trade("MSFT", 2, &["1", "12"]), trade("AAPL", 3, &[])]),
        ScriptFrame::Text(br#"{"type":"news","data":[]}"#.to_vec()),
        ScriptFrame::Text(
            br#"{"type":"trade","data":[{"s":"AAPL","p":"x","t":1,"v":1}]}"#.to_vec(),
        ),
        ScriptFrame::Trades(vec![trade("MSFT", 4, &[])]),
    ]);
    let expected: Vec<Vec<u8>> = script.frames().iter().map(ScriptFrame::encode).collect();
    let config =
        FeedConfig { ping_interval: Duration::from_millis(150), ..FeedConfig::scripted(script) };
    let feed = TestFeed::start(config).await;
    let mut client = feed.client().await;

    // Holding only one of the two symbols, the client gets nothing but pings.
    client.subscribe("AAPL").await;
    client.sync().await;
    assert_eq!(client.next().await, Msg::Ping);
    assert_eq!(feed.handle.script_frames_sent(), 0);

    client.subscribe("MSFT").await;
    let mut received = Vec::new();
    while received.len() < expected.len() {
        match client.next_raw().await {
            (OpCode::Text, payload) if payload == wire::finnhub::PING_FRAME.as_bytes() => {}
            (OpCode::Text, payload) => received.push(payload),
            other => panic!("unexpected frame: {other:?}"),
        }
    }
    assert_eq!(received, expected);
    tokio::time::timeout(FRAME_WAIT, feed.handle.script_done()).await.unwrap();
    let stats = feed.handle.stats();
    assert_eq!(feed.handle.script_frames_sent(), 6);
    assert_eq!((stats.frames_sent, stats.trades_sent), (6, 4));

    // Nothing more follows, on this connection or a new one.
    let mut late = feed.client().await;
    late.subscribe("AAPL").await;
    late.subscribe("MSFT").await;
    for c in [&mut client, &mut late] {
        assert_eq!(c.next().await, Msg::Ping);
        assert_eq!(c.next().await, Msg::Ping);
    }
    assert_eq!(feed.handle.stats().frames_sent, 6);
}

#[tokio::test]
async fn a_script_passes_on_when_its_connection_leaves() {
    let frames: Vec<_> = (0..6).map(|n| ScriptFrame::Trades(vec![trade("AAPL", n, &[])])).collect();
    let expected: Vec<Vec<u8>> = frames.iter().map(ScriptFrame::encode).collect();
    let script = Script::new(frames).pace(Duration::from_millis(50));
    let feed = TestFeed::start(FeedConfig::scripted(script)).await;

    let mut first = feed.client().await;
    first.subscribe("AAPL").await;
    for want in &expected[..2] {
        assert_eq!(&first.next_raw().await.1, want);
    }
    drop(first);

    let mut second = feed.client().await;
    second.subscribe("AAPL").await;
    let (_, resumed) = second.next_raw().await;
    // Frame 2 may have been flushed to the first client just before it left.
    let start = expected.iter().position(|f| *f == resumed).expect("not a script frame");
    assert!((2..=3).contains(&start), "resumed at frame {start}");
    for want in &expected[start + 1..] {
        assert_eq!(&second.next_raw().await.1, want);
    }
    tokio::time::timeout(FRAME_WAIT, feed.handle.script_done()).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Synthetic trades at scale: Zipf skew, universes, bursts.

impl Client {
    /// The next frame, or `None` if none arrives within `wait`; errors are returned, not
    /// panicked on, for tests that expect the connection to fail.
    async fn try_next_raw(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(OpCode, Vec<u8>)>, WebSocketError> {
        match tokio::time::timeout(wait, self.ws.read_frame()).await {
            Err(_) => Ok(None),
            Ok(frame) => frame.map(|f| Some((f.opcode, f.payload.to_vec()))),
        }
    }
}

#[tokio::test]
async fn zipf_gives_the_first_subscribed_symbol_the_largest_share() {
    let config = FeedConfig::synthetic(SyntheticConfig {
        rate: 50_000.0,
        frame_size: FrameSize { min: 1, max: 20 },
        zipf: 1.0,
        ..SyntheticConfig::default()
    });
    let feed = TestFeed::start(config).await;
    let mut client = feed.client().await;
    // Subscription order, not name order, sets the ranks.
    for symbol in ["ZZZ", "AAA", "MMM"] {
        client.subscribe(symbol).await;
    }
    client.sync().await;
    let trades = client.trades(6_000).await;
    let share = |s: &str| trades.iter().filter(|t| t.symbol == s).count() as f64 / 6_000.0;
    let (z, a, m) = (share("ZZZ"), share("AAA"), share("MMM"));
    assert!(z > a && a > m, "shares {z:.3} {a:.3} {m:.3}");
    // Zipf(1) over three: 6/11, 3/11, 2/11.
    assert!((z - 6.0 / 11.0).abs() < 0.05, "first symbol's share {z:.3}");
    assert!((m - 2.0 / 11.0).abs() < 0.05, "third symbol's share {m:.3}");
}

#[tokio::test]
async fn a_universe_refuses_symbols_outside_it() {
    let universe = Universe::new(20);
    let config = FeedConfig::synthetic(SyntheticConfig {
        rate: 1_000.0,
        universe: Some(universe),
        ..SyntheticConfig::default()
    });
    let feed = TestFeed::start(config).await;
    let mut client = feed.client().await;
    client.subscribe("AAPL").await;
    let (msg, _) = client.until_error().await;
    assert_eq!(msg, r#"Invalid symbol "AAPL""#);
    client.subscribe(&universe.name(19)).await;
    client.sync().await;
    assert!(client.trades(20).await.iter().all(|t| t.symbol == "SYN:0019"));
    assert_eq!(feed.handle.stats().subscriptions, 1);
}

#[tokio::test]
async fn bursts_multiply_the_rate() {
    // 500 trades/s, and 5,500/s from 1 s to 1.25 s after the feed starts: 2,000 trades
    // arrive after about 1.5 s, where without the burst they would take 4 s.
    let config = FeedConfig::synthetic(SyntheticConfig {
        rate: 500.0,
        burst: Some(Burst {
            every: Duration::from_secs(1),
            factor: 11.0,
            length: Duration::from_millis(250),
        }),
        ..SyntheticConfig::default()
    });
    let started = Instant::now();
    let feed = TestFeed::start(config).await;
    let mut client = feed.client().await;
    client.subscribe("AAA").await;
    client.trades(2_000).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1_200), "2,000 trades after {elapsed:?}");
    assert!(elapsed < Duration::from_millis(3_500), "the burst never came: {elapsed:?}");
}

// ---------------------------------------------------------------------------------------
// Fault injection.

#[tokio::test]
async fn drop_every_closes_each_connection_without_a_close_frame() {
    const EVERY: Duration = Duration::from_millis(300);
    let faults = Faults { drop_every: Some(EVERY), ..Faults::default() };
    let feed = TestFeed::start(FeedConfig { faults, ..synthetic(2_000.0) }).await;
    for round in 1..=2 {
        let connected = Instant::now();
        let mut client = feed.client().await;
        client.subscribe("AAPL").await;
        let mut trades = 0;
        let ended = loop {
            match client.try_next_raw(FRAME_WAIT).await {
                Ok(Some((OpCode::Text, _))) => trades += 1,
                Ok(Some((opcode, _))) => panic!("round {round}: unexpected {opcode:?} frame"),
                Ok(None) => panic!("round {round}: the connection was never dropped"),
                Err(err) => break err,
            }
        };
        let lived = connected.elapsed();
        assert!(trades > 0, "round {round}: no trades before the drop");
        assert!(lived >= EVERY, "round {round}: dropped after {lived:?}");
        assert!(lived < EVERY * 10, "round {round}: dropped only after {lived:?}");
        assert!(!matches!(ended, WebSocketError::ConnectionClosed), "{ended:?}");
        let handle = feed.handle.clone();
        eventually("the drop was counted", || handle.stats().connections_dropped == round).await;
    }
}

#[tokio::test]
async fn malformed_rate_mixes_in_frames_that_do_not_decode() {
    const RATE: f64 = 0.25;
    let faults = Faults { malformed_rate: RATE, seed: 4, ..Faults::default() };
    let config = FeedConfig {
        faults,
        ..FeedConfig::synthetic(SyntheticConfig {
            rate: 20_000.0,
            frame_size: FrameSize { min: 1, max: 5 },
            ..SyntheticConfig::default()
        })
    };
    let feed = TestFeed::start(config).await;
    let mut client = feed.client().await;
    client.subscribe("AAPL").await;
    let (mut good, mut bad) = (0u64, 0u64);
    while good + bad < 4_000 {
        match client.next().await {
            Msg::Trades(trades) => {
                assert!(trades.iter().all(|t| t.symbol == "AAPL"));
                good += 1;
            }
            Msg::Ping => {}
            Msg::Other(_) => bad += 1,
            other => panic!("unexpected frame: {other:?}"),
        }
    }
    let share = bad as f64 / (good + bad) as f64;
    assert!((share - RATE).abs() < 0.04, "{bad} of {} frames malformed", good + bad);
    let stats = feed.handle.stats();
    assert!(stats.malformed_frames_sent >= bad, "{stats:?}");
    // Malformed frames are not data: the real frames and trades are counted apart.
    assert!(stats.frames_sent >= good);
}

#[tokio::test]
async fn a_stall_pauses_every_frame_then_writing_resumes() {
    const EVERY: Duration = Duration::from_millis(400);
    const FOR: Duration = Duration::from_millis(300);
    let faults = Faults { stall: Some(Stall { every: EVERY, length: FOR }), ..Faults::default() };
    let config =
        FeedConfig { faults, ping_interval: Duration::from_millis(20), ..synthetic(2_000.0) };
    let feed = TestFeed::start(config).await;
    let connected = Instant::now();
    let mut client = feed.client().await;
    client.subscribe("AAPL").await;
    let mut arrivals = Vec::new();
    while connected.elapsed() < EVERY * 2 {
        client.next().await;
        arrivals.push(connected.elapsed());
    }
    // Frames arrive every few ms except across the stall, which starts at EVERY.
    let (gap, resumed) =
        arrivals.windows(2).map(|w| (w[1] - w[0], w[1])).max().expect("frames arrived");
    assert!(gap >= FOR - Duration::from_millis(50), "longest gap {gap:?}");
    assert!(resumed >= EVERY + FOR - Duration::from_millis(50), "resumed at {resumed:?}");
    assert!(feed.handle.stats().stalls >= 1);
}

#[tokio::test]
async fn silence_after_stops_every_frame_and_keeps_the_connection_open() {
    const AFTER: Duration = Duration::from_millis(300);
    let faults = Faults { silence_after: Some(AFTER), ..Faults::default() };
    let config =
        FeedConfig { faults, ping_interval: Duration::from_millis(20), ..synthetic(1_000.0) };
    let feed = TestFeed::start(config).await;
    let connected = Instant::now();
    let mut client = feed.client().await;
    client.subscribe("AAPL").await;
    let (mut trades, mut pings, mut last) = (0, 0, Duration::ZERO);
    // Absence can only be seen over a window: wait far longer than the ping interval.
    while let Some((_, payload)) = client.try_next_raw(Duration::from_millis(500)).await.unwrap() {
        last = connected.elapsed();
        if payload == wire::finnhub::PING_FRAME.as_bytes() {
            pings += 1;
        } else {
            trades += 1;
        }
        assert!(last < AFTER * 10, "still receiving after {last:?}");
    }
    assert!(trades > 0 && pings > 0, "{trades} trades and {pings} pings before the silence");
    assert!(last < AFTER + Duration::from_millis(250), "last frame at {last:?}");
    let stats = feed.handle.stats();
    assert_eq!((stats.connections_silenced, stats.connections_open), (1, 1));
    // The client may still talk; the server applies but never answers.
    client.subscribe(MARKER).await;
    assert!(client.try_next_raw(Duration::from_millis(300)).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------------------
// Replayed captures.

/// Three frames 200 ms apart: AAA and BBB, then BBB alone, then AAA alone.
const CAPTURE: &str = "\
# test capture
1000000\t{\"data\":[{\"c\":null,\"p\":10.5,\"s\":\"AAA\",\"t\":1700000000000,\"v\":1},{\"c\":[\"1\"],\"p\":20,\"s\":\"BBB\",\"t\":1700000000010,\"v\":2}],\"type\":\"trade\"}
1200000\t{\"data\":[{\"c\":null,\"p\":20.25,\"s\":\"BBB\",\"t\":1700000000200,\"v\":3}],\"type\":\"trade\"}
1400000\t{\"data\":[{\"c\":null,\"p\":10.75,\"s\":\"AAA\",\"t\":1700000000400,\"v\":4}],\"type\":\"trade\"}
";

fn replay(speed: Speed, looped: bool) -> FeedConfig {
    let capture = Arc::new(Capture::parse(CAPTURE, "test").unwrap());
    FeedConfig::replay(ReplayConfig { capture, speed, looped })
}

#[tokio::test]
async fn a_replay_keeps_its_spacing_at_the_speed_factor() {
    let feed = TestFeed::start(replay(Speed::Factor(2.0), false)).await;
    let mut client = feed.client().await;
    client.subscribe("AAA").await;
    client.subscribe("BBB").await;
    let before = now_ms();
    let mut arrivals = Vec::new();
    let mut trades = Vec::new();
    while trades.len() < 4 {
        trades.extend(client.trades(1).await);
        arrivals.push(Instant::now());
    }
    // 400 ms of capture at 2x: about 200 ms from first to last frame.
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(span >= Duration::from_millis(180), "replayed in {span:?}");
    assert!(span < Duration::from_secs(2), "replayed in {span:?}");
    // Times are shifted so the first trade is "now"; gaps between times are kept.
    let first = trades[0].time_ms;
    assert!(first + 1_000 >= before && first <= now_ms(), "first trade at {first}");
    let gaps: Vec<u64> = trades.iter().map(|t| t.time_ms - first).collect();
    assert_eq!(gaps, [0, 10, 200, 400]);
    assert_eq!(trades[1].conditions, ["1"]);
    assert_eq!(feed.handle.stats().replay_passes, 1);
}

#[tokio::test]
async fn a_looped_replay_sends_only_subscribed_symbols_with_fresh_times() {
    let feed = TestFeed::start(replay(Speed::Max, true)).await;
    let mut client = feed.client().await;
    // Only AAA: playback starts after the grace period, and BBB never appears.
    client.subscribe("AAA").await;
    let trades = client.trades(6).await;
    assert!(trades.iter().all(|t| t.symbol == "AAA"), "{trades:?}");
    let prices: Vec<f64> = trades.iter().map(|t| t.price).collect();
    assert_eq!(prices, [10.5, 10.75, 10.5, 10.75, 10.5, 10.75]);
    // Each pass restarts its times at its own start, never before the last pass's.
    for pass in trades.chunks(2) {
        assert_eq!(pass[1].time_ms - pass[0].time_ms, 400);
    }
    assert!(trades[2].time_ms >= trades[0].time_ms);
    let handle = feed.handle.clone();
    eventually("three passes were counted", || handle.stats().replay_passes >= 3).await;
}

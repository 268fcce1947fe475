//! `loadgen record` against a real feed on port 0, and the capture it writes replayed back
//! through a feed: the replayed frames must be the recorded ones, with times shifted.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, handshake};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use loadgen::feed::capture::parse_line;
use loadgen::feed::{
    Capture, Feed, FeedConfig, FeedHandle, FrameSize, ReplayConfig, Speed, SyntheticConfig, Token,
};
use loadgen::record::{RecordConfig, RecordEnd, RecordError, record_to};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use wire::finnhub::{ClientMessage, Frame as FinnhubFrame, decode};

/// Longest wait for any one expected frame; generous for a loaded 2-core machine.
const FRAME_WAIT: Duration = Duration::from_secs(10);

const SYMBOLS: [&str; 4] = ["AAPL", "MSFT", "BINANCE:BTCUSDT", "OANDA:EUR_USD"];

/// The capture shipped for demos and tests, recorded from `loadgen feed`.
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/synthetic-capture.tsv");

/// A feed on port 0 that stops when dropped.
struct TestFeed {
    addr: SocketAddr,
    handle: FeedHandle,
    _stop: oneshot::Sender<()>,
}

async fn start_feed(config: FeedConfig) -> TestFeed {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let feed = Feed::new(config).unwrap();
    let handle = feed.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(feed.serve(listener, async {
        let _ = stopped.await;
    }));
    TestFeed { addr, handle, _stop: stop }
}

/// A file in the system's temporary folder, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let unique = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir();
        Self(dir.join(format!("loadgen-{name}-{}-{unique}.tsv", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn record_config(addr: SocketAddr, out: &Path) -> RecordConfig {
    RecordConfig {
        url: format!("ws://{addr}"),
        token: None,
        symbols: SYMBOLS.iter().map(|s| (*s).to_owned()).collect(),
        out: out.to_owned(),
        duration: None,
        frames: None,
        comment: None,
        connect_timeout: FRAME_WAIT,
    }
}

/// Never resolves: the recording ends by its own limits.
fn no_shutdown() -> impl Future<Output = ()> + Send {
    std::future::pending()
}

/// The frame lines of a capture file, in order.
fn frame_lines(path: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| parse_line(l).unwrap())
        .map(|l| (l.rt_us, l.frame.to_owned()))
        .collect()
}

/// A trade with its time split off, for comparing frames whose times were shifted.
type Untimed = (String, f64, f64, Vec<String>);

fn split_times(frame: &str) -> (Vec<Untimed>, Vec<u64>) {
    let mut buf = frame.as_bytes().to_vec();
    let Ok(FinnhubFrame::Trades(trades)) = decode(&mut buf) else { panic!("not trades: {frame}") };
    let untimed = trades
        .iter()
        .map(|t| {
            let codes = t.conditions.as_slice().iter().map(|c| c.to_string()).collect();
            (t.symbol.to_owned(), t.price, t.volume, codes)
        })
        .collect();
    (untimed, trades.iter().map(|t| t.time_ms).collect())
}

/// The frame text with every `"t":<digits>,` cut out.
fn without_times(frame: &str) -> String {
    let mut parts = frame.split(r#""t":"#);
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        out.push_str(part.split_once(',').map_or(part, |(_, rest)| rest));
    }
    out
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

async fn client(addr: SocketAddr) -> FragmentCollector<TokioIo<Upgraded>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let req = hyper::Request::builder()
        .uri(format!("http://{addr}/"))
        .header("Host", addr.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await.unwrap();
    FragmentCollector::new(ws)
}

#[tokio::test]
async fn a_recording_replays_frame_for_frame_with_shifted_times() {
    let feed = start_feed(FeedConfig::synthetic(SyntheticConfig {
        rate: 5_000.0,
        frame_size: FrameSize { min: 1, max: 12 },
        seed: 21,
        ..SyntheticConfig::default()
    }))
    .await;
    let file = TempFile::new("replay");
    let config = RecordConfig {
        frames: Some(120),
        comment: Some("recorded by a test\nsecond line".into()),
        ..record_config(feed.addr, &file.0)
    };
    let stats = record_to(&config, no_shutdown()).await.unwrap();
    assert_eq!((stats.frames, stats.trade_frames, stats.ended), (120, 120, RecordEnd::Frames));
    let text = std::fs::read_to_string(&file.0).unwrap();
    assert!(text.starts_with("# recorded by a test\n# second line\n"), "{:.80}", text);
    let recorded = frame_lines(&file.0);
    assert_eq!(recorded.len(), 120);
    assert!(recorded.windows(2).all(|w| w[0].0 <= w[1].0), "receive times go backwards");
    assert_eq!(
        stats.trades as usize,
        recorded.iter().map(|(_, f)| split_times(f).0.len()).sum::<usize>()
    );

    // Replay the file at full speed to a client subscribed to every symbol.
    let capture = Capture::load(&file.0).unwrap();
    assert_eq!(capture.frame_count(), 120);
    let replay = ReplayConfig { capture: Arc::new(capture), speed: Speed::Max, looped: false };
    let replayer = start_feed(FeedConfig::replay(replay)).await;
    let mut ws = client(replayer.addr).await;
    for symbol in SYMBOLS {
        let msg = ClientMessage::Subscribe(symbol).to_json();
        ws.write_frame(Frame::text(Payload::Borrowed(msg.as_bytes()))).await.unwrap();
    }
    let replay_started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut shift = None;
    for (n, (_, original)) in recorded.iter().enumerate() {
        let frame = tokio::time::timeout(FRAME_WAIT, ws.read_frame()).await.unwrap().unwrap();
        assert_eq!(frame.opcode, OpCode::Text);
        let replayed = String::from_utf8(frame.payload.to_vec()).unwrap();
        let (trades, times) = split_times(&replayed);
        let (want, want_times) = split_times(original);
        assert_eq!(trades, want, "frame {n}");
        // Every time moved by the same amount, so the first trade reads as the replay's
        // start and the gaps are the recording's.
        for (t, want_t) in times.iter().zip(&want_times) {
            let delta = *t as i64 - *want_t as i64;
            assert_eq!(*shift.get_or_insert(delta), delta, "frame {n}: times moved unevenly");
        }
        // Apart from times, the bytes are the recorded bytes: both sides encode alike.
        assert_eq!(without_times(&replayed), without_times(original), "frame {n}");
    }
    let first_t = split_times(&recorded[0].1).1[0] as i64 + shift.unwrap();
    assert!((first_t - replay_started as i64).abs() < 5_000, "first trade at {first_t}");
    tokio::time::timeout(FRAME_WAIT, async {
        while replayer.handle.stats().frames_sent < 120 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(replayer.handle.stats().trades_sent, stats.trades);
}

#[tokio::test]
async fn a_recording_stops_at_its_duration() {
    let feed = start_feed(FeedConfig::synthetic(SyntheticConfig {
        rate: 200.0,
        ..SyntheticConfig::default()
    }))
    .await;
    let file = TempFile::new("duration");
    let config = RecordConfig {
        duration: Some(Duration::from_millis(400)),
        ..record_config(feed.addr, &file.0)
    };
    let started = std::time::Instant::now();
    let stats = record_to(&config, no_shutdown()).await.unwrap();
    assert_eq!(stats.ended, RecordEnd::Duration);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(stats.frames > 0);
    assert_eq!(frame_lines(&file.0).len() as u64, stats.frames);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_right_one_records() {
    let config = FeedConfig {
        token: Some(Token::new("t0ken")),
        ..FeedConfig::synthetic(SyntheticConfig { rate: 500.0, ..SyntheticConfig::default() })
    };
    let feed = start_feed(config).await;
    let file = TempFile::new("token");
    let wrong = RecordConfig {
        token: Some("wrong".into()),
        frames: Some(1),
        ..record_config(feed.addr, &file.0)
    };
    let err = record_to(&wrong, no_shutdown()).await.unwrap_err();
    assert!(matches!(err, RecordError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("wrong"), "the token leaked into {err}");
    let right = RecordConfig { token: Some("t0ken".into()), ..wrong };
    assert_eq!(record_to(&right, no_shutdown()).await.unwrap().frames, 1);
}

#[tokio::test]
async fn a_feed_that_closes_early_is_an_error_and_the_file_keeps_what_came() {
    let feed = start_feed(FeedConfig::synthetic(SyntheticConfig {
        rate: 2_000.0,
        ..SyntheticConfig::default()
    }))
    .await;
    let file = TempFile::new("closed");
    let config = RecordConfig { frames: Some(1_000_000), ..record_config(feed.addr, &file.0) };
    let recording = tokio::spawn(async move { record_to(&config, no_shutdown()).await });
    let handle = feed.handle.clone();
    tokio::time::timeout(FRAME_WAIT, async {
        while handle.stats().frames_sent < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    drop(feed);
    let err = tokio::time::timeout(FRAME_WAIT, recording).await.unwrap().unwrap().unwrap_err();
    let RecordError::Closed { frames } = err else { panic!("{err}") };
    assert!(frames >= 1);
    assert_eq!(frame_lines(&file.0).len() as u64, frames);
}

#[test]
fn the_shipped_capture_is_synthetic_and_replays() {
    let text = std::fs::read_to_string(SHIPPED).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("# synthetic capture recorded from loadgen feed; not market data")
    );
    let capture = Capture::load(Path::new(SHIPPED)).unwrap();
    assert!((200..=1_000).contains(&capture.frame_count()), "{}", capture.frame_count());
    assert!((1_000..=10_000).contains(&capture.trade_count()), "{}", capture.trade_count());
    assert!((3..=10).contains(&capture.symbols().len()), "{:?}", capture.symbols());
    assert_eq!(capture.skipped_frames(), 0);
}

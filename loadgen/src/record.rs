//! `loadgen record`: connects to a Finnhub-protocol websocket, subscribes, and writes every
//! text frame it receives to a capture file (format in [`crate::feed::capture`]) with its
//! receive time, until a frame count, a duration or a signal ends it.
//!
//! Flow: parse the URL (the token goes into the query and never into a log line) → TCP,
//! TLS for `wss://` (rustls with the webpki roots) and the websocket handshake, within the
//! connect timeout → one subscribe message per symbol → read frames, stamp them, append
//! them. Pongs to the server's websocket pings are sent by the websocket layer. A feed that
//! closes the connection before the goal is reached ends the recording with an error; the
//! file then holds everything received up to that point. There is no reconnect: a capture
//! with a hole in it would replay the hole as a pause.

use std::future::Future;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::Uri;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};
use wire::finnhub::{ClientMessage, Frame as FinnhubFrame, decode};

use crate::cli::RecordArgs;
use crate::feed::capture::CaptureWriter;

/// The largest frame accepted. Finnhub frames are a few kilobytes; the loadgen feed's
/// largest (10,000 trades) is about a megabyte.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// How long the recorder waits for the feed to answer its closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What to record and when to stop.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// `ws://` or `wss://` URL of the feed.
    pub url: String,
    /// Sent as `?token=`; never logged.
    pub token: Option<String>,
    pub symbols: Vec<String>,
    pub out: PathBuf,
    /// Stop after this long; `None` for no time limit.
    pub duration: Option<Duration>,
    /// Stop after this many frames; `None` for no count limit.
    pub frames: Option<u64>,
    /// Written as `#` lines at the top of the file.
    pub comment: Option<String>,
    pub connect_timeout: Duration,
}

impl RecordConfig {
    pub fn from_args(args: &RecordArgs) -> Self {
        Self {
            url: args.url.clone(),
            token: args.token.clone(),
            symbols: args.symbols.iter().map(|s| s.trim().to_owned()).collect(),
            out: args.out.clone(),
            duration: args.duration,
            frames: args.frames,
            comment: args.comment.clone(),
            connect_timeout: args.connect_timeout,
        }
    }
}

/// Why the recording ended as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordEnd {
    /// `--frames` frames were recorded.
    Frames,
    /// `--duration` passed.
    Duration,
    /// SIGINT or SIGTERM.
    Shutdown,
}

/// What was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordStats {
    /// Lines written: every text frame received.
    pub frames: u64,
    /// Frames that decoded as trade frames, and the trades in them.
    pub trade_frames: u64,
    pub trades: u64,
    /// Binary frames received; Finnhub sends none, and the format holds text only.
    pub binary_skipped: u64,
    /// Frames whose raw CR or LF was replaced by a space to keep one frame per line.
    pub rewritten: u64,
    pub ended: RecordEnd,
}

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("--url {0}")]
    Url(String),
    #[error("--symbols: give at least one symbol, such as AAPL")]
    NoSymbols,
    #[error("could not connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {url} failed: {source}")]
    Tls {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} refused the token (HTTP 401); check FINNHUB_TOKEN")]
    Unauthorized { url: String },
    #[error("websocket handshake with {url} failed: {source}")]
    Handshake {
        url: String,
        #[source]
        source: WebSocketError,
    },
    #[error("connecting to {url} took longer than {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    #[error("the feed closed the connection after {frames} frames, before the recording was done")]
    Closed { frames: u64 },
    #[error("websocket error after {frames} frames: {source}")]
    Websocket {
        frames: u64,
        #[source]
        source: WebSocketError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl RecordError {
    /// Connection trouble may pass on a second try; a bad URL, a refused token or a file
    /// that cannot be written will not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Tls { .. }
                | Self::Handshake { .. }
                | Self::ConnectTimeout { .. }
                | Self::Closed { .. }
                | Self::Websocket { .. }
        )
    }
}

/// Runs `loadgen record` from its flags and logs what was recorded.
pub async fn record(
    args: &RecordArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<RecordStats> {
    let config = RecordConfig::from_args(args);
    let stats = record_to(&config, shutdown)
        .await
        .with_context(|| format!("recording into {}", config.out.display()))?;
    info!(
        out = %config.out.display(),
        frames = stats.frames,
        trade_frames = stats.trade_frames,
        trades = stats.trades,
        ended = ?stats.ended,
        "recording done"
    );
    Ok(stats)
}

/// Records `config.url` into `config.out` until a limit or `shutdown`.
pub async fn record_to(
    config: &RecordConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RecordStats, RecordError> {
    let url = FeedUrl::parse(&config.url, config.token.as_deref()).map_err(RecordError::Url)?;
    let symbols: Vec<&str> =
        config.symbols.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    if symbols.is_empty() {
        return Err(RecordError::NoSymbols);
    }
    let path = config.out.display().to_string();
    let write_err = |source| RecordError::Write { path: path.clone(), source };
    // Open the file first: a recording that cannot be written should not connect at all.
    let file = std::fs::File::create(&config.out).map_err(write_err)?;
    let mut capture = CaptureWriter::new(BufWriter::new(file));
    if let Some(comment) = &config.comment {
        capture.comment(comment).map_err(write_err)?;
    }

    let timeout = config.connect_timeout;
    let mut ws = tokio::time::timeout(timeout, connect(&url))
        .await
        .map_err(|_| RecordError::ConnectTimeout { url: url.display.clone(), timeout })??;
    info!(url = %url.display, symbols = symbols.len(), "connected; recording");
    for symbol in &symbols {
        let msg = ClientMessage::Subscribe(symbol).to_json();
        ws.write_frame(Frame::text(Payload::Borrowed(msg.as_bytes())))
            .await
            .map_err(|source| RecordError::Websocket { frames: 0, source })?;
    }

    let deadline = config.duration.map(|d| Instant::now() + d);
    let mut stats = RecordStats {
        frames: 0,
        trade_frames: 0,
        trades: 0,
        binary_skipped: 0,
        rewritten: 0,
        ended: RecordEnd::Shutdown,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let ended = loop {
        if config.frames.is_some_and(|n| stats.frames >= n) {
            break RecordEnd::Frames;
        }
        // Dropping a half-read frame is harmless here: the recording stops either way.
        let frame = tokio::select! {
            frame = ws.read_frame() => frame,
            _ = sleep_until_opt(deadline) => break RecordEnd::Duration,
            _ = &mut shutdown => break RecordEnd::Shutdown,
        };
        let frames = stats.frames;
        let frame = frame.map_err(|source| RecordError::Websocket { frames, source })?;
        match frame.opcode {
            OpCode::Text => {
                let payload = frame.payload.to_vec();
                capture.frame(now_us(), &payload).map_err(write_err)?;
                stats.frames += 1;
                count_trades(payload, &mut stats);
            }
            OpCode::Binary => stats.binary_skipped += 1,
            OpCode::Close => {
                capture.flush().map_err(write_err)?;
                return Err(RecordError::Closed { frames: stats.frames });
            }
            _ => {}
        }
    };
    stats.ended = ended;
    stats.rewritten = capture.rewritten();
    capture.flush().map_err(write_err)?;
    if stats.binary_skipped > 0 {
        warn!(frames = stats.binary_skipped, "binary frames skipped; captures hold text only");
    }
    // A polite goodbye; the recording is complete whatever the feed answers.
    let close = async {
        ws.write_frame(Frame::close(1000, b"recording done")).await?;
        loop {
            if ws.read_frame().await?.opcode == OpCode::Close {
                return Ok::<_, WebSocketError>(());
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, close).await;
    Ok(stats)
}

fn count_trades(mut payload: Vec<u8>, stats: &mut RecordStats) {
    if let Ok(FinnhubFrame::Trades(trades)) = decode(&mut payload) {
        stats.trade_frames += 1;
        stats.trades += trades.len() as u64;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Microseconds since the Unix epoch; zero for a clock set before 1970.
fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

type Socket = FragmentCollector<TokioIo<Upgraded>>;

/// A feed URL split the way the connection needs it.
struct FeedUrl {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query as sent in the request line, token included.
    target: String,
    /// The URL without its query: safe to log.
    display: String,
}

impl FeedUrl {
    fn parse(url: &str, token: Option<&str>) -> Result<Self, String> {
        // The error quotes only what precedes a query, which is where a token would be.
        let shown = url.split('?').next().unwrap_or_default();
        let uri: Uri = url.parse().map_err(|_| format!("{shown:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(format!("{shown:?} must start with ws:// or wss://")),
        };
        let host = uri.host().ok_or_else(|| format!("{shown:?} has no host"))?.to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let mut target = match uri.path() {
            "" => "/".to_owned(),
            path => path.to_owned(),
        };
        let display = format!("{}://{host}:{port}{target}", if tls { "wss" } else { "ws" });
        let mut query = uri.query().unwrap_or_default().to_owned();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("token=");
            query.push_str(&percent_encode(token));
        }
        if !query.is_empty() {
            target.push('?');
            target.push_str(&query);
        }
        Ok(Self { tls, host, port, target, display })
    }
}

impl std::fmt::Debug for FeedUrl {
    // The request target carries the token; only the form without the query is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
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

fn tls_connector() -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the aws-lc-rs provider supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn connect(url: &FeedUrl) -> Result<Socket, RecordError> {
    let shown = || url.display.clone();
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|source| RecordError::Connect { url: shown(), source })?;
    // Receive times are what a capture is for; do not let small frames wait.
    let _ = tcp.set_nodelay(true);
    let request = hyper::Request::builder()
        .method("GET")
        .uri(url.target.as_str())
        .header(HOST, format!("{}:{}", url.host, url.port))
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .expect("a request built from a parsed URI and fixed headers is valid");
    let handshake = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| RecordError::Tls { url: shown(), source: std::io::Error::other(e) })?;
        let stream = tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|source| RecordError::Tls { url: shown(), source })?;
        fastwebsockets::handshake::client(&SpawnExecutor, request, stream).await
    } else {
        fastwebsockets::handshake::client(&SpawnExecutor, request, tcp).await
    };
    let (mut ws, _) = handshake.map_err(|source| match source {
        WebSocketError::InvalidStatusCode(401) => RecordError::Unauthorized { url: shown() },
        source => RecordError::Handshake { url: shown(), source },
    })?;
    ws.set_max_message_size(MAX_FRAME_BYTES);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    Ok(FragmentCollector::new(ws))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_into_the_query_and_never_into_the_display() {
        let url = FeedUrl::parse("wss://ws.finnhub.io", Some("s3cr3t&x")).unwrap();
        assert!(url.tls);
        assert_eq!((url.host.as_str(), url.port), ("ws.finnhub.io", 443));
        assert_eq!(url.target, "/?token=s3cr3t%26x");
        assert_eq!(url.display, "wss://ws.finnhub.io:443/");

        let url = FeedUrl::parse("ws://127.0.0.1:9001/feed?a=1", None).unwrap();
        assert!(!url.tls);
        assert_eq!(url.target, "/feed?a=1");
        assert_eq!(url.display, "ws://127.0.0.1:9001/feed");
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_a_query() {
        let err = FeedUrl::parse("http://x?token=hidden", None).unwrap_err();
        assert!(err.contains("ws://") && !err.contains("hidden"), "{err}");
        assert!(FeedUrl::parse("not a url?token=hidden", None).unwrap_err().contains("not a URL"));
    }
}

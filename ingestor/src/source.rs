//! The websocket source: connect, subscribe, read, and reconnect.
//!
//! One task owns the connection. It subscribes every configured symbol after each
//! (re)connect, decodes frames as they arrive (see [`crate::decode`]) and hands the
//! resulting chunks to the batcher over a bounded crossbeam channel. When that channel is
//! full the task blocks, and so stops reading the socket: backpressure reaches the feed
//! through TCP flow control instead of growing a buffer here.
//!
//! Reconnects use exponential backoff with full jitter; a watchdog reconnects when the
//! feed falls silent for longer than the configured timeout.

use std::future::Future as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::Uri;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tracing::{error, info, warn};
use wire::finnhub::ClientMessage;

use crate::config::IngestorConfig;
use crate::decode::{CHUNK_FULL_BYTES, Chunk, Decoder};
use crate::retry::Backoff;
use crate::stats::{Rejected, Stats};

type Socket = FragmentCollector<TokioIo<Upgraded>>;

/// Why a connection ended or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("could not connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("the feed refused the token (HTTP 401); check FINNHUB_TOKEN")]
    Unauthorized,
    #[error("websocket handshake failed: {0}")]
    Handshake(#[source] WebSocketError),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("nothing received for {0:?}")]
    Silence(Duration),
    #[error("the feed closed the connection")]
    Closed,
    #[error("a message exceeded the {0}-byte cap")]
    Oversized(usize),
    #[error("websocket error: {0}")]
    Websocket(#[source] WebSocketError),
    #[error("the producer has stopped")]
    ProducerGone,
}

impl SourceError {
    /// Whether reconnecting can help. Only a stopped producer ends the source; every
    /// connection problem, a refused token included, is retried with backoff, because
    /// a token can be fixed and a feed can come back without restarting the ingestor.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::ProducerGone)
    }
}

/// A parsed feed URL, split the way the connection needs it.
#[derive(Clone)]
pub struct FeedUrl {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query as sent in the request line, token included.
    target: String,
    /// The URL without its query, safe to log.
    display: String,
}

impl FeedUrl {
    pub fn parse(url: &str, token: Option<&str>) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(format!("{url:?} must start with ws:// or wss://")),
        };
        let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?.to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let mut target = uri.path().to_owned();
        if target.is_empty() {
            target.push('/');
        }
        let mut query = uri.query().unwrap_or("").to_owned();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("token=");
            query.push_str(&percent_encode(token));
        }
        let display = format!("{}://{host}:{port}{target}", if tls { "wss" } else { "ws" });
        if !query.is_empty() {
            target.push('?');
            target.push_str(&query);
        }
        Ok(Self { tls, host, port, target, display })
    }

    /// The URL without query or token.
    pub fn redacted(&self) -> &str {
        &self.display
    }
}

impl std::fmt::Debug for FeedUrl {
    // The request target carries the token; only the redacted form is ever printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
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
    F: std::future::Future + Send + 'static,
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

async fn connect(
    url: &FeedUrl,
    tls: &TlsConnector,
    max_frame: usize,
) -> Result<Socket, SourceError> {
    let tcp =
        TcpStream::connect((url.host.as_str(), url.port)).await.map_err(SourceError::Connect)?;
    // Trades are small and latency matters more than packet count.
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
    let result = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| SourceError::Tls(std::io::Error::other(e)))?;
        let stream = tls.connect(name, tcp).await.map_err(SourceError::Tls)?;
        fastwebsockets::handshake::client(&SpawnExecutor, request, stream).await
    } else {
        fastwebsockets::handshake::client(&SpawnExecutor, request, tcp).await
    };
    let (mut ws, _) = result.map_err(|e| match e {
        WebSocketError::InvalidStatusCode(401) => SourceError::Unauthorized,
        other => SourceError::Handshake(other),
    })?;
    ws.set_max_message_size(max_frame);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    Ok(FragmentCollector::new(ws))
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Everything the source task needs.
pub struct Source {
    pub url: FeedUrl,
    pub symbols: Vec<String>,
    pub config: IngestorConfig,
    pub decoder: Decoder,
    pub out: Sender<Chunk>,
    pub stats: Arc<Stats>,
    pub shutdown: watch::Receiver<bool>,
}

impl Source {
    /// Runs until shutdown or until the producer goes away. Returns the number of trades
    /// handed to the producer.
    pub async fn run(mut self) -> u64 {
        let tls = tls_connector();
        let backoff = Backoff { base: self.config.reconnect_min, max: self.config.reconnect_max };
        let mut failures = 0u32;
        let mut connected_before = false;
        while !*self.shutdown.borrow() {
            let attempt = tokio::time::timeout(
                self.config.connect_timeout,
                connect(&self.url, &tls, self.config.max_frame_bytes),
            );
            let outcome = tokio::select! {
                r = attempt => r.unwrap_or(Err(SourceError::ConnectTimeout(self.config.connect_timeout))),
                _ = self.shutdown.changed() => break,
            };
            let end = match outcome {
                Ok(ws) => {
                    if connected_before {
                        self.stats.reconnects.fetch_add(1, Relaxed);
                    }
                    connected_before = true;
                    info!(url = self.url.redacted(), symbols = self.symbols.len(), "connected");
                    let (end, received) = self.session(ws).await;
                    if received {
                        failures = 0;
                    }
                    end
                }
                Err(e) => Err(e),
            };
            match end {
                Ok(()) => break,
                Err(e) if !e.retryable() => {
                    error!(error = %e, "source stopped");
                    break;
                }
                Err(e) => {
                    let delay = backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    match e {
                        SourceError::Unauthorized => {
                            error!(url = self.url.redacted(), error = %e, retry_in = ?delay, "feed refused us")
                        }
                        _ => {
                            warn!(url = self.url.redacted(), error = %e, retry_in = ?delay, "reconnecting")
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.changed() => break,
                    }
                }
            }
        }
        info!(trades = self.decoder.next_seq(), "source stopped");
        self.decoder.next_seq()
    }

    /// Subscribes and reads one connection until it ends. `Ok` means shutdown was asked
    /// for; the flag says whether any frame arrived, which resets the backoff. Trades
    /// decoded but not yet passed on are handed off before it returns, whatever the end.
    async fn session(&mut self, ws: Socket) -> (Result<(), SourceError>, bool) {
        let mut open = self.decoder.chunk();
        let mut received = false;
        let end = self.read_frames(ws, &mut open, &mut received).await;
        if !open.is_empty()
            && let Err(e) = self.hand_off(open)
        {
            return (Err(e), received);
        }
        (end, received)
    }

    /// Reads frames into `open`, passing it on whenever the socket has nothing more to
    /// give at once or the chunk is full. Frames that arrive back to back thus travel
    /// together, and the batcher wakes once per burst instead of once per frame.
    async fn read_frames(
        &mut self,
        mut ws: Socket,
        open: &mut Chunk,
        received: &mut bool,
    ) -> Result<(), SourceError> {
        for symbol in &self.symbols {
            let msg = ClientMessage::Subscribe(symbol).to_json();
            let frame = Frame::text(Payload::Owned(msg.into_bytes()));
            ws.write_frame(frame).await.map_err(SourceError::Websocket)?;
        }
        let silence = self.config.silence_timeout;
        let mut last_frame = Instant::now();
        // One timer for the whole connection, moved forward only when it fires: arming
        // a timer per frame would cost more than the frame's trades.
        let mut watchdog = std::pin::pin!(tokio::time::sleep(silence));
        let mut retry = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let out = self.out.clone();
        let stats = self.stats.clone();
        let max_buffered = self.config.max_buffered_bytes as i64;
        loop {
            let step = {
                let read = ws.read_frame();
                let mut read = std::pin::pin!(read);
                let mut passed_on = false;
                let decoder = &self.decoder;
                let next = std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = read.as_mut().poll(cx) {
                        return Poll::Ready(Ok(r));
                    }
                    // Nothing more is waiting on the socket: pass on what was decoded.
                    // When the producer has no room, offer it again shortly.
                    if !passed_on && !open.is_empty() {
                        passed_on = try_hand_off(&out, &stats, open, max_buffered, decoder);
                        if !passed_on {
                            retry.as_mut().reset(tokio::time::Instant::now() + HAND_OFF_RETRY);
                            let _ = retry.as_mut().poll(cx);
                        }
                    }
                    while watchdog.as_mut().poll(cx).is_ready() {
                        let quiet_until = last_frame + silence;
                        if Instant::now() >= quiet_until {
                            return Poll::Ready(Err(SourceError::Silence(silence)));
                        }
                        watchdog.as_mut().reset(quiet_until.into());
                    }
                    Poll::Pending
                });
                tokio::select! {
                    r = next => Some(r),
                    _ = self.shutdown.changed() => None,
                }
            };
            let Some(frame) = step else {
                let _ = ws.write_frame(Frame::close(1000, b"shutting down")).await;
                return Ok(());
            };
            let frame = frame?;
            let mut frame = match frame {
                Err(WebSocketError::FrameTooLarge) => {
                    self.stats.reject_frame(Rejected::Oversized);
                    return Err(SourceError::Oversized(self.config.max_frame_bytes));
                }
                Err(WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF) => {
                    return Err(SourceError::Closed);
                }
                Err(e) => return Err(SourceError::Websocket(e)),
                Ok(f) => f,
            };
            *received = true;
            last_frame = Instant::now();
            match frame.opcode {
                OpCode::Text => {
                    let rt = now_us();
                    self.decoder.decode(frame.payload.to_mut(), rt, open);
                    if open.data.len() >= CHUNK_FULL_BYTES {
                        self.wait_for_room().await;
                        let full = std::mem::replace(open, self.decoder.chunk());
                        self.hand_off(full)?;
                    }
                }
                OpCode::Binary => {
                    self.stats.frames.fetch_add(1, Relaxed);
                    self.stats.reject_frame(Rejected::Binary);
                }
                OpCode::Close => return Err(SourceError::Closed),
                _ => {}
            }
        }
    }

    /// Waits while the producer holds as many bytes as it may. Not reading the socket
    /// meanwhile is the backpressure: TCP tells the feed to slow down.
    async fn wait_for_room(&self) {
        let max = self.config.max_buffered_bytes as i64;
        let mut waited = false;
        loop {
            let released = self.stats.released.notified();
            let mut released = std::pin::pin!(released);
            // Registered before the check, so a release between the check and the wait
            // still wakes us.
            released.as_mut().enable();
            if self.stats.buffered_bytes.load(Relaxed) < max {
                return;
            }
            if !waited {
                waited = true;
                self.stats.backpressure_waits.fetch_add(1, Relaxed);
            }
            released.await;
        }
    }

    /// Passes `chunk` on, blocking while the channel is full.
    fn hand_off(&self, chunk: Chunk) -> Result<(), SourceError> {
        let bytes = chunk_bytes(&chunk);
        self.stats.buffered_bytes.fetch_add(bytes, Relaxed);
        match self.out.try_send(chunk) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(chunk)) => {
                self.stats.backpressure_waits.fetch_add(1, Relaxed);
                // Blocking here is the point: the socket is not read until the producer
                // has room. block_in_place lets the runtime move other tasks off this
                // worker meanwhile.
                tokio::task::block_in_place(|| self.out.send(chunk)).map_err(|_| {
                    self.stats.release(bytes as usize);
                    SourceError::ProducerGone
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.release(bytes as usize);
                Err(SourceError::ProducerGone)
            }
        }
    }
}

/// How soon a chunk the producer had no room for is offered again while the socket is
/// quiet. Only matters under backpressure, when the producer is seconds behind anyway.
const HAND_OFF_RETRY: Duration = Duration::from_millis(5);

/// Bytes a chunk counts against the buffer cap.
fn chunk_bytes(chunk: &Chunk) -> i64 {
    (chunk.data.len() + chunk.keys.len()) as i64
}

/// Passes `open` on if the producer has room, leaving an empty chunk in its place.
/// Returns whether it did. A producer that went away is found out by the next blocking
/// hand-off.
fn try_hand_off(
    out: &Sender<Chunk>,
    stats: &Stats,
    open: &mut Chunk,
    max_buffered: i64,
    decoder: &Decoder,
) -> bool {
    if stats.buffered_bytes.load(Relaxed) >= max_buffered {
        return false;
    }
    let chunk = std::mem::replace(open, decoder.chunk());
    let bytes = chunk_bytes(&chunk);
    stats.buffered_bytes.fetch_add(bytes, Relaxed);
    match out.try_send(chunk) {
        Ok(()) => true,
        Err(TrySendError::Full(chunk) | TrySendError::Disconnected(chunk)) => {
            stats.buffered_bytes.fetch_sub(bytes, Relaxed);
            // Back into place; the spare taken for it goes nowhere, which costs nothing.
            *open = chunk;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_goes_into_the_query_but_not_the_display() {
        let u = FeedUrl::parse("wss://ws.finnhub.io", Some("s3cr+t")).unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 443);
        assert_eq!(u.target, "/?token=s3cr%2Bt");
        assert_eq!(u.redacted(), "wss://ws.finnhub.io:443/");
        assert!(!format!("{u:?}").contains("s3cr"));

        let u = FeedUrl::parse("ws://127.0.0.1:9001/feed?x=1", None).unwrap();
        assert_eq!((u.tls, u.port, u.target.as_str()), (false, 9001, "/feed?x=1"));
        assert!(FeedUrl::parse("http://x", None).is_err());
    }
}

//! A websocket server that speaks the Finnhub trade protocol.
//!
//! Clients connect (optionally with `?token=`), subscribe to symbols and receive trade
//! frames for exactly those symbols, a `{"type":"ping"}` every ping interval, and error
//! frames for invalid symbols or too many subscriptions, as from `wss://ws.finnhub.io`.
//!
//! Flow: [`Feed::serve`] accepts TCP connections; `http` checks the token and upgrades;
//! `connection` runs one websocket, its writer loop driving the connection's `session`
//! (subscriptions), its trade source and its injected faults; `stats` counts what was
//! sent.
//!
//! Files:
//! - `http.rs`: token check, upgrade, the HTTP answers to everything else.
//! - `connection.rs`: the per-connection reader and writer loop.
//! - `session.rs`: subscriptions, their order, and the symbol rules.
//! - `source.rs`: [`TradeSource`] and the per-connection interface every source implements.
//! - `synthetic.rs`: seeded random walks, Zipf-skewed, bursting, from pre-built frames.
//! - `scripted.rs`: a fixed list of frames, sent once, for tests.
//! - `replay.rs`: the trade frames of a capture file, re-timed, at a speed factor.
//! - `capture.rs`: the capture file format that `loadgen record` writes.
//! - `faults.rs`: dropped connections, malformed frames, stalls and silence.
//! - `stats.rs`: counters, [`FeedStats`], [`FeedHandle`].

pub mod capture;
mod connection;
mod faults;
mod http;
mod replay;
mod scripted;
mod session;
mod source;
mod stats;
mod synthetic;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

pub use faults::{Faults, MAX_MALFORMED_RATE, MIN_FAULT_INTERVAL, Stall};
pub use replay::{Capture, MAX_SPEED, ReplayConfig, START_GRACE, Speed, SpeedError};
pub use scripted::{Script, ScriptFrame, ScriptTrade};
pub use session::{SYMBOL_MAX_CHARS, SubscribeError, TOO_MANY_SYMBOLS, validate_symbol};
pub use source::TradeSource;
pub use stats::{FeedHandle, FeedStats, log_progress};
pub use synthetic::{
    Burst, DECK_REFRESH, FrameSize, FrameSizeError, MAX_BURST_FACTOR, MAX_RATE,
    MAX_TRADES_PER_FRAME, MAX_UNIVERSE, MAX_ZIPF, SyntheticConfig, SyntheticFrames, TICK, Universe,
    start_price,
};

use source::SourceShared;
use stats::Counters;

/// Finnhub's keep-alive period: about one ping a minute.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(60);

/// The shortest ping interval accepted; shorter would be a busy loop, not a keep-alive.
pub const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);

/// How long connections get to close cleanly once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the feed behaves.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// What subscribed clients receive.
    pub source: TradeSource,
    /// When set, clients must present it as `?token=`.
    pub token: Option<Token>,
    /// Symbols one connection may hold; `None` for no limit. A free Finnhub account gets 50.
    pub max_symbols: Option<usize>,
    /// Time between `{"type":"ping"}` frames on each connection.
    pub ping_interval: Duration,
    /// Faults injected into every connection; none by default.
    pub faults: Faults,
}

impl FeedConfig {
    /// Synthetic trades with Finnhub-like defaults: no token, no symbol limit, a ping a
    /// minute.
    pub fn synthetic(config: SyntheticConfig) -> Self {
        Self::with_source(TradeSource::Synthetic(config))
    }

    /// A script, with the same defaults as [`FeedConfig::synthetic`].
    pub fn scripted(script: Script) -> Self {
        Self::with_source(TradeSource::Scripted(script))
    }

    /// A replayed capture, with the same defaults as [`FeedConfig::synthetic`].
    pub fn replay(config: ReplayConfig) -> Self {
        Self::with_source(TradeSource::Replay(config))
    }

    fn with_source(source: TradeSource) -> Self {
        Self {
            source,
            token: None,
            max_symbols: None,
            ping_interval: DEFAULT_PING_INTERVAL,
            faults: Faults::default(),
        }
    }

    /// Refuses values the feed cannot honour, naming the flag that set them.
    pub fn validate(&self) -> Result<(), FeedError> {
        let invalid = |flag, reason: String| Err(FeedError::InvalidConfig { flag, reason });
        if let TradeSource::Synthetic(s) = &self.source {
            validate_synthetic(s)?;
        }
        validate_faults(&self.faults)?;
        if self.max_symbols == Some(0) {
            return invalid(
                "--max-symbols",
                "must be at least 1; leave it unset for no limit".into(),
            );
        }
        if self.ping_interval < MIN_PING_INTERVAL {
            return invalid(
                "--ping-interval",
                format!("must be at least {MIN_PING_INTERVAL:?}, got {:?}", self.ping_interval),
            );
        }
        if self.token.as_ref().is_some_and(|t| t.0.is_empty()) {
            return invalid("--token", "must not be empty; leave it unset to accept anyone".into());
        }
        Ok(())
    }
}

/// Refuses synthetic settings outside what the generator can honour.
fn validate_synthetic(s: &SyntheticConfig) -> Result<(), FeedError> {
    let invalid = |flag, reason: String| Err(FeedError::InvalidConfig { flag, reason });
    if !(s.rate.is_finite() && s.rate > 0.0 && s.rate <= MAX_RATE) {
        return invalid(
            "--rate",
            format!("must be above 0 and at most {MAX_RATE} trades/s, got {}", s.rate),
        );
    }
    let FrameSize { min, max } = s.frame_size;
    if min == 0 || min > max || max > MAX_TRADES_PER_FRAME {
        return invalid(
            "--trades-per-frame",
            format!(
                "must be N or MIN..MAX with 1 <= MIN <= MAX <= {MAX_TRADES_PER_FRAME}, got {}",
                s.frame_size
            ),
        );
    }
    if !(s.zipf.is_finite() && (0.0..=MAX_ZIPF).contains(&s.zipf)) {
        return invalid("--zipf", format!("must be from 0 to {MAX_ZIPF}, got {}", s.zipf));
    }
    if let Some(u) = s.universe
        && !(1..=MAX_UNIVERSE).contains(&u.len())
    {
        return invalid("--symbols", format!("must be from 1 to {MAX_UNIVERSE}, got {}", u.len()));
    }
    if let Some(b) = s.burst {
        if b.every < MIN_FAULT_INTERVAL {
            return invalid(
                "--burst-every",
                format!("must be at least {MIN_FAULT_INTERVAL:?}, got {:?}", b.every),
            );
        }
        if b.length.is_zero() || b.length >= b.every {
            return invalid(
                "--burst-length",
                format!(
                    "must be above 0 and below --burst-every ({:?}), got {:?}",
                    b.every, b.length
                ),
            );
        }
        if !(b.factor.is_finite() && b.factor > 0.0 && b.factor <= MAX_BURST_FACTOR) {
            return invalid(
                "--burst-factor",
                format!("must be above 0 and at most {MAX_BURST_FACTOR}, got {}", b.factor),
            );
        }
        if s.rate * b.factor > MAX_RATE {
            return invalid(
                "--burst-factor",
                format!("takes the rate to {} trades/s, above {MAX_RATE}", s.rate * b.factor),
            );
        }
    }
    Ok(())
}

/// Refuses fault settings that would leave a connection unable to do anything.
fn validate_faults(f: &Faults) -> Result<(), FeedError> {
    let invalid = |flag, reason: String| Err(FeedError::InvalidConfig { flag, reason });
    let short = |d: Option<Duration>| d.is_some_and(|d| d < MIN_FAULT_INTERVAL);
    for (flag, value) in [
        ("--drop-every", f.drop_every),
        ("--silence-after", f.silence_after),
        ("--stall-every", f.stall.map(|s| s.every)),
    ] {
        if short(value) {
            return invalid(
                flag,
                format!("must be at least {MIN_FAULT_INTERVAL:?}, got {value:?}"),
            );
        }
    }
    if let Some(stall) = f.stall
        && (stall.length.is_zero() || stall.length >= stall.every)
    {
        return invalid(
            "--stall-for",
            format!(
                "must be above 0 and below --stall-every ({:?}), got {:?}",
                stall.every, stall.length
            ),
        );
    }
    if !(f.malformed_rate.is_finite() && (0.0..=MAX_MALFORMED_RATE).contains(&f.malformed_rate)) {
        return invalid(
            "--malformed-rate",
            format!("must be from 0 to {MAX_MALFORMED_RATE}, got {}", f.malformed_rate),
        );
    }
    Ok(())
}

/// The token clients must present. Its `Debug` form hides it, so that a logged config never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    fn matches(&self, presented: Option<&[u8]>) -> bool {
        presented == Some(self.0.as_bytes())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why the feed could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{flag} {reason}")]
    InvalidConfig { flag: &'static str, reason: String },
    #[error("the listening socket failed: {0}")]
    Listener(#[source] std::io::Error),
}

impl FeedError {
    /// A bad configuration stays bad; a listener failure may pass once the address frees.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::InvalidConfig { .. } => false,
            Self::Listener(_) => true,
        }
    }
}

/// What every connection task shares.
pub(crate) struct Shared {
    config: ConnConfig,
    source: SourceShared,
    counters: Arc<Counters>,
    next_conn_id: AtomicU64,
}

/// The parts of [`FeedConfig`] a connection reads.
struct ConnConfig {
    token: Option<Token>,
    max_symbols: Option<usize>,
    ping_interval: Duration,
    faults: Faults,
}

impl Shared {
    /// Numbers websocket connections from 0 in the order they upgraded.
    fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A configured feed, ready to serve.
pub struct Feed {
    shared: Arc<Shared>,
}

impl Feed {
    /// Checks the configuration and prepares the feed.
    pub fn new(config: FeedConfig) -> Result<Self, FeedError> {
        config.validate()?;
        let shared = Shared {
            config: ConnConfig {
                token: config.token,
                max_symbols: config.max_symbols,
                ping_interval: config.ping_interval,
                faults: config.faults,
            },
            source: SourceShared::new(config.source),
            counters: Arc::default(),
            next_conn_id: AtomicU64::new(0),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// A handle to watch the feed's counters and script while it serves.
    pub fn handle(&self) -> FeedHandle {
        FeedHandle::new(self.shared.counters.clone(), self.shared.source.script())
    }

    /// Accepts connections on `listener` until `shutdown` resolves, then closes every
    /// connection (waiting up to a few seconds for clean closes) and returns the final
    /// counters.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<FeedStats, FeedError> {
        let addr = listener.local_addr().map_err(FeedError::Listener)?;
        let handle = self.handle();
        info!(
            listen = %addr,
            source = self.shared.source.label(),
            token_required = self.shared.config.token.is_some(),
            max_symbols = ?self.shared.config.max_symbols,
            ping_interval = ?self.shared.config.ping_interval,
            faults = ?self.shared.config.faults,
            "feed started"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        Counters::add(&self.shared.counters.connections_accepted, 1);
                        // Trade frames are small and latency is what tests measure.
                        if let Err(err) = stream.set_nodelay(true) {
                            warn!(peer = %peer, error = %err, "could not disable Nagle's algorithm");
                        }
                        let task = http::serve_tcp(stream, peer, self.shared.clone(), stop_rx.clone());
                        tasks.spawn(task);
                    }
                    Err(err) => {
                        warn!(error = %err, "accept failed; retrying");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => log_panic(done),
            }
        }

        info!(open = tasks.len(), "feed stopping: closing connections");
        // Receivers see the change even if none is waiting right now; the send only fails
        // when no receiver is left, which means no connection is open.
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(done) = tasks.join_next().await {
                log_panic(done);
            }
        })
        .await;
        if drained.is_err() {
            warn!(remaining = tasks.len(), "connections did not close in time; dropping them");
            tasks.shutdown().await;
        }
        let stats = handle.stats();
        info!(
            connections = stats.websocket_sessions,
            frames_sent = stats.frames_sent,
            trades_sent = stats.trades_sent,
            "feed stopped"
        );
        Ok(stats)
    }
}

/// Serves `config` on `listener` until `shutdown` resolves. See [`Feed`] to watch the
/// counters while it runs.
pub async fn serve(
    listener: TcpListener,
    config: FeedConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<FeedStats, FeedError> {
    Feed::new(config)?.serve(listener, shutdown).await
}

/// Resolves once shutdown has been signalled (or the signal's sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // Drops the borrow guard at once; it must not be held across the caller's awaits.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done
        && err.is_panic()
    {
        error!(error = %err, "a connection task panicked");
    }
}

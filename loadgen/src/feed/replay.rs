//! Replayed trades: the trade frames of a capture file, sent again with their spacing.
//!
//! The rules:
//!
//! - Only trade frames replay. Pings, errors, unknown and malformed frames in the capture
//!   are counted when it loads and skipped; the feed sends its own pings.
//! - Each connection plays the capture on its own, and only the trades of symbols it is
//!   subscribed to; a frame with none of them is skipped.
//! - Playback starts once the connection holds every symbol the capture trades, or
//!   [`START_GRACE`] after its first subscribe, whichever comes first, so that a client
//!   subscribing symbol by symbol does not miss the first frames.
//! - Frame `i` is due `(rt_i - rt_0) / speed` after the pass starts; at `max` speed frames
//!   go out as fast as the client reads them. A looped capture starts its next pass at the
//!   moment its last frame was due.
//! - Times are shifted per pass so that the capture's first trade is "now" when the pass
//!   starts; gaps between trade times keep their spacing (they are not divided by the
//!   speed). Frames are decoded once when the capture loads and re-encoded with
//!   [`wire::finnhub::write_trade_frame`] as they are sent.
//! - While a connection holds no symbol of the capture, nothing is sent but the clock runs
//!   on; frames that fell due meanwhile go out when it subscribes again.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wire::finnhub::{Conditions, Frame, Trade, decode};

use super::capture::{CaptureError, parse_line};
use super::session::Session;
use super::source::Outbox;
use super::stats::Counters;
use super::synthetic::now_ms;

/// How long playback waits for a client to subscribe to every symbol of the capture.
pub const START_GRACE: Duration = Duration::from_secs(1);

/// The fastest speed factor accepted; beyond it, use `max`.
pub const MAX_SPEED: f64 = 1_000_000.0;

/// Frames sent per wake-up at `max` speed: enough to stream quickly, few enough that
/// subscriptions and pongs are handled between batches.
const MAX_SPEED_BATCH: usize = 256;

/// Bytes of frames queued in one fill at most, so a catch-up stays bounded in memory.
const MAX_FILL_BYTES: usize = 1 << 20;

/// How fast a capture replays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// This many times real time: `1x`, `10x`, `0.5x`.
    Factor(f64),
    /// As fast as the client reads.
    Max,
}

impl fmt::Display for Speed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Factor(x) => write!(f, "{x}x"),
            Self::Max => f.write_str("max"),
        }
    }
}

/// Why a speed could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a speed: write a factor such as 1x, 10x or 0.5x (above 0, at most {MAX_SPEED}x), or max"
)]
pub struct SpeedError(String);

impl SpeedError {
    /// A malformed value stays malformed.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl FromStr for Speed {
    type Err = SpeedError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("max") {
            return Ok(Self::Max);
        }
        let bad = || SpeedError(text.to_owned());
        let factor: f64 =
            text.strip_suffix(['x', 'X']).ok_or_else(bad)?.parse().map_err(|_| bad())?;
        if !(factor.is_finite() && factor > 0.0 && factor <= MAX_SPEED) {
            return Err(bad());
        }
        Ok(Self::Factor(factor))
    }
}

/// Settings for replaying a capture.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub capture: Arc<Capture>,
    pub speed: Speed,
    /// Start over after the last frame, forever.
    pub looped: bool,
}

/// One trade of a capture.
#[derive(Debug, Clone, PartialEq)]
struct CapturedTrade {
    /// Index into [`Capture::symbols`].
    symbol: u32,
    price: f64,
    time_ms: u64,
    volume: f64,
    conditions: Box<[Box<str>]>,
}

/// One trade frame of a capture.
#[derive(Debug, Clone, PartialEq)]
struct CapturedFrame {
    /// Receive time, microseconds since the epoch; never below the frame before.
    rt_us: u64,
    trades: Vec<CapturedTrade>,
}

/// The trade frames of a capture file, decoded once. Its `Debug` form is a summary, so
/// that a logged configuration never prints thousands of frames.
#[derive(Clone, PartialEq)]
pub struct Capture {
    symbols: Vec<String>,
    frames: Vec<CapturedFrame>,
    trades: usize,
    skipped: usize,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("frames", &self.frames.len())
            .field("trades", &self.trades)
            .field("symbols", &self.symbols.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl Capture {
    /// Reads and decodes a capture file.
    pub fn load(path: &Path) -> Result<Self, CaptureError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| CaptureError::Io { path: name.clone(), source })?;
        Self::parse(&text, &name)
    }

    /// Decodes capture text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CaptureError> {
        let mut capture = Self { symbols: Vec::new(), frames: Vec::new(), trades: 0, skipped: 0 };
        let mut symbol_index = HashMap::<String, u32>::new();
        let mut last_rt = 0;
        for (n, line) in text.lines().enumerate() {
            let bad = |reason| CaptureError::BadLine { path: origin.into(), line: n + 1, reason };
            let Some(line) = parse_line(line).map_err(bad)? else { continue };
            // A clock stepped backwards during recording reads as no gap at all.
            let rt_us = line.rt_us.max(last_rt);
            last_rt = rt_us;
            let mut buf = line.frame.as_bytes().to_vec();
            let trades = match decode(&mut buf) {
                Ok(Frame::Trades(trades)) if !trades.is_empty() => trades,
                _ => {
                    capture.skipped += 1;
                    continue;
                }
            };
            let trades = trades
                .iter()
                .map(|t| {
                    let next = capture.symbols.len() as u32;
                    let symbol = *symbol_index.entry(t.symbol.to_owned()).or_insert_with(|| {
                        capture.symbols.push(t.symbol.to_owned());
                        next
                    });
                    CapturedTrade {
                        symbol,
                        price: t.price,
                        time_ms: t.time_ms,
                        volume: t.volume,
                        conditions: t.conditions.as_slice().iter().map(|&c| c.into()).collect(),
                    }
                })
                .collect::<Vec<_>>();
            capture.trades += trades.len();
            capture.frames.push(CapturedFrame { rt_us, trades });
        }
        if capture.frames.is_empty() {
            return Err(CaptureError::NoTrades { path: origin.into() });
        }
        Ok(capture)
    }

    /// Every symbol the capture trades, in order of first appearance.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// Trade frames that replay.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    pub fn trade_count(&self) -> usize {
        self.trades
    }

    /// Frames in the file that do not replay: pings, errors, unknown types, malformed.
    pub fn skipped_frames(&self) -> usize {
        self.skipped
    }

    /// Time from the first trade frame's receipt to the last's.
    pub fn span(&self) -> Duration {
        Duration::from_micros(self.last_rt() - self.first_rt())
    }

    fn first_rt(&self) -> u64 {
        self.frames.first().map_or(0, |f| f.rt_us)
    }

    fn last_rt(&self) -> u64 {
        self.frames.last().map_or(0, |f| f.rt_us)
    }

    fn first_time_ms(&self) -> u64 {
        self.frames.first().and_then(|f| f.trades.first()).map_or(0, |t| t.time_ms)
    }
}

/// Where a connection's playback stands.
#[derive(Debug, Clone, Copy)]
enum Playback {
    /// Waiting for subscriptions; `first_subscribe` starts the grace period.
    Waiting {
        first_subscribe: Option<Instant>,
    },
    Playing(Pass),
    Done,
}

/// One pass over the capture.
#[derive(Debug, Clone, Copy)]
struct Pass {
    started: Instant,
    /// Added to every trade time in this pass.
    shift_ms: i64,
    /// The next frame to consider.
    next: usize,
}

/// One connection's replay.
pub(crate) struct ReplaySource {
    config: ReplayConfig,
    counters: Arc<Counters>,
    /// Per capture symbol: is this connection subscribed to it?
    subscribed: Vec<bool>,
    any_subscribed: bool,
    all_subscribed: bool,
    playback: Playback,
    /// Reused for each frame's filtered trades; holds no borrow between calls.
    scratch: Vec<usize>,
}

impl ReplaySource {
    pub fn new(config: ReplayConfig, counters: Arc<Counters>) -> Self {
        let symbols = config.capture.symbols.len();
        Self {
            config,
            counters,
            subscribed: vec![false; symbols],
            any_subscribed: false,
            all_subscribed: false,
            playback: Playback::Waiting { first_subscribe: None },
            scratch: Vec::new(),
        }
    }

    /// Waits until a frame is due. Cancel-safe: it only sleeps until a computed instant.
    pub async fn due(&mut self) {
        if !self.any_subscribed {
            std::future::pending::<()>().await;
        }
        match self.playback {
            Playback::Waiting { first_subscribe } => {
                if !self.all_subscribed {
                    let since = first_subscribe.unwrap_or_else(Instant::now);
                    tokio::time::sleep_until(since + START_GRACE).await;
                }
            }
            Playback::Playing(pass) => {
                if let Some(at) = self.due_at(&pass) {
                    tokio::time::sleep_until(at).await;
                }
            }
            Playback::Done => std::future::pending::<()>().await,
        }
    }

    pub fn subscriptions_changed(&mut self, session: &Session) {
        for (flag, symbol) in self.subscribed.iter_mut().zip(&self.config.capture.symbols) {
            *flag = session.contains(symbol);
        }
        self.any_subscribed = self.subscribed.contains(&true);
        self.all_subscribed = !self.subscribed.contains(&false);
        if let Playback::Waiting { first_subscribe: first @ None } = &mut self.playback
            && !session.is_empty()
        {
            *first = Some(Instant::now());
        }
    }

    /// Appends the frames due now.
    pub fn fill(&mut self, out: &mut Outbox) {
        if !self.any_subscribed {
            return;
        }
        let now = Instant::now();
        let mut pass = match self.playback {
            Playback::Waiting { first_subscribe } => {
                let grace_over = first_subscribe.is_some_and(|t| now >= t + START_GRACE);
                if !(self.all_subscribed || grace_over) {
                    return;
                }
                self.start_pass(now, now)
            }
            Playback::Playing(pass) => pass,
            Playback::Done => return,
        };
        let len = self.config.capture.frames.len();
        let mut considered = 0;
        loop {
            if pass.next == len {
                if !self.config.looped {
                    self.playback = Playback::Done;
                    return;
                }
                let started = match self.config.speed {
                    Speed::Max => now,
                    Speed::Factor(_) => self.due_at(&pass).unwrap_or(now),
                };
                pass = self.start_pass(started, now);
            }
            if self.due_at(&pass).is_some_and(|at| at > now)
                || considered == MAX_SPEED_BATCH && self.config.speed == Speed::Max
                || out.bytes() >= MAX_FILL_BYTES
            {
                break;
            }
            considered += 1;
            self.push_frame(&pass, out);
            pass.next += 1;
        }
        self.playback = Playback::Playing(pass);
    }

    /// Begins a pass that started at `started` (at most `now`): counts it and fixes the
    /// time shift that makes the capture's first trade read as `started`.
    fn start_pass(&mut self, started: Instant, now: Instant) -> Pass {
        Counters::add(&self.counters.replay_passes, 1);
        let started_ms =
            now_ms() as i64 - now.saturating_duration_since(started).as_millis() as i64;
        let shift_ms = started_ms - self.config.capture.first_time_ms() as i64;
        Pass { started, shift_ms, next: 0 }
    }

    /// When the pass's next frame is due; `None` at `max` speed or after the last frame.
    fn due_at(&self, pass: &Pass) -> Option<Instant> {
        let Speed::Factor(speed) = self.config.speed else { return None };
        let capture = &self.config.capture;
        // After the last frame, the next pass is due when the last frame was.
        let frame = capture.frames.get(pass.next).or(capture.frames.last())?;
        let offset = Duration::from_micros(frame.rt_us - capture.first_rt());
        Some(pass.started + offset.div_f64(speed))
    }

    /// Appends the pass's next frame, keeping only subscribed symbols and shifting times.
    fn push_frame(&mut self, pass: &Pass, out: &mut Outbox) {
        let frame = &self.config.capture.frames[pass.next];
        self.scratch.clear();
        self.scratch.extend(
            (0..frame.trades.len()).filter(|&i| self.subscribed[frame.trades[i].symbol as usize]),
        );
        if self.scratch.is_empty() {
            return;
        }
        let symbols = &self.config.capture.symbols;
        let trades: Vec<Trade<'_>> = self
            .scratch
            .iter()
            .map(|&i| {
                let t = &frame.trades[i];
                Trade {
                    symbol: &symbols[t.symbol as usize],
                    price: t.price,
                    time_ms: (t.time_ms as i64).saturating_add(pass.shift_ms).max(0) as u64,
                    volume: t.volume,
                    conditions: t.conditions.iter().map(|c| &**c).collect::<Conditions<'_>>(),
                }
            })
            .collect();
        out.push_trades(&trades);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &str = "\
# two frames 1.5 s apart, a ping and a malformed line between
1000000\t{\"data\":[{\"c\":null,\"p\":10.5,\"s\":\"AAA\",\"t\":1700000000000,\"v\":1},{\"c\":[\"1\",\"12\"],\"p\":20,\"s\":\"BBB\",\"t\":1700000000004,\"v\":2}],\"type\":\"trade\"}
1200000\t{\"type\":\"ping\"}
1300000\t{\"type\":\"trade\",\"data\":[{
2500000\t{\"data\":[{\"c\":null,\"p\":10.75,\"s\":\"AAA\",\"t\":1700000001500,\"v\":3}],\"type\":\"trade\"}
";

    #[test]
    fn speeds_parse() {
        assert_eq!("1x".parse(), Ok(Speed::Factor(1.0)));
        assert_eq!(" 10X ".parse(), Ok(Speed::Factor(10.0)));
        assert_eq!("0.5x".parse(), Ok(Speed::Factor(0.5)));
        assert_eq!("MAX".parse(), Ok(Speed::Max));
        for bad in ["", "1", "x", "0x", "-1x", "infx", "NaNx", "2000000x", "fast"] {
            assert!(bad.parse::<Speed>().is_err(), "{bad:?}");
        }
        assert_eq!(Speed::Factor(2.5).to_string(), "2.5x");
    }

    #[test]
    fn a_capture_keeps_trade_frames_and_counts_the_rest() {
        let capture = Capture::parse(CAPTURE, "test").unwrap();
        assert_eq!(capture.symbols(), ["AAA", "BBB"]);
        assert_eq!((capture.frame_count(), capture.trade_count()), (2, 3));
        assert_eq!(capture.skipped_frames(), 2);
        assert_eq!(capture.span(), Duration::from_millis(1_500));
        assert_eq!(capture.frames[0].trades[1].conditions.len(), 2);
        assert_eq!(capture.first_time_ms(), 1_700_000_000_000);
    }

    #[test]
    fn a_broken_capture_names_the_line() {
        let err = Capture::parse("# ok\n12 no tab\n", "cap.tsv").unwrap_err();
        assert!(err.to_string().starts_with("cap.tsv line 2: "), "{err}");
        let err = Capture::parse("1\t{\"type\":\"ping\"}\n", "cap.tsv").unwrap_err();
        assert!(matches!(err, CaptureError::NoTrades { .. }), "{err}");
    }
}

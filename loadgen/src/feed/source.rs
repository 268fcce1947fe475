//! Where a connection's frames come from.
//!
//! [`TradeSource`] is what a caller configures for the whole feed. Each websocket connection
//! gets its own [`ConnSource`] built from it, which the connection's writer drives with
//! three calls:
//!
//! 1. `due().await`: wait, cancel-safely, until the source has something to send. A source
//!    with nothing to send (no subscriptions, script finished) stays pending forever.
//! 2. `fill(&mut outbox, &session)`: append the frames to send now.
//! 3. `sent()`: the frames from the last `fill` reached the socket. Sources that must not
//!    lose a frame (the script) only count a frame as delivered here.
//!
//! A new source is a new variant here and in [`TradeSource`]; the connection loop does
//! not change.

use std::sync::Arc;
use std::time::Instant;

use wire::finnhub::{Trade, write_trade_frame};

use super::replay::{ReplayConfig, ReplaySource};
use super::scripted::{Script, ScriptShared, ScriptedSender};
use super::session::Session;
use super::stats::Counters;
use super::synthetic::{SyntheticConfig, SyntheticSource, Universe};

/// What the feed sends to subscribed clients.
#[derive(Debug, Clone)]
pub enum TradeSource {
    /// Random-walk trades for whatever each connection subscribes to, at a set rate.
    Synthetic(SyntheticConfig),
    /// A fixed list of frames, sent once, in order; see [`Script`].
    Scripted(Script),
    /// The trade frames of a capture file, with their spacing; see [`ReplayConfig`].
    Replay(ReplayConfig),
}

impl TradeSource {
    /// `synthetic`, `scripted` or `replay`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Synthetic(_) => "synthetic",
            Self::Scripted(_) => "scripted",
            Self::Replay(_) => "replay",
        }
    }
}

/// The feed-wide state behind a [`TradeSource`], shared by every connection.
pub(crate) enum SourceShared {
    /// The config, and when the feed started: bursts are timed from it.
    Synthetic(SyntheticConfig, Instant),
    Scripted(Arc<ScriptShared>),
    Replay(ReplayConfig),
}

impl SourceShared {
    pub fn new(source: TradeSource) -> Self {
        match source {
            TradeSource::Synthetic(config) => Self::Synthetic(config, Instant::now()),
            TradeSource::Scripted(script) => Self::Scripted(Arc::new(ScriptShared::new(script))),
            TradeSource::Replay(config) => Self::Replay(config),
        }
    }

    pub fn script(&self) -> Option<Arc<ScriptShared>> {
        match self {
            Self::Scripted(shared) => Some(shared.clone()),
            Self::Synthetic(..) | Self::Replay(_) => None,
        }
    }

    /// The only symbols clients may subscribe to, when the source limits them.
    pub fn universe(&self) -> Option<Universe> {
        match self {
            Self::Synthetic(config, _) => config.universe,
            Self::Scripted(_) | Self::Replay(_) => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Synthetic(..) => "synthetic",
            Self::Scripted(_) => "scripted",
            Self::Replay(_) => "replay",
        }
    }
}

/// One connection's view of the trade source.
pub(crate) enum ConnSource {
    Synthetic(Box<SyntheticSource>),
    Scripted(ScriptedSender),
    Replay(Box<ReplaySource>),
}

impl ConnSource {
    pub fn new(shared: &SourceShared, conn_id: u64, counters: &Arc<Counters>) -> Self {
        match shared {
            SourceShared::Synthetic(config, epoch) => {
                Self::Synthetic(Box::new(SyntheticSource::new(config, conn_id, *epoch)))
            }
            SourceShared::Scripted(script) => {
                Self::Scripted(ScriptedSender::new(script.clone(), conn_id))
            }
            SourceShared::Replay(config) => {
                Self::Replay(Box::new(ReplaySource::new(config.clone(), counters.clone())))
            }
        }
    }

    /// Waits until there is something to send. Cancel-safe.
    pub async fn due(&mut self) {
        match self {
            Self::Synthetic(s) => s.due().await,
            Self::Scripted(s) => s.due().await,
            Self::Replay(s) => s.due().await,
        }
    }

    /// Appends the frames to send now; may append nothing. `session` holds the
    /// subscriptions as they are now.
    pub fn fill(&mut self, out: &mut Outbox, session: &Session) {
        match self {
            Self::Synthetic(s) => s.fill(out, session),
            Self::Scripted(s) => s.fill(out),
            Self::Replay(s) => s.fill(out),
        }
    }

    /// The frames from the last [`ConnSource::fill`] were written and flushed.
    pub fn sent(&mut self) {
        match self {
            Self::Synthetic(_) | Self::Replay(_) => {}
            Self::Scripted(s) => s.sent(),
        }
    }

    /// The subscriptions changed. Called once per subscribe or unsubscribe, so a source
    /// keeps this cheap and does any heavy work at its next fill.
    pub fn subscriptions_changed(&mut self, session: &Session) {
        match self {
            Self::Synthetic(s) => s.subscriptions_changed(session),
            Self::Scripted(s) => s.subscriptions_changed(session),
            Self::Replay(s) => s.subscriptions_changed(session),
        }
    }
}

/// Frames waiting to be written, packed end to end in one reused buffer so that a tick's
/// worth of frames costs no allocation once the buffer has grown.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    buf: Vec<u8>,
    ends: Vec<usize>,
    trades: u64,
}

impl Outbox {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.trades = 0;
    }

    /// Appends one trade frame.
    pub fn push_trades(&mut self, trades: &[Trade<'_>]) {
        write_trade_frame(&mut self.buf, trades);
        self.ends.push(self.buf.len());
        self.trades += trades.len() as u64;
    }

    /// Appends one frame already encoded, carrying `trades` trades.
    pub fn push_encoded(&mut self, frame: &[u8], trades: usize) {
        self.buf.extend_from_slice(frame);
        self.ends.push(self.buf.len());
        self.trades += trades as u64;
    }

    /// Appends a pre-built trade frame, overwriting each trade's time digits. `times` are
    /// where the digits sit, counted in the buffer the frame was cut from, which starts
    /// the frame at `frame_start`; there is one per trade.
    pub fn push_patched(
        &mut self,
        frame: &[u8],
        frame_start: usize,
        times: &[usize],
        digits: &[u8],
    ) {
        let base = self.buf.len();
        self.buf.extend_from_slice(frame);
        for &at in times {
            let at = base + (at - frame_start);
            self.buf[at..at + digits.len()].copy_from_slice(digits);
        }
        self.ends.push(self.buf.len());
        self.trades += times.len() as u64;
    }

    /// Bytes of all frames held.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// All frames end to end.
    pub fn all_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(start, end)| &self.buf[start..end])
    }

    pub fn frame_count(&self) -> u64 {
        self.ends.len() as u64
    }

    pub fn trade_count(&self) -> u64 {
        self.trades
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_keeps_frame_boundaries() {
        let mut out = Outbox::default();
        out.push_encoded(b"one", 0);
        out.push_encoded(b"", 0);
        out.push_encoded(b"three", 3);
        assert_eq!(out.frames().collect::<Vec<_>>(), [&b"one"[..], b"", b"three"]);
        assert_eq!((out.frame_count(), out.trade_count()), (3, 3));
        out.clear();
        assert!(out.is_empty());
        assert_eq!(out.frames().count(), 0);
    }

    #[test]
    fn patched_frames_get_their_digits() {
        let deck = b"xx[T=____][T=____]yy";
        let mut out = Outbox::default();
        out.push_encoded(b"first", 0);
        out.push_patched(&deck[2..18], 2, &[5, 13], b"1234");
        assert_eq!(out.frames().nth(1), Some(&b"[T=1234][T=1234]"[..]));
        assert_eq!((out.trade_count(), out.bytes()), (2, 21));
    }
}

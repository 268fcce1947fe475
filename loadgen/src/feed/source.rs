//! Where a connection's frames come from.
//!
//! [`TradeSource`] is what a caller configures for the whole feed. Each websocket connection
//! gets its own [`ConnSource`] built from it, which the connection's writer drives with
//! three calls:
//!
//! 1. `due().await`: wait, cancel-safely, until the source has something to send. A source
//!    with nothing to send (no subscriptions, script finished) stays pending forever.
//! 2. `fill(&mut outbox)`: append the frames to send now.
//! 3. `sent()`: the frames from the last `fill` reached the socket. Sources that must not
//!    lose a frame (the script) only count a frame as delivered here.
//!
//! A new source (replaying a capture file, say) is a new variant here and in
//! [`TradeSource`]; the connection loop does not change.

use std::sync::Arc;

use wire::finnhub::{Trade, write_trade_frame};

use super::scripted::{Script, ScriptShared, ScriptedSender};
use super::session::Session;
use super::synthetic::{SyntheticConfig, SyntheticSource};

/// What the feed sends to subscribed clients.
#[derive(Debug, Clone)]
pub enum TradeSource {
    /// Random-walk trades for whatever each connection subscribes to, at a fixed rate.
    Synthetic(SyntheticConfig),
    /// A fixed list of frames, sent once, in order; see [`Script`].
    Scripted(Script),
}

/// The feed-wide state behind a [`TradeSource`], shared by every connection.
pub(crate) enum SourceShared {
    Synthetic(SyntheticConfig),
    Scripted(Arc<ScriptShared>),
}

impl SourceShared {
    pub fn new(source: TradeSource) -> Self {
        match source {
            TradeSource::Synthetic(config) => Self::Synthetic(config),
            TradeSource::Scripted(script) => Self::Scripted(Arc::new(ScriptShared::new(script))),
        }
    }

    pub fn script(&self) -> Option<Arc<ScriptShared>> {
        match self {
            Self::Synthetic(_) => None,
            Self::Scripted(shared) => Some(shared.clone()),
        }
    }
}

/// One connection's view of the trade source.
pub(crate) enum ConnSource {
    Synthetic(Box<SyntheticSource>),
    Scripted(ScriptedSender),
}

impl ConnSource {
    pub fn new(shared: &SourceShared, conn_id: u64) -> Self {
        match shared {
            SourceShared::Synthetic(config) => {
                Self::Synthetic(Box::new(SyntheticSource::new(config, conn_id)))
            }
            SourceShared::Scripted(script) => {
                Self::Scripted(ScriptedSender::new(script.clone(), conn_id))
            }
        }
    }

    /// Waits until there is something to send. Cancel-safe.
    pub async fn due(&mut self) {
        match self {
            Self::Synthetic(s) => s.due().await,
            Self::Scripted(s) => s.due().await,
        }
    }

    /// Appends the frames to send now; may append nothing.
    pub fn fill(&mut self, out: &mut Outbox) {
        match self {
            Self::Synthetic(s) => s.fill(out),
            Self::Scripted(s) => s.fill(out),
        }
    }

    /// The frames from the last [`ConnSource::fill`] were written and flushed.
    pub fn sent(&mut self) {
        match self {
            Self::Synthetic(_) => {}
            Self::Scripted(s) => s.sent(),
        }
    }

    pub fn subscriptions_changed(&mut self, session: &Session) {
        match self {
            Self::Synthetic(s) => s.subscriptions_changed(session),
            Self::Scripted(s) => s.subscriptions_changed(session),
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
}

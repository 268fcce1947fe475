//! Scripted frames: a fixed list, sent once, in order, for tests that must know exactly what
//! went over the wire.
//!
//! The rules:
//!
//! - A connection *qualifies* once it has subscribed to at least one symbol and to every
//!   symbol of the script's wait-for set (by default, every symbol its trade frames use).
//! - The first qualifying connection claims the script and is sent the frames in order.
//!   Other connections get no scripted frames while it holds the claim.
//! - A frame counts as sent once it has been written and flushed to the socket. If the
//!   owning connection closes or stops qualifying (unsubscribes), it gives up the claim and
//!   the next qualifying connection carries on from the first frame not yet counted. A
//!   frame flushed just before its client vanished is gone with that connection, as with
//!   any TCP server, so a test that needs every frame delivered keeps its client connected
//!   until the script is done.
//! - After the last frame the feed sends nothing more but pings; [`FeedHandle::script_done`]
//!   resolves.
//!
//! [`FeedHandle::script_done`]: super::FeedHandle::script_done

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use wire::finnhub::{Conditions, Trade, write_trade_frame};

use super::session::Session;
use super::source::Outbox;

/// Frames written per wake-up when the script is not paced: enough to stream quickly,
/// few enough that subscriptions and pongs are handled between batches.
const UNPACED_BATCH: usize = 64;

/// One trade of a script, owning its strings.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptTrade {
    pub symbol: String,
    pub price: f64,
    pub time_ms: u64,
    pub volume: f64,
    pub conditions: Vec<String>,
}

impl ScriptTrade {
    /// The trade in the form `wire::finnhub` writes and decodes.
    pub fn as_trade(&self) -> Trade<'_> {
        Trade {
            symbol: &self.symbol,
            price: self.price,
            time_ms: self.time_ms,
            volume: self.volume,
            conditions: self.conditions.iter().map(String::as_str).collect::<Conditions<'_>>(),
        }
    }
}

/// One frame of a script.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptFrame {
    /// A trade frame, written exactly as [`wire::finnhub::write_trade_frame`] writes it.
    Trades(Vec<ScriptTrade>),
    /// Any bytes, sent as a text frame as they are: malformed JSON, unknown message types,
    /// invalid numbers. The bytes are not checked to be UTF-8, so a test can also send the
    /// invalid UTF-8 a broken server might.
    Text(Vec<u8>),
}

impl ScriptFrame {
    /// The bytes this frame puts on the wire.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Trades(trades) => {
                let trades: Vec<Trade<'_>> = trades.iter().map(ScriptTrade::as_trade).collect();
                let mut out = Vec::new();
                write_trade_frame(&mut out, &trades);
                out
            }
            Self::Text(bytes) => bytes.clone(),
        }
    }

    fn trade_count(&self) -> usize {
        match self {
            Self::Trades(trades) => trades.len(),
            Self::Text(_) => 0,
        }
    }
}

/// A fixed list of frames and the rules for sending them (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    frames: Vec<ScriptFrame>,
    wait_for: Option<BTreeSet<String>>,
    pace: Option<Duration>,
}

impl Script {
    /// A script that waits for a client subscribed to every symbol its trades use, then
    /// sends the frames back to back.
    pub fn new(frames: impl IntoIterator<Item = ScriptFrame>) -> Self {
        Self { frames: frames.into_iter().collect(), wait_for: None, pace: None }
    }

    /// Waits for these symbols instead of those the trades use.
    pub fn wait_for<S: Into<String>>(mut self, symbols: impl IntoIterator<Item = S>) -> Self {
        self.wait_for = Some(symbols.into_iter().map(Into::into).collect());
        self
    }

    /// Leaves `gap` between frames instead of sending them back to back.
    pub fn pace(mut self, gap: Duration) -> Self {
        self.pace = Some(gap);
        self
    }

    pub fn frames(&self) -> &[ScriptFrame] {
        &self.frames
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The symbols a connection must hold before the script starts.
    pub fn wait_for_symbols(&self) -> BTreeSet<String> {
        match &self.wait_for {
            Some(symbols) => symbols.clone(),
            None => self
                .frames
                .iter()
                .filter_map(|f| match f {
                    ScriptFrame::Trades(trades) => Some(trades),
                    ScriptFrame::Text(_) => None,
                })
                .flatten()
                .map(|t| t.symbol.clone())
                .collect(),
        }
    }
}

/// A script frame encoded once, up front.
#[derive(Debug)]
struct EncodedFrame {
    bytes: Vec<u8>,
    trades: usize,
}

/// Who is sending the script and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScriptState {
    /// The first frame not yet counted as sent.
    next: usize,
    /// The connection holding the claim.
    owner: Option<u64>,
}

/// The script as every connection and the feed handle share it.
#[derive(Debug)]
pub(crate) struct ScriptShared {
    frames: Vec<EncodedFrame>,
    wait_for: Vec<String>,
    pace: Option<Duration>,
    state: watch::Sender<ScriptState>,
}

impl ScriptShared {
    pub fn new(script: Script) -> Self {
        let wait_for = script.wait_for_symbols().into_iter().collect();
        let frames = script
            .frames
            .iter()
            .map(|f| EncodedFrame { bytes: f.encode(), trades: f.trade_count() })
            .collect();
        let (state, _) = watch::channel(ScriptState { next: 0, owner: None });
        Self { frames, wait_for, pace: script.pace, state }
    }

    pub fn frames_sent(&self) -> usize {
        self.state.borrow().next
    }

    /// Resolves once every frame has been sent.
    pub async fn done(&self) {
        let len = self.frames.len();
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while this runs.
        let _ = rx.wait_for(|s| s.next >= len).await;
    }
}

/// One connection's side of the script.
pub(crate) struct ScriptedSender {
    shared: Arc<ScriptShared>,
    rx: watch::Receiver<ScriptState>,
    conn: u64,
    qualified: bool,
    in_flight: usize,
    next_due: Instant,
}

impl ScriptedSender {
    pub fn new(shared: Arc<ScriptShared>, conn: u64) -> Self {
        let rx = shared.state.subscribe();
        Self { shared, rx, conn, qualified: false, in_flight: 0, next_due: Instant::now() }
    }

    /// Waits until this connection may send the next frame. Cancel-safe: it only watches.
    pub async fn due(&mut self) {
        if !self.qualified {
            std::future::pending::<()>().await;
        }
        let (me, len) = (self.conn, self.shared.frames.len());
        let free = self.rx.wait_for(|s| s.next < len && s.owner.is_none_or(|o| o == me));
        // Only whether it closed matters; the guard it returns must not live across an await.
        if free.await.is_err() {
            // The sender lives in `shared`, which this struct holds; never closed in practice.
            std::future::pending::<()>().await;
        }
        if self.shared.pace.is_some() {
            tokio::time::sleep_until(self.next_due).await;
        }
    }

    /// Claims the script if it is free and appends the next frames.
    pub fn fill(&mut self, out: &mut Outbox) {
        if !self.qualified {
            return;
        }
        let (me, len) = (self.conn, self.shared.frames.len());
        let mut start = None;
        self.shared.state.send_if_modified(|s| {
            if s.next >= len || s.owner.is_some_and(|o| o != me) {
                return false;
            }
            start = Some(s.next);
            s.owner.replace(me) != Some(me)
        });
        let Some(start) = start else { return };
        let batch = if self.shared.pace.is_some() { 1 } else { UNPACED_BATCH };
        let end = (start + batch).min(len);
        for frame in &self.shared.frames[start..end] {
            out.push_encoded(&frame.bytes, frame.trades);
        }
        self.in_flight = end - start;
    }

    /// The frames of the last fill reached the socket: count them, and give up the claim
    /// after the last one.
    pub fn sent(&mut self) {
        let sent = std::mem::take(&mut self.in_flight);
        if sent == 0 {
            return;
        }
        let len = self.shared.frames.len();
        self.shared.state.send_modify(|s| {
            s.next += sent;
            if s.next >= len {
                s.owner = None;
            }
        });
        if let Some(gap) = self.shared.pace {
            self.next_due = Instant::now() + gap;
        }
    }

    pub fn subscriptions_changed(&mut self, session: &Session) {
        self.qualified =
            !session.is_empty() && self.shared.wait_for.iter().all(|s| session.contains(s));
        if !self.qualified {
            self.release();
        }
    }

    fn release(&mut self) {
        self.in_flight = 0;
        let me = self.conn;
        self.shared.state.send_if_modified(|s| s.owner.take_if(|o| *o == me).is_some());
    }
}

impl Drop for ScriptedSender {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::stats::Counters;

    fn trade(symbol: &str, n: u64) -> ScriptTrade {
        ScriptTrade {
            symbol: symbol.into(),
            price: 100.0 + n as f64,
            time_ms: 1_700_000_000_000 + n,
            volume: n as f64,
            conditions: vec![],
        }
    }

    fn session(symbols: &[&str]) -> Session {
        let mut s = Session::new(None, None, Arc::new(Counters::default()));
        for sym in symbols {
            s.subscribe((*sym).to_owned()).unwrap();
        }
        s
    }

    #[test]
    fn wait_for_defaults_to_the_traded_symbols() {
        let script = Script::new([
            ScriptFrame::Trades(vec![trade("B", 1), trade("A", 2)]),
            ScriptFrame::Text(b"junk".to_vec()),
        ]);
        assert_eq!(script.wait_for_symbols().into_iter().collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(script.clone().wait_for(["Z"]).wait_for_symbols().len(), 1);
    }

    #[tokio::test]
    async fn one_owner_at_a_time_and_unsent_frames_pass_on() {
        let frames = (0..3).map(|n| ScriptFrame::Trades(vec![trade("A", n)]));
        let shared = Arc::new(ScriptShared::new(Script::new(frames).pace(Duration::ZERO)));
        let mut first = ScriptedSender::new(shared.clone(), 1);
        let mut second = ScriptedSender::new(shared.clone(), 2);
        let mut out = Outbox::default();

        // Not subscribed: nothing to claim.
        first.fill(&mut out);
        assert!(out.is_empty());

        first.subscriptions_changed(&session(&["A"]));
        second.subscriptions_changed(&session(&["A"]));
        first.fill(&mut out);
        assert_eq!(out.frame_count(), 1);
        first.sent();
        out.clear();

        // The second connection cannot take the script from the first.
        second.fill(&mut out);
        assert!(out.is_empty());

        // The first takes frame 1 but dies before it is flushed: frame 1 passes on.
        first.fill(&mut out);
        out.clear();
        drop(first);
        second.fill(&mut out);
        second.sent();
        second.fill(&mut out);
        second.sent();
        let expected: Vec<Vec<u8>> =
            (1..3).map(|n| ScriptFrame::Trades(vec![trade("A", n)]).encode()).collect();
        assert_eq!(out.frames().map(<[u8]>::to_vec).collect::<Vec<_>>(), expected);
        assert_eq!(shared.frames_sent(), 3);
        tokio::time::timeout(Duration::from_secs(5), shared.done()).await.unwrap();
    }
}

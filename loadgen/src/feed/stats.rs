//! The feed's live counters, the snapshot [`FeedStats`] read from them, and the
//! [`FeedHandle`] through which a caller watches a running feed.
//!
//! Counters are plain atomics bumped once per written batch, never once per trade, so a
//! feed sending a million trades a second does not contend on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::scripted::ScriptShared;

/// Counters shared by the accept loop and every connection.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    pub websocket_sessions: AtomicU64,
    pub handshakes_rejected: AtomicU64,
    pub subscriptions: AtomicU64,
    pub frames_sent: AtomicU64,
    pub trades_sent: AtomicU64,
    pub pings_sent: AtomicU64,
    pub error_frames_sent: AtomicU64,
    pub malformed_messages: AtomicU64,
    pub connections_dropped: AtomicU64,
    pub malformed_frames_sent: AtomicU64,
    pub stalls: AtomicU64,
    pub connections_silenced: AtomicU64,
    pub replay_passes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        // Relaxed: each counter is independent and only read for reporting.
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FeedStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FeedStats {
            connections_accepted: get(&self.connections_accepted),
            connections_open: get(&self.connections_open),
            websocket_sessions: get(&self.websocket_sessions),
            handshakes_rejected: get(&self.handshakes_rejected),
            subscriptions: get(&self.subscriptions),
            frames_sent: get(&self.frames_sent),
            trades_sent: get(&self.trades_sent),
            pings_sent: get(&self.pings_sent),
            error_frames_sent: get(&self.error_frames_sent),
            malformed_messages: get(&self.malformed_messages),
            connections_dropped: get(&self.connections_dropped),
            malformed_frames_sent: get(&self.malformed_frames_sent),
            stalls: get(&self.stalls),
            connections_silenced: get(&self.connections_silenced),
            replay_passes: get(&self.replay_passes),
        }
    }
}

/// A snapshot of the feed's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FeedStats {
    /// TCP connections accepted, whether or not they became websockets.
    pub connections_accepted: u64,
    /// Websocket connections open now.
    pub connections_open: u64,
    /// Websocket connections ever opened (successful upgrades).
    pub websocket_sessions: u64,
    /// HTTP requests refused before the upgrade: wrong token, not a websocket request.
    pub handshakes_rejected: u64,
    /// Symbols subscribed now, summed over open connections.
    pub subscriptions: u64,
    /// Data frames sent: trade frames and scripted text frames. Pings, errors and injected
    /// malformed frames excluded.
    pub frames_sent: u64,
    /// Trades inside the trade frames sent.
    pub trades_sent: u64,
    /// `{"type":"ping"}` frames sent.
    pub pings_sent: u64,
    /// Error frames sent: invalid symbols, too many symbols.
    pub error_frames_sent: u64,
    /// Client messages that were not a valid subscribe or unsubscribe, ignored.
    pub malformed_messages: u64,
    /// Connections closed abruptly by the drop fault.
    pub connections_dropped: u64,
    /// Malformed frames inserted by the malformed fault.
    pub malformed_frames_sent: u64,
    /// Stalls begun by the stall fault.
    pub stalls: u64,
    /// Connections that went silent for good by the silence fault.
    pub connections_silenced: u64,
    /// Passes over a replayed capture begun, summed over connections.
    pub replay_passes: u64,
}

/// A cheap, cloneable view of a running feed.
#[derive(Clone)]
pub struct FeedHandle {
    counters: Arc<Counters>,
    script: Option<Arc<ScriptShared>>,
}

impl FeedHandle {
    pub(crate) fn new(counters: Arc<Counters>, script: Option<Arc<ScriptShared>>) -> Self {
        Self { counters, script }
    }

    /// The counters as they are now.
    pub fn stats(&self) -> FeedStats {
        self.counters.snapshot()
    }

    /// Scripted frames written so far; zero when the feed is not scripted.
    pub fn script_frames_sent(&self) -> usize {
        self.script.as_ref().map_or(0, |s| s.frames_sent())
    }

    /// Resolves once every scripted frame has been written to a client (or at once when the
    /// feed is not scripted, since it then has nothing to finish).
    pub async fn script_done(&self) {
        if let Some(script) = &self.script {
            script.done().await;
        }
    }
}

/// Logs one INFO line every `every`: open connections, subscribed symbols and the rates of
/// the last period. Runs until dropped.
pub async fn log_progress(handle: FeedHandle, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    // The first tick completes at once; skip it so the first line covers a full period.
    ticker.tick().await;
    let mut last = handle.stats();
    let mut last_at = Instant::now();
    loop {
        ticker.tick().await;
        let now = handle.stats();
        let secs = last_at.elapsed().as_secs_f64().max(f64::EPSILON);
        last_at = Instant::now();
        let per_sec = |new: u64, old: u64| (new.saturating_sub(old)) as f64 / secs;
        tracing::info!(
            connections = now.connections_open,
            subscriptions = now.subscriptions,
            trades_per_sec = per_sec(now.trades_sent, last.trades_sent).round() as u64,
            frames_per_sec = per_sec(now.frames_sent, last.frames_sent).round() as u64,
            trades_sent = now.trades_sent,
            "feed progress"
        );
        last = now;
    }
}

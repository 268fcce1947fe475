//! Faults the feed injects into every connection, to exercise a client's recovery paths.
//!
//! All timers count from the moment the connection upgraded to a websocket:
//!
//! - *drop* (`--drop-every`): the connection's socket is closed after each interval,
//!   without a websocket close frame, as a crashed server or a broken network would.
//!   Each connection lives one interval; the client must reconnect.
//! - *malformed* (`--malformed-rate`): before each real frame, malformed frames are
//!   inserted so that about this fraction of all data frames is malformed: truncated JSON,
//!   an invalid number, or an unknown message type. Real frames are never altered.
//! - *stall* (`--stall-every`, `--stall-for`): the connection stops writing anything,
//!   pings included, then carries on. What the source owed meanwhile is paid back up to its
//!   usual one-second backlog.
//! - *silence* (`--silence-after`): the connection stops writing forever, pings included,
//!   and stays open until the client gives up on it.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The highest malformed rate accepted: at 1 no real frame would ever go out.
pub const MAX_MALFORMED_RATE: f64 = 0.9;

/// The shortest fault interval accepted; shorter would not let a connection do anything.
pub const MIN_FAULT_INTERVAL: Duration = Duration::from_millis(10);

/// Malformed frames inserted before one real frame at most, however the dice fall.
const MAX_MALFORMED_RUN: usize = 64;

/// An invalid number where a price belongs (JSON numbers cannot start with a dot).
const INVALID_NUMBER: &[u8] =
    br#"{"data":[{"c":null,"p":.5,"s":"AAPL","t":1700000000000,"v":1}],"type":"trade"}"#;

/// A well-formed frame of a type Finnhub does not send on this socket.
const UNKNOWN_TYPE: &[u8] = br#"{"type":"news","data":[]}"#;

/// Which faults to inject; the default injects none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Close each connection abruptly after this long.
    pub drop_every: Option<Duration>,
    /// Fraction of data frames that are malformed, from 0 to [`MAX_MALFORMED_RATE`].
    pub malformed_rate: f64,
    /// Stop writing for a while, periodically.
    pub stall: Option<Stall>,
    /// Stop writing forever after this long.
    pub silence_after: Option<Duration>,
    /// Seeds where the malformed frames fall; connection `n` derives its own.
    pub seed: u64,
}

impl Faults {
    pub fn any(&self) -> bool {
        self.drop_every.is_some()
            || self.malformed_rate > 0.0
            || self.stall.is_some()
            || self.silence_after.is_some()
    }
}

/// Periodic stalls: every `every`, nothing is written for `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub every: Duration,
    pub length: Duration,
}

/// One connection's fault timers and malformed-frame dice.
pub(crate) struct ConnFaults {
    pub drop_at: Option<Instant>,
    pub silence_at: Option<Instant>,
    stall: Option<Stall>,
    /// The next stall's start, or while stalled, its end.
    pub stall_at: Option<Instant>,
    pub stalled: bool,
    pub silent: bool,
    malformer: Option<Malformer>,
}

impl ConnFaults {
    pub fn new(faults: &Faults, conn_id: u64, connected: Instant) -> Self {
        // Keeps connections' dice apart; any odd constant will do.
        const SPREAD: u64 = 0xd134_2543_de82_ef95;
        let malformer = (faults.malformed_rate > 0.0).then(|| Malformer {
            rate: faults.malformed_rate,
            rng: SmallRng::seed_from_u64(faults.seed ^ conn_id.wrapping_mul(SPREAD)),
            next_kind: 0,
        });
        Self {
            drop_at: faults.drop_every.map(|d| connected + d),
            silence_at: faults.silence_after.map(|d| connected + d),
            stall: faults.stall,
            stall_at: faults.stall.map(|s| connected + s.every),
            stalled: false,
            silent: false,
            malformer,
        }
    }

    /// A stall begins or ends now; returns whether it began.
    pub fn toggle_stall(&mut self) -> bool {
        let (Some(stall), Some(at)) = (self.stall, self.stall_at) else { return false };
        self.stalled = !self.stalled;
        // Stalls start on the `every` grid, whatever their length.
        self.stall_at =
            Some(if self.stalled { at + stall.length } else { at - stall.length + stall.every });
        self.stalled
    }

    /// Whether any malformed frames are to be mixed in.
    pub fn malforms(&self) -> bool {
        self.malformer.is_some()
    }

    /// How many malformed frames go before the next real one. Each coin that comes up
    /// `rate` adds one and the first miss stops, so the count is geometric with mean
    /// `rate / (1 - rate)`, and malformed frames make up `rate` of all frames.
    pub fn malformed_before(&mut self) -> usize {
        let Some(m) = &mut self.malformer else { return 0 };
        let mut n = 0;
        while n < MAX_MALFORMED_RUN && m.rng.random_bool(m.rate) {
            n += 1;
        }
        n
    }

    /// Writes one malformed frame, shaped after `real`, into `out`.
    pub fn malformed(&mut self, real: &[u8], out: &mut Vec<u8>) {
        let Some(m) = &mut self.malformer else { return };
        m.write(real, out);
    }
}

/// Picks and writes malformed frames.
struct Malformer {
    rate: f64,
    rng: SmallRng,
    next_kind: usize,
}

impl Malformer {
    /// Cycles through truncated JSON, an invalid number and an unknown type.
    fn write(&mut self, real: &[u8], out: &mut Vec<u8>) {
        let kind = self.next_kind;
        self.next_kind = (self.next_kind + 1) % 3;
        match kind {
            0 if real.len() >= 2 => {
                // Cut somewhere inside, at a character boundary: text frames must stay
                // valid UTF-8 or the client drops the whole connection instead.
                let mut cut = self.rng.random_range(1..real.len());
                while cut > 1 && (real[cut] & 0xC0) == 0x80 {
                    cut -= 1;
                }
                out.extend_from_slice(&real[..cut]);
            }
            0 | 1 => out.extend_from_slice(INVALID_NUMBER),
            _ => out.extend_from_slice(UNKNOWN_TYPE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::finnhub::{Frame, decode};

    #[test]
    fn malformed_frames_never_decode_as_trades_and_stay_utf8() {
        let faults = Faults { malformed_rate: 0.5, ..Faults::default() };
        let mut conn = ConnFaults::new(&faults, 3, Instant::now());
        let real =
            r#"{"data":[{"c":null,"p":1.5,"s":"ÄÖ","t":1700000000000,"v":1}],"type":"trade"}"#;
        for _ in 0..300 {
            let mut out = Vec::new();
            conn.malformed(real.as_bytes(), &mut out);
            assert!(std::str::from_utf8(&out).is_ok());
            assert!(!matches!(decode(&mut out), Ok(Frame::Trades(_)) | Ok(Frame::Ping)));
        }
    }

    #[test]
    fn the_malformed_share_matches_the_rate() {
        let faults = Faults { malformed_rate: 0.2, seed: 5, ..Faults::default() };
        let mut conn = ConnFaults::new(&faults, 0, Instant::now());
        let real = 20_000;
        let malformed: usize = (0..real).map(|_| conn.malformed_before()).sum();
        let share = malformed as f64 / (malformed + real) as f64;
        assert!((share - 0.2).abs() < 0.01, "{share}");
        let none = ConnFaults::new(&Faults::default(), 0, Instant::now());
        assert!(!none.malforms());
    }

    #[test]
    fn stalls_start_on_their_grid() {
        let t0 = Instant::now();
        let stall = Stall { every: Duration::from_secs(10), length: Duration::from_secs(3) };
        let faults = Faults { stall: Some(stall), ..Faults::default() };
        let mut conn = ConnFaults::new(&faults, 0, t0);
        let secs = |s| Some(t0 + Duration::from_secs(s));
        assert_eq!(conn.stall_at, secs(10));
        assert!(conn.toggle_stall());
        assert_eq!(conn.stall_at, secs(13));
        assert!(!conn.toggle_stall());
        assert_eq!(conn.stall_at, secs(20));
    }
}

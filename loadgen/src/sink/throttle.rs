//! The per-shard write limiter: records/s and bytes/s over a sliding one-second window.
//!
//! A token bucket that holds one second of tokens lets twice the rate through in some
//! one-second windows (a full bucket spent at once, then a second's refill). The quota is
//! stated per second and the sink's tests check it over every one-second window, so the
//! limiter keeps the writes of the last second instead and admits a record only while the
//! window, with that record, stays within both limits. Long-run throughput is the same as
//! a token bucket's; bursts are bounded by the limit itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ShardLimits;

/// The window the limits are stated over.
const WINDOW: Duration = Duration::from_secs(1);

/// What one shard accepted during the last second.
#[derive(Debug, Default)]
pub struct Window {
    /// Writes, oldest first, merged when they share an instant (one request's records).
    writes: VecDeque<Write>,
    records: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Write {
    at: Instant,
    records: u64,
    bytes: u64,
}

impl Window {
    /// Admits a record of `bytes` at `now` if the window allows it, and counts it.
    /// `now` must not go backwards between calls.
    pub fn admit(&mut self, limits: &ShardLimits, now: Instant, bytes: usize) -> bool {
        self.expire(now);
        let bytes = bytes as u64;
        if self.records + 1 > u64::from(limits.records_per_sec)
            || self.bytes + bytes > u64::from(limits.bytes_per_sec)
        {
            return false;
        }
        self.records += 1;
        self.bytes += bytes;
        match self.writes.back_mut() {
            Some(last) if last.at == now => {
                last.records += 1;
                last.bytes += bytes;
            }
            _ => self.writes.push_back(Write { at: now, records: 1, bytes }),
        }
        true
    }

    /// Forgets writes a full window old: the window is `(now - 1s, now]`.
    fn expire(&mut self, now: Instant) {
        while let Some(first) = self.writes.front() {
            if now.saturating_duration_since(first.at) < WINDOW {
                break;
            }
            self.records -= first.records;
            self.bytes -= first.bytes;
            self.writes.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ShardLimits = ShardLimits { records_per_sec: 10, bytes_per_sec: 1000 };

    #[test]
    fn a_burst_gets_exactly_the_limit() {
        let mut w = Window::default();
        let t0 = Instant::now();
        let admitted = (0..25).filter(|_| w.admit(&LIMITS, t0, 1)).count();
        assert_eq!(admitted, 10);
        // Still inside the same second: nothing more.
        assert!(!w.admit(&LIMITS, t0 + Duration::from_millis(999), 1));
        // A full second after the burst, the window is empty again.
        assert!(w.admit(&LIMITS, t0 + WINDOW, 1));
    }

    #[test]
    fn bytes_limit_the_window_too() {
        let mut w = Window::default();
        let t0 = Instant::now();
        assert!(w.admit(&LIMITS, t0, 600));
        assert!(!w.admit(&LIMITS, t0, 401));
        assert!(w.admit(&LIMITS, t0, 400));
        // The byte budget is spent; an empty record still fits, a byte more does not.
        assert!(w.admit(&LIMITS, t0, 0));
        assert!(!w.admit(&LIMITS, t0, 1));
    }

    #[test]
    fn no_one_second_window_ever_exceeds_the_limit() {
        // Offer a record every 7 ms for 5 s and check every window of admitted times.
        let mut w = Window::default();
        let t0 = Instant::now();
        let admitted: Vec<Instant> = (0..715u64)
            .map(|i| t0 + Duration::from_millis(7 * i))
            .filter(|&t| w.admit(&LIMITS, t, 1))
            .collect();
        for (i, &start) in admitted.iter().enumerate() {
            let in_window = admitted[i..].iter().take_while(|&&t| t - start < WINDOW).count();
            assert!(in_window <= 10, "{in_window} records in the second after {i}");
        }
        // And the limiter is not stingy: about 10/s over 5 s.
        assert!(admitted.len() >= 45, "{}", admitted.len());
    }
}

//! A shard's write budget: token buckets for records and bytes, and throttle feedback.
//!
//! Kinesis accepts 1,000 records/s and 1 MiB/s per shard. The service of each shard
//! spends from two token buckets refilled at a configured fraction of those limits, so a
//! busy shard runs just under its limit instead of bouncing off it. When Kinesis still
//! throttles (another producer writes to the stream, or the limits are not what we
//! assumed), the bucket's rate is halved; every fully accepted request then adds back a
//! small step until the configured rate is reached again.

use std::time::{Duration, Instant};

/// Seconds of the rate a bucket holds. Kinesis measures its limits over one-second
/// windows. What one window can see is the steady rate, plus this burst, plus the one
/// request that overdrew the bucket (see [`ShardLimiter::reserve`]); with the default
/// rate fraction (0.9) and request sizes (50 records, 50 KiB) that stays under the limit.
const BURST_SECS: f64 = 0.05;

/// Lowest share of the configured rate the feedback may cut to.
const MIN_FACTOR: f64 = 1.0 / 32.0;
/// Share of the configured rate regained per accepted request.
const RECOVERY_STEP: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct ShardLimiter {
    records_per_sec: f64,
    bytes_per_sec: f64,
    record_tokens: f64,
    byte_tokens: f64,
    /// Multiplier on both rates, lowered by throttling and raised by success.
    factor: f64,
    last: Instant,
}

impl ShardLimiter {
    /// A limiter allowing `records_per_sec` and `bytes_per_sec`, with a small burst.
    pub fn new(records_per_sec: f64, bytes_per_sec: f64, now: Instant) -> Self {
        Self {
            records_per_sec,
            bytes_per_sec,
            record_tokens: records_per_sec * BURST_SECS,
            byte_tokens: bytes_per_sec * BURST_SECS,
            factor: 1.0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let (r, b) = (self.records_per_sec * self.factor, self.bytes_per_sec * self.factor);
        self.record_tokens = (self.record_tokens + dt * r).min(r * BURST_SECS);
        self.byte_tokens = (self.byte_tokens + dt * b).min(b * BURST_SECS);
    }

    /// Takes the budget for a request of `records` records and `bytes` bytes, and returns
    /// how long to wait before sending it. The budget is taken at once (the bucket may go
    /// negative) so that a request larger than one second's burst still goes out, after
    /// the proportional wait, instead of waiting forever.
    pub fn reserve(&mut self, records: usize, bytes: usize, now: Instant) -> Duration {
        self.refill(now);
        self.record_tokens -= records as f64;
        self.byte_tokens -= bytes as f64;
        let r = self.records_per_sec * self.factor;
        let b = self.bytes_per_sec * self.factor;
        let wait_r = if self.record_tokens < 0.0 { -self.record_tokens / r } else { 0.0 };
        let wait_b = if self.byte_tokens < 0.0 { -self.byte_tokens / b } else { 0.0 };
        Duration::from_secs_f64(wait_r.max(wait_b))
    }

    /// Kinesis refused records for throughput: halve the rate and empty the buckets.
    pub fn throttled(&mut self) {
        self.factor = (self.factor / 2.0).max(MIN_FACTOR);
        self.record_tokens = self.record_tokens.min(0.0);
        self.byte_tokens = self.byte_tokens.min(0.0);
    }

    /// A request went through without throttling: recover a step towards the full rate.
    pub fn accepted(&mut self) {
        self.factor = (self.factor + RECOVERY_STEP).min(1.0);
    }

    /// The current share of the configured rate, for the utilisation gauge.
    pub fn factor(&self) -> f64 {
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the request sizes, what is sent in any one-second window never exceeds
        /// the burst plus one second of rate plus the one request that overdrew it.
        #[test]
        fn sends_stay_under_the_limit_in_every_window(
            sizes in prop::collection::vec((1usize..500, 100usize..300_000), 1..300),
        ) {
            let start = Instant::now();
            let mut l = ShardLimiter::new(1000.0, 1_048_576.0, start);
            let mut now = start;
            let mut sends = Vec::new();
            for (records, bytes) in sizes {
                let wait = l.reserve(records, bytes, now);
                now += wait;
                sends.push((now, records, bytes));
            }
            for (i, (t0, _, _)) in sends.iter().enumerate() {
                let window: Vec<_> = sends[i..].iter().take_while(|(t, _, _)| *t < *t0 + Duration::from_secs(1)).collect();
                let recs: usize = window.iter().map(|s| s.1).sum();
                let bytes: usize = window.iter().map(|s| s.2).sum();
                prop_assert!(recs <= 1050 + 500, "{recs} records in one second");
                prop_assert!(bytes <= 1_101_005 + 300_000, "{bytes} bytes in one second");
            }
        }
    }

    #[test]
    fn steady_rate_converges_to_the_limit() {
        let start = Instant::now();
        let mut l = ShardLimiter::new(1000.0, 1e9, start);
        let mut now = start;
        let mut sent = 0;
        // Drain the burst, then measure ten seconds of steady sending.
        now += l.reserve(50, 0, now);
        let t0 = now;
        while now < t0 + Duration::from_secs(10) {
            now += l.reserve(100, 0, now);
            sent += 100;
        }
        assert!((9_900..=10_100).contains(&sent), "sent {sent} in 10 s");
    }

    #[test]
    fn throttling_halves_and_success_recovers() {
        let now = Instant::now();
        let mut l = ShardLimiter::new(1000.0, 1e6, now);
        l.throttled();
        l.throttled();
        assert_eq!(l.factor(), 0.25);
        // After throttling the bucket is empty: the next request waits at the lower rate.
        let wait = l.reserve(250, 0, now);
        assert!(wait >= Duration::from_millis(990), "{wait:?}");
        assert!(wait <= Duration::from_millis(1010), "{wait:?}");
        for _ in 0..100 {
            l.accepted();
        }
        assert_eq!(l.factor(), 1.0);
        for _ in 0..100 {
            l.throttled();
        }
        assert_eq!(l.factor(), MIN_FACTOR);
    }
}

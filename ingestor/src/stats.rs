//! What the ingestor counts, and its Prometheus text rendering.
//!
//! Counters are plain atomics owned by one ingestor instance rather than a process-wide
//! metrics registry, so that two ingestors in one test process never mix their numbers,
//! and the shutdown report reads the same values the endpoint serves. Each counter is
//! bumped once per frame or per batch, never per trade inside a loop.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};

use hdrhistogram::Histogram;
use tokio::sync::Notify;

/// Why trades or frames were not passed on. The label values are a small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// A frame that is not JSON of the expected shape.
    Malformed,
    /// A frame without a `type`.
    MissingType,
    /// A well-formed frame of a type the ingestor does not know.
    UnknownType,
    /// A websocket message above the size cap.
    Oversized,
    /// A non-text websocket message.
    Binary,
}

impl Rejected {
    const ALL: [Rejected; 5] =
        [Self::Malformed, Self::MissingType, Self::UnknownType, Self::Oversized, Self::Binary];

    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::MissingType => "missing_type",
            Self::UnknownType => "unknown_type",
            Self::Oversized => "oversized",
            Self::Binary => "binary",
        }
    }
}

/// Why received trades were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Kinesis kept refusing them until the attempts ran out.
    RetriesExhausted,
    /// Kinesis refused them with an error that retrying cannot fix.
    Rejected,
    /// Still buffered or in flight when the shutdown deadline passed.
    ShutdownDeadline,
    /// One trade larger than a whole Kinesis record.
    TooLarge,
    /// Waited longer than the configured record time to live.
    Expired,
}

impl Dropped {
    const ALL: [Dropped; 5] = [
        Self::RetriesExhausted,
        Self::Rejected,
        Self::ShutdownDeadline,
        Self::TooLarge,
        Self::Expired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::RetriesExhausted => "retries_exhausted",
            Self::Rejected => "rejected",
            Self::ShutdownDeadline => "shutdown_deadline",
            Self::TooLarge => "too_large",
            Self::Expired => "expired",
        }
    }
}

/// Highest latency the histogram tracks, in microseconds (one hour).
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Counters of one ingestor instance.
#[derive(Debug)]
pub struct Stats {
    pub frames: AtomicU64,
    pub pings: AtomicU64,
    pub server_errors: AtomicU64,
    rejected_frames: [AtomicU64; Rejected::ALL.len()],
    /// Valid trades received and handed to the producer.
    pub trades_received: AtomicU64,
    /// Well-formed trades refused by validation (empty symbol, negative price...).
    pub trades_invalid: AtomicU64,
    pub trades_acked: AtomicU64,
    dropped: [AtomicU64; Dropped::ALL.len()],
    pub kinesis_records_put: AtomicU64,
    pub kinesis_bytes_put: AtomicU64,
    pub put_requests: AtomicU64,
    pub records_throttled: AtomicU64,
    pub records_retried: AtomicU64,
    /// Requests that timed out or failed in transport; their records may have been written.
    pub requests_uncertain: AtomicU64,
    pub shard_mispredictions: AtomicU64,
    pub reconnects: AtomicU64,
    pub backpressure_waits: AtomicU64,
    /// Bytes of user records handed to the producer and not yet acknowledged or dropped.
    pub buffered_bytes: AtomicI64,
    pub in_flight_requests: AtomicI64,
    /// Open shards in the current shard map.
    pub shards: AtomicUsize,
    /// Signalled whenever buffered bytes are released, to wake a waiting reader.
    pub released: Notify,
    latency_us: Mutex<Histogram<u64>>,
    /// Per shard: what was written, and the pacing's current share of the limit.
    per_shard: Mutex<BTreeMap<String, ShardUse>>,
}

/// What one shard took, for utilisation: its rate over the shard limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ShardUse {
    records: u64,
    bytes: u64,
    rate_factor: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            frames: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            rejected_frames: Default::default(),
            trades_received: AtomicU64::new(0),
            trades_invalid: AtomicU64::new(0),
            trades_acked: AtomicU64::new(0),
            dropped: Default::default(),
            kinesis_records_put: AtomicU64::new(0),
            kinesis_bytes_put: AtomicU64::new(0),
            put_requests: AtomicU64::new(0),
            records_throttled: AtomicU64::new(0),
            records_retried: AtomicU64::new(0),
            requests_uncertain: AtomicU64::new(0),
            shard_mispredictions: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            backpressure_waits: AtomicU64::new(0),
            buffered_bytes: AtomicI64::new(0),
            in_flight_requests: AtomicI64::new(0),
            shards: AtomicUsize::new(0),
            released: Notify::new(),
            per_shard: Mutex::new(BTreeMap::new()),
            latency_us: Mutex::new(
                Histogram::new_with_max(LATENCY_MAX_US, 3)
                    .expect("3 significant digits up to one hour is a valid histogram"),
            ),
        }
    }
}

/// A point-in-time copy of the counters that matter for a run's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub received: u64,
    pub acked: u64,
    pub dropped: u64,
    pub invalid: u64,
    pub rejected_frames: u64,
}

impl Summary {
    /// Trades received but neither acknowledged nor counted as dropped.
    pub fn unaccounted(&self) -> u64 {
        self.received.saturating_sub(self.acked + self.dropped)
    }

    /// True when every received trade was acknowledged by Kinesis.
    pub fn lossless(&self) -> bool {
        self.dropped == 0 && self.acked >= self.received
    }
}

impl Stats {
    pub fn reject_frame(&self, why: Rejected) {
        self.rejected_frames[why as usize].fetch_add(1, Relaxed);
    }

    pub fn rejected_frames(&self, why: Rejected) -> u64 {
        self.rejected_frames[why as usize].load(Relaxed)
    }

    /// Records one request wrote to `shard`, and the shard's pacing factor after it.
    /// Called once per request.
    pub fn shard_put(&self, shard: &str, records: u64, bytes: u64, rate_factor: f64) {
        let mut map = self.per_shard.lock().expect("no code panics while holding this lock");
        let entry = map.entry(shard.to_owned()).or_default();
        entry.records += records;
        entry.bytes += bytes;
        entry.rate_factor = rate_factor;
    }

    /// Bytes of user records that left the producer (acknowledged or dropped).
    pub fn release(&self, bytes: usize) {
        self.buffered_bytes.fetch_sub(bytes as i64, Relaxed);
        self.released.notify_waiters();
    }

    pub fn drop_trades(&self, why: Dropped, n: u64) {
        self.dropped[why as usize].fetch_add(n, Relaxed);
    }

    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped[why as usize].load(Relaxed)
    }

    /// Records receive-to-acknowledge latencies of one acknowledged batch.
    pub fn record_latencies(&self, now_us: u64, receive_times_us: impl Iterator<Item = u64>) {
        let mut h = self.latency_us.lock().expect("no code panics while holding this lock");
        for rt in receive_times_us {
            h.saturating_record(now_us.saturating_sub(rt).min(LATENCY_MAX_US));
        }
    }

    /// Latency at quantile `q` (0.0 to 1.0), in microseconds.
    pub fn latency_quantile_us(&self, q: f64) -> u64 {
        let h = self.latency_us.lock().expect("no code panics while holding this lock");
        h.value_at_quantile(q)
    }

    pub fn summary(&self) -> Summary {
        Summary {
            received: self.trades_received.load(Relaxed),
            acked: self.trades_acked.load(Relaxed),
            dropped: Dropped::ALL.iter().map(|d| self.dropped(*d)).sum(),
            invalid: self.trades_invalid.load(Relaxed),
            rejected_frames: Rejected::ALL.iter().map(|r| self.rejected_frames(*r)).sum(),
        }
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let shards = self.shards.load(Relaxed);
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter("tickpipe_frames_total", "Websocket frames read.", self.frames.load(Relaxed));
        counter("tickpipe_pings_total", "Finnhub ping frames.", self.pings.load(Relaxed));
        counter(
            "tickpipe_server_errors_total",
            "Error frames sent by the feed.",
            self.server_errors.load(Relaxed),
        );
        counter(
            "tickpipe_trades_received_total",
            "Valid trades received.",
            self.trades_received.load(Relaxed),
        );
        counter(
            "tickpipe_trades_invalid_total",
            "Well-formed trades refused by validation.",
            self.trades_invalid.load(Relaxed),
        );
        counter(
            "tickpipe_trades_acked_total",
            "Trades acknowledged by Kinesis.",
            self.trades_acked.load(Relaxed),
        );
        counter(
            "tickpipe_kinesis_records_put_total",
            "Kinesis records (aggregated or plain) acknowledged.",
            self.kinesis_records_put.load(Relaxed),
        );
        counter(
            "tickpipe_kinesis_bytes_put_total",
            "Bytes of data and partition keys acknowledged.",
            self.kinesis_bytes_put.load(Relaxed),
        );
        counter(
            "tickpipe_put_requests_total",
            "PutRecords requests sent.",
            self.put_requests.load(Relaxed),
        );
        counter(
            "tickpipe_records_throttled_total",
            "Kinesis records refused for exceeding shard throughput.",
            self.records_throttled.load(Relaxed),
        );
        counter(
            "tickpipe_records_retried_total",
            "Kinesis records sent again after a failure.",
            self.records_retried.load(Relaxed),
        );
        counter(
            "tickpipe_requests_uncertain_total",
            "PutRecords requests that timed out or failed in transport.",
            self.requests_uncertain.load(Relaxed),
        );
        counter(
            "tickpipe_shard_mispredictions_total",
            "Records that landed on another shard than predicted.",
            self.shard_mispredictions.load(Relaxed),
        );
        counter(
            "tickpipe_reconnects_total",
            "Websocket reconnects.",
            self.reconnects.load(Relaxed),
        );
        counter(
            "tickpipe_backpressure_waits_total",
            "Times the websocket reader waited for the producer.",
            self.backpressure_waits.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP tickpipe_frames_rejected_total Frames skipped, by reason.\n\
             # TYPE tickpipe_frames_rejected_total counter"
        );
        for r in Rejected::ALL {
            let _ = writeln!(
                out,
                "tickpipe_frames_rejected_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejected_frames(r)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tickpipe_trades_dropped_total Received trades lost, by reason.\n\
             # TYPE tickpipe_trades_dropped_total counter"
        );
        for d in Dropped::ALL {
            let _ = writeln!(
                out,
                "tickpipe_trades_dropped_total{{reason=\"{}\"}} {}",
                d.label(),
                self.dropped(d)
            );
        }
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "tickpipe_buffered_bytes",
            "Bytes of user records buffered in the producer.",
            self.buffered_bytes.load(Relaxed),
        );
        gauge(
            "tickpipe_in_flight_requests",
            "PutRecords requests in flight.",
            self.in_flight_requests.load(Relaxed),
        );
        gauge("tickpipe_shards", "Open shards in the shard map.", shards as i64);
        let _ = writeln!(
            out,
            "# HELP tickpipe_ack_latency_seconds Receive-to-acknowledge latency of trades.\n\
             # TYPE tickpipe_ack_latency_seconds summary"
        );
        let h = self.latency_us.lock().expect("no code panics while holding this lock");
        for q in [0.5, 0.9, 0.99, 0.999] {
            let _ = writeln!(
                out,
                "tickpipe_ack_latency_seconds{{quantile=\"{q}\"}} {}",
                h.value_at_quantile(q) as f64 / 1e6
            );
        }
        let sum_s = h.mean() * h.len() as f64 / 1e6;
        let _ = writeln!(out, "tickpipe_ack_latency_seconds_sum {sum_s}");
        let _ = writeln!(out, "tickpipe_ack_latency_seconds_count {}", h.len());
        drop(h);
        // Utilisation of a shard is the rate of these over its limits (1,000 records/s,
        // 1 MiB/s); the factor shows how far throttling feedback has slowed its pacing.
        let map = self.per_shard.lock().expect("no code panics while holding this lock");
        for (name, help, kind) in [
            (
                "tickpipe_shard_records_put_total",
                "Kinesis records acknowledged per shard.",
                "counter",
            ),
            ("tickpipe_shard_bytes_put_total", "Bytes acknowledged per shard.", "counter"),
            ("tickpipe_shard_rate_factor", "Share of the configured shard rate in use.", "gauge"),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (shard, u) in map.iter() {
                let value = match kind {
                    "gauge" => u.rate_factor,
                    _ if name.contains("bytes") => u.bytes as f64,
                    _ => u.records as f64,
                };
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_accounts_for_every_trade() {
        let s = Stats::default();
        s.trades_received.fetch_add(10, Relaxed);
        s.trades_acked.fetch_add(7, Relaxed);
        s.drop_trades(Dropped::RetriesExhausted, 2);
        let sum = s.summary();
        assert_eq!(sum.unaccounted(), 1);
        assert!(!sum.lossless());
    }

    #[test]
    fn prometheus_text_has_labels_and_quantiles() {
        let s = Stats::default();
        s.reject_frame(Rejected::Malformed);
        s.record_latencies(1_000_000, [990_000u64, 995_000].into_iter());
        s.shards.store(4, Relaxed);
        s.shard_put("shardId-000000000001", 3, 300, 0.5);
        s.shard_put("shardId-000000000001", 1, 100, 1.0);
        let text = s.render_prometheus();
        assert!(
            text.contains("tickpipe_shard_records_put_total{shard=\"shardId-000000000001\"} 4")
        );
        assert!(
            text.contains("tickpipe_shard_bytes_put_total{shard=\"shardId-000000000001\"} 400")
        );
        assert!(text.contains("tickpipe_shard_rate_factor{shard=\"shardId-000000000001\"} 1"));
        assert!(text.contains("tickpipe_frames_rejected_total{reason=\"malformed\"} 1"));
        assert!(text.contains("tickpipe_shards 4"));
        assert!(text.contains("tickpipe_ack_latency_seconds_count 2"));
        assert!(text.contains("tickpipe_ack_latency_seconds{quantile=\"0.99\"} 0.01"));
    }
}

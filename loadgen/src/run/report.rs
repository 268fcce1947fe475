//! The report at the end of a load run: what the feed sent, what the sink received, what
//! the ingestor used; printed as a table and saved as JSON.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::feed::FeedStats;
use crate::sink::{LatencyReport, SinkReport};

use super::child::ChildUsage;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `synthetic` or `replay`.
    pub source: String,
    /// How long load was driven, from the first subscription-ready moment to the feed's
    /// stop.
    pub load_secs: f64,
    /// Trades the feed wrote and flushed to its clients.
    pub trades_sent: u64,
    /// Distinct trades the sink received (duplicates not counted).
    pub trades_received: u64,
    /// Sent but never received: `trades_sent - trades_received`, never below zero.
    pub lost: u64,
    /// Trades that arrived more than once.
    pub duplicated: u64,
    /// Trades that arrived after a later trade of the same symbol from the same ingestor.
    pub reordered: u64,
    /// Kinesis records the sink refused for shard limits (the ingestor retries them).
    pub throttled: u64,
    /// Mean trades per second the feed sent while load was driven.
    pub sent_per_sec: f64,
    /// Receive (by the ingestor) to arrival (at the sink) latency, in µs, of the trades
    /// received after the warm-up.
    pub latency_us: LatencyReport,
    /// The first part of the load left out of the latency figures, in seconds.
    pub latency_warmup_secs: f64,
    pub feed: FeedUsage,
    /// Present when the run started the ingestor itself.
    pub ingestor: Option<IngestorUsage>,
    pub feed_stats: FeedStats,
    pub sink: SinkReport,
}

/// The feed's own cost: it runs on one thread, so this is trades per second per core.
/// At low rates the fixed cost of waking every 10 ms dominates and the figure is far
/// below what a core can do; `cargo bench --bench feed` measures the feed flat out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FeedUsage {
    /// CPU seconds of the feed's thread, user plus system.
    pub cpu_seconds: f64,
    /// Trades sent per CPU second of the feed's thread.
    pub trades_per_cpu_second: f64,
}

/// The ingestor child's cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestorUsage {
    #[serde(flatten)]
    pub usage: ChildUsage,
    /// CPU seconds per million trades sent.
    pub cpu_seconds_per_million_trades: f64,
}

impl RunReport {
    /// Whether every trade sent was received.
    pub fn lossless(&self) -> bool {
        self.lost == 0
    }

    /// The report as an aligned two-column table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("source", self.source.clone()),
            ("load duration", format!("{:.1} s", self.load_secs)),
            ("trades sent", count(self.trades_sent)),
            ("trades received", count(self.trades_received)),
            ("lost", count(self.lost)),
            ("duplicated", count(self.duplicated)),
            ("reordered", count(self.reordered)),
            ("throttled records", count(self.throttled)),
            ("sent rate", format!("{} trades/s", count(self.sent_per_sec.round() as u64))),
            ("latency warm-up left out", format!("{:.1} s", self.latency_warmup_secs)),
            ("latency p50", micros(self.latency_us.p50)),
            ("latency p99", micros(self.latency_us.p99)),
            ("latency p99.9", micros(self.latency_us.p999)),
            ("latency max", micros(self.latency_us.max)),
            ("feed CPU", format!("{:.2} s", self.feed.cpu_seconds)),
            ("feed trades/s per core", count(self.feed.trades_per_cpu_second.round() as u64)),
        ];
        match &self.ingestor {
            Some(i) => rows.extend([
                ("ingestor CPU", format!("{:.2} s", i.usage.cpu_seconds)),
                (
                    "ingestor CPU per 1M trades",
                    format!("{:.2} s", i.cpu_seconds_per_million_trades),
                ),
                ("ingestor peak RSS", format!("{:.1} MiB", i.usage.peak_rss_bytes as f64 / MIB)),
                (
                    "ingestor exit",
                    format!("{}{}", i.usage.exit, if i.usage.killed { " (killed)" } else { "" }),
                ),
            ]),
            None => rows.push(("ingestor", "not started by this run".into())),
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in rows {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{key:<width$}  {value}");
        }
        out
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// A count with thousands separators: 1,234,567.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(us: u64) -> String {
    if us >= 10_000 { format!("{:.1} ms", us as f64 / 1000.0) } else { format!("{us} µs") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(micros(950), "950 µs");
        assert_eq!(micros(12_345), "12.3 ms");
    }
}

//! Command-line flags and environment variables, validated against the service limits.
//!
//! Every knob is a flag with an environment variable beside it; defaults live here and
//! nowhere else. Durations are written the way people write them: `20ms`, `5s`, `2m`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use wire::limits::{PUT_RECORDS_MAX_BYTES, RECORD_MAX_BYTES};

/// Symbols subscribed when none are given: a few liquid stocks and two crypto pairs, so
/// that something trades on Finnhub at any hour.
pub const DEFAULT_SYMBOLS: &str = "AAPL,MSFT,AMZN,NVDA,TSLA,BINANCE:BTCUSDT,BINANCE:ETHUSDT";

/// Smallest aggregated record worth building; below this the per-record overhead
/// dominates and a shard's 1,000 records/s limit caps throughput again.
const MIN_AGGREGATE_BYTES: usize = 1024;

/// Most PutRecords requests in flight at once. Each needs a connection; a few dozen
/// carry hundreds of MiB/s, and more only hide a stalled endpoint behind open sockets.
const MAX_IN_FLIGHT_REQUESTS: usize = 256;

/// Most async worker threads. The work they share is light per trade; past a few dozen
/// a larger count is a typo, not a plan.
const MAX_WORKER_THREADS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Aggregation {
    /// Pack user records into KPL aggregated records (one trade costs a fraction of a
    /// Kinesis record).
    On,
    /// Write one Kinesis record per trade. A request that Kinesis accepts in part can
    /// then reorder a symbol's trades when the refused ones are retried.
    Off,
}

/// Everything the ingestor can be told.
#[derive(Debug, Clone, Args)]
pub struct IngestorConfig {
    /// Websocket URL of the trade feed (ws:// or wss://). The token is added from
    /// FINNHUB_TOKEN and never printed.
    #[arg(long, env = "TICKPIPE_FEED_URL", default_value = "wss://ws.finnhub.io")]
    pub url: String,

    /// Finnhub API token, sent as the `token` query parameter.
    #[arg(long = "finnhub-token", env = "FINNHUB_TOKEN", hide_env_values = true, hide = true)]
    pub token: Option<Secret>,

    /// Symbols to subscribe, comma-separated.
    #[arg(long, env = "TICKPIPE_SYMBOLS", value_delimiter = ',', default_value = DEFAULT_SYMBOLS)]
    pub symbols: Vec<String>,

    /// Kinesis stream to write to.
    #[arg(long, env = "TICKPIPE_STREAM", default_value = "tickpipe-trades")]
    pub stream: String,

    /// Pack trades into KPL aggregated records.
    #[arg(long, env = "TICKPIPE_AGGREGATION", value_enum, default_value = "on")]
    pub aggregation: Aggregation,

    /// Largest aggregated record, in bytes (1024 to 1048576, the Kinesis record limit less
    /// the partition key). Small records pace a shard smoothly; each is one request.
    #[arg(long, env = "TICKPIPE_AGGREGATE_MAX_BYTES", default_value_t = 50 * 1024)]
    pub aggregate_max_bytes: usize,

    /// Longest a trade waits in a shard's buffer before it is sent.
    #[arg(long, env = "TICKPIPE_LINGER", value_parser = parse_duration, default_value = "20ms")]
    pub linger: Duration,

    /// Largest PutRecords request, in bytes of data and partition keys (1 MiB to 5 MiB).
    /// Each request carries at most one batch per shard, from as many shards as fit.
    #[arg(long, env = "TICKPIPE_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,

    /// PutRecords requests sent at once, on pooled connections (1 to 256). While all are
    /// out, the shards' next batches wait and then leave together in one request.
    #[arg(long, env = "TICKPIPE_MAX_IN_FLIGHT_REQUESTS", default_value_t = 16)]
    pub max_in_flight_requests: usize,

    /// Threads for the Kinesis requests, the shard services and the metrics endpoint (1 to
    /// 64); the websocket reader and the batcher have a thread each besides. One carried
    /// 500,000 trades/s on a 2-core machine; more cost memory and did not save CPU there.
    #[arg(long, env = "TICKPIPE_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Frames buffered between the websocket and the batcher.
    #[arg(long, env = "TICKPIPE_CHANNEL_FRAMES", default_value_t = 4096)]
    pub channel_frames: usize,

    /// Most bytes of trades held between the websocket and Kinesis' acknowledgement.
    /// At the cap the ingestor stops reading the websocket until Kinesis catches up.
    #[arg(long, env = "TICKPIPE_MAX_BUFFERED_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_buffered_bytes: usize,

    /// Drop a Kinesis record instead of sending it once its oldest trade has waited this
    /// long (such as 30s). Unset: never drop for age; the websocket waits instead.
    #[arg(long, env = "TICKPIPE_RECORD_TTL", value_parser = parse_duration)]
    pub record_ttl: Option<Duration>,

    /// Share of each shard's write limits (1,000 records/s, 1 MiB/s) to use, 0.05 to 1.0.
    #[arg(long, env = "TICKPIPE_SHARD_RATE_FRACTION", default_value_t = 0.9)]
    pub shard_rate_fraction: f64,

    /// Do not pace writes per shard (for on-demand streams, whose shard limits vary).
    #[arg(long, env = "TICKPIPE_NO_SHARD_RATE_LIMIT")]
    pub no_shard_rate_limit: bool,

    /// How often to re-read the shard map; it is also re-read at once when a record lands
    /// on an unexpected shard.
    #[arg(long, env = "TICKPIPE_SHARD_REFRESH", value_parser = parse_duration, default_value = "60s")]
    pub shard_refresh: Duration,

    /// Largest websocket message accepted, in bytes.
    #[arg(long, env = "TICKPIPE_MAX_FRAME_BYTES", default_value_t = 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Reconnect when nothing arrives for this long (Finnhub pings about once a minute).
    #[arg(long, env = "TICKPIPE_SILENCE_TIMEOUT", value_parser = parse_duration, default_value = "90s")]
    pub silence_timeout: Duration,

    /// First reconnect delay; doubles on each failure, with full jitter.
    #[arg(long, env = "TICKPIPE_RECONNECT_MIN", value_parser = parse_duration, default_value = "500ms")]
    pub reconnect_min: Duration,

    /// Longest reconnect delay.
    #[arg(long, env = "TICKPIPE_RECONNECT_MAX", value_parser = parse_duration, default_value = "30s")]
    pub reconnect_max: Duration,

    /// Time allowed for TCP, TLS and the websocket handshake together.
    #[arg(long, env = "TICKPIPE_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,

    /// Attempts per PutRecords batch before its remaining trades are dropped and counted.
    #[arg(long, env = "TICKPIPE_PUT_MAX_ATTEMPTS", default_value_t = 12)]
    pub put_max_attempts: u32,

    /// Timeout of one PutRecords attempt.
    #[arg(long, env = "TICKPIPE_PUT_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub put_timeout: Duration,

    /// First PutRecords retry delay; doubles on each attempt, with full jitter.
    #[arg(long, env = "TICKPIPE_RETRY_MIN", value_parser = parse_duration, default_value = "50ms")]
    pub retry_min: Duration,

    /// Longest PutRecords retry delay.
    #[arg(long, env = "TICKPIPE_RETRY_MAX", value_parser = parse_duration, default_value = "5s")]
    pub retry_max: Duration,

    /// On SIGINT or SIGTERM, how long to wait for buffered trades to be acknowledged.
    #[arg(long, env = "TICKPIPE_SHUTDOWN_DEADLINE", value_parser = parse_duration, default_value = "20s")]
    pub shutdown_deadline: Duration,

    /// Address of the Prometheus metrics endpoint (`/metrics`), or `off`.
    #[arg(long, env = "TICKPIPE_METRICS_LISTEN", value_parser = parse_listen, default_value = "127.0.0.1:9464")]
    pub metrics_listen: Listen,
}

/// A value that must never be printed, such as the Finnhub token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where to serve metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

/// A flag value the ingestor cannot run with.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
}

fn bad(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { flag, problem: problem.into() }
}

impl IngestorConfig {
    /// Checks values that clap's types alone cannot: ranges set by AWS and by sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let scheme_ok = self.url.starts_with("ws://") || self.url.starts_with("wss://");
        if !scheme_ok || self.url.parse::<hyper::Uri>().is_err() {
            return Err(bad("url", format!("{:?} is not a ws:// or wss:// URL", self.url)));
        }
        if self.symbols.iter().all(|s| s.trim().is_empty()) {
            return Err(bad("symbols", "give at least one symbol, such as AAPL"));
        }
        if let Some(s) = self.symbols.iter().find(|s| s.chars().count() > 256) {
            return Err(bad("symbols", format!("{s:.20}... is longer than 256 characters")));
        }
        if self.stream.is_empty() || self.stream.len() > 128 {
            return Err(bad("stream", "a stream name has 1 to 128 characters"));
        }
        let agg_max = RECORD_MAX_BYTES - wire::limits::PARTITION_KEY_MAX_CHARS * 4;
        if !(MIN_AGGREGATE_BYTES..=agg_max).contains(&self.aggregate_max_bytes) {
            return Err(bad(
                "aggregate-max-bytes",
                format!(
                    "{} is outside {MIN_AGGREGATE_BYTES}..={agg_max}",
                    self.aggregate_max_bytes
                ),
            ));
        }
        if !(RECORD_MAX_BYTES..=PUT_RECORDS_MAX_BYTES).contains(&self.max_request_bytes) {
            return Err(bad(
                "max-request-bytes",
                format!(
                    "{} is outside {RECORD_MAX_BYTES}..={PUT_RECORDS_MAX_BYTES}",
                    self.max_request_bytes
                ),
            ));
        }
        if !(1..=MAX_IN_FLIGHT_REQUESTS).contains(&self.max_in_flight_requests) {
            return Err(bad(
                "max-in-flight-requests",
                format!("{} is outside 1..={MAX_IN_FLIGHT_REQUESTS}", self.max_in_flight_requests),
            ));
        }
        if !(1..=MAX_WORKER_THREADS).contains(&self.worker_threads) {
            return Err(bad(
                "worker-threads",
                format!("{} is outside 1..={MAX_WORKER_THREADS}", self.worker_threads),
            ));
        }
        if self.linger.is_zero() || self.linger > Duration::from_secs(10) {
            return Err(bad("linger", "must be above 0 and at most 10s"));
        }
        if self.channel_frames == 0 {
            return Err(bad("channel-frames", "must be at least 1"));
        }
        // A frame's user records are up to about four times its size (each trade gains
        // src, seq and rt), and the cap must hold at least two frames' worth to move.
        let min_buffer = 8 * self.max_frame_bytes;
        if self.max_buffered_bytes < min_buffer {
            return Err(bad(
                "max-buffered-bytes",
                format!("must be at least 8 x --max-frame-bytes ({min_buffer})"),
            ));
        }
        if !(0.05..=1.0).contains(&self.shard_rate_fraction) {
            return Err(bad("shard-rate-fraction", "must be between 0.05 and 1.0"));
        }
        if self.record_ttl.is_some_and(|t| t < Duration::from_millis(100)) {
            return Err(bad("record-ttl", "must be at least 100ms"));
        }
        if self.shard_refresh < Duration::from_secs(1) {
            return Err(bad("shard-refresh", "must be at least 1s"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_frame_bytes) {
            return Err(bad("max-frame-bytes", "must be between 1024 and 67108864"));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err(bad("reconnect-min", "must be above 0 and at most --reconnect-max"));
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return Err(bad("retry-min", "must be above 0 and at most --retry-max"));
        }
        if self.put_max_attempts == 0 {
            return Err(bad("put-max-attempts", "must be at least 1"));
        }
        if self.silence_timeout < Duration::from_millis(100) {
            return Err(bad("silence-timeout", "must be at least 100ms"));
        }
        Ok(())
    }

    /// The symbols, trimmed, without empties and duplicates, in the order given.
    pub fn symbol_list(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in self.symbols.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        }
        out
    }
}

/// Parses durations such as `250ms`, `5s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write it like 250ms, 5s or 2m"))?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("{text:?} needs a unit: us, ms, s, m or h (such as 250ms)")),
        other => return Err(format!("unknown unit {other:?} in {text:?}; use us, ms, s, m or h")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    text.parse()
        .map(Listen::At)
        .map_err(|_| format!("{text:?} is not host:port (such as 127.0.0.1:9464) or off"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: IngestorConfig,
    }

    fn parse(args: &[&str]) -> Result<IngestorConfig, String> {
        let mut all = vec!["ingestor"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        cli.config.validate().map_err(|e| e.to_string())?;
        Ok(cli.config)
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.linger, Duration::from_millis(20));
        assert_eq!(c.aggregation, Aggregation::On);
        assert_eq!(c.symbol_list().len(), 7);
    }

    #[test]
    fn errors_name_the_flag_and_the_accepted_range() {
        let e = parse(&["--aggregate-max-bytes", "2000000"]).unwrap_err();
        assert!(e.contains("--aggregate-max-bytes") && e.contains("1024..="), "{e}");
        let e = parse(&["--max-request-bytes", "6000000"]).unwrap_err();
        assert!(e.contains("--max-request-bytes") && e.contains("5242880"), "{e}");
        let e = parse(&["--max-in-flight-requests", "0"]).unwrap_err();
        assert!(e.contains("--max-in-flight-requests") && e.contains("1..=256"), "{e}");
        let e = parse(&["--worker-threads", "0"]).unwrap_err();
        assert!(e.contains("--worker-threads") && e.contains("1..=64"), "{e}");
        let e = parse(&["--url", "http://x"]).unwrap_err();
        assert!(e.contains("--url"), "{e}");
        let e = parse(&["--linger", "20"]).unwrap_err();
        assert!(e.contains("needs a unit"), "{e}");
        let e = parse(&["--symbols", " , "]).unwrap_err();
        assert!(e.contains("--symbols"), "{e}");
        let e = parse(&["--shard-rate-fraction", "1.5"]).unwrap_err();
        assert!(e.contains("--shard-rate-fraction"), "{e}");
        let e = parse(&["--max-buffered-bytes", "1000"]).unwrap_err();
        assert!(e.contains("--max-buffered-bytes"), "{e}");
        let e = parse(&["--metrics-listen", "nowhere"]).unwrap_err();
        assert!(e.contains("host:port"), "{e}");
    }

    #[test]
    fn symbols_are_trimmed_and_deduplicated() {
        let c = parse(&["--symbols", "AAPL, MSFT,AAPL,,"]).unwrap();
        assert_eq!(c.symbol_list(), ["AAPL", "MSFT"]);
    }
}

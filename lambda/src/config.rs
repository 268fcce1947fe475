//! Flags and environment, with defaults in one place and checks that name the flag.
//!
//! Under Lambda there are no arguments, so every setting also reads an environment
//! variable; the table name uses `TABLE_NAME`, the name the deploy template sets.
//! Durations are written as humans write them: `100ms`, `5s`, `2m`, `1h`, `7d`.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use wire::limits::GET_RECORDS_MAX_RECORDS;

use crate::retry::Backoff;
use crate::store::{self, StoreConfig};

/// Default stream the local runner polls.
pub const DEFAULT_STREAM: &str = "tickpipe-trades";
/// Default records per GetRecords call, as in Lambda's event source mapping examples.
pub const DEFAULT_BATCH_SIZE: i32 = 500;
/// Default pause after an empty GetRecords. Kinesis allows 5 GetRecords calls per second
/// per shard, so 200 ms keeps an idle shard at that limit and no more.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Default time between progress lines.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Where the local runner starts reading the shards that are open when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// Only records written after the runner starts.
    Latest,
}

/// The `bootstrap` command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "bootstrap", version, about = "tickpipe's Kinesis-to-DynamoDB Lambda")]
pub struct Cli {
    /// Poll the stream from this machine, the way Lambda's event source mapping does,
    /// instead of serving Lambda invocations.
    #[arg(long, env = "TICKPIPE_LOCAL")]
    pub local: bool,

    /// DynamoDB table to write.
    #[arg(long, env = "TABLE_NAME", default_value = wire::table::DEFAULT_TABLE)]
    pub table: String,

    /// How long trade items live, counted from the trade's time (DynamoDB TTL).
    #[arg(long, env = "TICKPIPE_TRADE_TTL", default_value = "7d", value_parser = parse_duration)]
    pub trade_ttl: Duration,

    /// Attempts per DynamoDB request before the batch is reported failed, the first
    /// included.
    #[arg(long, env = "TICKPIPE_WRITE_ATTEMPTS", default_value_t = store::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub write_attempts: u32,

    /// Ceiling of the first retry delay; later ones double up to --backoff-max.
    #[arg(long, env = "TICKPIPE_BACKOFF_BASE", default_value = "50ms", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Ceiling of every retry delay.
    #[arg(long, env = "TICKPIPE_BACKOFF_MAX", default_value = "5s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// DynamoDB requests in flight at once.
    #[arg(long, env = "TICKPIPE_MAX_IN_FLIGHT", default_value_t = store::DEFAULT_MAX_IN_FLIGHT as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_in_flight: u32,

    /// Kinesis stream to poll (--local only).
    #[arg(long, env = "TICKPIPE_STREAM", default_value = DEFAULT_STREAM)]
    pub stream: String,

    /// Records per GetRecords call (--local only).
    #[arg(long, env = "TICKPIPE_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(i32).range(1..=i64::from(GET_RECORDS_MAX_RECORDS)))]
    pub batch_size: i32,

    /// Pause after a GetRecords call that returned nothing (--local only).
    #[arg(long, env = "TICKPIPE_POLL_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Where to start in the shards open at startup; shards created later by resharding
    /// are always read from their start (--local only).
    #[arg(long, env = "TICKPIPE_START_POSITION", value_enum, default_value_t = StartPosition::TrimHorizon)]
    pub start_position: StartPosition,

    /// Time between progress lines (--local only).
    #[arg(long, env = "TICKPIPE_PROGRESS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub progress_interval: Duration,
}

/// A setting outside what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
}

impl ConfigError {
    /// A bad setting stays bad until someone changes it.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl Cli {
    /// Checks the relations between flags that clap cannot check one flag at a time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |flag, problem: &str| Err(ConfigError { flag, problem: problem.to_owned() });
        if self.table.is_empty() {
            return bad("--table", "must not be empty");
        }
        if self.stream.is_empty() {
            return bad("--stream", "must not be empty");
        }
        if self.trade_ttl < Duration::from_secs(1) {
            return bad("--trade-ttl", "must be at least 1s");
        }
        if self.backoff_base.is_zero() {
            return bad("--backoff-base", "must be more than 0");
        }
        if self.backoff_max < self.backoff_base {
            return bad("--backoff-max", "must be at least --backoff-base");
        }
        if self.poll_interval < Duration::from_millis(1) {
            return bad("--poll-interval", "must be at least 1ms");
        }
        if self.progress_interval < Duration::from_secs(1) {
            return bad("--progress-interval", "must be at least 1s");
        }
        Ok(())
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            table: self.table.clone(),
            trade_ttl: self.trade_ttl,
            max_attempts: self.write_attempts,
            backoff: self.backoff(),
            max_in_flight: self.max_in_flight as usize,
        }
    }

    pub fn local_config(&self) -> LocalConfig {
        LocalConfig {
            stream: self.stream.clone(),
            store: self.store_config(),
            batch_size: self.batch_size,
            poll_interval: self.poll_interval,
            start_position: self.start_position,
            progress_interval: self.progress_interval,
            retry_backoff: self.backoff(),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff { base: self.backoff_base, max: self.backoff_max }
    }
}

/// What the local runner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    pub stream: String,
    pub store: StoreConfig,
    /// Records per GetRecords call, 1 to 10,000.
    pub batch_size: i32,
    pub poll_interval: Duration,
    pub start_position: StartPosition,
    pub progress_interval: Duration,
    /// Delays before reading a failed batch again and after failed Kinesis calls.
    pub retry_backoff: Backoff,
}

impl Default for LocalConfig {
    fn default() -> Self {
        let store = StoreConfig::default();
        Self {
            stream: DEFAULT_STREAM.to_owned(),
            retry_backoff: store.backoff,
            store,
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            start_position: StartPosition::TrimHorizon,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// Parses `<whole number><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let expected = "expected a whole number and a unit: ms, s, m, h or d (e.g. 200ms, 5s, 7d)";
    if number.is_empty() {
        return Err(format!("{s:?}: {expected}"));
    }
    let n: u64 = number.parse().map_err(|_| format!("{s:?}: number too large"))?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("{s:?}: missing unit; {expected}")),
        _ => return Err(format!("{s:?}: unknown unit; {expected}")),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(|| format!("{s:?}: too long"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration(" 3 s "), Ok(Duration::from_secs(3)));
        assert!(parse_duration("100").unwrap_err().contains("missing unit"));
        assert!(parse_duration("1.5s").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn defaults_parse_and_validate() {
        let cli = Cli::try_parse_from(["bootstrap"]).unwrap();
        cli.validate().unwrap();
        assert!(!cli.local);
        assert_eq!(cli.local_config().batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(cli.local_config().poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(cli.store_config().trade_ttl, store::DEFAULT_TRADE_TTL);
        assert_eq!(
            cli.store_config(),
            StoreConfig { table: cli.table.clone(), ..StoreConfig::default() }
        );
    }

    #[test]
    fn out_of_range_flags_are_named() {
        let err = Cli::try_parse_from(["bootstrap", "--batch-size", "10001"]).unwrap_err();
        assert!(err.to_string().contains("--batch-size"), "{err}");
        let err = Cli::try_parse_from(["bootstrap", "--poll-interval", "5"]).unwrap_err();
        assert!(err.to_string().contains("--poll-interval"), "{err}");
        let err = Cli::try_parse_from(["bootstrap", "--start-position", "middle"]).unwrap_err();
        assert!(err.to_string().contains("trim-horizon"), "{err}");
        let cli = Cli::try_parse_from(["bootstrap", "--backoff-base", "2s", "--backoff-max", "1s"])
            .unwrap();
        assert_eq!(cli.validate().unwrap_err().flag, "--backoff-max");
    }
}

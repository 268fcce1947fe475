//! Dashboard configuration: the flags, their defaults, and the parsers that validate them.

use std::time::Duration;

use clap::Args;

/// Default listen address: loopback only, so a demo never exposes the table by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Default budget for one DynamoDB call, retries included. The page refreshes every second,
/// so an answer later than this is no longer worth waiting for.
pub const DEFAULT_DYNAMO_TIMEOUT: &str = "2s";

/// Bounds on `--dynamo-timeout`: below 50 ms even a healthy table times out, and above a
/// minute a browser poll has long since given up.
pub const MIN_DYNAMO_TIMEOUT: Duration = Duration::from_millis(50);
pub const MAX_DYNAMO_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`crate::run`] needs besides the listener and the DynamoDB client.
#[derive(Debug, Clone, Args)]
pub struct DashboardConfig {
    /// DynamoDB table the Lambda writes trades, candles and latest prices to.
    #[arg(long = "table", env = "TABLE_NAME", default_value = wire::table::DEFAULT_TABLE,
          value_parser = parse_table_name)]
    pub table: String,

    /// Budget for one DynamoDB call including its one retry, e.g. "500ms", "2s".
    #[arg(long = "dynamo-timeout", env = "TICKPIPE_DASHBOARD_DYNAMO_TIMEOUT",
          default_value = DEFAULT_DYNAMO_TIMEOUT, value_parser = parse_dynamo_timeout)]
    pub dynamo_timeout: Duration,
}

impl DashboardConfig {
    /// A config for `table` with every other setting at its default.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            dynamo_timeout: parse_duration(DEFAULT_DYNAMO_TIMEOUT)
                .expect("the default timeout is a valid duration literal"),
        }
    }
}

/// DynamoDB table names: 3 to 255 characters of `a-z A-Z 0-9 _ - .`
/// (Amazon DynamoDB Developer Guide, "Naming rules").
const TABLE_NAME_MIN: usize = 3;
const TABLE_NAME_MAX: usize = 255;

fn parse_table_name(value: &str) -> Result<String, String> {
    let len_ok = (TABLE_NAME_MIN..=TABLE_NAME_MAX).contains(&value.len());
    let chars_ok =
        value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if len_ok && chars_ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "--table must be {TABLE_NAME_MIN} to {TABLE_NAME_MAX} characters of a-z, A-Z, \
             0-9, '_', '-' or '.', got {value:?}"
        ))
    }
}

fn parse_dynamo_timeout(value: &str) -> Result<Duration, String> {
    let timeout = parse_duration(value).map_err(|e| format!("--dynamo-timeout: {e}"))?;
    if (MIN_DYNAMO_TIMEOUT..=MAX_DYNAMO_TIMEOUT).contains(&timeout) {
        Ok(timeout)
    } else {
        Err(format!(
            "--dynamo-timeout must be between {MIN_DYNAMO_TIMEOUT:?} and \
             {MAX_DYNAMO_TIMEOUT:?}, got {value:?}"
        ))
    }
}

/// Parses a duration the way people write one: an integer followed by `ms`, `s`, `m` or
/// `h` ("250ms", "5s", "2m"). A bare number is refused rather than guessed at.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let accepted = "accepted: an integer with a unit ms, s, m or h, e.g. \"500ms\" or \"2s\"";
    let amount: u64 =
        digits.parse().map_err(|_| format!("invalid duration {value:?}; {accepted}"))?;
    let duration = match unit {
        "ms" => Some(Duration::from_millis(amount)),
        "s" => Some(Duration::from_secs(amount)),
        "m" => amount.checked_mul(60).map(Duration::from_secs),
        "h" => amount.checked_mul(3600).map(Duration::from_secs),
        _ => return Err(format!("invalid duration unit in {value:?}; {accepted}")),
    };
    duration.ok_or_else(|| format!("duration {value:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("250").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn timeout_out_of_range_names_the_flag() {
        assert_eq!(parse_dynamo_timeout("500ms"), Ok(Duration::from_millis(500)));
        let err = parse_dynamo_timeout("10ms").unwrap_err();
        assert!(err.contains("--dynamo-timeout") && err.contains("50ms"), "{err}");
        assert!(parse_dynamo_timeout("2").unwrap_err().contains("--dynamo-timeout"));
    }

    #[test]
    fn table_names_follow_dynamodb_rules() {
        assert_eq!(parse_table_name("tickpipe-test_1.x"), Ok("tickpipe-test_1.x".into()));
        assert!(parse_table_name("ab").unwrap_err().contains("--table"));
        assert!(parse_table_name("bad name").is_err());
        assert!(parse_table_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn new_uses_the_defaults() {
        let config = DashboardConfig::new("t1x");
        assert_eq!(config.table, "t1x");
        assert_eq!(config.dynamo_timeout, Duration::from_secs(2));
    }
}

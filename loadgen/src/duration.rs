//! Durations written the way people write them: `250ms`, `5s`, `2m`, `1h`, `1.5s`.
//!
//! Flags take these instead of bare integers so a value never hides its unit. A bare number
//! is refused rather than guessed at.

use std::time::Duration;

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write a number and a unit such as 250ms, 5s or 2m")]
    Empty,
    #[error("{0:?} has no unit; write a unit such as 250ms, 5s or 2m")]
    MissingUnit(String),
    #[error("{0:?} has an unknown unit; accepted units are ms, s, m and h")]
    UnknownUnit(String),
    #[error("{0:?} is not a non-negative number followed by a unit such as 250ms")]
    BadNumber(String),
    #[error("{0:?} is too long to represent")]
    TooLong(String),
}

impl DurationError {
    /// A malformed flag value stays malformed however often it is read again.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Reads a human-written duration such as `100ms`, `5s`, `1.5m` or `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    // The unit is the trailing run of letters, so exponents such as `1e3s` stay numbers.
    let number = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[number.len()..];
    if unit.is_empty() {
        return Err(DurationError::MissingUnit(text.to_owned()));
    }
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(DurationError::UnknownUnit(text.to_owned())),
    };
    let value: f64 =
        number.trim().parse().map_err(|_| DurationError::BadNumber(text.to_owned()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(DurationError::BadNumber(text.to_owned()));
    }
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| DurationError::TooLong(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_read() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn ambiguous_or_broken_values_are_refused() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(parse_duration("100"), Err(DurationError::MissingUnit(_))));
        assert!(matches!(parse_duration("5d"), Err(DurationError::UnknownUnit(_))));
        assert!(matches!(parse_duration("5 sec"), Err(DurationError::UnknownUnit(_))));
        assert!(matches!(parse_duration("-1s"), Err(DurationError::BadNumber(_))));
        assert!(matches!(parse_duration("ms"), Err(DurationError::BadNumber(_))));
        assert!(matches!(parse_duration("1e400s"), Err(DurationError::BadNumber(_))));
        assert!(matches!(parse_duration("1e300h"), Err(DurationError::TooLong(_))));
    }
}

//! Where a user record sits in a shard: the Kinesis sequence number of the record that
//! carried it and its index inside that record when the record was aggregated.
//!
//! Candles remember, per shard, the highest position already folded in (their high-water
//! mark), so positions must compare exactly. Sequence numbers are decimal strings, in
//! practice 56 digits and by the API's pattern up to 129, too wide for any integer type, so
//! they stay strings and compare numerically: a shorter number is smaller, equal lengths
//! compare digit by digit.

use std::cmp::Ordering;
use std::fmt;

/// Most digits in a sequence number (Kinesis API reference, SequenceNumber pattern
/// `0|([1-9]\d{0,128})`).
const SEQUENCE_NUMBER_MAX_DIGITS: usize = 129;

/// Separates the sequence number from the sub-record index in the stored form.
const STORED_SEPARATOR: char = ':';

/// A sequence number or stored position that is not what Kinesis writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("sequence number {0:?} is not 1 to {SEQUENCE_NUMBER_MAX_DIGITS} decimal digits")]
    SequenceNumber(String),
    #[error("stored position {0:?} is not <sequence number>:<sub-record index>")]
    Stored(String),
}

impl PositionError {
    /// A malformed position comes from the data itself; reading it again gives the same.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// True when `s` is a sequence number as Kinesis writes them.
pub fn is_sequence_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= SEQUENCE_NUMBER_MAX_DIGITS && s.bytes().all(|b| b.is_ascii_digit())
}

/// Numeric order of two sequence numbers written without leading zeros.
pub fn cmp_sequence_numbers(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A user record's place in its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub sequence_number: String,
    /// Index of the user record inside its aggregated record; 0 for a plain record.
    pub sub: u32,
}

impl Position {
    pub fn new(sequence_number: impl Into<String>, sub: u32) -> Self {
        Self { sequence_number: sequence_number.into(), sub }
    }

    /// Compares with `(sequence_number, sub)` without building a `Position`.
    pub fn cmp_parts(&self, sequence_number: &str, sub: u32) -> Ordering {
        cmp_sequence_numbers(&self.sequence_number, sequence_number).then(self.sub.cmp(&sub))
    }

    /// The form kept in a candle's high-water map: `<sequence number>:<sub>`.
    pub fn to_stored(&self) -> String {
        format!("{}{STORED_SEPARATOR}{}", self.sequence_number, self.sub)
    }

    pub fn from_stored(s: &str) -> Result<Self, PositionError> {
        let bad = || PositionError::Stored(s.to_owned());
        let (seq, sub) = s.split_once(STORED_SEPARATOR).ok_or_else(bad)?;
        if !is_sequence_number(seq) {
            return Err(bad());
        }
        Ok(Self { sequence_number: seq.to_owned(), sub: sub.parse().map_err(|_| bad())? })
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_parts(&other.sequence_number, other.sub)
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sequence_number, self.sub)
    }
}

/// The shard a Kinesis event record came from.
///
/// Lambda writes `eventID` as `<shard id>:<sequence number>`; the local runner writes the
/// same. Without an event id the stream ARN stands in, which is still one key per stream
/// and keeps high-water marks safe, only coarser.
pub fn shard_of<'a>(event_id: Option<&'a str>, event_source_arn: Option<&'a str>) -> &'a str {
    event_id
        .and_then(|id| id.split_once(':').map(|(shard, _)| shard))
        .filter(|shard| !shard.is_empty())
        .or(event_source_arn)
        .unwrap_or(UNKNOWN_SHARD)
}

/// Shard key used when an event record names neither its shard nor its stream.
pub const UNKNOWN_SHARD: &str = "unknown";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert_eq!(cmp_sequence_numbers("9", "10"), Ordering::Less);
        assert_eq!(cmp_sequence_numbers("10", "9"), Ordering::Greater);
        assert_eq!(cmp_sequence_numbers("123", "123"), Ordering::Equal);
        let a = "49568167373333333333333333333333333333333333333333333333";
        let b = "49568167373333333334444444444444444444444444444444444444";
        assert_eq!(cmp_sequence_numbers(a, b), Ordering::Less);
        // Wider than any integer type: 129 digits still compare.
        let max = "9".repeat(129);
        let below = format!("{}8", "9".repeat(128));
        assert_eq!(cmp_sequence_numbers(&below, &max), Ordering::Less);
    }

    #[test]
    fn positions_order_by_sequence_then_sub() {
        let p = |s: &str, sub| Position::new(s, sub);
        assert!(p("100", 5) < p("101", 0));
        assert!(p("100", 5) > p("100", 4));
        assert!(p("99", 7) < p("100", 0));
        assert_eq!(p("100", 1).cmp_parts("100", 1), Ordering::Equal);
    }

    #[test]
    fn stored_form_round_trips_and_rejects_garbage() {
        let p = Position::new("49568167373333333333", 12);
        assert_eq!(p.to_stored(), "49568167373333333333:12");
        assert_eq!(Position::from_stored(&p.to_stored()), Ok(p));
        for bad in ["", "12", "12:", ":3", "1x:3", "12:-1", "12:3:4"] {
            assert!(Position::from_stored(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shard_comes_from_event_id_or_source() {
        assert_eq!(shard_of(Some("shardId-000000000001:4956"), None), "shardId-000000000001");
        assert_eq!(shard_of(Some("nocolon"), Some("arn:stream")), "arn:stream");
        assert_eq!(shard_of(None, Some("arn:stream")), "arn:stream");
        assert_eq!(shard_of(None, None), UNKNOWN_SHARD);
    }

    #[test]
    fn sequence_number_syntax() {
        assert!(is_sequence_number("0"));
        assert!(is_sequence_number("49568167373333333333333333333333333333333333333333333333"));
        assert!(is_sequence_number(&"9".repeat(129)));
        assert!(!is_sequence_number(""));
        assert!(!is_sequence_number("12a"));
        assert!(!is_sequence_number(&"1".repeat(130)));
    }
}

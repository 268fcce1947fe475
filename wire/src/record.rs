//! The user record: one trade as the ingestor writes it to Kinesis.
//!
//! Compact JSON with Finnhub's fields plus three the ingestor adds:
//! `{"s":"AAPL","p":146.76,"v":43,"t":1628238530221,"c":["1","24","12"],
//! "src":"ip-10-0-0-7.7f3a","seq":81234,"rt":1628238530225123}`. `src` names the ingestor
//! instance, `seq` counts the trades that instance received from zero, and `rt` is the
//! receive time in microseconds since the epoch. `(src, seq)` identifies a trade.

use serde::Deserialize;

use crate::finnhub::scan::RawTrade;
use crate::finnhub::{Trade, write_codes};
use crate::json;

/// Where and when the ingestor received a trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt<'a> {
    /// The ingestor instance, unique per process start.
    pub src: &'a str,
    /// Position of the trade in everything this instance received, from zero.
    pub seq: u64,
    /// Receive time, microseconds since the Unix epoch.
    pub rt_us: u64,
}

/// Appends the user record of `trade` to `out`.
pub fn encode(out: &mut Vec<u8>, trade: &Trade<'_>, receipt: Receipt<'_>) {
    out.extend_from_slice(br#"{"s":"#);
    json::write_str(out, trade.symbol);
    out.extend_from_slice(br#","p":"#);
    json::write_f64(out, trade.price);
    out.extend_from_slice(br#","v":"#);
    json::write_f64(out, trade.volume);
    out.extend_from_slice(br#","t":"#);
    json::write_u64(out, trade.time_ms);
    if !trade.conditions.is_empty() {
        out.extend_from_slice(br#","c":"#);
        write_codes(out, trade.conditions.as_slice());
    }
    write_receipt(out, receipt);
}

/// Appends the user record of a trade read by [`crate::finnhub::scan`]: the same record as
/// [`encode`] writes, except that numbers keep the text they arrived as (`43.0` stays
/// `43.0`; [`encode`] would print `43`), which is the same value to any JSON reader.
pub fn encode_raw(out: &mut Vec<u8>, trade: &RawTrade<'_>, receipt: Receipt<'_>) {
    out.extend_from_slice(br#"{"s":"#);
    json::write_str(out, trade.symbol);
    out.extend_from_slice(br#","p":"#);
    out.extend_from_slice(trade.price);
    out.extend_from_slice(br#","v":"#);
    out.extend_from_slice(trade.volume);
    out.extend_from_slice(br#","t":"#);
    out.extend_from_slice(trade.time_ms);
    if !trade.conditions.is_empty() {
        out.extend_from_slice(br#","c":"#);
        out.extend_from_slice(trade.conditions);
    }
    write_receipt(out, receipt);
}

fn write_receipt(out: &mut Vec<u8>, receipt: Receipt<'_>) {
    out.extend_from_slice(br#","src":"#);
    json::write_str(out, receipt.src);
    out.extend_from_slice(br#","seq":"#);
    json::write_u64(out, receipt.seq);
    out.extend_from_slice(br#","rt":"#);
    json::write_u64(out, receipt.rt_us);
    out.push(b'}');
}

/// A decoded user record, owning its strings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserRecord {
    #[serde(rename = "s")]
    pub symbol: String,
    #[serde(rename = "p")]
    pub price: f64,
    #[serde(rename = "v")]
    pub volume: f64,
    #[serde(rename = "t")]
    pub time_ms: u64,
    #[serde(rename = "c", default)]
    pub conditions: Vec<String>,
    pub src: String,
    pub seq: u64,
    #[serde(rename = "rt")]
    pub rt_us: u64,
}

/// A user record that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("user record is not valid: {0}")]
pub struct RecordError(#[from] serde_json::Error);

/// Decodes one user record.
pub fn decode(bytes: &[u8]) -> Result<UserRecord, RecordError> {
    Ok(serde_json::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finnhub::Conditions;

    #[test]
    fn the_documented_record_is_what_encode_writes() {
        let trade = Trade {
            symbol: "AAPL",
            price: 146.76,
            time_ms: 1628238530221,
            volume: 43.0,
            conditions: ["1", "24", "12"].into_iter().collect(),
        };
        let receipt = Receipt { src: "ip-10-0-0-7.7f3a", seq: 81234, rt_us: 1628238530225123 };
        let mut out = Vec::new();
        encode(&mut out, &trade, receipt);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"s":"AAPL","p":146.76,"v":43,"t":1628238530221,"c":["1","24","12"],"src":"ip-10-0-0-7.7f3a","seq":81234,"rt":1628238530225123}"#
        );
        let back = decode(&out).unwrap();
        assert_eq!(back.symbol, "AAPL");
        assert_eq!(back.price, 146.76);
        assert_eq!(back.volume, 43.0);
        assert_eq!(back.conditions, ["1", "24", "12"]);
        assert_eq!(
            (back.src.as_str(), back.seq, back.rt_us),
            ("ip-10-0-0-7.7f3a", 81234, 1628238530225123)
        );
    }

    #[test]
    fn records_without_conditions_omit_the_field() {
        let trade = Trade {
            symbol: "X\\Y",
            price: 0.1,
            time_ms: 5,
            volume: 0.25,
            conditions: Conditions::default(),
        };
        let mut out = Vec::new();
        encode(&mut out, &trade, Receipt { src: "s", seq: 0, rt_us: 9 });
        assert!(!out.windows(4).any(|w| w == br#""c":"#));
        let back = decode(&out).unwrap();
        assert_eq!(back.symbol, "X\\Y");
        assert!(back.conditions.is_empty());
    }

    #[test]
    fn raw_records_keep_the_numbers_as_received() {
        let frame = br#"{"data":[{"s":"AAPL","p":146.760,"t":1628238530221,"v":43.0,"c":["1","24"]}],"type":"trade"}"#;
        let mut out = Vec::new();
        let receipt = Receipt { src: "i.1", seq: 7, rt_us: 9 };
        let n = crate::finnhub::scan::trades(frame, |t| encode_raw(&mut out, t, receipt));
        assert_eq!(n, Some(1));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"s":"AAPL","p":146.760,"v":43.0,"t":1628238530221,"c":["1","24"],"src":"i.1","seq":7,"rt":9}"#
        );
        let back = decode(&out).unwrap();
        assert_eq!((back.price, back.volume, back.seq), (146.76, 43.0, 7));
        assert_eq!(back.conditions, ["1", "24"]);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"{}").is_err());
        assert!(decode(b"\xff").is_err());
    }
}

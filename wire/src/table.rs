//! The DynamoDB schema: keys and attribute names the Lambda writes and the dashboard reads.
//!
//! One table with string keys `pk` and `sk`:
//!
//! | item   | pk                     | sk                                          |
//! |--------|------------------------|---------------------------------------------|
//! | trade  | `T#<symbol>`           | `<t, 13 digits>#<src>#<seq, 20 digits>`     |
//! | candle | `C#<symbol>#<interval>`| `<bucket start ms, 13 digits>`              |
//! | latest | `L`                    | `<symbol>`                                  |
//!
//! Numbers in sort keys are zero-padded so that string order is time order.

/// Default table name.
pub const DEFAULT_TABLE: &str = "tickpipe";

pub const PK: &str = "pk";
pub const SK: &str = "sk";
/// TTL attribute, seconds since the epoch.
pub const EXPIRES_AT: &str = "expires_at";

// Trade attributes.
pub const PRICE: &str = "price";
pub const VOLUME: &str = "volume";
pub const CONDITIONS: &str = "conditions";
pub const RT: &str = "rt";

// Candle attributes.
pub const OPEN: &str = "open";
pub const HIGH: &str = "high";
pub const LOW: &str = "low";
pub const CLOSE: &str = "close";
pub const NOTIONAL: &str = "notional";
pub const COUNT: &str = "count";
pub const VWAP: &str = "vwap";
pub const FIRST_T: &str = "first_t";
pub const LAST_T: &str = "last_t";
/// Map from shard id to the highest Kinesis sequence number already folded in.
pub const HIGH_WATER: &str = "hw";

// Latest-price attributes.
pub const T: &str = "t";
pub const UPDATED_AT: &str = "updated_at";

/// Partition key of the latest-price items.
pub const LATEST_PK: &str = "L";

/// The one candle interval written today, and its length.
pub const CANDLE_1M: &str = "1m";
pub const CANDLE_1M_MS: u64 = 60_000;

pub fn trade_pk(symbol: &str) -> String {
    format!("T#{symbol}")
}

pub fn trade_sk(time_ms: u64, src: &str, seq: u64) -> String {
    format!("{time_ms:013}#{src}#{seq:020}")
}

pub fn candle_pk(symbol: &str, interval: &str) -> String {
    format!("C#{symbol}#{interval}")
}

pub fn candle_sk(bucket_start_ms: u64) -> String {
    format!("{bucket_start_ms:013}")
}

/// Start of the candle bucket that `time_ms` falls in.
pub fn bucket_start(time_ms: u64, interval_ms: u64) -> u64 {
    time_ms - time_ms % interval_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_time_order() {
        assert_eq!(trade_pk("AAPL"), "T#AAPL");
        assert_eq!(trade_sk(1628238530221, "i.1", 7), "1628238530221#i.1#00000000000000000007");
        assert_eq!(candle_pk("AAPL", CANDLE_1M), "C#AAPL#1m");
        assert_eq!(candle_sk(60_000), "0000000060000");
        assert!(candle_sk(999_999) < candle_sk(1_000_000));
        assert_eq!(bucket_start(1628238530221, CANDLE_1M_MS), 1628238480000);
    }
}

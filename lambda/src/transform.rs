//! User records to what the table stores: trade items, candle deltas and latest prices.
//!
//! Pure and free of I/O so that it can be benchmarked and tested on its own. The store
//! decides what to write; this module decides what the numbers are.
//!
//! Choices that are not obvious:
//!
//! - A volume-0 user record is a price update, not a trade, in Finnhub's words. It is still
//!   counted as a trade with volume 0: it is stored as a trade item, moves the latest price,
//!   and enters the candle's open, high, low, close, count, first_t and last_t, but adds
//!   nothing to volume or notional. Counting it keeps `count` equal to the number of trade
//!   items in the bucket, which is what the dashboard can check.
//! - Open is the price of the earliest `t` in the bucket and close the price of the latest;
//!   when two records share a `t`, the one that arrived first (lower position in the shard,
//!   or folded into the candle earlier) opens, and the one that arrived last closes.
//! - A user record that appears twice in one batch (same `src` and `seq`, which happens when
//!   the ingestor's PutRecords was retried) is kept once. Duplicates split across batches
//!   are caught for trade items, whose keys are deterministic, but not for candles, whose
//!   high-water marks track Kinesis positions rather than trade ids.

use std::collections::{BTreeMap, HashMap, HashSet};

use wire::limits::PARTITION_KEY_MAX_CHARS;
use wire::record::UserRecord;
use wire::table::{CANDLE_1M_MS, bucket_start};

use crate::position::Position;

/// Longest `src` accepted, in bytes. The trade sort key embeds it and DynamoDB caps sort
/// keys at 1,024 bytes; ingestor instance names are far shorter.
pub const SRC_MAX_BYTES: usize = 256;
/// Most condition codes accepted on one trade (Finnhub sends a handful).
pub const CONDITIONS_MAX: usize = 64;
/// Longest condition code accepted, in bytes.
pub const CONDITION_MAX_BYTES: usize = 64;
/// Largest `t` that still fits the 13-digit time in trade and candle sort keys.
pub const TIME_MS_MAX: u64 = 9_999_999_999_999;
/// Bounds on prices and non-zero volumes. DynamoDB numbers span 1e-130 to 1e126; keeping
/// inputs within 1e-30..1e18 keeps every product and any realistic sum inside that range,
/// so no write can fail on a number.
pub const VALUE_MIN: f64 = 1e-30;
pub const VALUE_MAX: f64 = 1e18;

/// Why a decoded user record cannot be stored. Retrying never helps: the record is poison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTrade {
    #[error("symbol is empty or longer than {PARTITION_KEY_MAX_CHARS} characters")]
    Symbol,
    #[error("price is not between {VALUE_MIN:e} and {VALUE_MAX:e}")]
    Price,
    #[error("volume is neither 0 nor between {VALUE_MIN:e} and {VALUE_MAX:e}")]
    Volume,
    #[error("time t is later than {TIME_MS_MAX} ms")]
    Time,
    #[error("src is empty or longer than {SRC_MAX_BYTES} bytes")]
    Src,
    #[error(
        "more than {CONDITIONS_MAX} condition codes or one longer than {CONDITION_MAX_BYTES} bytes"
    )]
    Conditions,
}

impl InvalidTrade {
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Checks that a user record can become valid DynamoDB items.
pub fn validate(r: &UserRecord) -> Result<(), InvalidTrade> {
    if r.symbol.is_empty() || r.symbol.chars().count() > PARTITION_KEY_MAX_CHARS {
        return Err(InvalidTrade::Symbol);
    }
    let in_range = |v: f64| (VALUE_MIN..=VALUE_MAX).contains(&v);
    if !in_range(r.price) {
        return Err(InvalidTrade::Price);
    }
    if !(r.volume == 0.0 || in_range(r.volume)) {
        return Err(InvalidTrade::Volume);
    }
    if r.time_ms > TIME_MS_MAX {
        return Err(InvalidTrade::Time);
    }
    if r.src.is_empty() || r.src.len() > SRC_MAX_BYTES {
        return Err(InvalidTrade::Src);
    }
    if r.conditions.len() > CONDITIONS_MAX
        || r.conditions.iter().any(|c| c.len() > CONDITION_MAX_BYTES)
    {
        return Err(InvalidTrade::Conditions);
    }
    Ok(())
}

/// One Kinesis record of the batch, as far as positions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub shard: String,
    pub sequence_number: String,
}

/// A decoded user record and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedRecord {
    pub record: UserRecord,
    /// Index of the Kinesis record in the batch (into the `origins` slice).
    pub origin: usize,
    /// Index inside the aggregated record; 0 for a plain record.
    pub sub: u32,
}

/// One trade's contribution to a candle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    pub price: f64,
    pub volume: f64,
    pub time_ms: u64,
    pub origin: usize,
    pub sub: u32,
}

/// Open-high-low-close and totals over a set of trades.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candle {
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    /// Sum of price times volume.
    pub notional: f64,
    pub count: u64,
    pub first_t: u64,
    pub last_t: u64,
}

impl Candle {
    /// The candle of a single trade.
    pub fn of(price: f64, volume: f64, time_ms: u64) -> Self {
        Self {
            open: price,
            high: price,
            low: price,
            close: price,
            volume,
            notional: price * volume,
            count: 1,
            first_t: time_ms,
            last_t: time_ms,
        }
    }

    /// Folds in trades that arrived after every trade already in `self`.
    pub fn absorb(&mut self, later: &Candle) {
        // Ties on time: the earlier arrival keeps the open, the later one takes the close.
        if later.first_t < self.first_t {
            self.open = later.open;
            self.first_t = later.first_t;
        }
        if later.last_t >= self.last_t {
            self.close = later.close;
            self.last_t = later.last_t;
        }
        self.high = self.high.max(later.high);
        self.low = self.low.min(later.low);
        self.volume += later.volume;
        self.notional += later.notional;
        self.count += later.count;
    }

    /// Volume-weighted average price; the close when nothing traded with volume.
    pub fn vwap(&self) -> f64 {
        if self.volume > 0.0 { self.notional / self.volume } else { self.close }
    }

    /// The candle of `ticks` taken in arrival order; `None` when there are none.
    pub fn from_ticks<'a>(ticks: impl IntoIterator<Item = &'a Tick>) -> Option<Self> {
        let mut ticks = ticks.into_iter();
        let first = ticks.next()?;
        let mut candle = Candle::of(first.price, first.volume, first.time_ms);
        for t in ticks {
            candle.absorb(&Candle::of(t.price, t.volume, t.time_ms));
        }
        Some(candle)
    }
}

/// What one batch adds to one candle.
#[derive(Debug, Clone, PartialEq)]
pub struct CandleDelta {
    pub symbol: String,
    pub bucket_start_ms: u64,
    /// The trades in arrival order, kept so that a retried batch can fold only those past
    /// the candle's high-water mark.
    pub ticks: Vec<Tick>,
    /// The candle of all `ticks`, for the common case where none was folded before.
    pub summary: Candle,
}

impl CandleDelta {
    /// The earliest Kinesis record this delta draws on.
    pub fn first_origin(&self) -> usize {
        self.ticks.iter().map(|t| t.origin).min().unwrap_or(0)
    }
}

/// Per shard, the highest position already folded into a candle.
pub type HighWater = BTreeMap<String, Position>;

/// Folds the trades of `delta` that lie past `high_water` into `existing`, and moves the
/// marks up to the last trade folded. Returns `None` when every trade was folded before,
/// so there is nothing to write.
pub fn fold(
    existing: Option<&Candle>,
    high_water: &mut HighWater,
    delta: &CandleDelta,
    origins: &[Origin],
) -> Option<Candle> {
    let is_new = |t: &Tick| {
        let o = &origins[t.origin];
        high_water.get(&o.shard).is_none_or(|hw| hw.cmp_parts(&o.sequence_number, t.sub).is_lt())
    };
    let fresh: Vec<&Tick> = delta.ticks.iter().filter(|t| is_new(t)).collect();
    let added = if fresh.len() == delta.ticks.len() {
        delta.summary
    } else {
        Candle::from_ticks(fresh.iter().copied())?
    };
    for t in fresh {
        let o = &origins[t.origin];
        match high_water.get_mut(&o.shard) {
            Some(hw) if hw.cmp_parts(&o.sequence_number, t.sub).is_ge() => {}
            Some(hw) => *hw = Position::new(o.sequence_number.as_str(), t.sub),
            None => {
                high_water
                    .insert(o.shard.clone(), Position::new(o.sequence_number.as_str(), t.sub));
            }
        }
    }
    let mut candle = existing.copied().unwrap_or(added);
    if existing.is_some() {
        candle.absorb(&added);
    }
    Some(candle)
}

/// The newest price of one symbol in a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestPrice {
    pub symbol: String,
    pub price: f64,
    pub time_ms: u64,
    /// The Kinesis record that carried it.
    pub origin: usize,
}

/// Everything one batch writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transformed {
    /// User records to store as trade items, duplicates removed, in arrival order.
    pub trades: Vec<SourcedRecord>,
    /// One delta per (symbol, 1-minute bucket), sorted by symbol then bucket.
    pub candles: Vec<CandleDelta>,
    /// One entry per symbol, sorted by symbol.
    pub latest: Vec<LatestPrice>,
    /// User records dropped because the same `(src, seq)` came earlier in the batch.
    pub duplicates: usize,
}

/// Turns validated user records, in arrival order, into what the batch writes.
pub fn transform(records: Vec<SourcedRecord>) -> Transformed {
    let keep = first_occurrences(&records);
    let duplicates = keep.iter().filter(|k| !**k).count();

    let mut deltas: HashMap<(&str, u64), CandleDelta> = HashMap::new();
    let mut latest: HashMap<&str, LatestPrice> = HashMap::new();
    for (s, _) in records.iter().zip(&keep).filter(|(_, keep)| **keep) {
        let r = &s.record;
        let tick = Tick {
            price: r.price,
            volume: r.volume,
            time_ms: r.time_ms,
            origin: s.origin,
            sub: s.sub,
        };
        let bucket = bucket_start(r.time_ms, CANDLE_1M_MS);
        deltas
            .entry((r.symbol.as_str(), bucket))
            .and_modify(|d| {
                d.summary.absorb(&Candle::of(r.price, r.volume, r.time_ms));
                d.ticks.push(tick);
            })
            .or_insert_with(|| CandleDelta {
                symbol: r.symbol.clone(),
                bucket_start_ms: bucket,
                ticks: vec![tick],
                summary: Candle::of(r.price, r.volume, r.time_ms),
            });
        let newest = LatestPrice {
            symbol: r.symbol.clone(),
            price: r.price,
            time_ms: r.time_ms,
            origin: s.origin,
        };
        latest
            .entry(r.symbol.as_str())
            // Ties on time go to the later arrival, as for a candle's close.
            .and_modify(|l| {
                if r.time_ms >= l.time_ms {
                    *l = newest.clone();
                }
            })
            .or_insert(newest);
    }

    let mut candles: Vec<CandleDelta> = deltas.into_values().collect();
    candles.sort_by(|a, b| (&a.symbol, a.bucket_start_ms).cmp(&(&b.symbol, b.bucket_start_ms)));
    let mut latest: Vec<LatestPrice> = latest.into_values().collect();
    latest.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    let trades = records.into_iter().zip(keep).filter_map(|(s, keep)| keep.then_some(s)).collect();
    Transformed { trades, candles, latest, duplicates }
}

/// For each record, whether it is the first with its `(src, seq)`.
fn first_occurrences(records: &[SourcedRecord]) -> Vec<bool> {
    let mut seen: HashSet<(&str, u64)> = HashSet::with_capacity(records.len());
    records.iter().map(|s| seen.insert((s.record.src.as_str(), s.record.seq))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(symbol: &str, price: f64, volume: f64, t: u64, seq: u64) -> UserRecord {
        UserRecord {
            symbol: symbol.into(),
            price,
            volume,
            time_ms: t,
            conditions: vec![],
            src: "i.1".into(),
            seq,
            rt_us: t * 1000,
        }
    }

    fn origins(n: usize) -> Vec<Origin> {
        (0..n)
            .map(|i| Origin { shard: "shardId-0".into(), sequence_number: format!("{}", 1000 + i) })
            .collect()
    }

    /// One user record per Kinesis record.
    fn sourced(records: Vec<UserRecord>) -> Vec<SourcedRecord> {
        records
            .into_iter()
            .enumerate()
            .map(|(i, record)| SourcedRecord { record, origin: i, sub: 0 })
            .collect()
    }

    /// The candle computed the obvious way, straight from the definition.
    fn direct(trades: &[(f64, f64, u64)]) -> Candle {
        let first_t = trades.iter().map(|t| t.2).min().unwrap();
        let last_t = trades.iter().map(|t| t.2).max().unwrap();
        Candle {
            open: trades.iter().find(|t| t.2 == first_t).unwrap().0,
            close: trades.iter().rev().find(|t| t.2 == last_t).unwrap().0,
            high: trades.iter().map(|t| t.0).fold(f64::MIN, f64::max),
            low: trades.iter().map(|t| t.0).fold(f64::MAX, f64::min),
            volume: trades.iter().map(|t| t.1).sum(),
            notional: trades.iter().map(|t| t.0 * t.1).sum(),
            count: trades.len() as u64,
            first_t,
            last_t,
        }
    }

    #[test]
    fn candles_equal_a_direct_computation() {
        // Out of time order, with ties on t and a volume-0 price update.
        let trades = [
            (10.0, 2.0, 60_500),
            (11.5, 1.0, 60_100),
            (9.25, 3.0, 60_100),
            (12.0, 0.0, 60_900),
            (10.5, 4.0, 60_900),
            (10.75, 1.5, 60_300),
        ];
        let records = trades.iter().enumerate().map(|(i, t)| rec("A", t.0, t.1, t.2, i as u64));
        let out = transform(sourced(records.collect()));
        assert_eq!(out.candles.len(), 1);
        let d = &out.candles[0];
        assert_eq!((d.symbol.as_str(), d.bucket_start_ms), ("A", 60_000));
        let want = direct(&trades);
        assert_eq!(d.summary, want);
        // Open is the first arrival at the earliest t, close the last arrival at the latest.
        assert_eq!((want.open, want.close), (11.5, 10.5));
        assert_eq!(want.count, 6);
        assert_eq!(want.volume, 11.5);
        assert!((d.summary.vwap() - want.notional / 11.5).abs() < 1e-12);
    }

    #[test]
    fn trades_split_by_symbol_and_minute() {
        let records = vec![
            rec("A", 1.0, 1.0, 59_999, 0),
            rec("A", 2.0, 1.0, 60_000, 1),
            rec("B", 3.0, 1.0, 60_001, 2),
            rec("A", 4.0, 1.0, 119_999, 3),
        ];
        let out = transform(sourced(records));
        let keys: Vec<(&str, u64, u64)> = out
            .candles
            .iter()
            .map(|d| (d.symbol.as_str(), d.bucket_start_ms, d.summary.count))
            .collect();
        assert_eq!(keys, [("A", 0, 1), ("A", 60_000, 2), ("B", 60_000, 1)]);
        let latest: Vec<(&str, f64)> =
            out.latest.iter().map(|l| (l.symbol.as_str(), l.price)).collect();
        assert_eq!(latest, [("A", 4.0), ("B", 3.0)]);
    }

    #[test]
    fn latest_is_by_time_not_arrival() {
        let records = vec![rec("A", 5.0, 1.0, 2_000, 0), rec("A", 4.0, 1.0, 1_000, 1)];
        let out = transform(sourced(records));
        assert_eq!(out.latest.len(), 1);
        assert_eq!(
            (out.latest[0].price, out.latest[0].time_ms, out.latest[0].origin),
            (5.0, 2_000, 0)
        );
    }

    #[test]
    fn volume_zero_is_a_trade_without_volume() {
        let out = transform(sourced(vec![rec("A", 5.0, 0.0, 1_000, 0)]));
        let c = out.candles[0].summary;
        assert_eq!((c.count, c.volume, c.notional, c.close), (1, 0.0, 0.0, 5.0));
        assert_eq!(c.vwap(), 5.0, "vwap falls back to the close");
        assert_eq!(out.trades.len(), 1);
    }

    #[test]
    fn duplicates_in_a_batch_count_once() {
        let records = vec![
            rec("A", 5.0, 1.0, 1_000, 7),
            rec("A", 6.0, 1.0, 1_001, 8),
            rec("A", 5.0, 1.0, 1_000, 7),
        ];
        let out = transform(sourced(records));
        assert_eq!(out.duplicates, 1);
        assert_eq!(out.trades.len(), 2);
        assert_eq!(out.candles[0].summary.count, 2);
        assert_eq!(out.trades.iter().map(|t| t.origin).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn folding_twice_counts_once() {
        let records = vec![rec("A", 5.0, 1.0, 1_000, 0), rec("A", 6.0, 2.0, 1_001, 1)];
        let origins = origins(2);
        let out = transform(sourced(records));
        let delta = &out.candles[0];
        let mut hw = HighWater::new();
        let once = fold(None, &mut hw, delta, &origins).unwrap();
        assert_eq!(once, delta.summary);
        assert_eq!(hw["shardId-0"], Position::new("1001", 0));
        // The same batch again: nothing new, nothing to write.
        assert_eq!(fold(Some(&once), &mut hw, delta, &origins), None);
    }

    #[test]
    fn folding_a_partly_seen_batch_adds_only_the_rest() {
        let trades = [(5.0, 1.0, 1_000), (7.0, 2.0, 1_002), (6.0, 3.0, 1_001)];
        // All three in one aggregated record: positions 1000/0, 1000/1, 1000/2.
        let records: Vec<SourcedRecord> = trades
            .iter()
            .enumerate()
            .map(|(i, t)| SourcedRecord {
                record: rec("A", t.0, t.1, t.2, i as u64),
                origin: 0,
                sub: i as u32,
            })
            .collect();
        let origins = origins(1);
        let out = transform(records);
        let delta = &out.candles[0];

        // A candle that already holds the first trade, as if an earlier write got that far.
        let mut hw = HighWater::from([("shardId-0".to_owned(), Position::new("1000", 0))]);
        let seen = Candle::of(5.0, 1.0, 1_000);
        let folded = fold(Some(&seen), &mut hw, delta, &origins).unwrap();
        assert_eq!(folded, direct(&trades));
        assert_eq!(hw["shardId-0"], Position::new("1000", 2));

        // A mark from another shard does not hide this shard's trades.
        let mut other = HighWater::from([("shardId-9".to_owned(), Position::new("99999", 5))]);
        assert_eq!(fold(None, &mut other, delta, &origins), Some(direct(&trades)));
        assert_eq!(other.len(), 2);
    }

    #[test]
    fn absorbing_keeps_tie_rules_across_batches() {
        let mut c = Candle::of(1.0, 1.0, 500);
        // Same t as the open arrives later: the open stays, the close moves.
        c.absorb(&Candle::of(2.0, 1.0, 500));
        assert_eq!((c.open, c.close), (1.0, 2.0));
        // An earlier t arrives later: it becomes the open but not the close.
        c.absorb(&Candle::of(3.0, 1.0, 400));
        assert_eq!((c.open, c.close, c.first_t, c.last_t), (3.0, 2.0, 400, 500));
    }

    #[test]
    fn validation_refuses_what_dynamodb_or_the_keys_cannot_hold() {
        let ok = rec("A", 1.0, 0.0, 1, 1);
        assert_eq!(validate(&ok), Ok(()));
        let bad = |f: fn(&mut UserRecord)| {
            let mut r = ok.clone();
            f(&mut r);
            validate(&r).unwrap_err()
        };
        assert_eq!(bad(|r| r.symbol.clear()), InvalidTrade::Symbol);
        assert_eq!(bad(|r| r.symbol = "x".repeat(257)), InvalidTrade::Symbol);
        assert_eq!(bad(|r| r.price = 0.0), InvalidTrade::Price);
        assert_eq!(bad(|r| r.price = f64::INFINITY), InvalidTrade::Price);
        assert_eq!(bad(|r| r.price = f64::NAN), InvalidTrade::Price);
        assert_eq!(bad(|r| r.price = 1e19), InvalidTrade::Price);
        assert_eq!(bad(|r| r.volume = -1.0), InvalidTrade::Volume);
        assert_eq!(bad(|r| r.volume = 1e-300), InvalidTrade::Volume);
        assert_eq!(bad(|r| r.time_ms = TIME_MS_MAX + 1), InvalidTrade::Time);
        assert_eq!(bad(|r| r.src = "s".repeat(SRC_MAX_BYTES + 1)), InvalidTrade::Src);
        assert_eq!(
            bad(|r| r.conditions = vec!["1".into(); CONDITIONS_MAX + 1]),
            InvalidTrade::Conditions
        );
    }
}

//! Per-trade verification of what the sink accepted.
//!
//! Each accepted Kinesis record is deaggregated ([`wire::kpl::deaggregate`], which passes
//! plain records through) and each user record decoded ([`wire::record::decode`]); that work
//! happens outside any lock, in [`decode_trades`]. [`Verifier::observe`] then checks every
//! trade under the sink's verifier lock, in the order the records were sequenced:
//!
//! - duplicates: `(src, seq)` seen before, tracked per source in a [`SeqSet`];
//! - reorders: a trade whose `seq` is below the last one seen for its `(src, symbol)`;
//! - latency: arrival time minus the ingestor's receive time `rt`, in µs, in an
//!   hdrhistogram.
//!
//! A duplicate is not also a reorder and adds no latency sample: it is a retry's second
//! copy, and its age says how long the retry took, not how fast the pipeline is.

use std::collections::HashMap;

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::seen::{Insert, SeqSet};

/// Significant figures the latency histogram keeps (0.1% resolution).
const LATENCY_SIGFIGS: u8 = 3;

/// One trade as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub src: String,
    pub symbol: String,
    pub seq: u64,
    pub rt_us: u64,
}

/// What one Kinesis record unpacked into.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// User records decoded into trades.
    pub trades: u64,
    /// The record claimed to be aggregated but its checksum or protobuf was wrong.
    pub undecodable_record: bool,
    /// User records that were not valid trade JSON.
    pub undecodable_user_records: u64,
}

/// Unpacks one Kinesis record into `out`, counting what could not be read.
pub fn decode_trades(data: Bytes, partition_key: &str, out: &mut Vec<Observed>) -> Unpacked {
    let mut unpacked = Unpacked::default();
    let Ok(user_records) = wire::kpl::deaggregate(data, partition_key) else {
        unpacked.undecodable_record = true;
        return unpacked;
    };
    out.reserve(user_records.len());
    for user_record in user_records {
        match wire::record::decode(&user_record.data) {
            Ok(r) => {
                out.push(Observed { src: r.src, symbol: r.symbol, seq: r.seq, rt_us: r.rt_us });
                unpacked.trades += 1;
            }
            Err(_) => unpacked.undecodable_user_records += 1,
        }
    }
    unpacked
}

/// What the checks found, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VerifyTotals {
    /// Trades received, duplicates included.
    pub trades: u64,
    pub duplicates: u64,
    pub reorders: u64,
}

/// One ingestor instance's trades.
#[derive(Debug)]
struct Source {
    name: Box<str>,
    seen: SeqSet,
    last_seq_by_symbol: HashMap<Box<str>, u64>,
}

/// The running checks over every trade accepted.
#[derive(Debug)]
pub struct Verifier {
    index: HashMap<Box<str>, usize>,
    sources: Vec<Source>,
    /// The source of the previous trade: consecutive trades nearly always share one, and
    /// comparing names is cheaper than hashing.
    last_source: Option<usize>,
    latency_us: Histogram<u64>,
    /// Trades received before this time (µs since the epoch) add no latency sample.
    latency_from_us: u64,
    totals: VerifyTotals,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Self {
            index: HashMap::new(),
            sources: Vec::new(),
            last_source: None,
            latency_us: Histogram::new(LATENCY_SIGFIGS)
                .expect("3 significant figures is within hdrhistogram's 0 to 5"),
            latency_from_us: 0,
            totals: VerifyTotals::default(),
        }
    }

    /// From now on, leaves trades received before `rt_us` out of the latency histogram,
    /// and forgets the samples already taken of such trades: a warm-up's latency says
    /// nothing about the steady state. Counts, duplicates and order still cover them.
    pub fn measure_latency_from(&mut self, rt_us: u64) {
        self.latency_from_us = rt_us;
        self.latency_us.reset();
    }

    /// Checks one trade that arrived at `arrival_us` (µs since the Unix epoch).
    pub fn observe(&mut self, src: &str, symbol: &str, seq: u64, rt_us: u64, arrival_us: u64) {
        self.totals.trades += 1;
        let source = self.source(src);
        if source.seen.insert(seq) == Insert::Duplicate {
            self.totals.duplicates += 1;
            return;
        }
        match source.last_seq_by_symbol.get_mut(symbol) {
            Some(last) if seq < *last => self.totals.reorders += 1,
            Some(last) => *last = seq,
            None => {
                source.last_seq_by_symbol.insert(symbol.into(), seq);
            }
        }
        if rt_us < self.latency_from_us {
            return;
        }
        // A receive time after arrival means the clocks disagree (or the record lies);
        // it counts as zero latency rather than vanishing from the histogram.
        let latency = arrival_us.saturating_sub(rt_us);
        // `record` grows the histogram to fit; `saturating_record` would not, and files
        // every value beyond the current range under the lowest bucket instead.
        if self.latency_us.record(latency).is_err() {
            self.latency_us.saturating_record(latency);
        }
    }

    /// Checks decoded trades, in order.
    pub fn observe_all(&mut self, trades: &[Observed], arrival_us: u64) {
        for t in trades {
            self.observe(&t.src, &t.symbol, t.seq, t.rt_us, arrival_us);
        }
    }

    fn source(&mut self, src: &str) -> &mut Source {
        let i = match self.last_source {
            Some(i) if *self.sources[i].name == *src => i,
            _ => {
                let i = match self.index.get(src) {
                    Some(&i) => i,
                    None => {
                        let i = self.sources.len();
                        self.sources.push(Source {
                            name: src.into(),
                            seen: SeqSet::new(),
                            last_seq_by_symbol: HashMap::new(),
                        });
                        self.index.insert(src.into(), i);
                        i
                    }
                };
                self.last_source = Some(i);
                i
            }
        };
        &mut self.sources[i]
    }

    pub fn totals(&self) -> VerifyTotals {
        self.totals
    }

    /// Receive-to-arrival latency of every trade that was not a duplicate, in µs.
    pub fn latency_us(&self) -> &Histogram<u64> {
        &self.latency_us
    }

    /// Ingestor instances seen.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Sequence numbers below each source's highest that never arrived, summed.
    pub fn missing(&self) -> u64 {
        self.sources.iter().map(|s| s.seen.missing()).sum()
    }

    /// Sequence numbers the duplicate windows slid past unseen, summed.
    pub fn evicted(&self) -> u64 {
        self.sources.iter().map(|s| s.seen.evicted()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::finnhub::{Conditions, Trade};
    use wire::kpl::Aggregator;
    use wire::record::{Receipt, encode};

    fn user_record(symbol: &str, src: &str, seq: u64, rt_us: u64) -> Vec<u8> {
        let trade = Trade {
            symbol,
            price: 1.5,
            time_ms: 1,
            volume: 2.0,
            conditions: Conditions::default(),
        };
        let mut out = Vec::new();
        encode(&mut out, &trade, Receipt { src, seq, rt_us });
        out
    }

    #[test]
    fn aggregated_and_plain_records_unpack() {
        let mut agg = Aggregator::new();
        agg.push("A", &user_record("A", "i1", 0, 10));
        agg.push("B", &user_record("B", "i1", 1, 20));
        agg.push("B", b"not json");
        let (bytes, key) = agg.finish().unwrap();
        let mut out = Vec::new();
        let unpacked = decode_trades(Bytes::from(bytes), &key, &mut out);
        assert_eq!(unpacked.trades, 2);
        assert_eq!(unpacked.undecodable_user_records, 1);
        assert_eq!(out[1], Observed { src: "i1".into(), symbol: "B".into(), seq: 1, rt_us: 20 });

        let plain = Bytes::from(user_record("C", "i2", 7, 5));
        let unpacked = decode_trades(plain, "C", &mut out);
        assert_eq!(unpacked.trades, 1);
        assert_eq!(out[2].seq, 7);
    }

    #[test]
    fn corrupt_aggregates_count_as_undecodable() {
        let mut agg = Aggregator::new();
        agg.push("A", &user_record("A", "i1", 0, 10));
        let (mut bytes, key) = agg.finish().unwrap();
        bytes[6] ^= 0xff;
        let mut out = Vec::new();
        let unpacked = decode_trades(Bytes::from(bytes), &key, &mut out);
        assert!(unpacked.undecodable_record);
        assert!(out.is_empty());
    }

    #[test]
    fn duplicates_reorders_and_latency_are_counted() {
        let mut v = Verifier::new();
        v.observe("i1", "A", 0, 1_000, 1_500);
        v.observe("i1", "B", 1, 1_000, 1_700);
        v.observe("i1", "A", 3, 1_000, 2_000);
        v.observe("i1", "A", 2, 1_000, 2_000); // below A's 3: a reorder, not a duplicate
        v.observe("i1", "A", 3, 1_000, 9_000); // a duplicate, not a reorder
        v.observe("i2", "A", 0, 1_000, 1_000); // another instance: its own numbering
        v.observe("i1", "B", 5, 2_000, 1_000); // clock skew: zero latency
        assert_eq!(v.totals(), VerifyTotals { trades: 7, duplicates: 1, reorders: 1 });
        assert_eq!(v.sources(), 2);
        assert_eq!(v.missing(), 1); // i1's 4
        assert_eq!(v.latency_us().len(), 6);
        assert_eq!(v.latency_us().max(), 1_000);
        assert_eq!(v.latency_us().min(), 0);
    }

    #[test]
    fn a_warm_up_is_left_out_of_latency_but_not_out_of_the_checks() {
        let mut v = Verifier::new();
        v.observe("i1", "A", 0, 1_000, 900_000); // a slow start
        v.measure_latency_from(2_000);
        assert!(v.latency_us().is_empty(), "samples of the warm-up are forgotten");
        v.observe("i1", "A", 1, 1_500, 800_000); // received during the warm-up
        v.observe("i1", "A", 2, 2_000, 2_300);
        v.observe("i1", "A", 2, 2_000, 2_400); // still a duplicate
        assert_eq!(v.totals(), VerifyTotals { trades: 4, duplicates: 1, reorders: 0 });
        assert_eq!(v.latency_us().len(), 1);
        assert_eq!(v.latency_us().max(), 300);
    }

    #[test]
    fn long_latencies_are_recorded_as_they_are() {
        let mut v = Verifier::new();
        for (seq, latency) in [20_000u64, 25_000, 30_000, 90_000_000].into_iter().enumerate() {
            v.observe("i", "A", seq as u64, 1_000_000, 1_000_000 + latency);
        }
        let h = v.latency_us();
        // Within hdrhistogram's 3 significant figures.
        assert!(
            (24_900..=25_100).contains(&h.value_at_quantile(0.5)),
            "{}",
            h.value_at_quantile(0.5)
        );
        assert!((89_900_000..=90_100_000).contains(&h.max()), "{}", h.max());
        assert!(h.min() >= 19_900);
    }
}

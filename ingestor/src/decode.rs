//! Frames in, user records out.
//!
//! A trade frame as Finnhub writes it is scanned ([`wire::finnhub::scan`]) and its fields
//! copied as text; any other frame is parsed in place with simd-json
//! ([`wire::finnhub::decode_with_buffers`]). Either way each valid trade is numbered,
//! stamped with its receive time and written straight into the [`Chunk`] that carries
//! user records to the batcher. Nothing is allocated per trade: a chunk holds the records
//! of one or more frames in two byte buffers, and the batcher hands emptied chunks back
//! for reuse, so that in the steady state nothing is allocated per frame either.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tracing::{debug, error, warn};
use wire::finnhub::{self, Frame, scan};
use wire::record::{self, Receipt};

use crate::stats::{Rejected, Stats};

/// The user records of one or more frames, on their way to the batcher.
#[derive(Debug, Default)]
pub struct Chunk {
    /// User records back to back.
    pub data: Vec<u8>,
    /// Partition keys (symbols) back to back.
    pub keys: String,
    pub records: Vec<RecordSpan>,
}

/// Where one user record lives inside a [`Chunk`].
#[derive(Debug, Clone, Copy)]
pub struct RecordSpan {
    pub key_end: u32,
    pub data_end: u32,
    pub rt_us: u64,
}

impl Chunk {
    /// Each record as (partition key, user record bytes, receive time).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8], u64)> + '_ {
        let mut key_start = 0usize;
        let mut data_start = 0usize;
        self.records.iter().map(move |r| {
            let (k, d) = (r.key_end as usize, r.data_end as usize);
            let item = (&self.keys[key_start..k], &self.data[data_start..d], r.rt_us);
            key_start = k;
            data_start = d;
            item
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Ends the record whose bytes were just appended to `data`, under partition key `key`.
    fn end_record(&mut self, key: &str, rt_us: u64) {
        self.keys.push_str(key);
        self.records.push(RecordSpan {
            key_end: self.keys.len() as u32,
            data_end: self.data.len() as u32,
            rt_us,
        });
    }

    /// Empties the chunk for reuse; `None` when it grew too big to be worth keeping.
    pub fn recycle(mut self) -> Option<Chunk> {
        if self.data.capacity() > MAX_RECYCLED_BYTES {
            return None;
        }
        self.data.clear();
        self.keys.clear();
        self.records.clear();
        Some(self)
    }
}

/// A chunk this full is passed on without waiting for more frames; a few hundred trades,
/// enough to make the hand-off cheap per trade, small enough to keep latency low.
pub const CHUNK_FULL_BYTES: usize = 32 * 1024;

/// Chunks with more data capacity than this (grown by a rare huge frame) are freed rather
/// than reused, so the pool of spares never pins that memory.
const MAX_RECYCLED_BYTES: usize = 4 * CHUNK_FULL_BYTES;

/// Emptied chunks on their way back from the batcher to the decoder.
pub type Spares = (crossbeam_channel::Sender<Chunk>, crossbeam_channel::Receiver<Chunk>);

/// A pool for `n` spare chunks.
pub fn spares(n: usize) -> Spares {
    crossbeam_channel::bounded(n)
}

/// What a frame amounted to, for the source's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// This many trades were appended to the chunk.
    Trades(usize),
    /// Liveness only.
    Ping,
    /// Nothing to pass on (an empty trade list, an error frame, a rejected frame).
    Nothing,
}

/// Turns frames into chunks. One per connection reader; it owns the trade numbering.
pub struct Decoder {
    src: Arc<str>,
    next_seq: u64,
    buffers: simd_json::Buffers,
    stats: Arc<Stats>,
    /// Emptied chunks to fill before allocating new ones.
    spares: Option<crossbeam_channel::Receiver<Chunk>>,
}

impl Decoder {
    pub fn new(src: Arc<str>, stats: Arc<Stats>) -> Self {
        Self { src, next_seq: 0, buffers: simd_json::Buffers::default(), stats, spares: None }
    }

    /// Takes chunks to fill from `spares` (see [`Chunk::recycle`]) when there are any.
    pub fn with_spares(mut self, spares: crossbeam_channel::Receiver<Chunk>) -> Self {
        self.spares = Some(spares);
        self
    }

    /// The sequence number the next trade will get; also the count of trades numbered.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// An empty chunk to decode into: a spare one when there is one.
    pub fn chunk(&self) -> Chunk {
        self.spares.as_ref().and_then(|s| s.try_recv().ok()).unwrap_or_default()
    }

    /// Decodes one text frame received at `rt_us` (microseconds since the epoch),
    /// appending its valid trades to `chunk`.
    pub fn decode(&mut self, payload: &mut [u8], rt_us: u64, chunk: &mut Chunk) -> Decoded {
        self.stats.frames.fetch_add(1, Relaxed);
        if let Some(added) = self.scan_frame(payload, rt_us, chunk) {
            self.stats.trades_received.fetch_add(added as u64, Relaxed);
            return if added == 0 { Decoded::Nothing } else { Decoded::Trades(added) };
        }
        self.parse(payload, rt_us, chunk)
    }

    /// The fast path: a trade frame in the scanner's subset, or `None` with `chunk` and
    /// the numbering as they were.
    fn scan_frame(&mut self, payload: &[u8], rt_us: u64, chunk: &mut Chunk) -> Option<usize> {
        let mark = (chunk.data.len(), chunk.keys.len(), chunk.records.len());
        let first_seq = self.next_seq;
        // User records run to about one and a half times the frame text of their trades;
        // reserving twice that means one growth at most per frame.
        chunk.data.reserve(payload.len() * 2);
        let (src, next_seq) = (&*self.src, &mut self.next_seq);
        let scanned = scan::trades(payload, |t| {
            record::encode_raw(&mut chunk.data, t, Receipt { src, seq: *next_seq, rt_us });
            *next_seq += 1;
            chunk.end_record(t.symbol, rt_us);
        });
        if scanned.is_none() {
            chunk.data.truncate(mark.0);
            chunk.keys.truncate(mark.1);
            chunk.records.truncate(mark.2);
            self.next_seq = first_seq;
        }
        scanned
    }

    /// The general path: any frame, parsed with simd-json.
    fn parse(&mut self, payload: &mut [u8], rt_us: u64, chunk: &mut Chunk) -> Decoded {
        let frame = match finnhub::decode_with_buffers(payload, &mut self.buffers) {
            Ok(f) => f,
            Err(e) => {
                let why = match e {
                    finnhub::DecodeError::Malformed(_) => Rejected::Malformed,
                    finnhub::DecodeError::MissingType => Rejected::MissingType,
                };
                self.stats.reject_frame(why);
                // A feed that sends garbage tends to send a lot of it: say it once at WARN
                // per power of two so the log stays readable, and count every one.
                let n = self.stats.rejected_frames(why);
                if n.is_power_of_two() {
                    warn!(reason = why.label(), rejected = n, error = %e, "skipped frame");
                }
                return Decoded::Nothing;
            }
        };
        match frame {
            Frame::Trades(trades) => {
                let before = chunk.len();
                chunk.data.reserve(trades.len() * 160);
                chunk.keys.reserve(trades.len() * 8);
                chunk.records.reserve(trades.len());
                let mut invalid = 0u64;
                for t in &trades {
                    if let Err(why) = t.validate() {
                        invalid += 1;
                        debug!(reason = why.reason(), "skipped trade");
                        continue;
                    }
                    let receipt = Receipt { src: &self.src, seq: self.next_seq, rt_us };
                    self.next_seq += 1;
                    record::encode(&mut chunk.data, t, receipt);
                    chunk.end_record(t.symbol, rt_us);
                }
                if invalid > 0 {
                    let before = self.stats.trades_invalid.fetch_add(invalid, Relaxed);
                    if (before + invalid).is_power_of_two() || before == 0 {
                        warn!(invalid = before + invalid, "skipped trades that failed validation");
                    }
                }
                let added = chunk.len() - before;
                self.stats.trades_received.fetch_add(added as u64, Relaxed);
                if added == 0 { Decoded::Nothing } else { Decoded::Trades(added) }
            }
            Frame::Ping => {
                self.stats.pings.fetch_add(1, Relaxed);
                Decoded::Ping
            }
            Frame::Error(msg) => {
                self.stats.server_errors.fetch_add(1, Relaxed);
                // An error frame means a subscription did not take: trades the operator
                // asked for will not arrive until the configuration changes.
                error!(message = msg, "feed reported an error");
                Decoded::Nothing
            }
            Frame::Unknown(kind) => {
                self.stats.reject_frame(Rejected::UnknownType);
                let n = self.stats.rejected_frames(Rejected::UnknownType);
                if n.is_power_of_two() {
                    warn!(kind, rejected = n, "skipped frame of unknown type");
                }
                Decoded::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> (Decoder, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        (Decoder::new("test.1".into(), stats.clone()), stats)
    }

    fn feed(d: &mut Decoder, text: &str) -> Decoded {
        feed_into(d, text, &mut Chunk::default())
    }

    fn feed_into(d: &mut Decoder, text: &str, chunk: &mut Chunk) -> Decoded {
        let mut buf = text.as_bytes().to_vec();
        d.decode(&mut buf, 42, chunk)
    }

    #[test]
    fn trades_become_numbered_user_records() {
        let (mut d, stats) = decoder();
        let text = r#"{"type":"trade","data":[{"s":"AAPL","p":1.5,"t":10,"v":2},{"s":"MSFT","p":3,"t":11,"v":0}]}"#;
        let mut chunk = Chunk::default();
        assert_eq!(feed_into(&mut d, text, &mut chunk), Decoded::Trades(2));
        let recs: Vec<_> = chunk.iter().collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].0, "AAPL");
        assert_eq!(recs[1].0, "MSFT");
        let r1 = wire::record::decode(recs[1].1).unwrap();
        assert_eq!(
            (r1.symbol.as_str(), r1.seq, r1.rt_us, r1.src.as_str()),
            ("MSFT", 1, 42, "test.1")
        );
        assert_eq!(stats.trades_received.load(Relaxed), 2);
        assert_eq!(d.next_seq(), 2);
    }

    #[test]
    fn frames_append_to_one_chunk_in_order() {
        let (mut d, _) = decoder();
        let mut chunk = Chunk::default();
        let one = r#"{"type":"trade","data":[{"s":"A","p":1,"t":1,"v":1}]}"#;
        let two =
            r#"{"type":"trade","data":[{"s":"BB","p":2,"t":2,"v":1},{"s":"C","p":3,"t":3,"v":1}]}"#;
        assert_eq!(feed_into(&mut d, one, &mut chunk), Decoded::Trades(1));
        assert_eq!(feed_into(&mut d, two, &mut chunk), Decoded::Trades(2));
        let got: Vec<(String, u64, f64)> = chunk
            .iter()
            .map(|(key, data, _)| {
                let r = wire::record::decode(data).unwrap();
                (key.to_owned(), r.seq, r.price)
            })
            .collect();
        let want = [("A", 0, 1.0), ("BB", 1, 2.0), ("C", 2, 3.0)].map(|(k, s, p)| (k.into(), s, p));
        assert_eq!(got, want);
        let spare = chunk.recycle().expect("a small chunk is kept for reuse");
        assert!(spare.is_empty() && spare.data.capacity() > 0);
    }

    /// Every record of `chunk` as (partition key, decoded record, receive time).
    fn records(chunk: &Chunk) -> Vec<(String, wire::record::UserRecord, u64)> {
        chunk
            .iter()
            .map(|(k, d, rt)| (k.to_owned(), wire::record::decode(d).unwrap(), rt))
            .collect()
    }

    /// The same frames through [`Decoder::decode`] and through the general path alone.
    fn both_paths(frames: &[String]) -> (Chunk, Chunk) {
        let ((mut fast, _), (mut general, _)) = (decoder(), decoder());
        let (mut a, mut b) = (Chunk::default(), Chunk::default());
        for f in frames {
            let (mut x, mut y) = (f.clone().into_bytes(), f.clone().into_bytes());
            assert_eq!(fast.decode(&mut x, 42, &mut a), general.parse(&mut y, 42, &mut b), "{f}");
        }
        assert_eq!(fast.next_seq(), general.next_seq());
        (a, b)
    }

    #[test]
    fn a_declined_scan_leaves_nothing_behind() {
        // The scanner takes the first trade, then declines the escaped symbol: the
        // general path must see the chunk and the numbering as they were.
        let frames = [
            r#"{"data":[{"s":"A","p":1,"t":1,"v":1}],"type":"trade"}"#.to_owned(),
            r#"{"data":[{"s":"B","p":2,"t":2,"v":1},{"s":"C\u0044","p":3,"t":3,"v":1}],"type":"trade"}"#.to_owned(),
            r#"{"data":[{"s":"E","p":4,"t":4,"v":1}],"type":"trade"}"#.to_owned(),
        ];
        let (fast, general) = both_paths(&frames);
        let got = records(&fast);
        assert_eq!(got, records(&general));
        let keys: Vec<_> = got.iter().map(|(k, r, _)| (k.as_str(), r.seq)).collect();
        assert_eq!(keys, [("A", 0), ("B", 1), ("CD", 2), ("E", 3)]);
    }

    proptest::proptest! {
        /// Frames as the load generator's feed writes them: the scanner takes each one,
        /// and the records are those the general path writes.
        #[test]
        fn scanned_frames_make_the_records_parsing_makes(
            frames in proptest::collection::vec(
                proptest::collection::vec(
                    ("[A-Z:]{1,8}", 0.0f64..1e6, 0u64..2_000_000_000_000, 0.0f64..1e4, 0usize..3),
                    0..6,
                ),
                1..5,
            ),
        ) {
            let codes = ["1", "12", "37"];
            let texts: Vec<String> = frames
                .iter()
                .map(|trades| {
                    let trades: Vec<finnhub::Trade<'_>> = trades
                        .iter()
                        .map(|(s, p, t, v, c)| finnhub::Trade {
                            symbol: s,
                            price: *p,
                            time_ms: *t,
                            volume: *v,
                            conditions: codes[..*c].iter().copied().collect(),
                        })
                        .collect();
                    let mut out = Vec::new();
                    finnhub::write_trade_frame(&mut out, &trades);
                    String::from_utf8(out).unwrap()
                })
                .collect();
            for t in &texts {
                let (mut d, _) = decoder();
                let scanned = d.scan_frame(t.as_bytes(), 1, &mut Chunk::default());
                proptest::prop_assert!(scanned.is_some());
            }
            let (fast, general) = both_paths(&texts);
            proptest::prop_assert_eq!(records(&fast), records(&general));
        }
    }

    #[test]
    fn malformed_frames_are_counted_and_skipped() {
        let (mut d, stats) = decoder();
        assert!(matches!(feed(&mut d, "{not json"), Decoded::Nothing));
        assert!(matches!(feed(&mut d, r#"{"data":[]}"#), Decoded::Nothing));
        assert_eq!(stats.rejected_frames(Rejected::Malformed), 1);
        assert_eq!(stats.rejected_frames(Rejected::MissingType), 1);
        // The decoder keeps working afterwards.
        let ok = r#"{"type":"trade","data":[{"s":"A","p":1,"t":1,"v":1}]}"#;
        assert!(matches!(feed(&mut d, ok), Decoded::Trades(_)));
    }

    #[test]
    fn unknown_types_are_counted_and_skipped() {
        let (mut d, stats) = decoder();
        assert!(matches!(feed(&mut d, r#"{"type":"news","items":[1]}"#), Decoded::Nothing));
        assert_eq!(stats.rejected_frames(Rejected::UnknownType), 1);
        assert!(matches!(feed(&mut d, r#"{"type":"ping"}"#), Decoded::Ping));
    }

    #[test]
    fn invalid_numbers_reject_the_frame_or_the_trade() {
        let (mut d, stats) = decoder();
        // Not a number at all: the frame does not parse.
        let bad = r#"{"type":"trade","data":[{"s":"A","p":"x","t":1,"v":1}]}"#;
        assert!(matches!(feed(&mut d, bad), Decoded::Nothing));
        assert_eq!(stats.rejected_frames(Rejected::Malformed), 1);
        // A number out of range: only that trade is refused, its neighbour passes.
        let mixed =
            r#"{"type":"trade","data":[{"s":"A","p":-1,"t":1,"v":1},{"s":"B","p":2,"t":1,"v":1}]}"#;
        let mut chunk = Chunk::default();
        assert_eq!(feed_into(&mut d, mixed, &mut chunk), Decoded::Trades(1));
        assert_eq!(chunk.len(), 1);
        assert_eq!(stats.trades_invalid.load(Relaxed), 1);
        // Numbering counts only trades passed on.
        assert_eq!(d.next_seq(), 1);
    }
}

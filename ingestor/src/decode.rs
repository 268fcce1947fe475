//! Frames in, user records out.
//!
//! A websocket frame is parsed in place ([`wire::finnhub::decode_with_buffers`]); each
//! valid trade is numbered, stamped with its receive time and written straight into the
//! [`Chunk`] that carries the frame's user records to the batcher. Nothing is allocated
//! per trade: a chunk holds all of a frame's records in two byte buffers.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tracing::{debug, error, warn};
use wire::finnhub::{self, Frame};
use wire::record::{self, Receipt};

use crate::stats::{Rejected, Stats};

/// The user records of one frame, on their way to the batcher.
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
}

/// What a frame amounted to, for the source's bookkeeping.
#[derive(Debug)]
pub enum Decoded {
    Trades(Chunk),
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
}

impl Decoder {
    pub fn new(src: Arc<str>, stats: Arc<Stats>) -> Self {
        Self { src, next_seq: 0, buffers: simd_json::Buffers::default(), stats }
    }

    /// The sequence number the next trade will get; also the count of trades numbered.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Decodes one text frame received at `rt_us` (microseconds since the epoch).
    pub fn decode(&mut self, payload: &mut [u8], rt_us: u64) -> Decoded {
        self.stats.frames.fetch_add(1, Relaxed);
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
                let mut chunk = Chunk {
                    data: Vec::with_capacity(trades.len() * 160),
                    keys: String::with_capacity(trades.len() * 8),
                    records: Vec::with_capacity(trades.len()),
                };
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
                    chunk.keys.push_str(t.symbol);
                    chunk.records.push(RecordSpan {
                        key_end: chunk.keys.len() as u32,
                        data_end: chunk.data.len() as u32,
                        rt_us,
                    });
                }
                if invalid > 0 {
                    let before = self.stats.trades_invalid.fetch_add(invalid, Relaxed);
                    if (before + invalid).is_power_of_two() || before == 0 {
                        warn!(invalid = before + invalid, "skipped trades that failed validation");
                    }
                }
                self.stats.trades_received.fetch_add(chunk.len() as u64, Relaxed);
                if chunk.is_empty() { Decoded::Nothing } else { Decoded::Trades(chunk) }
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
        let mut buf = text.as_bytes().to_vec();
        d.decode(&mut buf, 42)
    }

    #[test]
    fn trades_become_numbered_user_records() {
        let (mut d, stats) = decoder();
        let text = r#"{"type":"trade","data":[{"s":"AAPL","p":1.5,"t":10,"v":2},{"s":"MSFT","p":3,"t":11,"v":0}]}"#;
        let Decoded::Trades(chunk) = feed(&mut d, text) else { panic!("no trades") };
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
        let Decoded::Trades(chunk) = feed(&mut d, mixed) else { panic!("no trades") };
        assert_eq!(chunk.len(), 1);
        assert_eq!(stats.trades_invalid.load(Relaxed), 1);
        // Numbering counts only trades passed on.
        assert_eq!(d.next_seq(), 1);
    }
}

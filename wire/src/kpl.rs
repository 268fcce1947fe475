//! The KPL aggregation format: many user records in one Kinesis record.
//!
//! An aggregated record is the 4 magic bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`,
//! and the 16-byte MD5 digest of the protobuf bytes. The encoder here writes the protobuf
//! by hand, appending each user record to one buffer as it arrives, so that packing costs
//! one copy of the data and no allocation per record. The decoder uses prost messages
//! derived from the KPL's own schema and slices the input without copying.
//!
//! Records written here deaggregate with AWS's own libraries (the KCL and the
//! `aws-kinesis-agg` Python package); the interoperability test in `tests/` proves it.

use std::collections::HashMap;

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

/// First bytes of every aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Length of the MD5 trailer.
const DIGEST_LEN: usize = 16;

// Protobuf keys (field number << 3 | wire type) of the fields the encoder writes.
const KEY_PARTITION_KEY_TABLE: u8 = 1 << 3 | 2;
const KEY_RECORDS: u8 = 3 << 3 | 2;
const KEY_RECORD_PK_INDEX: u8 = 1 << 3;
const KEY_RECORD_DATA: u8 = 3 << 3 | 2;

/// The KPL's `AggregatedRecord` message (proto2).
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<Record>,
}

/// The KPL's `Record` message (proto2).
#[derive(Clone, PartialEq, Message)]
pub struct Record {
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: Bytes,
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// The KPL's `Tag` message (proto2); carried by the format, unused by tickpipe.
#[derive(Clone, PartialEq, Message)]
pub struct Tag {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// Packs user records into one aggregated record.
///
/// The caller decides when the record is full by asking [`Aggregator::len_with`] before
/// each [`Aggregator::push`], and takes the result with [`Aggregator::finish`], which
/// leaves the aggregator empty and ready for reuse.
#[derive(Debug, Default)]
pub struct Aggregator {
    /// Magic bytes followed by the encoded `records` fields.
    buf: Vec<u8>,
    /// Partition key table: key to index, and the keys in index order. Looked up twice
    /// per user record, so it hashes with foldhash rather than SipHash; the keys come
    /// from the ingestor's own subscriptions, so flooding is not a concern.
    key_index: HashMap<String, u64, foldhash::fast::RandomState>,
    keys: Vec<String>,
    /// Encoded size of the partition key table fields.
    key_table_len: usize,
    records: usize,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// User records packed so far.
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Size of the aggregated record if finished now.
    pub fn len(&self) -> usize {
        if self.records == 0 {
            return 0;
        }
        self.buf.len() + self.key_table_len + DIGEST_LEN
    }

    /// Size of the aggregated record if `data` under `partition_key` were pushed now.
    pub fn len_with(&self, partition_key: &str, data_len: usize) -> usize {
        let (index, key_len) = match self.key_index.get(partition_key) {
            Some(&i) => (i, 0),
            None => (self.keys.len() as u64, field_len(partition_key.len())),
        };
        let base = if self.records == 0 { MAGIC.len() + DIGEST_LEN } else { self.len() };
        base + key_len + field_len(record_len(index, data_len))
    }

    /// Appends one user record.
    pub fn push(&mut self, partition_key: &str, data: &[u8]) {
        let index = self.key_index.get(partition_key).copied();
        self.append(partition_key, index, data);
    }

    /// Appends one user record if the aggregated record stays within `max_len` bytes, or
    /// if it is the first; returns whether it did. The same as [`Aggregator::len_with`]
    /// followed by [`Aggregator::push`], with one key lookup instead of two.
    pub fn push_within(&mut self, partition_key: &str, data: &[u8], max_len: usize) -> bool {
        let index = self.key_index.get(partition_key).copied();
        if self.records > 0 {
            let (i, key_len) = match index {
                Some(i) => (i, 0),
                None => (self.keys.len() as u64, field_len(partition_key.len())),
            };
            if self.len() + key_len + field_len(record_len(i, data.len())) > max_len {
                return false;
            }
        }
        self.append(partition_key, index, data);
        true
    }

    /// Appends a record whose key has table index `index`, or a new key when `None`.
    fn append(&mut self, partition_key: &str, index: Option<u64>, data: &[u8]) {
        if self.records == 0 {
            self.buf.extend_from_slice(&MAGIC);
        }
        let index = index.unwrap_or_else(|| {
            let i = self.keys.len() as u64;
            self.key_index.insert(partition_key.to_owned(), i);
            self.keys.push(partition_key.to_owned());
            self.key_table_len += field_len(partition_key.len());
            i
        });
        self.buf.push(KEY_RECORDS);
        encode_varint(record_len(index, data.len()) as u64, &mut self.buf);
        self.buf.push(KEY_RECORD_PK_INDEX);
        encode_varint(index, &mut self.buf);
        self.buf.push(KEY_RECORD_DATA);
        encode_varint(data.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(data);
        self.records += 1;
    }

    /// Returns the aggregated record and the partition key of its first user record (the
    /// key to send it under, so that it lands on that record's shard), and empties the
    /// aggregator. Returns `None` when nothing was pushed.
    pub fn finish(&mut self) -> Option<(Vec<u8>, String)> {
        if self.records == 0 {
            return None;
        }
        // Protobuf readers accept fields in any order, so the key table goes after the
        // records; that lets records stream into the buffer without knowing the table.
        // The next record will likely be about as big as this one: reserving that much
        // now saves the copies of growing a buffer from nothing.
        let next = Vec::with_capacity(self.buf.capacity());
        let mut out = std::mem::replace(&mut self.buf, next);
        out.reserve(self.key_table_len + DIGEST_LEN);
        for key in &self.keys {
            out.push(KEY_PARTITION_KEY_TABLE);
            encode_varint(key.len() as u64, &mut out);
            out.extend_from_slice(key.as_bytes());
        }
        let digest = Md5::digest(&out[MAGIC.len()..]);
        out.extend_from_slice(&digest);
        let first_key = std::mem::take(&mut self.keys).swap_remove(0);
        self.key_index.clear();
        self.key_table_len = 0;
        self.records = 0;
        Some((out, first_key))
    }
}

/// Encoded length of a length-delimited field whose payload is `len` bytes.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Encoded length of a `Record` message body.
fn record_len(index: u64, data_len: usize) -> usize {
    1 + encoded_len_varint(index) + field_len(data_len)
}

/// One user record taken out of a Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecordBytes {
    pub partition_key: String,
    pub data: Bytes,
}

/// Why a Kinesis record that claims to be aggregated could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    #[error("aggregated record's MD5 digest does not match its contents")]
    Checksum,
    #[error("aggregated record's protobuf is invalid: {0}")]
    Protobuf(String),
    #[error("user record {record} names partition key {index}, but the table has {len}")]
    BadKeyIndex { record: usize, index: u64, len: usize },
}

/// True when `data` starts like an aggregated record.
pub fn is_aggregated(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() + DIGEST_LEN && data[..MAGIC.len()] == MAGIC
}

/// Unpacks a Kinesis record into its user records. A plain record (one that does not start
/// with the magic bytes) passes through as one user record under `partition_key`.
pub fn deaggregate(data: Bytes, partition_key: &str) -> Result<Vec<UserRecordBytes>, KplError> {
    if !is_aggregated(&data) {
        return Ok(vec![UserRecordBytes { partition_key: partition_key.to_owned(), data }]);
    }
    let body = data.slice(MAGIC.len()..data.len() - DIGEST_LEN);
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(&body).as_slice() != digest {
        return Err(KplError::Checksum);
    }
    let agg = AggregatedRecord::decode(body).map_err(|e| KplError::Protobuf(e.to_string()))?;
    let keys = agg.partition_key_table;
    agg.records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = usize::try_from(r.partition_key_index).ok().and_then(|k| keys.get(k));
            match key {
                Some(k) => Ok(UserRecordBytes { partition_key: k.clone(), data: r.data }),
                None => Err(KplError::BadKeyIndex {
                    record: i,
                    index: r.partition_key_index,
                    len: keys.len(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pack(records: &[(&str, &[u8])]) -> (Vec<u8>, String) {
        let mut agg = Aggregator::new();
        for (k, d) in records {
            let predicted = agg.len_with(k, d.len());
            agg.push(k, d);
            assert_eq!(agg.len(), predicted, "size prediction for {k:?}");
        }
        agg.finish().unwrap()
    }

    #[test]
    fn round_trip_keeps_keys_data_and_order() {
        let input: &[(&str, &[u8])] =
            &[("AAPL", b"one"), ("MSFT", b""), ("AAPL", b"three"), ("X", &[0u8; 300])];
        let (bytes, first) = pack(input);
        assert_eq!(first, "AAPL");
        assert_eq!(bytes[..4], MAGIC);
        let out = deaggregate(Bytes::from(bytes), "ignored").unwrap();
        let got: Vec<(&str, &[u8])> =
            out.iter().map(|r| (r.partition_key.as_str(), &r.data[..])).collect();
        assert_eq!(got, input);
    }

    #[test]
    fn hand_encoding_matches_prost_reading_and_writing() {
        let (bytes, _) = pack(&[("A", b"x"), ("B", b"y")]);
        let body = &bytes[4..bytes.len() - 16];
        let agg = AggregatedRecord::decode(body).unwrap();
        assert_eq!(agg.partition_key_table, ["A", "B"]);
        assert_eq!(agg.records[0].partition_key_index, 0);
        assert_eq!(agg.records[1].partition_key_index, 1);
        // prost writes required fields even at their default, as proto2 readers demand.
        let reencoded = agg.encode_to_vec();
        assert_eq!(reencoded.len(), body.len());
    }

    #[test]
    fn plain_records_pass_through() {
        let out = deaggregate(Bytes::from_static(b"{\"s\":\"A\"}"), "A").unwrap();
        assert_eq!(
            out,
            [UserRecordBytes { partition_key: "A".into(), data: "{\"s\":\"A\"}".into() }]
        );
    }

    #[test]
    fn corrupt_records_are_refused() {
        let (mut bytes, _) = pack(&[("A", b"x")]);
        let n = bytes.len();
        bytes[n - 20] ^= 1;
        assert_eq!(deaggregate(Bytes::from(bytes), "A"), Err(KplError::Checksum));

        let mut body = Vec::new();
        AggregatedRecord {
            partition_key_table: vec!["A".into()],
            explicit_hash_key_table: vec![],
            records: vec![Record {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"x"),
                tags: vec![],
            }],
        }
        .encode(&mut body)
        .unwrap();
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&body);
        bad.extend_from_slice(&Md5::digest(&body));
        assert!(matches!(deaggregate(Bytes::from(bad), "A"), Err(KplError::BadKeyIndex { .. })));
    }

    #[test]
    fn finish_resets_for_reuse() {
        let mut agg = Aggregator::new();
        assert!(agg.finish().is_none());
        agg.push("A", b"1");
        agg.finish().unwrap();
        assert!(agg.is_empty());
        agg.push("B", b"2");
        let (bytes, key) = agg.finish().unwrap();
        assert_eq!(key, "B");
        let out = deaggregate(Bytes::from(bytes), "").unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].partition_key, "B");
    }

    proptest! {
        #[test]
        fn any_records_round_trip_with_exact_size_prediction(
            records in prop::collection::vec(("[A-Z]{1,5}", prop::collection::vec(any::<u8>(), 0..200)), 1..60)
        ) {
            let mut agg = Aggregator::new();
            for (k, d) in &records {
                let predicted = agg.len_with(k, d.len());
                agg.push(k, d);
                prop_assert_eq!(agg.len(), predicted);
            }
            let total = agg.len();
            let (bytes, _) = agg.finish().unwrap();
            prop_assert_eq!(bytes.len(), total);
            let out = deaggregate(Bytes::from(bytes), "").unwrap();
            prop_assert_eq!(out.len(), records.len());
            for (o, (k, d)) in out.iter().zip(&records) {
                prop_assert_eq!(&o.partition_key, k);
                prop_assert_eq!(&o.data[..], &d[..]);
            }
        }

        #[test]
        fn push_within_fills_up_to_the_cap_and_no_further(
            records in prop::collection::vec(("[A-Z]{1,5}", prop::collection::vec(any::<u8>(), 0..200)), 1..60),
            max_len in 64usize..2000,
        ) {
            let mut agg = Aggregator::new();
            let mut packed = Vec::new();
            for (k, d) in &records {
                let predicted = agg.len_with(k, d.len());
                let first = agg.is_empty();
                let pushed = agg.push_within(k, d, max_len);
                prop_assert_eq!(pushed, first || predicted <= max_len);
                if pushed {
                    prop_assert_eq!(agg.len(), predicted);
                    packed.push((k, d));
                } else {
                    let (bytes, _) = agg.finish().unwrap();
                    let out = deaggregate(Bytes::from(bytes), "").unwrap();
                    prop_assert_eq!(out.len(), packed.len());
                    prop_assert!(out.len() == 1 || out_len_ok(&out, max_len));
                    packed.clear();
                    prop_assert!(agg.push_within(k, d, max_len), "an empty record takes anything");
                    packed.push((k, d));
                }
            }
        }
    }

    /// A record holding several user records never exceeds the cap it was packed to.
    fn out_len_ok(out: &[UserRecordBytes], max_len: usize) -> bool {
        let mut agg = Aggregator::new();
        for r in out {
            agg.push(&r.partition_key, &r.data);
        }
        agg.len() <= max_len
    }
}

//! Partition-key hashing and shard lookup.
//!
//! Kinesis hashes a partition key with MD5 and reads the digest as a 128-bit unsigned
//! big-endian integer, the *hash key*. Each open shard owns a contiguous, inclusive range of
//! hash keys; together the open shards of a stream cover the whole 128-bit space.

use md5::{Digest, Md5};

/// The hash key Kinesis derives from a partition key.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// One open shard and the hash keys it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    /// First hash key the shard owns.
    pub start: u128,
    /// Last hash key the shard owns, inclusive.
    pub end: u128,
}

/// Why a shard list does not form a usable shard map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    #[error("no open shards")]
    Empty,
    #[error("hash key {0:?} is not a decimal 128-bit unsigned integer")]
    BadHashKey(String),
    #[error("shard {0} has its start hash key after its end")]
    Inverted(String),
    #[error("open shards overlap or leave a gap before hash key {0}")]
    NotContiguous(u128),
}

/// Parses a hash key as the Kinesis API writes it: a decimal string.
pub fn parse_hash_key(text: &str) -> Result<u128, ShardMapError> {
    text.parse().map_err(|_| ShardMapError::BadHashKey(text.to_owned()))
}

/// The open shards of a stream, sorted by hash-key range, for lookup by hash key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<Shard>,
}

impl ShardMap {
    /// Builds a map from the open shards of a stream, in any order. The ranges must cover
    /// the whole hash-key space without overlap, as the open shards of a stream do.
    pub fn new(mut shards: Vec<Shard>) -> Result<Self, ShardMapError> {
        if shards.is_empty() {
            return Err(ShardMapError::Empty);
        }
        shards.sort_by_key(|s| s.start);
        let mut next = 0u128;
        for s in &shards {
            if s.start > s.end {
                return Err(ShardMapError::Inverted(s.id.clone()));
            }
            if s.start != next {
                return Err(ShardMapError::NotContiguous(next));
            }
            next = s.end.wrapping_add(1);
        }
        if shards.last().expect("checked non-empty above").end != u128::MAX {
            return Err(ShardMapError::NotContiguous(next));
        }
        Ok(Self { shards })
    }

    /// The index (into [`ShardMap::shards`]) of the shard that owns `hash_key`.
    pub fn index_of(&self, hash_key: u128) -> usize {
        // The ranges are contiguous from 0 to u128::MAX, so the owner is the last shard
        // whose start is not above the key.
        self.shards.partition_point(|s| s.start <= hash_key) - 1
    }

    /// The shard that owns `partition_key`.
    pub fn shard_for(&self, partition_key: &str) -> &Shard {
        &self.shards[self.index_of(hash_key(partition_key))]
    }

    /// The shards, sorted by the start of their range.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Splits the hash-key space evenly, the way a new stream with `n` shards does.
    pub fn uniform(n: usize) -> Self {
        assert!(n > 0, "a stream has at least one shard");
        let width = u128::MAX / n as u128;
        let shards = (0..n)
            .map(|i| Shard {
                id: format!("shardId-{i:012}"),
                start: width * i as u128 + if i == 0 { 0 } else { i as u128 },
                end: if i + 1 == n { u128::MAX } else { width * (i as u128 + 1) + i as u128 },
            })
            .collect();
        Self::new(shards).expect("uniform ranges are contiguous by construction")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_is_md5_big_endian() {
        // The RFC 1321 test vectors for "abc" and the empty string.
        assert_eq!(hash_key("abc"), 0x900150983cd24fb0d6963f7d28e17f72);
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn lookup_finds_the_owning_shard() {
        let map = ShardMap::uniform(4);
        assert_eq!(map.index_of(0), 0);
        assert_eq!(map.index_of(u128::MAX), 3);
        for (i, s) in map.shards().iter().enumerate() {
            assert_eq!(map.index_of(s.start), i);
            assert_eq!(map.index_of(s.end), i);
        }
    }

    #[test]
    fn gaps_and_overlaps_are_refused() {
        let s = |id: &str, start, end| Shard { id: id.into(), start, end };
        assert_eq!(ShardMap::new(vec![]), Err(ShardMapError::Empty));
        assert!(ShardMap::new(vec![s("a", 0, 10), s("b", 12, u128::MAX)]).is_err());
        assert!(ShardMap::new(vec![s("a", 0, 10), s("b", 10, u128::MAX)]).is_err());
        assert!(ShardMap::new(vec![s("a", 0, 10)]).is_err());
        assert!(ShardMap::new(vec![s("b", 11, u128::MAX), s("a", 0, 10)]).is_ok());
        assert_eq!(parse_hash_key("340282366920938463463374607431768211455"), Ok(u128::MAX));
        assert!(parse_hash_key("-1").is_err());
    }
}

//! Every format that crosses a tickpipe process boundary, in one place.
//!
//! Data flows through these modules in the order of the pipeline:
//!
//! - [`finnhub`]: the Finnhub websocket protocol. Trade frames as Finnhub writes them are
//!   read by a strict scanner ([`finnhub::scan`]) that keeps each field's text; any frame
//!   decodes with simd-json into [`finnhub::Trade`]s that borrow their strings from the
//!   frame buffer. Client messages (subscribe, unsubscribe) and trade frames encode for
//!   the load generator's feed.
//! - [`record`]: the *user record*, one trade as written to Kinesis, compact JSON with the
//!   ingestor's `src`, `seq` and `rt` added.
//! - [`kpl`]: the KPL aggregation format that packs many user records into one Kinesis
//!   record, and its inverse, which also passes plain records through.
//! - [`shard`]: partition-key hashing (MD5 as a 128-bit hash key) and shard lookup by
//!   hash-key range.
//! - [`table`]: the DynamoDB keys and attribute names the Lambda writes and the dashboard
//!   reads.
//! - [`limits`]: the AWS service limits the other crates respect, each with its source.
//! - [`json`]: the small JSON writers the encoders above share.

pub mod finnhub;
pub mod json;
pub mod kpl;
pub mod limits;
pub mod record;
pub mod shard;
pub mod table;

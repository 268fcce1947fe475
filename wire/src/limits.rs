//! AWS service limits, named once so that every crate checks the same numbers.

/// Records in one PutRecords request (Kinesis API reference, PutRecords).
pub const PUT_RECORDS_MAX_RECORDS: usize = 500;

/// Bytes in one PutRecords request, counting data and partition keys (Kinesis quotas).
pub const PUT_RECORDS_MAX_BYTES: usize = 5 * 1024 * 1024;

/// Bytes in one record, data plus partition key (Kinesis quotas).
pub const RECORD_MAX_BYTES: usize = 1024 * 1024;

/// Records written to one shard per second (Kinesis quotas).
pub const SHARD_MAX_RECORDS_PER_SEC: u32 = 1_000;

/// Bytes written to one shard per second (Kinesis quotas).
pub const SHARD_MAX_BYTES_PER_SEC: u32 = 1024 * 1024;

/// Unicode characters in a partition key (Kinesis API reference, PutRecordsRequestEntry).
pub const PARTITION_KEY_MAX_CHARS: usize = 256;

/// Records returned by one GetRecords call at most (Kinesis API reference, GetRecords).
pub const GET_RECORDS_MAX_RECORDS: i32 = 10_000;

/// Put requests in one BatchWriteItem call (DynamoDB API reference, BatchWriteItem).
pub const BATCH_WRITE_MAX_ITEMS: usize = 25;

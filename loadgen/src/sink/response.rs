//! The JSON shapes Kinesis answers with, as the SDK reads them.
//!
//! Only the members the sink has something to say about are written; the SDK treats the
//! rest as absent. Timestamps are epoch seconds, the AWS JSON protocol's default.

use serde::Serialize;

/// `EncryptionType` of every answer: the sink stores nothing, encrypted or not.
const ENCRYPTION_NONE: &str = "NONE";

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordsOutput {
    pub failed_record_count: u64,
    pub records: Vec<PutRecordsResult>,
    pub encryption_type: &'static str,
}

impl PutRecordsOutput {
    pub fn new(records: Vec<PutRecordsResult>) -> Self {
        let failed = records.iter().filter(|r| matches!(r, PutRecordsResult::Failed { .. }));
        Self {
            failed_record_count: failed.count() as u64,
            records,
            encryption_type: ENCRYPTION_NONE,
        }
    }
}

/// One record's outcome, in request order.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PutRecordsResult {
    #[serde(rename_all = "PascalCase")]
    Written { sequence_number: String, shard_id: String },
    #[serde(rename_all = "PascalCase")]
    Failed { error_code: &'static str, error_message: String },
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordOutput {
    pub shard_id: String,
    pub sequence_number: String,
    pub encryption_type: &'static str,
}

impl PutRecordOutput {
    pub fn new(shard_id: String, sequence_number: String) -> Self {
        Self { shard_id, sequence_number, encryption_type: ENCRYPTION_NONE }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Shard {
    pub shard_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_shard_id: Option<String>,
    pub hash_key_range: HashKeyRange,
    pub sequence_number_range: SequenceNumberRange,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HashKeyRange {
    pub starting_hash_key: String,
    pub ending_hash_key: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SequenceNumberRange {
    pub starting_sequence_number: String,
    /// Set once the shard is closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ending_sequence_number: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListShardsOutput {
    pub shards: Vec<Shard>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// The stream-level members DescribeStream and DescribeStreamSummary share.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamInfo {
    pub stream_name: String,
    #[serde(rename = "StreamARN")]
    pub stream_arn: String,
    pub stream_status: &'static str,
    pub stream_mode_details: StreamModeDetails,
    pub retention_period_hours: u32,
    pub stream_creation_timestamp: f64,
    pub enhanced_monitoring: [EnhancedMetrics; 1],
    pub encryption_type: &'static str,
}

impl StreamInfo {
    pub fn new(name: &str, arn: &str, created: f64) -> Self {
        Self {
            stream_name: name.to_owned(),
            stream_arn: arn.to_owned(),
            stream_status: "ACTIVE",
            stream_mode_details: StreamModeDetails { stream_mode: "PROVISIONED" },
            retention_period_hours: 24,
            stream_creation_timestamp: created,
            enhanced_monitoring: [EnhancedMetrics { shard_level_metrics: [] }],
            encryption_type: ENCRYPTION_NONE,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamModeDetails {
    pub stream_mode: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnhancedMetrics {
    pub shard_level_metrics: [&'static str; 0],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeStreamSummaryOutput {
    pub stream_description_summary: StreamSummary,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamSummary {
    #[serde(flatten)]
    pub info: StreamInfo,
    pub open_shard_count: usize,
    pub consumer_count: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeStreamOutput {
    pub stream_description: StreamDescription,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamDescription {
    #[serde(flatten)]
    pub info: StreamInfo,
    pub shards: Vec<Shard>,
    pub has_more_shards: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListStreamsOutput {
    pub stream_names: Vec<String>,
    pub has_more_streams: bool,
    pub stream_summaries: Vec<StreamListEntry>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamListEntry {
    pub stream_name: String,
    #[serde(rename = "StreamARN")]
    pub stream_arn: String,
    pub stream_status: &'static str,
    pub stream_mode_details: StreamModeDetails,
    pub stream_creation_timestamp: f64,
}

/// Serializes an answer; the shapes above hold only strings, numbers and lists.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("response shapes always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_records_output_reads_like_kinesis() {
        let out = PutRecordsOutput::new(vec![
            PutRecordsResult::Written { sequence_number: "49".into(), shard_id: "s0".into() },
            PutRecordsResult::Failed {
                error_code: "ProvisionedThroughputExceededException",
                error_message: "Rate exceeded".into(),
            },
        ]);
        let json: serde_json::Value = serde_json::from_slice(&to_json(&out)).unwrap();
        assert_eq!(json["FailedRecordCount"], 1);
        assert_eq!(json["Records"][0]["SequenceNumber"], "49");
        assert_eq!(json["Records"][0]["ShardId"], "s0");
        assert_eq!(json["Records"][1]["ErrorCode"], "ProvisionedThroughputExceededException");
        assert!(json["Records"][1].get("ShardId").is_none());
    }

    #[test]
    fn summaries_carry_every_required_member() {
        let out = DescribeStreamSummaryOutput {
            stream_description_summary: StreamSummary {
                info: StreamInfo::new("s", "arn", 1.5),
                open_shard_count: 4,
                consumer_count: 0,
            },
        };
        let json: serde_json::Value = serde_json::from_slice(&to_json(&out)).unwrap();
        let s = &json["StreamDescriptionSummary"];
        for member in [
            "StreamName",
            "StreamARN",
            "StreamStatus",
            "RetentionPeriodHours",
            "StreamCreationTimestamp",
            "EnhancedMonitoring",
            "OpenShardCount",
        ] {
            assert!(s.get(member).is_some(), "{member} missing");
        }
    }
}

//! Kinesis requests: the operation from the `X-Amz-Target` header, the input from the JSON
//! body, and every limit that makes Kinesis refuse a whole request.
//!
//! Parsing borrows strings from the body where JSON escapes allow it and decodes each
//! record's base64 data once, here, so that a request is either fully valid before anything
//! is written or refused as a whole, as Kinesis refuses it. Limits are checked in the order
//! Kinesis checks them: record count, then request size, then each record.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use serde::Deserialize;
use wire::limits::{
    PARTITION_KEY_MAX_CHARS, PUT_RECORDS_MAX_BYTES, PUT_RECORDS_MAX_RECORDS, RECORD_MAX_BYTES,
};

use super::api::ApiError;

/// The header naming the operation.
pub const TARGET_HEADER: &str = "x-amz-target";

/// What every Kinesis target starts with: the service shape name and a dot.
pub const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// The content type of the AWS JSON 1.1 protocol, which aws-sdk-kinesis speaks.
pub const CONTENT_TYPE_JSON: &str = "application/x-amz-json-1.1";

/// The content type of the CBOR protocol some other SDKs (Java v2) use for Kinesis.
const CONTENT_TYPE_CBOR: &str = "application/x-amz-cbor-1.1";

/// Largest request body read. A full PutRecords carries 5 MiB of data and keys; base64
/// makes the data a third larger (6⅔ MiB), and the rest leaves room for JSON framing,
/// escaped partition keys and explicit hash keys on 500 records.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Most shards one ListShards page returns, whatever MaxResults asks for (Kinesis API
/// reference, ListShards).
pub const LIST_SHARDS_MAX_PAGE: usize = 1000;

/// Largest MaxResults ListShards accepts (Kinesis API reference, ListShards).
const LIST_SHARDS_MAX_RESULTS: i64 = 10_000;

/// Largest Limit DescribeStream and ListStreams accept (Kinesis API reference).
const DESCRIBE_MAX_LIMIT: i64 = 10_000;

/// Longest stream name (Kinesis API reference, StreamName).
const STREAM_NAME_MAX_CHARS: usize = 128;

/// Kinesis operations that exist but that the sink does not serve; they are refused by
/// name instead of as unknown, so a misuse is easy to read.
const UNSERVED: &[&str] = &[
    "CreateStream",
    "DeleteStream",
    "GetRecords",
    "GetShardIterator",
    "SplitShard",
    "MergeShards",
    "UpdateShardCount",
    "SubscribeToShard",
    "RegisterStreamConsumer",
];

/// Base64 as the SDK writes it (standard alphabet, padded), read leniently about padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A parsed request.
#[derive(Debug)]
pub enum Request<'a> {
    PutRecords(PutRecords<'a>),
    PutRecord(PutRecord<'a>),
    ListShards(ListShards<'a>),
    DescribeStream(DescribeStream<'a>),
    DescribeStreamSummary(StreamRef<'a>),
    ListStreams(ListStreams),
}

impl Request<'_> {
    /// The operation name, for logs and counters.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::PutRecords(_) => "PutRecords",
            Self::PutRecord(_) => "PutRecord",
            Self::ListShards(_) => "ListShards",
            Self::DescribeStream(_) => "DescribeStream",
            Self::DescribeStreamSummary(_) => "DescribeStreamSummary",
            Self::ListStreams(_) => "ListStreams",
        }
    }
}

/// A stream, by name or by ARN.
#[derive(Debug, Default)]
pub struct StreamRef<'a> {
    pub name: Option<Cow<'a, str>>,
    pub arn: Option<Cow<'a, str>>,
}

impl<'a> StreamRef<'a> {
    fn new(name: Option<Text<'a>>, arn: Option<Text<'a>>) -> Self {
        Self { name: name.map(|t| t.0), arn: arn.map(|t| t.0) }
    }
}

/// A JSON string, borrowed from the body unless escapes forced a copy. (An
/// `Option<Cow<str>>` field alone would always copy; the newtype lets serde borrow.)
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A JSON string's bytes, borrowed unless escapes forced a copy, and not checked for
/// UTF-8. Record data is read this way: base64 decoding checks its own alphabet, and a
/// UTF-8 pass first would scan up to 7 MiB of body a second time for nothing.
struct RawText<'a>(Cow<'a, [u8]>);

impl<'de: 'a, 'a> Deserialize<'de> for RawText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Bytes<'a> {
            type Value = RawText<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(RawText(Cow::Borrowed(v)))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawText(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(RawText(Cow::Owned(v.to_vec())))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawText(Cow::Owned(v.as_bytes().to_vec())))
            }
        }
        deserializer.deserialize_bytes(Bytes(std::marker::PhantomData))
    }
}

/// The input of DescribeStreamSummary: the stream alone.
#[derive(Deserialize)]
struct RawStreamRef<'a> {
    #[serde(rename = "StreamName", borrow, default)]
    name: Option<Text<'a>>,
    #[serde(rename = "StreamARN", borrow, default)]
    arn: Option<Text<'a>>,
}

/// One record to write, its data decoded.
#[derive(Debug)]
pub struct Record<'a> {
    pub data: Vec<u8>,
    pub partition_key: Cow<'a, str>,
    pub explicit_hash_key: Option<u128>,
}

impl Record<'_> {
    /// What the record counts against the size limits: data plus partition key bytes.
    pub fn billed_bytes(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// The hash key that picks the shard: the explicit one, else MD5 of the partition key.
    pub fn hash_key(&self) -> u128 {
        self.explicit_hash_key.unwrap_or_else(|| wire::shard::hash_key(&self.partition_key))
    }
}

#[derive(Debug)]
pub struct PutRecords<'a> {
    pub stream: StreamRef<'a>,
    pub records: Vec<Record<'a>>,
}

#[derive(Debug)]
pub struct PutRecord<'a> {
    pub stream: StreamRef<'a>,
    pub record: Record<'a>,
}

/// Which shards ListShards lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardFilter {
    /// Every shard, open or closed.
    All,
    /// Open shards only (`AT_LATEST`).
    Open,
}

#[derive(Debug)]
pub struct ListShards<'a> {
    pub stream: StreamRef<'a>,
    pub next_token: Option<Cow<'a, str>>,
    /// Page size, already capped at [`LIST_SHARDS_MAX_PAGE`].
    pub page: usize,
    pub exclusive_start_shard_id: Option<Cow<'a, str>>,
    pub filter: ShardFilter,
}

#[derive(Debug)]
pub struct DescribeStream<'a> {
    pub stream: StreamRef<'a>,
    pub limit: usize,
    pub exclusive_start_shard_id: Option<Cow<'a, str>>,
}

#[derive(Debug)]
pub struct ListStreams {
    pub limit: usize,
}

/// Reads one request: the operation from `target` (the `X-Amz-Target` value), the input
/// from `body`. Every error is the one Kinesis would answer with; nothing panics, whatever
/// the bytes.
pub fn parse_request<'a>(
    target: Option<&str>,
    content_type: Option<&str>,
    body: &'a [u8],
) -> Result<Request<'a>, ApiError> {
    check_content_type(content_type)?;
    let target = target
        .ok_or_else(|| ApiError::UnknownOperation("the X-Amz-Target header is missing".into()))?;
    let operation = target.strip_prefix(TARGET_PREFIX).ok_or_else(|| {
        ApiError::UnknownOperation(format!("{target:?} is not a Kinesis_20131202 operation"))
    })?;
    match operation {
        "PutRecords" => put_records(json(body)?).map(Request::PutRecords),
        "PutRecord" => put_record(json(body)?).map(Request::PutRecord),
        "ListShards" => list_shards(json(body)?).map(Request::ListShards),
        "DescribeStream" => describe_stream(json(body)?).map(Request::DescribeStream),
        "DescribeStreamSummary" => {
            let raw: RawStreamRef<'_> = json(body)?;
            let stream = StreamRef::new(raw.name, raw.arn);
            check_stream_ref(&stream)?;
            Ok(Request::DescribeStreamSummary(stream))
        }
        "ListStreams" => list_streams(json(body)?).map(Request::ListStreams),
        op if UNSERVED.contains(&op) => Err(ApiError::UnknownOperation(format!(
            "{op} is a Kinesis operation that loadgen sink does not serve"
        ))),
        op => Err(ApiError::UnknownOperation(format!("unknown operation {op:?}"))),
    }
}

/// The answer to a body over [`MAX_BODY_BYTES`].
pub(crate) fn body_too_large() -> ApiError {
    ApiError::BodyTooLarge(format!(
        "Request body exceeds the {MAX_BODY_BYTES}-byte limit of loadgen sink; a valid \
         PutRecords request is far smaller"
    ))
}

/// True when `name` is a valid Kinesis stream name.
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= STREAM_NAME_MAX_CHARS
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_content_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let Some(value) = content_type else { return Ok(()) };
    let media = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match media.as_str() {
        CONTENT_TYPE_JSON | "application/x-amz-json-1.0" | "application/json" | "" => Ok(()),
        CONTENT_TYPE_CBOR => Err(ApiError::Serialization(format!(
            "loadgen sink speaks the AWS JSON 1.1 protocol only; send {CONTENT_TYPE_JSON}, \
             not CBOR"
        ))),
        _ => Err(ApiError::Serialization(format!(
            "unsupported Content-Type {value:?}; send {CONTENT_TYPE_JSON}"
        ))),
    }
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // An empty body is an empty input, as AWS JSON services read it.
    let Some(&first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return json(b"{}");
    };
    // serde would also read a struct from a JSON array; an AWS input is always an object.
    if first != b'{' {
        return Err(ApiError::Serialization("the body must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Serialization(e.to_string()))
}

fn check_stream_ref(stream: &StreamRef<'_>) -> Result<(), ApiError> {
    match (&stream.name, &stream.arn) {
        (None, None) => Err(ApiError::InvalidArgument(
            "Either StreamName or StreamARN should be provided.".into(),
        )),
        (Some(name), _) if !valid_stream_name(name) => Err(ApiError::constraint_on(
            name,
            "streamName",
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+ and have \
             length from 1 to 128",
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(rename = "Data", borrow, default)]
    data: Option<RawText<'a>>,
    #[serde(rename = "PartitionKey", borrow, default)]
    partition_key: Option<Text<'a>>,
    #[serde(rename = "ExplicitHashKey", borrow, default)]
    explicit_hash_key: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawPutRecords<'a> {
    #[serde(rename = "StreamName", borrow, default)]
    stream_name: Option<Text<'a>>,
    #[serde(rename = "StreamARN", borrow, default)]
    stream_arn: Option<Text<'a>>,
    #[serde(rename = "Records", borrow, default)]
    records: Option<Vec<RawRecord<'a>>>,
}

fn put_records(raw: RawPutRecords<'_>) -> Result<PutRecords<'_>, ApiError> {
    let stream = StreamRef::new(raw.stream_name, raw.stream_arn);
    check_stream_ref(&stream)?;
    let raw_records =
        raw.records.ok_or_else(|| ApiError::constraint("records", "Member must not be null"))?;
    if raw_records.is_empty() {
        return Err(ApiError::constraint(
            "records",
            "Member must have length greater than or equal to 1",
        ));
    }
    if raw_records.len() > PUT_RECORDS_MAX_RECORDS {
        return Err(ApiError::constraint(
            "records",
            &format!("Member must have length less than or equal to {PUT_RECORDS_MAX_RECORDS}"),
        ));
    }
    let records = raw_records
        .into_iter()
        .enumerate()
        .map(|(i, r)| decode_record(r, &format!("records.{}.member", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let total: usize = records.iter().map(Record::billed_bytes).sum();
    if total > PUT_RECORDS_MAX_BYTES {
        return Err(ApiError::InvalidArgument("Records size exceeds 5 MB limit".into()));
    }
    for (i, record) in records.iter().enumerate() {
        check_record(record, &format!("records.{}.member", i + 1))?;
    }
    Ok(PutRecords { stream, records })
}

#[derive(Deserialize)]
struct RawPutRecord<'a> {
    #[serde(rename = "StreamName", borrow, default)]
    stream_name: Option<Text<'a>>,
    #[serde(rename = "StreamARN", borrow, default)]
    stream_arn: Option<Text<'a>>,
    #[serde(rename = "Data", borrow, default)]
    data: Option<RawText<'a>>,
    #[serde(rename = "PartitionKey", borrow, default)]
    partition_key: Option<Text<'a>>,
    #[serde(rename = "ExplicitHashKey", borrow, default)]
    explicit_hash_key: Option<Text<'a>>,
}

fn put_record(raw: RawPutRecord<'_>) -> Result<PutRecord<'_>, ApiError> {
    let stream = StreamRef::new(raw.stream_name, raw.stream_arn);
    check_stream_ref(&stream)?;
    let record = RawRecord {
        data: raw.data,
        partition_key: raw.partition_key,
        explicit_hash_key: raw.explicit_hash_key,
    };
    let record = decode_record(record, "")?;
    check_record(&record, "")?;
    Ok(PutRecord { stream, record })
}

/// The model's path to a member: `records.3.member.data`, or `data` for PutRecord.
fn member(prefix: &str, field: &str) -> String {
    if prefix.is_empty() { field.to_owned() } else { format!("{prefix}.{field}") }
}

fn decode_record<'a>(raw: RawRecord<'a>, at: &str) -> Result<Record<'a>, ApiError> {
    let RawText(text) = raw
        .data
        .ok_or_else(|| ApiError::constraint(&member(at, "data"), "Member must not be null"))?;
    let Text(partition_key) = raw.partition_key.ok_or_else(|| {
        ApiError::constraint(&member(at, "partitionKey"), "Member must not be null")
    })?;
    let data = BASE64.decode(&text).map_err(|e| {
        ApiError::Serialization(format!("{} is not valid base64: {e}", member(at, "data")))
    })?;
    let explicit_hash_key =
        raw.explicit_hash_key.map(|k| parse_explicit_hash_key(&k.0, at)).transpose()?;
    Ok(Record { data, partition_key, explicit_hash_key })
}

fn check_record(record: &Record<'_>, at: &str) -> Result<(), ApiError> {
    if record.billed_bytes() > RECORD_MAX_BYTES {
        return Err(ApiError::constraint(
            &member(at, "data"),
            &format!("Member must have length less than or equal to {RECORD_MAX_BYTES}"),
        ));
    }
    // The service validates lengths as Java counts them, in UTF-16 code units; for the
    // ASCII symbols tickpipe sends that is the character count.
    let key_len = record.partition_key.encode_utf16().count();
    if key_len == 0 {
        return Err(ApiError::constraint_on(
            &record.partition_key,
            &member(at, "partitionKey"),
            "Member must have length greater than or equal to 1",
        ));
    }
    if key_len > PARTITION_KEY_MAX_CHARS {
        return Err(ApiError::constraint_on(
            &record.partition_key,
            &member(at, "partitionKey"),
            &format!("Member must have length less than or equal to {PARTITION_KEY_MAX_CHARS}"),
        ));
    }
    Ok(())
}

/// An explicit hash key: a decimal 128-bit unsigned integer without leading zeros.
fn parse_explicit_hash_key(text: &str, at: &str) -> Result<u128, ApiError> {
    let well_formed = matches!(text.as_bytes(), [b'0'] | [b'1'..=b'9', ..])
        && text.len() <= 39
        && text.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(ApiError::constraint_on(
            text,
            &member(at, "explicitHashKey"),
            "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,38})",
        ));
    }
    text.parse().map_err(|_| {
        ApiError::InvalidArgument(format!(
            "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. \
             Specified value was {text}"
        ))
    })
}

#[derive(Deserialize)]
struct RawShardFilter<'a> {
    #[serde(rename = "Type", borrow)]
    kind: Text<'a>,
}

#[derive(Deserialize)]
struct RawListShards<'a> {
    #[serde(rename = "StreamName", borrow, default)]
    stream_name: Option<Text<'a>>,
    #[serde(rename = "StreamARN", borrow, default)]
    stream_arn: Option<Text<'a>>,
    #[serde(rename = "NextToken", borrow, default)]
    next_token: Option<Text<'a>>,
    #[serde(rename = "MaxResults", default)]
    max_results: Option<i64>,
    #[serde(rename = "ExclusiveStartShardId", borrow, default)]
    exclusive_start_shard_id: Option<Text<'a>>,
    #[serde(rename = "ShardFilter", borrow, default)]
    shard_filter: Option<RawShardFilter<'a>>,
}

fn list_shards(raw: RawListShards<'_>) -> Result<ListShards<'_>, ApiError> {
    let stream = StreamRef::new(raw.stream_name, raw.stream_arn);
    let next_token = raw.next_token.map(|t| t.0);
    let has_stream = stream.name.is_some() || stream.arn.is_some();
    match (&next_token, has_stream) {
        (Some(_), true) => {
            return Err(ApiError::InvalidArgument(
                "NextToken and StreamName cannot be provided together.".into(),
            ));
        }
        (Some(token), false) if token.is_empty() => {
            return Err(ApiError::constraint(
                "nextToken",
                "Member must have length greater than or equal to 1",
            ));
        }
        (None, _) => check_stream_ref(&stream)?,
        (Some(_), false) => {}
    }
    let page = bounded(raw.max_results, "maxResults", LIST_SHARDS_MAX_RESULTS)?
        .map_or(LIST_SHARDS_MAX_PAGE, |n| n.min(LIST_SHARDS_MAX_PAGE));
    let filter = match raw.shard_filter.as_ref().map(|f| f.kind.0.as_ref()) {
        None | Some("AT_TRIM_HORIZON" | "FROM_TRIM_HORIZON") => ShardFilter::All,
        Some("AT_LATEST") => ShardFilter::Open,
        Some(other) => {
            return Err(ApiError::InvalidArgument(format!(
                "loadgen sink supports ShardFilter types AT_LATEST, AT_TRIM_HORIZON and \
                 FROM_TRIM_HORIZON, not {other:?}"
            )));
        }
    };
    Ok(ListShards {
        stream,
        next_token,
        page,
        exclusive_start_shard_id: raw.exclusive_start_shard_id.map(|t| t.0),
        filter,
    })
}

#[derive(Deserialize)]
struct RawDescribeStream<'a> {
    #[serde(rename = "StreamName", borrow, default)]
    stream_name: Option<Text<'a>>,
    #[serde(rename = "StreamARN", borrow, default)]
    stream_arn: Option<Text<'a>>,
    #[serde(rename = "Limit", default)]
    limit: Option<i64>,
    #[serde(rename = "ExclusiveStartShardId", borrow, default)]
    exclusive_start_shard_id: Option<Text<'a>>,
}

/// DescribeStream's default page: 100 shards (Kinesis API reference, DescribeStream).
const DESCRIBE_STREAM_DEFAULT_LIMIT: usize = 100;

fn describe_stream(raw: RawDescribeStream<'_>) -> Result<DescribeStream<'_>, ApiError> {
    let stream = StreamRef::new(raw.stream_name, raw.stream_arn);
    check_stream_ref(&stream)?;
    let limit =
        bounded(raw.limit, "limit", DESCRIBE_MAX_LIMIT)?.unwrap_or(DESCRIBE_STREAM_DEFAULT_LIMIT);
    Ok(DescribeStream {
        stream,
        limit,
        exclusive_start_shard_id: raw.exclusive_start_shard_id.map(|t| t.0),
    })
}

#[derive(Deserialize)]
struct RawListStreams {
    #[serde(rename = "Limit", default)]
    limit: Option<i64>,
}

fn list_streams(raw: RawListStreams) -> Result<ListStreams, ApiError> {
    let limit = bounded(raw.limit, "limit", DESCRIBE_MAX_LIMIT)?.unwrap_or(usize::MAX);
    Ok(ListStreams { limit })
}

/// A count parameter within `1..=max`, worded as the model validator words a violation.
fn bounded(value: Option<i64>, at: &str, max: i64) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(n) if n < 1 => Err(ApiError::constraint_on(
            &n.to_string(),
            at,
            "Member must have value greater than or equal to 1",
        )),
        Some(n) if n > max => Err(ApiError::constraint_on(
            &n.to_string(),
            at,
            &format!("Member must have value less than or equal to {max}"),
        )),
        Some(n) => Ok(Some(usize::try_from(n).expect("1..=10000 fits any usize"))),
    }
}

/// Base64 as the SDK writes it, for the tests and benches that build bodies by hand.
pub fn encode_base64(data: &[u8]) -> String {
    general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUT: Option<&str> = Some("Kinesis_20131202.PutRecords");

    fn put_body(records: &[(&[u8], &str)]) -> Vec<u8> {
        let records: Vec<_> = records
            .iter()
            .map(|(d, k)| serde_json::json!({"Data": encode_base64(d), "PartitionKey": k}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"StreamName": "s", "Records": records})).unwrap()
    }

    fn code(result: Result<Request<'_>, ApiError>) -> &'static str {
        result.unwrap_err().code()
    }

    #[test]
    fn a_put_records_request_decodes() {
        let body = put_body(&[(b"hello", "AAPL"), (b"", "MSFT")]);
        let Request::PutRecords(put) = parse_request(PUT, Some(CONTENT_TYPE_JSON), &body).unwrap()
        else {
            panic!("not PutRecords")
        };
        assert_eq!(put.stream.name.as_deref(), Some("s"));
        assert_eq!(put.records.len(), 2);
        assert_eq!(put.records[0].data, b"hello");
        assert_eq!(put.records[0].partition_key, "AAPL");
        assert_eq!(put.records[0].hash_key(), wire::shard::hash_key("AAPL"));
        assert_eq!(put.records[1].billed_bytes(), 4);
    }

    #[test]
    fn explicit_hash_keys_override_the_partition_key() {
        let body = br#"{"StreamName":"s","Records":[{"Data":"","PartitionKey":"A","ExplicitHashKey":"340282366920938463463374607431768211455"}]}"#;
        let Request::PutRecords(put) = parse_request(PUT, None, body).unwrap() else {
            panic!("not PutRecords")
        };
        assert_eq!(put.records[0].hash_key(), u128::MAX);
        for (key, code) in [
            ("340282366920938463463374607431768211456", "InvalidArgumentException"),
            ("01", "ValidationException"),
            ("-1", "ValidationException"),
            ("", "ValidationException"),
            ("1234567890123456789012345678901234567890", "ValidationException"),
        ] {
            let body = format!(
                r#"{{"StreamName":"s","Records":[{{"Data":"","PartitionKey":"A","ExplicitHashKey":"{key}"}}]}}"#
            );
            let got = parse_request(PUT, None, body.as_bytes()).unwrap_err();
            assert_eq!(got.code(), code, "{key}: {got}");
        }
    }

    #[test]
    fn request_limits_give_the_aws_errors() {
        let one: &[u8] = b"x";
        let many: Vec<(&[u8], &str)> = vec![(one, "k"); 501];
        let err = parse_request(PUT, None, &put_body(&many)).unwrap_err();
        assert_eq!(err.code(), "ValidationException");
        assert!(err.message().contains("less than or equal to 500"), "{err}");
        assert!(parse_request(PUT, None, &put_body(&many[..500])).is_ok());

        let long = "k".repeat(257);
        let err = parse_request(PUT, None, &put_body(&[(one, &long)])).unwrap_err();
        assert_eq!(err.code(), "ValidationException");
        assert!(err.message().contains("records.1.member.partitionKey"), "{err}");
        assert!(parse_request(PUT, None, &put_body(&[(one, &long[1..])])).is_ok());
        assert_eq!(code(parse_request(PUT, None, &put_body(&[(one, "")]))), "ValidationException");

        let big = vec![0u8; RECORD_MAX_BYTES];
        let err = parse_request(PUT, None, &put_body(&[(one, "k"), (&big, "k")])).unwrap_err();
        assert_eq!(err.code(), "ValidationException");
        assert!(err.message().contains("records.2.member.data"), "{err}");
        assert!(parse_request(PUT, None, &put_body(&[(&big[1..], "k")])).is_ok());

        let mib = vec![0u8; RECORD_MAX_BYTES - 1];
        let mut five: Vec<(&[u8], &str)> = vec![(&mib, "k"); 5];
        assert!(parse_request(PUT, None, &put_body(&five)).is_ok());
        five.push((b"", "k"));
        let err = parse_request(PUT, None, &put_body(&five)).unwrap_err();
        assert_eq!(err.code(), "InvalidArgumentException");
        assert_eq!(err.message(), "Records size exceeds 5 MB limit");
    }

    #[test]
    fn malformed_bodies_are_serialization_errors() {
        for body in [
            &b"{"[..],
            b"[]",
            b"null",
            b"\xff\xfe",
            br#"{"StreamName":5,"Records":[]}"#,
            br#"{"StreamName":"s","Records":"x"}"#,
            br#"{"StreamName":"s","Records":[{"Data":"!!!","PartitionKey":"k"}]}"#,
            br#"{"StreamName":"s","Records":[{"Data":7,"PartitionKey":"k"}]}"#,
        ] {
            assert_eq!(code(parse_request(PUT, None, body)), "SerializationException", "{body:?}");
        }
        let missing = br#"{"StreamName":"s","Records":[{"PartitionKey":"k"}]}"#;
        assert_eq!(code(parse_request(PUT, None, missing)), "ValidationException");
        assert_eq!(code(parse_request(PUT, None, b"")), "InvalidArgumentException");
        assert_eq!(
            code(parse_request(PUT, None, br#"{"StreamName":"a b"}"#)),
            "ValidationException"
        );
    }

    #[test]
    fn targets_and_content_types_are_checked() {
        let body = br#"{"StreamName":"s"}"#;
        assert_eq!(code(parse_request(None, None, body)), "UnknownOperationException");
        let bad = Some("DynamoDB_20120810.PutItem");
        assert_eq!(code(parse_request(bad, None, body)), "UnknownOperationException");
        let unserved = Some("Kinesis_20131202.GetRecords");
        let err = parse_request(unserved, None, body).unwrap_err();
        assert!(err.message().contains("does not serve"), "{err}");
        let summary = Some("Kinesis_20131202.DescribeStreamSummary");
        assert!(
            parse_request(summary, Some("application/x-amz-json-1.1; charset=utf-8"), body).is_ok()
        );
        let cbor = parse_request(summary, Some("application/x-amz-cbor-1.1"), body).unwrap_err();
        assert!(cbor.message().contains("CBOR"), "{cbor}");
    }

    #[test]
    fn list_shards_takes_a_stream_or_a_token_never_both() {
        let list = Some("Kinesis_20131202.ListShards");
        let Request::ListShards(first) =
            parse_request(list, None, br#"{"StreamName":"s","MaxResults":2}"#).unwrap()
        else {
            panic!("not ListShards")
        };
        assert_eq!(first.page, 2);
        assert!(parse_request(list, None, br#"{"NextToken":"abc"}"#).is_ok());
        let both = br#"{"StreamName":"s","NextToken":"abc"}"#;
        assert_eq!(code(parse_request(list, None, both)), "InvalidArgumentException");
        assert_eq!(code(parse_request(list, None, b"{}")), "InvalidArgumentException");
        let zero = br#"{"StreamName":"s","MaxResults":0}"#;
        assert_eq!(code(parse_request(list, None, zero)), "ValidationException");
        let Request::ListShards(big) =
            parse_request(list, None, br#"{"StreamName":"s","MaxResults":10000}"#).unwrap()
        else {
            panic!("not ListShards")
        };
        assert_eq!(big.page, LIST_SHARDS_MAX_PAGE);
    }
}

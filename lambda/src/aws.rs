//! AWS clients from the standard configuration chain, with timeouts and retries set.
//!
//! Endpoint, region and credentials come from the environment and profiles
//! (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_DYNAMODB`,
//! `AWS_REGION`, ...), so the same binary runs in Lambda, on EC2 and against the local
//! stand-ins.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Time to open a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for one attempt of one call. DynamoDB answers in milliseconds and a GetRecords of
/// 10,000 records in well under a second; ten seconds means the endpoint is in trouble.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for one call, all SDK attempts included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// SDK-level attempts for Kinesis calls; the runner's own loop retries beyond that.
const KINESIS_SDK_ATTEMPTS: u32 = 3;

/// The shared configuration: the standard chain plus timeouts.
pub async fn sdk_config() -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts).load().await
}

/// A DynamoDB client whose SDK makes one attempt per call: the store retries on its own,
/// with its own budget and backoff, and two retry layers would multiply the attempts.
pub fn dynamodb(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(config)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// A Kinesis client with the SDK's standard retries.
pub fn kinesis(config: &SdkConfig) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::config::Builder::from(config)
        .retry_config(RetryConfig::standard().with_max_attempts(KINESIS_SDK_ATTEMPTS))
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

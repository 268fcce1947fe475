//! When to try an AWS call again and how long to wait first.
//!
//! Delays are exponential with full jitter: before retry `n` the caller sleeps a uniform
//! random time between zero and `min(max, base * 2^(n-1))`. Full jitter spreads the
//! retries of many concurrent writers, which is what a throttled table needs.

use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use rand::Rng;

/// Error codes that mean "slow down" or "try again", from the DynamoDB and Kinesis API
/// references' lists of common and per-operation errors.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "KMSThrottlingException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "TransactionConflictException",
];

/// HTTP status for "too many requests".
const TOO_MANY_REQUESTS: u16 = 429;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Ceiling of every delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `retry`, counting from 1.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// The largest delay [`Backoff::delay`] can return for `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// Sleeps for [`Backoff::delay`].
    pub async fn sleep(&self, retry: u32) {
        tokio::time::sleep(self.delay(retry)).await;
    }
}

/// True when an SDK error is worth retrying: timeouts, connection failures, unreadable
/// responses, throttling, and server-side errors. Client errors (validation, missing
/// table, access denied) are not: the same request fails the same way.
pub fn is_retryable<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            status >= 500
                || status == TOO_MANY_REQUESTS
                || service.err().code().is_some_and(|code| RETRYABLE_CODES.contains(&code))
        }
        _ => false,
    }
}

/// The error code of an SDK error, or its kind when the service sent none, for logs.
pub fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> &str {
    match err {
        SdkError::ServiceError(service) => service.err().code().unwrap_or("ServiceError"),
        SdkError::TimeoutError(_) => "Timeout",
        SdkError::DispatchFailure(_) => "DispatchFailure",
        SdkError::ResponseError(_) => "ResponseError",
        SdkError::ConstructionFailure(_) => "ConstructionFailure",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_and_stay_under_the_ceiling() {
        let b = Backoff { base: Duration::from_millis(10), max: Duration::from_millis(100) };
        assert_eq!(b.ceiling(1), Duration::from_millis(10));
        assert_eq!(b.ceiling(2), Duration::from_millis(20));
        assert_eq!(b.ceiling(4), Duration::from_millis(80));
        assert_eq!(b.ceiling(5), Duration::from_millis(100));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(100));
        for retry in 1..10 {
            assert!(b.delay(retry) <= b.ceiling(retry));
        }
        // Full jitter: over many draws the delays are spread, not all at the ceiling.
        let draws: Vec<Duration> = (0..200).map(|_| b.delay(5)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(50)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(50)));
    }
}

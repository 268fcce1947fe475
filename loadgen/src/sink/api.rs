//! The errors the sink answers with, typed and worded as Kinesis words them.
//!
//! An AWS JSON-protocol error is an HTTP status, an `x-amzn-ErrorType` header and a body
//! `{"__type":"<Code>","message":"<text>"}`; the SDK reads the code from either and turns
//! modelled codes into typed errors (`InvalidArgumentException`, ...). The codes and
//! messages below follow what Kinesis returns: limits the API model declares (record
//! count, partition-key length, data length) fail its generic validation with
//! `ValidationException`, the request-size limit fails with `InvalidArgumentException`.

use hyper::StatusCode;

/// One AWS-style error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A value breaks a constraint of the API model (400).
    #[error("ValidationException: {0}")]
    Validation(String),
    /// A value the model allows but Kinesis does not (400).
    #[error("InvalidArgumentException: {0}")]
    InvalidArgument(String),
    /// No such stream (400).
    #[error("ResourceNotFoundException: {0}")]
    ResourceNotFound(String),
    /// The body is not JSON of the operation's shape (400).
    #[error("SerializationException: {0}")]
    Serialization(String),
    /// The target header names no operation the sink serves (400).
    #[error("UnknownOperationException: {0}")]
    UnknownOperation(String),
    /// A shard's write limit is used up (400), for PutRecord; PutRecords reports it per
    /// record instead.
    #[error("ProvisionedThroughputExceededException: {0}")]
    Throughput(String),
    /// The request body exceeds what any valid request needs (413).
    #[error("InvalidArgumentException: {0}")]
    BodyTooLarge(String),
    /// Not a POST (405).
    #[error("UnknownOperationException: {0}")]
    MethodNotAllowed(String),
    /// Injected or genuine server failure (500).
    #[error("InternalFailure: {0}")]
    InternalFailure(String),
    /// Injected overload (503).
    #[error("ServiceUnavailable: {0}")]
    ServiceUnavailable(String),
}

impl ApiError {
    /// The `__type` code the SDK matches on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "ValidationException",
            Self::InvalidArgument(_) | Self::BodyTooLarge(_) => "InvalidArgumentException",
            Self::ResourceNotFound(_) => "ResourceNotFoundException",
            Self::Serialization(_) => "SerializationException",
            Self::UnknownOperation(_) | Self::MethodNotAllowed(_) => "UnknownOperationException",
            Self::Throughput(_) => "ProvisionedThroughputExceededException",
            Self::InternalFailure(_) => "InternalFailure",
            Self::ServiceUnavailable(_) => "ServiceUnavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::InternalFailure(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Validation(m)
            | Self::InvalidArgument(m)
            | Self::ResourceNotFound(m)
            | Self::Serialization(m)
            | Self::UnknownOperation(m)
            | Self::Throughput(m)
            | Self::BodyTooLarge(m)
            | Self::MethodNotAllowed(m)
            | Self::InternalFailure(m)
            | Self::ServiceUnavailable(m) => m,
        }
    }

    /// Whether sending the same request again can succeed: throttling and server failures
    /// pass, a malformed or oversized request stays wrong.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throughput(_) | Self::InternalFailure(_) | Self::ServiceUnavailable(_))
    }

    /// The JSON body: `{"__type":"<code>","message":"<text>"}`.
    pub fn body(&self) -> Vec<u8> {
        let body = serde_json::json!({ "__type": self.code(), "message": self.message() });
        serde_json::to_vec(&body).expect("a map of two strings always serializes")
    }

    /// `1 validation error detected: Value at '<at>' failed to satisfy constraint: <what>`,
    /// the wording of the Kinesis model validator.
    pub fn constraint(at: &str, what: &str) -> Self {
        Self::Validation(format!(
            "1 validation error detected: Value at '{at}' failed to satisfy constraint: {what}"
        ))
    }

    /// As [`ApiError::constraint`], quoting the offending value as the validator does.
    pub fn constraint_on(value: &str, at: &str, what: &str) -> Self {
        Self::Validation(format!(
            "1 validation error detected: Value '{value}' at '{at}' failed to satisfy \
             constraint: {what}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_aws_json() {
        let err =
            ApiError::ResourceNotFound("Stream x under account 000000000000 not found.".into());
        let body: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(body["__type"], "ResourceNotFoundException");
        assert_eq!(body["message"], "Stream x under account 000000000000 not found.");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(!err.is_retryable());
    }

    #[test]
    fn server_side_errors_are_retryable_and_5xx() {
        let err = ApiError::ServiceUnavailable("slow down".into());
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.is_retryable());
        assert_eq!(ApiError::InternalFailure(String::new()).status().as_u16(), 500);
        assert_eq!(ApiError::BodyTooLarge(String::new()).status().as_u16(), 413);
    }

    #[test]
    fn quotes_and_control_characters_stay_json() {
        let err = ApiError::constraint_on("a\"b\n", "records.1.member.partitionKey", "x");
        let body: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert!(body["message"].as_str().unwrap().contains("a\"b\n"));
    }
}

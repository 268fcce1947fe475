//! The JSON API the page polls: `/api/latest`, `/api/candles`, `/healthz`, and the JSON
//! answers for unknown routes and methods. Request parameters are validated here, before
//! anything reaches DynamoDB.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::warn;
use wire::table;

use crate::store::{Candle, LatestPrice, Store, StoreError};

/// Longest symbol accepted, in characters. Finnhub symbols such as
/// "BINANCE:BTCUSDT" are far shorter; the bound keeps hostile keys out of DynamoDB calls.
pub const MAX_SYMBOL_CHARS: usize = 64;
/// Candles per `/api/candles` answer: one day of 1-minute candles at most.
pub const MIN_CANDLE_LIMIT: usize = 1;
pub const MAX_CANDLE_LIMIT: usize = 1440;
/// Two hours of 1-minute candles, what the page's chart shows.
pub const DEFAULT_CANDLE_LIMIT: usize = 120;

/// How much of a rejected value an error message repeats back.
const MAX_ECHO_CHARS: usize = 32;

const ROUTES: &str = "GET /, /api/latest, /api/candles?symbol=S&limit=N, /healthz";

/// An answer other than success; each becomes a JSON body `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no such route; routes: {ROUTES}")]
    NotFound,
    #[error("method not allowed; the dashboard only answers GET and HEAD")]
    MethodNotAllowed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// Whether the same request may succeed later: true only for a DynamoDB outage.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Store(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    retryable: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Client mistakes are not logged: a hostile client must not be able to fill the log.
        if let Self::Store(e) = &self {
            warn!(error = %e, retryable = e.is_retryable(), "DynamoDB read failed");
        }
        let message = self.to_string();
        let body = ErrorBody { error: &message, retryable: self.is_retryable() };
        json_response(self.status(), &body)
    }
}

/// A JSON answer that browsers and proxies must not cache: the data changes every second.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let mut response = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes).into_response(),
        // Only non-string map keys or a failing Serialize impl make this fail; the
        // response types here have neither.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[derive(Serialize)]
struct LatestBody {
    symbols: Vec<LatestPrice>,
    truncated: bool,
    /// The server's clock, ms since the epoch, so the page can show trade ages even when the
    /// browser's clock is off.
    server_time: u64,
}

/// `GET /api/latest`: every symbol's latest price.
pub async fn latest(State(store): State<Store>) -> Result<Response, ApiError> {
    let latest = store.latest().await?;
    let body =
        LatestBody { symbols: latest.symbols, truncated: latest.truncated, server_time: now_ms() };
    Ok(json_response(StatusCode::OK, &body))
}

/// Query parameters of `/api/candles`, as text so that bad values get our own message.
#[derive(Deserialize)]
pub struct CandleParams {
    symbol: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
struct CandlesBody<'a> {
    symbol: &'a str,
    interval: &'static str,
    candles: Vec<Candle>,
}

/// `GET /api/candles?symbol=S&limit=N`: the newest N 1-minute candles, oldest first.
pub async fn candles(
    State(store): State<Store>,
    params: Result<Query<CandleParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let symbol = validate_symbol(params.symbol.as_deref())?;
    let limit = validate_limit(params.limit.as_deref())?;
    let candles = store.candles(symbol, limit).await?;
    let body = CandlesBody { symbol, interval: table::CANDLE_1M, candles };
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /healthz`: 200 when the table answers and is ACTIVE, 503 otherwise.
pub async fn healthz(State(store): State<Store>) -> Response {
    match store.check().await {
        Ok(()) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "table": store.table() }),
        ),
        Err(e) => {
            warn!(error = %e, retryable = e.is_retryable(), "health check failed");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "status": "unavailable",
                    "error": e.to_string(),
                    "retryable": e.is_retryable(),
                }),
            )
        }
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn validate_symbol(symbol: Option<&str>) -> Result<&str, ApiError> {
    let symbol = symbol.ok_or_else(|| {
        ApiError::BadRequest("missing query parameter symbol, e.g. ?symbol=AAPL".into())
    })?;
    let chars = symbol.chars().count();
    if !(1..=MAX_SYMBOL_CHARS).contains(&chars) {
        return Err(ApiError::BadRequest(format!(
            "symbol must be 1 to {MAX_SYMBOL_CHARS} characters, got {chars}"
        )));
    }
    if symbol.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("symbol must not contain control characters".into()));
    }
    Ok(symbol)
}

fn validate_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = limit else {
        return Ok(DEFAULT_CANDLE_LIMIT);
    };
    match text.parse::<usize>() {
        Ok(n) if (MIN_CANDLE_LIMIT..=MAX_CANDLE_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be an integer from {MIN_CANDLE_LIMIT} to {MAX_CANDLE_LIMIT}, got {:?}",
            truncate(text, MAX_ECHO_CHARS)
        ))),
    }
}

/// The first `max` characters of `text`, so an error message never echoes a huge input.
fn truncate(text: &str, max: usize) -> &str {
    text.char_indices().nth(max).map_or(text, |(i, _)| &text[..i])
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_bounded_and_printable() {
        assert_eq!(validate_symbol(Some("BINANCE:BTCUSDT")).ok(), Some("BINANCE:BTCUSDT"));
        assert_eq!(validate_symbol(Some(&"é".repeat(64))).map(str::len).ok(), Some(128));
        for bad in ["", "A\u{0}B", "A\nB", &"X".repeat(65)] {
            let err = validate_symbol(Some(bad)).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad:?}");
            assert!(err.to_string().contains("symbol"));
        }
        assert!(validate_symbol(None).unwrap_err().to_string().contains("symbol"));
    }

    #[test]
    fn limit_defaults_and_names_its_range() {
        assert_eq!(validate_limit(None).ok(), Some(DEFAULT_CANDLE_LIMIT));
        assert_eq!(validate_limit(Some("1")).ok(), Some(1));
        assert_eq!(validate_limit(Some("1440")).ok(), Some(1440));
        for bad in ["0", "1441", "-1", "ten", "", "99999999999999999999999"] {
            let err = validate_limit(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("limit") && err.contains("1 to 1440"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn status_follows_retryability() {
        let outage = ApiError::Store(StoreError::Unavailable { op: "Query", detail: "x".into() });
        assert_eq!(outage.status(), StatusCode::SERVICE_UNAVAILABLE);
        let missing = ApiError::Store(StoreError::TableNotFound { table: "t".into() });
        assert_eq!(missing.status(), StatusCode::BAD_GATEWAY);
        assert!(!ApiError::NotFound.is_retryable());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé");
        assert_eq!(truncate("ab", 5), "ab");
    }
}

//! Reads from the tickpipe DynamoDB table: latest prices, 1-minute candles, and a health
//! probe. Every key and attribute name comes from [`wire::table`], the schema the Lambda
//! writes.

use std::collections::HashMap;
use std::error::Error as StdError;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, TableStatus};
use serde::Serialize;
use tracing::warn;
use wire::table;

/// Most latest-price items one `/api/latest` answer carries. Finnhub's free tier allows
/// about 50 symbols; this bound only keeps a runaway table from exhausting memory.
pub const MAX_SYMBOLS: usize = 10_000;

/// One symbol's most recent trade, from a latest item (`pk = L`, `sk = <symbol>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestPrice {
    pub symbol: String,
    pub price: f64,
    /// Exchange time of the trade, ms since the epoch.
    pub t: u64,
    /// When the Lambda wrote the item; `None` when the attribute is missing.
    pub updated_at: Option<u64>,
}

/// All latest prices, in symbol order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestPrices {
    pub symbols: Vec<LatestPrice>,
    /// True when the table held more than [`MAX_SYMBOLS`] and the rest was left out.
    pub truncated: bool,
}

/// One candle item (`pk = C#<symbol>#1m`, `sk = <bucket start>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candle {
    /// Bucket start, ms since the epoch.
    pub t: u64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: Option<f64>,
    pub notional: Option<f64>,
    pub count: Option<u64>,
    pub vwap: Option<f64>,
    pub first_t: Option<u64>,
    pub last_t: Option<u64>,
}

/// Why a read failed. [`StoreError::is_retryable`] tells a transient outage (answer 503,
/// the page retries on its next poll) from a fault an operator must fix (answer 502).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Timeout, connection failure, throttling or a DynamoDB server error.
    #[error("DynamoDB is unavailable for {op}: {detail}")]
    Unavailable { op: &'static str, detail: String },
    /// The table does not exist (wrong `--table`, or not created yet).
    #[error("DynamoDB table {table:?} does not exist")]
    TableNotFound { table: String },
    /// DynamoDB refused the request for another reason (permissions, validation).
    #[error("DynamoDB rejected {op}: {detail}")]
    Rejected { op: &'static str, detail: String },
    /// The table answered but is not ACTIVE, e.g. still being created.
    #[error("DynamoDB table {table:?} is {status}, not ACTIVE")]
    NotActive { table: String, status: String },
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::NotActive { .. })
    }

    fn from_sdk<E, R>(op: &'static str, table: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let detail = DisplayErrorContext(&err).to_string();
        match &err {
            SdkError::TimeoutError(_) => {
                Self::Unavailable { op, detail: "no answer within the timeout".into() }
            }
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                Self::Unavailable { op, detail }
            }
            SdkError::ServiceError(service) => match service.err().code() {
                Some("ResourceNotFoundException") => {
                    Self::TableNotFound { table: table.to_owned() }
                }
                Some(
                    "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable",
                ) => Self::Unavailable { op, detail },
                _ => Self::Rejected { op, detail },
            },
            _ => Self::Rejected { op, detail },
        }
    }
}

/// The table the dashboard reads, and the client that reads it.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

impl Store {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Every symbol's latest price, following pagination up to [`MAX_SYMBOLS`].
    pub async fn latest(&self) -> Result<LatestPrices, StoreError> {
        let mut symbols = Vec::new();
        let mut start_key = None;
        let mut skipped = 0usize;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .projection_expression("#sk, #price, #t, #updated_at")
                .expression_attribute_names("#pk", table::PK)
                .expression_attribute_names("#sk", table::SK)
                .expression_attribute_names("#price", table::PRICE)
                .expression_attribute_names("#t", table::T)
                .expression_attribute_names("#updated_at", table::UPDATED_AT)
                .expression_attribute_values(":pk", AttributeValue::S(table::LATEST_PK.into()))
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|e| StoreError::from_sdk("Query latest", &self.table, e))?;
            for item in page.items() {
                match latest_from_item(item) {
                    Some(latest) => symbols.push(latest),
                    None => skipped += 1,
                }
            }
            start_key = page.last_evaluated_key;
            if start_key.is_none() || symbols.len() >= MAX_SYMBOLS {
                break;
            }
        }
        if skipped > 0 {
            warn!(table = %self.table, skipped, "latest items without a numeric price or t");
        }
        let truncated = start_key.is_some() || symbols.len() > MAX_SYMBOLS;
        if truncated {
            warn!(table = %self.table, limit = MAX_SYMBOLS, "more latest items than the limit");
            symbols.truncate(MAX_SYMBOLS);
        }
        Ok(LatestPrices { symbols, truncated })
    }

    /// The newest `limit` 1-minute candles of `symbol`, returned oldest first.
    pub async fn candles(&self, symbol: &str, limit: usize) -> Result<Vec<Candle>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pk = table::candle_pk(symbol, table::CANDLE_1M);
        let mut candles = Vec::with_capacity(limit);
        let mut start_key = None;
        let mut skipped = 0usize;
        loop {
            let remaining = limit - candles.len() - skipped;
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .projection_expression(
                    "#sk, #o, #h, #l, #c, #v, #notional, #n, #vwap, #first_t, #last_t",
                )
                .expression_attribute_names("#pk", table::PK)
                .expression_attribute_names("#sk", table::SK)
                .expression_attribute_names("#o", table::OPEN)
                .expression_attribute_names("#h", table::HIGH)
                .expression_attribute_names("#l", table::LOW)
                .expression_attribute_names("#c", table::CLOSE)
                .expression_attribute_names("#v", table::VOLUME)
                .expression_attribute_names("#notional", table::NOTIONAL)
                .expression_attribute_names("#n", table::COUNT)
                .expression_attribute_names("#vwap", table::VWAP)
                .expression_attribute_names("#first_t", table::FIRST_T)
                .expression_attribute_names("#last_t", table::LAST_T)
                .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                .scan_index_forward(false)
                .limit(i32::try_from(remaining).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|e| StoreError::from_sdk("Query candles", &self.table, e))?;
            for item in page.items() {
                match candle_from_item(item) {
                    Some(candle) => candles.push(candle),
                    None => skipped += 1,
                }
            }
            start_key = page.last_evaluated_key;
            if start_key.is_none() || candles.len() + skipped >= limit {
                break;
            }
        }
        if skipped > 0 {
            warn!(table = %self.table, symbol, skipped, "candle items without numeric OHLC");
        }
        candles.reverse();
        Ok(candles)
    }

    /// Asks DynamoDB to describe the table; healthy means it answers and the table is ACTIVE.
    pub async fn check(&self) -> Result<(), StoreError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| StoreError::from_sdk("DescribeTable", &self.table, e))?;
        match described.table().and_then(|t| t.table_status()) {
            Some(TableStatus::Active) => Ok(()),
            status => Err(StoreError::NotActive {
                table: self.table.clone(),
                status: status.map_or_else(|| "UNKNOWN".to_owned(), |s| s.as_str().to_owned()),
            }),
        }
    }
}

fn latest_from_item(item: &Item) -> Option<LatestPrice> {
    Some(LatestPrice {
        symbol: string(item, table::SK)?,
        price: number(item, table::PRICE)?,
        t: number(item, table::T)?,
        updated_at: number(item, table::UPDATED_AT),
    })
}

fn candle_from_item(item: &Item) -> Option<Candle> {
    let volume = number::<f64>(item, table::VOLUME);
    let notional = number::<f64>(item, table::NOTIONAL);
    // Older writers may leave vwap out; it follows from notional and volume.
    let vwap = number(item, table::VWAP).or(match (notional, volume) {
        (Some(n), Some(v)) if v > 0.0 => Some(n / v),
        _ => None,
    });
    Some(Candle {
        t: string(item, table::SK)?.parse().ok()?,
        open: number(item, table::OPEN)?,
        high: number(item, table::HIGH)?,
        low: number(item, table::LOW)?,
        close: number(item, table::CLOSE)?,
        volume,
        notional,
        count: number(item, table::COUNT),
        vwap,
        first_t: number(item, table::FIRST_T),
        last_t: number(item, table::LAST_T),
    })
}

fn string(item: &Item, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

/// A number attribute parsed as `T`; `None` when missing, not a number, or out of range.
/// Integers written as "1.7e12" by some writers still parse as `f64`, which is what the
/// prices need; timestamps and counts must be integers.
fn number<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.into())
    }

    #[test]
    fn latest_item_needs_symbol_price_and_time() {
        let full = item(&[
            (table::SK, AttributeValue::S("AAPL".into())),
            (table::PRICE, n("146.76")),
            (table::T, n("1628238530221")),
            (table::UPDATED_AT, n("1628238530300")),
        ]);
        let latest = latest_from_item(&full).expect("complete item");
        assert_eq!(latest.symbol, "AAPL");
        assert_eq!(latest.price, 146.76);
        assert_eq!(latest.t, 1_628_238_530_221);
        assert_eq!(latest.updated_at, Some(1_628_238_530_300));

        let no_price = item(&[(table::SK, AttributeValue::S("X".into())), (table::T, n("1"))]);
        assert_eq!(latest_from_item(&no_price), None);
        let text_price = item(&[
            (table::SK, AttributeValue::S("X".into())),
            (table::PRICE, AttributeValue::S("1.0".into())),
            (table::T, n("1")),
        ]);
        assert_eq!(latest_from_item(&text_price), None);
    }

    #[test]
    fn candle_vwap_falls_back_to_notional_over_volume() {
        let candle = candle_from_item(&item(&[
            (table::SK, AttributeValue::S(table::candle_sk(60_000))),
            (table::OPEN, n("10")),
            (table::HIGH, n("12")),
            (table::LOW, n("9")),
            (table::CLOSE, n("11")),
            (table::VOLUME, n("4")),
            (table::NOTIONAL, n("42")),
        ]))
        .expect("OHLC present");
        assert_eq!(candle.t, 60_000);
        assert_eq!(candle.vwap, Some(10.5));
        assert_eq!(candle.count, None);

        let missing_close = item(&[
            (table::SK, AttributeValue::S(table::candle_sk(0))),
            (table::OPEN, n("1")),
            (table::HIGH, n("1")),
            (table::LOW, n("1")),
        ]);
        assert_eq!(candle_from_item(&missing_close), None);
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        let unavailable = StoreError::Unavailable { op: "Query", detail: "x".into() };
        assert!(unavailable.is_retryable());
        assert!(!StoreError::TableNotFound { table: "t".into() }.is_retryable());
        assert!(!StoreError::Rejected { op: "Query", detail: "x".into() }.is_retryable());
    }
}

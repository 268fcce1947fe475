//! Candles, kept exact under retries by read-modify-write with high-water marks.
//!
//! Each candle item holds, besides its numbers, a map from shard id to the highest
//! position already folded in (`hw`) and a version number (`ver`). A write reads the item
//! with a consistent read, folds in only the trades past the marks, and puts the result
//! on condition that the version is still the one read (or, for a new candle, that no item
//! exists). When another writer got there first the condition fails and the cycle starts
//! again from a fresh read, so no trade is counted twice and none is lost.
//!
//! Candles carry no `expires_at`: they are the long-lived summary that outlives the trades.

use aws_sdk_dynamodb::types::AttributeValue;
use tracing::warn;
use wire::table;

use crate::position::Position;
use crate::store::{Item, Store, StoreError, key, n_f64, n_u64};
use crate::transform::{Candle, CandleDelta, HighWater, Origin, fold};

/// Version attribute for optimistic concurrency. It is private to the writer: the
/// dashboard never reads it, so it is named here rather than in `wire::table`.
pub const VERSION: &str = "ver";

/// A candle item as read.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCandle {
    pub candle: Candle,
    pub high_water: HighWater,
    pub version: u64,
}

/// Folds `delta` into its candle. Returns whether anything was written: `false` when every
/// trade of the delta was already folded in.
pub(crate) async fn write(
    store: &Store,
    delta: &CandleDelta,
    origins: &[Origin],
) -> Result<bool, StoreError> {
    let pk = table::candle_pk(&delta.symbol, table::CANDLE_1M);
    let sk = table::candle_sk(delta.bucket_start_ms);
    let config = store.config();
    let mut last_error = None;
    for attempt in 1..=store.attempts() {
        if attempt > 1 {
            config.backoff.sleep(attempt - 1).await;
        }
        let read = store
            .client()
            .get_item()
            .table_name(store.table())
            .set_key(Some(key(pk.clone(), sk.clone())))
            .consistent_read(true)
            .send()
            .await;
        let stored = match read {
            Ok(out) => match out.item() {
                Some(item) => Some(parse(item).map_err(|reason| StoreError::Corrupt {
                    pk: pk.clone(),
                    sk: sk.clone(),
                    reason,
                })?),
                None => None,
            },
            Err(err) => {
                let error = StoreError::sdk("GetItem", &err);
                if !error.is_retryable() {
                    return Err(error);
                }
                warn!(attempt, %error, pk, sk, "candle read failed; retrying");
                last_error = Some(error);
                continue;
            }
        };

        let mut high_water = stored.as_ref().map(|s| s.high_water.clone()).unwrap_or_default();
        let Some(candle) =
            fold(stored.as_ref().map(|s| &s.candle), &mut high_water, delta, origins)
        else {
            return Ok(false);
        };
        let version = stored.as_ref().map(|s| s.version);
        let next = version.map_or(1, |v| v + 1);
        let put = store.client().put_item().table_name(store.table()).set_item(Some(item(
            pk.clone(),
            sk.clone(),
            &candle,
            &high_water,
            next,
        )));
        let put = match version {
            Some(v) => put
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", VERSION)
                .expression_attribute_values(":v", n_u64(v)),
            None => put
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", table::PK),
        };
        match put.send().await {
            Ok(_) => return Ok(true),
            Err(err) => {
                let conflict = err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception());
                let error = if conflict {
                    StoreError::Contended { pk: pk.clone(), sk: sk.clone(), attempts: attempt }
                } else {
                    StoreError::sdk("PutItem", &err)
                };
                if !error.is_retryable() {
                    return Err(error);
                }
                warn!(attempt, %error, "candle write failed; reading again");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.expect("the loop runs at least once and every pass that ends sets an error"))
}

/// The item of a candle, with its marks and version.
pub fn item(pk: String, sk: String, c: &Candle, high_water: &HighWater, version: u64) -> Item {
    let mut item = key(pk, sk);
    let mut put = |name: &str, v: AttributeValue| {
        item.insert(name.to_owned(), v);
    };
    put(table::OPEN, n_f64(c.open));
    put(table::HIGH, n_f64(c.high));
    put(table::LOW, n_f64(c.low));
    put(table::CLOSE, n_f64(c.close));
    put(table::VOLUME, n_f64(c.volume));
    put(table::NOTIONAL, n_f64(c.notional));
    put(table::COUNT, n_u64(c.count));
    put(table::VWAP, n_f64(c.vwap()));
    put(table::FIRST_T, n_u64(c.first_t));
    put(table::LAST_T, n_u64(c.last_t));
    let marks =
        high_water.iter().map(|(shard, p)| (shard.clone(), AttributeValue::S(p.to_stored())));
    put(table::HIGH_WATER, AttributeValue::M(marks.collect()));
    put(VERSION, n_u64(version));
    item
}

/// Reads a candle item back.
pub fn parse(item: &Item) -> Result<StoredCandle, String> {
    let n = |name: &str| -> Result<&str, String> {
        match item.get(name) {
            Some(AttributeValue::N(v)) => Ok(v),
            _ => Err(format!("attribute {name} is missing or not a number")),
        }
    };
    let f = |name: &str| -> Result<f64, String> {
        n(name)?.parse().map_err(|_| format!("attribute {name} is not a float"))
    };
    let u = |name: &str| -> Result<u64, String> {
        n(name)?.parse().map_err(|_| format!("attribute {name} is not an unsigned integer"))
    };
    let candle = Candle {
        open: f(table::OPEN)?,
        high: f(table::HIGH)?,
        low: f(table::LOW)?,
        close: f(table::CLOSE)?,
        volume: f(table::VOLUME)?,
        notional: f(table::NOTIONAL)?,
        count: u(table::COUNT)?,
        first_t: u(table::FIRST_T)?,
        last_t: u(table::LAST_T)?,
    };
    let mut high_water = HighWater::new();
    match item.get(table::HIGH_WATER) {
        Some(AttributeValue::M(marks)) => {
            for (shard, mark) in marks {
                let mark = mark.as_s().map_err(|_| format!("mark of {shard} is not a string"))?;
                let position = Position::from_stored(mark).map_err(|e| e.to_string())?;
                high_water.insert(shard.clone(), position);
            }
        }
        _ => return Err(format!("attribute {} is missing or not a map", table::HIGH_WATER)),
    }
    Ok(StoredCandle { candle, high_water, version: u(VERSION)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip() {
        let mut c = Candle::of(146.76, 43.0, 1628238530221);
        c.absorb(&Candle::of(146.5, 0.5, 1628238530999));
        let hw = HighWater::from([
            ("shardId-000000000000".to_owned(), Position::new("4956816737333333", 3)),
            ("shardId-000000000001".to_owned(), Position::new("7", 0)),
        ]);
        let item = item("C#AAPL#1m".into(), "1628238480000".into(), &c, &hw, 4);
        assert_eq!(item[table::VWAP], n_f64(c.notional / c.volume));
        let back = parse(&item).unwrap();
        assert_eq!(back, StoredCandle { candle: c, high_water: hw, version: 4 });
    }

    #[test]
    fn broken_items_are_refused() {
        let c = Candle::of(1.0, 1.0, 1);
        let mut item = item("p".into(), "s".into(), &c, &HighWater::new(), 1);
        item.insert(table::COUNT.to_owned(), AttributeValue::S("x".into()));
        assert!(parse(&item).unwrap_err().contains(table::COUNT));
        item.remove(table::HIGH_WATER);
        item.insert(table::COUNT.to_owned(), n_u64(1));
        assert!(parse(&item).unwrap_err().contains(table::HIGH_WATER));
    }
}

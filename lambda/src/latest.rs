//! Latest price per symbol: `pk = L`, `sk = <symbol>`, with price, t and updated_at.
//!
//! The update is conditional on the stored `t` being older, so the price only moves
//! forward in trade time: a retried or late batch cannot put an older price back. Two
//! trades of one symbol with the same `t` in different batches keep the first one written;
//! within a batch the later arrival wins, as for a candle's close.

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;
use wire::table;

use crate::store::{Store, StoreError, key, n_f64, n_u64};
use crate::transform::LatestPrice;

/// Writes one latest price. Returns whether the stored price moved: `false` when the table
/// already holds a price at the same or a later `t`.
pub(crate) async fn write(store: &Store, latest: &LatestPrice) -> Result<bool, StoreError> {
    let config = store.config();
    let mut last_error = None;
    for attempt in 1..=store.attempts() {
        if attempt > 1 {
            config.backoff.sleep(attempt - 1).await;
        }
        let sent = store
            .client()
            .update_item()
            .table_name(store.table())
            .set_key(Some(key(table::LATEST_PK.to_owned(), latest.symbol.clone())))
            .update_expression("SET #p = :p, #t = :t, #u = :u")
            .condition_expression("attribute_not_exists(#t) OR #t < :t")
            .expression_attribute_names("#p", table::PRICE)
            .expression_attribute_names("#t", table::T)
            .expression_attribute_names("#u", table::UPDATED_AT)
            .expression_attribute_values(":p", n_f64(latest.price))
            .expression_attribute_values(":t", n_u64(latest.time_ms))
            .expression_attribute_values(":u", n_u64(now_ms()))
            .send()
            .await;
        match sent {
            Ok(_) => return Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                return Ok(false);
            }
            Err(err) => {
                let error = StoreError::sdk("UpdateItem", &err);
                if !error.is_retryable() {
                    return Err(error);
                }
                warn!(attempt, %error, symbol = latest.symbol, "latest price write failed; retrying");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.expect("the loop runs at least once and every pass that ends sets an error"))
}

/// Wall-clock time in ms since the epoch; 0 if the clock reads before 1970.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

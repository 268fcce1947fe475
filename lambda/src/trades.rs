//! Trade items, written with BatchWriteItem, 25 puts per request.
//!
//! A trade's key is `T#<symbol>` / `<t>#<src>#<seq>`, fixed by the trade itself, so writing
//! it again after a retry overwrites it with the same content. What DynamoDB leaves in
//! `UnprocessedItems` is sent again, alone, after a backoff; so is a whole request that
//! failed with a retryable error.

use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use tracing::warn;
use wire::limits::BATCH_WRITE_MAX_ITEMS;
use wire::table;

use crate::store::{Failed, Item, Store, StoreError, key, n_f64, n_u64, s};
use crate::transform::SourcedRecord;

/// Up to 25 put requests, each with the Kinesis record its trade came from.
#[derive(Debug)]
pub struct Chunk {
    requests: Vec<(WriteRequest, usize)>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// The put requests, in trade order.
    pub fn requests(&self) -> impl Iterator<Item = &WriteRequest> {
        self.requests.iter().map(|(r, _)| r)
    }
}

/// Splits the batch's trades into BatchWriteItem-sized chunks of put requests; the
/// request-building half of a trade write, without I/O.
pub fn requests(trades: &[SourcedRecord], ttl: Duration) -> Vec<Chunk> {
    trades
        .chunks(BATCH_WRITE_MAX_ITEMS)
        .map(|chunk| Chunk {
            requests: chunk.iter().map(|t| (put(item(t, ttl)), t.origin)).collect(),
        })
        .collect()
}

/// The trade item of one user record.
///
/// `expires_at` counts from the trade's own time rather than the write's, so that writing
/// a trade twice gives the same item. Condition codes are kept in order as a list, and the
/// attribute is left out when there are none.
pub fn item(t: &SourcedRecord, ttl: Duration) -> Item {
    let r = &t.record;
    let mut item = key(table::trade_pk(&r.symbol), table::trade_sk(r.time_ms, &r.src, r.seq));
    item.insert(table::PRICE.to_owned(), n_f64(r.price));
    item.insert(table::VOLUME.to_owned(), n_f64(r.volume));
    if !r.conditions.is_empty() {
        let codes = r.conditions.iter().map(|c| s(c.as_str())).collect();
        item.insert(table::CONDITIONS.to_owned(), AttributeValue::L(codes));
    }
    item.insert(table::RT.to_owned(), n_u64(r.rt_us));
    item.insert(table::EXPIRES_AT.to_owned(), n_u64(r.time_ms / 1000 + ttl.as_secs()));
    item
}

fn put(item: Item) -> WriteRequest {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .expect("the item, the one required field, is set");
    WriteRequest::builder().put_request(put).build()
}

/// The partition and sort key of a put request, to match unprocessed items to trades.
fn key_of(request: &WriteRequest) -> Option<(&str, &str)> {
    let item = request.put_request()?.item();
    let pk = item.get(table::PK)?.as_s().ok()?;
    let sk = item.get(table::SK)?.as_s().ok()?;
    Some((pk, sk))
}

/// Writes one chunk, retrying what is left unprocessed. Returns the number of items
/// written.
pub(crate) async fn write(store: &Store, chunk: Chunk) -> Result<usize, Failed> {
    let total = chunk.requests.len();
    let config = store.config();
    let mut pending: Vec<WriteRequest> = chunk.requests.iter().map(|(r, _)| r.clone()).collect();
    let mut last_error = None;
    for attempt in 1..=store.attempts() {
        if attempt > 1 {
            config.backoff.sleep(attempt - 1).await;
        }
        let sent = store
            .client()
            .batch_write_item()
            .request_items(store.table(), pending.clone())
            .send()
            .await;
        match sent {
            Ok(mut out) => {
                let unprocessed = out
                    .unprocessed_items
                    .as_mut()
                    .and_then(|u| u.remove(store.table()))
                    .unwrap_or_default();
                if unprocessed.is_empty() {
                    return Ok(total);
                }
                warn!(
                    attempt,
                    unprocessed = unprocessed.len(),
                    of = pending.len(),
                    "BatchWriteItem left items unprocessed; retrying them"
                );
                pending = unprocessed;
                last_error = None;
            }
            Err(err) => {
                let error = StoreError::sdk("BatchWriteItem", &err);
                if !error.is_retryable() {
                    return Err(Failed { origin: first_origin(&chunk, &pending), error });
                }
                warn!(attempt, %error, "BatchWriteItem failed; retrying");
                last_error = Some(error);
            }
        }
    }
    let error = last_error.unwrap_or(StoreError::Unprocessed {
        remaining: pending.len(),
        attempts: store.attempts(),
    });
    Err(Failed { origin: first_origin(&chunk, &pending), error })
}

/// The earliest Kinesis record among the trades still pending.
fn first_origin(chunk: &Chunk, pending: &[WriteRequest]) -> usize {
    let origin_of = |request: &WriteRequest| {
        let wanted = key_of(request);
        chunk.requests.iter().find(|(r, _)| key_of(r) == wanted).map(|(_, origin)| *origin)
    };
    pending
        .iter()
        .map(origin_of)
        // An item DynamoDB returned that matches none sent cannot be placed; blame the
        // whole chunk rather than guess.
        .map(|o| o.unwrap_or_else(|| chunk.requests.iter().map(|(_, o)| *o).min().unwrap_or(0)))
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::record::UserRecord;

    fn trade(seq: u64, conditions: &[&str], origin: usize) -> SourcedRecord {
        SourcedRecord {
            record: UserRecord {
                symbol: "AAPL".into(),
                price: 146.76,
                volume: 43.0,
                time_ms: 1628238530221,
                conditions: conditions.iter().map(|c| c.to_string()).collect(),
                src: "i.1".into(),
                seq,
                rt_us: 1628238530225123,
            },
            origin,
            sub: 0,
        }
    }

    #[test]
    fn trade_items_follow_the_schema() {
        let ttl = Duration::from_secs(100);
        let item = item(&trade(7, &["1", "24"], 0), ttl);
        assert_eq!(item[table::PK], s("T#AAPL"));
        assert_eq!(item[table::SK], s("1628238530221#i.1#00000000000000000007"));
        assert_eq!(item[table::PRICE], AttributeValue::N("146.76".into()));
        assert_eq!(item[table::VOLUME], AttributeValue::N("43".into()));
        assert_eq!(item[table::CONDITIONS], AttributeValue::L(vec![s("1"), s("24")]));
        assert_eq!(item[table::RT], AttributeValue::N("1628238530225123".into()));
        assert_eq!(item[table::EXPIRES_AT], AttributeValue::N("1628238630".into()));

        let bare = super::item(&trade(8, &[], 0), ttl);
        assert!(!bare.contains_key(table::CONDITIONS));
    }

    #[test]
    fn chunks_hold_at_most_25_and_keep_origins() {
        let trades: Vec<_> = (0..60).map(|i| trade(i, &[], i as usize / 10)).collect();
        let chunks = requests(&trades, Duration::ZERO);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.requests.len()).collect();
        assert_eq!(sizes, [25, 25, 10]);
        // The last chunk holds trades 50..60, all from Kinesis record 5.
        let pending: Vec<WriteRequest> =
            chunks[2].requests.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(first_origin(&chunks[2], &pending[3..]), 5);
        let pending: Vec<WriteRequest> =
            chunks[1].requests.iter().map(|(r, _)| r.clone()).collect();
        // Trades 25..50 come from records 2, 3 and 4; trade 30 onwards from 3.
        assert_eq!(first_origin(&chunks[1], &pending[5..]), 3);
    }
}

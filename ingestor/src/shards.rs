//! The stream's shard map, from ListShards.

use aws_sdk_kinesis::Client;
use wire::shard::{Shard, ShardMap, ShardMapError, parse_hash_key};

#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    #[error("ListShards failed: {0}")]
    List(String),
    #[error("the stream's open shards do not form a shard map: {0}")]
    Map(#[from] ShardMapError),
}

/// Lists the open shards of `stream`, following pagination, and builds the shard map.
pub async fn load(client: &Client, stream: &str) -> Result<ShardMap, ShardsError> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        // The first call names the stream; later calls carry only the token, as the
        // API requires.
        let request = match &next_token {
            None => client.list_shards().stream_name(stream),
            Some(token) => client.list_shards().next_token(token),
        };
        let out = request.send().await.map_err(|e| {
            ShardsError::List(aws_sdk_kinesis::error::DisplayErrorContext(e).to_string())
        })?;
        for s in out.shards() {
            let range = s.sequence_number_range();
            // A shard with an ending sequence number is closed: it was split or merged
            // and no longer accepts writes.
            if range.and_then(|r| r.ending_sequence_number()).is_some() {
                continue;
            }
            let Some(keys) = s.hash_key_range() else { continue };
            shards.push(Shard {
                id: s.shard_id().to_owned(),
                start: parse_hash_key(keys.starting_hash_key())?,
                end: parse_hash_key(keys.ending_hash_key())?,
            });
        }
        next_token = out.next_token().map(str::to_owned);
        if next_token.is_none() {
            break;
        }
    }
    Ok(ShardMap::new(shards)?)
}

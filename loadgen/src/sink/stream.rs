//! The one stream the sink serves: its shards, hash-key routing, sequence numbers,
//! resharding and shard listings.
//!
//! Shards start as an even split of the hash-key space ([`ShardMap::uniform`]). A reshard
//! splits every open shard in two at the middle of its range, as SplitShard does: the
//! parent closes with an ending sequence number, two children with new ids open, and
//! writes route to the children from then on. A record always lands on the shard that owns
//! its hash key now, whatever shard the client predicted.
//!
//! Sequence numbers come from one counter for the whole stream, so they increase within
//! each shard and every child's numbers follow its parent's. They are written as 56-digit
//! decimals starting `49`, the form Kinesis uses, fixed-width so that text order is numeric
//! order.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use wire::shard::{Shard as MapShard, ShardMap};

use super::api::ApiError;
use super::faults::Faults;
use super::request::{DescribeStream, ListShards, ShardFilter, StreamRef};
use super::response::{
    DescribeStreamOutput, DescribeStreamSummaryOutput, HashKeyRange, ListShardsOutput,
    ListStreamsOutput, SequenceNumberRange, Shard, StreamDescription, StreamInfo, StreamListEntry,
    StreamModeDetails, StreamSummary,
};
use super::throttle::Window;
use super::{ShardLimits, SinkConfig};

/// The account the sink's ARNs and messages name.
pub const ACCOUNT_ID: &str = "000000000000";

/// The region the sink's ARNs name; the SDK does not check it.
pub const REGION: &str = "us-east-1";

/// Salt mixed into the fault seed for the record-level dice, so that they do not repeat
/// the request-level dice drawn from the same seed.
const RECORD_DICE_SALT: u64 = 0x5eed_f00d_5a1d;

/// One shard, open or closed.
#[derive(Debug)]
struct ShardState {
    id: String,
    parent: Option<String>,
    start: u128,
    end: u128,
    starting_seq: u64,
    ending_seq: Option<u64>,
    window: Window,
    records: u64,
    bytes: u64,
}

impl ShardState {
    fn new(index: usize, parent: Option<String>, start: u128, end: u128, seq: u64) -> Self {
        Self {
            id: shard_id(index),
            parent,
            start,
            end,
            starting_seq: seq,
            ending_seq: None,
            window: Window::default(),
            records: 0,
            bytes: 0,
        }
    }

    fn describe(&self) -> Shard {
        Shard {
            shard_id: self.id.clone(),
            parent_shard_id: self.parent.clone(),
            hash_key_range: HashKeyRange {
                starting_hash_key: self.start.to_string(),
                ending_hash_key: self.end.to_string(),
            },
            sequence_number_range: SequenceNumberRange {
                starting_sequence_number: sequence_number(self.starting_seq),
                ending_sequence_number: self.ending_seq.map(sequence_number),
            },
        }
    }
}

/// Where one record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Written { shard: usize, seq: u64 },
    Throttled { shard: usize },
    Failed { shard: usize },
}

/// One shard's totals, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardTotals {
    pub id: String,
    pub parent: Option<String>,
    pub open: bool,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct Stream {
    name: String,
    arn: String,
    created_epoch_secs: f64,
    /// Every shard ever, in creation order; ids increase with the index.
    shards: Vec<ShardState>,
    /// The open shards, for lookup by hash key.
    map: ShardMap,
    /// `open[i]` is the index in `shards` of `map.shards()[i]`.
    open: Vec<usize>,
    limits: Option<ShardLimits>,
    /// The sequence number the next written record gets.
    next_seq: u64,
    reshard_at: Option<Instant>,
    reshards: u64,
    /// Record-level fault dice.
    rng: SmallRng,
}

impl Stream {
    pub fn new(config: &SinkConfig, started: Instant) -> Self {
        let map = ShardMap::uniform(config.shards);
        let shards: Vec<ShardState> = map
            .shards()
            .iter()
            .enumerate()
            .map(|(i, s)| ShardState::new(i, None, s.start, s.end, 0))
            .collect();
        let created = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut stream = Self {
            arn: format!("arn:aws:kinesis:{REGION}:{ACCOUNT_ID}:stream/{}", config.stream),
            name: config.stream.clone(),
            created_epoch_secs: (created.as_millis() as f64) / 1000.0,
            shards,
            map,
            open: Vec::new(),
            limits: config.limits,
            next_seq: 1,
            reshard_at: config.faults.reshard_after.map(|d| started + d),
            reshards: 0,
            rng: SmallRng::seed_from_u64(config.faults.seed ^ RECORD_DICE_SALT),
        };
        stream.rebuild_map();
        stream
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn open_shards(&self) -> usize {
        self.open.len()
    }

    pub fn limits(&self) -> Option<ShardLimits> {
        self.limits
    }

    pub fn reshards(&self) -> u64 {
        self.reshards
    }

    /// `ResourceNotFoundException` unless `stream` names this stream, by name or ARN.
    pub fn check(&self, stream: &StreamRef<'_>) -> Result<(), ApiError> {
        let by_name = stream.name.as_deref().is_none_or(|n| n == self.name);
        let by_arn = stream.arn.as_deref().is_none_or(|a| a == self.arn);
        if by_name && by_arn {
            return Ok(());
        }
        let what = match (&stream.name, &stream.arn) {
            (Some(name), _) => format!("Stream {name}"),
            (None, Some(arn)) => format!("Stream {arn}"),
            (None, None) => "Stream".into(),
        };
        Err(ApiError::ResourceNotFound(format!("{what} under account {ACCOUNT_ID} not found.")))
    }

    /// Splits every open shard if the configured time has come. Called before each request
    /// is served, so every answer after that instant shows the new map.
    pub fn reshard_if_due(&mut self, now: Instant) {
        if self.reshard_at.is_some_and(|at| now >= at) {
            self.reshard_at = None;
            self.reshard();
        }
    }

    /// Splits every open shard in two at the middle of its hash-key range.
    pub fn reshard(&mut self) {
        let last_written = self.next_seq - 1;
        let parents: Vec<usize> = self.open.clone();
        for p in parents {
            let (start, end) = (self.shards[p].start, self.shards[p].end);
            if start == end {
                // A one-key range cannot split; it stays open as it is.
                continue;
            }
            self.shards[p].ending_seq = Some(last_written);
            let parent_id = self.shards[p].id.clone();
            let mid = start + (end - start) / 2;
            for (lo, hi) in [(start, mid), (mid + 1, end)] {
                let index = self.shards.len();
                let child = ShardState::new(index, Some(parent_id.clone()), lo, hi, self.next_seq);
                self.shards.push(child);
            }
        }
        self.reshards += 1;
        self.rebuild_map();
    }

    fn rebuild_map(&mut self) {
        let open: Vec<MapShard> = self
            .shards
            .iter()
            .filter(|s| s.ending_seq.is_none())
            .map(|s| MapShard { id: s.id.clone(), start: s.start, end: s.end })
            .collect();
        self.map = ShardMap::new(open).expect("splits keep the open ranges contiguous");
        self.open = self
            .map
            .shards()
            .iter()
            .map(|m| {
                self.shards
                    .iter()
                    .position(|s| s.id == m.id)
                    .expect("the map was built from shards")
            })
            .collect();
    }

    /// Places records of `(hash key, billed bytes)` on their shards, in order: injected
    /// failure first, then the shard's limits. A shard that throttles one record throttles
    /// the rest of the request's records for it, as a limiter that ran dry would, so a
    /// later record never overtakes an earlier one of the same key.
    pub fn place(
        &mut self,
        records: &[(u128, usize)],
        now: Instant,
        faults: &Faults,
    ) -> Vec<Placement> {
        let mut dry = vec![false; self.shards.len()];
        records
            .iter()
            .map(|&(hash_key, bytes)| {
                let shard = self.open[self.map.index_of(hash_key)];
                if faults.roll_record(&mut self.rng) {
                    return Placement::Failed { shard };
                }
                let state = &mut self.shards[shard];
                let admitted =
                    !dry[shard] && self.limits.is_none_or(|l| state.window.admit(&l, now, bytes));
                if !admitted {
                    dry[shard] = true;
                    return Placement::Throttled { shard };
                }
                state.records += 1;
                state.bytes += bytes as u64;
                let seq = self.next_seq;
                self.next_seq += 1;
                Placement::Written { shard, seq }
            })
            .collect()
    }

    pub fn shard_id(&self, shard: usize) -> &str {
        &self.shards[shard].id
    }

    /// The message Kinesis gives a throttled record.
    pub fn throttled_message(&self, shard: usize) -> String {
        format!(
            "Rate exceeded for shard {} in stream {} under account {ACCOUNT_ID}.",
            self.shards[shard].id, self.name
        )
    }

    pub fn list_shards(&self, req: &ListShards<'_>) -> Result<ListShardsOutput, ApiError> {
        let (filter, after, offset) = match &req.next_token {
            Some(token) => {
                let t = PageToken::decode(token)?;
                if t.stream != self.name {
                    return Err(ApiError::ResourceNotFound(format!(
                        "Stream {} under account {ACCOUNT_ID} not found.",
                        t.stream
                    )));
                }
                (t.filter, t.after, t.offset)
            }
            None => {
                self.check(&req.stream)?;
                (req.filter, req.exclusive_start_shard_id.as_deref().map(str::to_owned), 0)
            }
        };
        let listed: Vec<&ShardState> = self
            .shards
            .iter()
            .filter(|s| filter == ShardFilter::All || s.ending_seq.is_none())
            .filter(|s| after.as_deref().is_none_or(|a| s.id.as_str() > a))
            .collect();
        let end = listed.len().min(offset.saturating_add(req.page));
        let shards = listed.get(offset..end).unwrap_or_default().iter().map(|s| s.describe());
        let next_token = (end < listed.len())
            .then(|| PageToken { stream: self.name.clone(), filter, after, offset: end }.encode());
        Ok(ListShardsOutput { shards: shards.collect(), next_token })
    }

    pub fn describe(&self, req: &DescribeStream<'_>) -> Result<DescribeStreamOutput, ApiError> {
        self.check(&req.stream)?;
        let after = req.exclusive_start_shard_id.as_deref();
        let listed: Vec<&ShardState> =
            self.shards.iter().filter(|s| after.is_none_or(|a| s.id.as_str() > a)).collect();
        let shards: Vec<Shard> = listed.iter().take(req.limit).map(|s| s.describe()).collect();
        Ok(DescribeStreamOutput {
            stream_description: StreamDescription {
                info: self.info(),
                has_more_shards: listed.len() > shards.len(),
                shards,
            },
        })
    }

    pub fn summary(&self, stream: &StreamRef<'_>) -> Result<DescribeStreamSummaryOutput, ApiError> {
        self.check(stream)?;
        Ok(DescribeStreamSummaryOutput {
            stream_description_summary: StreamSummary {
                info: self.info(),
                open_shard_count: self.open.len(),
                consumer_count: 0,
            },
        })
    }

    pub fn list_streams(&self, limit: usize) -> ListStreamsOutput {
        let listed = limit >= 1;
        ListStreamsOutput {
            stream_names: if listed { vec![self.name.clone()] } else { Vec::new() },
            has_more_streams: !listed,
            stream_summaries: if listed {
                vec![StreamListEntry {
                    stream_name: self.name.clone(),
                    stream_arn: self.arn.clone(),
                    stream_status: "ACTIVE",
                    stream_mode_details: StreamModeDetails { stream_mode: "PROVISIONED" },
                    stream_creation_timestamp: self.created_epoch_secs,
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn info(&self) -> StreamInfo {
        StreamInfo::new(&self.name, &self.arn, self.created_epoch_secs)
    }

    /// Every shard's totals, in creation order.
    pub fn totals(&self) -> Vec<ShardTotals> {
        self.shards
            .iter()
            .map(|s| ShardTotals {
                id: s.id.clone(),
                parent: s.parent.clone(),
                open: s.ending_seq.is_none(),
                records: s.records,
                bytes: s.bytes,
            })
            .collect()
    }
}

/// `shardId-000000000007`, the form Kinesis gives shard ids.
fn shard_id(index: usize) -> String {
    format!("shardId-{index:012}")
}

/// A sequence number as Kinesis writes them: 56 decimal digits.
pub fn sequence_number(counter: u64) -> String {
    format!("49{counter:054}")
}

/// Where the next ListShards page starts. Opaque to clients: base64 of a small text form.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PageToken {
    stream: String,
    filter: ShardFilter,
    after: Option<String>,
    offset: usize,
}

impl PageToken {
    fn encode(&self) -> String {
        let filter = match self.filter {
            ShardFilter::All => "all",
            ShardFilter::Open => "open",
        };
        let after = self.after.as_deref().unwrap_or("");
        BASE64.encode(format!("v1\n{}\n{filter}\n{after}\n{}", self.offset, self.stream))
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::InvalidArgument(format!("Invalid NextToken: {token}"));
        let bytes = BASE64.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(5, '\n');
        let mut next = || parts.next().ok_or_else(invalid);
        if next()? != "v1" {
            return Err(invalid());
        }
        let offset = next()?.parse().map_err(|_| invalid())?;
        let filter = match next()? {
            "all" => ShardFilter::All,
            "open" => ShardFilter::Open,
            _ => return Err(invalid()),
        };
        let after = Some(next()?).filter(|a| !a.is_empty()).map(str::to_owned);
        let stream = next()?.to_owned();
        Ok(Self { stream, filter, after, offset })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use super::*;
    use crate::sink::FaultConfig;

    fn stream(shards: usize, limits: Option<ShardLimits>) -> (Stream, Faults) {
        let config =
            SinkConfig { stream: "s".into(), shards, limits, faults: FaultConfig::default() };
        (Stream::new(&config, Instant::now()), Faults::new(&config.faults))
    }

    fn named(name: &str) -> StreamRef<'_> {
        StreamRef { name: Some(Cow::Borrowed(name)), arn: None }
    }

    fn list(s: &Stream, page: usize, token: Option<String>) -> ListShardsOutput {
        let req = ListShards {
            stream: if token.is_some() { StreamRef::default() } else { named("s") },
            next_token: token.map(Cow::Owned),
            page,
            exclusive_start_shard_id: None,
            filter: ShardFilter::All,
        };
        s.list_shards(&req).unwrap()
    }

    #[test]
    fn records_route_by_hash_key_and_numbers_increase() {
        let (mut s, faults) = stream(4, None);
        let quarter = u128::MAX / 4;
        let placed =
            s.place(&[(0, 1), (quarter + 5, 1), (u128::MAX, 1), (1, 1)], Instant::now(), &faults);
        assert_eq!(
            placed,
            [
                Placement::Written { shard: 0, seq: 1 },
                Placement::Written { shard: 1, seq: 2 },
                Placement::Written { shard: 3, seq: 3 },
                Placement::Written { shard: 0, seq: 4 },
            ]
        );
        assert_eq!(sequence_number(4).len(), 56);
        assert!(sequence_number(4) < sequence_number(10));
    }

    #[test]
    fn a_dry_shard_throttles_the_rest_of_the_request() {
        let limits = ShardLimits { records_per_sec: 100, bytes_per_sec: 10 };
        let (mut s, faults) = stream(1, Some(limits));
        let placed = s.place(&[(0, 6), (0, 6), (0, 1)], Instant::now(), &faults);
        assert!(matches!(placed[0], Placement::Written { .. }));
        // The second does not fit; the third would, but must not overtake it.
        assert_eq!(placed[1..], [Placement::Throttled { shard: 0 }; 2]);
    }

    #[test]
    fn unknown_streams_are_not_found() {
        let (s, _) = stream(1, None);
        let err = s.check(&named("other")).unwrap_err();
        assert_eq!(err.code(), "ResourceNotFoundException");
        assert_eq!(err.message(), "Stream other under account 000000000000 not found.");
        assert!(s.check(&StreamRef { name: None, arn: Some(Cow::Borrowed(&s.arn)) }).is_ok());
    }

    #[test]
    fn list_shards_pages_through_every_shard() {
        let (s, _) = stream(5, None);
        let mut ids = Vec::new();
        let mut out = list(&s, 2, None);
        loop {
            ids.extend(out.shards.iter().map(|sh| sh.shard_id.clone()));
            let Some(token) = out.next_token.take() else { break };
            out = list(&s, 2, Some(token));
        }
        let expected: Vec<String> = (0..5).map(shard_id).collect();
        assert_eq!(ids, expected);
        assert!(PageToken::decode("garbage!").is_err());
        assert!(PageToken::decode(&BASE64.encode("v1\nx\nall\n\ns")).is_err());
    }

    #[test]
    fn a_reshard_closes_parents_and_opens_children() {
        let (mut s, faults) = stream(2, None);
        s.place(&[(0, 1), (u128::MAX, 1)], Instant::now(), &faults);
        s.reshard();
        let out = list(&s, 100, None);
        assert_eq!(out.shards.len(), 6);
        let parents = &out.shards[..2];
        let children = &out.shards[2..];
        assert!(parents.iter().all(|p| p.sequence_number_range.ending_sequence_number.is_some()));
        assert!(children.iter().all(|c| c.sequence_number_range.ending_sequence_number.is_none()));
        assert_eq!(children[0].parent_shard_id.as_deref(), Some("shardId-000000000000"));
        assert_eq!(children[0].hash_key_range.starting_hash_key, "0");
        assert_eq!(children[3].hash_key_range.ending_hash_key, u128::MAX.to_string());
        assert_eq!(s.open_shards(), 4);
        // Children's numbers follow their parents'.
        let parent_end = parents[0].sequence_number_range.ending_sequence_number.clone().unwrap();
        assert!(children[0].sequence_number_range.starting_sequence_number > parent_end);
        // Writes now land on children.
        let placed = s.place(&[(0, 1)], Instant::now(), &faults);
        assert!(matches!(placed[0], Placement::Written { shard: 2, .. }));
        let open_only = ListShards {
            stream: named("s"),
            next_token: None,
            page: 100,
            exclusive_start_shard_id: None,
            filter: ShardFilter::Open,
        };
        assert_eq!(s.list_shards(&open_only).unwrap().shards.len(), 4);
    }

    #[test]
    fn the_reshard_waits_for_its_time() {
        let config = SinkConfig {
            shards: 1,
            faults: FaultConfig {
                reshard_after: Some(Duration::from_secs(5)),
                ..FaultConfig::default()
            },
            ..SinkConfig::default()
        };
        let t0 = Instant::now();
        let mut s = Stream::new(&config, t0);
        s.reshard_if_due(t0 + Duration::from_secs(4));
        assert_eq!(s.open_shards(), 1);
        s.reshard_if_due(t0 + Duration::from_secs(5));
        assert_eq!(s.open_shards(), 2);
        s.reshard_if_due(t0 + Duration::from_secs(60));
        assert_eq!((s.open_shards(), s.reshards()), (2, 1));
    }
}

//! Routing and batching: user records into per-shard Kinesis requests.
//!
//! The batcher runs on its own thread. It takes chunks of user records from the source,
//! predicts each record's shard from the MD5 of its partition key, and packs the records
//! of each shard into a buffer of their own:
//!
//! - with aggregation on, into one KPL aggregated record per shard, sealed when the next
//!   record would not fit or at the linger flush; each sealed record is one batch;
//! - with aggregation off, into a list of plain records, sent when it reaches 50 records,
//!   the request byte cap, or at the linger flush.
//!
//! The linger flush comes when the oldest trade held anywhere has waited `linger`, and
//! takes every shard at once, so that their batches can share one request.
//!
//! A batch goes to its shard's service queue. The queues are unbounded on purpose: memory
//! is bounded by the source's cap on buffered bytes, and a shard that cannot keep up (one
//! hot symbol above its shard's limit) must not stall the batcher and with it every other
//! shard. When the cap is reached the source stops reading the websocket.
//!
//! One aggregated record per batch is what keeps one symbol's trades in order across
//! retries: a batch either fails or succeeds as one unit, and a shard's next batch waits
//! until the previous one is acknowledged. With aggregation off, a request
//! holds many records of a shard, and Kinesis may accept a later one while refusing an
//! earlier one; their retry then lands after it. That mode trades order under partial
//! failure for one-trade-per-record simplicity, and says so in its flag's help.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::{error, info};
use wire::kpl::Aggregator;
use wire::limits::{PUT_RECORDS_MAX_RECORDS, RECORD_MAX_BYTES};
use wire::shard::{Shard, ShardMap};

use crate::decode::Chunk;
use crate::stats::{Dropped, Stats};

/// Records per request without aggregation: a twentieth of a shard's 1,000 records/s,
/// so that the one request that overdraws the shard's budget cannot push a one-second
/// window over the limit (see `limiter`). Far below the API's 500.
const PLAIN_MAX_RECORDS_PER_REQUEST: usize = 50;
const _: () = assert!(PLAIN_MAX_RECORDS_PER_REQUEST <= PUT_RECORDS_MAX_RECORDS);

/// Partition keys whose shard is remembered; far above any real subscription list.
const MAX_CACHED_KEYS: usize = 100_000;

/// One Kinesis record on its way to PutRecords.
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition_key: String,
    pub data: Vec<u8>,
    /// Receive time of each trade inside, microseconds since the epoch.
    pub receive_times: Vec<u64>,
    /// Bytes of the user records inside, as counted against the buffer cap.
    pub budget: usize,
}

impl Entry {
    /// Bytes Kinesis counts against its limits: data plus partition key.
    pub fn billed_bytes(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    pub fn trades(&self) -> u64 {
        self.receive_times.len() as u64
    }
}

/// The records of one PutRecords request, all predicted to land on one shard.
#[derive(Debug)]
pub struct Batch {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    pub aggregation: bool,
    pub aggregate_max_bytes: usize,
    pub max_request_bytes: usize,
    pub linger: Duration,
}

#[derive(Default)]
struct ShardBuffer {
    agg: Aggregator,
    agg_key_len: usize,
    agg_times: Vec<u64>,
    agg_budget: usize,
    plain: Vec<Entry>,
    plain_bytes: usize,
}

/// A running shard service: its queue and, when it runs on a runtime, its task.
pub struct ShardHandle {
    pub queue: mpsc::UnboundedSender<Batch>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the service of one shard.
pub type ServiceFactory = Box<dyn FnMut(&Shard) -> ShardHandle + Send>;

pub struct Batcher {
    config: BatcherConfig,
    map: ShardMap,
    /// Shard index per partition key; symbols are few, MD5 per trade is not free.
    shard_of: HashMap<String, usize, foldhash::fast::RandomState>,
    shards: Vec<ShardBuffer>,
    /// When the oldest trade buffered since the last linger flush arrived. A shard that
    /// filled up and was sent since then may leave only younger trades behind; they go
    /// out with the next linger flush a little early, which costs nothing, and the
    /// batcher need not look at every shard after every chunk to find its deadline.
    oldest: Option<Instant>,
    services: Vec<ShardHandle>,
    start_service: ServiceFactory,
    stats: Arc<Stats>,
    /// Batches of a linger flush, sealed before any is sent (kept to reuse its memory).
    sealed: Vec<(usize, Batch)>,
}

impl Batcher {
    pub fn new(
        config: BatcherConfig,
        map: ShardMap,
        mut start_service: ServiceFactory,
        stats: Arc<Stats>,
    ) -> Self {
        let shards = (0..map.len()).map(|_| ShardBuffer::default()).collect();
        let services = map.shards().iter().map(&mut start_service).collect();
        stats.shards.store(map.len(), Relaxed);
        let shard_of = HashMap::default();
        Self {
            config,
            map,
            shard_of,
            shards,
            oldest: None,
            services,
            start_service,
            stats,
            sealed: Vec::new(),
        }
    }

    /// Runs until the source hangs up, then flushes everything, waits for the shard
    /// services to drain on `runtime`, and returns.
    ///
    /// A new shard map arriving on `maps` (the stream was resharded) is applied between
    /// chunks: everything buffered is flushed to the old services, they are drained, and
    /// only then do the new services start. A symbol that moves to another shard thus
    /// never has a newer trade written before an older one is acknowledged.
    pub fn run(
        mut self,
        rx: Receiver<Chunk>,
        spares: Sender<Chunk>,
        maps: Receiver<ShardMap>,
        runtime: Handle,
    ) {
        loop {
            let msg = match self.next_deadline() {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(chunk) => {
                    self.route(&chunk);
                    // A full pool means the decoder has spares enough; this one is freed.
                    if let Some(spare) = chunk.recycle() {
                        let _ = spares.try_send(spare);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.flush_due(Instant::now());
            if let Some(map) = maps.try_iter().last()
                && map != self.map
            {
                self.remap(map, &runtime);
            }
        }
        self.drain(&runtime);
    }

    /// Sends whatever every shard has buffered, without waiting.
    ///
    /// Every batch is sealed (its MD5 computed) before the first is sent, so that the
    /// services receive them within microseconds of each other: sent one by one between
    /// the digests, each would wake the runtime's thread anew.
    pub fn flush_all(&mut self) {
        self.oldest = None;
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.extend((0..self.shards.len()).filter_map(|i| self.seal(i).map(|b| (i, b))));
        for (i, batch) in sealed.drain(..) {
            self.send(i, batch);
        }
        self.sealed = sealed;
    }

    /// Flushes every shard and waits until its service has sent everything.
    fn drain(&mut self, runtime: &Handle) {
        self.flush_all();
        let tasks: Vec<_> = self.services.drain(..).filter_map(|s| s.task).collect();
        runtime.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
    }

    fn remap(&mut self, map: ShardMap, runtime: &Handle) {
        info!(old_shards = self.map.len(), new_shards = map.len(), "shard map changed; draining");
        self.drain(runtime);
        self.shards = (0..map.len()).map(|_| ShardBuffer::default()).collect();
        self.services = map.shards().iter().map(&mut self.start_service).collect();
        self.shard_of.clear();
        self.stats.shards.store(map.len(), Relaxed);
        self.map = map;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.config.linger)
    }

    fn shard_index(&mut self, key: &str) -> usize {
        if let Some(&i) = self.shard_of.get(key) {
            return i;
        }
        let i = self.map.index_of(wire::shard::hash_key(key));
        if self.shard_of.len() >= MAX_CACHED_KEYS {
            // A feed sending ever new symbols must not grow the cache without bound.
            self.shard_of.clear();
        }
        self.shard_of.insert(key.to_owned(), i);
        i
    }

    /// Routes every record of a chunk to its shard's buffer. The chunk's bytes were
    /// counted as buffered by the source; they are released as records are acknowledged.
    pub fn route(&mut self, chunk: &Chunk) {
        self.route_at(chunk, Instant::now());
    }

    fn route_at(&mut self, chunk: &Chunk, now: Instant) {
        for (key, data, rt) in chunk.iter() {
            if data.len() + key.len() > RECORD_MAX_BYTES {
                // Only a trade with an absurd list of condition codes gets here.
                self.stats.drop_trades(Dropped::TooLarge, 1);
                self.stats.release(data.len() + key.len());
                error!(
                    symbol = key,
                    bytes = data.len(),
                    "dropped a trade larger than a Kinesis record"
                );
                continue;
            }
            let i = self.shard_index(key);
            if self.config.aggregation {
                self.push_aggregated(i, key, data, rt, now);
            } else {
                self.push_plain(i, key, data, rt, now);
            }
        }
    }

    fn push_aggregated(&mut self, i: usize, key: &str, data: &[u8], rt: u64, now: Instant) {
        let max = self.config.aggregate_max_bytes;
        let s = &mut self.shards[i];
        if s.agg.is_empty() {
            s.agg_key_len = key.len();
        }
        // The aggregated record travels under its first user record's partition key,
        // which Kinesis bills along with the data.
        let limit = max.saturating_sub(s.agg_key_len);
        if !s.agg.push_within(key, data, limit) {
            self.flush(i);
            let s = &mut self.shards[i];
            s.agg_key_len = key.len();
            s.agg.push(key, data);
        }
        let s = &mut self.shards[i];
        s.agg_times.push(rt);
        s.agg_budget += data.len() + key.len();
        self.oldest.get_or_insert(now);
    }

    fn push_plain(&mut self, i: usize, key: &str, data: &[u8], rt: u64, now: Instant) {
        let s = &self.shards[i];
        let bytes = data.len() + key.len();
        if s.plain.len() == PLAIN_MAX_RECORDS_PER_REQUEST
            || s.plain_bytes + bytes > self.config.max_request_bytes
        {
            self.flush(i);
        }
        let s = &mut self.shards[i];
        s.plain.push(Entry {
            partition_key: key.to_owned(),
            data: data.to_vec(),
            receive_times: vec![rt],
            budget: bytes,
        });
        s.plain_bytes += bytes;
        self.oldest.get_or_insert(now);
    }

    /// Once the oldest buffered trade has waited `linger`, flushes every shard, not just
    /// its own: batches that leave together share a request (see `collector`), and the
    /// others only go out sooner than they had to.
    fn flush_due(&mut self, now: Instant) {
        if self.next_deadline().is_some_and(|at| now >= at) {
            self.flush_all();
        }
    }

    /// Sends whatever shard `i` has buffered as one batch.
    fn flush(&mut self, i: usize) {
        if let Some(batch) = self.seal(i) {
            self.send(i, batch);
        }
    }

    /// Takes what shard `i` has buffered as one batch, if anything.
    fn seal(&mut self, i: usize) -> Option<Batch> {
        let s = &mut self.shards[i];
        let entries = if let Some((data, partition_key)) = s.agg.finish() {
            let receive_times = std::mem::take(&mut s.agg_times);
            let budget = std::mem::take(&mut s.agg_budget);
            vec![Entry { partition_key, data, receive_times, budget }]
        } else {
            s.plain_bytes = 0;
            std::mem::take(&mut s.plain)
        };
        (!entries.is_empty()).then_some(Batch { entries })
    }

    fn send(&mut self, i: usize, batch: Batch) {
        if let Err(mpsc::error::SendError(batch)) = self.services[i].queue.send(batch) {
            // The service only goes away when the shutdown deadline has passed.
            let lost: u64 = batch.entries.iter().map(Entry::trades).sum();
            self.stats.drop_trades(Dropped::ShutdownDeadline, lost);
            self.stats.release(batch.entries.iter().map(|e| e.budget).sum());
            error!(shard = i, trades = lost, "dropped trades: shard service has stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RecordSpan;
    use proptest::prelude::*;
    use wire::limits::PUT_RECORDS_MAX_BYTES;

    fn chunk(records: &[(&str, usize)]) -> Chunk {
        let mut c = Chunk::default();
        for (i, (key, len)) in records.iter().enumerate() {
            c.keys.push_str(key);
            // Each record's bytes name its position so order can be checked afterwards.
            let mut data = format!("{i:08}").into_bytes();
            data.resize((*len).max(8), b'.');
            c.data.extend_from_slice(&data);
            c.records.push(RecordSpan {
                key_end: c.keys.len() as u32,
                data_end: c.data.len() as u32,
                rt_us: i as u64,
            });
        }
        c
    }

    fn batcher(
        config: BatcherConfig,
        shards: usize,
    ) -> (Batcher, Vec<mpsc::UnboundedReceiver<Batch>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
        let mut txs = txs.into_iter();
        let factory: ServiceFactory = Box::new(move |_shard: &Shard| ShardHandle {
            queue: txs.next().expect("one queue per shard"),
            task: None,
        });
        let b =
            Batcher::new(config, ShardMap::uniform(shards), factory, Arc::new(Stats::default()));
        (b, rxs)
    }

    fn drain(rxs: &mut [mpsc::UnboundedReceiver<Batch>]) -> Vec<(usize, Batch)> {
        let mut out = Vec::new();
        for (i, rx) in rxs.iter_mut().enumerate() {
            while let Ok(b) = rx.try_recv() {
                out.push((i, b));
            }
        }
        out
    }

    /// The user records inside an entry, as (key, record position).
    fn unpack(e: &Entry) -> Vec<(String, usize)> {
        wire::kpl::deaggregate(bytes::Bytes::from(e.data.clone()), &e.partition_key)
            .unwrap()
            .into_iter()
            .map(|r| (r.partition_key, std::str::from_utf8(&r.data[..8]).unwrap().parse().unwrap()))
            .collect()
    }

    proptest! {
        #[test]
        fn batches_respect_limits_keep_order_and_lose_nothing(
            records in prop::collection::vec((0usize..12, 8usize..3000), 1..2000),
            aggregation in any::<bool>(),
            aggregate_max in 1024usize..200_000,
        ) {
            let keys: Vec<String> = (0..12).map(|i| format!("SYM{i}")).collect();
            let input: Vec<(&str, usize)> = records.iter().map(|(k, n)| (keys[*k].as_str(), *n)).collect();
            let config = BatcherConfig {
                aggregation,
                aggregate_max_bytes: aggregate_max,
                max_request_bytes: RECORD_MAX_BYTES,
                linger: Duration::from_secs(60),
            };
            let (mut b, mut rxs) = batcher(config, 4);
            let map = ShardMap::uniform(4);
            b.route(&chunk(&input));
            for i in 0..4 { b.flush(i); }
            let mut seen_per_key: HashMap<String, Vec<usize>> = HashMap::new();
            let mut total = 0;
            for (shard, batch) in drain(&mut rxs) {
                prop_assert!(batch.entries.len() <= PUT_RECORDS_MAX_RECORDS);
                let bytes: usize = batch.entries.iter().map(Entry::billed_bytes).sum();
                prop_assert!(bytes <= PUT_RECORDS_MAX_BYTES);
                if aggregation {
                    prop_assert_eq!(batch.entries.len(), 1);
                }
                for e in &batch.entries {
                    prop_assert!(e.billed_bytes() <= RECORD_MAX_BYTES);
                    let inside = unpack(e);
                    // Only a record too big to share may exceed the aggregate cap.
                    if aggregation && inside.len() > 1 {
                        prop_assert!(e.billed_bytes() <= aggregate_max);
                    }
                    for (key, pos) in inside {
                        prop_assert_eq!(map.index_of(wire::shard::hash_key(&key)), shard);
                        seen_per_key.entry(key).or_default().push(pos);
                        total += 1;
                    }
                }
            }
            prop_assert_eq!(total, input.len());
            for positions in seen_per_key.values() {
                prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "order broken");
            }
        }
    }

    #[test]
    fn linger_flushes_a_partly_filled_shard() {
        let config = BatcherConfig {
            aggregation: true,
            aggregate_max_bytes: 256 * 1024,
            max_request_bytes: RECORD_MAX_BYTES,
            linger: Duration::from_millis(5),
        };
        let (mut b, mut rxs) = batcher(config, 2);
        b.route(&chunk(&[("AAPL", 100)]));
        assert!(drain(&mut rxs).is_empty());
        let due = b.next_deadline().expect("a shard has data");
        b.flush_due(due - Duration::from_millis(1));
        assert!(drain(&mut rxs).is_empty(), "nothing is due before the linger");
        b.flush_due(due);
        let batches = drain(&mut rxs);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].1.entries[0].trades(), 1);
        assert!(b.next_deadline().is_none());
    }

    #[test]
    fn the_linger_flush_takes_every_shard_at_once() {
        let config = BatcherConfig {
            aggregation: true,
            aggregate_max_bytes: 256 * 1024,
            max_request_bytes: RECORD_MAX_BYTES,
            linger: Duration::from_millis(5),
        };
        let (mut b, mut rxs) = batcher(config, 4);
        let map = ShardMap::uniform(4);
        // Two keys on different shards; the second arrives later, so it is not yet due.
        let keys: Vec<String> = (0..64).map(|i| format!("K{i}")).collect();
        let shard = |k: &String| map.index_of(wire::shard::hash_key(k));
        let first = &keys[0];
        let other = keys.iter().find(|k| shard(k) != shard(first)).expect("keys spread");
        let t0 = Instant::now();
        b.route_at(&chunk(&[(first, 100)]), t0);
        b.route_at(&chunk(&[(other, 100)]), t0 + Duration::from_millis(4));
        let due = b.next_deadline().expect("a shard has data");
        assert_eq!(due, t0 + Duration::from_millis(5), "the oldest trade sets the deadline");
        b.flush_due(due);
        let mut flushed: Vec<usize> = drain(&mut rxs).into_iter().map(|(i, _)| i).collect();
        flushed.sort();
        let mut expected = vec![shard(first), shard(other)];
        expected.sort();
        assert_eq!(flushed, expected);
    }
}

//! Synthetic trades: a random walk per subscribed symbol, Zipf-skewed over the symbols,
//! paced to a rate that can burst.
//!
//! Every connection runs its own generator. Activity is skewed by subscription order: the
//! k-th symbol a connection subscribed to gets a share proportional to `1 / k^s` (Zipf with
//! exponent `s`, `--zipf`; 0 spreads trades evenly). A 10 ms ticker wakes the generator,
//! which then sends however many trades the elapsed time owes (see [`Pacer`]); the rate is
//! multiplied by the burst factor during each burst, and bursts start at the same moments
//! on every connection, counted from the feed's start.
//!
//! Frames are built ahead of time, not per trade. A *deck* holds up to 64 Ki trades in
//! frames already encoded by [`wire::finnhub::write_trade_frame`], with a placeholder time
//! whose 13 digits are patched with the wall clock as each frame is sent. Sending a trade
//! costs a copy of its bytes and one 13-byte patch, which is what lets one core send well
//! over a million trades a second. The deck loops: each symbol's walk in a deck is a
//! bridge that ends where it started, so the loop has no jump. A deck is rebuilt,
//! continuing every walk from its last price, when the subscriptions change and, at the
//! end of a loop, once it is older than [`DECK_REFRESH`], so prices repeat for a while at
//! high rates but the symbols sampled into the deck do not stay fixed.
//!
//! Each symbol starts at a price derived from its name, so `AAPL` always opens at the same
//! price, then moves by small multiplicative steps and is written rounded to the cent and
//! never below one cent. Volumes are whole shares; some trades carry condition codes.
//! Everything random comes from generators seeded per connection: the same seed,
//! connection order and subscriptions give the same trades (times aside), as long as the
//! subscriptions reach the generator in the same ticks.
//!
//! With a [`Universe`] (`--symbols N`) the feed knows its synthetic symbols by name and
//! refuses any other.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Interval, MissedTickBehavior};
use wire::finnhub::{Conditions, Trade, write_trade_frame};

use super::session::Session;
use super::source::Outbox;

/// How often the generator wakes. Short enough that frames are spread smoothly over a
/// second, long enough that the timer costs nothing next to the trades.
pub const TICK: Duration = Duration::from_millis(10);

/// The highest rate accepted, trades per second per connection, bursts included.
pub const MAX_RATE: f64 = 10_000_000.0;

/// The most trades in one frame. Finnhub frames stay far smaller; this bounds frame size
/// (about 100 bytes per trade) well below any client's message limit.
pub const MAX_TRADES_PER_FRAME: usize = 10_000;

/// The largest synthetic universe (`--symbols`).
pub const MAX_UNIVERSE: usize = 1_000_000;

/// The steepest Zipf exponent accepted; far beyond the point where the first symbol takes
/// nearly every trade.
pub const MAX_ZIPF: f64 = 10.0;

/// The largest burst factor accepted.
pub const MAX_BURST_FACTOR: f64 = 1_000.0;

/// How often a deck is rebuilt when subscriptions do not change, at the end of a loop.
pub const DECK_REFRESH: Duration = Duration::from_secs(10);

/// Prefix of synthetic symbol names; a Finnhub-style exchange prefix that no real symbol
/// carries, so synthetic data never passes for market data.
const UNIVERSE_PREFIX: &str = "SYN:";

/// Synthetic names have at least this many digits, so small universes still read as
/// tickers (`SYN:0042`).
const UNIVERSE_MIN_DIGITS: usize = 4;

/// The most trades owed after the writer fell behind (slow client, stalled runtime). Debt
/// beyond one second is forgiven rather than sent as a burst that would distort the rate.
const MAX_BACKLOG: Duration = Duration::from_secs(1);

/// A deck holds this much of the peak rate, within the two bounds below.
const DECK_PERIOD: Duration = Duration::from_secs(1);

/// The smallest deck: low rates still get a walk that takes minutes to loop.
const MIN_DECK_TRADES: usize = 4_096;

/// The largest deck: about 6 MiB of frames per connection, built in about 10 ms.
const MAX_DECK_TRADES: usize = 65_536;

/// Bytes of frames queued in one fill before the writer gets to send them; the rest of
/// what is owed follows at once in the next fill, without waiting for a tick.
const MAX_FILL_BYTES: usize = 1 << 20;

/// A trade time in milliseconds has 13 digits from September 2001 to the year 2286.
const TIME_DIGITS: usize = 13;

/// The time written into deck frames and patched on send; any 13-digit value will do.
const TIME_PLACEHOLDER: u64 = 1_000_000_000_000;

/// The key that precedes a trade's time in a frame written by `write_trade_frame`.
/// Symbols and condition codes never contain a quote, so it cannot occur elsewhere.
const TIME_KEY: &[u8] = br#""t":"#;

/// The lowest price a walk may reach; one cent keeps every price positive after rounding.
const MIN_PRICE: f64 = 0.01;

/// The largest relative price move of one trade (0.1 %).
const MAX_STEP: f64 = 0.001;

/// Volumes are whole shares in this range.
const VOLUME_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000;

/// The share of trades that carry condition codes.
const CONDITION_PROBABILITY: f64 = 0.1;

/// Condition codes of the kind US equity trades carry.
const CONDITION_CODES: [&str; 6] = ["1", "8", "12", "24", "37", "41"];

/// The most condition codes on one trade.
const MAX_CODES: usize = 3;

/// Settings for synthetic trades.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Trades per second each connection receives outside bursts, over all its symbols.
    pub rate: f64,
    /// Trades per frame.
    pub frame_size: FrameSize,
    /// Seeds the random walk; connection `n` (counted from 0 in order of upgrade) uses a
    /// generator derived from this seed and `n`.
    pub seed: u64,
    /// Zipf exponent of activity over a connection's symbols in subscription order; 0
    /// spreads trades evenly.
    pub zipf: f64,
    /// Periodic bursts of a higher rate, if any.
    pub burst: Option<Burst>,
    /// The only symbols clients may subscribe to; any valid symbol when `None`.
    pub universe: Option<Universe>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            rate: 50.0,
            frame_size: FrameSize::fixed(1),
            seed: 0,
            zipf: 1.0,
            burst: None,
            universe: None,
        }
    }
}

/// Periodic bursts: every `every`, for `length`, the rate is multiplied by `factor`. The
/// first burst starts one period after the feed starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub every: Duration,
    pub factor: f64,
    pub length: Duration,
}

/// A synthetic symbol universe of `len` symbols named `SYN:0000`, `SYN:0001`, ...; names
/// are zero-padded to one width, so sorted order is index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Universe {
    len: usize,
}

impl Universe {
    /// A universe of `len` symbols; [`SyntheticConfig`] validation bounds `len` to
    /// 1..=[`MAX_UNIVERSE`].
    pub const fn new(len: usize) -> Self {
        Self { len }
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name of symbol `index`, whether or not it is inside the universe.
    pub fn name(&self, index: usize) -> String {
        format!("{UNIVERSE_PREFIX}{index:0width$}", width = self.digits())
    }

    /// Every name, in index order.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.len).map(|i| self.name(i))
    }

    /// Whether `symbol` is one of this universe's names.
    pub fn contains(&self, symbol: &str) -> bool {
        let Some(digits) = symbol.strip_prefix(UNIVERSE_PREFIX) else { return false };
        digits.len() == self.digits()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.parse::<usize>().is_ok_and(|i| i < self.len)
    }

    fn digits(&self) -> usize {
        let largest = self.len.saturating_sub(1);
        let mut digits = 1;
        let mut rest = largest / 10;
        while rest > 0 {
            digits += 1;
            rest /= 10;
        }
        digits.max(UNIVERSE_MIN_DIGITS)
    }
}

/// How many trades go into one frame: a fixed count or a range picked from at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    pub min: usize,
    pub max: usize,
}

impl FrameSize {
    pub const fn fixed(n: usize) -> Self {
        Self { min: n, max: n }
    }
}

impl fmt::Display for FrameSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

/// Why a frame size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a trade count: write N or MIN..MAX (inclusive), \
     each from 1 to {MAX_TRADES_PER_FRAME}, MIN <= MAX"
)]
pub struct FrameSizeError(String);

impl FrameSizeError {
    /// A malformed value stays malformed.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl FromStr for FrameSize {
    type Err = FrameSizeError;

    /// Reads `N` or `MIN..MAX`, both ends inclusive.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || FrameSizeError(text.to_owned());
        let count = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
        let size = match text.split_once("..") {
            None => Self::fixed(count(text)?),
            Some((min, max)) => Self { min: count(min)?, max: count(max)? },
        };
        if size.min == 0 || size.min > size.max || size.max > MAX_TRADES_PER_FRAME {
            return Err(bad());
        }
        Ok(size)
    }
}

/// The opening price of a symbol's walk: from 10.00 to 999.99, fixed by the name (FNV-1a),
/// so every run and every connection starts a symbol at the same price.
pub fn start_price(symbol: &str) -> f64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = symbol.bytes().fold(FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
    let cents = 1_000 + hash % 99_000;
    cents as f64 / 100.0
}

/// The trade rate over time: a base rate, multiplied during bursts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    rate: f64,
    burst: Option<Burst>,
}

impl Schedule {
    pub fn new(config: &SyntheticConfig) -> Self {
        Self { rate: config.rate, burst: config.burst }
    }

    /// The highest rate the schedule reaches.
    pub fn peak(&self) -> f64 {
        self.rate * self.burst.map_or(1.0, |b| b.factor.max(1.0))
    }

    /// Trades owed from the epoch until `at`: the integral of the rate.
    fn total(&self, at: Duration) -> f64 {
        let secs = at.as_secs_f64();
        let Some(burst) = self.burst else { return self.rate * secs };
        // Bursts occupy [k * every, k * every + length) for k >= 1; validation keeps
        // length below every, so they never overlap.
        let every = burst.every.as_secs_f64();
        let length = burst.length.as_secs_f64();
        let started = (secs / every).floor();
        let in_bursts = if started < 1.0 {
            0.0
        } else {
            (started - 1.0) * length + (secs - started * every).min(length)
        };
        self.rate * (secs + (burst.factor - 1.0) * in_bursts)
    }
}

/// Turns elapsed time into a whole number of trades owed, carrying fractions and unspent
/// trades over, so that low rates (0.5 trades/s) and high rates (a million) both come out
/// exact on average, bursts included.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    schedule: Schedule,
    epoch: Instant,
    last_total: f64,
    credit: f64,
    max_credit: f64,
}

impl Pacer {
    /// A pacer owing nothing at `now`. It can save up at least `min_credit` trades, so a
    /// frame of that many trades is always eventually affordable.
    pub fn new(schedule: Schedule, epoch: Instant, now: Instant, min_credit: usize) -> Self {
        let max_credit =
            (schedule.peak() * MAX_BACKLOG.as_secs_f64()).max(min_credit as f64).max(1.0);
        let mut pacer = Self { schedule, epoch, last_total: 0.0, credit: 0.0, max_credit };
        pacer.restart(now);
        pacer
    }

    /// Starts counting afresh at `now`, owing nothing.
    pub fn restart(&mut self, now: Instant) {
        self.last_total = self.schedule.total(now.saturating_duration_since(self.epoch));
        self.credit = 0.0;
    }

    /// Adds what the time since the last call owes.
    pub fn accrue(&mut self, now: Instant) {
        let total = self.schedule.total(now.saturating_duration_since(self.epoch));
        self.credit = (self.credit + (total - self.last_total).max(0.0)).min(self.max_credit);
        self.last_total = total;
    }

    /// Whole trades owed and not yet sent.
    pub fn available(&self) -> u64 {
        self.credit.floor() as u64
    }

    pub fn spend(&mut self, trades: u64) {
        self.credit -= trades as f64;
    }
}

/// One pre-built frame of a deck.
#[derive(Debug, Clone, Copy)]
struct DeckFrame {
    /// Where the frame starts and ends in the deck's bytes.
    start: usize,
    end: usize,
    /// Index of its first trade in the deck's per-trade lists.
    first_trade: usize,
    trades: usize,
}

/// Frames encoded ahead of time, with the positions of their time fields.
#[derive(Debug, Default)]
struct Deck {
    /// The symbols the deck was built for, in subscription order, and where each walk
    /// starts (and, being a bridge, ends).
    symbols: Vec<String>,
    starts: Vec<f64>,
    bytes: Vec<u8>,
    frames: Vec<DeckFrame>,
    /// Per trade: where its 13 time digits are in `bytes`, its symbol and its price.
    time_at: Vec<usize>,
    trade_symbol: Vec<u32>,
    trade_price: Vec<f64>,
}

/// What a deck is built from, besides the walks.
struct DeckSpec {
    trades: usize,
    zipf: f64,
    frame_size: FrameSize,
}

impl Deck {
    /// Builds frames with at least `spec.trades` trades over `symbols` (in rank order),
    /// each walk starting at its `starts` price.
    fn build(
        symbols: Vec<String>,
        starts: Vec<f64>,
        spec: &DeckSpec,
        rng: &mut SmallRng,
        layout_rng: &mut SmallRng,
    ) -> Self {
        let mut sizes = Vec::new();
        let mut total = 0;
        while total < spec.trades {
            let size = layout_rng.random_range(spec.frame_size.min..=spec.frame_size.max);
            sizes.push(size);
            total += size;
        }
        let trade_symbol = zipf_sample(symbols.len(), spec.zipf, total, rng);
        let trade_price = bridged_walks(&trade_symbol, &starts, rng);

        let mut deck = Deck {
            symbols,
            starts,
            bytes: Vec::with_capacity(total * 96),
            frames: Vec::with_capacity(sizes.len()),
            time_at: Vec::with_capacity(total),
            trade_symbol,
            trade_price,
        };
        let mut batch: Vec<Trade<'_>> = Vec::with_capacity(spec.frame_size.max);
        let mut first_trade = 0;
        for size in sizes {
            batch.clear();
            for i in first_trade..first_trade + size {
                batch.push(Trade {
                    symbol: &deck.symbols[deck.trade_symbol[i] as usize],
                    price: deck.trade_price[i],
                    time_ms: TIME_PLACEHOLDER,
                    volume: f64::from(rng.random_range(VOLUME_RANGE)),
                    conditions: random_conditions(rng),
                });
            }
            let start = deck.bytes.len();
            write_trade_frame(&mut deck.bytes, &batch);
            let end = deck.bytes.len();
            let mut at = start;
            while let Some(found) = find(&deck.bytes[at..end], TIME_KEY) {
                at += found + TIME_KEY.len();
                deck.time_at.push(at);
            }
            assert_eq!(
                deck.time_at.len(),
                first_trade + size,
                "write_trade_frame writes one time key per trade and none elsewhere"
            );
            deck.frames.push(DeckFrame { start, end, first_trade, trades: size });
            first_trade += size;
        }
        deck
    }

    fn trades(&self) -> usize {
        self.trade_symbol.len()
    }

    /// Each symbol's price after the frames before `cursor` were sent.
    fn prices_before(&self, cursor: usize) -> HashMap<&str, f64> {
        let mut prices = self.starts.clone();
        let sent = self.frames.get(cursor).map_or(self.trades(), |f| f.first_trade);
        for i in 0..sent {
            prices[self.trade_symbol[i] as usize] = self.trade_price[i];
        }
        self.symbols.iter().map(String::as_str).zip(prices).collect()
    }
}

/// Draws `count` symbol indexes from `0..symbols` with Zipf weights `1 / (k + 1)^s`.
fn zipf_sample(symbols: usize, s: f64, count: usize, rng: &mut SmallRng) -> Vec<u32> {
    let mut cumulative = Vec::with_capacity(symbols);
    let mut sum = 0.0;
    for k in 0..symbols {
        sum += ((k + 1) as f64).powf(-s);
        cumulative.push(sum);
    }
    (0..count)
        .map(|_| {
            let x = rng.random::<f64>() * sum;
            cumulative.partition_point(|&c| c <= x).min(symbols - 1) as u32
        })
        .collect()
}

/// Prices for trades whose symbols are `trade_symbol`: per symbol, a multiplicative walk
/// from its start whose steps are shifted to sum to zero in log space, so that it ends
/// where it started and the deck can loop without a jump.
fn bridged_walks(trade_symbol: &[u32], starts: &[f64], rng: &mut SmallRng) -> Vec<f64> {
    let steps: Vec<f64> =
        trade_symbol.iter().map(|_| (1.0 + rng.random_range(-MAX_STEP..=MAX_STEP)).ln()).collect();
    let mut sums = vec![0.0; starts.len()];
    let mut counts = vec![0usize; starts.len()];
    for (&k, &step) in trade_symbol.iter().zip(&steps) {
        sums[k as usize] += step;
        counts[k as usize] += 1;
    }
    let drift: Vec<f64> =
        sums.iter().zip(&counts).map(|(s, &n)| if n == 0 { 0.0 } else { s / n as f64 }).collect();
    let mut log_moves = vec![0.0; starts.len()];
    trade_symbol
        .iter()
        .zip(&steps)
        .map(|(&k, &step)| {
            let k = k as usize;
            log_moves[k] += step - drift[k];
            round_price(starts[k] * log_moves[k].exp())
        })
        .collect()
}

fn round_price(price: f64) -> f64 {
    ((price * 100.0).round() / 100.0).max(MIN_PRICE)
}

fn random_conditions(rng: &mut SmallRng) -> Conditions<'static> {
    if !rng.random_bool(CONDITION_PROBABILITY) {
        return Conditions::default();
    }
    let n = rng.random_range(1..=MAX_CODES);
    (0..n).map(|_| CONDITION_CODES[rng.random_range(0..CONDITION_CODES.len())]).collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The 13 digits patched into each trade's time. A clock before September 2001 reads as
/// then, which a feed for tests can live with.
fn time_digits(time_ms: u64) -> [u8; TIME_DIGITS] {
    let mut ms = time_ms.clamp(TIME_PLACEHOLDER, 10 * TIME_PLACEHOLDER - 1);
    let mut digits = [b'0'; TIME_DIGITS];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (ms % 10) as u8;
        ms /= 10;
    }
    digits
}

/// A connection's frames, without the pacing: decks, walks and the cursor.
struct Generator {
    spec: DeckSpec,
    /// Draws trade values.
    rng: SmallRng,
    /// Draws frame sizes.
    layout_rng: SmallRng,
    /// The subscribed symbols in subscription order.
    symbols: Vec<String>,
    deck: Deck,
    /// The next frame of the deck to send.
    cursor: usize,
    built_at: Instant,
    /// The deck no longer matches the subscriptions, or is due for a refresh.
    stale: bool,
}

impl Generator {
    fn new(config: &SyntheticConfig, conn_id: u64, peak_rate: f64) -> Self {
        // Spread connection ids over the seed space so neighbouring connections do not get
        // neighbouring (and in a weak generator, correlated) seeds; connection 0 uses the
        // configured seed itself.
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        // Any fixed constant will do; it only keeps the layout stream apart from values.
        const LAYOUT: u64 = 0x5851_f42d_4c95_7f2d;
        let seed = config.seed.wrapping_add(conn_id.wrapping_mul(GOLDEN));
        let trades = (peak_rate * DECK_PERIOD.as_secs_f64()) as usize;
        Self {
            spec: DeckSpec {
                trades: trades.clamp(MIN_DECK_TRADES, MAX_DECK_TRADES),
                zipf: config.zipf,
                frame_size: config.frame_size,
            },
            rng: SmallRng::seed_from_u64(seed),
            layout_rng: SmallRng::seed_from_u64(seed ^ LAYOUT),
            symbols: Vec::new(),
            deck: Deck::default(),
            cursor: 0,
            built_at: Instant::now(),
            stale: false,
        }
    }

    fn set_symbols(&mut self, symbols: Vec<String>) {
        if symbols != self.symbols {
            self.symbols = symbols;
            self.stale = true;
        }
    }

    /// Rebuilds the deck if it is stale, continuing every walk that is still subscribed.
    fn prepare(&mut self) {
        if !self.stale || self.symbols.is_empty() {
            return;
        }
        let prices = self.deck.prices_before(self.cursor);
        let starts =
            self.symbols.iter().map(|s| prices.get(s.as_str()).copied().unwrap_or(start_price(s)));
        let starts = starts.collect();
        self.deck = Deck::build(
            self.symbols.clone(),
            starts,
            &self.spec,
            &mut self.rng,
            &mut self.layout_rng,
        );
        self.cursor = 0;
        self.built_at = Instant::now();
        self.stale = false;
    }

    /// Trades in the next frame. Call [`Generator::prepare`] first.
    fn next_trades(&self) -> usize {
        self.deck.frames[self.cursor].trades
    }

    /// Appends the next frame with its times set to `digits`.
    fn emit(&mut self, out: &mut Outbox, digits: &[u8; TIME_DIGITS]) {
        let frame = self.deck.frames[self.cursor];
        let times = &self.deck.time_at[frame.first_trade..frame.first_trade + frame.trades];
        out.push_patched(&self.deck.bytes[frame.start..frame.end], frame.start, times, digits);
        self.cursor += 1;
        if self.cursor == self.deck.frames.len() {
            self.cursor = 0;
            if self.built_at.elapsed() >= DECK_REFRESH {
                self.stale = true;
            }
        }
    }
}

/// A connection's synthetic trade source: the generator, paced.
pub(crate) struct SyntheticSource {
    generator: Generator,
    ticker: Interval,
    pacer: Pacer,
    /// The last fill stopped at [`MAX_FILL_BYTES`] with trades still owed.
    backlogged: bool,
    /// The session holds at least one symbol.
    subscribed: bool,
    /// The subscriptions changed since the generator last read them.
    changed: bool,
}

impl SyntheticSource {
    /// `epoch` is when the feed started; bursts are timed from it.
    pub fn new(config: &SyntheticConfig, conn_id: u64, epoch: Instant) -> Self {
        let schedule = Schedule::new(config);
        let mut ticker = tokio::time::interval(TICK);
        // The pacer pays back missed time, so a late tick only needs to fire once.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            generator: Generator::new(config, conn_id, schedule.peak()),
            ticker,
            pacer: Pacer::new(schedule, epoch, Instant::now(), config.frame_size.max),
            backlogged: false,
            subscribed: false,
            changed: false,
        }
    }

    /// Waits for the next tick, or not at all while trades are owed from a cut-short fill;
    /// forever while nothing is subscribed.
    pub async fn due(&mut self) {
        if !self.subscribed {
            std::future::pending::<()>().await;
        }
        if !self.backlogged {
            self.ticker.tick().await;
        }
    }

    /// Notes that the subscriptions changed. The symbols are read and the deck rebuilt
    /// at the next fill, so that a client subscribing to ten thousand symbols one by one
    /// costs one rebuild, not ten thousand.
    pub fn subscriptions_changed(&mut self, session: &Session) {
        let was_idle = !self.subscribed;
        self.subscribed = !session.is_empty();
        self.changed = true;
        if was_idle && self.subscribed {
            // Time spent with no subscriptions owes no trades.
            self.pacer.restart(Instant::now());
            self.ticker.reset();
        }
    }

    /// Appends the frames owed since the last call.
    pub fn fill(&mut self, out: &mut Outbox, session: &Session) {
        if std::mem::take(&mut self.changed) {
            let symbols = session.in_subscription_order().into_iter().map(str::to_owned);
            self.generator.set_symbols(symbols.collect());
        }
        if self.generator.symbols.is_empty() {
            return;
        }
        self.pacer.accrue(Instant::now());
        let digits = time_digits(now_ms());
        self.backlogged = false;
        loop {
            self.generator.prepare();
            let trades = self.generator.next_trades() as u64;
            if self.pacer.available() < trades {
                break;
            }
            if out.bytes() >= MAX_FILL_BYTES {
                self.backlogged = true;
                break;
            }
            self.generator.emit(out, &digits);
            self.pacer.spend(trades);
        }
    }
}

/// Synthetic frames without a socket or a clock, for benchmarks: the same pre-built decks
/// the feed sends from.
pub struct SyntheticFrames {
    generator: Generator,
    out: Outbox,
}

impl SyntheticFrames {
    /// Frames for one connection subscribed to `symbols`, in that order.
    pub fn new(config: &SyntheticConfig, symbols: &[&str]) -> Self {
        let mut generator = Generator::new(config, 0, Schedule::new(config).peak());
        generator.set_symbols(symbols.iter().map(|s| (*s).to_owned()).collect());
        Self { generator, out: Outbox::default() }
    }

    /// Builds whole frames holding at least `trades` trades, all stamped `time_ms`, and
    /// returns them end to end with the number of trades they hold. Each call reuses the
    /// buffer of the last.
    pub fn next(&mut self, trades: usize, time_ms: u64) -> (&[u8], usize) {
        self.out.clear();
        let digits = time_digits(time_ms);
        while (self.out.trade_count() as usize) < trades {
            self.generator.prepare();
            self.generator.emit(&mut self.out, &digits);
        }
        (self.out.all_bytes(), self.out.trade_count() as usize)
    }
}

/// Milliseconds since the Unix epoch; zero if the clock is set before 1970, which a feed
/// for tests can live with.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::stats::Counters;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use wire::finnhub::{Frame, decode};

    #[test]
    fn frame_sizes_parse() {
        assert_eq!("5".parse(), Ok(FrameSize::fixed(5)));
        assert_eq!("1..20".parse(), Ok(FrameSize { min: 1, max: 20 }));
        assert_eq!(" 2 .. 2 ".parse(), Ok(FrameSize::fixed(2)));
        for bad in ["0", "", "x", "3..2", "1..", "1..100000", "-1"] {
            assert!(bad.parse::<FrameSize>().is_err(), "{bad:?}");
        }
        assert_eq!(FrameSize { min: 1, max: 20 }.to_string(), "1..20");
    }

    #[test]
    fn start_prices_are_fixed_by_name_and_in_range() {
        assert_eq!(start_price("AAPL"), start_price("AAPL"));
        assert_ne!(start_price("AAPL"), start_price("MSFT"));
        for s in ["AAPL", "MSFT", "BINANCE:BTCUSDT", "", "X"] {
            let p = start_price(s);
            assert!((10.0..1000.0).contains(&p), "{s}: {p}");
            assert_eq!((p * 100.0).round() / 100.0, p);
        }
    }

    #[test]
    fn universe_names_are_padded_and_recognised() {
        let small = Universe::new(3);
        assert_eq!(small.names().collect::<Vec<_>>(), ["SYN:0000", "SYN:0001", "SYN:0002"]);
        assert!(small.contains("SYN:0002"));
        for outside in ["SYN:0003", "SYN:002", "SYN:00002", "SYN:+002", "AAPL", "SYN:"] {
            assert!(!small.contains(outside), "{outside}");
        }
        let large = Universe::new(123_456);
        assert_eq!(large.name(7), "SYN:000007");
        assert!(large.contains("SYN:123455") && !large.contains("SYN:123456"));
        for name in large.names().step_by(997) {
            assert!(crate::feed::validate_symbol(&name).is_ok(), "{name}");
        }
    }

    fn schedule(rate: f64, burst: Option<Burst>) -> Schedule {
        Schedule { rate, burst }
    }

    #[test]
    fn the_pacer_pays_exactly_what_time_owes() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(schedule(50.0, None), t0, t0, 1);
        // 100 ticks of 10 ms at 50 trades/s owe 50 trades in all, half a trade per tick.
        let mut total = 0;
        for i in 1..=100 {
            pacer.accrue(t0 + TICK * i);
            total += pacer.available();
            pacer.spend(pacer.available());
        }
        assert_eq!(total, 50);

        let mut slow = Pacer::new(schedule(0.5, None), t0, t0, 1);
        slow.accrue(t0 + Duration::from_millis(1_900));
        assert_eq!(slow.available(), 0);
        slow.accrue(t0 + Duration::from_millis(2_000));
        assert_eq!(slow.available(), 1);
    }

    #[test]
    fn the_pacer_forgives_debt_beyond_the_backlog_but_saves_for_a_frame() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(schedule(1_000.0, None), t0, t0, 1);
        pacer.accrue(t0 + Duration::from_secs(60));
        assert_eq!(pacer.available(), 1_000);
        pacer.restart(t0 + Duration::from_secs(61));
        assert_eq!(pacer.available(), 0);

        // At 1 trade/s a 10-trade frame must still become affordable.
        let mut slow = Pacer::new(schedule(1.0, None), t0, t0, 10);
        slow.accrue(t0 + Duration::from_secs(10));
        assert_eq!(slow.available(), 10);
    }

    #[test]
    fn bursts_multiply_the_rate_for_their_length() {
        let burst =
            Burst { every: Duration::from_secs(10), factor: 5.0, length: Duration::from_secs(2) };
        let s = schedule(100.0, Some(burst));
        let at = |secs: f64| s.total(Duration::from_secs_f64(secs));
        assert_eq!(s.peak(), 500.0);
        assert!((at(10.0) - 1_000.0).abs() < 1e-6, "no burst before the first period");
        assert!((at(11.0) - 1_500.0).abs() < 1e-6, "one second of burst");
        assert!((at(12.0) - 2_000.0).abs() < 1e-6);
        assert!((at(20.0) - 2_800.0).abs() < 1e-6);
        assert!((at(25.0) - 4_100.0).abs() < 1e-6, "two bursts: 2500 + 4 s * 4 * 100");
        let t0 = Instant::now();
        let mut pacer = Pacer::new(s, t0, t0, 1);
        pacer.accrue(t0 + Duration::from_secs_f64(10.5));
        assert_eq!(pacer.available(), 500, "capped at one second of the peak rate");
    }

    fn session(symbols: &[&str]) -> Session {
        let mut s = Session::new(None, None, Arc::new(Counters::default()));
        for sym in symbols {
            s.subscribe((*sym).to_owned()).unwrap();
        }
        s
    }

    fn decode_all(bytes: &[u8]) -> Vec<(String, f64, f64, u64)> {
        // Frames end to end: split them where one ends with `}` and the next begins.
        let text = std::str::from_utf8(bytes).unwrap();
        let mut out = Vec::new();
        for frame in text.split_inclusive(r#""type":"trade"}"#) {
            let mut buf = frame.as_bytes().to_vec();
            let Frame::Trades(trades) = decode(&mut buf).unwrap() else { panic!("not trades") };
            for t in trades {
                assert!(t.price >= MIN_PRICE);
                assert!(VOLUME_RANGE.contains(&(t.volume as u32)));
                assert!(t.conditions.as_slice().len() <= MAX_CODES);
                out.push((t.symbol.to_owned(), t.price, t.volume, t.time_ms));
            }
        }
        out
    }

    #[test]
    fn frames_carry_the_time_patched_in() {
        let config =
            SyntheticConfig { frame_size: FrameSize { min: 1, max: 7 }, ..Default::default() };
        let mut frames = SyntheticFrames::new(&config, &["AAA", "BBB"]);
        let (bytes, n) = frames.next(500, 1_712_345_678_901);
        let trades = decode_all(bytes);
        assert_eq!(trades.len(), n);
        assert!((500..507).contains(&n));
        assert!(trades.iter().all(|t| t.3 == 1_712_345_678_901));
        let (bytes, _) = frames.next(10, 1_712_345_679_000);
        assert!(decode_all(bytes).iter().all(|t| t.3 == 1_712_345_679_000));
        assert_eq!(time_digits(5), *b"1000000000000");
    }

    #[test]
    fn zipf_skews_activity_by_subscription_order() {
        let config = SyntheticConfig { zipf: 1.0, seed: 9, ..Default::default() };
        let order = ["ZZZ", "AAA", "MMM", "BBB"];
        let mut frames = SyntheticFrames::new(&config, &order);
        let (bytes, _) = frames.next(MIN_DECK_TRADES, TIME_PLACEHOLDER);
        let mut counts = BTreeMap::<String, usize>::new();
        for t in decode_all(bytes) {
            *counts.entry(t.0).or_default() += 1;
        }
        let shares: Vec<f64> =
            order.iter().map(|s| counts[*s] as f64 / MIN_DECK_TRADES as f64).collect();
        // Zipf(1) over 4 symbols: 1/H4 = 0.48, 0.24, 0.16, 0.12.
        for (share, want) in shares.iter().zip([0.48, 0.24, 0.16, 0.12]) {
            assert!((share - want).abs() < 0.03, "{shares:?}");
        }

        let even = SyntheticConfig { zipf: 0.0, ..config };
        let mut frames = SyntheticFrames::new(&even, &order);
        let (bytes, _) = frames.next(MIN_DECK_TRADES, TIME_PLACEHOLDER);
        let mut counts = BTreeMap::<String, usize>::new();
        for t in decode_all(bytes) {
            *counts.entry(t.0).or_default() += 1;
        }
        assert!(counts.values().all(|&n| (900..1_150).contains(&n)), "{counts:?}");
    }

    #[test]
    fn a_deck_loops_without_a_price_jump() {
        let config = SyntheticConfig { zipf: 0.0, seed: 3, ..Default::default() };
        let mut frames = SyntheticFrames::new(&config, &["AAA"]);
        let deck_len = {
            frames.generator.prepare();
            frames.generator.deck.trades()
        };
        let (bytes, _) = frames.next(deck_len + 10, TIME_PLACEHOLDER);
        let prices: Vec<f64> = decode_all(bytes).into_iter().map(|t| t.1).collect();
        let start = start_price("AAA");
        // The last trade of the deck is back at the start price, so the loop continues
        // with an ordinary step.
        assert_eq!(prices[deck_len - 1], start);
        for pair in prices.windows(2) {
            let step = (pair[1] / pair[0] - 1.0).abs();
            assert!(step <= 2.0 * MAX_STEP + 0.01 / start, "{pair:?}");
        }
        assert!(prices.iter().any(|p| (p / start - 1.0).abs() > 0.002), "the walk never moved");
    }

    #[tokio::test]
    async fn prices_carry_on_across_subscription_changes() {
        let epoch = Instant::now();
        let mut source = SyntheticSource::new(&SyntheticConfig::default(), 0, epoch);
        let subs = session(&["AAA"]);
        source.subscriptions_changed(&subs);
        source.fill(&mut Outbox::default(), &subs);
        source.generator.prepare();
        for _ in 0..100 {
            source.generator.emit(&mut Outbox::default(), &time_digits(TIME_PLACEHOLDER));
        }
        let moved = source.generator.deck.trade_price[source.generator.cursor - 1];
        // Nothing is owed yet, so the fill only takes the new subscriptions.
        let subs = session(&["AAA", "ZZZ"]);
        source.subscriptions_changed(&subs);
        source.fill(&mut Outbox::default(), &subs);
        source.generator.prepare();
        let deck = &source.generator.deck;
        assert_eq!(deck.symbols, ["AAA", "ZZZ"]);
        assert_eq!(deck.starts, [moved, start_price("ZZZ")]);

        let none = session(&[]);
        source.subscriptions_changed(&none);
        let mut out = Outbox::default();
        source.fill(&mut out, &none);
        assert!(out.is_empty());
    }

    #[test]
    fn the_same_seed_gives_the_same_trades() {
        let run = |seed| {
            let config = SyntheticConfig {
                seed,
                frame_size: FrameSize { min: 1, max: 7 },
                ..Default::default()
            };
            let mut frames = SyntheticFrames::new(&config, &["AAA", "BBB", "CCC"]);
            let (bytes, _) = frames.next(3_000, TIME_PLACEHOLDER);
            decode_all(bytes)
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}

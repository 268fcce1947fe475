//! Synthetic trades: a random walk per subscribed symbol, paced to a fixed rate.
//!
//! Every connection runs its own generator at the configured rate, spread round-robin over
//! the symbols it subscribed to, so its trade mix matches its subscriptions exactly. A
//! 10 ms ticker wakes the generator, which then emits however many trades the elapsed time
//! owes (see [`Pacer`]); one wake-up can carry thousands of trades, which is what lets the
//! feed reach a million trades a second without a timer per trade.
//!
//! Each symbol starts at a price derived from its name, so `AAPL` always opens at the same
//! price, then moves by small multiplicative steps rounded to the cent and never below one
//! cent. Volumes are whole shares; some trades carry condition codes. Everything random
//! comes from generators seeded per connection: the same seed, connection order and
//! sequence of subscriptions give the same prices, volumes and codes. How trades are cut
//! into frames depends on timing, so it draws from a generator of its own and never
//! disturbs the trade values. Times are the wall clock.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Interval, MissedTickBehavior};
use wire::finnhub::{Conditions, Trade};

use super::session::Session;
use super::source::Outbox;

/// How often the generator wakes. Short enough that frames are spread smoothly over a
/// second, long enough that the timer costs nothing next to the trades.
pub const TICK: Duration = Duration::from_millis(10);

/// The highest `--rate` accepted, trades per second per connection.
pub const MAX_RATE: f64 = 10_000_000.0;

/// The most trades in one frame. Finnhub frames stay far smaller; this bounds frame size
/// (about 100 bytes per trade) well below any client's message limit.
pub const MAX_TRADES_PER_FRAME: usize = 10_000;

/// The most trades owed after the writer fell behind (slow client, stalled runtime). Debt
/// beyond one second is forgiven rather than sent as a burst that would distort the rate.
const MAX_BACKLOG: Duration = Duration::from_secs(1);

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
    /// Trades per second each connection receives, over all its symbols.
    pub rate: f64,
    /// Trades per frame.
    pub frame_size: FrameSize,
    /// Seeds the random walk; connection `n` (counted from 0 in order of upgrade) uses a
    /// generator derived from this seed and `n`.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self { rate: 50.0, frame_size: FrameSize::fixed(1), seed: 0 }
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

/// Turns elapsed time into a whole number of trades owed, carrying the fraction over so
/// that low rates (0.5 trades/s) and high rates (a million) both come out exact on average.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    rate: f64,
    last: Instant,
    credit: f64,
    max_credit: f64,
}

impl Pacer {
    pub fn new(rate: f64, now: Instant) -> Self {
        // At least one whole trade, or a rate below one per MAX_BACKLOG would never emit.
        let max_credit = (rate * MAX_BACKLOG.as_secs_f64()).max(1.0);
        Self { rate, last: now, credit: 0.0, max_credit }
    }

    /// Starts counting afresh, owing nothing.
    pub fn restart(&mut self, now: Instant) {
        self.last = now;
        self.credit = 0.0;
    }

    /// The trades owed at `now` since the last call.
    pub fn take(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.credit = (self.credit + self.rate * elapsed).min(self.max_credit);
        let owed = self.credit.floor();
        self.credit -= owed;
        owed as u64
    }
}

/// One subscribed symbol's walk.
#[derive(Debug)]
struct Walk {
    symbol: String,
    price: f64,
}

/// One trade chosen but not yet written: it names its walk by index so that the frame can
/// borrow the symbol after all prices have moved.
#[derive(Debug)]
struct Pick {
    walk: usize,
    price: f64,
    volume: f64,
    conditions: Conditions<'static>,
}

/// A connection's synthetic trade generator.
pub(crate) struct SyntheticSource {
    frame_size: FrameSize,
    /// Draws trade values.
    rng: SmallRng,
    /// Draws frame sizes, which depend on timing.
    layout_rng: SmallRng,
    ticker: Interval,
    pacer: Pacer,
    walks: Vec<Walk>,
    cursor: usize,
    picks: Vec<Pick>,
}

impl SyntheticSource {
    pub fn new(config: &SyntheticConfig, conn_id: u64) -> Self {
        // Spread connection ids over the seed space so neighbouring connections do not get
        // neighbouring (and in a weak generator, correlated) seeds; connection 0 uses the
        // configured seed itself.
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        // Any fixed constant will do; it only keeps the layout stream apart from values.
        const LAYOUT: u64 = 0x5851_f42d_4c95_7f2d;
        let seed = config.seed.wrapping_add(conn_id.wrapping_mul(GOLDEN));
        let mut ticker = tokio::time::interval(TICK);
        // The pacer pays back missed time, so a late tick only needs to fire once.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            frame_size: config.frame_size,
            rng: SmallRng::seed_from_u64(seed),
            layout_rng: SmallRng::seed_from_u64(seed ^ LAYOUT),
            ticker,
            pacer: Pacer::new(config.rate, Instant::now()),
            walks: Vec::new(),
            cursor: 0,
            picks: Vec::new(),
        }
    }

    /// Waits for the next tick; forever while nothing is subscribed.
    pub async fn due(&mut self) {
        if self.walks.is_empty() {
            std::future::pending::<()>().await;
        }
        self.ticker.tick().await;
    }

    /// Keeps the walks of symbols still subscribed, so their prices carry on, and starts
    /// new ones at their opening price.
    pub fn subscriptions_changed(&mut self, session: &Session) {
        let was_idle = self.walks.is_empty();
        let mut old = std::mem::take(&mut self.walks);
        // Both lists are sorted by symbol, so a binary search finds the old walk.
        self.walks = session
            .symbols()
            .map(|symbol| match old.binary_search_by(|w| w.symbol.as_str().cmp(symbol)) {
                Ok(i) => Walk { symbol: std::mem::take(&mut old[i].symbol), price: old[i].price },
                Err(_) => Walk { symbol: symbol.to_owned(), price: start_price(symbol) },
            })
            .collect();
        if was_idle && !self.walks.is_empty() {
            // Time spent with no subscriptions owes no trades.
            self.pacer.restart(Instant::now());
            self.ticker.reset();
        }
    }

    /// Appends the trades owed since the last call, in frames of the configured size.
    pub fn fill(&mut self, out: &mut Outbox) {
        if self.walks.is_empty() {
            return;
        }
        let mut owed = self.pacer.take(Instant::now()) as usize;
        let time_ms = now_ms();
        while owed > 0 {
            let size = self.layout_rng.random_range(self.frame_size.min..=self.frame_size.max);
            let size = size.min(owed);
            owed -= size;
            self.pick(size);
            let trades: Vec<Trade<'_>> = self
                .picks
                .iter()
                .map(|p| Trade {
                    symbol: &self.walks[p.walk].symbol,
                    price: p.price,
                    time_ms,
                    volume: p.volume,
                    conditions: p.conditions.clone(),
                })
                .collect();
            out.push_trades(&trades);
        }
    }

    /// Moves the next `count` walks in round-robin order and records the trades in `picks`.
    fn pick(&mut self, count: usize) {
        self.picks.clear();
        for _ in 0..count {
            let walk = self.cursor % self.walks.len();
            self.cursor = self.cursor.wrapping_add(1);
            let step = self.rng.random_range(-MAX_STEP..=MAX_STEP);
            let price = &mut self.walks[walk].price;
            *price = ((*price * (1.0 + step) * 100.0).round() / 100.0).max(MIN_PRICE);
            let volume = f64::from(self.rng.random_range(VOLUME_RANGE));
            let conditions = if self.rng.random_bool(CONDITION_PROBABILITY) {
                let n = self.rng.random_range(1..=MAX_CODES);
                (0..n)
                    .map(|_| CONDITION_CODES[self.rng.random_range(0..CONDITION_CODES.len())])
                    .collect()
            } else {
                Conditions::default()
            };
            self.picks.push(Pick { walk, price: *price, volume, conditions });
        }
    }
}

/// Milliseconds since the Unix epoch; zero if the clock is set before 1970, which a feed
/// for tests can live with.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::stats::Counters;
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
    fn the_pacer_pays_exactly_what_time_owes() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(50.0, t0);
        // 100 ticks of 10 ms at 50 trades/s owe 50 trades in all, half a trade per tick.
        let total: u64 = (1..=100).map(|i| pacer.take(t0 + TICK * i)).sum();
        assert_eq!(total, 50);

        let mut slow = Pacer::new(0.5, t0);
        assert_eq!(slow.take(t0 + Duration::from_millis(1_900)), 0);
        assert_eq!(slow.take(t0 + Duration::from_millis(2_000)), 1);
    }

    #[test]
    fn the_pacer_forgives_debt_beyond_the_backlog() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(1_000.0, t0);
        assert_eq!(pacer.take(t0 + Duration::from_secs(60)), 1_000);
        pacer.restart(t0 + Duration::from_secs(61));
        assert_eq!(pacer.take(t0 + Duration::from_secs(61)), 0);
    }

    fn session(symbols: &[&str]) -> Session {
        let mut s = Session::new(None, Arc::new(Counters::default()));
        for sym in symbols {
            s.subscribe((*sym).to_owned()).unwrap();
        }
        s
    }

    /// Builds frames for `trades` trades without waiting for real time to pass.
    fn generate(source: &mut SyntheticSource, trades: usize) -> Vec<Vec<u8>> {
        let mut out = Outbox::default();
        // Owe exactly `trades` trades: restart the pacer one `trades / rate` ago.
        source.pacer.restart(Instant::now() - Duration::from_secs_f64(trades as f64 / 1e6));
        source.pacer.rate = 1e6;
        source.pacer.max_credit = trades as f64;
        source.fill(&mut out);
        out.frames().map(<[u8]>::to_vec).collect()
    }

    #[tokio::test]
    async fn walks_stay_positive_spread_evenly_and_follow_the_seed() {
        let config =
            SyntheticConfig { rate: 1e6, frame_size: FrameSize { min: 1, max: 7 }, seed: 42 };
        let subs = session(&["AAA", "BBB", "CCC"]);
        let run = || {
            let mut source = SyntheticSource::new(&config, 0);
            source.subscriptions_changed(&subs);
            generate(&mut source, 3_000)
        };
        let frames = run();
        let mut per_symbol = std::collections::BTreeMap::<String, usize>::new();
        let mut values = Vec::new();
        for mut frame in frames.clone() {
            let Frame::Trades(trades) = decode(&mut frame).unwrap() else { panic!("not trades") };
            assert!((1..=7).contains(&trades.len()));
            for t in trades {
                assert!(t.price >= MIN_PRICE);
                assert!(VOLUME_RANGE.contains(&(t.volume as u32)));
                assert_eq!(t.volume.fract(), 0.0);
                assert!(t.conditions.as_slice().len() <= MAX_CODES);
                *per_symbol.entry(t.symbol.to_owned()).or_default() += 1;
                values.push((t.symbol.to_owned(), t.price, t.volume));
            }
        }
        assert_eq!(per_symbol.values().copied().collect::<Vec<_>>(), [1_000, 1_000, 1_000]);

        // The same seed gives the same walk (times aside).
        let again: Vec<_> = run()
            .into_iter()
            .flat_map(|mut f| match decode(&mut f).unwrap() {
                Frame::Trades(t) => {
                    t.into_iter().map(|t| (t.symbol.to_owned(), t.price, t.volume)).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(again, values);
    }

    #[tokio::test]
    async fn prices_carry_on_across_subscription_changes() {
        let mut source = SyntheticSource::new(&SyntheticConfig::default(), 0);
        source.subscriptions_changed(&session(&["AAA"]));
        generate(&mut source, 500);
        let moved = source.walks[0].price;
        source.subscriptions_changed(&session(&["AAA", "ZZZ"]));
        assert_eq!(source.walks[0].price, moved);
        assert_eq!(source.walks[1].price, start_price("ZZZ"));
        source.subscriptions_changed(&session(&[]));
        assert!(generate(&mut source, 10).is_empty());
    }
}

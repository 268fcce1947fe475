//! One connection's subscriptions, and the rules a subscribe request must pass.
//!
//! Finnhub refuses symbols it does not know and caps how many a connection may hold. The
//! feed cannot know which symbols exist, so it refuses what no exchange would list: empty
//! names, names longer than [`SYMBOL_MAX_CHARS`], and characters outside the set real
//! symbols use (`AAPL`, `BINANCE:BTCUSDT`, `BRK.B`, `OANDA:EUR_USD`, `FX/EUR-USD`). When
//! the feed has a synthetic [`Universe`] (`--symbols N`), it knows exactly which symbols
//! exist and refuses every other one the same way.
//!
//! A session remembers the order symbols were subscribed in, because synthetic activity is
//! Zipf-skewed by that order: the first symbol subscribed trades most.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::stats::Counters;
use super::synthetic::Universe;

/// The longest symbol accepted. Finnhub's longest (crypto pairs with an exchange prefix)
/// stay well below this.
pub const SYMBOL_MAX_CHARS: usize = 32;

/// The most characters of a refused symbol echoed back in the error frame, so that a
/// hostile client cannot make the server write its megabyte-long "symbol" back.
const ECHO_MAX_CHARS: usize = SYMBOL_MAX_CHARS + 8;

/// The error message Finnhub sends when a connection holds too many symbols.
pub const TOO_MANY_SYMBOLS: &str = "Subscribing to too many symbols";

/// Why a subscribe request was refused. Each becomes an error frame to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// Empty, too long, with a character outside `A-Z a-z 0-9 . : - _ /`, or outside the
    /// feed's synthetic universe.
    #[error("Invalid symbol \"{0}\"")]
    InvalidSymbol(String),
    /// The connection already holds `--max-symbols` symbols.
    #[error("{TOO_MANY_SYMBOLS}")]
    TooManySymbols,
}

impl SubscribeError {
    /// Sending the same request again fails the same way; after an unsubscribe a
    /// [`SubscribeError::TooManySymbols`] request would pass, but that is a new request.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Checks a symbol against the rules in the module docs.
pub fn validate_symbol(symbol: &str) -> Result<(), SubscribeError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_' | '/');
    // All allowed characters are ASCII, so the byte length is the character count.
    if symbol.is_empty() || symbol.len() > SYMBOL_MAX_CHARS || !symbol.chars().all(allowed) {
        let echoed: String = symbol.chars().take(ECHO_MAX_CHARS).collect();
        return Err(SubscribeError::InvalidSymbol(echoed));
    }
    Ok(())
}

/// The symbols one connection is subscribed to, each with its place in subscription order.
///
/// Keeps the feed-wide subscription gauge in step: it adds on subscribe and gives back
/// everything it still holds when dropped.
pub(crate) struct Session {
    symbols: BTreeMap<String, u64>,
    next_serial: u64,
    max_symbols: Option<usize>,
    universe: Option<Universe>,
    counters: Arc<Counters>,
}

impl Session {
    pub fn new(
        max_symbols: Option<usize>,
        universe: Option<Universe>,
        counters: Arc<Counters>,
    ) -> Self {
        Self { symbols: BTreeMap::new(), next_serial: 0, max_symbols, universe, counters }
    }

    /// Adds a symbol. Returns whether the set changed: subscribing twice is harmless.
    pub fn subscribe(&mut self, symbol: String) -> Result<bool, SubscribeError> {
        validate_symbol(&symbol)?;
        if self.universe.is_some_and(|u| !u.contains(&symbol)) {
            // validate_symbol passed, so the symbol is short enough to echo whole.
            return Err(SubscribeError::InvalidSymbol(symbol));
        }
        if self.symbols.contains_key(&symbol) {
            return Ok(false);
        }
        if self.max_symbols.is_some_and(|max| self.symbols.len() >= max) {
            return Err(SubscribeError::TooManySymbols);
        }
        self.symbols.insert(symbol, self.next_serial);
        self.next_serial += 1;
        Counters::add(&self.counters.subscriptions, 1);
        Ok(true)
    }

    /// Removes a symbol. Returns whether the set changed; unknown symbols are ignored, as
    /// Finnhub ignores them.
    pub fn unsubscribe(&mut self, symbol: &str) -> bool {
        let removed = self.symbols.remove(symbol).is_some();
        if removed {
            Counters::sub(&self.counters.subscriptions, 1);
        }
        removed
    }

    pub fn contains(&self, symbol: &str) -> bool {
        self.symbols.contains_key(symbol)
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The symbols in sorted order.
    #[cfg(test)]
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.symbols.keys().map(String::as_str)
    }

    /// The symbols in the order they were subscribed, earliest first. A symbol dropped and
    /// subscribed again counts from its latest subscribe.
    pub fn in_subscription_order(&self) -> Vec<&str> {
        let mut ordered: Vec<(&str, u64)> =
            self.symbols.iter().map(|(s, serial)| (s.as_str(), *serial)).collect();
        ordered.sort_unstable_by_key(|(_, serial)| *serial);
        ordered.into_iter().map(|(s, _)| s).collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        Counters::sub(&self.counters.subscriptions, self.symbols.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn real_symbol_shapes_are_accepted() {
        for s in ["AAPL", "BINANCE:BTCUSDT", "BRK.B", "OANDA:EUR_USD", "FX/EUR-USD", "a1"] {
            assert_eq!(validate_symbol(s), Ok(()), "{s}");
        }
        assert_eq!(validate_symbol(&"X".repeat(SYMBOL_MAX_CHARS)), Ok(()));
    }

    #[test]
    fn impossible_symbols_are_refused() {
        for s in ["", "A B", "AAPL$", "ÄPFEL", "A\"B", "A\n"] {
            assert!(matches!(validate_symbol(s), Err(SubscribeError::InvalidSymbol(_))), "{s:?}");
        }
        let long = "X".repeat(SYMBOL_MAX_CHARS + 1);
        assert!(validate_symbol(&long).is_err());
    }

    #[test]
    fn refused_symbols_are_echoed_truncated() {
        let huge = "Y".repeat(10_000);
        let Err(err) = validate_symbol(&huge) else { panic!("accepted") };
        assert!(err.to_string().starts_with("Invalid symbol \"YYY"));
        assert!(err.to_string().len() < ECHO_MAX_CHARS + 20);
    }

    #[test]
    fn the_symbol_cap_counts_distinct_symbols() {
        let counters = Arc::new(Counters::default());
        let mut session = Session::new(Some(2), None, counters.clone());
        assert_eq!(session.subscribe("A".into()), Ok(true));
        assert_eq!(session.subscribe("A".into()), Ok(false));
        assert_eq!(session.subscribe("B".into()), Ok(true));
        assert_eq!(session.subscribe("C".into()), Err(SubscribeError::TooManySymbols));
        assert!(session.unsubscribe("A"));
        assert!(!session.unsubscribe("A"));
        assert_eq!(session.subscribe("C".into()), Ok(true));
        assert_eq!(session.symbols().collect::<Vec<_>>(), ["B", "C"]);
        assert_eq!(session.in_subscription_order(), ["B", "C"]);
        assert_eq!(counters.subscriptions.load(Ordering::Relaxed), 2);
        drop(session);
        assert_eq!(counters.subscriptions.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn subscription_order_is_kept_apart_from_sorted_order() {
        let mut session = Session::new(None, None, Arc::new(Counters::default()));
        for s in ["ZZZ", "AAA", "MMM"] {
            session.subscribe(s.into()).unwrap();
        }
        assert_eq!(session.in_subscription_order(), ["ZZZ", "AAA", "MMM"]);
        session.unsubscribe("ZZZ");
        session.subscribe("ZZZ".into()).unwrap();
        assert_eq!(session.in_subscription_order(), ["AAA", "MMM", "ZZZ"]);
        assert_eq!(session.symbols().collect::<Vec<_>>(), ["AAA", "MMM", "ZZZ"]);
    }

    #[test]
    fn a_universe_refuses_symbols_outside_it() {
        let universe = Universe::new(3);
        let mut session = Session::new(None, Some(universe), Arc::new(Counters::default()));
        assert_eq!(session.subscribe(universe.name(2)), Ok(true));
        for outside in [universe.name(3), "AAPL".to_owned()] {
            let err = session.subscribe(outside.clone()).unwrap_err();
            assert_eq!(err, SubscribeError::InvalidSymbol(outside));
        }
    }
}

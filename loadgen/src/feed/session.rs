//! One connection's subscriptions, and the rules a subscribe request must pass.
//!
//! Finnhub refuses symbols it does not know and caps how many a connection may hold. The
//! feed cannot know which symbols exist, so it refuses what no exchange would list: empty
//! names, names longer than [`SYMBOL_MAX_CHARS`], and characters outside the set real
//! symbols use (`AAPL`, `BINANCE:BTCUSDT`, `BRK.B`, `OANDA:EUR_USD`, `FX/EUR-USD`).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::stats::Counters;

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
    /// Empty, too long, or with a character outside `A-Z a-z 0-9 . : - _ /`.
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

/// The symbols one connection is subscribed to.
///
/// Keeps the feed-wide subscription gauge in step: it adds on subscribe and gives back
/// everything it still holds when dropped.
pub(crate) struct Session {
    symbols: BTreeSet<String>,
    max_symbols: Option<usize>,
    counters: Arc<Counters>,
}

impl Session {
    pub fn new(max_symbols: Option<usize>, counters: Arc<Counters>) -> Self {
        Self { symbols: BTreeSet::new(), max_symbols, counters }
    }

    /// Adds a symbol. Returns whether the set changed: subscribing twice is harmless.
    pub fn subscribe(&mut self, symbol: String) -> Result<bool, SubscribeError> {
        validate_symbol(&symbol)?;
        if self.symbols.contains(&symbol) {
            return Ok(false);
        }
        if self.max_symbols.is_some_and(|max| self.symbols.len() >= max) {
            return Err(SubscribeError::TooManySymbols);
        }
        self.symbols.insert(symbol);
        Counters::add(&self.counters.subscriptions, 1);
        Ok(true)
    }

    /// Removes a symbol. Returns whether the set changed; unknown symbols are ignored, as
    /// Finnhub ignores them.
    pub fn unsubscribe(&mut self, symbol: &str) -> bool {
        let removed = self.symbols.remove(symbol);
        if removed {
            Counters::sub(&self.counters.subscriptions, 1);
        }
        removed
    }

    pub fn contains(&self, symbol: &str) -> bool {
        self.symbols.contains(symbol)
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The symbols in sorted order.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.symbols.iter().map(String::as_str)
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
        let mut session = Session::new(Some(2), counters.clone());
        assert_eq!(session.subscribe("A".into()), Ok(true));
        assert_eq!(session.subscribe("A".into()), Ok(false));
        assert_eq!(session.subscribe("B".into()), Ok(true));
        assert_eq!(session.subscribe("C".into()), Err(SubscribeError::TooManySymbols));
        assert!(session.unsubscribe("A"));
        assert!(!session.unsubscribe("A"));
        assert_eq!(session.subscribe("C".into()), Ok(true));
        assert_eq!(session.symbols().collect::<Vec<_>>(), ["B", "C"]);
        assert_eq!(counters.subscriptions.load(Ordering::Relaxed), 2);
        drop(session);
        assert_eq!(counters.subscriptions.load(Ordering::Relaxed), 0);
    }
}

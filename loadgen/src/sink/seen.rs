//! The sequence numbers already received from one ingestor instance, as a sliding bitmap.
//!
//! An instance numbers its trades from 0 and they arrive nearly in order: shards interleave
//! and retries come late, but every gap closes soon. So the set keeps a base below which
//! every number has been seen and one bit per number above it; words that fill up slide off
//! the front. Memory is one bit per number in flight, not an entry per trade.
//!
//! A number that never arrives (a trade the ingestor dropped) holds the base back; once the
//! window spans [`MAX_WINDOW_WORDS`] words it slides anyway, and the numbers it passes over
//! unseen are counted as evicted. One of those arriving later is then indistinguishable
//! from a duplicate and counted as one; with a window of 67 million numbers that takes a
//! trade held back for a minute at a million trades a second.

use std::collections::VecDeque;

/// Most 64-bit words one set keeps: 8 MiB, 2^26 sequence numbers in flight.
pub const MAX_WINDOW_WORDS: usize = 1 << 20;

const BITS: u64 = u64::BITS as u64;

/// What [`SeqSet::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    New,
    Duplicate,
}

/// A set of `u64` sequence numbers that arrive roughly in order.
#[derive(Debug, Default)]
pub struct SeqSet {
    /// Every number below `base` has been seen (or evicted); `base` is a multiple of 64.
    base: u64,
    /// Bit `i` of word `w` stands for `base + 64 * w + i`.
    words: VecDeque<u64>,
    unique: u64,
    max: Option<u64>,
    evicted: u64,
}

impl SeqSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `seq`, telling whether it was already there.
    pub fn insert(&mut self, seq: u64) -> Insert {
        if seq < self.base {
            return Insert::Duplicate;
        }
        if (seq - self.base) / BITS >= MAX_WINDOW_WORDS as u64 {
            self.slide_to(seq);
        }
        let offset = seq - self.base;
        let word = usize::try_from(offset / BITS).expect("below MAX_WINDOW_WORDS after sliding");
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (offset % BITS);
        let slot = &mut self.words[word];
        if *slot & bit != 0 {
            return Insert::Duplicate;
        }
        *slot |= bit;
        self.unique += 1;
        self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        if word == 0 {
            while self.words.front() == Some(&u64::MAX) {
                self.words.pop_front();
                self.base += BITS;
            }
        }
        Insert::New
    }

    /// Moves the base up so that `seq` falls in the last word of a full window, counting
    /// the numbers passed over unseen.
    fn slide_to(&mut self, seq: u64) {
        let new_base = (seq / BITS + 1 - MAX_WINDOW_WORDS as u64) * BITS;
        let drop_words = (new_base - self.base) / BITS;
        let popped = drop_words.min(self.words.len() as u64);
        for _ in 0..popped {
            let word = self.words.pop_front().expect("popped is at most the length");
            self.evicted = self.evicted.saturating_add(u64::from((!word).count_ones()));
        }
        self.evicted = self.evicted.saturating_add((drop_words - popped) * BITS);
        self.base = new_base;
    }

    /// Distinct numbers inserted.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Highest number inserted.
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// Numbers from 0 to the highest inserted that never arrived.
    pub fn missing(&self) -> u64 {
        // In u128, because the highest number may be u64::MAX.
        self.max.map_or(0, |m| (u128::from(m) + 1 - u128::from(self.unique)) as u64)
    }

    /// Numbers the window slid past without seeing them.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Words held now; the set's memory is eight bytes each.
    pub fn window_words(&self) -> usize {
        self.words.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn in_order_numbers_keep_the_window_small() {
        let mut set = SeqSet::new();
        for seq in 0..100_000 {
            assert_eq!(set.insert(seq), Insert::New);
        }
        assert!(set.window_words() <= 1, "{}", set.window_words());
        assert_eq!(set.insert(5), Insert::Duplicate);
        assert_eq!(set.insert(99_999), Insert::Duplicate);
        assert_eq!((set.unique(), set.missing()), (100_000, 0));
    }

    #[test]
    fn gaps_are_missing_until_they_fill() {
        let mut set = SeqSet::new();
        for seq in [0, 1, 3, 200] {
            set.insert(seq);
        }
        assert_eq!(set.missing(), 197);
        assert_eq!(set.insert(2), Insert::New);
        assert_eq!(set.insert(3), Insert::Duplicate);
        assert_eq!(set.missing(), 196);
    }

    #[test]
    fn a_lost_number_eventually_slides_out() {
        let mut set = SeqSet::new();
        let far = MAX_WINDOW_WORDS as u64 * BITS + 10;
        set.insert(1);
        set.insert(far);
        assert!(set.window_words() <= MAX_WINDOW_WORDS);
        // Number 0 and everything between 1 and `far`, less what is still in the window.
        assert!(set.evicted() > 0 && set.evicted() <= far);
        assert_eq!(set.insert(0), Insert::Duplicate);
        assert_eq!(set.insert(far), Insert::Duplicate);
        assert_eq!(set.insert(far - 1), Insert::New);
        assert_eq!(set.insert(u64::MAX), Insert::New);
        assert_eq!(set.insert(u64::MAX), Insert::Duplicate);
    }

    proptest! {
        #[test]
        fn agrees_with_a_hash_set(seqs in prop::collection::vec(0u64..5000, 0..3000)) {
            let mut set = SeqSet::new();
            let mut model = HashSet::new();
            for seq in seqs {
                let expected = if model.insert(seq) { Insert::New } else { Insert::Duplicate };
                prop_assert_eq!(set.insert(seq), expected);
            }
            prop_assert_eq!(set.unique(), model.len() as u64);
            let max = model.iter().max().copied();
            prop_assert_eq!(set.missing(), max.map_or(0, |m| m + 1 - model.len() as u64));
        }
    }
}

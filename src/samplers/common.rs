//! Helpers shared by samplers.

use std::collections::HashMap;
use std::hash::Hash;

/// A total over sources that come and go (interfaces, devices) that never
/// goes backwards: it accumulates each source's increase, so a source that
/// disappears keeps its past contribution and one that resets (its counter
/// drops) contributes its new value.
#[derive(Debug, Default)]
pub struct MonotonicSum<K> {
    last: HashMap<K, u64>,
    total: u64,
}

impl<K: Eq + Hash + Clone> MonotonicSum<K> {
    /// Feeds the current value of every present source; returns the total.
    pub fn update(&mut self, current: impl IntoIterator<Item = (K, u64)>) -> u64 {
        let mut seen = HashMap::with_capacity(self.last.len());
        for (key, value) in current {
            let delta = match self.last.get(&key) {
                Some(&prev) if value >= prev => value - prev,
                _ => value,
            };
            self.total = self.total.wrapping_add(delta);
            seen.insert(key, value);
        }
        self.last = seen;
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_survives_sources_leaving_and_resetting() {
        let mut sum = MonotonicSum::default();
        assert_eq!(sum.update([("a", 10), ("b", 5)]), 15);
        assert_eq!(sum.update([("a", 12), ("b", 9)]), 21);
        // b disappears: the total keeps what b contributed
        assert_eq!(sum.update([("a", 13)]), 22);
        // b comes back from zero; a resets to 1
        assert_eq!(sum.update([("a", 1), ("b", 2)]), 25);
    }
}

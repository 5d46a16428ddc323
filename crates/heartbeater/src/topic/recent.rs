//! Keys remembered for a while, in a map that cannot grow without bound:
//! what a topic recalls of clients it dropped and of ids it released.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Up to `most` keys, each forgotten `ttl` after it was last noted; when
/// full, the expired go first, then the oldest.
pub(crate) struct Recent<K, V> {
    entries: HashMap<K, (Instant, V)>,
    ttl: Duration,
    most: usize,
}

impl<K: Hash + Eq + Copy, V: Copy> Recent<K, V> {
    pub(crate) fn new(ttl: Duration, most: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            most,
        }
    }

    /// What was noted of `key` within the last `ttl`.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, value)| *value)
    }

    /// Notes `key` now, with the value `value` makes of what was noted of
    /// it within the last `ttl`, if anything.
    pub(crate) fn note(&mut self, key: K, value: impl FnOnce(Option<V>) -> V) {
        let before = self.get(&key);
        if before.is_none() && self.entries.len() >= self.most {
            let ttl = self.ttl;
            self.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if self.entries.len() >= self.most {
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(key, (Instant::now(), value(before)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keys_are_forgotten_after_their_time_and_the_oldest_go_first() {
        let mut recent = Recent::new(Duration::from_secs(10), 2);
        recent.note(1, |_| 'a');
        tokio::time::advance(Duration::from_secs(1)).await;
        recent.note(2, |_| 'b');
        recent.note(2, |before| before.map_or('x', |_| 'c'));
        assert_eq!(recent.get(&2), Some('c'), "made from what was noted");
        recent.note(3, |_| 'd');
        assert_eq!(recent.get(&1), None, "the oldest went to make room");
        assert_eq!((recent.get(&2), recent.get(&3)), (Some('c'), Some('d')));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(recent.get(&3), None, "forgotten after its time");
        assert_eq!(recent.entries.len(), 2, "kept until room is needed");
        recent.note(4, |_| 'e');
        assert_eq!(recent.entries.len(), 1, "the expired went first");
    }
}

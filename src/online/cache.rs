//! A scorer's optional in-process cache of entity states and the shared watermark,
//! each entry served for at most `staleness` after it was fetched: a hot card scored
//! many times a second costs one Redis read per `staleness`, and an answer is never
//! older than that. Off (staleness 0) by default, because a cached answer can miss the
//! events of the last `staleness`.
//!
//! Bounded: at `max_entries` the expired entries are dropped, and if none are, new
//! ones are not kept until some expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::definitions::EntityTypeId;
use crate::features::EntityState;

type Key = (EntityTypeId, String);

/// The cache (see the module doc).
#[derive(Debug)]
pub struct StateCache {
    staleness: Duration,
    max_entries: usize,
    /// `None`: Redis holds nothing for the entity (also worth remembering).
    entries: Mutex<HashMap<Key, (Instant, Option<EntityState>)>>,
    watermark: Mutex<Option<(Instant, Option<i64>)>>,
}

impl StateCache {
    pub fn new(staleness: Duration, max_entries: usize) -> StateCache {
        StateCache {
            staleness,
            max_entries,
            entries: Mutex::new(HashMap::new()),
            watermark: Mutex::new(None),
        }
    }

    fn fresh(&self, fetched: Instant, now: Instant) -> bool {
        now.saturating_duration_since(fetched) < self.staleness
    }

    /// The cached state of `key` if fetched less than `staleness` ago: `Some(None)`
    /// when Redis held nothing for it.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Option<EntityState>> {
        let entries = self.entries.lock();
        let (fetched, state) = entries.get(key)?;
        self.fresh(*fetched, now).then(|| state.clone())
    }

    /// Keeps what was fetched at `fetched`.
    pub fn put(
        &self,
        fetched: Instant,
        states: impl IntoIterator<Item = (Key, Option<EntityState>)>,
    ) {
        let mut entries = self.entries.lock();
        for (key, state) in states {
            if entries.len() >= self.max_entries && !entries.contains_key(&key) {
                entries
                    .retain(|_, (at, _)| fetched.saturating_duration_since(*at) < self.staleness);
                if entries.len() >= self.max_entries {
                    return;
                }
            }
            entries.insert(key, (fetched, state));
        }
    }

    /// The cached watermark if fetched less than `staleness` ago.
    pub fn watermark(&self, now: Instant) -> Option<Option<i64>> {
        let cached = *self.watermark.lock();
        let (fetched, watermark) = cached?;
        self.fresh(fetched, now).then_some(watermark)
    }

    pub fn put_watermark(&self, fetched: Instant, watermark: Option<i64>) {
        *self.watermark.lock() = Some((fetched, watermark));
    }

    /// Entries held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        (0, id.to_string())
    }

    #[test]
    fn entries_are_served_until_they_are_stale_and_never_past_the_bound() {
        let cache = StateCache::new(Duration::from_millis(100), 2);
        let t0 = Instant::now();
        cache.put(t0, [(key("a"), None), (key("b"), None)]);
        assert_eq!(
            cache.get(&key("a"), t0 + Duration::from_millis(99)),
            Some(None)
        );
        assert_eq!(
            cache.get(&key("a"), t0 + Duration::from_millis(100)),
            None,
            "stale"
        );
        assert_eq!(cache.get(&key("c"), t0), None, "never fetched");

        // Full of fresh entries: a new one is not kept.
        cache.put(t0 + Duration::from_millis(10), [(key("c"), None)]);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key("c"), t0 + Duration::from_millis(20)), None);
        // Once they are stale, they make room.
        let later = t0 + Duration::from_millis(150);
        cache.put(later, [(key("c"), None)]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&key("c"), later), Some(None));
        // Refreshing a held key never needs room.
        cache.put(later, [(key("c"), None)]);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_watermark_is_served_until_it_is_stale() {
        let cache = StateCache::new(Duration::from_millis(100), 2);
        let t0 = Instant::now();
        assert_eq!(cache.watermark(t0), None);
        cache.put_watermark(t0, Some(42));
        assert_eq!(
            cache.watermark(t0 + Duration::from_millis(50)),
            Some(Some(42))
        );
        assert_eq!(cache.watermark(t0 + Duration::from_millis(100)), None);
    }
}

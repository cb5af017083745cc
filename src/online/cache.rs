//! A scorer's optional in-process cache of entity states and the shared watermark,
//! each entry served for at most `staleness` after it was fetched: a hot card scored
//! many times a second costs one Redis read per `staleness`, and an answer is never
//! older than that. Off (staleness 0) by default, because a cached answer can miss the
//! events of the last `staleness`.
//!
//! Bounded, in O(1) per entry: entries also queue in the order they were fetched, so the
//! expired ones are dropped from the front as new ones come; at `max_entries` fresh
//! entries, new ones are not kept until some expire.

use std::collections::{HashMap, VecDeque};
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
    entries: Mutex<Entries>,
    watermark: Mutex<Option<(Instant, Option<i64>)>>,
}

#[derive(Debug, Default)]
struct Entries {
    /// `None`: Redis holds nothing for the entity (also worth remembering).
    states: HashMap<Key, (Instant, Option<EntityState>)>,
    /// Every put in the order made: (fetched, key). An entry put again later leaves its
    /// older place here, skipped when it reaches the front.
    order: VecDeque<(Instant, Key)>,
}

impl StateCache {
    pub fn new(staleness: Duration, max_entries: usize) -> StateCache {
        StateCache {
            staleness,
            max_entries,
            entries: Mutex::new(Entries::default()),
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
        let (fetched, state) = entries.states.get(key)?;
        self.fresh(*fetched, now).then(|| state.clone())
    }

    /// Keeps what was fetched at `fetched`.
    pub fn put(
        &self,
        fetched: Instant,
        states: impl IntoIterator<Item = (Key, Option<EntityState>)>,
    ) {
        let mut entries = self.entries.lock();
        let Entries {
            states: held,
            order,
        } = &mut *entries;
        // Each put is queued once and leaves once: O(1) per entry, amortised.
        while let Some((at, key)) = order.front() {
            if self.fresh(*at, fetched) {
                break;
            }
            if held.get(key).is_some_and(|(kept_at, _)| kept_at == at) {
                held.remove(key);
            }
            order.pop_front();
        }
        for (key, state) in states {
            if held.len() >= self.max_entries && !held.contains_key(&key) {
                // Full of fresh entries: this one is fetched again next time.
                return;
            }
            order.push_back((fetched, key.clone()));
            held.insert(key, (fetched, state));
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
        self.entries.lock().states.len()
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
    fn a_hot_key_fetched_again_and_again_leaves_no_trail() {
        let staleness = Duration::from_millis(100);
        let cache = StateCache::new(staleness, 1_000);
        let t0 = Instant::now();
        for step in 0..10_000u32 {
            // Each put comes once the last one went stale, as a scorer fetches again.
            let at = t0 + staleness * step;
            cache.put(
                at,
                [(key("hot"), None), (key(&format!("cold{step}")), None)],
            );
            assert_eq!(cache.get(&key("hot"), at), Some(None));
        }
        let entries = cache.entries.lock();
        assert_eq!(entries.states.len(), 2, "only the last put's entries");
        assert_eq!(entries.order.len(), 2, "the queue holds only what is held");
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

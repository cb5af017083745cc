//! A scorer's optional in-process cache of entity states and the shared watermark and cut,
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

type Key = (EntityTypeId, String);

/// The cache (see the module doc): entities' records as fetched (`V`) and what is read
/// beside them (`M`: the watermark and the cut).
#[derive(Debug)]
pub struct StateCache<V, M> {
    staleness: Duration,
    max_entries: usize,
    entries: Mutex<Entries<V>>,
    meta: Mutex<Option<(Instant, M)>>,
}

#[derive(Debug)]
struct Entries<V> {
    /// Also what Redis does not hold for an entity (worth remembering too).
    states: HashMap<Key, (Instant, V)>,
    /// Every put in the order made: (fetched, key). An entry put again later leaves its
    /// older place here, skipped when it reaches the front.
    order: VecDeque<(Instant, Key)>,
}

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries {
            states: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V: Clone, M: Clone> StateCache<V, M> {
    pub fn new(staleness: Duration, max_entries: usize) -> StateCache<V, M> {
        StateCache {
            staleness,
            max_entries,
            entries: Mutex::new(Entries::default()),
            meta: Mutex::new(None),
        }
    }

    fn fresh(&self, fetched: Instant, now: Instant) -> bool {
        now.saturating_duration_since(fetched) < self.staleness
    }

    /// The cached record of `key` if fetched less than `staleness` ago.
    pub fn get(&self, key: &Key, now: Instant) -> Option<V> {
        let entries = self.entries.lock();
        let (fetched, state) = entries.states.get(key)?;
        self.fresh(*fetched, now).then(|| state.clone())
    }

    /// Keeps what was fetched at `fetched`.
    pub fn put(&self, fetched: Instant, states: impl IntoIterator<Item = (Key, V)>) {
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

    /// The cached watermark and cut if fetched less than `staleness` ago.
    pub fn meta(&self, now: Instant) -> Option<M> {
        let cached = self.meta.lock();
        let (fetched, meta) = cached.as_ref()?;
        self.fresh(*fetched, now).then(|| meta.clone())
    }

    pub fn put_meta(&self, fetched: Instant, meta: M) {
        *self.meta.lock() = Some((fetched, meta));
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
        let cache: StateCache<Option<u8>, ()> = StateCache::new(Duration::from_millis(100), 2);
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
        let cache: StateCache<Option<u8>, ()> = StateCache::new(staleness, 1_000);
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
    fn the_watermark_and_cut_are_served_until_they_are_stale() {
        let cache: StateCache<(), Option<i64>> = StateCache::new(Duration::from_millis(100), 2);
        let t0 = Instant::now();
        assert_eq!(cache.meta(t0), None);
        cache.put_meta(t0, Some(42));
        assert_eq!(cache.meta(t0 + Duration::from_millis(50)), Some(Some(42)));
        assert_eq!(cache.meta(t0 + Duration::from_millis(100)), None);
    }
}

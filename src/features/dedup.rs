//! Event-id dedup within a horizon of event time. Ids are kept as 128-bit FNV hashes
//! with the event's time; whether an id counts as seen depends only on the horizon,
//! so pruning (which frees memory) never changes a decision.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Dedup {
    seen: FxHashMap<u128, i64>,
    prune_at: usize,
}

impl Dedup {
    /// Whether `id` was applied with an event time at or after `horizon_start`.
    pub fn contains(&self, id: u128, horizon_start: i64) -> bool {
        self.seen
            .get(&id)
            .is_some_and(|time| *time >= horizon_start)
    }

    pub fn insert(&mut self, id: u128, time_ms: i64, horizon_start: i64) {
        let time = self.seen.entry(id).or_insert(time_ms);
        *time = (*time).max(time_ms);
        if self.seen.len() >= self.prune_at {
            self.prune(horizon_start);
        }
    }

    /// Forgets ids older than the horizon; amortised by doubling the next threshold.
    pub fn prune(&mut self, horizon_start: i64) {
        self.seen.retain(|_, time| *time >= horizon_start);
        self.prune_at = (self.seen.len() * 2).max(1 << 16);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

//! Entities of one type by id, split into shards by a hash of the id. A snapshot copies
//! one shard at a time under a short read lock, so a queued ingest writer (and every
//! `Score` behind it) waits for one shard, never for the whole walk.

use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

use super::state::EntityState;

/// Shards per entity type: at 1M entities of a type, about 60 per shard, so one shard is
/// copied in well under a millisecond. Measured with `benches/snapshot_stall.rs` (3M
/// entities, 2 cores): 256 shards gave a Score p99 17x higher during snapshots, 4,096
/// 1.5-3.3x, 16,384 0.7-0.9x. Snapshots taken with another count are re-sharded on
/// restore.
pub const SHARDS: usize = 16384;

/// One shard. hashbrown for `entry_ref`: one lookup per event, and the key is allocated
/// only when the entity is new.
pub type EntityTable = hashbrown::HashMap<Box<str>, EntityState, FxBuildHasher>;

#[derive(Debug)]
pub struct ShardedTable {
    shards: Vec<EntityTable>,
}

impl Default for ShardedTable {
    fn default() -> Self {
        ShardedTable {
            shards: (0..SHARDS).map(|_| EntityTable::default()).collect(),
        }
    }
}

impl ShardedTable {
    /// The shard an id lives in: the top bits of its hash, mixed (FxHash's low bits pick
    /// the bucket inside the shard).
    fn shard_of(id: &str) -> usize {
        let hash = FxBuildHasher
            .hash_one(id)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (hash >> (64 - SHARDS.trailing_zeros())) as usize
    }

    pub fn get(&self, id: &str) -> Option<&EntityState> {
        self.shards[Self::shard_of(id)].get(id)
    }

    /// The shard that holds (or would hold) `id`.
    pub fn shard_for(&mut self, id: &str) -> &mut EntityTable {
        &mut self.shards[Self::shard_of(id)]
    }

    pub fn shard(&self, index: usize) -> &EntityTable {
        &self.shards[index]
    }

    pub fn shard_mut(&mut self, index: usize) -> &mut EntityTable {
        &mut self.shards[index]
    }

    /// Puts a restored shard in place.
    pub fn set_shard(&mut self, index: usize, shard: EntityTable) {
        self.shards[index] = shard;
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(EntityTable::len).sum()
    }
}

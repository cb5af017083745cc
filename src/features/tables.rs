//! Entities of one type by id, split into shards by a hash of the id, each shard behind
//! its own lock. An event takes the write lock of one shard per entity it names, a read
//! the read lock of one shard per entity it reads, and a snapshot one shard at a time:
//! a `Score` waits only when the ingest writer or the snapshot is on one of its own 4-5
//! shards, never for a whole batch or walk.

use std::hash::BuildHasher;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use rustc_hash::FxBuildHasher;

use super::state::EntityState;

/// Shards per entity type: at 1M entities of a type, about 60 per shard, so one shard is
/// copied in well under a millisecond. Measured with `benches/snapshot_stall.rs` (3M
/// entities, 2 cores) when one engine-wide lock was taken per shard: 256 shards gave a
/// Score p99 17x higher during snapshots, 4,096 1.5-3.3x, 16,384 0.7-0.9x. Snapshots
/// taken with another count are re-sharded on restore.
pub const SHARDS: usize = 16384;

/// One shard. hashbrown for `entry_ref`: one lookup per event, and the key is allocated
/// only when the entity is new.
pub type EntityTable = hashbrown::HashMap<Box<str>, EntityState, FxBuildHasher>;

#[derive(Debug)]
pub struct ShardedTable {
    shards: Vec<RwLock<EntityTable>>,
}

impl Default for ShardedTable {
    fn default() -> Self {
        ShardedTable {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(EntityTable::default()))
                .collect(),
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

    /// The shard that holds (or would hold) `id`, locked for reading.
    pub fn read_shard_of(&self, id: &str) -> RwLockReadGuard<'_, EntityTable> {
        self.shards[Self::shard_of(id)].read()
    }

    /// The shard that holds (or would hold) `id`, locked for writing.
    pub fn write_shard_of(&self, id: &str) -> RwLockWriteGuard<'_, EntityTable> {
        self.shards[Self::shard_of(id)].write()
    }

    /// The shard that holds (or would hold) `id`, with exclusive access (no lock taken).
    pub fn shard_of_mut(&mut self, id: &str) -> &mut EntityTable {
        self.shards[Self::shard_of(id)].get_mut()
    }

    pub fn read_shard(&self, index: usize) -> RwLockReadGuard<'_, EntityTable> {
        self.shards[index].read()
    }

    pub fn write_shard(&self, index: usize) -> RwLockWriteGuard<'_, EntityTable> {
        self.shards[index].write()
    }

    /// Puts a restored shard in place.
    pub fn set_shard(&mut self, index: usize, shard: EntityTable) {
        *self.shards[index].get_mut() = shard;
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }
}

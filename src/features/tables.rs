//! Entities of one type by id, split into shards by a hash of the id, each shard behind
//! its own lock. An event takes the write lock of one shard per entity it names, a read
//! the read lock of one shard per entity it reads, and a snapshot one shard at a time:
//! a `Score` waits only when the ingest writer or the snapshot is on one of its own 4-5
//! shards, never for a whole batch or walk.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use hashbrown::DefaultHashBuilder;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::state::EntityState;

/// Shards per entity type: at 1M entities of a type, about 60 per shard, so one shard is
/// copied in well under a millisecond. Measured with `benches/snapshot_stall.rs` (3M
/// entities, 2 cores) when one engine-wide lock was taken per shard: 256 shards gave a
/// Score p99 17x higher during snapshots, 4,096 1.5-3.3x, 16,384 0.7-0.9x. Snapshots
/// taken with another count are re-sharded on restore.
pub const SHARDS: usize = 16384;

/// One shard. hashbrown for `entry_ref`: one lookup per event, and the key is allocated
/// only when the entity is new. Its hasher is seeded per process (foldhash), like the
/// shard choice: ids come from callers, and with an unkeyed hash (FxHash, before) crafted
/// device or ip ids all landed in one shard and one probe chain, under the writer lock.
pub type EntityTable = hashbrown::HashMap<Box<str>, EntityState, DefaultHashBuilder>;

/// Chooses shards; seeded at random once per process, so which ids share a shard
/// cannot be known from outside. Snapshots are re-sharded on restore for this reason.
static SHARD_HASHER: LazyLock<DefaultHashBuilder> = LazyLock::new(DefaultHashBuilder::default);

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
    /// The shard an id lives in: the top bits of its keyed hash.
    pub fn shard_index(&self, id: &str) -> usize {
        Self::shard_of(id)
    }

    fn shard_of(id: &str) -> usize {
        let hash = SHARD_HASHER.hash_one(id);
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

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most ids of `ids` that share one shard.
    fn fullest_shard<'a>(ids: impl Iterator<Item = &'a str>) -> usize {
        let mut counts = vec![0usize; SHARDS];
        for id in ids {
            counts[ShardedTable::shard_of(id)] += 1;
        }
        counts.into_iter().max().unwrap_or(0)
    }

    #[test]
    fn ids_crafted_for_one_shard_spread_like_random_ones() {
        // The attacker's model of the unkeyed choice this replaced: FxHash, mixed, top
        // 14 bits. 10,000 ids that all land in its shard 0.
        let unkeyed = |id: &str| {
            rustc_hash::FxBuildHasher
                .hash_one(id)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                >> (64 - SHARDS.trailing_zeros())
        };
        let mut crafted = Vec::with_capacity(10_000);
        let mut n = 0u64;
        while crafted.len() < 10_000 {
            let id = format!("device-{n:016x}");
            if unkeyed(&id) == 0 {
                crafted.push(id);
            }
            n += 1;
        }
        let random: Vec<String> = (0..10_000u64)
            .map(|i| format!("device-{:016x}", i.wrapping_mul(0x2545_f491_4f6c_dd1d)))
            .collect();
        let crafted_max = fullest_shard(crafted.iter().map(String::as_str));
        let random_max = fullest_shard(random.iter().map(String::as_str));
        eprintln!("fullest shard: crafted {crafted_max}, random {random_max} of 10,000 ids");
        // 10,000 ids over 16,384 shards: a few share the fullest one either way.
        assert!(crafted_max <= 8, "{crafted_max} crafted ids in one shard");
        assert!(random_max <= 8, "{random_max} random ids in one shard");
    }
}

//! The feature engine: applies validated events to per-entity state and reads feature
//! values at a moment. The server and the training pipeline both call this code, so a
//! history gives the same values in both, bit for bit.
//!
//! Time is event time. The watermark is the newest event time applied. An event older
//! than `watermark - allowed_lateness` is refused as late (and counted); one within
//! the lateness lands in its own tile. A read as of `t` sees exactly the events stamped
//! at or before `t`; it is refused ([`ReadError::TooOld`]) when `t` is older than
//! `watermark - allowed_lateness`, and ([`ReadError::TooOldForEntity`]) when the entity
//! had more than [`super::MAX_PENDING_EVENTS`] events after `t` within the lateness. An event whose id was applied before, with an
//! event time no older than `watermark - dedup_horizon`, is a duplicate: acknowledged,
//! not applied (checked first, so a retried old batch is not called late). An entity
//! whose newest event is older than `watermark - allowed_lateness - ttl - longest tile`
//! is expired: reads see it as
//! unknown and its next event starts it afresh, but for its first-seen times
//! (`age_since_first`), which are kept in a compact record until its newest event is
//! older than `watermark - allowed_lateness - identity_ttl - longest tile` (a customer
//! back after months is not new). Expiry depends on event time only, so when memory is
//! actually reclaimed or compacted ([`Engine::evict_expired`]) never changes a value.

use std::collections::HashMap;

use smallvec::SmallVec;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::config::IngestSettings;
use crate::definitions::{Aggregation, Definitions, EntityTypeId};
use crate::events::{COMPOSITE_SEPARATOR, Event, Refusal, RefusalKind};

use super::dedup::{DEDUP_SHARDS, Dedup, DedupShard};
use super::plan::{EntityPlan, Reader};
use super::state::{EntityState, Overlay, apply_to_state, read_one};
use super::tables::{EntityTable, SHARDS, ShardedTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSettings {
    pub allowed_lateness_ms: i64,
    pub dedup_horizon_ms: i64,
}

impl From<&IngestSettings> for EngineSettings {
    /// What the engine reads of the ingest settings: lateness and the dedup horizon.
    fn from(ingest: &IngestSettings) -> Self {
        EngineSettings {
            allowed_lateness_ms: ingest.allowed_lateness.0,
            dedup_horizon_ms: ingest.dedup_horizon.0,
        }
    }
}

/// What the engine decides about an event before it is logged and applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Apply,
    Duplicate,
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub applied: u64,
    pub duplicates: u64,
    pub late: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadError {
    #[error("unknown entity type '{0}'")]
    UnknownEntityType(String),
    #[error("entity type '{0}' has no features")]
    NoFeatures(String),
    #[error("'{feature}' is not a feature of entity type '{entity}'")]
    UnknownFeature { feature: String, entity: String },
    #[error("entity id {0}")]
    BadId(String),
    /// The read is older than `watermark - allowed_lateness`: windows before that may
    /// already be pruned, so no exact answer is possible.
    #[error(
        "{as_of_ms} is before {oldest_ms}, the oldest moment the store can answer exactly (the newest event time {watermark_ms} less the allowed lateness)"
    )]
    TooOld {
        as_of_ms: i64,
        oldest_ms: i64,
        watermark_ms: i64,
    },
    /// The entity had so many events after the read's moment that some were sealed
    /// into its tiles early; an exact answer would need them left out.
    #[error(
        "{as_of_ms} is before {oldest_ms}, the oldest moment the store can answer exactly for {entity} '{id}' (it had more events after that moment than are kept apart)"
    )]
    TooOldForEntity {
        as_of_ms: i64,
        oldest_ms: i64,
        entity: String,
        id: String,
    },
}

/// Feature values read for one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRead {
    /// False when the engine holds no live state for the entity (every value is a default).
    pub known: bool,
    pub as_of_ms: i64,
    /// (feature, value), in the order asked for; inline up to [`INLINE_FEATURES`], so a
    /// read allocates nothing in the common case.
    pub values: SmallVec<[(usize, Option<f64>); INLINE_FEATURES]>,
}

/// Features of one entity read without an allocation (the shop's user has 21).
pub const INLINE_FEATURES: usize = 32;

/// The engine. Shared by reference between the ingest writer, readers, expiry and
/// snapshots: entity state is behind one lock per shard ([`ShardedTable`]), the dedup
/// set behind the writer's lock ([`Engine::writer`]), and the watermark, sequence number
/// and counters are atomics that only the writer stores to.
pub struct Engine {
    definitions: Arc<Definitions>,
    settings: EngineSettings,
    plans: Vec<Option<EntityPlan>>,
    tables: Vec<ShardedTable>,
    watermark_ms: AtomicI64,
    /// The newest sequence number whose event is applied to every entity it names;
    /// stored after the last entity, so reads bounded by it see whole events.
    applied_seq: AtomicU64,
    applied: AtomicU64,
    duplicates: AtomicU64,
    late: AtomicU64,
    /// One writer at a time: admission (the dedup check) and application of a batch
    /// happen in one order, the log's.
    writer: Mutex<Dedup>,
    /// When set, reads leave out the pending contributions of events not durable yet.
    durable_seq: Option<Arc<AtomicU64>>,
}

/// What a snapshot starts with; the shards of every entity table, then of the dedup
/// set, follow it, each copied under its own short lock (see [`Engine::snapshot_shard`]). Shards copied later
/// may hold events after `applied_seq`: each entity remembers the last sequence number
/// applied to it, and replay skips what an entity already holds.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    fingerprint: u64,
    watermark_ms: i64,
    applied_seq: u64,
    counters: Counters,
    tables: u32,
    shards: u32,
    dedup_shards: u32,
}

/// Exclusive right to admit and apply events (see [`Engine::writer`]). Readers go on
/// meanwhile, each entity under its shard's lock.
pub struct EngineWriter<'a> {
    engine: &'a Engine,
    dedup: MutexGuard<'a, Dedup>,
}

/// Reads of the engine at one cut of the log: every entity read through one view sees
/// the same events, those with a sequence number up to `visible_through` (see
/// [`Engine::view`]).
pub struct EngineView<'a> {
    engine: &'a Engine,
    visible_through: u64,
}

impl std::ops::Deref for EngineView<'_> {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        self.engine
    }
}

impl Engine {
    pub fn new(definitions: Arc<Definitions>, settings: EngineSettings) -> Engine {
        let plans: Vec<Option<EntityPlan>> = (0..definitions.entities.len())
            .map(|entity| EntityPlan::build(&definitions, entity))
            .collect();
        let tables = plans.iter().map(|_| ShardedTable::default()).collect();
        Engine {
            definitions,
            settings,
            plans,
            tables,
            watermark_ms: AtomicI64::new(0),
            applied_seq: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            late: AtomicU64::new(0),
            writer: Mutex::new(Dedup::default()),
            durable_seq: None,
        }
    }

    /// Restores a snapshot taken with the same definitions (header, then shards).
    pub fn restore(
        definitions: Arc<Definitions>,
        settings: EngineSettings,
        payload: &[u8],
    ) -> Result<Engine, String> {
        let undecodable = |e: postcard::Error| format!("undecodable: {e}");
        let (header, mut rest): (SnapshotHeader, _) =
            postcard::take_from_bytes(payload).map_err(undecodable)?;
        if header.fingerprint != definitions.state_fingerprint {
            return Err(format!(
                "it was taken with other feature definitions (fingerprint {:016x}, running {:016x})",
                header.fingerprint, definitions.state_fingerprint
            ));
        }
        let mut engine = Engine::new(definitions, settings);
        if header.tables as usize != engine.tables.len()
            || header.dedup_shards as usize != DEDUP_SHARDS
        {
            return Err("its entity tables do not match the definitions".into());
        }
        for table in &mut engine.tables {
            for _ in 0..header.shards {
                let (shard, after): (EntityTable, _) =
                    postcard::take_from_bytes(rest).map_err(undecodable)?;
                rest = after;
                // Shards are chosen by a hash keyed per process: each entity goes to
                // the shard its id hashes to now.
                for (id, state) in shard {
                    table.shard_of_mut(&id).insert(id, state);
                }
            }
        }
        let dedup = engine.writer.get_mut();
        for _ in 0..DEDUP_SHARDS {
            let (shard, after): (DedupShard, _) =
                postcard::take_from_bytes(rest).map_err(undecodable)?;
            dedup.restore_shard(shard);
            rest = after;
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes after the last shard", rest.len()));
        }
        engine.watermark_ms = AtomicI64::new(header.watermark_ms);
        engine.applied_seq = AtomicU64::new(header.applied_seq);
        engine.applied = AtomicU64::new(header.counters.applied);
        engine.duplicates = AtomicU64::new(header.counters.duplicates);
        engine.late = AtomicU64::new(header.counters.late);
        Ok(engine)
    }

    /// Appends the snapshot header (postcard) to `out`: call first, then
    /// [`Engine::snapshot_shard`] for every table and shard in order, then
    /// [`Engine::snapshot_dedup_shard`] for every dedup shard. Taken under the writer's
    /// lock, so no event is half applied: every event up to the header's sequence
    /// number is in every shard copied after it. Returns that sequence number.
    pub fn snapshot_header(&self, out: &mut Vec<u8>) -> Result<u64, postcard::Error> {
        let _writer = self.writer.lock();
        let header = SnapshotHeader {
            fingerprint: self.definitions.state_fingerprint,
            watermark_ms: self.watermark_ms(),
            applied_seq: self.applied_seq(),
            counters: self.counters(),
            tables: self.tables.len() as u32,
            shards: SHARDS as u32,
            dedup_shards: DEDUP_SHARDS as u32,
        };
        *out = postcard::to_extend(&header, std::mem::take(out))?;
        Ok(header.applied_seq)
    }

    /// Appends one shard of one entity table to `out`, under that shard's read lock.
    pub fn snapshot_shard(
        &self,
        table: usize,
        shard: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), postcard::Error> {
        let shard = self.tables[table].read_shard(shard);
        *out = postcard::to_extend(&*shard, std::mem::take(out))?;
        Ok(())
    }

    /// Appends one shard of the dedup set to `out`, under the writer's lock.
    pub fn snapshot_dedup_shard(
        &self,
        shard: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), postcard::Error> {
        let dedup = self.writer.lock();
        *out = postcard::to_extend(dedup.shard(shard), std::mem::take(out))?;
        Ok(())
    }

    /// From now on reads leave out events beyond `durable_seq` (the log's durable
    /// sequence number), so nothing is visible before it is acknowledged.
    pub fn hide_undurable(&mut self, durable_seq: Arc<AtomicU64>) {
        self.durable_seq = Some(durable_seq);
    }

    /// A view of what is acknowledged now: events applied to every entity they name
    /// and durable. Taken once per request, so its entities are read at one cut.
    pub fn view(&self) -> EngineView<'_> {
        let applied = self.applied_seq.load(Ordering::Acquire);
        let visible_through = match &self.durable_seq {
            Some(durable) => durable.load(Ordering::Acquire).min(applied),
            // Not fed through a log (training, tests): every applied event.
            None => u64::MAX,
        };
        EngineView {
            engine: self,
            visible_through,
        }
    }

    /// The exclusive right to admit and apply events. Held over a batch, so batches
    /// are admitted and applied whole, in log order.
    pub fn writer(&self) -> EngineWriter<'_> {
        EngineWriter {
            engine: self,
            dedup: self.writer.lock(),
        }
    }

    /// [`EngineWriter::admit`] for an engine used from one thread.
    pub fn admit(&mut self, event: &Event<'_>) -> Admission {
        self.writer().admit(event)
    }

    /// [`EngineWriter::apply`] for an engine used from one thread.
    pub fn apply(&mut self, event: &Event<'_>, seq: u64) {
        self.writer().apply(event, seq)
    }

    /// How many entity tables a snapshot walks.
    pub fn table_count(&self) -> usize {
        self.tables.len()
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        &self.definitions
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms.load(Ordering::Acquire)
    }

    /// Raises the watermark to `watermark_ms` if that is newer: a scorer's engine,
    /// which holds no entities, takes the aggregators' shared watermark this way.
    pub fn advance_watermark(&self, watermark_ms: i64) {
        self.watermark_ms.fetch_max(watermark_ms, Ordering::AcqRel);
    }

    /// Sequence number of the last logged event applied (0 if none).
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    pub fn counters(&self) -> Counters {
        Counters {
            applied: self.applied.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
        }
    }

    /// Entities currently held in memory, per entity type name.
    pub fn entity_counts(&self) -> Vec<(&str, usize)> {
        self.definitions
            .entities
            .iter()
            .zip(&self.tables)
            .map(|(e, t)| (e.name.as_str(), t.len()))
            .collect()
    }

    /// The ids of the `entity` type held now (live or remembered), sorted.
    pub fn entity_ids(&self, entity: EntityTypeId) -> Vec<String> {
        let mut ids: Vec<String> = (0..SHARDS)
            .flat_map(|shard| {
                self.tables[entity]
                    .read_shard(shard)
                    .keys()
                    .map(|id| id.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Reads as of an earlier moment are refused: tiles before it may be pruned, and
    /// events older than it are sealed into tiles.
    pub fn oldest_exact_read_ms(&self) -> i64 {
        self.oldest_exact_read_at(self.watermark_ms())
    }

    /// [`Self::oldest_exact_read_ms`] when the watermark is `watermark_ms`.
    fn oldest_exact_read_at(&self, watermark_ms: i64) -> i64 {
        watermark_ms.saturating_sub(self.settings.allowed_lateness_ms)
    }

    /// How long after an entity's newest event (in event time) anything of it is still
    /// read: its first-seen times outlive its windows. The time to live of its record in
    /// an online store. `None` for an entity type without features.
    pub fn retention_ms(&self, entity: EntityTypeId) -> Option<i64> {
        let plan = self.plans[entity].as_ref()?;
        Some(
            self.settings
                .allowed_lateness_ms
                .saturating_add(plan.identity_ttl_ms.max(plan.ttl_ms))
                .saturating_add(plan.longest_tile_ms),
        )
    }

    /// Frees the memory of expired entities; returns how many were dropped.
    pub fn evict_expired(&self) -> usize {
        let mut dropped = 0;
        for table in 0..self.tables.len() {
            for shard in 0..SHARDS {
                dropped += self.evict_expired_shard(table, shard);
            }
        }
        for shard in 0..DEDUP_SHARDS {
            self.prune_dedup_shard(shard);
        }
        dropped
    }

    /// [`Engine::evict_expired`] for one shard of one table, under that shard's write
    /// lock, so the work can be sliced.
    pub fn evict_expired_shard(&self, table: usize, shard: usize) -> usize {
        let Some(plan) = &self.plans[table] else {
            return 0;
        };
        let oldest_exact = self.oldest_exact_read_ms();
        let (expired_before, identity_before) = (
            expiry_cutoff(plan, oldest_exact),
            identity_cutoff(plan, oldest_exact),
        );
        let mut shard = self.tables[table].write_shard(shard);
        let before = shard.len();
        shard.retain(|_, state| {
            if state.last_seen_ms >= expired_before {
                return true;
            }
            if state.last_seen_ms < identity_before {
                return false;
            }
            // Window state expired, identity kept: only what reads still use stays.
            if !state.is_identity_only() {
                *state = state.identity_only(plan.first_slots.len());
            }
            true
        });
        before - shard.len()
    }

    /// Forgets the ids of one dedup shard older than the dedup horizon (under the
    /// writer's lock: one shard is short).
    pub fn prune_dedup_shard(&self, shard: usize) {
        let mut dedup = self.writer.lock();
        let horizon_start = self
            .watermark_ms()
            .saturating_sub(self.settings.dedup_horizon_ms);
        dedup.prune_shard(shard, horizon_start);
    }

    /// Resolves an entity type and optional feature names to feature ids.
    pub fn resolve(
        &self,
        entity_type: &str,
        names: &[String],
    ) -> Result<(EntityTypeId, Vec<usize>), ReadError> {
        let entity = self
            .definitions
            .entity_id(entity_type)
            .ok_or_else(|| ReadError::UnknownEntityType(entity_type.to_string()))?;
        let plan = self.plans[entity]
            .as_ref()
            .ok_or_else(|| ReadError::NoFeatures(entity_type.to_string()))?;
        if names.is_empty() {
            return Ok((entity, plan.features.clone()));
        }
        let ids = names
            .iter()
            .map(|name| {
                self.definitions
                    .feature_id(name)
                    .filter(|id| plan.readers[*id].is_some())
                    .ok_or_else(|| ReadError::UnknownFeature {
                        feature: name.clone(),
                        entity: entity_type.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok((entity, ids))
    }
}

impl EngineWriter<'_> {
    /// A view that sees every applied event, durable or not: what the writer has
    /// applied so far is whole, since no other writer runs (a recorded score, whose
    /// answer is only sent once its own event, and so every event before it, is
    /// durable).
    pub fn view_unacked(&self) -> EngineView<'_> {
        EngineView {
            engine: self.engine,
            visible_through: u64::MAX,
        }
    }

    /// Whether `event`'s id was admitted before, within the dedup horizon (nothing is
    /// counted).
    pub fn is_duplicate(&self, event: &Event<'_>) -> bool {
        let engine = self.engine;
        let horizon_start = engine
            .watermark_ms()
            .saturating_sub(engine.settings.dedup_horizon_ms);
        self.dedup.contains(event.id_hash, horizon_start)
    }

    /// Decides whether `event` is a duplicate, is too late, or is applied; counts the
    /// first two.
    pub fn admit(&mut self, event: &Event<'_>) -> Admission {
        let engine = self.engine;
        let watermark_ms = engine.watermark_ms();
        // Duplicates first: a producer retrying an old batch should hear 'already have
        // it', not 'too late'.
        if self.is_duplicate(event) {
            engine.duplicates.fetch_add(1, Ordering::Relaxed);
            return Admission::Duplicate;
        }
        let oldest_allowed = engine.oldest_exact_read_ms();
        if event.time_ms < oldest_allowed {
            engine.late.fetch_add(1, Ordering::Relaxed);
            return Admission::Refused(Refusal {
                field: "event_time_ms".into(),
                reason: format!(
                    "is {} ms behind the newest event time {}; at most {} ms of lateness is allowed",
                    watermark_ms - event.time_ms,
                    watermark_ms,
                    engine.settings.allowed_lateness_ms
                ),
                kind: RefusalKind::Late,
            });
        }
        Admission::Apply
    }

    /// Applies an admitted event. `seq` is its position in the log (0 when not logged).
    pub fn apply(&mut self, event: &Event<'_>, seq: u64) {
        let engine = self.engine;
        self.record_admission(event);
        engine.applied.fetch_add(1, Ordering::Relaxed);
        let mut key = String::new();
        for entity in 0..engine.plans.len() {
            if build_event_key(engine, &mut key, entity, event) {
                self.apply_to_entity(event, entity, &key, seq);
            }
        }
        // Last: a view bounded by this sequence number must find the event in every
        // entity it names.
        engine.applied_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Admits an event read back from the log ([`super::recovery`]): its id joins the
    /// dedup set, its time the watermark, and it is counted as applied; the entities are
    /// left to the replay's workers.
    pub(super) fn admit_logged(&mut self, event: &Event<'_>) {
        self.record_admission(event);
        self.engine.applied.fetch_add(1, Ordering::Relaxed);
    }

    /// What admitting `event` changes without touching entities: its id joins the
    /// dedup set and its time the watermark (a scaled-out router admits events and
    /// leaves applying them to the aggregators).
    pub fn record_admission(&mut self, event: &Event<'_>) {
        self.restore_admission(event.id_hash, event.time_ms);
    }

    /// [`Self::record_admission`] of an event admitted before, by its id's hash and its
    /// time, read back from where an earlier process kept them (a router's checkpoints).
    pub fn restore_admission(&mut self, id_hash: u128, time_ms: i64) {
        let engine = self.engine;
        let watermark_ms = engine.watermark_ms().max(time_ms);
        engine.watermark_ms.store(watermark_ms, Ordering::Release);
        self.dedup.insert(
            id_hash,
            time_ms,
            watermark_ms.saturating_sub(engine.settings.dedup_horizon_ms),
        );
    }

    /// Applies `event` to one entity (type `entity`, id `key`) only, as [`Self::apply`]
    /// does to each entity it names. `seq` orders the entity's events: one it already
    /// holds is skipped (false). The caller sets the watermark first
    /// ([`Engine::advance_watermark`]).
    pub fn apply_to_entity(
        &mut self,
        event: &Event<'_>,
        entity: EntityTypeId,
        key: &str,
        seq: u64,
    ) -> bool {
        self.apply_to_entity_tagged(event, entity, key, seq, seq)
    }

    /// [`Self::apply_to_entity`] with the event's contributions kept under `tag`
    /// rather than `seq`: reads at a cut leave out events by tag (a scaled-out
    /// aggregator's tag is the event's input position, the same in every entity it
    /// names; `seq` is its entity partition's offset, which orders the entity).
    pub fn apply_to_entity_tagged(
        &mut self,
        event: &Event<'_>,
        entity: EntityTypeId,
        key: &str,
        seq: u64,
        tag: u64,
    ) -> bool {
        let engine = self.engine;
        let shard = engine.tables[entity].shard_index(key);
        let at = (seq, tag);
        engine.apply_in_shard(event, entity, key, shard, at, engine.watermark_ms())
    }
}

impl Engine {
    /// Applies `event` to one entity (type `entity`, id `key`, in shard `shard` of its
    /// table) as it stands when the watermark is `watermark_ms`: the one place an event
    /// changes an entity. Taking the watermark rather than reading it lets several
    /// threads replay one log, each at its own place in it ([`super::recovery`]).
    pub(super) fn apply_in_shard(
        &self,
        event: &Event<'_>,
        entity: EntityTypeId,
        key: &str,
        shard: usize,
        (seq, tag): (u64, u64),
        watermark_ms: i64,
    ) -> bool {
        let Some(plan) = &self.plans[entity] else {
            return false;
        };
        let seal_before = self.oldest_exact_read_at(watermark_ms);
        let expired_before = expiry_cutoff(plan, seal_before);
        let identity_before = identity_cutoff(plan, seal_before);
        let mut shard = self.tables[entity].write_shard(shard);
        let state = match shard.entry_ref(key) {
            hashbrown::hash_map::EntryRef::Occupied(occupied) => {
                let state = occupied.into_mut();
                // Replay after a snapshot: this entity was copied after the event.
                if seq > 0 && state.applied_seq >= seq {
                    return false;
                }
                if state.last_seen_ms < expired_before {
                    let firsts = if state.last_seen_ms >= identity_before {
                        state.identity_only(plan.first_slots.len()).firsts
                    } else {
                        Default::default()
                    };
                    *state = EntityState {
                        firsts,
                        ..EntityState::default()
                    };
                }
                state
            }
            hashbrown::hash_map::EntryRef::Vacant(vacant) => vacant.insert(EntityState::default()),
        };
        apply_to_state(plan, state, event, tag, seal_before);
        state.applied_seq = state.applied_seq.max(seq);
        true
    }

    /// Applies `event` to those of its entities whose shard index is `part` modulo
    /// `parts`, the watermark being `watermark_ms` (see [`super::recovery`]).
    pub(super) fn apply_part(
        &self,
        event: &Event<'_>,
        seq: u64,
        watermark_ms: i64,
        key: &mut String,
        (part, parts): (usize, usize),
    ) {
        for entity in 0..self.plans.len() {
            if !build_event_key(self, key, entity, event) {
                continue;
            }
            let shard = self.tables[entity].shard_index(key);
            if shard % parts == part {
                self.apply_in_shard(event, entity, key, shard, (seq, seq), watermark_ms);
            }
        }
    }

    /// Marks every event up to `seq` applied to every entity it names (the end of a
    /// replay whose workers have all finished).
    pub(super) fn applied_through(&self, seq: u64) {
        self.applied_seq.fetch_max(seq, Ordering::AcqRel);
    }
}

/// Newest-event times below this mean the entity is expired, when reads go back to
/// `oldest_exact_read_ms`.
fn expiry_cutoff(plan: &EntityPlan, oldest_exact_read_ms: i64) -> i64 {
    oldest_exact_read_ms
        .saturating_sub(plan.ttl_ms)
        .saturating_sub(plan.longest_tile_ms)
}

/// Newest-event times below this mean even the entity's first-seen times are gone.
fn identity_cutoff(plan: &EntityPlan, oldest_exact_read_ms: i64) -> i64 {
    oldest_exact_read_ms
        .saturating_sub(plan.identity_ttl_ms)
        .saturating_sub(plan.longest_tile_ms)
}

/// Writes into `key` the id of the `entity` that `event` names; false when it names
/// none (or the entity type has no features).
pub(super) fn build_event_key(
    engine: &Engine,
    key: &mut String,
    entity: EntityTypeId,
    event: &Event<'_>,
) -> bool {
    let Some(plan) = &engine.plans[entity] else {
        return false;
    };
    let Some(slots) = &plan.key_slots[event.type_id] else {
        return false;
    };
    build_key(key, slots, &event.entities)
}

impl Engine {
    /// The entities (type, id) `event` is applied to: where a scaled-out router sends it.
    pub fn entities_of(&self, event: &Event<'_>) -> Vec<(EntityTypeId, String)> {
        let mut key = String::new();
        let mut found = Vec::new();
        for entity in 0..self.plans.len() {
            if build_event_key(self, &mut key, entity, event) {
                found.push((entity, key.clone()));
            }
        }
        found
    }

    /// Whether the engine holds state for the entity.
    pub fn holds(&self, entity: EntityTypeId, id: &str) -> bool {
        self.tables[entity].read_shard_of(id).contains_key(id)
    }

    /// Puts a state fetched from elsewhere (the online store) in place of what the
    /// engine holds for the entity.
    pub fn install_state(&self, entity: EntityTypeId, id: &str, state: EntityState) {
        self.tables[entity]
            .write_shard_of(id)
            .insert(id.into(), state);
    }

    /// Drops every entity (a scaled-out aggregator that lost partitions: what it held
    /// may be older than what the new owner writes).
    pub fn clear_entities(&self) {
        for table in &self.tables {
            for shard in 0..SHARDS {
                table.write_shard(shard).clear();
            }
        }
    }
}

/// What a model's vector reads its entities from: the embedded engine (an
/// [`EngineView`]), or entity states fetched from an online store ([`DetachedReads`]).
pub trait EntityReads {
    /// Reads `features` (ids from [`Engine::resolve`]) of one entity as of `as_of_ms`.
    fn read_entity(
        &self,
        entity: EntityTypeId,
        id: &str,
        features: &[usize],
        as_of_ms: i64,
    ) -> Result<FeatureRead, ReadError>;

    /// Which events these reads see, so that a check can replay the same ones later
    /// (`streamscore skew`).
    fn cut(&self) -> ReadCut;

    /// The values of a list feature (`recent_distinct`, id from [`Engine::resolve`]) of
    /// one entity as of `as_of_ms`, newest first, each with when it was last seen.
    fn read_recent(
        &self,
        entity: EntityTypeId,
        id: &str,
        feature: usize,
        as_of_ms: i64,
    ) -> Result<Vec<(String, i64)>, ReadError>;
}

/// The values of the list features (`recent_distinct`) among `features` of one entity
/// as of `as_of_ms`, newest first, by feature name.
pub fn list_items(
    reads: &dyn EntityReads,
    definitions: &Definitions,
    entity: EntityTypeId,
    id: &str,
    features: &[usize],
    as_of_ms: i64,
) -> Result<Vec<(String, Vec<String>)>, ReadError> {
    features
        .iter()
        .filter(|feature| definitions.features[**feature].is_list())
        .map(|&feature| {
            let items = reads.read_recent(entity, id, feature, as_of_ms)?;
            Ok((
                definitions.features[feature].name.clone(),
                items.into_iter().map(|(value, _)| value).collect(),
            ))
        })
        .collect()
}

/// The events a read saw: those of the log up to `through_seq` when known (the
/// embedded engine), and the watermark it read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadCut {
    pub through_seq: Option<u64>,
    pub watermark_ms: i64,
}

impl EntityReads for EngineView<'_> {
    fn read_entity(
        &self,
        entity: EntityTypeId,
        id: &str,
        features: &[usize],
        as_of_ms: i64,
    ) -> Result<FeatureRead, ReadError> {
        self.read(entity, id, features, as_of_ms)
    }

    fn read_recent(
        &self,
        entity: EntityTypeId,
        id: &str,
        feature: usize,
        as_of_ms: i64,
    ) -> Result<Vec<(String, i64)>, ReadError> {
        let shard = self.engine.tables[entity].read_shard_of(id);
        self.engine.read_recent_state(
            entity,
            id,
            shard.get(id),
            feature,
            as_of_ms,
            self.visible_through,
        )
    }

    fn cut(&self) -> ReadCut {
        ReadCut {
            // A view of everything applied (MAX) sees through the last applied event.
            through_seq: Some(self.visible_through.min(self.engine.applied_seq())),
            watermark_ms: self.engine.watermark_ms(),
        }
    }
}

/// Entity states held outside the engine (fetched for one request), read through the
/// engine's plans and watermark exactly as its own would be ([`Engine::read_detached`]).
/// An entity not among them reads as never seen.
pub struct DetachedReads<'a> {
    pub engine: &'a Engine,
    pub states: &'a HashMap<(EntityTypeId, String), EntityState>,
}

impl EntityReads for DetachedReads<'_> {
    fn read_entity(
        &self,
        entity: EntityTypeId,
        id: &str,
        features: &[usize],
        as_of_ms: i64,
    ) -> Result<FeatureRead, ReadError> {
        // The map's key is owned; this look-up allocates once per entity read.
        let state = self.states.get(&(entity, id.to_string()));
        self.engine
            .read_detached(entity, id, state, features, as_of_ms)
    }

    fn read_recent(
        &self,
        entity: EntityTypeId,
        id: &str,
        feature: usize,
        as_of_ms: i64,
    ) -> Result<Vec<(String, i64)>, ReadError> {
        let state = self.states.get(&(entity, id.to_string()));
        self.engine
            .read_recent_state(entity, id, state, feature, as_of_ms, u64::MAX)
    }

    fn cut(&self) -> ReadCut {
        // Fetched states come from many partitions' logs: no one sequence number.
        ReadCut {
            through_seq: None,
            watermark_ms: self.engine.watermark_ms(),
        }
    }
}

impl EngineView<'_> {
    /// The highest sequence number this view sees.
    pub fn visible_through(&self) -> u64 {
        self.visible_through
    }

    /// Reads `features` (ids from [`Engine::resolve`]) of one entity as of `as_of_ms`.
    pub fn read(
        &self,
        entity: EntityTypeId,
        id: &str,
        features: &[usize],
        as_of_ms: i64,
    ) -> Result<FeatureRead, ReadError> {
        let shard = self.engine.tables[entity].read_shard_of(id);
        self.engine.read_state(
            entity,
            id,
            shard.get(id),
            features,
            as_of_ms,
            self.visible_through,
        )
    }
}

impl Engine {
    /// A copy of one entity's state as held now (what a scaled-out aggregator writes
    /// to the online store), or `None` when the entity is not held.
    pub fn entity_state(&self, entity: EntityTypeId, id: &str) -> Option<EntityState> {
        self.with_state(entity, id, EntityState::clone)
    }

    /// `look` at one entity's state as held now (under its shard's lock), or `None`
    /// when the entity is not held.
    pub fn with_state<T>(
        &self,
        entity: EntityTypeId,
        id: &str,
        look: impl FnOnce(&EntityState) -> T,
    ) -> Option<T> {
        self.tables[entity].read_shard_of(id).get(id).map(look)
    }

    /// Reads `features` of one entity from a state held elsewhere (fetched from the
    /// online store) exactly as the engine reads its own: same expiry, same checks of
    /// the moment against this engine's watermark, every event in the state visible.
    pub fn read_detached(
        &self,
        entity: EntityTypeId,
        id: &str,
        state: Option<&EntityState>,
        features: &[usize],
        as_of_ms: i64,
    ) -> Result<FeatureRead, ReadError> {
        self.read_state(entity, id, state, features, as_of_ms, u64::MAX)
    }

    /// The state a read of one entity as of `as_of_ms` sees, after the checks every
    /// read makes (the moment against the watermark and the entity's exact range),
    /// handed to `read` with the entity's plan and whether it is live.
    fn with_readable_state<T>(
        &self,
        entity: EntityTypeId,
        id: &str,
        held: Option<&EntityState>,
        as_of_ms: i64,
        read: impl FnOnce(&EntityPlan, &EntityState, bool) -> T,
    ) -> Result<T, ReadError> {
        let definition = &self.definitions.entities[entity];
        let Some(plan) = &self.plans[entity] else {
            return Err(ReadError::NoFeatures(definition.name.clone()));
        };
        check_entity_id(id, definition.parts.len())?;
        let oldest_ms = self.oldest_exact_read_ms();
        if as_of_ms < oldest_ms {
            return Err(ReadError::TooOld {
                as_of_ms,
                oldest_ms,
                watermark_ms: self.watermark_ms(),
            });
        }
        let live = held
            .filter(|state| state.last_seen_ms >= expiry_cutoff(plan, self.oldest_exact_read_ms()));
        if let Some(state) = live
            && as_of_ms < state.exact_from_ms
        {
            return Err(ReadError::TooOldForEntity {
                as_of_ms,
                oldest_ms: state.exact_from_ms,
                entity: definition.name.clone(),
                id: id.to_string(),
            });
        }
        // An expired entity still remembered answers its first-seen times only.
        let remembered = match live {
            Some(_) => None,
            None => held
                .filter(|state| {
                    state.last_seen_ms >= identity_cutoff(plan, self.oldest_exact_read_ms())
                })
                .map(|state| state.identity_only(plan.first_slots.len())),
        };
        let empty = EntityState::default();
        let state = live.or(remembered.as_ref()).unwrap_or(&empty);
        Ok(read(plan, state, live.is_some()))
    }

    fn read_state(
        &self,
        entity: EntityTypeId,
        id: &str,
        held: Option<&EntityState>,
        features: &[usize],
        as_of_ms: i64,
        visible_through: u64,
    ) -> Result<FeatureRead, ReadError> {
        self.with_readable_state(entity, id, held, as_of_ms, |plan, state, known| {
            let overlay = Overlay::build(plan, state, as_of_ms, visible_through);
            let values = features
                .iter()
                .map(|&feature| {
                    let window = self.definitions.features[feature].window;
                    let value = plan.readers[feature]
                        .and_then(|reader| read_one(state, &overlay, reader, window, as_of_ms));
                    (feature, value)
                })
                .collect();
            FeatureRead {
                known,
                as_of_ms,
                values,
            }
        })
    }

    /// The values of a `recent_distinct` feature of one entity as of `as_of_ms`, newest
    /// first, each with when it was last seen.
    fn read_recent_state(
        &self,
        entity: EntityTypeId,
        id: &str,
        held: Option<&EntityState>,
        feature: usize,
        as_of_ms: i64,
        visible_through: u64,
    ) -> Result<Vec<(String, i64)>, ReadError> {
        let definition = &self.definitions.features[feature];
        self.with_readable_state(entity, id, held, as_of_ms, |plan, state, _| {
            match plan.readers[feature] {
                Some(Reader::Recent(list, k)) => state
                    .recent_values(list as u16, definition.window, k, as_of_ms, visible_through)
                    .into_iter()
                    .map(|(value, time)| (value.to_string(), time))
                    .collect(),
                _ => Vec::new(),
            }
        })
    }
}

fn check_entity_id(id: &str, parts: usize) -> Result<(), ReadError> {
    if id.is_empty() {
        return Err(ReadError::BadId("must not be empty".into()));
    }
    if parts > 0 {
        let pieces = id.split(COMPOSITE_SEPARATOR).count();
        if pieces != parts || id.split(COMPOSITE_SEPARATOR).any(str::is_empty) {
            return Err(ReadError::BadId(format!(
                "'{id}' must be {parts} non-empty ids joined with '{COMPOSITE_SEPARATOR}'"
            )));
        }
    }
    Ok(())
}

/// Writes the entity key of an event into `key`; false if a part is absent.
fn build_key(key: &mut String, slots: &[usize], entities: &[Option<&str>]) -> bool {
    key.clear();
    for (position, slot) in slots.iter().enumerate() {
        let Some(id) = entities[*slot] else {
            return false;
        };
        if position > 0 {
            key.push(COMPOSITE_SEPARATOR);
        }
        key.push_str(id);
    }
    true
}

/// The default of a feature for an entity never seen (what a read of unknown gives).
pub fn default_value(aggregation: Aggregation) -> Option<f64> {
    match aggregation {
        Aggregation::Count
        | Aggregation::Sum
        | Aggregation::DistinctCount
        | Aggregation::RecentDistinct => Some(0.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::events::{Limits, RawEvent, validate};

    const SETTINGS: EngineSettings = EngineSettings {
        allowed_lateness_ms: 60_000,
        dedup_horizon_ms: 3_600_000,
    };

    fn engine_with_payments(definitions: &Arc<Definitions>, count: usize) -> Engine {
        let limits = Limits {
            max_future_skew_ms: i64::MAX / 4,
            max_id_bytes: 64,
        };
        let mut engine = Engine::new(Arc::clone(definitions), SETTINGS);
        for i in 0..count {
            let raw = RawEvent {
                event_id: format!("p{i}"),
                event_type: "payment".into(),
                event_time_ms: 1_700_000_000_000 + i as i64 * 1_000,
                entities: BTreeMap::from([
                    ("user".into(), format!("u{}", i % 97)),
                    ("card".into(), format!("c{i}")),
                ]),
                numbers: BTreeMap::from([("amount".into(), i as f64)]),
                strings: BTreeMap::new(),
            };
            let event = validate(definitions, &limits, &raw, None).expect("valid payment");
            assert_eq!(engine.admit(&event), Admission::Apply);
            engine.apply(&event, i as u64 + 1);
        }
        engine
    }

    /// An entity's state with its newest events left out reads, features and lists,
    /// exactly as an engine that never saw those events reads its own: the reference
    /// is an engine fed only the earlier events, not the code under test.
    #[test]
    fn a_state_with_its_newest_events_left_out_reads_as_before_them() {
        use crate::simulate::{SimConfig, Simulator};
        let definitions = Arc::new(Definitions::default_shop());
        let limits = Limits {
            max_future_skew_ms: i64::MAX / 4,
            max_id_bytes: 64,
        };
        // A day of lateness: only an overflow of pending events seals early.
        let settings = EngineSettings {
            allowed_lateness_ms: 86_400_000,
            ..SETTINGS
        };
        let events: Vec<RawEvent> = Simulator::new(SimConfig {
            users: 30,
            ..SimConfig::default()
        })
        .take(600)
        .collect();
        let cut = 560u64;
        let all = Engine::new(Arc::clone(&definitions), settings);
        let before = Engine::new(Arc::clone(&definitions), settings);
        // Which entity each event past the cut names, with its tag (log seq), and the
        // newest time of the events up to the cut each names.
        let mut named_after: BTreeMap<(EntityTypeId, String), Vec<u64>> = BTreeMap::new();
        let mut newest_before: HashMap<(EntityTypeId, String), i64> = HashMap::new();
        for (index, raw) in events.iter().enumerate() {
            let seq = index as u64 + 1;
            let event = validate(&definitions, &limits, raw, None).expect("valid");
            if all.writer().admit(&event) != Admission::Apply {
                continue;
            }
            all.writer().apply(&event, seq);
            if seq <= cut {
                assert_eq!(before.writer().admit(&event), Admission::Apply);
                before.writer().apply(&event, seq);
                for entity in all.entities_of(&event) {
                    let newest = newest_before.entry(entity).or_insert(i64::MIN);
                    *newest = (*newest).max(event.time_ms);
                }
            } else {
                for entity in all.entities_of(&event) {
                    named_after.entry(entity).or_default().push(seq);
                }
            }
        }
        before.advance_watermark(all.watermark_ms());
        let at = all.watermark_ms();
        let mut compared = 0;
        for ((entity, id), tags) in &named_after {
            let mut state = all.entity_state(*entity, id).expect("held");
            let pending: Vec<u64> = state.pending_events().map(|(tag, _)| tag).collect();
            if !tags.iter().all(|tag| pending.contains(tag)) {
                continue; // sealed early (a hot entity): not readable before them
            }
            // What the record says of its sealed events: their newest time is at most
            // that of all its events up to the cut, and the pending ones kept fill in.
            let sealed_newest = newest_before
                .get(&(*entity, id.clone()))
                .copied()
                .unwrap_or(i64::MIN);
            let kept = state.leave_out(|tag| tag <= cut, sealed_newest);
            assert_eq!(kept, before.holds(*entity, id), "{id}: anything left");
            let states = HashMap::from([((*entity, id.clone()), state)]);
            let left_out = DetachedReads {
                engine: &all,
                states: &states,
            };
            let (_, features) = all
                .resolve(&definitions.entities[*entity].name, &[])
                .expect("resolves");
            let read = left_out
                .read_entity(*entity, id, &features, at)
                .expect("reads");
            let own = before
                .view()
                .read(*entity, id, &features, at)
                .expect("reads");
            assert_eq!(format!("{read:?}"), format!("{own:?}"), "{id}");
            let lists = list_items(&left_out, &definitions, *entity, id, &features, at);
            let own_lists = list_items(&before.view(), &definitions, *entity, id, &features, at);
            assert_eq!(format!("{lists:?}"), format!("{own_lists:?}"), "{id}");
            compared += 1;
        }
        assert!(compared >= 20, "only {compared} entities compared");
    }

    /// Re-encodes a snapshot as a build with `shards` shards per table would have
    /// written it: entities spread over the shards by position, not by hash.
    fn with_shard_count(engine: &Engine, shards: usize) -> Vec<u8> {
        let mut header: Vec<u8> = Vec::new();
        engine.snapshot_header(&mut header).expect("header");
        let (mut decoded, _): (SnapshotHeader, _) =
            postcard::take_from_bytes(&header).expect("own header");
        decoded.shards = shards as u32;
        let mut out = postcard::to_extend(&decoded, Vec::new()).expect("header");
        for table in &engine.tables {
            let mut parts = vec![EntityTable::default(); shards];
            let entities = (0..SHARDS).flat_map(|index| table.read_shard(index).clone());
            for (position, (id, state)) in entities.enumerate() {
                parts[position % shards].insert(id, state);
            }
            for part in &parts {
                out = postcard::to_extend(part, out).expect("shard");
            }
        }
        for index in 0..DEDUP_SHARDS {
            engine.snapshot_dedup_shard(index, &mut out).expect("dedup");
        }
        out
    }

    #[test]
    fn snapshots_with_another_shard_count_restore_every_entity() {
        let definitions = Arc::new(Definitions::default_shop());
        let original = engine_with_payments(&definitions, 500);
        for shards in [1, 7, 4096, SHARDS * 2] {
            let payload = with_shard_count(&original, shards);
            let restored = Engine::restore(Arc::clone(&definitions), SETTINGS, &payload)
                .unwrap_or_else(|e| panic!("{shards} shards: {e}"));
            assert_eq!(restored.entity_counts(), original.entity_counts());
            for (table, restored_table) in original.tables.iter().zip(&restored.tables) {
                for index in 0..SHARDS {
                    for (id, state) in table.read_shard(index).iter() {
                        // Debug text, not ==: a `last` with no value yet holds NaN.
                        assert_eq!(
                            format!("{:?}", restored_table.read_shard_of(id).get(id)),
                            format!("{:?}", Some(state)),
                            "{shards} shards: {id}"
                        );
                    }
                }
            }
            assert_eq!(restored.applied_seq(), original.applied_seq());
        }
    }

    /// A user's views of products, as an outside reference keeps them: every event.
    struct View {
        user: String,
        product: String,
        time_ms: i64,
    }

    /// The spec of `recent_distinct` (definitions and window.rs): as of `at`, the events
    /// with time <= at whose tile is among the window's tiles (tile size s, n = W / s
    /// tiles back), newest first, each value once, at most k.
    fn reference_recent(
        views: &[View],
        user: &str,
        at: i64,
        w: i64,
        s: i64,
        k: usize,
    ) -> Vec<(String, i64)> {
        let oldest_tile = at.div_euclid(s) - w / s;
        let mut seen: Vec<&View> = views
            .iter()
            .filter(|v| v.user == user && v.time_ms <= at && v.time_ms.div_euclid(s) >= oldest_tile)
            .collect();
        // Newest first; among equal times the one applied later.
        seen.reverse();
        seen.sort_by_key(|v| std::cmp::Reverse(v.time_ms));
        let mut out: Vec<(String, i64)> = Vec::new();
        for view in seen {
            if out.len() < k && !out.iter().any(|(p, _)| *p == view.product) {
                out.push((view.product.clone(), view.time_ms));
            }
        }
        out
    }

    #[test]
    fn recent_lists_equal_a_reference_at_every_allowed_moment() {
        use rand::{Rng, SeedableRng};
        let definitions = Arc::new(
            Definitions::from_toml(
                r#"
                [entities]
                user = {}
                product = {}
                [events.page_view]
                entities = { user = "required", product = "optional" }
                [[features]]
                name = "recent"
                entity = "user"
                events = ["page_view"]
                aggregation = "recent_distinct"
                field = "product"
                window = "2m"
                k = 4
                [[features]]
                name = "views"
                entity = "user"
                events = ["page_view"]
                aggregation = "count"
                window = "2m"
            "#,
            )
            .expect("definitions"),
        );
        let limits = Limits {
            max_future_skew_ms: i64::MAX / 4,
            max_id_bytes: 64,
        };
        let settings = EngineSettings {
            allowed_lateness_ms: 20_000,
            dedup_horizon_ms: 3_600_000,
        };
        let mut engine = Engine::new(Arc::clone(&definitions), settings);
        let (user_type, features) = engine
            .resolve("user", &["recent".to_string()])
            .expect("feature");
        let recent = features[0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut views: Vec<View> = Vec::new();
        let mut newest = 1_700_000_000_000i64;
        let mut checked = 0;
        for i in 0..3_000u64 {
            // Mostly forward in time, some events late (within the lateness).
            let time_ms = if rng.random_bool(0.2) {
                newest - rng.random_range(0..15_000)
            } else {
                newest += rng.random_range(0..4_000);
                newest
            };
            let user = format!("u{}", rng.random_range(0..3));
            let product = format!("p{}", rng.random_range(0..9));
            let raw = RawEvent {
                event_id: format!("v{i}"),
                event_type: "page_view".into(),
                event_time_ms: time_ms,
                entities: BTreeMap::from([
                    ("user".into(), user.clone()),
                    ("product".into(), product.clone()),
                ]),
                numbers: BTreeMap::new(),
                strings: BTreeMap::new(),
            };
            let event = validate(&definitions, &limits, &raw, None).expect("valid view");
            if engine.admit(&event) != Admission::Apply {
                continue;
            }
            engine.apply(&event, i + 1);
            views.push(View {
                user,
                product,
                time_ms,
            });
            if i % 7 == 0 {
                let oldest = engine.oldest_exact_read_ms();
                for at in [newest, newest - 5_000, oldest.max(newest - 19_000)] {
                    for user in ["u0", "u1", "u2"] {
                        let got = match engine.view().read_recent(user_type, user, recent, at) {
                            Ok(got) => got,
                            // Before the user's exact range (a burst sealed early).
                            Err(ReadError::TooOldForEntity { .. }) => continue,
                            Err(error) => panic!("{user} as of {at}: {error}"),
                        };
                        assert_eq!(
                            got,
                            reference_recent(&views, user, at, 120_000, 5_000, 4),
                            "{user} as of {at} after {i} events"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1_000, "{checked} reads checked");
        // Compacted: a list keeps its k values, its slack and the pending ones, not its
        // history.
        let state = engine.entity_state(user_type, "u0").expect("u0 held");
        let bound =
            4 + crate::features::state::recent_slack(4) + crate::features::MAX_PENDING_EVENTS;
        assert!(state.recents.len() <= bound, "{}", state.recents.len());
    }
}

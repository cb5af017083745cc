//! The online store of a scaled-out deployment: each entity's state (its tiles and
//! pending events, the same [`EntityState`] the embedded engine keeps) in Redis Cluster,
//! one key per entity, written by the aggregator that owns the entity's partition and
//! read by stateless scorers.
//!
//! Every record carries the sequence number (source partition offset + 1) of the newest
//! event in it, and a write only lands when that number is higher than the stored one
//! (a compare-and-set in one Lua script): an owner that lost its partition in a
//! rebalance and writes late can never put older state over newer.

mod cache;
pub mod cut;
mod freshness;
mod record;
mod redis_store;
mod scorer;

pub use cache::StateCache;
pub use cut::{Cut, Lanes, Sealed, SealedPastCut};
pub use freshness::ReadAges;
pub use record::{
    EntityRecord, RecordError, answer_key, entity_key, entity_type_of, watermark_key,
};
pub use redis_store::{OnlineError, RedisAccess, RedisOnline, RedisTls, Written};
pub use scorer::{EventSink, OnlineScorer, Recording, ScorerError};

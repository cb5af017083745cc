//! Real-time features: per-entity state over tiled sliding windows, and the [`Engine`]
//! that applies events and reads values. See `definitions::window` for the exact window
//! semantics and `engine` for lateness, dedup and eviction.

mod dedup;
mod engine;
mod plan;
pub mod recovery;
pub mod replay;
pub mod request;
mod sketch;
mod state;
mod tables;
pub mod vector;

pub use dedup::{DEDUP_SHARDS, Dedup};
pub use engine::{
    Admission, Counters, DetachedReads, Engine, EngineSettings, EngineView, EngineWriter,
    EntityReads, FeatureRead, ReadCut, ReadError, default_value, list_items,
};
pub use state::{EntityState, MAX_EXACT_DISTINCT, MAX_PENDING_EVENTS};
pub use tables::{EntityTable, SHARDS};

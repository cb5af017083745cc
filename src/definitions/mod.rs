//! Feature definitions: the entities, event types (with typed fields) and features a
//! server runs with, read from a TOML file (see `features.toml` for the shipped shop
//! domain). Everything downstream works on the resolved, index-based form here, so a
//! definition that could not work is refused when the file is loaded, never at ingest.

mod parse;
pub mod window;

pub use parse::DefinitionsError;
pub use window::Window;

use serde::{Deserialize, Serialize};

/// The shop domain described in PRODUCT.md, compiled into the binary so `serve` works
/// with no files around it.
pub const DEFAULT_DEFINITIONS: &str = include_str!("../../features.toml");

pub type EntityTypeId = usize;
pub type EventTypeId = usize;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    pub entities: Vec<EntityDef>,
    pub event_types: Vec<EventTypeDef>,
    pub features: Vec<FeatureDef>,
    /// A stable hash of everything above that a model can read (list features such as
    /// `recent_distinct` left out: no model column reads them): model artifacts record
    /// it so a change of definitions is noticed.
    pub fingerprint: u64,
    /// A stable hash of everything above: the layout of the engine's state, which
    /// snapshots and online-store records are checked against.
    #[serde(default)]
    pub state_fingerprint: u64,
}

/// Largest `k` of a `recent_distinct` feature.
pub const MAX_RECENT_K: u16 = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityDef {
    pub name: String,
    /// For a composite entity (e.g. user x product), its parts; empty for a plain one.
    pub parts: Vec<EntityTypeId>,
    /// An entity idle for longer than this (in event time) is evicted.
    pub ttl_ms: i64,
    /// Its first-seen times (`age_since_first`) outlive its window state this long,
    /// in a compact record: a customer back after months is not new. Left out of the
    /// fingerprint at the default, so definitions written before it keep theirs.
    #[serde(
        default = "default_identity_ttl_ms",
        skip_serializing_if = "is_default_identity_ttl"
    )]
    pub identity_ttl_ms: i64,
}

/// The default of [`EntityDef::identity_ttl_ms`]: 400 days, more than a year of
/// seasonal returns.
pub const DEFAULT_IDENTITY_TTL_MS: i64 = 400 * crate::time::DAY_MS;

fn default_identity_ttl_ms() -> i64 {
    DEFAULT_IDENTITY_TTL_MS
}

fn is_default_identity_ttl(ms: &i64) -> bool {
    *ms == DEFAULT_IDENTITY_TTL_MS
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventTypeDef {
    pub name: String,
    pub entities: Vec<EntitySlot>,
    pub numbers: Vec<NumberField>,
    pub strings: Vec<StringField>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitySlot {
    pub entity: EntityTypeId,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumberField {
    pub name: String,
    pub required: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StringField {
    pub name: String,
    pub required: bool,
    /// Values are trimmed and upper-cased at validation (`normalize = "upper"`).
    #[serde(default)]
    pub upper: bool,
    /// Only two-letter ISO 3166-1 codes are accepted (`format = "country"`). Left out
    /// of the fingerprint: it decides which events are accepted, not what any feature
    /// computes from them, so models trained before it keep loading.
    #[serde(default, skip_serializing)]
    pub country: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Aggregation {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    /// Population standard deviation (divides by n); 0 for a single event.
    Stddev,
    DistinctCount,
    /// The numeric field of the newest event (by event time; ties go to the later one).
    Last,
    /// Seconds from the newest matching event to the read time.
    TimeSinceLast,
    /// Seconds from the oldest matching event to the read time.
    AgeSinceFirst,
    /// The `k` most recent distinct values of a string field or entity in the window
    /// (e.g. the products a user viewed): a list, read with `recent` (its numeric
    /// value, the list's length, is for looking at, not for models).
    RecentDistinct,
}

impl Aggregation {
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::Sum => "sum",
            Aggregation::Mean => "mean",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::Stddev => "stddev",
            Aggregation::DistinctCount => "distinct_count",
            Aggregation::Last => "last",
            Aggregation::TimeSinceLast => "time_since_last",
            Aggregation::AgeSinceFirst => "age_since_first",
            Aggregation::RecentDistinct => "recent_distinct",
        }
    }

    pub const ALL: [Aggregation; 11] = [
        Aggregation::Count,
        Aggregation::Sum,
        Aggregation::Mean,
        Aggregation::Min,
        Aggregation::Max,
        Aggregation::Stddev,
        Aggregation::DistinctCount,
        Aggregation::Last,
        Aggregation::TimeSinceLast,
        Aggregation::AgeSinceFirst,
        Aggregation::RecentDistinct,
    ];

    /// Aggregations that keep one value per entity rather than tiles.
    pub fn is_lifetime_only(self) -> bool {
        matches!(
            self,
            Aggregation::Last | Aggregation::TimeSinceLast | Aggregation::AgeSinceFirst
        )
    }
}

/// Where a feature takes its value from, resolved per event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FieldSource {
    /// Index into the event type's `numbers`.
    Number(usize),
    /// Index into the event type's `strings`.
    Text(usize),
    /// Index into the event type's `entities` (e.g. distinct cards per device).
    Entity(usize),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDef {
    pub name: String,
    pub entity: EntityTypeId,
    /// The event types it aggregates, sorted.
    pub event_types: Vec<EventTypeId>,
    pub aggregation: Aggregation,
    /// The field's name, if the aggregation reads one.
    pub field: Option<String>,
    /// Per event type id: where the field is in that type (`None` for types not listed,
    /// or when the feature reads no field).
    pub sources: Vec<Option<FieldSource>>,
    pub window: Window,
    /// How many values a `recent_distinct` feature keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u16>,
}

impl FeatureDef {
    /// A list feature (`recent_distinct`): read with `recent`, never a model column.
    pub fn is_list(&self) -> bool {
        self.aggregation == Aggregation::RecentDistinct
    }
}

impl Definitions {
    /// The shipped shop definitions.
    pub fn default_shop() -> Definitions {
        // The shipped file is checked by a unit test, so parsing it cannot fail.
        Definitions::from_toml(DEFAULT_DEFINITIONS).expect("the shipped features.toml is valid")
    }

    pub fn from_toml(text: &str) -> Result<Definitions, DefinitionsError> {
        parse::parse(text)
    }

    pub fn load(path: &std::path::Path) -> Result<Definitions, DefinitionsError> {
        let text = std::fs::read_to_string(path).map_err(|error| DefinitionsError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        parse::parse(&text).map_err(|error| error.in_file(path))
    }

    pub fn entity_id(&self, name: &str) -> Option<EntityTypeId> {
        self.entities.iter().position(|e| e.name == name)
    }

    pub fn event_type_id(&self, name: &str) -> Option<EventTypeId> {
        self.event_types.iter().position(|e| e.name == name)
    }

    pub fn feature_id(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// Features of one entity type, in file order.
    pub fn features_of(&self, entity: EntityTypeId) -> impl Iterator<Item = (usize, &FeatureDef)> {
        self.features
            .iter()
            .enumerate()
            .filter(move |(_, f)| f.entity == entity)
    }
}

/// FNV-1a, 64 bit: small, fast on short keys, and stable across Rust versions, which
/// matters because its values are persisted (fingerprints, distinct-value hashes).
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// FNV-1a, 128 bit, for event-id dedup where a collision would drop a real event.
pub fn fnv128(bytes: &[u8]) -> u128 {
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in bytes {
        hash ^= u128::from(*byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    hash
}

#[cfg(test)]
mod tests;

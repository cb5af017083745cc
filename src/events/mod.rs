//! Commerce events: the raw form producers send (and the log and JSON lines keep), and
//! the validated form the feature engine applies.

pub mod file;
mod validate;

pub use validate::{Event, Limits, Refusal, RefusalKind, validate};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An event as sent: names, not indexes, so it stays readable in the log and in JSON
/// lines and survives a change of definitions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RawEvent {
    pub event_id: String,
    pub event_type: String,
    pub event_time_ms: i64,
    #[serde(default)]
    pub entities: BTreeMap<String, String>,
    #[serde(default)]
    pub numbers: BTreeMap<String, f64>,
    #[serde(default)]
    pub strings: BTreeMap<String, String>,
}

/// Joins the parts of a composite entity's id; ids may not contain it.
pub const COMPOSITE_SEPARATOR: char = '|';

//! Validation of raw events against the definitions: every refusal names the field and
//! the reason, so a producer can fix its event without reading server logs.

use smallvec::{SmallVec, smallvec};
use std::borrow::Cow;

use crate::config::IngestSettings;
use crate::definitions::{Definitions, EventTypeId, fnv128};

use super::{COMPOSITE_SEPARATOR, RawEvent};

/// The range of a number field that declares no `min` / `max`: +-1e12. Far beyond any
/// amount or quantity, yet small enough that the sums and squared deviations the engine
/// keeps over millions of events stay finite.
pub const NUMBER_BOUND: f64 = 1e12;

/// Validation limits from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How far an event may be stamped ahead of the server clock.
    pub max_future_skew_ms: i64,
    /// Longest event id, entity id or string field, in bytes.
    pub max_id_bytes: usize,
}

impl From<&IngestSettings> for Limits {
    /// What validation reads of the ingest settings: the clock skew and id length.
    fn from(ingest: &IngestSettings) -> Self {
        Limits {
            max_future_skew_ms: ingest.max_future_skew.0,
            max_id_bytes: ingest.max_id_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Invalid,
    Late,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub reason: String,
    pub kind: RefusalKind,
}

impl Refusal {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Refusal {
        Refusal {
            field: field.into(),
            reason: reason.into(),
            kind: RefusalKind::Invalid,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A validated event, borrowing from its [`RawEvent`]; slots are indexed like the event
/// type's declaration.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub id_hash: u128,
    pub type_id: EventTypeId,
    pub time_ms: i64,
    // Inline up to 8 slots: validation allocates nothing for a typical event.
    pub entities: SmallVec<[Option<&'a str>; 8]>,
    pub numbers: SmallVec<[Option<f64>; 8]>,
    /// Normalised where the field asks for it (`normalize = "upper"`), else borrowed.
    pub strings: SmallVec<[Option<Cow<'a, str>>; 8]>,
}

/// `value` trimmed and upper-cased, borrowed when it already is.
pub fn normalize_upper(value: &str) -> Cow<'_, str> {
    let trimmed = value.trim();
    if trimmed.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(trimmed.to_ascii_uppercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Two ASCII letters: the shape of an ISO 3166-1 alpha-2 code. (Which pairs are
/// assigned changes over time; the shape is what tells `DE` from `Germany` or `DEU`.)
fn is_country_code(value: &str) -> bool {
    value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic())
}

fn check_id(field: impl FnOnce() -> String, value: &str, limits: &Limits) -> Result<(), Refusal> {
    if value.is_empty() {
        return Err(Refusal::invalid(field(), "must not be empty"));
    }
    if value.len() > limits.max_id_bytes {
        return Err(Refusal::invalid(
            field(),
            format!(
                "is {} bytes; at most {} allowed",
                value.len(),
                limits.max_id_bytes
            ),
        ));
    }
    Ok(())
}

/// Checks `raw` against the definitions. `now_ms` is the server clock for the future-skew
/// check; replay passes `None` because the event was checked when it was accepted.
pub fn validate<'a>(
    definitions: &Definitions,
    limits: &Limits,
    raw: &'a RawEvent,
    now_ms: Option<i64>,
) -> Result<Event<'a>, Refusal> {
    check_id(|| "event_id".into(), &raw.event_id, limits)?;
    let type_id = definitions.event_type_id(&raw.event_type).ok_or_else(|| {
        let known: Vec<&str> = definitions
            .event_types
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        Refusal::invalid(
            "event_type",
            format!(
                "unknown event type '{}' (known: {})",
                raw.event_type,
                known.join(", ")
            ),
        )
    })?;
    let event_type = &definitions.event_types[type_id];
    let type_name = &event_type.name;

    if raw.event_time_ms <= 0 {
        return Err(Refusal::invalid(
            "event_time_ms",
            "must be a positive time in ms since the Unix epoch",
        ));
    }
    if let Some(now) = now_ms {
        let ahead = raw.event_time_ms.saturating_sub(now);
        if ahead > limits.max_future_skew_ms {
            return Err(Refusal::invalid(
                "event_time_ms",
                format!(
                    "is {ahead} ms ahead of the server clock; at most {} ms allowed",
                    limits.max_future_skew_ms
                ),
            ));
        }
    }

    let mut entities: SmallVec<[Option<&str>; 8]> = smallvec![None; event_type.entities.len()];
    for (name, id) in &raw.entities {
        let slot = event_type
            .entities
            .iter()
            .position(|slot| definitions.entities[slot.entity].name == *name)
            .ok_or_else(|| {
                let expected: Vec<&str> = event_type
                    .entities
                    .iter()
                    .map(|s| definitions.entities[s.entity].name.as_str())
                    .collect();
                Refusal::invalid(
                    format!("entities.{name}"),
                    format!(
                        "is not an entity of '{type_name}' (expected: {})",
                        expected.join(", ")
                    ),
                )
            })?;
        check_id(|| format!("entities.{name}"), id, limits)?;
        if id.contains(COMPOSITE_SEPARATOR) {
            return Err(Refusal::invalid(
                format!("entities.{name}"),
                format!("must not contain '{COMPOSITE_SEPARATOR}'"),
            ));
        }
        entities[slot] = Some(id.as_str());
    }
    for (slot, declared) in event_type.entities.iter().enumerate() {
        if declared.required && entities[slot].is_none() {
            let name = &definitions.entities[declared.entity].name;
            return Err(Refusal::invalid(
                format!("entities.{name}"),
                format!("is required for '{type_name}'"),
            ));
        }
    }

    let mut numbers: SmallVec<[Option<f64>; 8]> = smallvec![None; event_type.numbers.len()];
    for (name, value) in &raw.numbers {
        let Some(index) = event_type.numbers.iter().position(|f| f.name == *name) else {
            let reason = if event_type.strings.iter().any(|f| f.name == *name) {
                format!("is a string field of '{type_name}'; send it in strings")
            } else {
                format!("is not a number field of '{type_name}'")
            };
            return Err(Refusal::invalid(format!("numbers.{name}"), reason));
        };
        let field = &event_type.numbers[index];
        if !value.is_finite() {
            return Err(Refusal::invalid(
                format!("numbers.{name}"),
                format!("must be a finite number, got {value}"),
            ));
        }
        // Without a declared range a number is bounded anyway, so the sums and squares
        // kept per window stay finite (and a score built from them stays a number).
        let min = field.min.unwrap_or(-NUMBER_BOUND);
        let max = field.max.unwrap_or(NUMBER_BOUND);
        if *value < min {
            return Err(Refusal::invalid(
                format!("numbers.{name}"),
                format!("must be >= {min}, got {value}"),
            ));
        }
        if *value > max {
            return Err(Refusal::invalid(
                format!("numbers.{name}"),
                format!("must be <= {max}, got {value}"),
            ));
        }
        numbers[index] = Some(*value);
    }
    for (index, field) in event_type.numbers.iter().enumerate() {
        if field.required && numbers[index].is_none() {
            return Err(Refusal::invalid(
                format!("numbers.{}", field.name),
                format!("is required for '{type_name}'"),
            ));
        }
    }

    let mut strings: SmallVec<[Option<Cow<'_, str>>; 8]> =
        smallvec![None; event_type.strings.len()];
    for (name, value) in &raw.strings {
        let Some(index) = event_type.strings.iter().position(|f| f.name == *name) else {
            let reason = if event_type.numbers.iter().any(|f| f.name == *name) {
                format!("is a number field of '{type_name}'; send it in numbers")
            } else {
                format!("is not a string field of '{type_name}'")
            };
            return Err(Refusal::invalid(format!("strings.{name}"), reason));
        };
        if value.len() > limits.max_id_bytes {
            return Err(Refusal::invalid(
                format!("strings.{name}"),
                format!(
                    "is {} bytes; at most {} allowed",
                    value.len(),
                    limits.max_id_bytes
                ),
            ));
        }
        let value = if event_type.strings[index].upper {
            normalize_upper(value)
        } else {
            Cow::Borrowed(value.as_str())
        };
        if event_type.strings[index].country && !is_country_code(&value) {
            return Err(Refusal::invalid(
                format!("strings.{name}"),
                format!(
                    "'{}' is not a two-letter ISO 3166-1 country code (e.g. DE, US, GB)",
                    value.escape_debug().take(40).collect::<String>()
                ),
            ));
        }
        strings[index] = Some(value);
    }
    for (index, field) in event_type.strings.iter().enumerate() {
        if field.required && strings[index].is_none() {
            return Err(Refusal::invalid(
                format!("strings.{}", field.name),
                format!("is required for '{type_name}'"),
            ));
        }
    }

    Ok(Event {
        id_hash: fnv128(raw.event_id.as_bytes()),
        type_id,
        time_ms: raw.event_time_ms,
        entities,
        numbers,
        strings,
    })
}

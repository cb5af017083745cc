//! Reads a definitions TOML file into [`Definitions`], refusing anything that could not
//! work with an error that names the line and the problem.

use std::collections::BTreeMap;

/// The largest `min`/`max` magnitude a number field may declare.
const MAX_DECLARED_BOUND: f64 = 1e15;

use serde::Deserialize;
use toml::Spanned;

use super::window::Window;
use super::{
    Aggregation, Definitions, EntityDef, EntitySlot, EventTypeDef, FeatureDef, FieldSource,
    MAX_RECENT_K, NumberField, StringField, fnv64,
};
use crate::time::parse_duration_ms;

/// Event types are kept in a 64-bit mask per feature.
const MAX_EVENT_TYPES: usize = 64;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DefinitionsError {
    #[error("cannot read feature definitions {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{file}line {line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

impl DefinitionsError {
    pub(super) fn in_file(self, path: &std::path::Path) -> DefinitionsError {
        match self {
            DefinitionsError::Invalid { line, message, .. } => DefinitionsError::Invalid {
                file: format!("{}: ", path.display()),
                line,
                message,
            },
            other => other,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    entities: BTreeMap<String, Spanned<RawEntity>>,
    events: BTreeMap<String, Spanned<RawEventType>>,
    #[serde(default)]
    features: Vec<Spanned<RawFeature>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntity {
    #[serde(default)]
    parts: Vec<String>,
    ttl: Option<String>,
    identity_ttl: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Presence {
    Required,
    Optional,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEventType {
    #[serde(default)]
    entities: BTreeMap<String, Presence>,
    #[serde(default)]
    fields: BTreeMap<String, RawField>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum FieldKind {
    Number,
    String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    kind: FieldKind,
    #[serde(default)]
    required: bool,
    min: Option<f64>,
    max: Option<f64>,
    /// Strings only: "upper" trims and upper-cases values (country codes), so `de`,
    /// ` DE` and `DE` are one value.
    normalize: Option<String>,
    /// Strings only: "country" accepts two-letter ISO 3166-1 codes only (after
    /// `normalize`), so `Germany` is refused rather than counted as another country.
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    entity: String,
    events: Vec<String>,
    aggregation: String,
    field: Option<String>,
    window: Option<String>,
    windows: Option<Vec<String>>,
    /// `recent_distinct` only: how many values to keep.
    k: Option<u16>,
}

struct LineIndex<'a>(&'a str);

impl LineIndex<'_> {
    fn line(&self, offset: usize) -> usize {
        self.0.as_bytes()[..offset.min(self.0.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
}

fn invalid(line: usize, message: impl Into<String>) -> DefinitionsError {
    DefinitionsError::Invalid {
        file: String::new(),
        line,
        message: message.into(),
    }
}

fn check_name(kind: &str, name: &str, line: usize) -> Result<(), DefinitionsError> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if starts_well && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(())
    } else {
        Err(invalid(
            line,
            format!(
                "{kind} name '{name}' must be lowercase letters, digits and '_', starting with a letter"
            ),
        ))
    }
}

pub(super) fn parse(text: &str) -> Result<Definitions, DefinitionsError> {
    let lines = LineIndex(text);
    let raw: RawFile = toml::from_str(text).map_err(|error| {
        let line = error.span().map(|span| lines.line(span.start)).unwrap_or(1);
        invalid(line, error.message().trim().to_string())
    })?;

    let entities = resolve_entities(&raw, &lines)?;
    let event_types = resolve_event_types(&raw, &entities, &lines)?;
    let mut features = Vec::new();
    for raw_feature in &raw.features {
        let line = lines.line(raw_feature.span().start);
        features.extend(resolve_feature(
            raw_feature.get_ref(),
            line,
            &entities,
            &event_types,
        )?);
    }
    for (index, feature) in features.iter().enumerate() {
        if features[..index]
            .iter()
            .any(|other| other.name == feature.name)
        {
            let line = raw
                .features
                .iter()
                .rev()
                .find(|f| feature.name.starts_with(&f.get_ref().name))
                .map(|f| lines.line(f.span().start))
                .unwrap_or(1);
            return Err(invalid(
                line,
                format!("feature '{}' is defined twice", feature.name),
            ));
        }
    }
    let entities = with_default_ttls(entities, &features);

    let mut definitions = Definitions {
        entities,
        event_types,
        features,
        fingerprint: 0,
        state_fingerprint: 0,
    };
    let hash = |features: &[&FeatureDef]| {
        serde_json::to_vec(&(&definitions.entities, &definitions.event_types, features))
            .map(|canonical| fnv64(&canonical))
            .map_err(|error| invalid(1, format!("cannot fingerprint definitions: {error}")))
    };
    let all: Vec<&FeatureDef> = definitions.features.iter().collect();
    let readable: Vec<&FeatureDef> = all.iter().copied().filter(|f| !f.is_list()).collect();
    let (fingerprint, state_fingerprint) = (hash(&readable)?, hash(&all)?);
    definitions.fingerprint = fingerprint;
    definitions.state_fingerprint = state_fingerprint;
    Ok(definitions)
}

/// Entities with their declared TTL, or `None` where the default is to be derived.
type PendingEntity = (EntityDef, Option<i64>);

fn resolve_entities(
    raw: &RawFile,
    lines: &LineIndex,
) -> Result<Vec<PendingEntity>, DefinitionsError> {
    if raw.entities.is_empty() {
        return Err(invalid(1, "no [entities] are declared"));
    }
    let names: Vec<&String> = raw.entities.keys().collect();
    let mut entities = Vec::new();
    for (name, spanned) in &raw.entities {
        let line = lines.line(spanned.span().start);
        check_name("entity", name, line)?;
        let entity = spanned.get_ref();
        let mut parts = Vec::new();
        for part in &entity.parts {
            let index = names.iter().position(|n| *n == part).ok_or_else(|| {
                invalid(line, format!("entity '{name}' has unknown part '{part}'"))
            })?;
            if !raw.entities[part].get_ref().parts.is_empty() {
                return Err(invalid(
                    line,
                    format!("entity '{name}': part '{part}' is itself composite"),
                ));
            }
            if parts.contains(&index) {
                return Err(invalid(
                    line,
                    format!("entity '{name}' lists part '{part}' twice"),
                ));
            }
            parts.push(index);
        }
        if parts.len() == 1 {
            return Err(invalid(
                line,
                format!("composite entity '{name}' needs at least two parts"),
            ));
        }
        let ttl = match &entity.ttl {
            Some(text) => {
                let ms = parse_duration_ms(text)
                    .map_err(|reason| invalid(line, format!("entity '{name}' ttl: {reason}")))?;
                if ms <= 0 {
                    return Err(invalid(
                        line,
                        format!("entity '{name}' ttl must be positive"),
                    ));
                }
                Some(ms)
            }
            None => None,
        };
        let identity_ttl_ms = match &entity.identity_ttl {
            Some(text) => {
                let ms = parse_duration_ms(text).map_err(|reason| {
                    invalid(line, format!("entity '{name}' identity_ttl: {reason}"))
                })?;
                if ms <= 0 {
                    return Err(invalid(
                        line,
                        format!("entity '{name}' identity_ttl must be positive"),
                    ));
                }
                ms
            }
            None => super::DEFAULT_IDENTITY_TTL_MS,
        };
        entities.push((
            EntityDef {
                name: name.clone(),
                parts,
                ttl_ms: 0,
                identity_ttl_ms,
            },
            ttl,
        ));
    }
    Ok(entities)
}

fn resolve_event_types(
    raw: &RawFile,
    entities: &[PendingEntity],
    lines: &LineIndex,
) -> Result<Vec<EventTypeDef>, DefinitionsError> {
    if raw.events.is_empty() {
        return Err(invalid(1, "no [events] are declared"));
    }
    if raw.events.len() > MAX_EVENT_TYPES {
        return Err(invalid(
            1,
            format!("at most {MAX_EVENT_TYPES} event types are supported"),
        ));
    }
    let mut event_types = Vec::new();
    for (name, spanned) in &raw.events {
        let line = lines.line(spanned.span().start);
        check_name("event type", name, line)?;
        let raw_type = spanned.get_ref();
        if raw_type.entities.is_empty() {
            return Err(invalid(
                line,
                format!("event type '{name}' touches no entity"),
            ));
        }
        let mut slots = Vec::new();
        for (entity_name, presence) in &raw_type.entities {
            let entity = entities
                .iter()
                .position(|(e, _)| &e.name == entity_name)
                .ok_or_else(|| {
                    invalid(
                        line,
                        format!("event type '{name}' names unknown entity '{entity_name}'"),
                    )
                })?;
            if !entities[entity].0.parts.is_empty() {
                return Err(invalid(
                    line,
                    format!(
                        "event type '{name}': '{entity_name}' is composite; list its parts instead"
                    ),
                ));
            }
            slots.push(EntitySlot {
                entity,
                required: *presence == Presence::Required,
            });
        }
        let mut numbers = Vec::new();
        let mut strings = Vec::new();
        for (field_name, field) in &raw_type.fields {
            check_name("field", field_name, line)?;
            if raw_type.entities.contains_key(field_name) {
                return Err(invalid(
                    line,
                    format!("event type '{name}': field '{field_name}' has an entity's name"),
                ));
            }
            match field.kind {
                FieldKind::Number => {
                    if let Some(bound) = [field.min, field.max]
                        .into_iter()
                        .flatten()
                        .find(|b| !b.is_finite() || b.abs() > MAX_DECLARED_BOUND)
                    {
                        return Err(invalid(
                            line,
                            format!(
                                "field '{name}.{field_name}': min/max {bound} must be finite and within +-{MAX_DECLARED_BOUND:e}, so sums over a window stay finite"
                            ),
                        ));
                    }
                    if field.normalize.is_some() || field.format.is_some() {
                        return Err(invalid(
                            line,
                            format!(
                                "field '{name}.{field_name}': normalize and format apply to strings only"
                            ),
                        ));
                    }
                    if let (Some(min), Some(max)) = (field.min, field.max)
                        && min > max
                    {
                        return Err(invalid(
                            line,
                            format!("field '{name}.{field_name}': min {min} > max {max}"),
                        ));
                    }
                    numbers.push(NumberField {
                        name: field_name.clone(),
                        required: field.required,
                        min: field.min,
                        max: field.max,
                    });
                }
                FieldKind::String => {
                    if field.min.is_some() || field.max.is_some() {
                        return Err(invalid(
                            line,
                            format!("field '{name}.{field_name}': min/max apply to numbers only"),
                        ));
                    }
                    let upper = match field.normalize.as_deref() {
                        None => false,
                        Some("upper") => true,
                        Some(other) => {
                            return Err(invalid(
                                line,
                                format!(
                                    "field '{name}.{field_name}': normalize = '{other}' is not known (known: upper)"
                                ),
                            ));
                        }
                    };
                    let country = match field.format.as_deref() {
                        None => false,
                        Some("country") => true,
                        Some(other) => {
                            return Err(invalid(
                                line,
                                format!(
                                    "field '{name}.{field_name}': format = '{other}' is not known (known: country)"
                                ),
                            ));
                        }
                    };
                    strings.push(StringField {
                        name: field_name.clone(),
                        required: field.required,
                        upper,
                        country,
                    });
                }
            }
        }
        event_types.push(EventTypeDef {
            name: name.clone(),
            entities: slots,
            numbers,
            strings,
        });
    }
    Ok(event_types)
}

fn parse_aggregation(text: &str, line: usize) -> Result<Aggregation, DefinitionsError> {
    Aggregation::ALL
        .into_iter()
        .find(|a| a.name() == text)
        .ok_or_else(|| {
            let known: Vec<&str> = Aggregation::ALL.iter().map(|a| a.name()).collect();
            invalid(
                line,
                format!("unknown aggregation '{text}' (known: {})", known.join(", ")),
            )
        })
}

fn parse_window(text: &str, line: usize, feature: &str) -> Result<Window, DefinitionsError> {
    if text == "lifetime" {
        return Ok(Window::Lifetime);
    }
    let ms = parse_duration_ms(text)
        .map_err(|reason| invalid(line, format!("feature '{feature}': {reason}")))?;
    Window::sliding(ms).map_err(|reason| invalid(line, format!("feature '{feature}': {reason}")))
}

fn resolve_feature(
    raw: &RawFeature,
    line: usize,
    entities: &[PendingEntity],
    event_types: &[EventTypeDef],
) -> Result<Vec<FeatureDef>, DefinitionsError> {
    let name = &raw.name;
    check_name("feature", name, line)?;
    let entity = entities
        .iter()
        .position(|(e, _)| e.name == raw.entity)
        .ok_or_else(|| {
            invalid(
                line,
                format!("feature '{name}': unknown entity '{}'", raw.entity),
            )
        })?;
    let aggregation = parse_aggregation(&raw.aggregation, line)?;
    if raw.events.is_empty() {
        return Err(invalid(
            line,
            format!("feature '{name}': 'events' must list at least one event type"),
        ));
    }
    let parts: Vec<usize> = match entities[entity].0.parts.as_slice() {
        [] => vec![entity],
        parts => parts.to_vec(),
    };

    let mut types = Vec::new();
    for event_name in &raw.events {
        let type_id = event_types
            .iter()
            .position(|t| &t.name == event_name)
            .ok_or_else(|| {
                invalid(
                    line,
                    format!("feature '{name}': unknown event type '{event_name}'"),
                )
            })?;
        let touches = parts.iter().all(|part| {
            event_types[type_id]
                .entities
                .iter()
                .any(|slot| slot.entity == *part)
        });
        if !touches {
            return Err(invalid(
                line,
                format!(
                    "feature '{name}': event type '{event_name}' does not carry entity '{}'",
                    raw.entity
                ),
            ));
        }
        if !types.contains(&type_id) {
            types.push(type_id);
        }
    }
    types.sort_unstable();

    let mut sources = vec![None; event_types.len()];
    match (&raw.field, aggregation) {
        (Some(field), Aggregation::TimeSinceLast | Aggregation::AgeSinceFirst) => {
            return Err(invalid(
                line,
                format!(
                    "feature '{name}': {} takes no field, got '{field}'",
                    aggregation.name()
                ),
            ));
        }
        (None, Aggregation::Count | Aggregation::TimeSinceLast | Aggregation::AgeSinceFirst) => {}
        (None, _) => {
            return Err(invalid(
                line,
                format!("feature '{name}': {} needs a 'field'", aggregation.name()),
            ));
        }
        (Some(field), _) => {
            for &type_id in &types {
                sources[type_id] = Some(resolve_source(
                    name,
                    field,
                    aggregation,
                    &event_types[type_id],
                    entities,
                    line,
                )?);
            }
        }
    }

    // Each window with the name of the feature it makes: `windows` adds the window as
    // written in the file, so `24h` names `_24h`, not `_1d`.
    let windows: Vec<(String, Window)> = match (&raw.window, &raw.windows) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                line,
                format!("feature '{name}': give 'window' or 'windows', not both"),
            ));
        }
        (Some(window), None) => vec![(name.clone(), parse_window(window, line, name)?)],
        (None, Some(list)) if list.is_empty() => {
            return Err(invalid(
                line,
                format!("feature '{name}': 'windows' is empty"),
            ));
        }
        (None, Some(list)) => list
            .iter()
            .map(|w| Ok((format!("{name}_{}", w.trim()), parse_window(w, line, name)?)))
            .collect::<Result<_, DefinitionsError>>()?,
        (None, None) if aggregation.is_lifetime_only() => vec![(name.clone(), Window::Lifetime)],
        (None, None) => {
            return Err(invalid(
                line,
                format!("feature '{name}': needs a 'window' (e.g. \"24h\" or \"lifetime\")"),
            ));
        }
    };
    for (_, window) in &windows {
        if aggregation.is_lifetime_only() && *window != Window::Lifetime {
            return Err(invalid(
                line,
                format!(
                    "feature '{name}': {} is over the entity's lifetime; drop the window",
                    aggregation.name()
                ),
            ));
        }
        if matches!(
            aggregation,
            Aggregation::DistinctCount | Aggregation::RecentDistinct
        ) && *window == Window::Lifetime
        {
            return Err(invalid(
                line,
                format!(
                    "feature '{name}': {} needs a bounded window so memory stays bounded",
                    aggregation.name()
                ),
            ));
        }
    }
    let k = match (aggregation, raw.k) {
        (Aggregation::RecentDistinct, Some(k)) if (1..=MAX_RECENT_K).contains(&k) => Some(k),
        (Aggregation::RecentDistinct, Some(k)) => {
            return Err(invalid(
                line,
                format!("feature '{name}': k must be 1 to {MAX_RECENT_K}, got {k}"),
            ));
        }
        (Aggregation::RecentDistinct, None) => {
            return Err(invalid(
                line,
                format!("feature '{name}': recent_distinct needs 'k', how many values to keep"),
            ));
        }
        (_, Some(_)) => {
            return Err(invalid(
                line,
                format!(
                    "feature '{name}': 'k' is for recent_distinct, not {}",
                    aggregation.name()
                ),
            ));
        }
        (_, None) => None,
    };

    Ok(windows
        .into_iter()
        .map(|(name, window)| FeatureDef {
            name,
            entity,
            event_types: types.clone(),
            aggregation,
            field: raw.field.clone(),
            sources: sources.clone(),
            window,
            k,
        })
        .collect())
}

fn resolve_source(
    feature: &str,
    field: &str,
    aggregation: Aggregation,
    event_type: &EventTypeDef,
    entities: &[PendingEntity],
    line: usize,
) -> Result<FieldSource, DefinitionsError> {
    let number = event_type
        .numbers
        .iter()
        .position(|f| f.name == field)
        .map(FieldSource::Number);
    let text = event_type
        .strings
        .iter()
        .position(|f| f.name == field)
        .map(FieldSource::Text);
    let entity = event_type
        .entities
        .iter()
        .position(|slot| entities[slot.entity].0.name == field)
        .map(FieldSource::Entity);
    let event = &event_type.name;
    match aggregation {
        Aggregation::Count => number.or(text).or(entity).ok_or_else(|| {
            invalid(line, format!("feature '{feature}': event type '{event}' has no field or entity '{field}'"))
        }),
        Aggregation::DistinctCount | Aggregation::RecentDistinct => text.or(entity).ok_or_else(|| {
            invalid(line, format!("feature '{feature}': event type '{event}' has no string field or entity '{field}' to {} values of", if aggregation == Aggregation::DistinctCount { "count distinct" } else { "keep the recent" }))
        }),
        _ => number.ok_or_else(|| {
            invalid(line, format!("feature '{feature}': {} needs a number field, and event type '{event}' has no number field '{field}'", aggregation.name()))
        }),
    }
}

fn with_default_ttls(entities: Vec<PendingEntity>, features: &[FeatureDef]) -> Vec<EntityDef> {
    entities
        .into_iter()
        .enumerate()
        .map(|(index, (mut entity, ttl))| {
            let longest = features
                .iter()
                .filter(|f| f.entity == index)
                .filter_map(|f| f.window.length_ms())
                .max();
            entity.ttl_ms = ttl.or(longest).unwrap_or(i64::MAX);
            entity
        })
        .collect()
}

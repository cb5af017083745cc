//! A deliberately simple model of the feature semantics documented in
//! `src/definitions/window.rs` and `src/features/engine.rs`: it keeps every accepted event
//! and answers each read with plain loops. No tiles, no sharing, no pruning. A read as of
//! `t` sees the events stamped at or before `t` and nothing later; it is refused when `t`
//! is older than `watermark - allowed_lateness`, or older than what the engine keeps
//! apart for that entity (its newest `MAX_PENDING_EVENTS` events, see `pending`).
//! Distinct counts are exact while a series holds at most `MAX_EXACT_DISTINCT` (value,
//! tile) entries, then estimated; the generated histories stay far below that.

use std::collections::{BTreeSet, HashMap};

use streamscore::definitions::{Aggregation, Definitions, FeatureDef};
use streamscore::events::RawEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Late,
}

struct Accepted {
    event: RawEvent,
    /// The watermark right after this event was applied.
    watermark_after: i64,
}

pub struct Naive {
    definitions: Definitions,
    lateness_ms: i64,
    horizon_ms: i64,
    watermark_ms: i64,
    seen: HashMap<String, i64>,
    accepted: Vec<Accepted>,
    by_entity: HashMap<(usize, String), Vec<usize>>,
    pending: HashMap<(usize, String), Pending>,
}

/// The documented rule for as-of reads of one entity: its events not older than
/// `watermark - lateness` (at its last event) are kept apart, at most
/// `MAX_PENDING_EVENTS` of them; when more arrive the oldest (by time, then arrival) are
/// merged in, and reads before the newest merged one are refused from then on.
#[derive(Default)]
struct Pending {
    /// (event time, arrival index) of the events kept apart.
    events: Vec<(i64, usize)>,
    exact_from_ms: i64,
    last_seen_ms: i64,
}

/// Why the naive model refuses a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Older than `watermark - lateness`.
    TooOld,
    /// Older than the entity's events kept apart.
    TooOldForEntity,
}

/// Tile size by the documented rule: the largest whole number of seconds dividing the
/// window that is at most 1/24 of it.
fn tile_ms(window_ms: i64) -> i64 {
    let seconds = window_ms / 1000;
    (1..=seconds / 24)
        .rev()
        .find(|d| seconds % d == 0)
        .unwrap_or(1)
        * 1000
}

impl Naive {
    pub fn new(definitions: Definitions, lateness_ms: i64, horizon_ms: i64) -> Naive {
        Naive {
            definitions,
            lateness_ms,
            horizon_ms,
            watermark_ms: 0,
            seen: HashMap::new(),
            accepted: Vec::new(),
            by_entity: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    /// Offers a valid event, as the engine's admit + apply would see it.
    pub fn offer(&mut self, event: &RawEvent) -> Outcome {
        if self
            .seen
            .get(&event.event_id)
            .is_some_and(|t| *t >= self.watermark_ms - self.horizon_ms)
        {
            return Outcome::Duplicate;
        }
        if event.event_time_ms < self.watermark_ms - self.lateness_ms {
            return Outcome::Late;
        }
        self.watermark_ms = self.watermark_ms.max(event.event_time_ms);
        let seen = self
            .seen
            .entry(event.event_id.clone())
            .or_insert(event.event_time_ms);
        *seen = (*seen).max(event.event_time_ms);
        let index = self.accepted.len();
        self.accepted.push(Accepted {
            event: event.clone(),
            watermark_after: self.watermark_ms,
        });
        for (entity, definition) in self.definitions.entities.iter().enumerate() {
            let parts: Vec<&str> = if definition.parts.is_empty() {
                vec![definition.name.as_str()]
            } else {
                definition
                    .parts
                    .iter()
                    .map(|p| self.definitions.entities[*p].name.as_str())
                    .collect()
            };
            let ids: Option<Vec<&str>> = parts
                .iter()
                .map(|p| event.entities.get(*p).map(String::as_str))
                .collect();
            if let Some(ids) = ids {
                let key = (entity, ids.join("|"));
                self.by_entity.entry(key.clone()).or_default().push(index);
                if self.definitions.features.iter().any(|f| f.entity == entity) {
                    let margin = self.expiry_margin(entity);
                    let watermark = self.watermark_ms;
                    let lateness = self.lateness_ms;
                    let pending = self.pending.entry(key).or_default();
                    if !pending.events.is_empty() || pending.last_seen_ms != 0 {
                        // An expired entity starts afresh.
                        if pending.last_seen_ms < watermark.saturating_sub(margin) {
                            *pending = Pending::default();
                        }
                    }
                    pending.last_seen_ms = pending.last_seen_ms.max(event.event_time_ms);
                    pending.events.push((event.event_time_ms, index));
                    pending.events.sort();
                    pending
                        .events
                        .retain(|(time, _)| *time >= watermark - lateness);
                    let max = streamscore::features::MAX_PENDING_EVENTS;
                    if pending.events.len() > max {
                        let merged = pending.events.len() - max;
                        let newest_merged = pending.events[merged - 1].0;
                        pending.exact_from_ms = pending.exact_from_ms.max(newest_merged);
                        pending.events.drain(..merged);
                    }
                }
            }
        }
        Outcome::Applied
    }

    fn expiry_margin(&self, entity: usize) -> i64 {
        let longest_tile = self
            .definitions
            .features
            .iter()
            .filter(|f| f.entity == entity)
            .filter_map(|f| f.window.length_ms().map(tile_ms))
            .max()
            .unwrap_or(0);
        self.lateness_ms
            .saturating_add(self.definitions.entities[entity].ttl_ms)
            .saturating_add(longest_tile)
    }

    /// The identity margin: first-seen times outlive the window state by the entity's
    /// `identity_ttl` (at least its ttl), with the same lateness and tile slack.
    fn identity_margin(&self, entity: usize) -> i64 {
        let definition = &self.definitions.entities[entity];
        self.expiry_margin(entity)
            .saturating_sub(definition.ttl_ms)
            .saturating_add(definition.identity_ttl_ms.max(definition.ttl_ms))
    }

    /// The events of an entity since its last expiry, or `None` if it is unknown now.
    fn live_history(&self, entity: usize, id: &str) -> Option<Vec<&RawEvent>> {
        self.history_within(entity, id, self.expiry_margin(entity))
    }

    /// The events of an entity since it was last forgotten whole (first-seen times
    /// included), or `None` if even those are gone now.
    fn identity_history(&self, entity: usize, id: &str) -> Option<Vec<&RawEvent>> {
        self.history_within(entity, id, self.identity_margin(entity))
    }

    /// The events since the last gap longer than `margin` behind the watermark, if the
    /// entity is within `margin` now.
    fn history_within(&self, entity: usize, id: &str, margin: i64) -> Option<Vec<&RawEvent>> {
        let indexes = self.by_entity.get(&(entity, id.to_string()))?;
        let mut history: Vec<&RawEvent> = Vec::new();
        let mut last_seen = i64::MIN;
        for &index in indexes {
            let accepted = &self.accepted[index];
            // Mirrors the documented rule: an entity is expired when its newest event is
            // older than `watermark - lateness - ttl - longest tile`.
            if !history.is_empty() && last_seen < accepted.watermark_after.saturating_sub(margin) {
                history.clear();
                last_seen = i64::MIN;
            }
            history.push(&accepted.event);
            last_seen = last_seen.max(accepted.event.event_time_ms);
        }
        (last_seen >= self.watermark_ms.saturating_sub(margin)).then_some(history)
    }

    /// Whether the entity is known, and the feature's value, at `at_ms`; or why the read
    /// is refused.
    pub fn read_as_of(
        &self,
        feature: &FeatureDef,
        id: &str,
        at_ms: i64,
    ) -> Result<(bool, Option<f64>), Refused> {
        if at_ms < self.watermark_ms - self.lateness_ms {
            return Err(Refused::TooOld);
        }
        let (known, value) = self.read(feature, id, at_ms);
        let exact_from = self
            .pending
            .get(&(feature.entity, id.to_string()))
            .map_or(0, |p| p.exact_from_ms);
        if known && at_ms < exact_from {
            return Err(Refused::TooOldForEntity);
        }
        Ok((known, value))
    }

    /// Whether the entity is known, and the feature's value, at `at_ms` (no refusals).
    pub fn read(&self, feature: &FeatureDef, id: &str, at_ms: i64) -> (bool, Option<f64>) {
        let history = self.live_history(feature.entity, id);
        let known = history.is_some();
        let history = history.unwrap_or_default();
        let types: Vec<&str> = feature
            .event_types
            .iter()
            .map(|t| self.definitions.event_types[*t].name.as_str())
            .collect();
        let in_window = |time: i64| match feature.window.length_ms() {
            None => time <= at_ms,
            Some(length) => {
                let tile = tile_ms(length);
                let newest = at_ms.div_euclid(tile);
                let oldest = newest - length / tile;
                let event_tile = time.div_euclid(tile);
                event_tile >= oldest && event_tile <= newest && time <= at_ms
            }
        };
        let events: Vec<&RawEvent> = history
            .into_iter()
            .filter(|e| types.contains(&e.event_type.as_str()) && in_window(e.event_time_ms))
            .collect();
        let field = feature.field.as_deref();
        let numbers: Vec<f64> = events
            .iter()
            .filter_map(|e| field.and_then(|f| e.numbers.get(f).copied()))
            .collect();
        let value = match feature.aggregation {
            Aggregation::Count => Some(match field {
                None => events.len() as f64,
                Some(f) => events
                    .iter()
                    .filter(|e| {
                        e.numbers.contains_key(f)
                            || e.strings.contains_key(f)
                            || e.entities.contains_key(f)
                    })
                    .count() as f64,
            }),
            Aggregation::Sum => Some(numbers.iter().sum()),
            Aggregation::Mean => {
                (!numbers.is_empty()).then(|| numbers.iter().sum::<f64>() / numbers.len() as f64)
            }
            Aggregation::Min => numbers.iter().copied().reduce(f64::min),
            Aggregation::Max => numbers.iter().copied().reduce(f64::max),
            Aggregation::Stddev => (!numbers.is_empty()).then(|| {
                let mean = numbers.iter().sum::<f64>() / numbers.len() as f64;
                (numbers.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>()
                    / numbers.len() as f64)
                    .sqrt()
            }),
            Aggregation::DistinctCount => {
                let f = field.expect("distinct_count has a field");
                // The spec: a string field declared `normalize = "upper"` counts its
                // values trimmed and upper-cased.
                let upper = |e: &RawEvent| {
                    self.definitions.event_types.iter().any(|t| {
                        t.name == e.event_type && t.strings.iter().any(|s| s.name == f && s.upper)
                    })
                };
                let values: BTreeSet<String> = events
                    .iter()
                    .filter_map(|e| {
                        let value = e.strings.get(f).or_else(|| e.entities.get(f))?;
                        Some(if upper(e) && e.strings.contains_key(f) {
                            value.trim().to_uppercase()
                        } else {
                            value.clone()
                        })
                    })
                    .collect();
                Some(values.len() as f64)
            }
            // Its value is the list's length: the distinct values in the window, at
            // most k of them.
            Aggregation::RecentDistinct => {
                let f = field.expect("recent_distinct has a field");
                let values: BTreeSet<&String> = events
                    .iter()
                    .filter_map(|e| e.strings.get(f).or_else(|| e.entities.get(f)))
                    .collect();
                let k = usize::from(feature.k.expect("recent_distinct has k"));
                Some(values.len().min(k) as f64)
            }
            Aggregation::Last => {
                let f = field.expect("last has a field");
                let mut best: Option<(i64, f64)> = None;
                for event in &events {
                    if let Some(value) = event.numbers.get(f)
                        && best.is_none_or(|(time, _)| event.event_time_ms >= time)
                    {
                        best = Some((event.event_time_ms, *value));
                    }
                }
                best.map(|(_, value)| value)
            }
            Aggregation::TimeSinceLast => events
                .iter()
                .map(|e| e.event_time_ms)
                .max()
                .map(|t| (at_ms - t) as f64 / 1000.0),
            // First-seen outlives the window state (identity_ttl).
            Aggregation::AgeSinceFirst => self
                .identity_history(feature.entity, id)
                .unwrap_or_default()
                .iter()
                .filter(|e| types.contains(&e.event_type.as_str()) && e.event_time_ms <= at_ms)
                .map(|e| e.event_time_ms)
                .min()
                .map(|t| (at_ms - t) as f64 / 1000.0),
        };
        (known, value)
    }
}

/// The naive model of the shipped definitions and default settings over `events`, each
/// of which must be applied.
pub fn over_default_shop(events: &[RawEvent]) -> Naive {
    let defaults = streamscore::config::Settings::default();
    let mut naive = Naive::new(
        Definitions::default_shop(),
        defaults.ingest.allowed_lateness.0,
        defaults.ingest.dedup_horizon.0,
    );
    for event in events {
        assert_eq!(naive.offer(event), Outcome::Applied);
    }
    naive
}

/// Float comparison for feature values: sums over tiles add in another order than a
/// plain loop, so equal means equal to 1e-9 relative (or 1e-9 absolute near zero).
pub fn same_value(engine: Option<f64>, naive: Option<f64>) -> bool {
    match (engine, naive) {
        (None, None) => true,
        (Some(a), Some(b)) => approx::relative_eq!(a, b, epsilon = 1e-9, max_relative = 1e-9),
        _ => false,
    }
}

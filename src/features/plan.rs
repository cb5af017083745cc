//! Turns the features of one entity type into the state the engine keeps for it: tile
//! series shared between features that aggregate the same events over the same window
//! (count, sum, mean, stddev of payments over 24h are one series), and per-entity slots
//! for the lifetime aggregations.

use crate::definitions::{Aggregation, Definitions, EntityTypeId, FieldSource};

use crate::definitions::Window;

/// One tile series: which event types feed it, where its field is per event type, and
/// its window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesDef {
    pub mask: u64,
    pub sources: Vec<Option<FieldSource>>,
    pub has_field: bool,
    pub window: Window,
}

/// A lifetime slot: the newest (or oldest) matching event, with its field if any.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlotDef {
    pub mask: u64,
    pub sources: Vec<Option<FieldSource>>,
    pub has_field: bool,
}

/// A `recent_distinct` list: the `k` newest distinct values in its window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecentDef {
    pub mask: u64,
    pub sources: Vec<Option<FieldSource>>,
    pub window: Window,
    pub k: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Reader {
    Count(usize),
    Stats(usize, Aggregation),
    Distinct(usize),
    Last(usize),
    TimeSinceLast(usize),
    AgeSinceFirst(usize),
    /// The length of a recent list (its index, its `k`).
    Recent(usize, usize),
}

#[derive(Debug, Clone)]
pub(crate) struct EntityPlan {
    pub count_series: Vec<SeriesDef>,
    pub stats_series: Vec<SeriesDef>,
    pub distinct_series: Vec<SeriesDef>,
    pub last_slots: Vec<SlotDef>,
    pub first_slots: Vec<SlotDef>,
    pub recent_lists: Vec<RecentDef>,
    /// Per feature id of the definitions: how to read it, if it belongs to this entity.
    pub readers: Vec<Option<Reader>>,
    /// The feature ids of this entity type, in file order.
    pub features: Vec<usize>,
    /// Per event type: the series and slots it feeds (so apply skips the rest).
    pub by_type: Vec<TypeRoutes>,
    /// For each event type that touches the entity: the entity slots forming its key.
    pub key_slots: Vec<Option<Vec<usize>>>,
    pub ttl_ms: i64,
    /// First-seen times are kept this long after the last event (at least `ttl_ms`).
    pub identity_ttl_ms: i64,
    pub longest_tile_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TypeRoutes {
    pub counts: Vec<usize>,
    pub stats: Vec<usize>,
    pub distinct: Vec<usize>,
    pub lasts: Vec<usize>,
    pub firsts: Vec<usize>,
    pub recents: Vec<usize>,
}

fn find_or_push<T: PartialEq>(list: &mut Vec<T>, item: T) -> usize {
    match list.iter().position(|existing| *existing == item) {
        Some(index) => index,
        None => {
            list.push(item);
            list.len() - 1
        }
    }
}

impl EntityPlan {
    /// The plan for `entity`, or `None` if no feature is kept for it.
    pub fn build(definitions: &Definitions, entity: EntityTypeId) -> Option<EntityPlan> {
        let features: Vec<usize> = definitions.features_of(entity).map(|(id, _)| id).collect();
        if features.is_empty() {
            return None;
        }
        let type_count = definitions.event_types.len();
        let mut plan = EntityPlan {
            count_series: Vec::new(),
            stats_series: Vec::new(),
            distinct_series: Vec::new(),
            last_slots: Vec::new(),
            first_slots: Vec::new(),
            recent_lists: Vec::new(),
            readers: vec![None; definitions.features.len()],
            features: features.clone(),
            by_type: vec![TypeRoutes::default(); type_count],
            key_slots: vec![None; type_count],
            ttl_ms: definitions.entities[entity].ttl_ms,
            identity_ttl_ms: definitions.entities[entity]
                .identity_ttl_ms
                .max(definitions.entities[entity].ttl_ms),
            longest_tile_ms: 0,
        };

        // Numeric series first, so a plain count can ride on a series over a required field.
        for &id in &features {
            let feature = &definitions.features[id];
            if matches!(
                feature.aggregation,
                Aggregation::Sum
                    | Aggregation::Mean
                    | Aggregation::Min
                    | Aggregation::Max
                    | Aggregation::Stddev
            ) || (feature.aggregation == Aggregation::Count
                && feature
                    .sources
                    .iter()
                    .any(|s| matches!(s, Some(FieldSource::Number(_)))))
            {
                let series = SeriesDef {
                    mask: mask_of(&feature.event_types),
                    sources: feature.sources.clone(),
                    has_field: true,
                    window: feature.window,
                };
                let index = find_or_push(&mut plan.stats_series, series);
                plan.readers[id] = Some(Reader::Stats(index, feature.aggregation));
            }
        }
        for &id in &features {
            let feature = &definitions.features[id];
            let mask = mask_of(&feature.event_types);
            let reader = match feature.aggregation {
                Aggregation::Count if plan.readers[id].is_none() => {
                    let covering = feature.field.is_none().then(|| {
                        plan.stats_series.iter().position(|s| {
                            s.mask == mask
                                && s.window == feature.window
                                && feature
                                    .event_types
                                    .iter()
                                    .all(|&t| required_number(definitions, t, s.sources[t]))
                        })
                    });
                    match covering.flatten() {
                        Some(index) => Reader::Stats(index, Aggregation::Count),
                        None => {
                            let series = SeriesDef {
                                mask,
                                sources: feature.sources.clone(),
                                has_field: feature.field.is_some(),
                                window: feature.window,
                            };
                            Reader::Count(find_or_push(&mut plan.count_series, series))
                        }
                    }
                }
                Aggregation::DistinctCount => {
                    let series = SeriesDef {
                        mask,
                        sources: feature.sources.clone(),
                        has_field: true,
                        window: feature.window,
                    };
                    Reader::Distinct(find_or_push(&mut plan.distinct_series, series))
                }
                Aggregation::Last => {
                    let slot = SlotDef {
                        mask,
                        sources: feature.sources.clone(),
                        has_field: true,
                    };
                    Reader::Last(find_or_push(&mut plan.last_slots, slot))
                }
                Aggregation::TimeSinceLast => {
                    let slot = SlotDef {
                        mask,
                        sources: vec![None; type_count],
                        has_field: false,
                    };
                    Reader::TimeSinceLast(find_or_push(&mut plan.last_slots, slot))
                }
                Aggregation::AgeSinceFirst => {
                    let slot = SlotDef {
                        mask,
                        sources: vec![None; type_count],
                        has_field: false,
                    };
                    Reader::AgeSinceFirst(find_or_push(&mut plan.first_slots, slot))
                }
                Aggregation::RecentDistinct => {
                    let k = usize::from(feature.k.unwrap_or(1));
                    let list = RecentDef {
                        mask,
                        sources: feature.sources.clone(),
                        window: feature.window,
                        k,
                    };
                    Reader::Recent(find_or_push(&mut plan.recent_lists, list), k)
                }
                _ => continue,
            };
            plan.readers[id] = Some(reader);
        }

        for (type_id, routes) in plan.by_type.iter_mut().enumerate() {
            let bit = 1u64 << type_id;
            let feeds = |mask: u64| mask & bit != 0;
            routes.counts = (0..plan.count_series.len())
                .filter(|&i| feeds(plan.count_series[i].mask))
                .collect();
            routes.stats = (0..plan.stats_series.len())
                .filter(|&i| feeds(plan.stats_series[i].mask))
                .collect();
            routes.distinct = (0..plan.distinct_series.len())
                .filter(|&i| feeds(plan.distinct_series[i].mask))
                .collect();
            routes.lasts = (0..plan.last_slots.len())
                .filter(|&i| feeds(plan.last_slots[i].mask))
                .collect();
            routes.firsts = (0..plan.first_slots.len())
                .filter(|&i| feeds(plan.first_slots[i].mask))
                .collect();
            routes.recents = (0..plan.recent_lists.len())
                .filter(|&i| feeds(plan.recent_lists[i].mask))
                .collect();
        }

        let parts: Vec<EntityTypeId> = match definitions.entities[entity].parts.as_slice() {
            [] => vec![entity],
            parts => parts.to_vec(),
        };
        for (type_id, event_type) in definitions.event_types.iter().enumerate() {
            let slots: Option<Vec<usize>> = parts
                .iter()
                .map(|part| {
                    event_type
                        .entities
                        .iter()
                        .position(|slot| slot.entity == *part)
                })
                .collect();
            plan.key_slots[type_id] = slots;
        }

        plan.longest_tile_ms = plan
            .count_series
            .iter()
            .chain(&plan.stats_series)
            .chain(&plan.distinct_series)
            .filter_map(|s| s.window.tile_ms())
            .max()
            .unwrap_or(0);
        Some(plan)
    }
}

fn mask_of(types: &[usize]) -> u64 {
    types.iter().fold(0, |mask, t| mask | (1u64 << t))
}

fn required_number(definitions: &Definitions, type_id: usize, source: Option<FieldSource>) -> bool {
    match source {
        Some(FieldSource::Number(index)) => {
            definitions.event_types[type_id].numbers[index].required
        }
        _ => false,
    }
}

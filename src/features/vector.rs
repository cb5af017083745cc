//! Model input vectors: the values of a model's columns for one event (a payment being
//! scored, a page view being observed), read from the engine as it stands plus the
//! request-time features. Training and serving both build vectors here, so a model is
//! fed the same numbers offline and online (no training/serving skew).

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::definitions::{Definitions, EntityTypeId};
use crate::events::{COMPOSITE_SEPARATOR, RawEvent};
use crate::features::request::{REQUEST_FEATURES, USER_MEAN_FEATURE, request_features};
use crate::features::{EntityReads, FeatureRead, ReadError};

/// One entity type's share of the columns.
#[derive(Debug, Clone)]
struct EntityColumns {
    entity: EntityTypeId,
    features: Vec<usize>,
    /// The column of each feature; `None` for a feature read only as an input of a
    /// request-time feature.
    columns: Vec<Option<usize>>,
}

/// Where each column of a model comes from, resolved once per model.
#[derive(Debug, Clone)]
pub struct VectorPlan {
    width: usize,
    entities: Vec<EntityColumns>,
    /// (index in [`REQUEST_FEATURES`], column).
    request: Vec<(usize, usize)>,
    /// (slot in `entities`, position) of the user's 30-day mean amount.
    user_mean: Option<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("features not defined in the running definitions: {0:?}")]
    UnknownFeatures(Vec<String>),
    #[error("the request-time features need the stored feature '{USER_MEAN_FEATURE}'")]
    MissingUserMean,
    #[error("list features (recent_distinct) cannot be model columns: {0:?}")]
    ListFeatures(Vec<String>),
}

/// An entity read: (entity id, time) and what the engine answered.
type CachedRead = ((String, i64), FeatureRead);

/// The last read of each entity slot.
#[derive(Default)]
struct ReadCache {
    slots: Vec<Option<CachedRead>>,
}

/// Reads vectors of one plan, reusing entity reads between them (see
/// [`VectorPlan::cached_reads`]).
pub struct CachedReads<'p> {
    plan: &'p VectorPlan,
    cache: ReadCache,
}

impl CachedReads<'_> {
    /// [`VectorPlan::read`], with entity reads shared with earlier calls.
    pub fn read(
        &mut self,
        definitions: &Definitions,
        engine: &dyn EntityReads,
        event: &RawEvent,
        out: &mut Vec<Option<f64>>,
    ) -> Result<VectorSource, ReadError> {
        self.plan
            .read_cached(definitions, engine, event, out, Some(&mut self.cache))
    }
}

/// What a vector was read from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VectorSource {
    /// Entity types the model reads whose id was given but which the engine holds no
    /// state for (never seen, or expired): their features are defaults.
    pub unknown: EntityTypes,
    /// Entity types the model reads whose id the event does not carry.
    pub absent: EntityTypes,
}

/// A few entity types, kept inline: a vector read allocates nothing in the common case.
pub type EntityTypes = SmallVec<[EntityTypeId; 4]>;

impl VectorPlan {
    /// Resolves `columns` (stored feature names and request-time feature names, in any
    /// order) against the definitions.
    pub fn for_columns(
        definitions: &Definitions,
        columns: &[String],
    ) -> Result<VectorPlan, PlanError> {
        let mut entities: Vec<EntityColumns> = Vec::new();
        let mut request = Vec::new();
        let mut unknown = Vec::new();
        let slot_of = |entities: &mut Vec<EntityColumns>, entity: EntityTypeId| match entities
            .iter()
            .position(|e| e.entity == entity)
        {
            Some(slot) => slot,
            None => {
                entities.push(EntityColumns {
                    entity,
                    features: Vec::new(),
                    columns: Vec::new(),
                });
                entities.len() - 1
            }
        };
        for (column, name) in columns.iter().enumerate() {
            if let Some(index) = REQUEST_FEATURES.iter().position(|r| r == name) {
                request.push((index, column));
            } else if let Some(feature) = definitions.feature_id(name) {
                let slot = slot_of(&mut entities, definitions.features[feature].entity);
                entities[slot].features.push(feature);
                entities[slot].columns.push(Some(column));
            } else {
                unknown.push(name.clone());
            }
        }
        if !unknown.is_empty() {
            return Err(PlanError::UnknownFeatures(unknown));
        }
        let lists: Vec<String> = columns
            .iter()
            .filter(|name| {
                definitions
                    .feature_id(name)
                    .is_some_and(|id| definitions.features[id].is_list())
            })
            .cloned()
            .collect();
        if !lists.is_empty() {
            return Err(PlanError::ListFeatures(lists));
        }
        let mut user_mean = None;
        if !request.is_empty() {
            let feature = definitions
                .feature_id(USER_MEAN_FEATURE)
                .ok_or(PlanError::MissingUserMean)?;
            let slot = slot_of(&mut entities, definitions.features[feature].entity);
            let position = match entities[slot].features.iter().position(|f| *f == feature) {
                Some(position) => position,
                None => {
                    entities[slot].features.push(feature);
                    entities[slot].columns.push(None);
                    entities[slot].features.len() - 1
                }
            };
            user_mean = Some((slot, position));
        }
        Ok(VectorPlan {
            width: columns.len(),
            entities,
            request,
            user_mean,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// The entity types the plan reads.
    pub fn entity_types(&self) -> impl Iterator<Item = EntityTypeId> + '_ {
        self.entities.iter().map(|e| e.entity)
    }

    /// Reads the vector for `event` as of its event time into `out` (resized to the
    /// width). An entity the event does not name has missing features; one the engine
    /// does not hold gets its features' defaults (no history: counts are 0). A read the engine cannot answer exactly (too old,
    /// a malformed id) is an error, never a vector of defaults.
    pub fn read(
        &self,
        definitions: &Definitions,
        engine: &dyn EntityReads,
        event: &RawEvent,
        out: &mut Vec<Option<f64>>,
    ) -> Result<VectorSource, ReadError> {
        self.read_cached(definitions, engine, event, out, None)
    }

    /// The entities (type, id) a vector for `event` reads: what a scorer fetches from
    /// the online store before [`VectorPlan::read`].
    pub fn entities_of(
        &self,
        definitions: &Definitions,
        event: &RawEvent,
    ) -> Vec<(EntityTypeId, String)> {
        self.entities
            .iter()
            .filter_map(|columns| {
                entity_id(definitions, columns.entity, event)
                    .map(|id| (columns.entity, id.into_owned()))
            })
            .collect()
    }

    /// A reader for many events at one moment that share entities (one user, many
    /// candidate products): an entity is read once and its values reused.
    pub fn cached_reads(&self) -> CachedReads<'_> {
        CachedReads {
            plan: self,
            cache: ReadCache::default(),
        }
    }

    fn read_cached(
        &self,
        definitions: &Definitions,
        engine: &dyn EntityReads,
        event: &RawEvent,
        out: &mut Vec<Option<f64>>,
        mut cache: Option<&mut ReadCache>,
    ) -> Result<VectorSource, ReadError> {
        out.clear();
        out.resize(self.width, None);
        if let Some(cache) = cache.as_deref_mut() {
            cache.slots.resize_with(self.entities.len(), || None);
        }
        let mut source = VectorSource::default();
        let mut user_mean = None;
        for (slot, entity) in self.entities.iter().enumerate() {
            let read = match entity_id(definitions, entity.entity, event) {
                None => {
                    source.absent.push(entity.entity);
                    None
                }
                Some(id) => {
                    let time = event.event_time_ms;
                    let fresh =
                        |id: &str| engine.read_entity(entity.entity, id, &entity.features, time);
                    Some(match cache.as_deref_mut() {
                        None => fresh(&id)?,
                        Some(cache) => match &cache.slots[slot] {
                            Some(((cached, at), read)) if *cached == id && *at == time => {
                                read.clone()
                            }
                            _ => {
                                let read = fresh(&id)?;
                                cache.slots[slot] = Some(((id.into_owned(), time), read.clone()));
                                read
                            }
                        },
                    })
                }
            };
            if read.as_ref().is_some_and(|r| !r.known) {
                source.unknown.push(entity.entity);
            }
            for (position, column) in entity.columns.iter().enumerate() {
                // An absent entity's features are missing, not zero: "no ip" is not
                // "an ip no one used" (the request's `req_has_*` says which).
                let value = read.as_ref().and_then(|read| read.values[position].1);
                if let Some(column) = column {
                    out[*column] = value;
                }
                if self.user_mean == Some((slot, position)) {
                    user_mean = value;
                }
            }
        }
        if !self.request.is_empty() {
            let values = request_features(event, user_mean);
            for (index, column) in &self.request {
                out[*column] = values[*index];
            }
        }
        Ok(source)
    }
}

/// The id of `entity` in `event`, joining a composite's parts; `None` if absent.
/// Borrowed from the event unless it is a composite.
pub fn entity_id<'e>(
    definitions: &Definitions,
    entity: EntityTypeId,
    event: &'e RawEvent,
) -> Option<Cow<'e, str>> {
    let definition = &definitions.entities[entity];
    if definition.parts.is_empty() {
        return event
            .entities
            .get(&definition.name)
            .map(|id| Cow::Borrowed(id.as_str()));
    }
    let parts: Option<Vec<&str>> = definition
        .parts
        .iter()
        .map(|p| {
            event
                .entities
                .get(&definitions.entities[*p].name)
                .map(String::as_str)
        })
        .collect();
    parts.map(|parts| Cow::Owned(parts.join(&COMPOSITE_SEPARATOR.to_string())))
}

//! Stateless scoring on the online store: a request's 4-5 entities are fetched from
//! Redis Cluster at once, decoded with the engine's own state code and read through
//! `features::vector` exactly as the embedded engine reads its own, so a scorer's answer
//! equals the embedded server's for the same history and moment, to the bit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::definitions::{Definitions, EntityTypeId};
use crate::events::{Limits, RawEvent, validate};
use crate::features::{DetachedReads, Engine, EngineSettings, EntityState, ReadError};
use crate::registry::{LoadedModel, Registry};
use crate::scoring::{ScoreError, ScoreInput, Scored, score_on};
use crate::store::NamedFeatures;
use crate::time::now_ms;

use super::freshness::ReadAges;
use super::record::entity_key;
use super::redis_store::{OnlineError, RedisOnline};

#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    #[error(transparent)]
    Online(#[from] OnlineError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("record: a scorer holds no state; send the event to the events topic instead")]
    Record,
}

/// A scorer: the definitions' plans and the shared watermark, no entities of its own.
pub struct OnlineScorer {
    online: RedisOnline,
    engine: Engine,
    limits: Limits,
    read_ages: ReadAges,
}

impl OnlineScorer {
    pub fn new(
        online: RedisOnline,
        definitions: Arc<Definitions>,
        settings: EngineSettings,
    ) -> OnlineScorer {
        OnlineScorer {
            online,
            engine: Engine::new(definitions, settings),
            limits: Limits {
                max_future_skew_ms: i64::MAX / 4,
                max_id_bytes: usize::MAX,
            },
            read_ages: ReadAges::default(),
        }
    }

    /// Checks events against these limits, as the embedded server's ingest does.
    pub fn with_limits(mut self, limits: Limits) -> OnlineScorer {
        self.limits = limits;
        self
    }

    /// `Score` as the embedded server answers it, on the online store: the model
    /// resolved once, the event checked, the entities fetched, the vector read.
    pub async fn score_input(
        &self,
        registry: &Registry,
        input: ScoreInput,
    ) -> Result<Scored, ScorerError> {
        if input.record {
            return Err(ScorerError::Record);
        }
        let model = registry.resolve(&input.model).map_err(ScoreError::from)?;
        if model.body.model.inputs.is_none() {
            validate(
                self.definitions(),
                &self.limits,
                &input.event,
                Some(now_ms()),
            )
            .map_err(ScoreError::Refused)?;
        }
        self.score(model, &input.event, input.reasons, input.include_features)
            .await
    }

    /// `GetFeatures` on the online store: one entity's features by name (all of its
    /// type's when `names` is empty) as of `as_of_ms`, or the shared watermark.
    pub async fn read(
        &self,
        entity_type: &str,
        id: &str,
        names: &[String],
        as_of_ms: Option<i64>,
    ) -> Result<NamedFeatures, ScorerError> {
        let (entity, features) = self.engine.resolve(entity_type, names)?;
        let states = self.fetch(&[(entity, id.to_string())]).await?;
        let at = as_of_ms.unwrap_or_else(now_ms);
        let read = self.engine.read_detached(
            entity,
            id,
            states.get(&(entity, id.to_string())),
            &features,
            at,
        )?;
        let definitions = self.definitions();
        Ok(NamedFeatures {
            known: read.known,
            as_of_ms: read.as_of_ms,
            values: read
                .values
                .into_iter()
                .map(|(feature, value)| (definitions.features[feature].name.clone(), value))
                .collect(),
        })
    }

    /// How old the data behind each read was (now - the shared watermark).
    pub fn read_ages(&self) -> &ReadAges {
        &self.read_ages
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        self.engine.definitions()
    }

    /// Fetches the states of `entities` and the shared watermark, all at once.
    pub async fn fetch(
        &self,
        entities: &[(EntityTypeId, String)],
    ) -> Result<HashMap<(EntityTypeId, String), EntityState>, OnlineError> {
        let definitions = self.engine.definitions();
        let keys: Vec<String> = entities
            .iter()
            .map(|(entity, id)| entity_key(&definitions.entities[*entity].name, id))
            .collect();
        let (records, watermark) = tokio::join!(
            self.online.read(&keys, definitions.fingerprint),
            self.online.watermark()
        );
        if let Some(watermark) = watermark? {
            self.engine.advance_watermark(watermark);
            self.read_ages.observe(now_ms() - watermark);
        }
        Ok(entities
            .iter()
            .cloned()
            .zip(records?)
            .filter_map(|(entity, record)| record.map(|record| (entity, record.state)))
            .collect())
    }

    /// Scores a validated event with `model` on the entities fetched for it.
    pub async fn score(
        &self,
        model: Arc<LoadedModel>,
        event: &RawEvent,
        reasons: usize,
        include_features: bool,
    ) -> Result<Scored, ScorerError> {
        let definitions = self.engine.definitions();
        // A model fed only the request's own fields (trained from a table) reads no
        // entities.
        let states = match model.body.model.inputs {
            Some(_) => HashMap::new(),
            None => {
                self.fetch(&model.plan.entities_of(definitions, event))
                    .await?
            }
        };
        let reads = DetachedReads {
            engine: &self.engine,
            states: &states,
        };
        Ok(score_on(
            definitions,
            &reads,
            model,
            event,
            reasons,
            include_features,
        )?)
    }
}

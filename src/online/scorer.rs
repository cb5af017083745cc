//! Stateless scoring on the online store: a request's 4-5 entities are fetched from
//! Redis Cluster at once, decoded with the engine's own state code and read through
//! `features::vector` exactly as the embedded engine reads its own, so a scorer's answer
//! equals the embedded server's for the same history and moment, to the bit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::definitions::{Definitions, EntityTypeId};
use crate::events::RawEvent;
use crate::features::{DetachedReads, Engine, EngineSettings, EntityState};
use crate::registry::LoadedModel;
use crate::scoring::{ScoreError, Scored, score_on};

use super::record::entity_key;
use super::redis_store::{OnlineError, RedisOnline};

#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    #[error(transparent)]
    Online(#[from] OnlineError),
    #[error(transparent)]
    Score(#[from] ScoreError),
}

/// A scorer: the definitions' plans and the shared watermark, no entities of its own.
pub struct OnlineScorer {
    online: RedisOnline,
    engine: Engine,
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
        }
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

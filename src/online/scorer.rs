//! Stateless scoring on the online store: a request's 4-5 entities are fetched from
//! Redis Cluster at once, decoded with the engine's own state code and read through
//! `features::vector` exactly as the embedded engine reads its own, so a scorer's answer
//! equals the embedded server's for the same history and moment, to the bit.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::definitions::{Definitions, EntityTypeId};
use crate::events::{Limits, RawEvent, Refusal, validate};
use crate::features::{DetachedReads, Engine, EngineSettings, EntityState, ReadError};
use crate::registry::{LoadedModel, Registry};
use crate::scoring::recommend::{RecentFeatures, RecommendCall, RecommendInput, Recommended};
use crate::scoring::{
    CandidateCall, CandidateInput, KeptAnswer, Ranking, ScoreError, ScoreInput, Scored,
    check_recordable, score_on,
};
use crate::store::BatchOutcome;
use crate::store::NamedFeatures;
use crate::time::now_ms;

use super::cache::StateCache;
use super::freshness::ReadAges;
use super::record::{answer_key, entity_key};
use super::redis_store::{OnlineError, RedisOnline};

#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    #[error(transparent)]
    Online(#[from] OnlineError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(
        "record: this scorer has no events topic to record to (set kafka.brokers and kafka.topics), or send the event to the events topic yourself"
    )]
    Record,
    /// The recorded call's answer is kept, its event could not be handed to the events
    /// topic: a retry with the same event id gets the same answer and sends it again.
    #[error(
        "record: event '{event_id}' could not be sent to the events topic ({reason}); its answer is kept: retry with the same event_id"
    )]
    Unrecorded { event_id: String, reason: String },
}

/// Where a scorer records the events of recorded calls: the events topic, durably (the
/// future resolves once the broker has the event). The routers then admit it as any
/// other event: validation, dedup by event id, lateness.
pub trait EventSink: Send + Sync {
    fn send(&self, event: RawEvent) -> BoxFuture<'static, Result<(), String>>;
}

/// How a scorer records: the sink, and how long a recorded call's answer is kept for
/// its retries (the routers' dedup horizon: past it a re-sent event is new anyway).
pub struct Recording {
    pub sink: Arc<dyn EventSink>,
    pub answers_kept_ms: u64,
}

/// A scorer: the definitions' plans and the shared watermark, no entities of its own.
pub struct OnlineScorer {
    online: RedisOnline,
    engine: Engine,
    limits: Limits,
    read_ages: ReadAges,
    cache: Option<StateCache>,
    recording: Option<Recording>,
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
            cache: None,
            recording: None,
        }
    }

    /// Checks events against these limits, as the embedded server's ingest does.
    pub fn with_limits(mut self, limits: Limits) -> OnlineScorer {
        self.limits = limits;
        self
    }

    /// Serves entity states and the watermark from memory for up to `staleness` after
    /// they were fetched, at most `max_entries` of them (a zero staleness: no cache).
    pub fn with_cache(
        mut self,
        staleness: std::time::Duration,
        max_entries: usize,
    ) -> OnlineScorer {
        self.cache = (!staleness.is_zero() && max_entries > 0)
            .then(|| StateCache::new(staleness, max_entries));
        self
    }

    /// Answers recorded calls (`record`), sending their events to `recording.sink`.
    pub fn with_recording(mut self, recording: Recording) -> OnlineScorer {
        self.recording = Some(recording);
        self
    }

    /// `Score` as the embedded server answers it, on the online store: the model
    /// resolved once, the event checked, the entities fetched, the vector read.
    pub async fn score_input(
        &self,
        registry: &Registry,
        mut input: ScoreInput,
    ) -> Result<Scored, ScorerError> {
        if input.record {
            return self.score_recorded(registry, input).await;
        }
        // As the embedded path: the time (now) and the unrecorded id filled in when
        // left out (the V2 door leaves them out).
        crate::scoring::complete(&mut input.event, false)?;
        let model = registry
            .resolve_scorer(&input.model)
            .map_err(ScoreError::from)?;
        if model.body.model.inputs.is_none() {
            self.check(&input.event).map_err(ScoreError::Refused)?;
        }
        self.score(model, &input.event, input.reasons, input.include_features)
            .await
    }

    /// A recorded `Score`: scored on the entities as they are before the event (as the
    /// embedded server scores it before applying it), the answer kept in the online
    /// store under the event id, then the event sent to the events topic. The order
    /// makes a retry safe wherever it lands: an answer kept means the first attempt
    /// scored, so the retry gets that answer and sends the event again (the first send
    /// may not have happened; the routers drop a second one as a duplicate). Two
    /// attempts racing: the first answer kept wins, for both.
    ///
    /// Unlike the embedded server, the event is not in the entities' state when the
    /// call returns: it is there once routed and aggregated (the aggregators' freshness,
    /// `streamscore_aggregator_freshness_lag_seconds`). A second payment scored before
    /// that does not see the first; and `recorded` says the event reached the events
    /// topic, not whether the routers admit it (a late or invalid one goes to their
    /// dead-letter topic).
    async fn score_recorded(
        &self,
        registry: &Registry,
        mut input: ScoreInput,
    ) -> Result<Scored, ScorerError> {
        let Some(recording) = &self.recording else {
            return Err(ScorerError::Record);
        };
        crate::scoring::complete(&mut input.event, true)?;
        let model = registry
            .resolve_scorer(&input.model)
            .map_err(ScoreError::from)?;
        check_recordable(&model, &input.event)?;
        self.check(&input.event).map_err(ScoreError::Refused)?;
        let key = answer_key(&input.event.event_id);
        if let Some(kept) = self.online.kept(&key).await? {
            return self.repeat(registry, recording, &kept, input.event).await;
        }
        let mut scored = self
            .score(model, &input.event, input.reasons, input.include_features)
            .await?;
        let answer = KeptAnswer::of(&scored).encode();
        if let Some(first) = self
            .online
            .keep_first(&key, &answer, recording.answers_kept_ms)
            .await?
        {
            return self.repeat(registry, recording, &first, input.event).await;
        }
        send(recording, input.event).await?;
        scored.recorded = Some(BatchOutcome {
            accepted: 1,
            duplicates: 0,
            refused: Vec::new(),
        });
        Ok(scored)
    }

    /// A retry's answer: the kept one, after sending the event again.
    async fn repeat(
        &self,
        registry: &Registry,
        recording: &Recording,
        kept: &[u8],
        event: RawEvent,
    ) -> Result<Scored, ScorerError> {
        let event_id = event.event_id.clone();
        let forgotten = || ScoreError::RepeatForgotten {
            event_id: event_id.clone(),
        };
        let answer = KeptAnswer::decode(kept).ok_or_else(forgotten)?;
        send(recording, event).await?;
        Ok(answer.into_scored(registry, &event_id)?)
    }

    /// `ScoreCandidates` as the embedded server answers it: every entity of the context
    /// and of the candidates fetched at once, then ranked by the same code.
    pub async fn score_candidates(
        &self,
        registry: &Registry,
        model: &str,
        context: RawEvent,
        candidates: &[CandidateInput],
        top_n: usize,
    ) -> Result<Ranking, ScorerError> {
        self.rank(CandidateCall::new(
            registry, model, context, candidates, top_n,
        )?)
        .await
    }

    /// Fetches every entity `call` reads at once, then ranks by the embedded code.
    async fn rank(&self, call: CandidateCall<'_>) -> Result<Ranking, ScorerError> {
        let states = self.fetch(&call.entities(self.definitions())).await?;
        let reads = DetachedReads {
            engine: &self.engine,
            states: &states,
        };
        Ok(call.rank(self.definitions(), &reads, |event| self.check(event))?)
    }

    /// `Recommend` as the embedded server answers it: the user's lists fetched first,
    /// then the proposed candidates scored as [`OnlineScorer::score_candidates`] does.
    pub async fn recommend(
        &self,
        registry: &Registry,
        features: &RecentFeatures,
        input: RecommendInput,
    ) -> Result<Recommended, ScorerError> {
        let call = RecommendCall::new(registry, input)?;
        let definitions = self.definitions();
        let states = self
            .fetch(&call.history_entities(definitions, features))
            .await?;
        let reads = DetachedReads {
            engine: &self.engine,
            states: &states,
        };
        let proposal = call.propose(definitions, &reads, features)?;
        let ranking = match proposal.candidates.is_empty() {
            true => None,
            false => {
                // Unordered: `finish` orders them by evidence, once.
                let call = CandidateCall::new(
                    registry,
                    &proposal.model,
                    proposal.context.clone(),
                    &proposal.candidates,
                    0,
                )?;
                Some(self.rank(call.unordered()).await?)
            }
        };
        Ok(proposal.finish(registry, ranking)?)
    }

    /// An event checked as the embedded server's ingest checks it.
    fn check(&self, event: &RawEvent) -> Result<(), Refusal> {
        validate(self.definitions(), &self.limits, event, Some(now_ms())).map(|_| ())
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
        let reads = DetachedReads {
            engine: &self.engine,
            states: &states,
        };
        let lists =
            crate::features::list_items(&reads, definitions, entity, id, &features, read.as_of_ms)?;
        Ok(NamedFeatures {
            known: read.known,
            as_of_ms: read.as_of_ms,
            values: read
                .values
                .into_iter()
                .map(|(feature, value)| (definitions.features[feature].name.clone(), value))
                .collect(),
            lists,
        })
    }

    /// How old the data behind each read was (now - the shared watermark).
    pub fn read_ages(&self) -> &ReadAges {
        &self.read_ages
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        self.engine.definitions()
    }

    /// Fetches the states of `entities` and the shared watermark, all at once (what
    /// the cache, when on, holds fresh enough is not fetched).
    pub async fn fetch(
        &self,
        entities: &[(EntityTypeId, String)],
    ) -> Result<HashMap<(EntityTypeId, String), EntityState>, OnlineError> {
        let Some(cache) = &self.cache else {
            let (states, watermark) = tokio::join!(
                self.fetch_states(entities),
                self.online
                    .watermark(self.engine.definitions().state_fingerprint)
            );
            self.note_watermark(watermark?);
            return Ok(states?.into_iter().filter_map(flatten).collect());
        };
        let now = std::time::Instant::now();
        let mut found = HashMap::with_capacity(entities.len());
        let mut missing = Vec::new();
        for entity in entities {
            match cache.get(entity, now) {
                Some(state) => {
                    found.insert(entity.clone(), state);
                }
                None => missing.push(entity.clone()),
            }
        }
        let cached_watermark = cache.watermark(now);
        let watermark = async {
            match cached_watermark {
                Some(watermark) => Ok(watermark),
                None => {
                    self.online
                        .watermark(self.engine.definitions().state_fingerprint)
                        .await
                }
            }
        };
        let (fetched, watermark) = tokio::join!(self.fetch_states(&missing), watermark);
        let (fetched, watermark) = (fetched?, watermark?);
        if cached_watermark.is_none() {
            cache.put_watermark(now, watermark);
        }
        self.note_watermark(watermark);
        cache.put(now, fetched.iter().cloned());
        found.extend(fetched);
        Ok(found.into_iter().filter_map(flatten).collect())
    }

    /// Reads `entities` from Redis: each one's state, `None` where none is stored.
    async fn fetch_states(
        &self,
        entities: &[(EntityTypeId, String)],
    ) -> Result<Vec<((EntityTypeId, String), Option<EntityState>)>, OnlineError> {
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let definitions = self.engine.definitions();
        let keys: Vec<String> = entities
            .iter()
            .map(|(entity, id)| {
                entity_key(
                    definitions.state_fingerprint,
                    &definitions.entities[*entity].name,
                    id,
                )
            })
            .collect();
        let records = self
            .online
            .read(&keys, definitions.state_fingerprint)
            .await?;
        Ok(entities
            .iter()
            .cloned()
            .zip(records.into_iter().map(|r| r.map(|r| r.state)))
            .collect())
    }

    /// Reads from now on are as of `watermark` (never older than before); notes how
    /// old the data is.
    fn note_watermark(&self, watermark: Option<i64>) {
        if let Some(watermark) = watermark {
            self.engine.advance_watermark(watermark);
            self.read_ages.observe(now_ms() - watermark);
        }
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

/// Sends a recorded call's event, naming it in the error.
async fn send(recording: &Recording, event: RawEvent) -> Result<(), ScorerError> {
    let event_id = event.event_id.clone();
    recording
        .sink
        .send(event)
        .await
        .map_err(|reason| ScorerError::Unrecorded { event_id, reason })
}

/// An entity with a stored state, as a map entry.
fn flatten<K>((key, state): (K, Option<EntityState>)) -> Option<(K, EntityState)> {
    Some((key, state?))
}

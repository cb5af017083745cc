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
use super::cut::{Cut, Sealed, SealedPastCut};
use super::freshness::ReadAges;
use super::record::answer_key;
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
    /// An entity sealed into its tiles an event past the tier's cut: it cannot be read
    /// as of the cut, and read past it, it would not match the other entities.
    #[error(
        "the {entity} record holds an event past the entity tier's cut that it can no longer leave out (lane {}, sealed through {}, cut at {}): aggregators of other partitions are behind; retry",
        behind.lane, behind.sealed, behind.cut
    )]
    Behind {
        entity: String,
        behind: SealedPastCut,
    },
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
    cache: Option<StateCache<Fetched, Meta>>,
    recording: Option<Recording>,
}

/// An entity's record as fetched, and the cut read before it (the record holds every
/// event in that cut).
#[derive(Clone)]
struct Fetched {
    /// `None`: Redis holds nothing for the entity.
    state: Option<EntityState>,
    sealed: Sealed,
    cut: Arc<Cut>,
}

/// The shared watermark and the tier's cut, read together.
type Meta = (Option<i64>, Arc<Cut>);

/// How many times a read meets a record sealed past the cut before it fails (each
/// time with a newer cut, after a pause that lets the aggregators behind go on).
const CUT_ATTEMPTS: u32 = 3;
const CUT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

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

    /// Fetches the states of `entities` as of one cut of the event stream (see
    /// [`super::cut`]): the shared watermark and the tier's cut first, then the
    /// entities, each with the events past the cut left out. With the cache on, what
    /// it holds fresh enough is not fetched, and the read is at the oldest cut among
    /// what is used.
    pub async fn fetch(
        &self,
        entities: &[(EntityTypeId, String)],
    ) -> Result<HashMap<(EntityTypeId, String), EntityState>, ScorerError> {
        let mut attempt = 1;
        loop {
            // A retry reads everything again: what is cached was read at the old cut.
            let fetched = self.fetch_records(entities, attempt == 1).await?;
            match at_one_cut(self.definitions(), fetched) {
                Ok(states) => return Ok(states),
                Err(error) if attempt < CUT_ATTEMPTS => {
                    tracing::debug!(%error, attempt, "scorer: a record is sealed past the cut; read again");
                    tokio::time::sleep(CUT_RETRY_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The records of `entities`, each with the cut read before it: from the cache
    /// when `cached` and it holds them fresh, the rest from Redis after the watermark
    /// and the cut.
    async fn fetch_records(
        &self,
        entities: &[(EntityTypeId, String)],
        cached: bool,
    ) -> Result<Vec<((EntityTypeId, String), Fetched)>, ScorerError> {
        let fingerprint = self.engine.definitions().state_fingerprint;
        let cache = self.cache.as_ref().filter(|_| cached);
        let now = std::time::Instant::now();
        let mut found = Vec::with_capacity(entities.len());
        let mut missing = Vec::new();
        for entity in entities {
            match cache.and_then(|cache| cache.get(entity, now)) {
                Some(fetched) => found.push((entity.clone(), fetched)),
                None => missing.push(entity.clone()),
            }
        }
        let meta = match cache.and_then(|cache| cache.meta(now)) {
            Some(meta) => meta,
            None => {
                let (watermark, cut) = self.online.watermark_and_cut(fingerprint).await?;
                let meta = (watermark, Arc::new(cut));
                if let Some(cache) = &self.cache {
                    cache.put_meta(now, meta.clone());
                }
                meta
            }
        };
        self.note_watermark(meta.0);
        // Only now the entities: each holds every event of the cut just read.
        let fetched = self.fetch_states(&missing, &meta.1).await?;
        if let Some(cache) = &self.cache {
            cache.put(now, fetched.iter().cloned());
        }
        found.extend(fetched);
        Ok(found)
    }

    /// Reads `entities` from Redis: each one's record (its state `None` where none is
    /// stored), read after `cut`.
    async fn fetch_states(
        &self,
        entities: &[(EntityTypeId, String)],
        cut: &Arc<Cut>,
    ) -> Result<Vec<((EntityTypeId, String), Fetched)>, OnlineError> {
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let records = self
            .online
            .read_entities(self.engine.definitions(), entities)
            .await?;
        Ok(entities
            .iter()
            .cloned()
            .zip(records.into_iter().map(|record| {
                let (state, sealed) = match record {
                    Some(record) => (Some(record.state), record.sealed),
                    None => (None, Sealed::default()),
                };
                Fetched {
                    state,
                    sealed,
                    cut: Arc::clone(cut),
                }
            }))
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

/// The fetched entities' states as of the oldest cut among them (each holds every
/// event of it), the events past it left out; fails naming the entity when one sealed
/// such an event into its tiles.
fn at_one_cut(
    definitions: &Definitions,
    fetched: Vec<((EntityTypeId, String), Fetched)>,
) -> Result<HashMap<(EntityTypeId, String), EntityState>, ScorerError> {
    let Some(cut) = fetched
        .iter()
        .map(|(_, record)| &record.cut)
        .min_by_key(|cut| cut.version)
        .cloned()
    else {
        return Ok(HashMap::new());
    };
    let mut states = HashMap::with_capacity(fetched.len());
    for ((entity, id), record) in fetched {
        let Some(mut state) = record.state else {
            continue;
        };
        if let Err(behind) = cut.check_sealed(&record.sealed) {
            return Err(ScorerError::Behind {
                entity: format!("{} '{id}'", definitions.entities[entity].name),
                behind,
            });
        }
        // Nothing left (all its events are past the cut): as never seen, as it was.
        if state.leave_out(|tag| cut.sees(tag), record.sealed.newest_ms) {
            states.insert((entity, id), state);
        }
    }
    Ok(states)
}

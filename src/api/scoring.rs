//! The `Scoring` service: thin handlers over `scoring`. The model and decision of each
//! answer ride in the response's extensions for the metrics layer to count.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::convert::{ack, decision};
use super::metrics::{Metrics, ScoredBy};
use super::pb::{self, scoring_server::Scoring};
use crate::config::Role;
use crate::events::RawEvent;
use crate::registry::Registry;
use crate::scoring::{self, CandidateInput, DEFAULT_REASONS, ScoreInput};
use crate::store::FeatureStore;

pub struct ScoringService {
    store: Arc<FeatureStore>,
    registry: Arc<Registry>,
    shadow: Option<Shadow>,
}

/// Candidates scored beside the serving version (`models.shadow`), off the answer's
/// path: a bounded number of shadow tasks at once, the rest skipped and counted.
struct Shadow {
    metrics: Arc<Metrics>,
    running: Arc<tokio::sync::Semaphore>,
}

/// Shadow tasks in flight at most; beyond that a call is not shadowed.
const SHADOW_TASKS: usize = 64;

/// Candidates shadowed per call at most (the newest).
const SHADOW_CANDIDATES: usize = 2;

impl ScoringService {
    pub fn new(store: Arc<FeatureStore>, registry: Arc<Registry>) -> ScoringService {
        ScoringService {
            store,
            registry,
            shadow: None,
        }
    }

    /// Shadow-scores candidates on every `Score`, counting into `metrics`.
    pub fn with_shadow(mut self, metrics: Arc<Metrics>) -> ScoringService {
        self.shadow = Some(Shadow {
            metrics,
            running: Arc::new(tokio::sync::Semaphore::new(SHADOW_TASKS)),
        });
        self
    }

    fn shadow(&self, serving: &scoring::Scored, event: RawEvent) {
        let Some(shadow) = &self.shadow else {
            return;
        };
        let candidates: Vec<_> = self
            .registry
            .catalog()
            .candidates(serving.model.name())
            .into_iter()
            .take(SHADOW_CANDIDATES)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let name = serving.model.name().to_string();
        let Ok(permit) = Arc::clone(&shadow.running).try_acquire_owned() else {
            shadow
                .metrics
                .count("streamscore_shadow_skipped_total", vec![("model", name)]);
            return;
        };
        let (store, metrics) = (Arc::clone(&self.store), Arc::clone(&shadow.metrics));
        let (score, decision) = (serving.score, serving.decision);
        tokio::spawn(async move {
            let _permit = permit;
            for candidate in candidates {
                let labels = || {
                    vec![
                        ("model", name.clone()),
                        ("candidate", candidate.version().to_string()),
                    ]
                };
                match scoring::score_with(&store, Arc::clone(&candidate), &event, 0, false) {
                    Ok(shadowed) => {
                        metrics.count("streamscore_shadow_scores_total", labels());
                        if shadowed.decision == decision {
                            metrics.count("streamscore_shadow_agreements_total", labels());
                        }
                        metrics.observe(
                            "streamscore_shadow_score_difference",
                            labels(),
                            (shadowed.score - score).abs(),
                        );
                    }
                    Err(_) => metrics.count("streamscore_shadow_errors_total", labels()),
                }
            }
        });
    }
}

fn event_or_default(event: Option<pb::Event>, event_type: &str) -> RawEvent {
    let mut event = event.map(RawEvent::from).unwrap_or_default();
    if event.event_type.is_empty() {
        event.event_type = event_type.to_string();
    }
    event
}

#[tonic::async_trait]
impl Scoring for ScoringService {
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        // The auth layer always puts the caller here; without one, fail closed.
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let mut event = event_or_default(request.event, "payment");
        if request.record {
            let caller =
                caller.ok_or_else(|| Status::permission_denied("record: unknown caller"))?;
            if !caller.may(Role::Ingest) {
                return Err(caller.denied("record a scored event", Role::Ingest));
            }
            // Ids of recorded events live in the caller's namespace, so a scoring
            // client cannot claim the id of a real event before it arrives.
            if !event.event_id.is_empty() {
                event.event_id = format!("{}/{}", caller.name, event.event_id);
            }
        }
        // Filled in here (time, unrecorded id) so a shadow score reads the same moment.
        scoring::complete(&mut event, request.record)?;
        let shadow_event = self.shadow.as_ref().map(|_| event.clone());
        let input = ScoreInput {
            model: request.model,
            event,
            include_features: request.include_features,
            record: request.record,
            reasons: request.reasons.map_or(DEFAULT_REASONS, |r| r as usize),
        };
        let scored = scoring::score(&self.store, &self.registry, input).await?;
        if let Some(event) = shadow_event {
            self.shadow(&scored, event);
        }
        let decision = decision(scored.decision);
        let mut response = Response::new(pb::ScoreResponse {
            score: scored.score,
            decision: decision as i32,
            reasons: scored
                .reasons
                .into_iter()
                .map(|r| pb::Reason {
                    feature: r.feature,
                    value: r.value,
                    contribution: r.contribution,
                })
                .collect(),
            model: scored.model.name().to_string(),
            version: scored.model.version(),
            unknown_entities: scored.unknown_entities,
            features: scored
                .features
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| pb::FeatureValue { name, value })
                .collect(),
            recorded: scored.recorded.map(|outcome| ack(0, outcome)),
        });
        response.extensions_mut().insert(ScoredBy {
            model: scored.model.name().to_string(),
            decision: Some(decision),
        });
        Ok(response)
    }

    async fn score_candidates(
        &self,
        request: Request<pb::ScoreCandidatesRequest>,
    ) -> Result<Response<pb::ScoreCandidatesResponse>, Status> {
        let request = request.into_inner();
        let model = if request.model.is_empty() {
            "purchase".to_string()
        } else {
            request.model
        };
        let candidates: Vec<CandidateInput> = request
            .candidates
            .into_iter()
            .map(|c| CandidateInput {
                product: c.product,
                numbers: c.numbers,
            })
            .collect();
        let ranking = scoring::score_candidates(
            &self.store,
            &self.registry,
            &model,
            event_or_default(request.context, "page_view"),
            &candidates,
            request.top_n as usize,
        )?;
        let mut response = Response::new(pb::ScoreCandidatesResponse {
            candidates: ranking
                .candidates
                .into_iter()
                .map(|c| pb::ScoredCandidate {
                    product: c.product,
                    score: c.score,
                })
                .collect(),
            model: ranking.model.name().to_string(),
            version: ranking.model.version(),
            unknown_entities: ranking.unknown_entities,
        });
        response.extensions_mut().insert(ScoredBy {
            model: ranking.model.name().to_string(),
            decision: None,
        });
        Ok(response)
    }
}

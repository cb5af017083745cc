//! The `Scoring` service: thin handlers over `scoring`. The model and decision of each
//! answer ride in the response's extensions for the metrics layer to count.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::convert::{ack, decision};
use super::metrics::ScoredBy;
use super::pb::{self, scoring_server::Scoring};
use crate::config::Role;
use crate::events::RawEvent;
use crate::registry::Registry;
use crate::scoring::{self, CandidateInput, DEFAULT_REASONS, ScoreInput};
use crate::store::FeatureStore;

pub struct ScoringService {
    store: Arc<FeatureStore>,
    registry: Arc<Registry>,
}

impl ScoringService {
    pub fn new(store: Arc<FeatureStore>, registry: Arc<Registry>) -> ScoringService {
        ScoringService { store, registry }
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
        let input = ScoreInput {
            model: request.model,
            event,
            include_features: request.include_features,
            record: request.record,
            reasons: request.reasons.map_or(DEFAULT_REASONS, |r| r as usize),
        };
        let scored = scoring::score(&self.store, &self.registry, input).await?;
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

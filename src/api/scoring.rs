//! The `Scoring` service: thin handlers over `scoring`. The model and decision of each
//! answer ride in the response's extensions for the metrics layer to count.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Backend;
use super::auth::Caller;
use super::convert::{ack, decision};
use super::metrics::{Metrics, ScoredBy};
use super::pb::{self, scoring_server::Scoring};
use crate::config::DriftSettings;
use crate::config::Role;
use crate::events::RawEvent;
use crate::model::decision::Decision;
use crate::registry::{LoadedModel, Registry};
use crate::scoring::drift::{DriftCheck, DriftMonitor};
use crate::scoring::recommend::{self, RecentFeatures, RecommendInput, Why};
use crate::scoring::samples::{SampleLog, ScoreSample};
use crate::scoring::{self, CandidateInput, DEFAULT_REASONS, ScoreInput};
use crate::store::FeatureStore;
use crate::time::now_ms;

pub struct ScoringService {
    backend: Backend,
    registry: Arc<Registry>,
    shadow: Option<Shadow>,
    samples: Option<Arc<SampleLog>>,
    /// Live features against the serving model's training data, counted into metrics.
    drift: Option<(DriftMonitor, Arc<Metrics>)>,
    /// Where `Recommend` reads the user's recent products.
    recent: RecentFeatures,
}

/// Candidates scored beside the serving version (`models.shadow`), off the answer's
/// path: a bounded number of shadow tasks at once, the rest skipped and counted.
struct Shadow {
    metrics: Arc<Metrics>,
    running: Arc<tokio::sync::Semaphore>,
    /// `models.shadow_candidates`: empty, the newest
    /// [`crate::config::DEFAULT_SHADOWED`].
    chosen: Vec<String>,
}

/// Shadow tasks in flight at most; beyond that a call is not shadowed.
const SHADOW_TASKS: usize = 64;

impl ScoringService {
    pub fn new(store: Arc<FeatureStore>, registry: Arc<Registry>) -> ScoringService {
        ScoringService::on(Backend::Embedded(store), registry)
    }

    /// Scoring on `backend`: this process's store, or a scorer's online store.
    pub fn on(backend: Backend, registry: Arc<Registry>) -> ScoringService {
        ScoringService {
            backend,
            registry,
            shadow: None,
            samples: None,
            drift: None,
            recent: RecentFeatures::default(),
        }
    }

    /// Writes one `Score` in every so many to the sample log (for `streamscore skew`).
    pub fn with_samples(mut self, samples: Option<Arc<SampleLog>>) -> ScoringService {
        self.samples = samples;
        self
    }

    /// Compares live input vectors with the serving model's training data (see
    /// `scoring::drift`), into `metrics` and the log; off when `settings.every` is 0.
    pub fn with_drift(mut self, settings: DriftSettings, metrics: Arc<Metrics>) -> ScoringService {
        self.drift = DriftMonitor::new(settings).map(|monitor| (monitor, metrics));
        self
    }

    /// Records a full drift window: every column's shift as a gauge, and a warning
    /// (log and counter) when one moved past the threshold.
    fn report_drift(metrics: &Metrics, model: &LoadedModel, check: &DriftCheck, threshold: f64) {
        let labels = |feature: Option<&str>| {
            let mut labels = vec![
                ("model", model.name().to_string()),
                ("version", model.version().to_string()),
            ];
            labels.extend(feature.map(|f| ("feature", f.to_string())));
            labels
        };
        for shift in &check.shifts {
            metrics.set(
                "streamscore_feature_drift_deviations",
                labels(Some(&shift.feature)),
                shift.deviations,
            );
        }
        metrics.count("streamscore_drift_checks_total", labels(None));
        if check.drifted {
            metrics.count("streamscore_drift_warnings_total", labels(None));
            tracing::warn!(
                model = %check.model,
                vectors = check.vectors,
                features = %check.summary(threshold),
                "live features far from the serving model's training data: its scores may not mean what they meant in training (check the traffic, or retrain on it)"
            );
        }
    }

    /// Shadow-scores candidates on every `Score` (those `chosen`, as `name@N`, or the
    /// newest [`crate::config::DEFAULT_SHADOWED`] when it is empty), counting into
    /// `metrics`.
    pub fn with_shadow(mut self, metrics: Arc<Metrics>, chosen: Vec<String>) -> ScoringService {
        self.shadow = Some(Shadow {
            metrics,
            running: Arc::new(tokio::sync::Semaphore::new(SHADOW_TASKS)),
            chosen,
        });
        self
    }

    /// The candidates of the model `reference` resolves to, when shadowing is on.
    fn candidates(&self, reference: &str) -> Vec<Arc<LoadedModel>> {
        let Some(shadow) = &self.shadow else {
            return Vec::new();
        };
        let Ok(serving) = self.registry.resolve(reference) else {
            return Vec::new();
        };
        self.registry.catalog().shadowed(
            serving.name(),
            &shadow.chosen,
            crate::config::DEFAULT_SHADOWED,
        )
    }

    /// Counts candidates scored beside `serving` (agreement, score difference, errors).
    fn count_shadowed(
        metrics: &Metrics,
        serving: (&str, f64, Option<Decision>),
        candidate: &LoadedModel,
        result: &scoring::ShadowResult,
    ) {
        let (name, score, decision) = serving;
        let labels = || {
            vec![
                ("model", name.to_string()),
                ("candidate", candidate.version().to_string()),
            ]
        };
        match result {
            Ok((shadow_score, shadow_decision)) => {
                metrics.count("streamscore_shadow_scores_total", labels());
                if *shadow_decision == decision {
                    metrics.count("streamscore_shadow_agreements_total", labels());
                }
                metrics.observe(
                    "streamscore_shadow_score_difference",
                    labels(),
                    (shadow_score - score).abs(),
                );
            }
            Err(_) => metrics.count("streamscore_shadow_errors_total", labels()),
        }
    }

    /// Scores `candidates` beside an unrecorded call in the background, off the
    /// answer's path (the call changed nothing, so a later read sees the same features
    /// but for concurrent ingest).
    fn shadow_later(
        &self,
        serving: &scoring::Scored,
        candidates: Vec<Arc<LoadedModel>>,
        event: RawEvent,
    ) {
        let Some(shadow) = &self.shadow else {
            return;
        };
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
        // A scorer does not shadow (yet): its reads are remote.
        let store = match &self.backend {
            Backend::Embedded(store) => store,
            #[cfg(feature = "cluster")]
            Backend::Online(_) => return,
        };
        let (store, metrics) = (Arc::clone(store), Arc::clone(&shadow.metrics));
        let (score, decision) = (serving.score, serving.decision);
        tokio::spawn(async move {
            let _permit = permit;
            for candidate in candidates {
                let result = scoring::score_with(&store, Arc::clone(&candidate), &event, 0, false)
                    .map(|s| (s.score, s.decision))
                    .map_err(|e| e.to_string());
                Self::count_shadowed(&metrics, (&name, score, decision), &candidate, &result);
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
        let candidates = self.candidates(&request.model);
        // A recorded call scores its candidates in the serving version's read, before
        // the payment is applied; an unrecorded one leaves them to a background task.
        let (in_read, later) = if request.record {
            (candidates, Vec::new())
        } else {
            (Vec::new(), candidates)
        };
        let later_event = (!later.is_empty()).then(|| event.clone());
        let sampled_event = self
            .samples
            .as_ref()
            .is_some_and(|samples| samples.due())
            .then(|| event.clone());
        let input = ScoreInput {
            model: request.model,
            event,
            include_features: request.include_features,
            record: request.record,
            reasons: request.reasons.map_or(DEFAULT_REASONS, |r| r as usize),
            shadow: in_read,
        };
        let scored = match &self.backend {
            Backend::Embedded(store) => scoring::score(store, &self.registry, input).await?,
            #[cfg(feature = "cluster")]
            Backend::Online(scorer) => scorer.score_input(&self.registry, input).await?,
        };
        if let Some(shadow) = &self.shadow {
            for (candidate, result) in &scored.shadowed {
                Self::count_shadowed(
                    &shadow.metrics,
                    (scored.model.name(), scored.score, scored.decision),
                    candidate,
                    result,
                );
            }
        }
        if let Some(event) = later_event {
            self.shadow_later(&scored, later, event);
        }
        // A model fed only the request's own fields reads no history: nothing to check.
        // A retry's answer is the first attempt's, read before it: nothing to check.
        if let (Some(samples), Some(event)) = (&self.samples, sampled_event)
            && scored.model.body.model.inputs.is_none()
            && !scored.is_repeat()
        {
            samples.send(ScoreSample::of(&scored, &event, now_ms()));
        }
        if let Some((monitor, metrics)) = &self.drift
            && !scored.is_repeat()
            && monitor.due()
            && let Some(check) = monitor.observe(&scored.model, &scored.vector)
        {
            Self::report_drift(metrics, &scored.model, &check, monitor.threshold());
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
                    clipped: r.clipped,
                })
                .collect(),
            model: scored.model.name().to_string(),
            version: scored.model.version(),
            unknown_entities: scored.unknown_entities,
            features: scored
                .features
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| pb::FeatureValue {
                    name,
                    value,
                    items: Vec::new(),
                })
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
        let context = event_or_default(request.context, "page_view");
        let top_n = request.top_n as usize;
        let ranking = match &self.backend {
            Backend::Embedded(store) => scoring::score_candidates(
                store,
                &self.registry,
                &model,
                context,
                &candidates,
                top_n,
            )?,
            #[cfg(feature = "cluster")]
            Backend::Online(scorer) => {
                scorer
                    .score_candidates(&self.registry, &model, context, &candidates, top_n)
                    .await?
            }
        };
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
            unknown_products: ranking.unknown_products,
        });
        response.extensions_mut().insert(ScoredBy {
            model: ranking.model.name().to_string(),
            decision: None,
        });
        Ok(response)
    }

    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let request = request.into_inner();
        let input = RecommendInput {
            rules: request.rules,
            model: request.model,
            user: request.user,
            device: (!request.device.is_empty()).then_some(request.device),
            product: (!request.product.is_empty()).then_some(request.product),
            cart: request.cart,
            top_n: request.top_n as usize,
            event_time_ms: request.event_time_ms,
        };
        let recommended = match &self.backend {
            // Inline like ScoreCandidates: one read lock and at most a few hundred rows
            // through the model, tens of microseconds.
            Backend::Embedded(store) => {
                recommend::recommend(store, &self.registry, &self.recent, input)?
            }
            #[cfg(feature = "cluster")]
            Backend::Online(scorer) => {
                scorer
                    .recommend(&self.registry, &self.recent, input)
                    .await?
            }
        };
        let mut response = Response::new(pb::RecommendResponse {
            recommendations: recommended
                .items
                .into_iter()
                .map(|item| pb::Recommendation {
                    product: item.product,
                    probability: item.probability,
                    why: Some(match item.why {
                        Why::Rule(rule) => pb::recommendation::Why::Rule(pb::RuleReason {
                            antecedent: rule.antecedent,
                            consequent: rule.consequent,
                            support: rule.support,
                            confidence: rule.confidence,
                            lift: rule.lift,
                        }),
                        Why::Popular(support) => {
                            pb::recommendation::Why::Popular(pb::PopularReason { support })
                        }
                    }),
                })
                .collect(),
            rules: recommended.rules.reference(),
            model: recommended.model.reference(),
            context: recommended.context,
            excluded: recommended.excluded,
            unknown_products: recommended.unknown_products,
        });
        response.extensions_mut().insert(ScoredBy {
            model: recommended.model.name().to_string(),
            decision: None,
        });
        Ok(response)
    }
}

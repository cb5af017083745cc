//! Scoring: a request's entities and fields become an event, the event becomes the
//! model's input vector (stored features as of now + request-time features, built by
//! `features::vector` exactly as in training), and the model gives a score, a decision
//! and its reasons. `record` then ingests the scored event, so it counts toward the
//! next score's velocity features.

mod candidates;
pub mod drift;
mod kept;
pub mod recommend;
pub mod samples;
pub mod skew;

pub use kept::KeptAnswer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::definitions::Definitions;
use crate::events::{RawEvent, Refusal};
use crate::features::vector::VectorSource;
use crate::features::{EngineView, EntityReads, ReadCut, ReadError};
use crate::model::decision::Decision;
use crate::model::inputs::{Cell, Input, encode_row};
use crate::registry::{LoadedModel, Registry, RegistryError};
use crate::store::{Attempt, BatchOutcome, FeatureStore, StoreError};
use crate::time::now_ms;

pub use candidates::{CandidateCall, CandidateInput, RankedCandidate, Ranking, score_candidates};

/// Scores refused because the model gave NaN or an infinity (a Prometheus counter).
pub static NON_FINITE_SCORES: AtomicU64 = AtomicU64::new(0);

/// `score` if it is a number; otherwise the call fails closed and is counted.
fn finite(model: &LoadedModel, score: f64) -> Result<f64, ScoreError> {
    if score.is_finite() {
        return Ok(score);
    }
    NON_FINITE_SCORES.fetch_add(1, Ordering::Relaxed);
    tracing::error!(model = %model.reference(), score, "non-finite score; failing closed");
    Err(ScoreError::NonFinite {
        model: model.reference(),
        score,
    })
}

/// Reasons returned when the request does not say.
pub const DEFAULT_REASONS: usize = 5;

/// The event id used when a score is not recorded (validation needs one).
const UNRECORDED_ID: &str = "unrecorded-score";

#[derive(Debug, Clone)]
pub struct ScoreInput {
    /// Name, `name@version` or alias.
    pub model: String,
    /// The event being scored (usually a payment); its time defaults to now.
    pub event: RawEvent,
    pub include_features: bool,
    pub record: bool,
    pub reasons: usize,
    /// Candidates to score in the same read as the serving version, for a recorded
    /// call: a later read would see the payment this call records.
    pub shadow: Vec<Arc<LoadedModel>>,
}

/// A feature that pushed the score, signed (see `model::explain` for the units).
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub feature: String,
    pub value: Option<f64>,
    pub contribution: f64,
    /// The value was outside the model's training range and clipped to it.
    pub clipped: bool,
}

#[derive(Debug, Clone)]
pub struct Scored {
    pub model: Arc<LoadedModel>,
    pub score: f64,
    /// `None` for a regression model (it has no thresholds).
    pub decision: Option<Decision>,
    pub reasons: Vec<Reason>,
    /// Entity types named in the request that the store holds nothing for.
    pub unknown_entities: Vec<String>,
    /// The input vector, when asked for.
    pub features: Option<Vec<(String, Option<f64>)>>,
    /// The input vector in the model's column order (always).
    pub vector: Vec<Option<f64>>,
    /// The events the vector was read from.
    pub cut: ReadCut,
    /// The ingest outcome when `record` was set.
    pub recorded: Option<BatchOutcome>,
    /// The candidates of [`ScoreInput::shadow`], scored on the same read (score and
    /// decision, or why not).
    pub shadowed: Vec<(Arc<LoadedModel>, ShadowResult)>,
}

impl Scored {
    /// What a retry of a recorded call gets back: the answer, without the shadow
    /// scores (counted once) and the input vector (a retry is not sampled).
    fn kept_for_retry(&self) -> Scored {
        Scored {
            vector: Vec::new(),
            shadowed: Vec::new(),
            ..self.clone()
        }
    }

    /// Whether this is the kept answer of a recorded call's retry.
    pub fn is_repeat(&self) -> bool {
        self.recorded
            .as_ref()
            .is_some_and(|outcome| outcome.accepted == 0 && outcome.duplicates > 0)
    }
}

/// A candidate's score and decision, or why it could not score.
pub type ShadowResult = Result<(f64, Option<Decision>), String>;

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{}: {}", .0.field, .0.reason)]
    Refused(Refusal),
    #[error("event_id: required when record is set (it makes a retried call safe)")]
    RecordWithoutId,
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model gave NaN or an infinity: no decision can be trusted, so none is made.
    #[error(
        "model {model} gave a non-finite score ({score}) for this request; refusing to decide (failing closed)"
    )]
    NonFinite { model: String, score: f64 },
    /// An input feature is NaN or an infinity (a derived value gone wrong): no decision.
    #[error(
        "model {model}: input feature {feature} is {value} for this request; refusing to decide (failing closed)"
    )]
    NonFiniteFeature {
        model: String,
        feature: String,
        value: f64,
    },
    /// The features cannot be read exactly as of the event's time.
    #[error("event.event_time_ms: {0}")]
    Read(#[from] ReadError),
    /// A retry of a recorded call whose first answer is no longer kept: scoring it again
    /// would count its first attempt in its own features.
    #[error(
        "event_id: '{event_id}' was recorded already and its first answer is no longer kept (the server restarted, or more than ingest.recorded_answers recorded calls came since); it is not scored twice. Use the first answer, or send a new event id"
    )]
    RepeatForgotten { event_id: String },
}

/// Fills what a scoring request may leave out: the event time (now) and, for an
/// unrecorded score, the event id.
pub fn complete(event: &mut RawEvent, record: bool) -> Result<(), ScoreError> {
    if event.event_time_ms == 0 {
        event.event_time_ms = now_ms();
    }
    if event.event_id.is_empty() {
        if record {
            return Err(ScoreError::RecordWithoutId);
        }
        event.event_id = UNRECORDED_ID.to_string();
    }
    Ok(())
}

/// The top `count` contributions by size, strongest first.
fn top_reasons(model: &LoadedModel, values: &[Option<f64>], count: usize) -> Vec<Reason> {
    if count == 0 {
        return Vec::new();
    }
    let explanation = model.body.model.explain(values);
    let mut order: Vec<usize> = (0..explanation.contributions.len()).collect();
    let stronger = |a: &usize, b: &usize| {
        explanation.contributions[*b]
            .abs()
            .total_cmp(&explanation.contributions[*a].abs())
            .then(a.cmp(b))
    };
    // Only the top `count` need an order: select them, then sort just those.
    if count < order.len() {
        order.select_nth_unstable_by(count, stronger);
        order.truncate(count);
    }
    order.sort_by(stronger);
    order
        .into_iter()
        .map(|column| Reason {
            feature: model.body.model.columns[column].clone(),
            value: values[column],
            contribution: explanation.contributions[column],
            clipped: values[column]
                .is_some_and(|value| model.body.model.preprocessing.clipped(column, value)),
        })
        .collect()
}

/// Scores one event. The model is resolved once, so a swap during the call does not
/// change which version answers. With `record`, the read and the append of the event
/// are one step of the store's one writer, so parallel recorded scores for one card
/// each see the ones before them.
pub async fn score(
    store: &FeatureStore,
    registry: &Registry,
    mut input: ScoreInput,
) -> Result<Scored, ScoreError> {
    let model = registry.resolve_scorer(&input.model)?;
    complete(&mut input.event, input.record)?;
    if input.record {
        check_recordable(&model, &input.event)?;
    }
    check(store, &model, &input.event)?;
    let (reasons, include_features) = (input.reasons, input.include_features);
    let event = &input.event;
    let shadow = &input.shadow;
    let score_now = |engine: &EngineView<'_>| {
        let mut scored = score_on(
            store.definitions(),
            engine,
            model,
            event,
            reasons,
            include_features,
        )?;
        scored.shadowed = shadow
            .iter()
            .map(|candidate| {
                let result = score_on(
                    store.definitions(),
                    engine,
                    Arc::clone(candidate),
                    event,
                    0,
                    false,
                )
                .map(|s| (s.score, s.decision))
                .map_err(|e| e.to_string());
                (Arc::clone(candidate), result)
            })
            .collect();
        Ok(scored)
    };
    if !input.record {
        return store.with_engine(score_now);
    }
    let (mut scored, submitted) = store
        .read_then_submit(std::slice::from_ref(event), |engine, attempt| {
            match attempt {
                Attempt::First => {
                    let scored = score_now(engine)?;
                    store.remember_answer(&event.event_id, Arc::new(scored.kept_for_retry()));
                    Ok(scored)
                }
                // The first answer, whatever model or fields the retry names: it is the
                // same event.
                Attempt::Repeat => store
                    .recall_answer(&event.event_id)
                    .and_then(|answer| answer.downcast_ref::<Scored>().cloned())
                    .ok_or_else(|| ScoreError::RepeatForgotten {
                        event_id: event.event_id.clone(),
                    }),
            }
        })
        .await??;
    scored.recorded = Some(store.wait_durable(submitted).await?);
    Ok(scored)
}

/// Whether `model` may record `event`: only events of the type it was trained to
/// score, so a recorded call never files an event the model was not made for.
pub fn check_recordable(model: &LoadedModel, event: &RawEvent) -> Result<(), ScoreError> {
    if model.body.scored_event.as_deref() == Some(event.event_type.as_str()) {
        return Ok(());
    }
    Err(ScoreError::Invalid {
        field: "record",
        reason: match &model.body.scored_event {
            Some(scored) => format!(
                "model {} records only {scored} events, not {}",
                model.reference(),
                event.event_type
            ),
            None => format!(
                "model {} does not say which event type it scores (trained from a table, or before this was recorded): it cannot record",
                model.reference()
            ),
        },
    })
}

/// The synchronous heart of [`score`] without `record`: validation, input vector,
/// prediction, reasons.
pub fn score_with(
    store: &FeatureStore,
    model: Arc<LoadedModel>,
    event: &RawEvent,
    reasons: usize,
    include_features: bool,
) -> Result<Scored, ScoreError> {
    check(store, &model, event)?;
    store.with_engine(|engine| {
        score_on(
            store.definitions(),
            engine,
            model,
            event,
            reasons,
            include_features,
        )
    })
}

/// Validates `event` for `model`: against the definitions, or for a table model
/// against its inputs (when it is encoded).
fn check(store: &FeatureStore, model: &LoadedModel, event: &RawEvent) -> Result<(), ScoreError> {
    match model.body.model.inputs {
        Some(_) => Ok(()),
        None => store.check(event).map_err(ScoreError::Refused),
    }
}

/// A table model's vector from the request's fields, by the encoding training used.
/// Every field must be an input; a missing input is a missing value.
fn encode_request(
    model: &LoadedModel,
    inputs: &[Input],
    event: &RawEvent,
    out: &mut Vec<Option<f64>>,
) -> Result<(), ScoreError> {
    let refuse =
        |field: String, reason: String| ScoreError::Refused(Refusal::invalid(field, reason));
    let names = || {
        inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(entity) = event.entities.keys().next() {
        return Err(refuse(
            format!("event.entities.{entity}"),
            format!(
                "{} takes no entities, only its inputs as numbers or strings ({})",
                model.reference(),
                names()
            ),
        ));
    }
    for (kind, name) in event
        .numbers
        .keys()
        .map(|n| ("numbers", n))
        .chain(event.strings.keys().map(|n| ("strings", n)))
    {
        if !inputs.iter().any(|i| i.name == *name) {
            return Err(refuse(
                format!("event.{kind}.{name}"),
                format!(
                    "is not an input of {} (inputs: {})",
                    model.reference(),
                    names()
                ),
            ));
        }
        if event.numbers.contains_key(name) && event.strings.contains_key(name) {
            return Err(refuse(
                format!("event.strings.{name}"),
                "is given as a number too; send it once".into(),
            ));
        }
    }
    encode_row(
        inputs,
        |_, input| match (
            event.numbers.get(&input.name),
            event.strings.get(&input.name),
        ) {
            (Some(value), _) => Cell::Number(*value),
            (None, Some(text)) => Cell::Text(text),
            (None, None) => Cell::Missing,
        },
        out,
    )
    .map_err(|(name, reason)| {
        let kind = if event.numbers.contains_key(&name) {
            "numbers"
        } else {
            "strings"
        };
        refuse(format!("event.{kind}.{name}"), reason)
    })
}

/// The score of a vector, its decision (none for a regression model) and its top
/// `reasons` reasons; a non-finite score fails closed.
fn decide(
    model: &LoadedModel,
    values: &[Option<f64>],
    reasons: usize,
) -> Result<(f64, Option<Decision>, Vec<Reason>), ScoreError> {
    // A non-finite input would be clipped to the training range or dominate the score;
    // either way the answer would not mean anything.
    if let Some(column) = values
        .iter()
        .position(|v| v.is_some_and(|v| !v.is_finite()))
    {
        NON_FINITE_SCORES.fetch_add(1, Ordering::Relaxed);
        let feature = model
            .body
            .model
            .columns
            .get(column)
            .cloned()
            .unwrap_or_else(|| format!("column {column}"));
        let value = values[column].unwrap_or(f64::NAN);
        tracing::error!(model = %model.reference(), feature, value, "non-finite input feature; failing closed");
        return Err(ScoreError::NonFiniteFeature {
            model: model.reference(),
            feature,
            value,
        });
    }
    let score = finite(model, model.body.model.predict(values))?;
    let decision = model.body.thresholds.map(|t| t.decide(score));
    Ok((score, decision, top_reasons(model, values, reasons)))
}

/// Scores a vector given whole in the model's column order (a table model's row as
/// the Open Inference Protocol sends it): no entities are read.
pub fn score_vector(
    model: Arc<LoadedModel>,
    values: Vec<Option<f64>>,
    reasons: usize,
) -> Result<Scored, ScoreError> {
    let (score, decision, reasons) = decide(&model, &values, reasons)?;
    Ok(Scored {
        model,
        score,
        decision,
        reasons,
        unknown_entities: Vec::new(),
        features: None,
        vector: values,
        cut: ReadCut {
            through_seq: None,
            watermark_ms: 0,
        },
        recorded: None,
        shadowed: Vec::new(),
    })
}

/// Scores a checked event on entity reads: the engine as it is, or entity states
/// fetched from an online store.
pub fn score_on(
    definitions: &Definitions,
    engine: &dyn EntityReads,
    model: Arc<LoadedModel>,
    event: &RawEvent,
    reasons: usize,
    include_features: bool,
) -> Result<Scored, ScoreError> {
    let _span = tracing::debug_span!("score", model = %model.reference()).entered();
    let mut values = Vec::with_capacity(model.body.model.columns.len());
    let source = match &model.body.model.inputs {
        Some(inputs) => {
            encode_request(&model, inputs, event, &mut values)?;
            VectorSource::default()
        }
        None => model.plan.read(definitions, engine, event, &mut values)?,
    };
    let (score, decision, reasons) = decide(&model, &values, reasons)?;
    let unknown_entities = source
        .unknown
        .iter()
        .map(|entity| definitions.entities[*entity].name.clone())
        .collect();
    let features = include_features.then(|| {
        model
            .body
            .model
            .columns
            .iter()
            .cloned()
            .zip(values.iter().copied())
            .collect()
    });
    Ok(Scored {
        model,
        score,
        decision,
        reasons,
        unknown_entities,
        features,
        vector: values,
        cut: engine.cut(),
        recorded: None,
        shadowed: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_fraud() -> Arc<LoadedModel> {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let registry = Registry::new(Arc::new(Definitions::default_shop()), models);
        registry.scan().expect("shipped models");
        registry.resolve("fraud").expect("fraud serves")
    }

    #[test]
    fn a_non_finite_input_fails_closed_naming_the_feature() {
        let model = shipped_fraud();
        let columns = &model.body.model.columns;
        let ratio = columns
            .iter()
            .position(|c| c == "req_amount_to_user_mean_30d")
            .expect("ratio column");
        for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            let mut values = vec![None; columns.len()];
            values[ratio] = Some(bad);
            let error = score_vector(Arc::clone(&model), values, 3).expect_err("fails closed");
            let message = error.to_string();
            assert!(
                matches!(error, ScoreError::NonFiniteFeature { .. })
                    && message.contains("req_amount_to_user_mean_30d")
                    && message.contains("failing closed"),
                "{message}"
            );
        }
        // The same row with a finite value scores.
        let mut values = vec![None; columns.len()];
        values[ratio] = Some(1e300);
        assert!(score_vector(model, values, 3).is_ok());
    }
}

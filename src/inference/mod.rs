//! The Open Inference Protocol (KServe V2) in domain terms, apart from its transports
//! (gRPC in `api::v2`, REST in `api::rest`): what a model takes and gives as tensors
//! ([`Signature`]), a request's tensors made into the rows the scoring path scores
//! ([`prepare`]), and the scores made into output tensors ([`outputs`]).
//!
//! A store-backed model (fraud, purchase) takes one tensor of shape `[N]` per field of
//! the event type it scores: BYTES named after entity types (`user`, `card`) holding
//! ids, FP64 or FP32 named after numeric fields (`amount`), BYTES named after string
//! fields; row `i` of every tensor is one event. A model trained from a table takes
//! one FP64 or FP32 tensor `[N, K]` in its column order, as MLServer's scikit-learn
//! runtime does.

mod error;
pub mod recommend;
mod tensor;

pub use error::InferError;
pub use tensor::{Elements, Tensor};

use std::collections::BTreeMap;

use crate::definitions::Definitions;
use crate::events::RawEvent;
use crate::model::decision::decision_name;
use crate::registry::LoadedModel;
use crate::scoring::Scored;

/// The name of a table model's one input.
pub const TABLE_INPUT: &str = "input";
/// Reasons given when a request asks for them without a count.
pub const DEFAULT_REASONS: usize = 3;

/// What one input is to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    /// An entity type's ids (BYTES).
    Entity,
    /// A numeric field (FP64 or FP32).
    Number,
    /// A string field (BYTES).
    Text,
    /// A table model's whole rows, `K` columns (FP64 or FP32, `[N, K]`).
    Table(usize),
}

/// One input or output as `ModelMetadata` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub kind: Option<InputKind>,
}

/// What a model takes and gives over the protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    /// The event type a store-backed model scores (`None` for a table model).
    pub event_type: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

fn spec(
    name: &str,
    datatype: &'static str,
    shape: Vec<i64>,
    kind: Option<InputKind>,
) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        datatype,
        shape,
        kind,
    }
}

/// The signature of `model`, or why it cannot be served over the protocol.
pub fn signature(model: &LoadedModel, definitions: &Definitions) -> Result<Signature, InferError> {
    let body = &model.body;
    let mut outputs = Vec::new();
    if body.thresholds.is_some() {
        outputs.push(spec("probability", "FP64", vec![-1], None));
        outputs.push(spec("decision", "BYTES", vec![-1], None));
    } else {
        outputs.push(spec("prediction", "FP64", vec![-1], None));
    }
    outputs.push(spec("reasons", "BYTES", vec![-1], None));
    if body.model.inputs.is_some() {
        let columns = body.model.columns.len();
        return Ok(Signature {
            event_type: None,
            inputs: vec![spec(
                TABLE_INPUT,
                "FP64",
                vec![-1, columns as i64],
                Some(InputKind::Table(columns)),
            )],
            outputs,
        });
    }
    let unservable = |reason: String| InferError::Unservable {
        model: model.reference(),
        reason,
    };
    if let crate::model::Family::KMeans(_) = body.model.family {
        return Err(unservable(
            "it is a segments model, not served over this protocol yet: ask Score with an event naming its entity".into(),
        ));
    }
    let Some(event_type) = &body.scored_event else {
        return Err(unservable(
            "it does not say which event type it scores (trained before this was recorded)".into(),
        ));
    };
    let Some(definition) = definitions
        .event_types
        .iter()
        .find(|e| &e.name == event_type)
    else {
        return Err(unservable(format!(
            "it scores {event_type} events, which the definitions do not have"
        )));
    };
    let mut inputs = Vec::new();
    for slot in &definition.entities {
        let name = &definitions.entities[slot.entity].name;
        inputs.push(spec(name, "BYTES", vec![-1], Some(InputKind::Entity)));
    }
    for field in &definition.numbers {
        inputs.push(spec(&field.name, "FP64", vec![-1], Some(InputKind::Number)));
    }
    for field in &definition.strings {
        inputs.push(spec(&field.name, "BYTES", vec![-1], Some(InputKind::Text)));
    }
    Ok(Signature {
        event_type: Some(event_type.clone()),
        inputs,
        outputs,
    })
}

/// A request's rows, ready for the scoring path.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    /// One event per row, for a store-backed model.
    Events(Vec<RawEvent>),
    /// One whole vector per row, for a table model.
    Vectors(Vec<Vec<Option<f64>>>),
}

impl Rows {
    pub fn len(&self) -> usize {
        match self {
            Rows::Events(rows) => rows.len(),
            Rows::Vectors(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stamps every event with `event_time_ms` (unstamped events are scored as of now).
    pub fn at(&mut self, event_time_ms: i64) {
        if let Rows::Events(events) = self {
            for event in events {
                event.event_time_ms = event_time_ms;
            }
        }
    }
}

/// Checks `inputs` against `signature` and makes them rows, at most `max_rows`.
pub fn prepare(
    signature: &Signature,
    inputs: &[Tensor],
    max_rows: usize,
) -> Result<Rows, InferError> {
    if inputs.is_empty() {
        return Err(InferError::Request(format!(
            "inputs: none given (the model takes {})",
            names(signature)
        )));
    }
    let mut rows: Option<(usize, &str)> = None;
    let mut seen = std::collections::BTreeSet::new();
    for tensor in inputs {
        let Some(spec) = signature.inputs.iter().find(|s| s.name == tensor.name) else {
            return Err(InferError::tensor(
                &tensor.name,
                format!("not an input of this model (inputs: {})", names(signature)),
            ));
        };
        if !seen.insert(tensor.name.as_str()) {
            return Err(InferError::tensor(&tensor.name, "given twice"));
        }
        let numeric = matches!(spec.kind, Some(InputKind::Number | InputKind::Table(_)));
        let accepted = if numeric {
            ["FP64", "FP32"].as_slice()
        } else {
            ["BYTES"].as_slice()
        };
        if !accepted.contains(&tensor.datatype.as_str())
            || tensor.elements.datatype() != tensor.datatype
        {
            return Err(InferError::tensor(
                &tensor.name,
                format!(
                    "datatype {}, expected {}",
                    tensor.datatype,
                    accepted.join(" or ")
                ),
            ));
        }
        let count = match spec.kind {
            Some(InputKind::Table(columns)) => match tensor.shape.as_slice() {
                [n, k] if *k == columns as i64 && *n >= 0 => *n as usize,
                _ => {
                    return Err(InferError::tensor(
                        &tensor.name,
                        format!(
                            "shape {:?}, expected [N, {columns}] (the model's columns)",
                            tensor.shape
                        ),
                    ));
                }
            },
            _ => match tensor.shape.as_slice() {
                [n] | [n, 1] if *n >= 0 => *n as usize,
                _ => {
                    return Err(InferError::tensor(
                        &tensor.name,
                        format!(
                            "shape {:?}, expected [N] (one element per row)",
                            tensor.shape
                        ),
                    ));
                }
            },
        };
        let declared = tensor.declared_len()?;
        if tensor.elements.len() != declared {
            return Err(InferError::tensor(
                &tensor.name,
                format!(
                    "shape {:?} says {declared} elements, the contents hold {}",
                    tensor.shape,
                    tensor.elements.len()
                ),
            ));
        }
        match rows {
            None => rows = Some((count, &tensor.name)),
            Some((n, first)) if n != count => {
                return Err(InferError::tensor(
                    &tensor.name,
                    format!(
                        "{count} rows, but {first} has {n}: every input needs one element per row"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let (count, first) = rows.unwrap_or((0, ""));
    if count == 0 {
        return Err(InferError::tensor(
            first,
            "no rows (the batch dimension is 0)",
        ));
    }
    if count > max_rows {
        return Err(InferError::tensor(
            first,
            format!("{count} rows, more than the {max_rows} one request may score"),
        ));
    }
    if let Some(columns) = signature.inputs.iter().find_map(|s| match s.kind {
        Some(InputKind::Table(columns)) => Some(columns),
        _ => None,
    }) {
        return table_rows(&inputs[0], count, columns);
    }
    event_rows(signature, inputs, count)
}

fn table_rows(tensor: &Tensor, count: usize, columns: usize) -> Result<Rows, InferError> {
    let mut rows = Vec::with_capacity(count);
    for row in 0..count {
        let mut values = Vec::with_capacity(columns);
        for column in 0..columns {
            let value = tensor
                .elements
                .number(row * columns + column)
                .unwrap_or(f64::NAN);
            if !value.is_finite() {
                return Err(InferError::tensor(
                    &tensor.name,
                    format!("element [{row}, {column}] is {value}, not a finite number"),
                ));
            }
            values.push(Some(value));
        }
        rows.push(values);
    }
    Ok(Rows::Vectors(rows))
}

fn event_rows(signature: &Signature, inputs: &[Tensor], count: usize) -> Result<Rows, InferError> {
    let event_type = signature.event_type.clone().unwrap_or_default();
    let mut events: Vec<RawEvent> = (0..count)
        .map(|_| RawEvent {
            event_type: event_type.clone(),
            ..RawEvent::default()
        })
        .collect();
    for tensor in inputs {
        let kind = signature
            .inputs
            .iter()
            .find(|s| s.name == tensor.name)
            .and_then(|s| s.kind.clone());
        for (row, event) in events.iter_mut().enumerate() {
            match (&kind, &tensor.elements) {
                (Some(InputKind::Number), elements) => {
                    let value = elements.number(row).unwrap_or(f64::NAN);
                    event.numbers.insert(tensor.name.clone(), value);
                }
                (Some(kind @ (InputKind::Entity | InputKind::Text)), Elements::Bytes(values)) => {
                    let text = std::str::from_utf8(&values[row]).map_err(|_| {
                        InferError::tensor(&tensor.name, format!("element {row} is not UTF-8"))
                    })?;
                    let map = if *kind == InputKind::Entity {
                        &mut event.entities
                    } else {
                        &mut event.strings
                    };
                    map.insert(tensor.name.clone(), text.to_string());
                }
                _ => {}
            }
        }
    }
    Ok(Rows::Events(events))
}

fn names(signature: &Signature) -> String {
    signature
        .inputs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes one reason takes in an answer, about: its JSON object (feature name, value and
/// contribution at full precision) and the tensor's per-element overhead.
pub const REASON_BYTES: u64 = 128;

/// Bytes a number or a decision takes per row in an answer, with per-element overhead.
const ELEMENT_BYTES: u64 = 24;

/// What the answer to `rows` rows will take, about, from the request's shape alone (the
/// outputs [`outputs`] will give, and `reasons` per row), so a call can be refused before
/// any work.
pub fn answer_bytes(
    signature: &Signature,
    requested: &[String],
    rows: usize,
    reasons: usize,
) -> u64 {
    let per_row = |name: &str| match name {
        "reasons" => ELEMENT_BYTES + reasons as u64 * REASON_BYTES,
        _ => ELEMENT_BYTES,
    };
    let per_row: u64 = if requested.is_empty() {
        signature
            .outputs
            .iter()
            .map(|s| s.name.as_str())
            .filter(|name| *name != "reasons" || reasons > 0)
            .map(per_row)
            .sum()
    } else {
        requested.iter().map(|name| per_row(name)).sum()
    };
    per_row.saturating_mul(rows as u64)
}

/// The answer's tensors for `scored` (one per row): every output of the signature but
/// `reasons` unless `requested` names some (then those, in that order), and `reasons`
/// too when `reasons` is not 0.
pub fn outputs(
    signature: &Signature,
    scored: &[Scored],
    requested: &[String],
    reasons: usize,
) -> Result<Vec<Tensor>, InferError> {
    let wanted: Vec<&str> = if requested.is_empty() {
        signature
            .outputs
            .iter()
            .map(|s| s.name.as_str())
            .filter(|name| *name != "reasons" || reasons > 0)
            .collect()
    } else {
        requested.iter().map(String::as_str).collect()
    };
    let rows = vec![scored.len() as i64];
    let mut tensors = Vec::with_capacity(wanted.len());
    for name in wanted {
        if !signature.outputs.iter().any(|s| s.name == name) {
            let known: Vec<&str> = signature.outputs.iter().map(|s| s.name.as_str()).collect();
            return Err(InferError::tensor(
                format!("outputs.{name}"),
                format!(
                    "not an output of this model (outputs: {})",
                    known.join(", ")
                ),
            ));
        }
        let elements = match name {
            "probability" | "prediction" => {
                Elements::Fp64(scored.iter().map(|s| s.score).collect())
            }
            "decision" => Elements::Bytes(
                scored
                    .iter()
                    .map(|s| bytes::Bytes::from_static(decision_name(s.decision).as_bytes()))
                    .collect(),
            ),
            _ => Elements::Bytes(
                scored
                    .iter()
                    .map(|s| bytes::Bytes::from(reasons_json(s)))
                    .collect(),
            ),
        };
        tensors.push(Tensor::new(name, rows.clone(), elements));
    }
    Ok(tensors)
}

fn reasons_json(scored: &Scored) -> String {
    let reasons: Vec<BTreeMap<&str, serde_json::Value>> = scored
        .reasons
        .iter()
        .map(|r| {
            BTreeMap::from([
                ("feature", serde_json::json!(r.feature)),
                ("value", serde_json::json!(r.value)),
                ("contribution", serde_json::json!(r.contribution)),
            ])
        })
        .collect();
    serde_json::to_string(&reasons).unwrap_or_else(|_| "[]".into())
}

/// A request parameter's value, as either transport carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    Text(String),
}

/// Most reasons one row may ask for.
pub const MAX_REASONS: i64 = 50;

/// The request parameters streamscore reads; others are ignored, as the protocol asks.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Parameters {
    /// Reasons per row: the `reasons` parameter (true: a few; a count: that many), or a
    /// few when the `reasons` output is requested.
    pub reasons: usize,
    /// `event_time_ms`: the moment every row is scored as of (default now), so a
    /// caller can score a payment as of when it happened, or repeat a call exactly.
    pub event_time_ms: Option<i64>,
    /// `top_n`: how many recommendations a rule set answers (0: its default).
    pub top_n: usize,
}

impl Parameters {
    pub fn read<'a>(
        parameters: impl IntoIterator<Item = (&'a str, ParamValue)>,
        requested: &[String],
    ) -> Result<Parameters, InferError> {
        let mut read = Parameters {
            reasons: if requested.iter().any(|name| name == "reasons") {
                DEFAULT_REASONS
            } else {
                0
            },
            event_time_ms: None,
            top_n: 0,
        };
        for (name, value) in parameters {
            match (name, value) {
                ("reasons", ParamValue::Bool(on)) => {
                    read.reasons = if on { DEFAULT_REASONS } else { 0 };
                }
                ("reasons", ParamValue::Int(count)) if (0..=MAX_REASONS).contains(&count) => {
                    read.reasons = count as usize;
                }
                ("reasons", _) => {
                    return Err(InferError::Request(format!(
                        "parameters.reasons: true, false or a count from 0 to {MAX_REASONS}"
                    )));
                }
                ("top_n", ParamValue::Int(count))
                    if (1..=crate::scoring::recommend::MAX_RECOMMENDATIONS as i64)
                        .contains(&count) =>
                {
                    read.top_n = count as usize;
                }
                ("top_n", _) => {
                    return Err(InferError::Request(format!(
                        "parameters.top_n: a count from 1 to {}",
                        crate::scoring::recommend::MAX_RECOMMENDATIONS
                    )));
                }
                ("event_time_ms", ParamValue::Int(time)) if time > 0 => {
                    read.event_time_ms = Some(time);
                }
                ("event_time_ms", _) => {
                    return Err(InferError::Request(
                        "parameters.event_time_ms: a positive integer, milliseconds since the Unix epoch"
                            .into(),
                    ));
                }
                _ => {}
            }
        }
        Ok(read)
    }
}

//! `Recommend` as a V2 model: a rule set served over the Open Inference Protocol. The
//! inputs are one request's context as BYTES tensors (`user`, and optionally `device`,
//! `product` and `cart`); the outputs are the recommendations, best first: `product`
//! (BYTES), `probability` (FP64) and `reasons` (BYTES, one JSON object per product:
//! its rule, or its popularity). `parameters.top_n` says how many.

use bytes::Bytes;

use super::error::InferError;
use super::tensor::{Elements, Tensor};
use super::{InputKind, Signature, spec};
use crate::scoring::recommend::{RecommendInput, Recommended, Why};

const INPUTS: [&str; 4] = ["user", "device", "product", "cart"];

/// What a rule set takes and gives over the protocol.
pub fn signature() -> Signature {
    Signature {
        event_type: None,
        inputs: vec![
            spec("user", "BYTES", vec![1], Some(InputKind::Entity)),
            spec("device", "BYTES", vec![1], Some(InputKind::Entity)),
            spec("product", "BYTES", vec![1], Some(InputKind::Text)),
            spec("cart", "BYTES", vec![-1], Some(InputKind::Text)),
        ],
        outputs: vec![
            spec("product", "BYTES", vec![-1], None),
            spec("probability", "FP64", vec![-1], None),
            spec("reasons", "BYTES", vec![-1], None),
            // The recommended products the store holds nothing for (ranked last).
            spec("unknown_products", "BYTES", vec![-1], None),
        ],
    }
}

fn texts(tensor: &Tensor) -> Result<Vec<String>, InferError> {
    let Elements::Bytes(values) = &tensor.elements else {
        return Err(InferError::tensor(
            &tensor.name,
            format!("must be BYTES, got {}", tensor.datatype),
        ));
    };
    values
        .iter()
        .map(|value| {
            std::str::from_utf8(value)
                .map(str::to_string)
                .map_err(|_| InferError::tensor(&tensor.name, "must be UTF-8 text"))
        })
        .collect()
}

fn one(tensor: &Tensor) -> Result<String, InferError> {
    let mut values = texts(tensor)?;
    if values.len() != 1 {
        return Err(InferError::tensor(
            &tensor.name,
            format!("one value (shape [1]), got {}", values.len()),
        ));
    }
    Ok(values.remove(0))
}

/// The `Recommend` request the tensors describe, against `rules`.
pub fn input(
    rules: String,
    inputs: &[Tensor],
    top_n: usize,
    event_time_ms: Option<i64>,
) -> Result<RecommendInput, InferError> {
    let mut input = RecommendInput {
        rules,
        top_n,
        event_time_ms: event_time_ms.unwrap_or(0),
        ..RecommendInput::default()
    };
    let mut has_user = false;
    for tensor in inputs {
        match tensor.name.as_str() {
            "user" => {
                input.user = one(tensor)?;
                has_user = true;
            }
            "device" => input.device = Some(one(tensor)?),
            "product" => input.product = Some(one(tensor)?),
            "cart" => input.cart = texts(tensor)?,
            other => {
                return Err(InferError::tensor(
                    other,
                    format!("not an input of a rule set (inputs: {})", INPUTS.join(", ")),
                ));
            }
        }
    }
    if !has_user {
        return Err(InferError::tensor("user", "required"));
    }
    Ok(input)
}

/// The answer's tensors: every output, or those `requested` in that order.
pub fn outputs(recommended: &Recommended, requested: &[String]) -> Result<Vec<Tensor>, InferError> {
    let wanted: Vec<&str> = if requested.is_empty() {
        vec!["product", "probability", "reasons", "unknown_products"]
    } else {
        requested.iter().map(String::as_str).collect()
    };
    let shape = vec![recommended.items.len() as i64];
    let unknown_shape = vec![recommended.unknown_products.len() as i64];
    wanted
        .into_iter()
        .map(|name| {
            let elements = match name {
                "product" => Elements::Bytes(
                    recommended
                        .items
                        .iter()
                        .map(|item| Bytes::from(item.product.clone()))
                        .collect(),
                ),
                "probability" => {
                    Elements::Fp64(recommended.items.iter().map(|i| i.probability).collect())
                }
                "reasons" => Elements::Bytes(
                    recommended
                        .items
                        .iter()
                        .map(|item| Bytes::from(reason_json(&item.why)))
                        .collect(),
                ),
                "unknown_products" => {
                    let products = recommended.unknown_products.iter().cloned();
                    let elements = Elements::Bytes(products.map(Bytes::from).collect());
                    return Ok(Tensor::new(name, unknown_shape.clone(), elements));
                }
                other => {
                    return Err(InferError::tensor(
                        format!("outputs.{other}"),
                        "not an output of a rule set (outputs: product, probability, reasons, unknown_products)",
                    ));
                }
            };
            Ok(Tensor::new(name, shape.clone(), elements))
        })
        .collect()
}

fn reason_json(why: &Why) -> String {
    let value = match why {
        Why::Rule(rule) => serde_json::json!({"rule": {
            "antecedent": rule.antecedent,
            "consequent": rule.consequent,
            "support": rule.support,
            "confidence": rule.confidence,
            "lift": rule.lift,
        }}),
        Why::Popular(support) => serde_json::json!({"popular": {"support": support}}),
    };
    value.to_string()
}

//! The Open Inference Protocol (KServe V2) over REST, so `curl` can score: health,
//! server and model metadata, readiness and inference as JSON on its own HTTP listener
//! (`http.listen`). The same [`InferenceService`] answers as over gRPC; only the
//! encoding differs. Tritonclient's binary tensor extension is read too: a body whose
//! JSON header is `Inference-Header-Content-Length` bytes long, followed by the
//! tensors that say `binary_data_size`, each as gRPC raw contents.
//!
//! axum (on hyper) rather than the hand-written HTTP of the metrics endpoint: this door
//! takes bodies, paths with parameters and keep-alive connections from any client.
//! The metrics endpoint stays on its own port, so scrapes never queue behind inference
//! and the two can be exposed to different networks.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::InferenceService;
use super::auth::{Callers, v2_role};
use super::budget::{Budget, BudgetLayer, CallBudget, Refusal};
pub use super::rest_serve::{Doors, serve};
use crate::inference::{Elements, ParamValue, Parameters, Tensor};

/// The header of the binary tensor extension: how long the JSON part of the body is.
const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct Door {
    inference: Arc<InferenceService>,
    callers: Arc<Callers>,
}

/// An answer that went wrong: the gRPC status's code as HTTP, `{"error": message}`.
struct Failure(tonic::Status);

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure(status)
    }
}

impl From<crate::inference::InferError> for Failure {
    fn from(error: crate::inference::InferError) -> Self {
        Failure(error.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        use tonic::Code;
        let status = match self.0.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(json!({ "error": self.0.message() }))).into_response()
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure(tonic::Status::invalid_argument(message.into()))
}

/// Bytes a REST call holds per byte of its body while the JSON is parsed into a tree and
/// converted to tensors (an outside suite measured one 4 MB body adding 86 MB: ~20x).
pub const JSON_INFLATION: usize = 24;

/// The routes of the protocol, checked against `callers` as the gRPC calls are, and
/// charged to `budget` with the gRPC calls.
pub fn router(
    inference: Arc<InferenceService>,
    callers: Arc<Callers>,
    max_body: usize,
    budget: Arc<Budget>,
) -> Router {
    let door = Door { inference, callers };
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { axum::Json(json!({ "live": true })) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_at),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_at),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_at))
        .layer(BudgetLayer::new(budget, JSON_INFLATION, |_| false))
        .layer(middleware::from_fn_with_state(door.clone(), authorize))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(door)
}

/// The V2 gRPC method a REST path is the JSON form of.
fn v2_method(path: &str) -> &'static str {
    if path.starts_with("/v2/health/live") {
        "ServerLive"
    } else if path.starts_with("/v2/health/") {
        "ServerReady"
    } else if path.ends_with("/infer") {
        "ModelInfer"
    } else if path.ends_with("/ready") {
        "ModelReady"
    } else if path == "/v2" {
        "ServerMetadata"
    } else {
        "ModelMetadata"
    }
}

/// Each path needs what its gRPC form needs ([`v2_role`]: health open, inference the
/// score role, metadata the read role), when callers are configured (bearer tokens;
/// this listener has no TLS).
async fn authorize(State(door): State<Door>, request: Request, next: Next) -> Response {
    let role = v2_role(v2_method(request.uri().path()));
    if let Some(role) = role
        && let Err(status) = door.callers.authorize(&request, role, "call the REST API")
    {
        return Failure(status).into_response();
    }
    next.run(request).await
}

async fn server_ready(State(door): State<Door>) -> Response {
    let ready = door.inference.server_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> axum::Json<Value> {
    axum::Json(json!({
        "name": super::v2::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn model_metadata(
    State(door): State<Door>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    describe(&door, &name, "")
}

async fn model_metadata_at(
    State(door): State<Door>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, Failure> {
    describe(&door, &name, &version)
}

fn describe(door: &Door, name: &str, version: &str) -> Result<Response, Failure> {
    let (model, signature, versions) = door.inference.describe(name, version)?;
    let spec = |s: &crate::inference::TensorSpec| json!({ "name": s.name, "datatype": s.datatype, "shape": s.shape });
    Ok(axum::Json(json!({
        "name": model.name(),
        "versions": versions.iter().map(u32::to_string).collect::<Vec<_>>(),
        "platform": super::v2::SERVER_NAME,
        "inputs": signature.inputs.iter().map(spec).collect::<Vec<_>>(),
        "outputs": signature.outputs.iter().map(spec).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn model_ready(
    State(door): State<Door>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    ready(&door, &name, "")
}

async fn model_ready_at(
    State(door): State<Door>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, Failure> {
    ready(&door, &name, &version)
}

fn ready(door: &Door, name: &str, version: &str) -> Result<Response, Failure> {
    let ready = door.inference.ready(name, version)?;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, axum::Json(json!({ "name": name, "ready": ready }))).into_response())
}

async fn infer(
    State(door): State<Door>,
    Path(name): Path<String>,
    budget: Option<Extension<CallBudget>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let budget = budget.map(|Extension(budget)| budget);
    let body = match read_body(budget.as_ref(), body) {
        Ok(body) => body,
        Err(refused) => return Ok(*refused),
    };
    run(&door, &name, "", &headers, body, budget.as_ref()).await
}

async fn infer_at(
    State(door): State<Door>,
    Path((name, version)): Path<(String, String)>,
    budget: Option<Extension<CallBudget>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let budget = budget.map(|Extension(budget)| budget);
    let body = match read_body(budget.as_ref(), body) {
        Ok(body) => body,
        Err(refused) => return Ok(*refused),
    };
    run(&door, &name, &version, &headers, body, budget.as_ref()).await
}

/// The body, or why it could not be read: the budget's refusal (429) when it was one
/// (a body without a length is charged as it arrives).
fn read_body(
    budget: Option<&CallBudget>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Box<Response>> {
    body.map_err(|rejection| {
        Box::new(match budget.and_then(CallBudget::refusal) {
            Some(refused) => <axum::body::Body as Refusal>::refusal(&refused),
            None => rejection.into_response(),
        })
    })
}

/// Memory an answer takes per byte while it is built as a JSON tree and written.
const JSON_ANSWER_INFLATION: u64 = 8;

async fn run(
    door: &Door,
    name: &str,
    version: &str,
    headers: &HeaderMap,
    body: Bytes,
    budget: Option<&CallBudget>,
) -> Result<Response, Failure> {
    // With the binary extension the JSON is only the body's first part.
    let (header, mut binary) = match headers.get(HEADER_LENGTH) {
        Some(length) => {
            let length: usize = length
                .to_str()
                .ok()
                .and_then(|l| l.trim().parse().ok())
                .filter(|l| *l <= body.len())
                .ok_or_else(|| {
                    bad(format!(
                        "{HEADER_LENGTH}: a length within the body of {} bytes",
                        body.len()
                    ))
                })?;
            (body.slice(..length), body.slice(length..))
        }
        None => (body.clone(), Bytes::new()),
    };
    let request: Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("body: not a JSON inference request: {e}")))?;
    let Some(object) = request.as_object() else {
        return Err(bad("body: a JSON object with \"inputs\" expected"));
    };
    let inputs = object
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("inputs: a list of tensors expected"))?;
    let mut tensors = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        tensors.push(tensor(index, input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "body: {} bytes after the tensors' binary data",
            binary.len()
        )));
    }
    let requested: Vec<String> = object
        .get("outputs")
        .and_then(Value::as_array)
        .map(|outputs| {
            outputs
                .iter()
                .filter_map(|o| o.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let parameters = parameters(object.get("parameters"), &requested)?;
    let (model, outputs) = door
        .inference
        .infer(
            name,
            version,
            &tensors,
            &requested,
            parameters,
            super::v2::AnswerBudget {
                budget,
                inflation: JSON_ANSWER_INFLATION,
            },
        )
        .await?;
    let mut answer = json!({
        "model_name": model.name(),
        "model_version": model.version().to_string(),
        "outputs": outputs.iter().map(|t| json!({
            "name": t.name,
            "datatype": t.datatype,
            "shape": t.shape,
            "data": t.elements.to_json(),
        })).collect::<Vec<_>>(),
    });
    if let Some(id) = object.get("id").and_then(Value::as_str) {
        answer["id"] = json!(id);
    }
    Ok(axum::Json(answer).into_response())
}

/// Input `index` of a JSON request: `data` inline, or its binary part taken from the
/// front of `binary`.
fn tensor(index: usize, input: &Value, binary: &mut Bytes) -> Result<Tensor, Failure> {
    let field = |key: &str| input.get(key);
    let name = field("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("inputs[{index}].name: a string expected")))?
        .to_string();
    let datatype = field("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{name}: datatype, a string, expected")))?
        .to_string();
    let shape = field("shape")
        .and_then(Value::as_array)
        .and_then(|dims| dims.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
        .ok_or_else(|| bad(format!("{name}: shape, a list of integers, expected")))?;
    let binary_size = field("parameters")
        .and_then(|p| p.get("binary_data_size"))
        .and_then(Value::as_u64);
    let elements = match (binary_size, field("data")) {
        (Some(size), _) => {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > binary.len() {
                return Err(bad(format!(
                    "{name}: binary_data_size {size}, but {} bytes of binary data are left",
                    binary.len()
                )));
            }
            let part = binary.split_to(size);
            Elements::from_raw(&name, &datatype, &part)?
        }
        (None, Some(data)) => Elements::from_json(&name, &datatype, data)?,
        (None, None) => return Err(bad(format!("{name}: data expected"))),
    };
    Ok(Tensor {
        name,
        datatype,
        shape,
        elements,
    })
}

fn parameters(parameters: Option<&Value>, requested: &[String]) -> Result<Parameters, Failure> {
    let values = parameters
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| {
            let value = match value {
                Value::Bool(v) => ParamValue::Bool(*v),
                Value::Number(n) => match n.as_i64() {
                    Some(v) => ParamValue::Int(v),
                    None => ParamValue::Double(n.as_f64()?),
                },
                Value::String(v) => ParamValue::Text(v.clone()),
                _ => return None,
            };
            Some((name.as_str(), value))
        });
    Ok(Parameters::read(values, requested)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    #[test]
    fn each_rest_path_needs_what_its_grpc_form_needs() {
        let paths = [
            ("/v2/health/live", None),
            ("/v2/health/ready", None),
            ("/v2", Some(Role::Read)),
            ("/v2/models/fraud", Some(Role::Read)),
            ("/v2/models/fraud/versions/2", Some(Role::Read)),
            ("/v2/models/fraud/ready", Some(Role::Read)),
            ("/v2/models/fraud/versions/2/ready", Some(Role::Read)),
            ("/v2/models/fraud/infer", Some(Role::Score)),
            ("/v2/models/fraud/versions/2/infer", Some(Role::Score)),
        ];
        for (path, role) in paths {
            assert_eq!(v2_role(v2_method(path)), role, "{path}");
        }
    }
}

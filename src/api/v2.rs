//! The Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService`
//! on the main port, for clients that already speak it (tritonclient, the KServe
//! client). Thin handlers: tensors from the proto, the domain (`inference`) checks
//! them and makes rows, each row is scored by the same path as `Score`, and the scores
//! go back as tensors: raw when the request was raw (tritonclient's `as_numpy` reads
//! only raw outputs), typed otherwise.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Backend;
use super::budget::CallBudget;
use super::v2pb::{self, grpc_inference_service_server::GrpcInferenceService};
use crate::inference::{
    self, Elements, InferError, ParamValue, Parameters, Rows, Signature, Tensor,
};
use crate::registry::{LoadedModel, Registry};
use crate::scoring::recommend::{self, RecentFeatures};
use crate::scoring::{self, ScoreError, ScoreInput, Scored};

/// The server's name in `ServerMetadata`.
pub const SERVER_NAME: &str = "streamscore";

/// A model, its signature and every version of it loaded.
pub(crate) type Described = (Arc<LoadedModel>, Arc<Signature>, Vec<u32>);

/// Where an answer's estimated size is charged, and what building it costs per byte.
pub(crate) struct AnswerBudget<'a> {
    pub budget: Option<&'a CallBudget>,
    pub inflation: u64,
}

/// Memory an answer takes per byte while it is built as protobuf tensors and encoded.
const PROTOBUF_ANSWER_INFLATION: u64 = 2;

pub struct InferenceService {
    backend: Backend,
    registry: Arc<Registry>,
    max_rows: usize,
    /// Signatures by `name@version#created`: an artifact's never changes, and building
    /// one per call is a dozen allocations. Bounded by the artifacts ever loaded.
    signatures: parking_lot::RwLock<std::collections::HashMap<String, Arc<Signature>>>,
}

impl InferenceService {
    /// Answers from `backend`; a request may score at most `max_rows` rows.
    pub fn new(backend: Backend, registry: Arc<Registry>, max_rows: usize) -> InferenceService {
        InferenceService {
            backend,
            registry,
            max_rows,
            signatures: Default::default(),
        }
    }

    /// The model `name` at `version` (empty: the one served under the name).
    fn model(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, InferError> {
        if name.is_empty() {
            return Err(InferError::Request("model_name: required".into()));
        }
        let reference = if version.is_empty() {
            name.to_string()
        } else {
            format!("{name}@{version}")
        };
        // A scoring model, or a rule set (answered as `Recommend`).
        Ok(self.registry.resolve(&reference)?)
    }

    fn signature(&self, model: &LoadedModel) -> Result<Arc<Signature>, InferError> {
        // A file reloaded under the same version is another artifact: its creation
        // time tells them apart.
        let reference = format!("{}#{}", model.reference(), model.body.created_at_ms);
        if let Some(signature) = self.signatures.read().get(&reference) {
            return Ok(Arc::clone(signature));
        }
        let signature = Arc::new(match model.rules() {
            Some(_) => inference::recommend::signature(),
            None => inference::signature(model, &self.registry_definitions())?,
        });
        self.signatures
            .write()
            .insert(reference, Arc::clone(&signature));
        Ok(signature)
    }

    fn registry_definitions(&self) -> Arc<crate::definitions::Definitions> {
        match &self.backend {
            Backend::Embedded(store) => Arc::clone(store.definitions()),
            #[cfg(feature = "cluster")]
            Backend::Online(scorer) => Arc::clone(scorer.definitions()),
        }
    }

    /// Runs `model_name` (at `version`, empty: the one served) on `inputs`: the rows
    /// checked, the answer's size charged to the call (refused up front when too big),
    /// the rows scored, the outputs asked for. Both transports call this.
    pub(crate) async fn infer(
        &self,
        model_name: &str,
        version: &str,
        inputs: &[Tensor],
        requested: &[String],
        parameters: Parameters,
        answer: AnswerBudget<'_>,
    ) -> Result<(Arc<LoadedModel>, Vec<Tensor>), Status> {
        let model = self.model(model_name, version)?;
        if model.rules().is_some() {
            return self.recommend(model, inputs, requested, parameters).await;
        }
        let signature = self.signature(&model)?;
        let mut rows = inference::prepare(&signature, inputs, self.max_rows)?;
        if let Some(budget) = answer.budget {
            let bytes =
                inference::answer_bytes(&signature, requested, rows.len(), parameters.reasons);
            budget
                .charge_answer(bytes, answer.inflation)
                .map_err(|refused| Status::resource_exhausted(refused.to_string()))?;
        }
        if let Some(time) = parameters.event_time_ms {
            rows.at(time);
        }
        let scored = self.score_rows(&model, rows, parameters.reasons).await?;
        let outputs = inference::outputs(&signature, &scored, requested, parameters.reasons)?;
        Ok((model, outputs))
    }

    /// A rule set's answer: `Recommend` for the context the tensors give.
    async fn recommend(
        &self,
        rules: Arc<LoadedModel>,
        inputs: &[Tensor],
        requested: &[String],
        parameters: Parameters,
    ) -> Result<(Arc<LoadedModel>, Vec<Tensor>), Status> {
        let input = inference::recommend::input(
            rules.reference(),
            inputs,
            parameters.top_n,
            parameters.event_time_ms,
        )?;
        let features = RecentFeatures::default();
        let recommended = match &self.backend {
            Backend::Embedded(store) => {
                recommend::recommend(store, &self.registry, &features, input)?
            }
            #[cfg(feature = "cluster")]
            Backend::Online(scorer) => scorer.recommend(&self.registry, &features, input).await?,
        };
        let outputs = inference::recommend::outputs(&recommended, requested)?;
        Ok((rules, outputs))
    }

    /// Whether `name` at `version` is loaded and can be served over the protocol.
    pub(crate) fn ready(&self, name: &str, version: &str) -> Result<bool, Status> {
        match self.model(name, version) {
            Ok(model) => Ok(self.signature(&model).is_ok()),
            Err(InferError::Registry(_)) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Whether any model is loaded.
    pub(crate) fn server_ready(&self) -> bool {
        !self.registry.catalog().models().is_empty()
    }

    /// A model's signature and every version of it loaded.
    pub(crate) fn describe(&self, name: &str, version: &str) -> Result<Described, Status> {
        let model = self.model(name, version)?;
        let signature = self.signature(&model)?;
        let mut versions: Vec<u32> = self
            .registry
            .catalog()
            .models()
            .iter()
            .filter(|m| m.name() == model.name())
            .map(|m| m.version())
            .collect();
        versions.sort_unstable();
        Ok((model, signature, versions))
    }

    /// Scores every row by the path `Score` takes, pinned to `model`'s version.
    async fn score_rows(
        &self,
        model: &Arc<LoadedModel>,
        rows: Rows,
        reasons: usize,
    ) -> Result<Vec<Scored>, Status> {
        let mut scored = Vec::with_capacity(rows.len());
        match rows {
            Rows::Vectors(rows) => {
                for (row, values) in rows.into_iter().enumerate() {
                    let one = scoring::score_vector(Arc::clone(model), values, reasons)
                        .map_err(|error| row_status(row, error))?;
                    scored.push(one);
                }
            }
            Rows::Events(rows) => {
                for (row, event) in rows.into_iter().enumerate() {
                    let input = ScoreInput {
                        model: model.reference(),
                        event,
                        include_features: false,
                        record: false,
                        reasons,
                        shadow: Vec::new(),
                    };
                    let one = match &self.backend {
                        Backend::Embedded(store) => scoring::score(store, &self.registry, input)
                            .await
                            .map_err(|error| row_status(row, error))?,
                        #[cfg(feature = "cluster")]
                        Backend::Online(scorer) => {
                            match scorer.score_input(&self.registry, input).await {
                                Ok(one) => one,
                                Err(crate::online::ScorerError::Score(error)) => {
                                    return Err(row_status(row, error));
                                }
                                Err(error) => return Err(error.into()),
                            }
                        }
                    };
                    scored.push(one);
                }
            }
        }
        Ok(scored)
    }
}

/// A row's scoring error as a status naming the row, and the tensor when a field of
/// the event was refused (`numbers.amount` is the `amount` tensor).
fn row_status(row: usize, error: ScoreError) -> Status {
    if let ScoreError::Refused(refusal) = &error {
        let tensor = refusal
            .field
            .split_once('.')
            .filter(|(part, _)| matches!(*part, "entities" | "numbers" | "strings"))
            .map_or(refusal.field.as_str(), |(_, name)| name);
        return Status::invalid_argument(format!("{tensor}[{row}]: {}", refusal.reason));
    }
    let status = Status::from(error);
    Status::new(status.code(), format!("row {row}: {}", status.message()))
}

/// The input tensors of a request, from typed or raw contents.
fn tensors(request: &mut v2pb::ModelInferRequest) -> Result<Vec<Tensor>, InferError> {
    let raw = std::mem::take(&mut request.raw_input_contents);
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(InferError::Request(format!(
            "raw_input_contents: {} entries for {} inputs (one per input, in order)",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for (index, mut input) in std::mem::take(&mut request.inputs).into_iter().enumerate() {
        let elements = match raw.get(index) {
            Some(bytes) => {
                if input.contents.is_some() {
                    return Err(InferError::tensor(
                        &input.name,
                        "has typed contents and raw_input_contents: send one",
                    ));
                }
                Elements::from_raw(&input.name, &input.datatype, bytes)?
            }
            None => typed(&mut input)?,
        };
        tensors.push(Tensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            elements,
        });
    }
    Ok(tensors)
}

fn typed(input: &mut v2pb::model_infer_request::InferInputTensor) -> Result<Elements, InferError> {
    let contents = input.contents.take().unwrap_or_default();
    match input.datatype.as_str() {
        "FP64" => Ok(Elements::Fp64(contents.fp64_contents)),
        "FP32" => Ok(Elements::Fp32(contents.fp32_contents)),
        "BYTES" => Ok(Elements::Bytes(contents.bytes_contents)),
        other => Err(InferError::tensor(
            &input.name,
            format!("datatype {other:?} is not served here (FP64, FP32 or BYTES)"),
        )),
    }
}

/// The request's parameters as the domain reads them.
fn parameters(
    parameters: &std::collections::BTreeMap<String, v2pb::InferParameter>,
    requested: &[String],
) -> Result<Parameters, InferError> {
    use v2pb::infer_parameter::ParameterChoice;
    let values = parameters.iter().filter_map(|(name, parameter)| {
        let value = match parameter.parameter_choice.clone()? {
            ParameterChoice::BoolParam(v) => ParamValue::Bool(v),
            ParameterChoice::Int64Param(v) => ParamValue::Int(v),
            ParameterChoice::Uint64Param(v) => {
                ParamValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
            }
            ParameterChoice::DoubleParam(v) => ParamValue::Double(v),
            ParameterChoice::StringParam(v) => ParamValue::Text(v),
        };
        Some((name.as_str(), value))
    });
    Parameters::read(values, requested)
}

fn metadata(spec: &inference::TensorSpec) -> v2pb::model_metadata_response::TensorMetadata {
    v2pb::model_metadata_response::TensorMetadata {
        name: spec.name.clone(),
        datatype: spec.datatype.to_string(),
        shape: spec.shape.clone(),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _request: Request<v2pb::ServerLiveRequest>,
    ) -> Result<Response<v2pb::ServerLiveResponse>, Status> {
        Ok(Response::new(v2pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<v2pb::ServerReadyRequest>,
    ) -> Result<Response<v2pb::ServerReadyResponse>, Status> {
        Ok(Response::new(v2pb::ServerReadyResponse {
            ready: self.server_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<v2pb::ModelReadyRequest>,
    ) -> Result<Response<v2pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(v2pb::ModelReadyResponse {
            ready: self.ready(&request.name, &request.version)?,
        }))
    }

    async fn server_metadata(
        &self,
        _request: Request<v2pb::ServerMetadataRequest>,
    ) -> Result<Response<v2pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(v2pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<v2pb::ModelMetadataRequest>,
    ) -> Result<Response<v2pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let (model, signature, versions) = self.describe(&request.name, &request.version)?;
        let mut properties = std::collections::BTreeMap::new();
        properties.insert("version".to_string(), model.version().to_string());
        properties.insert(
            "family".to_string(),
            model.body.model.family_name().to_string(),
        );
        if let Some(event_type) = &signature.event_type {
            properties.insert("scored_event".to_string(), event_type.clone());
        }
        Ok(Response::new(v2pb::ModelMetadataResponse {
            name: model.name().to_string(),
            versions: versions.iter().map(u32::to_string).collect(),
            platform: SERVER_NAME.into(),
            inputs: signature.inputs.iter().map(metadata).collect(),
            outputs: signature.outputs.iter().map(metadata).collect(),
            properties,
        }))
    }

    async fn model_infer(
        &self,
        request: Request<v2pb::ModelInferRequest>,
    ) -> Result<Response<v2pb::ModelInferResponse>, Status> {
        let budget = request.extensions().get::<CallBudget>().cloned();
        let mut request = request.into_inner();
        let raw = !request.raw_input_contents.is_empty();
        let inputs = tensors(&mut request)?;
        let requested: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        let parameters = parameters(&request.parameters, &requested)?;
        let (model, outputs) = self
            .infer(
                &request.model_name,
                &request.model_version,
                &inputs,
                &requested,
                parameters,
                AnswerBudget {
                    budget: budget.as_ref(),
                    inflation: PROTOBUF_ANSWER_INFLATION,
                },
            )
            .await?;
        let mut response = v2pb::ModelInferResponse {
            model_name: model.name().to_string(),
            model_version: model.version().to_string(),
            id: request.id,
            ..Default::default()
        };
        for tensor in outputs {
            if raw {
                response.raw_output_contents.push(tensor.elements.to_raw());
            }
            let contents = (!raw).then(|| match tensor.elements {
                Elements::Fp64(values) => v2pb::InferTensorContents {
                    fp64_contents: values,
                    ..Default::default()
                },
                Elements::Fp32(values) => v2pb::InferTensorContents {
                    fp32_contents: values,
                    ..Default::default()
                },
                Elements::Bytes(values) => v2pb::InferTensorContents {
                    bytes_contents: values,
                    ..Default::default()
                },
            });
            response
                .outputs
                .push(v2pb::model_infer_response::InferOutputTensor {
                    name: tensor.name,
                    datatype: tensor.datatype,
                    shape: tensor.shape,
                    parameters: Default::default(),
                    contents,
                });
        }
        Ok(Response::new(response))
    }
}

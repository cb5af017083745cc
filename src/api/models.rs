//! The `Models` service: list, show, load and alias models in the registry.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::pb::{self, models_server::Models};
use crate::registry::{Catalog, LoadedModel, Registry};

/// `LoadModel` calls read files on blocking threads: at most this many at once, so
/// callers cannot fill tokio's blocking pool (snapshots and eviction need it too).
const CONCURRENT_LOADS: usize = 2;

/// A load still running after this answers DEADLINE_EXCEEDED (the read itself is
/// bounded by the size limit and only regular files are opened).
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ModelsService {
    registry: Arc<Registry>,
    loads: Arc<tokio::sync::Semaphore>,
}

impl ModelsService {
    pub fn new(registry: Arc<Registry>) -> ModelsService {
        ModelsService {
            registry,
            loads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LOADS)),
        }
    }
}

fn summary(model: &LoadedModel, catalog: &Catalog) -> pb::ModelSummary {
    pb::ModelSummary {
        name: model.name().to_string(),
        version: model.version(),
        family: model.body.model.family_name().to_string(),
        path: model.path.display().to_string(),
        created_at_ms: model.body.created_at_ms,
        serving: catalog.serving(model.name()) == Some(model.version()),
        metrics: metrics(model),
    }
}

fn metrics(model: &LoadedModel) -> Vec<pb::Metric> {
    model
        .body
        .metrics
        .iter()
        .map(|(name, value)| pb::Metric {
            name: name.clone(),
            value: *value,
        })
        .collect()
}

fn detail(model: &LoadedModel, catalog: &Catalog) -> pb::ModelDetail {
    let body = &model.body;
    pb::ModelDetail {
        summary: Some(summary(model, catalog)),
        columns: body.model.columns.clone(),
        metrics: metrics(model),
        review_threshold: body.thresholds.map(|t| t.review),
        block_threshold: body.thresholds.and_then(|t| t.block),
        trained_from_ms: body.trained_from_ms,
        trained_to_ms: body.trained_to_ms,
        definitions_fingerprint: format!("{:016x}", body.definitions_fingerprint),
    }
}

#[tonic::async_trait]
impl Models for ModelsService {
    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let catalog = self.registry.catalog();
        Ok(Response::new(pb::ListModelsResponse {
            models: catalog
                .models()
                .iter()
                .map(|m| summary(m, &catalog))
                .collect(),
            aliases: catalog
                .aliases()
                .into_iter()
                .map(|(alias, target)| pb::Alias { alias, target })
                .collect(),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelDetail>, Status> {
        let catalog = self.registry.catalog();
        let model = catalog.resolve(&request.into_inner().model)?;
        Ok(Response::new(detail(&model, &catalog)))
    }

    async fn load_model(
        &self,
        request: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::ModelDetail>, Status> {
        let path = request.into_inner().path;
        let Ok(permit) = Arc::clone(&self.loads).try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{CONCURRENT_LOADS} model loads are already running; try again when they end"
            )));
        };
        let registry = Arc::clone(&self.registry);
        let loading = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            registry.load_requested(&path)
        });
        let model = tokio::time::timeout(LOAD_TIMEOUT, loading)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "the model load did not finish within {} s",
                    LOAD_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(detail(&model, &self.registry.catalog())))
    }

    async fn set_alias(
        &self,
        request: Request<pb::SetAliasRequest>,
    ) -> Result<Response<pb::ModelDetail>, Status> {
        // Saving the aliases fsyncs a file and its folder: off the request runtime, so
        // a slow disk stalls this call and not the scores beside it.
        let by = caller_name(&request);
        let request = request.into_inner();
        let registry = Arc::clone(&self.registry);
        let model = tokio::task::spawn_blocking(move || {
            registry.set_alias_by(&request.alias, &request.target, &by)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(detail(&model, &self.registry.catalog())))
    }

    async fn retire_model(
        &self,
        request: Request<pb::RetireModelRequest>,
    ) -> Result<Response<pb::RetireModelResponse>, Status> {
        let by = caller_name(&request);
        let model = request.into_inner().model;
        // Moving files fsyncs two folders: off the request runtime, like SetAlias.
        let registry = Arc::clone(&self.registry);
        let retired = tokio::task::spawn_blocking(move || registry.retire(&model, &by))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::RetireModelResponse {
            model: retired.model,
            moved_to: retired.moved_to.display().to_string(),
        }))
    }
}

/// Who made an admin call, for the audit log ("anonymous" without configured callers).
fn caller_name<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_string(), |caller| caller.name.to_string())
}

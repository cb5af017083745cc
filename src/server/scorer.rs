//! The scorer role (cargo feature `cluster`): answers `Score`, `GetFeatures`, V2 and
//! recorded calls from the online store with the same gRPC face, checks and errors as
//! the embedded server; admin calls on the admin listener when there is one.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::ServerError;
use super::doors::{
    grpc_builder, health_at_start, reflection_services, report_scoring_health, serve_admin,
    without_nagle,
};
use super::open::{
    bind_admin, load_definitions, open_registry, open_samples, require_redis, serve_metrics,
};
use crate::api::auth::{AuthLayer, Callers};
use crate::api::metrics::Metrics;
use crate::api::pb::features_server::FeaturesServer;
use crate::api::pb::models_server::ModelsServer;
use crate::api::pb::scoring_server::ScoringServer;
use crate::api::prometheus::Render;
use crate::api::v2pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::{Backend, FeaturesService, InferenceService, ModelsService, ScoringService};
use crate::config::Settings;
use crate::events::Limits;
use crate::features::EngineSettings;
use crate::online::{OnlineScorer, Recording, RedisAccess, RedisOnline};
use crate::registry::Registry;

/// How a scorer records (`record` on `Score`): to the first of `kafka.topics` when
/// `kafka.brokers` names brokers, answers kept for the routers' dedup horizon; `None`
/// (recorded calls refused, saying why) without them.
fn recording(settings: &Settings) -> Result<Option<Recording>, ServerError> {
    let recorder = crate::kafka::produce::EventRecorder::from_settings(&settings.kafka)
        .map_err(|error| ServerError::Setup(format!("the events topic producer: {error}")))?;
    Ok(recorder.map(|recorder| {
        tracing::info!(
            topic = recorder.topic(),
            "scorer: recorded calls go to the events topic"
        );
        Recording {
            sink: Arc::new(recorder),
            answers_kept_ms: u64::try_from(settings.ingest.dedup_horizon.0).unwrap_or(1),
        }
    }))
}

/// Serves `Score` and `GetFeatures` from the online store on `listener` until
/// `shutdown` resolves.
pub async fn run_scorer(
    listener: TcpListener,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    require_redis(settings)?;
    let definitions = load_definitions(settings)?;
    let scorer = connect_scorer(settings, Arc::clone(&definitions)).await?;
    let registry = open_registry(settings, definitions).await?;
    let watcher = tokio::spawn(crate::registry::watch(
        Arc::clone(&registry),
        settings.models.watch_interval.as_duration(),
    ));
    let (health, health_service) = health_at_start().await;
    let scoring_health = tokio::spawn(report_scoring_health(
        health.clone(),
        Arc::clone(&registry),
        settings.models.watch_interval.as_duration(),
    ));
    let metrics = Arc::new(Metrics::default());
    let callers = Callers::from_settings(&settings.auth).map_err(ServerError::Setup)?;
    let (stop_scrapes, scrapes_stopped) = tokio::sync::watch::channel(false);
    let budget = Arc::new(crate::api::budget::Budget::from_settings(&settings.limits));
    let (admin_serving, main_auth) = serve_admin(
        bind_admin(settings).await?,
        settings,
        &metrics,
        AuthLayer::new(callers),
        &budget,
        &registry,
        health_service.clone(),
        scrapes_stopped.clone(),
    )?;
    let render = scorer_metrics(&metrics, &scorer, &registry);
    let scrapes = serve_metrics(settings, render, scrapes_stopped).await?;
    let addr = listener.local_addr().unwrap_or(settings.listen);
    // Same words as the embedded server's line, the address last: tools wait for it.
    tracing::info!(role = "scorer", metrics = %scrapes.addr, addr = %addr, "streamscore listening");
    let routes = scorer_routes(settings, scorer, registry, &metrics)?.add_service(health_service);
    let served = grpc_builder(settings, &metrics, main_auth, &budget)?
        .add_routes(routes)
        .serve_with_incoming_shutdown(without_nagle(listener), shutdown)
        .await;
    watcher.abort();
    scoring_health.abort();
    if let Some(admin) = admin_serving {
        admin.abort();
    }
    let _ = stop_scrapes.send(true);
    if let Some(task) = scrapes.task {
        task.await?;
    }
    Ok(served?)
}

/// The online scorer the settings describe: the Redis Cluster, the engine's and
/// validation's settings, the cache, and recording when brokers are named.
async fn connect_scorer(
    settings: &Settings,
    definitions: Arc<crate::definitions::Definitions>,
) -> Result<Arc<OnlineScorer>, ServerError> {
    let online = RedisOnline::connect_with(&RedisAccess::from(&settings.cluster))
        .await
        .map_err(|e| ServerError::Setup(e.to_string()))?;
    let mut scorer = OnlineScorer::new(online, definitions, EngineSettings::from(&settings.ingest))
        .with_limits(Limits::from(&settings.ingest))
        .with_cache(
            settings.cluster.scorer_cache.as_duration(),
            settings.cluster.scorer_cache_entries,
        );
    if let Some(recording) = recording(settings)? {
        scorer = scorer.with_recording(recording);
    }
    Ok(Arc::new(scorer))
}

/// A scorer's metrics: the calls, the models loaded and the age of what it read.
fn scorer_metrics(
    metrics: &Arc<Metrics>,
    scorer: &Arc<OnlineScorer>,
    registry: &Arc<Registry>,
) -> Render {
    let (metrics, scorer, registry) = (
        Arc::clone(metrics),
        Arc::clone(scorer),
        Arc::clone(registry),
    );
    Arc::new(move || {
        let mut text = metrics.render(&[(
            "streamscore_models_loaded",
            "model versions in the registry",
            registry.catalog().models().len() as f64,
        )]);
        scorer.read_ages().render(
            &mut text,
            "streamscore_scorer_read_age_seconds",
            "how old the data behind each read was: now - the newest event time written by the aggregators",
        );
        text
    })
}

/// Reflection, Scoring, Features, Models and V2 on the online store, each with the
/// message limit.
fn scorer_routes(
    settings: &Settings,
    scorer: Arc<OnlineScorer>,
    registry: Arc<Registry>,
    metrics: &Arc<Metrics>,
) -> Result<tonic::service::Routes, ServerError> {
    let max_message = settings.ingest.max_message_bytes;
    let (reflection, reflection_v1alpha) = reflection_services()?;
    let backend = Backend::Online(scorer);
    let scoring = ScoringService::on(backend.clone(), Arc::clone(&registry))
        .with_samples(open_samples(settings)?)
        .with_drift(settings.drift, Arc::clone(metrics));
    let inference = InferenceService::new(
        backend.clone(),
        Arc::clone(&registry),
        settings.ingest.max_batch_events,
    );
    Ok(tonic::service::Routes::new(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ScoringServer::new(scoring).max_decoding_message_size(max_message))
        .add_service(
            FeaturesServer::new(FeaturesService::on(backend))
                .max_decoding_message_size(max_message),
        )
        .add_service(ModelsServer::new(ModelsService::new(registry)))
        .add_service(
            GrpcInferenceServiceServer::new(inference).max_decoding_message_size(max_message),
        ))
}

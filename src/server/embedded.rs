//! The embedded role, one process holding everything: the event log and the engine
//! (`FeatureStore`), gRPC and REST, the Kafka source and scoring stream, snapshots and
//! eviction. `run` takes bound listeners and a shutdown future, so tests start the real
//! server on port 0 and stop it when they are done. On shutdown it stops accepting,
//! drains in-flight calls, flushes the log and writes a final snapshot.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::ServerError;
use super::doors::{
    grpc_builder, health_at_start, reflection_services, report_scoring_health, serve_admin,
    serve_rest, without_nagle,
};
use super::open::{bind, bind_admin, load_definitions, open_registry, open_samples};
use crate::api::auth::{AuthLayer, Callers};
use crate::api::budget::Budget;
use crate::api::encoded::server::ingest_server::IngestServer;
use crate::api::metrics::Metrics;
use crate::api::pb::features_server::FeaturesServer;
use crate::api::pb::models_server::ModelsServer;
use crate::api::pb::scoring_server::ScoringServer;
use crate::api::prometheus;
use crate::api::v2pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::{
    Backend, Drain, FeaturesService, InferenceService, IngestService, ModelsService, ScoringService,
};
use crate::background::Background;
use crate::config::Settings;
use crate::registry::Registry;
use crate::store::FeatureStore;

/// After the drain deadline, how long the last acks may take before connections are
/// dropped.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How often expired entities are swept out of memory.
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

/// Opens the store (recovering from disk) on a blocking thread.
pub async fn open_store(settings: &Settings) -> Result<Arc<FeatureStore>, ServerError> {
    let definitions = load_definitions(settings)?;
    let settings = settings.clone();
    let (store, report) =
        tokio::task::spawn_blocking(move || FeatureStore::open(&settings, definitions)).await??;
    tracing::info!(
        snapshot_seq = ?report.snapshot_seq,
        replayed = report.replayed,
        replay_threads = report.replay_threads,
        truncated_bytes = report.truncated_bytes,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "feature store recovered"
    );
    Ok(Arc::new(store))
}

/// Binds `settings.listen`, opens the store and serves until `shutdown` resolves.
pub(super) async fn serve(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let store = open_store(settings).await?;
    let listener = bind(settings.listen).await?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(settings.listen), "streamscore listening");
    run(listener, store, settings, shutdown).await
}

/// The sockets a server answers on.
pub struct Listeners {
    pub grpc: TcpListener,
    /// Prometheus scrapes; `None` = no metrics endpoint.
    pub metrics: Option<TcpListener>,
    /// Admin calls (LoadModel, SetAlias, RetireModel) only; `None` = on `grpc`.
    pub admin: Option<TcpListener>,
    /// The REST door (Open Inference Protocol as JSON); `None` = none.
    pub http: Option<TcpListener>,
}

/// Serves the gRPC API on `listener` (and metrics where `settings.metrics.listen` says)
/// until `shutdown` resolves, then closes the store.
pub async fn run(
    listener: TcpListener,
    store: Arc<FeatureStore>,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let metrics = match settings.metrics.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let admin = bind_admin(settings).await?;
    let http = match settings.http.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    run_with(
        Listeners {
            grpc: listener,
            metrics,
            admin,
            http,
        },
        store,
        settings,
        shutdown,
    )
    .await
}

/// Says at start whether candidates are shadowed, and which are now (versions found
/// later are shadowed by the same rule).
fn log_shadowing(models: &crate::config::ModelSettings, registry: &Registry) {
    if !models.shadow {
        tracing::info!(
            "shadow scoring off (serve --shadow, or models.shadow = true, scores candidates beside the serving version)"
        );
        return;
    }
    let catalog = registry.catalog();
    let loaded = catalog.models();
    let mut names: Vec<&str> = loaded.iter().map(|m| m.name()).collect();
    names.dedup();
    let shadowed: Vec<String> = names
        .iter()
        .filter_map(|name| {
            let serving = catalog.serving(name)?;
            let chosen = catalog.shadowed(
                name,
                &models.shadow_candidates,
                crate::config::DEFAULT_SHADOWED,
            );
            (!chosen.is_empty()).then(|| {
                let chosen: Vec<String> = chosen.iter().map(|m| m.reference()).collect();
                format!("{} beside {name}@{serving}", chosen.join(" and "))
            })
        })
        .collect();
    let rule = match models.shadow_candidates.is_empty() {
        true => format!(
            "the newest {} candidates of each model",
            crate::config::DEFAULT_SHADOWED
        ),
        false => format!("models.shadow_candidates = {:?}", models.shadow_candidates),
    };
    let shadowed = match shadowed.is_empty() {
        true => "none yet (versions found later are shadowed by the rule)".to_string(),
        false => shadowed.join("; "),
    };
    tracing::info!(rule = %rule, shadowed = %shadowed, "shadow scoring on");
}

/// Serves on `listeners` until `shutdown` resolves, then closes the store. Health says
/// NOT_SERVING for scoring until the models are loaded.
pub async fn run_with(
    listeners: Listeners,
    store: Arc<FeatureStore>,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (health, health_service) = health_at_start().await;
    health.set_serving::<IngestServer<IngestService>>().await;
    let registry = open_registry(settings, Arc::clone(store.definitions())).await?;
    if registry.catalog().models().is_empty() {
        tracing::warn!(dir = %settings.models.dir.display(), "no model loaded: Score answers NOT_FOUND until one is");
    }
    log_shadowing(&settings.models, &registry);
    let mut helpers = spawn_helpers(settings, &health, &store, &registry);
    let (draining, draining_rx) = tokio::sync::watch::channel(false);
    let drain_started = draining_rx.clone();
    #[cfg(feature = "kafka")]
    let kafka = start_kafka(
        settings,
        &store,
        &registry,
        &draining_rx,
        &health,
        &mut helpers,
    )?;
    let metrics = Arc::new(Metrics::default());
    let scrapes = listeners.metrics.map(|listener| {
        serve_scrapes(
            listener,
            prometheus::Sources {
                metrics: Arc::clone(&metrics),
                store: Arc::clone(&store),
                registry: Arc::clone(&registry),
                extra: extra_metrics(
                    #[cfg(feature = "kafka")]
                    &kafka,
                ),
            },
        )
    });
    let drain_timeout = settings.shutdown.drain_timeout.as_duration();
    let drain = Drain {
        draining: draining_rx,
        timeout: drain_timeout,
    };
    let callers = Callers::from_settings(&settings.auth).map_err(ServerError::Setup)?;
    let budget = Arc::new(Budget::from_settings(&settings.limits));
    helpers
        .push(tokio::spawn(crate::api::give_back::after_load(Arc::clone(&budget))).abort_handle());
    let (admin_serving, main_auth) = serve_admin(
        listeners.admin,
        settings,
        &metrics,
        AuthLayer::new(callers),
        &budget,
        &registry,
        health_service.clone(),
        drain_started.clone(),
    )?;
    let inference = Arc::new(InferenceService::new(
        Backend::Embedded(Arc::clone(&store)),
        Arc::clone(&registry),
        settings.ingest.max_batch_events,
    ));
    let rest = serve_rest(
        listeners.http,
        &inference,
        settings,
        &budget,
        drain_started.clone(),
    )?;
    let services = Services {
        store: &store,
        registry: &registry,
        metrics: &metrics,
        budget: &budget,
        drain,
    };
    let routes = services
        .routes(settings, inference)?
        .add_service(health_service);
    let serving = grpc_builder(settings, &metrics, main_auth, &budget)?
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            without_nagle(listeners.grpc),
            drain_on(shutdown, draining, drain_timeout),
        );
    let result = until_drained(serving, drain_started, drain_timeout).await;
    if let Some(admin) = admin_serving {
        admin.abort();
    }
    if let Some(rest) = rest {
        rest.abort();
    }
    #[cfg(feature = "kafka")]
    kafka.join().await;
    drop(helpers);
    if let Some((stop, task)) = scrapes {
        let _ = stop.send(());
        let _ = task.await;
    }
    tracing::info!("server stopped accepting; flushing the log and writing a final snapshot");
    tokio::task::spawn_blocking(move || store.close()).await??;
    result?;
    Ok(())
}

/// The tasks beside the embedded server: the health of `Scoring` and `Ingest`, the
/// models directory's watcher, snapshots and eviction.
fn spawn_helpers(
    settings: &Settings,
    health: &tonic_health::server::HealthReporter,
    store: &Arc<FeatureStore>,
    registry: &Arc<Registry>,
) -> Helpers {
    let every = settings.models.watch_interval.as_duration();
    Helpers(vec![
        tokio::spawn(report_scoring_health(
            health.clone(),
            Arc::clone(registry),
            every,
        ))
        .abort_handle(),
        tokio::spawn(report_ingest_health(health.clone(), Arc::clone(store))).abort_handle(),
        tokio::spawn(crate::registry::watch(Arc::clone(registry), every)).abort_handle(),
        tokio::spawn(maintain(
            Arc::clone(store),
            settings.snapshot.interval.as_duration(),
            settings.snapshot.every_events,
        ))
        .abort_handle(),
    ])
}

/// Tasks that end with the server: aborted when dropped, on an early error too.
struct Helpers(Vec<tokio::task::AbortHandle>);

impl Helpers {
    fn push(&mut self, task: tokio::task::AbortHandle) {
        self.0.push(task);
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the Kafka source and scoring stream the settings name, and the task keeping
/// their health. They stop when draining starts, committing what is durable.
#[cfg(feature = "kafka")]
fn start_kafka(
    settings: &Settings,
    store: &Arc<FeatureStore>,
    registry: &Arc<Registry>,
    draining: &tokio::sync::watch::Receiver<bool>,
    health: &tonic_health::server::HealthReporter,
    helpers: &mut Helpers,
) -> Result<Arc<crate::kafka::serve::Running>, ServerError> {
    let kafka = Arc::new(
        crate::kafka::serve::start(settings, store, registry, draining)
            .map_err(|e| ServerError::Setup(format!("kafka: {e}")))?,
    );
    helpers.push(
        tokio::spawn(report_kafka_health(
            health.clone(),
            Arc::clone(&kafka),
            settings.kafka.clone(),
        ))
        .abort_handle(),
    );
    Ok(kafka)
}

/// Serves Prometheus scrapes on `listener` until the returned sender is used.
fn serve_scrapes(
    listener: TcpListener,
    sources: prometheus::Sources,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics on GET /metrics");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(prometheus::serve(listener, sources.into_render(), async {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Shutdown: stop accepting at once; open streams may go on for the drain timeout,
/// then end with UNAVAILABLE (see [`until_drained`] for connections that stay).
async fn drain_on(
    shutdown: impl Future<Output = ()>,
    draining: tokio::sync::watch::Sender<bool>,
    drain_timeout: Duration,
) {
    shutdown.await;
    tracing::info!(
        drain_ms = drain_timeout.as_millis() as u64,
        "draining: no new connections; open streams end at the drain deadline"
    );
    let _ = draining.send(true);
}

/// Waits for `serving` to end. A connection that still holds the server after the
/// drain deadline (and a grace for the last acks) is dropped, so SIGTERM always ends
/// the process.
async fn until_drained(
    serving: impl Future<Output = Result<(), tonic::transport::Error>>,
    mut drain_started: tokio::sync::watch::Receiver<bool>,
    drain_timeout: Duration,
) -> Result<(), tonic::transport::Error> {
    let backstop = async {
        let _ = drain_started.wait_for(|draining| *draining).await;
        tokio::time::sleep(drain_timeout + DRAIN_GRACE).await;
    };
    tokio::select! {
        result = serving => result,
        () = backstop => {
            tracing::warn!("connections still open after the drain deadline: dropping them");
            Ok(())
        }
    }
}

/// What the embedded server's gRPC services are made of.
struct Services<'a> {
    store: &'a Arc<FeatureStore>,
    registry: &'a Arc<Registry>,
    metrics: &'a Arc<Metrics>,
    budget: &'a Arc<Budget>,
    drain: Drain,
}

impl Services<'_> {
    /// Reflection, Ingest, Features, Scoring, Models and V2, each with the message limit.
    fn routes(
        self,
        settings: &Settings,
        inference: Arc<InferenceService>,
    ) -> Result<tonic::service::Routes, ServerError> {
        let max_message = settings.ingest.max_message_bytes;
        let (reflection, reflection_v1alpha) = reflection_services()?;
        let ingest = IngestService::new(
            Arc::clone(self.store),
            self.drain,
            Arc::clone(self.budget),
            &settings.ingest.cpus,
        )
        .map_err(|error| {
            ServerError::Setup(format!("cannot start the ingest decoding thread: {error}"))
        })?;
        let mut scoring = ScoringService::new(Arc::clone(self.store), Arc::clone(self.registry))
            .with_samples(open_samples(settings)?)
            .with_drift(settings.drift, Arc::clone(self.metrics));
        if settings.models.shadow {
            scoring = scoring.with_shadow(
                Arc::clone(self.metrics),
                settings.models.shadow_candidates.clone(),
            );
        }
        Ok(tonic::service::Routes::new(reflection)
            .add_service(reflection_v1alpha)
            .add_service(IngestServer::new(ingest).max_decoding_message_size(max_message))
            .add_service(
                FeaturesServer::new(FeaturesService::new(Arc::clone(self.store)))
                    .max_decoding_message_size(max_message),
            )
            .add_service(ScoringServer::new(scoring).max_decoding_message_size(max_message))
            .add_service(ModelsServer::new(ModelsService::new(Arc::clone(
                self.registry,
            ))))
            .add_service(
                GrpcInferenceServiceServer::from_arc(inference)
                    .max_decoding_message_size(max_message),
            ))
    }
}

/// Aborts its task when dropped (a task's helper dies with it).
#[cfg(feature = "kafka")]
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

#[cfg(feature = "kafka")]
impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Metrics rendered besides the store's and the registry's.
fn extra_metrics(
    #[cfg(feature = "kafka")] kafka: &Arc<crate::kafka::serve::Running>,
) -> Vec<prometheus::Extra> {
    #[allow(unused_mut)]
    let mut extra: Vec<prometheus::Extra> = Vec::new();
    #[cfg(feature = "kafka")]
    {
        let kafka = Arc::clone(kafka);
        extra.push(Arc::new(move || kafka.prometheus()));
    }
    extra
}

/// Keeps the health of the Kafka parts in step with whether their brokers answer.
#[cfg(feature = "kafka")]
async fn report_kafka_health(
    health: tonic_health::server::HealthReporter,
    kafka: Arc<crate::kafka::serve::Running>,
    settings: crate::config::KafkaSettings,
) {
    let probing = Arc::clone(&kafka);
    let _probe = AbortOnDrop(tokio::spawn(async move {
        probing.probe_while_unreachable(settings).await
    }));
    let mut last: std::collections::BTreeMap<&str, bool> = Default::default();
    loop {
        for (service, reachable) in kafka.health() {
            if last.insert(service, reachable) != Some(reachable) {
                let status = if reachable {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status(service, status).await;
            }
        }
        tokio::time::sleep(HEALTH_TICK).await;
    }
}

/// Keeps the health of `Ingest` in step with the log: NOT_SERVING while it cannot write.
async fn report_ingest_health(
    health: tonic_health::server::HealthReporter,
    store: Arc<FeatureStore>,
) {
    let mut stalled = false;
    let mut ticks = tokio::time::interval(HEALTH_TICK);
    loop {
        ticks.tick().await;
        let now = store.log_stalled();
        if now != stalled {
            if now {
                health
                    .set_not_serving::<IngestServer<IngestService>>()
                    .await;
            } else {
                health.set_serving::<IngestServer<IngestService>>().await;
            }
            stalled = now;
        }
    }
}

/// How often the log's state is turned into Ingest's health.
const HEALTH_TICK: Duration = Duration::from_millis(250);

/// How often the snapshot triggers (time and event count) are checked.
const MAINTENANCE_TICK: Duration = Duration::from_secs(1);

/// Snapshots (after `interval`, or after `every_events` new events) and eviction, both
/// on the low-priority background thread so they do not take CPU from requests.
async fn maintain(store: Arc<FeatureStore>, interval: Duration, every_events: u64) {
    let background = match Background::start("streamscore-background") {
        Ok(background) => background,
        Err(error) => {
            tracing::error!(%error, "cannot start the background thread: no periodic snapshots or eviction");
            return;
        }
    };
    let mut ticks = tokio::time::interval(MAINTENANCE_TICK);
    let mut last_snapshot = tokio::time::Instant::now();
    let mut last_eviction = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        let pending = store.events_since_snapshot();
        if pending > 0 && (pending >= every_events || last_snapshot.elapsed() >= interval) {
            last_snapshot = tokio::time::Instant::now();
            let store = Arc::clone(&store);
            match background.run(move || store.snapshot()).await {
                Ok(Err(error)) => tracing::error!(%error, "periodic snapshot failed"),
                Err(error) => tracing::error!(%error, "periodic snapshot task failed"),
                Ok(Ok(_)) => {}
            }
        }
        if last_eviction.elapsed() >= EVICTION_INTERVAL {
            last_eviction = tokio::time::Instant::now();
            let store = Arc::clone(&store);
            match background.run(move || store.evict_expired()).await {
                Ok(evicted) if evicted > 0 => {
                    tracing::debug!(evicted, "expired entities evicted");
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "eviction task failed"),
            }
        }
    }
}

//! Starting and stopping the gRPC server. `run` takes a bound listener and a shutdown
//! future, so tests start the real server on port 0 and stop it when they are done.
//! On shutdown it stops accepting, drains in-flight calls, flushes the log and writes a
//! final snapshot.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Server, ServerTlsConfig};
use tower::layer::util::{Identity, Stack};

use crate::api::auth::{AuthLayer, Callers};
use crate::api::budget::{Budget, BudgetLayer};
use crate::api::encoded::server::ingest_server::IngestServer;
use crate::api::limits::SizeRefusalLayer;
use crate::api::metrics::{Metrics, MetricsLayer};
use crate::api::pb::features_server::FeaturesServer;
use crate::api::pb::models_server::ModelsServer;
use crate::api::pb::scoring_server::ScoringServer;
use crate::api::prometheus;
use crate::api::v2pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::{
    Backend, Drain, FILE_DESCRIPTOR_SET, FeaturesService, InferenceService, IngestService,
    ModelsService, ScoringService,
};
use crate::background::Background;
use crate::config::{ServeRole, Settings, TlsSettings};
use crate::definitions::{Definitions, DefinitionsError};
use crate::model::artifact::{SigningKey, Trust};
use crate::registry::{Registry, RegistryError};
use crate::store::{FeatureStore, StoreError};

/// Concurrent calls one connection may hold.
const MAX_STREAMS_PER_CONNECTION: u32 = 1_024;
/// Header bytes one request may send.
const MAX_HEADER_BYTES: u32 = 16 << 10;

/// After the drain deadline, how long the last acks may take before connections are
/// dropped.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How often expired entities are swept out of memory.
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A setting names something unusable (a key or certificate file), or the settings
    /// together are unsafe.
    #[error("{0}")]
    Setup(String),
}

/// Loads the definitions named by the settings (or the built-in ones).
pub fn load_definitions(settings: &Settings) -> Result<Arc<Definitions>, DefinitionsError> {
    Ok(Arc::new(match &settings.definitions {
        Some(path) => Definitions::load(path)?,
        None => Definitions::from_toml(crate::definitions::DEFAULT_DEFINITIONS)?,
    }))
}

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

/// The score sample log of `settings.samples`, when on.
pub(crate) fn open_samples(
    settings: &Settings,
) -> Result<Option<Arc<crate::scoring::samples::SampleLog>>, ServerError> {
    if settings.samples.every == 0 {
        return Ok(None);
    }
    let dir = crate::scoring::samples::samples_dir(&settings.data_dir);
    let log = crate::scoring::samples::SampleLog::open(
        &dir,
        settings.samples.every,
        settings.samples.max_file_bytes,
    )
    .map_err(|error| ServerError::Setup(format!("samples: {}: {error}", dir.display())))?;
    Ok(Some(Arc::new(log)))
}

/// Binds `addr`, or says which address could not be bound and why.
pub(crate) async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Binds `settings.listen`, opens the store and serves until `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    match settings.cluster.role {
        ServeRole::Embedded => {}
        #[cfg(feature = "cluster")]
        ServeRole::Aggregator => return crate::roles::run_aggregator(&settings, shutdown).await,
        #[cfg(feature = "cluster")]
        ServeRole::Scorer => {
            let listener = bind(settings.listen).await?;
            return crate::roles::run_scorer(listener, &settings, shutdown).await;
        }
        #[cfg(not(feature = "cluster"))]
        role => {
            return Err(ServerError::Setup(format!(
                "role {role:?}: this build has no scale-out (build with --features cluster)"
            )));
        }
    }
    let store = open_store(&settings).await?;
    let listener = bind(settings.listen).await?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(settings.listen), "streamscore listening");
    run(listener, store, &settings, shutdown).await
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

/// Loads the models directory into a new registry (a bad file is logged and skipped).
pub async fn open_registry(
    settings: &Settings,
    definitions: Arc<Definitions>,
) -> Result<Arc<Registry>, ServerError> {
    let trust = Trust {
        max_bytes: settings.models.max_artifact_bytes,
        key: match &settings.models.signing_key {
            Some(path) => Some(SigningKey::from_file(path).map_err(ServerError::Setup)?),
            None => None,
        },
        require_signature: settings.models.require_signature,
    };
    let registry = Arc::new(
        Registry::new(definitions, settings.models.dir.clone())
            .with_trust(trust)
            .with_promotion(settings.models.promotion),
    );
    let scanning = Arc::clone(&registry);
    let failures = tokio::task::spawn_blocking(move || scanning.scan()).await??;
    let catalog = registry.catalog();
    let models = catalog.models();
    let (serving, candidates): (Vec<_>, Vec<_>) = models
        .iter()
        .partition(|m| catalog.serving(m.name()) == Some(m.version()));
    let references = |models: Vec<&Arc<crate::registry::LoadedModel>>| {
        models
            .iter()
            .map(|m| m.reference())
            .collect::<Vec<_>>()
            .join(", ")
    };
    tracing::info!(
        dir = %settings.models.dir.display(),
        serving = %references(serving),
        candidates = %references(candidates),
        refused = failures.len(),
        "model registry loaded"
    );
    Ok(registry)
}

/// Serves on `listeners` until `shutdown` resolves, then closes the store. Health says
/// NOT_SERVING for scoring until the models are loaded.
pub async fn run_with(
    listeners: Listeners,
    store: Arc<FeatureStore>,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let max_message = settings.ingest.max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<ScoringServer<ScoringService>>()
        .await;
    health.set_serving::<IngestServer<IngestService>>().await;
    health
        .set_serving::<FeaturesServer<FeaturesService>>()
        .await;
    health.set_serving::<ModelsServer<ModelsService>>().await;
    health
        .set_serving::<GrpcInferenceServiceServer<InferenceService>>()
        .await;
    let (reflection, reflection_v1alpha) = reflection_services()?;

    let registry = open_registry(settings, Arc::clone(store.definitions())).await?;
    if registry.catalog().models().is_empty() {
        tracing::warn!(dir = %settings.models.dir.display(), "no model loaded: Score answers NOT_FOUND until one is");
    }
    log_shadowing(&settings.models, &registry);
    let scoring_health = tokio::spawn(report_scoring_health(
        health.clone(),
        Arc::clone(&registry),
        settings.models.watch_interval.as_duration(),
    ));
    let ingest_health = tokio::spawn(report_ingest_health(health.clone(), Arc::clone(&store)));
    let (draining, draining_rx) = tokio::sync::watch::channel(false);
    let mut drain_started = draining_rx.clone();
    // The Kafka parts stop when draining starts, committing what is durable.
    #[cfg(feature = "kafka")]
    let kafka = Arc::new(
        crate::kafka::serve::start(settings, &store, &registry, &draining_rx)
            .map_err(|e| ServerError::Setup(format!("kafka: {e}")))?,
    );
    #[cfg(feature = "kafka")]
    let kafka_health = tokio::spawn(report_kafka_health(
        health.clone(),
        Arc::clone(&kafka),
        settings.kafka.clone(),
    ));
    let metrics = Arc::new(Metrics::default());
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = listeners.metrics.map(|listener| {
        tracing::info!(addr = ?listener.local_addr().ok(), "metrics on GET /metrics");
        tokio::spawn(prometheus::serve(
            listener,
            prometheus::Sources {
                metrics: Arc::clone(&metrics),
                store: Arc::clone(&store),
                registry: Arc::clone(&registry),
                extra: extra_metrics(
                    #[cfg(feature = "kafka")]
                    &kafka,
                ),
            }
            .into_render(),
            async {
                let _ = metrics_stopped.await;
            },
        ))
    });
    let watcher = tokio::spawn(crate::registry::watch(
        Arc::clone(&registry),
        settings.models.watch_interval.as_duration(),
    ));
    let maintenance = tokio::spawn(maintain(
        Arc::clone(&store),
        settings.snapshot.interval.as_duration(),
        settings.snapshot.every_events,
    ));
    // Shutdown: stop accepting at once; open streams may go on for the drain timeout,
    // then end with UNAVAILABLE. A connection that still holds the server after that
    // (and a grace for the last acks) is dropped, so SIGTERM always ends the process.
    let drain_timeout = settings.shutdown.drain_timeout.as_duration();
    let drain = Drain {
        draining: draining_rx,
        timeout: drain_timeout,
    };
    let shutdown = async move {
        shutdown.await;
        tracing::info!(
            drain_ms = drain_timeout.as_millis() as u64,
            "draining: no new connections; open streams end at the drain deadline"
        );
        let _ = draining.send(true);
    };
    let callers = Callers::from_settings(&settings.auth).map_err(ServerError::Setup)?;
    let auth = AuthLayer::new(callers);
    let budget = Arc::new(Budget::from_settings(&settings.limits));
    let give_back = tokio::spawn(crate::api::give_back::after_load(Arc::clone(&budget)));
    let (admin_serving, main_auth) = serve_admin(
        listeners.admin,
        settings,
        &metrics,
        auth,
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
    let serving = grpc_builder(settings, &metrics, main_auth, &budget)?
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            IngestServer::new(
                IngestService::new(
                    Arc::clone(&store),
                    drain,
                    Arc::clone(&budget),
                    &settings.ingest.cpus,
                )
                .map_err(|error| {
                    ServerError::Setup(format!("cannot start the ingest decoding thread: {error}"))
                })?,
            )
            .max_decoding_message_size(max_message),
        )
        .add_service(
            FeaturesServer::new(FeaturesService::new(Arc::clone(&store)))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            ScoringServer::new({
                let scoring = ScoringService::new(Arc::clone(&store), Arc::clone(&registry))
                    .with_samples(open_samples(settings)?)
                    .with_drift(settings.drift, Arc::clone(&metrics));
                if settings.models.shadow {
                    scoring.with_shadow(
                        Arc::clone(&metrics),
                        settings.models.shadow_candidates.clone(),
                    )
                } else {
                    scoring
                }
            })
            .max_decoding_message_size(max_message),
        )
        .add_service(ModelsServer::new(ModelsService::new(Arc::clone(&registry))))
        .add_service(
            GrpcInferenceServiceServer::from_arc(inference).max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(without_nagle(listeners.grpc), shutdown);
    let backstop = async {
        let _ = drain_started.wait_for(|draining| *draining).await;
        tokio::time::sleep(drain_timeout + DRAIN_GRACE).await;
    };
    let result = tokio::select! {
        result = serving => result,
        () = backstop => {
            tracing::warn!("connections still open after the drain deadline: dropping them");
            Ok(())
        }
    };
    if let Some(admin) = admin_serving {
        admin.abort();
    }
    if let Some(rest) = rest {
        rest.abort();
    }
    #[cfg(feature = "kafka")]
    kafka.join().await;
    maintenance.abort();
    give_back.abort();
    watcher.abort();
    scoring_health.abort();
    ingest_health.abort();
    #[cfg(feature = "kafka")]
    kafka_health.abort();
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("server stopped accepting; flushing the log and writing a final snapshot");
    tokio::task::spawn_blocking(move || store.close()).await??;
    result?;
    Ok(())
}

/// Serves the REST door on `listener` (when there is one) until the drain starts.
pub(crate) fn serve_rest(
    listener: Option<TcpListener>,
    inference: &Arc<InferenceService>,
    settings: &Settings,
    budget: &Arc<Budget>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServerError> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let callers = Callers::from_settings(&settings.auth).map_err(ServerError::Setup)?;
    let router = crate::api::rest::router(
        Arc::clone(inference),
        Arc::new(callers),
        settings.ingest.max_message_bytes,
        Arc::clone(budget),
    );
    let doors = crate::api::rest::Doors::from_settings(&settings.http);
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        max_connections = doors.max_connections,
        "REST (Open Inference Protocol) on /v2"
    );
    Ok(Some(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        if let Err(error) = crate::api::rest::serve(listener, router, doors, shutdown).await {
            tracing::error!(%error, "REST listener failed");
        }
    })))
}

/// gRPC reflection, both versions: grpcurl 1.8 and several GUI clients speak only
/// v1alpha.
pub(crate) fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServerError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The layers every gRPC listener shares, innermost last: tonic's decoder refusals get
/// the promised codes, every call is counted (with its caller), callers are checked.
/// Callers are checked before anything is charged to the budget.
type Layers =
    Stack<BudgetLayer, Stack<AuthLayer, Stack<MetricsLayer, Stack<SizeRefusalLayer, Identity>>>>;

/// Bytes a gRPC call holds per byte of its message while it is decoded and converted
/// (the buffered message, its prost structs, the domain copy): raw BYTES tensors of
/// one-byte elements take about 8x (a 32-byte handle per 5 bytes), a batch of small
/// events about as much. See `tests/load_bounds.rs`.
pub(crate) const GRPC_DECODE_INFLATION: usize = 8;

/// Binds `admin.listen`, when the settings ask for a listener of its own for admin calls.
pub(crate) async fn bind_admin(settings: &Settings) -> Result<Option<TcpListener>, ServerError> {
    let Some(addr) = settings.admin.listen else {
        return Ok(None);
    };
    let admin = bind(addr).await?;
    tracing::info!(addr = %admin.local_addr().unwrap_or(addr), "admin calls listening");
    Ok(Some(admin))
}

/// Serves admin calls (LoadModel, SetAlias, RetireModel; and health) on `admin`, when there is one,
/// until `stopped` turns true. Returns that task and the auth layer for the public
/// port: with an admin listener, admin calls are answered there only.
#[allow(clippy::too_many_arguments)]
pub(crate) fn serve_admin<H: tonic_health::pb::health_server::Health>(
    admin: Option<TcpListener>,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    auth: AuthLayer,
    budget: &Arc<Budget>,
    registry: &Arc<Registry>,
    health: tonic_health::pb::health_server::HealthServer<H>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(Option<AdminTask>, AuthLayer), ServerError> {
    let Some(admin) = admin else {
        return Ok((None, auth));
    };
    let serving = grpc_builder(settings, metrics, auth.clone(), budget)?
        .add_service(health)
        .add_service(ModelsServer::new(ModelsService::new(Arc::clone(registry))))
        .serve_with_incoming_shutdown(without_nagle(admin), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
    Ok((Some(tokio::spawn(serving)), auth.admin_elsewhere()))
}

/// The admin listener's server task.
pub(crate) type AdminTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Calls that charge their own bytes to the budget, batch by batch.
fn self_charging(path: &str) -> bool {
    path == "/streamscore.v1.Ingest/IngestStream"
}

/// A gRPC server builder with TLS, keepalive, limits, tracing and the shared layers.
pub(crate) fn grpc_builder(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    auth: AuthLayer,
    budget: &Arc<Budget>,
) -> Result<Server<Layers>, ServerError> {
    let mut builder = Server::builder();
    if let Some(tls) = tls_config(&settings.tls)? {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        // A peer that stops answering pings is dropped, a dead one found by TCP
        // keepalive; one connection holds a bounded number of calls and header bytes.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_header_list_size(Some(MAX_HEADER_BYTES))
        .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()))
        .layer(SizeRefusalLayer)
        .layer(MetricsLayer::new(Arc::clone(metrics)))
        .layer(auth)
        .layer(BudgetLayer::new(
            Arc::clone(budget),
            GRPC_DECODE_INFLATION,
            self_charging,
        )))
}

/// How long a client may take over the TLS handshake before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls server configuration from `[tls]`, or `None` for plaintext.
fn tls_config(settings: &TlsSettings) -> Result<Option<ServerTlsConfig>, ServerError> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        return Ok(None);
    };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ServerError::Setup(format!("{what} {}: {e}", path.display())))
    };
    let mut config = ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read("tls.cert", cert)?,
            read("tls.key", key)?,
        ))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &settings.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read("tls.client_ca", ca)?));
    }
    Ok(Some(config))
}

/// Keeps the health of `Scoring` in step with the registry: SERVING while at least one
/// model is loaded.
pub(crate) async fn report_scoring_health(
    health: tonic_health::server::HealthReporter,
    registry: Arc<Registry>,
    every: Duration,
) {
    let mut serving = None;
    let mut names = std::collections::HashMap::new();
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let catalog = registry.catalog();
        // Per name too (health `service` = a model name or alias), so a load balancer
        // or a checkout can see that `fraud` in particular does not serve, and why.
        for (name, state) in catalog.health() {
            let status = if state.is_ok() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            if names.get(&name) != Some(&status) {
                match &state {
                    // Versions waiting to be promoted: how a new model starts, not a fault.
                    Err(reason @ RegistryError::NotPromoted { .. }) => {
                        tracing::info!(model = %name, %reason, "model not serving yet");
                    }
                    Err(reason) => tracing::error!(model = %name, %reason, "model not serving"),
                    Ok(()) => {}
                }
                health.set_service_status(name.clone(), status).await;
                names.insert(name, status);
            }
        }
        let now = !catalog.models().is_empty();
        if serving != Some(now) {
            if now {
                health.set_serving::<ScoringServer<ScoringService>>().await;
            } else {
                health
                    .set_not_serving::<ScoringServer<ScoringService>>()
                    .await;
            }
            serving = Some(now);
        }
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

/// A failed accept (EMFILE when out of descriptors) pauses the accept loop this long:
/// tonic would end the server on it, and retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepted connections with Nagle's algorithm off: small responses (a score) would
/// otherwise wait for the peer's delayed ACK, up to 40 ms on Linux. Accept errors are
/// paused over, never passed on.
pub(crate) fn without_nagle(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener)
        .then(|accepted| async move {
            match accepted {
                Ok(stream) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "cannot turn off Nagle's algorithm");
                    }
                    Some(Ok(stream))
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed; pausing the accept loop");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    None
                }
            }
        })
        .filter_map(|accepted| accepted)
}

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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT will stop the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received");
}

//! The doors every role serves through: the gRPC server with its shared layers (size
//! refusals, metrics, auth, the memory budget), TLS and keepalive; the admin listener;
//! the REST door; reflection; the health of `Scoring`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Server, ServerTlsConfig};
use tower::layer::util::{Identity, Stack};

use super::ServerError;
use crate::api::auth::{AuthLayer, Callers};
use crate::api::budget::{Budget, BudgetLayer};
use crate::api::limits::SizeRefusalLayer;
use crate::api::metrics::{Metrics, MetricsLayer};
use crate::api::pb::features_server::FeaturesServer;
use crate::api::pb::models_server::ModelsServer;
use crate::api::pb::scoring_server::ScoringServer;
use crate::api::v2pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::{
    FILE_DESCRIPTOR_SET, FeaturesService, InferenceService, ModelsService, ScoringService,
};
use crate::config::{Settings, TlsSettings};
use crate::registry::{Registry, RegistryError};

/// Concurrent calls one connection may hold.
const MAX_STREAMS_PER_CONNECTION: u32 = 1_024;
/// Header bytes one request may send.
const MAX_HEADER_BYTES: u32 = 16 << 10;

/// A gRPC server builder with TLS, keepalive, limits, tracing and the shared layers.
pub(super) fn grpc_builder(
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

/// The layers every gRPC listener shares, innermost last: tonic's decoder refusals get
/// the promised codes, every call is counted (with its caller), callers are checked.
/// Callers are checked before anything is charged to the budget.
type Layers =
    Stack<BudgetLayer, Stack<AuthLayer, Stack<MetricsLayer, Stack<SizeRefusalLayer, Identity>>>>;

/// Bytes a gRPC call holds per byte of its message while it is decoded and converted
/// (the buffered message, its prost structs, the domain copy): raw BYTES tensors of
/// one-byte elements take about 8x (a 32-byte handle per 5 bytes), a batch of small
/// events about as much. See `tests/load_bounds.rs`.
const GRPC_DECODE_INFLATION: usize = 8;

/// Calls that charge their own bytes to the budget, batch by batch.
fn self_charging(path: &str) -> bool {
    path == "/streamscore.v1.Ingest/IngestStream"
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

/// A failed accept (EMFILE when out of descriptors) pauses the accept loop this long:
/// tonic would end the server on it, and retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepted connections with Nagle's algorithm off: small responses (a score) would
/// otherwise wait for the peer's delayed ACK, up to 40 ms on Linux. Accept errors are
/// paused over, never passed on.
pub(super) fn without_nagle(
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

/// Serves admin calls (LoadModel, SetAlias, RetireModel; and health) on `admin`, when there is one,
/// until `stopped` turns true. Returns that task and the auth layer for the public
/// port: with an admin listener, admin calls are answered there only.
#[allow(clippy::too_many_arguments)]
pub(super) fn serve_admin<H: tonic_health::pb::health_server::Health>(
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
pub(super) type AdminTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves the REST door on `listener` (when there is one) until the drain starts.
pub(super) fn serve_rest(
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
pub(super) fn reflection_services() -> Result<
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

/// Keeps the health of `Scoring` in step with the registry: SERVING while at least one
/// model is loaded.
pub(super) async fn report_scoring_health(
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

/// The health service as a role starts: `Scoring` NOT_SERVING until a model is loaded
/// (see [`report_scoring_health`]), `Features`, `Models` and V2 SERVING.
pub(super) async fn health_at_start() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<ScoringServer<ScoringService>>()
        .await;
    health
        .set_serving::<FeaturesServer<FeaturesService>>()
        .await;
    health.set_serving::<ModelsServer<ModelsService>>().await;
    health
        .set_serving::<GrpcInferenceServiceServer<InferenceService>>()
        .await;
    (health, health_service)
}

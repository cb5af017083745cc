//! Starting and stopping the gRPC server. `run` takes a bound listener and a shutdown
//! future, so tests start the real server on port 0 and stop it when they are done.
//! On shutdown it stops accepting, drains in-flight calls, flushes the log and writes a
//! final snapshot.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::api::limits::SizeRefusalLayer;
use crate::api::pb::features_server::FeaturesServer;
use crate::api::pb::ingest_server::IngestServer;
use crate::api::{FILE_DESCRIPTOR_SET, FeaturesService, IngestService};
use crate::config::Settings;
use crate::definitions::{Definitions, DefinitionsError};
use crate::store::{FeatureStore, StoreError};

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
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
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
        truncated_bytes = report.truncated_bytes,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "feature store recovered"
    );
    Ok(Arc::new(store))
}

/// Binds `settings.listen`, opens the store and serves until `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let store = open_store(&settings).await?;
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: settings.listen,
                source,
            })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(settings.listen), "streamscore listening");
    run(listener, store, &settings, shutdown).await
}

/// Serves the gRPC API on `listener` until `shutdown` resolves, then closes the store.
pub async fn run(
    listener: TcpListener,
    store: Arc<FeatureStore>,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let max_message = settings.ingest.max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServer<IngestService>>().await;
    health
        .set_serving::<FeaturesServer<FeaturesService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let maintenance = tokio::spawn(maintain(
        Arc::clone(&store),
        settings.snapshot.interval.as_duration(),
        settings.snapshot.every_events,
    ));
    let result = Server::builder()
        .layer(SizeRefusalLayer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            IngestServer::new(IngestService::new(Arc::clone(&store)))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            FeaturesServer::new(FeaturesService::new(Arc::clone(&store)))
                .max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    maintenance.abort();
    tracing::info!("server stopped accepting; flushing the log and writing a final snapshot");
    tokio::task::spawn_blocking(move || store.close()).await??;
    result?;
    Ok(())
}

/// How often the snapshot triggers (time and event count) are checked.
const MAINTENANCE_TICK: Duration = Duration::from_secs(1);

/// Snapshots (after `interval`, or after `every_events` new events) and eviction.
async fn maintain(store: Arc<FeatureStore>, interval: Duration, every_events: u64) {
    let mut ticks = tokio::time::interval(MAINTENANCE_TICK);
    let mut last_snapshot = tokio::time::Instant::now();
    let mut last_eviction = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        let pending = store.events_since_snapshot();
        if pending > 0 && (pending >= every_events || last_snapshot.elapsed() >= interval) {
            last_snapshot = tokio::time::Instant::now();
            let store = Arc::clone(&store);
            match tokio::task::spawn_blocking(move || store.snapshot()).await {
                Ok(Err(error)) => tracing::error!(%error, "periodic snapshot failed"),
                Err(error) => tracing::error!(%error, "periodic snapshot task failed"),
                Ok(Ok(_)) => {}
            }
        }
        if last_eviction.elapsed() >= EVICTION_INTERVAL {
            last_eviction = tokio::time::Instant::now();
            let evicted = store.evict_expired();
            if evicted > 0 {
                tracing::debug!(evicted, "expired entities evicted");
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

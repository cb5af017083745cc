//! What every role opens before it serves: the definitions, the model registry, the
//! score sample log, its listeners and a role's metrics endpoint; and the signal that
//! stops it.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::ServerError;
use crate::config::Settings;
use crate::definitions::{Definitions, DefinitionsError};
use crate::model::artifact::{SigningKey, Trust};
use crate::registry::Registry;

/// Loads the definitions named by the settings (or the built-in ones).
pub fn load_definitions(settings: &Settings) -> Result<Arc<Definitions>, DefinitionsError> {
    Ok(Arc::new(match &settings.definitions {
        Some(path) => Definitions::load(path)?,
        None => Definitions::from_toml(crate::definitions::DEFAULT_DEFINITIONS)?,
    }))
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

/// The score sample log of `settings.samples`, when on.
pub(super) fn open_samples(
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
pub(super) async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Binds `admin.listen`, when the settings ask for a listener of its own for admin calls.
pub(super) async fn bind_admin(settings: &Settings) -> Result<Option<TcpListener>, ServerError> {
    let Some(addr) = settings.admin.listen else {
        return Ok(None);
    };
    let admin = bind(addr).await?;
    tracing::info!(addr = %admin.local_addr().unwrap_or(addr), "admin calls listening");
    Ok(Some(admin))
}

#[cfg(feature = "cluster")]
pub(super) fn require_redis(settings: &Settings) -> Result<(), ServerError> {
    if settings.cluster.redis.is_empty() {
        return Err(ServerError::Setup(
            "cluster.redis: a scaled-out role needs the Redis Cluster nodes (\"host:port\")".into(),
        ));
    }
    Ok(())
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

/// A role's metrics endpoint, when `metrics.listen` asks for one.
#[cfg(feature = "cluster")]
pub(super) struct Scrapes {
    /// Where it answers ("off" without one).
    pub addr: String,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Serves `render` on `metrics.listen` (when set) until `stopped` turns true.
#[cfg(feature = "cluster")]
pub(super) async fn serve_metrics(
    settings: &Settings,
    render: crate::api::prometheus::Render,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Scrapes, ServerError> {
    let Some(addr) = settings.metrics.listen else {
        return Ok(Scrapes {
            addr: "off".into(),
            task: None,
        });
    };
    let listener = bind(addr).await?;
    let addr = listener.local_addr().unwrap_or(addr).to_string();
    let task = tokio::spawn(crate::api::prometheus::serve(
        listener,
        render,
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    Ok(Scrapes {
        addr,
        task: Some(task),
    })
}

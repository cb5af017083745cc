//! Starting the service. [`serve`] reads the role from the settings and hands over to
//! the module that runs it: `embedded` (one process: log, engine, gRPC, REST, Kafka),
//! or the scaled-out `aggregator` and `scorer` (cargo feature `cluster`). None of them
//! imports another; what they share lives below them: `open` (definitions, models,
//! samples, listeners, the stop signal) and `doors` (the gRPC server and its layers,
//! TLS, admin, REST, health, metrics).

#[cfg(feature = "cluster")]
mod aggregator;
mod doors;
mod embedded;
mod error;
mod open;
#[cfg(feature = "cluster")]
mod scorer;

use std::future::Future;

#[cfg(feature = "cluster")]
pub use aggregator::run_aggregator;
pub use embedded::{Listeners, open_store, run, run_with};
pub use error::ServerError;
pub use open::{load_definitions, open_registry, shutdown_signal};
#[cfg(feature = "cluster")]
pub use scorer::run_scorer;

use crate::config::{ServeRole, Settings};

/// Serves in the role `settings.cluster.role` names until `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    match settings.cluster.role {
        ServeRole::Embedded => embedded::serve(&settings, shutdown).await,
        #[cfg(feature = "cluster")]
        ServeRole::Aggregator => run_aggregator(&settings, shutdown).await,
        #[cfg(feature = "cluster")]
        ServeRole::Scorer => {
            let listener = open::bind(settings.listen).await?;
            run_scorer(listener, &settings, shutdown).await
        }
        #[cfg(not(feature = "cluster"))]
        role => Err(ServerError::Setup(format!(
            "role {role:?}: this build has no scale-out (build with --features cluster)"
        ))),
    }
}

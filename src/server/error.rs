//! What stops a role from starting or serving: definitions or a store that cannot be
//! opened, an address that cannot be bound, a setting that names something unusable.

use crate::definitions::DefinitionsError;
use crate::registry::RegistryError;
use crate::store::StoreError;

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

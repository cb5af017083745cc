//! The gRPC face of streamscore: generated protobuf types, conversions between them and
//! the domain types, the services, and the one place domain errors become statuses.
//! Handlers stay thin: convert, call the store, convert back.

pub mod auth;
pub mod budget;
pub mod client;
mod convert;
pub mod encoded;
mod error;
mod features;
mod framing;
pub mod give_back;
mod ingest;
pub mod limits;
pub mod metrics;
mod models;
pub mod prometheus;
pub mod rest;
mod rest_serve;
mod scoring;
mod v2;

pub use features::FeaturesService;

use std::sync::Arc;

/// Where the `Scoring` and `Features` services read entities from.
#[derive(Clone)]
pub enum Backend {
    /// This process's own feature store.
    Embedded(Arc<crate::store::FeatureStore>),
    /// The online store of a scaled-out deployment (a scorer).
    #[cfg(feature = "cluster")]
    Online(Arc<crate::online::OnlineScorer>),
}
pub use ingest::{Drain, IngestService};
pub use models::ModelsService;
pub use scoring::ScoringService;
pub use v2::InferenceService;

/// Generated from `proto/streamscore.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("streamscore.v1");
}

/// Generated from `proto/grpc_predict_v2.proto` (the Open Inference Protocol).
pub mod v2pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("inference");
}

/// The descriptor set served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("streamscore_descriptor");

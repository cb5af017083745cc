//! The gRPC face of streamscore: conversions between the wire's types (`crate::wire`)
//! and the domain's, the services, and the one place domain errors become statuses.
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

pub use crate::wire::{FILE_DESCRIPTOR_SET, pb, v2pb};

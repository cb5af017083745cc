//! streamscore: an online machine-learning scoring service for e-commerce. Events come in
//! over gRPC, are logged durably and applied to a real-time feature engine; features are
//! read back for scoring and for point-in-time training sets.

pub mod answers;
pub mod api;
pub mod background;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod datadir;
pub mod definitions;
pub mod durable;
pub mod events;
pub mod features;
#[cfg(test)]
mod house;
pub mod inference;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod loadtest;
pub mod log;
pub mod mining;
pub mod model;
#[cfg(feature = "cluster")]
pub mod online;
pub mod prometheus_text;
#[cfg(test)]
mod readme_blocks;
pub mod registry;
#[cfg(feature = "cluster")]
pub mod scaleout;
pub mod scoring;
pub mod server;
pub mod simulate;
pub mod store;
pub mod suggest;
pub mod time;
pub mod train;
pub mod wire;

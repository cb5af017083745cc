//! Offline training: point-in-time training sets replayed through the same feature
//! engine the server runs (so there is no training/serving skew), with late labels.

pub mod config;
pub mod dataset;
pub mod decisions;
mod error;
pub mod evaluate;
pub mod history;
pub mod kernel_svm;
pub mod lbfgs;
pub mod linear;
pub mod logistic;
pub mod objective;
pub mod pipeline;
pub mod plots;
pub mod progress;
#[cfg(test)]
mod reference;
pub mod report;
pub mod split;
pub mod svm;
pub mod table;
pub mod thresholds;
pub mod tree;
pub mod weight;

pub use dataset::{Dataset, DatasetError, DatasetSpec, Row, Target};
pub use error::TrainError;

//! What training refuses: a hyper-parameter out of range, or data it cannot fit. Every
//! learner and the pipeline share this one error, so it lives below them all.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("invalid hyper-parameter {name}: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error("cannot train on {0}")]
    BadData(String),
}

//! What can go wrong while mining.

use crate::model::artifact::ArtifactError;
use crate::train::history::HistoryError;

#[derive(Debug, thiserror::Error)]
pub enum MiningError {
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("baskets file {path} line {line}: {reason}")]
    Baskets {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("no baskets: {0}")]
    NoBaskets(String),
    #[error("too many: {0}")]
    TooMany(String),
    #[error(
        "the rule set would be {bytes} bytes ({rules} rules), more than the {limit} a server loads (models.max_artifact_bytes; --max-artifact-bytes here): nothing was written. Raise min_support, min_confidence or min_lift, or lower max_len; or raise both limits"
    )]
    TooLarge {
        bytes: u64,
        limit: u64,
        rules: usize,
    },
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
}

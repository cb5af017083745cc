//! Model artifacts: one JSON file per model version with the model, the fingerprint of
//! the feature definitions it was trained against, metrics and metadata, and a checksum
//! over all of it. Loading verifies the checksum and the definitions and names what
//! differs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Model;
use super::decision::Thresholds;
use crate::definitions::{Definitions, fnv64};
use crate::features::request::REQUEST_FEATURES;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactBody {
    pub name: String,
    pub version: u32,
    pub created_at_ms: i64,
    pub definitions_fingerprint: u64,
    /// Event-time range of the training history.
    pub trained_from_ms: i64,
    pub trained_to_ms: i64,
    /// Hash of the training rows and labels.
    pub data_fingerprint: u64,
    pub metrics: Vec<(String, f64)>,
    /// Decision thresholds chosen on the validation set (classifiers).
    #[serde(default)]
    pub thresholds: Option<Thresholds>,
    pub model: Model,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ArtifactFile {
    checksum: String,
    body: ArtifactBody,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot read model artifact {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("model artifact {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "model artifact {path} was trained against other feature definitions (fingerprint {trained:016x}, running {running:016x}): the same feature names may now mean other windows or events; retrain it"
    )]
    OtherDefinitions {
        path: String,
        trained: u64,
        running: u64,
    },
    #[error("model artifact {path} needs features the running definitions lack: {missing:?}")]
    UnknownFeatures { path: String, missing: Vec<String> },
    #[error("cannot write model artifact {path}: {reason}")]
    Write { path: String, reason: String },
}

fn checksum(body: &ArtifactBody) -> Result<String, serde_json::Error> {
    Ok(format!("{:016x}", fnv64(&serde_json::to_vec(body)?)))
}

pub fn save(path: &Path, body: ArtifactBody) -> Result<(), ArtifactError> {
    let error = |reason: String| ArtifactError::Write {
        path: path.display().to_string(),
        reason,
    };
    let checksum = checksum(&body).map_err(|e| error(e.to_string()))?;
    let text = serde_json::to_string_pretty(&ArtifactFile { checksum, body })
        .map_err(|e| error(e.to_string()))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
    }
    std::fs::write(path, text).map_err(|e| error(e.to_string()))
}

pub fn load(path: &Path, definitions: &Definitions) -> Result<ArtifactBody, ArtifactError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ArtifactError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let file: ArtifactFile = serde_json::from_str(&text).map_err(|e| ArtifactError::Corrupt {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let expected = checksum(&file.body).map_err(|e| ArtifactError::Corrupt {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if expected != file.checksum {
        return Err(ArtifactError::Corrupt {
            path: shown,
            reason: format!(
                "checksum {} does not match its content ({expected})",
                file.checksum
            ),
        });
    }
    let missing: Vec<String> = file
        .body
        .model
        .columns
        .iter()
        .filter(|c| !REQUEST_FEATURES.contains(&c.as_str()) && definitions.feature_id(c).is_none())
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ArtifactError::UnknownFeatures {
            path: shown,
            missing,
        });
    }
    if file.body.definitions_fingerprint != definitions.fingerprint {
        return Err(ArtifactError::OtherDefinitions {
            path: shown,
            trained: file.body.definitions_fingerprint,
            running: definitions.fingerprint,
        });
    }
    Ok(file.body)
}

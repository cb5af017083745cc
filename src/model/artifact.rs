//! Model artifacts: one JSON file per model version with the model, the fingerprint of
//! the feature definitions it was trained against, metrics and metadata, a checksum
//! over all of it and, when a signing key is configured, an HMAC-SHA256 signature.
//! Loading reads only regular files up to a size limit, verifies the checksum, the
//! signature and the definitions, checks the model's structure, and names what
//! differs, never quoting the file's content.

use std::io::Read;
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
    /// The event type the model scores (fraud: payment), from its training target;
    /// `Score` may `record` only events of this type. Absent for models trained from a
    /// table: those never record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_event: Option<String>,
    /// How this version did against the version serving when it was trained, both
    /// scored on this version's hold-out (what `if_better` promotion reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// What this version was trained on and with (absent in artifacts written before
    /// it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    pub model: Model,
}

fn time_split() -> String {
    "time".into()
}

fn is_time_split(split: &str) -> bool {
    split == "time"
}

fn is_zero(seed: &u64) -> bool {
    *seed == 0
}

/// The settings and data of one training run, kept in the artifact so a risk team can
/// tell later what a version was trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The family and its hyper-parameters after defaults, as a training config writes them.
    pub hyperparameters: serde_json::Value,
    /// Values given as `train` flags, each `key: flag value over config or default value`.
    pub flags: Vec<String>,
    /// Share of the rows held out for validation.
    pub holdout: f64,
    /// How they were chosen: time (the latest), random or stratified, and the seed.
    /// Left out when they are the defaults, so artifacts written before these existed
    /// still verify (the checksum covers the body as serialised).
    #[serde(default = "time_split", skip_serializing_if = "is_time_split")]
    pub split: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seed: u64,
    /// The rows had no times (a table without `time_ms`): the `*_ms` ranges are row
    /// numbers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub row_order: bool,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Positive rows (classifiers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_positives: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_positives: Option<usize>,
    /// Event-time range of the validation rows (the training rows' is `trained_*_ms`).
    pub validated_from_ms: i64,
    pub validated_to_ms: i64,
}

/// Two versions on one hold-out, by one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The version serving at training time (`name@version`).
    pub serving: String,
    pub metric: String,
    pub higher_is_better: bool,
    pub candidate_value: f64,
    pub serving_value: f64,
}

impl Comparison {
    pub fn candidate_is_better(&self) -> bool {
        if self.higher_is_better {
            self.candidate_value > self.serving_value
        } else {
            self.candidate_value < self.serving_value
        }
    }

    /// "better" or "not better", as `train`, its summary and the report say it.
    pub fn verdict(&self) -> &'static str {
        if self.candidate_is_better() {
            "better"
        } else {
            "not better"
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ArtifactFile {
    checksum: String,
    /// Hex HMAC-SHA256 of the body's JSON under the operator's signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    body: ArtifactBody,
}

pub use crate::config::DEFAULT_MAX_ARTIFACT_BYTES;

/// Shortest signing key accepted, in bytes (the HMAC-SHA256 block security level).
pub const MIN_KEY_BYTES: usize = 32;

/// The operator's secret for signing artifacts (HMAC-SHA256): `train` signs with it, the
/// server verifies. A symmetric key because the team that trains is the team that
/// serves; whoever can read it can sign, so keep it out of the models directory.
#[derive(Clone)]
pub struct SigningKey(ring::hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<SigningKey, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a signing key needs at least {MIN_KEY_BYTES} bytes, this one has {} (make one with `head -c 32 /dev/urandom > signing.key`)",
                bytes.len()
            ));
        }
        Ok(SigningKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            bytes,
        )))
    }

    pub fn from_file(path: &Path) -> Result<SigningKey, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read signing key {}: {e}", path.display()))?;
        SigningKey::from_bytes(&bytes).map_err(|e| format!("signing key {}: {e}", path.display()))
    }

    fn sign(&self, message: &[u8]) -> String {
        hex(ring::hmac::sign(&self.0, message).as_ref())
    }

    /// Constant-time comparison (ring's verify), so a forger learns nothing per byte.
    fn verify(&self, message: &[u8], signature: &str) -> bool {
        unhex(signature).is_some_and(|tag| ring::hmac::verify(&self.0, message, &tag).is_ok())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// What an artifact must satisfy beyond being well formed.
#[derive(Debug, Clone)]
pub struct Trust {
    pub max_bytes: u64,
    pub key: Option<SigningKey>,
    /// Refuse artifacts without a valid signature (needs `key`).
    pub require_signature: bool,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            max_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            key: None,
            require_signature: false,
        }
    }
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
    #[error("model artifact {path} cannot serve: {reason}")]
    Invalid { path: String, reason: String },
    #[error("model artifact {path} is not trusted: {reason}")]
    Untrusted { path: String, reason: String },
    #[error("cannot write model artifact {path}: {reason}")]
    Write { path: String, reason: String },
}

pub fn save(path: &Path, body: ArtifactBody) -> Result<(), ArtifactError> {
    save_signed(path, body, None)
}

/// Writes the artifact durably (temp file, fsync, rename), signed when a key is given.
pub fn save_signed(
    path: &Path,
    body: ArtifactBody,
    key: Option<&SigningKey>,
) -> Result<(), ArtifactError> {
    let text = encode(body, key).map_err(|reason| ArtifactError::Write {
        path: path.display().to_string(),
        reason,
    })?;
    save_encoded(path, &text)
}

/// The artifact file's text: the body, its checksum and, with `key`, its signature.
/// Its length is what a loader's `models.max_artifact_bytes` is held against.
pub fn encode(body: ArtifactBody, key: Option<&SigningKey>) -> Result<String, String> {
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let checksum = format!("{:016x}", fnv64(&bytes));
    let signature = key.map(|key| key.sign(&bytes));
    serde_json::to_string_pretty(&ArtifactFile {
        checksum,
        signature,
        body,
    })
    .map_err(|e| e.to_string())
}

/// Writes an [`encode`]d artifact durably (temp file, fsync, rename).
pub fn save_encoded(path: &Path, text: &str) -> Result<(), ArtifactError> {
    let error = |reason: String| ArtifactError::Write {
        path: path.display().to_string(),
        reason,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
    }
    crate::durable::replace_file(path, text.as_bytes()).map_err(|e| error(e.to_string()))
}

/// Reads at most `max_bytes` of a regular file. Opened non-blocking, and its type checked
/// on the open handle: a FIFO or a device is refused before any read, and a file
/// swapped in after a check cannot slip through.
fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    #[cfg(unix)]
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    #[cfg(not(unix))]
    let file = std::fs::File::open(path);
    let file = file.map_err(|e| e.kind().to_string())?;
    let metadata = file.metadata().map_err(|e| e.kind().to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    if metadata.len() > max_bytes {
        return Err(format!(
            "{} bytes, more than the limit of {max_bytes} (models.max_artifact_bytes)",
            metadata.len()
        ));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.kind().to_string())?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "grew past the limit of {max_bytes} bytes while read"
        ));
    }
    Ok(bytes)
}

/// Says where JSON went wrong without quoting it: serde's messages include the values
/// they met, and an artifact path may name any file (keys, tokens).
fn json_problem(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match error.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not JSON",
        Category::Data => "JSON that is not a model artifact",
        Category::Eof => "JSON cut short",
    };
    format!("{kind} (line {}, column {})", error.line(), error.column())
}

/// Names a model may have: they become file names, metric labels and references.
pub fn valid_model_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

/// An artifact file read and its checksum verified: the file and its body's bytes (what
/// the checksum and signature cover).
fn read_verified(path: &Path, max_bytes: u64) -> Result<(ArtifactFile, Vec<u8>), ArtifactError> {
    let shown = || path.display().to_string();
    let bytes = read_regular_file(path, max_bytes).map_err(|reason| ArtifactError::Read {
        path: shown(),
        reason,
    })?;
    let file: ArtifactFile =
        serde_json::from_slice(&bytes).map_err(|e| ArtifactError::Corrupt {
            path: shown(),
            reason: json_problem(&e),
        })?;
    let body_bytes = serde_json::to_vec(&file.body).map_err(|e| ArtifactError::Corrupt {
        path: shown(),
        reason: e.to_string(),
    })?;
    if format!("{:016x}", fnv64(&body_bytes)) != file.checksum {
        return Err(ArtifactError::Corrupt {
            path: shown(),
            reason: "its checksum does not match its content".into(),
        });
    }
    Ok((file, body_bytes))
}

/// Reads an artifact checking only its checksum and structure, not the definitions: for
/// `train` comparing against the version serving now.
pub fn read_unchecked(path: &Path) -> Result<ArtifactBody, ArtifactError> {
    let (file, _) = read_verified(path, DEFAULT_MAX_ARTIFACT_BYTES)?;
    file.body
        .model
        .validate()
        .map_err(|e| ArtifactError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(file.body)
}

pub fn load(path: &Path, definitions: &Definitions) -> Result<ArtifactBody, ArtifactError> {
    load_with(path, definitions, &Trust::default())
}

pub fn load_with(
    path: &Path,
    definitions: &Definitions,
    trust: &Trust,
) -> Result<ArtifactBody, ArtifactError> {
    load_checked(path, definitions, trust).map(|checked| checked.body)
}

/// An artifact that passed every check, with what the registry needs to judge it.
#[derive(Debug)]
pub struct CheckedArtifact {
    pub body: ArtifactBody,
    /// Its signature verified under the configured key: the only way its claims about
    /// itself (metrics, comparison) come from someone who holds the key.
    pub signed: bool,
    /// The checksum of its body, which tells two contents of one file apart.
    pub checksum: String,
}

/// [`load_with`], also saying whether the artifact is signed and what its checksum is.
pub fn load_checked(
    path: &Path,
    definitions: &Definitions,
    trust: &Trust,
) -> Result<CheckedArtifact, ArtifactError> {
    let shown = path.display().to_string();
    let (file, body_bytes) = read_verified(path, trust.max_bytes)?;
    let checksum = file.checksum.clone();
    let mut signed = false;
    match (&trust.key, &file.signature) {
        (Some(key), Some(signature)) if key.verify(&body_bytes, signature) => signed = true,
        (Some(_), Some(_)) => {
            return Err(ArtifactError::Untrusted {
                path: shown,
                reason: "its signature does not verify under the configured key".into(),
            });
        }
        (_, None) if trust.require_signature => {
            return Err(ArtifactError::Untrusted {
                path: shown,
                reason: "it is not signed and models.require_signature is on".into(),
            });
        }
        (None, Some(_)) if trust.require_signature => {
            return Err(ArtifactError::Untrusted {
                path: shown,
                reason: "models.require_signature is on but no models.signing_key is set".into(),
            });
        }
        _ => {}
    }
    let invalid = |reason: String| ArtifactError::Invalid {
        path: shown.clone(),
        reason,
    };
    if !valid_model_name(&file.body.name) {
        return Err(invalid(
            "its name must be 1-64 of a-z 0-9 _ . - starting with a letter or digit".into(),
        ));
    }
    if file.body.version == 0 {
        return Err(invalid("its version must be 1 or more".into()));
    }
    if let Some(thresholds) = &file.body.thresholds {
        let block = thresholds.block.unwrap_or(1.0);
        if !(thresholds.review.is_finite() && block.is_finite() && thresholds.review <= block) {
            return Err(invalid(
                "its thresholds must be finite with review <= block".into(),
            ));
        }
    }
    file.body
        .model
        .validate()
        .map_err(|e| invalid(e.to_string()))?;
    let checked = |body| CheckedArtifact {
        body,
        signed,
        checksum,
    };
    // A model trained from a table reads request fields, not stored features, and no
    // definitions shaped it.
    if file.body.model.inputs.is_some() {
        return Ok(checked(file.body));
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
    Ok(checked(file.body))
}

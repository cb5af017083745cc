//! The model registry: every valid artifact under the models directory, by name and
//! version, with aliases. A request resolves `name`, `name@version` or an alias to an
//! `Arc<LoadedModel>` and keeps it until it is done, so a swap never changes the model
//! under a request in flight. Changes build a new catalog and publish it atomically
//! (arc-swap); readers never wait for a writer.
//!
//! Without an alias of its own, a name resolves to its newest version, so a new file
//! dropped in the directory starts serving at once. An alias pinned to a version
//! (promote, roll back) stays put until it is moved again.

mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::definitions::Definitions;
use crate::features::vector::{PlanError, VectorPlan};
use crate::model::artifact::{self, ArtifactBody, ArtifactError};

pub use watch::watch;

/// Where `SetAlias` keeps the aliases, in the models directory.
pub const ALIASES_FILE: &str = "aliases.json";

/// A model ready to score: its artifact and the plan that builds its input vectors.
#[derive(Debug)]
pub struct LoadedModel {
    pub body: ArtifactBody,
    pub plan: VectorPlan,
    pub path: PathBuf,
}

impl LoadedModel {
    pub fn name(&self) -> &str {
        &self.body.name
    }

    pub fn version(&self) -> u32 {
        self.body.version
    }

    pub fn reference(&self) -> String {
        format!("{}@{}", self.body.name, self.body.version)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no model '{0}' (list the models with ListModels)")]
    NotFound(String),
    #[error("model reference '{0}': expected name, name@version or an alias")]
    BadReference(String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("model artifact {path}: {source}")]
    Plan { path: String, source: PlanError },
    #[error("alias '{0}': must be non-empty without '@' or '/'")]
    BadAlias(String),
    #[error("cannot read the models directory {path}: {reason}")]
    Directory { path: String, reason: String },
}

/// An immutable view of the registry, replaced whole on every change.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    models: HashMap<String, BTreeMap<u32, Arc<LoadedModel>>>,
    aliases: HashMap<String, (String, u32)>,
}

impl Catalog {
    pub fn resolve(&self, reference: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        let not_found = || RegistryError::NotFound(reference.to_string());
        if let Some((name, version)) = reference.split_once('@') {
            let version: u32 = version
                .parse()
                .map_err(|_| RegistryError::BadReference(reference.to_string()))?;
            return self
                .models
                .get(name)
                .and_then(|versions| versions.get(&version))
                .cloned()
                .ok_or_else(not_found);
        }
        if let Some((name, version)) = self.aliases.get(reference) {
            return self
                .models
                .get(name)
                .and_then(|versions| versions.get(version))
                .cloned()
                .ok_or_else(not_found);
        }
        self.models
            .get(reference)
            .and_then(|versions| versions.values().next_back())
            .cloned()
            .ok_or_else(not_found)
    }

    /// Every loaded model, by name then version.
    pub fn models(&self) -> Vec<Arc<LoadedModel>> {
        let mut all: Vec<Arc<LoadedModel>> = self
            .models
            .values()
            .flat_map(|versions| versions.values().cloned())
            .collect();
        all.sort_by(|a, b| (a.name(), a.version()).cmp(&(b.name(), b.version())));
        all
    }

    /// Aliases and what they point at, sorted.
    pub fn aliases(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .aliases
            .iter()
            .map(|(alias, (name, version))| (alias.clone(), format!("{name}@{version}")))
            .collect();
        all.sort();
        all
    }

    /// The version a bare name serves now.
    pub fn serving(&self, name: &str) -> Option<u32> {
        self.resolve(name).ok().map(|m| m.version())
    }
}

pub struct Registry {
    definitions: Arc<Definitions>,
    dir: PathBuf,
    catalog: ArcSwap<Catalog>,
    /// Serialises writers (load, alias); readers go through `catalog` alone.
    writer: Mutex<()>,
    swaps: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl Registry {
    pub fn new(definitions: Arc<Definitions>, dir: impl Into<PathBuf>) -> Registry {
        Registry {
            definitions,
            dir: dir.into(),
            catalog: ArcSwap::from_pointee(Catalog::default()),
            writer: Mutex::new(()),
            swaps: Default::default(),
            refused: Default::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current catalog; hold it (or a model resolved from it) for a whole request.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub fn resolve(&self, reference: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        self.catalog.load().resolve(reference)
    }

    /// How many times a name's serving version changed since start.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Artifact files refused since start (corrupt, other definitions, unknown features).
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks an artifact file and adds it (replacing the same name and version); a
    /// refused file changes nothing.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedModel>, RegistryError> {
        let loaded = self.check_and_add(path);
        if loaded.is_err() {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        loaded
    }

    fn check_and_add(&self, path: &Path) -> Result<Arc<LoadedModel>, RegistryError> {
        let body = artifact::load(path, &self.definitions)?;
        let plan =
            VectorPlan::for_columns(&self.definitions, &body.model.columns).map_err(|source| {
                RegistryError::Plan {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        let model = Arc::new(LoadedModel {
            body,
            plan,
            path: path.to_path_buf(),
        });
        self.update(|catalog| {
            catalog
                .models
                .entry(model.name().to_string())
                .or_default()
                .insert(model.version(), Arc::clone(&model));
        });
        tracing::info!(model = %model.reference(), path = %path.display(), "model loaded");
        Ok(model)
    }

    /// Points `alias` at `target` (`name@version`, or a name for its newest version).
    pub fn set_alias(&self, alias: &str, target: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        if alias.is_empty() || alias.contains(['@', '/']) {
            return Err(RegistryError::BadAlias(alias.to_string()));
        }
        let _writer = self.writer.lock();
        let model = self.catalog.load().resolve(target)?;
        let mut aliases = self.catalog.load().aliases.clone();
        aliases.insert(
            alias.to_string(),
            (model.name().to_string(), model.version()),
        );
        // Written before it takes effect: a rollback must survive a restart.
        self.save_aliases(&aliases)?;
        self.update_locked(|catalog| catalog.aliases = aliases);
        tracing::info!(alias, target = %model.reference(), "alias moved");
        Ok(model)
    }

    fn aliases_file(&self) -> PathBuf {
        self.dir.join(ALIASES_FILE)
    }

    /// Writes the aliases (atomically: a temporary file, then a rename).
    fn save_aliases(&self, aliases: &HashMap<String, (String, u32)>) -> Result<(), RegistryError> {
        let sorted: BTreeMap<&String, String> = aliases
            .iter()
            .map(|(alias, (name, version))| (alias, format!("{name}@{version}")))
            .collect();
        let error = |e: std::io::Error| RegistryError::Directory {
            path: self.aliases_file().display().to_string(),
            reason: e.to_string(),
        };
        let text = serde_json::to_string_pretty(&sorted).map_err(|e| error(e.into()))?;
        std::fs::create_dir_all(&self.dir).map_err(error)?;
        let temporary = self.dir.join(format!("{ALIASES_FILE}.tmp"));
        std::fs::write(&temporary, text).map_err(error)?;
        std::fs::rename(&temporary, self.aliases_file()).map_err(error)
    }

    /// Restores the aliases saved by `set_alias`; one whose target is not loaded is
    /// skipped with a warning.
    fn load_aliases(&self) {
        let path = self.aliases_file();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let saved: BTreeMap<String, String> = match serde_json::from_str(&text) {
            Ok(saved) => saved,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "aliases file unreadable; ignored");
                return;
            }
        };
        let catalog = self.catalog.load_full();
        let mut aliases = catalog.aliases.clone();
        for (alias, target) in saved {
            match catalog.resolve(&target) {
                Ok(model) => {
                    aliases.insert(alias, (model.name().to_string(), model.version()));
                }
                Err(error) => {
                    tracing::warn!(alias, target, %error, "saved alias points at no loaded model; skipped")
                }
            }
        }
        self.update(|catalog| catalog.aliases = aliases);
    }

    fn update(&self, change: impl FnOnce(&mut Catalog)) {
        let _writer = self.writer.lock();
        self.update_locked(change);
    }

    fn update_locked(&self, change: impl FnOnce(&mut Catalog)) {
        let before = self.catalog.load_full();
        let mut next = Catalog::clone(&before);
        change(&mut next);
        let changed = next.models.keys().chain(next.aliases.keys()).any(|name| {
            let was = before.serving(name);
            was.is_some() && was != next.serving(name)
        });
        self.catalog.store(Arc::new(next));
        if changed {
            self.swaps
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Loads every artifact under the directory (`<name>/<name>-v<N>.json`); a file
    /// that does not load is logged and skipped, so one bad file never stops the rest.
    /// Returns the files that failed, with why.
    pub fn scan(&self) -> Result<Vec<(PathBuf, RegistryError)>, RegistryError> {
        let mut failures = Vec::new();
        for path in artifact_files(&self.dir)? {
            if let Err(error) = self.load_file(&path) {
                tracing::error!(path = %path.display(), %error, "model artifact refused");
                failures.push((path, error));
            }
        }
        self.load_aliases();
        Ok(failures)
    }
}

/// Artifact files under `dir`: `*/<something>-v<N>.json`, sorted.
pub fn artifact_files(dir: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    let error = |e: std::io::Error| RegistryError::Directory {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    if !dir.exists() {
        return Ok(files);
    }
    for entry in std::fs::read_dir(dir).map_err(error)? {
        let sub = entry.map_err(error)?.path();
        if !sub.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&sub).map_err(error)? {
            let path = file.map_err(error)?.path();
            if is_artifact_name(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn is_artifact_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.strip_suffix(".json")
        .and_then(|stem| stem.rsplit_once("-v"))
        .is_some_and(|(_, version)| {
            !version.is_empty() && version.chars().all(|c| c.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_exclude_reports_and_plots() {
        assert!(is_artifact_name(Path::new("m/fraud/fraud-v12.json")));
        assert!(!is_artifact_name(Path::new("m/fraud/fraud-v1.report.json")));
        assert!(!is_artifact_name(Path::new("m/fraud/fraud-v1.roc.png")));
        assert!(!is_artifact_name(Path::new("m/fraud/notes.json")));
    }

    #[test]
    fn the_shipped_models_load_and_resolve_by_name_version_and_alias() {
        let definitions = Arc::new(Definitions::default_shop());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let registry = Registry::new(definitions, dir);
        let failures = registry.scan().unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        let fraud = registry.resolve("fraud").unwrap();
        assert_eq!(fraud.reference(), "fraud@1");
        assert_eq!(registry.resolve("fraud@1").unwrap().version(), 1);
        assert!(matches!(
            registry.resolve("fraud@9"),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            registry.resolve("fraud@x"),
            Err(RegistryError::BadReference(_))
        ));
        for name in ["purchase", "order_value"] {
            assert!(registry.resolve(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn aliases_survive_a_restart() {
        let definitions = Arc::new(Definitions::default_shop());
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud/fraud-v1.json");
        let dir = tempfile::tempdir().unwrap();
        let body = artifact::load(&shipped, &definitions).unwrap();
        for version in [1, 2] {
            let mut body = body.clone();
            body.version = version;
            artifact::save(
                &dir.path().join(format!("fraud/fraud-v{version}.json")),
                body,
            )
            .unwrap();
        }
        let registry = Registry::new(Arc::clone(&definitions), dir.path());
        registry.scan().unwrap();
        assert_eq!(registry.resolve("fraud").unwrap().version(), 2);
        registry.set_alias("fraud", "fraud@1").unwrap();
        registry.set_alias("checkout", "fraud").unwrap();
        assert_eq!(registry.resolve("fraud").unwrap().version(), 1);
        assert_eq!(registry.resolve("checkout").unwrap().reference(), "fraud@1");

        let restarted = Registry::new(definitions, dir.path());
        restarted.scan().unwrap();
        assert_eq!(
            restarted.resolve("fraud").unwrap().version(),
            1,
            "the rollback held"
        );
        assert_eq!(
            restarted.catalog().aliases(),
            [
                ("checkout".into(), "fraud@1".into()),
                ("fraud".into(), "fraud@1".into())
            ]
        );
    }
}

//! The model registry: every valid artifact under the models directory, by name and
//! version, with aliases. A request resolves `name`, `name@version` or an alias to an
//! `Arc<LoadedModel>` and keeps it until it is done, so a swap never changes the model
//! under a request in flight. Changes build a new catalog and publish it atomically
//! (arc-swap); readers never wait for a writer.
//!
//! A bare name serves the version its pin (an alias of the same name) points at; new
//! versions found in the directory are loaded as *candidates* and serve nothing until
//! promoted (`SetAlias name name@N`; with `models.promotion = "if_better"` a candidate
//! whose artifact shows it beat the serving version on the same hold-out is promoted by
//! itself). A pin stays put until it is moved again; one that cannot be honoured at
//! start (its file lost or unreadable, its target gone) makes the name unavailable,
//! never silently the newest version.
//!
//! Artifacts come from files, so they are input: only regular files inside the models
//! directory, named after the name and version they hold, structurally valid (and
//! signed, when required) are loaded.

mod retire;
mod watch;

pub use retire::{AUDIT_FILE, RETIRED_DIR, Retired};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::definitions::Definitions;
use crate::features::vector::{PlanError, VectorPlan};
use crate::model::artifact::{self, ArtifactBody, ArtifactError, Trust, valid_model_name};

pub use crate::config::Promotion;
pub use watch::watch;

/// Where `SetAlias` keeps the aliases, in the models directory.
pub const ALIASES_FILE: &str = "aliases.json";

/// Marks, in a model's folder, that its name is pinned by an alias: if `aliases.json` is
/// then lost, the name is refused instead of serving the newest version.
pub const PINNED_FILE: &str = ".pinned";

/// Most aliases kept: each is listed in every `ListModels` answer.
pub const MAX_ALIASES: usize = 256;

/// A model ready to score: its artifact and the plan that builds its input vectors.
#[derive(Debug)]
pub struct LoadedModel {
    pub body: ArtifactBody,
    pub plan: VectorPlan,
    pub path: PathBuf,
    /// Its signature verified under the configured key.
    pub signed: bool,
    /// The checksum of the content it was loaded from.
    pub checksum: String,
    /// A purchase probability per product (see [`Registry::resolve_ranker`]), decided
    /// once at load.
    pub ranks_products: bool,
}

/// Whether `body` is a probability classifier of an event that names a product, read
/// from stored features (not a table model).
fn ranks_products(definitions: &Definitions, body: &ArtifactBody) -> bool {
    use crate::model::Family;
    let probability = matches!(
        body.model.family,
        Family::LogisticRegression(_)
            | Family::DecisionTree(_)
            | Family::LinearSvm(_)
            | Family::KernelSvm(_)
    );
    let product = definitions.entity_id("product");
    let of_products = body
        .scored_event
        .as_deref()
        .and_then(|event| definitions.event_type_id(event))
        .is_some_and(|event| {
            definitions.event_types[event]
                .entities
                .iter()
                .any(|slot| Some(slot.entity) == product)
        });
    probability && of_products && body.model.inputs.is_none()
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

    pub fn rules(&self) -> Option<&crate::model::rules::RuleSet> {
        match &self.body.model.family {
            crate::model::Family::AssociationRules(rules) => Some(rules),
            _ => None,
        }
    }

    fn wrong_kind(&self, wanted: &'static str) -> RegistryError {
        RegistryError::WrongKind {
            model: self.reference(),
            is: match self.body.model.family {
                crate::model::Family::AssociationRules(_) => {
                    "an association rule set (use it with Recommend)"
                }
                crate::model::Family::KMeans(_) => "a segments model (its score is a segment)",
                crate::model::Family::LinearRegression(_) => {
                    "a regression model (its score is a value, not a probability)"
                }
                _ => match &self.body.scored_event {
                    Some(event) => {
                        if event == "payment" {
                            "a classifier of payments, not of products"
                        } else {
                            "a classifier of events that name no product"
                        }
                    }
                    None => "a model trained from a table",
                },
            },
            wanted,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no model '{reference}'{hint} (list the models with ListModels)")]
    NotFound {
        reference: String,
        /// What exists instead: "; did you mean 'fraud'?", or the versions loaded.
        hint: String,
    },
    #[error("model reference '{0}': expected name, name@version or an alias")]
    BadReference(String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("model artifact {path}: {source}")]
    Plan { path: String, source: PlanError },
    #[error("alias '{0}': must be 1-64 of a-z 0-9 _ . - starting with a letter or digit")]
    BadAlias(String),
    #[error(
        "alias '{alias}' is the name of a model, so it may only point at its versions, not at {target}"
    )]
    AliasCrossesModels { alias: String, target: String },
    #[error("at most {MAX_ALIASES} aliases; remove one first")]
    TooManyAliases,
    #[error("model '{name}' is not serving: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("model '{name}' has no promoted version (candidates: {}); promote one with `streamscore models promote {name}@N`", candidates.join(", "))]
    NotPromoted {
        name: String,
        candidates: Vec<String>,
    },
    #[error(
        "LoadModel reads only artifact files (<name>/<name>-v<N>.json) inside the models directory {dir}"
    )]
    OutsideDir { dir: String },
    #[error("model artifact {path} holds {inside}, but its file name says {named}")]
    NameMismatch {
        path: String,
        inside: String,
        named: String,
    },
    #[error("cannot read the models directory {path}: {reason}")]
    Directory { path: String, reason: String },
    #[error(
        "{model} is already loaded and {path} now holds other content; a loaded version is never replaced in place (it would skip candidate, shadow and promotion): write the new model as a new version"
    )]
    ChangedInPlace { model: String, path: String },
    #[error("retire '{0}': name one version, name@N (e.g. fraud@3)")]
    RetireWhich(String),
    #[error("cannot retire {model}: {reason}")]
    Retire { model: String, reason: String },
    #[error("{model} is {is}, not {wanted}")]
    WrongKind {
        model: String,
        is: &'static str,
        wanted: &'static str,
    },
}

/// An immutable view of the registry, replaced whole on every change.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    models: HashMap<String, BTreeMap<u32, Arc<LoadedModel>>>,
    aliases: HashMap<String, (String, u32)>,
    /// Names and aliases that must not serve, and why (a pin that could not be
    /// honoured). `SetAlias` on the name clears it.
    unavailable: HashMap<String, String>,
}

impl Catalog {
    pub fn resolve(&self, reference: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        let not_found = || self.not_found(reference);
        if let Some(reason) = self.unavailable.get(reference) {
            return Err(RegistryError::Unavailable {
                name: reference.to_string(),
                reason: reason.clone(),
            });
        }
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
        match self.models.get(reference) {
            Some(versions) => Err(RegistryError::NotPromoted {
                name: reference.to_string(),
                candidates: versions
                    .keys()
                    .map(|v| format!("{reference}@{v}"))
                    .collect(),
            }),
            None => Err(not_found()),
        }
    }

    /// NOT_FOUND for `reference`, saying what exists instead: the versions of the
    /// model it names, or the model or alias a typo was probably meant for.
    fn not_found(&self, reference: &str) -> RegistryError {
        let (name, version) = match reference.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (reference, None),
        };
        let hint = match (self.models.get(name), version) {
            (Some(versions), Some(_)) => format!(
                "; loaded versions: {}",
                versions
                    .keys()
                    .map(|v| format!("{name}@{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => {
                let known = self.models.keys().chain(self.aliases.keys());
                match crate::suggest::closest(name, known.map(String::as_str)) {
                    Some(meant) => match version {
                        Some(version) => format!("; did you mean '{meant}@{version}'?"),
                        None => format!("; did you mean '{meant}'?"),
                    },
                    None => String::new(),
                }
            }
        };
        RegistryError::NotFound {
            reference: reference.to_string(),
            hint,
        }
    }

    /// Versions of `name` loaded but not serving, newest first.
    pub fn candidates(&self, name: &str) -> Vec<Arc<LoadedModel>> {
        let serving = self.serving(name);
        self.models
            .get(name)
            .map(|versions| {
                versions
                    .values()
                    .rev()
                    .filter(|m| Some(m.version()) != serving)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The candidates of `name` to shadow: those `chosen` names (`name@N`), or when it
    /// names none at all, the newest `newest` of them.
    pub fn shadowed(&self, name: &str, chosen: &[String], newest: usize) -> Vec<Arc<LoadedModel>> {
        let candidates = self.candidates(name).into_iter();
        if chosen.is_empty() {
            return candidates.take(newest).collect();
        }
        candidates
            .filter(|candidate| chosen.iter().any(|c| *c == candidate.reference()))
            .collect()
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

    /// Every model name and alias with whether it serves, and why not: what health
    /// reports per name.
    pub fn health(&self) -> Vec<(String, Result<(), RegistryError>)> {
        let mut names: Vec<&String> = self
            .models
            .keys()
            .chain(self.aliases.keys())
            .chain(self.unavailable.keys())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| (name.clone(), self.resolve(name).map(|_| ())))
            .collect()
    }
}

pub struct Registry {
    definitions: Arc<Definitions>,
    dir: PathBuf,
    trust: Trust,
    promotion: Promotion,
    catalog: ArcSwap<Catalog>,
    /// Serialises writers (load, alias); readers go through `catalog` alone.
    writer: Mutex<()>,
    swaps: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    /// The directory's files as the last scan began (what the watcher starts from).
    scanned: Mutex<HashMap<PathBuf, watch::Stamp>>,
}

impl Registry {
    pub fn new(definitions: Arc<Definitions>, dir: impl Into<PathBuf>) -> Registry {
        Registry {
            definitions,
            dir: dir.into(),
            trust: Trust::default(),
            promotion: Promotion::Manual,
            catalog: ArcSwap::from_pointee(Catalog::default()),
            writer: Mutex::new(()),
            swaps: Default::default(),
            refused: Default::default(),
            scanned: Default::default(),
        }
    }

    /// What artifacts must satisfy (size limit, signature).
    pub fn with_trust(mut self, trust: Trust) -> Registry {
        self.trust = trust;
        self
    }

    pub fn with_promotion(mut self, promotion: Promotion) -> Registry {
        self.promotion = promotion;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads an artifact a caller named (`LoadModel`): relative to the models directory
    /// or absolute, it must be an artifact file inside that directory once symlinks are
    /// resolved. Nothing outside is opened, so the answer says nothing about what
    /// exists there.
    pub fn load_requested(&self, requested: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        let outside = || RegistryError::OutsideDir {
            dir: self.dir.display().to_string(),
        };
        let requested = Path::new(requested);
        let dir = std::fs::canonicalize(&self.dir).map_err(|e| RegistryError::Directory {
            path: self.dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let candidate = if requested.is_absolute() {
            requested.to_path_buf()
        } else {
            self.dir.join(requested)
        };
        // Lexically first: a path that names no place under the directory is refused
        // before the file system is asked anything about it.
        let lexical_dir = if requested.is_absolute() {
            &dir
        } else {
            &self.dir
        };
        if requested
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
            || !candidate.starts_with(lexical_dir)
            || !is_artifact_name(&candidate)
        {
            return Err(outside());
        }
        let real = std::fs::canonicalize(&candidate).map_err(|_| outside())?;
        if !real.starts_with(&dir) || !is_artifact_name(&real) {
            return Err(outside());
        }
        self.load_file(&real)
    }

    /// The current catalog; hold it (or a model resolved from it) for a whole request.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub fn resolve(&self, reference: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        self.catalog.load().resolve(reference)
    }

    /// A model that scores rows (not a rule set).
    pub fn resolve_scorer(&self, reference: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        let model = self.resolve(reference)?;
        if !model.body.model.scores() {
            return Err(model.wrong_kind("a model that scores"));
        }
        Ok(model)
    }

    /// A model that ranks products by purchase probability (`ScoreCandidates`, and the
    /// ranking of `Recommend`): a probability classifier of an event that names a
    /// product (each candidate is scored as that event of its product). A fraud model's
    /// 3e-29, an order value's -197 or a segment number is no purchase probability.
    pub fn resolve_ranker(&self, reference: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        let model = self.resolve(reference)?;
        if !model.ranks_products {
            return Err(model.wrong_kind(
                "a purchase-probability model (a classifier of an event that names a product, like purchase)",
            ));
        }
        Ok(model)
    }

    /// A rule set (`mine rules`), for `Recommend`.
    pub fn resolve_rules(&self, reference: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        let model = self.resolve(reference)?;
        if model.rules().is_none() {
            return Err(model.wrong_kind("an association rule set"));
        }
        Ok(model)
    }

    /// The directory's files (size, modification time) as the last scan began.
    pub(crate) fn scanned_stamps(&self) -> HashMap<PathBuf, watch::Stamp> {
        self.scanned.lock().clone()
    }

    /// How many times a name's serving version changed since start.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Artifact files refused since start (corrupt, other definitions, unknown features).
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks an artifact file and adds it (replacing the same name and version), as a
    /// candidate unless `if_better` promotes it; a refused file changes nothing.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedModel>, RegistryError> {
        self.load(path, true)
    }

    /// `promote`: whether the promotion policy applies (not during the start-up scan,
    /// which runs before the saved pins are read).
    fn load(&self, path: &Path, promote: bool) -> Result<Arc<LoadedModel>, RegistryError> {
        let loaded = self.check_and_add(path, promote);
        if loaded.is_err() {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        loaded
    }

    fn check_and_add(&self, path: &Path, promote: bool) -> Result<Arc<LoadedModel>, RegistryError> {
        let artifact::CheckedArtifact {
            body,
            signed,
            checksum,
        } = artifact::load_checked(path, &self.definitions, &self.trust)?;
        // The file name and folder are what operators see and what the watcher keys
        // on: a `fraud-v2.json` holding version 1 must not replace `fraud@1`.
        let named = format!("{}-v{}.json", body.name, body.version);
        let folder = path
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str());
        if path.file_name().and_then(|n| n.to_str()) != Some(named.as_str())
            || folder != Some(body.name.as_str())
        {
            return Err(RegistryError::NameMismatch {
                path: path.display().to_string(),
                inside: format!("{}@{}", body.name, body.version),
                named: path
                    .strip_prefix(&self.dir)
                    .unwrap_or(path)
                    .display()
                    .to_string(),
            });
        }
        // A table model's columns come from the request fields (its `inputs`), so it
        // reads nothing from the store.
        let stored: &[String] = match body.model.inputs {
            Some(_) => &[],
            None => &body.model.columns,
        };
        let plan = VectorPlan::for_columns(&self.definitions, stored).map_err(|source| {
            RegistryError::Plan {
                path: path.display().to_string(),
                source,
            }
        })?;
        let model = Arc::new(LoadedModel {
            ranks_products: ranks_products(&self.definitions, &body),
            body,
            plan,
            path: path.to_path_buf(),
            signed,
            checksum,
        });
        // Added and (under if_better) promoted in one step under the writer lock:
        // nobody sees the new version loaded but not yet promoted.
        let _writer = self.writer.lock();
        let catalog = self.catalog.load_full();
        if let Some(loaded) = catalog
            .models
            .get(model.name())
            .and_then(|versions| versions.get(&model.version()))
        {
            if loaded.checksum == model.checksum {
                return Ok(Arc::clone(loaded));
            }
            return Err(RegistryError::ChangedInPlace {
                model: model.reference(),
                path: path.display().to_string(),
            });
        }
        let promote = promote && self.should_promote(&catalog, &model);
        let mut aliases = catalog.aliases.clone();
        if promote {
            let name = model.name().to_string();
            aliases.insert(name.clone(), (name.clone(), model.version()));
            self.write_durably(
                &self.dir.join(&name).join(PINNED_FILE),
                format!("{}\n", model.reference()).as_bytes(),
            )?;
            self.save_aliases(&aliases)?;
        }
        self.update_locked(|catalog| {
            catalog
                .models
                .entry(model.name().to_string())
                .or_default()
                .insert(model.version(), Arc::clone(&model));
            if promote {
                catalog.aliases = aliases;
                catalog.unavailable.remove(model.name());
            }
        });
        // Whether this load promoted it; what serves is said once the directory (and
        // its aliases) is read: `promoted=false` on the serving version read as a fault.
        tracing::info!(model = %model.reference(), path = %path.display(), promoted_by_this_load = promote, "model loaded");
        Ok(model)
    }

    /// Under `if_better`: whether `model` beat the version serving now on the same
    /// hold-out (its artifact's comparison names that version), or its name has
    /// nothing serving and no pin. Only a signed artifact's comparison counts: an
    /// unsigned file's claim about itself is anyone's to write.
    fn should_promote(&self, catalog: &Catalog, model: &LoadedModel) -> bool {
        if self.promotion != Promotion::IfBetter {
            return false;
        }
        if !model.signed {
            tracing::warn!(model = %model.reference(), "if_better promotes only artifacts signed under models.signing_key; this one stays a candidate");
            return false;
        }
        let serving = catalog.resolve(model.name()).ok();
        match (&serving, &model.body.comparison) {
            (Some(serving), _) if serving.version() == model.version() => false,
            (None, _) => {
                !catalog.unavailable.contains_key(model.name())
                    && !catalog.aliases.contains_key(model.name())
            }
            (Some(serving), Some(comparison)) => {
                comparison.serving == serving.reference() && comparison.candidate_is_better()
            }
            (Some(_), None) => false,
        }
    }

    /// Points `alias` at `target` (`name@version`, or a name for its newest version).
    pub fn set_alias(&self, alias: &str, target: &str) -> Result<Arc<LoadedModel>, RegistryError> {
        self.set_alias_by(alias, target, "local")
    }

    /// [`Registry::set_alias`] on behalf of `by` (a caller name), recorded in the
    /// audit log.
    pub fn set_alias_by(
        &self,
        alias: &str,
        target: &str,
        by: &str,
    ) -> Result<Arc<LoadedModel>, RegistryError> {
        if !valid_model_name(alias) {
            return Err(RegistryError::BadAlias(
                alias.escape_debug().take(80).collect(),
            ));
        }
        self.load_if_just_written(target)?;
        let _writer = self.writer.lock();
        let catalog = self.catalog.load_full();
        let model = catalog.resolve(target)?;
        let names_a_model = catalog.models.contains_key(alias) || self.dir.join(alias).is_dir();
        if names_a_model && model.name() != alias {
            return Err(RegistryError::AliasCrossesModels {
                alias: alias.to_string(),
                target: model.reference(),
            });
        }
        let mut aliases = catalog.aliases.clone();
        if !aliases.contains_key(alias) && aliases.len() >= MAX_ALIASES {
            return Err(RegistryError::TooManyAliases);
        }
        aliases.insert(
            alias.to_string(),
            (model.name().to_string(), model.version()),
        );
        // Written before it takes effect: a rollback must survive a restart. The pin
        // mark first, so a crash between the two leaves a name refused, not unpinned.
        if names_a_model {
            self.write_durably(
                &self.dir.join(alias).join(PINNED_FILE),
                format!("{}\n", model.reference()).as_bytes(),
            )?;
        }
        self.save_aliases(&aliases)?;
        self.update_locked(|catalog| {
            catalog.aliases = aliases;
            catalog.unavailable.remove(alias);
        });
        tracing::info!(alias, target = %model.reference(), by, "alias moved");
        self.append_audit("alias", &model.reference(), Some(alias), by);
        Ok(model)
    }

    /// A version written a moment ago (by `train` or `mine`) that the watcher has not
    /// picked up yet is loaded now, so `promote` right after training works instead of
    /// answering NOT_FOUND for the next two seconds. Only `name@N` whose file lies where
    /// the watcher would find it.
    fn load_if_just_written(&self, target: &str) -> Result<(), RegistryError> {
        let Some((name, version)) = target.split_once('@') else {
            return Ok(());
        };
        if !valid_model_name(name)
            || version.parse::<u32>().is_err()
            || self.catalog.load().resolve(target).is_ok()
        {
            return Ok(());
        }
        let path = self.dir.join(name).join(format!("{name}-v{version}.json"));
        if path.is_file() {
            let model = self.load_file(&path)?;
            tracing::info!(model = %model.reference(), path = %path.display(), "model file loaded on request");
        }
        Ok(())
    }

    fn aliases_file(&self) -> PathBuf {
        self.dir.join(ALIASES_FILE)
    }

    fn write_durably(&self, path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
        let error = |e: std::io::Error| RegistryError::Directory {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(error)?;
        }
        crate::durable::replace_file(path, bytes).map_err(error)
    }

    /// Writes the aliases durably (temp file, fsync, rename, fsync the folder).
    fn save_aliases(&self, aliases: &HashMap<String, (String, u32)>) -> Result<(), RegistryError> {
        let sorted: BTreeMap<&String, String> = aliases
            .iter()
            .map(|(alias, (name, version))| (alias, format!("{name}@{version}")))
            .collect();
        let text = serde_json::to_string_pretty(&sorted).map_err(|e| RegistryError::Directory {
            path: self.aliases_file().display().to_string(),
            reason: e.to_string(),
        })?;
        self.write_durably(&self.aliases_file(), text.as_bytes())
    }

    /// Model names whose folder holds a pin mark.
    fn pinned_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.path().join(PINNED_FILE).exists())
            .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
            .collect()
    }

    /// Restores the aliases saved by `set_alias`. Fails closed: an alias whose target
    /// is not loaded, and a pinned name whose alias is lost, do not serve (health says
    /// why); an unreadable file makes every name and alias unavailable.
    fn load_aliases(&self) {
        let path = self.aliases_file();
        let catalog = self.catalog.load_full();
        let mut aliases = HashMap::new();
        let mut unavailable = HashMap::new();
        let saved: Result<BTreeMap<String, String>, String> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{ALIASES_FILE} is unreadable ({e}); set the aliases again")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!("{ALIASES_FILE} cannot be read ({e})")),
        };
        match saved {
            Ok(saved) => {
                for (alias, target) in saved {
                    match catalog.resolve(&target) {
                        Ok(model) => {
                            aliases.insert(alias, (model.name().to_string(), model.version()));
                        }
                        Err(error) => {
                            tracing::error!(alias, target, %error, "saved alias points at no loaded model; it does not serve");
                            unavailable.insert(
                                alias,
                                format!(
                                    "its alias points at {target}, which is not loaded ({error})"
                                ),
                            );
                        }
                    }
                }
                for name in self.pinned_names() {
                    if !aliases.contains_key(&name) && !unavailable.contains_key(&name) {
                        tracing::error!(model = %name, "pinned by an alias that is missing from {ALIASES_FILE}; it does not serve");
                        unavailable.insert(
                            name,
                            format!("it is pinned ({PINNED_FILE}) but {ALIASES_FILE} has no alias for it; set one with SetAlias"),
                        );
                    }
                }
            }
            Err(reason) => {
                tracing::error!(path = %path.display(), %reason, "aliases file unusable; no model serves by name");
                for name in catalog.models.keys().cloned().chain(self.pinned_names()) {
                    unavailable.insert(name, reason.clone());
                }
            }
        }
        self.update(|catalog| {
            catalog.aliases = aliases;
            catalog.unavailable = unavailable;
        });
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
        *self.scanned.lock() = watch::stamps(self);
        let mut failures = Vec::new();
        for path in artifact_files(&self.dir)? {
            if let Err(error) = self.load(&path, false) {
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
        // What exists instead is named: the versions, or the name a typo meant.
        let error = registry.resolve("fraud@9").expect_err("no version 9");
        assert!(matches!(error, RegistryError::NotFound { .. }), "{error}");
        assert!(
            error.to_string().contains("loaded versions: fraud@1"),
            "{error}"
        );
        let error = registry.resolve("frud").expect_err("a typo");
        assert!(
            error.to_string().contains("did you mean 'fraud'?"),
            "{error}"
        );
        let error = registry.resolve("churn").expect_err("a stranger");
        assert!(!error.to_string().contains("did you mean"), "{error}");
        assert!(matches!(
            registry.resolve("fraud@x"),
            Err(RegistryError::BadReference(_))
        ));
        for name in ["purchase", "order_value"] {
            assert!(registry.resolve(name).is_ok(), "{name}");
        }
    }

    /// `train` then `models promote` at once: the file is there, the watcher has not
    /// seen it yet. Before, the promote answered NOT_FOUND for up to two seconds.
    #[test]
    fn a_version_written_after_the_scan_is_promoted_at_once() {
        let definitions = Arc::new(Definitions::default_shop());
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud/fraud-v1.json");
        let body = artifact::load(&shipped, &definitions).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let save = |version: u32| {
            let mut body = body.clone();
            body.version = version;
            let path = dir.path().join(format!("fraud/fraud-v{version}.json"));
            artifact::save(&path, body).unwrap();
        };
        save(1);
        let registry = Registry::new(Arc::clone(&definitions), dir.path());
        registry.scan().unwrap();
        save(2);
        assert_eq!(registry.set_alias("fraud", "fraud@2").unwrap().version(), 2);
        assert_eq!(registry.resolve("fraud").unwrap().version(), 2);
        // Only a file where the watcher looks: no version 3 anywhere.
        let error = registry.set_alias("fraud", "fraud@3").unwrap_err();
        assert!(matches!(error, RegistryError::NotFound { .. }), "{error}");
        let error = registry.set_alias("fraud", "../fraud@2").unwrap_err();
        assert!(matches!(error, RegistryError::NotFound { .. }), "{error}");
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
        assert!(
            matches!(
                registry.resolve("fraud"),
                Err(RegistryError::NotPromoted { .. })
            ),
            "nothing serves before a promotion"
        );
        registry.set_alias("fraud", "fraud@2").unwrap();
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

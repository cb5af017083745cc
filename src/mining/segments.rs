//! `mine segments`: customer segments by k-means (linfa-clustering: k-means++
//! initialisation, seeded). Every entity of the chosen type held at the end of the
//! history is a row of its chosen features as of then; rows are imputed and
//! standardised as a model's inputs are, a range of k is swept (inertia and silhouette,
//! to help choose k), and the chosen k is fitted into an artifact whose score is the
//! segment, so serving assigns an entity's current features exactly as training did.

use std::path::Path;
use std::sync::Arc;

use linfa::DatasetBase;
use linfa::traits::{Fit, Predict};
use linfa_clustering::{KMeans, KMeansInit};
use ndarray::Array2;
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use super::MiningError;
use crate::definitions::Definitions;
use crate::events::{Limits, RawEvent};
use crate::features::EngineSettings;
use crate::features::replay::Replay;
use crate::model::segments::{Centroids, MAX_SEGMENTS};
use crate::model::{Family, Model, Preprocessing};

/// Rows the silhouette is computed on at most (it is quadratic), an even spread.
pub const SILHOUETTE_SAMPLE: usize = 2_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// The entity type segmented.
    #[serde(default = "default_entity")]
    pub entity: String,
    /// Its features the segments are found in (numeric, not lists).
    pub features: Vec<String>,
    /// Segments in the artifact.
    pub k: usize,
    /// The range of k swept for the report, inclusive.
    #[serde(default = "default_sweep")]
    pub sweep: (usize, usize),
    #[serde(default)]
    pub seed: u64,
    /// k-means runs from different starts; the one of least inertia is kept.
    #[serde(default = "default_runs")]
    pub n_runs: usize,
    #[serde(default = "default_iterations")]
    pub max_iterations: u64,
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_name() -> String {
    "segments".into()
}
fn default_entity() -> String {
    "user".into()
}
fn default_sweep() -> (usize, usize) {
    (2, 8)
}
fn default_runs() -> usize {
    10
}
fn default_iterations() -> u64 {
    300
}
fn default_tolerance() -> f64 {
    1e-4
}

impl SegmentsConfig {
    pub fn from_file(path: &Path) -> Result<SegmentsConfig, MiningError> {
        let problem = |reason: String| MiningError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
        let config: SegmentsConfig =
            toml::from_str(&text).map_err(|e| problem(e.message().to_string()))?;
        Ok(config)
    }

    /// Checks every setting against `definitions`, naming the first that is wrong.
    pub fn check(&self, definitions: &Definitions) -> Result<(), String> {
        if !crate::model::artifact::valid_model_name(&self.name) {
            return Err(format!(
                "name '{}': 1-64 of a-z 0-9 _ . -",
                self.name.escape_debug()
            ));
        }
        let entity = definitions
            .entity_id(&self.entity)
            .ok_or_else(|| format!("entity: no entity type '{}'", self.entity))?;
        if self.features.is_empty() {
            return Err("features: list at least one".into());
        }
        for name in &self.features {
            match definitions.feature_id(name) {
                Some(id) if definitions.features[id].entity != entity => {
                    return Err(format!(
                        "features: '{name}' is not a {} feature",
                        self.entity
                    ));
                }
                Some(id) if definitions.features[id].is_list() => {
                    return Err(format!("features: '{name}' is a list, not a number"));
                }
                Some(_) => {}
                None => return Err(format!("features: no feature '{name}'")),
            }
        }
        let (low, high) = self.sweep;
        if !(2..=MAX_SEGMENTS).contains(&self.k) {
            return Err(format!("k: must be 2 to {MAX_SEGMENTS}, got {}", self.k));
        }
        if !(2 <= low && low <= high && high <= MAX_SEGMENTS) {
            return Err(format!(
                "sweep: must be [low, high] with 2 <= low <= high <= {MAX_SEGMENTS}, got [{low}, {high}]"
            ));
        }
        if self.n_runs == 0 || self.max_iterations == 0 {
            return Err("n_runs and max_iterations: must be at least 1".into());
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(format!(
                "tolerance: must be positive, got {}",
                self.tolerance
            ));
        }
        Ok(())
    }
}

/// The rows to segment: one per entity held at the end of the history.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub ids: Vec<String>,
    pub rows: Vec<Vec<Option<f64>>>,
    /// The moment the features were read as of (the newest event time).
    pub as_of_ms: i64,
    pub refused_events: u64,
}

/// Replays `history` through a fresh engine (as training does) and reads `features` of
/// every live `entity` as of the newest event.
pub fn rows(
    definitions: Arc<Definitions>,
    settings: EngineSettings,
    history: impl Iterator<Item = RawEvent>,
    config: &SegmentsConfig,
) -> Result<Rows, MiningError> {
    let limits = Limits {
        max_future_skew_ms: i64::MAX,
        max_id_bytes: usize::MAX,
    };
    let mut replay = Replay::new(Arc::clone(&definitions), settings, limits);
    for raw in history {
        replay.apply(&raw);
    }
    let mut out = Rows {
        refused_events: replay.refused,
        as_of_ms: replay.newest_ms.max(0),
        ..Rows::default()
    };
    let engine = replay.finish();
    let (entity, ids) = engine
        .resolve(&config.entity, &config.features)
        .map_err(|e| MiningError::NoBaskets(e.to_string()))?;
    let view = engine.view();
    for id in engine.entity_ids(entity) {
        let Ok(read) = view.read(entity, &id, &ids, out.as_of_ms) else {
            continue;
        };
        if !read.known {
            continue;
        }
        out.rows.push(read.values.iter().map(|(_, v)| *v).collect());
        out.ids.push(id);
    }
    Ok(out)
}

/// One k of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SweepPoint {
    pub k: usize,
    pub inertia: f64,
    pub silhouette: f64,
}

#[derive(Debug, Clone)]
pub struct Fitted {
    pub preprocessing: Preprocessing,
    /// The standardised rows fitted on.
    pub standardised: Array2<f64>,
    pub centroids: Array2<f64>,
    /// Each row's segment, as linfa assigned it.
    pub labels: Vec<usize>,
    pub inertia: f64,
    pub sweep: Vec<SweepPoint>,
}

/// One k-means fit: its inertia, centroids and each row's segment.
struct KMeansFit {
    inertia: f64,
    centroids: Array2<f64>,
    labels: Vec<usize>,
}

fn kmeans(data: &Array2<f64>, k: usize, config: &SegmentsConfig) -> Result<KMeansFit, MiningError> {
    let model = KMeans::params_with_rng(k, Xoshiro256Plus::seed_from_u64(config.seed))
        .init_method(KMeansInit::KMeansPlusPlus)
        .n_runs(config.n_runs)
        .max_n_iterations(config.max_iterations)
        .tolerance(config.tolerance)
        .fit(&DatasetBase::from(data.clone()))
        .map_err(|e| MiningError::NoBaskets(format!("k-means with k = {k}: {e}")))?;
    Ok(KMeansFit {
        inertia: model.inertia(),
        labels: model.predict(data).to_vec(),
        centroids: model.centroids().clone(),
    })
}

/// Mean silhouette of an even sample of the rows: for each, (b - a) / max(a, b) with a
/// its mean distance to its own segment and b to the nearest other one.
pub fn silhouette(data: &Array2<f64>, labels: &[usize], k: usize) -> f64 {
    let n = data.nrows();
    let step = n.div_ceil(SILHOUETTE_SAMPLE).max(1);
    let sample: Vec<usize> = (0..n).step_by(step).collect();
    let mut total = 0.0;
    let mut counted = 0usize;
    for &i in &sample {
        let mut sums = vec![0.0; k];
        let mut counts = vec![0usize; k];
        for &j in &sample {
            if i == j {
                continue;
            }
            let d = crate::model::squared_distance(
                data.row(i).as_slice().unwrap_or(&[]),
                data.row(j).as_slice().unwrap_or(&[]),
            )
            .sqrt();
            sums[labels[j]] += d;
            counts[labels[j]] += 1;
        }
        let own = labels[i];
        if counts[own] == 0 {
            continue;
        }
        let a = sums[own] / counts[own] as f64;
        let b = (0..k)
            .filter(|c| *c != own && counts[*c] > 0)
            .map(|c| sums[c] / counts[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b).max(f64::MIN_POSITIVE);
            counted += 1;
        }
    }
    total / counted.max(1) as f64
}

/// Standardises the rows, sweeps k for the report and fits the chosen k.
pub fn fit(rows: &Rows, config: &SegmentsConfig) -> Result<Fitted, MiningError> {
    let columns = config.features.len();
    if rows.rows.len() < config.k.max(config.sweep.1) {
        return Err(MiningError::NoBaskets(format!(
            "{} {} entities, fewer than the {} segments asked for",
            rows.rows.len(),
            config.entity,
            config.k.max(config.sweep.1)
        )));
    }
    let preprocessing = Preprocessing::fit(&rows.rows, columns);
    let mut standardised = Array2::<f64>::zeros((rows.rows.len(), columns));
    let mut buffer = vec![0.0; columns];
    for (at, row) in rows.rows.iter().enumerate() {
        preprocessing.transform_into(row, &mut buffer);
        standardised
            .row_mut(at)
            .iter_mut()
            .zip(&buffer)
            .for_each(|(slot, value)| *slot = *value);
    }
    let mut sweep = Vec::new();
    for k in config.sweep.0..=config.sweep.1 {
        let fit = kmeans(&standardised, k, config)?;
        sweep.push(SweepPoint {
            k,
            inertia: fit.inertia,
            silhouette: silhouette(&standardised, &fit.labels, k),
        });
    }
    let fit = kmeans(&standardised, config.k, config)?;
    Ok(Fitted {
        preprocessing,
        inertia: fit.inertia,
        centroids: fit.centroids,
        labels: fit.labels,
        standardised,
        sweep,
    })
}

impl Fitted {
    /// The served model: the features as columns, their preprocessing, the centroids.
    pub fn model(&self, config: &SegmentsConfig) -> Model {
        let mut sizes = vec![0u64; config.k];
        for label in &self.labels {
            sizes[*label] += 1;
        }
        Model {
            columns: config.features.clone(),
            inputs: None,
            preprocessing: self.preprocessing.clone(),
            family: Family::KMeans(Centroids {
                centroids: self.centroids.iter().copied().collect(),
                sizes,
            }),
        }
    }

    /// Each segment's size and feature means in the features' own units (missing
    /// values left out).
    pub fn profiles(&self, rows: &Rows, k: usize) -> Vec<(usize, Vec<Option<f64>>)> {
        let columns = rows.rows.first().map_or(0, Vec::len);
        let mut sums = vec![vec![(0.0, 0usize); columns]; k];
        let mut sizes = vec![0usize; k];
        for (row, label) in rows.rows.iter().zip(&self.labels) {
            sizes[*label] += 1;
            for (column, value) in row.iter().enumerate() {
                if let Some(value) = value {
                    sums[*label][column].0 += value;
                    sums[*label][column].1 += 1;
                }
            }
        }
        sizes
            .into_iter()
            .zip(sums)
            .map(|(size, sums)| {
                let means = sums
                    .into_iter()
                    .map(|(sum, n)| (n > 0).then(|| sum / n as f64))
                    .collect();
                (size, means)
            })
            .collect()
    }
}

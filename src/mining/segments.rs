//! `mine segments`: customer segments by k-means (linfa-clustering: k-means++
//! initialisation, seeded). Every entity of the chosen type held at the end of the
//! history is a row of its chosen features as of then; rows are imputed and
//! standardised as a model's inputs are, a range of k is swept (inertia and silhouette,
//! to help choose k), and the chosen k is fitted into an artifact whose score is the
//! segment, so serving assigns an entity's current features exactly as training did.

use std::collections::HashSet;
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

/// The share of rows missing or 0 from which a feature is warned about.
pub const MOSTLY_EMPTY: f64 = 0.95;

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
    /// Each feature is clipped to its `winsorize` and `1 - winsorize` quantiles before
    /// standardising (and so when served: the clip is the artifact's range), so a few
    /// heavy spenders neither stretch the scale nor earn a segment of their own.
    /// 0 turns it off.
    #[serde(default = "default_winsorize")]
    pub winsorize: f64,
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
fn default_winsorize() -> f64 {
    0.01
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
        if !(0.0..0.5).contains(&self.winsorize) {
            return Err(format!(
                "winsorize: must be at least 0 and below 0.5, got {}",
                self.winsorize
            ));
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
    /// Entities no longer held at the end (idle past every window and evicted): their
    /// rows are what the server reads for them now, empty windows.
    pub idle: usize,
}

/// Replays `history` through a fresh engine (as training does) and reads `features` of
/// every `entity` the history names as of the newest event, idle or not. An entity idle
/// past every window (evicted, as the server evicts it) reads as the server reads it
/// now: counts and sums 0, means and last values missing (imputed). Before, only the
/// entities still held were segmented, and a shopper quiet for a month had no segment.
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
    let mut named: HashSet<String> = HashSet::new();
    for raw in history {
        if replay.apply(&raw)
            && let Some(id) = raw.entities.get(&config.entity)
            && !named.contains(id)
        {
            named.insert(id.clone());
        }
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
    // A composite entity is never named whole by an event: those held are all there is.
    let held: HashSet<String> = engine.entity_ids(entity).into_iter().collect();
    named.extend(held.iter().cloned());
    let mut every: Vec<String> = named.into_iter().collect();
    every.sort_unstable();
    let view = engine.view();
    for id in every {
        let Ok(read) = view.read(entity, &id, &ids, out.as_of_ms) else {
            continue;
        };
        // Not held, or held for its first-seen times alone: no window holds anything.
        out.idle += usize::from(!read.known);
        out.rows.push(read.values.iter().map(|(_, v)| *v).collect());
        out.ids.push(id);
    }
    Ok(out)
}

/// The features missing or 0 for at least [`MOSTLY_EMPTY`] of the rows, with that
/// share: they separate almost nothing, and usually mean the history lacks their
/// events (payment features on an order-only history). A count of 0 for half the
/// users is information (they did not pay this week); for all of them it is not.
pub fn mostly_empty(rows: &Rows, config: &SegmentsConfig) -> Vec<(String, f64)> {
    let n = rows.rows.len().max(1) as f64;
    config
        .features
        .iter()
        .enumerate()
        .filter_map(|(column, name)| {
            let empty = rows
                .rows
                .iter()
                .filter(|row| row[column].is_none_or(|v| v == 0.0))
                .count() as f64
                / n;
            (empty >= MOSTLY_EMPTY).then(|| (name.clone(), empty))
        })
        .collect()
}

/// `rows` with each column clipped to its `q` and `1 - q` quantiles (nearest rank over
/// the present values; missing values stay missing).
fn winsorized(rows: &[Vec<Option<f64>>], columns: usize, q: f64) -> Vec<Vec<Option<f64>>> {
    let mut clipped = rows.to_vec();
    for column in 0..columns {
        let mut present: Vec<f64> = rows.iter().filter_map(|row| row[column]).collect();
        if present.is_empty() {
            continue;
        }
        present.sort_by(f64::total_cmp);
        let last = (present.len() - 1) as f64;
        let low = present[(q * last).floor() as usize];
        let high = present[((1.0 - q) * last).ceil() as usize];
        for row in &mut clipped {
            if let Some(value) = row[column].as_mut() {
                *value = value.clamp(low, high);
            }
        }
    }
    clipped
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
    // Fitted on the clipped rows, the preprocessing's range is the clip: serving clips
    // to it before standardising, so a live entity is transformed as training did.
    let clipped = winsorized(&rows.rows, columns, config.winsorize);
    let preprocessing = Preprocessing::fit(&clipped, columns);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY_MS;

    fn config(features: &[&str], winsorize: f64) -> SegmentsConfig {
        SegmentsConfig {
            name: "segments".into(),
            entity: "user".into(),
            features: features.iter().map(|f| f.to_string()).collect(),
            k: 3,
            sweep: (2, 5),
            seed: 3,
            n_runs: 3,
            max_iterations: 300,
            tolerance: 1e-4,
            winsorize,
        }
    }

    fn view(id: &str, user: &str, at: i64) -> RawEvent {
        RawEvent {
            event_id: id.into(),
            event_type: "page_view".into(),
            event_time_ms: at,
            entities: [("user".to_string(), user.to_string())].into(),
            strings: [("session_id".to_string(), format!("s-{id}"))].into(),
            ..RawEvent::default()
        }
    }

    /// A user quiet for 60 days (evicted, as the server evicts) is still segmented, on
    /// empty windows: what the server reads for them now.
    #[test]
    fn a_user_idle_past_every_window_is_segmented_on_empty_windows() {
        let start = 1_767_225_600_000;
        let mut history: Vec<RawEvent> = (0..5)
            .map(|i| view(&format!("q{i}"), "quiet", start + i * 1_000))
            .collect();
        history.extend((0..5).map(|i| view(&format!("a{i}"), "active", start + 60 * DAY_MS + i)));
        let rows = rows(
            Arc::new(Definitions::default_shop()),
            EngineSettings::from(&crate::config::IngestSettings::default()),
            history.into_iter(),
            &config(&["user_views_24h", "user_orders_30d"], 0.01),
        )
        .expect("rows");
        // Before: only "active" (the one still held).
        assert_eq!(rows.ids, ["active", "quiet"]);
        assert_eq!(rows.idle, 1);
        assert_eq!(rows.rows[0][0], Some(5.0));
        assert!(
            rows.rows[1][0].is_none_or(|views| views == 0.0),
            "{:?}",
            rows.rows[1]
        );
    }

    /// Three groups of shoppers and a handful of extreme spenders (0.5%, spend in the
    /// thousands where the groups spend 0-6, visits like group 0's). Standardised as
    /// they are, the spenders squash the spend axis: k = 3 gives them a segment of their
    /// own and merges two real groups. Clipped at the 1% quantiles, the sweep prefers
    /// k = 3 and its segments are the three groups, the spenders among the big spenders.
    #[test]
    fn a_few_extreme_spenders_do_not_earn_their_own_segment() {
        let mut state = 7u64;
        let mut jitter = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut data = Rows::default();
        for (group, (x, y)) in [(0.0, 0.0), (6.0, 0.0), (0.0, 6.0)].into_iter().enumerate() {
            for i in 0..300 {
                data.ids.push(format!("g{group}-{i}"));
                data.rows.push(vec![Some(x + jitter()), Some(y + jitter())]);
            }
        }
        for i in 0..4 {
            data.ids.push(format!("whale-{i}"));
            data.rows
                .push(vec![Some(5_000.0 + 100.0 * i as f64), Some(jitter())]);
        }
        let segments = |winsorize: f64| {
            let fitted = fit(&data, &config(&["spend", "visits"], winsorize)).expect("fits");
            let best = fitted
                .sweep
                .iter()
                .max_by(|a, b| a.silhouette.total_cmp(&b.silhouette))
                .map(|point| point.k);
            let label_of = |prefix: &str| -> Vec<usize> {
                let mut labels: Vec<usize> = data
                    .ids
                    .iter()
                    .zip(&fitted.labels)
                    .filter(|(id, _)| id.starts_with(prefix))
                    .map(|(_, label)| *label)
                    .collect();
                labels.sort_unstable();
                labels.dedup();
                labels
            };
            let groups = [label_of("g0-"), label_of("g1-"), label_of("g2-")];
            (best, groups, label_of("whale-"))
        };
        // The failure this guards against: a segment of the four spenders alone.
        let (_, groups, whales) = segments(0.0);
        assert!(
            whales.iter().all(|w| groups.iter().all(|g| !g.contains(w))),
            "{groups:?} {whales:?}"
        );
        let (best, groups, whales) = segments(0.01);
        assert_eq!(best, Some(3));
        assert!(groups.iter().all(|g| g.len() == 1), "{groups:?}");
        assert!(groups[0] != groups[1] && groups[1] != groups[2] && groups[0] != groups[2]);
        assert_eq!(whales, groups[1], "the spenders are among the big spenders");
    }

    #[test]
    fn a_feature_empty_for_nearly_all_rows_is_named() {
        // Payments: 19 of 20 rows missing or 0. Views: 0 for half, which is information.
        let data = Rows {
            ids: (0..20).map(|i| i.to_string()).collect(),
            rows: (0..20)
                .map(|i| {
                    let payments = match i {
                        0 => Some(3.0),
                        i if i % 2 == 0 => None,
                        _ => Some(0.0),
                    };
                    vec![payments, Some(f64::from(i % 2))]
                })
                .collect(),
            ..Rows::default()
        };
        let empty = mostly_empty(
            &data,
            &config(&["user_payments_7d", "user_views_24h"], 0.01),
        );
        assert_eq!(empty, [("user_payments_7d".to_string(), 0.95)]);
    }
}

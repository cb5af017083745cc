//! Live features against the serving model's training data: one `Score` in every
//! `every` adds its input vector to a window per model version; when a window holds
//! `window` vectors, each column's live mean is compared with the column's training
//! mean, in training standard deviations (both kept in every artifact's
//! preprocessing, so models trained before this check are covered too). A column
//! moved further than `threshold` means the traffic looks unlike what the model learnt
//! from (the tour once simulated sessions 15x denser than the shipped models' training
//! history, and every ordinary payment was blocked): the caller logs it and counts it.
//!
//! Off the answer's path in cost: a sampled call takes one uncontended lock and adds a
//! few dozen numbers; nothing is allocated after a model's first window.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::config::DriftSettings;
use crate::registry::LoadedModel;

/// The drift check of one full window.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftCheck {
    /// `name@version`.
    pub model: String,
    /// Vectors the window held.
    pub vectors: u64,
    /// Every column's shift, largest first.
    pub shifts: Vec<Shift>,
    /// Whether any column moved further than the threshold.
    pub drifted: bool,
}

/// One column's live mean against its training mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    pub feature: String,
    /// |live mean - training mean| in training standard deviations.
    pub deviations: f64,
    pub live_mean: f64,
    pub training_mean: f64,
    /// Share of the window's values outside the column's training range (clipped
    /// when scored); 0 for artifacts that keep no ranges.
    pub outside: f64,
}

impl DriftCheck {
    /// The columns past the threshold, for a log line: "user_carts_24h 54.1 sd (live
    /// mean 273.0, training 4.2)".
    pub fn summary(&self, threshold: f64) -> String {
        self.shifts
            .iter()
            .filter(|s| s.deviations > threshold)
            .take(5)
            .map(|s| {
                format!(
                    "{} {:.1} sd (live mean {:.4}, training {:.4}; {:.0}% outside the training range)",
                    s.feature,
                    s.deviations,
                    s.live_mean,
                    s.training_mean,
                    s.outside * 100.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Default)]
struct Window {
    sums: Vec<f64>,
    outside: Vec<u64>,
    vectors: u64,
}

#[derive(Debug)]
pub struct DriftMonitor {
    settings: DriftSettings,
    seen: AtomicU64,
    windows: Mutex<HashMap<PathBuf, Window>>,
}

impl DriftMonitor {
    /// `None` when `settings.every` is 0 (off).
    pub fn new(settings: DriftSettings) -> Option<DriftMonitor> {
        (settings.every > 0).then(|| DriftMonitor {
            settings,
            seen: AtomicU64::new(0),
            windows: Mutex::new(HashMap::new()),
        })
    }

    pub fn threshold(&self) -> f64 {
        self.settings.threshold
    }

    /// Whether this call is one of the one in `every` that are observed.
    pub fn due(&self) -> bool {
        self.seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.settings.every)
    }

    /// Adds `vector` (the model's input, in its column order) to the model's window;
    /// returns the check when that filled the window (which starts again empty).
    pub fn observe(&self, model: &LoadedModel, vector: &[Option<f64>]) -> Option<DriftCheck> {
        let preprocessing = &model.body.model.preprocessing;
        let columns = preprocessing.means.len();
        if columns == 0 || vector.len() != columns {
            return None;
        }
        let mut windows = self.windows.lock();
        // Keyed by the artifact's path (one per version): found without allocating.
        if !windows.contains_key(model.path.as_path()) {
            windows.insert(model.path.clone(), Window::default());
        }
        let window = windows.get_mut(model.path.as_path())?;
        window.sums.resize(columns, 0.0);
        window.outside.resize(columns, 0);
        for (column, value) in vector.iter().enumerate() {
            // A missing value counts as the model reads it: the training mean.
            let value = value
                .filter(|v| v.is_finite())
                .unwrap_or(preprocessing.means[column]);
            window.sums[column] += value;
            window.outside[column] += u64::from(preprocessing.clipped(column, value));
        }
        window.vectors += 1;
        if window.vectors < self.settings.window {
            return None;
        }
        let vectors = window.vectors;
        let sums = std::mem::replace(&mut window.sums, vec![0.0; columns]);
        let outside = std::mem::replace(&mut window.outside, vec![0; columns]);
        window.vectors = 0;
        drop(windows);
        let mut shifts: Vec<Shift> = sums
            .iter()
            .enumerate()
            .map(|(column, sum)| {
                let live_mean = sum / vectors as f64;
                let training_mean = preprocessing.means[column];
                Shift {
                    feature: model.body.model.columns[column].clone(),
                    deviations: (live_mean - training_mean).abs() / preprocessing.scales[column],
                    live_mean,
                    training_mean,
                    outside: outside[column] as f64 / vectors as f64,
                }
            })
            .collect();
        shifts.sort_by(|a, b| b.deviations.total_cmp(&a.deviations));
        let drifted = shifts
            .first()
            .is_some_and(|s| s.deviations > self.settings.threshold);
        Some(DriftCheck {
            model: model.reference(),
            vectors,
            shifts,
            drifted,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::definitions::Definitions;
    use crate::registry::Registry;

    fn fraud() -> Arc<LoadedModel> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let registry = Registry::new(Arc::new(Definitions::default_shop()), dir);
        registry.scan().unwrap();
        registry.resolve("fraud@1").unwrap()
    }

    fn monitor(window: u64) -> DriftMonitor {
        DriftMonitor::new(DriftSettings {
            every: 1,
            window,
            threshold: 1.0,
        })
        .unwrap()
    }

    #[test]
    fn traffic_like_the_training_data_does_not_drift_and_a_moved_column_does() {
        let model = fraud();
        let p = &model.body.model.preprocessing;
        let column = model
            .body
            .model
            .columns
            .iter()
            .position(|c| c == "user_carts_24h")
            .expect("the shipped fraud model reads user_carts_24h");
        // The training means, spread one sd either side: the mean is the training one.
        let like_training = |i: usize| -> Vec<Option<f64>> {
            p.means
                .iter()
                .zip(&p.scales)
                .map(|(m, s)| Some(if i.is_multiple_of(2) { m + s } else { m - s }))
                .collect()
        };
        let monitor = monitor(10);
        for i in 0..9 {
            assert_eq!(monitor.observe(&model, &like_training(i)), None);
        }
        let check = monitor
            .observe(&model, &like_training(9))
            .expect("a full window");
        assert!(!check.drifted, "{check:?}");
        assert!(check.shifts[0].deviations < 1e-9, "{check:?}");
        assert_eq!(check.vectors, 10);
        // Missing values read as the training mean: no drift either.
        let missing = vec![None; p.means.len()];
        for _ in 0..9 {
            monitor.observe(&model, &missing);
        }
        assert!(!monitor.observe(&model, &missing).unwrap().drifted);
        // Carts five sd above the training mean on every call.
        let dense = |i: usize| {
            let mut row = like_training(i);
            row[column] = Some(p.means[column] + 5.0 * p.scales[column]);
            row
        };
        let check = (0..10)
            .filter_map(|i| monitor.observe(&model, &dense(i)))
            .next()
            .expect("a full window");
        assert!(check.drifted);
        assert_eq!(check.shifts[0].feature, "user_carts_24h");
        assert!((check.shifts[0].deviations - 5.0).abs() < 1e-9, "{check:?}");
        let summary = check.summary(1.0);
        assert!(
            summary.starts_with("user_carts_24h 5.0 sd (live mean"),
            "{summary}"
        );
    }

    #[test]
    fn one_call_in_every_is_observed() {
        let monitor = DriftMonitor::new(DriftSettings {
            every: 3,
            window: 10,
            threshold: 1.0,
        })
        .unwrap();
        let due: Vec<bool> = (0..6).map(|_| monitor.due()).collect();
        assert_eq!(due, [true, false, false, true, false, false]);
        assert!(
            DriftMonitor::new(DriftSettings {
                every: 0,
                ..DriftSettings::default()
            })
            .is_none()
        );
    }
}

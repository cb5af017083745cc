//! Trained models as the server and the offline scripts share them: the preprocessing
//! (imputation and standardisation, fitted on the training rows), the family's
//! parameters, and prediction from a feature vector with missing values. Pure Rust and
//! ndarray-free, so scoring one row costs a few dozen multiply-adds.

pub mod artifact;
pub mod decision;
pub mod explain;
pub mod inputs;
pub mod rules;
pub mod segments;
pub mod tree;
pub mod validate;

use serde::{Deserialize, Serialize};

/// Imputation and standardisation, learned from the training rows: a missing value
/// becomes the column's training mean, then every value is scaled to zero mean and unit
/// variance (a constant column is left unscaled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub means: Vec<f64>,
    pub scales: Vec<f64>,
    /// Each column's training range `[min, max]`: a value outside it is clipped to it
    /// before standardising, so no input, however extreme (a ratio over a tiny earlier
    /// amount, a count a caller inflated), moves the score further than anything the
    /// model was fitted on. Training rows are inside by definition, so fitting is
    /// unchanged. Absent in artifacts from before ranges were kept (no clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<(f64, f64)>>,
}

impl Preprocessing {
    pub fn fit(rows: &[Vec<Option<f64>>], columns: usize) -> Preprocessing {
        let mut sums = vec![0.0; columns];
        let mut counts = vec![0usize; columns];
        for row in rows {
            for (column, value) in row.iter().enumerate() {
                if let Some(value) = value {
                    sums[column] += value;
                    counts[column] += 1;
                }
            }
        }
        let means: Vec<f64> = sums
            .iter()
            .zip(&counts)
            .map(|(sum, n)| if *n == 0 { 0.0 } else { sum / *n as f64 })
            .collect();
        let mut squares = vec![0.0; columns];
        for row in rows {
            for (column, value) in row.iter().enumerate() {
                let deviation = value.unwrap_or(means[column]) - means[column];
                squares[column] += deviation * deviation;
            }
        }
        let n = rows.len().max(1) as f64;
        let scales = squares
            .iter()
            .map(|s| (s / n).sqrt())
            .map(|sd| if sd > 1e-12 { sd } else { 1.0 })
            .collect();
        let mut ranges: Vec<(f64, f64)> = vec![(f64::INFINITY, f64::NEG_INFINITY); columns];
        for row in rows {
            for (range, value) in ranges.iter_mut().zip(row) {
                if let Some(value) = value {
                    range.0 = range.0.min(*value);
                    range.1 = range.1.max(*value);
                }
            }
        }
        // A column never seen in training is always imputed: its mean is its range.
        for (range, mean) in ranges.iter_mut().zip(&means) {
            if range.0 > range.1 {
                *range = (*mean, *mean);
            }
        }
        Preprocessing {
            means,
            scales,
            ranges: Some(ranges),
        }
    }

    /// Writes the standardised row into `out`: missing values imputed, values clipped to
    /// the training range (when the artifact keeps one).
    pub fn transform_into(&self, row: &[Option<f64>], out: &mut [f64]) {
        for (column, slot) in out.iter_mut().enumerate() {
            let mut value = row
                .get(column)
                .copied()
                .flatten()
                .unwrap_or(self.means[column]);
            if let Some((low, high)) = self.ranges.as_ref().and_then(|r| r.get(column)) {
                value = value.clamp(*low, *high);
            }
            *slot = (value - self.means[column]) / self.scales[column];
        }
    }

    /// Whether `value` lies outside column `column`'s training range (it is clipped).
    pub fn clipped(&self, column: usize, value: f64) -> bool {
        self.ranges
            .as_ref()
            .and_then(|r| r.get(column))
            .is_some_and(|(low, high)| value < *low || value > *high)
    }
}

/// A linear model over standardised inputs: logistic (probability) or linear (value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearWeights {
    pub weights: Vec<f64>,
    pub intercept: f64,
}

/// A linear SVM's margin `w.x + b` and its Platt scaling `p = 1 / (1 + exp(a f + b'))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearSvm {
    pub weights: Vec<f64>,
    pub intercept: f64,
    pub platt_a: f64,
    pub platt_b: f64,
}

/// A Gaussian-kernel SVM: `f(x) = sum(c_i exp(-gamma |s_i - x|^2)) + b` over the support
/// vectors `s_i` (standardised, row-major), then Platt scaling as for [`LinearSvm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelSvm {
    pub gamma: f64,
    pub support: Vec<f64>,
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    pub platt_a: f64,
    pub platt_b: f64,
}

impl KernelSvm {
    pub(crate) fn margin(&self, x: &[f64]) -> f64 {
        let width = x.len().max(1);
        self.intercept
            + self
                .support
                .chunks(width)
                .zip(&self.coefficients)
                .map(|(s, c)| c * (-self.gamma * squared_distance(s, x)).exp())
                .sum::<f64>()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Family {
    LogisticRegression(LinearWeights),
    DecisionTree(tree::Tree),
    /// A value, not a probability (e.g. expected order amount).
    LinearRegression(LinearWeights),
    LinearSvm(LinearSvm),
    KernelSvm(KernelSvm),
    /// Not a scorer: association rules proposing products (`Recommend`).
    AssociationRules(rules::RuleSet),
    /// k-means segments: the score is the nearest centroid's index.
    KMeans(segments::Centroids),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub columns: Vec<String>,
    /// For a model trained from a table: the request fields its columns are encoded
    /// from (see [`inputs`]). `None`: the columns are stored and request-time features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<inputs::Input>>,
    pub preprocessing: Preprocessing,
    pub family: Family,
}

/// Four independent lanes, which the compiler turns into vector code (a plain float
/// sum must keep its order and cannot be vectorised).
fn lanes4(a: &[f64], b: &[f64], term: impl Fn(f64, f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(x, y)| term(*x, *y))
        .sum();
    for (x, y) in a4.zip(b4) {
        for lane in 0..4 {
            lanes[lane] += term(x[lane], y[lane]);
        }
    }
    lanes[0] + lanes[1] + lanes[2] + lanes[3] + tail
}

/// `a . b`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    lanes4(a, b, |x, y| x * y)
}

/// `|a - b|^2`.
pub fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    lanes4(a, b, |x, y| (x - y) * (x - y))
}

/// `intercept + weights . x`.
fn margin(weights: &[f64], intercept: f64, x: &[f64]) -> f64 {
    intercept + weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
}

fn platt(a: f64, b: f64, margin: f64) -> f64 {
    1.0 / (1.0 + (a * margin + b).exp())
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Model {
    pub fn family_name(&self) -> &'static str {
        match self.family {
            Family::LogisticRegression(_) => "logistic_regression",
            Family::DecisionTree(_) => "decision_tree",
            Family::LinearRegression(_) => "linear_regression",
            Family::LinearSvm(_) => "linear_svm",
            Family::KernelSvm(_) => "kernel_svm",
            Family::AssociationRules(_) => "association_rules",
            Family::KMeans(_) => "k_means",
        }
    }

    /// Whether the model gives a score for a row (a rule set proposes products instead).
    pub fn scores(&self) -> bool {
        !matches!(self.family, Family::AssociationRules(_))
    }

    /// The score of one row (probability for classifiers).
    pub fn predict(&self, row: &[Option<f64>]) -> f64 {
        let mut standardised = vec![0.0; self.columns.len()];
        self.preprocessing.transform_into(row, &mut standardised);
        self.predict_standardised(&standardised)
    }

    /// The raw decision value before any link (margin for SVMs, log-odds for logistic
    /// regression, the value itself otherwise).
    pub fn decision(&self, row: &[Option<f64>]) -> f64 {
        let mut standardised = vec![0.0; self.columns.len()];
        self.preprocessing.transform_into(row, &mut standardised);
        match &self.family {
            Family::LogisticRegression(linear) | Family::LinearRegression(linear) => {
                margin(&linear.weights, linear.intercept, &standardised)
            }
            Family::DecisionTree(tree) => tree.predict(&standardised),
            Family::LinearSvm(svm) => margin(&svm.weights, svm.intercept, &standardised),
            Family::KernelSvm(svm) => svm.margin(&standardised),
            Family::AssociationRules(_) => f64::NAN,
            Family::KMeans(segments) => segments.nearest(&standardised) as f64,
        }
    }

    /// The score of a row already imputed and standardised.
    pub fn predict_standardised(&self, standardised: &[f64]) -> f64 {
        match &self.family {
            Family::LogisticRegression(linear) => {
                sigmoid(margin(&linear.weights, linear.intercept, standardised))
            }
            Family::DecisionTree(tree) => tree.predict(standardised),
            Family::LinearRegression(linear) => {
                margin(&linear.weights, linear.intercept, standardised)
            }
            Family::LinearSvm(svm) => {
                let margin = margin(&svm.weights, svm.intercept, standardised);
                platt(svm.platt_a, svm.platt_b, margin)
            }
            Family::KernelSvm(svm) => platt(svm.platt_a, svm.platt_b, svm.margin(standardised)),
            // Never reached through scoring (see `scores`); NaN fails closed if it were.
            Family::AssociationRules(_) => f64::NAN,
            Family::KMeans(segments) => segments.nearest(standardised) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn preprocessing_imputes_the_mean_and_standardises() {
        let rows = vec![
            vec![Some(1.0), Some(5.0)],
            vec![Some(3.0), Some(5.0)],
            vec![None, Some(5.0)],
        ];
        let pre = Preprocessing::fit(&rows, 2);
        assert_eq!(pre.means, vec![2.0, 5.0]);
        assert_relative_eq!(pre.scales[0], (2.0f64 / 3.0).sqrt());
        assert_eq!(pre.scales[1], 1.0, "a constant column is not scaled");
        let mut out = [0.0; 2];
        // Inside the training ranges: imputed and standardised.
        pre.transform_into(&[None, Some(5.0)], &mut out);
        assert_eq!(out, [0.0, 0.0]);
        // Outside them: clipped to the range first (7 in a column only ever 5 is 5;
        // 100 in one of 1..3 is 3).
        assert_eq!(pre.ranges, Some(vec![(1.0, 3.0), (5.0, 5.0)]));
        pre.transform_into(&[Some(100.0), Some(7.0)], &mut out);
        assert_relative_eq!(out[0], 1.0 / (2.0f64 / 3.0).sqrt());
        assert_eq!(out[1], 0.0);
        assert!(pre.clipped(0, 100.0) && !pre.clipped(0, 2.0));
        // An artifact without ranges (from before they were kept) does not clip.
        let unbounded = Preprocessing {
            ranges: None,
            ..pre
        };
        unbounded.transform_into(&[None, Some(7.0)], &mut out);
        assert_eq!(out, [0.0, 2.0]);
    }
}

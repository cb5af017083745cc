//! Logistic regression on standardised inputs, fitted with linfa-logistic (L-BFGS).
//! Hyper-parameters are checked before anything is fitted.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};

use crate::model::{Family, LinearWeights, Model, Preprocessing};

/// Unchecked hyper-parameters, as written in a training config.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogisticParams {
    /// L2 penalty strength (linfa's `alpha`).
    pub l2: f64,
    pub max_iterations: u64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams {
            l2: 1e-3,
            max_iterations: 200,
        }
    }
}

/// Parameters that passed [`LogisticParams::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckedLogisticParams(LogisticParams);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("invalid hyper-parameter {name}: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error("cannot train on {0}")]
    BadData(String),
    #[error("the solver failed: {0}")]
    Solver(String),
}

impl LogisticParams {
    pub fn check(self) -> Result<CheckedLogisticParams, TrainError> {
        if !self.l2.is_finite() || self.l2 < 0.0 {
            return Err(TrainError::InvalidParam {
                name: "l2",
                reason: format!("must be finite and >= 0, got {}", self.l2),
            });
        }
        if self.max_iterations == 0 {
            return Err(TrainError::InvalidParam {
                name: "max_iterations",
                reason: "must be at least 1".into(),
            });
        }
        Ok(CheckedLogisticParams(self))
    }
}

/// Fits preprocessing and a logistic regression on `rows` with 0/1 `labels`.
pub fn fit(
    columns: &[String],
    rows: &[Vec<Option<f64>>],
    labels: &[f64],
    params: CheckedLogisticParams,
) -> Result<Model, TrainError> {
    let positives = labels.iter().filter(|l| **l > 0.5).count();
    if rows.is_empty() || positives == 0 || positives == labels.len() {
        return Err(TrainError::BadData(format!(
            "{} rows with {positives} positives: both classes are needed",
            rows.len()
        )));
    }
    let preprocessing = Preprocessing::fit(rows, columns.len());
    let mut matrix = Array2::<f64>::zeros((rows.len(), columns.len()));
    for (row, mut out) in rows.iter().zip(matrix.rows_mut()) {
        let slice = out
            .as_slice_mut()
            .ok_or_else(|| TrainError::BadData("non-contiguous matrix".into()))?;
        preprocessing.transform_into(row, slice);
    }
    let targets: Array1<bool> = labels.iter().map(|l| *l > 0.5).collect();
    let fitted = LogisticRegression::default()
        .alpha(params.0.l2)
        .max_iterations(params.0.max_iterations)
        .fit(&Dataset::new(matrix, targets))
        .map_err(|e| TrainError::Solver(e.to_string()))?;
    // linfa's parameters give the probability of its `pos` class, which is not always
    // `true`: flip the sign so the model scores the probability of fraud.
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let weights = fitted.params().iter().map(|w| sign * w).collect();
    Ok(Model {
        columns: columns.to_vec(),
        preprocessing,
        family: Family::LogisticRegression(LinearWeights {
            weights,
            intercept: sign * fitted.intercept(),
        }),
    })
}

//! Linear (ridge) regression on standardised inputs, solved exactly from the normal
//! equations with a Cholesky factorisation: one pass over the rows builds the
//! (columns+1)^2 system, so a million rows cost one sweep.

use super::error::TrainError;
use crate::model::{Family, LinearWeights, Model, Preprocessing};

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinearParams {
    /// L2 penalty on the summed squared error (the intercept is not penalised).
    pub l2: f64,
}

impl Default for LinearParams {
    fn default() -> Self {
        LinearParams { l2: 1.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct CheckedLinearParams(LinearParams);

impl LinearParams {
    pub fn check(self) -> Result<CheckedLinearParams, TrainError> {
        if !self.l2.is_finite() || self.l2 < 0.0 {
            return Err(TrainError::InvalidParam {
                name: "l2",
                reason: format!("must be finite and >= 0, got {}", self.l2),
            });
        }
        Ok(CheckedLinearParams(self))
    }
}

/// Solves `a x = b` for a symmetric positive definite `a` (row-major, n x n).
fn cholesky_solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut diagonal = a[j * n + j];
        for k in 0..j {
            diagonal -= a[j * n + k] * a[j * n + k];
        }
        if diagonal <= 1e-12 {
            return None;
        }
        let diagonal = diagonal.sqrt();
        a[j * n + j] = diagonal;
        for i in j + 1..n {
            let mut value = a[i * n + j];
            for k in 0..j {
                value -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = value / diagonal;
        }
    }
    for i in 0..n {
        let mut value = b[i];
        for k in 0..i {
            value -= a[i * n + k] * b[k];
        }
        b[i] = value / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut value = b[i];
        for k in i + 1..n {
            value -= a[k * n + i] * b[k];
        }
        b[i] = value / a[i * n + i];
    }
    Some(b)
}

pub fn fit(
    columns: &[String],
    rows: &[Vec<Option<f64>>],
    targets: &[f64],
    params: CheckedLinearParams,
) -> Result<Model, TrainError> {
    if rows.is_empty() {
        return Err(TrainError::BadData("0 rows".into()));
    }
    let width = columns.len();
    let size = width + 1;
    let preprocessing = Preprocessing::fit(rows, width);
    let mut gram = vec![0.0; size * size];
    let mut moment = vec![0.0; size];
    let mut x = vec![1.0; size];
    for (row, y) in rows.iter().zip(targets) {
        preprocessing.transform_into(row, &mut x[..width]);
        x[width] = 1.0;
        for i in 0..size {
            moment[i] += x[i] * y;
            for j in 0..=i {
                gram[i * size + j] += x[i] * x[j];
            }
        }
    }
    for i in 0..size {
        for j in 0..i {
            gram[j * size + i] = gram[i * size + j];
        }
        if i < width {
            gram[i * size + i] += params.0.l2;
        }
    }
    let solution = cholesky_solve(gram, moment, size).ok_or_else(|| {
        TrainError::BadData("the normal equations are singular (add l2 > 0)".into())
    })?;
    let (weights, intercept) = solution.split_at(width);
    Ok(Model {
        inputs: None,
        columns: columns.to_vec(),
        preprocessing,
        family: Family::LinearRegression(LinearWeights {
            weights: weights.to_vec(),
            intercept: intercept[0],
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn recovers_a_noise_free_line_and_zeroes_the_ridge_gradient() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let rows: Vec<Vec<Option<f64>>> = (0..500)
            .map(|_| (0..3).map(|_| Some(rng.random_range(-5.0..5.0))).collect())
            .collect();
        let targets: Vec<f64> = rows
            .iter()
            .map(|r| 2.0 + 3.0 * r[0].unwrap() - 1.5 * r[2].unwrap())
            .collect();
        let columns: Vec<String> = (0..3).map(|i| format!("x{i}")).collect();
        let model = fit(
            &columns,
            &rows,
            &targets,
            LinearParams { l2: 0.0 }.check().unwrap(),
        )
        .unwrap();
        for (row, y) in rows.iter().zip(&targets) {
            assert!((model.predict(row) - y).abs() < 1e-8);
        }

        // With a penalty, the gradient of sum((y - f)^2)/2 + l2/2 |w|^2 vanishes.
        let model = fit(
            &columns,
            &rows,
            &targets,
            LinearParams { l2: 50.0 }.check().unwrap(),
        )
        .unwrap();
        let Family::LinearRegression(linear) = &model.family else {
            panic!("a linear model")
        };
        let mut gradient = [0.0; 3];
        let mut x = vec![0.0; 3];
        for (row, y) in rows.iter().zip(&targets) {
            model.preprocessing.transform_into(row, &mut x);
            let residual = model.predict(row) - y;
            gradient
                .iter_mut()
                .zip(&x)
                .for_each(|(g, xi)| *g += residual * xi);
        }
        for (g, w) in gradient.iter().zip(&linear.weights) {
            assert!((g + 50.0 * w).abs() < 1e-6, "{g} + 50 * {w}");
        }
        assert!(LinearParams { l2: -1.0 }.check().is_err());
    }

    #[test]
    fn without_a_penalty_it_predicts_what_linfa_linear_does() {
        use linfa::prelude::*;
        use ndarray::{Array1, Array2};

        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let rows: Vec<Vec<Option<f64>>> = (0..800)
            .map(|_| (0..4).map(|_| Some(rng.random_range(-3.0..3.0))).collect())
            .collect();
        let targets: Vec<f64> = rows
            .iter()
            .map(|r| {
                1.0 + r[0].unwrap() - 2.0 * r[1].unwrap() * r[3].unwrap()
                    + rng.random_range(-1.0..1.0)
            })
            .collect();
        let columns: Vec<String> = (0..4).map(|i| format!("x{i}")).collect();
        let ours = fit(
            &columns,
            &rows,
            &targets,
            LinearParams { l2: 0.0 }.check().unwrap(),
        )
        .unwrap();
        let matrix = Array2::from_shape_fn((rows.len(), 4), |(i, j)| rows[i][j].unwrap());
        let dataset = linfa::Dataset::new(matrix.clone(), Array1::from(targets.clone()));
        let reference = linfa_linear::LinearRegression::new().fit(&dataset).unwrap();
        let theirs = reference.predict(&matrix);
        for (row, expected) in rows.iter().zip(theirs.iter()) {
            approx::assert_abs_diff_eq!(ours.predict(row), *expected, epsilon = 1e-8);
        }
    }
}

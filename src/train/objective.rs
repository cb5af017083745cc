//! Shared pieces of the linear learners: standardising the rows once into a matrix, and
//! a penalised empirical risk whose sum over rows runs on two threads.

use std::ops::Range;

use super::error::TrainError;
use super::weight::PositiveWeight;
use crate::model::Preprocessing;

/// Fits the preprocessing on `rows` and returns it with the standardised rows, row-major.
pub fn standardise(rows: &[Vec<Option<f64>>], width: usize) -> (Preprocessing, Vec<f64>) {
    let preprocessing = Preprocessing::fit(rows, width);
    let mut matrix = vec![0.0; rows.len() * width];
    for (row, out) in rows.iter().zip(matrix.chunks_mut(width.max(1))) {
        preprocessing.transform_into(row, out);
    }
    (preprocessing, matrix)
}

/// The objective `(sum of losses + l2/2 |w|^2) / rows` over parameters `(w..., b)` (the
/// bias is not penalised), where `partial(range, params)` returns the loss sum and its
/// gradient over a range of rows. The two halves of the rows run on two threads.
pub fn penalised_mean<F>(
    rows: usize,
    width: usize,
    l2: f64,
    partial: F,
) -> impl FnMut(&[f64], &mut [f64]) -> f64
where
    F: Fn(Range<usize>, &[f64]) -> (f64, Vec<f64>) + Sync,
{
    let split = rows / 2;
    let n = rows.max(1) as f64;
    move |params: &[f64], gradient: &mut [f64]| {
        let ((loss_a, grad_a), (loss_b, grad_b)) = std::thread::scope(|scope| {
            let second = scope.spawn(|| partial(split..rows, params));
            let first = partial(0..split, params);
            (
                first,
                second
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            )
        });
        let penalty = params[..width].iter().map(|w| w * w).sum::<f64>() * l2 / 2.0;
        for (index, g) in gradient.iter_mut().enumerate() {
            let ridge = if index < width {
                l2 * params[index]
            } else {
                0.0
            };
            *g = (grad_a[index] + grad_b[index] + ridge) / n;
        }
        (loss_a + loss_b + penalty) / n
    }
}

/// Refuses training data without both classes.
pub fn require_both_classes(rows: usize, labels: &[f64]) -> Result<(), TrainError> {
    let positives = labels.iter().filter(|l| **l > 0.5).count();
    if rows == 0 || positives == 0 || positives == labels.len() {
        return Err(TrainError::BadData(format!(
            "{rows} rows with {positives} positives: both classes are needed"
        )));
    }
    Ok(())
}

/// SVM labels in {-1, +1} and each row's violation cost: `c`, times `positive_weight`
/// for positives.
pub fn signs_and_costs(
    labels: &[f64],
    c: f64,
    positive_weight: PositiveWeight,
) -> (Vec<f64>, Vec<f64>) {
    let (targets, weights) = weighted_targets(labels, positive_weight);
    let signs = targets.iter().map(|y| 2.0 * y - 1.0).collect();
    let costs = weights.iter().map(|w| c * w).collect();
    (signs, costs)
}

/// 0/1 targets and per-row weights (`positive_weight` for positives, 1 otherwise).
pub fn weighted_targets(labels: &[f64], positive_weight: PositiveWeight) -> (Vec<f64>, Vec<f64>) {
    let positive_weight = positive_weight.resolve(labels);
    let targets: Vec<f64> = labels
        .iter()
        .map(|l| f64::from(u8::from(*l > 0.5)))
        .collect();
    let weights = targets
        .iter()
        .map(|y| if *y > 0.5 { positive_weight } else { 1.0 })
        .collect();
    (targets, weights)
}

//! Test support: our models' inputs in the form the reference libraries (linfa) take,
//! so each solver can be checked against theirs on the same standardised rows.

use ndarray::{Array1, Array2};

use crate::model::Model;

/// The rows imputed and standardised by `model`, and the 0/1 labels as booleans.
pub fn standardised(
    model: &Model,
    rows: &[Vec<Option<f64>>],
    labels: &[f64],
) -> (Array2<f64>, Array1<bool>) {
    let mut matrix = Array2::zeros((rows.len(), model.columns.len()));
    for (row, mut out) in rows.iter().zip(matrix.rows_mut()) {
        let slot = out
            .as_slice_mut()
            .expect("a fresh row-major matrix has contiguous rows");
        model.preprocessing.transform_into(row, slot);
    }
    (matrix, labels.iter().map(|l| *l > 0.5).collect())
}

//! Tabular training input, for teams that already have feature tables: Parquet (see
//! `table::parquet`) or a CSV (`table::csv`) with one
//! column per feature, a `label` column, and optionally `event_id` and `time_ms` (the
//! format `train --export-dataset` writes). Rows are put in `time_ms` order so the
//! hold-out is still a cut in time; without `time_ms`, file order is taken as time
//! order. An empty cell is a missing value.

use std::path::Path;

pub mod csv;
pub mod parquet;

use crate::train::dataset::Dataset;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: no '{LABEL}' column (the header has: {header})")]
    NoLabel { path: String, header: String },
    #[error("{path} line {line}, column '{column}': '{value}' is not a number")]
    NotANumber {
        path: String,
        line: u64,
        column: String,
        value: String,
    },
    #[error("{path} line {line}: the label is missing")]
    MissingLabel { path: String, line: u64 },
    #[error("{path}: no feature columns besides event_id, time_ms and label")]
    NoFeatures { path: String },
}

pub(crate) const LABEL: &str = "label";

/// Parquet by its extension; anything else is read as CSV.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Reads a feature table: Parquet (`.parquet`) or CSV.
pub fn read(path: &Path) -> Result<Dataset, TableError> {
    if is_parquet(path) {
        parquet::read(path)
    } else {
        csv::read(path)
    }
}

//! Tabular training input, for teams that already have feature tables: Parquet
//! (`table::parquet`) or CSV (`table::csv`), read into a [`RawTable`] of cells and then
//! typed and labelled here, the same way for both. Rows are put in `time_ms` order so a
//! time split is still a cut in time; without `time_ms`, file order is time order.
//!
//! For the event targets (fraud, purchase, order_value) every feature column must be a
//! number (they are stored features the server computes). For the table targets
//! (binary, regression) each column is typed from its cells: a number, a yes/no, or a
//! category (one-hot inside the model, see `model::inputs`). Every refused cell is
//! reported at once, with its line and column.

use std::collections::HashMap;
use std::path::Path;

pub mod csv;
pub mod parquet;

use crate::model::inputs::{Cell, Input, InputKind, parse_bool};
use crate::train::dataset::{Dataset, Row};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: no '{label}' column for the label (the header has: {header})")]
    NoLabel {
        path: String,
        label: String,
        header: String,
    },
    #[error("{path}: {count} {} refused:\n{listed}", if *count == 1 { "cell" } else { "cells" })]
    Cells {
        path: String,
        count: usize,
        listed: String,
    },
    #[error("{path}: no feature columns besides event_id, time_ms and the label")]
    NoFeatures { path: String },
}

/// The label column when the config names none.
pub const LABEL: &str = "label";

/// Categories kept per column (the most frequent); rarer values share the "other"
/// column.
pub const MAX_CATEGORIES: usize = 100;

/// Refused cells listed in an error (all are counted).
const LISTED_CELLS: usize = 20;

/// A cell as read, before the column's type is decided.
#[derive(Debug, Clone, PartialEq)]
pub enum RawCell {
    Missing,
    Number(f64),
    Bool(bool),
    Text(Box<str>),
}

/// A table as read: named columns of cells, and each row's line (CSV) or row number
/// (Parquet) for messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawTable {
    pub names: Vec<String>,
    pub columns: Vec<Vec<RawCell>>,
    pub lines: Vec<u64>,
}

/// How to read the label and the features.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// The label column.
    pub label: String,
    /// 0/1 labels (true/false, yes/no accepted) rather than numbers.
    pub binary: bool,
    /// Type the feature columns (numbers, yes/no, categories) into model inputs; off
    /// for the event targets, whose columns must all be numbers.
    pub encode: bool,
}

impl TableSpec {
    /// The `--export-dataset` format: a numeric `label`, numeric features.
    pub fn exported(binary: bool) -> TableSpec {
        TableSpec {
            label: LABEL.into(),
            binary,
            encode: false,
        }
    }
}

/// Parquet by its extension; anything else is read as CSV.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Reads a feature table (Parquet or CSV) into a labelled training set.
pub fn read(path: &Path, spec: &TableSpec) -> Result<Dataset, TableError> {
    let raw = if is_parquet(path) {
        parquet::read_raw(path)?
    } else {
        csv::read_raw(path)?
    };
    build(&path.display().to_string(), raw, spec)
}

/// Refused cells, counted and listed.
#[derive(Default)]
struct Problems {
    count: usize,
    listed: String,
}

impl Problems {
    fn add(&mut self, line: u64, column: &str, value: &RawCell, reason: &str) {
        self.count += 1;
        if self.count <= LISTED_CELLS {
            let shown = match value {
                RawCell::Missing => "an empty cell".to_string(),
                RawCell::Number(v) => format!("'{v}'"),
                RawCell::Bool(b) => format!("'{b}'"),
                RawCell::Text(t) => format!("'{}'", t.chars().take(40).collect::<String>()),
            };
            self.listed += &format!("  line {line}, column '{column}': {shown} {reason}\n");
        }
    }
}

/// A text cell as a number, if it is one.
fn text_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok()
}

/// The type of a feature column from its cells: a number when most cells are numbers
/// (the rest are then refused, not turned into categories), a yes/no when every cell is
/// one, a category otherwise.
fn infer(cells: &[RawCell]) -> InputKind {
    let (mut present, mut numbers, mut bools) = (0usize, 0usize, 0usize);
    for cell in cells {
        match cell {
            RawCell::Missing => continue,
            RawCell::Number(_) => numbers += 1,
            RawCell::Bool(_) => bools += 1,
            RawCell::Text(text) => {
                if text_number(text).is_some() {
                    numbers += 1;
                } else if parse_bool(text).is_some() {
                    bools += 1;
                }
            }
        }
        present += 1;
    }
    if present == 0 || numbers * 2 > present {
        return InputKind::Number;
    }
    if bools == present {
        return InputKind::Boolean;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for cell in cells {
        if let Some(text) = category_text(cell) {
            *counts.entry(text).or_default() += 1;
        }
    }
    let mut values: Vec<(String, usize)> = counts.into_iter().collect();
    values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    values.truncate(MAX_CATEGORIES);
    InputKind::Category {
        values: values.into_iter().map(|(v, _)| v).collect(),
    }
}

/// A cell's text as a category value (what a request sends in `strings`).
fn category_text(cell: &RawCell) -> Option<String> {
    match cell {
        RawCell::Missing => None,
        RawCell::Number(v) => Some(v.to_string()),
        RawCell::Bool(b) => Some(b.to_string()),
        RawCell::Text(t) => Some(t.trim().to_string()),
    }
}

/// A cell as the encoder takes it for an input of `kind`.
fn cell_for<'a>(kind: &InputKind, raw: &'a RawCell) -> Result<Cell<'a>, &'static str> {
    Ok(match (kind, raw) {
        (_, RawCell::Missing) => Cell::Missing,
        (InputKind::Number, RawCell::Text(text)) => {
            Cell::Number(text_number(text).ok_or("is not a number")?)
        }
        (_, RawCell::Number(v)) => Cell::Number(*v),
        (_, RawCell::Bool(b)) => Cell::Number(f64::from(u8::from(*b))),
        (_, RawCell::Text(text)) => Cell::Text(text),
    })
}

/// A label cell as 0/1 (binary) or a finite number.
fn label_value(cell: &RawCell, binary: bool) -> Result<f64, &'static str> {
    let value = match cell {
        RawCell::Missing => return Err("is missing: every row needs a label"),
        RawCell::Number(v) => *v,
        RawCell::Bool(b) => f64::from(u8::from(*b)),
        RawCell::Text(text) => match (text_number(text), parse_bool(text)) {
            (Some(v), _) => v,
            (None, Some(b)) if binary => f64::from(u8::from(b)),
            _ if binary => return Err("is not a 0/1, true/false or yes/no label"),
            _ => return Err("is not a number"),
        },
    };
    if binary && value != 0.0 && value != 1.0 {
        return Err("is not a 0/1, true/false or yes/no label");
    }
    if !value.is_finite() {
        return Err("is not a finite number");
    }
    Ok(value)
}

/// Types, labels and orders a raw table (see the module docs).
pub fn build(path: &str, raw: RawTable, spec: &TableSpec) -> Result<Dataset, TableError> {
    let position = |name: &str| raw.names.iter().position(|n| n == name);
    let label_at = position(&spec.label).ok_or_else(|| TableError::NoLabel {
        path: path.to_string(),
        label: spec.label.clone(),
        header: raw.names.join(", "),
    })?;
    let id_at = position("event_id");
    let time_at = position("time_ms");
    let feature_at: Vec<usize> = (0..raw.names.len())
        .filter(|i| Some(*i) != id_at && Some(*i) != time_at && *i != label_at)
        .collect();
    if feature_at.is_empty() {
        return Err(TableError::NoFeatures {
            path: path.to_string(),
        });
    }
    let inputs: Vec<Input> = feature_at
        .iter()
        .map(|at| Input {
            name: raw.names[*at].clone(),
            kind: if spec.encode {
                infer(&raw.columns[*at])
            } else {
                InputKind::Number
            },
        })
        .collect();
    let width: usize = inputs.iter().map(Input::width).sum();
    let mut problems = Problems::default();
    let mut rows = Vec::with_capacity(raw.lines.len());
    for (row, line) in raw.lines.iter().enumerate() {
        let label =
            label_value(&raw.columns[label_at][row], spec.binary).unwrap_or_else(|reason| {
                problems.add(*line, &spec.label, &raw.columns[label_at][row], reason);
                f64::NAN
            });
        let time_ms = match time_at {
            None => row as i64,
            Some(at) => match cell_for(&InputKind::Number, &raw.columns[at][row]) {
                Ok(Cell::Number(t)) if t.is_finite() => t as i64,
                Ok(Cell::Missing) => row as i64,
                _ => {
                    problems.add(
                        *line,
                        "time_ms",
                        &raw.columns[at][row],
                        "is not a time in ms",
                    );
                    0
                }
            },
        };
        let mut values = vec![None; width];
        let mut start = 0;
        for (input, at) in inputs.iter().zip(&feature_at) {
            let cell = &raw.columns[*at][row];
            let out = &mut values[start..start + input.width()];
            start += input.width();
            let encoded = cell_for(&input.kind, cell)
                .map_err(str::to_string)
                .and_then(|c| input.encode(c, out));
            if let Err(reason) = encoded {
                problems.add(*line, &input.name, cell, &reason);
            }
        }
        let event_id = id_at
            .and_then(|at| category_text(&raw.columns[at][row]))
            .unwrap_or_else(|| format!("row{line}"));
        rows.push(Row {
            event_id,
            time_ms,
            values,
            label,
        });
    }
    if problems.count > 0 {
        let more = problems.count.saturating_sub(LISTED_CELLS);
        let mut listed = problems.listed;
        if more > 0 {
            listed += &format!("  ... and {more} more\n");
        }
        return Err(TableError::Cells {
            path: path.to_string(),
            count: problems.count,
            listed,
        });
    }
    rows.sort_by_key(|r| r.time_ms);
    Ok(Dataset {
        columns: crate::model::inputs::column_names(&inputs),
        rows,
        inputs: spec.encode.then_some(inputs),
        row_order: time_at.is_none(),
        ..Dataset::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> RawCell {
        if value.is_empty() {
            RawCell::Missing
        } else {
            RawCell::Text(value.into())
        }
    }

    /// A raw table from CSV-like rows of text.
    fn table(names: &[&str], rows: &[&[&str]]) -> RawTable {
        RawTable {
            names: names.iter().map(|n| n.to_string()).collect(),
            columns: (0..names.len())
                .map(|c| rows.iter().map(|r| text(r[c])).collect())
                .collect(),
            lines: (2..rows.len() as u64 + 2).collect(),
        }
    }

    fn binary(label: &str) -> TableSpec {
        TableSpec {
            label: label.into(),
            binary: true,
            encode: true,
        }
    }

    #[test]
    fn columns_are_typed_from_their_cells() {
        let raw = table(
            &["Month", "Weekend", "Price", "Revenue"],
            &[
                &["Feb", "TRUE", "1.5", "FALSE"],
                &["Nov", "false", "", "TRUE"],
                &["Nov", "", "3", "no"],
                &["May", "yes", "4", "1"],
            ],
        );
        let set = build("t", raw, &binary("Revenue")).unwrap();
        assert_eq!(
            set.columns,
            [
                "Month=Nov",
                "Month=Feb",
                "Month=May",
                "Month=<other>",
                "Weekend",
                "Price"
            ]
        );
        let labels: Vec<f64> = set.rows.iter().map(|r| r.label).collect();
        assert_eq!(labels, [0.0, 1.0, 0.0, 1.0]);
        assert_eq!(
            set.rows[0].values,
            [
                Some(0.0),
                Some(1.0),
                Some(0.0),
                Some(0.0),
                Some(1.0),
                Some(1.5)
            ]
        );
        assert_eq!(set.rows[1].values[4..], [Some(0.0), None]);
        assert_eq!(set.rows[2].values[4], None);
        let inputs = set.inputs.unwrap();
        assert_eq!(inputs[1].kind, InputKind::Boolean);
        assert_eq!(inputs[2].kind, InputKind::Number);
    }

    #[test]
    fn every_refused_cell_is_named_at_once() {
        let raw = table(
            &["a", "b", "label"],
            &[
                &["1", "x", "1"],
                &["nope", "y", "maybe"],
                &["3", "z", ""],
                &["4", "x", "0"],
            ],
        );
        let error = build("t.csv", raw, &binary("label"))
            .unwrap_err()
            .to_string();
        // 'a' is mostly numbers, so its text is refused rather than made a category;
        // 'b' is a category; two labels are bad.
        assert!(error.contains("3 cells refused"), "{error}");
        assert!(
            error.contains("line 3, column 'a': 'nope' is not a number"),
            "{error}"
        );
        assert!(error.contains("line 3, column 'label': 'maybe'"), "{error}");
        assert!(
            error.contains("line 4, column 'label': an empty cell is missing"),
            "{error}"
        );
    }

    #[test]
    fn event_targets_take_numbers_only() {
        let raw = table(&["a", "label"], &[&["1", "0"], &["x", "1"]]);
        let error = build("t.csv", raw, &TableSpec::exported(true))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 3, column 'a': 'x' is not a number"),
            "{error}"
        );
        let raw = table(&["a", "b"], &[&["1", "0"]]);
        let error = build("t.csv", raw, &TableSpec::exported(true))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no 'label' column"), "{error}");
        let raw = table(&["a", "label"], &[&["NaN", "1"]]);
        let error = build("t.csv", raw, &TableSpec::exported(true))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("'NaN'") && error.contains("finite"),
            "{error}"
        );
    }

    #[test]
    fn rare_categories_share_the_other_column() {
        let values: Vec<String> = (0..MAX_CATEGORIES + 5)
            .map(|i| format!("v{i:03}"))
            .collect();
        let mut rows: Vec<Vec<&str>> = values.iter().map(|v| vec![v.as_str(), "0"]).collect();
        rows.push(vec!["v000", "1"]);
        let rows: Vec<&[&str]> = rows.iter().map(Vec::as_slice).collect();
        let set = build("t", table(&["c", "label"], &rows), &binary("label")).unwrap();
        assert_eq!(set.columns.len(), MAX_CATEGORIES + 1);
        assert_eq!(
            set.columns[0], "c=v000",
            "the most frequent value comes first"
        );
        // v104 is beyond the vocabulary: it sets the other column.
        let row = set.rows.iter().find(|r| r.event_id == "row106").unwrap();
        assert_eq!(row.values.last(), Some(&Some(1.0)));
    }
}

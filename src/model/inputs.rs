//! Inputs of a model trained from a table: each a request field (a number, a yes/no,
//! or a category) encoded into the model's columns, one-hot for categories with an
//! "other" column for values training never saw. The vocabulary lives in the artifact
//! and training and serving call the same [`Input::encode`], so a served score equals
//! the training pipeline's prediction to the bit.

use serde::{Deserialize, Serialize};

/// The column a category value outside the vocabulary sets.
pub const OTHER: &str = "<other>";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub name: String,
    #[serde(flatten)]
    pub kind: InputKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputKind {
    Number,
    /// true/false, yes/no (any case) or 1/0; a column of 1 and 0.
    Boolean,
    /// One column per value, most frequent first, then the "other" column.
    Category {
        values: Vec<String>,
    },
}

/// One cell of a table row or one field of a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Missing,
    Number(f64),
    Text(&'a str),
}

/// Reads a yes/no word: true/false, yes/no (any case), 1/0.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

impl Input {
    /// How many model columns this input takes.
    pub fn width(&self) -> usize {
        match &self.kind {
            InputKind::Number | InputKind::Boolean => 1,
            InputKind::Category { values } => values.len() + 1,
        }
    }

    /// The names of its model columns: the input's name, or `name=value` per category
    /// value and `name=<other>`.
    pub fn column_names(&self) -> Vec<String> {
        match &self.kind {
            InputKind::Number | InputKind::Boolean => vec![self.name.clone()],
            InputKind::Category { values } => values
                .iter()
                .map(String::as_str)
                .chain([OTHER])
                .map(|v| format!("{}={v}", self.name))
                .collect(),
        }
    }

    /// Writes the encoded `cell` into `out` (its [`Input::width`] columns). A missing
    /// cell leaves every column missing (imputed by the model as in training).
    pub fn encode(&self, cell: Cell, out: &mut [Option<f64>]) -> Result<(), String> {
        out.fill(None);
        match (&self.kind, cell) {
            (_, Cell::Missing) => {}
            (InputKind::Number, Cell::Number(v)) if v.is_finite() => out[0] = Some(v),
            (InputKind::Number, Cell::Number(v)) => {
                return Err(format!("must be a finite number, got {v}"));
            }
            (InputKind::Number, Cell::Text(text)) => {
                return Err(format!("must be a number, got a string ('{}')", clip(text)));
            }
            (InputKind::Boolean, Cell::Number(v)) if v == 0.0 || v == 1.0 => out[0] = Some(v),
            (InputKind::Boolean, Cell::Text(text)) if parse_bool(text).is_some() => {
                out[0] = parse_bool(text).map(|b| f64::from(u8::from(b)));
            }
            (InputKind::Boolean, Cell::Number(v)) => {
                return Err(format!(
                    "must be a yes/no value (true/false, yes/no, 1/0), got {v}"
                ));
            }
            (InputKind::Boolean, Cell::Text(text)) => {
                return Err(format!(
                    "must be a yes/no value (true/false, yes/no, 1/0), got '{}'",
                    clip(text)
                ));
            }
            (InputKind::Category { values }, cell) => {
                let text = match cell {
                    Cell::Text(text) => text.trim().to_string(),
                    // A category given as a number (a code) is matched by its text.
                    Cell::Number(v) => v.to_string(),
                    Cell::Missing => unreachable!("handled above"),
                };
                out.fill(Some(0.0));
                let at = values
                    .iter()
                    .position(|v| *v == text)
                    .unwrap_or(values.len());
                out[at] = Some(1.0);
            }
        }
        Ok(())
    }
}

/// At most 40 characters of a value, for error messages.
fn clip(text: &str) -> String {
    let mut clipped: String = text.chars().take(40).collect();
    if clipped.len() < text.len() {
        clipped.push_str("...");
    }
    clipped
}

/// The model columns of `inputs`, in order.
pub fn column_names(inputs: &[Input]) -> Vec<String> {
    inputs.iter().flat_map(Input::column_names).collect()
}

/// Encodes one row given each input's cell (by input index) into `out`, which is
/// resized to the total width. The first refused cell is returned with its input name.
pub fn encode_row<'a>(
    inputs: &[Input],
    mut cell: impl FnMut(usize, &Input) -> Cell<'a>,
    out: &mut Vec<Option<f64>>,
) -> Result<(), (String, String)> {
    out.clear();
    out.resize(inputs.iter().map(Input::width).sum(), None);
    let mut at = 0;
    for (index, input) in inputs.iter().enumerate() {
        let width = input.width();
        input
            .encode(cell(index, input), &mut out[at..at + width])
            .map_err(|reason| (input.name.clone(), reason))?;
        at += width;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn category() -> Input {
        Input {
            name: "Month".into(),
            kind: InputKind::Category {
                values: vec!["May".into(), "Nov".into()],
            },
        }
    }

    #[test]
    fn categories_are_one_hot_with_an_other_column() {
        let month = category();
        assert_eq!(
            month.column_names(),
            ["Month=May", "Month=Nov", "Month=<other>"]
        );
        let mut out = vec![None; 3];
        month.encode(Cell::Text("Nov"), &mut out).unwrap();
        assert_eq!(out, [Some(0.0), Some(1.0), Some(0.0)]);
        month.encode(Cell::Text("Feb"), &mut out).unwrap();
        assert_eq!(out, [Some(0.0), Some(0.0), Some(1.0)]);
        month.encode(Cell::Missing, &mut out).unwrap();
        assert_eq!(out, [None, None, None]);
    }

    #[test]
    fn booleans_and_numbers_are_checked() {
        let flag = Input {
            name: "Weekend".into(),
            kind: InputKind::Boolean,
        };
        let mut out = vec![None];
        for (cell, value) in [
            (Cell::Text("TRUE"), 1.0),
            (Cell::Text("no"), 0.0),
            (Cell::Number(1.0), 1.0),
        ] {
            flag.encode(cell, &mut out).unwrap();
            assert_eq!(out, [Some(value)]);
        }
        assert!(
            flag.encode(Cell::Text("maybe"), &mut out)
                .unwrap_err()
                .contains("maybe")
        );
        assert!(flag.encode(Cell::Number(2.0), &mut out).is_err());
        let number = Input {
            name: "Price".into(),
            kind: InputKind::Number,
        };
        assert!(number.encode(Cell::Number(f64::NAN), &mut out).is_err());
        assert!(number.encode(Cell::Text("12"), &mut out).is_err());
        let mut row = Vec::new();
        let inputs = [number, category()];
        encode_row(
            &inputs,
            |i, _| {
                if i == 0 {
                    Cell::Number(2.5)
                } else {
                    Cell::Text("May")
                }
            },
            &mut row,
        )
        .unwrap();
        assert_eq!(row, [Some(2.5), Some(1.0), Some(0.0), Some(0.0)]);
        assert_eq!(column_names(&inputs).len(), row.len());
    }
}

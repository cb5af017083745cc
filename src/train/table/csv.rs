//! A feature table as CSV: a header, one column per feature, `label`, and optionally
//! `event_id` and `time_ms`. An empty cell is a missing value.

use std::path::Path;

use super::{LABEL, TableError};
use crate::train::dataset::{Dataset, Row};

pub fn read(path: &Path) -> Result<Dataset, TableError> {
    let shown = path.display().to_string();
    let read_error = |reason: String| TableError::Read {
        path: shown.clone(),
        reason,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| read_error(e.to_string()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| read_error(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let position = |name: &str| header.iter().position(|h| h == name);
    let label_at = position(LABEL).ok_or_else(|| TableError::NoLabel {
        path: shown.clone(),
        header: header.join(", "),
    })?;
    let id_at = position("event_id");
    let time_at = position("time_ms");
    let feature_at: Vec<usize> = (0..header.len())
        .filter(|i| Some(*i) != id_at && Some(*i) != time_at && *i != label_at)
        .collect();
    if feature_at.is_empty() {
        return Err(TableError::NoFeatures { path: shown });
    }
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| read_error(e.to_string()))?;
        // Line 1 is the header.
        let line = record
            .position()
            .map(|p| p.line())
            .unwrap_or(index as u64 + 2);
        let number = |at: usize| -> Result<Option<f64>, TableError> {
            let cell = record.get(at).unwrap_or("").trim();
            if cell.is_empty() {
                return Ok(None);
            }
            cell.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or_else(|| TableError::NotANumber {
                    path: shown.clone(),
                    line,
                    column: header[at].clone(),
                    value: cell.to_string(),
                })
        };
        let label = number(label_at)?.ok_or_else(|| TableError::MissingLabel {
            path: shown.clone(),
            line,
        })?;
        let time_ms = match time_at {
            Some(at) => number(at)?.unwrap_or(0.0) as i64,
            None => index as i64,
        };
        let values = feature_at
            .iter()
            .map(|at| number(*at))
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(Row {
            event_id: id_at
                .and_then(|at| record.get(at))
                .map(str::to_string)
                .unwrap_or_else(|| format!("row{line}")),
            time_ms,
            values,
            label,
        });
    }
    rows.sort_by_key(|r| r.time_ms);
    Ok(Dataset {
        columns: feature_at.iter().map(|at| header[*at].clone()).collect(),
        rows,
        unlabelled: 0,
        skipped_events: 0,
        refusals: Default::default(),
        unreadable_observations: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn table(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    #[test]
    fn reads_features_missing_cells_and_time_order() {
        let (_dir, path) = table("event_id,time_ms,a,b,label\ne2,20,1.5,,1\ne1,10,2,3,0\n");
        let dataset = read(&path).unwrap();
        assert_eq!(dataset.columns, ["a", "b"]);
        assert_eq!(dataset.rows[0].event_id, "e1");
        assert_eq!(dataset.rows[0].values, [Some(2.0), Some(3.0)]);
        assert_eq!(dataset.rows[1].values, [Some(1.5), None]);
        assert_eq!(dataset.rows[1].label, 1.0);
    }

    #[test]
    fn a_round_trip_through_export_gives_the_same_rows() {
        let original = Dataset {
            columns: vec!["x".into(), "y".into()],
            rows: vec![
                Row {
                    event_id: "p1".into(),
                    time_ms: 5,
                    values: vec![Some(0.1 + 0.2), None],
                    label: 0.0,
                },
                Row {
                    event_id: "p2".into(),
                    time_ms: 9,
                    values: vec![Some(-3.0), Some(1e-300)],
                    label: 1.0,
                },
            ],
            unlabelled: 0,
            skipped_events: 0,
            refusals: Default::default(),
            unreadable_observations: 0,
        };
        let mut bytes = Vec::new();
        original.write_csv(&mut bytes).unwrap();
        let (_dir, path) = table(std::str::from_utf8(&bytes).unwrap());
        assert_eq!(read(&path).unwrap(), original);
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let (_dir, path) = table("a,label\n1,0\nx,1\n");
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("line 3") && error.contains("'a'"), "{error}");
        let (_dir, path) = table("a,b\n1,0\n");
        assert!(read(&path).unwrap_err().to_string().contains("no 'label'"));
        let (_dir, path) = table("a,label\n1,\n");
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .contains("label is missing")
        );
        let (_dir, path) = table("a,label\nNaN,1\n");
        assert!(read(&path).unwrap_err().to_string().contains("'NaN'"));
    }
}

//! A feature table as CSV: a header, then one row per line; an empty cell is a missing
//! value. Cells stay text here; `table::build` types them.

use std::path::Path;

use super::{RawCell, RawTable, TableError};

pub fn read_raw(path: &Path) -> Result<RawTable, TableError> {
    let read_error = |reason: String| TableError::Read {
        path: path.display().to_string(),
        reason,
    };
    let mut reader = ::csv::Reader::from_path(path).map_err(|e| read_error(e.to_string()))?;
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| read_error(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut table = RawTable {
        columns: vec![Vec::new(); names.len()],
        names,
        lines: Vec::new(),
    };
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| read_error(e.to_string()))?;
        // Line 1 is the header.
        let line = record
            .position()
            .map(|p| p.line())
            .unwrap_or(index as u64 + 2);
        table.lines.push(line);
        for (at, column) in table.columns.iter_mut().enumerate() {
            let cell = record.get(at).unwrap_or("").trim();
            column.push(if cell.is_empty() {
                RawCell::Missing
            } else {
                RawCell::Text(cell.into())
            });
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::super::{TableSpec, read};
    use crate::train::dataset::{Dataset, Row};
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
        let dataset = read(&path, &TableSpec::exported(true)).unwrap();
        assert_eq!(dataset.columns, ["a", "b"]);
        assert_eq!(dataset.rows[0].event_id, "e1");
        assert_eq!(dataset.rows[0].values, [Some(2.0), Some(3.0)]);
        assert_eq!(dataset.rows[1].values, [Some(1.5), None]);
        assert_eq!(dataset.rows[1].label, 1.0);
        assert_eq!(
            dataset.inputs, None,
            "an exported set reads stored features"
        );
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
            ..Dataset::default()
        };
        let mut bytes = Vec::new();
        original.write_csv(&mut bytes).unwrap();
        let (_dir, path) = table(std::str::from_utf8(&bytes).unwrap());
        assert_eq!(read(&path, &TableSpec::exported(true)).unwrap(), original);
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let spec = TableSpec::exported(true);
        let (_dir, path) = table("a,label\n1,0\nx,1\n");
        let error = read(&path, &spec).unwrap_err().to_string();
        assert!(error.contains("line 3") && error.contains("'a'"), "{error}");
        let (_dir, path) = table("a,b\n1,0\n");
        assert!(
            read(&path, &spec)
                .unwrap_err()
                .to_string()
                .contains("no 'label'")
        );
        let (_dir, path) = table("a,label\n1,\n");
        assert!(
            read(&path, &spec)
                .unwrap_err()
                .to_string()
                .contains("is missing")
        );
        let (_dir, path) = table("a,label\nNaN,1\n");
        assert!(
            read(&path, &spec)
                .unwrap_err()
                .to_string()
                .contains("'NaN'")
        );
    }
}

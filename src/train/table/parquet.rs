//! Training sets as Parquet, the columnar format feature tables usually live in: the
//! same columns as the CSV form (`event_id`, `time_ms`, one float column per feature
//! with nulls for missing values, `label`). Reading accepts any integer, float or
//! boolean feature column and optional `event_id` / `time_ms`, like `table::read_csv`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::TableError;
use crate::train::dataset::{Dataset, Row};

/// Rows per record batch written.
const BATCH_ROWS: usize = 65_536;

fn read_error(path: &Path, error: impl std::fmt::Display) -> TableError {
    TableError::Read {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// A numeric column's value at `row` as f64; `None` for null.
fn number(column: &ArrayRef, row: usize) -> Option<f64> {
    if column.is_null(row) {
        return None;
    }
    match column.data_type() {
        DataType::Float64 => Some(column.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => Some(f64::from(column.as_primitive::<Float32Type>().value(row))),
        DataType::Int64 => Some(column.as_primitive::<Int64Type>().value(row) as f64),
        DataType::Int32 => Some(f64::from(column.as_primitive::<Int32Type>().value(row))),
        DataType::Boolean => Some(f64::from(u8::from(column.as_boolean().value(row)))),
        _ => None,
    }
}

fn numeric(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Float64
            | DataType::Float32
            | DataType::Int64
            | DataType::Int32
            | DataType::Boolean
    )
}

pub fn read(path: &Path) -> Result<Dataset, TableError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| read_error(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| read_error(path, e))?;
    let schema = Arc::clone(builder.schema());
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let position = |name: &str| names.iter().position(|n| *n == name);
    let label_at = position("label").ok_or_else(|| TableError::NoLabel {
        path: shown.clone(),
        header: names.join(", "),
    })?;
    let id_at = position("event_id");
    let time_at = position("time_ms");
    let feature_at: Vec<usize> = (0..names.len())
        .filter(|i| Some(*i) != id_at && Some(*i) != time_at && *i != label_at)
        .collect();
    if feature_at.is_empty() {
        return Err(TableError::NoFeatures { path: shown });
    }
    for at in feature_at.iter().chain([&label_at]).chain(time_at.as_ref()) {
        let field = schema.field(*at);
        if !numeric(field.data_type()) {
            return Err(read_error(
                path,
                format!(
                    "column '{}' is {}, not a number",
                    field.name(),
                    field.data_type()
                ),
            ));
        }
    }
    let reader = builder.build().map_err(|e| read_error(path, e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| read_error(path, e))?;
        let ids = id_at.map(|at| batch.column(at));
        for row in 0..batch.num_rows() {
            let index = rows.len();
            let label = number(batch.column(label_at), row)
                .filter(|v| v.is_finite())
                .ok_or(TableError::MissingLabel {
                    path: shown.clone(),
                    line: index as u64 + 1,
                })?;
            let values = feature_at
                .iter()
                .map(|at| number(batch.column(*at), row).filter(|v| v.is_finite()))
                .collect();
            let event_id = ids
                .and_then(|column| column.as_string_opt::<i32>())
                .filter(|strings| !strings.is_null(row))
                .map(|strings| strings.value(row).to_string())
                .unwrap_or_else(|| format!("row{}", index + 1));
            let time_ms = time_at
                .and_then(|at| number(batch.column(at), row))
                .map_or(index as i64, |t| t as i64);
            rows.push(Row {
                event_id,
                time_ms,
                values,
                label,
            });
        }
    }
    rows.sort_by_key(|r| r.time_ms);
    Ok(Dataset {
        columns: feature_at.iter().map(|at| names[*at].to_string()).collect(),
        rows,
        unlabelled: 0,
        skipped_events: 0,
        refusals: Default::default(),
        unreadable_observations: 0,
    })
}

pub fn write(dataset: &Dataset, path: &Path) -> std::io::Result<()> {
    let mut fields = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("time_ms", DataType::Int64, false),
    ];
    fields.extend(
        dataset
            .columns
            .iter()
            .map(|name| Field::new(name, DataType::Float64, true)),
    );
    fields.push(Field::new("label", DataType::Float64, false));
    let schema = Arc::new(Schema::new(fields));
    let file = File::create(path)?;
    let mut writer =
        ArrowWriter::try_new(file, Arc::clone(&schema), None).map_err(std::io::Error::other)?;
    for chunk in dataset.rows.chunks(BATCH_ROWS) {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|r| r.event_id.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                chunk.iter().map(|r| r.time_ms),
            )),
        ];
        for column in 0..dataset.columns.len() {
            columns.push(Arc::new(Float64Array::from_iter(
                chunk.iter().map(|r| r.values[column]),
            )));
        }
        columns.push(Arc::new(Float64Array::from_iter_values(
            chunk.iter().map(|r| r.label),
        )));
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), columns).map_err(std::io::Error::other)?;
        writer.write(&batch).map_err(std::io::Error::other)?;
    }
    writer.close().map_err(std::io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int32Array;

    #[test]
    fn a_round_trip_keeps_rows_missing_values_and_order() {
        let original = Dataset {
            columns: vec!["x".into(), "y".into()],
            rows: (0..100_000)
                .map(|i| Row {
                    event_id: format!("e{i}"),
                    time_ms: i,
                    values: vec![Some(i as f64 * 0.1), (i % 3 != 0).then_some(-1.5)],
                    label: f64::from(u8::from(i % 7 == 0)),
                })
                .collect(),
            unlabelled: 0,
            skipped_events: 0,
            refusals: Default::default(),
            unreadable_observations: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.parquet");
        write(&original, &path).unwrap();
        assert_eq!(read(&path).unwrap(), original);
    }

    #[test]
    fn files_without_a_label_or_with_text_features_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let write_columns = |name: &str, columns: Vec<(&str, ArrayRef)>| {
            let schema = Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                    .collect::<Vec<_>>(),
            ));
            let path = dir.path().join(name);
            let mut writer =
                ArrowWriter::try_new(File::create(&path).unwrap(), Arc::clone(&schema), None)
                    .unwrap();
            let batch = RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect())
                .unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
            path
        };
        let no_label = write_columns(
            "no_label.parquet",
            vec![("x", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef)],
        );
        let error = read(&no_label).unwrap_err().to_string();
        assert!(error.contains("no 'label'"), "{error}");
        let text = write_columns(
            "text.parquet",
            vec![
                ("x", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
                ("label", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
            ],
        );
        let error = read(&text).unwrap_err().to_string();
        assert!(
            error.contains("'x'") && error.contains("not a number"),
            "{error}"
        );
        let ints = write_columns(
            "ints.parquet",
            vec![
                (
                    "x",
                    Arc::new(Int64Array::from(vec![Some(4), None])) as ArrayRef,
                ),
                ("label", Arc::new(Int32Array::from(vec![1, 0])) as ArrayRef),
            ],
        );
        let dataset = read(&ints).unwrap();
        assert_eq!(dataset.rows[0].values, [Some(4.0)]);
        assert_eq!(dataset.rows[1].values, [None]);
        assert_eq!(dataset.rows[1].label, 0.0);
    }
}

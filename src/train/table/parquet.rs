//! Training sets as Parquet, the columnar format feature tables usually live in: the
//! same columns as the CSV form (`event_id`, `time_ms`, one float column per feature
//! with nulls for missing values, `label`). Reading accepts any integer, float or
//! boolean feature column and optional `event_id` / `time_ms`, like `table::read_csv`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_cast::cast::cast;
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{RawCell, RawTable, TableError};
use crate::train::dataset::Dataset;
#[cfg(test)]
use crate::train::dataset::Row;

/// Rows per record batch written.
const BATCH_ROWS: usize = 65_536;

fn read_error(path: &Path, error: impl std::fmt::Display) -> TableError {
    TableError::Read {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// How a column's values become cells.
enum Reading {
    Bool,
    Number,
    Text,
}

fn reading(data_type: &DataType) -> Option<Reading> {
    match data_type {
        DataType::Boolean => Some(Reading::Bool),
        t if t.is_numeric() => Some(Reading::Number),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(Reading::Text),
        DataType::Dictionary(_, values) if reading(values).is_some() => Some(Reading::Text),
        _ => None,
    }
}

/// Reads every column into cells: booleans, numbers of any integer, unsigned or float
/// width, and strings (plain, large, view or dictionary-encoded, as pandas writes
/// categoricals). Rows are numbered from 1 for messages.
pub fn read_raw(path: &Path) -> Result<RawTable, TableError> {
    let file = File::open(path).map_err(|e| read_error(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| read_error(path, e))?;
    let schema = Arc::clone(builder.schema());
    let mut readings = Vec::new();
    for field in schema.fields() {
        readings.push(reading(field.data_type()).ok_or_else(|| {
            read_error(
                path,
                format!(
                    "column '{}' is {}: give numbers, booleans or strings",
                    field.name(),
                    field.data_type()
                ),
            )
        })?);
    }
    let mut table = RawTable {
        names: schema.fields().iter().map(|f| f.name().clone()).collect(),
        columns: vec![Vec::new(); schema.fields().len()],
        lines: Vec::new(),
    };
    let reader = builder.build().map_err(|e| read_error(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| read_error(path, e))?;
        let first = table.lines.len() as u64 + 1;
        table.lines.extend(first..first + batch.num_rows() as u64);
        for ((column, reading), cells) in batch
            .columns()
            .iter()
            .zip(&readings)
            .zip(table.columns.iter_mut())
        {
            match reading {
                Reading::Bool => {
                    let values = column.as_boolean();
                    cells.extend((0..values.len()).map(|row| {
                        if values.is_null(row) {
                            RawCell::Missing
                        } else {
                            RawCell::Bool(values.value(row))
                        }
                    }));
                }
                Reading::Number => {
                    let cast = cast(column, &DataType::Float64).map_err(|e| read_error(path, e))?;
                    let values = cast.as_primitive::<Float64Type>();
                    cells.extend((0..values.len()).map(|row| {
                        if values.is_null(row) {
                            RawCell::Missing
                        } else {
                            RawCell::Number(values.value(row))
                        }
                    }));
                }
                Reading::Text => {
                    let cast = cast(column, &DataType::Utf8).map_err(|e| read_error(path, e))?;
                    let values = cast.as_string::<i32>();
                    cells.extend((0..values.len()).map(|row| {
                        let text = values.value(row).trim();
                        if values.is_null(row) || text.is_empty() {
                            RawCell::Missing
                        } else {
                            RawCell::Text(text.into())
                        }
                    }));
                }
            }
        }
    }
    Ok(table)
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
    use super::super::{TableSpec, read as read_table};
    use super::*;
    use arrow_array::Int32Array;

    fn read(path: &Path) -> Result<Dataset, TableError> {
        read_table(path, &TableSpec::exported(true))
    }

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
            ..Dataset::default()
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

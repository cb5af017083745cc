//! Events from the files a shop already has: JSON lines (what `export` and `simulate
//! --out` write), CSV with a header row, and Parquet. A CSV or Parquet row becomes an
//! event by its column names, renamed first by a mapping (`--map ts=event_time_ms`):
//! `event_id`, `event_type`, `event_time_ms`, the definitions' entity types (ids), and
//! the other columns as the event type's number and string fields. Rows are streamed,
//! one record batch (Parquet) or one line at a time, so a file of any size reads in
//! bounded memory. A row without an event id gets one derived from its content, so
//! sending a file again is idempotent.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, RecordBatch};
use arrow_cast::cast::cast;
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::RawEvent;
use crate::definitions::Definitions;

/// How a file's rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// One JSON event per line (`{"event_id": ..., "entities": {...}, ...}`).
    Jsonl,
    /// A header row of column names, then one event per row.
    Csv,
    Parquet,
}

impl FileFormat {
    /// The format a path's extension names; JSON lines otherwise.
    pub fn of(path: &Path) -> FileFormat {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => FileFormat::Csv,
            Some("parquet") => FileFormat::Parquet,
            _ => FileFormat::Jsonl,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: Parquet cannot be read from stdin; give the file")]
    ParquetFromStdin { path: String },
    #[error("--map {0}: give FROM=TO, e.g. --map ts=event_time_ms")]
    Mapping(String),
}

/// Column renames: a file's column name to the event's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapping(BTreeMap<String, String>);

impl Mapping {
    /// From `FROM=TO` pairs.
    pub fn parse(pairs: &[String]) -> Result<Mapping, FileError> {
        let mut mapping = BTreeMap::new();
        for pair in pairs {
            match pair.split_once('=') {
                Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
                    mapping.insert(from.trim().to_string(), to.trim().to_string());
                }
                _ => return Err(FileError::Mapping(pair.clone())),
            }
        }
        Ok(Mapping(mapping))
    }

    fn name<'a>(&'a self, column: &'a str) -> &'a str {
        self.0.get(column).map_or(column, String::as_str)
    }
}

/// One row of a file: its number (from 1: the line of a JSON-lines file, the data row
/// of a CSV or Parquet file) and the event, or why it is not one.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub number: u64,
    pub event: Result<RawEvent, RowRefusal>,
}

/// Why a row is not an event: the column (or field) and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRefusal {
    pub field: String,
    pub reason: String,
}

fn refusal(field: impl Into<String>, reason: impl Into<String>) -> RowRefusal {
    RowRefusal {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A cell as read.
enum Cell {
    Missing,
    Number(f64),
    Text(String),
}

/// The rows of `path` (`None`: stdin) in `format`.
pub fn rows(
    path: Option<&Path>,
    format: FileFormat,
    mapping: &Mapping,
    definitions: &Definitions,
) -> Result<Box<dyn Iterator<Item = Row> + Send>, FileError> {
    let shown = path.map_or("stdin".to_string(), |p| p.display().to_string());
    let read_error = |reason: String| FileError::Read {
        path: shown.clone(),
        reason,
    };
    let text = || -> Result<BufReader<Box<dyn Read + Send>>, FileError> {
        let input: Box<dyn Read + Send> = match path {
            Some(path) => {
                Box::new(std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?)
            }
            None => Box::new(std::io::stdin()),
        };
        Ok(BufReader::with_capacity(1 << 20, input))
    };
    match format {
        FileFormat::Jsonl => Ok(Box::new(json_rows(text()?))),
        FileFormat::Csv => {
            let mut csv = csv::ReaderBuilder::new().from_reader(text()?);
            let header: Vec<String> = csv
                .headers()
                .map_err(|e| read_error(format!("the header row: {e}")))?
                .iter()
                .map(|name| mapping.name(name.trim()).to_string())
                .collect();
            let definitions = definitions.clone();
            Ok(Box::new(csv.into_records().enumerate().map(
                move |(index, record)| {
                    let event = match record {
                        Ok(record) => {
                            let cells = record.iter().map(|text| match text.trim() {
                                "" => Cell::Missing,
                                text => Cell::Text(text.to_string()),
                            });
                            event_of(&definitions, header.iter().map(String::as_str).zip(cells))
                        }
                        Err(e) => Err(refusal("row", e.to_string())),
                    };
                    Row {
                        number: index as u64 + 1,
                        event,
                    }
                },
            )))
        }
        FileFormat::Parquet => {
            let Some(path) = path else {
                return Err(FileError::ParquetFromStdin { path: shown });
            };
            let file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|builder| builder.build())
                .map_err(|e| read_error(e.to_string()))?;
            Ok(Box::new(ParquetRows::new(
                reader,
                mapping.clone(),
                definitions.clone(),
            )))
        }
    }
}

/// JSON lines: each a [`RawEvent`]; blank lines skipped.
fn json_rows(reader: impl BufRead + Send) -> impl Iterator<Item = Row> + Send {
    reader.lines().enumerate().filter_map(|(index, line)| {
        let event = match line {
            Ok(line) if line.trim().is_empty() => return None,
            Ok(line) => serde_json::from_str::<RawEvent>(&line)
                .map_err(|e| refusal("line", format!("not an event: {e}")))
                .map(with_id),
            Err(e) => Err(refusal("line", format!("cannot be read: {e}"))),
        };
        Some(Row {
            number: index as u64 + 1,
            event,
        })
    })
}

/// A JSON event with its id derived from its content when it has none.
fn with_id(mut event: RawEvent) -> RawEvent {
    if event.event_id.is_empty() {
        event.event_id = derived_id(&event);
    }
    event
}

/// An id for an event that came without one: a hash of its content, so the same row
/// sent twice is the same event (and the second is a duplicate).
pub fn derived_id(event: &RawEvent) -> String {
    // serde_json writes the maps in key order: one text per content.
    let text = serde_json::to_string(&RawEvent {
        event_id: String::new(),
        ..event.clone()
    })
    .unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("row-{hex}")
}

/// An event from (column, cell) pairs of one row.
fn event_of<'a>(
    definitions: &Definitions,
    cells: impl Iterator<Item = (&'a str, Cell)>,
) -> Result<RawEvent, RowRefusal> {
    let cells: Vec<(&str, Cell)> = cells.collect();
    let mut event = RawEvent::default();
    let event_type = cells.iter().find_map(|(name, cell)| match (name, cell) {
        (&"event_type", Cell::Text(text)) => Some(text.clone()),
        _ => None,
    });
    let type_def = event_type
        .as_deref()
        .and_then(|name| definitions.event_types.iter().find(|t| t.name == name));
    let is_entity = |name: &str| {
        definitions
            .entities
            .iter()
            .any(|e| e.parts.is_empty() && e.name == name)
    };
    for (name, cell) in cells {
        let text = match cell {
            Cell::Missing => continue,
            Cell::Number(value) => NumberOrText::Number(value),
            Cell::Text(text) => NumberOrText::Text(text),
        };
        match name {
            "event_id" => event.event_id = text.into_text(),
            "event_type" => event.event_type = text.into_text(),
            "event_time_ms" => {
                event.event_time_ms = text
                    .as_number()
                    .filter(|ms| ms.fract() == 0.0 && ms.abs() < 9e15)
                    .map(|ms| ms as i64)
                    .ok_or_else(|| refusal(name, "must be whole milliseconds since 1970"))?;
            }
            name if is_entity(name) => {
                event.entities.insert(name.to_string(), text.into_text());
            }
            name => {
                let declared_number =
                    type_def.is_some_and(|t| t.numbers.iter().any(|f| f.name == name));
                let declared_text =
                    type_def.is_some_and(|t| t.strings.iter().any(|f| f.name == name));
                match (declared_number, declared_text, text.as_number()) {
                    (true, _, Some(value)) => {
                        event.numbers.insert(name.to_string(), value);
                    }
                    (true, _, None) => {
                        return Err(refusal(
                            name,
                            format!("'{}' is not a number", text.into_text()),
                        ));
                    }
                    // A column the event type does not declare goes as what it looks
                    // like; the server says whether it wants it.
                    (false, false, Some(value)) => {
                        event.numbers.insert(name.to_string(), value);
                    }
                    _ => {
                        event.strings.insert(name.to_string(), text.into_text());
                    }
                }
            }
        }
    }
    Ok(with_id(event))
}

enum NumberOrText {
    Number(f64),
    Text(String),
}

impl NumberOrText {
    fn as_number(&self) -> Option<f64> {
        match self {
            NumberOrText::Number(value) => Some(*value),
            NumberOrText::Text(text) => text.parse::<f64>().ok().filter(|v| v.is_finite()),
        }
    }

    fn into_text(self) -> String {
        match self {
            NumberOrText::Number(value) if value.fract() == 0.0 && value.abs() < 9e15 => {
                format!("{}", value as i64)
            }
            NumberOrText::Number(value) => value.to_string(),
            NumberOrText::Text(text) => text,
        }
    }
}

/// Rows of a Parquet file, one record batch read at a time.
struct ParquetRows {
    reader: ParquetRecordBatchReader,
    mapping: Mapping,
    definitions: Definitions,
    /// The current batch's rows, in order.
    pending: std::collections::VecDeque<Row>,
    read: u64,
    failed: bool,
}

impl ParquetRows {
    fn new(
        reader: ParquetRecordBatchReader,
        mapping: Mapping,
        definitions: Definitions,
    ) -> ParquetRows {
        ParquetRows {
            reader,
            mapping,
            definitions,
            pending: Default::default(),
            read: 0,
            failed: false,
        }
    }

    fn take_batch(&mut self, batch: &RecordBatch) {
        let schema = batch.schema();
        let names: Vec<&str> = schema
            .fields()
            .iter()
            .map(|field| self.mapping.name(field.name()))
            .collect();
        let mut columns = Vec::with_capacity(batch.num_columns());
        let mut unreadable = None;
        for (name, column) in names.iter().zip(batch.columns()) {
            match column_cells(column) {
                Ok(cells) => columns.push(cells.into_iter()),
                Err(reason) => {
                    unreadable = Some(refusal(*name, reason));
                    break;
                }
            }
        }
        for _ in 0..batch.num_rows() {
            self.read += 1;
            let event = match &unreadable {
                // Every row of the batch carries its column's problem.
                Some(refused) => Err(refused.clone()),
                None => {
                    let cells = columns
                        .iter_mut()
                        .map(|cells| cells.next().unwrap_or(Cell::Missing));
                    event_of(&self.definitions, names.iter().copied().zip(cells))
                }
            };
            self.pending.push_back(Row {
                number: self.read,
                event,
            });
        }
    }
}

impl Iterator for ParquetRows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                return Some(row);
            }
            if self.failed {
                return None;
            }
            match self.reader.next()? {
                Ok(batch) => self.take_batch(&batch),
                Err(error) => {
                    self.failed = true;
                    self.read += 1;
                    return Some(Row {
                        number: self.read,
                        event: Err(refusal("file", format!("cannot be read on: {error}"))),
                    });
                }
            }
        }
    }
}

/// A Parquet column's cells: numbers (any integer or float width), text (plain, large,
/// view or dictionary strings) and booleans as text.
fn column_cells(column: &arrow_array::ArrayRef) -> Result<Vec<Cell>, String> {
    let data_type = column.data_type();
    let text = matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
    ) || matches!(data_type, DataType::Dictionary(_, _));
    // Timestamps (a warehouse's usual event time) as whole milliseconds since 1970,
    // UTC whatever the column's time zone (its values are UTC).
    if let DataType::Timestamp(unit, _) = data_type {
        let raw = cast(column, &DataType::Int64).map_err(|e| e.to_string())?;
        let values = raw.as_primitive::<arrow_array::types::Int64Type>();
        let to_ms = |v: i64| match unit {
            TimeUnit::Second => v.saturating_mul(1_000),
            TimeUnit::Millisecond => v,
            TimeUnit::Microsecond => v.div_euclid(1_000),
            TimeUnit::Nanosecond => v.div_euclid(1_000_000),
        };
        return Ok((0..values.len())
            .map(|row| match values.is_null(row) {
                true => Cell::Missing,
                false => Cell::Number(to_ms(values.value(row)) as f64),
            })
            .collect());
    }
    if data_type.is_numeric() {
        let cast = cast(column, &DataType::Float64).map_err(|e| e.to_string())?;
        let values = cast.as_primitive::<Float64Type>();
        return Ok((0..values.len())
            .map(|row| match values.is_null(row) {
                true => Cell::Missing,
                false => Cell::Number(values.value(row)),
            })
            .collect());
    }
    if text {
        let cast = cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
        let values = cast.as_string::<i32>();
        return Ok((0..values.len())
            .map(|row| {
                let text = values.value(row).trim();
                match values.is_null(row) || text.is_empty() {
                    true => Cell::Missing,
                    false => Cell::Text(text.to_string()),
                }
            })
            .collect());
    }
    Err(format!(
        "a column of {data_type}: give numbers, timestamps, strings or booleans"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_rows(text: &str, map: &[&str]) -> Vec<Row> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("events.csv");
        std::fs::write(&path, text).expect("csv");
        let mapping = Mapping::parse(&map.iter().map(|m| m.to_string()).collect::<Vec<_>>())
            .expect("mapping");
        rows(
            Some(&path),
            FileFormat::Csv,
            &mapping,
            &Definitions::default_shop(),
        )
        .expect("rows")
        .collect()
    }

    #[test]
    fn a_csv_row_becomes_an_event_by_its_column_names() {
        let rows = csv_rows(
            "id,event_type,ts,user,card,amount,ip_country,channel,score\n\
             p1,payment,1700000000000,u1,c1,12.5,DE,web,7\n",
            &["id=event_id", "ts=event_time_ms"],
        );
        let event = rows[0].event.clone().expect("an event");
        assert_eq!(rows[0].number, 1);
        assert_eq!(event.event_id, "p1");
        assert_eq!(event.event_time_ms, 1_700_000_000_000);
        assert_eq!(event.entities["user"], "u1");
        assert_eq!(event.entities["card"], "c1");
        assert_eq!(event.numbers["amount"], 12.5);
        assert_eq!(event.strings["ip_country"], "DE");
        // Columns the event type does not declare go as what they look like.
        assert_eq!(event.strings["channel"], "web");
        assert_eq!(event.numbers["score"], 7.0);
    }

    #[test]
    fn a_declared_number_that_is_not_one_or_a_bad_time_refuses_the_row_only() {
        let rows = csv_rows(
            "event_type,event_time_ms,user,amount\n\
             payment,1700000000000,u1,ten\n\
             payment,17e11x,u1,10\n\
             payment,1700000000001,u1,10\n",
            &[],
        );
        let refused = |row: &Row| row.event.clone().expect_err("refused");
        assert_eq!(refused(&rows[0]).field, "amount");
        assert!(refused(&rows[0]).reason.contains("'ten' is not a number"));
        assert_eq!(refused(&rows[1]).field, "event_time_ms");
        assert!(rows[2].event.is_ok());
    }

    #[test]
    fn a_derived_id_is_the_same_for_the_same_content_and_differs_otherwise() {
        let rows = csv_rows(
            "event_type,event_time_ms,user,amount\n\
             payment,1700000000000,u1,10\n\
             payment,1700000000000,u1,10\n\
             payment,1700000000000,u1,11\n",
            &[],
        );
        let ids: Vec<String> = rows
            .iter()
            .map(|row| row.event.clone().expect("an event").event_id)
            .collect();
        assert!(
            ids[0].starts_with("row-") && ids[0].len() == 4 + 32,
            "{}",
            ids[0]
        );
        assert_eq!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
    }

    #[test]
    fn a_mapping_needs_both_sides() {
        for bad in ["ts", "=user", "ts=", ""] {
            assert!(Mapping::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}

//! Event history as JSON lines (what `simulate --out` and `export` write), streamed
//! from disk: training reads it twice (labels, then the replay) without holding it, so
//! memory stays bounded by the engine's state and the training rows, not the history.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::events::RawEvent;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Line {
        path: String,
        line: u64,
        reason: String,
    },
}

/// What a first pass over the file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub events: u64,
    /// Events stamped earlier than one before them: replay needs time order.
    pub out_of_order: u64,
}

/// A history file read line by line; the first problem met while streaming is kept
/// (an iterator cannot return it) and must be checked with [`HistoryFile::problem`].
pub struct HistoryFile {
    path: PathBuf,
    problem: RefCell<Option<HistoryError>>,
}

impl HistoryFile {
    pub fn new(path: &Path) -> HistoryFile {
        HistoryFile {
            path: path.to_path_buf(),
            problem: RefCell::new(None),
        }
    }

    fn lines(&self) -> Result<impl Iterator<Item = (u64, std::io::Result<String>)>, HistoryError> {
        let file = std::fs::File::open(&self.path).map_err(|source| HistoryError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        Ok(BufReader::with_capacity(1 << 20, file)
            .lines()
            .enumerate()
            .map(|(index, line)| (index as u64 + 1, line)))
    }

    fn parse(
        &self,
        line: u64,
        text: std::io::Result<String>,
    ) -> Result<Option<RawEvent>, HistoryError> {
        let text = text.map_err(|source| HistoryError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| HistoryError::Line {
                path: self.path.display().to_string(),
                line,
                reason: e.to_string(),
            })
    }

    /// One pass: every line must parse; counts the events and those out of time order.
    pub fn scan(&self, mut progress: impl FnMut(u64)) -> Result<Scan, HistoryError> {
        let mut scan = Scan {
            events: 0,
            out_of_order: 0,
        };
        let mut newest = i64::MIN;
        for (line, text) in self.lines()? {
            let Some(event) = self.parse(line, text)? else {
                continue;
            };
            scan.events += 1;
            if event.event_time_ms < newest {
                scan.out_of_order += 1;
            }
            newest = newest.max(event.event_time_ms);
            if scan.events.is_multiple_of(100_000) {
                progress(scan.events);
            }
        }
        Ok(scan)
    }

    /// The events, streamed. Stops at the first problem, which [`HistoryFile::problem`]
    /// then returns (the file changed since the scan, or cannot be read).
    pub fn events(&self) -> impl Iterator<Item = RawEvent> + '_ {
        let lines = match self.lines() {
            Ok(lines) => Some(lines),
            Err(e) => {
                self.problem.borrow_mut().get_or_insert(e);
                None
            }
        };
        lines
            .into_iter()
            .flatten()
            .map_while(move |(line, text)| match self.parse(line, text) {
                Ok(event) => Some(event),
                Err(e) => {
                    self.problem.borrow_mut().get_or_insert(e);
                    None
                }
            })
            .flatten()
    }

    /// The first problem met while streaming, if any.
    pub fn problem(&self) -> Option<HistoryError> {
        self.problem.borrow_mut().take()
    }

    /// Every event in memory, sorted by event time (stable): for a history out of order.
    pub fn read_sorted(&self) -> Result<Vec<RawEvent>, HistoryError> {
        let mut events = Vec::new();
        for (line, text) in self.lines()? {
            if let Some(event) = self.parse(line, text)? {
                events.push(event);
            }
        }
        events.sort_by_key(|event| event.event_time_ms);
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_and_streams_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let event = |id: &str, t: i64| {
            format!(r#"{{"event_id":"{id}","event_type":"payment","event_time_ms":{t}}}"#)
        };
        std::fs::write(
            &path,
            [event("a", 10), String::new(), event("b", 5), event("c", 20)].join("\n"),
        )
        .unwrap();
        let file = HistoryFile::new(&path);
        assert_eq!(
            file.scan(|_| {}).unwrap(),
            Scan {
                events: 3,
                out_of_order: 1
            }
        );
        let ids: Vec<String> = file.events().map(|e| e.event_id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(file.problem().is_none());
        let sorted: Vec<String> = file
            .read_sorted()
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(sorted, ["b", "a", "c"]);

        std::fs::write(
            &path,
            [event("a", 10), "{not json".into(), event("c", 20)].join("\n"),
        )
        .unwrap();
        let error = file.scan(|_| {}).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert_eq!(file.events().count(), 1, "streaming stops at the bad line");
        assert!(file.problem().unwrap().to_string().contains("line 2"));
    }
}

//! Losses an operator accepted with `streamscore repair`: ranges of sequence numbers
//! whose records were damaged and moved aside. A gap in the log is an error at start
//! unless it is listed here, so a loss is never silent and never forgotten.
//!
//! File `log/losses.txt`, one line per loss: `<first seq> <next seq> <what happened>`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LogError, io_error, sync_dir};

fn path(dir: &Path) -> PathBuf {
    dir.join("losses.txt")
}

/// One accepted loss: sequence numbers `from..to` are missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub from: u64,
    pub to: u64,
    pub note: String,
}

#[derive(Debug, Clone, Default)]
pub struct Losses(Vec<Loss>);

impl Losses {
    /// Whether a jump from `expected` to `found` is an accepted loss.
    pub fn covers(&self, expected: u64, found: u64) -> bool {
        self.0
            .iter()
            .any(|loss| loss.from <= expected && found <= loss.to && expected < found)
    }

    pub fn list(&self) -> &[Loss] {
        &self.0
    }
}

pub fn read(dir: &Path) -> Result<Losses, LogError> {
    let file = path(dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Losses::default()),
        Err(error) => return Err(io_error(&file)(error)),
    };
    let mut losses = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut words = line.splitn(3, ' ');
        let parsed = (|| {
            let from = words.next()?.parse().ok()?;
            let to = words.next()?.parse().ok()?;
            Some(Loss {
                from,
                to,
                note: words.next().unwrap_or_default().to_string(),
            })
        })();
        match parsed {
            Some(loss) if loss.from < loss.to => losses.push(loss),
            _ => {
                return Err(LogError::Damaged {
                    path: file,
                    offset: number as u64 + 1,
                    reason: format!("line {} is not '<from> <to> <note>'", number + 1),
                    following: 0,
                });
            }
        }
    }
    Ok(Losses(losses))
}

/// Appends a loss durably.
pub fn record(dir: &Path, loss: &Loss) -> Result<(), LogError> {
    let file = path(dir);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .map_err(io_error(&file))?;
    let note = loss.note.replace('\n', " ");
    writeln!(out, "{} {} {note}", loss.from, loss.to).map_err(io_error(&file))?;
    out.sync_all().map_err(io_error(&file))?;
    sync_dir(dir)
}

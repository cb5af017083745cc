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
    let (losses, bad) = parse(dir)?;
    match bad.into_iter().next() {
        None => Ok(losses),
        Some((line, _)) => Err(LogError::LossesDamaged {
            path: path(dir),
            line,
            reason: "not '<from> <to> <note>' with from < to".to_string(),
        }),
    }
}

/// The losses that read well, and the lines that do not (numbered from 1).
fn parse(dir: &Path) -> Result<(Losses, Vec<(usize, String)>), LogError> {
    let file = path(dir);
    let text = match std::fs::read(&file) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Losses::default(), Vec::new()));
        }
        Err(error) => return Err(io_error(&file)(error)),
    };
    let (mut losses, mut bad) = (Vec::new(), Vec::new());
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
            _ => bad.push((number + 1, line.to_string())),
        }
    }
    Ok((Losses(losses), bad))
}

/// Moves the lines that do not read as a loss to the damaged folder and keeps the rest
/// (for `repair`, which then checks the log against what is left). Returns where the
/// bad lines went, if there were any.
pub fn set_aside_damage(dir: &Path) -> Result<Option<(PathBuf, usize)>, LogError> {
    let (losses, bad) = parse(dir)?;
    if bad.is_empty() {
        return Ok(None);
    }
    let text: String = bad
        .iter()
        .map(|(number, line)| format!("line {number}: {line}\n"))
        .collect();
    let aside = super::damaged::keep_aside(dir, &path(dir), 0, text.as_bytes())?;
    let kept: String = losses
        .0
        .iter()
        .map(|loss| format!("{} {} {}\n", loss.from, loss.to, loss.note))
        .collect();
    crate::durable::replace_file(&path(dir), kept.as_bytes()).map_err(io_error(&path(dir)))?;
    Ok(Some((aside, bad.len())))
}

/// Appends a loss durably.
pub fn record(dir: &Path, loss: &Loss) -> Result<(), LogError> {
    let file = path(dir);
    if loss.from >= loss.to {
        // A reversed or empty range would make the file unreadable at the next start.
        return Err(LogError::LossesDamaged {
            path: file,
            line: 0,
            reason: format!(
                "refusing to record the empty or reversed range {}..{}",
                loss.from, loss.to
            ),
        });
    }
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

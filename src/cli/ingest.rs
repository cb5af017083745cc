//! `streamscore ingest FILE...`: a shop's own history (JSON lines, CSV, Parquet, or
//! stdin) into a running server over `IngestStream`. Each file's progress is noted
//! beside it (`FILE.ingest-progress`: the rows acknowledged so far), so a run that was
//! stopped goes on where it stopped, and the rows it sent twice (the batches in flight
//! when it stopped) are duplicates by event id, never applied twice. Refusals, the
//! server's and the file's own (a cell that is not a number), are summed up by reason
//! with the first rows of each; anything refused makes the exit code 1 unless
//! `--allow-refused`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::api::client;
use crate::definitions::Definitions;
use crate::events::file::{FileFormat, Mapping, Row, rows};

type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files to send, in order; none or "-": stdin (JSON lines unless --format says).
    pub files: Vec<PathBuf>,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The files' format; default: by extension (.csv, .parquet, else JSON lines).
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,
    /// Rename a CSV or Parquet column, FROM=TO (repeatable): e.g. --map ts=event_time_ms
    /// --map customer=user. Columns are event_id, event_type, event_time_ms, the entity
    /// types (user, card, ...) and the event type's fields (amount, ...).
    #[arg(long = "map", value_name = "FROM=TO")]
    pub map: Vec<String>,
    /// Feature definitions the columns are read against (default: the shop's).
    #[arg(long)]
    pub definitions: Option<PathBuf>,
    /// Events per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Exit 0 even when rows were refused.
    #[arg(long)]
    pub allow_refused: bool,
    /// Send every row again, whatever an earlier run noted as sent.
    #[arg(long)]
    pub from_start: bool,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

/// Examples kept per refusal reason.
const EXAMPLES: usize = 3;
/// How often the progress file is rewritten at most.
const NOTE_EVERY: Duration = Duration::from_millis(200);

/// A refusal reason without what differs row by row, so rows refused for one reason
/// are counted together: numbers become `#` ("is 4999 ms behind ..."), quoted values
/// `'…'` ("'ten' is not a number"). A number inside a word ("ISO 3166-1") stays.
fn general_reason(reason: &str) -> String {
    let token = |word: &str| -> String {
        let core = word.trim_start_matches('(');
        let core = core.trim_end_matches([',', ';', ':', ')', '.']);
        let (start, end) = match word.find(core) {
            Some(start) if !core.is_empty() => (start, start + core.len()),
            _ => return word.to_string(),
        };
        let general = if core.parse::<f64>().is_ok_and(f64::is_finite) {
            "#"
        } else if core.len() >= 2 && core.starts_with('\'') && core.ends_with('\'') {
            "'…'"
        } else {
            return word.to_string();
        };
        format!("{}{general}{}", &word[..start], &word[end..])
    };
    reason.split(' ').map(token).collect::<Vec<_>>().join(" ")
}

/// Refusals by reason: how many, and the first few rows.
#[derive(Debug, Default)]
pub struct Refusals {
    by_reason: BTreeMap<String, (u64, Vec<String>)>,
    total: u64,
    late: bool,
}

impl Refusals {
    /// Notes one refused row: `at` says where (`file:row N`).
    pub fn add(&mut self, field: &str, reason: &str, at: String) {
        let general = general_reason(reason);
        self.late |= field == "event_time_ms" && reason.contains("behind");
        let entry = self
            .by_reason
            .entry(format!("{field}: {general}"))
            .or_default();
        entry.0 += 1;
        if entry.1.len() < EXAMPLES {
            entry.1.push(format!("{at} ({reason})"));
        }
        self.total += 1;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether any event was refused as later than the allowed lateness.
    pub fn late(&self) -> bool {
        self.late
    }

    /// Most frequent reason first, each with its first rows.
    pub fn print(&self) {
        let mut reasons: Vec<_> = self.by_reason.iter().collect();
        reasons.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        for (reason, (count, examples)) in reasons {
            println!("  {count} refused: {reason}");
            for example in examples {
                println!("    e.g. {example}");
            }
        }
    }
}

/// What an earlier run acknowledged of a file, kept beside it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    /// Every row up to this one (numbered from 1) was acknowledged or refused.
    through_row: u64,
    /// The file's size then: a smaller file now is another file.
    file_bytes: u64,
}

fn progress_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".ingest-progress");
    PathBuf::from(name)
}

fn load_progress(file: &Path) -> Result<Option<Progress>, Box<dyn std::error::Error>> {
    let path = progress_path(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: not a progress note ({e}); remove it or pass --from-start",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display()).into()),
    }
}

/// Writes the note whole or not at all (temp file, then rename).
fn save_progress(file: &Path, progress: &Progress) -> std::io::Result<()> {
    let path = progress_path(file);
    let temp = path.with_extension("ingest-progress.tmp");
    std::fs::write(&temp, serde_json::to_vec(progress)?)?;
    std::fs::rename(&temp, &path)
}

/// Rows of the batches in flight, by batch id, so the server's refusals (by index in
/// their batch) name rows and acknowledged batches move the progress on.
#[derive(Default)]
struct InFlight {
    rows_of: BTreeMap<u64, Vec<u64>>,
    /// Acknowledged batches not yet settled (one before them is not), with their last
    /// row.
    acked: BTreeMap<u64, u64>,
    /// The next batch to settle: every one before it is acknowledged.
    next_to_settle: u64,
    /// The last row of the newest settled batch.
    through_row: u64,
}

impl InFlight {
    fn new(through_row: u64) -> InFlight {
        InFlight {
            next_to_settle: 1,
            through_row,
            ..InFlight::default()
        }
    }

    /// Notes the acknowledgement of `batch_id`; returns its rows.
    fn acknowledge(&mut self, batch_id: u64) -> Vec<u64> {
        let rows = self.rows_of.remove(&batch_id).unwrap_or_default();
        let last = rows.last().copied().unwrap_or(0);
        self.acked.insert(batch_id, last);
        while let Some(last) = self.acked.remove(&self.next_to_settle) {
            self.through_row = self.through_row.max(last);
            self.next_to_settle += 1;
        }
        rows
    }
}

pub async fn ingest(args: IngestArgs) -> CliResult {
    let definitions = match &args.definitions {
        Some(path) => Definitions::load(path)?,
        None => Definitions::default_shop(),
    };
    let mapping = Mapping::parse(&args.map)?;
    let inputs: Vec<Option<PathBuf>> = match args.files.is_empty() {
        true => vec![None],
        false => args
            .files
            .iter()
            .map(|file| (file.as_os_str() != "-").then(|| file.clone()))
            .collect(),
    };
    let channel = client::connect_with(&args.target, &args.connect.options()).await?;
    let batch = args.batch.max(1);
    let mut refusals = Refusals::default();
    let (mut rows_total, mut accepted, mut duplicates) = (0u64, 0u64, 0u64);
    for input in inputs {
        let shown = input
            .as_ref()
            .map_or("stdin".to_string(), |p| p.display().to_string());
        let format = args
            .format
            .unwrap_or_else(|| input.as_deref().map_or(FileFormat::Jsonl, FileFormat::of));
        let file_bytes = match &input {
            Some(path) => std::fs::metadata(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .len(),
            None => 0,
        };
        let earlier = match (&input, args.from_start) {
            (Some(path), false) => load_progress(path)?.filter(|p| {
                let same = p.file_bytes <= file_bytes;
                if !same {
                    eprintln!(
                        "{shown}: smaller than when {} was noted: another file; sending it all",
                        progress_path(path).display()
                    );
                }
                same
            }),
            _ => None,
        };
        let skip = earlier.map_or(0, |p| p.through_row);
        if skip > 0 {
            eprintln!(
                "{shown}: going on after row {skip} (sent by an earlier run, noted in {}); --from-start sends it all again",
                input
                    .as_deref()
                    .map(progress_path)
                    .unwrap_or_default()
                    .display()
            );
        }

        let in_flight = Arc::new(Mutex::new(InFlight::new(skip)));
        // Rows the file itself refuses are reported here; the events go on to the server.
        let own_refusals: Arc<Mutex<Vec<(u64, String, String)>>> = Arc::default();
        let events = {
            let in_flight = Arc::clone(&in_flight);
            let own_refusals = Arc::clone(&own_refusals);
            let mut sent = 0u64;
            rows(input.as_deref(), format, &mapping, &definitions)?
                .skip_while(move |row| row.number <= skip)
                .filter_map(move |Row { number, event }| match event {
                    Ok(event) => {
                        let batch_id = sent / batch as u64 + 1;
                        sent += 1;
                        if let Ok(mut in_flight) = in_flight.lock() {
                            in_flight.rows_of.entry(batch_id).or_default().push(number);
                        }
                        Some(event)
                    }
                    Err(refused) => {
                        if let Ok(mut own) = own_refusals.lock() {
                            own.push((number, refused.field, refused.reason));
                        }
                        None
                    }
                })
        };
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({per_sec}, {elapsed})") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        let mut noted = Instant::now();
        let mut file_rows = 0u64;
        let summary = client::stream_events(channel.clone(), events, batch, 16, |ack| {
            let Ok(mut in_flight) = in_flight.lock() else {
                return;
            };
            let rows = in_flight.acknowledge(ack.batch_id);
            file_rows += rows.len() as u64;
            for refusal in &ack.refused {
                let row = rows.get(refusal.index as usize).copied().unwrap_or(0);
                refusals.add(
                    &refusal.field,
                    &refusal.reason,
                    format!("{shown}:row {row}"),
                );
            }
            bar.set_position(file_rows);
            bar.set_message(format!("{shown}: {file_rows} rows acknowledged"));
            if let Some(path) = &input
                && noted.elapsed() >= NOTE_EVERY
            {
                noted = Instant::now();
                let progress = Progress {
                    through_row: in_flight.through_row,
                    file_bytes,
                };
                if let Err(e) = save_progress(path, &progress) {
                    bar.println(format!("cannot note progress beside {shown}: {e}"));
                }
            }
        })
        .await;
        bar.finish_and_clear();
        let own = own_refusals
            .lock()
            .map(|own| own.clone())
            .unwrap_or_default();
        for (row, field, reason) in &own {
            refusals.add(field, reason, format!("{shown}:row {row}"));
        }
        let through_row = in_flight.lock().map(|f| f.through_row).unwrap_or(skip);
        let last_own = own.iter().map(|(row, ..)| *row).max().unwrap_or(0);
        if let Some(path) = &input {
            // Rows the file refused after the last batch are settled too.
            let through_row = match summary.is_ok() {
                true => through_row.max(last_own),
                false => through_row,
            };
            save_progress(
                path,
                &Progress {
                    through_row,
                    file_bytes,
                },
            )?;
        }
        let summary = summary?;
        rows_total += file_rows + own.len() as u64;
        accepted += summary.accepted;
        duplicates += summary.duplicates;
        println!(
            "{shown}: {} rows: {} accepted, {} duplicates, {} refused",
            file_rows + own.len() as u64,
            summary.accepted,
            summary.duplicates,
            summary.refused.len() + own.len()
        );
    }
    if refusals.total() > 0 {
        refusals.print();
        if refusals.late() {
            println!("{}", late_hint());
        }
    }
    if args.files.len() > 1 {
        println!(
            "in all: {rows_total} rows: {accepted} accepted, {duplicates} duplicates, {} refused",
            refusals.total()
        );
    }
    if refusals.total() > 0 && !args.allow_refused {
        return Err(format!(
            "{} of {rows_total} rows refused (listed above); fix them and run again with --from-start (rows already accepted come back as duplicates, never applied twice), or pass --allow-refused",
            refusals.total()
        )
        .into());
    }
    Ok(())
}

/// What to do about events refused as late.
pub fn late_hint() -> &'static str {
    "  late: the server refuses events older than its newest event time minus \
     ingest.allowed_lateness (default 1h). Send history oldest first, before live \
     traffic, or start the server with a larger ingest.allowed_lateness for the backfill."
}

#[cfg(test)]
mod tests {
    use super::general_reason;

    #[test]
    fn reasons_group_without_their_numbers_and_quoted_values() {
        assert_eq!(
            general_reason(
                "is 7200000 ms behind the newest event time 1796637655618; at most 3600000 ms of lateness is allowed"
            ),
            "is # ms behind the newest event time #; at most # ms of lateness is allowed"
        );
        assert_eq!(
            general_reason("'ten' is not a number"),
            "'…' is not a number"
        );
        assert_eq!(
            general_reason("'DEU' is not a two-letter ISO 3166-1 country code (e.g. DE, US, GB)"),
            "'…' is not a two-letter ISO 3166-1 country code (e.g. DE, US, GB)"
        );
        assert_eq!(
            general_reason("must be >= 0, got -5"),
            "must be >= #, got #"
        );
    }
}

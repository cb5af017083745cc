//! `streamscore train`: a training config (or the defaults) with flags over it, a
//! training set (an event history replayed through the engine, or a table), then one
//! model version per family, each reported beside the serving version.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::CliResult;
use crate::definitions::Definitions;
use crate::features::EngineSettings;
use crate::time::now_ms;
use crate::train::Dataset;
use crate::train::config::{CheckedTrainConfig, TrainConfig};
use crate::train::pipeline::TrainOutcome;

type Failure = Box<dyn std::error::Error>;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Event history as JSON lines (from `simulate --out` or `export`).
    #[arg(long, required_unless_present = "table", conflicts_with = "table")]
    pub events: Option<PathBuf>,
    /// A ready feature table instead of history: Parquet (.parquet) or CSV with feature
    /// columns, `label`, and optionally `event_id` and `time_ms` (the `--export-dataset`
    /// format).
    #[arg(long)]
    pub table: Option<PathBuf>,
    /// Model name: the artifact goes to <models-dir>/<name>/<name>-v<N>.json
    /// [default: fraud, or the config's].
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Fraud: a chargeback within this window; purchase: an order within it, e.g. 1d
    /// [default: 60d, or the config's].
    #[arg(long)]
    pub label_window: Option<String>,
    /// Share of the latest rows held out for validation [default: 0.25, or the config's].
    #[arg(long)]
    pub holdout: Option<f64>,
    /// Which rows are held out: time (the latest), random, or stratified (random within
    /// each class) [default: time, or the config's].
    #[arg(long, value_enum)]
    pub split: Option<crate::train::split::Split>,
    /// Seed of the random and stratified splits [default: 0, or the config's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also report each metric's mean and spread over this many cross-validation folds
    /// [default: 0 (none), or the config's].
    #[arg(long)]
    pub cv_folds: Option<usize>,
    /// Fail when more than this share of the history's events is refused (invalid,
    /// duplicate or late); each reason is printed with its count either way.
    #[arg(long, default_value_t = crate::train::dataset::DEFAULT_MAX_REFUSED_SHARE)]
    pub max_refused_share: f64,
    /// What to predict: fraud (each payment), purchase (an order within --label-window of
    /// each page view) or order_value (each order's amount) from history; binary (0/1,
    /// true/false, yes/no) or regression (a number) from a table's --label column
    /// [default: fraud, or the config's].
    #[arg(long)]
    pub target: Option<String>,
    /// The table column holding the label (--table only) [default: label, or the
    /// config's].
    #[arg(long)]
    pub label: Option<String>,
    /// Training config (TOML, see training/*.toml): target, labels, thresholds and the
    /// families to train. Without it, the flags describe one family. Flags given beside
    /// it win over its values (for every family that has the key) and are recorded in
    /// the artifact and the report; a flag no family takes is an error.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model family: logistic, tree, svm or kernel_svm (fraud, purchase), linear
    /// (order_value) [default: logistic]. With --config: train only this family of the
    /// config.
    #[arg(long)]
    pub family: Option<String>,
    /// Violation cost of the SVMs [default: 0.1 for svm, 1 for kernel_svm].
    #[arg(long)]
    pub c: Option<f64>,
    /// Kernel width of the kernel SVM [default: 1 / columns].
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Rows the kernel SVM trains on, a stratified sample [default: 20000].
    #[arg(long)]
    pub sample_size: Option<usize>,
    /// Depth limit of the decision tree [default: 10].
    #[arg(long)]
    pub max_depth: Option<usize>,
    /// L2 penalty of the logistic and linear regressions, on the summed loss [default: 1].
    #[arg(long)]
    pub l2: Option<f64>,
    /// Iteration limit of the logistic regression and the SVMs [default: 500 for
    /// logistic and svm, 10000000 for kernel_svm].
    #[arg(long)]
    pub max_iterations: Option<u64>,
    /// Weight of a positive row against a negative one: a number, or "balanced"
    /// (negatives / positives of the training rows) [default: 1].
    #[arg(long)]
    pub positive_weight: Option<crate::train::weight::PositiveWeight>,
    /// Feature definitions (default: the built-in shop definitions).
    #[arg(long)]
    pub definitions: Option<PathBuf>,
    /// Also write the point-in-time training set here: Parquet for a .parquet path, CSV
    /// otherwise.
    #[arg(long)]
    pub export_dataset: Option<PathBuf>,
    /// Sign the artifact with this key file (HMAC-SHA256, at least 32 bytes), for a
    /// server with `models.require_signature`.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// Creation time written into the artifact (default: now); fixed by the training
    /// script so the shipped models are reproducible bit for bit.
    #[arg(long)]
    pub created_at_ms: Option<i64>,
}

/// The flags that can override a training config's values.
fn overrides(args: &TrainArgs) -> crate::train::config::Overrides {
    crate::train::config::Overrides {
        name: args.name.clone(),
        target: args.target.clone(),
        label: args.label.clone(),
        label_window: args.label_window.clone(),
        holdout: args.holdout,
        split: args.split,
        seed: args.seed,
        cv_folds: args.cv_folds,
        l2: args.l2,
        max_iterations: args.max_iterations,
        max_depth: args.max_depth,
        c: args.c,
        gamma: args.gamma,
        sample_size: args.sample_size,
        positive_weight: args.positive_weight,
    }
}

pub(super) fn train(args: TrainArgs) -> CliResult {
    let (config, flags) = train_config(&args)?;
    let definitions = Arc::new(match &args.definitions {
        Some(path) => Definitions::load(path)?,
        None => Definitions::default_shop(),
    });
    let classifier = config.spec.target.classifier();
    if config.spec.target.from_table() && args.table.is_none() {
        return Err(format!(
            "target {}: labels a table's column; give --table (a CSV or Parquet file)",
            if classifier { "binary" } else { "regression" }
        )
        .into());
    }
    for (_, family) in &config.families {
        crate::train::pipeline::check_family(classifier, *family)?;
    }
    let dataset = match (&args.events, &args.table) {
        (_, Some(table)) => {
            eprintln!("reading {}...", table.display());
            crate::train::table::read(
                table,
                &crate::train::table::TableSpec {
                    label: config.label.clone(),
                    binary: classifier,
                    encode: config.spec.target.from_table(),
                },
            )?
        }
        (Some(history), None) => replay_history(history, &args, &config, &definitions)?,
        (None, None) => return Err("give --events or --table".into()),
    };
    eprintln!(
        "{} labelled rows x {} columns ({} left out for want of a label)",
        dataset.rows.len(),
        dataset.columns.len(),
        dataset.unlabelled
    );
    if let Some(path) = &args.export_dataset {
        crate::train::pipeline::export(&dataset, path)?;
    }
    let signing_key = match &args.signing_key {
        Some(path) => Some(crate::model::artifact::SigningKey::from_file(path)?),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let mut summary = Vec::new();
    for (kind, family) in &config.families {
        let bar = crate::train::progress::TrainingBar::fitting(kind);
        let outcome = crate::train::pipeline::train_on(
            &dataset,
            classifier,
            definitions.fingerprint,
            *family,
            config.rule,
            config.holdout,
            crate::train::pipeline::Output {
                models_dir: &args.models_dir,
                name: &config.name,
                created_at_ms: args.created_at_ms.unwrap_or_else(now_ms),
                // A model from a table never records: its rows are not events.
                scored_event: args
                    .events
                    .as_ref()
                    .and_then(|_| config.spec.target.observed_event()),
                signing_key: signing_key.as_ref(),
                flags: &flags,
                compare_by: config.compare_by,
            },
            |step| bar.show(step),
        );
        bar.finish();
        let outcome = outcome?;
        report_outcome(&mut out, kind, &outcome, &config.name, classifier, &args)?;
        summary.push((*kind, outcome));
    }
    if summary.len() > 1 {
        write!(out, "\n{}", training_summary(&config.name, &summary))?;
    }
    Ok(())
}

/// The training config `args` name (or the defaults of `--family`), with the flags
/// over it, checked; and what the flags changed.
fn train_config(args: &TrainArgs) -> Result<(CheckedTrainConfig, Vec<String>), Failure> {
    let mut config = match &args.config {
        Some(path) => {
            let mut config = TrainConfig::load(path)?;
            if let Some(kind) = &args.family {
                let known: Vec<&str> = config.families.iter().map(|f| f.kind()).collect();
                config.families.retain(|f| f.kind() == kind);
                if config.families.is_empty() {
                    return Err(format!(
                        "--family {kind}: {} has no such family (it has: {})",
                        path.display(),
                        known.join(", ")
                    )
                    .into());
                }
            }
            config
        }
        None => TrainConfig::defaults(args.family.as_deref().unwrap_or("logistic"))?,
    };
    let flags = config.apply(&overrides(args))?;
    if args.config.is_some() {
        for flag in &flags {
            eprintln!("flag over config: {flag}");
        }
    }
    Ok((config.check()?, flags))
}

/// The training set of an event history, replayed through the engine with progress.
fn replay_history(
    history: &std::path::Path,
    args: &TrainArgs,
    config: &CheckedTrainConfig,
    definitions: &Arc<Definitions>,
) -> Result<Dataset, Failure> {
    eprintln!("reading {}...", history.display());
    let file = crate::train::history::HistoryFile::new(history);
    let scan = file.scan(|_| {})?;
    // Replay needs time order: an event more than the lateness behind the newest
    // one would be refused. A history in order is streamed from disk (twice:
    // labels, then the replay); one out of order is read whole and sorted.
    let sorted = if scan.out_of_order > 0 {
        eprintln!(
            "the history was not in time order ({} events came after a later one): sorting it by event time in memory",
            scan.out_of_order
        );
        Some(file.read_sorted()?)
    } else {
        None
    };
    if !(0.0..=1.0).contains(&args.max_refused_share) {
        return Err(format!(
            "--max-refused-share: must be a share between 0 and 1, got {}",
            args.max_refused_share
        )
        .into());
    }
    let mut spec = config.spec.clone();
    spec.max_refused_share = args.max_refused_share;
    let settings = EngineSettings::from(&crate::config::IngestSettings::default());
    let bar = crate::train::progress::TrainingBar::new("dataset", scan.events);
    let progress = |done| bar.show(crate::train::pipeline::Progress::Replayed(done));
    let definitions = Arc::clone(definitions);
    let dataset = match &sorted {
        Some(events) => Dataset::build(
            definitions,
            settings,
            || events.iter().cloned(),
            &spec,
            progress,
        ),
        None => Dataset::build(definitions, settings, || file.events(), &spec, progress),
    };
    bar.finish();
    if let Some(problem) = file.problem() {
        return Err(format!("the history changed while it was read: {problem}").into());
    }
    let dataset = dataset?;
    if dataset.skipped_events > 0 {
        eprintln!(
            "{} events of the history were not applied: {}",
            dataset.skipped_events,
            dataset.refusal_summary(10)
        );
    }
    if dataset.unreadable_observations > 0 {
        eprintln!(
            "{} observations left out: their features could not be read exactly as of their time",
            dataset.unreadable_observations
        );
    }
    Ok(dataset)
}

/// What one family's fit gave: its version, metrics, thresholds, standing against the
/// serving version, and where its artifact, report and plots are.
fn report_outcome(
    out: &mut impl Write,
    kind: &str,
    outcome: &TrainOutcome,
    name: &str,
    classifier: bool,
    args: &TrainArgs,
) -> CliResult {
    if outcome.unchanged {
        writeln!(
            out,
            "{kind}: the same model as {name}@{} (same data, settings and thresholds): no new version written ({})",
            outcome.version,
            outcome.artifact.display()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "trained {name} v{} ({kind}): {} training rows{}, {} validation rows, fit in {:.2} s",
        outcome.version,
        outcome.train_rows,
        if classifier {
            format!(" ({} positive)", outcome.positives)
        } else {
            String::new()
        },
        outcome.validation_rows,
        outcome.fit_seconds
    )?;
    for (metric, value) in &outcome.metrics {
        writeln!(out, "  {metric:<10} {value:.4}")?;
    }
    for cv in &outcome.cross_validation {
        writeln!(
            out,
            "  {:<10} {:.4} +- {:.4} over {} folds",
            cv.metric,
            cv.mean,
            cv.std,
            cv.folds.len()
        )?;
    }
    if let Some(thresholds) = outcome.thresholds {
        writeln!(out, "  {thresholds}")?;
    }
    if let Some(band) = outcome.review_band {
        writeln!(out, "  {band}")?;
        if band.nearly_empty() {
            eprintln!(
                "warning: {kind}: the review band is (nearly) empty ({band}): review and block almost meet, so next to nothing would be reviewed; set [thresholds] review_rate = 0.02 (say) in the training config to review that share"
            );
        }
    }
    let candidate = format!("{name}@{}", outcome.version);
    match &outcome.comparison {
        Some(c) => writeln!(
            out,
            "  beside the serving {}: {} {:.4} (serving) vs {:.4} ({candidate}) on this hold-out: {}",
            c.serving,
            c.metric,
            c.serving_value,
            c.candidate_value,
            c.verdict()
        )?,
        None => writeln!(
            out,
            "  nothing of this name serves in {} to compare with",
            args.models_dir.display()
        )?,
    }
    writeln!(
        out,
        "{candidate} is a candidate: it serves once promoted (`streamscore models promote {candidate}`)"
    )?;
    writeln!(out, "artifact: {}", outcome.artifact.display())?;
    writeln!(
        out,
        "report: {}",
        outcome.artifact.with_extension("report.md").display()
    )?;
    for plot in &outcome.plots {
        writeln!(out, "plot: {}", plot.display())?;
    }
    Ok(())
}

/// The table `train` ends with when it fitted several families: each version's
/// hold-out metrics, review band and standing against the serving version, side by side.
fn training_summary(name: &str, outcomes: &[(&str, TrainOutcome)]) -> String {
    let Some((_, first)) = outcomes.first() else {
        return String::new();
    };
    let metrics: Vec<&str> = first.metrics.iter().map(|(m, _)| m.as_str()).collect();
    let mut text = format!(
        "summary: {} families of {name}, each on the same {} hold-out rows\n",
        outcomes.len(),
        first.validation_rows
    );
    let mut header = format!("{:<12} {:<14}", "family", "version");
    for metric in &metrics {
        header += &format!(" {metric:>9}");
    }
    header += &format!(" {:>11}  vs serving", "review band");
    text += &header;
    text += "\n";
    for (kind, outcome) in outcomes {
        let version = format!(
            "{name}@{}{}",
            outcome.version,
            if outcome.unchanged { " (same)" } else { "" }
        );
        let mut line = format!("{kind:<12} {version:<14}");
        for (_, value) in &outcome.metrics {
            line += &format!(" {value:>9.4}");
        }
        let band = outcome
            .review_band
            .map_or_else(|| "-".to_string(), |b| format!("{:.2}%", b.share * 100.0));
        line += &format!(" {band:>11}  ");
        line += &match &outcome.comparison {
            Some(c) => format!(
                "{} {} {:.4} vs {:.4}: {}",
                c.serving,
                c.metric,
                c.serving_value,
                c.candidate_value,
                c.verdict()
            ),
            None => "nothing serving".to_string(),
        };
        text += line.trim_end();
        text += "\n";
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parsed(args: &[&str]) -> Result<TrainArgs, clap::Error> {
        let cli = Cli::try_parse_from(["streamscore", "train"].iter().chain(args))?;
        match cli.command {
            Command::Train(args) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn refusal(args: &TrainArgs) -> String {
        match train_config(args) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        }
    }

    /// A training config of one tree family in `dir`; its path.
    fn tree_config(dir: &std::path::Path) -> String {
        let path = dir.join("train.toml");
        let text = "name = 'f'\ntarget = 'fraud'\n[[family]]\nkind = 'tree'\n";
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8 path").to_string()
    }

    #[test]
    fn a_history_and_a_table_together_or_neither_are_refused_by_the_parser() {
        assert!(parsed(&["--events", "h.jsonl", "--table", "t.csv"]).is_err());
        assert!(parsed(&[]).is_err());
        assert!(parsed(&["--events", "h.jsonl"]).is_ok());
    }

    #[test]
    fn an_unknown_family_is_refused_naming_the_known_ones() {
        let args = parsed(&["--events", "h.jsonl", "--family", "forest"]).expect("parsed");
        let refused = refusal(&args);
        assert!(
            refused.contains("'forest'") && refused.contains("logistic"),
            "{refused}"
        );
    }

    #[test]
    fn a_family_the_config_lacks_is_refused_naming_the_file_and_its_families() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = tree_config(dir.path());
        let config = config.as_str();
        let args = parsed(&["--events", "h.jsonl", "--config", config, "--family", "svm"])
            .expect("parsed");
        let refused = refusal(&args);
        assert!(
            refused.contains("--family svm")
                && refused.contains(config)
                && refused.contains("tree"),
            "{refused}"
        );
    }

    #[test]
    fn a_flag_over_a_config_is_applied_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = tree_config(dir.path());
        let config = config.as_str();
        let args =
            parsed(&["--events", "h.jsonl", "--config", config, "--name", "g"]).expect("parsed");
        let (checked, flags) = train_config(&args).expect("config");
        assert_eq!(checked.name, "g");
        assert_eq!(flags.len(), 1, "{flags:?}");
    }
}

//! `streamscore mine`: data mining offline (association rules and their evaluation,
//! customer segments) into artifacts the server serves like models.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliResult;
use crate::definitions::Definitions;
use crate::events::Limits;
use crate::features::EngineSettings;
use crate::mining::config::RulesConfig;
use crate::mining::mine::{self, MineOutput};
use crate::time::now_ms;
use crate::train::history::HistoryFile;

/// Where a mined artifact goes and what it is stamped and signed with.
#[derive(Debug, Args)]
pub struct OutputArgs {
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Feature definitions the serving registry runs with (default: the built-in shop).
    #[arg(long)]
    pub definitions: Option<PathBuf>,
    /// Sign the artifact with this key file (HMAC-SHA256, at least 32 bytes).
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// Creation time written into the artifact (default: now).
    #[arg(long)]
    pub created_at_ms: Option<i64>,
    /// Largest artifact to write: the server's models.max_artifact_bytes (64 MiB by
    /// default). A rule set over it is refused with its size, before anything is written.
    #[arg(long, default_value_t = crate::model::artifact::DEFAULT_MAX_ARTIFACT_BYTES)]
    pub max_artifact_bytes: u64,
}

impl OutputArgs {
    fn definitions(&self) -> Result<Definitions, Box<dyn std::error::Error>> {
        Ok(match &self.definitions {
            Some(path) => Definitions::load(path)?,
            None => Definitions::default_shop(),
        })
    }

    fn signing_key(
        &self,
    ) -> Result<Option<crate::model::artifact::SigningKey>, Box<dyn std::error::Error>> {
        Ok(match &self.signing_key {
            Some(path) => Some(crate::model::artifact::SigningKey::from_file(path)?),
            None => None,
        })
    }

    fn created_at_ms(&self) -> i64 {
        self.created_at_ms.unwrap_or_else(now_ms)
    }
}

#[derive(Debug, Args)]
pub struct MineArgs {
    #[command(subcommand)]
    pub what: MineCommand,
}

#[derive(Debug, Subcommand)]
pub enum MineCommand {
    /// Association rules from the baskets of an event history (or a baskets file):
    /// FP-growth, then rules, into <models-dir>/<name>/<name>-v<N>.json with a report.
    Rules(RulesArgs),
    /// Recommend as served, on a cut in time: rules mined from the earlier baskets, the
    /// history replayed, and the live call's code asked as each later basket was being
    /// filled; hit rate, recall, NDCG and coverage against rule confidence and
    /// popularity.
    Evaluate(EvaluateArgs),
    /// Customer segments: k-means (k-means++, seeded) on chosen features of every
    /// entity at the end of the history, with a sweep of k to choose by; the artifact
    /// scores an entity's current features into its segment.
    Segments(SegmentsArgs),
}

#[derive(Debug, Args)]
pub struct SegmentsArgs {
    /// Event history as JSON lines.
    #[arg(long)]
    pub events: PathBuf,
    /// Segments config (TOML, see training/segments.toml): features, k, sweep, seed.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Also write every entity's id, segment and standardised features as CSV.
    #[arg(long)]
    pub export_assignments: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Event history as JSON lines.
    #[arg(long)]
    pub events: PathBuf,
    /// Mining config (TOML, see training/rules.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Share of the baskets (the earliest) the rules are mined from.
    #[arg(long, default_value_t = 0.7)]
    pub split: f64,
    /// How many products each recommender names (Recommend's top_n).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Where the ranking model is (the server's models directory).
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// The ranking model: name, name@version or alias.
    #[arg(long, default_value = "purchase")]
    pub model: String,
    /// Feature definitions the server runs with (default: the built-in shop).
    #[arg(long)]
    pub definitions: Option<PathBuf>,
    /// Also write the evaluation as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also write every query and each recommender's answer as JSON lines here.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Keep the rule set evaluated in --models-dir (a candidate, as `mine rules`
    /// writes it), to serve or to check the live call against; otherwise it goes.
    #[arg(long)]
    pub save_rules: bool,
}

#[derive(Debug, Args)]
pub struct RulesArgs {
    /// Event history as JSON lines (from `simulate --out` or `export`).
    #[arg(long, required_unless_present = "baskets", conflicts_with = "baskets")]
    pub events: Option<PathBuf>,
    /// Baskets instead of history: one per line, product ids separated by spaces.
    #[arg(long)]
    pub baskets: Option<PathBuf>,
    /// Mining config (TOML, see training/rules.toml): min_support, min_confidence,
    /// min_lift, max_len, window, name.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Also write every frequent itemset and rule, with product ids and the mining
    /// times, as plain JSON (for comparing with other tools).
    #[arg(long)]
    pub export: Option<PathBuf>,
}

pub fn mine(args: MineArgs) -> CliResult {
    match args.what {
        MineCommand::Rules(args) => rules(args),
        MineCommand::Evaluate(args) => evaluate(args),
        MineCommand::Segments(args) => segments(args),
    }
}

fn segments(args: SegmentsArgs) -> CliResult {
    use crate::mining::segments::{self, SegmentsConfig};
    let config = SegmentsConfig::from_file(&args.config)?;
    let definitions = std::sync::Arc::new(args.output.definitions()?);
    config
        .check(&definitions)
        .map_err(|reason| format!("config {}: {reason}", args.config.display()))?;
    let signing_key = args.output.signing_key()?;
    let settings = EngineSettings::from(&crate::config::IngestSettings::default());
    let (rows, events) = over_history(&args.events, |events| {
        Ok(segments::rows(
            std::sync::Arc::clone(&definitions),
            settings,
            events,
            &config,
        )?)
    })?;
    eprintln!(
        "{} events -> {} {} entities as of {} = {} ms ({} idle past every window; {} events refused)",
        events,
        rows.rows.len(),
        config.entity,
        crate::time::format_iso(rows.as_of_ms),
        rows.as_of_ms,
        rows.idle,
        rows.refused_events
    );
    let fitted = segments::fit(&rows, &config)?;
    if let Some(path) = &args.export_assignments {
        let mut writer = csv::Writer::from_path(path)?;
        let mut header = vec!["id".to_string(), "segment".to_string()];
        header.extend(config.features.iter().cloned());
        writer.write_record(&header)?;
        for (at, id) in rows.ids.iter().enumerate() {
            let mut record = vec![id.clone(), fitted.labels[at].to_string()];
            record.extend(fitted.standardised.row(at).iter().map(|v| format!("{v:?}")));
            writer.write_record(&record)?;
        }
        writer.flush()?;
    }
    let (report, files) = crate::mining::segments_report::write(
        &rows,
        &fitted,
        &config,
        &args.output.models_dir,
        args.output.created_at_ms(),
        definitions.fingerprint,
        signing_key.as_ref(),
    )?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "mined {} v{}: {} segments of {} {} entities, inertia {:.3}",
        report.name, report.version, config.k, report.rows, report.entity, report.inertia
    )?;
    for point in &report.sweep {
        writeln!(
            out,
            "  k {:>3}: inertia {:.3}, silhouette {:.4}",
            point.k, point.inertia, point.silhouette
        )?;
    }
    for warning in &report.warnings {
        writeln!(out, "  warning: {warning}")?;
    }
    for file in &files {
        writeln!(out, "  wrote {}", file.display())?;
    }
    writeln!(
        out,
        "  a candidate until promoted: streamscore models promote {}@{}",
        report.name, report.version
    )?;
    Ok(())
}

type Failure = Box<dyn std::error::Error>;

/// Hands the history's events to `consume` in time order: streamed from disk when the
/// file is in order, read whole and sorted when it is not. Returns what `consume` gave
/// and how many events the file holds.
fn over_history<T>(
    path: &std::path::Path,
    consume: impl FnOnce(Box<dyn Iterator<Item = crate::events::RawEvent> + '_>) -> Result<T, Failure>,
) -> Result<(T, u64), Failure> {
    use crate::train::pipeline::Progress;
    use crate::train::progress::TrainingBar;
    let file = HistoryFile::new(path);
    // A terminal sees the read and the replay move (a long history took 24 s in
    // silence); the bars hide themselves in logs and pipes.
    let reading = TrainingBar::spinner("mine", &format!("reading {}", path.display()));
    let scan = file.scan(|_| {})?;
    reading.finish();
    let bar = TrainingBar::new("mine", scan.events);
    let mut replayed = 0u64;
    let counted = |event: crate::events::RawEvent| {
        replayed += 1;
        if replayed.is_multiple_of(8_192) {
            bar.show(Progress::Replayed(replayed));
        }
        event
    };
    if scan.out_of_order > 0 {
        eprintln!(
            "the history was not in time order ({} events came after a later one): sorting it by event time in memory",
            scan.out_of_order
        );
        let sorted = file.read_sorted()?;
        let result = consume(Box::new(sorted.into_iter().map(counted)));
        bar.finish();
        return Ok((result?, scan.events));
    }
    let result = consume(Box::new(file.events().map(counted)));
    bar.finish();
    let result = result?;
    if let Some(problem) = file.problem() {
        return Err(problem.into());
    }
    Ok((result, scan.events))
}

fn evaluate(args: EvaluateArgs) -> CliResult {
    use crate::mining::evaluate::{self, Case, Evaluation, Hide, ServedPath};
    if !(args.split > 0.0 && args.split < 1.0) {
        return Err(format!("--split: must be between 0 and 1, got {}", args.split).into());
    }
    if !(1..=crate::scoring::recommend::MAX_RECOMMENDATIONS).contains(&args.k) {
        return Err(format!(
            "--k: must be 1 to {}, got {}",
            crate::scoring::recommend::MAX_RECOMMENDATIONS,
            args.k
        )
        .into());
    }
    let config = RulesConfig::from_file(&args.config)?;
    let definitions = std::sync::Arc::new(match &args.definitions {
        Some(path) => Definitions::load(path)?,
        None => Definitions::default_shop(),
    });
    // One pass: the baskets to mine, and each basket of two or more as carted, with its
    // index (whether it falls after the cut).
    let ((mut all, carts), events) = over_history(&args.events, |events| {
        let mut builder = crate::mining::BasketsBuilder::default();
        let mut carts = Vec::new();
        crate::mining::closed_carts(events, config.window_ms, |cart| {
            if cart.carted.len() >= 2 {
                carts.push((builder.len(), cart.clone()));
            }
            builder.push(cart);
        });
        Ok((builder.finish(), carts))
    })?;
    eprintln!("{events} events -> {} baskets", all.baskets.len());
    let cut = (all.baskets.len() as f64 * args.split) as usize;
    if cut == 0 || cut == all.baskets.len() {
        return Err(crate::mining::MiningError::NoBaskets(format!(
            "{} baskets cannot be split {} / {}",
            all.baskets.len(),
            args.split,
            1.0 - args.split
        ))
        .into());
    }
    let test_baskets = all.baskets.len() - cut;
    all.baskets.truncate(cut);
    all.times.truncate(cut);
    all.users.truncate(cut);
    let mined = mine::mine(&all.baskets, &config)?;

    // The rule set is written to a scratch models directory and loaded beside the
    // ranking model, so the queries resolve both as the server would.
    let registry = crate::registry::Registry::new(
        std::sync::Arc::clone(&definitions),
        args.models_dir.clone(),
    );
    for (path, error) in registry.scan()? {
        eprintln!("skipped {}: {error}", path.display());
    }
    let scratch = ScratchDir::new("evaluate")?;
    // Unsaved, the set gets a name of its own: the models directory may already hold a
    // `rules@1`, and a loaded version is never replaced.
    let config = match args.save_rules {
        true => config,
        false => {
            if registry.resolve(&format!("{EVALUATED}@1")).is_ok() {
                return Err(format!(
                    "{} already holds a model named {EVALUATED}; the rule set evaluated takes that name",
                    args.models_dir.display()
                )
                .into());
            }
            let mut config = config;
            config.config.name = EVALUATED.into();
            config
        }
    };
    let outcome = mine::write(
        &all,
        &mined,
        &config,
        MineOutput {
            models_dir: match args.save_rules {
                true => &args.models_dir,
                false => scratch.path(),
            },
            created_at_ms: now_ms(),
            definitions_fingerprint: definitions.fingerprint,
            signing_key: None,
            // The registry below loads it with its default limit.
            max_artifact_bytes: crate::model::artifact::DEFAULT_MAX_ARTIFACT_BYTES,
        },
    )?;
    let rules = registry.load_file(&outcome.artifact)?;
    if args.save_rules {
        eprintln!(
            "kept {} (a candidate: streamscore models promote {})",
            outcome.artifact.display(),
            rules.reference()
        );
    }
    let model = registry.resolve_ranker(&args.model)?;
    let cases: Vec<Case> = carts
        .iter()
        .filter(|(index, _)| *index >= cut)
        .flat_map(|(_, cart)| [Case::of(cart, Hide::Rest), Case::of(cart, Hide::Last)])
        .flatten()
        .collect();
    let settings = crate::config::Settings::default();
    let path = ServedPath {
        registry: &registry,
        definitions: std::sync::Arc::clone(&definitions),
        engine: EngineSettings::from(&settings.ingest),
        limits: Limits::from(&settings.ingest),
        features: crate::scoring::recommend::RecentFeatures::default(),
        rules: rules.reference(),
        model: model.reference(),
        k: args.k,
    };
    eprintln!(
        "{} rules from the earliest {cut} baskets; asking Recommend {} times while replaying",
        outcome.report.rules,
        cases.len()
    );
    let (answered, failed_queries) = over_history(&args.events, |events| {
        Ok(evaluate::replay(&path, events, cases))
    })?
    .0;
    if answered.is_empty() {
        return Err(format!(
            "no query could be answered ({} failed; the first: {})",
            failed_queries.count,
            failed_queries.first.as_deref().unwrap_or("none was asked")
        )
        .into());
    }
    let evaluation = Evaluation {
        k: args.k,
        rules: rules.reference(),
        model: model.reference(),
        train_baskets: cut,
        test_baskets,
        modes: evaluate::modes(&answered, args.k),
        failed_queries,
    };
    if let Some(path) = &args.queries {
        let mut lines = String::new();
        for one in &answered {
            lines.push_str(&serde_json::to_string(one)?);
            lines.push('\n');
        }
        std::fs::write(path, lines).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&evaluation)?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    write!(std::io::stdout().lock(), "{}", evaluation.markdown())?;
    Ok(())
}

/// The name of a rule set `mine evaluate` mines and does not keep.
const EVALUATED: &str = "evaluated-rules";

/// A directory under the system's temporary one, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(purpose: &str) -> Result<ScratchDir, Failure> {
        let path = std::env::temp_dir().join(format!(
            "streamscore-{purpose}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(ScratchDir(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rules(args: RulesArgs) -> CliResult {
    let config = RulesConfig::from_file(&args.config)?;
    let definitions = args.output.definitions()?;
    let signing_key = args.output.signing_key()?;
    let baskets = match (&args.events, &args.baskets) {
        (Some(events), _) => {
            let file = HistoryFile::new(events);
            let scan = file.scan(|_| {})?;
            // Baskets follow each user's carts in time order.
            let baskets = if scan.out_of_order > 0 {
                eprintln!(
                    "the history was not in time order ({} events came after a later one): sorting it by event time in memory",
                    scan.out_of_order
                );
                crate::mining::baskets(&file.read_sorted()?, config.window_ms)
            } else {
                let baskets = crate::mining::baskets(file.events(), config.window_ms);
                if let Some(problem) = file.problem() {
                    return Err(problem.into());
                }
                baskets
            };
            eprintln!(
                "{} events -> {} baskets",
                scan.events,
                baskets.baskets.len()
            );
            baskets
        }
        (None, Some(path)) => mine::read_baskets(path)?,
        (None, None) => return Err("give --events or --baskets".into()),
    };
    if baskets.baskets.is_empty() {
        return Err(crate::mining::MiningError::NoBaskets(
            "no order closed a cart in this history (a basket is the products carted before an order)".into(),
        )
        .into());
    }
    let mined = mine::mine(&baskets.baskets, &config)?;
    if let Some(path) = &args.export {
        mine::export(path, &baskets, &mined)?;
    }
    let outcome = mine::write(
        &baskets,
        &mined,
        &config,
        MineOutput {
            models_dir: &args.output.models_dir,
            created_at_ms: args.output.created_at_ms(),
            definitions_fingerprint: definitions.fingerprint,
            signing_key: signing_key.as_ref(),
            max_artifact_bytes: args.output.max_artifact_bytes,
        },
    )?;
    let report = &outcome.report;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "mined {} v{}: {} baskets, {} products, {} frequent itemsets, {} rules (FP-growth {:.3} s, rules {:.3} s)",
        report.name,
        outcome.version,
        report.baskets,
        report.products,
        report.itemsets_by_length.iter().sum::<usize>(),
        report.rules,
        report.itemset_seconds,
        report.rule_seconds
    )?;
    for file in &outcome.files {
        writeln!(out, "  wrote {}", file.display())?;
    }
    writeln!(
        out,
        "  a candidate until promoted: streamscore models promote {}@{}",
        report.name, outcome.version
    )?;
    Ok(())
}

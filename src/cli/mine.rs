//! `streamscore mine`: data mining for recommendations, offline, into artifacts the
//! server serves like models.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliResult;
use crate::definitions::Definitions;
use crate::mining::config::RulesConfig;
use crate::mining::mine::{self, MineOutput};
use crate::time::now_ms;
use crate::train::history::HistoryFile;

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
    /// Also write every frequent itemset and rule, with product ids and the mining
    /// times, as plain JSON (for comparing with other tools).
    #[arg(long)]
    pub export: Option<PathBuf>,
}

pub fn mine(args: MineArgs) -> CliResult {
    match args.what {
        MineCommand::Rules(args) => rules(args),
    }
}

fn rules(args: RulesArgs) -> CliResult {
    let config = RulesConfig::from_file(&args.config)?;
    let definitions = match &args.definitions {
        Some(path) => Definitions::load(path)?,
        None => Definitions::default_shop(),
    };
    let signing_key = match &args.signing_key {
        Some(path) => Some(crate::model::artifact::SigningKey::from_file(path)?),
        None => None,
    };
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
    let mined = mine::mine(&baskets.baskets, &config);
    if let Some(path) = &args.export {
        mine::export(path, &baskets, &mined)?;
    }
    let outcome = mine::write(
        &baskets,
        &mined,
        &config,
        MineOutput {
            models_dir: &args.models_dir,
            created_at_ms: args.created_at_ms.unwrap_or_else(now_ms),
            definitions_fingerprint: definitions.fingerprint,
            signing_key: signing_key.as_ref(),
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

//! Command-line clients of a running server's scoring and model registry: `score` one
//! payment, `recommend` products for a user, and `models` list / show / load / alias, for the quick tour and for
//! operators without a gRPC tool at hand.

use std::io::Write;

use clap::{Args, Subcommand};

use crate::api::client;
use crate::api::pb::{self, models_client::ModelsClient, scoring_client::ScoringClient};

type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub connect: super::ConnectArgs,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Model name, name@version or alias.
    #[arg(long, default_value = "fraud")]
    pub model: String,
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub card: String,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub ip: Option<String>,
    #[arg(long)]
    pub amount: f64,
    #[arg(long)]
    pub billing_country: Option<String>,
    #[arg(long)]
    pub ip_country: Option<String>,
    /// Also ingest the payment after scoring (needs --event-id).
    #[arg(long)]
    pub record: bool,
    #[arg(long, default_value = "")]
    pub event_id: String,
    /// Print every input feature too.
    #[arg(long)]
    pub features: bool,
}

#[derive(Debug, Args)]
pub struct RecommendArgs {
    #[command(flatten)]
    pub connect: super::ConnectArgs,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub device: Option<String>,
    /// The product being looked at.
    #[arg(long)]
    pub product: Option<String>,
    /// What is in the cart (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub cart: Vec<String>,
    /// How many (1 to 100).
    #[arg(long, default_value_t = 10)]
    pub top_n: u32,
    /// The rule set: name, name@version or alias.
    #[arg(long, default_value = "rules")]
    pub rules: String,
    /// The model ranking the candidates.
    #[arg(long, default_value = "purchase")]
    pub model: String,
}

pub async fn recommend(args: RecommendArgs) -> CliResult {
    let request = pb::RecommendRequest {
        rules: args.rules,
        model: args.model,
        user: args.user,
        device: args.device.unwrap_or_default(),
        product: args.product.unwrap_or_default(),
        cart: args.cart,
        top_n: args.top_n,
        event_time_ms: 0,
    };
    let channel = client::connect_with(&args.target, &args.connect.options()).await?;
    let response = ScoringClient::new(channel)
        .recommend(request)
        .await?
        .into_inner();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} recommendations ({} ranked by {}); matched against: {}",
        response.recommendations.len(),
        response.rules,
        response.model,
        if response.context.is_empty() {
            "nothing (no history, empty cart)".to_string()
        } else {
            response.context.join(", ")
        }
    )?;
    for item in &response.recommendations {
        let why = match &item.why {
            Some(pb::recommendation::Why::Rule(rule)) => format!(
                "{} -> {} (confidence {:.3}, lift {:.2})",
                rule.antecedent.join(", "),
                rule.consequent.join(", "),
                rule.confidence,
                rule.lift
            ),
            Some(pb::recommendation::Why::Popular(popular)) => {
                format!("popular (in {:.2}% of baskets)", popular.support * 100.0)
            }
            None => "-".into(),
        };
        writeln!(
            out,
            "  {:<12} p={:.4}  {why}",
            item.product, item.probability
        )?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    pub connect: super::ConnectArgs,
    /// Global: `models list --target URL` works as well as `models --target URL list`.
    #[arg(long, default_value = "http://127.0.0.1:50051", global = true)]
    pub target: String,
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Every loaded model version and alias.
    List,
    /// One model's metrics, thresholds and inputs.
    Show { model: String },
    /// Load an artifact file (a path on the server's machine).
    Load { path: String },
    /// Point an alias at name@version.
    Alias { alias: String, target: String },
    /// Serve name@version under its name: promote a candidate, or roll back.
    Promote { version: String },
    /// Retire a candidate name@version: its files move to <name>/retired/ and it is
    /// unloaded (recorded in the models directory's audit.jsonl). Not the serving one.
    Retire { version: String },
}

pub async fn score(args: ScoreArgs) -> CliResult {
    let mut entities = vec![("user", args.user), ("card", args.card)];
    entities.extend(args.device.map(|d| ("device", d)));
    entities.extend(args.ip.map(|i| ("ip", i)));
    let mut strings = Vec::new();
    strings.extend(args.billing_country.map(|c| ("billing_country", c)));
    strings.extend(args.ip_country.map(|c| ("ip_country", c)));
    let request = pb::ScoreRequest {
        model: args.model,
        event: Some(pb::Event {
            event_id: args.event_id,
            event_type: "payment".into(),
            event_time_ms: 0,
            entities: entities
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            numbers: [("amount".to_string(), args.amount)].into(),
            strings: strings
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        include_features: args.features,
        record: args.record,
        reasons: None,
    };
    let channel = client::connect_with(&args.target, &args.connect.options()).await?;
    let response = ScoringClient::new(channel)
        .score(request)
        .await?
        .into_inner();
    let decision = pb::Decision::try_from(response.decision)
        .map(|d| {
            d.as_str_name()
                .trim_start_matches("DECISION_")
                .to_lowercase()
        })
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "score {:.4} -> {decision} ({}@{})",
        response.score, response.model, response.version
    )?;
    if !response.unknown_entities.is_empty() {
        writeln!(out, "unknown: {}", response.unknown_entities.join(", "))?;
    }
    for reason in &response.reasons {
        let value = reason.value.map_or("-".to_string(), |v| v.to_string());
        writeln!(
            out,
            "  {:+.4}  {} = {value}",
            reason.contribution, reason.feature
        )?;
    }
    if let Some(recorded) = response.recorded {
        writeln!(
            out,
            "recorded: {} accepted, {} duplicate, {} refused",
            recorded.accepted,
            recorded.duplicates,
            recorded.refused.len()
        )?;
    }
    for feature in &response.features {
        let value = feature.value.map_or("-".to_string(), |v| v.to_string());
        writeln!(out, "  {:<36} {value}", feature.name)?;
    }
    Ok(())
}

/// `name value`: counts (baskets, rules) as whole numbers; rates and scores to 4 places.
fn metric_text(metric: &pb::Metric) -> String {
    let value = metric.value;
    if value.fract() == 0.0 && value.abs() >= 1.0 && value.abs() < 1e15 {
        format!("{:<10} {}", metric.name, value as i64)
    } else {
        format!("{:<10} {value:.4}", metric.name)
    }
}

fn print_detail(out: &mut impl Write, detail: &pb::ModelDetail) -> std::io::Result<()> {
    if let Some(summary) = &detail.summary {
        writeln!(
            out,
            "{}@{} ({}), {}{}",
            summary.name,
            summary.version,
            summary.family,
            summary.path,
            if summary.serving { ", serving" } else { "" }
        )?;
    }
    for metric in &detail.metrics {
        writeln!(out, "  {}", metric_text(metric))?;
    }
    match (detail.review_threshold, detail.block_threshold) {
        (Some(review), Some(block)) => {
            writeln!(out, "  review at >= {review:.4}, block at >= {block:.4}")?
        }
        (Some(review), None) => writeln!(out, "  review at >= {review:.4}, never blocks")?,
        _ => {}
    }
    // A rule set or a table model reads no feature columns: nothing to list.
    if detail.columns.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "  {} inputs: {}",
        detail.columns.len(),
        detail.columns.join(", ")
    )
}

pub async fn models(args: ModelsArgs) -> CliResult {
    let mut models =
        ModelsClient::new(client::connect_with(&args.target, &args.connect.options()).await?);
    let mut out = std::io::stdout().lock();
    match args.command {
        ModelsCommand::List => {
            let list = models
                .list_models(pb::ListModelsRequest {})
                .await?
                .into_inner();
            for model in &list.models {
                let reference = format!("{}@{}", model.name, model.version);
                let status = if model.serving {
                    "serving"
                } else {
                    "candidate"
                };
                let headline = model
                    .metrics
                    .first()
                    .map_or_else(|| "-".to_string(), metric_text);
                writeln!(
                    out,
                    "{reference:<16} {status:<9}  {:<20} {headline:<18} {}",
                    model.family, model.path
                )?;
            }
            for alias in &list.aliases {
                writeln!(out, "alias {} -> {}", alias.alias, alias.target)?;
            }
        }
        ModelsCommand::Show { model } => {
            let detail = models
                .get_model(pb::GetModelRequest { model })
                .await?
                .into_inner();
            print_detail(&mut out, &detail)?;
        }
        ModelsCommand::Load { path } => {
            let detail = models
                .load_model(pb::LoadModelRequest { path })
                .await?
                .into_inner();
            print_detail(&mut out, &detail)?;
        }
        ModelsCommand::Promote { version } => {
            let Some((name, _)) = version.split_once('@') else {
                return Err(
                    format!("promote {version}: expected name@version, e.g. fraud@2").into(),
                );
            };
            let detail = models
                .set_alias(pb::SetAliasRequest {
                    alias: name.to_string(),
                    target: version.clone(),
                })
                .await?
                .into_inner();
            writeln!(out, "{version} now serves as {name}")?;
            print_detail(&mut out, &detail)?;
        }
        ModelsCommand::Retire { version } => {
            let retired = models
                .retire_model(pb::RetireModelRequest { model: version })
                .await?
                .into_inner();
            writeln!(
                out,
                "{} retired: unloaded, its files moved to {}",
                retired.model,
                std::path::Path::new(&retired.moved_to)
                    .parent()
                    .map_or_else(|| retired.moved_to.clone(), |p| p.display().to_string())
            )?;
        }
        ModelsCommand::Alias { alias, target } => {
            let detail = models
                .set_alias(pb::SetAliasRequest { alias, target })
                .await?
                .into_inner();
            print_detail(&mut out, &detail)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(columns: &[&str], metrics: &[(&str, f64)]) -> String {
        let detail = pb::ModelDetail {
            summary: Some(pb::ModelSummary {
                name: "rules".into(),
                version: 1,
                family: "association_rules".into(),
                path: "models/rules/rules-v1.json".into(),
                created_at_ms: 0,
                serving: true,
                metrics: Vec::new(),
            }),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            metrics: metrics
                .iter()
                .map(|(name, value)| pb::Metric {
                    name: name.to_string(),
                    value: *value,
                })
                .collect(),
            ..Default::default()
        };
        let mut out = Vec::new();
        print_detail(&mut out, &detail).expect("printed");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn counts_print_whole_and_a_model_without_columns_lists_no_inputs() {
        // Before: "baskets    5288.0000" and "  0 inputs: ".
        let rules = detail(&[], &[("baskets", 5288.0), ("min_support", 0.002)]);
        assert!(rules.contains("  baskets    5288\n"), "{rules}");
        assert!(rules.contains("  min_support 0.0020\n"), "{rules}");
        assert!(!rules.contains("inputs"), "{rules}");
        let fraud = detail(&["amount", "card_payments_1h"], &[("roc_auc", 0.9312)]);
        assert!(fraud.contains("  roc_auc    0.9312\n"), "{fraud}");
        assert!(
            fraud.contains("  2 inputs: amount, card_payments_1h\n"),
            "{fraud}"
        );
    }
}

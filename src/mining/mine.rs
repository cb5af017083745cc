//! `mine rules` end to end: baskets, frequent itemsets, rules, then a rule-set artifact
//! (versioned, checksummed, signed when a key is given) that the registry loads and
//! promotes like a model, with its report beside it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::config::CheckedRulesConfig;
use super::report::RulesReport;
use super::{Baskets, MiningError, RuleLimits, frequent_itemsets_within, min_count, rules_within};
use crate::definitions::fnv64;
use crate::model::artifact::{self, ArtifactBody, Provenance, SigningKey};
use crate::model::rules::{AssociationRule, POPULAR_KEPT, Popular, RuleSet};
use crate::model::{Family, Model, Preprocessing};

pub use super::rules::Mined;

/// Most frequent itemsets one run may find (about 100 bytes each, and every one is
/// split into rules): past this, `mine` stops and asks for a higher support.
pub const MAX_ITEMSETS: usize = 5_000_000;
/// Most rules one mining may keep (a 64 MiB artifact holds about 250,000).
pub const MAX_RULES: usize = 1_000_000;

/// Mines `baskets` under the config's limits.
pub fn mine(baskets: &[Vec<u32>], config: &CheckedRulesConfig) -> Result<Mined, MiningError> {
    let config = &config.config;
    let started = Instant::now();
    let min = min_count(config.min_support, baskets.len());
    let itemsets = frequent_itemsets_within(baskets, min, config.max_len, MAX_ITEMSETS).ok_or_else(|| {
        MiningError::TooMany(format!(
            "more than {MAX_ITEMSETS} frequent itemsets at min_support {} (at least {min} of {} baskets) and max_len {}: raise min_support or lower max_len",
            config.min_support,
            baskets.len(),
            config.max_len
        ))
    })?;
    let itemset_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let limits = RuleLimits {
        min_confidence: config.min_confidence,
        min_lift: config.min_lift,
    };
    let found = rules_within(&itemsets, baskets.len(), limits, MAX_RULES).ok_or_else(|| {
        MiningError::TooMany(format!(
            "more than {MAX_RULES} rules at min_confidence {} and min_lift {} from {} frequent itemsets: raise min_confidence, min_lift or min_support, or lower max_len",
            config.min_confidence,
            config.min_lift,
            itemsets.len()
        ))
    })?;
    Ok(Mined {
        baskets: baskets.len(),
        itemsets,
        rules: found,
        itemset_seconds,
        rule_seconds: started.elapsed().as_secs_f64(),
    })
}

fn names(ids: &[u32], products: &[String]) -> Vec<String> {
    let mut named: Vec<String> = ids
        .iter()
        .map(|id| products[*id as usize].clone())
        .collect();
    named.sort();
    named
}

/// The products in the most baskets, most first (ties by id), at most `keep`.
pub fn popular(baskets: &Baskets, keep: usize) -> Vec<Popular> {
    let mut counts = vec![0u64; baskets.products.len()];
    for basket in &baskets.baskets {
        for item in basket {
            counts[*item as usize] += 1;
        }
    }
    let n = baskets.baskets.len().max(1) as f64;
    let mut order: Vec<usize> = (0..counts.len()).filter(|i| counts[*i] > 0).collect();
    order.sort_by(|a, b| {
        counts[*b]
            .cmp(&counts[*a])
            .then_with(|| baskets.products[*a].cmp(&baskets.products[*b]))
    });
    order
        .into_iter()
        .take(keep)
        .map(|i| Popular {
            product: baskets.products[i].clone(),
            support: counts[i] as f64 / n,
        })
        .collect()
}

/// The served form: product ids for item ids, and the popular products.
pub fn rule_set(mined: &Mined, baskets: &Baskets) -> RuleSet {
    let rules = mined
        .rules
        .iter()
        .map(|rule| AssociationRule {
            antecedent: names(&rule.antecedent, &baskets.products),
            consequent: names(&rule.consequent, &baskets.products),
            support: rule.support,
            confidence: rule.confidence,
            lift: rule.lift,
            leverage: rule.leverage,
            conviction: rule.conviction.is_finite().then_some(rule.conviction),
        })
        .collect();
    RuleSet::new(mined.baskets as u64, rules, popular(baskets, POPULAR_KEPT))
}

/// Where the artifact goes and what it is stamped with.
#[derive(Debug, Clone, Copy)]
pub struct MineOutput<'a> {
    pub models_dir: &'a Path,
    pub created_at_ms: i64,
    /// Of the definitions the server runs with: the registry refuses other artifacts.
    pub definitions_fingerprint: u64,
    pub signing_key: Option<&'a SigningKey>,
    /// Largest artifact the server will load (`models.max_artifact_bytes`): a bigger
    /// one is refused before anything is written.
    pub max_artifact_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct MineOutcome {
    pub artifact: PathBuf,
    pub version: u32,
    pub report: RulesReport,
    pub files: Vec<PathBuf>,
}

/// Writes `<models_dir>/<name>/<name>-v<N>.json` (N the next free version), its report
/// (`.report.json`, `.report.md`) and its support/confidence plot.
pub fn write(
    baskets: &Baskets,
    mined: &Mined,
    config: &CheckedRulesConfig,
    out: MineOutput<'_>,
) -> Result<MineOutcome, MiningError> {
    let name = config.config.name.as_str();
    let dir = out.models_dir.join(name);
    let version = crate::train::pipeline::next_version(&dir, name);
    let path = dir.join(format!("{name}-v{version}.json"));
    let set = rule_set(mined, baskets);
    let mut fingerprint = Vec::with_capacity(baskets.baskets.len() * 8);
    for basket in &baskets.baskets {
        for item in basket {
            fingerprint.extend_from_slice(baskets.products[*item as usize].as_bytes());
            fingerprint.push(0);
        }
        fingerprint.push(b'\n');
    }
    let report = RulesReport::new(name, version, baskets, mined, config, &set);
    let (from, to) = (
        baskets.times.iter().copied().min().unwrap_or(0),
        baskets.times.iter().copied().max().unwrap_or(0),
    );
    let body = ArtifactBody {
        name: name.to_string(),
        version,
        created_at_ms: out.created_at_ms,
        definitions_fingerprint: out.definitions_fingerprint,
        trained_from_ms: from,
        trained_to_ms: to,
        data_fingerprint: fnv64(&fingerprint),
        metrics: report.metrics(),
        thresholds: None,
        scored_event: None,
        comparison: None,
        provenance: Some(Provenance {
            hyperparameters: serde_json::to_value(&config.config).unwrap_or_default(),
            flags: Vec::new(),
            holdout: 0.0,
            split: "time".into(),
            seed: 0,
            row_order: baskets.times.is_empty(),
            train_rows: baskets.baskets.len(),
            validation_rows: 0,
            train_positives: None,
            validation_positives: None,
            validated_from_ms: to,
            validated_to_ms: to,
        }),
        model: Model {
            columns: Vec::new(),
            inputs: None,
            preprocessing: Preprocessing {
                means: Vec::new(),
                scales: Vec::new(),
                ranges: None,
            },
            family: Family::AssociationRules(set),
        },
    };
    let text = artifact::encode(body, out.signing_key).map_err(|reason| MiningError::Write {
        path: path.display().to_string(),
        reason,
    })?;
    if text.len() as u64 > out.max_artifact_bytes {
        return Err(MiningError::TooLarge {
            bytes: text.len() as u64,
            limit: out.max_artifact_bytes,
            rules: report.rules,
        });
    }
    // The report first: the registry may load the artifact the moment it appears.
    let mut files = report.write_beside(&path, mined)?;
    artifact::save_encoded(&path, &text)?;
    files.insert(0, path.clone());
    Ok(MineOutcome {
        artifact: path,
        version,
        report,
        files,
    })
}

/// Reads baskets from a file of one basket per line, its products separated by
/// whitespace (repeats count once). Empty lines are skipped.
pub fn read_baskets(path: &Path) -> Result<Baskets, MiningError> {
    let file = std::fs::File::open(path).map_err(|e| MiningError::Baskets {
        path: path.display().to_string(),
        line: 0,
        reason: e.to_string(),
    })?;
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut out = Baskets::default();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| MiningError::Baskets {
            path: path.display().to_string(),
            line: index + 1,
            reason: e.to_string(),
        })?;
        let mut basket: Vec<u32> = Vec::new();
        for product in line.split_whitespace() {
            if product.len() > crate::model::rules::MAX_PRODUCT_BYTES {
                return Err(MiningError::Baskets {
                    path: path.display().to_string(),
                    line: index + 1,
                    reason: format!(
                        "a product id is {} bytes; at most {} allowed",
                        product.len(),
                        crate::model::rules::MAX_PRODUCT_BYTES
                    ),
                });
            }
            let next = ids.len() as u32;
            let id = *ids.entry(product.to_string()).or_insert_with(|| {
                out.products.push(product.to_string());
                next
            });
            basket.push(id);
        }
        basket.sort_unstable();
        basket.dedup();
        if !basket.is_empty() {
            out.baskets.push(basket);
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct ExportedItemset {
    items: Vec<String>,
    support: f64,
}

#[derive(Serialize)]
struct Export<'a> {
    baskets: usize,
    itemset_seconds: f64,
    rule_seconds: f64,
    itemsets: Vec<ExportedItemset>,
    rules: &'a [AssociationRule],
}

/// Writes the itemsets and rules with product ids as plain JSON (for comparing with
/// other tools), with the mining times.
pub fn export(path: &Path, baskets: &Baskets, mined: &Mined) -> Result<(), MiningError> {
    let n = mined.baskets.max(1) as f64;
    let set = rule_set(mined, baskets);
    let export = Export {
        baskets: mined.baskets,
        itemset_seconds: mined.itemset_seconds,
        rule_seconds: mined.rule_seconds,
        itemsets: mined
            .itemsets
            .iter()
            .map(|itemset| ExportedItemset {
                items: names(&itemset.items, &baskets.products),
                support: itemset.count as f64 / n,
            })
            .collect(),
        rules: &set.rules,
    };
    let error = |reason: String| MiningError::Write {
        path: path.display().to_string(),
        reason,
    };
    let text = serde_json::to_vec(&export).map_err(|e| error(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| error(e.to_string()))
}

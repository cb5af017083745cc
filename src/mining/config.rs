//! The settings of `mine rules` (a TOML file such as `training/rules.toml`), parsed
//! strictly and checked before any history is read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::MiningError;
use crate::model::artifact::valid_model_name;
use crate::time::parse_duration_ms;

/// Longest itemset (and so rule) `max_len` may ask for. Real baskets hold frequent
/// itemsets of 9-12 products at low support; the rules of an itemset are all its
/// splits (2^len - 2 of them, 65,534 at 16), and the itemsets and rules mined are
/// bounded in count (`mine::MAX_ITEMSETS`, `mine::MAX_RULES`).
pub const MAX_ITEMSET_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Artifacts go to `<models-dir>/<name>/<name>-v<N>.json`.
    #[serde(default = "default_name")]
    pub name: String,
    /// A basket is what a user carted at most this long before the order that closes it.
    #[serde(default = "default_window")]
    pub window: String,
    /// Least share of baskets an itemset must be in.
    pub min_support: f64,
    #[serde(default)]
    pub min_confidence: f64,
    #[serde(default)]
    pub min_lift: f64,
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}

fn default_name() -> String {
    "rules".into()
}

fn default_window() -> String {
    "1d".into()
}

fn default_max_len() -> usize {
    3
}

/// A config that passed its checks; the window in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedRulesConfig {
    pub config: RulesConfig,
    pub window_ms: i64,
}

impl RulesConfig {
    pub fn from_file(path: &Path) -> Result<CheckedRulesConfig, MiningError> {
        let text = std::fs::read_to_string(path).map_err(|e| MiningError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let config: RulesConfig = toml::from_str(&text).map_err(|e| MiningError::Config {
            path: path.display().to_string(),
            reason: e.message().to_string(),
        })?;
        config.check().map_err(|reason| MiningError::Config {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Checks every setting, naming the first that is wrong.
    pub fn check(self) -> Result<CheckedRulesConfig, String> {
        if !valid_model_name(&self.name) {
            return Err(format!(
                "name '{}': 1-64 of a-z 0-9 _ . - starting with a letter or digit",
                self.name.escape_debug()
            ));
        }
        let window_ms = parse_duration_ms(&self.window).map_err(|e| format!("window: {e}"))?;
        if window_ms <= 0 {
            return Err("window: must be longer than 0".into());
        }
        if !(self.min_support > 0.0 && self.min_support <= 1.0) {
            return Err(format!(
                "min_support: must be in (0, 1], got {}",
                self.min_support
            ));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(format!(
                "min_confidence: must be in [0, 1], got {}",
                self.min_confidence
            ));
        }
        if !(self.min_lift.is_finite() && self.min_lift >= 0.0) {
            return Err(format!(
                "min_lift: must be a number of at least 0, got {}",
                self.min_lift
            ));
        }
        if !(2..=MAX_ITEMSET_LEN).contains(&self.max_len) {
            return Err(format!(
                "max_len: must be 2 to {MAX_ITEMSET_LEN} (a rule needs two items), got {}",
                self.max_len
            ));
        }
        Ok(CheckedRulesConfig {
            config: self,
            window_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RulesConfig {
        toml::from_str("min_support = 0.01").unwrap()
    }

    #[test]
    fn defaults_and_checks_name_the_setting() {
        let checked = config().check().unwrap();
        assert_eq!(checked.config.max_len, 3);
        assert_eq!(checked.window_ms, crate::time::DAY_MS);
        for (change, named) in [
            (
                (|c: &mut RulesConfig| c.min_support = 0.0) as fn(&mut RulesConfig),
                "min_support",
            ),
            (|c| c.min_confidence = 1.5, "min_confidence"),
            (|c| c.min_lift = f64::NAN, "min_lift"),
            (|c| c.max_len = 1, "max_len"),
            (|c| c.max_len = 40, "max_len"),
            (|c| c.window = "0s".into(), "window"),
            (|c| c.name = "../x".into(), "name"),
        ] {
            let mut bad = config();
            change(&mut bad);
            let error = bad.check().unwrap_err();
            assert!(error.starts_with(named), "{error}");
        }
        assert!(toml::from_str::<RulesConfig>("min_support = 0.1\nmin_suport = 2").is_err());
    }
}

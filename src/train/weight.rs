//! How much a positive row weighs against a negative one: a fixed factor, or
//! `"balanced"`, which makes both classes weigh the same in total (negatives / positives,
//! resolved on the training rows of each run). The default is 1: no re-weighting, so a
//! logistic model's probabilities stay calibrated; the decision thresholds are chosen on
//! validation anyway, which is what a weight would otherwise be used to shift.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::TrainError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PositiveWeight {
    Fixed(f64),
    /// Negatives / positives of the training rows (scikit-learn's
    /// `class_weight="balanced"` up to a common factor, which here stays 1 for negatives).
    Balanced,
}

impl Default for PositiveWeight {
    fn default() -> Self {
        PositiveWeight::Fixed(1.0)
    }
}

impl PositiveWeight {
    pub fn check(self) -> Result<Self, TrainError> {
        match self {
            PositiveWeight::Fixed(w) if !(w.is_finite() && w > 0.0) => {
                Err(TrainError::InvalidParam {
                    name: "positive_weight",
                    reason: format!("must be finite and > 0 or \"balanced\", got {w}"),
                })
            }
            _ => Ok(self),
        }
    }

    /// The factor for these 0/1 `labels`; 1 when a class is absent (the fit refuses
    /// such data anyway).
    pub fn resolve(self, labels: &[f64]) -> f64 {
        match self {
            PositiveWeight::Fixed(w) => w,
            PositiveWeight::Balanced => {
                let positives = labels.iter().filter(|l| **l > 0.5).count();
                let negatives = labels.len() - positives;
                if positives == 0 || negatives == 0 {
                    1.0
                } else {
                    negatives as f64 / positives as f64
                }
            }
        }
    }
}

impl fmt::Display for PositiveWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PositiveWeight::Fixed(w) => write!(f, "{w}"),
            PositiveWeight::Balanced => f.write_str("balanced"),
        }
    }
}

impl Serialize for PositiveWeight {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PositiveWeight::Fixed(w) => serializer.serialize_f64(*w),
            PositiveWeight::Balanced => serializer.serialize_str("balanced"),
        }
    }
}

impl<'de> Deserialize<'de> for PositiveWeight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Word(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("positive_weight: expected a number > 0 or \"balanced\"")
        })? {
            Raw::Number(w) => Ok(PositiveWeight::Fixed(w)),
            Raw::Word(word) if word == "balanced" => Ok(PositiveWeight::Balanced),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "positive_weight: expected a number > 0 or \"balanced\", got \"{word}\""
            ))),
        }
    }
}

impl std::str::FromStr for PositiveWeight {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "balanced" {
            return Ok(PositiveWeight::Balanced);
        }
        text.parse::<f64>()
            .map(PositiveWeight::Fixed)
            .map_err(|_| format!("expected a number > 0 or \"balanced\", got '{text}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        positive_weight: PositiveWeight,
    }

    fn parse(text: &str) -> Result<PositiveWeight, String> {
        toml::from_str::<Holder>(text)
            .map(|h| h.positive_weight)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn balanced_weighs_both_classes_the_same_in_total() {
        let labels = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let w = PositiveWeight::Balanced.resolve(&labels);
        // 2 positives x 3 = 6 negatives x 1.
        assert_eq!(w, 3.0);
        assert_eq!(PositiveWeight::Fixed(2.5).resolve(&labels), 2.5);
        assert_eq!(PositiveWeight::Balanced.resolve(&[0.0, 0.0]), 1.0);
    }

    #[test]
    fn configs_take_a_number_or_balanced_and_name_anything_else() {
        assert_eq!(parse("positive_weight = 4"), Ok(PositiveWeight::Fixed(4.0)));
        assert_eq!(
            parse("positive_weight = 0.5"),
            Ok(PositiveWeight::Fixed(0.5))
        );
        assert_eq!(
            parse("positive_weight = 'balanced'"),
            Ok(PositiveWeight::Balanced)
        );
        let wrong = parse("positive_weight = 'balance'").unwrap_err();
        assert!(
            wrong.contains("balanced") && wrong.contains("balance\""),
            "{wrong}"
        );
        assert!(PositiveWeight::Fixed(0.0).check().is_err());
        assert!(PositiveWeight::Fixed(f64::NAN).check().is_err());
        assert_eq!("balanced".parse(), Ok(PositiveWeight::Balanced));
        assert_eq!("2".parse(), Ok(PositiveWeight::Fixed(2.0)));
    }
}

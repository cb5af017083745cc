//! Association rules from frequent itemsets: for every itemset of two or more items and
//! every split into antecedent -> consequent, the measures of mlxtend's
//! `association_rules` (support, confidence, lift, leverage, conviction), kept when
//! they pass the limits.

use std::collections::HashMap;

use super::fpgrowth::Itemset;

/// Which rules are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleLimits {
    pub min_confidence: f64,
    pub min_lift: f64,
}

/// What mining found, over item ids: what `mine` writes and the report describes.
#[derive(Debug, Clone)]
pub struct Mined {
    pub baskets: usize,
    pub itemsets: Vec<Itemset>,
    pub rules: Vec<Rule>,
    /// Seconds in FP-growth, and in deriving the rules (reading not included).
    pub itemset_seconds: f64,
    pub rule_seconds: f64,
}

/// One rule, its measures over `baskets` baskets.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub antecedent: Vec<u32>,
    pub consequent: Vec<u32>,
    /// Share of baskets holding antecedent and consequent.
    pub support: f64,
    pub antecedent_support: f64,
    pub consequent_support: f64,
    /// support / antecedent support.
    pub confidence: f64,
    /// confidence / consequent support.
    pub lift: f64,
    /// support - antecedent support x consequent support.
    pub leverage: f64,
    /// (1 - consequent support) / (1 - confidence); infinite when confidence is 1.
    pub conviction: f64,
}

/// The rules of `itemsets` (all frequent itemsets of `baskets` baskets, so every subset
/// of one is among them) that pass `limits`, strongest lift first.
///
/// Confidence and lift are computed from the integer counts, one rounding each: as a
/// ratio of shares (`(89/892) / (890/892)`) a rule at exactly `min_confidence` came out
/// at 0.0999... and was dropped.
pub fn rules(itemsets: &[Itemset], baskets: usize, limits: RuleLimits) -> Vec<Rule> {
    rules_within(itemsets, baskets, limits, usize::MAX).unwrap_or_default()
}

/// [`rules`], or `None` as soon as more than `most` pass the limits (an itemset of
/// `max_len` 16 alone has 65,534 splits: the count is bounded before memory is).
pub fn rules_within(
    itemsets: &[Itemset],
    baskets: usize,
    limits: RuleLimits,
    most: usize,
) -> Option<Vec<Rule>> {
    let n = baskets.max(1) as f64;
    let counts: HashMap<&[u32], u64> = itemsets
        .iter()
        .map(|i| (i.items.as_slice(), i.count))
        .collect();
    let mut out = Vec::new();
    for itemset in itemsets.iter().filter(|i| i.items.len() >= 2) {
        let items = &itemset.items;
        let both = itemset.count as f64 / n;
        let size = items.len();
        for mask in 1u32..(1u32 << size) - 1 {
            let (antecedent, consequent): (Vec<u32>, Vec<u32>) = {
                let mut a = Vec::new();
                let mut c = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        a.push(*item);
                    } else {
                        c.push(*item);
                    }
                }
                (a, c)
            };
            let (Some(&a_count), Some(&c_count)) = (
                counts.get(antecedent.as_slice()),
                counts.get(consequent.as_slice()),
            ) else {
                continue;
            };
            let (a, c) = (a_count as f64 / n, c_count as f64 / n);
            let confidence = itemset.count as f64 / a_count as f64;
            // both x n / (a x c) in counts; u128 so the products cannot overflow.
            let lift = (u128::from(itemset.count) * baskets.max(1) as u128) as f64
                / (u128::from(a_count) * u128::from(c_count)) as f64;
            if confidence < limits.min_confidence || lift < limits.min_lift {
                continue;
            }
            let conviction = if confidence >= 1.0 {
                f64::INFINITY
            } else {
                (1.0 - c) / (1.0 - confidence)
            };
            if out.len() == most {
                return None;
            }
            out.push(Rule {
                antecedent,
                consequent,
                support: both,
                antecedent_support: a,
                consequent_support: c,
                confidence,
                lift,
                leverage: both - a * c,
                conviction,
            });
        }
    }
    out.sort_by(|x, y| {
        y.lift
            .total_cmp(&x.lift)
            .then_with(|| y.confidence.total_cmp(&x.confidence))
            .then_with(|| x.antecedent.cmp(&y.antecedent))
            .then_with(|| x.consequent.cmp(&y.consequent))
    });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mining::frequent_itemsets;

    #[test]
    fn measures_follow_their_definitions_on_a_small_case() {
        // 5 baskets: bread in 4, milk in 3, both in 3.
        let baskets = vec![vec![1, 2], vec![1, 2], vec![1, 2, 3], vec![1], vec![3]];
        let itemsets = frequent_itemsets(&baskets, 1, 3);
        let all = rules(
            &itemsets,
            baskets.len(),
            RuleLimits {
                min_confidence: 0.0,
                min_lift: 0.0,
            },
        );
        let milk_to_bread = all
            .iter()
            .find(|r| r.antecedent == vec![2] && r.consequent == vec![1])
            .expect("milk -> bread");
        assert_eq!(milk_to_bread.support, 3.0 / 5.0);
        assert_eq!(milk_to_bread.confidence, 1.0);
        assert_eq!(milk_to_bread.lift, 1.0 / (4.0 / 5.0));
        assert_eq!(
            milk_to_bread.leverage,
            3.0 / 5.0 - (3.0 / 5.0) * (4.0 / 5.0)
        );
        assert!(milk_to_bread.conviction.is_infinite());
        let bread_to_milk = all
            .iter()
            .find(|r| r.antecedent == vec![1] && r.consequent == vec![2])
            .expect("bread -> milk");
        // Supports are shares, as mlxtend keeps them; confidence is the ratio of the
        // counts (3 of the 4 baskets with bread), one rounding (mlxtend's ratio of shares
        // agrees within an ulp).
        let confidence = 3.0 / 4.0;
        assert_eq!(bread_to_milk.confidence, confidence);
        assert_eq!(
            bread_to_milk.conviction,
            (1.0 - 3.0 / 5.0) / (1.0 - confidence)
        );
        // Limits drop what falls short.
        let strong = rules(
            &itemsets,
            baskets.len(),
            RuleLimits {
                min_confidence: 0.9,
                min_lift: 1.1,
            },
        );
        assert!(strong.iter().all(|r| r.confidence >= 0.9 && r.lift >= 1.1));
        assert!(strong.contains(milk_to_bread));
        assert!(!strong.contains(bread_to_milk));
    }

    /// 89 of 890 baskets: confidence exactly 0.1, kept at `min_confidence = 0.1` as
    /// mlxtend keeps it. Over 892 baskets the ratio of shares is 0.09999999999999999.
    #[test]
    fn a_rule_at_exactly_min_confidence_is_kept() {
        let itemsets = [
            Itemset {
                items: vec![0],
                count: 890,
            },
            Itemset {
                items: vec![1],
                count: 100,
            },
            Itemset {
                items: vec![0, 1],
                count: 89,
            },
        ];
        // The case the test is about: as a ratio of shares it falls short.
        let (shares, limit) = (std::hint::black_box(89.0 / 892.0), 0.1);
        assert!(shares / (890.0 / 892.0) < limit);
        let kept = rules(
            &itemsets,
            892,
            RuleLimits {
                min_confidence: 0.1,
                min_lift: 0.0,
            },
        );
        let rule = kept
            .iter()
            .find(|r| r.antecedent == [0])
            .expect("0 -> 1 at exactly min_confidence");
        assert_eq!(rule.confidence, 0.1);
        assert_eq!(rule.lift, 89.0 * 892.0 / (890.0 * 100.0));
    }

    /// Real baskets hold frequent itemsets of 9-12 products at low support: 12 products
    /// bought together in 30 of 100 baskets are found whole, with every rule of the
    /// itemset (4,094 splits), and a count limit stops rules before memory does.
    #[test]
    fn itemsets_of_twelve_are_mined_and_rules_are_bounded() {
        let together: Vec<u32> = (0..12).collect();
        let mut baskets = vec![together.clone(); 30];
        baskets.extend((0..70).map(|i| vec![100 + i]));
        let itemsets = crate::mining::frequent_itemsets(&baskets, 30, 12);
        assert!(
            itemsets
                .iter()
                .any(|i| i.items == together && i.count == 30)
        );
        let limits = RuleLimits {
            min_confidence: 0.0,
            min_lift: 0.0,
        };
        let all = rules(&itemsets, baskets.len(), limits);
        // Every split of every subset of two or more: sum of C(12, k) (2^k - 2).
        let expected: u64 = (2..=12u32)
            .map(|k| {
                let choose = (0..k).fold(1u64, |c, i| c * u64::from(12 - i) / u64::from(i + 1));
                choose * ((1u64 << k) - 2)
            })
            .sum();
        assert_eq!(all.len() as u64, expected);
        assert!(all.iter().any(|r| r.antecedent.len() == 11));
        assert_eq!(rules_within(&itemsets, baskets.len(), limits, 1_000), None);
    }
}

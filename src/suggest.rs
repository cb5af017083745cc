//! "Did you mean": the known name closest to a mistyped one, for error messages.

/// The name of `known` closest to `wanted` within a typo's reach (at most 2 edits, and
/// fewer than half of `wanted`'s length), ties to the first; `None` when none is.
pub fn closest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let reach = 2.min(wanted.chars().count().saturating_sub(1) / 2);
    known
        .into_iter()
        .filter(|name| *name != wanted)
        .map(|name| (edits(wanted, name), name))
        .filter(|(distance, _)| *distance <= reach.max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// Levenshtein distance between `a` and `b`, by characters (insert, delete, replace).
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let replaced = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = replaced.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_finds_its_name_and_a_stranger_finds_none() {
        let known = ["fraud", "purchase", "order_value", "rules"];
        assert_eq!(closest("frud", known), Some("fraud"));
        assert_eq!(closest("fraudd", known), Some("fraud"));
        assert_eq!(closest("purchse", known), Some("purchase"));
        assert_eq!(closest("rule", known), Some("rules"));
        assert_eq!(closest("churn", known), None);
        assert_eq!(closest("x", known), None);
        // Hand-counted distances.
        assert_eq!(edits("kitten", "sitting"), 3);
        assert_eq!(edits("", "abc"), 3);
        assert_eq!(edits("flaw", "lawn"), 2);
    }
}

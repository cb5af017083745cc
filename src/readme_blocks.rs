//! Test support: the README's reference blocks (every settings key and every training
//! config key with its default), so unit tests can hold the docs to the code.

use std::collections::BTreeSet;

/// The TOML block that follows `<!-- <marker> -->` in README.md.
pub fn block(marker: &str) -> String {
    let readme = include_str!("../README.md");
    let tag = format!("<!-- {marker} -->\n```toml\n");
    let start = readme
        .find(&tag)
        .unwrap_or_else(|| panic!("README.md has no {marker} block"))
        + tag.len();
    let end = start
        + readme[start..]
            .find("```")
            .unwrap_or_else(|| panic!("README.md's {marker} block is not closed"));
    readme[start..end].to_string()
}

/// `(table, key)` for every `key = ...` line of a block, commented out or not; keys
/// before the first header have table "".
pub fn documented_keys(block: &str) -> BTreeSet<(String, String)> {
    let mut table = String::new();
    let mut keys = BTreeSet::new();
    for line in block.lines() {
        let line = line.trim_start_matches("# ").trim();
        if let Some(header) = line.strip_prefix('[') {
            table = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .to_string();
        } else if let Some((key, _)) = line.split_once(" = ")
            && !key.contains(' ')
        {
            keys.insert((table.clone(), key.to_string()));
        }
    }
    keys
}

/// `(table, key)` for every field of a serialised value: top-level scalars under "",
/// nested tables under their dotted name (`kafka.scoring`); an empty table (a map with
/// no default entries) is a key of its own.
pub fn fields(value: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut keys = BTreeSet::new();
    collect_fields("", value, &mut keys);
    keys
}

fn collect_fields(table: &str, value: &serde_json::Value, keys: &mut BTreeSet<(String, String)>) {
    for (key, inner) in value.as_object().into_iter().flatten() {
        match inner.as_object() {
            Some(nested) if !nested.is_empty() => {
                let name = if table.is_empty() {
                    key.clone()
                } else {
                    format!("{table}.{key}")
                };
                collect_fields(&name, inner, keys);
            }
            _ => {
                keys.insert((table.to_string(), key.clone()));
            }
        }
    }
}

/// Asserts that `block` documents exactly the keys `every` (no key missing, none stale).
pub fn assert_documents(block: &str, every: &BTreeSet<(String, String)>) {
    let documented = documented_keys(block);
    let missing: Vec<_> = every.difference(&documented).collect();
    assert!(missing.is_empty(), "README.md lacks {missing:?}");
    let stale: Vec<_> = documented.difference(every).collect();
    assert!(
        stale.is_empty(),
        "README.md documents unknown keys {stale:?}"
    );
}

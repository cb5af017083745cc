//! The import plan, checked (tests only): every file's `crate::`, `super::` and `self::`
//! paths outside its tests are read as arrows between modules. No two files may import
//! each other through any chain (a circle), and no top-level module may import one on
//! its own layer or above (an arrow up), where [`LAYERS`] says what stands on what. A
//! new top-level module must be given a layer here.
//!
//! A file importing what its own parent module re-exports is not counted: the arrow
//! points at the parent, which holds the child, and says nothing of which sibling the
//! name came from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module's layer: a module may import only modules on lower layers.
const LAYERS: &[(&str, u8)] = &[
    // Foundations: no domain knowledge.
    ("time", 0),
    ("durable", 0),
    ("prometheus_text", 0),
    ("answers", 0),
    ("backoff", 0),
    ("suggest", 0),
    // Settings as plain data, and the definitions they name.
    ("config", 1),
    ("definitions", 1),
    ("datadir", 2),
    ("background", 2),
    ("events", 2),
    ("simulate", 3),
    // The generated wire types every door shares (the only module below the doors
    // that knows tonic and prost).
    ("wire", 3),
    ("features", 3),
    ("log", 3),
    ("model", 4),
    ("store", 4),
    ("registry", 5),
    ("scoring", 6),
    ("train", 6),
    ("inference", 7),
    ("mining", 7),
    ("online", 7),
    // The doors.
    ("api", 8),
    ("kafka", 9),
    ("loadtest", 9),
    ("scaleout", 10),
    ("server", 11),
    ("cli", 12),
    // Test-only modules that read the tree.
    ("readme_blocks", 13),
    ("house", 13),
];

type Module = Vec<String>;

/// Every source file under `src`, by module path (`a/b.rs` and `a/b/mod.rs`: `[a, b]`).
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut found = BTreeMap::new();
    let mut folders = vec![src.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(src) else {
                continue;
            };
            let Some(text) = relative.to_str().and_then(|r| r.strip_suffix(".rs")) else {
                continue;
            };
            let mut module: Module = text.split('/').map(str::to_string).collect();
            if module.last().is_some_and(|last| last == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                continue;
            }
            let code = std::fs::read_to_string(&path).expect("read file");
            found.insert(module, code);
        }
    }
    found
}

/// The code a file runs outside its tests, without comments.
fn outside_tests(code: &str) -> String {
    let code = code.split("\n#[cfg(test)]").next().unwrap_or(code);
    code.lines()
        .map(|line| line.split("//").next().unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree names, e.g. `super::{a, b::{C, d}}`.
fn use_paths(tree: &str, prefix: &[String], out: &mut Vec<Module>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().to_string())
            .collect();
        let prefix = [prefix, &head].concat();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    use_paths(&inner[start..i], &prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        use_paths(&inner[start..], &prefix, out);
        return;
    }
    let name = tree.split(" as ").next().unwrap_or(tree);
    let segments = name.split("::").map(|s| s.trim().to_string());
    let path: Module = prefix.iter().cloned().chain(segments).collect();
    if !path.is_empty() {
        out.push(path);
    }
}

/// Every path in `code` that starts at `crate`, `super` or `self`.
fn paths(code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    for statement in code.split(';') {
        if let Some(start) = statement.find("use ") {
            let before = &statement[..start];
            if before.trim().is_empty()
                || before.trim_end().ends_with("pub")
                || before.contains(')')
            {
                use_paths(&statement[start + 4..], &[], &mut out);
            }
        }
    }
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    for root in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(root) {
            if code[..at].chars().next_back().is_some_and(word) {
                continue;
            }
            let rest = &code[at..];
            let end = rest.find(|c: char| !word(c)).unwrap_or(rest.len());
            let path: Module = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            out.push(path);
        }
    }
    out
}

/// The module file `path`, written in `from`, points at.
fn resolve(from: &Module, path: &Module, files: &BTreeMap<Module, String>) -> Option<Module> {
    let (mut base, rest): (Module, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (from.clone(), &path[1..]),
        Some("super") => {
            let supers = path.iter().take_while(|s| *s == "super").count();
            let keep = from.len().checked_sub(supers)?;
            (from[..keep].to_vec(), &path[supers..])
        }
        _ => return None,
    };
    base.extend(rest.iter().cloned());
    (1..=base.len())
        .rev()
        .map(|n| base[..n].to_vec())
        .find(|candidate| files.contains_key(candidate))
}

/// The arrows between files, a file's arrows to its own ancestors left out.
fn arrows(files: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut arrows: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, code) in files {
        for path in paths(&outside_tests(code)) {
            let Some(target) = resolve(module, &path, files) else {
                continue;
            };
            if target != *module && !module.starts_with(&target) {
                arrows.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    arrows
}

/// The groups of files that reach each other (Tarjan's strongly connected components).
fn circles(arrows: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        arrows: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a Module) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            for next in self.arrows.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut group = Vec::new();
                while let Some(member) = self.stack.pop() {
                    group.push(member.clone());
                    if member == node {
                        break;
                    }
                }
                if group.len() > 1 {
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        arrows,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in arrows.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found
}

/// This tree's `src`, or the one `HOUSE_SRC` names (to check an older tree's plan).
fn files() -> BTreeMap<Module, String> {
    match std::env::var_os("HOUSE_SRC") {
        Some(src) => modules(Path::new(&src)),
        None => modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")),
    }
}

#[test]
fn no_two_files_import_each_other_through_any_chain() {
    let found = circles(&arrows(&files()));
    let shown: Vec<String> = found
        .iter()
        .map(|group| {
            let names: Vec<String> = group.iter().map(|m| m.join("/")).collect();
            names.join(" <-> ")
        })
        .collect();
    assert!(shown.is_empty(), "circles in the import plan: {shown:#?}");
}

#[test]
fn every_top_level_module_imports_only_layers_below_it() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let files = files();
    let unplaced: BTreeSet<&str> = files
        .keys()
        .filter_map(|m| m.first().map(String::as_str))
        .filter(|top| !layer.contains_key(top))
        .collect();
    assert!(
        unplaced.is_empty(),
        "give these a layer in LAYERS: {unplaced:?}"
    );
    let mut up = Vec::new();
    for (from, targets) in arrows(&files) {
        for to in targets {
            let (a, b) = (from[0].as_str(), to[0].as_str());
            if a != b && layer[a] <= layer[b] {
                up.push(format!(
                    "{} -> {} ({a} on layer {}, {b} on {})",
                    from.join("/"),
                    to.join("/"),
                    layer[a],
                    layer[b]
                ));
            }
        }
    }
    assert!(up.is_empty(), "arrows up or sideways: {up:#?}");
}

#[test]
fn the_reader_finds_arrows_in_use_trees_and_paths() {
    let code =
        "use super::{a, b::{C, d}};\npub(crate) use crate::x::Y as Z;\nfn f() { crate::p::q(); }";
    let found: BTreeSet<String> = paths(code).iter().map(|p| p.join("::")).collect();
    for want in [
        "super::a",
        "super::b::C",
        "super::b::d",
        "crate::x::Y",
        "crate::p::q",
    ] {
        assert!(found.contains(want), "{want} missing from {found:?}");
    }
}

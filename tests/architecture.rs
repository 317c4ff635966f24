//! The shape of the code, checked: the library's modules form no import cycle; each layer
//! imports only from its own layer or below (surfaces → app → infrastructure → clock);
//! HTTP handlers never reach the ledger, the store, the writer or the clock themselves;
//! and tests move the clock or poll `common::eventually` instead of sleeping.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its layer: a module may use modules of its own layer
/// or lower, never higher.
const LAYERS: &[(&str, u8)] = &[
    ("allocator", 0),
    ("clock", 0),
    ("agent_token", 1),
    ("config", 1),
    ("finance", 1),
    ("identity", 1),
    ("ledger", 1),
    ("limits", 1),
    ("metrics", 1),
    ("projection_feed", 1),
    ("projector", 1),
    ("store", 1),
    ("tailer", 1),
    ("transport", 1),
    ("writer", 1),
    ("app", 2),
    ("http", 3),
    ("mcp", 3),
    ("console", 3),
    ("cli", 4),
    ("server", 4),
];

fn rust_files(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The code of a file without its comments (a whole-line `//` comment, or the tail after
/// ` // `), so that prose naming a module is not an import.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(|line| match line.find("//") {
            Some(index) if line[..index].matches('"').count() % 2 == 0 => &line[..index],
            _ => line,
        })
        .collect()
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(root: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The top-level modules a file's code names through `crate::`, including grouped imports
/// such as `use crate::{ledger::Ledger, store::Store};`.
fn referenced_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(index) = rest.find("crate::") {
        let after = &rest[index + "crate::".len()..];
        found.extend(path_heads(after));
        rest = after;
    }
    found
}

/// The module names a path names right after its `crate::` or root-reaching `super::`
/// prefix: one name, or the first name of each item of a `{...}` group.
fn path_heads(after: &str) -> Vec<String> {
    if let Some(group) = after.strip_prefix('{') {
        return group_heads(group);
    }
    let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    if name.is_empty() { Vec::new() } else { vec![name] }
}

/// The first name of each item of a `{...}` import group (`group` starts after its `{`),
/// skipping nested groups.
fn group_heads(group: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut depth = 0;
    for character in group.chars() {
        match character {
            '}' if depth == 0 => break,
            ',' if depth == 0 => items.push(String::new()),
            _ => {
                depth += match character {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                if let Some(item) = items.last_mut() {
                    item.push(character);
                }
            }
        }
    }
    items
        .iter()
        .map(|item| item.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
        .filter(|head| !head.is_empty())
        .collect()
}

/// How deep a file's module sits below the crate root: `src/a.rs` and `src/a/mod.rs` are
/// one, `src/a/b.rs` two. A `super::` chain at least this long reaches the crate root.
fn module_depth(root: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(root).unwrap();
    let components = relative.components().count();
    if relative.ends_with("mod.rs") { components - 1 } else { components }
}

/// The names a file's code reaches through `super::` chains that climb to the crate root
/// (`super::super::ledger::Ledger` in `src/app/keys.rs` names `ledger`). Chains that stay
/// inside the file's own top-level module name a sibling, not another module. An inline
/// `mod tests` adds a level this does not see; `module_graph` keeps only real module names,
/// so such a miscount cannot invent an edge to something that is not a module.
fn super_references(code: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(index) = rest.find("super::") {
        let starts_a_path =
            rest[..index].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
        let mut after = &rest[index..];
        let mut levels = 0;
        while let Some(tail) = after.strip_prefix("super::") {
            levels += 1;
            after = tail;
        }
        if starts_a_path && levels >= depth {
            found.extend(path_heads(after));
        }
        rest = after;
    }
    found
}

/// The library's module graph: module -> the modules it names, through `crate::` paths,
/// `use crate::{...}` groups and `super::` chains that reach the crate root.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&root);
    let modules: BTreeSet<String> = files.iter().filter_map(|file| module_of(&root, file)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&root, file) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_lines(&text).join("\n");
        let mut names = referenced_modules(&code);
        names.extend(super_references(&code, module_depth(&root, file)));
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(names.into_iter().filter(|name| *name != module && modules.contains(name)));
    }
    graph
}

/// A cycle of the graph, if it has one, as the path that closes it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_library_has_no_import_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("app") && graph.contains_key("http"), "{graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&graph), None);
    assert_eq!(
        referenced_modules("use crate::{ledger::Ledger, store::{Store, StoreError}};\nlet x = crate::clock::now();"),
        BTreeSet::from(["clock".to_owned(), "ledger".to_owned(), "store".to_owned()])
    );
    assert_eq!(
        referenced_modules("use crate::{\n    clock as _,\n    writer,\n    store::{self, Store},\n};"),
        BTreeSet::from(["clock".to_owned(), "store".to_owned(), "writer".to_owned()])
    );
    // In src/app/keys.rs (depth two): two levels reach the root, one stays in app.
    assert_eq!(
        super_references("use super::super::{ledger::Ledger, store};\nuse super::principal::Principal;", 2),
        BTreeSet::from(["ledger".to_owned(), "store".to_owned()])
    );
    // In src/finance.rs (depth one): one level reaches the root.
    assert_eq!(super_references("use super::cli::Command;", 1), BTreeSet::from(["cli".to_owned()]));
}

#[test]
fn each_layer_uses_only_its_own_layer_or_lower() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    for (module, edges) in module_graph() {
        let Some(&layer) = layers.get(module.as_str()) else {
            violations.push(format!("{module} has no layer in tests/architecture.rs"));
            continue;
        };
        for used in edges {
            match layers.get(used.as_str()) {
                Some(&used_layer) if used_layer > layer => {
                    violations.push(format!("{module} (layer {layer}) uses {used} (layer {used_layer})"))
                }
                _ => {}
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// What an HTTP handler or an MCP tool may not touch: the node's state, its I/O and the
/// time. It calls a use case of `crate::app` instead.
const FORBIDDEN_IN_HTTP: &[&str] = &[
    ".ledger",
    ".store.",
    ".writer.",
    ".clock",
    ".rate_limiter",
    ".key_uses",
    "Utc::now",
    "SystemTime",
    "crate::ledger",
    "crate::store",
    "crate::writer",
    "crate::clock",
    "crate::limits",
];

#[test]
fn surfaces_reach_state_and_time_only_through_the_services() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    // Every surface: a tool and a page are handlers too.
    let surfaces = ["http", "mcp", "console"];
    for file in surfaces.iter().flat_map(|surface| rust_files(&source.join(surface))) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in code_lines(&text).iter().enumerate() {
            for forbidden in FORBIDDEN_IN_HTTP {
                if line.contains(forbidden) {
                    violations.push(format!("{}:{}: {forbidden}", file.display(), number + 1));
                }
            }
        }
    }
    assert!(violations.is_empty(), "handlers must call crate::app instead: {violations:#?}");
}

/// A `sleep(` in a test is allowed only with a `sleep-ok:` reason on the line before (a slow
/// client on purpose); time-driven behaviour moves the test clock, and waiting for another
/// task polls `common::eventually`.
fn unexplained_sleeps(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    (0..lines.len())
        .filter(|&index| lines[index].contains("sleep("))
        .filter(|&index| index == 0 || !lines[index - 1].contains("sleep-ok:"))
        .map(|index| index + 1)
        .collect()
}

#[test]
fn tests_do_not_sleep_to_let_time_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut violations = Vec::new();
    for file in rust_files(&root) {
        if file.starts_with(root.join("common")) || file.ends_with("architecture.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        violations.extend(unexplained_sleeps(&text).into_iter().map(|line| format!("{}:{line}", file.display())));
    }
    assert!(
        violations.is_empty(),
        "move the clock (common::advance_clock) or poll (common::eventually): {violations:#?}"
    );
}

#[test]
fn a_sleep_without_a_reason_is_found() {
    assert_eq!(unexplained_sleeps("a\n    tokio::time::sleep(d).await;\n"), [2]);
    assert!(unexplained_sleeps("// sleep-ok: a slow client\ntokio::time::sleep(d).await;\n").is_empty());
}

//! The core's modules import one another in one direction only, and the bucket layout is a
//! leaf: checked on the source, so that a new `use` that closes a cycle fails the build's tests
//! rather than waiting for a reviewer to notice.
// Reading the crate's own sources is this test's whole job.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its non-test code names as `crate::…`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if !rel.ends_with(".rs") || rel == "lib.rs" || rel.ends_with("tests.rs") {
                continue;
            }
            let top = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    out.entry(top.clone()).or_default().insert(name);
                }
            }
            out.entry(top).or_default();
        }
    }
    out
}

/// A cycle through `start`, if there is one.
fn cycle_through(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in graph.get(at).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_string());
            return Some(cycle);
        }
        if !path.contains(next) {
            path.push(next.clone());
            if let Some(c) = cycle_through(graph, start, next, path) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_module_of_the_core_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.contains_key("manifest") && graph.contains_key("plan"));
    for start in graph.keys() {
        let mut path = vec![start.clone()];
        if let Some(cycle) = cycle_through(&graph, start, start, &mut path) {
            panic!("import cycle in labctl-core: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_bucket_layout_is_a_leaf() {
    let graph = imports();
    let layout = &graph["layout"];
    assert!(
        layout.iter().all(|m| m == "checksum"),
        "layout may use only checksums, it uses {layout:?}"
    );
}

//! The core's modules import one another in one direction only, and the bucket layout is a
//! leaf: checked on the source, so that a new `use` that closes a cycle fails the build's tests
//! rather than waiting for a reviewer to notice.
// Reading the crate's own sources is this test's whole job.
#![allow(clippy::disallowed_methods)]

#[path = "support/layering.rs"]
mod layering;

use std::path::Path;

fn imports() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    layering::imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_module_of_the_core_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.contains_key("manifest") && graph.contains_key("plan"));
    if let Some(cycle) = layering::first_cycle(&graph) {
        panic!("import cycle in labctl-core: {}", cycle.join(" → "));
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

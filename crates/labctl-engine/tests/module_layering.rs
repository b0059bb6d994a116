//! The engine's modules import one another in one direction only: the jobs of a run (apply's
//! changes, promotion, stage, the scheduler) build on leaves (the context, records, labelled
//! copies, acquiring bytes), never on one another in a circle. Checked on the source.
// Reading the crate's own sources is this test's whole job.
#![allow(clippy::disallowed_methods)]

#[path = "../../labctl-core/tests/support/layering.rs"]
mod layering;

use std::path::Path;

#[test]
fn no_module_of_the_engine_imports_one_that_imports_it_back() {
    let graph = layering::imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.contains_key("execute") && graph.contains_key("promote"));
    if let Some(cycle) = layering::first_cycle(&graph) {
        panic!("import cycle in labctl-engine: {}", cycle.join(" → "));
    }
}

#[test]
fn promotion_stage_and_the_scheduler_do_not_import_execute() {
    let graph = layering::imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for job in ["promote", "stage", "schedule"] {
        assert!(
            !graph[job].contains("execute"),
            "{job} imports execute: {:?}",
            graph[job]
        );
    }
}

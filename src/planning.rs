//! Computing a plan as every command shows it: the engine's planner, reporting on stderr.

use std::sync::Arc;

use crate::failure::Failure;
use crate::graph::DependencyGraph;
use crate::manifest::Manifest;
use crate::store::Store;

pub use labctl_engine::planner::{PlanRequest, Planned};

/// Reads the store and computes the plan, reporting on stderr (warnings, a records counter).
pub async fn compute(
    manifest: &Manifest,
    graph: &DependencyGraph,
    store: &Arc<dyn Store>,
    request: &PlanRequest,
) -> Result<Planned, Failure> {
    labctl_engine::planner::compute(manifest, graph, store, request, &StderrEvents::default()).await
}

/// The planner's events, as every command shows them: warnings in yellow, the records counter.
#[derive(Default)]
pub struct StderrEvents {
    counter: std::sync::Mutex<Option<crate::progress::Counter>>,
}

impl labctl_engine::planner::PlanEvents for StderrEvents {
    fn warning(&self, message: &str) {
        eprintln!("{} {message}", console::style("warning:").yellow());
    }

    fn reading_state(&self, store: &str, records_only: bool) {
        eprintln!(
            "Reading state from {store}{}",
            if records_only { " (records only)" } else { "" }
        );
        *self.counter.lock().unwrap() =
            Some(crate::progress::Counter::new("Reading state: records"));
    }

    fn records_read(&self, done: usize, total: usize) {
        if let Some(c) = self.counter.lock().unwrap().as_ref() {
            c.update(done, total);
        }
    }

    fn state_read(&self) {
        self.counter.lock().unwrap().take();
    }
}

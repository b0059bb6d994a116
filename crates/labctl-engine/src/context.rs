//! What every job of a run shares ([`ApplyContext`]) and what a run reports: the leaf the
//! scheduler, apply, promotion and stage all build on.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::checksum::Checksum;
use crate::pipeline;
use crate::plan::Action;
use crate::progress::Progress;
use crate::store::Store;

pub struct ApplyContext {
    pub store: Arc<dyn Store>,
    pub client: reqwest::Client,
    pub settings: pipeline::Settings,
    pub parallelism: usize,
    pub progress: Arc<dyn Progress>,
    pub cancel: watch::Receiver<bool>,
    /// Where each image of the plan is published, by name (for `{{ images.NAME.url }}`).
    pub destinations: HashMap<String, String>,
    /// The manifest's directory: Packer template paths are relative to it.
    pub base_dir: std::path::PathBuf,
    /// The CI run every record written names.
    pub ci_run: Option<crate::state::record::CiRun>,
    /// Never printed: what build output has redacted.
    pub secrets: Vec<String>,
    /// `apply --staged`: what the plan's legs staged, by image. The bytes of a create or replace
    /// are then copied from their blob instead of downloaded or built.
    pub staged: Option<Arc<crate::staged::Staged>>,
    /// Every record this run wrote, as the store took it: the consumer index is built from them
    /// without asking the store again.
    pub written: std::sync::Mutex<crate::state::refresh::Written>,
}

pub use crate::progress::{Done, Failed, Outcome, Published, Skip};

#[derive(Debug, Default)]
pub struct Report {
    /// `(name, action, outcome)` in plan order.
    pub results: Vec<(String, Action, Outcome)>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|(_, _, o)| matches!(o, Outcome::Failed(_) | Outcome::Skipped(_)))
    }
}

/// What was done and the checksum dependents will see, or why the change failed.
pub(crate) type ChangeResult = anyhow::Result<(Done, Option<Checksum>)>;

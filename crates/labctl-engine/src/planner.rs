//! The planner: reads the store and computes the plan. `plan`, `apply` and `drift` call it, and
//! the fan-out will, so that all of them agree on what is to be done.

use std::sync::Arc;

use crate::failure::{Failure, WithHint};
use crate::graph::DependencyGraph;
use crate::manifest::Manifest;
use crate::plan::{self, Desired, Plan, PlanContext, PlanOptions};
use crate::state::refresh::Objects;
use crate::store::Store;

/// What the planner tells its caller while it works (the engine prints nothing itself).
pub trait PlanEvents: Sync {
    /// Something the plan can go on without, but a person should know (a checksum list that
    /// could not be read, …).
    fn warning(&self, message: &str);
    /// Reading the records (and, unless `records_only`, looking at the objects) begins.
    fn reading_state(&self, store: &str, records_only: bool);
    /// `done` of `total` records read.
    fn records_read(&self, done: usize, total: usize);
    /// Reading the state is over (successfully or not).
    fn state_read(&self);
}

/// Events nobody watches.
pub struct Quiet;

impl PlanEvents for Quiet {
    fn warning(&self, _: &str) {}
    fn reading_state(&self, _: &str, _: bool) {}
    fn records_read(&self, _: usize, _: usize) {}
    fn state_read(&self) {}
}

/// What a plan is asked for, beyond the manifest and the store.
pub struct PlanRequest {
    pub prune: bool,
    /// `--allow-empty`: an empty manifest may prune everything.
    pub allow_empty: bool,
    pub replace: Vec<String>,
    /// How much to learn about the objects.
    pub objects: Objects,
    /// Leave checksum lists unfetched.
    pub offline: bool,
}

/// A plan with what it was computed from.
pub struct Planned {
    pub desired: Vec<Desired>,
    pub actual: crate::state::ActualState,
    pub plan: Plan,
}

/// Reads the store and computes the plan: the one computation behind `plan`, `apply` and
/// `drift`, so that the three agree on what is to be done.
pub async fn compute(
    manifest: &Manifest,
    graph: &DependencyGraph,
    store: &Arc<dyn Store>,
    request: &PlanRequest,
    events: &dyn PlanEvents,
) -> Result<Planned, Failure> {
    let (prune, replace) = (request.prune, &request.replace);
    let refresh = request.objects != Objects::NotChecked;
    for name in replace {
        if manifest.image(name).is_none() {
            return Err(anyhow::anyhow!(
                "--replace names `{name}`, which is not an image in the manifest"
            ))
            .hint("use an image name from the manifest");
        }
    }
    let mut desired = crate::desired::build(manifest, graph)?;
    if !request.offline {
        let client = crate::source::http::client();
        for warning in crate::desired::resolve_lists(&mut desired, &client).await? {
            events.warning(&warning.to_string());
        }
    }
    events.reading_state(&store.url(), !refresh);
    let read = crate::state::refresh::read_reporting(
        store.clone(),
        request.objects,
        Default::default(),
        &|d, t| events.records_read(d, t),
    )
    .await;
    events.state_read();
    let mut actual = read?;
    if prune && !request.allow_empty && desired.is_empty() && !actual.records.is_empty() {
        return Err(anyhow::anyhow!(
            "the manifest declares no images: --prune would delete all {} in the store",
            actual.records.len()
        ))
        .hint("check that the manifest is the one you meant; to delete every image, add --allow-empty");
    }
    if refresh {
        let wanted = desired
            .iter()
            .map(|d| crate::manifest::object_key(&d.spec.destination));
        crate::state::refresh::head_unrecorded(store.clone(), &mut actual, wanted).await?;
    }
    let plan = plan::compute(
        &desired,
        &actual,
        &PlanOptions {
            prune,
            replace: replace.to_vec(),
            index_public_key: manifest.index.minisign_public_key.clone(),
        },
        PlanContext {
            manifest: manifest.path.display().to_string(),
            manifest_digest: manifest.digest.clone(),
            store: store.url(),
        },
    )?;
    Ok(Planned {
        desired,
        actual,
        plan,
    })
}

//! Whether a saved plan still describes the store and the manifest: refused, with the reasons,
//! when either moved on since it was made.

use std::borrow::Cow;
use std::sync::Arc;

use labctl_core::hint::Hint;

use crate::graph::DependencyGraph;
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::store::Store;

/// A saved plan the store or the manifest has moved on from.
#[derive(Debug, thiserror::Error)]
#[error("the plan is stale: {}", .0.join("; "))]
pub struct StalePlan(pub Vec<String>);

impl Hint for StalePlan {
    fn hint(&self) -> Option<Cow<'static, str>> {
        Some(Cow::Borrowed(
            "make a new plan with `labctl plan --out FILE`, review it, and apply that",
        ))
    }
}

/// Refuses `plan` when the manifest, the store or a record changed since it was made.
pub async fn refuse_stale(
    plan: &Plan,
    manifest: &Manifest,
    graph: &DependencyGraph,
    store: &Arc<dyn Store>,
) -> anyhow::Result<()> {
    let desired = crate::desired::build(manifest, graph)?;
    let records = crate::state::refresh::record_etags(store.as_ref()).await?;
    let stale = crate::stale::reasons(plan, &manifest.digest, &store.url(), &desired, &records);
    if !stale.is_empty() {
        return Err(StalePlan(stale).into());
    }
    Ok(())
}

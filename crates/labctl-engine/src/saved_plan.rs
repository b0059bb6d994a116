//! A plan saved with `labctl plan --out FILE`, read back by apply and stage: checked to be one
//! labctl made, from this manifest, for this store. Whether it is still current is checked
//! against the store by the engine (`session::refuse_stale`), under the lock for an apply.

use anyhow::Context;

use crate::failure::{Failure, WithHint};
use crate::plan::Plan;
use crate::store::Store;
use labctl_transfer::local_file::{self, Symlinks};

/// Refuses a saved plan made for another store.
pub fn refuse_other_store(
    plan: &Plan,
    store: &dyn Store,
    command: &str,
    path: &std::path::Path,
) -> Result<(), Failure> {
    if plan.store == store.url() {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "the plan was made for {}, but this {command} would use {}",
        plan.store,
        store.url()
    ))
    .hint(format!(
        "{command} it with the store it was made for: labctl {command} --store {} {}",
        plan.store,
        path.display()
    ))
}

/// Far above any real plan (10,000 images are ~30 MB of JSON); a file beyond it is not read.
const MAX_PLAN_BYTES: u64 = 256 * 1024 * 1024;

/// Reads a saved plan, checks it is one labctl made, and that it was made from the manifest
/// this apply reads (a plan made with `--manifest` is applied with the same `--manifest`).
pub fn read_saved_plan(
    path: &std::path::Path,
    manifest: &std::path::Path,
) -> Result<SavedPlan, Failure> {
    let text = local_file::read(path, MAX_PLAN_BYTES, Symlinks::Follow)
        .with_context(|| format!("cannot read the plan `{}`", path.display()))?;
    let id = crate::fanout::plan_id(&text);
    let plan: Plan = serde_json::from_slice(&text)
        .with_context(|| format!("`{}` is not a labctl plan", path.display()))
        .hint("save a plan with `labctl plan --out FILE`; a plan file is not edited by hand")?;
    crate::plan::check::check(&plan)
        .with_context(|| {
            format!(
                "`{}` is not a plan labctl made (edited or corrupted)",
                path.display()
            )
        })
        .hint("make a new plan with `labctl plan --out FILE`, review it, and apply that")?;
    // Paths as written can differ for the same file (another working directory): compared
    // only when both name a file that exists from here.
    let planned = std::path::Path::new(&plan.manifest);
    if let (Ok(planned_real), Ok(now_real)) = (planned.canonicalize(), manifest.canonicalize()) {
        if planned_real != now_real {
            return Err(anyhow::anyhow!(
                "the plan was made from the manifest `{}`, but this apply reads `{}`",
                plan.manifest,
                manifest.display()
            ))
            .hint(format!(
                "apply it with the manifest it was made from: labctl apply --manifest {} {}",
                plan.manifest,
                path.display()
            ));
        }
    }
    Ok(SavedPlan { plan, id })
}

/// A plan file as read, and the name its stage results go under.
pub struct SavedPlan {
    pub plan: Plan,
    pub id: String,
}

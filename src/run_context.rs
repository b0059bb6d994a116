//! What the engine needs to run a plan's changes or stage its units, from the flags apply and
//! stage share and the environment.

use std::collections::HashMap;
use std::sync::Arc;

use crate::apply::ApplyContext;
use crate::pipeline::{self, MIB};
use crate::plan::Plan;
use crate::store::Store;

/// How bytes move: the flags apply and stage share.
pub struct Transfer {
    pub part_size_mib: u16,
    pub parts_in_flight: u16,
    pub parallelism: u16,
}

/// What the engine needs to run the plan's changes (or stage its units).
pub fn context(
    plan: &Plan,
    manifest: &crate::manifest::Manifest,
    store: Arc<dyn Store>,
    transfer: &Transfer,
    cancel: tokio::sync::watch::Receiver<bool>,
    staged: Option<Arc<labctl_engine::staged::Staged>>,
) -> ApplyContext {
    ApplyContext {
        store,
        client: crate::source::http::client(),
        settings: pipeline::Settings::new(
            transfer.part_size_mib as usize * MIB,
            transfer.parts_in_flight as usize,
        ),
        parallelism: transfer.parallelism as usize,
        progress: Arc::from(crate::progress::for_stderr()),
        cancel,
        // Everything else the executor needs comes from the plan's changes.
        destinations: plan
            .changes
            .iter()
            .filter_map(|c| {
                let after = c.after.as_ref()?;
                Some((c.name.clone(), after.spec.destination.clone()))
            })
            .collect::<HashMap<_, _>>(),
        base_dir: manifest.base_dir.clone(),
        ci_run: crate::github::ci_run(),
        staged,
        written: Default::default(),
        secrets: {
            let env = crate::settings::env();
            crate::source::packer::redactions(
                env.packer_secrets
                    .iter()
                    .chain(&env.signing_key)
                    .chain(&env.signing_password)
                    .map(String::as_str),
            )
        },
    }
}

//! The apply engine: what `plan`, `apply` and `drift` share, as a library whose public API is
//! what the command line calls.
//!
//! - [`planner`]: reads the store and computes the plan (the one computation behind `plan`,
//!   `apply` and `drift`, so that they agree on what is to be done);
//! - [`execute`]: runs a plan's changes in dependency order, a failed image skipping only its
//!   dependents;
//! - [`lock`]: the store lock protocol (`.labctl/lock.json`, conditional create);
//! - [`index`]: the consumer index written after the images;
//! - [`stage`] and [`promote`]: the fan-out, where legs stage verified bytes without the lock
//!   and one promotion copies them into `images/` under it;
//! - [`failure`]: an error with its cause chain and the next step to take.
//!
//! The engine reads no environment: who runs it is told once ([`set_run_identity`]), progress
//! and warnings go to the caller's [`progress::Progress`] and [`planner::PlanEvents`].

pub mod cleanup;
pub mod desired;
pub mod execute;
pub mod failure;
pub mod index;
pub mod lock;
pub mod planner;
pub mod promote;
pub mod stage;

use std::sync::OnceLock;

pub use execute::{execute, ApplyContext, Outcome, Report};
pub use labctl_core::{history, stale};
pub use labctl_store::stranded;

// The engine's own names for the layers below it, as the command line knows them.
pub(crate) use labctl_core::{
    checksum, consumer_index, fanout, graph, layout, manifest, plan, signing, spec, timefmt, units,
};
pub(crate) use labctl_store as store;
pub(crate) use labctl_transfer::{pipeline, progress, source, template_hash};

pub(crate) mod state {
    pub use labctl_core::state::*;
    pub use labctl_store::refresh;
}

/// Who runs labctl, as the lock and the consumer index name it. The command line resolves it
/// from the environment once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunIdentity {
    /// `GITHUB_ACTOR`, else `USER`.
    pub user: Option<String>,
    /// `HOSTNAME`, when `/etc/hostname` says nothing.
    pub hostname: Option<String>,
    /// The CI run (`GITHUB_RUN_ID`, with its URL when known).
    pub ci_run: Option<labctl_core::state::record::CiRun>,
}

static RUN_IDENTITY: OnceLock<RunIdentity> = OnceLock::new();

/// Says who runs the engine; the first call wins (the command line makes it at startup).
pub fn set_run_identity(identity: RunIdentity) {
    let _ = RUN_IDENTITY.set(identity);
}

/// Who runs the engine: unknown until [`set_run_identity`] is called.
pub fn run_identity() -> &'static RunIdentity {
    RUN_IDENTITY.get_or_init(RunIdentity::default)
}

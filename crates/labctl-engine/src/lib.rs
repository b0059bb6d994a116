//! The apply engine: what `plan`, `apply` and `drift` share, as a library whose public API is
//! what the command line calls.
//!
//! - [`planner`]: reads the store and computes the plan (the one computation behind `plan`,
//!   `apply` and `drift`, so that they agree on what is to be done);
//! - [`execute`]: runs a plan's changes in dependency order, a failed image skipping only its
//!   dependents;
//! - [`lock`]: the store lock protocol (`.labctl/lock.json`, conditional create), which lives
//!   with the store's other protocols in `labctl-store`;
//! - [`index`]: the consumer index written after the images;
//! - [`stage`] and [`promote`]: the fan-out, where legs stage verified bytes without the lock
//!   and one promotion copies them into `images/` under it;
//! - [`failure`]: an error with its cause chain and the next step to take.
//!
//! The engine reads no environment: who runs it is told once ([`set_run_identity`]), progress
//! and warnings go to the caller's [`progress::Progress`] and [`planner::PlanEvents`].

mod acquire;
pub mod bump;
pub mod cleanup;
pub mod context;
pub mod desired;
pub mod drift;
pub mod execute;
pub mod failure;
pub mod halt;
pub mod index;
mod labelled;
pub mod open;
pub mod outdated;
pub mod pin;
pub mod planner;
pub mod promote;
pub mod pull_request;
mod records;
pub mod saved_plan;
mod schedule;
pub mod session;
pub mod stage;
pub mod staged;
mod stale_plan;

pub use context::{ApplyContext, Failed, Outcome, Report};
pub use execute::execute;
pub use labctl_core::{history, stale};
pub use labctl_store::{lock, stranded};

// The engine's own names for the layers below it, as the command line knows them.
pub(crate) use labctl_core::{
    checksum, consumer_index, fanout, graph, layout, manifest, plan, signing, spec, timefmt,
};
pub(crate) use labctl_store as store;
pub(crate) use labctl_transfer::{pipeline, progress, source, template_hash};

pub(crate) mod state {
    pub use labctl_core::state::*;
    pub use labctl_store::refresh;
}

// Who runs labctl: resolved once by the command line, read by the lock and the index writer.
pub use labctl_store::identity::{run_identity, set_run_identity, RunIdentity};

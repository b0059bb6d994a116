//! Apply: executes a plan, image by image in dependency order, keeping going past failures.

pub mod execute;
pub mod index;
pub mod lock;

pub use labctl_core::{history, stale};
pub use labctl_store::stranded;

pub use execute::{execute, ApplyContext, Outcome, Report};

//! Apply: executes a plan, image by image in dependency order, keeping going past failures.

pub mod execute;
pub mod history;
pub mod index;
pub mod lock;
pub mod stale;
pub mod stranded;

pub use execute::{execute, ApplyContext, Outcome, Report};

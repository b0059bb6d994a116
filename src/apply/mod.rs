//! Apply: the engine crate's executor, lock and index writer, under the names the commands use.

pub use labctl_engine::{
    execute, history, index, lock, stale, stranded, ApplyContext, Outcome, Report,
};

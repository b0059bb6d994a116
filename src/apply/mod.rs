//! Apply: the engine crate's executor, lock and index writer, under the names the commands use.

pub use labctl_engine::{
    cleanup, execute, history, index, lock, promote, stage, stale, stranded, ApplyContext, Outcome,
    Report,
};

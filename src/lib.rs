//! labctl keeps an S3-compatible bucket of machine images in the state a Git-tracked manifest
//! declares: `plan` shows what would change, `apply` makes it so.
//!
//! The work is split by what it may touch: `labctl-core` is pure (manifest, plan, records,
//! drift, rendering), `labctl-store` talks to stores, `labctl-transfer` moves bytes (HTTP,
//! Packer, the publish pipeline), `labctl-engine` plans and applies (planner, executor, lock,
//! index writer), and this crate is the command line: flags and environment resolved once,
//! commands, and the views that print what they do.

// Printing to a closed pipe (`labctl plan | head`, a log reader that went away) must not panic
// mid-run with the lock held and uploads open: these shadow std's printing macros in this crate
// (they are defined before every module, so every module sees them) and drop what cannot be
// written. The exit code still tells how the run ended.
#[macro_export]
macro_rules! println {
    () => { $crate::write_out(false, format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_out(false, format_args!("{}\n", format_args!($($arg)*))) };
}
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::write_out(false, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::write_out(true, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! eprintln {
    () => { $crate::write_out(true, format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_out(true, format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to stdout (or stderr), ignoring a failed write: see the macros above.
#[doc(hidden)]
pub fn write_out(to_stderr: bool, text: std::fmt::Arguments) {
    use std::io::Write;
    let _ = if to_stderr {
        std::io::stderr().lock().write_fmt(text)
    } else {
        std::io::stdout().lock().write_fmt(text)
    };
}

pub mod apply;
pub mod cli;
pub mod commands;
pub mod github;
pub mod interrupt;
pub mod planning;
pub mod progress;
pub mod run_context;
pub mod settings;
pub mod store_lock;
pub mod tracked;
pub mod upstream;

pub use labctl_core::{
    checksum, consumer_index, diagnostic, drift, fanout, graph, hint, history, layout, pin, plan,
    render, spec, timefmt, units,
};
pub use labctl_engine::saved_plan;
pub use labctl_engine::{desired, failure};
pub use labctl_store as store;
pub use labctl_transfer::{manifest_dir, pipeline, serve, source, template_hash, verify};

/// The manifest model and validation (core), read from a file (here).
pub mod manifest {
    pub use crate::manifest_dir::load;
    pub use labctl_core::manifest::*;
}

/// Actual state as data (core), and reading it from a store.
pub mod state {
    pub use labctl_core::state::*;
    pub use labctl_store::refresh;
}

/// The index signing key (core), and where it comes from (the environment, read here).
pub mod signing {
    pub use labctl_core::signing::*;

    /// The signer for `public_key`, with the secret key (and its password, if encrypted) from
    /// `LABCTL_MINISIGN_SECRET_KEY` / `LABCTL_MINISIGN_PASSWORD`.
    pub fn from_env(public_key: &str) -> Result<IndexSigner, SigningError> {
        let env = crate::settings::env();
        IndexSigner::from_parts(
            public_key,
            env.signing_key.as_deref(),
            env.signing_password.as_deref(),
        )
    }
}

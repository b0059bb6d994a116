//! One function per command, each returning the process exit status.

pub mod apply;
pub mod bump;
pub mod cleanup;
pub mod completions;
pub mod doctor;
pub mod drift;
pub mod force_unlock;
pub mod graph;
pub mod history;
pub mod list;
pub mod outdated;
pub mod pin;
pub mod plan;
pub mod stage;
pub mod validate;
pub mod verify;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::failure::{Failure, WithHint};
use crate::graph::DependencyGraph;
use crate::manifest::{self, LoadError, Manifest, Rules};
use crate::store::Store;

pub const EXIT_CHANGES: u8 = 2;

/// The rules that depend on the environment (test-only loopback sources).
pub fn rules_from_env() -> Rules {
    Rules {
        allow_insecure_loopback: crate::settings::env().allow_insecure_loopback,
        allow_pin: false,
    }
}

/// Loads the manifest; invalid manifests print every problem and fail.
pub fn load_manifest(path: &Path) -> Result<(Manifest, DependencyGraph), Failure> {
    match manifest::load(path, rules_from_env()) {
        Ok(m) => Ok(m),
        Err(LoadError::Invalid(d)) => Err(Failure {
            error: anyhow::Error::new(d),
            hint: None,
        }),
        Err(e @ LoadError::Read { .. }) => Err(e).hint(format!(
            "labctl looks for the manifest at `{}`; pass --manifest PATH to use another file",
            path.display()
        )),
    }
}

/// The manifest when the file exists (for its spec.store), else nothing.
pub fn optional_manifest(path: &Path) -> Result<Option<Manifest>, Failure> {
    if path.exists() {
        load_manifest(path).map(|(m, _)| Some(m))
    } else {
        Ok(None)
    }
}

/// Opens the store named by `--store`/`LABCTL_STORE`, else `E2_BUCKET`, else the manifest's
/// `spec.store` (`labctl_engine::open`), with what the environment says.
pub async fn open_store(
    flag: Option<&str>,
    manifest: Option<&Manifest>,
) -> Result<Arc<dyn Store>, Failure> {
    labctl_engine::open::open_store(flag, manifest, &crate::settings::env().store).await
}

pub fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

pub use labctl_engine::failure::one_line;

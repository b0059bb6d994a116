//! One function per command, each returning the process exit status.

pub mod graph;
pub mod list;
pub mod plan;
pub mod validate;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::failure::{Failure, WithHint};
use crate::graph::DependencyGraph;
use crate::manifest::{self, LoadError, Manifest, Rules};
use crate::store::{fs::FsStore, Store, StoreLocation};

pub const EXIT_CHANGES: u8 = 2;

/// The rules that depend on the environment (test-only loopback sources).
pub fn rules_from_env() -> Rules {
    Rules {
        allow_insecure_loopback: std::env::var("LABCTL_ALLOW_INSECURE_LOOPBACK").as_deref()
            == Ok("1"),
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

/// Opens the store named by `--store`/`LABCTL_STORE`, else the manifest's `spec.store`.
pub fn open_store(
    flag: Option<&str>,
    manifest: Option<&Manifest>,
) -> Result<Arc<dyn Store>, Failure> {
    let location = match (flag, manifest.and_then(|m| m.store.as_ref())) {
        (Some(url), _) => StoreLocation::parse(url)?,
        (None, Some(config)) => StoreLocation::from_config(config),
        (None, None) => {
            return Err(anyhow::anyhow!("no store given")).hint(
                "pass --store DIR (or s3://BUCKET), set LABCTL_STORE, or add spec.store to the manifest",
            )
        }
    };
    match location {
        StoreLocation::Dir(dir) => {
            if !dir.is_dir() {
                return Err(anyhow::anyhow!(
                    "store directory `{}` does not exist",
                    dir.display()
                ))
                .hint("create it first (an empty directory is an empty store), or check the path");
            }
            Ok(Arc::new(FsStore::new(dir)))
        }
        StoreLocation::S3 { bucket, .. } => Err(anyhow::anyhow!(
            "cannot open s3://{bucket}: this build of labctl has no S3 backend yet"
        ))
        .hint("plan against a directory with the bucket's layout: --store DIR"),
    }
}

pub fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

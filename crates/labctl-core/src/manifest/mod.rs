//! The manifest (`images/images.yaml`): parsing, validation and the desired-state model.

pub mod cloud_sync;
pub mod model;
pub mod reference;
pub mod schema;
mod track;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use model::*;
pub use schema::Rules;

use crate::checksum::Checksum;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::graph::DependencyGraph;

/// Manifests are small; anything larger than this is not one.
pub const MAX_MANIFEST_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read manifest `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

/// What validation may look at in the manifest's directory. The core reads no files: the CLI
/// passes the real directory, tests pass what they need. Paths are as the manifest writes them,
/// relative to its directory.
pub trait ManifestDir {
    /// A small regular file inside the directory, at most `limit` bytes; otherwise why not.
    fn read_file(&self, rel: &str, limit: u64) -> Result<String, String>;
    /// Whether `rel` is a directory inside the directory.
    fn check_dir(&self, rel: &str) -> Result<(), DirProblem>;
}

/// Why a directory reference cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirProblem {
    /// Absolute, with `..`, or leading out through a symbolic link.
    Outside(String),
    /// Inside, but not there (or not a directory).
    Missing,
}

/// A directory with nothing in it: for validating manifests that reference no files.
pub struct NoFiles;

impl ManifestDir for NoFiles {
    fn read_file(&self, _: &str, _: u64) -> Result<String, String> {
        Err("no such file".into())
    }
    fn check_dir(&self, _: &str) -> Result<(), DirProblem> {
        Err(DirProblem::Missing)
    }
}

/// Validates manifest bytes; `path` is used in messages, `base_dir` is recorded for finding
/// Packer templates, and `dir` answers for the files the manifest references.
pub fn parse(
    bytes: &[u8],
    path: &Path,
    base_dir: &Path,
    dir: &dyn ManifestDir,
    rules: Rules,
) -> Result<(Manifest, DependencyGraph), LoadError> {
    let file = path.display().to_string();
    let fail = |items: Vec<Diagnostic>| {
        LoadError::Invalid(Diagnostics {
            file: file.clone(),
            items,
        })
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        fail(vec![Diagnostic::new(
            Default::default(),
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
        .hint("a manifest is a YAML text file")])
    })?;
    let root = yaml::parse(text)
        .map_err(|(loc, msg)| fail(vec![Diagnostic::new(loc, format!("invalid YAML: {msg}"))]))?;
    let read = schema::read(&root, dir, rules);
    let mut diagnostics = read.diagnostics;
    let graph = DependencyGraph::build(&read.images);
    if let Err(cycle) = &graph {
        let first = read
            .images
            .iter()
            .find(|i| i.name == cycle.0[0])
            .map(|i| i.loc)
            .unwrap_or_default();
        diagnostics.push(
            Diagnostic::new(first, cycle.to_string())
                .image(Some(&cycle.0[0]))
                .hint("remove one of these dependsOn entries or references"),
        );
    }
    if !diagnostics.is_empty() {
        diagnostics.sort_by_key(|d| d.loc);
        return Err(fail(diagnostics));
    }
    let manifest = Manifest {
        path: path.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        digest: Checksum::sha256(bytes),
        name: read.name,
        store: read.store,
        index: read.index,
        images: read.images,
    };
    Ok((manifest, graph.expect("checked above")))
}

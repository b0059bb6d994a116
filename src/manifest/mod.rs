//! The manifest (`images/images.yaml`): parsing, validation and the desired-state model.

pub mod model;
pub mod reference;
pub mod schema;
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

/// Reads and validates a manifest, reporting every problem at once.
pub fn load(path: &Path, rules: Rules) -> Result<(Manifest, DependencyGraph), LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let file = path.display().to_string();
    let invalid = |d: Diagnostic| {
        LoadError::Invalid(Diagnostics {
            file: file.clone(),
            items: vec![d],
        })
    };
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(Diagnostic::new(
            Default::default(),
            format!(
                "file is {} bytes; a manifest may be at most {} bytes",
                meta.len(),
                MAX_MANIFEST_BYTES
            ),
        )));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    parse(&bytes, path, &base_dir, rules)
}

/// Validates manifest bytes; `path` is used in messages, `base_dir` to find Packer templates.
pub fn parse(
    bytes: &[u8],
    path: &Path,
    base_dir: &Path,
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
    let read = schema::read(&root, base_dir, rules);
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

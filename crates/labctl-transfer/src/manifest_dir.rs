//! The manifest's file and directory, read from disk: the one place validation touches the
//! filesystem, behind the core's [`ManifestDir`].

use std::path::{Path, PathBuf};

use crate::local_file::{self, ReadError, Symlinks};
use labctl_core::diagnostic::{Diagnostic, Diagnostics};
use labctl_core::graph::DependencyGraph;
use labctl_core::manifest::{
    parse, DirProblem, LoadError, Manifest, ManifestDir, Rules, MAX_MANIFEST_BYTES,
};

/// The directory that holds the manifest. File references stay inside it.
pub struct Directory(pub PathBuf);

impl ManifestDir for Directory {
    fn read_file(&self, rel: &str, limit: u64) -> Result<String, String> {
        read_inside(&self.0, rel, limit)
    }

    fn check_dir(&self, rel: &str) -> Result<(), DirProblem> {
        let dir = inside(&self.0, rel).map_err(DirProblem::Outside)?;
        if dir.is_dir() {
            Ok(())
        } else {
            Err(DirProblem::Missing)
        }
    }
}

/// Reads and validates a manifest, reporting every problem at once.
pub fn load(path: &Path, rules: Rules) -> Result<(Manifest, DependencyGraph), LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = path.display().to_string();
    let invalid = |message: String| {
        LoadError::Invalid(Diagnostics {
            file: file.clone(),
            items: vec![Diagnostic::new(Default::default(), message)],
        })
    };
    let bytes =
        local_file::read(path, MAX_MANIFEST_BYTES, Symlinks::Follow).map_err(|e| match e {
            ReadError::NotFound(e) | ReadError::Io(e) => read_err(e),
            ReadError::NotAFile => invalid(e.to_string()),
            ReadError::TooLarge { limit } => invalid(format!(
                "file is larger than {limit} bytes; a manifest may be at most {limit} bytes"
            )),
        })?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    parse(&bytes, path, &base_dir, &Directory(base_dir.clone()), rules)
}

/// Replaces the manifest with `text` atomically, keeping its permissions: a reader (or a run
/// killed half way) sees the old file or the new one, never a part of either.
pub fn write(path: &Path, text: &str) -> Result<(), WriteError> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let beside = |source| WriteError {
        what: "write a new manifest beside",
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(beside)?;
    tmp.write_all(text.as_bytes()).map_err(beside)?;
    tmp.as_file().sync_all().ok();
    let permissions = std::fs::metadata(path).map(|m| m.permissions()).ok();
    tmp.persist(path).map_err(|e| WriteError {
        what: "replace the manifest",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    if let Some(p) = permissions {
        let _ = std::fs::set_permissions(path, p);
    }
    Ok(())
}

/// The manifest could not be replaced; it is as it was.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", path.display())]
pub struct WriteError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Checks that `rel` names something inside `base`: relative, no `..`, and no symlink on the
/// way that leads out. A manifest comes from a pull request: its file references must not read
/// the runner's files.
pub fn inside(base: &Path, rel: &str) -> Result<std::path::PathBuf, String> {
    use std::path::Component;
    let path = Path::new(rel);
    if rel.is_empty() || path.is_absolute() {
        return Err("must be a path relative to the manifest's directory".into());
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err("must not contain `..`".into());
    }
    let joined = base.join(path);
    let (Ok(real_base), Ok(real)) = (base.canonicalize(), joined.canonicalize()) else {
        // Does not exist (yet): nothing to read, and the caller says so.
        return Ok(joined);
    };
    if !real.starts_with(&real_base) {
        return Err("leads outside the manifest's directory through a symbolic link".into());
    }
    Ok(joined)
}

/// Reads a small regular file inside `base`, at most `limit` bytes.
pub fn read_inside(base: &Path, rel: &str, limit: u64) -> Result<String, String> {
    let path = inside(base, rel)?;
    local_file::read_text(&path, limit, Symlinks::Follow).map_err(|e| e.to_string())
}

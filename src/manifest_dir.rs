//! The manifest's file and directory, read from disk: the one place validation touches the
//! filesystem, behind the core's [`ManifestDir`].

use std::path::{Path, PathBuf};

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
    use std::io::Read;
    // Looked at before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let file = path.display().to_string();
    let invalid = |d: Diagnostic| {
        LoadError::Invalid(Diagnostics {
            file: file.clone(),
            items: vec![d],
        })
    };
    if !meta.is_file() {
        return Err(invalid(Diagnostic::new(
            Default::default(),
            "is not a regular file".to_string(),
        )));
    }
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
    // Read no further than the limit, whatever the size said a moment ago.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(invalid(Diagnostic::new(
            Default::default(),
            format!("file is larger than {MAX_MANIFEST_BYTES} bytes, the most a manifest may be"),
        )));
    }
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    parse(&bytes, path, &base_dir, &Directory(base_dir.clone()), rules)
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
    use std::io::Read;
    let path = inside(base, rel)?;
    let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut text = String::new();
    std::fs::File::open(&path)
        .map_err(|e| e.to_string())?
        .take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > limit {
        return Err(format!("is larger than {limit} bytes"));
    }
    Ok(text)
}

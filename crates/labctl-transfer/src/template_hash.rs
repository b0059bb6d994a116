//! The fingerprint of a Packer template directory: every file's relative path and content hash.
//!
//! Build output, Packer's caches and patterns listed in `.labctlignore` are left out, so running
//! a build does not make its own template look changed.

use std::path::Path;

use sha2::{Digest, Sha256};

use labctl_core::checksum::{to_hex, Checksum};

const ALWAYS_IGNORED: [&str; 3] = ["packer_cache", ".packer.d", ".git"];
pub const IGNORE_FILE: &str = ".labctlignore";

/// Hashes `dir`, ignoring the top-level directory that holds `artifact` (its output directory).
pub fn hash_dir(dir: &Path, artifact: &str) -> std::io::Result<Checksum> {
    let mut ignored: Vec<String> = ALWAYS_IGNORED.iter().map(|s| s.to_string()).collect();
    if let Some((top, _)) = artifact.split_once('/') {
        ignored.push(top.to_string());
    } else {
        ignored.push(artifact.to_string());
    }
    if let Some(text) = read_small_file(&dir.join(IGNORE_FILE), 64 * 1024) {
        ignored.extend(
            text.lines()
                .map(|l| l.trim().trim_end_matches('/').to_string())
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        );
    }
    let mut files = Vec::new();
    collect(dir, dir, &ignored, &mut files)?;
    files.sort();
    let mut manifest = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for rel in files {
        // Streamed: a template directory may hold large files (a seed ISO, a disk image).
        let mut file = std::fs::File::open(dir.join(&rel))?;
        let mut content = Sha256::new();
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            content.update(&buf[..n]);
        }
        manifest.update(rel.as_bytes());
        manifest.update([0]);
        manifest.update(to_hex(&content.finalize()).as_bytes());
        manifest.update(b"\n");
    }
    Checksum::new(
        labctl_core::checksum::Algorithm::Sha256,
        &to_hex(&manifest.finalize()),
    )
    .map_err(|e| std::io::Error::other(e.to_string()))
}

/// `pattern` is a relative path (a file or a whole directory) or `*suffix`.
fn is_ignored(rel: &str, ignored: &[String]) -> bool {
    ignored.iter().any(|p| match p.strip_prefix('*') {
        Some(suffix) => rel.ends_with(suffix),
        None => rel == p || rel.starts_with(&format!("{p}/")),
    })
}

fn collect(
    root: &Path,
    dir: &Path,
    ignored: &[String],
    out: &mut Vec<String>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("below root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if is_ignored(&rel, ignored) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &path, ignored, out)?;
        } else if kind.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}

/// A regular file's text, at most `limit` bytes; `None` for anything else (missing, a symlink,
/// a device, larger). Template directories come from pull requests.
pub fn read_small_file(path: &Path, limit: u64) -> Option<String> {
    crate::local_file::read_text(path, limit, crate::local_file::Symlinks::Refuse).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_with_content_and_names_but_not_output_or_ignored_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("build.pkr.hcl"), "source {}").unwrap();
        std::fs::create_dir_all(p.join("scripts")).unwrap();
        std::fs::write(p.join("scripts/setup.sh"), "echo").unwrap();
        let base = hash_dir(p, "output/gw.raw").unwrap();

        std::fs::create_dir_all(p.join("output")).unwrap();
        std::fs::write(p.join("output/gw.raw"), "built").unwrap();
        std::fs::create_dir_all(p.join("packer_cache")).unwrap();
        std::fs::write(p.join("packer_cache/iso"), "cache").unwrap();
        assert_eq!(hash_dir(p, "output/gw.raw").unwrap(), base);

        std::fs::write(p.join(IGNORE_FILE), "# local\n*.log\nnotes\n").unwrap();
        let with_ignore = hash_dir(p, "output/gw.raw").unwrap();
        std::fs::write(p.join("build.log"), "x").unwrap();
        std::fs::create_dir_all(p.join("notes")).unwrap();
        std::fs::write(p.join("notes/a"), "x").unwrap();
        assert_eq!(hash_dir(p, "output/gw.raw").unwrap(), with_ignore);

        std::fs::write(p.join("scripts/setup.sh"), "echo hi").unwrap();
        assert_ne!(hash_dir(p, "output/gw.raw").unwrap(), with_ignore);
    }
}

//! Reading a small local file that may come from a pull request or a NAS share (a manifest, a
//! plan, `.labctlignore`, SHA256SUMS): bounded in size, regular files only, and never blocked
//! on a FIFO or a device. The file is opened without blocking and judged by what was opened,
//! so swapping the path for a FIFO between a check and the open changes nothing.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("does not exist")]
    NotFound,
    #[error("is not a regular file")]
    NotAFile,
    #[error("is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Io(std::io::Error),
}

/// Whether a symbolic link at the path itself is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    Follow,
    /// A link is refused as [`ReadError::NotAFile`] (files copied into a Packer template).
    Refuse,
}

/// The whole file, if it is a regular file of at most `limit` bytes.
pub fn read(path: &Path, limit: u64, symlinks: Symlinks) -> Result<Vec<u8>, ReadError> {
    let mut flags = libc::O_NONBLOCK;
    if symlinks == Symlinks::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            // O_NOFOLLOW on a link (ELOOP).
            _ if e.raw_os_error() == Some(libc::ELOOP) => ReadError::NotAFile,
            _ => ReadError::Io(e),
        })?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile);
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file still growing is cut at the limit and refused.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_text(path: &Path, limit: u64, symlinks: Symlinks) -> Result<String, ReadError> {
    String::from_utf8(read(path, limit, symlinks)?).map_err(|_| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "is not UTF-8 text",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, "hello").unwrap();
        assert_eq!(read(&path, 5, Symlinks::Follow).unwrap(), b"hello");
        assert!(matches!(
            read(&path, 4, Symlinks::Follow),
            Err(ReadError::TooLarge { limit: 4 })
        ));
        assert!(matches!(
            read(&dir.path().join("missing"), 5, Symlinks::Follow),
            Err(ReadError::NotFound)
        ));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(read_text(&path, 5, Symlinks::Follow).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        // Opening a FIFO for reading would wait for a writer: this returns at once.
        assert!(matches!(
            read(&fifo, 5, Symlinks::Follow),
            Err(ReadError::NotAFile)
        ));
        assert!(matches!(
            read(dir.path(), 5, Symlinks::Follow),
            Err(ReadError::NotAFile)
        ));
        assert!(matches!(
            read(Path::new("/dev/zero"), 5, Symlinks::Follow),
            Err(ReadError::NotAFile)
        ));
        let target = dir.path().join("target");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read(&link, 5, Symlinks::Follow).unwrap(), b"x");
        assert!(matches!(
            read(&link, 5, Symlinks::Refuse),
            Err(ReadError::NotAFile)
        ));
    }
}

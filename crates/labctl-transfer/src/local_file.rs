//! Reading a small local file that may come from a pull request or a NAS share (a manifest, a
//! plan, `.labctlignore`, SHA256SUMS): bounded in size, regular files only, and never blocked
//! on a FIFO or a device. The file is opened without blocking and judged by what was opened,
//! so swapping the path for a FIFO between a check and the open changes nothing.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The OS's own error, for its familiar wording.
    #[error("{0}")]
    NotFound(std::io::Error),
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
    let (reader, len) = open(path, limit, symlinks)?;
    let mut bytes = Vec::with_capacity(len as usize);
    reader.read_to_end_capped(&mut bytes)?;
    Ok(bytes)
}

/// A regular file opened for reading with the checks of [`read`], for a caller that parses it
/// as it streams (a large state file need not be held whole beside what it parses into); with
/// its length when opened.
pub fn open(path: &Path, limit: u64, symlinks: Symlinks) -> Result<(Capped, u64), ReadError> {
    // O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (and is then refused);
    // regular files ignore it. O_NOCTTY: a terminal named as a plan never becomes ours.
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if symlinks == Symlinks::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            _ if e.kind() == std::io::ErrorKind::NotFound => ReadError::NotFound(e),
            // The path is a link, refused by O_NOFOLLOW.
            Some(libc::ELOOP) if symlinks == Symlinks::Refuse => ReadError::NotAFile,
            // A Unix socket cannot be opened at all.
            Some(libc::ENXIO) => ReadError::NotAFile,
            _ => ReadError::Io(e),
        })?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile);
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok((
        Capped {
            inner: file.take(limit + 1),
            limit,
        },
        meta.len(),
    ))
}

/// A file cut one byte past its limit: reading that byte is an error, so a file still growing
/// is refused rather than read without bound.
pub struct Capped {
    inner: std::io::Take<std::fs::File>,
    limit: u64,
}

impl Capped {
    fn read_to_end_capped(mut self, bytes: &mut Vec<u8>) -> Result<(), ReadError> {
        self.inner.read_to_end(bytes).map_err(ReadError::Io)?;
        if bytes.len() as u64 > self.limit {
            return Err(ReadError::TooLarge { limit: self.limit });
        }
        Ok(())
    }
}

impl Read for Capped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && self.inner.limit() == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("is larger than {} bytes", self.limit),
            ));
        }
        Ok(n)
    }
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
            Err(ReadError::NotFound(_))
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
        // A loop of links is an error of its own, not "not a regular file".
        let a = dir.path().join("loop-a");
        let b = dir.path().join("loop-b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(matches!(
            read(&a, 5, Symlinks::Follow),
            Err(ReadError::Io(_))
        ));
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert!(matches!(
            read(&socket, 5, Symlinks::Follow),
            Err(ReadError::NotAFile)
        ));
    }
}

//! Putting bytes into the served folder so that a reader only ever sees a whole, verified file:
//! a temporary file inside `SERVED/.labctl/tmp` (the same filesystem as every served path, so
//! the rename is atomic), filled by a reflink where the filesystem has one or a copy otherwise,
//! hashed as it is written, fsynced, and renamed over the served name.
//!
//! Never a hard link: a sync client that rewrites a synced file in place would carry its
//! half-written bytes through a shared inode into the folder machines boot from.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use crate::pipeline::hash::Hasher;
use labctl_core::checksum::{Algorithm, Checksum};

const BUFFER: usize = 256 * 1024;

/// A file in the temporary folder, removed when dropped unless it was renamed into place: every
/// error path of a run cleans up after itself; a killed run leaves it for the next one.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    /// `None` once closed: a batch of placements keeps its files' names, not their
    /// descriptors, until it renames them.
    file: Option<File>,
    placed: bool,
}

impl TempFile {
    pub fn new(tmp_dir: &Path) -> std::io::Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // Asked once: every call is a system call, and a batch makes thousands of these.
        static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let pid = *PID.get_or_init(std::process::id);
        loop {
            let path = tmp_dir.join(format!("{pid}-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                        placed: false,
                    })
                }
                // Left by an earlier process with the same pid that was killed: pick another.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes the bytes written so far durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.handle()?.sync_all()
    }

    /// Lets go of the descriptor; the file stays (and is still removed when dropped).
    pub fn close(&mut self) {
        self.file = None;
    }

    /// Renames the file to `rel` below `root`, creating (durably) the folders it needs; none of
    /// them may be a symbolic link. Neither the bytes nor the new folder entry are made durable
    /// here: the caller does it, for one file or for a batch at once.
    pub fn rename_into(&mut self, root: &Path, rel: &str) -> std::io::Result<()> {
        let dest = root.join(rel);
        beneath(root, rel)?;
        create_dirs_durably(root, dest.parent().expect("a served path has a folder"))?;
        std::fs::rename(&self.path, &dest)?;
        self.placed = true;
        Ok(())
    }

    /// [`TempFile::rename_into`] for a batch: skips the checks of folders `checked` has seen,
    /// and leaves the folders it creates for the caller to make durable (with the renames).
    pub fn rename_checked(
        &mut self,
        root: &Path,
        rel: &str,
        checked: &mut CheckedFolders,
    ) -> std::io::Result<()> {
        let dest = root.join(rel);
        let parent = dest.parent().expect("a served path has a folder");
        let folder = rel.rsplit_once('/').map_or("", |(folder, _)| folder);
        if !checked.seen.contains(folder) {
            beneath(root, rel)?;
            checked.created |= create_dirs(root, parent, false)?;
            checked.seen.insert(folder.to_string());
        }
        std::fs::rename(&self.path, &dest)?;
        self.placed = true;
        Ok(())
    }

    fn handle(&mut self) -> std::io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the temporary file was closed"))
    }
}

/// Folders (relative to the served folder) found to exist, and to be no symbolic link, by the
/// renames of one batch: a batch of files in one folder checks it once. The lock keeps other
/// runs out, and a batch's renames follow each other within moments.
#[derive(Debug, Default)]
pub struct CheckedFolders {
    seen: std::collections::HashSet<String>,
    /// Some folder was created, and is not durable yet.
    pub created: bool,
}

/// Makes everything written to the filesystem holding `dir` durable, with one call: after a
/// batch of files, far cheaper than an fsync for each. The descriptor is opened before the
/// batch is written, because `syncfs` reports the writeback errors that happened since it was
/// opened.
pub struct FilesystemSync(File);

impl FilesystemSync {
    pub fn open(dir: &Path) -> std::io::Result<FilesystemSync> {
        File::open(dir).map(FilesystemSync)
    }

    #[cfg(target_os = "linux")]
    pub fn sync(&self) -> std::io::Result<()> {
        // SAFETY: the descriptor is an open directory owned by `self` for the whole call.
        if unsafe { libc::syncfs(self.0.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn sync(&self) -> std::io::Result<()> {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    }
}

/// Creates the folders from `root` down to `dir`, fsyncing each parent whose entries changed,
/// so that a power cut cannot lose a folder a renamed file lives in.
fn create_dirs_durably(root: &Path, dir: &Path) -> std::io::Result<()> {
    create_dirs(root, dir, true).map(|_| ())
}

/// Creates the folders from `root` down to `dir`; `durably`: fsyncing each parent whose entries
/// changed (else the caller makes them durable, with a batch). Whether any was created.
fn create_dirs(root: &Path, dir: &Path, durably: bool) -> std::io::Result<bool> {
    let mut missing = Vec::new();
    let mut d = dir;
    while d != root && !d.is_dir() {
        missing.push(d);
        d = d.parent().unwrap_or(root);
    }
    let created = !missing.is_empty();
    for m in missing.into_iter().rev() {
        match std::fs::create_dir(m) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if durably {
            sync_dir(m.parent().unwrap_or(root))?;
        }
    }
    Ok(created)
}

/// Refuses a path whose folders below `root` include a symbolic link: placing, removing or
/// quarantining through one would reach outside the served folder.
pub fn beneath(root: &Path, rel: &str) -> std::io::Result<()> {
    let mut dir = root.to_path_buf();
    let segments: Vec<&str> = rel.split('/').collect();
    for segment in &segments[..segments.len().saturating_sub(1)] {
        dir.push(segment);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "`{}` is a symbolic link; labctl places nothing through one",
                        dir.display()
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.placed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How the bytes got into the temporary file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// A copy-on-write clone (Btrfs, XFS): instant, and later writes to the source do not
    /// reach it.
    Reflink,
    Copy,
}

/// Which side of a copy failed: the synced source (a sync in progress) or the served
/// destination (the served folder's problem).
#[derive(Debug)]
pub enum FillError {
    Source(std::io::Error),
    Destination(std::io::Error),
}

#[derive(Debug)]
pub struct Copied {
    /// Of the bytes now in the temporary file.
    pub sha256: Checksum,
    pub size: u64,
    pub method: Method,
    /// The source's identity when it was opened, and after it was read: the same unless it
    /// changed meanwhile.
    pub source_before: Identity,
    pub source_after: Option<Identity>,
}

/// Fills `temp` from `source` and hashes what it holds. The hash is of the temporary file's
/// bytes (read back from the clone, or hashed as they are written), so what is verified is what
/// will be served, whatever happens to the source meanwhile. `reflinks`: whether to try a
/// reflink first (the filesystem made one for an earlier file).
pub fn fill(source: &Path, temp: &mut TempFile, reflinks: bool) -> Result<Copied, FillError> {
    use FillError::{Destination, Source};
    let (mut src, meta) = open_regular_with(source).map_err(Source)?;
    let source_before = Identity::of(&meta);
    let source_after = |src: &File| src.metadata().ok().map(|m| Identity::of(&m));
    let mut buf = vec![
        0u8;
        BUFFER.min(
            usize::try_from(meta.len())
                .unwrap_or(BUFFER)
                .saturating_add(1)
        )
    ];
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut size = 0u64;
    if reflinks && reflink(&src, temp.handle().map_err(Destination)?) {
        let mut clone = File::open(&temp.path).map_err(Destination)?;
        loop {
            let n = read_some(&mut clone, &mut buf).map_err(Destination)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        return Ok(Copied {
            sha256: hasher.finish(),
            size,
            method: Method::Reflink,
            source_before,
            source_after: source_after(&src),
        });
    }
    loop {
        let n = read_some(&mut src, &mut buf).map_err(Source)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        temp.handle()
            .and_then(|f| f.write_all(&buf[..n]))
            .map_err(Destination)?;
        size += n as u64;
    }
    Ok(Copied {
        sha256: hasher.finish(),
        size,
        method: Method::Copy,
        source_before,
        source_after: source_after(&src),
    })
}

/// Opens a file to read, refusing anything but a regular file without blocking: a FIFO put in
/// place of a synced file after it was looked at would otherwise hang the run.
fn open_regular(path: &Path) -> std::io::Result<File> {
    open_regular_with(path).map(|(file, _)| file)
}

/// [`open_regular`], with the file's metadata as it was opened.
fn open_regular_with(path: &Path) -> std::io::Result<(File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Whether `temp` could be made a reflink of `source` (then it holds its bytes).
pub fn try_reflink(source: &Path, temp: &mut TempFile) -> bool {
    match (open_regular(source), temp.handle()) {
        (Ok(src), Ok(dst)) => reflink(&src, dst),
        _ => false,
    }
}

/// `FICLONE`: the whole file shared copy-on-write. Any failure (another filesystem, one
/// without reflinks, a kernel without the call) means "copy instead".
#[cfg(target_os = "linux")]
fn reflink(src: &File, dst: &File) -> bool {
    // SAFETY: both descriptors are open files owned by the caller for the whole call; FICLONE
    // takes the source descriptor as its argument and shares no memory.
    unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn reflink(_: &File, _: &File) -> bool {
    false
}

/// The sha256 of a file, streamed through a fixed buffer.
pub fn hash_file(path: &Path) -> std::io::Result<(Checksum, u64)> {
    let mut file = open_regular(path)?;
    let mut buf = vec![0u8; BUFFER];
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut size = 0u64;
    loop {
        let n = read_some(&mut file, &mut buf)?;
        if n == 0 {
            return Ok((hasher.finish(), size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Replaces `dest` with `body` whole: a reader sees the old content or the new, never a mix.
pub fn write_atomically(tmp_dir: &Path, dest: &Path, body: &[u8]) -> std::io::Result<()> {
    write_atomically_with(tmp_dir, dest, &|w| w.write_all(body))
}

/// [`write_atomically`], with the content written by `write` (through a buffer).
pub fn write_atomically_with(
    tmp_dir: &Path,
    dest: &Path,
    write: &dyn Fn(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut temp = TempFile::new(tmp_dir)?;
    let mut buffered = std::io::BufWriter::with_capacity(BUFFER, temp.handle()?);
    write(&mut buffered)?;
    buffered.flush()?;
    drop(buffered);
    temp.sync()?;
    std::fs::rename(&temp.path, dest)?;
    temp.placed = true;
    sync_dir(dest.parent().expect("a file has a folder"))
}

/// Bytes the filesystem holding `dir` has free for an unprivileged writer.
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `stat` a buffer of the type statvfs fills.
    let rc = unsafe { libc::statvfs(c.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Whether an I/O error means the filesystem is full.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_file_is_hashed_and_placed_whole() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let src = d.path().join("src");
        let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &body).unwrap();
        let mut temp = TempFile::new(&tmp).unwrap();
        let copied = fill(&src, &mut temp, true).unwrap();
        assert_eq!(copied.sha256, Checksum::sha256(&body));
        assert_eq!(copied.size, body.len() as u64);
        let dest = d.path().join("served/a/b.raw");
        std::fs::create_dir(d.path().join("served")).unwrap();
        temp.rename_into(&d.path().join("served"), "a/b.raw")
            .unwrap();
        drop(temp);
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        // Never the same inode as the source.
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            std::fs::metadata(&src).unwrap().ino(),
            std::fs::metadata(&dest).unwrap().ino()
        );
    }

    #[test]
    fn a_dropped_temporary_file_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let temp = TempFile::new(d.path()).unwrap();
        let path = temp.path.clone();
        assert!(path.exists());
        drop(temp);
        assert!(!path.exists());
    }

    #[test]
    fn nothing_is_placed_through_a_symbolic_link() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("served");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("talos")).unwrap();
        let mut temp = TempFile::new(d.path()).unwrap();
        let err = temp.rename_into(&root, "talos/a.raw").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(beneath(&root, "vyos/new/x.iso").is_ok());
    }

    #[test]
    fn free_space_is_known() {
        let d = tempfile::tempdir().unwrap();
        assert!(available_bytes(d.path()).unwrap() > 0);
        assert!(available_bytes(&d.path().join("nope")).is_err());
    }
}

//! One run at a time in a served folder: an advisory `flock` on `.labctl/lock`. The kernel drops
//! it when the process ends however it ends (kill -9 included), so a killed run never leaves a
//! lock behind; the file itself stays (deleting a lock file races with the next run's open).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Held while the run lasts; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct ServedLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another `labctl verify --into` is running on `{served}`{holder}")]
    Busy { served: String, holder: String },
    #[error("cannot open the lock file `{path}`")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ServedLock {
    /// Takes the lock, waiting up to `wait` for a run that holds it.
    pub fn acquire(path: &Path, served: &Path, wait: Duration) -> Result<ServedLock, LockError> {
        let open_error = |source| LockError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_error)?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is shared.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(open_error(err));
            }
            if Instant::now() >= deadline {
                return Err(LockError::Busy {
                    served: served.display().to_string(),
                    holder: holder(&mut file),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Who holds it, for the next run's message; the lock is the flock, not this text.
        let _ = file.set_len(0).and_then(|()| {
            file.rewind()?;
            writeln!(file, "pid {}", std::process::id())
        });
        Ok(ServedLock { _file: file })
    }
}

fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file
        .rewind()
        .and_then(|()| file.take(64).read_to_string(&mut text));
    match text.trim() {
        "" => String::new(),
        t => format!(" ({t})"),
    }
}

/// Where the lock lives inside `SERVED/.labctl`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let first = ServedLock::acquire(&p, d.path(), Duration::ZERO).unwrap();
        let busy = ServedLock::acquire(&p, d.path(), Duration::from_millis(250)).unwrap_err();
        let message = busy.to_string();
        assert!(
            message.contains("another `labctl verify --into`"),
            "{message}"
        );
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        ServedLock::acquire(&p, d.path(), Duration::ZERO).unwrap();
    }
}

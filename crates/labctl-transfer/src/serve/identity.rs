//! A file's identity: what must stay the same for a hash computed earlier to still describe it.

use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

/// Device, inode, size, modification and change times. The change time is part of it because
/// sync clients (rclone among them) set a file's modification time to the remote's after writing
/// it, so a file rewritten in place can keep its size and `mtime`; `ctime` cannot be set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Identity {
    pub fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_changes_the_identity_even_when_the_mtime_is_put_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let before = std::fs::metadata(&p).unwrap();
        let first = Identity::of(&before);
        assert_eq!(first, Identity::of(&std::fs::metadata(&p).unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"abd").unwrap();
        // What a sync client does after writing: the remote's modification time, restored.
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(before.modified().unwrap()).unwrap();
        let after = Identity::of(&std::fs::metadata(&p).unwrap());
        assert_eq!((after.size, after.mtime_ns), (first.size, first.mtime_ns));
        assert_ne!(after, first);
    }
}

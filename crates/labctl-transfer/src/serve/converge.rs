//! Placing the files that need it, one at a time: after a check that the filesystem has room
//! for all of them, each is copied (or reflinked) into a temporary file, verified there, claimed
//! in the state, renamed into place, and recorded.

use super::assess::ServedSide;
use super::identity::Identity;
use super::place::{self, Method, TempFile};
use super::state::{Placed, Replacement};
use super::{Announced, Copy, FileReport, Progress, Run, ServeError, Status};

impl Run<'_> {
    pub(super) fn place_all(
        &mut self,
        announced: &Announced,
        copies: Vec<Copy>,
        rows: &mut [FileReport],
        progress: Progress,
    ) -> Result<(), ServeError> {
        if copies.is_empty() {
            return Ok(());
        }
        self.check_room(&copies)?;
        let total = copies.len();
        for (done, copy) in copies.into_iter().enumerate() {
            progress("Placing verified files", done, total);
            let row = copy.row;
            let r = std::mem::replace(&mut rows[row], super::row(&copy.line.path, Status::Failed));
            rows[row] = self.place_one(announced, copy, r)?;
        }
        progress("Placing verified files", total, total);
        Ok(())
    }

    /// Refuses before placing anything when the files cannot fit: the peak the served folder
    /// needs, placing one at a time, each replacement freeing the file it replaces. A reflink
    /// needs no room; whether the filesystem makes them is tried on the first file.
    fn check_room(&self, copies: &[Copy]) -> Result<(), ServeError> {
        let first = &copies[0];
        if self.reflinks(&self.folders.synced.join(&first.line.path)) {
            return Ok(());
        }
        let (mut now, mut needed) = (0u64, 0u64);
        for c in copies {
            now = now.saturating_add(c.size);
            needed = needed.max(now);
            if let ServedSide::Ours { size, .. } = c.before {
                now = now.saturating_sub(size);
            }
        }
        // Room for the state and index files beside the images.
        needed = needed.saturating_add(1 << 20);
        let available =
            place::available_bytes(&self.folders.tmp).map_err(|source| ServeError::Prepare {
                path: self.folders.tmp.display().to_string(),
                source,
            })?;
        if needed > available {
            return Err(ServeError::DiskFull { needed, available });
        }
        Ok(())
    }

    fn reflinks(&self, source: &std::path::Path) -> bool {
        let Ok(mut temp) = TempFile::new(&self.folders.tmp) else {
            return false;
        };
        // An empty source tells nothing; a failed open is judged when the file is placed.
        std::fs::metadata(source).is_ok_and(|m| m.len() > 0)
            && place::try_reflink(source, &mut temp)
    }

    fn place_one(
        &mut self,
        announced: &Announced,
        copy: Copy,
        mut r: FileReport,
    ) -> Result<FileReport, ServeError> {
        let path = copy.line.path.clone();
        let want = copy.line.sha256.hex().to_string();
        let source = self.folders.synced.join(&path);
        let before_identity = std::fs::metadata(&source).ok().map(|m| Identity::of(&m));
        let mut temp = match TempFile::new(&self.folders.tmp) {
            Ok(t) => t,
            Err(e) => return self.io_failure(r, &path, e),
        };
        let copied = match place::fill(&source, &mut temp) {
            Ok(c) => c,
            Err(e) if place::is_no_space(&e) => {
                return Err(ServeError::NoSpace { path, source: e })
            }
            // The sync removed or replaced it under us: a normal state while a sync runs.
            Err(e) => {
                return Ok(self.not_placed(
                    r,
                    &copy.before,
                    format!("cannot read the synced copy: {e}"),
                ))
            }
        };
        self.bytes_hashed += copied.size;
        if copied.method == Method::Copy {
            self.bytes_copied += copied.size;
        }
        let after_identity = std::fs::metadata(&source).ok().map(|m| Identity::of(&m));
        let got = copied.sha256.hex().to_string();
        if let Some(id) = after_identity.filter(|a| Some(*a) == before_identity) {
            self.cache.insert(id, got.clone());
            self.seen.insert(id);
        }
        if got != want {
            let detail = if after_identity != before_identity {
                "the synced copy changed while it was read (a sync in progress)".to_string()
            } else {
                format!("the synced copy's sha256 is {got}, not the listed one (a sync in progress, or a changed copy)")
            };
            return Ok(self.not_placed(r, &copy.before, detail));
        }

        let entry = announced.entry(&copy.line, copied.size);
        // Claimed before the rename: whatever instant a kill hits, the next run knows the path
        // (and the bytes renamed onto it) are labctl's.
        match self.state.files.get_mut(&path) {
            Some(p) => {
                p.placing = Some(Replacement {
                    sha256: want.clone(),
                    entry: entry.clone(),
                })
            }
            None => {
                self.state.files.insert(
                    path.clone(),
                    Placed {
                        sha256: want.clone(),
                        size: copied.size,
                        identity: None,
                        placing: None,
                        entry: entry.clone(),
                    },
                );
            }
        }
        self.save_state()?;
        // The old bytes leave the served list before the new ones take their name: every line
        // of the served SHA256SUMS stays true at every instant.
        if !matches!(copy.before, ServedSide::Absent) {
            self.write_interim_index(Some(&path))?;
        }
        let dest = self.folders.served_path(&path);
        if let Err(e) = temp.place(&dest) {
            if place::is_no_space(&e) {
                return Err(ServeError::NoSpace { path, source: e });
            }
            return self.io_failure(r, &path, e);
        }
        let identity = std::fs::metadata(&dest).ok().map(|m| Identity::of(&m));
        if let Some(id) = identity {
            self.cache.insert(id, want.clone());
            self.seen.insert(id);
        }
        self.state.files.insert(
            path.clone(),
            Placed {
                sha256: want.clone(),
                size: copied.size,
                identity,
                placing: None,
                entry,
            },
        );
        self.save_state()?;
        r.status = match copy.before {
            ServedSide::Absent => Status::Placed,
            ServedSide::Ours { .. } => Status::Replaced,
            ServedSide::Altered { .. } | ServedSide::Foreign { .. } => Status::Repaired,
        };
        if r.status == Status::Repaired {
            r.detail = "the served copy had been altered; verified bytes put back".into();
        }
        r.served_sha256 = Some(want);
        r.size = Some(copied.size);
        r.method = Some(copied.method);
        Ok(r)
    }

    fn io_failure(
        &mut self,
        mut r: FileReport,
        path: &str,
        e: std::io::Error,
    ) -> Result<FileReport, ServeError> {
        r.status = Status::Failed;
        r.detail = format!("cannot place it in the served folder: {e}");
        // Take back the claim: nothing was renamed.
        match self.state.files.get_mut(path) {
            Some(p) if p.identity.is_none() => {
                self.state.files.remove(path);
            }
            Some(p) => {
                p.placing = None;
                r.served_sha256 = Some(p.sha256.clone());
            }
            None => {}
        }
        self.save_state()?;
        Ok(r)
    }

    pub(super) fn save_state(&mut self) -> Result<(), ServeError> {
        self.state
            .save(&self.folders.state, &self.folders.tmp)
            .map_err(ServeError::from)
    }
}

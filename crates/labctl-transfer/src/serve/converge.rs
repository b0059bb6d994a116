//! Placing the files that need it, one at a time: after a check that the filesystem has room
//! for all of them, each is copied (or reflinked) into a temporary file, verified there, claimed
//! in the state, renamed into place, and recorded.

use super::assess::ServedSide;
use super::identity::Identity;
use super::place::{self, FillError, Method, PlaceError, TempFile};
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
            Err(e) => return self.destination_failure(r, &path, e),
        };
        let copied = match place::fill(&source, &mut temp) {
            Ok(c) => c,
            // The sync removed or replaced it under us: a normal state while a sync runs.
            Err(FillError::Source(e)) => {
                let detail = format!("cannot read the synced copy: {e}");
                return Ok(self.not_placed(r, &copy.before, detail));
            }
            Err(FillError::Destination(e)) => return self.destination_failure(r, &path, e),
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
        // Whether the served list may name the path now (settled: only files that are there).
        let was_listed = self.state.files.contains_key(&path);
        if let Err(e) = self.commit(&path, &want, copied.size, &entry, was_listed, temp) {
            // Whatever failed, the claim must not outlive it: the next list is built from it.
            self.take_back(&path, was_listed, e.renamed);
            let _ = self.save_state();
            if place::is_no_space(&e.source) {
                return Err(ServeError::NoSpace {
                    path,
                    source: e.source,
                });
            }
            r.status = Status::Failed;
            r.detail = format!("cannot place it in the served folder: {}", e.source);
            r.served_sha256 = self.state.files.get(&path).map(|p| p.sha256.clone());
            return Ok(r);
        }
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

    /// Claims the path, unlists what it held, renames the verified bytes onto it, and records
    /// them. Each step is durable before the next, so a kill between any two leaves a state the
    /// next run settles (see `Run::settle`).
    fn commit(
        &mut self,
        path: &str,
        want: &str,
        size: u64,
        entry: &labctl_core::consumer_index::IndexEntry,
        was_listed: bool,
        temp: TempFile,
    ) -> Result<(), PlaceError> {
        let io = |e: ServeError| PlaceError {
            renamed: false,
            source: std::io::Error::other(e.to_string()),
        };
        match self.state.files.get_mut(path) {
            Some(p) => {
                p.placing = Some(Replacement {
                    sha256: want.to_string(),
                    entry: entry.clone(),
                })
            }
            None => {
                self.state.files.insert(
                    path.to_string(),
                    Placed {
                        sha256: want.to_string(),
                        size,
                        identity: None,
                        placing: None,
                        entry: entry.clone(),
                    },
                );
            }
        }
        self.save_state().map_err(io)?;
        // The old bytes leave the served list before the new ones take their name: every line
        // of the served SHA256SUMS stays true at every instant.
        if was_listed {
            self.write_interim_index(Some(path)).map_err(io)?;
        }
        let renamed = temp.place(&self.folders.served, path);
        let dest = self.folders.served_path(path);
        let identity = std::fs::metadata(&dest).ok().map(|m| Identity::of(&m));
        if renamed.as_ref().is_ok_and(|()| identity.is_some()) {
            let id = identity.expect("checked");
            self.cache.insert(id, want.to_string());
            self.seen.insert(id);
            self.state.files.insert(
                path.to_string(),
                Placed {
                    sha256: want.to_string(),
                    size,
                    identity,
                    placing: None,
                    entry: entry.clone(),
                },
            );
            self.save_state().map_err(|e| PlaceError {
                renamed: true,
                ..io(e)
            })?;
        }
        renamed
    }

    /// Undoes a claim after a failed placement: the path is the old file's again, or (for a
    /// new path) nobody's; bytes that were renamed in stay claimed, for the next run to settle.
    fn take_back(&mut self, path: &str, was_listed: bool, renamed: bool) {
        if renamed {
            return;
        }
        if was_listed {
            if let Some(p) = self.state.files.get_mut(path) {
                p.placing = None;
            }
        } else {
            self.state.files.remove(path);
        }
    }

    /// The served folder could not take the file (not the synced copy's fault).
    fn destination_failure(
        &mut self,
        mut r: FileReport,
        path: &str,
        e: std::io::Error,
    ) -> Result<FileReport, ServeError> {
        if place::is_no_space(&e) {
            return Err(ServeError::NoSpace {
                path: path.to_string(),
                source: e,
            });
        }
        r.status = Status::Failed;
        r.detail = format!("cannot write the copy in the served folder: {e}");
        r.served_sha256 = self.state.files.get(path).map(|p| p.sha256.clone());
        Ok(r)
    }

    pub(super) fn save_state(&mut self) -> Result<(), ServeError> {
        self.state
            .save(&self.folders.state, &self.folders.tmp)
            .map_err(ServeError::from)
    }
}

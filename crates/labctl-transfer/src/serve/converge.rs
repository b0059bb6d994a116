//! Placing the files that need it, in batches. After a check that the filesystem has room for
//! all of them, each file of a batch is copied (or reflinked) into a temporary file and verified
//! there; then the batch is committed at once: its bytes made durable (one `syncfs`), its paths
//! claimed (one journal append), what they replace unlisted (one interim index), the files
//! renamed into place, the new folder entries made durable (one `syncfs`), and the results
//! recorded (one journal append). The cost of a run grows with its files, not with their
//! square; a kill between any two steps leaves a state the next run settles (`Run::settle`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::assess::{ServedSide, Sha256};
use super::identity::Identity;
use super::place::{self, CheckedFolders, FilesystemSync, FillError, Method, TempFile};
use super::state::{Placed, Replacement};
use super::{Announced, Copy, FileReport, Progress, Run, ServeError, Status};
use labctl_core::consumer_index::IndexEntry;

/// How many files and bytes one batch holds at most. Files: enough that the fixed cost of a
/// commit (two syncs of some milliseconds each, two appends, one interim index) is spread thin,
/// and a quarter of the run from 1,024 up to 4,096 files: what a batch holds in memory (about a KiB a
/// file, until it is committed) stays bounded, and a kill loses at most a batch of work. Bytes: what
/// the filesystem must find room for, and hold dirty, before the batch's renames free the
/// files they replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchLimits {
    pub files: usize,
    pub bytes: u64,
}

impl BatchLimits {
    pub fn for_run(files: usize) -> BatchLimits {
        BatchLimits {
            files: (files / 4).clamp(1024, 4096),
            bytes: 256 << 20,
        }
    }
}

/// The lengths of consecutive batches of files of these sizes: a batch ends at its file limit,
/// or with the file that reaches its byte limit.
pub(super) fn batches(sizes: &[u64], limits: BatchLimits) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut len, mut bytes) = (0usize, 0u64);
    for size in sizes {
        len += 1;
        bytes = bytes.saturating_add(*size);
        if len >= limits.files || bytes >= limits.bytes {
            out.push(len);
            (len, bytes) = (0, 0);
        }
    }
    if len > 0 {
        out.push(len);
    }
    out
}

/// The most the filesystem must hold at once while the batches are placed: each batch's new
/// files exist beside the ones they replace until its renames free those.
pub(super) fn peak_bytes(copies: &[(u64, Option<u64>)], batch_lengths: &[usize]) -> u64 {
    let (mut now, mut peak, mut at) = (0u64, 0u64, 0usize);
    for len in batch_lengths {
        let batch = &copies[at..at + len];
        at += len;
        now = now.saturating_add(batch.iter().map(|(size, _)| size).sum());
        peak = peak.max(now);
        now = now.saturating_sub(batch.iter().filter_map(|(_, replaced)| *replaced).sum());
    }
    peak
}

/// A verified temporary file waiting for its batch's commit.
struct Filled {
    row: usize,
    report: FileReport,
    path: String,
    sha256: String,
    size: u64,
    method: Method,
    before: ServedSide,
    entry: Arc<IndexEntry>,
    temp: TempFile,
    /// Whether the path was labctl's (and listed) before its claim.
    was_listed: bool,
}

/// The fill threads' folders in the temporary folder, removed when placing ends however it ends
/// (every file in them renamed or dropped by then; a killed run's are cleared by the next).
struct WorkerFolders {
    tmp: std::path::PathBuf,
    workers: usize,
}

impl Drop for WorkerFolders {
    fn drop(&mut self) {
        for worker in 0..self.workers {
            let _ = std::fs::remove_dir(self.tmp.join(format!("w{worker}")));
        }
    }
}

/// A temporary file filled from the synced copy, or which side failed.
type FillResult = Result<(TempFile, place::Copied), FillError>;

enum Filling {
    Filled(Box<Filled>),
    /// Not placed this run, and why (the row as it ends).
    Done(FileReport),
}

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
        let sizes: Vec<u64> = copies.iter().map(|c| c.size).collect();
        let lengths = batches(&sizes, BatchLimits::for_run(copies.len()));
        // Whether the filesystem makes reflinks, tried once on a file with bytes: a file
        // elsewhere (or one without them) is not asked again for every file.
        let reflinks = copies
            .iter()
            .find(|c| c.size > 0)
            .is_some_and(|c| self.reflinks(&self.folders.synced.join(&c.line(announced).path)));
        if !reflinks {
            self.check_room(&copies, &lengths)?;
        }
        let total = copies.len();
        let done = AtomicUsize::new(0);
        let mut copies = copies.into_iter();
        let _workers = WorkerFolders {
            tmp: self.folders.tmp.clone(),
            workers: self.options.jobs.max(1),
        };
        for len in lengths {
            let sync =
                FilesystemSync::open(&self.folders.tmp).map_err(|source| ServeError::Prepare {
                    path: self.folders.tmp.display().to_string(),
                    source,
                })?;
            let batch: Vec<Copy> = copies.by_ref().take(len).collect();
            let results = self.fill_batch(announced, &batch, reflinks, progress, &done, total);
            let mut filled = Vec::with_capacity(len);
            for (copy, result) in batch.into_iter().zip(results) {
                let row = copy.row;
                let r = std::mem::replace(
                    &mut rows[row],
                    super::row(&copy.line(announced).path, Status::Failed),
                );
                match self.judge_fill(announced, copy, r, result)? {
                    Filling::Filled(f) => filled.push(*f),
                    Filling::Done(r) => rows[row] = r,
                }
            }
            self.commit_batch(filled, rows, &sync)?;
        }
        progress("Placing verified files", total, total);
        Ok(())
    }

    /// Refuses before placing anything when copies of the files cannot fit (see
    /// [`peak_bytes`]).
    fn check_room(&self, copies: &[Copy], lengths: &[usize]) -> Result<(), ServeError> {
        let sizes: Vec<(u64, Option<u64>)> = copies
            .iter()
            .map(|c| match c.before() {
                ServedSide::Ours { size, .. } => (c.size, Some(*size)),
                _ => (c.size, None),
            })
            .collect();
        // Room for the state, journal and index files beside the images.
        let needed = peak_bytes(&sizes, lengths).saturating_add(1 << 20);
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

    fn reflinks(&self, source: &Path) -> bool {
        let Ok(mut temp) = TempFile::new(&self.folders.tmp) else {
            return false;
        };
        // An empty source tells nothing; a failed open is judged when the file is placed.
        std::fs::metadata(source).is_ok_and(|m| m.len() > 0)
            && place::try_reflink(source, &mut temp)
    }

    /// Copies a batch's synced files into temporary files, hashing them, on `options.jobs`
    /// threads (two cores copy many small files nearly twice as fast as one); in batch order.
    fn fill_batch(
        &self,
        announced: &Announced,
        batch: &[Copy],
        reflinks: bool,
        progress: Progress,
        done: &AtomicUsize,
        total: usize,
    ) -> Vec<FillResult> {
        // A batch's bytes are made durable by one syncfs: its files need no open descriptor
        // until then (thousands would exceed the process's limit).
        let close = batch.len() > 1;
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<FillResult>>> =
            Mutex::new((0..batch.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for worker in 0..self.options.jobs.clamp(1, batch.len()) {
                // A folder of its own for each thread's temporary files: creating files in one
                // folder from two threads queues them on its lock, and a folder of thousands
                // of entries is slower to add to than a few of hundreds.
                let dir = self.folders.tmp.join(format!("w{worker}"));
                let (next, results) = (&next, &results);
                // Made once per thread, not looked for again before each file.
                let mut made = false;
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(copy) = batch.get(i) else { break };
                    let source = self.folders.synced.join(&copy.line(announced).path);
                    let made_now = match made {
                        true => Ok(()),
                        false => std::fs::create_dir_all(&dir).inspect(|()| made = true),
                    };
                    let result = made_now
                        .and_then(|()| TempFile::new(&dir))
                        .map_err(FillError::Destination)
                        .and_then(|mut temp| {
                            let copied = place::fill(&source, &mut temp, reflinks)?;
                            if close {
                                temp.close();
                            }
                            Ok((temp, copied))
                        });
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress("Placing verified files", n, total);
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .map(|r| r.expect("every file of the batch is filled"))
            .collect()
    }

    /// Whether a filled temporary file holds the listed bytes.
    fn judge_fill(
        &mut self,
        announced: &Announced,
        copy: Copy,
        r: FileReport,
        result: FillResult,
    ) -> Result<Filling, ServeError> {
        let line = copy.line(announced);
        let path = line.path.clone();
        let want = line.sha256.hex().to_string();
        let (temp, copied) = match result {
            Ok(filled) => filled,
            // The sync removed or replaced it under us: a normal state while a sync runs.
            Err(FillError::Source(e)) => {
                let detail = format!("cannot read the synced copy: {e}");
                return Ok(Filling::Done(self.not_placed(r, copy.before(), detail)));
            }
            Err(FillError::Destination(e)) => {
                return self.destination_failure(r, &path, e).map(Filling::Done)
            }
        };
        self.bytes_hashed += copied.size;
        if copied.method == Method::Copy {
            self.bytes_copied += copied.size;
        }
        let unchanged = copied.source_after == Some(copied.source_before);
        let got = copied.sha256.hex().to_string();
        if got != want {
            // Not hashed again while the sync leaves the copy as it is.
            if unchanged {
                self.cache
                    .extend(Sha256::from_hex(&got).map(|s| (copied.source_before, s)));
                self.seen.insert(copied.source_before);
            }
            let detail = if !unchanged {
                "the synced copy changed while it was read (a sync in progress)".to_string()
            } else {
                format!("the synced copy's sha256 is {got}, not the listed one (a sync in progress, or a changed copy)")
            };
            return Ok(Filling::Done(self.not_placed(r, copy.before(), detail)));
        }
        Ok(Filling::Filled(Box::new(Filled {
            row: copy.row,
            report: r,
            entry: announced.entry(line, copied.size),
            path,
            sha256: want,
            size: copied.size,
            method: copied.method,
            before: copy.before.map_or(ServedSide::Absent, |b| *b),
            temp,
            was_listed: false,
        })))
    }

    /// Commits a batch of verified temporary files. Each step is durable before the next, so
    /// that a kill between any two leaves what the next run settles: bytes no name points at
    /// (removed with the temporary folder), claims with nothing renamed (forgotten or dropped),
    /// or renamed bytes that are claimed (adopted, hashed again when unrecorded).
    fn commit_batch(
        &mut self,
        mut filled: Vec<Filled>,
        rows: &mut [FileReport],
        sync: &FilesystemSync,
    ) -> Result<(), ServeError> {
        if filled.is_empty() {
            return Ok(());
        }
        // The bytes, durable before any name points at them: one file alone is fsynced; a
        // batch at once.
        let durable = match filled.as_mut_slice() {
            [one] => one.temp.sync(),
            _ => sync.sync(),
        };
        for f in &mut filled {
            f.temp.close();
        }
        if let Err(e) = durable {
            if place::is_no_space(&e) {
                let path = filled[0].path.clone();
                return Err(ServeError::NoSpace { path, source: e });
            }
            self.fail_all(filled, rows, &format!("cannot make the copy durable: {e}"));
            return Ok(());
        }

        // Claims: a run killed after a rename finds the new bytes labctl's.
        let mut claims: Vec<String> = Vec::with_capacity(filled.len());
        for f in &mut filled {
            f.was_listed = self.state.files.contains_key(&f.path);
            self.claim(f);
            claims.push(f.path.clone());
        }
        if let Err(e) = self.journal.append(&claims, &self.state.files) {
            for f in &filled {
                self.take_back(&f.path, f.was_listed);
            }
            return Err(e.into());
        }

        // Waves of renames: the old bytes leave the served list before the new ones take
        // their names, so every line of the served SHA256SUMS stays true at every instant. When
        // a batch replaces everything the list holds, it goes in two waves, so that the list is
        // never empty (`sha256sum -c` refuses an empty one).
        // Claimed paths not renamed yet, and whether each is listed (with its old bytes).
        let mut pending: BTreeMap<String, bool> = filled
            .iter()
            .map(|f| (f.path.clone(), f.was_listed))
            .collect();
        // Paths whose records changed since the claims, for the journal.
        let mut changes: Vec<String> = Vec::new();
        let mut stop = None;
        for wave in self.waves(filled) {
            // Unlisted: this wave's paths, and new paths not renamed yet; a later wave's old
            // bytes stay listed (they are still there).
            let this: BTreeSet<&str> = wave.iter().map(|f| f.path.as_str()).collect();
            let except: Vec<&str> = pending
                .iter()
                .filter(|(p, listed)| this.contains(p.as_str()) || !**listed)
                .map(|(p, _)| p.as_str())
                .collect();
            if wave.iter().any(|f| f.was_listed) {
                if let Err(e) = self.write_interim_index(&except) {
                    for f in &wave {
                        self.take_back(&f.path, f.was_listed);
                        changes.push(f.path.clone());
                        pending.remove(&f.path);
                    }
                    self.fail_all(wave, rows, &format!("cannot unlist what it replaces: {e}"));
                    if matches!(e, ServeError::NoSpace { .. }) {
                        stop.get_or_insert(e);
                    }
                    continue;
                }
            }
            for f in &wave {
                pending.remove(&f.path);
            }
            self.place_wave(wave, rows, sync, &mut changes, &mut stop);
        }
        self.journal.append(&changes, &self.state.files)?;
        match stop {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The batch in one wave, or two when it replaces every file the served list holds.
    fn waves(&self, mut filled: Vec<Filled>) -> Vec<Vec<Filled>> {
        let replaced = filled.iter().filter(|f| f.was_listed).count();
        if replaced < 2 || replaced < self.state.files.len() - (filled.len() - replaced) {
            return vec![filled];
        }
        // New paths in the first wave; the replacements split between the two.
        filled.sort_by_key(|f| f.was_listed);
        let second = filled.split_off(filled.len() - replaced / 2);
        vec![filled, second]
    }

    /// Renames a wave's files into place, makes the new names durable, and records them (in
    /// `changes`, for the journal). A full disk is kept in `stop`; other failures are rows.
    fn place_wave(
        &mut self,
        wave: Vec<Filled>,
        rows: &mut [FileReport],
        sync: &FilesystemSync,
        changes: &mut Vec<String>,
        stop: &mut Option<ServeError>,
    ) {
        let mut renamed = Vec::with_capacity(wave.len());
        let mut checked = CheckedFolders::default();
        for mut f in wave {
            match f
                .temp
                .rename_checked(&self.folders.served, &f.path, &mut checked)
            {
                Ok(()) => renamed.push(f),
                Err(e) => {
                    // Whatever failed, the claim must not outlive it: the next list is built
                    // from it.
                    self.take_back(&f.path, f.was_listed);
                    let now = self.state.files.get(&f.path);
                    let mut r = f.report;
                    r.status = Status::Failed;
                    r.detail = format!("cannot place it in the served folder: {e}");
                    r.served_sha256 = now.map(|p| p.sha256.clone());
                    changes.push(f.path.clone());
                    rows[f.row] = r;
                    if place::is_no_space(&e) && stop.is_none() {
                        *stop = Some(ServeError::NoSpace {
                            path: f.path,
                            source: e,
                        });
                    }
                }
            }
        }
        // The new names, durable before they are recorded as placed.
        let named = match renamed.as_slice() {
            [] if !checked.created => Ok(()),
            [one] if !checked.created => place::sync_dir(
                self.folders
                    .served_path(&one.path)
                    .parent()
                    .expect("a served path has a folder"),
            ),
            _ => sync.sync(),
        };
        for f in renamed {
            let dest = self.folders.served_path(&f.path);
            let identity = std::fs::metadata(&dest).ok().map(|m| Identity::of(&m));
            let mut r = f.report;
            match (&named, identity) {
                (Ok(()), Some(id)) => {
                    let placed = Placed {
                        sha256: f.sha256.clone(),
                        size: f.size,
                        identity: Some(id),
                        placing: None,
                        entry: f.entry,
                    };
                    self.state.files.insert(f.path.clone(), placed);
                    changes.push(f.path);
                    r.status = match f.before {
                        ServedSide::Absent => Status::Placed,
                        ServedSide::Ours { .. } => Status::Replaced,
                        ServedSide::Altered { .. } | ServedSide::Foreign { .. } => Status::Repaired,
                    };
                    if r.status == Status::Repaired {
                        r.detail =
                            "the served copy had been altered; verified bytes put back".into();
                    }
                    r.served_sha256 = Some(f.sha256);
                    r.size = Some(f.size);
                    r.method = Some(f.method);
                }
                // Renamed, but not known to be durable (or gone at once): recorded as holding
                // the new bytes with no identity, so that no list names the old ones, and the
                // next run settles it by hashing what is there.
                (named, identity) => {
                    let placed = Placed {
                        sha256: f.sha256.clone(),
                        size: f.size,
                        identity: None,
                        placing: None,
                        entry: f.entry,
                    };
                    if identity.is_some() {
                        self.state.files.insert(f.path.clone(), placed);
                    } else {
                        self.state.files.remove(&f.path);
                    }
                    changes.push(f.path.clone());
                    r.status = Status::Failed;
                    r.detail = match named {
                        Err(e) => {
                            format!("placed, but its folder entry cannot be made durable: {e}")
                        }
                        Ok(()) => "placed, but it is gone from the served folder".into(),
                    };
                    r.served_sha256 = None;
                }
            }
            rows[f.row] = r;
        }
    }

    /// Claims the path for the verified bytes about to be renamed onto it.
    fn claim(&mut self, f: &Filled) {
        match self.state.files.get_mut(&f.path) {
            Some(p) => {
                p.placing = Some(Box::new(Replacement {
                    sha256: f.sha256.clone(),
                    entry: f.entry.clone(),
                }))
            }
            None => {
                self.state.files.insert(
                    f.path.clone(),
                    Placed {
                        sha256: f.sha256.clone(),
                        size: f.size,
                        identity: None,
                        placing: None,
                        entry: f.entry.clone(),
                    },
                );
            }
        }
    }

    /// Every file of `filled` failed before its rename, for the reason `detail` gives.
    fn fail_all(&mut self, filled: Vec<Filled>, rows: &mut [FileReport], detail: &str) {
        for f in filled {
            let mut r = f.report;
            r.status = Status::Failed;
            r.detail = detail.to_string();
            r.served_sha256 = self.state.files.get(&f.path).map(|p| p.sha256.clone());
            rows[f.row] = r;
        }
    }

    /// Undoes a claim: the path is the old file's again, or (for a new path) nobody's.
    fn take_back(&mut self, path: &str, was_listed: bool) {
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

    /// Writes the state whole and empties the journal it now holds.
    pub(super) fn save_state(&mut self) -> Result<(), ServeError> {
        self.state.journaled = self.journal.seq();
        let seen = self.finishing.then_some(&self.seen);
        self.state
            .save(&self.folders.state, &self.folders.tmp, &self.cache, seen)
            .map_err(ServeError::from)?;
        self.journal.clear().map_err(ServeError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: BatchLimits = BatchLimits {
        files: 3,
        bytes: 100,
    };

    #[test]
    fn batches_end_at_their_file_or_byte_limit() {
        assert_eq!(batches(&[], SMALL), Vec::<usize>::new());
        assert_eq!(batches(&[1; 7], SMALL), vec![3, 3, 1]);
        // The file that reaches the byte limit ends its batch.
        assert_eq!(batches(&[60, 50, 10, 500, 1], SMALL), vec![2, 2, 1]);
        assert_eq!(batches(&[10, 500, 1], SMALL), vec![2, 1]);
    }

    #[test]
    fn batch_limits_grow_with_the_run_within_bounds() {
        assert_eq!(BatchLimits::for_run(10).files, 1024);
        assert_eq!(BatchLimits::for_run(10_000).files, 2500);
        assert_eq!(BatchLimits::for_run(50_000).files, 4096);
    }

    #[test]
    fn the_peak_counts_a_batch_beside_what_it_replaces() {
        // Two batches of two: each new file 10, each replacing one of 8.
        let copies = [(10, Some(8)), (10, Some(8)), (10, Some(8)), (10, None)];
        // 20 after the first batch, minus 16 freed, plus 20: 24.
        assert_eq!(peak_bytes(&copies, &[2, 2]), 24);
        // One at a time: 10, 2 + 10, 4 + 10, 6 + 10.
        assert_eq!(peak_bytes(&copies, &[1, 1, 1, 1]), 16);
        assert_eq!(peak_bytes(&copies, &[4]), 40);
    }
}

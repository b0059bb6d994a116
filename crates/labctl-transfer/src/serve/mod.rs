//! `labctl verify SYNCED --into SERVED`: the folder machines boot from, holding only verified
//! bytes. The synced folder (Cloud Sync's copy of `images/`) may be mid-sync, mixed between
//! generations, truncated or altered; the served folder converges on its signed `SHA256SUMS`
//! one verified file at a time, and is whole and consistent at every instant in between.
//!
//! What it guarantees:
//! - a file enters the served folder only as a complete file whose sha256 is the listed one
//!   (see [`place`]); until then, the previous verified version stays served;
//! - the served `SHA256SUMS` and `index.json` describe what the served folder holds; once every
//!   listed file is in place they are the synced ones, byte for byte, with the signature;
//! - files no longer listed leave only once the new generation is whole, and only files labctl
//!   placed (its state, `.labctl/state.json`, names them);
//! - one run at a time ([`lock`]); a run killed anywhere leaves only temporary files in
//!   `.labctl/tmp`, which the next run removes.

mod announced;
mod assess;
mod converge;
pub mod identity;
mod index_files;
mod journal;
mod lock;
pub mod place;
mod report;
mod state;

pub use report::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::verify::VerifyError;
use announced::Announced;
use assess::{HashCache, ServedSide, SyncedSide};
use identity::Identity;
use labctl_core::consumer_index::{self, SumsLine};
pub use lock::LockError;
pub use place::Method;
pub use state::Generation;
use state::{Placed, ServedState};

/// Progress: `done` of `total` steps of `phase`.
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// The folders of one run.
struct Folders {
    synced: PathBuf,
    served: PathBuf,
    state: PathBuf,
    tmp: PathBuf,
}

impl Folders {
    fn prepare(options: &Options) -> Result<Folders, ServeError> {
        let prepare = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServeError::Prepare {
                path: path.display().to_string(),
                source,
            }
        };
        if !options.synced.is_dir() {
            return Err(VerifyError::NotADirectory(options.synced.display().to_string()).into());
        }
        let synced = options
            .synced
            .canonicalize()
            .map_err(prepare(&options.synced))?;
        std::fs::create_dir_all(&options.served).map_err(prepare(&options.served))?;
        let served = options
            .served
            .canonicalize()
            .map_err(prepare(&options.served))?;
        if synced.starts_with(&served) || served.starts_with(&synced) {
            return Err(ServeError::Overlap {
                synced: synced.display().to_string(),
                served: served.display().to_string(),
            });
        }
        let state = served.join(STATE_DIR);
        let tmp = state.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(prepare(&tmp))?;
        Ok(Folders {
            synced,
            served,
            state,
            tmp,
        })
    }

    fn served_path(&self, rel: &str) -> PathBuf {
        self.served.join(rel)
    }
}

/// One run's bookkeeping.
struct Run<'a> {
    folders: Folders,
    options: &'a Options,
    state: ServedState,
    cache: HashCache,
    /// Identities looked at this run: the cache keeps only these.
    seen: BTreeSet<Identity>,
    bytes_hashed: u64,
    bytes_copied: u64,
    /// Paths of the previous generation in the way of listed ones (a file where the new
    /// generation has a folder, or a folder where it has a file): they leave once the rest of
    /// the new generation is in place.
    blockers: BTreeSet<String>,
    /// Changes to `state.files` since the state file was last written whole.
    journal: journal::Journal,
    /// The last save of the run: the state keeps only the hashes of files this run looked at.
    finishing: bool,
}

/// A listed file to copy from the synced folder. Small: a first run holds one for every file.
struct Copy {
    /// Its row, which is also its line in [`Announced::listed`] (listed paths' rows come
    /// first, in list order).
    row: usize,
    size: u64,
    /// What the served folder holds at the path now; `None` for nothing (most copies).
    before: Option<Box<ServedSide>>,
}

impl Copy {
    fn line<'a>(&self, announced: &'a Announced) -> &'a SumsLine {
        &announced.listed[self.row]
    }

    fn before(&self) -> &ServedSide {
        self.before.as_deref().unwrap_or(&ServedSide::Absent)
    }
}

pub fn run(options: &Options, progress: Progress) -> Result<Report, ServeError> {
    let folders = Folders::prepare(options)?;
    let _lock =
        lock::ServedLock::acquire(&lock::path(&folders.state), &folders.served, options.wait)?;
    let temporary_files_removed = clear(&folders.tmp).map_err(|source| ServeError::Prepare {
        path: folders.tmp.display().to_string(),
        source,
    })?;
    // Nothing is placed unless the signature verified (when a key is given). Read before the
    // state: what parsing the synced index takes is given back before the state is loaded.
    let announced = Announced::read(&folders, options.public_key.as_deref())?;
    // A served file's entry is most often the synced one: one copy, shared.
    let mut state = ServedState::load_sharing(&folders.state, Arc::clone(&announced.entries))?;
    let (journal, replayed) = journal::Journal::replay(&folders.state, &mut state)?;
    // Moved, not copied: the cache is saved back into the state at the end.
    let cache: HashCache = std::mem::take(&mut state.hashes);
    let mut run = Run {
        folders,
        options,
        state,
        cache,
        seen: BTreeSet::new(),
        bytes_hashed: 0,
        bytes_copied: 0,
        blockers: BTreeSet::new(),
        journal,
        finishing: false,
    };
    // What a killed run journaled goes into the state file, so that this run's journal starts
    // empty.
    if replayed {
        run.save_state()?;
    }
    let (mut rows, copies) = run.assess(&announced, progress);
    let mut placed = run.place_all(&announced, copies, &mut rows, progress);
    let serves_all_but_blocked = |rows: &[FileReport], blocked: &BTreeSet<String>| {
        announced.listed.iter().enumerate().all(|(i, l)| {
            rows[i].status.serves_listed() || blocked.iter().any(|b| in_the_way(b, &l.path))
        })
    };
    // Only what the previous generation has in the way is missing: it leaves now (the new
    // generation can never be whole with it), and what it blocked is placed.
    if placed.is_ok() && !run.blockers.is_empty() && serves_all_but_blocked(&rows, &run.blockers) {
        let removed = run.remove_blockers();
        let (again, copies) = run.assess(&announced, progress);
        rows = again;
        rows.extend(removed);
        placed = run.place_all(&announced, copies, &mut rows, progress);
    }
    let whole = placed.is_ok()
        && announced
            .listed
            .iter()
            .enumerate()
            .all(|(i, _)| rows[i].status.serves_listed());
    let finished = run.finish(&announced, &mut rows, whole);
    placed?;
    finished?;
    let mut summary = BTreeMap::new();
    for r in &rows {
        *summary.entry(r.status.name().to_string()).or_insert(0) += 1;
    }
    Ok(Report {
        format_version: FORMAT_VERSION.into(),
        labctl_version: env!("CARGO_PKG_VERSION").into(),
        synced: run.folders.synced.display().to_string(),
        served: run.folders.served.display().to_string(),
        signature: announced.signature.clone(),
        complete: whole && !rows.iter().any(|r| r.status.is_problem()),
        served_generation: run.state.generation.clone(),
        synced_generation: announced.generation(),
        bytes_hashed: run.bytes_hashed,
        bytes_copied: run.bytes_copied,
        temporary_files_removed,
        summary,
        files: rows,
    })
}

/// Whether `blocker` is in the way of `path`: the path itself, or one of its folders.
fn in_the_way(blocker: &str, path: &str) -> bool {
    path == blocker || path.starts_with(&format!("{blocker}/"))
}

/// Regular files (and anything else not a folder) below `dir`.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => count_files(&e.path()),
                    _ => 1,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Removes what killed runs left in the temporary folder (the lock is held: nothing in it is
/// in use).
fn clear(tmp: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            // A fill thread's folder: what counts is the files in it.
            removed += count_files(&entry.path());
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn row(path: &str, status: Status) -> FileReport {
    FileReport {
        path: path.to_string(),
        status,
        sha256: None,
        served_sha256: None,
        size: None,
        method: None,
        detail: String::new(),
    }
}

/// Paths the served folder keeps for itself, or that would overwrite its index.
fn reserved(path: &str) -> bool {
    consumer_index::is_index_file(path)
        || path == STATE_DIR
        || path.starts_with(&format!("{STATE_DIR}/"))
}

impl Run<'_> {
    fn learn(&mut self, look: &assess::ServedLook) {
        self.bytes_hashed += look.bytes_hashed;
        // A file of labctl's is vouched for by its record (`settle` brings its identity up to
        // date): the cache holds only what no record does, so that it stays small.
        if let ServedSide::Altered {
            identity: Some(identity),
            ..
        }
        | ServedSide::Foreign {
            identity: Some(identity),
            ..
        } = &look.side
        {
            if let Some((learned, sha)) = &look.learned {
                self.cache
                    .extend(assess::Sha256::from_hex(sha).map(|s| (*learned, s)));
            }
            self.seen.insert(*identity);
        }
    }

    /// Brings the state in line with what is at `path` before anything is judged: bytes a
    /// killed run renamed into place become the file's own, identities are refreshed, and a
    /// claimed path with nothing at it is forgotten (so no list ever names it).
    fn settle(&mut self, path: &str, side: &ServedSide) {
        match side {
            ServedSide::Ours {
                sha256,
                size,
                identity,
            } => {
                if let Some(p) = self.state.files.get_mut(path) {
                    if let Some(placing) = p.placing.take().filter(|n| n.sha256 == *sha256) {
                        p.sha256 = placing.sha256;
                        p.entry = placing.entry;
                    }
                    p.identity = Some(*identity);
                    p.size = *size;
                }
            }
            ServedSide::Absent => {
                self.state.files.remove(path);
            }
            ServedSide::Altered { .. } | ServedSide::Foreign { .. } => {
                if let Some(p) = self.state.files.get_mut(path) {
                    p.placing = None;
                }
            }
        }
    }

    /// Looks at every listed path and every path labctl placed before, hashing on
    /// `options.jobs` threads only what the cache cannot vouch for. Returns the rows (listed
    /// paths first) and the files to copy.
    fn assess(
        &mut self,
        announced: &Announced,
        progress: Progress,
    ) -> (Vec<FileReport>, Vec<Copy>) {
        let listed: BTreeSet<&str> = announced.listed.iter().map(|l| l.path.as_str()).collect();
        let mut paths: Vec<String> = announced.listed.iter().map(|l| l.path.clone()).collect();
        let unlisted: Vec<String> = self
            .state
            .files
            .keys()
            .filter(|p| !listed.contains(p.as_str()))
            .cloned()
            .collect();
        paths.extend(unlisted);
        let mut rows = Vec::with_capacity(paths.len());
        let mut copies = Vec::new();
        // Looked at a window at a time: what a look holds, for every path at once, would be
        // tens of MB at 50,000 files.
        const WINDOW: usize = 4096;
        for (n, window) in paths.chunks(WINDOW).enumerate() {
            let looks = self.look_at_served(window, n * WINDOW, paths.len(), progress);
            for (j, (path, look)) in window.iter().zip(looks).enumerate() {
                self.learn(&look);
                self.settle(path, &look.side);
                match announced.listed.get(n * WINDOW + j) {
                    Some(line) => {
                        let (r, copy) = self.judge_listed(announced, line, look.side);
                        if let Some(mut c) = copy {
                            c.row = rows.len();
                            debug_assert_eq!(c.line(announced).path, line.path);
                            copies.push(c);
                        }
                        rows.push(r);
                    }
                    None => rows.push(self.judge_unlisted(path, look.side)),
                }
            }
        }
        (rows, copies)
    }

    /// Looks at `paths`, the window of all `total` paths that starts at `offset`.
    fn look_at_served(
        &self,
        paths: &[String],
        offset: usize,
        total: usize,
        progress: Progress,
    ) -> Vec<assess::ServedLook> {
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(offset);
        let looks: Mutex<Vec<Option<assess::ServedLook>>> = Mutex::new(vec![None; paths.len()]);
        std::thread::scope(|scope| {
            for _ in 0..self.options.jobs.clamp(1, paths.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let look = if reserved(path) {
                        assess::ServedLook {
                            side: ServedSide::Absent,
                            learned: None,
                            bytes_hashed: 0,
                        }
                    } else {
                        assess::served(
                            &self.folders.served_path(path),
                            self.state.files.get(path.as_str()),
                            &self.cache,
                            self.options.deep,
                        )
                    };
                    looks.lock().unwrap()[i] = Some(look);
                    progress(
                        "Checking served files",
                        done.fetch_add(1, Ordering::Relaxed) + 1,
                        total,
                    );
                });
            }
        });
        looks
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|l| l.expect("every path is looked at"))
            .collect()
    }

    /// A listed path: current, to copy, or why not. Long on purpose: one early return per
    /// state a listed path can be in (a reserved name, a path in the way, already served,
    /// served and cached, altered), then the copy, each with its own report.
    fn judge_listed(
        &mut self,
        announced: &Announced,
        line: &SumsLine,
        side: ServedSide,
    ) -> (FileReport, Option<Copy>) {
        let want = line.sha256.hex();
        let mut r = row(&line.path, Status::Current);
        r.sha256 = Some(want.to_string());
        if reserved(&line.path) {
            r.status = Status::Conflict;
            r.detail = format!(
                "the path is reserved for the served folder's own files ({STATE_DIR}/, the index)"
            );
            return (r, None);
        }
        // Nothing at the path (not even a file where a folder of it should be, which is
        // ENOTDIR, not absent): nothing in its way. Saves a first run a look per file.
        let clear = side == ServedSide::Absent;
        if let Some((blocker, removable)) = (!clear)
            .then(|| self.in_the_way_of(&line.path, announced))
            .flatten()
        {
            if removable {
                r.status = Status::Pending;
                r.detail = format!("`{blocker}` of the previous generation is in the way; it leaves once the rest of this generation is in place");
                self.blockers.insert(blocker);
            } else {
                r.status = Status::Conflict;
                r.detail = format!("`{blocker}`, which labctl did not place or which is still listed, is in the way: move it and run again");
            }
            return (r, None);
        }
        match &side {
            ServedSide::Ours {
                sha256,
                size,
                identity,
            } if sha256 == want => {
                r.served_sha256 = Some(want.to_string());
                r.size = Some(*size);
                self.own(announced, line, *size, *identity);
                if self.options.deep {
                    if let Some(detail) = self.synced_rot(&line.path, want) {
                        r.status = Status::SyncedDiffers;
                        r.detail = detail;
                    }
                }
                return (r, None);
            }
            ServedSide::Altered {
                sha256: Some(sha256),
                identity: Some(identity),
            }
            | ServedSide::Foreign {
                sha256: Some(sha256),
                identity: Some(identity),
            } if sha256 == want => {
                // Already the listed bytes (a killed run's rename, or a copy made by hand).
                let size = identity.size;
                r.served_sha256 = Some(want.to_string());
                r.size = Some(size);
                r.detail = "already held the listed bytes: now labctl's".into();
                self.own(announced, line, size, *identity);
                return (r, None);
            }
            ServedSide::Foreign { sha256, .. } => {
                r.status = Status::Conflict;
                r.served_sha256 = sha256.clone();
                r.detail = "a file labctl did not place holds other bytes here: move it away and run again".into();
                return (r, None);
            }
            _ => {}
        }
        let expected_size = announced.entries.get(&line.path).map(|e| e.size);
        let (synced, identity) = assess::synced(
            &self.folders.synced.join(&line.path),
            expected_size,
            want,
            &self.cache,
        );
        // Only a synced copy's hash that is not the listed one is worth keeping (it spares
        // hashing the copy again while the sync has not replaced it).
        self.seen
            .extend(identity.filter(|id| self.cache.contains_key(id)));
        match synced {
            SyncedSide::Candidate { size } => (
                r,
                Some(Copy {
                    row: 0,
                    size,
                    before: (side != ServedSide::Absent).then(|| Box::new(side)),
                }),
            ),
            SyncedSide::NotYet { detail } => {
                let r = self.not_placed(r, &side, detail);
                (r, None)
            }
        }
    }

    /// `--deep` on a served file: whether its synced copy, the source of any repair, still
    /// hashes to its list. A missing copy is a sync at work, not rot.
    fn synced_rot(&mut self, path: &str, want: &str) -> Option<String> {
        let synced = self.folders.synced.join(path);
        match place::hash_file(&synced) {
            Ok((sum, size)) => {
                self.bytes_hashed += size;
                (sum.hex() != want).then(|| format!(
                    "the served file is intact, but the synced copy hashes to {}, not the listed {want} (bit rot or an edit in the synced folder, or a sync in progress): delete the synced copy so the next sync fetches it again",
                    sum.hex()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!(
                "the served file is intact, but its synced copy cannot be read: {e}"
            )),
        }
    }

    /// A listed file that could not be placed this run: the previous version stays served,
    /// unless it was altered (then it is quarantined, not served wrong).
    fn not_placed(&mut self, mut r: FileReport, side: &ServedSide, detail: String) -> FileReport {
        r.status = Status::Pending;
        match side {
            ServedSide::Ours { sha256, size, .. } => {
                r.served_sha256 = Some(sha256.clone());
                r.size = Some(*size);
                r.detail = format!("{detail}; the previous verified version stays served");
            }
            ServedSide::Altered { .. } => {
                let path = r.path.clone();
                return self.quarantine(r, &path, &detail);
            }
            _ => r.detail = detail,
        }
        r
    }

    /// Moves an altered served file into `.labctl/quarantine/` and forgets it.
    fn quarantine(&mut self, mut r: FileReport, path: &str, why: &str) -> FileReport {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let folder = format!(
            "{}-{}-{}",
            labctl_core::timefmt::now_rfc3339().replace(':', ""),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dest = self
            .folders
            .state
            .join("quarantine")
            .join(folder)
            .join(path);
        // Unlisted first: every line of the served SHA256SUMS stays true at every instant. The
        // file stays labctl's until it has left the served folder.
        let moved = self
            .write_interim_index(&[path])
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|()| place::beneath(&self.folders.served, path))
            .and_then(|()| dest.parent().map(std::fs::create_dir_all).unwrap_or(Ok(())))
            .and_then(|()| std::fs::rename(self.folders.served_path(path), &dest));
        match moved {
            Ok(()) => {
                self.state.files.remove(path);
                r.status = Status::Quarantined;
                r.served_sha256 = None;
                r.detail = format!(
                    "the served copy was altered and no verified bytes replace it ({why}): moved to {}",
                    dest.display()
                );
            }
            Err(e) => {
                r.status = Status::Failed;
                r.detail =
                    format!("the served copy was altered ({why}) and cannot be moved away: {e}");
            }
        }
        r
    }

    /// A path labctl placed that is no longer listed.
    fn judge_unlisted(&mut self, path: &str, side: ServedSide) -> FileReport {
        let mut r = row(path, Status::Retained);
        match side {
            ServedSide::Ours { sha256, size, .. } => {
                r.served_sha256 = Some(sha256);
                r.size = Some(size);
                r.detail = "no longer listed; served until the new generation is whole".into();
                r
            }
            ServedSide::Absent => {
                r.status = Status::Removed;
                r.detail = "no longer listed, and already gone".into();
                r
            }
            ServedSide::Altered { .. } | ServedSide::Foreign { .. } => {
                self.quarantine(r, path, "no longer listed")
            }
        }
    }

    /// A file where `path` needs a folder (an ancestor), or a folder where it needs a file (the
    /// path itself), and whether it may go: only labctl's own files no longer listed.
    fn in_the_way_of(&self, path: &str, announced: &Announced) -> Option<(String, bool)> {
        let listed = |p: &str| announced.listed.iter().any(|l| l.path == p);
        let ours_unlisted = |p: &str| self.state.files.contains_key(p) && !listed(p);
        let segments: Vec<&str> = path.split('/').collect();
        for n in 1..segments.len() {
            let ancestor = segments[..n].join("/");
            match std::fs::symlink_metadata(self.folders.served_path(&ancestor)) {
                Ok(m) if !m.is_dir() => {
                    let removable = ours_unlisted(&ancestor);
                    return Some((ancestor, removable));
                }
                Err(_) => return None,
                Ok(_) => {}
            }
        }
        let here = std::fs::symlink_metadata(self.folders.served_path(path)).ok()?;
        if !here.is_dir() {
            return None;
        }
        let prefix = format!("{path}/");
        let inside: Vec<&String> = self
            .state
            .files
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        // Removable only when everything in the folder is a file labctl placed that is no
        // longer listed.
        let removable = !inside.is_empty()
            && inside.iter().all(|k| !listed(k))
            && count_files(&self.folders.served_path(path)) == inside.len();
        Some((path.to_string(), removable))
    }

    /// Takes the blockers out of the served list, then out of the folder; their rows.
    fn remove_blockers(&mut self) -> Vec<FileReport> {
        let blockers = std::mem::take(&mut self.blockers);
        let gone: Vec<String> = self
            .state
            .files
            .keys()
            .filter(|k| {
                blockers
                    .iter()
                    .any(|b| *k == b || k.starts_with(&format!("{b}/")))
            })
            .cloned()
            .collect();
        for k in &gone {
            self.state.files.remove(k);
        }
        let mut rows = Vec::new();
        let unlisted = self
            .write_interim_index(&[])
            .and_then(|()| self.save_state());
        for b in &blockers {
            let path = self.folders.served_path(b);
            let result = unlisted
                .as_ref()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|()| place::beneath(&self.folders.served, b))
                .and_then(|()| match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
                    Ok(_) => std::fs::remove_file(&path),
                    Err(e) => Err(e),
                });
            let mut r = row(b, Status::Removed);
            match result {
                Ok(()) => {
                    r.detail = "of the previous generation, in the way of this one's files: removed before placing them".into();
                }
                Err(e) => {
                    r.status = Status::Failed;
                    r.detail = format!(
                        "in the way of this generation's files, and cannot be removed: {e}"
                    );
                }
            }
            rows.push(r);
        }
        rows
    }

    /// Records `line.path` as labctl's, holding the listed bytes.
    fn own(&mut self, announced: &Announced, line: &SumsLine, size: u64, identity: Identity) {
        self.state.files.insert(
            line.path.clone(),
            Placed {
                sha256: line.sha256.hex().to_string(),
                size,
                identity: Some(identity),
                placing: None,
                entry: announced.entry(line, size),
            },
        );
    }
}

#[cfg(test)]
mod tests;

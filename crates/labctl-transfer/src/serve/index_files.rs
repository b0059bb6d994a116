//! The served folder's own `SHA256SUMS`, `.minisig` and `index.json`, which always describe what
//! it holds: built from labctl's state while a generation is still arriving, the synced files
//! byte for byte once it is whole. Files no longer listed leave only after that.

use std::path::Path;

use super::state::Generation;
use super::{place, Announced, FileReport, Run, ServeError, Status, STATE_DIR};
use labctl_core::checksum::Checksum;
use labctl_core::consumer_index::{
    self, IndexDocument, IndexEntry, JSON_NAME, MAX_INDEX_BYTES, SIGNATURE_NAME, SUMS_NAME,
};

impl Run<'_> {
    /// Writes the served index, removes what the whole generation no longer lists, and saves
    /// the state (with only the hashes of files this run looked at).
    pub(super) fn finish(
        &mut self,
        announced: &Announced,
        rows: &mut [FileReport],
        whole: bool,
    ) -> Result<(), ServeError> {
        if whole {
            self.write_whole_index(announced)?;
            for r in rows.iter_mut().filter(|r| r.status == Status::Retained) {
                self.remove(r);
            }
            self.state.generation = Some(Generation {
                sums_sha256: announced.generation().sums_sha256,
                generated_at: announced.json.as_ref().map(|j| j.generated_at.clone()),
                ci_run: announced.json.as_ref().and_then(|j| j.ci_run.clone()),
                trusted_comment: announced.signature.trusted_comment.clone(),
                files: announced.listed.len(),
            });
        } else {
            self.write_interim_index(&[])?;
        }
        self.finishing = true;
        self.save_state()
    }

    /// The synced `SHA256SUMS` and signature byte for byte; `index.json` too when it agrees
    /// with them, else one built from what was verified.
    fn write_whole_index(&self, announced: &Announced) -> Result<(), ServeError> {
        let signature = if announced.signature.verified {
            announced.signature_bytes.as_deref()
        } else {
            None
        };
        self.write_sums(&announced.sums, signature)?;
        let served_synced = match &announced.json {
            Some(json) => self.serve_synced_json(&json.sha256)?,
            None => false,
        };
        match served_synced {
            true => Ok(()),
            // The listed files only: those no longer listed are removed right after.
            false => {
                let listed: std::collections::BTreeSet<&str> =
                    announced.listed.iter().map(|l| l.path.as_str()).collect();
                let entries = self
                    .entries()
                    .into_iter()
                    .filter(|e| listed.contains(e.path.as_str()))
                    .collect();
                self.write_built_json(entries)
            }
        }
    }

    /// A list of exactly the files labctl serves now (but `except`, about to be replaced),
    /// unsigned (the signature signs another list); `index.json` to match.
    pub(super) fn write_interim_index(&self, except: &[&str]) -> Result<(), ServeError> {
        let except: std::collections::BTreeSet<&str> = except.iter().copied().collect();
        let entries: Vec<IndexEntry> = self
            .entries()
            .into_iter()
            .filter(|e| !except.contains(e.path.as_str()))
            .collect();
        let sums = consumer_index::sha256sums(&entries);
        // Unchanged, the list keeps its signature (it may be the last signed one).
        if !same_content(&self.folders.served.join(SUMS_NAME), sums.as_bytes()) {
            self.write_sums(sums.as_bytes(), None)?;
        }
        self.write_built_json(entries)
    }

    /// `SHA256SUMS`, and the signature that goes with it (or none). A stale signature goes
    /// first: a moment without one is better than one that does not match.
    fn write_sums(&self, sums: &[u8], signature: Option<&[u8]>) -> Result<(), ServeError> {
        let changed = !same_content(&self.folders.served.join(SUMS_NAME), sums);
        let signature_path = self.folders.served.join(SIGNATURE_NAME);
        if changed || signature.is_none() {
            match std::fs::remove_file(&signature_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ServeError::Index {
                        path: signature_path.display().to_string(),
                        source: e,
                    })
                }
                _ => {}
            }
        }
        self.write_if_changed(SUMS_NAME, sums)?;
        if let Some(sig) = signature {
            self.write_if_changed(SIGNATURE_NAME, sig)?;
        }
        Ok(())
    }

    /// Serves the synced `index.json` byte for byte if it still hashes to what the run checked
    /// against the list (it may have moved on since). Streamed, never held whole: it is tens of
    /// MB at 50,000 files. Whether it is served.
    fn serve_synced_json(&self, expected: &Checksum) -> Result<bool, ServeError> {
        let served = self.folders.served.join(JSON_NAME);
        if place::hash_file(&served).is_ok_and(|(sum, _)| sum == *expected) {
            return Ok(true);
        }
        let synced = self.folders.synced.join(JSON_NAME);
        if std::fs::metadata(&synced).map_or(true, |m| m.len() > MAX_INDEX_BYTES as u64) {
            return Ok(false);
        }
        let error = |source| index_error(JSON_NAME, &served, source);
        let mut temp = place::TempFile::new(&self.folders.tmp).map_err(error)?;
        match place::fill(&synced, &mut temp, false) {
            Ok(copied) if copied.sha256 == *expected => {}
            Ok(_) | Err(place::FillError::Source(_)) => return Ok(false),
            Err(place::FillError::Destination(e)) => return Err(error(e)),
        }
        temp.sync().map_err(error)?;
        temp.rename_into(&self.folders.served, JSON_NAME)
            .map_err(error)?;
        place::sync_dir(&self.folders.served).map_err(error)?;
        Ok(true)
    }

    fn write_built_json(&self, entries: Vec<IndexEntry>) -> Result<(), ServeError> {
        let current = self
            .read_served(JSON_NAME)
            .and_then(|b| serde_json::from_slice::<IndexDocument>(&b).ok());
        // Rewritten only when what it lists changes: a run that changes nothing writes nothing.
        if current.is_some_and(|d| d.images == entries) {
            return Ok(());
        }
        let doc = consumer_index::document(entries, labctl_core::timefmt::now_rfc3339(), None);
        self.write_if_changed(JSON_NAME, &consumer_index::to_json(&doc))
    }

    /// What the served `index.json` lists: every file labctl serves, by path.
    fn entries(&self) -> Vec<IndexEntry> {
        // The state is a BTreeMap: already in path order, as SHA256SUMS is.
        self.state
            .files
            .values()
            .map(|p| {
                let mut e = IndexEntry::clone(&p.entry);
                e.size = p.size;
                e
            })
            .collect()
    }

    fn read_served(&self, name: &str) -> Option<Vec<u8>> {
        crate::verify::read_capped(&self.folders.served.join(name), MAX_INDEX_BYTES as u64)
            .ok()
            .flatten()
    }

    fn write_if_changed(&self, name: &str, body: &[u8]) -> Result<(), ServeError> {
        if same_content(&self.folders.served.join(name), body) {
            return Ok(());
        }
        let path = self.folders.served.join(name);
        place::write_atomically(&self.folders.tmp, &path, body)
            .map_err(|source| index_error(name, &path, source))
    }

    /// Removes a file the whole generation no longer lists, and folders it leaves empty.
    fn remove(&mut self, r: &mut FileReport) {
        let path = self.folders.served_path(&r.path);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                r.status = Status::Removed;
                r.detail = "no longer listed; removed once the new generation was whole".into();
                r.served_sha256 = None;
                self.state.files.remove(&r.path);
                remove_empty_parents(&self.folders.served, &path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                r.status = Status::Removed;
                self.state.files.remove(&r.path);
            }
            Err(e) => {
                r.status = Status::Failed;
                r.detail = format!("no longer listed, but cannot be removed: {e}");
            }
        }
    }
}

/// A served index file that could not be written: a full disk, or another error.
fn index_error(name: &str, path: &Path, source: std::io::Error) -> ServeError {
    if place::is_no_space(&source) {
        ServeError::NoSpace {
            path: name.to_string(),
            source,
        }
    } else {
        ServeError::Index {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Whether the file at `path` holds exactly `body`, compared as it streams.
fn same_content(path: &Path, body: &[u8]) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    if file
        .metadata()
        .map_or(true, |m| m.len() != body.len() as u64)
    {
        return false;
    }
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, file);
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return at == body.len(),
            Ok(n) if at + n <= body.len() && buf[..n] == body[at..at + n] => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || d.ends_with(STATE_DIR) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

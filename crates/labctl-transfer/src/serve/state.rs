//! What a served folder remembers between runs, in `SERVED/.labctl/state.json`: which files
//! labctl placed (the only ones it will ever replace or remove), the sha256 of files by identity
//! (so that a run with nothing new hashes nothing), and the last generation it made whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::assess::{HashCache, Sha256};
use super::identity::Identity;
use super::place;
use crate::local_file::{self, ReadError, Symlinks};
use labctl_core::consumer_index::IndexEntry;
use labctl_core::state::record::CiRun;

pub const FILE_NAME: &str = "state.json";
/// Version of the state document; a newer one is refused rather than misread.
pub const FORMAT: u32 = 1;
const MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedState {
    pub format: u32,
    /// Files labctl placed, by path relative to the served folder.
    #[serde(default)]
    pub files: BTreeMap<String, Placed>,
    /// sha256 of files (in either folder) by identity, as last hashed: a list in the file,
    /// read straight into the run's cache.
    #[serde(default, with = "known_hashes")]
    pub hashes: HashCache,
    /// The last synced generation every file of which was served at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// The last line of `.labctl/journal` this file already holds (see [`super::journal`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub journaled: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub sha256: String,
    pub size: u64,
    /// The served file's identity after placing it; `None` between claiming the path and the
    /// rename (a run killed there left either nothing or the new file: the next run hashes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Bytes being placed over this file, written before the rename: a run killed right after
    /// it left these, and they are labctl's too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placing: Option<Box<Replacement>>,
    /// What the served `index.json` says about the file; shared with the synced generation's
    /// entry for it (tens of thousands of files: one copy each, not one per holder).
    #[serde(deserialize_with = "shared_entry")]
    pub entry: Arc<IndexEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    pub sha256: String,
    pub entry: Arc<IndexEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownHash {
    pub identity: Identity,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// sha256 of the synced `SHA256SUMS` that was served whole.
    pub sums_sha256: String,
    /// From the synced `index.json`, when it agreed with `SHA256SUMS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_run: Option<CiRun>,
    /// The signature's trusted comment, when a key verified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_comment: Option<String>,
    /// Files in the generation.
    pub files: usize,
}

/// Index entries by path, shared between the synced generation and the state.
pub type SharedEntries = Arc<BTreeMap<String, Arc<IndexEntry>>>;

thread_local! {
    /// Entries a state being loaded on this thread may share (see [`ServedState::load_sharing`]).
    static SHARED: std::cell::RefCell<Option<SharedEntries>> =
        const { std::cell::RefCell::new(None) };
}

/// An entry as loaded: the shared one when it is the same, so that the copy just parsed is
/// given back at once (rather than after the whole state is loaded, when its memory is
/// scattered among what stays).
fn shared_entry<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<IndexEntry>, D::Error> {
    let entry = IndexEntry::deserialize(d)?;
    let shared = SHARED.with(|s| {
        s.borrow()
            .as_ref()
            .and_then(|m| m.get(&entry.path).filter(|e| ***e == entry).cloned())
    });
    Ok(shared.unwrap_or_else(|| Arc::new(entry)))
}

/// `hashes` as a list of `{identity, sha256}`, read into (and written from) the cache's map.
mod known_hashes {
    use super::{HashCache, KnownHash, Sha256};
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(cache: &HashCache, s: S) -> Result<S::Ok, S::Error> {
        super::Hashes { cache, seen: None }.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashCache, D::Error> {
        struct Known;
        impl<'de> Visitor<'de> for Known {
            type Value = HashCache;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of known hashes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HashCache, A::Error> {
                let mut cache = HashCache::new();
                while let Some(KnownHash { identity, sha256 }) = seq.next_element()? {
                    cache.extend(Sha256::from_hex(&sha256).map(|s| (identity, s)));
                }
                Ok(cache)
            }
        }
        d.deserialize_seq(Known)
    }
}

/// [`ServedState`] as written: the same document, borrowed.
#[derive(Serialize)]
struct Saved<'a> {
    format: u32,
    files: &'a BTreeMap<String, Placed>,
    hashes: Hashes<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: &'a Option<Generation>,
    #[serde(skip_serializing_if = "is_zero")]
    journaled: u64,
}

struct Hashes<'a> {
    cache: &'a HashCache,
    seen: Option<&'a BTreeSet<Identity>>,
}

impl Serialize for Hashes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Known<'a> {
            identity: &'a Identity,
            sha256: String,
        }
        s.collect_seq(
            self.cache
                .iter()
                .filter(|(id, _)| self.seen.is_none_or(|seen| seen.contains(id)))
                .map(|(identity, sha256)| Known {
                    identity,
                    sha256: sha256.hex(),
                }),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: ReadError,
    },
    #[error("`{path}` is not a state file labctl wrote: {message}")]
    Corrupt { path: String, message: String },
    #[error("`{path}` was written by a newer labctl (format {found}, this one reads {FORMAT})")]
    Newer { path: String, found: u32 },
    #[error("cannot read `{path}`")]
    ReadJournal {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ServedState {
    /// [`ServedState::load`], sharing the entries of `entries` that the state holds too.
    pub fn load_sharing(
        state_dir: &Path,
        entries: SharedEntries,
    ) -> Result<ServedState, StateError> {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                SHARED.with(|s| s.borrow_mut().take());
            }
        }
        SHARED.with(|s| *s.borrow_mut() = Some(entries));
        let _reset = Reset;
        ServedState::load(state_dir)
    }

    pub fn load(state_dir: &Path) -> Result<ServedState, StateError> {
        let path = state_dir.join(FILE_NAME);
        let display = path.display().to_string();
        let open = || local_file::open(&path, MAX_STATE_BYTES, Symlinks::Refuse);
        // Parsed as it streams: at 50,000 files the file is tens of MB, and holding it whole
        // beside what it parses into would double the run's peak memory.
        let reader = match open() {
            Ok((reader, _)) => std::io::BufReader::new(reader),
            Err(ReadError::NotFound(_)) => {
                return Ok(ServedState {
                    format: FORMAT,
                    ..ServedState::default()
                })
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: display,
                    source,
                })
            }
        };
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let corrupt = |e: serde_json::Error| StateError::Corrupt {
            path: display.clone(),
            message: e.to_string(),
        };
        let newer = |found| StateError::Newer {
            path: display.clone(),
            found,
        };
        let state: ServedState = match serde_json::from_reader(reader) {
            Ok(state) => state,
            // A newer labctl's state may not parse as this one's: say so rather than "corrupt".
            Err(e) => {
                let head = open().ok().and_then(|(r, _)| {
                    serde_json::from_reader::<_, Head>(std::io::BufReader::new(r)).ok()
                });
                return Err(match head {
                    Some(h) if h.format > FORMAT => newer(h.format),
                    _ => corrupt(e),
                });
            }
        };
        if state.format > FORMAT {
            return Err(newer(state.format));
        }
        // Paths from the file are about to be hashed, replaced, moved and deleted: each must be
        // a clean relative path below the served folder, outside labctl's own.
        if let Some(bad) = state.files.keys().find(|p| !ServedState::is_placeable(p)) {
            return Err(StateError::Corrupt {
                path: display,
                message: format!("`{bad}` is not a path labctl places"),
            });
        }
        Ok(state)
    }

    /// A clean relative path below the served folder, outside labctl's own files.
    pub fn is_placeable(path: &str) -> bool {
        labctl_core::manifest::schema::check_relative_key(path).is_ok()
            && path.split('/').next() != Some(labctl_core::consumer_index::SERVED_STATE_DIR)
            && !labctl_core::consumer_index::is_index_file(path)
    }

    /// Replaces the state file whole (temporary file, fsync, rename, fsync of the folder), with
    /// the hashes of `cache` (only those of files in `seen`, when given) in place of its own.
    pub fn save(
        &self,
        state_dir: &Path,
        tmp_dir: &Path,
        cache: &HashCache,
        seen: Option<&BTreeSet<Identity>>,
    ) -> Result<(), StateError> {
        let path = state_dir.join(FILE_NAME);
        // Streamed into the temporary file from what the run holds: never a second copy of the
        // state (or of its hash cache) in memory.
        let view = Saved {
            format: self.format,
            files: &self.files,
            hashes: Hashes { cache, seen },
            generation: &self.generation,
            journaled: self.journaled,
        };
        let write = |w: &mut dyn std::io::Write| {
            serde_json::to_writer(w, &view).map_err(std::io::Error::from)
        };
        place::write_atomically_with(tmp_dir, &path, &write).map_err(|source| StateError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_state_is_empty_and_a_saved_one_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let empty = ServedState::load(d.path()).unwrap();
        assert_eq!(empty.format, FORMAT);
        assert!(empty.files.is_empty());
        let mut state = empty.clone();
        state.generation = Some(Generation {
            sums_sha256: "ab".into(),
            generated_at: Some("2026-12-01T00:00:00Z".into()),
            ci_run: None,
            trusted_comment: None,
            files: 0,
        });
        state.save(d.path(), &tmp, &HashCache::new(), None).unwrap();
        assert_eq!(ServedState::load(d.path()).unwrap(), state);
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_or_newer_states_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE_NAME), b"{").unwrap();
        assert!(matches!(
            ServedState::load(d.path()),
            Err(StateError::Corrupt { .. })
        ));
        let escaping = r#"{"format": 1, "files": {"../etc/x": {"sha256": "a", "size": 1, "entry": {"name": "x", "path": "x", "size": 1, "sha256": "a", "checksum": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}}}}"#;
        std::fs::write(d.path().join(FILE_NAME), escaping).unwrap();
        let err = ServedState::load(d.path()).unwrap_err();
        assert!(
            err.to_string().contains("`../etc/x` is not a path"),
            "{err}"
        );
        std::fs::write(d.path().join(FILE_NAME), br#"{"format": 9}"#).unwrap();
        assert!(matches!(
            ServedState::load(d.path()),
            Err(StateError::Newer { found: 9, .. })
        ));
    }
}

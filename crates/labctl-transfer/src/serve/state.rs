//! What a served folder remembers between runs, in `SERVED/.labctl/state.json`: which files
//! labctl placed (the only ones it will ever replace or remove), the sha256 of files by identity
//! (so that a run with nothing new hashes nothing), and the last generation it made whole.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

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
    /// sha256 of files (in either folder) by identity, as last hashed.
    #[serde(default)]
    pub hashes: Vec<KnownHash>,
    /// The last synced generation every file of which was served at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
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
    pub placing: Option<Replacement>,
    /// What the served `index.json` says about the file.
    pub entry: IndexEntry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    pub sha256: String,
    pub entry: IndexEntry,
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
    #[error("cannot write `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ServedState {
    pub fn load(state_dir: &Path) -> Result<ServedState, StateError> {
        let path = state_dir.join(FILE_NAME);
        let display = path.display().to_string();
        let bytes = match local_file::read(&path, MAX_STATE_BYTES, Symlinks::Refuse) {
            Ok(bytes) => bytes,
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
        let head: Head = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: display.clone(),
            message: e.to_string(),
        })?;
        if head.format > FORMAT {
            return Err(StateError::Newer {
                path: display,
                found: head.format,
            });
        }
        let state: ServedState =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: display.clone(),
                message: e.to_string(),
            })?;
        // Paths from the file are about to be hashed, replaced, moved and deleted: each must be
        // a clean relative path below the served folder, outside labctl's own.
        if let Some(bad) = state.files.keys().find(|p| {
            labctl_core::manifest::schema::check_relative_key(p).is_err()
                || p.split('/').next() == Some(labctl_core::consumer_index::SERVED_STATE_DIR)
                || labctl_core::consumer_index::is_index_file(p)
        }) {
            return Err(StateError::Corrupt {
                path: display,
                message: format!("`{bad}` is not a path labctl places"),
            });
        }
        Ok(state)
    }

    /// Replaces the state file whole (temporary file, fsync, rename, fsync of the folder).
    pub fn save(&self, state_dir: &Path, tmp_dir: &Path) -> Result<(), StateError> {
        let path = state_dir.join(FILE_NAME);
        let body = serde_json::to_vec(self).expect("the state always serializes");
        place::write_atomically(tmp_dir, &path, &body).map_err(|source| StateError::Write {
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
        state.save(d.path(), &tmp).unwrap();
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

//! What the synced folder announces: its signed `SHA256SUMS` (with the signature checked when a
//! key is given), and the entries of its unsigned `index.json` that agree with that list.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{Folders, ServeError, SyncedGeneration};
use crate::verify::{self, SignatureStatus, VerifyError};
use labctl_core::consumer_index::{
    self, IndexDocument, IndexEntry, SumsLine, JSON_NAME, MAX_INDEX_BYTES, SUMS_NAME,
};

/// The synced folder's announced generation.
pub(super) struct Announced {
    pub(super) sums: Vec<u8>,
    pub(super) signature: SignatureStatus,
    pub(super) signature_bytes: Option<Vec<u8>>,
    pub(super) listed: Vec<SumsLine>,
    /// `index.json`'s entries that agree with `SHA256SUMS`.
    pub(super) entries: Arc<BTreeMap<String, Arc<IndexEntry>>>,
    /// `index.json` as synced, when it agrees with `SHA256SUMS` entirely.
    pub(super) json: Option<SyncedJson>,
}

/// The synced `index.json` parsed as it streams (it is tens of MB at 50,000 files), with the
/// sha256 of its bytes; `None` when it is missing, too large or not an index.
fn read_index_json(path: &Path) -> Option<(labctl_core::checksum::Checksum, IndexDocument)> {
    struct Hashing<R> {
        inner: R,
        hasher: crate::pipeline::hash::Hasher,
    }
    impl<R: std::io::Read> std::io::Read for Hashing<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.hasher.update(&buf[..n]);
            Ok(n)
        }
    }
    let (reader, _) = crate::local_file::open(
        path,
        MAX_INDEX_BYTES as u64,
        crate::local_file::Symlinks::Follow,
    )
    .ok()?;
    let mut hashing = Hashing {
        inner: std::io::BufReader::new(reader),
        hasher: crate::pipeline::hash::Hasher::new(labctl_core::checksum::Algorithm::Sha256),
    };
    let doc: IndexDocument = serde_json::from_reader(&mut hashing).ok()?;
    // serde_json reads to the end to check nothing follows the document; whatever is left
    // is hashed too.
    std::io::copy(&mut hashing, &mut std::io::sink()).ok()?;
    Some((hashing.hasher.finish(), doc))
}

/// The synced `index.json`: its sha256 (it is served byte for byte, read again at the end), the
/// two fields a run reports; its entries live in [`Announced::entries`] alone.
pub(super) struct SyncedJson {
    pub(super) sha256: labctl_core::checksum::Checksum,
    pub(super) generated_at: String,
    pub(super) ci_run: Option<labctl_core::state::record::CiRun>,
}

impl Announced {
    pub(super) fn read(
        folders: &Folders,
        public_key: Option<&str>,
    ) -> Result<Announced, ServeError> {
        let dir = &folders.synced;
        let sums_path = dir.join(SUMS_NAME);
        let sums = verify::read_capped(&sums_path, MAX_INDEX_BYTES as u64)?.ok_or_else(|| {
            VerifyError::NoSums {
                path: sums_path.display().to_string(),
            }
        })?;
        let (signature, signature_bytes) = match public_key {
            Some(key) => {
                let (status, bytes) = verify::check_signature(dir, &sums, key)?;
                (status, Some(bytes))
            }
            None => (
                SignatureStatus {
                    verified: false,
                    key_id: None,
                    trusted_comment: None,
                },
                None,
            ),
        };
        let listed =
            consumer_index::parse_sha256sums(&sums).map_err(|source| VerifyError::BadSums {
                path: sums_path.display().to_string(),
                source,
            })?;
        // index.json is not signed, and may belong to another generation than SHA256SUMS
        // while a sync runs: only what agrees with the signed list is used.
        let doc = read_index_json(&dir.join(JSON_NAME));
        let wanted: BTreeMap<&str, &str> = listed
            .iter()
            .map(|l| (l.path.as_str(), l.sha256.hex()))
            .collect();
        let (json, entries) = match doc {
            Some((sha256, d)) => {
                let images = d.images.len();
                // Inserted one by one: collecting would sort a copy of them all first.
                let mut entries = BTreeMap::new();
                for e in d.images {
                    if wanted.get(e.path.as_str()) == Some(&e.sha256.as_str()) {
                        entries.insert(e.path.clone(), Arc::new(e));
                    }
                }
                let agrees = images == wanted.len() && entries.len() == wanted.len();
                let json = agrees.then_some(SyncedJson {
                    sha256,
                    generated_at: d.generated_at,
                    ci_run: d.ci_run,
                });
                (json, Arc::new(entries))
            }
            None => (None, Arc::default()),
        };
        Ok(Announced {
            sums,
            signature,
            signature_bytes,
            listed,
            entries,
            json,
        })
    }

    pub(super) fn generation(&self) -> SyncedGeneration {
        SyncedGeneration {
            sums_sha256: labctl_core::checksum::Checksum::sha256(&self.sums)
                .hex()
                .to_string(),
            files: self.listed.len(),
            generated_at: self.json.as_ref().map(|j| j.generated_at.clone()),
            ci_run: self.json.as_ref().and_then(|j| j.ci_run.clone()),
        }
    }

    /// What the served `index.json` says about a listed file.
    pub(super) fn entry(&self, line: &SumsLine, size: u64) -> Arc<IndexEntry> {
        self.entries.get(&line.path).cloned().unwrap_or_else(|| {
            Arc::new(IndexEntry {
                name: line.path.clone(),
                path: line.path.clone(),
                size,
                sha256: line.sha256.hex().to_string(),
                checksum: line.sha256.clone(),
                source_url: None,
                uploaded_at: None,
                labctl_version: None,
            })
        })
    }
}

//! Looking at a path in each folder without changing anything: what the served folder holds
//! there (and whether it is still what labctl placed), and whether the synced copy is worth
//! copying yet. Hashes only what the identity cache cannot vouch for.

use std::collections::BTreeMap;
use std::path::Path;

use super::identity::Identity;
use super::place;
use super::state::Placed;

/// sha256 by file identity, for the files no record vouches for: served files labctl did not
/// place (or that were altered), and synced copies that do not hold their listed bytes.
pub type HashCache = BTreeMap<Identity, Sha256>;

/// A sha256 as its 32 bytes: a cache of 100,000 files holds 3 MB of them rather than 8 of hex
/// strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// `None` for anything but 64 hex digits (a cache entry that is not one is dropped).
    pub fn from_hex(hex: &str) -> Option<Sha256> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Sha256(out))
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether this is the sha256 `hex` spells (in either case).
    pub fn is(&self, hex: &str) -> bool {
        Sha256::from_hex(hex).is_some_and(|other| other == *self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedSide {
    Absent,
    /// labctl placed it and it still holds these bytes.
    Ours {
        sha256: String,
        size: u64,
        identity: Identity,
    },
    /// labctl placed it, but its bytes are no longer what it placed (`None`: it is no longer a
    /// readable regular file).
    Altered {
        sha256: Option<String>,
        identity: Option<Identity>,
    },
    /// Not labctl's: never replaced or removed unless it already holds the listed bytes.
    Foreign {
        sha256: Option<String>,
        identity: Option<Identity>,
    },
}

#[derive(Debug, Clone)]
pub struct ServedLook {
    pub side: ServedSide,
    /// A hash computed by this look, for the cache.
    pub learned: Option<(Identity, String)>,
    pub bytes_hashed: u64,
}

/// What is at `path` in the served folder. `deep` rehashes even files whose identity is
/// unchanged.
pub fn served(path: &Path, placed: Option<&Placed>, cache: &HashCache, deep: bool) -> ServedLook {
    let mut look = ServedLook {
        side: ServedSide::Absent,
        learned: None,
        bytes_hashed: 0,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return look,
        Err(_) => {
            look.side = unreadable(placed.is_some());
            return look;
        }
    };
    if !meta.is_file() {
        look.side = unreadable(placed.is_some());
        return look;
    }
    let identity = Identity::of(&meta);
    let unchanged = placed.is_some_and(|p| p.identity == Some(identity));
    let sha256 = match (unchanged && !deep, placed, cache.get(&identity)) {
        (true, Some(p), _) => p.sha256.clone(),
        (false, _, Some(known)) if !deep => known.hex(),
        _ => match place::hash_file(path) {
            Ok((sum, size)) => {
                look.bytes_hashed = size;
                let hex = sum.hex().to_string();
                look.learned = Some((identity, hex.clone()));
                hex
            }
            Err(_) => {
                look.side = unreadable(placed.is_some());
                return look;
            }
        },
    };
    look.side = match placed {
        None => ServedSide::Foreign {
            sha256: Some(sha256),
            identity: Some(identity),
        },
        // Its own bytes, or the ones a killed run was renaming over them.
        Some(p) if p.sha256 == sha256 || p.placing.as_ref().is_some_and(|r| r.sha256 == sha256) => {
            ServedSide::Ours {
                sha256,
                size: meta.len(),
                identity,
            }
        }
        Some(_) => ServedSide::Altered {
            sha256: Some(sha256),
            identity: Some(identity),
        },
    };
    look
}

fn unreadable(ours: bool) -> ServedSide {
    if ours {
        ServedSide::Altered {
            sha256: None,
            identity: None,
        }
    } else {
        ServedSide::Foreign {
            sha256: None,
            identity: None,
        }
    }
}

/// Whether the synced copy may hold the listed bytes: the copy itself is what proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncedSide {
    /// Worth copying; `size` as it is now.
    Candidate { size: u64 },
    /// Not yet, and why (a normal state while a sync runs).
    NotYet { detail: String },
}

/// Also the synced copy's identity, when it has one: the cache keeps what this run looked at.
pub fn synced(
    path: &Path,
    expected_size: Option<u64>,
    want: &str,
    cache: &HashCache,
) -> (SyncedSide, Option<Identity>) {
    // Judged before opening: opening a FIFO left at a listed path would block.
    match std::fs::metadata(path) {
        Ok(meta) => (
            judge_synced(&meta, expected_size, want, cache),
            Some(Identity::of(&meta)),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            SyncedSide::NotYet {
                detail: "not in the synced folder yet".into(),
            },
            None,
        ),
        Err(e) => (
            SyncedSide::NotYet {
                detail: format!("cannot read the synced copy's metadata: {e}"),
            },
            None,
        ),
    }
}

fn judge_synced(
    meta: &std::fs::Metadata,
    expected_size: Option<u64>,
    want: &str,
    cache: &HashCache,
) -> SyncedSide {
    let not_yet = |detail: String| SyncedSide::NotYet { detail };
    if !meta.is_file() {
        return not_yet("the synced path is not a regular file".into());
    }
    let size = meta.len();
    if let Some(expected) = expected_size.filter(|&e| e != size) {
        return not_yet(format!(
            "the synced copy has {size} of {expected} bytes{}",
            if size < expected {
                " (a sync in progress, or a truncated copy)"
            } else {
                ""
            }
        ));
    }
    // Hashed before and unchanged since: no need to read it again to know it is not the one.
    if let Some(known) = cache.get(&Identity::of(meta)).filter(|k| !k.is(want)) {
        return not_yet(format!(
            "the synced copy's sha256 is {}, not the listed one (a sync in progress, or a changed copy)",
            known.hex()
        ));
    }
    SyncedSide::Candidate { size }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labctl_core::checksum::Checksum;
    use labctl_core::consumer_index::IndexEntry;

    fn placed(body: &[u8], identity: Option<Identity>) -> Placed {
        let sha = Checksum::sha256(body);
        Placed {
            sha256: sha.hex().to_string(),
            size: body.len() as u64,
            identity,
            placing: None,
            entry: std::sync::Arc::new(IndexEntry {
                name: "x".into(),
                path: "x".into(),
                size: body.len() as u64,
                sha256: sha.hex().to_string(),
                checksum: sha,
                source_url: None,
                uploaded_at: None,
                labctl_version: None,
            }),
        }
    }

    #[test]
    fn an_unchanged_file_of_ours_is_not_hashed_unless_deep() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        let id = Identity::of(&std::fs::metadata(&p).unwrap());
        let ours = placed(b"abc", Some(id));
        let look = served(&p, Some(&ours), &HashCache::new(), false);
        assert_eq!(look.bytes_hashed, 0);
        assert!(matches!(look.side, ServedSide::Ours { .. }));
        let deep = served(&p, Some(&ours), &HashCache::new(), true);
        assert_eq!(deep.bytes_hashed, 3);
    }

    #[test]
    fn altered_foreign_and_absent_files_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        let cache = HashCache::new();
        assert_eq!(served(&p, None, &cache, false).side, ServedSide::Absent);
        std::fs::write(&p, b"abd").unwrap();
        let ours = placed(b"abc", None);
        assert!(matches!(
            served(&p, Some(&ours), &cache, false).side,
            ServedSide::Altered {
                sha256: Some(_),
                ..
            }
        ));
        assert!(matches!(
            served(&p, None, &cache, false).side,
            ServedSide::Foreign {
                sha256: Some(_),
                ..
            }
        ));
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert!(matches!(
            served(&p, Some(&ours), &cache, false).side,
            ServedSide::Altered { sha256: None, .. }
        ));
    }

    #[test]
    fn a_short_or_known_wrong_synced_copy_is_not_a_candidate() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        let (aa, bb_hex) = ("aa".repeat(32), "bb".repeat(32));
        let mut cache = HashCache::new();
        let side = |size, want: &str| synced(&p, size, want, &cache).0;
        assert!(matches!(side(None, &aa), SyncedSide::NotYet { .. }));
        std::fs::write(&p, b"ab").unwrap();
        let SyncedSide::NotYet { detail } = side(Some(3), &aa) else {
            panic!()
        };
        assert!(detail.contains("2 of 3 bytes"), "{detail}");
        assert_eq!(side(Some(2), &aa), SyncedSide::Candidate { size: 2 });
        let bb = Sha256::from_hex(&bb_hex).unwrap();
        cache.insert(Identity::of(&std::fs::metadata(&p).unwrap()), bb);
        let side = |size, want: &str| synced(&p, size, want, &cache).0;
        assert!(matches!(side(None, &aa), SyncedSide::NotYet { .. }));
        assert_eq!(side(None, &bb_hex), SyncedSide::Candidate { size: 2 });
        assert_eq!(bb.hex(), bb_hex);
        assert!(bb.is(&bb_hex.to_uppercase()));
        assert_eq!(Sha256::from_hex("bb"), None);
    }
}

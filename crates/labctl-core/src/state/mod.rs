//! Actual state: the records and objects found in a store, as data. Reading them is the store
//! crate's job (`labctl_store::refresh`).

use std::collections::BTreeMap;

use crate::consumer_index::IndexFiles;
use crate::object::ObjectMeta;

pub mod record;

pub use record::{Record, RecordError, StateRecord};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectState {
    /// `--refresh=false`: objects were not looked at.
    NotChecked,
    Missing,
    Present(ObjectMeta),
}

/// Why a record could not be read. The two are handled differently: a newer labctl's record
/// stops every plan (this labctl cannot know what it means), a corrupt one is shown and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// Its `schemaVersion` is newer than this labctl knows.
    Newer { schema_version: u64 },
    /// Not JSON, too large, or not a record of any version this labctl knows.
    Corrupt(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Newer { schema_version } => write!(
                f,
                "written by a newer labctl (schemaVersion {schema_version}); upgrade labctl"
            ),
            Unreadable::Corrupt(why) => write!(f, "corrupt: {why}"),
        }
    }
}

impl From<RecordError> for Unreadable {
    fn from(e: record::RecordError) -> Unreadable {
        match e {
            RecordError::NewerSchema(n) => Unreadable::Newer { schema_version: n },
            other => Unreadable::Corrupt(other.to_string()),
        }
    }
}

impl ActualState {
    /// Record keys written by a newer labctl. Planning against them would mean guessing what
    /// they say, so every command that plans refuses the store while there is one.
    pub fn newer_records(&self) -> Vec<&str> {
        self.records
            .values()
            .filter(|r| matches!(r.record, Err(Unreadable::Newer { .. })))
            .map(|r| r.record_key.as_str())
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct ActualRecord {
    /// `metadata/<destination>.json`
    pub record_key: String,
    /// `images/<destination>`
    pub object_key: String,
    /// The record's ETag when it was read (a saved plan is stale if it moved).
    pub etag: String,
    /// The record, or why it could not be read.
    pub record: Result<Record, Unreadable>,
    pub object: ObjectState,
}

/// Everything found in the store, keyed by record key.
#[derive(Debug, Clone, Default)]
pub struct ActualState {
    pub records: BTreeMap<String, ActualRecord>,
    /// Whether objects were HEADed.
    pub refreshed: bool,
    /// The consumer index files in `images/`.
    pub index: IndexFiles,
    /// Records fetched because the snapshot did not know them at their listed ETag: apply
    /// rewrites the snapshot when there are any.
    pub snapshot_misses: usize,
    /// The keys under `images/`, when the refresh listed them: an object not among them does
    /// not exist, without a HEAD to ask.
    pub listed_objects: Option<std::collections::BTreeSet<String>>,
    /// Objects the manifest wants that exist without a record, by object key: published by a
    /// run that was killed before it wrote the record, or put there by someone else.
    pub unrecorded: BTreeMap<String, ObjectMeta>,
}

/// `.labctl/records.json`: every record as apply last saw it, with the ETag it had. A refresh
/// uses an entry only while the listing shows the record with that same ETag, so the snapshot
/// saves fetching records and is never trusted over the store.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub records: BTreeMap<String, SnapshotEntry>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotEntry {
    pub etag: String,
    pub record: StateRecord,
}

pub const SNAPSHOT_KEY: &str = ".labctl/records.json";
pub const SNAPSHOT_FORMAT: u32 = 1;
/// 10,000 records are ~25 MB; anything far larger is not a snapshot labctl wrote.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

impl Snapshot {
    /// The snapshot of `state`: its current-schema records with their ETags.
    pub fn of(state: &ActualState) -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            records: state
                .records
                .values()
                .filter(|r| !r.etag.is_empty())
                .filter_map(|r| match &r.record {
                    Ok(Record::Current(rec)) => Some((
                        r.record_key.clone(),
                        SnapshotEntry {
                            etag: r.etag.clone(),
                            record: (**rec).clone(),
                        },
                    )),
                    _ => None,
                })
                .collect(),
        }
    }
}

//! Actual state: the records and objects found in a store, as data. Reading them is the store
//! crate's job (`labctl_store::refresh`).

use std::collections::BTreeMap;

use crate::object::ObjectMeta;

/// The consumer index's files as found in the store (each `None` when absent), kept as what a
/// plan compares them by, not as their bytes: at tens of thousands of images the index is
/// megabytes, read at the start of a plan and compared only after every change is planned.
/// Made by the consumer index's `found`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFiles {
    /// The sha256 of `SHA256SUMS`.
    pub sums: Option<[u8; 32]>,
    pub json: Option<JsonFound>,
    /// `SHA256SUMS.minisig`, whole (a few hundred bytes).
    pub signature: Option<Vec<u8>>,
}

/// What `index.json` in the store says about the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonFound {
    /// A 1.x index: the sha256 of its `images`, as the consumer index's `images_digest`
    /// computes it. Any 1.x index describes the objects the same way: a newer minor version
    /// alone is no reason to rewrite (and re-sign) what the NAS already holds.
    Images([u8; 32]),
    /// Not an index this version reads (unparseable, or another major version).
    Other,
}

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
    /// How the listing showed the record, when it showed no ETag.
    pub listed: Option<ListedWrite>,
    /// How the listing showed the object, when it showed no ETag.
    pub object_listed: Option<ListedWrite>,
}

/// A key as a listing that shows no ETags (s3s-fs) showed it: its size and when the store last
/// wrote it. A later listing showing the same pair shows the same write, unless the key was
/// rewritten with the same size within the store's clock tick (a millisecond on s3s-fs); drift
/// does not rely on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedWrite {
    pub size: u64,
    pub modified: String,
}

impl ListedWrite {
    /// The listed write of `meta`, if it was listed without an ETag but with a time.
    pub fn of(meta: &ObjectMeta) -> Option<ListedWrite> {
        if !meta.etag.is_empty() {
            return None;
        }
        meta.listed_modified.clone().map(|modified| ListedWrite {
            size: meta.size,
            modified,
        })
    }
}

/// Everything found in the store, keyed by record key.
#[derive(Debug, Clone, Default)]
pub struct ActualState {
    pub records: BTreeMap<String, ActualRecord>,
    /// Whether objects were HEADed.
    pub refreshed: bool,
    /// The consumer index files in `images/`.
    pub index: IndexFiles,
    /// Records fetched (or objects HEADed on a store that lists no ETags) because the snapshot
    /// did not know them as listed: apply rewrites the snapshot when there are any.
    pub snapshot_misses: usize,
    /// The keys under `images/`, when the refresh listed them: an object not among them does
    /// not exist, without a HEAD to ask.
    pub listed_objects: Option<std::collections::BTreeSet<String>>,
    /// Objects the manifest wants that exist without a record, by object key: published by a
    /// run that was killed before it wrote the record, or put there by someone else.
    pub unrecorded: BTreeMap<String, ObjectMeta>,
}

/// `.labctl/records.json.zst`: every record as apply last saw it, with the ETag it had. A refresh
/// uses an entry only while the listing shows the record with that same ETag (or, on a store
/// that lists no ETags, the same [`ListedWrite`]), so the snapshot saves fetching records and
/// is never trusted over the store.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub records: BTreeMap<String, SnapshotEntry>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotEntry {
    pub etag: String,
    pub record: StateRecord,
    /// The listing's view of the record when it was read after that listing (a store that
    /// lists no ETags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed: Option<ListedWrite>,
    /// The object's ETag, as a HEAD after a listing that showed no ETag found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ListedObject>,
}

/// An object's ETag with the [`ListedWrite`] the listing showed just before it was HEADed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedObject {
    pub listed: ListedWrite,
    pub etag: String,
}

/// zstd-compressed: records repeat the same field names and URLs, so 10,000 of them are about
/// 17 MB of JSON and under 2 MB compressed, and the snapshot is written and read as a stream,
/// never held whole.
pub const SNAPSHOT_KEY: &str = ".labctl/records.json.zst";
/// Where labctl 0.1 kept the snapshot uncompressed; removed when the compressed one is written.
pub const LEGACY_SNAPSHOT_KEY: &str = ".labctl/records.json";
pub const SNAPSHOT_FORMAT: u32 = 1;
/// The most snapshot JSON a refresh reads (compressed or not): 10,000 records are ~17 MB;
/// anything far larger is not a snapshot labctl wrote.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// [`SnapshotEntry`] borrowed from the state it is taken of: a snapshot of tens of thousands of
/// records is serialized without a copy of them all beside the state.
#[derive(serde::Serialize)]
struct SnapshotEntryRef<'a> {
    etag: &'a str,
    record: &'a StateRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    listed: Option<&'a ListedWrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<ListedObject>,
}

#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    records: BTreeMap<&'a str, SnapshotEntryRef<'a>>,
}

impl Snapshot {
    /// The snapshot of `state`: its current-schema records with their ETags.
    pub fn of(state: &ActualState) -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            records: Snapshot::entries(state)
                .map(|(key, e)| {
                    (
                        key.to_string(),
                        SnapshotEntry {
                            etag: e.etag.to_string(),
                            record: e.record.clone(),
                            listed: e.listed.cloned(),
                            object: e.object,
                        },
                    )
                })
                .collect(),
        }
    }

    /// [`Snapshot::of`] as the JSON the store keeps, written straight from `state` into `out`.
    pub fn write_json(state: &ActualState, mut out: impl std::io::Write) -> std::io::Result<()> {
        let snapshot = SnapshotRef {
            format: SNAPSHOT_FORMAT,
            records: Snapshot::entries(state).collect(),
        };
        serde_json::to_writer(&mut out, &snapshot)?;
        // Flushed here: a buffered writer dropped unflushed would lose the error.
        out.flush()
    }

    fn entries(state: &ActualState) -> impl Iterator<Item = (&str, SnapshotEntryRef<'_>)> {
        state
            .records
            .values()
            .filter(|r| !r.etag.is_empty())
            .filter_map(|r| match &r.record {
                Ok(Record::Current(rec)) => Some((
                    r.record_key.as_str(),
                    SnapshotEntryRef {
                        etag: &r.etag,
                        record: rec,
                        listed: r.listed.as_ref(),
                        object: match (&r.object, &r.object_listed) {
                            (ObjectState::Present(meta), Some(listed))
                                if !meta.etag.is_empty() && meta.size == listed.size =>
                            {
                                Some(ListedObject {
                                    listed: listed.clone(),
                                    etag: meta.etag.clone(),
                                })
                            }
                            _ => None,
                        },
                    },
                )),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(etag: &str, size: u64, modified: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            key: "images/vyos/gw.raw".into(),
            size,
            etag: etag.into(),
            user_metadata: BTreeMap::new(),
            listed_modified: modified.map(str::to_string),
        }
    }

    fn write(size: u64, modified: &str) -> ListedWrite {
        ListedWrite {
            size,
            modified: modified.into(),
        }
    }

    #[test]
    fn a_listed_write_stands_in_only_for_a_missing_etag() {
        assert_eq!(ListedWrite::of(&listed("\"e\"", 5, Some("1.5"))), None);
        assert_eq!(ListedWrite::of(&listed("", 5, None)), None);
        assert_eq!(
            ListedWrite::of(&listed("", 5, Some("1.5"))),
            Some(write(5, "1.5"))
        );
    }

    fn state_with(object: ObjectState, object_listed: Option<ListedWrite>) -> ActualState {
        let rec = record::tests::sample();
        let key = "metadata/vyos/gw.raw.json".to_string();
        ActualState {
            records: BTreeMap::from([(
                key.clone(),
                ActualRecord {
                    record_key: key,
                    object_key: rec.key.clone(),
                    etag: "\"r\"".into(),
                    record: Ok(Record::Current(Box::new(rec))),
                    object,
                    listed: Some(write(900, "7.25")),
                    object_listed,
                },
            )]),
            ..Default::default()
        }
    }

    #[test]
    fn the_snapshot_pairs_an_object_etag_with_the_write_listed_before_it() {
        let present = ObjectState::Present(listed("\"o\"", 5, None));
        let state = state_with(present.clone(), Some(write(5, "3.0")));
        let snap = Snapshot::of(&state);
        // What the store keeps is written straight from the state, the same JSON.
        let mut written = Vec::new();
        Snapshot::write_json(&state, &mut written).unwrap();
        assert_eq!(written, serde_json::to_vec(&snap).unwrap());
        let entry = &snap.records["metadata/vyos/gw.raw.json"];
        assert_eq!(entry.etag, "\"r\"");
        assert_eq!(entry.listed, Some(write(900, "7.25")));
        assert_eq!(
            entry.object,
            Some(ListedObject {
                listed: write(5, "3.0"),
                etag: "\"o\"".into()
            })
        );
        // A HEAD that saw another size saw another write: nothing is paired.
        let other = Snapshot::of(&state_with(present.clone(), Some(write(6, "3.0"))));
        assert_eq!(other.records["metadata/vyos/gw.raw.json"].object, None);
        // Nor is anything paired for a store that lists ETags, or an object not HEADed.
        for (object, object_listed) in [
            (present, None),
            (ObjectState::Missing, Some(write(5, "3.0"))),
            (
                ObjectState::Present(listed("", 5, None)),
                Some(write(5, "3.0")),
            ),
        ] {
            let snap = Snapshot::of(&state_with(object, object_listed));
            assert_eq!(snap.records["metadata/vyos/gw.raw.json"].object, None);
        }
    }

    #[test]
    fn snapshots_without_listed_writes_still_read() {
        let snap = Snapshot::of(&state_with(ObjectState::Missing, None));
        let mut json: serde_json::Value = serde_json::to_value(&snap).unwrap();
        let entry = &mut json["records"]["metadata/vyos/gw.raw.json"];
        entry.as_object_mut().unwrap().remove("listed");
        assert!(
            entry.get("object").is_none(),
            "absent fields are not written"
        );
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back.records["metadata/vyos/gw.raw.json"].listed, None);
    }
}

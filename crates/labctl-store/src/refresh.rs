//! Reading actual state from a store in O(list pages) when nothing changed: the records are
//! listed, and fetched only when the snapshot apply left does not know them at their listed
//! ETag; the objects are listed, and HEADed only when the listing disagrees with the record (or
//! always, for drift). On a store whose listings show no ETags, a plan takes the listed size
//! and modification time instead, as the snapshot paired them with the ETag a read after that
//! same listing found.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate as store;
use crate::{ObjectMeta, Store, StoreError};
use labctl_core::consumer_index::{self, IndexFiles, MAX_INDEX_BYTES};
use labctl_core::manifest::model::{
    destination_of_record_key, object_key, IMAGES_PREFIX, METADATA_PREFIX,
};
use labctl_core::object::{META_CHECKSUM, META_FINGERPRINT};
use labctl_core::state::record::{self, MAX_RECORD_BYTES};
use labctl_core::state::{
    ActualRecord, ActualState, ListedWrite, ObjectState, Record, Snapshot, Unreadable,
    LEGACY_SNAPSHOT_KEY, MAX_SNAPSHOT_BYTES, SNAPSHOT_FORMAT, SNAPSHOT_KEY,
};

/// How many records and HEADs are in flight at once.
pub const REFRESH_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("cannot read state from {store}")]
    Store {
        store: String,
        #[source]
        source: StoreError,
    },
}

/// How much to learn about the objects the records describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objects {
    /// Nothing (`--refresh=false`, `list`, `history`).
    NotChecked,
    /// One listing of `images/`; a HEAD only for an object whose listed size or ETag is not what
    /// its record says (plan and apply: O(list pages) for a store that did not change). On a
    /// store that lists no ETags, the listed size and time stand in, as the snapshot paired them.
    Listed,
    /// [`Objects::Listed`], with only ETags vouching for a record or an object: the consumer
    /// index, whose checksums a NAS trusts.
    ListedByEtag,
    /// A HEAD of every object, to compare its labctl metadata too (drift).
    Headed,
}

impl Objects {
    /// Drift HEADs every object anyway (and lists `images/` itself for what is unrecorded).
    fn lists_images(self) -> bool {
        matches!(self, Objects::Listed | Objects::ListedByEtag)
    }

    fn trusts_listed_writes(self) -> bool {
        matches!(self, Objects::NotChecked | Objects::Listed)
    }
}

pub async fn read(store: Arc<dyn Store>, objects: Objects) -> Result<ActualState, RefreshError> {
    read_reporting(store, objects, Written::default(), &|_, _| {}).await
}

/// The records a run wrote itself, each with what its PUT returned: read back right after (the
/// consumer index, at the end of an apply), the store need not be asked for them, nor (where its
/// listing shows no ETags) for the objects they name. The listing still has the last word: a
/// record or object listed at another size, or another ETag where the store lists them, is
/// fetched as usual.
#[derive(Debug, Default)]
pub struct Written {
    records: BTreeMap<String, WrittenRecord>,
}

#[derive(Debug)]
struct WrittenRecord {
    record: record::StateRecord,
    etag: String,
    size: u64,
}

impl Written {
    /// `record` was written at `key`; the store answered `written`.
    pub fn insert(&mut self, key: &str, record: record::StateRecord, written: &ObjectMeta) {
        self.records.insert(
            key.to_string(),
            WrittenRecord {
                record,
                etag: written.etag.clone(),
                size: written.size,
            },
        );
    }

    /// The record written at the listed `item`, if the listing agrees it is still that one:
    /// taken out, not copied (tens of thousands of records at once).
    fn take(&mut self, item: &ObjectMeta) -> Option<WrittenRecord> {
        let same = |w: &WrittenRecord| {
            w.size == item.size && (item.etag.is_empty() || item.etag == w.etag)
        };
        match self.records.get(&item.key) {
            Some(w) if same(w) => self.records.remove(&item.key),
            _ => None,
        }
    }
}

/// [`read`], calling `on_record(done, total)` as each listed record is read (from the snapshot,
/// from what this run wrote (`written`), or from the store) and its object looked at: what a
/// progress view of a long refresh counts.
pub async fn read_reporting(
    store: Arc<dyn Store>,
    objects: Objects,
    mut written: Written,
    on_record: &(dyn Fn(usize, usize) + Sync),
) -> Result<ActualState, RefreshError> {
    let wrap = |source| RefreshError::Store {
        store: store.url(),
        source,
    };
    let list_images = async {
        if !objects.lists_images() {
            return Ok(None);
        }
        store::list_all(store.as_ref(), IMAGES_PREFIX)
            .await
            .map(|l| {
                Some(
                    l.into_iter()
                        .map(|o| (o.key.clone(), o))
                        .collect::<BTreeMap<_, _>>(),
                )
            })
    };
    let (listed, images, snapshot, index) = tokio::join!(
        store::list_all(store.as_ref(), METADATA_PREFIX),
        list_images,
        read_snapshot(store.as_ref()),
        read_index(store.as_ref()),
    );
    let (listed, images, index) = (
        listed.map_err(wrap)?,
        images.map_err(wrap)?,
        index.map_err(wrap)?,
    );
    let mut snapshot = snapshot.unwrap_or_default();
    // Drift and the index check every record at its ETag: a listed size and time is good
    // enough to spare a plan requests, not to vouch for what consumers are told.
    let trust_listed_writes = objects.trusts_listed_writes();
    let limit = Arc::new(Semaphore::new(REFRESH_CONCURRENCY));
    let mut tasks = JoinSet::new();
    let mut misses = 0;
    let mut answered = Vec::new();
    for item in listed {
        let Some(job) = RecordJob::of(
            item,
            &mut snapshot,
            &mut written,
            images.as_ref(),
            trust_listed_writes,
        ) else {
            continue; // not a record (a stray file under metadata/)
        };
        misses += job.misses(objects);
        // Read at once when the store need not be asked: tens of thousands of tasks, each
        // holding its record until its turn, would hold them all twice.
        if !job.asks_the_store(objects) {
            answered.push(job.read(store.as_ref(), objects).await.map_err(wrap)?);
            continue;
        }
        let (store, limit) = (store.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            job.read(store.as_ref(), objects).await
        });
    }
    drop(snapshot); // what no listed record took
    let mut state = ActualState {
        records: BTreeMap::new(),
        refreshed: objects != Objects::NotChecked,
        index,
        snapshot_misses: misses,
        listed_objects: images.map(|m| m.into_keys().collect()),
        unrecorded: BTreeMap::new(),
    };
    let total = answered.len() + tasks.len();
    let mut done = 0;
    for r in answered {
        if let Some(r) = r {
            state.records.insert(r.record_key.clone(), r);
        }
        done += 1;
        on_record(done, total);
    }
    while let Some(joined) = tasks.join_next().await {
        if let Some(r) = joined.expect("refresh task panicked").map_err(wrap)? {
            state.records.insert(r.record_key.clone(), r);
        }
        done += 1;
        on_record(done, total);
    }
    Ok(state)
}

/// One listed record, with what the listings and the snapshot already say about it and its
/// object: what is left to ask the store.
struct RecordJob {
    item: ObjectMeta,
    object_key: String,
    /// The snapshot's copy of the record and its ETag, when it is the record at this write.
    known: Option<(record::StateRecord, String)>,
    record_listed: Option<ListedWrite>,
    object_listed: Option<ObjectMeta>,
    object_write: Option<ListedWrite>,
    /// The object's ETag: listed, or what a HEAD after an identical listing found.
    object_etag: Option<String>,
}

impl RecordJob {
    /// `None` for a key under `metadata/` that is not a record.
    fn of(
        item: ObjectMeta,
        snapshot: &mut Snapshot,
        written: &mut Written,
        images: Option<&BTreeMap<String, ObjectMeta>>,
        trust_listed_writes: bool,
    ) -> Option<RecordJob> {
        let destination = destination_of_record_key(&item.key)?;
        let object_key = object_key(destination);
        let record_listed = ListedWrite::of(&item);
        // Taken, not copied: each listed key is visited once, and tens of thousands of records
        // held twice would be the refresh's largest cost in memory.
        let mut saved = snapshot.records.remove(&item.key);
        let saved_object = saved.as_mut().and_then(|s| s.object.take());
        // Known at this very ETag, or (on a store that lists none) at this very listed write:
        // the snapshot's copy is the record.
        let known = saved
            .filter(|s| match &record_listed {
                None => !item.etag.is_empty() && s.etag == item.etag,
                Some(write) => trust_listed_writes && s.listed.as_ref() == Some(write),
            })
            .map(|s| (s.record, s.etag));
        // Taken only where the snapshot does not know the record already.
        let ours = match known {
            Some(_) => None,
            None => written.take(&item),
        };
        let object_listed = images.and_then(|m| m.get(&object_key)).cloned();
        let object_write = object_listed.as_ref().and_then(ListedWrite::of);
        let object_etag = match (&object_listed, &object_write) {
            (Some(meta), None) => Some(meta.etag.clone()),
            (Some(_), Some(write)) => saved_object
                .filter(|o| trust_listed_writes && &o.listed == write)
                .map(|o| o.etag),
            (None, _) => None,
        };
        // A store that lists no ETags: the object this run wrote and recorded, listed at its
        // size, is the one its record names.
        let object_etag = object_etag.or_else(|| {
            let (listed, record) = (object_listed.as_ref()?, &ours.as_ref()?.record);
            (listed.etag.is_empty() && listed.size == record.size)
                .then(|| record.object_etag.clone())
                .flatten()
        });
        let known = known.or_else(|| ours.map(|w| (w.record, w.etag)));
        Some(RecordJob {
            item,
            object_key,
            known,
            record_listed,
            object_listed,
            object_write,
            object_etag,
        })
    }

    /// Requests the snapshot does not spare: the record's GET, the object's HEAD.
    fn misses(&self, objects: Objects) -> usize {
        usize::from(self.known.is_none())
            + usize::from(
                objects.lists_images()
                    && self.object_listed.is_some()
                    && self.object_etag.is_none(),
            )
    }

    /// Whether [`RecordJob::read`] asks the store anything: a record not known already, or an
    /// object its listing cannot vouch for (as `read` decides it).
    fn asks_the_store(&self, objects: Objects) -> bool {
        let Some((rec, _)) = &self.known else {
            return true;
        };
        match objects {
            Objects::NotChecked => false,
            Objects::Headed => true,
            Objects::Listed | Objects::ListedByEtag => {
                match (&self.object_listed, &self.object_etag) {
                    (None, _) => false,
                    (Some(meta), Some(etag)) => {
                        rec.object_etag.as_deref() != Some(etag.as_str()) || rec.size != meta.size
                    }
                    (Some(_), None) => true,
                }
            }
        }
    }

    async fn read(
        self,
        store: &dyn Store,
        objects: Objects,
    ) -> Result<Option<ActualRecord>, StoreError> {
        let RecordJob {
            item,
            object_key,
            known,
            record_listed,
            object_listed,
            object_write,
            object_etag,
        } = self;
        let (record, etag) = match known {
            Some((rec, etag)) => (Ok(Record::Current(Box::new(rec))), etag),
            None => {
                let fetched = store::get_bytes(store, &item.key, MAX_RECORD_BYTES).await?;
                let Some((fetched_meta, bytes)) = fetched else {
                    return Ok(None); // deleted between list and get
                };
                // The listing's ETag, so a saved plan can be checked with one listing; the
                // GET's where a store lists none.
                let etag = if item.etag.is_empty() {
                    fetched_meta.etag
                } else {
                    item.etag
                };
                (record::parse(&bytes).map_err(Unreadable::from), etag)
            }
        };
        let object = match objects {
            Objects::NotChecked => ObjectState::NotChecked,
            Objects::Headed => head(store, &object_key).await?,
            Objects::Listed | Objects::ListedByEtag => {
                match (object_listed, object_etag, &record) {
                    (None, _, _) => ObjectState::Missing,
                    (Some(meta), Some(etag), Ok(Record::Current(rec)))
                        if rec.object_etag.as_deref() == Some(etag.as_str())
                            && rec.size == meta.size =>
                    {
                        // The object labctl wrote (same ETag, same size): its metadata is
                        // the one labctl set. drift HEADs to check even that.
                        ObjectState::Present(ObjectMeta {
                            etag,
                            user_metadata: BTreeMap::from([
                                (META_CHECKSUM.to_string(), rec.checksum.to_string()),
                                (META_FINGERPRINT.to_string(), rec.fingerprint.to_string()),
                            ]),
                            ..meta
                        })
                    }
                    _ => head(store, &object_key).await?,
                }
            }
        };
        Ok(Some(ActualRecord {
            record_key: item.key,
            object_key,
            etag,
            record,
            object,
            listed: record_listed,
            object_listed: object_write,
        }))
    }
}

async fn head(store: &dyn Store, key: &str) -> Result<ObjectState, StoreError> {
    Ok(match store.head(key).await? {
        Some(m) => ObjectState::Present(m),
        None => ObjectState::Missing,
    })
}

/// The snapshot apply left, if it is there and readable; anything else is no snapshot (the
/// records are then fetched, which is always correct).
async fn read_snapshot(store: &dyn Store) -> Option<Snapshot> {
    let (_, compressed) = store::get_bytes(store, SNAPSHOT_KEY, MAX_SNAPSHOT_BYTES)
        .await
        .ok()??;
    if compressed.len() > MAX_SNAPSHOT_BYTES {
        return None;
    }
    // Parsed as it is decompressed, and cut at the bound: a snapshot that decompresses past it
    // is cut, fails to parse and is no snapshot. On this thread, not a blocking one: glibc
    // would put the records in another arena, and freed memory in one arena is not reused by
    // the other (a 10,000-image plan measured 132 MiB that way, 112 MiB this way).
    use std::io::Read as _;
    let mut decoder = zstd::stream::read::Decoder::new(&compressed[..]).ok()?;
    // labctl writes it at level 3 (a window of at most 2 MiB); a frame asking for a far larger
    // window is not one it wrote, and is refused before the decoder allocates it.
    decoder.window_log_max(SNAPSHOT_WINDOW_LOG_MAX).ok()?;
    let json = decoder.take(MAX_SNAPSHOT_BYTES as u64);
    serde_json::from_reader::<_, Snapshot>(std::io::BufReader::new(json))
        .ok()
        .filter(|s| s.format == SNAPSHOT_FORMAT)
}

/// The largest zstd window a snapshot may ask for: 8 MiB.
const SNAPSHOT_WINDOW_LOG_MAX: u32 = 23;

/// Writes the snapshot of `state` for the next refresh, compressed as it is serialized; then
/// removes an uncompressed one an older labctl left.
pub async fn write_snapshot(store: &dyn Store, state: &ActualState) -> Result<(), StoreError> {
    let body = compressed_snapshot(state).map_err(|e| StoreError::Io {
        op: "compress",
        key: SNAPSHOT_KEY.to_string(),
        source: e,
    })?;
    store
        .put(SNAPSHOT_KEY, body, crate::PutOptions::default())
        .await?;
    // Only a cache: if it stays, nothing reads it.
    let _ = store.delete(LEGACY_SNAPSHOT_KEY).await;
    Ok(())
}

fn compressed_snapshot(state: &ActualState) -> std::io::Result<bytes::Bytes> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
    Snapshot::write_json(state, std::io::BufWriter::new(&mut encoder))?;
    Ok(bytes::Bytes::from(encoder.finish()?))
}

/// Every record key with its ETag: one listing, and a HEAD for each key the store lists without
/// an ETag (s3s-fs lists none), so that a changed record is never taken for an unchanged one.
pub async fn record_etags(store: &dyn Store) -> Result<BTreeMap<String, String>, StoreError> {
    let mut out = BTreeMap::new();
    for item in store::list_all(store, METADATA_PREFIX).await? {
        if destination_of_record_key(&item.key).is_none() {
            continue;
        }
        let etag = if item.etag.is_empty() {
            match store.head(&item.key).await? {
                Some(meta) => meta.etag,
                None => continue, // deleted since the listing
            }
        } else {
            item.etag
        };
        out.insert(item.key, etag);
    }
    Ok(out)
}

/// HEADs the objects at `object_keys` that have no record (and that the refresh's listing, when
/// it made one, shows), concurrently, and keeps the ones that exist in
/// [`ActualState::unrecorded`].
pub async fn head_unrecorded(
    store: Arc<dyn Store>,
    state: &mut ActualState,
    object_keys: impl IntoIterator<Item = String>,
) -> Result<(), RefreshError> {
    let recorded: std::collections::BTreeSet<&str> = state
        .records
        .values()
        .map(|r| r.object_key.as_str())
        .collect();
    let limit = Arc::new(Semaphore::new(REFRESH_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for key in object_keys {
        let listed = state
            .listed_objects
            .as_ref()
            .is_none_or(|keys| keys.contains(&key));
        // Only objects that exist without a record need a HEAD (for their metadata).
        if recorded.contains(key.as_str()) || !listed {
            continue;
        }
        let (store, limit) = (store.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            store.head(&key).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let head =
            joined
                .expect("refresh task panicked")
                .map_err(|source| RefreshError::Store {
                    store: store.url(),
                    source,
                })?;
        if let Some(meta) = head {
            state.unrecorded.insert(meta.key.clone(), meta);
        }
    }
    Ok(())
}

/// The consumer index files as they are in the store. One that is larger than any index labctl
/// writes is read as far as the limit, which is enough to see that it is not the expected one.
pub async fn read_index(store: &dyn Store) -> Result<IndexFiles, StoreError> {
    let read = |key: &'static str| async move {
        Ok::<_, StoreError>(
            store::get_bytes(store, key, MAX_INDEX_BYTES)
                .await?
                .map(|(_, bytes)| bytes),
        )
    };
    let sums = read(consumer_index::SUMS_KEY).await?;
    let json = read(consumer_index::JSON_KEY).await?;
    let signature = read(consumer_index::SIGNATURE_KEY).await?;
    Ok(consumer_index::found(
        sums.as_deref(),
        json.as_deref(),
        signature,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsStore;
    use std::sync::Mutex;

    #[tokio::test]
    async fn reports_each_record_read_once_up_to_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()).with_page_size(2));
        for name in ["a", "b", "c", "d", "e"] {
            store
                .put(
                    &format!("metadata/lab/{name}.raw.json"),
                    bytes::Bytes::from_static(b"{}"),
                    crate::PutOptions::default(),
                )
                .await
                .unwrap();
        }
        // Not a record: not counted.
        store
            .put(
                "metadata/notes.txt",
                bytes::Bytes::from_static(b"x"),
                crate::PutOptions::default(),
            )
            .await
            .unwrap();
        let seen = Mutex::new(Vec::new());
        let state = read_reporting(
            store,
            Objects::Listed,
            Written::default(),
            &|done, total| seen.lock().unwrap().push((done, total)),
        )
        .await
        .unwrap();
        assert_eq!(state.records.len(), 5);
        assert_eq!(
            seen.into_inner().unwrap(),
            (1..=5).map(|d| (d, 5)).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn the_snapshot_is_read_back_and_one_labctl_did_not_write_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let put = |key: &'static str, body: Vec<u8>| {
            let store = &store;
            async move {
                store
                    .put(key, bytes::Bytes::from(body), crate::PutOptions::default())
                    .await
                    .unwrap();
            }
        };
        put(LEGACY_SNAPSHOT_KEY, b"{}".to_vec()).await;
        write_snapshot(&store, &ActualState::default())
            .await
            .unwrap();
        let read = read_snapshot(&store)
            .await
            .expect("the snapshot just written");
        assert!(read.records.is_empty());
        assert!(store.head(LEGACY_SNAPSHOT_KEY).await.unwrap().is_none());

        let json = br#"{"format":1,"records":{}}"#.to_vec();
        // Uncompressed, another format, a frame asking for a 128 MiB window: no snapshot.
        put(SNAPSHOT_KEY, json.clone()).await;
        assert!(read_snapshot(&store).await.is_none());
        put(
            SNAPSHOT_KEY,
            zstd::encode_all(&br#"{"format":9,"records":{}}"#[..], 3).unwrap(),
        )
        .await;
        assert!(read_snapshot(&store).await.is_none());
        let mut wide = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        wide.window_log(27).unwrap();
        std::io::Write::write_all(&mut wide, &json).unwrap();
        put(SNAPSHOT_KEY, wide.finish().unwrap()).await;
        assert!(read_snapshot(&store).await.is_none());
        // The same JSON in a frame labctl could have written is one.
        put(SNAPSHOT_KEY, zstd::encode_all(&json[..], 3).unwrap()).await;
        assert!(read_snapshot(&store).await.is_some());
    }
}

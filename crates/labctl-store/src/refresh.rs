//! Reading actual state from a store in O(list pages) when nothing changed: the records are
//! listed, and fetched only when the snapshot apply left does not know them at their listed
//! ETag; the objects are listed, and HEADed only when the listing disagrees with the record (or
//! always, for drift).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate as store;
use crate::{Store, StoreError};
use labctl_core::consumer_index::{self, IndexFiles, MAX_INDEX_BYTES};
use labctl_core::manifest::model::{
    destination_of_record_key, object_key, IMAGES_PREFIX, METADATA_PREFIX,
};
use labctl_core::object::{META_CHECKSUM, META_FINGERPRINT};
use labctl_core::state::record::{self, MAX_RECORD_BYTES};
use labctl_core::state::{
    ActualRecord, ActualState, ObjectState, Record, Snapshot, Unreadable, MAX_SNAPSHOT_BYTES,
    SNAPSHOT_FORMAT, SNAPSHOT_KEY,
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
    /// its record says (plan and apply: O(list pages) for a store that did not change).
    Listed,
    /// A HEAD of every object, to compare its labctl metadata too (drift, the index).
    Headed,
}

pub async fn read(store: Arc<dyn Store>, objects: Objects) -> Result<ActualState, RefreshError> {
    let wrap = |source| RefreshError::Store {
        store: store.url(),
        source,
    };
    let list_images = async {
        match objects {
            Objects::Listed => store::list_all(store.as_ref(), IMAGES_PREFIX)
                .await
                .map(|l| {
                    Some(
                        l.into_iter()
                            .map(|o| (o.key.clone(), o))
                            .collect::<BTreeMap<_, _>>(),
                    )
                }),
            _ => Ok(None),
        }
    };
    let (listed, images, snapshot, index) = tokio::join!(
        store::list_all(store.as_ref(), METADATA_PREFIX),
        list_images,
        read_snapshot(store.as_ref()),
        read_index(store.as_ref()),
    );
    let (listed, images, index) = (
        listed.map_err(wrap)?,
        Arc::new(images.map_err(wrap)?),
        index.map_err(wrap)?,
    );
    let snapshot = snapshot.unwrap_or_default();
    let limit = Arc::new(Semaphore::new(REFRESH_CONCURRENCY));
    let mut tasks = JoinSet::new();
    let mut misses = 0;
    for item in listed {
        let Some(destination) = destination_of_record_key(&item.key) else {
            continue; // not a record (a stray file under metadata/)
        };
        let object_key = object_key(destination);
        // Known at this very ETag: the snapshot's copy is the record. A store that lists no
        // ETags (s3s-fs) gets every record fetched.
        let known = snapshot
            .records
            .get(&item.key)
            .filter(|s| !item.etag.is_empty() && s.etag == item.etag)
            .map(|s| s.record.clone());
        if known.is_none() {
            misses += 1;
        }
        let (store, limit, images) = (store.clone(), limit.clone(), images.clone());
        tasks.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let (record, etag) = match known {
                Some(rec) => (Ok(Record::Current(Box::new(rec))), item.etag),
                None => {
                    let fetched =
                        store::get_bytes(store.as_ref(), &item.key, MAX_RECORD_BYTES).await?;
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
                Objects::Headed => head(store.as_ref(), &object_key).await?,
                Objects::Listed => {
                    let listed = images.as_ref().as_ref().and_then(|m| m.get(&object_key));
                    match (listed, &record) {
                        (None, _) => ObjectState::Missing,
                        (Some(meta), Ok(Record::Current(rec)))
                            if rec.object_etag.as_deref() == Some(meta.etag.as_str())
                                && rec.size == meta.size =>
                        {
                            // The object labctl wrote (same ETag, same size): its metadata is
                            // the one labctl set. drift HEADs to check even that.
                            let mut meta = meta.clone();
                            meta.user_metadata = BTreeMap::from([
                                (META_CHECKSUM.to_string(), rec.checksum.to_string()),
                                (META_FINGERPRINT.to_string(), rec.fingerprint.to_string()),
                            ]);
                            ObjectState::Present(meta)
                        }
                        _ => head(store.as_ref(), &object_key).await?,
                    }
                }
            };
            Ok::<_, StoreError>(Some(ActualRecord {
                record_key: item.key,
                object_key,
                etag,
                record,
                object,
            }))
        });
    }
    let mut state = ActualState {
        records: BTreeMap::new(),
        refreshed: objects != Objects::NotChecked,
        index,
        snapshot_misses: misses,
        listed_objects: images
            .as_ref()
            .as_ref()
            .map(|m| m.keys().cloned().collect()),
        unrecorded: BTreeMap::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        if let Some(r) = joined.expect("refresh task panicked").map_err(wrap)? {
            state.records.insert(r.record_key.clone(), r);
        }
    }
    Ok(state)
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
    let (_, bytes) = store::get_bytes(store, SNAPSHOT_KEY, MAX_SNAPSHOT_BYTES)
        .await
        .ok()??;
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return None;
    }
    serde_json::from_slice::<Snapshot>(&bytes)
        .ok()
        .filter(|s| s.format == SNAPSHOT_FORMAT)
}

/// Writes the snapshot of `state` for the next refresh.
pub async fn write_snapshot(store: &dyn Store, state: &ActualState) -> Result<(), StoreError> {
    let body = serde_json::to_vec(&Snapshot::of(state)).expect("snapshots serialize");
    store
        .put(
            SNAPSHOT_KEY,
            bytes::Bytes::from(body),
            crate::PutOptions::default(),
        )
        .await
        .map(|_| ())
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
    Ok(IndexFiles {
        sums: read(consumer_index::SUMS_KEY).await?,
        json: read(consumer_index::JSON_KEY).await?,
        signature: read(consumer_index::SIGNATURE_KEY).await?,
    })
}

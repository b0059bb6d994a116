//! Reading actual state from a store: every record (listed with pagination, fetched
//! concurrently) and, unless told not to, a HEAD of every object the records describe.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate as store;
use crate::{Store, StoreError};
use labctl_core::consumer_index::{self, IndexFiles, MAX_INDEX_BYTES};
use labctl_core::manifest::model::{destination_of_record_key, object_key, METADATA_PREFIX};
use labctl_core::state::record::{self, MAX_RECORD_BYTES};
use labctl_core::state::{ActualRecord, ActualState, ObjectState, Unreadable};

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

pub async fn read(store: Arc<dyn Store>, head_objects: bool) -> Result<ActualState, RefreshError> {
    let wrap = |source| RefreshError::Store {
        store: store.url(),
        source,
    };
    let listed = store::list_all(store.as_ref(), METADATA_PREFIX)
        .await
        .map_err(wrap)?;
    let limit = Arc::new(Semaphore::new(REFRESH_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for item in listed {
        let Some(destination) = destination_of_record_key(&item.key) else {
            continue; // not a record (a stray file under metadata/)
        };
        let object_key = object_key(destination);
        let (store, limit) = (store.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let fetched = store::get_bytes(store.as_ref(), &item.key, MAX_RECORD_BYTES).await?;
            let Some((fetched_meta, bytes)) = fetched else {
                return Ok(None); // deleted between list and get
            };
            let record = record::parse(&bytes).map_err(Unreadable::from);
            let object = if head_objects {
                match store.head(&object_key).await? {
                    Some(m) => ObjectState::Present(m),
                    None => ObjectState::Missing,
                }
            } else {
                ObjectState::NotChecked
            };
            Ok::<_, StoreError>(Some(ActualRecord {
                record_key: item.key,
                object_key,
                // The listing's ETag, so a saved plan can be checked with one listing; the GET's
                // where a store lists none (s3s-fs).
                etag: if item.etag.is_empty() {
                    fetched_meta.etag
                } else {
                    item.etag
                },
                record,
                object,
            }))
        });
    }
    let mut state = ActualState {
        records: BTreeMap::new(),
        refreshed: head_objects,
        index: read_index(store.as_ref()).await.map_err(wrap)?,
        unrecorded: BTreeMap::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        if let Some(r) = joined.expect("refresh task panicked").map_err(wrap)? {
            state.records.insert(r.record_key.clone(), r);
        }
    }
    Ok(state)
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

/// HEADs the objects at `object_keys` that have no record, concurrently, and keeps the ones that
/// exist in [`ActualState::unrecorded`].
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
        if recorded.contains(key.as_str()) {
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

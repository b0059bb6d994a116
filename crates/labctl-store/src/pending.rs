//! A multipart upload that cannot be forgotten. S3 keeps (and bills) an unfinished upload until
//! it is aborted, so every upload labctl starts is held by a [`PendingUpload`]: completed once,
//! or aborted — explicitly on an error path (reporting a failed abort), and by its `Drop` when
//! the future holding it is cancelled or panics.

use std::sync::Arc;

use crate::events::Event;
use crate::{ObjectMeta, PutOptions, Store, StoreError, UploadedPart};

pub struct PendingUpload {
    store: Arc<dyn Store>,
    key: String,
    /// `None` once completed or aborted: nothing left to clean up.
    id: Option<String>,
}

/// An abort that failed: the upload stays (invisible) until the next apply that takes the lock
/// aborts it, or the bucket's lifecycle rule does.
#[derive(Debug, thiserror::Error)]
#[error("the unfinished upload of `{key}` could not be aborted (the next apply aborts it)")]
pub struct AbortFailed {
    pub key: String,
    #[source]
    pub source: StoreError,
}

impl AbortFailed {
    /// Reported, not returned: the work it belonged to has its own outcome.
    pub fn report(self) {
        crate::events::report(Event::AbortFailed {
            key: self.key,
            error: self.source.to_string(),
        });
    }
}

impl std::fmt::Debug for PendingUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingUpload({}, {:?})", self.key, self.id)
    }
}

impl PendingUpload {
    pub async fn start(
        store: Arc<dyn Store>,
        key: &str,
        options: PutOptions,
    ) -> Result<PendingUpload, StoreError> {
        let id = store.create_multipart(key, options).await?;
        Ok(PendingUpload {
            store,
            key: key.to_string(),
            id: Some(id),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn id(&self) -> &str {
        self.id.as_deref().expect("a pending upload has an id")
    }

    /// Makes the object visible. A failed completion aborts the upload; the completion's error
    /// is returned, and a failed abort is logged to stderr beside it.
    pub async fn complete(mut self, parts: Vec<UploadedPart>) -> Result<ObjectMeta, StoreError> {
        let id = self.id.take().expect("a pending upload has an id");
        match self.store.complete_multipart(&self.key, &id, parts).await {
            Ok(meta) => Ok(meta),
            Err(e) => {
                self.id = Some(id);
                if let Err(failed) = self.abort().await {
                    failed.report();
                }
                Err(e)
            }
        }
    }

    /// Discards the parts.
    pub async fn abort(mut self) -> Result<(), AbortFailed> {
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        match self.store.abort_multipart(&self.key, &id).await {
            Ok(()) | Err(StoreError::NoSuchUpload { .. }) => Ok(()),
            Err(source) => Err(AbortFailed {
                key: self.key.clone(),
                source,
            }),
        }
    }
}

/// Aborts started by a drop, not yet known to be finished: a run that stops at a signal waits
/// for them ([`settle_dropped`]) before it exits, since leaving `main` drops unfinished tasks.
static DROPPED: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits up to `limit` for the aborts of uploads whose futures were dropped. Returns how many
/// did not finish in time (those uploads stay invisible until the next apply aborts them).
pub async fn settle_dropped(limit: std::time::Duration) -> usize {
    let handles = std::mem::take(&mut *DROPPED.lock().unwrap_or_else(|e| e.into_inner()));
    let deadline = tokio::time::Instant::now() + limit;
    let mut left = 0;
    for handle in handles {
        if tokio::time::timeout_at(deadline, handle).await.is_err() {
            left += 1;
        }
    }
    left
}

/// Requests this process stopped waiting for that the store may still carry out (a
/// CopyObject of many GiB is one request): see [`InFlight`].
static ABANDONED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many write requests were abandoned in flight. A run that abandoned one does not release
/// its lock: it lets the lease expire, so no other run writes while the request may still land.
pub fn abandoned_requests() -> usize {
    ABANDONED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Held across one write request that, once sent, the store carries out whether or not the
/// answer is awaited; dropped before [`InFlight::done`], it counts the request as abandoned.
pub struct InFlight {
    done: bool,
}

impl InFlight {
    pub fn start() -> InFlight {
        InFlight { done: false }
    }

    pub fn done(mut self) {
        self.done = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            ABANDONED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for PendingUpload {
    /// Neither completed nor aborted: the future holding it was dropped (a signal, a panic). The
    /// abort runs on the runtime, as it cannot be awaited here.
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let abort = runtime.spawn(async move {
                    if let Err(e) = store.abort_multipart(&key, &id).await {
                        crate::events::report(Event::AbortFailed {
                            key,
                            error: e.to_string(),
                        });
                    }
                });
                DROPPED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(abort);
            }
            Err(_) => crate::events::report(Event::UploadLeft { key }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsStore;

    async fn pending(store: &Arc<dyn Store>) -> usize {
        store.list_uploads("").await.unwrap().unwrap().len()
    }

    #[tokio::test]
    async fn dropped_uploads_are_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        let upload = PendingUpload::start(store.clone(), "images/a", PutOptions::default())
            .await
            .unwrap();
        assert_eq!(pending(&store).await, 1);
        drop(upload);
        // The abort runs as a task; give it a moment.
        for _ in 0..100 {
            if pending(&store).await == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(pending(&store).await, 0);
    }

    #[tokio::test]
    async fn a_panic_while_uploading_still_aborts() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        let s = store.clone();
        let task = tokio::spawn(async move {
            let _upload = PendingUpload::start(s, "images/b", PutOptions::default())
                .await
                .unwrap();
            panic!("something went wrong mid-upload");
        });
        assert!(task.await.unwrap_err().is_panic());
        for _ in 0..100 {
            if pending(&store).await == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(pending(&store).await, 0);
    }

    #[tokio::test]
    async fn completed_and_aborted_uploads_leave_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        let upload = PendingUpload::start(store.clone(), "images/c", PutOptions::default())
            .await
            .unwrap();
        let part = store
            .upload_part("images/c", upload.id(), 1, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        upload.complete(vec![part]).await.unwrap();
        assert!(store.head("images/c").await.unwrap().is_some());
        let upload = PendingUpload::start(store.clone(), "images/d", PutOptions::default())
            .await
            .unwrap();
        upload.abort().await.unwrap();
        assert_eq!(pending(&store).await, 0);
        assert!(store.head("images/d").await.unwrap().is_none());
    }
}

//! The apply lock: `.labctl/lock.json`, created with a conditional write (`If-None-Match: *`)
//! so that two applies never run against one store at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{self as store, PutMode, PutOptions, Store, StoreError};

pub const LOCK_KEY: &str = ".labctl/lock.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    pub holder: String,
    pub host: String,
    pub pid: u32,
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    pub created_at: String,
    pub labctl_version: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} (pid {}) since {}",
            self.holder, self.host, self.pid, self.created_at
        )?;
        if let Some(url) = &self.run_url {
            write!(f, ", {url}")?;
        }
        write!(f, "; lock ID {}", self.id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the store is locked by {0}")]
    Held(Box<LockInfo>),
    #[error("the store is locked, but its lock file cannot be read: {why}")]
    Unreadable {
        why: String,
        /// What `force-unlock` takes to remove exactly this file ([`unreadable_id`]).
        id: String,
    },
    #[error("the store accepted a second conditional create of `{LOCK_KEY}`: it does not enforce `If-None-Match: *`, so a lock cannot keep two applies apart")]
    NotEnforced,
    #[error("no lock with ID `{wanted}` (the lock is held by {held})")]
    WrongId { wanted: String, held: Box<LockInfo> },
    #[error("the store is not locked")]
    NotLocked,
    #[error("interrupted while waiting for the lock")]
    Interrupted,
    #[error("the lock was taken over right after it was created (it now holds ID {0}): the store does not keep conditional writes apart")]
    Lost(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LockError {
    pub fn hint(&self) -> Option<String> {
        match self {
            LockError::Held(info) => Some(format!(
                "wait for that run to finish, give --lock-timeout to wait here, or if it is gone, run `labctl force-unlock {}`",
                info.id
            )),
            LockError::Unreadable { id, .. } => Some(format!(
                "if no labctl run is using the store, remove it with `labctl force-unlock {id}`"
            )),
            LockError::NotEnforced => Some(
                "run `labctl doctor` to see what the store supports; with one apply at a time guaranteed elsewhere (a CI concurrency group), pass --lock=false".into(),
            ),
            LockError::Store(e) => e.hint().map(str::to_string),
            _ => None,
        }
    }
}

/// A held lock. Release it on every path; it is not released on drop.
#[derive(Debug)]
/// The held lock. Released by [`Lock::release`] on every normal way out (reporting a failure);
/// if it is dropped unreleased — a panic unwinding through apply — its `Drop` releases it on the
/// runtime.
pub struct Lock {
    store: Arc<dyn Store>,
    pub info: LockInfo,
    released: bool,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (store, id) = (self.store.clone(), self.info.id.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = release_if_ours(store.as_ref(), &id).await {
                        eprintln!("warning: could not release the store lock {id}: {e}; `labctl force-unlock {id}` removes it");
                    }
                });
            }
            Err(_) => eprintln!(
                "warning: the store lock {id} was not released; `labctl force-unlock {id}` removes it"
            ),
        }
    }
}

/// Deletes the lock if it still holds `id`, conditional on the ETag it had when read.
async fn release_if_ours(store: &dyn Store, id: &str) -> Result<(), LockError> {
    match read_with_etag(store).await? {
        Some((current, etag)) if current.id == id => {
            store.delete_if(LOCK_KEY, &etag).await?;
            Ok(())
        }
        // Someone force-unlocked (and maybe relocked): leave their lock alone.
        _ => Ok(()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| crate::identity::run_identity().hostname.clone())
        .unwrap_or_else(|| "unknown-host".into())
}

fn new_info(operation: &str) -> LockInfo {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let host = hostname();
    let id_seed = format!("{host}-{}-{nanos}", std::process::id());
    LockInfo {
        id: labctl_core::checksum::Checksum::sha256(id_seed.as_bytes()).hex()[..16].to_string(),
        holder: crate::identity::run_identity()
            .user
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        host,
        pid: std::process::id(),
        operation: operation.to_string(),
        run_url: crate::identity::run_identity()
            .ci_run
            .as_ref()
            .and_then(|r| r.url.clone()),
        created_at: labctl_core::timefmt::now_rfc3339(),
        labctl_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

async fn read(store: &dyn Store) -> Result<Option<LockInfo>, LockError> {
    Ok(read_with_etag(store).await?.map(|(info, _)| info))
}

/// A lock file is a few hundred bytes; reading stops well past that.
const MAX_LOCK_BYTES: usize = 64 * 1024;

/// The lock and the ETag it had when read.
async fn read_with_etag(store: &dyn Store) -> Result<Option<(LockInfo, String)>, LockError> {
    match store::get_bytes(store, LOCK_KEY, MAX_LOCK_BYTES).await? {
        None => Ok(None),
        Some((meta, bytes)) => serde_json::from_slice(&bytes)
            .map(|info| Some((info, meta.etag)))
            .map_err(|e| LockError::Unreadable {
                why: e.to_string(),
                id: unreadable_id(&bytes),
            }),
    }
}

/// The ID a lock file that is not a lock goes by: derived from its bytes, so `force-unlock`
/// removes exactly the file that was reported, and not one written since.
fn unreadable_id(bytes: &[u8]) -> String {
    format!(
        "unreadable-{}",
        &labctl_core::checksum::Checksum::sha256(bytes).hex()[..12]
    )
}

/// What `force-unlock` removed.
#[derive(Debug)]
pub enum Removed {
    Lock(LockInfo),
    /// A lock file that could not be read.
    Unreadable,
}

/// Takes the lock, waiting up to `timeout` for a holder to release it. With `verify`, also
/// checks that the store really refuses a second conditional create.
pub async fn acquire(
    store: Arc<dyn Store>,
    operation: &str,
    timeout: Duration,
    verify: bool,
) -> Result<Lock, LockError> {
    let (_never, cancel) = tokio::sync::watch::channel(false);
    acquire_unless(store, operation, timeout, verify, cancel).await
}

/// [`acquire`], giving up (without a lock) as soon as `cancel` turns true while it waits.
pub async fn acquire_unless(
    store: Arc<dyn Store>,
    operation: &str,
    timeout: Duration,
    verify: bool,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<Lock, LockError> {
    let info = new_info(operation);
    let body = Bytes::from(serde_json::to_vec_pretty(&info).expect("serializes"));
    let create = PutOptions {
        mode: PutMode::CreateOnly,
        ..Default::default()
    };
    // A timeout too long to add to the clock waits without a deadline.
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    let mut wait = Duration::from_millis(250);
    loop {
        match store.put(LOCK_KEY, body.clone(), create.clone()).await {
            Ok(_) => break,
            Err(StoreError::AlreadyExists { .. }) => {
                let now = tokio::time::Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return match read(store.as_ref()).await? {
                        Some(holder) => Err(LockError::Held(Box::new(holder))),
                        // Released between our attempt and the read: try once more.
                        None => continue,
                    };
                }
                tokio::select! {
                    _ = tokio::time::sleep(deadline.map_or(wait, |d| wait.min(d - now))) => {}
                    _ = cancel.wait_for(|c| *c) => return Err(LockError::Interrupted),
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if verify {
        match store.put(LOCK_KEY, body.clone(), create).await {
            Err(StoreError::AlreadyExists { .. }) => {}
            Ok(_) => {
                release_if_ours(store.as_ref(), &info.id).await?;
                return Err(LockError::NotEnforced);
            }
            Err(e) => {
                if let Err(left) = release_if_ours(store.as_ref(), &info.id).await {
                    eprintln!("warning: could not remove the lock just taken: {left}");
                }
                return Err(e.into());
            }
        }
    }
    // Read back: on a store whose conditional write is check-then-write, two runs can both be
    // told they created it; only the one whose ID is there holds it.
    match read(store.as_ref()).await? {
        Some(current) if current.id == info.id => Ok(Lock {
            store,
            info,
            released: false,
        }),
        Some(current) => Err(LockError::Lost(current.id)),
        None => Err(LockError::Lost("none: it is gone".into())),
    }
}

impl Lock {
    /// Releases the lock if it is still ours: deleted only while it has the ETag it had when
    /// read as ours, so a lock someone took over in between is left alone.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        release_if_ours(self.store.as_ref(), &self.info.id).await
    }
}

/// Removes the lock with `id`, whoever holds it.
pub async fn force_unlock(store: &dyn Store, id: &str) -> Result<Removed, LockError> {
    if id.starts_with("unreadable-") {
        if let Some((meta, bytes)) = store::get_bytes(store, LOCK_KEY, MAX_LOCK_BYTES).await? {
            if serde_json::from_slice::<LockInfo>(&bytes).is_err() && unreadable_id(&bytes) == id {
                return if store.delete_if(LOCK_KEY, &meta.etag).await? {
                    Ok(Removed::Unreadable)
                } else {
                    Err(LockError::Lost(format!("{id}: replaced while unlocking")))
                };
            }
        }
    }
    force_unlock_readable(store, id).await.map(Removed::Lock)
}

async fn force_unlock_readable(store: &dyn Store, id: &str) -> Result<LockInfo, LockError> {
    match read(store).await? {
        None => Err(LockError::NotLocked),
        Some(info) if info.id == id => {
            // Read again with its ETag, so a lock taken between the check and the delete stays.
            match read_with_etag(store).await? {
                Some((again, etag)) if again.id == id => {
                    if store.delete_if(LOCK_KEY, &etag).await? {
                        Ok(info)
                    } else {
                        Err(LockError::Lost(format!("{id}: replaced while unlocking")))
                    }
                }
                _ => Ok(info),
            }
        }
        Some(info) => Err(LockError::WrongId {
            wanted: id.to_string(),
            held: Box::new(info),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsStore;

    #[tokio::test]
    async fn second_acquire_waits_then_reports_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        let first = acquire(store.clone(), "apply", Duration::ZERO, true)
            .await
            .unwrap();
        let err = acquire(store.clone(), "apply", Duration::from_millis(300), true)
            .await
            .unwrap_err();
        let LockError::Held(holder) = &err else {
            panic!("{err}")
        };
        assert_eq!(holder.id, first.info.id);
        assert!(err
            .hint()
            .unwrap()
            .contains(&format!("labctl force-unlock {}", first.info.id)));
        first.release().await.unwrap();
        let again = acquire(store.clone(), "apply", Duration::ZERO, true)
            .await
            .unwrap();
        again.release().await.unwrap();
        assert!(store.head(LOCK_KEY).await.unwrap().is_none());
    }

    /// How a store's conditional create misbehaves.
    #[derive(Debug)]
    enum Quirk {
        /// Another run force-unlocks and takes the lock right after release reads it (the
        /// second read of the lock: the first is the read-back in acquire).
        TakenOverAtRelease(std::sync::atomic::AtomicUsize),
        /// Accepts `If-None-Match: *` and overwrites anyway, as some S3-compatible services do.
        IgnoresConditions,
        /// Check-then-write: a second run's create lands right after ours, once, and both are
        /// told they succeeded.
        Racing(std::sync::atomic::AtomicBool),
    }

    #[derive(Debug)]
    struct Quirky(FsStore, Quirk);

    #[async_trait::async_trait]
    impl Store for Quirky {
        fn url(&self) -> String {
            self.0.url()
        }
        async fn list_page(&self, p: &str, c: Option<String>) -> store::Result<store::ListPage> {
            self.0.list_page(p, c).await
        }
        async fn head(&self, k: &str) -> store::Result<Option<store::ObjectMeta>> {
            self.0.head(k).await
        }
        async fn get(&self, k: &str) -> store::Result<Option<store::GetObject>> {
            let got = self.0.get(k).await;
            if let Quirk::TakenOverAtRelease(reads) = &self.1 {
                if k == LOCK_KEY && reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    self.0.put(k, other_lock(), PutOptions::default()).await?;
                }
            }
            got
        }
        async fn put(
            &self,
            k: &str,
            b: Bytes,
            mut o: PutOptions,
        ) -> store::Result<store::ObjectMeta> {
            match &self.1 {
                Quirk::TakenOverAtRelease(_) => self.0.put(k, b, o).await,
                Quirk::IgnoresConditions => {
                    o.mode = PutMode::Overwrite;
                    self.0.put(k, b, o).await
                }
                Quirk::Racing(raced) => {
                    let written = self.0.put(k, b, o).await?;
                    if k == LOCK_KEY && !raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        return self.0.put(k, other_lock(), PutOptions::default()).await;
                    }
                    Ok(written)
                }
            }
        }
        async fn delete(&self, k: &str) -> store::Result<()> {
            self.0.delete(k).await
        }
        async fn delete_if(&self, k: &str, e: &str) -> store::Result<bool> {
            self.0.delete_if(k, e).await
        }
        async fn create_multipart(&self, k: &str, o: PutOptions) -> store::Result<String> {
            self.0.create_multipart(k, o).await
        }
        async fn upload_part(
            &self,
            k: &str,
            u: &str,
            n: u32,
            b: Bytes,
        ) -> store::Result<store::UploadedPart> {
            self.0.upload_part(k, u, n, b).await
        }
        async fn complete_multipart(
            &self,
            k: &str,
            u: &str,
            p: Vec<store::UploadedPart>,
        ) -> store::Result<store::ObjectMeta> {
            self.0.complete_multipart(k, u, p).await
        }
        async fn abort_multipart(&self, k: &str, u: &str) -> store::Result<()> {
            self.0.abort_multipart(k, u).await
        }
        async fn list_started_uploads(
            &self,
            p: &str,
        ) -> store::Result<Option<Vec<store::StartedUpload>>> {
            self.0.list_started_uploads(p).await
        }
        async fn url_for(&self, k: &str, e: Duration) -> store::Result<String> {
            self.0.url_for(k, e).await
        }
        async fn set_metadata(
            &self,
            k: &str,
            m: std::collections::BTreeMap<String, String>,
        ) -> store::Result<store::ObjectMeta> {
            self.0.set_metadata(k, m).await
        }
        async fn copy(
            &self,
            f: &str,
            t: &str,
            m: Option<std::collections::BTreeMap<String, String>>,
            e: Option<&str>,
        ) -> store::Result<store::ObjectMeta> {
            self.0.copy(f, t, m, e).await
        }
    }

    fn other_lock() -> Bytes {
        let mut other = new_info("apply");
        other.id = "fedcba9876543210".into();
        Bytes::from(serde_json::to_vec(&other).unwrap())
    }

    #[tokio::test]
    async fn a_lock_dropped_unreleased_is_released_on_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        let s = store.clone();
        let task = tokio::spawn(async move {
            let _lock = acquire(s, "apply", Duration::ZERO, false).await.unwrap();
            panic!("apply panicked while holding the lock");
        });
        assert!(task.await.unwrap_err().is_panic());
        for _ in 0..100 {
            if store.head(LOCK_KEY).await.unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.head(LOCK_KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn release_leaves_a_lock_taken_over_after_it_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(Quirky(
            FsStore::new(dir.path()),
            Quirk::TakenOverAtRelease(Default::default()),
        ));
        let lock = acquire(store.clone(), "apply", Duration::ZERO, false)
            .await
            .unwrap();
        lock.release().await.unwrap();
        let held = read(store.as_ref()).await.unwrap().expect("the other lock");
        assert_eq!(held.id, "fedcba9876543210");
    }

    #[tokio::test]
    async fn any_lock_timeout_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        let _held = acquire(store.clone(), "apply", Duration::ZERO, false)
            .await
            .unwrap();
        // Waits without a deadline: interrupted here, it must not have overflowed the clock.
        let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
        let waiting = tokio::spawn(acquire_unless(
            store.clone(),
            "apply",
            Duration::MAX,
            false,
            cancel,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel_tx.send(true).unwrap();
        let err = waiting.await.expect("no panic").unwrap_err();
        assert!(matches!(err, LockError::Interrupted), "{err}");
    }

    #[tokio::test]
    async fn a_lock_taken_over_right_after_creation_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(Quirky(
            FsStore::new(dir.path()),
            Quirk::Racing(Default::default()),
        ));
        let err = acquire(store.clone(), "apply", Duration::ZERO, true)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LockError::Lost(id) if id == "fedcba9876543210"),
            "{err}"
        );
        // The other run's lock is left alone.
        let held = read(store.as_ref()).await.unwrap().unwrap();
        assert_eq!(held.id, "fedcba9876543210");
    }

    #[tokio::test]
    async fn an_unreadable_lock_file_is_named_and_removed_only_by_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        store
            .put(
                LOCK_KEY,
                bytes::Bytes::from_static(br#"{"id":"deadbeef00000001"}"#),
                Default::default(),
            )
            .await
            .unwrap();
        let err = acquire(store.clone(), "apply", Duration::ZERO, true)
            .await
            .unwrap_err();
        let LockError::Unreadable { id, .. } = &err else {
            panic!("{err}")
        };
        assert!(err.hint().unwrap().contains(&format!("force-unlock {id}")));
        // Another ID, or the readable lock's own field, removes nothing.
        assert!(force_unlock(store.as_ref(), "unreadable-000000000000")
            .await
            .is_err());
        assert!(force_unlock(store.as_ref(), "deadbeef00000001")
            .await
            .is_err());
        assert!(store.head(LOCK_KEY).await.unwrap().is_some());
        assert!(matches!(
            force_unlock(store.as_ref(), id).await.unwrap(),
            Removed::Unreadable
        ));
        assert!(store.head(LOCK_KEY).await.unwrap().is_none());
        acquire(store.clone(), "apply", Duration::ZERO, true)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_lock_the_store_cannot_enforce_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(Quirky(FsStore::new(dir.path()), Quirk::IgnoresConditions));
        let err = acquire(store.clone(), "apply", Duration::ZERO, true)
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::NotEnforced), "{err}");
        assert!(err.hint().unwrap().contains("--lock=false"));
        assert!(
            store.head(LOCK_KEY).await.unwrap().is_none(),
            "the useless lock is not left behind"
        );
        // Without verification (--lock=false is the caller's choice) nothing is probed.
        let lock = acquire(store.clone(), "apply", Duration::ZERO, false)
            .await
            .unwrap();
        lock.release().await.unwrap();
    }

    #[tokio::test]
    async fn force_unlock_needs_the_right_id() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        let lock = acquire(store.clone(), "apply", Duration::ZERO, true)
            .await
            .unwrap();
        assert!(matches!(
            force_unlock(store.as_ref(), "nope").await,
            Err(LockError::WrongId { .. })
        ));
        force_unlock(store.as_ref(), &lock.info.id).await.unwrap();
        assert!(matches!(
            force_unlock(store.as_ref(), &lock.info.id).await,
            Err(LockError::NotLocked)
        ));
        // The old holder's release leaves a newer lock alone.
        let newer = acquire(store.clone(), "apply", Duration::ZERO, true)
            .await
            .unwrap();
        lock.release().await.unwrap();
        assert!(store.head(LOCK_KEY).await.unwrap().is_some());
        newer.release().await.unwrap();
    }
}

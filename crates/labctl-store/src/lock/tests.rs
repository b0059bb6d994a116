use super::*;
use crate::fs::FsStore;

fn opts(timeout: Duration, verify: bool) -> LockOptions {
    LockOptions {
        verify,
        ..LockOptions::new("apply", timeout, DEFAULT_LEASE)
    }
}

async fn read(store: &dyn Store) -> Result<Option<LockInfo>, LockError> {
    Ok(read_with_etag(store).await?.map(|(info, _)| info))
}

#[tokio::test]
async fn second_acquire_waits_then_reports_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
    let first = acquire(store.clone(), &opts(Duration::ZERO, true))
        .await
        .unwrap();
    let err = acquire(store.clone(), &opts(Duration::from_millis(300), true))
        .await
        .unwrap_err();
    let LockError::Held(holder) = &err else {
        panic!("{err}")
    };
    assert_eq!(holder.lock_id, first.info.id);
    assert!(err
        .hint()
        .unwrap()
        .contains(&format!("labctl force-unlock {}", first.info.id)));
    first.release().await.unwrap();
    let again = acquire(store.clone(), &opts(Duration::ZERO, true))
        .await
        .unwrap();
    again.release().await.unwrap();
    assert!(store.head(LOCK_KEY).await.unwrap().is_none());
}

/// How a store's conditional create misbehaves.
#[derive(Debug)]
enum Quirk {
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
        self.0.get(k).await
    }
    async fn put(&self, k: &str, b: Bytes, mut o: PutOptions) -> store::Result<store::ObjectMeta> {
        match &self.1 {
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
        e: Option<&store::ObjectMeta>,
    ) -> store::Result<store::ObjectMeta> {
        self.0.copy(f, t, m, e).await
    }
}

fn other_lock() -> Bytes {
    let mut other = new_info("apply", None);
    other.id = "fedcba9876543210".into();
    Bytes::from(serde_json::to_vec(&other).unwrap())
}

#[tokio::test]
async fn a_lock_dropped_unreleased_is_released_on_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
    let s = store.clone();
    let task = tokio::spawn(async move {
        let _lock = acquire(s, &opts(Duration::ZERO, false)).await.unwrap();
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
async fn release_leaves_a_lock_file_replaced_behind_its_back() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
    let lock = acquire(store.clone(), &opts(Duration::ZERO, false))
        .await
        .unwrap();
    // Removed and taken by hand (not through force-unlock), while this run still runs.
    store
        .put(LOCK_KEY, other_lock(), PutOptions::default())
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
    let _held = acquire(store.clone(), &opts(Duration::ZERO, false))
        .await
        .unwrap();
    // Waits without a deadline: interrupted here, it must not have overflowed the clock.
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    let waiting = tokio::spawn(async move {
        acquire_unless(store.clone(), &opts(Duration::MAX, false), cancel).await
    });
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
    let err = acquire(store.clone(), &opts(Duration::ZERO, true))
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
    let err = acquire(store.clone(), &opts(Duration::ZERO, true))
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
    acquire(store.clone(), &opts(Duration::ZERO, true))
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
    let err = acquire(store.clone(), &opts(Duration::ZERO, true))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::NotEnforced(_)), "{err}");
    assert!(err.hint().unwrap().contains("--lock=false"));
    assert!(
        store.head(LOCK_KEY).await.unwrap().is_none(),
        "the useless lock is not left behind"
    );
    // Without verification (--lock=false is the caller's choice) nothing is probed.
    let lock = acquire(store.clone(), &opts(Duration::ZERO, false))
        .await
        .unwrap();
    lock.release().await.unwrap();
}

#[tokio::test]
async fn force_unlock_needs_the_right_id() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
    let lock = acquire(store.clone(), &opts(Duration::ZERO, true))
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
    let newer = acquire(store.clone(), &opts(Duration::ZERO, true))
        .await
        .unwrap();
    lock.release().await.unwrap();
    assert!(store.head(LOCK_KEY).await.unwrap().is_some());
    newer.release().await.unwrap();
}

fn short(timeout: Duration) -> LockOptions {
    LockOptions::new("apply", timeout, MIN_LEASE)
}

/// A lock left by a run that is gone: written, never renewed.
async fn dead_lock(store: &dyn Store, lease: Option<u64>) -> LockInfo {
    let mut dead = new_info("apply", lease.map(Duration::from_secs));
    dead.id = "dead00000000beef".into();
    dead.host = "runner-9".into();
    dead.run_url = Some("https://github.com/lab/images/actions/runs/9".into());
    store
        .put(
            LOCK_KEY,
            Bytes::from(serde_json::to_vec(&dead).unwrap()),
            Default::default(),
        )
        .await
        .unwrap();
    dead
}

fn fs_store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
    (dir, store)
}

async fn keys(store: &dyn Store) -> Vec<String> {
    crate::list_all(store, "")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_says_whose_it_was() {
    let (_dir, store) = fs_store();
    let dead = dead_lock(store.as_ref(), Some(3)).await;
    // Not yet: the lease has not stood still for a whole lease of this run's watching.
    let early = acquire(store.clone(), &short(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(&early, LockError::Held(h) if h.owner.id == dead.id),
        "{early}"
    );
    assert!(
        early.hint().unwrap().contains("longer than its lease"),
        "{:?}",
        early.hint()
    );
    let lock = acquire(store.clone(), &short(Duration::from_secs(20)))
        .await
        .unwrap();
    let over = lock.took_over.clone().expect("taken over");
    assert_eq!(over.from.id, dead.id);
    let said = over.to_string();
    for part in [
        "dead00000000beef",
        "runner-9",
        "actions/runs/9",
        "its lease expired at",
    ] {
        assert!(said.contains(part), "{part:?} in {said}");
    }
    assert!(lock.lost().is_none());
    // Another run sees the new owner, not the dead one.
    let held = acquire(store.clone(), &short(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(
        matches!(&held, LockError::Held(h) if h.owner.id == lock.info.id),
        "{held}"
    );
    lock.release().await.unwrap();
    assert!(
        keys(store.as_ref()).await.is_empty(),
        "lock and chain removed"
    );
}

#[tokio::test]
async fn a_lock_from_before_leases_never_expires() {
    let (_dir, store) = fs_store();
    dead_lock(store.as_ref(), None).await;
    let err = acquire(store.clone(), &short(Duration::from_secs(4)))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Held(_)), "{err}");
    assert!(err
        .hint()
        .unwrap()
        .contains("force-unlock dead00000000beef"));
}

#[tokio::test]
async fn a_lease_long_past_by_the_clock_is_taken_over_at_once() {
    let (_dir, store) = fs_store();
    let mut dead = new_info("apply", Some(Duration::from_secs(3)));
    dead.created_at = "2026-01-01T00:00:00Z".into();
    store
        .put(
            LOCK_KEY,
            Bytes::from(serde_json::to_vec(&dead).unwrap()),
            Default::default(),
        )
        .await
        .unwrap();
    let lock = acquire(store.clone(), &short(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lock.took_over.as_ref().unwrap().from.id, dead.id);
    lock.release().await.unwrap();
}

#[tokio::test]
async fn of_two_runs_taking_over_one_lease_one_wins_and_the_other_waits() {
    let (_dir, store) = fs_store();
    dead_lock(store.as_ref(), Some(3)).await;
    let take = |store: Arc<dyn Store>| {
        tokio::spawn(async move {
            let lock = acquire(store, &short(Duration::from_secs(60)))
                .await
                .unwrap();
            let took_over = lock.took_over.is_some();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let lost = lock.lost();
            lock.release().await.unwrap();
            (took_over, lost)
        })
    };
    let (a, b) = (take(store.clone()), take(store.clone()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(
        a.1.is_none() && b.1.is_none(),
        "neither lost its lock: {a:?} {b:?}"
    );
    assert_eq!(
        [a.0, b.0].iter().filter(|t| **t).count(),
        1,
        "exactly one took over; the other waited for its release: {a:?} {b:?}"
    );
    assert!(keys(store.as_ref()).await.is_empty());
}

#[tokio::test]
async fn a_held_lease_is_renewed_and_never_taken_over() {
    let (_dir, store) = fs_store();
    let lock = acquire(store.clone(), &short(Duration::ZERO))
        .await
        .unwrap();
    // Three leases long: every attempt of another run is refused.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let other = acquire(store.clone(), &short(Duration::ZERO)).await;
        assert!(matches!(other, Err(LockError::Held(_))), "{other:?}");
    }
    assert!(lock.lost().is_none());
    let chain = crate::list_all(store.as_ref(), &lease::chain_prefix(&lock.info.id))
        .await
        .unwrap();
    assert!(chain.len() >= 6, "renewed about every second: {chain:?}");
    lock.release().await.unwrap();
    assert!(keys(store.as_ref()).await.is_empty());
}

#[tokio::test]
async fn a_run_that_lost_its_lock_writes_nothing_and_leaves_the_new_lock_alone() {
    let (_dir, store) = fs_store();
    let lock = acquire(store.clone(), &short(Duration::ZERO))
        .await
        .unwrap();
    let fenced = lock.fence(store.clone());
    fenced
        .put("images/a", Bytes::from_static(b"a"), Default::default())
        .await
        .unwrap();
    force_unlock(store.as_ref(), &lock.info.id).await.unwrap();
    let newer = acquire(store.clone(), &short(Duration::ZERO))
        .await
        .unwrap();
    // The old holder's next renewal finds the chain ended.
    for _ in 0..50 {
        if lock.lost().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lock.lost(), Some(LeaseLost::ForceUnlocked));
    let refused = fenced
        .put("images/b", Bytes::from_static(b"b"), Default::default())
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
    assert!(
        refused.to_string().contains("lost the store lock"),
        "{refused}"
    );
    assert!(fenced.delete("images/a").await.is_err());
    assert!(store.head("images/b").await.unwrap().is_none());
    assert!(store.head("images/a").await.unwrap().is_some());
    lock.release().await.unwrap();
    assert!(newer.lost().is_none());
    let held = read(store.as_ref()).await.unwrap().unwrap();
    assert_eq!(held.id, newer.info.id, "the newer lock stays");
    newer.release().await.unwrap();
}

#[tokio::test]
async fn a_lease_not_renewed_in_time_fences_every_write() {
    let (_dir, store) = fs_store();
    let lock = acquire(store.clone(), &short(Duration::ZERO))
        .await
        .unwrap();
    // What a pause (SIGSTOP, a frozen VM) looks like from inside: no renewal for a whole lease.
    lock.keeper.abort();
    tokio::time::sleep(MIN_LEASE).await;
    let lost = lock.lost().expect("lost");
    assert!(matches!(lost, LeaseLost::NotRenewed { .. }), "{lost}");
    let fenced = lock.fence(store.clone());
    assert!(fenced
        .put("images/a", Bytes::from_static(b"a"), Default::default())
        .await
        .is_err());
    // Nobody took it over: the release still removes it (the release is just the next slot).
    lock.release().await.unwrap();
    assert!(keys(store.as_ref()).await.is_empty());
}

#[tokio::test]
/// A release that stopped between ending the chain and removing the lock file: the next run
/// takes the chain over like any expired one (never by deleting the file, which two waiters
/// could both do on a store that ignores If-Match on delete).
async fn a_lock_released_halfway_is_taken_over_by_the_next_run() {
    let (_dir, store) = fs_store();
    let dead = dead_lock(store.as_ref(), Some(3)).await;
    let end = Slot::now(SlotKind::Release, &dead);
    assert!(matches!(
        lease::claim(store.as_ref(), &dead.id, 1, &end)
            .await
            .unwrap(),
        Claim::Won
    ));
    let lock = acquire(store.clone(), &short(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(lock.took_over.as_ref().unwrap().lock_id, dead.id);
    lock.release().await.unwrap();
    assert!(keys(store.as_ref()).await.is_empty());
}

//! The store lock: `.labctl/lock.json`, created with a conditional write (`If-None-Match: *`)
//! so that two runs never change one store at once, held under a lease ([`lease`]) so that a
//! runner that dies does not keep it, and fenced ([`fenced`]) so that a run that lost it writes
//! nothing more.

pub mod fenced;
pub mod lease;

use std::borrow::Cow;

use labctl_core::hint::Hint;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{self as store, PutMode, PutOptions, Store, StoreError};
pub use fenced::Fenced;
use lease::{Claim, ExtendError, Newest, Since, Slot, SlotKind, Watch};
pub use lease::{Lease, LeaseLost, Observed, DEFAULT_LEASE, MIN_LEASE};

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
    /// How long the lock lasts unless renewed; absent on locks from before leases, which
    /// never expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
}

impl LockInfo {
    /// Whoever wrote a slot that cannot be read.
    fn unknown() -> LockInfo {
        LockInfo {
            id: "unknown".into(),
            holder: "an unknown run".into(),
            host: "an unknown host".into(),
            pid: 0,
            operation: "unknown".into(),
            run_url: None,
            created_at: "unknown".into(),
            labctl_version: "unknown".into(),
            lease_seconds: None,
        }
    }
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

/// A held lock as a waiting run reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: LockInfo,
    /// The ID `force-unlock` takes (the lock file's; the owner's works as well).
    pub lock_id: String,
    /// When its lease was last renewed and how long it lasts; `None` for a lock without one.
    pub lease: Option<(String, u64)>,
}

impl Holder {
    fn of(observed: &Observed) -> Holder {
        Holder {
            owner: observed.owner().clone(),
            lock_id: observed.instance.id.clone(),
            lease: observed
                .lease()
                .map(|l| (observed.renewed_at().to_string(), l.as_secs())),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.owner;
        write!(
            f,
            "{} on {} (pid {}) since {}",
            o.holder, o.host, o.pid, o.created_at
        )?;
        if let Some(url) = &o.run_url {
            write!(f, ", {url}")?;
        }
        write!(f, "; lock ID {}", self.lock_id)?;
        if let Some((renewed, lease)) = &self.lease {
            write!(f, "; lease of {lease}s last renewed {renewed}")?;
        }
        Ok(())
    }
}

/// A lock whose lease ran out and which this run took over.
#[derive(Debug, Clone)]
pub struct TakenOver {
    pub from: LockInfo,
    pub lock_id: String,
    /// When the lease ran out, by the old owner's clock.
    pub expired_at: Option<String>,
    pub renewed_at: String,
}

impl std::fmt::Display for TakenOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.from;
        write!(
            f,
            "took over the store lock (ID {}) from run {} by {} on {} (pid {})",
            self.lock_id, o.id, o.holder, o.host, o.pid
        )?;
        if let Some(url) = &o.run_url {
            write!(f, ", {url}")?;
        }
        match &self.expired_at {
            Some(at) => write!(
                f,
                ": its lease expired at {at} (last renewed {})",
                self.renewed_at
            ),
            None => write!(f, ": its lease was not renewed since {}", self.renewed_at),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the store is locked by {0}")]
    Held(Box<Holder>),
    #[error("the store is locked, but its lock file cannot be read: {why}")]
    Unreadable {
        why: String,
        /// What `force-unlock` takes to remove exactly this file ([`unreadable_id`]).
        id: String,
    },
    #[error("the store accepted a second conditional create of `{0}`: it does not enforce `If-None-Match: *`, so a lock cannot keep two applies apart")]
    NotEnforced(&'static str),
    #[error("no lock with ID `{wanted}` (the lock is held by {held})")]
    WrongId { wanted: String, held: Box<Holder> },
    #[error("the store is not locked")]
    NotLocked,
    #[error("interrupted while waiting for the lock")]
    Interrupted,
    #[error("the lock was taken over right after it was created (it now holds ID {0}): the store does not keep conditional writes apart")]
    Lost(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Hint for LockError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        let hint = match self {
            LockError::Held(holder) => Some(match holder.lease {
                Some(_) => format!(
                    "wait for that run to finish, or give --lock-timeout longer than its lease to wait here: a run that is gone stops renewing it and the lock is taken over; `labctl force-unlock {}` removes it at once",
                    holder.lock_id
                ),
                None => format!(
                    "wait for that run to finish, give --lock-timeout to wait here, or if it is gone, run `labctl force-unlock {}`",
                    holder.lock_id
                ),
            }),
            LockError::Unreadable { id, .. } => Some(format!(
                "if no labctl run is using the store, remove it with `labctl force-unlock {id}`"
            )),
            LockError::NotEnforced(_) => Some(
                "run `labctl doctor` to see what the store supports; with one apply at a time guaranteed elsewhere (a CI concurrency group), pass --lock=false".into(),
            ),
            LockError::Store(e) => e.hint().map(Cow::into_owned),
            _ => None,
        };
        hint.map(Cow::Owned)
    }
}

/// How to take the lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// What the run does (`apply`, `cleanup`), for whoever finds the lock.
    pub operation: String,
    /// How long to wait for another run's lock.
    pub timeout: Duration,
    /// How long the lock lasts without a renewal (`--lock-lease`).
    pub lease: Duration,
    /// Also check that the store really refuses a second conditional create.
    pub verify: bool,
}

impl LockOptions {
    pub fn new(operation: &str, timeout: Duration, lease: Duration) -> LockOptions {
        LockOptions {
            operation: operation.to_string(),
            timeout,
            // At most a week: longer would keep a dead runner's lock for as long, and could
            // not be added to the clock.
            lease: lease.clamp(MIN_LEASE, Duration::from_secs(7 * 24 * 3600)),
            verify: true,
        }
    }
}

/// The held lock. Released by [`Lock::release`] on every normal way out (reporting a failure);
/// if it is dropped unreleased — a panic unwinding through apply — its `Drop` releases it on the
/// runtime. While held, a background task renews its lease.
#[derive(Debug)]
pub struct Lock {
    store: Arc<dyn Store>,
    /// This run, as the lock names it.
    pub info: LockInfo,
    /// The lock this run took over from a run whose lease expired, if it did.
    pub took_over: Option<TakenOver>,
    lease: Arc<Lease>,
    /// The lock file's ETag, so that the release deletes exactly it.
    etag: String,
    keeper: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.keeper.abort();
        if self.released {
            return;
        }
        let (store, lease, owner, etag) = (
            self.store.clone(),
            self.lease.clone(),
            self.info.clone(),
            self.etag.clone(),
        );
        let id = self.info.id.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = release_lease(store.as_ref(), &lease, &owner, &etag).await {
                        crate::events::report(crate::events::Event::LockNotReleased {
                            id,
                            error: Some(e.to_string()),
                        });
                    }
                });
            }
            Err(_) => {
                crate::events::report(crate::events::Event::LockNotReleased { id, error: None })
            }
        }
    }
}

/// Ends the chain with a release and removes the lock file, unless the lock is no longer ours
/// (taken over, force-unlocked): then nothing is touched.
async fn release_lease(
    store: &dyn Store,
    lease: &Lease,
    owner: &LockInfo,
    etag: &str,
) -> Result<(), LockError> {
    match lease.extend(store, SlotKind::Release, owner).await {
        Ok(()) => {}
        Err(ExtendError::Lost) => return Ok(()),
        Err(ExtendError::Store(e)) => return Err(e.into()),
    }
    // The chain has ended: nobody else writes the lock file or the chain from here. The lock
    // file is read once more all the same: a run whose lease ran out may release after its
    // taker already did, and then the file there is someone else's.
    match read_with_etag(store).await {
        Ok(Some((current, now))) if current.id == lease.lock_id() && now == etag => {
            store.delete_if(LOCK_KEY, etag).await?;
        }
        Ok(_) | Err(LockError::Unreadable { .. }) => {}
        Err(e) => return Err(e),
    }
    lease::forget(store, lease.lock_id()).await;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| crate::identity::run_identity().hostname.clone())
        .unwrap_or_else(|| "unknown-host".into())
}

fn new_info(operation: &str, lease: Option<Duration>) -> LockInfo {
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
        lease_seconds: lease.map(|l| l.as_secs()),
    }
}

/// A lock file is a few hundred bytes; reading stops well past that.
const MAX_LOCK_BYTES: usize = 64 * 1024;

/// The lock file and the ETag it had when read.
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

/// The lock as it stands: the lock file, its ETag, and its chain's newest slot; `None` when
/// the store is not locked, or its chain is being removed this instant (look again).
pub async fn observe(store: &dyn Store) -> Result<Option<(Observed, String)>, LockError> {
    let Some((instance, etag)) = read_with_etag(store).await? else {
        return Ok(None);
    };
    let (newest, slot) = match lease::newest(store, &instance.id).await? {
        Newest::None => (0, None),
        Newest::Slot(n, slot) => (n, slot.map(|s| *s)),
        Newest::Moving => return Ok(None),
    };
    Ok(Some((
        Observed {
            instance,
            newest,
            slot,
        },
        etag,
    )))
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
    Lock(Box<Holder>),
    /// A lock file that could not be read.
    Unreadable,
}

/// Takes the lock, waiting up to `options.timeout` for a holder to release it or for its lease
/// to expire.
pub async fn acquire(store: Arc<dyn Store>, options: &LockOptions) -> Result<Lock, LockError> {
    let (_never, cancel) = tokio::sync::watch::channel(false);
    acquire_unless(store, options, cancel).await
}

/// How this run came to hold the lock.
enum Taken {
    /// It created the lock file.
    Fresh,
    /// It created the next slot of an expired lock's chain.
    Over {
        observed: Box<Observed>,
        etag: String,
        slot: u64,
    },
}

/// [`acquire`], giving up (without a lock) as soon as `cancel` turns true while it waits.
pub async fn acquire_unless(
    store: Arc<dyn Store>,
    options: &LockOptions,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<Lock, LockError> {
    let info = new_info(&options.operation, Some(options.lease));
    let body = Bytes::from(serde_json::to_vec_pretty(&info).expect("serializes"));
    let create = PutOptions {
        mode: PutMode::CreateOnly,
        ..Default::default()
    };
    // A timeout too long to add to the clock waits without a deadline.
    let deadline = tokio::time::Instant::now().checked_add(options.timeout);
    let mut wait = Duration::from_millis(250);
    let mut watch = Watch::default();
    let mut sent;
    // How often the lock was there to refuse our create but gone when read: a release in
    // progress, once or twice; a store answering both at once, for ever.
    let mut vanished = 0u32;
    let taken = loop {
        sent = Since::now();
        match store.put(LOCK_KEY, body.clone(), create.clone()).await {
            Ok(_) => break Taken::Fresh,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let seen = observe(store.as_ref()).await;
        let past_deadline = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        let (observed, etag) = match seen {
            // Released between our attempt and the read: try again shortly.
            Ok(None) => {
                vanished += 1;
                if past_deadline && vanished > 20 {
                    return Err(LockError::Unreadable {
                        why: "the store refuses to create it, yet has none to read".into(),
                        id: "unreadable-none".into(),
                    });
                }
                if !nap(Duration::from_millis(100), &mut cancel).await {
                    return Err(LockError::Interrupted);
                }
                continue;
            }
            Ok(Some(seen)) => seen,
            Err(e) if past_deadline => return Err(e),
            // An unreadable lock file is reported once the wait is over.
            Err(_) => {
                if !pause(deadline, &mut wait, &mut cancel).await {
                    return Err(LockError::Interrupted);
                }
                continue;
            }
        };
        let now = labctl_core::timefmt::unix_now().as_secs();
        if watch.stood_still(&observed) || observed.expired_by_clock(now) {
            watch.reset();
            // The next slot, whatever the last one was: a lease that ran out, or a release or
            // force-unlock that stopped before removing the lock file. Of every run asking for
            // it, one gets it; the lock file is never deleted or rewritten by a taker.
            let slot = observed.newest + 1;
            sent = Since::now();
            let takeover = Slot::now(SlotKind::TakeOver, &info);
            let won = lease::claim(store.as_ref(), &observed.instance.id, slot, &takeover).await?;
            // The lock file must still be the one whose chain was claimed: a release removes
            // the file before its chain, so a chain claimed after that is nobody's.
            let still = matches!(
                read_with_etag(store.as_ref()).await,
                Ok(Some((now, now_etag))) if now.id == observed.instance.id && now_etag == etag
            );
            match (won, still) {
                (Claim::Won, true) => {
                    break Taken::Over {
                        observed: Box::new(observed),
                        etag,
                        slot,
                    }
                }
                (Claim::Won, false) => {
                    lease::forget(store.as_ref(), &observed.instance.id).await;
                }
                // Another taker (or a late renewal) got the slot: the lock is held again.
                (Claim::Lost(_), _) => {}
            }
            if !pause(deadline, &mut wait, &mut cancel).await {
                return Err(LockError::Interrupted);
            }
            continue;
        }
        if past_deadline {
            return Err(LockError::Held(Box::new(Holder::of(&observed))));
        }
        if !pause(deadline, &mut wait, &mut cancel).await {
            return Err(LockError::Interrupted);
        }
    };
    match taken {
        Taken::Fresh => fresh(store, options, info, body, create, sent).await,
        Taken::Over {
            observed,
            etag,
            slot,
        } => {
            if options.verify {
                verify_slots_enforced(store.as_ref(), &observed.instance.id, slot, &info).await?;
            }
            let lease = Arc::new(Lease::new(&observed.instance.id, options.lease, slot, sent));
            let keeper = lease::keep(store.clone(), lease.clone(), info.clone());
            Ok(Lock {
                store,
                took_over: Some(TakenOver {
                    from: observed.owner().clone(),
                    lock_id: observed.instance.id.clone(),
                    expired_at: observed.expired_at(),
                    renewed_at: observed.renewed_at().to_string(),
                }),
                info,
                lease,
                etag,
                keeper,
                released: false,
            })
        }
    }
}

/// Sleeps `for_`; `false` when interrupted.
async fn nap(for_: Duration, cancel: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(for_) => true,
        _ = cancel.wait_for(|c| *c) => false,
    }
}

/// Waits before the next attempt; `false` when interrupted.
async fn pause(
    deadline: Option<tokio::time::Instant>,
    wait: &mut Duration,
    cancel: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let now = tokio::time::Instant::now();
    let nap = deadline.map_or(*wait, |d| (*wait).min(d.saturating_duration_since(now)));
    let waited = tokio::select! {
        _ = tokio::time::sleep(nap) => true,
        _ = cancel.wait_for(|c| *c) => false,
    };
    *wait = (*wait * 2).min(Duration::from_secs(5));
    waited
}

/// The lock file this run just created: checked, then held.
async fn fresh(
    store: Arc<dyn Store>,
    options: &LockOptions,
    info: LockInfo,
    body: Bytes,
    create: PutOptions,
    sent: Since,
) -> Result<Lock, LockError> {
    if options.verify {
        match store.put(LOCK_KEY, body.clone(), create).await {
            Err(StoreError::AlreadyExists { .. }) => {}
            Ok(_) => {
                remove_own(store.as_ref(), &info.id).await?;
                return Err(LockError::NotEnforced(LOCK_KEY));
            }
            Err(e) => {
                if let Err(left) = remove_own(store.as_ref(), &info.id).await {
                    crate::events::report(crate::events::Event::LockNotRemoved {
                        error: left.to_string(),
                    });
                }
                return Err(e.into());
            }
        }
    }
    // Read back: on a store whose conditional write is check-then-write, two runs can both be
    // told they created it; only the one whose ID is there holds it.
    match read_with_etag(store.as_ref()).await? {
        Some((current, etag)) if current.id == info.id => {
            let lease = Arc::new(Lease::new(&info.id, options.lease, 0, sent));
            let keeper = lease::keep(store.clone(), lease.clone(), info.clone());
            Ok(Lock {
                store,
                info,
                took_over: None,
                lease,
                etag,
                keeper,
                released: false,
            })
        }
        Some((current, _)) => Err(LockError::Lost(current.id)),
        None => Err(LockError::Lost("none: it is gone".into())),
    }
}

/// Removes a lock file this run created a moment ago, if it is still this run's.
async fn remove_own(store: &dyn Store, id: &str) -> Result<(), LockError> {
    match read_with_etag(store).await? {
        Some((current, etag)) if current.id == id => {
            store.delete_if(LOCK_KEY, &etag).await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A takeover is only single-winner where slots are created once: a second create of the slot
/// just claimed must be refused.
async fn verify_slots_enforced(
    store: &dyn Store,
    lock_id: &str,
    slot: u64,
    info: &LockInfo,
) -> Result<(), LockError> {
    let again = Slot::now(SlotKind::TakeOver, info);
    match lease::claim_raw(store, lock_id, slot, &again).await {
        Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Ok(()) => Err(LockError::NotEnforced(lease::LEASE_PREFIX)),
        Err(e) => Err(e.into()),
    }
}

impl Lock {
    /// Releases the lock if it is still ours: the release is the chain's next slot, so a lock
    /// someone took over or force-unlocked in between is left alone.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        self.keeper.abort();
        release_lease(self.store.as_ref(), &self.lease, &self.info, &self.etag).await
    }

    /// Stops renewing without releasing: the lock expires after its lease and the next run
    /// takes it over. For a run that abandoned a write the store may still carry out (a
    /// server-side copy it stopped waiting for at a signal): releasing would let another run
    /// write while that request can still land. Returns the lease, for the message.
    pub fn abandon(mut self) -> Duration {
        self.released = true;
        self.keeper.abort();
        self.lease.duration
    }

    /// The lease every write of this run is fenced by.
    pub fn lease(&self) -> Arc<Lease> {
        self.lease.clone()
    }

    /// The store to write through while holding this lock: every write checks the lease first.
    pub fn fence(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Fenced::new(store, self.lease.clone()))
    }

    /// Why this run no longer holds the lock, if it does not.
    pub fn lost(&self) -> Option<LeaseLost> {
        self.lease.check().err()
    }
}

/// Whether a run holds the lock by the timestamps: a lock whose lease ran out (with the clock
/// skew allowance to spare) no longer protects anything in progress.
pub async fn held_by_a_live_run(store: &dyn Store) -> Result<bool, LockError> {
    let now = labctl_core::timefmt::unix_now().as_secs();
    Ok(match observe(store).await {
        Ok(Some((observed, _))) => !observed.ended() && !observed.expired_by_clock(now),
        Ok(None) => false,
        Err(LockError::Unreadable { .. }) => true,
        Err(e) => return Err(e),
    })
}

/// Removes the lock with `id` (the lock file's or its current owner's), whoever holds it.
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
    force_unlock_readable(store, id)
        .await
        .map(|h| Removed::Lock(Box::new(h)))
}

async fn force_unlock_readable(store: &dyn Store, id: &str) -> Result<Holder, LockError> {
    let me = new_info("force-unlock", None);
    loop {
        let Some((observed, etag)) = observe(store).await? else {
            return Err(LockError::NotLocked);
        };
        let holder = Holder::of(&observed);
        if observed.instance.id != id && observed.owner().id != id {
            return Err(LockError::WrongId {
                wanted: id.to_string(),
                held: Box::new(holder),
            });
        }
        // End the chain first: a holder that still runs can no longer renew, and stops writing.
        if !observed.ended() {
            let end = Slot::now(SlotKind::ForceUnlock, &me);
            match lease::claim(store, &observed.instance.id, observed.newest + 1, &end).await? {
                Claim::Won => {}
                // Renewed in the same instant: look again.
                Claim::Lost(_) => continue,
            }
        }
        if !store.delete_if(LOCK_KEY, &etag).await? {
            return Err(LockError::Lost(format!("{id}: replaced while unlocking")));
        }
        lease::forget(store, &observed.instance.id).await;
        return Ok(holder);
    }
}

#[cfg(test)]
mod tests;

//! The lock's lease: a chain of slots, each key created exactly once.
//!
//! `.labctl/lock.json` is written once, when a run takes a free lock, and never rewritten. What
//! changes while the lock is held goes into its chain, `.labctl/lease/<lock ID>/<n>.json`: the
//! owner renews by creating slot n+1, a run that saw the lease expire takes over by creating slot
//! n+1, and a release or `force-unlock` ends the chain the same way. Slots are created with
//! `If-None-Match: *` — the one conditional write every store that can lock has — so of all the
//! runs that want the next slot exactly one gets it: a renewal and a takeover can never both
//! succeed, and of two takers one wins. The owner is whoever wrote the newest slot (or
//! `lock.json` itself, before the first renewal). docs/decisions.md has the timing argument.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::LockInfo;
use crate::{self as store, PutMode, PutOptions, Store, StoreError};

pub const LEASE_PREFIX: &str = ".labctl/lease/";

/// The lease `--lock-lease` defaults to.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// The shortest lease: renewals a third of it apart must still be far from each other.
pub const MIN_LEASE: Duration = Duration::from_secs(3);

/// How far two runners' clocks may disagree before a lease that looks long expired by the
/// timestamps is taken over early. Below this, a taker waits a whole lease of its own watching
/// instead, which needs no clock agreement at all.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(120);

/// A slot is a few hundred bytes.
const MAX_SLOT_BYTES: usize = 64 * 1024;

/// One link of a lock's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub kind: SlotKind,
    /// When it was written, by its writer's clock.
    pub at: String,
    /// Who holds the lock from this slot on (for a release or force-unlock: who ended it).
    pub owner: LockInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    Renew,
    TakeOver,
    /// The owner released the lock; `lock.json` is about to be deleted.
    Release,
    /// `labctl force-unlock` removed the lock.
    ForceUnlock,
}

impl SlotKind {
    /// Nothing follows a release or a force-unlock: the lock is on its way out.
    pub fn ends_the_chain(self) -> bool {
        matches!(self, SlotKind::Release | SlotKind::ForceUnlock)
    }
}

impl Slot {
    pub fn now(kind: SlotKind, owner: &LockInfo) -> Slot {
        Slot {
            kind,
            at: labctl_core::timefmt::now_rfc3339(),
            owner: owner.clone(),
        }
    }
}

pub fn chain_prefix(lock_id: &str) -> String {
    format!("{LEASE_PREFIX}{lock_id}/")
}

fn slot_key(lock_id: &str, n: u64) -> String {
    format!("{}{n:010}.json", chain_prefix(lock_id))
}

fn slot_number(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?.strip_suffix(".json")?;
    (name.len() == 10 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// The newest slot of a lock's chain.
#[derive(Debug)]
pub enum Newest {
    /// No slot yet: the lock file's own time starts the lease.
    None,
    /// Slot `n`; `None` when it cannot be read (not JSON, too large): a renewal nobody can
    /// date, which still moves the chain on, so a taker watching it starts over.
    Slot(u64, Option<Box<Slot>>),
    /// Listed, but gone when read: the chain is being removed (a release, a force-unlock).
    /// Nothing about it may be concluded; look again.
    Moving,
}

pub async fn newest(store: &dyn Store, lock_id: &str) -> Result<Newest, StoreError> {
    let listed = store::list_all(store, &chain_prefix(lock_id)).await?;
    let Some(n) = listed.iter().filter_map(|o| slot_number(&o.key)).max() else {
        return Ok(Newest::None);
    };
    Ok(
        match store::get_bytes(store, &slot_key(lock_id, n), MAX_SLOT_BYTES).await? {
            None => Newest::Moving,
            Some((_, bytes)) => Newest::Slot(n, serde_json::from_slice(&bytes).ok().map(Box::new)),
        },
    )
}

async fn read_slot(store: &dyn Store, lock_id: &str, n: u64) -> Result<Option<Slot>, StoreError> {
    Ok(
        store::get_bytes(store, &slot_key(lock_id, n), MAX_SLOT_BYTES)
            .await?
            .and_then(|(_, bytes)| serde_json::from_slice(&bytes).ok()),
    )
}

/// What creating slot `n` came to.
#[derive(Debug)]
pub enum Claim {
    Won,
    /// Someone else wrote slot `n` first; what it says, when it can be read.
    Lost(Option<Box<Slot>>),
}

/// Creates slot `n` of `lock_id`'s chain, unless it exists. A slot that exists with this very
/// content is ours: an earlier attempt whose answer was lost on the way back landed after all.
pub async fn claim(
    store: &dyn Store,
    lock_id: &str,
    n: u64,
    slot: &Slot,
) -> Result<Claim, StoreError> {
    match claim_raw(store, lock_id, n, slot).await {
        Ok(()) => Ok(Claim::Won),
        Err(StoreError::AlreadyExists { .. }) => {
            let there = read_slot(store, lock_id, n).await?;
            Ok(match there {
                Some(s) if s.kind == slot.kind && s.owner.id == slot.owner.id => Claim::Won,
                other => Claim::Lost(other.map(Box::new)),
            })
        }
        Err(e) => Err(e),
    }
}

/// Creates slot `n` as [`claim`] does, but reports a slot that exists as it is: what checks
/// that the store enforces create-only writes.
pub(super) async fn claim_raw(
    store: &dyn Store,
    lock_id: &str,
    n: u64,
    slot: &Slot,
) -> Result<(), StoreError> {
    let body = Bytes::from(serde_json::to_vec_pretty(slot).expect("serializes"));
    let create = PutOptions {
        mode: PutMode::CreateOnly,
        ..Default::default()
    };
    store
        .put(&slot_key(lock_id, n), body, create)
        .await
        .map(|_| ())
}

/// Removes a lock's chain; best effort (a leftover chain names a lock ID never used again).
pub async fn forget(store: &dyn Store, lock_id: &str) {
    if let Ok(slots) = store::list_all(store, &chain_prefix(lock_id)).await {
        for slot in slots {
            let _ = store.delete(&slot.key).await;
        }
    }
}

/// Why a run no longer holds the lock: from then on it writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLost {
    #[error("this run lost the store lock: run {} took it over after its lease expired", by.id)]
    TakenOver { by: Box<LockInfo> },
    #[error("this run lost the store lock: it was removed with `labctl force-unlock`")]
    ForceUnlocked,
    #[error("this run lost the store lock: its lease of {lease}s was not renewed in time{why}")]
    NotRenewed { lease: u64, why: String },
}

impl LeaseLost {
    fn from_slot(slot: Option<Box<Slot>>) -> LeaseLost {
        match slot {
            Some(s) if s.kind == SlotKind::ForceUnlock => LeaseLost::ForceUnlocked,
            Some(s) => LeaseLost::TakenOver {
                by: Box::new(s.owner.clone()),
            },
            None => LeaseLost::TakenOver {
                by: Box::new(LockInfo::unknown()),
            },
        }
    }
}

/// A moment measured two ways. The monotonic clock is immune to the wall clock being set, but
/// on Linux it stops while the machine is suspended or its VM frozen, when other runs' clocks go
/// on; the wall clock keeps counting then. The larger of the two is how long it has been.
#[derive(Debug, Clone, Copy)]
pub struct Since {
    instant: Instant,
    wall: std::time::SystemTime,
}

impl Since {
    pub fn now() -> Since {
        Since {
            instant: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.instant
            .elapsed()
            .max(self.wall.elapsed().unwrap_or_default())
    }
}

/// The lease a run holds: which slot is its newest, when it was renewed by this process's own
/// monotonic clock, and whether it is lost. Shared by the renewal task, every fenced write and
/// the release.
#[derive(Debug)]
pub struct Lease {
    pub duration: Duration,
    lock_id: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    newest: u64,
    /// When the request that created the newest slot was first sent: the lease can only have
    /// started later than that, at the store.
    renewed: Since,
    /// The slot being created and when its first attempt was sent: a retry whose earlier
    /// attempt landed after all counts from that first attempt.
    attempt: Option<(u64, Since)>,
    lost: Option<LeaseLost>,
    /// The last renewal's error, said when the lease runs out because of it.
    last_error: Option<String>,
}

impl Lease {
    pub(super) fn new(lock_id: &str, duration: Duration, newest: u64, since: Since) -> Lease {
        Lease {
            duration,
            lock_id: lock_id.to_string(),
            state: Mutex::new(State {
                newest,
                renewed: since,
                attempt: None,
                lost: None,
                last_error: None,
            }),
        }
    }

    /// How much of the lease must be left for a write to start: the longest a single write
    /// may take and still land before any other run can take over (docs/decisions.md).
    pub fn margin(&self) -> Duration {
        self.duration / 3
    }

    /// `Ok` while this run may still write: the lease was not lost, and more than
    /// [`Lease::margin`] of it is left. Once it fails it keeps failing.
    pub fn check(&self) -> Result<(), LeaseLost> {
        let mut state = self.state.lock().expect("not poisoned");
        if let Some(lost) = &state.lost {
            return Err(lost.clone());
        }
        if state.renewed.elapsed().saturating_add(self.margin()) > self.duration {
            let why = match &state.last_error {
                Some(e) => format!(" (the last renewal failed: {e})"),
                None => " (the run was paused, or could not reach the store)".into(),
            };
            let lost = LeaseLost::NotRenewed {
                lease: self.duration.as_secs(),
                why,
            };
            state.lost = Some(lost.clone());
            return Err(lost);
        }
        Ok(())
    }

    pub fn lock_id(&self) -> &str {
        &self.lock_id
    }

    /// A stop signal that also turns true once this lease is lost: a run that can no longer
    /// write anything stops its downloads and builds too, instead of finishing work that its
    /// fenced writes would refuse. Checked a few times per margin, so well before the run could
    /// reach a commit point.
    pub fn stop_when_lost(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(*stop.borrow());
        let lease = self.clone();
        let every = (self.margin() / 4).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let signalled = async {
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let lost = async {
                while lease.check().is_ok() {
                    tokio::time::sleep(every).await;
                }
            };
            tokio::select! {
                () = signalled => {}
                () = lost => {}
                () = tx.closed() => return,
            }
            let _ = tx.send(true);
        });
        rx
    }

    fn lost(&self) -> Option<LeaseLost> {
        self.state.lock().expect("not poisoned").lost.clone()
    }

    fn newest(&self) -> u64 {
        self.state.lock().expect("not poisoned").newest
    }

    fn renewed(&self, n: u64) {
        let mut state = self.state.lock().expect("not poisoned");
        let sent = match state.attempt.take() {
            Some((slot, first)) if slot == n => first,
            _ => Since::now(),
        };
        state.newest = n;
        state.renewed = sent;
        state.last_error = None;
    }

    /// Notes that slot `n` is being asked for now, unless an earlier attempt already was.
    fn attempting(&self, n: u64) {
        let mut state = self.state.lock().expect("not poisoned");
        if !matches!(state.attempt, Some((slot, _)) if slot == n) {
            state.attempt = Some((n, Since::now()));
        }
    }

    fn lose(&self, why: LeaseLost) {
        let mut state = self.state.lock().expect("not poisoned");
        state.lost.get_or_insert(why);
    }

    fn failed_renewal(&self, e: &StoreError) {
        let text = format!("{:#}", anyhow_like(e));
        self.state.lock().expect("not poisoned").last_error = Some(text);
    }

    /// Creates the next slot of the chain for `owner` (a renewal or a release). Slots this run
    /// wrote itself are stepped over (a renewal cut short by the release still landed); one
    /// written by anyone else means the lock is no longer ours.
    pub(super) async fn extend(
        &self,
        store: &dyn Store,
        kind: SlotKind,
        owner: &LockInfo,
    ) -> Result<(), ExtendError> {
        // A lease that ran out locally is not renewed; it may still be released, since the
        // release is a slot like any other and loses to a taker who got there first.
        if kind == SlotKind::Renew {
            self.check().map_err(|_| ExtendError::Lost)?;
        } else if self
            .lost()
            .is_some_and(|l| !matches!(l, LeaseLost::NotRenewed { .. }))
        {
            return Err(ExtendError::Lost);
        }
        let mut n = self.newest() + 1;
        loop {
            self.attempting(n);
            match claim(store, &self.lock_id, n, &Slot::now(kind, owner)).await {
                Ok(Claim::Won) => {
                    self.renewed(n);
                    return Ok(());
                }
                Ok(Claim::Lost(Some(s))) if s.owner.id == owner.id => n += 1,
                Ok(Claim::Lost(other)) => {
                    let lost = LeaseLost::from_slot(other);
                    self.lose(lost);
                    return Err(ExtendError::Lost);
                }
                Err(e) => {
                    self.failed_renewal(&e);
                    return Err(ExtendError::Store(e));
                }
            }
        }
    }
}

/// Why a slot could not be added.
#[derive(Debug)]
pub(super) enum ExtendError {
    Lost,
    Store(StoreError),
}

/// An error and its causes on one line, as `{:#}` prints an anyhow chain.
fn anyhow_like(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Renews the lease every third of it until it is lost or the task is aborted (by the release).
/// A failed renewal is tried again sooner; if none succeeds before the margin is reached,
/// [`Lease::check`] reports the lease lost and every later write is refused.
pub(super) fn keep(
    store: Arc<dyn Store>,
    lease: Arc<Lease>,
    owner: LockInfo,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = lease.duration / 3;
        let retry = (lease.duration / 15).max(Duration::from_millis(200));
        let mut next = tokio::time::Instant::now() + every;
        loop {
            tokio::time::sleep_until(next).await;
            let started = tokio::time::Instant::now();
            match lease.extend(store.as_ref(), SlotKind::Renew, &owner).await {
                Ok(()) => {
                    next = started + every;
                    // A force-unlock removes the chain with the lock file; a renewal landing
                    // after that starts a chain nobody reads. The lock file says whether the
                    // lock is still this one.
                    match super::read_with_etag(store.as_ref()).await {
                        Ok(Some((info, _))) if info.id == lease.lock_id => {}
                        Ok(_) => {
                            lease.lose(LeaseLost::ForceUnlocked);
                            return;
                        }
                        Err(_) => next = tokio::time::Instant::now() + retry,
                    }
                }
                Err(ExtendError::Lost) => return,
                Err(ExtendError::Store(_)) => next = tokio::time::Instant::now() + retry,
            }
        }
    })
}

/// The state of a held lock as a taker sees it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `lock.json` as written when the lock was taken.
    pub instance: LockInfo,
    /// The newest slot's number (0 before the first renewal) and what it says.
    pub newest: u64,
    pub slot: Option<Slot>,
}

impl Observed {
    /// Who holds the lock now: the newest slot's owner, else whoever wrote `lock.json`.
    pub fn owner(&self) -> &LockInfo {
        self.slot.as_ref().map_or(&self.instance, |s| &s.owner)
    }

    /// The lease the owner asked for (a force-unlock ending the chain has none: the lock
    /// file's then); `None` for a lock from before leases (it never expires).
    pub fn lease(&self) -> Option<Duration> {
        self.owner()
            .lease_seconds
            .or(self.instance.lease_seconds)
            .map(Duration::from_secs)
    }

    /// When the lease was last started, by the writer's clock.
    pub fn renewed_at(&self) -> &str {
        self.slot
            .as_ref()
            .map_or(&self.instance.created_at, |s| &s.at)
    }

    /// Expired by the timestamps alone, with [`CLOCK_SKEW_ALLOWANCE`] to spare.
    pub fn expired_by_clock(&self, now_unix: u64) -> bool {
        let (Some(lease), Some(at)) = (
            self.lease(),
            labctl_core::timefmt::parse_rfc3339(self.renewed_at()),
        ) else {
            return false;
        };
        at.saturating_add(lease.as_secs())
            .saturating_add(CLOCK_SKEW_ALLOWANCE.as_secs())
            < now_unix
    }

    /// When the lease ran out, by the owner's clock.
    pub fn expired_at(&self) -> Option<String> {
        let at = labctl_core::timefmt::parse_rfc3339(self.renewed_at())?;
        Some(labctl_core::timefmt::rfc3339(
            at.saturating_add(self.lease()?.as_secs()),
        ))
    }

    pub fn ended(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.kind.ends_the_chain())
    }
}

/// A taker's watch over one lock: the chain has to stand still for a whole lease of the
/// taker's own monotonic clock before the lock counts as expired. Clock skew between runners
/// plays no part in that.
#[derive(Debug, Default)]
pub(super) struct Watch {
    seen: Option<(String, u64, Since)>,
}

impl Watch {
    /// Whether the lock as observed now has stood still for a whole lease.
    pub(super) fn stood_still(&mut self, observed: &Observed) -> bool {
        let Some(lease) = observed.lease() else {
            return false;
        };
        match &self.seen {
            Some((id, n, since)) if *id == observed.instance.id && *n == observed.newest => {
                since.elapsed() >= lease
            }
            _ => {
                self.seen = Some((observed.instance.id.clone(), observed.newest, Since::now()));
                false
            }
        }
    }

    pub(super) fn reset(&mut self) {
        self.seen = None;
    }
}

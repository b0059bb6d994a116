//! apply's sequence: take the store lock (or not, with `--lock=false`), abort the uploads a
//! killed run left, check a saved plan is not stale (or compute one and have it approved), read
//! what a fan-out's legs staged, run the changes, rewrite the consumer index, remove the
//! promoted blobs, and let the lock go — released, or left to expire while a server-side copy
//! the store accepted may still land. What the user sees of each step is the caller's
//! ([`ApplySteps`]); the exit code too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::context::{ApplyContext, Report};
use crate::failure::Failure;
use crate::fanout::StageStatus;
use crate::graph::DependencyGraph;
use crate::index::Published;
use crate::lock::{self, LeaseLost, Lock, LockError, LockOptions};
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::planner::{PlanEvents, PlanRequest};
use crate::signing::IndexSigner;
use crate::store::{Store, StoreError};

/// How long the aborts of uploads a signal dropped are waited for before the run ends: a run
/// cancelled by CI must still exit within its grace period (GitHub sends SIGKILL 10 s after
/// the first signal).
const SETTLE_DROPPED_UPLOADS: Duration = Duration::from_secs(4);

/// Where the plan comes from.
pub enum PlanSource {
    /// A reviewed plan (`labctl apply PLANFILE`), refused under the lock when the manifest or a
    /// record changed since; with `staged`, its legs' blobs are promoted instead of downloaded.
    Saved {
        plan: Box<Plan>,
        id: String,
        staged: bool,
    },
    /// A plan computed now, under the lock, shown and approved through [`ApplySteps`].
    Now(PlanRequest),
}

pub struct ApplyRun<'a> {
    pub manifest: &'a Manifest,
    pub graph: &'a DependencyGraph,
    pub store: Arc<dyn Store>,
    /// `None`: `--lock=false`, one apply at a time is guaranteed elsewhere.
    pub lock: Option<LockOptions>,
    pub signer: Option<&'a IndexSigner>,
    /// Turns true on a signal.
    pub cancel: watch::Receiver<bool>,
}

pub type Approval<'a> = Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>>;

/// What the caller shows (or decides) at each step.
pub trait ApplySteps: Send + Sync {
    /// The lock is held: taken, or taken over from a run whose lease ran out.
    fn locked(&self, lock: &Lock);
    /// What became of the uploads a killed run left (looked for once the lock is held).
    fn stranded(&self, cleanup: Result<&crate::stranded::Cleanup, &StoreError>);
    /// Receives the planner's events while a plan is computed now.
    fn plan_events(&self) -> &dyn PlanEvents;
    /// A plan computed now, before anything is written: shown, then (when it has changes)
    /// approved or not.
    fn approve<'a>(&'a self, plan: &'a Plan) -> Approval<'a>;
    /// A promotion: how many of the plan's units have a staged blob.
    fn promoting(&self, promoting: &Promoting<'_>);
    /// The context the plan's jobs run in (HTTP client, progress view, secrets, settings).
    fn context(
        &self,
        plan: &Plan,
        store: Arc<dyn Store>,
        cancel: watch::Receiver<bool>,
        staged: Option<Arc<crate::staged::Staged>>,
    ) -> ApplyContext;
    /// `done` of `total` records read for the consumer index.
    fn index_records_read(&self, done: usize, total: usize);
    /// The index is done: the reading of the records is over.
    fn index_read(&self);
    /// How the run ended, told while the lock is still held (a CI runner's SIGKILL follows its
    /// SIGTERM within seconds: the summary must not wait for the release).
    fn ended(&self, ended: &Ended);
    /// A promoted blob could not be removed (`labctl cleanup` removes it later).
    fn blob_not_removed(&self, what: &str);
}

/// How the run ended, before the lock was let go.
pub enum Ended {
    /// The plan changes nothing.
    NothingToDo,
    NotApproved,
    /// A signal came before anything was written.
    Interrupted,
    Applied {
        report: Report,
        /// What the plan counted, by action.
        summary: crate::plan::Summary,
        /// `None` when interrupted: the index is left as it was, the next apply rewrites it.
        index: Option<anyhow::Result<Published>>,
        cancelled: bool,
    },
}

/// What became of the lock.
pub enum LockEnd {
    /// `--lock=false`.
    NotTaken,
    Released,
    ReleaseFailed(LockError),
    /// A server-side copy was still running at the store: the lock is left to expire after this
    /// lease, so that no other run writes before the copy has landed.
    LeftToExpire(Duration),
}

pub struct Applied {
    pub ended: Result<Ended, Failure>,
    pub lock: LockEnd,
    /// The lease was lost while the run held it: nothing more was written from then on.
    pub lost: Option<LeaseLost>,
    /// Uploads a signal dropped whose aborts did not finish in time (the next apply aborts them).
    pub uploads_left: usize,
}

pub use crate::stale_plan::{refuse_stale, StalePlan};

/// Runs the whole sequence. A lock that cannot be taken (held, refused, or a signal while
/// waiting: [`LockError::Interrupted`]) ends it before anything else.
pub async fn apply(
    run: ApplyRun<'_>,
    plan: PlanSource,
    steps: &dyn ApplySteps,
) -> Result<Applied, LockError> {
    let held = match &run.lock {
        Some(options) => {
            let held = lock::acquire_unless(run.store.clone(), options, run.cancel.clone()).await?;
            steps.locked(&held);
            let cleanup = crate::stranded::abort_all(run.store.as_ref()).await;
            steps.stranded(cleanup.as_ref());
            Some(held)
        }
        None => None,
    };
    // Every write from here goes through the lease: a run that lost the lock writes nothing,
    // and stops its transfers and builds as if signalled.
    let (writes, cancel) = match &held {
        Some(l) => (
            l.fence(run.store.clone()),
            l.lease().stop_when_lost(run.cancel.clone()),
        ),
        None => (run.store.clone(), run.cancel.clone()),
    };
    let ended = match locked(&run, plan, writes.clone(), cancel, steps).await {
        Ok((ended, promoted)) => {
            steps.ended(&ended);
            if let (Ended::Applied { .. }, Some(leftover)) = (&ended, promoted) {
                // After the index: a promotion killed before this point leaves the blobs for
                // the next.
                let forgotten = crate::promote::forget(writes.as_ref(), leftover).await;
                for failed in forgotten {
                    steps.blob_not_removed(&failed);
                }
            }
            Ok(ended)
        }
        Err(e) => Err(e),
    };
    let uploads_left = crate::store::pending::settle_dropped(SETTLE_DROPPED_UPLOADS).await;

    let lost = held.as_ref().and_then(Lock::lost);
    let lock = match held {
        None => LockEnd::NotTaken,
        Some(l) if crate::store::pending::abandoned_requests() > 0 => {
            LockEnd::LeftToExpire(l.abandon())
        }
        Some(l) => match l.release().await {
            Ok(()) => LockEnd::Released,
            Err(e) => LockEnd::ReleaseFailed(e),
        },
    };
    Ok(Applied {
        ended,
        lock,
        lost,
        uploads_left,
    })
}

/// Everything done while the lock is held, up to the index; with what a promotion leaves to
/// delete after it.
async fn locked(
    run: &ApplyRun<'_>,
    source: PlanSource,
    store: Arc<dyn Store>,
    mut cancel: watch::Receiver<bool>,
    steps: &dyn ApplySteps,
) -> Result<(Ended, Option<crate::promote::Leftover>), Failure> {
    // Reading state and waiting for an answer leave nothing behind: a signal drops them.
    let prepared = tokio::select! {
        prepared = prepare(run, source, &store, steps) => prepared?,
        _ = cancel.wait_for(|c| *c) => return Ok((Ended::Interrupted, None)),
    };
    let (mut plan, saved) = match prepared {
        Prepared::Ready(plan, saved) => (plan, saved),
        Prepared::Stop(ended) => return Ok((ended, None)),
    };
    if !plan.has_changes() {
        return Ok((Ended::NothingToDo, None));
    }
    let staged = match saved {
        Some((id, true)) => {
            let staged = staged_for(&plan, &id, store.as_ref(), steps).await?;
            Some((id, Arc::new(staged)))
        }
        _ => None,
    };
    let ctx = Arc::new(steps.context(
        &plan,
        store.clone(),
        cancel.clone(),
        staged.as_ref().map(|(_, s)| s.clone()),
    ));
    // Not raced with the signal: on one, execute stops starting images and every transfer
    // aborts its own multipart upload before this returns.
    let report = crate::execute(&plan, ctx.clone()).await;
    let cancelled = *cancel.borrow();
    let written = std::mem::take(&mut *ctx.written.lock().unwrap_or_else(|p| p.into_inner()));
    // Of the plan and what the legs staged, only what is still needed is kept through the
    // index, the run's peak of memory (tens of thousands of changes and stage results).
    let leftover = staged
        .map(|(id, staged)| crate::promote::leftover(&id, &staged.results, &staged.legs, &report));
    drop(ctx);
    let summary = plan.summary.clone();
    let backfill = std::mem::take(&mut plan.index.backfill);
    drop(plan);
    let index = if cancelled {
        None
    } else {
        let published =
            crate::index::publish(&store, &backfill, run.signer, written, &|done, total| {
                steps.index_records_read(done, total)
            })
            .await;
        steps.index_read();
        Some(published)
    };
    let ended = Ended::Applied {
        report,
        summary,
        index,
        cancelled,
    };
    Ok((ended, leftover))
}

enum Prepared {
    /// The plan, and for a saved one its ID and whether it is a promotion.
    Ready(Box<Plan>, Option<(String, bool)>),
    Stop(Ended),
}

/// The plan to apply: the saved one once it is known not to be stale, or one computed now and
/// approved.
async fn prepare(
    run: &ApplyRun<'_>,
    source: PlanSource,
    store: &Arc<dyn Store>,
    steps: &dyn ApplySteps,
) -> Result<Prepared, Failure> {
    match source {
        PlanSource::Saved { plan, id, staged } => {
            refuse_stale(&plan, run.manifest, run.graph, store).await?;
            Ok(Prepared::Ready(plan, Some((id, staged))))
        }
        PlanSource::Now(request) => {
            let planned = crate::planner::compute(
                run.manifest,
                run.graph,
                store,
                &request,
                steps.plan_events(),
            )
            .await?;
            if !planned.plan.has_changes() && planned.actual.snapshot_misses > 0 {
                // Nothing to change, but the next plan should not have to fetch every record.
                if let Err(e) =
                    crate::state::refresh::write_snapshot(store.as_ref(), &planned.actual).await
                {
                    crate::store::events::report(crate::store::events::Event::SnapshotNotSaved {
                        error: e.to_string(),
                    });
                }
            }
            let approved = steps.approve(&planned.plan).await?;
            if !planned.plan.has_changes() {
                return Ok(Prepared::Stop(Ended::NothingToDo));
            }
            if !approved {
                return Ok(Prepared::Stop(Ended::NotApproved));
            }
            Ok(Prepared::Ready(Box::new(planned.plan), None))
        }
    }
}

/// What a promotion starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoting<'a> {
    pub plan_id: &'a str,
    /// The plan's units with a staged blob, of `units`.
    pub ready: usize,
    pub units: usize,
    /// Stage results read, `from_legs` of them from the `legs` legs' objects.
    pub results: usize,
    pub legs: usize,
    pub from_legs: usize,
    /// The legs' objects were not read: the store lists no ETags to show which results are
    /// current.
    pub without_etags: bool,
}

/// What the plan's legs staged: which units have a blob (said up front through `steps`), and
/// how the blobs are checked before their copies.
async fn staged_for(
    plan: &Plan,
    plan_id: &str,
    store: &dyn Store,
    steps: &dyn ApplySteps,
) -> anyhow::Result<crate::staged::Staged> {
    let warn = |m: &str| steps.plan_events().warning(m);
    let crate::promote::Found {
        results: staged,
        legs,
        from_legs,
        without_etags,
    } = crate::promote::staged_results(store, plan_id, &warn).await?;
    let units = crate::fanout::units(plan);
    let ready = units
        .iter()
        .filter(|u| {
            staged
                .get(&u.name)
                .is_some_and(|r| r.status == StageStatus::Staged)
        })
        .count();
    steps.promoting(&Promoting {
        plan_id,
        ready,
        units: units.len(),
        results: staged.len(),
        legs: legs.iter().filter(|l| l.images.is_some()).count(),
        without_etags,
        from_legs,
    });
    let check = crate::staged::BlobCheck::for_store(store, plan_id).await;
    Ok(crate::staged::Staged {
        results: staged,
        legs,
        check,
    })
}

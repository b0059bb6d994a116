//! Staging (`labctl stage`): a fan-out leg acquires one unit's bytes exactly as apply does
//! (download or build, verify, decompress, verify) and uploads them to the content-addressed
//! blob of their checksum, without the lock: the key is derived from the verified content, so
//! two legs writing it write the same bytes. Nothing under `images/`, `metadata/` or the index
//! is touched. The outcome is recorded beside the blob for promotion to find.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use bytes::Bytes;

use crate::acquire::{build_packer, http_job, run_http_job};
use crate::checksum::{Algorithm, Checksum};
use crate::context::ApplyContext;
use crate::fanout::{
    self, LegResults, StageResult, StageStatus, StagedBlob, StagedSource, WrittenResult,
};
use crate::pipeline::{self, FileKey};
use crate::plan::{Change, Plan};
use crate::source::probe::{self, Probed};
use crate::spec::SpecSource;
use crate::staged::StagedError;
use crate::store::PutOptions;

/// Stages the units wave by wave (a unit may take an earlier one's checksum), each wave's
/// units up to `parallelism` at once; after a signal, nothing more starts.
pub async fn stage_in_waves(
    plan: &Arc<Plan>,
    plan_id: &str,
    units: &[(String, usize)],
    ctx: Arc<ApplyContext>,
    parallelism: u16,
) -> LegRun {
    let written = Arc::new(Mutex::new(Vec::new()));
    let unit_job = |name: String| -> UnitJob {
        let (plan, id, ctx) = (plan.clone(), plan_id.to_string(), ctx.clone());
        let written = written.clone();
        Box::pin(async move {
            let (result, etag) = stage(&plan, &id, &name, &ctx).await;
            if let Some(etag) = etag {
                let result = result.clone();
                written.lock().unwrap().push(WrittenResult { etag, result });
            }
            result
        })
    };
    let crashed =
        |unit: &str, e: &tokio::task::JoinError| crashed(plan_id, unit, ctx.ci_run.clone(), e);
    let results = in_waves(
        units,
        parallelism,
        &ctx.cancel,
        ctx.progress.as_ref(),
        unit_job,
        crashed,
    )
    .await;
    let written = std::mem::take(&mut *written.lock().unwrap());
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    // After a signal nothing more starts: the results are all written already. (The flag is
    // copied out: a borrow of the channel held across the write would block its sender.)
    let cancelled = *ctx.cancel.borrow();
    let together = match cancelled {
        true => Ok(()),
        false => record_leg(plan_id, &names, written, &ctx).await,
    };
    LegRun { results, together }
}

/// What a leg did.
pub struct LegRun {
    /// Each unit's result, as written at its own key.
    pub results: Vec<StageResult>,
    /// Whether the leg's results could also be written in one object (when there was one to
    /// write): without it a promotion reads them one by one.
    pub together: anyhow::Result<()>,
}

/// Writes the leg's results in one object too, so that a promotion reads one object for the
/// leg instead of one an image. Only a shortcut: without it (a leg of one unit, an object too
/// large, a write that failed) a promotion reads the results one by one.
async fn record_leg(
    plan_id: &str,
    units: &[&str],
    written: Vec<WrittenResult>,
    ctx: &ApplyContext,
) -> anyhow::Result<()> {
    if written.len() < 2 {
        return Ok(());
    }
    let mut results = written;
    results.sort_by(|a, b| a.result.image.cmp(&b.result.image));
    let leg = LegResults {
        format_version: fanout::FORMAT_VERSION.into(),
        plan: plan_id.into(),
        results,
    };
    let Some(json) = leg.to_json() else {
        return Ok(());
    };
    let key = crate::layout::leg_results_key(plan_id, units);
    ctx.store
        .put(&key, Bytes::from(json), PutOptions::default())
        .await
        .with_context(|| format!("cannot write the leg's results together at `{key}`"))?;
    Ok(())
}

/// One unit's staging, as a task of its own.
type UnitJob = std::pin::Pin<Box<dyn std::future::Future<Output = StageResult> + Send>>;

/// The waves, with what staging a unit means given: `stage` (tests give stand-ins).
async fn in_waves(
    units: &[(String, usize)],
    parallelism: u16,
    cancel: &tokio::sync::watch::Receiver<bool>,
    progress: &dyn crate::progress::Progress,
    unit_job: impl Fn(String) -> UnitJob,
    crashed: impl Fn(&str, &tokio::task::JoinError) -> StageResult,
) -> Vec<StageResult> {
    let mut by_wave: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (name, wave) in units {
        by_wave.entry(*wave).or_default().push(name);
    }
    let mut results = Vec::new();
    for names in by_wave.values() {
        let mut running = tokio::task::JoinSet::new();
        let mut unit_of = BTreeMap::new();
        let mut queue = names.iter();
        loop {
            while running.len() < parallelism.max(1) as usize && !*cancel.borrow() {
                let Some(name) = queue.next() else { break };
                let task = running.spawn(unit_job(name.to_string()));
                unit_of.insert(task.id(), name.to_string());
            }
            let result = match running.join_next().await {
                Some(Ok(result)) => result,
                // A unit whose task panicked failed: it is never dropped from the results, or
                // the leg would exit 0 with an image unstaged.
                Some(Err(e)) => {
                    let unit = unit_of.get(&e.id()).map_or("?", String::as_str);
                    crashed(unit, &e)
                }
                None => break,
            };
            progress.finish(&result.image, &outcome_of(&result));
            results.push(result);
        }
    }
    results
}

/// The result of a unit whose task did not finish (a panic): failed, nothing staged for it.
fn crashed(
    plan_id: &str,
    unit: &str,
    ci_run: Option<crate::state::record::CiRun>,
    e: &tokio::task::JoinError,
) -> StageResult {
    StageResult {
        format_version: fanout::FORMAT_VERSION.into(),
        plan: plan_id.into(),
        image: unit.into(),
        status: StageStatus::Failed,
        error: Some(format!(
            "labctl failed internally while staging it ({}); nothing was staged for it, and staging it again retries",
            if e.is_panic() { "a panic" } else { "cancelled" }
        )),
        hint: None,
        blob: None,
        staged_at: crate::timefmt::now_rfc3339(),
        ci_run,
    }
}

fn outcome_of(result: &StageResult) -> crate::context::Outcome {
    use crate::context::{Done, Outcome};
    match (&result.blob, &result.error) {
        (Some(blob), _) => Outcome::Done(Done::Staged {
            key: blob.key.clone(),
            size: blob.size,
            checksum: blob.checksum.clone(),
            uploaded: blob.uploaded,
        }),
        // The leg's error crossed processes as its text: that is all there is to keep.
        (None, _) => Outcome::Failed(crate::progress::Failed::new(StagedError::LegFailed {
            name: result.image.clone(),
            error: result.error.clone(),
            hint: result.hint.clone(),
        })),
    }
}

/// Stages `unit` of `plan` and records the outcome in the store (`.labctl/staged/<plan>/…`),
/// with the ETag of the record when this leg wrote it. A failure is a result too: it is
/// recorded, so promotion can say why the image is missing.
pub async fn stage(
    plan: &Plan,
    plan_id: &str,
    unit: &str,
    ctx: &ApplyContext,
) -> (StageResult, Option<String>) {
    let outcome = match plan.change(unit).filter(|c| fanout::is_unit(c)) {
        Some(change) => acquire(plan, plan_id, change, ctx).await,
        None => Err(anyhow!("`{unit}` is not a unit of this plan")),
    };
    // The result crosses processes as JSON: the error as its chain on one line, its hint apart.
    let (status, error, hint, blob) = match outcome {
        Ok(blob) => (StageStatus::Staged, None, None, Some(blob)),
        Err(e) => (
            StageStatus::Failed,
            Some(format!("{e:#}")),
            crate::failure::hint_of(&e),
            None,
        ),
    };
    let result = StageResult {
        format_version: fanout::FORMAT_VERSION.into(),
        plan: plan_id.into(),
        image: unit.into(),
        status,
        error,
        hint,
        blob,
        staged_at: crate::timefmt::now_rfc3339(),
        ci_run: ctx.ci_run.clone(),
    };
    let key = crate::layout::staged_result_key(plan_id, unit);
    if result.status == StageStatus::Failed && staged_by_another(plan_id, unit, ctx).await {
        // Another leg staged the same bytes: its result stands, and promotion takes it.
        let result = StageResult {
            error: result.error.map(|e| {
                format!("{e} (another leg staged it: its result stands and promotion takes it)")
            }),
            ..result
        };
        return (result, None);
    }
    match ctx
        .store
        .put(&key, Bytes::from(result.to_json()), PutOptions::default())
        .await
    {
        Ok(written) => (result, Some(written.etag)),
        // The blob is there; promotion cannot find it without the result: fail the leg.
        Err(e) => {
            let result = StageResult {
                status: StageStatus::Failed,
                error: Some(format!("cannot record the result at `{key}`: {e}")),
                ..result
            };
            (result, None)
        }
    }
}

/// Whether a leg already staged `unit` for this plan, with its blob still there.
async fn staged_by_another(plan_id: &str, unit: &str, ctx: &ApplyContext) -> bool {
    let Ok(Some(result)) = crate::promote::result_for(ctx.store.as_ref(), plan_id, unit).await
    else {
        return false;
    };
    match (&result.status, &result.blob) {
        (StageStatus::Staged, Some(blob)) => {
            matches!(ctx.store.head(&blob.key).await, Ok(Some(o)) if o.size == blob.size)
        }
        _ => false,
    }
}

/// The values a build's references take from units staged in earlier waves.
async fn staged_inputs(
    plan: &Plan,
    plan_id: &str,
    change: &Change,
    ctx: &ApplyContext,
) -> anyhow::Result<BTreeMap<String, StagedBlob>> {
    let units = fanout::units(plan);
    let Some(unit) = units.iter().find(|u| u.name == change.name) else {
        return Ok(BTreeMap::new());
    };
    let mut inputs = BTreeMap::new();
    for need in &unit.needs {
        let wave = units.iter().find(|u| &u.name == need).map_or(1, |u| u.wave);
        let staged = crate::promote::result_for(ctx.store.as_ref(), plan_id, need)
            .await?
            .filter(|r| r.status == StageStatus::Staged)
            .and_then(|r| r.blob)
            .ok_or_else(|| crate::staged::StagedError::InputNotStaged {
                name: change.name.clone(),
                input: need.clone(),
                wave,
            })?;
        inputs.insert(need.clone(), staged);
    }
    Ok(inputs)
}

async fn acquire(
    plan: &Plan,
    plan_id: &str,
    change: &Change,
    ctx: &ApplyContext,
) -> anyhow::Result<StagedBlob> {
    let desired = change
        .desired()
        .ok_or_else(|| anyhow!("the plan has no spec for `{}`", change.name))?;
    match &desired.spec.source {
        SpecSource::Http { .. } => download(plan_id, change, &desired, ctx).await,
        SpecSource::Packer { .. } => build(plan, plan_id, change, &desired, ctx).await,
    }
}

/// Downloads, verifies and decompresses into the blob of the published checksum.
async fn download(
    plan_id: &str,
    change: &Change,
    desired: &crate::plan::Desired,
    ctx: &ApplyContext,
) -> anyhow::Result<StagedBlob> {
    let (mut job, source) = http_job(change, desired, String::new(), None, ctx).await?;
    job.key = crate::layout::blob_key(&job.expected);
    if let Some(previous) = staged_before(plan_id, &change.name, &job, ctx).await {
        return Ok(previous);
    }
    if let Some(reused) = already_staged(&job, ctx).await? {
        return Ok(StagedBlob {
            source: StagedSource {
                checksum: Some(source),
                ..reused.source
            },
            ..reused
        });
    }
    let published = run_http_job(&job, ctx).await?;
    Ok(StagedBlob {
        key: job.key,
        checksum: published.checksum,
        sha256: published.sha256,
        size: published.size,
        uploaded: true,
        etag: Some(published.object.etag),
        inputs: BTreeMap::new(),
        source: StagedSource {
            checksum: Some(source),
            size: published.source.size,
            etag: published.source.etag,
            last_modified: published.source.last_modified,
            packer_version: None,
        },
    })
}

/// Builds with the inputs earlier waves staged (or that are published), into the blob of the
/// artifact's sha256.
async fn build(
    plan: &Plan,
    plan_id: &str,
    change: &Change,
    desired: &crate::plan::Desired,
    ctx: &ApplyContext,
) -> anyhow::Result<StagedBlob> {
    let staged = staged_inputs(plan, plan_id, change, ctx).await?;
    // Referenced images published already keep the checksum the plan knows.
    let mut deps: BTreeMap<String, Checksum> = change
        .after
        .as_ref()
        .map(|a| {
            a.dependencies
                .iter()
                .filter_map(|(n, c)| Some((n.clone(), c.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    deps.extend(staged.iter().map(|(n, b)| (n.clone(), b.checksum.clone())));
    let built = build_packer(change, &desired.spec, &deps, &staged, ctx).await?;
    let build = &built.build;
    let published = pipeline::publish_file(
        ctx.store.clone(),
        &pipeline::FileJob {
            image: &change.name,
            path: &build.artifact,
            key: FileKey::Blob,
        },
        &ctx.settings,
        ctx.progress.as_ref(),
        ctx.cancel.clone(),
    )
    .await?;
    Ok(StagedBlob {
        key: crate::layout::blob_key(&published.checksum),
        checksum: published.checksum,
        sha256: published.sha256,
        size: published.size,
        uploaded: !published.reused,
        etag: Some(published.object.etag),
        inputs: staged.into_iter().map(|(n, b)| (n, b.checksum)).collect(),
        source: StagedSource {
            packer_version: Some(build.packer_version.clone()),
            ..Default::default()
        },
    })
}

/// What an earlier run of this leg staged of the image for this plan (a re-run workflow), when
/// its blob is still there: whatever the checksum's algorithm, its result knows the sha256.
async fn staged_before(
    plan_id: &str,
    image: &str,
    job: &pipeline::HttpJob,
    ctx: &ApplyContext,
) -> Option<StagedBlob> {
    let result = crate::promote::result_for(ctx.store.as_ref(), plan_id, image)
        .await
        .ok()??;
    let blob = result.blob.filter(|b| {
        result.status == StageStatus::Staged && b.key == job.key && b.checksum == job.expected
    })?;
    let object = ctx.store.head(&blob.key).await.ok()??;
    if object.size != blob.size || !object.labelled_with(&blob.checksum) {
        return None;
    }
    ctx.progress.line(
        &job.image,
        &format!(
            "already staged at {} for this plan: nothing to download",
            job.key
        ),
    );
    Some(StagedBlob {
        uploaded: false,
        etag: Some(object.etag),
        ..blob
    })
}

/// The blob of a download whose checksum is a sha256 that another leg (or an earlier run of
/// this one) already staged: nothing is downloaded or uploaded, and the source is only asked
/// what its record would say about it. `None` when the blob must be staged (other algorithms
/// name their blob by a checksum that does not give the sha256 the index needs).
async fn already_staged(
    job: &pipeline::HttpJob,
    ctx: &ApplyContext,
) -> anyhow::Result<Option<StagedBlob>> {
    if job.expected.algorithm != Algorithm::Sha256 {
        return Ok(None);
    }
    let Some(object) = ctx.store.head(&job.key).await? else {
        return Ok(None);
    };
    if !object.labelled_with(&job.expected) {
        return Ok(None);
    }
    ctx.progress.line(
        &job.image,
        &format!("already staged at {}: nothing to download", job.key),
    );
    let facts = match probe::probe(&ctx.client, &job.url, &ctx.settings.retry)
        .await
        .with_context(|| format!("cannot ask {} about the image", job.url))?
    {
        Probed::Serves(info) => info,
        // The bytes are verified and staged; the record just cannot describe the download.
        Probed::Gone { .. } => Default::default(),
    };
    Ok(Some(StagedBlob {
        key: job.key.clone(),
        checksum: job.expected.clone(),
        sha256: job.expected.clone(),
        size: object.size,
        uploaded: false,
        etag: Some(object.etag),
        inputs: BTreeMap::new(),
        source: StagedSource {
            checksum: None,
            size: facts.size,
            etag: facts.etag,
            last_modified: facts.last_modified,
            packer_version: None,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn staged(unit: &str) -> StageResult {
        StageResult {
            format_version: fanout::FORMAT_VERSION.into(),
            plan: "p".into(),
            image: unit.into(),
            status: StageStatus::Staged,
            error: None,
            hint: None,
            blob: None,
            staged_at: crate::timefmt::now_rfc3339(),
            ci_run: None,
        }
    }

    /// Runs `units` through the waves with stand-ins: a unit named `panics` panics; the log
    /// says in which order units started.
    async fn waves(
        units: &[(&str, usize)],
        cancel_after: Option<usize>,
    ) -> (Vec<StageResult>, Vec<String>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tx = Arc::new(tx);
        let started = Arc::new(Mutex::new(Vec::<String>::new()));
        let units: Vec<(String, usize)> = units.iter().map(|(n, w)| (n.to_string(), *w)).collect();
        let job = |name: String| -> UnitJob {
            let (started, tx) = (started.clone(), tx.clone());
            Box::pin(async move {
                let n = {
                    let mut s = started.lock().unwrap();
                    s.push(name.clone());
                    s.len()
                };
                if cancel_after == Some(n) {
                    let _ = tx.send(true);
                }
                tokio::task::yield_now().await;
                assert!(name != "panics", "a bug while staging {name}");
                staged(&name)
            })
        };
        let crashed = |unit: &str, e: &tokio::task::JoinError| crashed("p", unit, None, e);
        let results = in_waves(&units, 2, &rx, &crate::progress::Silent, job, crashed).await;
        let started = started.lock().unwrap().clone();
        (results, started)
    }

    #[tokio::test]
    async fn a_unit_whose_task_panics_is_a_failed_result_not_a_missing_one() {
        let (results, _) = waves(&[("a", 0), ("panics", 0), ("b", 0)], None).await;
        assert_eq!(results.len(), 3, "every unit has a result");
        let failed = results.iter().find(|r| r.image == "panics").unwrap();
        assert_eq!(failed.status, StageStatus::Failed);
        assert!(failed.error.as_deref().unwrap().contains("a panic"));
        assert!(results
            .iter()
            .filter(|r| r.image != "panics")
            .all(|r| r.status == StageStatus::Staged));
    }

    #[tokio::test]
    async fn waves_run_in_order_and_nothing_starts_after_a_signal() {
        let (_, started) = waves(&[("late", 1), ("early", 0), ("early2", 0)], None).await;
        assert_eq!(started.last().map(String::as_str), Some("late"));
        let (results, started) = waves(&[("one", 0), ("two", 1), ("three", 2)], Some(1)).await;
        assert_eq!(started, ["one"]);
        assert_eq!(results.len(), 1);
    }
}

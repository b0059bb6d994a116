//! Runs a plan's changes: each after its dependencies, up to `parallelism` at once. A failed
//! image skips its dependents (without repeating its error) and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};

use crate::acquire::{build_packer, http_job, run_http_job};
use crate::checksum::Checksum;
use crate::context::ChangeResult;
use crate::halt::CommitPoint;
use crate::labelled::{copy_labelled, object_metadata, unless_interrupted, Labelled};
use crate::pipeline;
use crate::plan::Desired;
use crate::plan::{Action, Change, Plan};
use crate::records::{current_record, delete_history, with_history, write_record};
use crate::schedule;
use crate::spec::{NormalizedSpec, SpecSource};
use crate::state::record::{new_record, source_of, HistoryEntry};
use crate::store::{SourceFacts, META_CHECKSUM};

pub use crate::context::{ApplyContext, Done, Outcome, Published, Report, Skip};

pub async fn execute(plan: &Plan, ctx: Arc<ApplyContext>) -> Report {
    let settings = schedule::Settings {
        parallelism: ctx.parallelism,
        cancel: ctx.cancel.clone(),
        progress: ctx.progress.clone(),
    };
    schedule::run(&plan.changes, Arc::new(Changes(ctx)), settings).await
}

/// What `apply` does for each change, as the scheduler runs it.
struct Changes(Arc<ApplyContext>);

impl schedule::RunChange for Changes {
    fn run(
        &self,
        change: Change,
        dependencies: BTreeMap<String, Option<Checksum>>,
    ) -> schedule::Job {
        let ctx = self.0.clone();
        Box::pin(async move { run_change(&change, dependencies, &ctx).await })
    }
}

/// Runs one change; returns a one-line summary and the checksum its dependents will see.
async fn run_change(
    change: &Change,
    dep_sums: BTreeMap<String, Option<Checksum>>,
    ctx: &ApplyContext,
) -> ChangeResult {
    check_history_keys(change)?;
    match change.action {
        Action::NoOp => Ok((
            Done::Said("unchanged".into()),
            change.before.as_ref().and_then(|b| b.checksum.clone()),
        )),
        Action::Delete => {
            let trimmed = change
                .history
                .as_ref()
                .map(|h| h.trim.clone())
                .unwrap_or_default();
            // Object, kept versions, then the record: if a delete fails, the record still lists
            // what is left, so the next prune finds it.
            ctx.store.delete(&change.key).await?;
            for key in &trimmed {
                ctx.store
                    .delete(key)
                    .await
                    .with_context(|| format!("cannot delete the kept version `{key}`"))?;
            }
            ctx.store.delete(&change.record_key).await?;
            Ok((
                Done::Deleted {
                    key: change.key.clone(),
                    kept: trimmed.len(),
                },
                None,
            ))
        }
        Action::Update => update(change, dep_sums, ctx).await,
        Action::Create | Action::Replace => {
            let desired = &change
                .desired()
                .ok_or_else(|| anyhow!("the plan has no spec for `{}`", change.name))?;
            let deps = known(&dep_sums)?;
            let kept = keep_current(change, ctx).await?;
            if kept.is_some() {
                crate::halt::reached(CommitPoint::HistoryKept).await;
            }
            let entry = kept.as_ref().map(|k| k.entry.clone());
            let result = match Acquire::of(change, desired, ctx.staged.as_deref()) {
                Acquire::Restore(restored) => {
                    restore(change, desired, deps, entry, restored, ctx).await
                }
                Acquire::Staged(staged) => {
                    crate::promote::promote(change, desired, deps, entry, staged, ctx).await
                }
                Acquire::Download => publish_http(change, desired, deps, entry, ctx).await,
                Acquire::Build => publish_packer(change, &desired.spec, deps, entry, ctx).await,
            };
            if let (Err(_), Some(kept)) = (&result, &kept) {
                forget_unused_copy(change, kept, ctx).await;
            }
            result
        }
    }
}

/// Where a create or replace gets its bytes. Decided once per change, in this order: a revert
/// copies kept bytes back, a promotion copies its leg's blob, else the source is downloaded or
/// built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acquire<'a> {
    /// Copied back from the history: nothing is downloaded.
    Restore(&'a HistoryEntry),
    /// Copied from the blob a fan-out leg staged (`apply --staged`).
    Staged(&'a crate::staged::Staged),
    /// Downloaded and verified on the way.
    Download,
    /// Built with Packer, then verified and uploaded.
    Build,
}

impl<'a> Acquire<'a> {
    fn of(
        change: &'a Change,
        desired: &Desired,
        staged: Option<&'a crate::staged::Staged>,
    ) -> Acquire<'a> {
        match (&change.restore, staged, &desired.spec.source) {
            (Some(entry), _, _) => Acquire::Restore(entry),
            (None, Some(staged), _) => Acquire::Staged(staged),
            (None, None, SpecSource::Http { .. }) => Acquire::Download,
            (None, None, SpecSource::Packer { .. }) => Acquire::Build,
        }
    }
}

fn known(
    dep_sums: &BTreeMap<String, Option<Checksum>>,
) -> anyhow::Result<BTreeMap<String, Checksum>> {
    dep_sums
        .iter()
        .map(|(k, v)| {
            v.clone()
                .map(|c| (k.clone(), c))
                .ok_or_else(|| anyhow!("the checksum of dependency `{k}` is unknown"))
        })
        .collect()
}

async fn publish_http(
    change: &Change,
    desired: &Desired,
    deps: BTreeMap<String, Checksum>,
    kept: Option<HistoryEntry>,
    ctx: &ApplyContext,
) -> ChangeResult {
    let spec = &desired.spec;
    let fingerprint = spec.fingerprint(&deps);
    let (job, source) =
        http_job(change, desired, change.key.clone(), Some(&fingerprint), ctx).await?;
    let published = run_http_job(&job, ctx).await?;
    let mut record = record_of(spec, &published, deps);
    record.source.checksum = Some(source);
    record.source.size = published.source.size;
    record.source.etag = published.source.etag.clone();
    record.source.last_modified = published.source.last_modified.clone();
    let trimmed = with_history(&mut record, change, kept);
    write_record(ctx, &change.record_key, &record).await?;
    delete_history(change, &trimmed, ctx).await?;
    Ok(published_result(
        change,
        &published,
        Published::Created,
        Published::Replaced,
    ))
}

fn check_history_keys(change: &Change) -> anyhow::Result<()> {
    crate::plan::check::history_keys(change)
        .map_err(|why| anyhow!("the plan {why}; refusing to touch it"))
}

/// Copies the current object into the history (server-side) before it is overwritten, when the
/// plan says so. Returns the new history entry.
/// The current bytes, copied under `history/` before a replace.
struct Kept {
    entry: HistoryEntry,
    /// This run made the copy (the key was free): it may take it back.
    created: bool,
    /// The ETag the current object had when it was copied.
    source_etag: String,
}

/// After a failed replace: the copy this run made is taken back while the current bytes are
/// still in place (no record would list it, and drift would report it as unmanaged). If the
/// object was replaced after all (a failure after the upload completed), the copy is the only
/// one of the old bytes left, and it stays.
async fn forget_unused_copy(change: &Change, kept: &Kept, ctx: &ApplyContext) {
    if !kept.created {
        return;
    }
    let still_current = matches!(
        ctx.store.head(&change.key).await,
        Ok(Some(object)) if object.etag == kept.source_etag
    );
    if !still_current {
        return;
    }
    if let Err(e) = ctx.store.delete(&kept.entry.key).await {
        ctx.progress.line(
            &change.name,
            &format!(
                "warning: cannot delete `{}`, the copy kept for a replace that failed: {e}",
                kept.entry.key
            ),
        );
    }
}

async fn keep_current(change: &Change, ctx: &ApplyContext) -> anyhow::Result<Option<Kept>> {
    if !change.history.as_ref().is_some_and(|h| h.keep_current) {
        return Ok(None);
    }
    let before = change
        .before
        .as_ref()
        .ok_or_else(|| anyhow!("keeping history needs the current record"))?;
    let checksum = before
        .checksum
        .clone()
        .ok_or_else(|| anyhow!("the record of `{}` has no checksum", change.name))?;
    let Some(object) = ctx.store.head(&change.key).await? else {
        ctx.progress.line(
            &change.name,
            "the current object is gone: there is nothing to keep in the history",
        );
        return Ok(None);
    };
    // Bytes replaced behind labctl's back since the plan are not what the record describes.
    let labelled = match object.user_metadata.get(META_CHECKSUM) {
        Some(c) => *c == checksum.to_string(),
        None => before.legacy,
    };
    if !labelled || before.size.is_some_and(|s| s != object.size) {
        ctx.progress.line(
            &change.name,
            "the current object no longer matches its record: it is not kept in the history",
        );
        return Ok(None);
    }
    let Some(sha256) = sha256_of_current(change, ctx, before.sha256.as_ref(), &checksum).await?
    else {
        return Ok(None);
    };
    let destination = change
        .key
        .strip_prefix(crate::manifest::IMAGES_PREFIX)
        .unwrap_or(&change.key);
    let key = crate::manifest::history_key(destination, &sha256);
    let created = ctx.store.head(&key).await?.is_none();
    let copying = async {
        ctx.store
            .copy(&change.key, &key, None, Some(&object))
            .await
            .with_context(|| {
                format!(
                    "cannot keep the current bytes of `{}` at `{key}`",
                    change.key
                )
            })
    };
    unless_interrupted(ctx, copying).await?;
    let entry = kept_entry(before, checksum, sha256, key, object.size);
    Ok(Some(Kept {
        entry,
        created,
        source_etag: object.etag,
    }))
}

/// The sha256 of the current bytes: the record's, else read back once. `None` when they do not
/// hash to the record's checksum (then they are not what the record describes: not kept).
async fn sha256_of_current(
    change: &Change,
    ctx: &ApplyContext,
    recorded: Option<&Checksum>,
    checksum: &Checksum,
) -> anyhow::Result<Option<Checksum>> {
    if let Some(s) = recorded {
        return Ok(Some(s.clone()));
    }
    ctx.progress.line(
        &change.name,
        "reading the current object back for its sha256 before keeping it",
    );
    let reading = async {
        Ok(pipeline::hash_stored(ctx.store.as_ref(), &change.key, checksum.algorithm).await?)
    };
    let digests = unless_interrupted(ctx, reading).await?;
    if digests.declared != *checksum {
        ctx.progress.line(
            &change.name,
            "the current object does not hash to its record's checksum: it is not kept in the history",
        );
        return Ok(None);
    }
    Ok(Some(digests.sha256))
}

/// Copies kept bytes back (a revert in Git): nothing is downloaded, so it works after the
/// vendor deleted the file. The kept object carries the checksum it was published with; it is
/// checked before the copy, and the copy's size after.
async fn restore(
    change: &Change,
    desired: &Desired,
    deps: BTreeMap<String, Checksum>,
    kept: Option<HistoryEntry>,
    entry: &HistoryEntry,
    ctx: &ApplyContext,
) -> ChangeResult {
    let spec = &desired.spec;
    let source = check_kept(change, entry, ctx).await?;
    let fingerprint = spec.fingerprint(&deps);
    // The kept copy carries the facts of the download it came from (a history copy keeps its
    // object's metadata); they are this record's only if that download was from this URL.
    let same_url = matches!(&spec.source, SpecSource::Http { url, .. } if entry.source_url.as_deref() == Some(url.as_str()));
    let facts = match &spec.source {
        SpecSource::Http { .. } if same_url => SourceFacts::read_from(&source.user_metadata),
        SpecSource::Http { .. } => None,
        SpecSource::Packer { .. } => SourceFacts::read_from(&source.user_metadata),
    };
    let object = copy_labelled(
        ctx,
        Labelled {
            from: &entry.key,
            to: &change.key,
            checked: &source,
            size: entry.size,
            checksum: &entry.checksum,
            fingerprint: &fingerprint,
            facts: facts.clone().unwrap_or_else(SourceFacts::lost),
        },
    )
    .await?;
    let mut record = new_record(
        spec,
        entry.checksum.clone(),
        entry.size,
        deps,
        crate::timefmt::now_rfc3339(),
    );
    record.sha256 = Some(entry.sha256.clone());
    record.object_etag = Some(object.etag);
    record.source.checksum = change
        .after
        .as_ref()
        .and_then(|a| a.source_checksum.clone());
    record.source.set_facts(facts);
    let trimmed = with_history(&mut record, change, kept);
    write_record(ctx, &change.record_key, &record).await?;
    delete_history(change, &trimmed, ctx).await?;
    Ok((
        Done::Restored {
            size: entry.size,
            checksum: entry.checksum.clone(),
        },
        Some(entry.checksum.clone()),
    ))
}

/// The kept version, checked before it is copied back: it must still be what the record lists
/// (size and labctl metadata by HEAD), and its bytes, read back from the store, must hash to
/// both recorded digests. Returns its metadata (the copy is made only while its ETag holds).
async fn check_kept(
    change: &Change,
    entry: &HistoryEntry,
    ctx: &ApplyContext,
) -> anyhow::Result<crate::store::ObjectMeta> {
    let source = ctx
        .store
        .head(&entry.key)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "the kept version `{}` is gone from the store; plan again to download the image instead",
                entry.key
            )
        })?;
    if source.size != entry.size || !source.labelled_with(&entry.checksum) {
        bail!(
            "the kept version `{}` is not what the record lists ({} bytes, {}); it was changed outside labctl",
            entry.key,
            entry.size,
            entry.checksum
        );
    }
    // Every byte labctl publishes is verified: the kept bytes are read back from the store
    // (not from the vendor) and must hash to both recorded digests before the copy, which is
    // made only while the kept object still has the ETag that was hashed.
    ctx.progress.line(
        &change.name,
        &format!(
            "checking the kept version {} before restoring it",
            entry.key
        ),
    );
    let reading = async {
        pipeline::hash_stored(ctx.store.as_ref(), &entry.key, entry.checksum.algorithm)
            .await
            .with_context(|| format!("cannot read the kept version `{}`", entry.key))
    };
    let digests = unless_interrupted(ctx, reading).await?;
    if digests.declared != entry.checksum || digests.sha256 != entry.sha256 {
        bail!(
            "the kept version `{}` hashes to {}, not to {} as the record lists: it was changed outside labctl, and nothing was restored",
            entry.key,
            digests.declared,
            entry.checksum
        );
    }
    Ok(source)
}

/// The record of a freshly published object (written last, after the object is visible).
fn record_of(
    spec: &NormalizedSpec,
    published: &pipeline::Published,
    deps: BTreeMap<String, Checksum>,
) -> crate::state::StateRecord {
    let mut record = new_record(
        spec,
        published.checksum.clone(),
        published.size,
        deps,
        crate::timefmt::now_rfc3339(),
    );
    record.object_etag = Some(published.object.etag.clone());
    record.sha256 = Some(published.sha256.clone());
    record
}

/// What publishing did, and the checksum dependents see.
fn published_result(
    change: &Change,
    published: &pipeline::Published,
    created: Published,
    replaced: Published,
) -> (Done, Option<Checksum>) {
    let how = if change.action == Action::Create {
        created
    } else {
        replaced
    };
    (
        Done::Published {
            how,
            size: published.size,
            checksum: published.checksum.clone(),
        },
        Some(published.checksum.clone()),
    )
}

async fn publish_packer(
    change: &Change,
    spec: &NormalizedSpec,
    deps: BTreeMap<String, Checksum>,
    kept: Option<HistoryEntry>,
    ctx: &ApplyContext,
) -> ChangeResult {
    // The slot is held until the artifact is published and its scratch directory removed.
    let built = build_packer(change, spec, &deps, &BTreeMap::new(), ctx).await?;
    let build = &built.build;
    let fingerprint = spec.fingerprint(&deps);
    let facts = SourceFacts {
        packer_version: Some(build.packer_version.clone()),
        ..Default::default()
    };
    let published = pipeline::publish_file(
        ctx.store.clone(),
        &pipeline::FileJob {
            image: &change.name,
            path: &build.artifact,
            key: pipeline::FileKey::Image {
                key: &change.key,
                fingerprint: &fingerprint,
                facts: &facts,
            },
        },
        &ctx.settings,
        ctx.progress.as_ref(),
        ctx.cancel.clone(),
    )
    .await?;
    let mut record = record_of(spec, &published, deps);
    record.source.packer_version = Some(build.packer_version.clone());
    let trimmed = with_history(&mut record, change, kept);
    write_record(ctx, &change.record_key, &record).await?;
    delete_history(change, &trimmed, ctx).await?;
    // Dropping the build removes its scratch directory, then frees its slot.
    drop(built);
    Ok(published_result(
        change,
        &published,
        Published::Built,
        Published::Rebuilt,
    ))
}

async fn update(
    change: &Change,
    dep_sums: BTreeMap<String, Option<Checksum>>,
    ctx: &ApplyContext,
) -> ChangeResult {
    let spec = &change
        .after
        .as_ref()
        .ok_or_else(|| anyhow!("the plan has no spec for `{}`", change.name))?
        .spec;
    if let Some(adopt) = &change.adopt {
        return adopt_object(change, spec, adopt, dep_sums, ctx).await;
    }
    let before = change
        .before
        .as_ref()
        .ok_or_else(|| anyhow!("an update needs a record"))?;
    let checksum = before
        .checksum
        .clone()
        .ok_or_else(|| anyhow!("the record of `{}` has no checksum", change.name))?;
    let object = ctx
        .store
        .head(&change.key)
        .await?
        .ok_or_else(|| anyhow!("object `{}` is missing; plan again", change.key))?;
    let deps = known(&dep_sums)?;
    let mut record = new_record(
        spec,
        checksum.clone(),
        object.size,
        deps,
        crate::timefmt::now_rfc3339(),
    );
    record.source = source_of(spec);
    if let SpecSource::Http { checksum: c, .. } = &spec.source {
        record.source.checksum = c.digest().cloned();
    }
    // The bytes stay: so does what is known about them — when they were uploaded, and what the
    // server said about the download (unless the URL moved: those facts belong to the old one),
    // so `drift --check-sources` keeps watching the source.
    record.sha256 = before.sha256.clone().or(record.sha256);
    if let Some(at) = &before.uploaded_at {
        record.uploaded_at = at.clone();
    }
    if let Some(previous) = current_record(ctx, &change.record_key).await? {
        let facts = &previous.source;
        if facts.url == record.source.url {
            record.source.size = facts.size;
            record.source.etag = facts.etag.clone();
            record.source.last_modified = facts.last_modified.clone();
            record.source.facts_unknown = facts.facts_unknown;
        }
        record.source.packer_version = facts.packer_version.clone();
        if record.source.checksum.is_none() {
            record.source.checksum = facts.checksum.clone();
        }
    }
    // Rewriting metadata copies the object onto itself (a new ETag and modification time, which
    // a NAS sync may take for new content): only when it really changes, not for a
    // record-only change such as `history` or `protect`.
    let mut wanted = object_metadata(&checksum, &record.fingerprint);
    let object = if SourceFacts::strip(&object.user_metadata) == wanted {
        object
    } else {
        record.source.facts().write_into(&mut wanted);
        ctx.store.set_metadata(&change.key, wanted).await?
    };
    record.object_etag = Some(object.etag);
    let trimmed = with_history(&mut record, change, None);
    write_record(ctx, &change.record_key, &record).await?;
    delete_history(change, &trimmed, ctx).await?;
    Ok((Done::Updated, Some(checksum)))
}

/// Writes the record of an object a killed run published: only after reading it back and finding
/// the bytes its metadata claims, and only if it is still the object the plan saw.
async fn adopt_object(
    change: &Change,
    spec: &NormalizedSpec,
    adopt: &crate::plan::Adopt,
    dep_sums: BTreeMap<String, Option<Checksum>>,
    ctx: &ApplyContext,
) -> ChangeResult {
    let deps = known(&dep_sums)?;
    let object = ctx
        .store
        .head(&change.key)
        .await?
        .ok_or_else(|| anyhow!("object `{}` is gone since the plan; plan again", change.key))?;
    if object.etag != adopt.etag {
        bail!(
            "object `{}` changed since the plan (ETag {} → {}); plan again",
            change.key,
            adopt.etag,
            object.etag
        );
    }
    let reading = async {
        pipeline::hash_stored(ctx.store.as_ref(), &change.key, adopt.checksum.algorithm)
            .await
            .with_context(|| format!("cannot read `{}` back to adopt it", change.key))
    };
    let digests = unless_interrupted(ctx, reading).await?;
    if digests.declared != adopt.checksum {
        bail!(
            "object `{}` claims {} in its metadata but its bytes hash to {}: not adopted; `labctl apply --replace {}` publishes it again",
            change.key,
            adopt.checksum,
            digests.declared,
            change.name
        );
    }
    let mut record = new_record(
        spec,
        digests.declared.clone(),
        digests.size,
        deps,
        crate::timefmt::now_rfc3339(),
    );
    record.sha256 = Some(digests.sha256);
    record.source.checksum = change
        .after
        .as_ref()
        .and_then(|a| a.source_checksum.clone());
    record
        .source
        .set_facts(SourceFacts::read_from(&object.user_metadata));
    record.object_etag = Some(object.etag);
    // A killed update (metadata rewritten, record not): the bytes are the recorded ones, and
    // keep when they were first published, as the update would have.
    if let Some(before) = change
        .before
        .as_ref()
        .filter(|b| b.checksum.as_ref() == Some(&digests.declared))
    {
        if let Some(at) = &before.uploaded_at {
            record.uploaded_at = at.clone();
        }
    }
    let kept = kept_by_the_killed_run(change, ctx).await?;
    let trimmed = with_history(&mut record, change, kept);
    write_record(ctx, &change.record_key, &record).await?;
    delete_history(change, &trimmed, ctx).await?;
    Ok((
        Done::Adopted {
            size: digests.size,
            checksum: digests.declared.clone(),
        },
        Some(digests.declared),
    ))
}

/// The copy of the recorded bytes a killed replace made before it overwrote them, when the plan
/// expects one and it holds what the record says (by HEAD: size and labctl's checksum).
async fn kept_by_the_killed_run(
    change: &Change,
    ctx: &ApplyContext,
) -> anyhow::Result<Option<HistoryEntry>> {
    let Some(key) = change
        .history
        .as_ref()
        .filter(|h| h.keep_current)
        .and_then(|h| h.keep_key.clone())
    else {
        return Ok(None);
    };
    let Some(before) = change.before.as_ref() else {
        return Ok(None);
    };
    let (Some(checksum), Some(sha256)) = (before.checksum.clone(), before.sha256.clone()) else {
        return Ok(None);
    };
    let Some(copy) = ctx.store.head(&key).await? else {
        ctx.progress.line(
            &change.name,
            &format!("the interrupted run kept no copy of the earlier bytes at `{key}`"),
        );
        return Ok(None);
    };
    if !copy.labelled_with(&checksum) || before.size.is_some_and(|s| s != copy.size) {
        ctx.progress.line(
            &change.name,
            &format!("`{key}` does not hold the earlier bytes its record names: not listed"),
        );
        return Ok(None);
    }
    Ok(Some(kept_entry(before, checksum, sha256, key, copy.size)))
}

/// The history entry of the recorded bytes (`before`), kept at `key` now.
fn kept_entry(
    before: &crate::plan::Before,
    checksum: Checksum,
    sha256: Checksum,
    key: String,
    size: u64,
) -> HistoryEntry {
    HistoryEntry {
        checksum,
        sha256,
        key,
        size,
        source_url: before.spec.as_ref().and_then(|s| match &s.source {
            crate::spec::SpecSource::Http { url, .. } => Some(url.clone()),
            crate::spec::SpecSource::Packer { .. } => None,
        }),
        uploaded_at: before
            .uploaded_at
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        kept_at: crate::timefmt::now_rfc3339(),
    }
}

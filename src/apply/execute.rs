//! Runs a plan's changes: each after its dependencies, up to `parallelism` at once. A failed
//! image skips its dependents (without repeating its error) and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checksum::Checksum;
use crate::manifest::reference::{self, Field, Reference};
use crate::manifest::Compression;
use crate::pipeline::{self, HttpJob};
use crate::plan::Desired;
use crate::plan::{Action, Change, Plan};
use crate::progress::Progress;
use crate::source::checksum_list;
use crate::source::packer;
use crate::source::signature::{MinisignCheck, MinisignKey};
use crate::spec::{NormalizedSpec, SpecSignature, SpecSource};
use crate::state::record::{new_record, source_of, to_json};
use crate::store::{PutOptions, Store, META_CHECKSUM, META_FINGERPRINT};

pub struct ApplyContext {
    pub store: Arc<dyn Store>,
    pub client: reqwest::Client,
    pub settings: pipeline::Settings,
    pub parallelism: usize,
    pub progress: Arc<dyn Progress>,
    pub cancel: watch::Receiver<bool>,
    /// Desired state by image name.
    pub desired: HashMap<String, Desired>,
    /// The manifest's directory: Packer template paths are relative to it.
    pub base_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Done(String),
    Failed(String),
    Skipped(String),
}

#[derive(Debug, Default)]
pub struct Report {
    /// `(name, action, outcome)` in plan order.
    pub results: Vec<(String, Action, Outcome)>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|(_, _, o)| matches!(o, Outcome::Failed(_) | Outcome::Skipped(_)))
    }
}

/// A one-line summary and the checksum dependents will see, or why the change failed.
type ChangeResult = anyhow::Result<(String, Option<Checksum>)>;

/// What a finished image offers its dependents.
#[derive(Clone)]
enum Finished {
    Ok(Option<Checksum>),
    Failed,
}

pub async fn execute(plan: &Plan, ctx: Arc<ApplyContext>) -> Report {
    let changes = plan.changes.clone();
    let in_plan: HashMap<&str, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut finished: HashMap<String, Finished> = HashMap::new();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; changes.len()];
    let mut running: JoinSet<(usize, ChangeResult)> = JoinSet::new();
    let mut started = vec![false; changes.len()];

    loop {
        let cancelled = *ctx.cancel.borrow();
        // Start every change whose dependencies are settled, within the parallelism.
        for (i, change) in changes.iter().enumerate() {
            if started[i] || running.len() >= ctx.parallelism.max(1) {
                continue;
            }
            let deps: Vec<&String> = change
                .depends_on
                .iter()
                .filter(|d| in_plan.contains_key(d.as_str()))
                .collect();
            if deps.iter().any(|d| !finished.contains_key(d.as_str())) {
                continue;
            }
            started[i] = true;
            if let Some(failed) = deps
                .iter()
                .find(|d| matches!(finished[d.as_str()], Finished::Failed))
            {
                let why = format!("dependency {failed} failed");
                ctx.progress
                    .finish(&change.name, &format!("skipped: {why}"));
                outcomes[i] = Some(Outcome::Skipped(why));
                finished.insert(change.name.clone(), Finished::Failed);
                continue;
            }
            if cancelled {
                outcomes[i] = Some(Outcome::Skipped("interrupted".into()));
                finished.insert(change.name.clone(), Finished::Failed);
                continue;
            }
            if change.action == Action::NoOp {
                let sum = change.before.as_ref().and_then(|b| b.checksum.clone());
                outcomes[i] = Some(Outcome::Unchanged);
                finished.insert(change.name.clone(), Finished::Ok(sum));
                continue;
            }
            let dep_sums: BTreeMap<String, Option<Checksum>> = change
                .depends_on
                .iter()
                .map(|d| {
                    let sum = match finished.get(d) {
                        Some(Finished::Ok(s)) => s.clone(),
                        _ => change
                            .after
                            .as_ref()
                            .and_then(|a| a.dependencies.get(d).cloned().flatten()),
                    };
                    (d.clone(), sum)
                })
                .collect();
            let (change, ctx) = (change.clone(), ctx.clone());
            running.spawn(async move {
                let result = run_change(&change, dep_sums, &ctx).await;
                (i, result)
            });
        }
        let Some(joined) = running.join_next().await else {
            if started.iter().all(|s| *s) {
                break;
            }
            continue; // everything left was just settled without running
        };
        let (i, result) = joined.expect("apply task panicked");
        let change = &changes[i];
        match result {
            Ok((message, checksum)) => {
                ctx.progress.finish(&change.name, &message);
                outcomes[i] = Some(Outcome::Done(message));
                finished.insert(change.name.clone(), Finished::Ok(checksum));
            }
            Err(e) => {
                let text = format!("{e:#}");
                ctx.progress
                    .finish(&change.name, &format!("failed: {text}"));
                outcomes[i] = Some(Outcome::Failed(text));
                finished.insert(change.name.clone(), Finished::Failed);
            }
        }
    }
    Report {
        results: changes
            .iter()
            .zip(outcomes)
            .map(|(c, o)| {
                (
                    c.name.clone(),
                    c.action,
                    o.unwrap_or(Outcome::Skipped("not run".into())),
                )
            })
            .collect(),
    }
}

/// Runs one change; returns a one-line summary and the checksum its dependents will see.
async fn run_change(
    change: &Change,
    dep_sums: BTreeMap<String, Option<Checksum>>,
    ctx: &ApplyContext,
) -> ChangeResult {
    match change.action {
        Action::NoOp => Ok((
            "unchanged".into(),
            change.before.as_ref().and_then(|b| b.checksum.clone()),
        )),
        Action::Delete => {
            ctx.store.delete(&change.key).await?;
            ctx.store.delete(&change.record_key).await?;
            Ok((format!("deleted {}", change.key), None))
        }
        Action::Update => update(change, dep_sums, ctx).await,
        Action::Create | Action::Replace => {
            let desired = ctx
                .desired
                .get(&change.name)
                .ok_or_else(|| anyhow!("image `{}` is not in the manifest", change.name))?;
            let deps = known(&dep_sums)?;
            match &desired.spec.source {
                SpecSource::Http { .. } => publish_http(change, desired, deps, ctx).await,
                SpecSource::Packer { .. } => publish_packer(change, &desired.spec, deps, ctx).await,
            }
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

fn object_metadata(checksum: &Checksum, fingerprint: &Checksum) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_CHECKSUM.to_string(), checksum.to_string()),
        (META_FINGERPRINT.to_string(), fingerprint.to_string()),
    ])
}

/// The download's checksum: pinned, as the plan looked it up, or from the checksum list now
/// (verifying the list's signature).
async fn source_checksum(
    desired: &Desired,
    url: &str,
    planned: Option<&Checksum>,
    ctx: &ApplyContext,
) -> anyhow::Result<Checksum> {
    let SpecSource::Http { checksum, .. } = &desired.spec.source else {
        unreachable!("called for http sources")
    };
    match (checksum.strip_prefix("file:"), planned) {
        (None, _) => Ok(checksum.parse()?),
        // Apply does what the plan showed (and verified), even if the list changed since.
        (Some(_), Some(planned)) => Ok(planned.clone()),
        (Some(list_url), None) => {
            let pgp = crate::desired::pgp_check(desired)?;
            Ok(checksum_list::resolve(
                &ctx.client,
                list_url,
                url,
                pgp.as_ref(),
                &ctx.settings.retry,
            )
            .await?)
        }
    }
}

/// Fetches a minisign signature before the download, so a wrong key or a legacy signature
/// fails before any image byte moves.
async fn minisign_check(
    signature: Option<&SpecSignature>,
    ctx: &ApplyContext,
) -> anyhow::Result<Option<MinisignCheck>> {
    let Some(SpecSignature::Minisign { url, public_key }) = signature else {
        return Ok(None);
    };
    let key = MinisignKey::parse(public_key)?;
    let text = crate::source::http::fetch_text(&ctx.client, url, &ctx.settings.retry, 64 * 1024)
        .await
        .with_context(|| format!("cannot fetch the minisign signature {url}"))?;
    Ok(Some(MinisignCheck::new(key, &text, url)?))
}

async fn publish_http(
    change: &Change,
    desired: &Desired,
    deps: BTreeMap<String, Checksum>,
    ctx: &ApplyContext,
) -> ChangeResult {
    let spec = &desired.spec;
    let SpecSource::Http {
        url,
        decompress,
        signature,
        ..
    } = &spec.source
    else {
        unreachable!("called for http sources")
    };
    let planned = change
        .after
        .as_ref()
        .and_then(|a| a.source_checksum.as_ref());
    let source = source_checksum(desired, url, planned, ctx).await?;
    let minisign = minisign_check(signature.as_ref(), ctx).await?;
    let decompress = decompress.as_deref().and_then(Compression::from_name);
    let expected = match (&spec.expected, decompress) {
        (Some(e), _) => e.clone(),
        (None, None) => source.clone(),
        (None, Some(_)) => bail!("`validation.expected` is required when `decompress` is set"),
    };
    let fingerprint = spec.fingerprint(&deps);
    let job = HttpJob {
        image: change.name.clone(),
        url: url.clone(),
        source_checksum: source.clone(),
        decompress,
        expected: expected.clone(),
        key: change.key.clone(),
        user_metadata: object_metadata(&expected, &fingerprint),
        minisign,
    };
    let published = pipeline::publish_http(
        ctx.store.clone(),
        ctx.client.clone(),
        &job,
        &ctx.settings,
        ctx.progress.as_ref(),
        ctx.cancel.clone(),
    )
    .await?;
    let mut record = record_of(spec, &published, deps);
    record.source.checksum = Some(source);
    record.source.size = published.source.size;
    record.source.etag = published.source.etag.clone();
    record.source.last_modified = published.source.last_modified.clone();
    write_record(ctx, &change.record_key, &record).await?;
    Ok(published_result(change, &published, "created", "replaced"))
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
    record
}

/// The summary line of a published image and the checksum its dependents see.
fn published_result(
    change: &Change,
    published: &pipeline::Published,
    created: &str,
    replaced: &str,
) -> (String, Option<Checksum>) {
    let verb = if change.action == Action::Create {
        created
    } else {
        replaced
    };
    (
        format!(
            "{verb} ({} bytes, {})",
            published.size,
            published.checksum.short()
        ),
        Some(published.checksum.clone()),
    )
}

/// How long a presigned URL handed to a build stays valid.
const BUILD_URL_EXPIRY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// The value of a `{{ images.NAME.FIELD }}` reference at apply time.
async fn reference_value(
    reference: &Reference,
    deps: &BTreeMap<String, Checksum>,
    ctx: &ApplyContext,
) -> anyhow::Result<String> {
    let dep = ctx
        .desired
        .get(&reference.image)
        .ok_or_else(|| anyhow!("reference to unknown image `{}`", reference.image))?;
    let key = crate::manifest::object_key(&dep.spec.destination);
    Ok(match reference.field {
        Field::Url => ctx.store.url_for(&key, BUILD_URL_EXPIRY).await?,
        Field::Checksum => deps
            .get(&reference.image)
            .ok_or_else(|| anyhow!("`{}` is referenced but not a dependency", reference.image))?
            .to_string(),
        Field::Key => key,
        Field::Size => ctx
            .store
            .head(&key)
            .await?
            .ok_or_else(|| anyhow!("`{key}` is not in the store"))?
            .size
            .to_string(),
    })
}

async fn publish_packer(
    change: &Change,
    spec: &NormalizedSpec,
    deps: BTreeMap<String, Checksum>,
    ctx: &ApplyContext,
) -> ChangeResult {
    let SpecSource::Packer {
        path,
        variables,
        artifact,
        ..
    } = &spec.source
    else {
        unreachable!("called for packer sources")
    };
    let mut resolved = Vec::new();
    for (name, written) in variables {
        let mut values = Vec::new();
        for r in reference::parse_all(written)? {
            values.push(reference_value(&r, &deps, ctx).await?);
        }
        let mut values = values.into_iter();
        let value = reference::substitute(written, |_| values.next().unwrap_or_default())?;
        resolved.push((name.clone(), value));
    }
    let template = ctx.base_dir.join(path);
    ctx.progress
        .start(&change.name, "building with Packer", None);
    let build = packer::build(
        &change.name,
        &template,
        &resolved,
        artifact,
        ctx.progress.as_ref(),
        ctx.cancel.clone(),
    )
    .await
    .map_err(|e| match e.hint() {
        Some(h) => anyhow!("{e} (hint: {h})"),
        None => anyhow!(e),
    })?;
    let fingerprint = spec.fingerprint(&deps);
    let published = pipeline::publish_file(
        ctx.store.clone(),
        &build.artifact,
        &change.name,
        &change.key,
        &fingerprint,
        &ctx.settings,
        ctx.progress.as_ref(),
    )
    .await?;
    let mut record = record_of(spec, &published, deps);
    record.source.packer_version = Some(build.packer_version.clone());
    write_record(ctx, &change.record_key, &record).await?;
    // Dropping the build removes its scratch directory.
    drop(build);
    Ok(published_result(
        change,
        &published,
        "built and published",
        "rebuilt and replaced",
    ))
}

async fn update(
    change: &Change,
    dep_sums: BTreeMap<String, Option<Checksum>>,
    ctx: &ApplyContext,
) -> ChangeResult {
    let spec = &ctx
        .desired
        .get(&change.name)
        .ok_or_else(|| anyhow!("image `{}` is not in the manifest", change.name))?
        .spec;
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
        record.source.checksum = c.parse().ok();
    }
    let object = ctx
        .store
        .set_metadata(&change.key, object_metadata(&checksum, &record.fingerprint))
        .await?;
    record.object_etag = Some(object.etag);
    write_record(ctx, &change.record_key, &record).await?;
    Ok(("updated".into(), Some(checksum)))
}

async fn write_record(
    ctx: &ApplyContext,
    key: &str,
    record: &crate::state::StateRecord,
) -> anyhow::Result<()> {
    ctx.store
        .put(key, Bytes::from(to_json(record)), PutOptions::default())
        .await
        .with_context(|| format!("the object was published but its record `{key}` could not be written; the next plan replaces it"))?;
    Ok(())
}

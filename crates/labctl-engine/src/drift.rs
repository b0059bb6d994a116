//! `labctl drift`'s checks that read the store's bytes and ask the vendors: the bucket's own
//! findings, `--deep` (every managed object hashed again) and `--check-sources` (every HTTP
//! source probed). What each finding says is the core's ([`labctl_core::drift`]).

use std::sync::Arc;

use anyhow::anyhow;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::plan::Desired;
use crate::source::http::{DownloadError, SourceInfo};
use crate::source::probe::Probed;
use crate::spec::SpecSource;
use crate::state::record::Record;
use crate::state::{ActualState, ObjectState};
use crate::store::{self, Store};
use labctl_core::drift::{self, Finding, Kind};

/// Objects re-hashed at once by `--deep`; each needs only a small read buffer.
const DEEP_CONCURRENCY: usize = 4;
const SOURCE_CONCURRENCY: usize = 8;
/// A fan-out stages and promotes within a workflow run (hours at most): staged objects older
/// than this were left by one that never promoted (`labctl cleanup`'s default too).
pub const STAGED_LEFTOVER_HOURS: u64 = 24;

/// What the bucket alone says, without reading an image's bytes or asking a source: the plan's
/// changes, objects and records that disagree, stranded uploads, kept versions and staged blobs
/// nothing names, keys Cloud Sync will not carry, and the consumer index.
pub async fn bucket_findings(
    store: &dyn Store,
    plan: &crate::plan::Plan,
    actual: &ActualState,
    index_key: Option<&str>,
) -> anyhow::Result<Vec<Finding>> {
    let images = store::list_all(store, crate::manifest::IMAGES_PREFIX).await?;
    let history = store::list_all(store, crate::manifest::HISTORY_PREFIX).await?;
    let mut findings = drift::plan_findings(plan, actual);
    // While an apply holds the lock its uploads are in progress, not stranded.
    // A lock whose lease ran out protects nothing: its run is gone.
    if !crate::lock::held_by_a_live_run(store).await? {
        if let Some(uploads) = crate::stranded::list(store).await? {
            findings.extend(drift::stranded_uploads(&uploads));
        }
    }
    findings.extend(drift::records_vs_objects(actual, &images));
    findings.extend(drift::unlisted_history(actual, &history));
    findings.extend(drift::unsyncable(actual));
    let now = crate::timefmt::unix_now().as_secs();
    let leftovers = crate::cleanup::find(store, STAGED_LEFTOVER_HOURS * 3600, now).await?;
    findings.extend(drift::staged_leftovers(
        &leftovers.blobs,
        &leftovers.results,
        &leftovers.uploads,
        STAGED_LEFTOVER_HOURS,
    ));
    findings.extend(drift::index_findings(actual, index_key));
    Ok(findings)
}

/// Streams every managed object back and compares its hash with the record.
pub async fn deep(store: Arc<dyn Store>, actual: &ActualState) -> anyhow::Result<Vec<Finding>> {
    let slots = Arc::new(Semaphore::new(DEEP_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for r in actual.records.values() {
        let Ok(record) = &r.record else { continue };
        if !matches!(r.object, ObjectState::Present(_)) {
            continue; // already reported as missing
        }
        let (store, slots) = (store.clone(), slots.clone());
        let (key, expected) = (r.object_key.clone(), record.checksum().clone());
        let name = record.name().map(str::to_string);
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            if store.head(&key).await?.is_none() {
                return Ok(None);
            }
            let actual = crate::pipeline::hash_stored(store.as_ref(), &key, expected.algorithm)
                .await?
                .declared;
            Ok::<_, store::StoreError>((actual != expected).then(|| Finding {
                kind: Kind::ContentMismatch,
                image: name,
                key,
                detail: format!("expected {expected}, the stored bytes hash to {actual}"),
            }))
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let done = done.map_err(|e| anyhow!("re-hashing failed internally ({e})"))?;
        if let Some(f) = done? {
            out.push(f);
        }
    }
    Ok(out)
}

/// Probes every HTTP source: HEAD, or a 1-byte ranged GET where HEAD is refused.
pub async fn check_sources(desired: &[Desired], actual: &ActualState) -> Vec<Finding> {
    let client = crate::source::http::client();
    let slots = Arc::new(Semaphore::new(SOURCE_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for d in desired {
        let SpecSource::Http { url, .. } = &d.spec.source else {
            continue;
        };
        let record_key = crate::manifest::record_key(&d.spec.destination);
        let recorded = actual
            .records
            .get(&record_key)
            .and_then(|r| match &r.record {
                Ok(Record::Current(rec)) if rec.source.url.as_deref() == Some(url.as_str()) => {
                    Some(if rec.source.facts_unknown {
                        Recorded::Lost
                    } else {
                        Recorded::Facts(SourceInfo {
                            size: rec.source.size,
                            etag: rec.source.etag.clone(),
                            last_modified: rec.source.last_modified.clone(),
                            content_type: None,
                        })
                    })
                }
                _ => None,
            });
        let (client, slots, url, name) = (
            client.clone(),
            slots.clone(),
            url.clone(),
            d.spec.name.clone(),
        );
        let custody = drift::custody(d, actual);
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            let mut finding = probe(&client, &url, &name, recorded.as_ref()).await;
            if let Some(f) = &mut finding {
                if f.kind == Kind::SourceVanished {
                    f.detail.push_str(&format!("; {custody}"));
                }
            }
            finding
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Some(f)) => out.push(f),
            Ok(None) => {}
            // A bug probing one source is that source's finding, not the end of the report.
            Err(e) => out.push(Finding {
                kind: Kind::SourceUnreachable,
                image: None,
                key: String::new(),
                detail: format!("labctl failed internally while probing a source ({e})"),
            }),
        }
    }
    out
}

/// What the record says about the download.
enum Recorded {
    Facts(SourceInfo),
    /// Lost when an interrupted run's object was adopted: nothing to compare with, which must
    /// not read as "unchanged".
    Lost,
}

/// The vendor's answer about one source, as a finding (none when nothing changed).
async fn probe(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    recorded: Option<&Recorded>,
) -> Option<Finding> {
    let finding = |kind, detail: String| {
        Some(Finding {
            kind,
            image: Some(name.to_string()),
            key: url.to_string(),
            detail,
        })
    };
    // Two tries: a nightly check should not hammer a vendor that is down.
    let policy = crate::source::http::RetryPolicy {
        attempts: 2,
        ..Default::default()
    };
    let now = match crate::source::probe::probe(client, url, &policy).await {
        Ok(Probed::Serves(info)) => info,
        Ok(Probed::Gone { status }) => {
            return finding(
                Kind::SourceVanished,
                format!("HTTP {status}: the image could not be downloaded again"),
            )
        }
        Err(DownloadError::Status { status, .. }) => {
            return finding(Kind::SourceUnreachable, format!("HTTP {status}"))
        }
        Err(e) => return finding(Kind::SourceUnreachable, format!("request failed: {e:#}")),
    };
    let then = match recorded? {
        Recorded::Facts(info) => info,
        Recorded::Lost => {
            return finding(
                Kind::SourceUnknown,
                format!("its record has no size, ETag or Last-Modified of the download (lost when an interrupted apply's object was adopted), so a vendor change cannot be seen; `labctl apply --replace {name}` downloads it again and records them"),
            )
        }
    };
    let mut changes = Vec::new();
    if let (Some(a), Some(b)) = (then.size, now.size) {
        if a != b {
            changes.push(format!("size {a} → {b}"));
        }
    }
    if let (Some(a), Some(b)) = (&then.etag, &now.etag) {
        if a != b {
            changes.push(format!("ETag {a} → {b}"));
        }
    }
    if let (Some(a), Some(b)) = (&then.last_modified, &now.last_modified) {
        if a != b {
            changes.push(format!("Last-Modified {a} → {b}"));
        }
    }
    if changes.is_empty() {
        None
    } else {
        finding(
            Kind::SourceChanged,
            format!("since it was downloaded: {}", changes.join("; ")),
        )
    }
}

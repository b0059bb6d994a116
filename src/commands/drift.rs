//! `labctl drift`: read-only comparison of manifest, records, objects and (optionally) the bytes
//! and the upstream sources. Exit 0 clean, 1 error, 2 drift.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::DriftArgs;
use crate::drift::{self, Finding, Kind, Report};
use crate::failure::Failure;
use crate::plan::Desired;
use crate::source::http::{DownloadError, SourceInfo};
use crate::source::probe::Probed;
use crate::spec::SpecSource;
use crate::state::record::Record;
use crate::state::{ActualState, ObjectState};
use crate::store::{self, Store};

/// Objects re-hashed at once by `--deep`; each needs only a small read buffer.
const DEEP_CONCURRENCY: usize = 4;
const SOURCE_CONCURRENCY: usize = 8;
/// A fan-out stages and promotes within a workflow run (hours at most): staged objects older
/// than this were left by one that never promoted (`labctl cleanup`'s default too).
const STAGED_LEFTOVER_HOURS: u64 = 24;

pub async fn run(args: &DriftArgs) -> Result<ExitCode, Failure> {
    let (manifest, graph) = super::load_manifest(&args.manifest.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), Some(&manifest)).await?;
    // The plan apply would make, without fetching checksum lists: a vendor's list is looked at
    // by --check-sources, not by the nightly comparison of the manifest with the store.
    let request = crate::planning::PlanRequest {
        prune: false,
        allow_empty: false,
        replace: Vec::new(),
        // Every object HEADed: drift also compares the labctl metadata a listing does not show.
        objects: crate::state::refresh::Objects::Headed,
        offline: true,
    };
    let crate::planning::Planned {
        desired,
        actual,
        plan,
    } = crate::planning::compute(&manifest, &graph, &store, &request).await?;
    let mut findings = bucket_findings(
        store.as_ref(),
        &plan,
        &actual,
        manifest.index.minisign_public_key.as_deref(),
    )
    .await?;
    if args.deep {
        eprintln!("Re-hashing every managed object…");
        findings.extend(deep(store.clone(), &actual).await?);
    }
    if args.check_sources {
        eprintln!("Probing the sources…");
        findings.extend(check_sources(&desired, &actual).await);
    }
    let report = Report::new(
        manifest.path.display().to_string(),
        store.url(),
        args.deep,
        args.check_sources,
        actual.records.len(),
        findings,
    );

    show(&report, args);
    Ok(if report.has_drift() {
        super::exit(super::EXIT_CHANGES)
    } else {
        ExitCode::SUCCESS
    })
}

/// What the bucket alone says, without reading an image's bytes or asking a source: the plan's
/// changes, objects and records that disagree, stranded uploads, kept versions and staged blobs
/// nothing names, keys Cloud Sync will not carry, and the consumer index.
async fn bucket_findings(
    store: &dyn Store,
    plan: &crate::plan::Plan,
    actual: &ActualState,
    index_key: Option<&str>,
) -> Result<Vec<Finding>, Failure> {
    let images = store::list_all(store, crate::manifest::IMAGES_PREFIX).await?;
    let history = store::list_all(store, crate::manifest::HISTORY_PREFIX).await?;
    let mut findings = drift::plan_findings(plan, actual);
    // While an apply holds the lock its uploads are in progress, not stranded.
    // A lock whose lease ran out protects nothing: its run is gone.
    if !crate::apply::lock::held_by_a_live_run(store)
        .await
        .map_err(crate::store_lock::lock_failure)?
    {
        if let Some(uploads) = crate::apply::stranded::list(store).await? {
            findings.extend(drift::stranded_uploads(&uploads));
        }
    }
    findings.extend(drift::records_vs_objects(actual, &images));
    findings.extend(drift::unlisted_history(actual, &history));
    findings.extend(drift::unsyncable(actual));
    let now = crate::timefmt::unix_now().as_secs();
    let leftovers = crate::apply::cleanup::find(store, STAGED_LEFTOVER_HOURS * 3600, now).await?;
    findings.extend(drift::staged_leftovers(
        &leftovers.blobs,
        &leftovers.results,
        &leftovers.uploads,
        STAGED_LEFTOVER_HOURS,
    ));
    findings.extend(drift::index_findings(actual, index_key));
    Ok(findings)
}

/// The report on stdout in the format asked for; in GitHub Actions also the step summary, the
/// job outputs and (for the human format) an annotation per finding.
fn show(report: &Report, args: &DriftArgs) {
    let text = if args.json {
        serde_json::to_string_pretty(report).expect("serializes") + "\n"
    } else if args.markdown {
        drift::markdown(report)
    } else {
        drift::human(report)
    };
    print!("{text}");
    if crate::github::active() {
        crate::github::summary(&drift::markdown(report));
        crate::github::outputs(&[
            ("drift", report.has_drift().to_string()),
            ("findings", report.findings.len().to_string()),
        ]);
        if !args.json && !args.markdown {
            for f in &report.findings {
                crate::github::error(
                    &format!("labctl drift: {}", f.image.as_deref().unwrap_or(&f.key)),
                    &format!("{}: {} ({})", f.kind.name(), f.key, f.detail),
                );
            }
        }
    }
}

/// Streams every managed object back and compares its hash with the record.
async fn deep(store: Arc<dyn Store>, actual: &ActualState) -> Result<Vec<Finding>, Failure> {
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
        if let Some(f) = done.expect("hash task panicked")? {
            out.push(f);
        }
    }
    Ok(out)
}

/// Probes every HTTP source: HEAD, or a 1-byte ranged GET where HEAD is refused.
async fn check_sources(desired: &[Desired], actual: &ActualState) -> Vec<Finding> {
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
        let custody = custody(d, actual);
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
        if let Some(f) = done.expect("probe task panicked") {
            out.push(f);
        }
    }
    out
}

/// Who still has the bytes once the vendor's file is gone: the published object (when it is the
/// one the manifest wants) and the versions kept under history/.
fn custody(d: &Desired, actual: &ActualState) -> String {
    let record_key = crate::manifest::record_key(&d.spec.destination);
    let Some(r) = actual.records.get(&record_key) else {
        return "the bucket holds no copy either: this image cannot be published again from this URL".into();
    };
    let Ok(rec) = &r.record else {
        return "the bucket's record of it is unreadable: check the object before relying on it"
            .into();
    };
    let wanted = d.published();
    let present = matches!(r.object, ObjectState::Present(_));
    let kept = rec.history();
    let history = match kept.len() {
        0 => String::new(),
        1 => "; its history keeps 1 earlier version".to_string(),
        n => format!("; its history keeps {n} earlier versions"),
    };
    let restorable = wanted.is_some_and(|w| kept.iter().any(|h| h.checksum == *w));
    if present && wanted.is_none_or(|w| w == rec.checksum()) {
        format!(
            "the bucket now holds the only copy ({}, {}){history}",
            r.object_key,
            rec.checksum().short()
        )
    } else if restorable {
        format!("the bucket's history holds the only copy of the wanted bytes{history}")
    } else if present {
        format!(
            "the bucket holds other bytes ({}) than the manifest wants: a replace cannot download them{history}",
            rec.checksum().short()
        )
    } else {
        format!("the object is missing from the bucket too: no copy is left{history}")
    }
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

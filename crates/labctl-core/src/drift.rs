//! Drift: differences between the manifest, the state records, the objects and (optionally) the
//! upstream sources. Read-only; the plan turns most findings into actions.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::object::ObjectMeta;
use crate::plan::{Action, Desired, Plan, Reason};
use crate::state::{ActualState, ObjectState};

pub const FORMAT_VERSION: &str = "1.2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The plan has a change for the image: the manifest asks for what the store does not hold.
    UnappliedChange,
    ObjectMissing,
    ObjectModified,
    ContentMismatch,
    Unmanaged,
    Orphan,
    RecordUnreadable,
    SourceVanished,
    SourceChanged,
    /// The record cannot say whether the vendor changed the file: the download's facts were
    /// lost when an interrupted run's object was adopted.
    SourceUnknown,
    SourceUnreachable,
    IndexStale,
    /// An unfinished multipart upload under labctl's prefixes while no apply holds the lock.
    StrandedUpload,
    /// A managed object whose key Synology Cloud Sync will not carry to the NAS (published
    /// before such destinations were refused).
    Unsyncable,
    /// A blob staged by a fan-out leg (or its stage result) that no promotion took, older than
    /// a day, and named by no recent stage result: `labctl cleanup` removes it.
    StagedLeftover,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::UnappliedChange => "unapplied-change",
            Kind::ObjectMissing => "object-missing",
            Kind::ObjectModified => "object-modified",
            Kind::ContentMismatch => "content-mismatch",
            Kind::Unmanaged => "unmanaged",
            Kind::Orphan => "orphan",
            Kind::RecordUnreadable => "record-unreadable",
            Kind::SourceVanished => "source-vanished",
            Kind::SourceChanged => "source-changed",
            Kind::SourceUnknown => "source-unknown",
            Kind::SourceUnreachable => "source-unreachable",
            Kind::IndexStale => "index-stale",
            Kind::StrandedUpload => "stranded-upload",
            Kind::Unsyncable => "unsyncable",
            Kind::StagedLeftover => "staged-leftover",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    /// The image, when the finding belongs to one.
    pub image: Option<String>,
    /// The object key (or source URL for source findings).
    pub key: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format_version: String,
    pub labctl_version: String,
    pub manifest: String,
    pub store: String,
    pub deep: bool,
    pub sources_checked: bool,
    pub records: usize,
    pub summary: BTreeMap<String, usize>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(
        manifest: String,
        store: String,
        deep: bool,
        sources_checked: bool,
        records: usize,
        mut findings: Vec<Finding>,
    ) -> Report {
        findings.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        let mut summary = BTreeMap::new();
        for f in &findings {
            *summary.entry(f.kind.name().to_string()).or_insert(0) += 1;
        }
        Report {
            format_version: FORMAT_VERSION.into(),
            labctl_version: env!("CARGO_PKG_VERSION").into(),
            manifest,
            store,
            deep,
            sources_checked,
            records,
            summary,
            findings,
        }
    }

    pub fn has_drift(&self) -> bool {
        !self.findings.is_empty()
    }
}

/// The plan's changes and orphans as drift, so that drift and apply agree on what is wrong: a
/// merge not yet applied, a failed apply, a vendor's new checksum pinned in the manifest. Reasons
/// that a finding of its own already names (the object, an unreadable record) are left to it.
pub fn plan_findings(plan: &Plan, actual: &ActualState) -> Vec<Finding> {
    let mut findings = Vec::new();
    for change in &plan.changes {
        if change.action == Action::NoOp {
            continue;
        }
        let own: Vec<String> = change
            .reasons
            .iter()
            .filter(|r| !reported_elsewhere(r))
            .map(Reason::to_string)
            .collect();
        if own.is_empty() {
            continue;
        }
        findings.push(Finding {
            kind: Kind::UnappliedChange,
            image: Some(change.name.clone()),
            key: change.key.clone(),
            detail: format!("{}: {}", change.action, own.join("; ")),
        });
    }
    for orphan in &plan.orphans {
        let unreadable = actual
            .records
            .get(&orphan.record_key)
            .is_some_and(|r| r.record.is_err());
        if unreadable {
            continue; // a record-unreadable finding of its own
        }
        findings.push(Finding {
            kind: Kind::Orphan,
            image: Some(orphan.name.clone()),
            key: orphan.key.clone(),
            detail: if orphan.protected {
                format!("{}; the record is protected", orphan.reason)
            } else {
                orphan.reason.clone()
            },
        });
    }
    findings
}

/// The object's own drift and an unreadable record have findings of their own.
fn reported_elsewhere(reason: &Reason) -> bool {
    reason.is_object_drift() || matches!(reason, Reason::RecordCorrupt(_))
}

/// Records against objects: what a listing and HEADs can tell.
pub fn records_vs_objects(actual: &ActualState, images: &[ObjectMeta]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut recorded_objects = BTreeSet::new();
    for (record_key, r) in &actual.records {
        recorded_objects.insert(r.object_key.clone());
        let record = match &r.record {
            Err(why) => {
                findings.push(Finding {
                    kind: Kind::RecordUnreadable,
                    image: None,
                    key: record_key.clone(),
                    detail: why.to_string(),
                });
                continue;
            }
            Ok(rec) => rec,
        };
        let name = record.name().map(str::to_string);
        match &r.object {
            ObjectState::NotChecked => {}
            ObjectState::Missing => findings.push(Finding {
                kind: Kind::ObjectMissing,
                image: name,
                key: r.object_key.clone(),
                detail: "the record exists, the object does not".into(),
            }),
            ObjectState::Present(meta) => {
                let differences = record.differences_from(meta);
                if !differences.is_empty() {
                    findings.push(Finding {
                        kind: Kind::ObjectModified,
                        image: name,
                        key: r.object_key.clone(),
                        detail: differences.join("; "),
                    });
                }
            }
        }
    }
    for object in images {
        if !recorded_objects.contains(&object.key)
            && !crate::consumer_index::is_index_key(&object.key)
        {
            findings.push(Finding {
                kind: Kind::Unmanaged,
                image: None,
                key: object.key.clone(),
                detail: format!("{} bytes under images/ with no state record", object.size),
            });
        }
    }
    findings
}

/// The consumer index against the records: what a NAS would check its copy against.
/// Judged by the same rule apply writes it with (and plan compares it with), so a finding here is
/// exactly what the next apply rewrites.
pub fn index_findings(actual: &ActualState, public_key: Option<&str>) -> Vec<Finding> {
    let implied = crate::consumer_index::entries(&actual.records);
    let mut out: Vec<Finding> =
        crate::consumer_index::staleness(&implied.entries, &actual.index, public_key)
            .into_iter()
            .map(|detail| Finding {
                kind: Kind::IndexStale,
                image: None,
                key: detail
                    .split_whitespace()
                    .find(|w| w.starts_with(crate::manifest::IMAGES_PREFIX))
                    .unwrap_or(crate::consumer_index::SUMS_KEY)
                    .to_string(),
                detail,
            })
            .collect();
    for (record_key, name) in implied.lacking {
        out.push(Finding {
            kind: Kind::IndexStale,
            image: Some(name),
            key: actual.records[&record_key].object_key.clone(),
            detail: "not in the index: its record has no sha256 yet (the next apply adds it)"
                .into(),
        });
    }
    out
}

/// Unfinished uploads found while no apply holds the lock: left by a killed run.
pub fn stranded_uploads(uploads: &[crate::object::Upload]) -> Vec<Finding> {
    uploads
        .iter()
        .map(|u| Finding {
            kind: Kind::StrandedUpload,
            image: None,
            key: u.key.clone(),
            detail: format!(
                "unfinished multipart upload {} left by an interrupted run: invisible, but kept and billed until the next apply aborts it",
                u.upload_id
            ),
        })
        .collect()
}

/// Staged blobs, stage results and unfinished blob uploads no promotion took (see
/// `labctl cleanup`), `age_hours` old at least.
pub fn staged_leftovers(
    blobs: &[ObjectMeta],
    results: &[ObjectMeta],
    uploads: &[crate::object::StartedUpload],
    age_hours: u64,
) -> Vec<Finding> {
    let finding = |key: &str, detail: String| Finding {
        kind: Kind::StagedLeftover,
        image: None,
        key: key.to_string(),
        detail,
    };
    let blob = blobs.iter().map(|b| {
        finding(
            &b.key,
            format!(
                "{} bytes staged more than {age_hours} h ago that no promotion took; `labctl cleanup` removes them",
                b.size
            ),
        )
    });
    let result = results.iter().map(|r| {
        finding(
            &r.key,
            format!("a stage result more than {age_hours} h old that no promotion took; `labctl cleanup` removes it"),
        )
    });
    let upload = uploads.iter().map(|u| {
        finding(
            &u.upload.key,
            format!(
                "unfinished upload {} of a leg, idle more than {age_hours} h (a leg that was killed): invisible, but billed; `labctl cleanup` aborts it",
                u.upload.upload_id
            ),
        )
    });
    blob.chain(result).chain(upload).collect()
}

/// Objects under `history/` that no record lists as a kept version: left by an interrupted
/// apply or a failed trim. Nothing reads them; they only cost storage.
/// Records whose object key Cloud Sync would skip or rename: the bucket holds the bytes, the
/// Who still has the bytes once the vendor's file is gone: the published object (when it is the
/// one the manifest wants) and the versions kept under history/.
pub fn custody(d: &Desired, actual: &ActualState) -> String {
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

/// NAS never will.
pub fn unsyncable(actual: &ActualState) -> Vec<Finding> {
    actual
        .records
        .values()
        .filter_map(|r| {
            let path = r.object_key.strip_prefix(crate::manifest::IMAGES_PREFIX)?;
            let broken = crate::manifest::cloud_sync::check(path)?;
            Some(Finding {
                kind: Kind::Unsyncable,
                image: r
                    .record
                    .as_ref()
                    .ok()
                    .and_then(|rec| rec.name())
                    .map(str::to_string),
                key: r.object_key.clone(),
                detail: format!(
                    "{broken}: the object is in the bucket but never reaches the NAS; move it to a destination Cloud Sync carries"
                ),
            })
        })
        .collect()
}

pub fn unlisted_history(actual: &ActualState, history: &[ObjectMeta]) -> Vec<Finding> {
    let listed: BTreeSet<&str> = actual
        .records
        .values()
        .filter_map(|r| r.record.as_ref().ok())
        .flat_map(|r| r.history().iter().map(|h| h.key.as_str()))
        .collect();
    history
        .iter()
        .filter(|o| !listed.contains(o.key.as_str()))
        .map(|o| Finding {
            kind: Kind::Unmanaged,
            image: None,
            key: o.key.clone(),
            detail: format!(
                "{} bytes under history/ that no record lists as a kept version",
                o.size
            ),
        })
        .collect()
}

pub fn human(report: &Report) -> String {
    use console::style;
    let mut out = String::new();
    if !report.has_drift() {
        out.push_str(&format!(
            "{} {} records checked in {}{}{}.\n",
            style("No drift.").green().bold(),
            report.records,
            report.store,
            if report.deep {
                ", every object re-hashed"
            } else {
                ""
            },
            if report.sources_checked {
                ", sources probed"
            } else {
                ""
            },
        ));
        return out;
    }
    out.push_str(&format!(
        "{} in {}:\n\n",
        style(format!(
            "{} finding{}",
            report.findings.len(),
            if report.findings.len() == 1 { "" } else { "s" }
        ))
        .red()
        .bold(),
        report.store
    ));
    for f in &report.findings {
        out.push_str(&format!(
            "  {} {:<18} {}{}\n      {}\n",
            style("✗").red(),
            f.kind.name(),
            f.image
                .as_deref()
                .map(|i| format!("{i}  "))
                .unwrap_or_default(),
            f.key,
            f.detail
        ));
    }
    let counts: Vec<String> = report
        .summary
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    out.push_str(&format!("\nDrift: {}.\n", counts.join(", ")));
    out
}

/// A hidden marker by which the nightly workflow finds its issue.
pub const MARKER: &str = "<!-- labctl-drift -->";

pub fn markdown(report: &Report) -> String {
    let mut out = format!("{MARKER}\n### labctl drift: ");
    if !report.has_drift() {
        out.push_str(&format!("no drift ({} records)\n", report.records));
        return out;
    }
    let counts: Vec<String> = report
        .summary
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    out.push_str(&format!(
        "{}\n\n`{}` against `{}`",
        counts.join(", "),
        report.manifest,
        report.store
    ));
    if report.deep {
        out.push_str(", objects re-hashed");
    }
    if report.sources_checked {
        out.push_str(", sources probed");
    }
    out.push_str("\n\n| finding | image | key | detail |\n|---|---|---|---|\n");
    for f in &report.findings {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} |\n",
            f.kind.name(),
            f.image.as_deref().map(cell).unwrap_or_default(),
            cell(&f.key),
            cell(&f.detail)
        ));
        if out.len() > 60_000 {
            out.push_str("\n_(truncated: run `labctl drift` for the full list)_\n");
            break;
        }
    }
    out
}

//! Desired × actual → actions with reasons. No I/O: everything it needs is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::checksum::Checksum;
use crate::plan::fields::{diff, FieldChange};
use crate::plan::*;
use crate::spec::{NormalizedSpec, SpecSource};
use crate::state::record::{Record, StateRecord};
use crate::state::{ActualRecord, ActualState, ObjectState};
use crate::store::{META_CHECKSUM, META_FINGERPRINT};

/// One image as the manifest wants it, with what could be read from disk (template hashes)
/// already folded into its spec.
#[derive(Debug, Clone)]
pub struct Desired {
    pub spec: NormalizedSpec,
    /// The download's checksum, when the manifest names a checksum list and it was looked up.
    pub listed: Option<Checksum>,
    /// The armored OpenPGP key that signs the checksum list, if any.
    pub pgp_key: Option<String>,
}

impl Desired {
    pub fn new(spec: NormalizedSpec) -> Desired {
        Desired {
            spec,
            listed: None,
            pgp_key: None,
        }
    }

    /// The checksum of the downloaded bytes: pinned in the manifest, or looked up in a list.
    pub fn source_checksum(&self) -> Option<Checksum> {
        match &self.spec.source {
            SpecSource::Http { checksum, .. } => {
                checksum.parse().ok().or_else(|| self.listed.clone())
            }
            SpecSource::Packer { .. } => None,
        }
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    fn object_key(&self) -> String {
        crate::manifest::object_key(&self.spec.destination)
    }

    fn record_key(&self) -> String {
        crate::manifest::record_key(&self.spec.destination)
    }

    /// Whether the published bytes are known before apply (`validation.expected` or a pinned
    /// source checksum).
    fn published(&self) -> Option<&Checksum> {
        match &self.spec.source {
            SpecSource::Http {
                decompress: None, ..
            } if self.spec.expected.is_none() => self.listed.as_ref(),
            _ => self.spec.expected.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Turn orphans into deletes.
    pub prune: bool,
    /// Images to replace even if nothing changed (`--replace NAME`).
    pub replace: Vec<String>,
}

/// Context that is copied into the plan but does not influence the actions.
#[derive(Debug, Clone)]
pub struct PlanContext {
    pub manifest: String,
    pub manifest_digest: Checksum,
    pub store: String,
}

/// What an image's dependents see of it after apply.
#[derive(Debug, Clone)]
struct Outcome {
    action: Action,
    checksum: Option<Checksum>,
}

/// Computes the plan. `desired` must be in dependency order (dependencies first); the plan's
/// changes keep that order.
pub fn compute(
    desired: &[Desired],
    actual: &ActualState,
    options: &PlanOptions,
    context: PlanContext,
) -> Plan {
    let mut outcomes: HashMap<&str, Outcome> = HashMap::new();
    let mut changes = Vec::new();
    for d in desired {
        let actual_record = actual.records.get(&d.record_key());
        let change = plan_image(d, actual_record, &outcomes, options);
        let checksum = match change.action {
            Action::Create | Action::Replace => d.published().cloned(),
            _ => change.before.as_ref().and_then(|b| b.checksum.clone()),
        };
        outcomes.insert(
            d.name(),
            Outcome {
                action: change.action,
                checksum,
            },
        );
        changes.push(change);
    }

    let wanted: BTreeSet<String> = desired.iter().map(|d| d.record_key()).collect();
    let mut orphans = Vec::new();
    for (record_key, r) in &actual.records {
        if wanted.contains(record_key) {
            continue;
        }
        let name = match &r.record {
            Ok(rec) => rec.name().map(str::to_string),
            Err(_) => None,
        }
        .unwrap_or_else(|| {
            crate::manifest::destination_of_record_key(record_key)
                .unwrap_or(record_key)
                .to_string()
        });
        let moved_to = desired
            .iter()
            .find(|d| d.name() == name)
            .map(|d| d.spec.destination.clone());
        let reason = match moved_to {
            Some(dest) => format!("image now publishes to images/{dest}"),
            None => "image left the manifest".to_string(),
        };
        let protected = matches!(&r.record, Ok(rec) if rec.protect());
        if options.prune && !protected {
            changes.push(Change {
                name,
                key: r.object_key.clone(),
                record_key: record_key.clone(),
                action: Action::Delete,
                reasons: vec![reason],
                depends_on: Vec::new(),
                before: Some(before_of(r)),
                after: None,
                field_changes: Vec::new(),
            });
        } else {
            orphans.push(Orphan {
                name,
                key: r.object_key.clone(),
                record_key: record_key.clone(),
                protected,
                reason: if protected && options.prune {
                    format!("{reason}; kept because the record is protected")
                } else {
                    reason
                },
            });
        }
    }

    let mut summary = Summary::default();
    for c in &changes {
        match c.action {
            Action::Create => summary.create += 1,
            Action::Replace => summary.replace += 1,
            Action::Update => summary.update += 1,
            Action::Delete => summary.delete += 1,
            Action::NoOp => summary.no_op += 1,
        }
    }
    summary.orphaned = orphans.len();

    Plan {
        format_version: FORMAT_VERSION.to_string(),
        labctl_version: env!("CARGO_PKG_VERSION").to_string(),
        manifest: context.manifest,
        manifest_digest: context.manifest_digest,
        store: context.store,
        refreshed: actual.refreshed,
        prune: options.prune,
        summary,
        changes,
        orphans,
        prior_state: actual
            .records
            .iter()
            .map(|(k, r)| (k.clone(), r.etag.clone()))
            .collect(),
    }
}

fn before_of(r: &ActualRecord) -> Before {
    match &r.record {
        Ok(Record::Current(rec)) => Before {
            checksum: Some(rec.checksum.clone()),
            size: Some(rec.size),
            fingerprint: Some(rec.fingerprint.clone()),
            uploaded_at: Some(rec.uploaded_at.clone()),
            legacy: false,
            spec: Some(rec.spec.to_json()),
        },
        Ok(Record::Legacy(l)) => Before {
            checksum: Some(l.checksum.clone()),
            size: l.size,
            fingerprint: None,
            uploaded_at: l.uploaded_at.clone(),
            legacy: true,
            spec: None,
        },
        Err(_) => Before {
            checksum: None,
            size: None,
            fingerprint: None,
            uploaded_at: None,
            legacy: false,
            spec: None,
        },
    }
}

/// Why each field difference matters, and whether it can change the published bytes.
fn field_reason(path: &str) -> (&'static str, bool) {
    let content = true;
    match path {
        "name" => ("name changed", !content),
        "protect" => ("protect changed", !content),
        "expected" => ("checksum changed", content),
        "destination" => ("destination changed", content),
        "dependsOn" => ("dependencies changed", content),
        "source.type" => ("source type changed", content),
        "source.url" => ("source url changed", content),
        "source.checksum" => ("source checksum changed", content),
        "source.decompress" => ("decompression changed", content),
        "source.templateHash" => ("template changed", content),
        "source.path" => ("template path changed", content),
        "source.artifact" => ("artifact changed", content),
        p if p.starts_with("source.variables.") => ("variables changed", content),
        _ => ("spec changed", content),
    }
}

fn plan_image(
    d: &Desired,
    actual: Option<&ActualRecord>,
    outcomes: &HashMap<&str, Outcome>,
    options: &PlanOptions,
) -> Change {
    let deps_after: BTreeMap<String, Option<Checksum>> = d
        .spec
        .depends_on
        .iter()
        .map(|n| {
            (
                n.clone(),
                outcomes.get(n.as_str()).and_then(|o| o.checksum.clone()),
            )
        })
        .collect();
    let fingerprint = deps_after
        .iter()
        .map(|(k, v)| v.clone().map(|c| (k.clone(), c)))
        .collect::<Option<BTreeMap<_, _>>>()
        .map(|deps| d.spec.fingerprint(&deps));
    let mut unknown = Vec::new();
    if d.published().is_none() {
        unknown.extend(["checksum".to_string(), "size".to_string()]);
    }
    if fingerprint.is_none() {
        unknown.push("fingerprint".to_string());
    }
    let after = After {
        checksum: d.published().cloned(),
        source_checksum: d.source_checksum(),
        fingerprint,
        spec: d.spec.to_json(),
        dependencies: deps_after,
        unknown,
    };
    let mut change = Change {
        name: d.name().to_string(),
        key: d.object_key(),
        record_key: d.record_key(),
        action: Action::NoOp,
        reasons: Vec::new(),
        depends_on: d.spec.depends_on.clone(),
        before: actual.map(before_of),
        after: Some(after),
        field_changes: Vec::new(),
    };

    let Some(actual) = actual else {
        change.action = Action::Create;
        change.reasons.push("not in store".into());
        return change;
    };

    let mut content: Vec<String> = Vec::new();
    let mut metadata: Vec<String> = Vec::new();
    if options.replace.iter().any(|n| n == d.name()) {
        content.push("replacement requested".into());
    }

    match &actual.record {
        Err(why) => content.push(format!("state record unreadable: {why}")),
        Ok(Record::Legacy(legacy)) => {
            match d.published() {
                Some(p) if *p == legacy.checksum => metadata.push(
                    "record written by an earlier tool; checksum matches, adopting without re-upload"
                        .into(),
                ),
                Some(_) => content.push("checksum changed".into()),
                None => content.push(
                    "record written by an earlier tool cannot be matched to this spec".into(),
                ),
            }
            if let Some(drift) = object_drift(&actual.object, legacy.size, None) {
                content.push(drift);
            }
        }
        Ok(Record::Current(rec)) => {
            compare_current(
                d,
                rec,
                outcomes,
                &mut change.field_changes,
                &mut content,
                &mut metadata,
            );
            if let Some(drift) = object_drift(&actual.object, Some(rec.size), Some(rec)) {
                content.push(drift);
            }
        }
    }

    dedup(&mut content);
    dedup(&mut metadata);
    if !content.is_empty() {
        change.action = Action::Replace;
        change.reasons = content;
        change.reasons.extend(metadata);
    } else if !metadata.is_empty() {
        change.action = Action::Update;
        change.reasons = metadata;
    }
    change
}

fn compare_current(
    d: &Desired,
    rec: &StateRecord,
    outcomes: &HashMap<&str, Outcome>,
    field_changes: &mut Vec<FieldChange>,
    content: &mut Vec<String>,
    metadata: &mut Vec<String>,
) {
    *field_changes = diff(&rec.spec.to_json(), &d.spec.to_json());
    // When the published checksum is pinned, the bytes change exactly when it differs from the
    // stored one; every other difference only touches the record. When it is not (a build, a
    // checksum looked up in a list), any change to what produces the bytes means rebuilding them.
    let pinned = d.published();
    if let Some(p) = pinned {
        if *p != rec.checksum {
            content.push("checksum changed".into());
        }
    }
    for fc in field_changes.iter() {
        let (reason, affects_content) = field_reason(&fc.path);
        match pinned {
            None if affects_content => content.push(reason.into()),
            // Decided above by comparing the checksums themselves.
            Some(_) if reason == "checksum changed" => {}
            _ => metadata.push(reason.into()),
        }
    }

    for dep in &d.spec.depends_on {
        let Some(outcome) = outcomes.get(dep.as_str()) else {
            continue;
        };
        let recorded = rec.dependencies.get(dep);
        let will_change = matches!(outcome.action, Action::Create | Action::Replace);
        let reason = match (&outcome.checksum, recorded) {
            (Some(now), Some(then)) if now == then => None,
            (Some(_), Some(_)) if !will_change => Some(format!("dependency {dep} changed")),
            (_, None) if !will_change => Some(format!("dependency {dep} added")),
            _ => Some(format!(
                "dependency {dep} will be {}",
                if outcome.action == Action::Create {
                    "created"
                } else {
                    "replaced"
                }
            )),
        };
        if let Some(reason) = reason {
            // A build consumes its dependencies, so their new bytes mean new output; a pinned
            // download does not, and only its record needs the new dependency checksum.
            if pinned.is_none() {
                content.push(reason);
            } else {
                metadata.push(reason);
            }
        }
    }
}

/// Compares the object found by HEAD with what the record says was published.
fn object_drift(
    object: &ObjectState,
    size: Option<u64>,
    rec: Option<&StateRecord>,
) -> Option<String> {
    match object {
        ObjectState::NotChecked => None,
        ObjectState::Missing => Some("object missing from store".into()),
        ObjectState::Present(meta) => {
            let size_differs = size.is_some_and(|s| s != meta.size);
            let metadata_differs = rec.is_some_and(|r| {
                meta.user_metadata.get(META_CHECKSUM) != Some(&r.checksum.to_string())
                    || meta.user_metadata.get(META_FINGERPRINT) != Some(&r.fingerprint.to_string())
            });
            (size_differs || metadata_differs).then(|| "object modified outside labctl".into())
        }
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    v.retain(|r| seen.insert(r.clone()));
}

#[cfg(test)]
mod tests;

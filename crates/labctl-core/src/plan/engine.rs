//! Desired × actual → actions with reasons. No I/O: everything it needs is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::checksum::Checksum;
use crate::plan::fields::{diff, FieldChange};
use crate::plan::*;
use crate::spec::{NormalizedSpec, SpecSource};
use crate::state::record::{Record, StateRecord};
use crate::state::{ActualRecord, ActualState, ObjectState, Unreadable};

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
                checksum.digest().cloned().or_else(|| self.listed.clone())
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
    pub fn published(&self) -> Option<&Checksum> {
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
    /// `spec.index.signing.minisign.publicKey`: the consumer index is signed with its key.
    pub index_public_key: Option<String>,
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
/// changes keep that order. A store holding a record written by a newer labctl has no plan:
/// this labctl cannot know what that record promises.
pub fn compute(
    desired: &[Desired],
    actual: &ActualState,
    options: &PlanOptions,
    context: PlanContext,
) -> Result<Plan, PlanError> {
    let newer = actual.newer_records();
    if !newer.is_empty() {
        return Err(PlanError::NewerRecords(
            newer.into_iter().map(str::to_string).collect(),
        ));
    }
    let mut outcomes: HashMap<&str, Outcome> = HashMap::new();
    // Sized once: a change is some KiB, and doubling would leave up to half of tens of
    // thousands of them unused.
    let mut changes = Vec::with_capacity(desired.len());
    for d in desired {
        let actual_record = actual.records.get(&d.record_key());
        let unrecorded = actual.unrecorded.get(&d.object_key());
        let change = plan_image(d, actual_record, unrecorded, &outcomes, options);
        let checksum = match (&change.adopt, change.action) {
            (Some(adopt), _) => Some(adopt.checksum.clone()),
            (None, Action::Create | Action::Replace) => d.published().cloned(),
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

    let (deletes, orphans) = plan_unwanted(desired, actual, options);
    changes.reserve_exact(deletes.len());
    changes.extend(deletes);

    let summary = crate::plan::check::counted(&changes, &orphans);
    let index = index_plan(&changes, actual, options);

    Ok(Plan {
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
        index,
    })
}

/// Records no image of the manifest claims: deleted with `--prune` (unless protected or
/// unreadable), kept as orphans otherwise.
fn plan_unwanted(
    desired: &[Desired],
    actual: &ActualState,
    options: &PlanOptions,
) -> (Vec<Change>, Vec<Orphan>) {
    let wanted: BTreeSet<String> = desired.iter().map(|d| d.record_key()).collect();
    let mut changes = Vec::new();
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
            Some(dest) => Reason::MovedTo(dest),
            None => Reason::LeftManifest,
        };
        let protected = matches!(&r.record, Ok(rec) if rec.protect());
        // What cannot be read cannot be known to be unwanted: it may be the only trace of an
        // image someone still boots. Only a manifest that claims the key overwrites it.
        let corrupt = r.record.is_err();
        if options.prune && !protected && !corrupt {
            changes.push(delete_of(name, record_key, r, reason));
        } else {
            let why = match &r.record {
                Err(why) => format!(
                    "record {why}; kept{}: labctl never deletes what it cannot read",
                    if options.prune {
                        " despite --prune"
                    } else {
                        ""
                    }
                ),
                Ok(_) if protected && options.prune => {
                    format!("{reason}; kept because the record is protected")
                }
                Ok(_) => reason.to_string(),
            };
            orphans.push(Orphan {
                name,
                key: r.object_key.clone(),
                record_key: record_key.clone(),
                protected,
                reason: why,
            });
        }
    }
    (changes, orphans)
}

/// The delete of an unwanted record's object, kept versions and record (`--prune`).
fn delete_of(name: String, record_key: &str, r: &ActualRecord, reason: Reason) -> Change {
    let before = before_of(r);
    let mut reasons = vec![reason];
    let history = (!before.history.is_empty()).then(|| {
        reasons.push(Reason::HistoryDeletedWith(before.history.len()));
        HistoryPlan {
            trim: before.history.iter().map(|h| h.key.clone()).collect(),
            ..Default::default()
        }
    });
    Change {
        name,
        key: r.object_key.clone(),
        record_key: record_key.to_string(),
        action: Action::Delete,
        reasons,
        depends_on: Vec::new(),
        before: Some(Box::new(before)),
        after: None,
        field_changes: Vec::new(),
        restore: None,
        history: history.map(Box::new),
        adopt: None,
    }
}

/// The keys of the consumer index, in the order apply writes them: the JSON index first, then
/// the checksum list, then its signature, so that a reader that finds a signature finds the
/// list it signs already in place.
pub fn index_files(signed: bool) -> Vec<String> {
    let mut files = vec![
        crate::consumer_index::JSON_KEY.to_string(),
        crate::consumer_index::SUMS_KEY.to_string(),
    ];
    if signed {
        files.push(crate::consumer_index::SIGNATURE_KEY.to_string());
    }
    files
}

/// Whether apply rewrites the consumer index, and why. It does after any image change; with
/// none, when the index in the store is missing, out of date or signed otherwise than the
/// manifest says, or when objects must be read back for their sha256.
fn index_plan(changes: &[Change], actual: &ActualState, options: &PlanOptions) -> IndexPlan {
    let signed = options.index_public_key.is_some();
    let changing: BTreeSet<&str> = changes
        .iter()
        .filter(|c| matches!(c.action, Action::Create | Action::Replace | Action::Delete))
        .map(|c| c.record_key.as_str())
        .collect();
    let (implied, lacking) = crate::consumer_index::implied(&actual.records);
    let backfill: Vec<Backfill> = lacking
        .iter()
        .filter(|(record_key, _)| !changing.contains(record_key.as_str()))
        .map(|(record_key, name)| Backfill {
            name: name.clone(),
            key: actual.records[record_key].object_key.clone(),
            record_key: record_key.clone(),
        })
        .collect();

    let mut reasons = Vec::new();
    let changed = changes.iter().filter(|c| c.action != Action::NoOp).count();
    if changed > 0 {
        reasons.push(format!(
            "{changed} image{} change{}",
            if changed == 1 { "" } else { "s" },
            if changed == 1 { "s" } else { "" }
        ));
    } else {
        reasons.extend(crate::consumer_index::staleness(
            implied,
            &actual.index,
            options.index_public_key.as_deref(),
        ));
    }
    for b in &backfill {
        reasons.push(format!(
            "the sha256 of {} is computed by reading {} back once (its record has only a {} checksum)",
            b.name,
            b.key,
            actual.records[&b.record_key]
                .record
                .as_ref()
                .map(|r| r.checksum().algorithm.name())
                .unwrap_or("different")
        ));
    }
    dedup(&mut reasons);
    let write = !reasons.is_empty();
    IndexPlan {
        action: if write {
            IndexAction::Write
        } else {
            IndexAction::NoOp
        },
        reasons,
        files: if write {
            index_files(signed)
        } else {
            Vec::new()
        },
        deletes: if write && !signed && actual.index.signature.is_some() {
            vec![crate::consumer_index::SIGNATURE_KEY.to_string()]
        } else {
            Vec::new()
        },
        backfill,
        signed,
    }
}

fn before_of(r: &ActualRecord) -> Before {
    match &r.record {
        Ok(record @ Record::Current(rec)) => Before {
            checksum: Some(rec.checksum.clone()),
            sha256: record.sha256(),
            size: Some(rec.size),
            fingerprint: Some(rec.fingerprint.clone()),
            uploaded_at: Some(rec.uploaded_at.clone()),
            legacy: false,
            spec: Some(rec.spec.clone()),
            history: rec.history.clone(),
        },
        Ok(record @ Record::Legacy(l)) => Before {
            checksum: Some(l.checksum.clone()),
            sha256: record.sha256(),
            size: l.size,
            fingerprint: None,
            uploaded_at: l.uploaded_at.clone(),
            legacy: true,
            spec: None,
            history: Vec::new(),
        },
        Err(_) => Before {
            checksum: None,
            sha256: None,
            size: None,
            fingerprint: None,
            uploaded_at: None,
            legacy: false,
            spec: None,
            history: Vec::new(),
        },
    }
}

/// What the store will hold after apply, as far as the plan knows it: the published checksum
/// when pinned, the fingerprint when every dependency's checksum is known.
fn after_of(d: &Desired, outcomes: &HashMap<&str, Outcome>) -> After {
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
        unknown.extend([KnownAfterApply::Checksum, KnownAfterApply::Size]);
    }
    if fingerprint.is_none() {
        unknown.push(KnownAfterApply::Fingerprint);
    }
    After {
        checksum: d.published().cloned(),
        source_checksum: d.source_checksum(),
        fingerprint,
        spec: d.spec.clone(),
        pgp_key: d.pgp_key.clone(),
        dependencies: deps_after,
        unknown,
    }
}

fn plan_image(
    d: &Desired,
    actual: Option<&ActualRecord>,
    unrecorded: Option<&crate::object::ObjectMeta>,
    outcomes: &HashMap<&str, Outcome>,
    options: &PlanOptions,
) -> Change {
    let after = after_of(d, outcomes);
    let mut change = Change {
        name: d.name().to_string(),
        key: d.object_key(),
        record_key: d.record_key(),
        action: Action::NoOp,
        reasons: Vec::new(),
        depends_on: d.spec.depends_on.clone(),
        before: actual.map(|r| Box::new(before_of(r))),
        after: Some(Box::new(after)),
        field_changes: Vec::new(),
        restore: None,
        history: None,
        adopt: None,
    };

    let Some(actual) = actual else {
        plan_unrecorded(&mut change, unrecorded);
        return change;
    };

    let mut content: Vec<Reason> = Vec::new();
    let mut metadata: Vec<Reason> = Vec::new();
    if options.replace.iter().any(|n| n == d.name()) {
        content.push(Reason::ReplacementRequested);
    }

    match &actual.record {
        Err(why @ Unreadable::Corrupt(_)) => content.push(Reason::RecordCorrupt(why.to_string())),
        Err(Unreadable::Newer { .. }) => unreachable!("compute refuses newer records first"),
        Ok(Record::Legacy(legacy)) => {
            match d.published() {
                Some(p) if *p == legacy.checksum => metadata.push(Reason::LegacyChecksumMatches),
                Some(_) => content.push(Reason::Field(SpecField::Checksum)),
                None => content.push(Reason::LegacyUnmatched),
            }
            if let Some(drift) = object_drift(&actual.object, actual.record.as_ref().ok()) {
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
            if let Some(drift) = object_drift(&actual.object, actual.record.as_ref().ok()) {
                content.push(drift);
            }
        }
    }

    dedup(&mut content);
    dedup(&mut metadata);
    if adopt_killed_replace(&mut change, &actual.object, &content, &metadata) {
        plan_history(d, actual, &mut change);
        return change;
    }
    if !content.is_empty() {
        change.action = Action::Replace;
        change.reasons = content;
        change.reasons.extend(metadata);
    } else if !metadata.is_empty() {
        change.action = Action::Update;
        change.reasons = metadata;
    }
    plan_history(d, actual, &mut change);
    change
}

/// A replace killed after its bytes became visible, before it wrote their record: the object
/// no longer matches its record, but its metadata names exactly what this change wants. It is
/// adopted (read back, not downloaded again) unless a replace was asked for by name.
fn adopt_killed_replace(
    change: &mut Change,
    object: &ObjectState,
    content: &[Reason],
    metadata: &[Reason],
) -> bool {
    let ObjectState::Present(meta) = object else {
        return false;
    };
    if !content.contains(&Reason::ObjectModified) || content.contains(&Reason::ReplacementRequested)
    {
        return false;
    }
    let Some(adopt) = adoptable(change, meta) else {
        return false;
    };
    // A replace writes other bytes, or the same bytes from other inputs. An object that still
    // claims the record's own checksum and fingerprint but differs from it was changed by
    // someone else, keeping the labels: replaced, never trusted by its labels.
    let before = change.before.as_ref();
    let same_labels = before.is_some_and(|b| {
        b.checksum.as_ref() == Some(&adopt.checksum)
            && b.fingerprint.as_ref()
                == meta
                    .user_metadata
                    .get(crate::object::META_FINGERPRINT)
                    .and_then(|f| f.parse().ok())
                    .as_ref()
    });
    if same_labels {
        return false;
    }
    adopt_into(change, adopt);
    change.reasons.extend(metadata.iter().cloned());
    true
}

fn adopt_into(change: &mut Change, adopt: Adopt) {
    change.action = Action::Update;
    change.reasons.push(Reason::Adopt);
    if let Some(after) = change.after.as_mut() {
        after.checksum = Some(adopt.checksum.clone());
        after
            .unknown
            .retain(|u| !matches!(u, KnownAfterApply::Checksum | KnownAfterApply::Size));
    }
    change.adopt = Some(Box::new(adopt));
}

/// An image with no record: created, or adopted when an interrupted apply published exactly
/// this spec at its key.
fn plan_unrecorded(change: &mut Change, unrecorded: Option<&crate::object::ObjectMeta>) {
    match unrecorded {
        Some(meta) => match adoptable(change, meta) {
            Some(adopt) => adopt_into(change, adopt),
            None => {
                change.action = Action::Create;
                change.reasons.push(Reason::UnrecordedObjectOverwritten);
            }
        },
        None => {
            change.action = Action::Create;
            change.reasons.push(Reason::NotInStore);
        }
    }
}

/// An object without a record is adopted when its labctl metadata names exactly the bytes and
/// the fingerprint this change wants: only a labctl run publishing this very spec, killed before
/// it wrote the record, leaves that behind (uploads complete only after verification).
fn adoptable(change: &Change, meta: &crate::object::ObjectMeta) -> Option<Adopt> {
    use crate::object::{META_CHECKSUM, META_FINGERPRINT};
    let after = change.after.as_ref()?;
    let fingerprint = after.fingerprint.as_ref()?;
    if meta.user_metadata.get(META_FINGERPRINT)? != &fingerprint.to_string() {
        return None;
    }
    let claimed: Checksum = meta.user_metadata.get(META_CHECKSUM)?.parse().ok()?;
    // Known before apply (pinned, listed): it must be those bytes. Unknown (a build): the
    // fingerprint already says it was built from this spec and these dependencies.
    if after.checksum.as_ref().is_some_and(|c| *c != claimed) {
        return None;
    }
    Some(Adopt {
        etag: meta.etag.clone(),
        size: meta.size,
        checksum: claimed,
    })
}

/// Restores from and keeps into the history: a replace whose wanted bytes are kept is a copy
/// back; a replace keeps the current bytes first when the image has `history: N`; every change
/// trims to the N newest.
fn plan_history(d: &Desired, actual: &ActualRecord, change: &mut Change) {
    let Ok(record) = &actual.record else { return };
    let kept = record.history();
    let limit = d.spec.history;
    if change.action == Action::Replace {
        let wanted = d.published();
        // Matched on the declared checksum, so the restored record says exactly what the
        // manifest asks for.
        let restore = wanted.and_then(|w| kept.iter().find(|h| h.checksum == *w));
        if let Some(entry) = restore {
            change.reasons.push(Reason::RestoreFromHistory);
            change.restore = Some(Box::new(entry.clone()));
        }
    }
    // Bytes someone else wrote are not what the record describes: keeping them under the
    // record's checksum would be a lie.
    let object_trusted = !change.reasons.iter().any(Reason::is_object_drift);
    // Replacing bytes with the same bytes (`--replace`, drift repair) keeps nothing.
    let bytes_change = d.published().is_none_or(|p| p != record.checksum());
    let current_sha256 = record.sha256();
    // Adopting a killed replace: that run kept the recorded bytes before it overwrote them, at
    // the key their sha256 names; apply lists the copy if it is there.
    let adopted_replace = change
        .adopt
        .as_ref()
        .is_some_and(|a| a.checksum != *record.checksum());
    let keep_current = if change.adopt.is_some() {
        adopted_replace && limit > 0 && current_sha256.is_some()
    } else {
        change.action == Action::Replace && limit > 0 && object_trusted && bytes_change
    };
    let keep_key = keep_current
        .then(|| {
            current_sha256
                .as_ref()
                .map(|s| crate::manifest::history_key(&d.spec.destination, s))
        })
        .flatten();
    if !matches!(change.action, Action::Replace | Action::Update) {
        return;
    }
    // Newest first: the current bytes (if kept), then what was kept before, without the bytes
    // that become current again and without a second copy of the same bytes.
    // Adopting a killed restore: the kept bytes it copied back are current again.
    let becomes_current = change
        .restore
        .as_ref()
        .map(|r| r.sha256.clone())
        .or_else(|| {
            let adopted = &change.adopt.as_ref()?.checksum;
            kept.iter()
                .find(|h| h.checksum == *adopted)
                .map(|h| h.sha256.clone())
        });
    let mut after: Vec<String> = Vec::new();
    if let Some(k) = &keep_key {
        after.push(k.clone());
    }
    let mut trim = Vec::new();
    for h in kept {
        let duplicate = after.contains(&h.key);
        let restored = becomes_current.as_ref() == Some(&h.sha256);
        if duplicate {
            continue;
        }
        if restored
            || after.len() + usize::from(keep_current && keep_key.is_none()) >= limit as usize
        {
            trim.push(h.key.clone());
        } else {
            after.push(h.key.clone());
        }
    }
    let plan = HistoryPlan {
        keep_current,
        keep_key,
        trim,
        kept: after.len() + usize::from(keep_current && current_sha256.is_none()),
        limit,
    };
    if !plan.is_empty() {
        change.history = Some(Box::new(plan));
    }
}

fn compare_current(
    d: &Desired,
    rec: &StateRecord,
    outcomes: &HashMap<&str, Outcome>,
    field_changes: &mut Vec<FieldChange>,
    content: &mut Vec<Reason>,
    metadata: &mut Vec<Reason>,
) {
    *field_changes = diff(&rec.spec.to_json(), &d.spec.to_json());
    // When the published checksum is pinned, the bytes change exactly when it differs from the
    // stored one; every other difference only touches the record. When it is not (a build, a
    // checksum looked up in a list), any change to what produces the bytes means rebuilding them.
    let pinned = d.published();
    if let Some(p) = pinned {
        if *p != rec.checksum {
            content.push(Reason::Field(SpecField::Checksum));
        }
    }
    for fc in field_changes.iter() {
        let field = SpecField::of_path(&fc.path);
        match pinned {
            None if field.affects_content() => content.push(Reason::Field(field)),
            // Decided above by comparing the checksums themselves.
            Some(_) if field == SpecField::Checksum => {}
            _ => metadata.push(Reason::Field(field)),
        }
    }

    for dep in &d.spec.depends_on {
        let Some(outcome) = outcomes.get(dep.as_str()) else {
            continue;
        };
        let recorded = rec.dependencies.get(dep);
        let will_change = matches!(outcome.action, Action::Create | Action::Replace);
        let how = match (&outcome.checksum, recorded) {
            (Some(now), Some(then)) if now == then => None,
            (Some(_), Some(_)) if !will_change => Some(DependencyMove::Changed),
            (_, None) if !will_change => Some(DependencyMove::Added),
            _ if outcome.action == Action::Create => Some(DependencyMove::WillBeCreated),
            _ => Some(DependencyMove::WillBeReplaced),
        };
        let reason = how.map(|how| Reason::Dependency {
            name: dep.clone(),
            how,
        });
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
fn object_drift(object: &ObjectState, record: Option<&Record>) -> Option<Reason> {
    match object {
        ObjectState::NotChecked => None,
        ObjectState::Missing => Some(Reason::ObjectMissing),
        ObjectState::Present(meta) => record
            .is_some_and(|r| !r.differences_from(meta).is_empty())
            .then_some(Reason::ObjectModified),
    }
}

/// Keeps the first of each reason, in order.
fn dedup<T: Ord + Clone>(v: &mut Vec<T>) {
    let mut seen = BTreeSet::new();
    v.retain(|r| seen.insert(r.clone()));
}

#[cfg(test)]
mod tests;

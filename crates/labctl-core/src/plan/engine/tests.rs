//! One test per action and reason, on hand-made desired and actual states.
//!
//! Longer than other files on purpose: it is the planner's exhaustive table, read top to
//! bottom against `Reason`'s variants, and every case shares the builders at its top.

use std::collections::BTreeMap;

use super::*;
use crate::manifest::Compression;
use crate::object::{ObjectMeta, META_CHECKSUM, META_FINGERPRINT};
use crate::spec::{SpecChecksum, SpecSource};
use crate::state::record::{LegacyRecord, RecordSource, SCHEMA_VERSION};

fn sum(seed: &str) -> Checksum {
    Checksum::sha256(seed.as_bytes())
}

fn http(name: &str, content: &str) -> NormalizedSpec {
    NormalizedSpec {
        name: name.into(),
        destination: format!("{name}/{name}.img"),
        source: SpecSource::Http {
            url: format!("https://vendor.example/{name}.img"),
            checksum: SpecChecksum::Digest(sum(content)),
            decompress: None,
            signature: None,
        },
        expected: Some(sum(content)),
        depends_on: vec![],
        protect: false,
        history: 0,
    }
}

fn packer(name: &str, deps: &[&str], template: &str) -> NormalizedSpec {
    NormalizedSpec {
        name: name.into(),
        destination: format!("{name}/{name}.raw"),
        source: SpecSource::Packer {
            path: format!("packer/{name}"),
            variables: BTreeMap::from([(
                "iso_url".to_string(),
                "{{ images.iso.url }}".to_string(),
            )]),
            artifact: "output/out.raw".into(),
            template_hash: sum(template),
        },
        expected: None,
        depends_on: deps.iter().map(|s| s.to_string()).collect(),
        protect: false,
        history: 0,
    }
}

/// The record apply writes after publishing `spec` with output `content`.
fn record(spec: &NormalizedSpec, content: &str, deps: &[(&str, &str)]) -> StateRecord {
    let dependencies: BTreeMap<String, Checksum> =
        deps.iter().map(|(n, c)| (n.to_string(), sum(c))).collect();
    StateRecord {
        schema_version: SCHEMA_VERSION,
        name: spec.name.clone(),
        key: crate::manifest::object_key(&spec.destination),
        checksum: sum(content),
        sha256: Some(sum(content)),
        size: content.len() as u64,
        fingerprint: spec.fingerprint(&dependencies),
        object_etag: None,
        spec: spec.clone(),
        source: RecordSource {
            kind: "http".into(),
            ..Default::default()
        },
        dependencies,
        protect: spec.protect,
        uploaded_at: "2026-11-01T00:00:00Z".into(),
        labctl_version: "0.1.0".into(),
        ci_run: None,
        history: Vec::new(),
    }
}

/// The object apply leaves beside `rec`.
fn object_of(rec: &StateRecord) -> ObjectState {
    ObjectState::Present(ObjectMeta {
        key: rec.key.clone(),
        size: rec.size,
        etag: "\"e\"".into(),
        listed_modified: None,
        user_metadata: BTreeMap::from([
            (META_CHECKSUM.to_string(), rec.checksum.to_string()),
            (META_FINGERPRINT.to_string(), rec.fingerprint.to_string()),
        ]),
    })
}

fn actual_entry(
    destination: &str,
    record: Result<Record, Unreadable>,
    object: ObjectState,
) -> ActualRecord {
    ActualRecord {
        record_key: crate::manifest::record_key(destination),
        object_key: crate::manifest::object_key(destination),
        etag: format!("\"etag-{destination}\""),
        record,
        object,
        listed: None,
        object_listed: None,
    }
}

fn state(records: Vec<ActualRecord>) -> ActualState {
    ActualState {
        records: records
            .into_iter()
            .map(|r| (r.record_key.clone(), r))
            .collect(),
        refreshed: true,
        ..Default::default()
    }
}

/// A store holding exactly `rec` and its object.
fn synced(rec: &StateRecord) -> ActualRecord {
    actual_entry(
        &rec.spec.destination,
        Ok(Record::Current(Box::new(rec.clone()))),
        object_of(rec),
    )
}

fn plan(desired: &[NormalizedSpec], actual: &ActualState, options: PlanOptions) -> Plan {
    let desired: Vec<Desired> = desired.iter().cloned().map(Desired::new).collect();
    compute(
        &desired,
        actual,
        &options,
        PlanContext {
            manifest: "images.yaml".into(),
            manifest_digest: sum("manifest"),
            store: "file:///tmp/store".into(),
        },
    )
    .expect("no newer records in these states")
}

fn action_of(p: &Plan, name: &str) -> (Action, Vec<Reason>) {
    let c = p
        .change(name)
        .unwrap_or_else(|| panic!("no change for {name}"));
    (c.action, c.reasons.clone())
}

fn reasons(v: &[&str]) -> Vec<Reason> {
    v.iter().map(|s| Reason::parse(s)).collect()
}

// ---- create ----------------------------------------------------------------------------------

#[test]
fn create_when_not_in_store() {
    let p = plan(
        &[http("talos", "v1")],
        &state(vec![]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "talos"),
        (Action::Create, reasons(&["not in store"]))
    );
    let after = p.changes[0].after.as_ref().unwrap();
    assert_eq!(after.checksum, Some(sum("v1")));
    assert!(after.unknown.is_empty());
    assert!(p.changes[0].before.is_none());
}

#[test]
fn create_packer_output_is_known_after_apply() {
    let p = plan(
        &[packer("gw", &[], "t1")],
        &state(vec![]),
        PlanOptions::default(),
    );
    let after = p.changes[0].after.as_ref().unwrap();
    assert_eq!(p.changes[0].action, Action::Create);
    assert_eq!(after.checksum, None);
    assert_eq!(after.unknown, ["checksum", "size"]);
}

// ---- no-op -----------------------------------------------------------------------------------

#[test]
fn no_op_when_in_sync() {
    let iso = http("iso", "iso1");
    let gw = packer("gw", &["iso"], "t1");
    let actual = state(vec![
        synced(&record(&iso, "iso1", &[])),
        synced(&record(&gw, "gw-out", &[("iso", "iso1")])),
    ]);
    let p = plan(&[iso, gw], &actual, PlanOptions::default());
    assert_eq!(action_of(&p, "iso"), (Action::NoOp, vec![]));
    assert_eq!(action_of(&p, "gw"), (Action::NoOp, vec![]));
    assert!(!p.summary.has_changes());
    assert_eq!(p.summary.no_op, 2);
    // A no-op's after state is what the store holds.
    assert_eq!(
        p.change("gw").unwrap().after.as_ref().unwrap().dependencies["iso"],
        Some(sum("iso1"))
    );
}

#[test]
fn no_op_without_refresh_does_not_notice_a_missing_object() {
    let iso = http("iso", "iso1");
    let mut entry = actual_entry(
        &iso.destination,
        Ok(Record::Current(Box::new(record(&iso, "iso1", &[])))),
        ObjectState::NotChecked,
    );
    entry.object = ObjectState::NotChecked;
    let mut actual = state(vec![entry]);
    actual.refreshed = false;
    let p = plan(&[iso], &actual, PlanOptions::default());
    assert_eq!(action_of(&p, "iso").0, Action::NoOp);
    assert!(!p.refreshed);
}

// ---- replace ---------------------------------------------------------------------------------

#[test]
fn replace_when_checksum_changed() {
    let old = http("talos", "v1");
    let new = http("talos", "v2");
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "v1", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "talos"),
        (
            Action::Replace,
            reasons(&["checksum changed", "source checksum changed"])
        )
    );
    let paths: Vec<&str> = p.changes[0]
        .field_changes
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(paths, ["expected", "source.checksum"]);
}

#[test]
fn replace_when_object_missing() {
    let spec = http("talos", "v1");
    let rec = record(&spec, "v1", &[]);
    let entry = actual_entry(
        &spec.destination,
        Ok(Record::Current(Box::new(rec))),
        ObjectState::Missing,
    );
    let p = plan(&[spec], &state(vec![entry]), PlanOptions::default());
    assert_eq!(
        action_of(&p, "talos"),
        (Action::Replace, reasons(&["object missing from store"]))
    );
}

#[test]
fn replace_when_object_size_changed_outside_labctl() {
    let spec = http("talos", "v1");
    let rec = record(&spec, "v1", &[]);
    let ObjectState::Present(mut meta) = object_of(&rec) else {
        unreachable!()
    };
    meta.size += 1;
    let entry = actual_entry(
        &spec.destination,
        Ok(Record::Current(Box::new(rec))),
        ObjectState::Present(meta),
    );
    let p = plan(&[spec], &state(vec![entry]), PlanOptions::default());
    assert_eq!(
        action_of(&p, "talos"),
        (
            Action::Replace,
            reasons(&["object modified outside labctl"])
        )
    );
}

#[test]
fn replace_when_object_metadata_changed_outside_labctl() {
    let spec = http("talos", "v1");
    let rec = record(&spec, "v1", &[]);
    let ObjectState::Present(mut meta) = object_of(&rec) else {
        unreachable!()
    };
    meta.user_metadata.remove(META_CHECKSUM);
    let entry = actual_entry(
        &spec.destination,
        Ok(Record::Current(Box::new(rec))),
        ObjectState::Present(meta),
    );
    let p = plan(&[spec], &state(vec![entry]), PlanOptions::default());
    assert_eq!(
        action_of(&p, "talos"),
        (
            Action::Replace,
            reasons(&["object modified outside labctl"])
        )
    );
}

#[test]
fn replace_when_template_changed() {
    let old = packer("gw", &[], "t1");
    let new = packer("gw", &[], "t2");
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "out", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "gw"),
        (Action::Replace, reasons(&["template changed"]))
    );
    let after = p.changes[0].after.as_ref().unwrap();
    assert_eq!(
        after.checksum, None,
        "a build's output is known after apply"
    );
}

#[test]
fn replace_when_variables_changed() {
    let old = packer("gw", &[], "t1");
    let mut new = old.clone();
    if let SpecSource::Packer { variables, .. } = &mut new.source {
        variables.insert("hostname".into(), "gw1".into());
    }
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "out", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "gw"),
        (Action::Replace, reasons(&["variables changed"]))
    );
}

#[test]
fn replace_when_artifact_changed() {
    let old = packer("gw", &[], "t1");
    let mut new = old.clone();
    if let SpecSource::Packer { artifact, .. } = &mut new.source {
        *artifact = "output/other.raw".into();
    }
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "out", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "gw"),
        (Action::Replace, reasons(&["artifact changed"]))
    );
}

#[test]
fn replace_cascades_to_dependents_in_order() {
    let iso_old = http("iso", "iso1");
    let iso_new = http("iso", "iso2");
    let gw = packer("gw", &["iso"], "t1");
    let actual = state(vec![
        synced(&record(&iso_old, "iso1", &[])),
        synced(&record(&gw, "gw-out", &[("iso", "iso1")])),
    ]);
    let p = plan(&[iso_new, gw], &actual, PlanOptions::default());
    assert_eq!(p.changes[0].name, "iso");
    assert_eq!(p.changes[0].action, Action::Replace);
    assert_eq!(
        action_of(&p, "gw"),
        (
            Action::Replace,
            reasons(&["dependency iso will be replaced"])
        )
    );
    assert_eq!(p.summary.replace, 2);
}

#[test]
fn replace_cascades_through_unknown_build_outputs() {
    let base = packer("base", &[], "t1");
    let base_new = packer("base", &[], "t2");
    let mut gw = packer("gw", &["base"], "g1");
    gw.depends_on = vec!["base".into()];
    let actual = state(vec![
        synced(&record(&base, "base-out", &[])),
        synced(&record(&gw, "gw-out", &[("base", "base-out")])),
    ]);
    let p = plan(&[base_new, gw], &actual, PlanOptions::default());
    assert_eq!(
        action_of(&p, "gw"),
        (
            Action::Replace,
            reasons(&["dependency base will be replaced"])
        )
    );
    let after = p.change("gw").unwrap().after.as_ref().unwrap();
    assert_eq!(after.dependencies["base"], None);
    assert!(after.unknown.contains(&KnownAfterApply::Fingerprint));
}

#[test]
fn replace_when_dependency_already_changed() {
    // The ISO was republished by an earlier apply, but the gateway was built from the old one.
    let iso = http("iso", "iso2");
    let gw = packer("gw", &["iso"], "t1");
    let actual = state(vec![
        synced(&record(&iso, "iso2", &[])),
        synced(&record(&gw, "gw-out", &[("iso", "iso1")])),
    ]);
    let p = plan(&[iso, gw], &actual, PlanOptions::default());
    assert_eq!(action_of(&p, "iso").0, Action::NoOp);
    assert_eq!(
        action_of(&p, "gw"),
        (Action::Replace, reasons(&["dependency iso changed"]))
    );
}

#[test]
fn replace_when_dependency_will_be_created() {
    let iso = http("iso", "iso2");
    let gw = packer("gw", &["iso"], "t1");
    let actual = state(vec![synced(&record(&gw, "gw-out", &[("iso", "iso1")]))]);
    let p = plan(&[iso, gw], &actual, PlanOptions::default());
    assert_eq!(action_of(&p, "iso").0, Action::Create);
    assert_eq!(
        action_of(&p, "gw"),
        (
            Action::Replace,
            reasons(&["dependency iso will be created"])
        )
    );
}

#[test]
fn no_cascade_when_dependency_is_reuploaded_with_the_same_bytes() {
    let iso = http("iso", "iso1");
    let gw = packer("gw", &["iso"], "t1");
    let iso_rec = record(&iso, "iso1", &[]);
    let actual = state(vec![
        actual_entry(
            &iso.destination,
            Ok(Record::Current(Box::new(iso_rec))),
            ObjectState::Missing,
        ),
        synced(&record(&gw, "gw-out", &[("iso", "iso1")])),
    ]);
    let p = plan(&[iso, gw], &actual, PlanOptions::default());
    assert_eq!(action_of(&p, "iso").0, Action::Replace);
    assert_eq!(action_of(&p, "gw").0, Action::NoOp);
}

#[test]
fn replace_when_requested() {
    let spec = http("talos", "v1");
    let actual = state(vec![synced(&record(&spec, "v1", &[]))]);
    let p = plan(
        &[spec],
        &actual,
        PlanOptions {
            replace: vec!["talos".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        action_of(&p, "talos"),
        (Action::Replace, reasons(&["replacement requested"]))
    );
}

#[test]
fn replace_when_record_corrupt_and_the_manifest_wants_its_key() {
    let spec = http("talos", "v1");
    let entry = actual_entry(
        &spec.destination,
        Err(Unreadable::Corrupt("record is not valid JSON".into())),
        ObjectState::Missing,
    );
    let p = plan(&[spec], &state(vec![entry]), PlanOptions::default());
    let (action, why) = action_of(&p, "talos");
    assert_eq!(action, Action::Replace);
    assert_eq!(
        why[0],
        "the state record is corrupt: record is not valid JSON; the image is published again to rewrite it"
    );
}

fn try_plan(
    desired: &[NormalizedSpec],
    actual: &ActualState,
    options: PlanOptions,
) -> Result<Plan, PlanError> {
    let desired: Vec<Desired> = desired.iter().cloned().map(Desired::new).collect();
    compute(
        &desired,
        actual,
        &options,
        PlanContext {
            manifest: "images.yaml".into(),
            manifest_digest: sum("manifest"),
            store: "file:///tmp/store".into(),
        },
    )
}

#[test]
fn a_newer_record_stops_the_plan_whether_wanted_or_orphaned() {
    let spec = http("talos", "v1");
    for (destination, prune) in [
        (spec.destination.clone(), false),
        ("old/x.img".into(), true),
    ] {
        let entry = actual_entry(
            &destination,
            Err(Unreadable::Newer { schema_version: 7 }),
            ObjectState::Missing,
        );
        let err = try_plan(
            std::slice::from_ref(&spec),
            &state(vec![entry]),
            PlanOptions {
                prune,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::NewerRecords(vec![crate::manifest::record_key(&destination)])
        );
        assert!(err.hint().unwrap().contains("upgrade labctl"));
    }
}

#[test]
fn a_corrupt_orphan_survives_prune() {
    let entry = actual_entry(
        "junk/x.img",
        Err(Unreadable::Corrupt("record is not valid JSON".into())),
        ObjectState::Missing,
    );
    let p = plan(
        &[],
        &state(vec![entry]),
        PlanOptions {
            prune: true,
            ..Default::default()
        },
    );
    assert_eq!(p.summary.delete, 0);
    assert_eq!(p.orphans.len(), 1);
    assert_eq!(
        p.orphans[0].reason,
        "record corrupt: record is not valid JSON; kept despite --prune: labctl never deletes what it cannot read"
    );
}

#[test]
fn replace_when_unpinned_source_url_changed() {
    let mut old = http("harvester", "h1");
    old.expected = None;
    old.source = SpecSource::Http {
        url: "https://v/1.iso".into(),
        checksum: SpecChecksum::List {
            url: "https://v/1.sha256".into(),
        },
        decompress: None,
        signature: None,
    };
    let mut new = old.clone();
    new.source = SpecSource::Http {
        url: "https://v/2.iso".into(),
        checksum: SpecChecksum::List {
            url: "https://v/2.sha256".into(),
        },
        decompress: None,
        signature: None,
    };
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "h1", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "harvester"),
        (
            Action::Replace,
            reasons(&["source checksum changed", "source url changed"])
        )
    );
}

#[test]
fn replace_legacy_record_with_other_checksum() {
    let spec = http("talos", "v2");
    let legacy = LegacyRecord {
        name: Some("talos".into()),
        checksum: sum("v1"),
        sha256: None,
        size: Some(2),
        uploaded_at: None,
        source_url: None,
    };
    let obj = ObjectState::Present(ObjectMeta {
        key: String::new(),
        size: 2,
        etag: String::new(),
        listed_modified: None,
        user_metadata: BTreeMap::new(),
    });
    let entry = actual_entry(&spec.destination, Ok(Record::Legacy(legacy)), obj);
    let p = plan(&[spec], &state(vec![entry]), PlanOptions::default());
    assert_eq!(
        action_of(&p, "talos"),
        (Action::Replace, reasons(&["checksum changed"]))
    );
}

#[test]
fn replace_legacy_record_of_a_build() {
    let spec = packer("gw", &[], "t");
    let legacy = LegacyRecord {
        name: Some("gw".into()),
        checksum: sum("x"),
        sha256: None,
        size: None,
        uploaded_at: None,
        source_url: None,
    };
    let entry = actual_entry(
        &spec.destination,
        Ok(Record::Legacy(legacy)),
        ObjectState::NotChecked,
    );
    let p = plan(&[spec], &state(vec![entry]), PlanOptions::default());
    assert_eq!(
        action_of(&p, "gw"),
        (
            Action::Replace,
            reasons(&["record written by an earlier tool cannot be matched to this spec"])
        )
    );
}

// ---- update ----------------------------------------------------------------------------------

#[test]
fn update_when_mirror_url_changed_but_checksum_did_not() {
    let old = http("talos", "v1");
    let mut new = old.clone();
    new.source = SpecSource::Http {
        url: "https://mirror.example/talos.img".into(),
        checksum: SpecChecksum::Digest(sum("v1")),
        decompress: None,
        signature: None,
    };
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "v1", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "talos"),
        (Action::Update, reasons(&["source url changed"]))
    );
    let fc = &p.changes[0].field_changes[0];
    assert_eq!(
        fc.before.as_deref(),
        Some("\"https://vendor.example/talos.img\"")
    );
    assert_eq!(
        fc.after.as_deref(),
        Some("\"https://mirror.example/talos.img\"")
    );
}

#[test]
fn update_when_compression_changed_but_output_did_not() {
    let mut old = http("talos", "raw");
    old.source = SpecSource::Http {
        url: "https://f/t.raw.xz".into(),
        checksum: SpecChecksum::Digest(sum("xz")),
        decompress: Some(Compression::Xz),
        signature: None,
    };
    let mut new = old.clone();
    new.source = SpecSource::Http {
        url: "https://f/t.raw.zst".into(),
        checksum: SpecChecksum::Digest(sum("zst")),
        decompress: Some(Compression::Zstd),
        signature: None,
    };
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "raw", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "talos"),
        (
            Action::Update,
            reasons(&[
                "source checksum changed",
                "decompression changed",
                "source url changed"
            ])
        )
    );
}

#[test]
fn update_when_protect_changed() {
    let old = http("talos", "v1");
    let mut new = old.clone();
    new.protect = true;
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "v1", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "talos"),
        (Action::Update, reasons(&["protect changed"]))
    );
}

#[test]
fn update_when_renamed_at_the_same_key() {
    let old = http("talos", "v1");
    let mut new = old.clone();
    new.name = "talos-metal".into();
    let p = plan(
        &[new],
        &state(vec![synced(&record(&old, "v1", &[]))]),
        PlanOptions::default(),
    );
    assert_eq!(
        action_of(&p, "talos-metal"),
        (Action::Update, reasons(&["name changed"]))
    );
    assert!(p.orphans.is_empty());
}

#[test]
fn update_adopts_legacy_record_with_matching_checksum() {
    let spec = http("talos", "v1");
    let legacy = LegacyRecord {
        name: Some("talos".into()),
        checksum: sum("v1"),
        sha256: None,
        size: Some(2),
        uploaded_at: Some("2025-12-20T00:00:00Z".into()),
        source_url: Some("https://old".into()),
    };
    let obj = ObjectState::Present(ObjectMeta {
        key: String::new(),
        size: 2,
        etag: String::new(),
        listed_modified: None,
        user_metadata: BTreeMap::new(),
    });
    let entry = actual_entry(&spec.destination, Ok(Record::Legacy(legacy)), obj);
    let p = plan(&[spec], &state(vec![entry]), PlanOptions::default());
    assert_eq!(
        action_of(&p, "talos"),
        (
            Action::Update,
            reasons(&[
                "record written by an earlier tool; checksum matches, adopting without re-upload"
            ])
        )
    );
    assert!(p.changes[0].before.as_ref().unwrap().legacy);
}

#[test]
fn update_pinned_download_when_its_dependency_is_replaced() {
    let iso_old = packer("iso-build", &[], "t1");
    let iso_new = packer("iso-build", &[], "t2");
    let mut talos = http("talos", "v1");
    talos.depends_on = vec!["iso-build".into()];
    let actual = state(vec![
        synced(&record(&iso_old, "b1", &[])),
        synced(&record(&talos, "v1", &[("iso-build", "b1")])),
    ]);
    let p = plan(&[iso_new, talos], &actual, PlanOptions::default());
    assert_eq!(
        action_of(&p, "talos"),
        (
            Action::Update,
            reasons(&["dependency iso-build will be replaced"])
        )
    );
}

// ---- delete and orphans ----------------------------------------------------------------------

#[test]
fn delete_orphan_only_with_prune() {
    let old = http("old", "o");
    let actual = state(vec![synced(&record(&old, "o", &[]))]);
    let kept = plan(&[], &actual, PlanOptions::default());
    assert!(kept.changes.is_empty());
    assert_eq!(kept.orphans.len(), 1);
    assert_eq!(kept.orphans[0].reason, "image left the manifest");
    assert_eq!(kept.summary.orphaned, 1);
    assert!(!kept.summary.has_changes());

    let pruned = plan(
        &[],
        &actual,
        PlanOptions {
            prune: true,
            ..Default::default()
        },
    );
    assert_eq!(
        action_of(&pruned, "old"),
        (Action::Delete, reasons(&["image left the manifest"]))
    );
    assert!(pruned.orphans.is_empty());
    assert_eq!(pruned.summary.delete, 1);
}

#[test]
fn protected_orphan_is_never_deleted() {
    let mut old = http("old", "o");
    old.protect = true;
    let actual = state(vec![synced(&record(&old, "o", &[]))]);
    let p = plan(
        &[],
        &actual,
        PlanOptions {
            prune: true,
            ..Default::default()
        },
    );
    assert!(p.changes.is_empty());
    assert!(p.orphans[0].protected);
    assert!(
        p.orphans[0].reason.contains("protected"),
        "{}",
        p.orphans[0].reason
    );
}

#[test]
fn moved_destination_creates_and_orphans_the_old_key() {
    let old = http("talos", "v1");
    let mut new = old.clone();
    new.destination = "talos/v1/talos.img".into();
    let actual = state(vec![synced(&record(&old, "v1", &[]))]);
    let p = plan(
        &[new],
        &actual,
        PlanOptions {
            prune: true,
            ..Default::default()
        },
    );
    assert_eq!(p.changes[0].action, Action::Create);
    assert_eq!(
        p.changes[1],
        Change {
            reasons: reasons(&["image now publishes to images/talos/v1/talos.img"]),
            ..p.changes[1].clone()
        }
    );
    assert_eq!(p.changes[1].action, Action::Delete);
    assert_eq!(p.changes[1].key, "images/talos/talos.img");
}

#[test]
fn unreadable_orphan_is_named_by_its_destination() {
    let entry = actual_entry(
        "junk/x.img",
        Err(Unreadable::Corrupt("record is not valid JSON".into())),
        ObjectState::Missing,
    );
    let p = plan(&[], &state(vec![entry]), PlanOptions::default());
    assert_eq!(p.orphans[0].name, "junk/x.img");
}

// ---- plan as a whole -------------------------------------------------------------------------

#[test]
fn plan_records_prior_state_and_orders_deletes_last() {
    let a = http("a", "1");
    let gone = http("gone", "g");
    let actual = state(vec![
        synced(&record(&gone, "g", &[])),
        synced(&record(&a, "0", &[])),
    ]);
    let p = plan(
        &[a],
        &actual,
        PlanOptions {
            prune: true,
            ..Default::default()
        },
    );
    let order: Vec<(&str, Action)> = p
        .changes
        .iter()
        .map(|c| (c.name.as_str(), c.action))
        .collect();
    assert_eq!(order, [("a", Action::Replace), ("gone", Action::Delete)]);
    assert_eq!(p.prior_state.len(), 2);
    assert_eq!(p.prior_state["metadata/a/a.img.json"], "\"etag-a/a.img\"");
    assert_eq!(
        p.summary_line(),
        "Plan: 0 to create, 1 to replace, 0 to update, 1 to delete."
    );
    assert_eq!(p.format_version, FORMAT_VERSION);
}

#[test]
fn plan_json_uses_the_documented_names() {
    let p = plan(&[http("a", "1")], &state(vec![]), PlanOptions::default());
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["format_version"], "1.4");
    assert_eq!(v["changes"][0]["action"], "create");
    assert_eq!(v["summary"]["no_op"], 0);
    assert_eq!(v["index"]["action"], "write");
    assert_eq!(v["index"]["files"][1], "images/SHA256SUMS");
    let back: Plan = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
    assert_eq!(serde_json::to_value(Action::NoOp).unwrap(), "no-op");
}

// --- the consumer index -------------------------------------------------------------------

use crate::consumer_index::{self, IndexFiles};

/// The index files apply would write for these records.
fn index_of(actual: &ActualState, signer: Option<&crate::signing::IndexSigner>) -> IndexFiles {
    let entries = consumer_index::entries(&actual.records).entries;
    let sums = consumer_index::sha256sums(&entries);
    consumer_index::found(
        Some(sums.as_bytes()),
        Some(&consumer_index::to_json(&consumer_index::document(
            entries.clone(),
            "2026-11-26T00:00:00Z".into(),
            None,
        ))),
        signer.map(|s| s.sign(sums.as_bytes(), "t").unwrap().into_bytes()),
    )
}

#[test]
fn index_is_written_with_every_image_change() {
    let a = http("a", "1");
    let mut actual = state(vec![synced(&record(&a, "1", &[]))]);
    actual.index = index_of(&actual, None);
    let p = plan(
        &[a.clone(), http("b", "2")],
        &actual,
        PlanOptions::default(),
    );
    assert_eq!(p.index.action, IndexAction::Write);
    assert_eq!(p.index.reasons, ["1 image changes"]);
    assert_eq!(p.index.files, ["images/index.json", "images/SHA256SUMS"]);
    assert!(p.has_changes());

    let p = plan(&[a], &actual, PlanOptions::default());
    assert_eq!(p.index.action, IndexAction::NoOp, "{:?}", p.index);
    assert!(!p.has_changes());
    assert_eq!(
        p.summary_line(),
        "Plan: 0 to create, 0 to replace, 0 to update, 0 to delete."
    );
}

#[test]
fn a_missing_or_stale_index_is_rewritten_on_its_own() {
    let a = http("a", "1");
    let actual = state(vec![synced(&record(&a, "1", &[]))]);
    let p = plan(std::slice::from_ref(&a), &actual, PlanOptions::default());
    assert!(!p.summary.has_changes());
    assert_eq!(p.index.action, IndexAction::Write);
    assert_eq!(
        p.index.reasons,
        [
            "images/SHA256SUMS is missing",
            "images/index.json is missing"
        ]
    );
    assert!(p.has_changes(), "an index-only change is a change (exit 2)");
    assert_eq!(
        p.summary_line(),
        "Plan: 0 to create, 0 to replace, 0 to update, 0 to delete. The consumer index is rewritten."
    );

    let mut stale = actual.clone();
    stale.index = index_of(&actual, None);
    stale.index = consumer_index::found(Some(b"0000  other\n"), None, None);
    stale.index.json = index_of(&actual, None).json;
    let p = plan(&[a], &stale, PlanOptions::default());
    assert_eq!(
        p.index.reasons,
        ["images/SHA256SUMS does not list exactly the managed objects"]
    );
}

#[test]
fn signing_configuration_is_part_of_the_index() {
    let a = http("a", "1");
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let public = pair.pk.to_base64();
    let signer =
        crate::signing::IndexSigner::new(&public, &pair.sk.to_box(None).unwrap().to_string(), None)
            .unwrap();
    let signed_opts = || PlanOptions {
        index_public_key: Some(public.clone()),
        ..Default::default()
    };
    let mut actual = state(vec![synced(&record(&a, "1", &[]))]);
    actual.index = index_of(&actual, None);
    let p = plan(std::slice::from_ref(&a), &actual, signed_opts());
    assert_eq!(p.index.reasons, ["images/SHA256SUMS.minisig is missing"]);
    assert_eq!(p.index.files.last().unwrap(), "images/SHA256SUMS.minisig");
    assert!(p.index.signed);

    actual.index = index_of(&actual, Some(&signer));
    let p = plan(std::slice::from_ref(&a), &actual, signed_opts());
    assert_eq!(p.index.action, IndexAction::NoOp);
    // Signing switched off: the stale signature goes.
    let p = plan(&[a], &actual, PlanOptions::default());
    assert_eq!(p.index.deletes, ["images/SHA256SUMS.minisig"]);
}

#[test]
fn records_without_sha256_are_read_back_once() {
    let mut a = http("a", "1");
    let sha512 = Checksum::of_bytes(crate::checksum::Algorithm::Sha512, b"1");
    a.expected = Some(sha512.clone());
    let mut rec = record(&a, "1", &[]);
    rec.checksum = sha512;
    rec.sha256 = None;
    let actual = state(vec![synced(&rec)]);
    let p = plan(std::slice::from_ref(&a), &actual, PlanOptions::default());
    assert!(!p.summary.has_changes());
    assert_eq!(p.index.backfill.len(), 1);
    assert_eq!(p.index.backfill[0].key, "images/a/a.img");
    assert!(
        p.index
            .reasons
            .iter()
            .any(|r| r.contains("sha256 of a is computed by reading images/a/a.img back once (its record has only a sha512 checksum)")),
        "{:?}",
        p.index.reasons
    );
    // A replaced object gets its sha256 from the pipeline instead.
    let p = plan(
        &[a],
        &actual,
        PlanOptions {
            replace: vec!["a".into()],
            ..Default::default()
        },
    );
    assert!(p.index.backfill.is_empty());
}

// --- history ---------------------------------------------------------------------------------

fn kept(destination: &str, content: &str) -> crate::state::record::HistoryEntry {
    crate::state::record::HistoryEntry {
        checksum: sum(content),
        sha256: sum(content),
        key: crate::manifest::history_key(destination, &sum(content)),
        size: content.len() as u64,
        source_url: Some(format!("https://vendor.example/{content}")),
        uploaded_at: "2026-10-01T00:00:00Z".into(),
        kept_at: "2026-10-02T00:00:00Z".into(),
    }
}

/// An http image with `history: n`.
fn kept_http(name: &str, content: &str, n: u32) -> NormalizedSpec {
    NormalizedSpec {
        history: n,
        ..http(name, content)
    }
}

#[test]
fn a_replace_keeps_the_current_bytes_and_trims_to_the_limit() {
    let (v3, v4) = (kept_http("a", "v3", 2), kept_http("a", "v4", 2));
    let mut rec = record(&v3, "v3", &[]);
    rec.history = vec![kept(&v3.destination, "v2"), kept(&v3.destination, "v1")];
    let p = plan(&[v4], &state(vec![synced(&rec)]), PlanOptions::default());
    let c = &p.changes[0];
    assert_eq!(c.action, Action::Replace);
    assert_eq!(c.restore, None);
    let h = c.history.as_ref().unwrap();
    assert!(h.keep_current);
    assert_eq!(
        h.keep_key.as_deref(),
        Some(crate::manifest::history_key(&v3.destination, &sum("v3")).as_str())
    );
    assert_eq!(h.trim, [kept(&v3.destination, "v1").key]);
    assert_eq!((h.kept, h.limit), (2, 2));
}

#[test]
fn a_revert_to_kept_bytes_is_a_restore() {
    let (v1, v3) = (kept_http("a", "v1", 2), kept_http("a", "v3", 2));
    let mut rec = record(&v3, "v3", &[]);
    rec.history = vec![kept(&v3.destination, "v2"), kept(&v3.destination, "v1")];
    let p = plan(&[v1], &state(vec![synced(&rec)]), PlanOptions::default());
    let c = &p.changes[0];
    assert_eq!(c.action, Action::Replace);
    assert!(
        c.reasons.contains(&"restore from history".into()),
        "{:?}",
        c.reasons
    );
    assert_eq!(
        c.restore.as_ref().unwrap().key,
        kept(&v3.destination, "v1").key
    );
    let h = c.history.as_ref().unwrap();
    assert!(h.keep_current, "v3 is kept before v1 comes back");
    // v1 becomes current again and leaves the history; v3 and v2 stay.
    assert_eq!(h.trim, [kept(&v3.destination, "v1").key]);
    assert_eq!(h.kept, 2);
}

#[test]
fn modified_objects_are_not_kept_as_history() {
    let (v1, v2) = (kept_http("a", "v1", 1), kept_http("a", "v2", 1));
    let rec = record(&v1, "v1", &[]);
    let mut entry = synced(&rec);
    if let ObjectState::Present(meta) = &mut entry.object {
        meta.size += 1;
    }
    let p = plan(&[v2], &state(vec![entry]), PlanOptions::default());
    assert!(p.changes[0].history.is_none(), "{:?}", p.changes[0].history);
}

#[test]
fn lowering_history_is_an_update_that_trims() {
    let mut v1 = kept_http("a", "v1", 2);
    let mut rec = record(&v1, "v1", &[]);
    rec.history = vec![kept(&v1.destination, "v0"), kept(&v1.destination, "old")];
    v1.history = 1;
    let p = plan(
        &[v1.clone()],
        &state(vec![synced(&rec)]),
        PlanOptions::default(),
    );
    let c = &p.changes[0];
    assert_eq!(c.action, Action::Update);
    assert_eq!(c.reasons, ["history changed"]);
    assert_eq!(
        c.history.as_ref().unwrap().trim,
        [kept(&v1.destination, "old").key]
    );
}

#[test]
fn pruning_an_image_deletes_its_history_unless_protected() {
    let gone = kept_http("gone", "x", 1);
    let mut rec = record(&gone, "x", &[]);
    rec.history = vec![kept(&gone.destination, "w")];
    let p = plan(
        &[],
        &state(vec![synced(&rec)]),
        PlanOptions {
            prune: true,
            ..Default::default()
        },
    );
    let c = &p.changes[0];
    assert_eq!(c.action, Action::Delete);
    assert_eq!(
        c.history.as_ref().unwrap().trim,
        [kept(&gone.destination, "w").key]
    );
    assert!(
        c.reasons[1]
            .to_string()
            .contains("1 kept version under history/ is deleted with it"),
        "{:?}",
        c.reasons
    );

    rec.protect = true;
    let p = plan(
        &[],
        &state(vec![synced(&rec)]),
        PlanOptions {
            prune: true,
            ..Default::default()
        },
    );
    assert!(p.changes.is_empty());
    assert!(p.orphans[0].protected);
}

#[test]
fn replacing_the_same_bytes_keeps_nothing() {
    let v1 = kept_http("a", "v1", 2);
    let rec = record(&v1, "v1", &[]);
    let p = plan(
        &[v1],
        &state(vec![synced(&rec)]),
        PlanOptions {
            replace: vec!["a".into()],
            ..Default::default()
        },
    );
    assert_eq!(p.changes[0].action, Action::Replace);
    assert!(p.changes[0].history.is_none(), "{:?}", p.changes[0].history);
}

#[test]
fn a_restore_needs_the_declared_checksum_not_just_the_same_sha256() {
    let v1 = kept_http("a", "v1", 2);
    let v3 = kept_http("a", "v3", 2);
    let mut rec = record(&v3, "v3", &[]);
    let mut entry = kept(&v3.destination, "v1");
    entry.checksum = Checksum::of_bytes(crate::checksum::Algorithm::Sha512, b"v1");
    rec.history = vec![entry];
    let p = plan(&[v1], &state(vec![synced(&rec)]), PlanOptions::default());
    assert_eq!(p.changes[0].restore, None);
}

// ---- adopting what a killed run published ------------------------------------------------------

/// The object a run publishing `rec`'s spec leaves when it is killed before the record.
fn unrecorded(rec: &StateRecord) -> ActualState {
    let ObjectState::Present(meta) = object_of(rec) else {
        unreachable!()
    };
    let mut actual = state(vec![]);
    actual.unrecorded.insert(meta.key.clone(), meta);
    actual
}

#[test]
fn an_object_published_without_its_record_is_adopted() {
    let spec = http("talos", "v1");
    let p = plan(
        std::slice::from_ref(&spec),
        &unrecorded(&record(&spec, "v1", &[])),
        PlanOptions::default(),
    );
    let c = p.change("talos").unwrap();
    assert_eq!(c.action, Action::Update);
    assert_eq!(c.reasons, reasons(&[crate::plan::REASON_ADOPT]));
    let adopt = c.adopt.as_ref().expect("adopted");
    assert_eq!(adopt.checksum, sum("v1"));
    assert_eq!(p.summary.update, 1);
}

#[test]
fn a_build_without_its_record_is_adopted_by_its_fingerprint() {
    let spec = packer("gw", &[], "template");
    let p = plan(
        std::slice::from_ref(&spec),
        &unrecorded(&record(&spec, "built", &[])),
        PlanOptions::default(),
    );
    let c = p.change("gw").unwrap();
    assert_eq!(c.action, Action::Update);
    let after = c.after.as_ref().unwrap();
    assert_eq!(after.checksum, Some(sum("built")));
    assert!(after.unknown.is_empty(), "{:?}", after.unknown);
}

#[test]
fn an_object_without_a_record_that_is_not_this_spec_is_overwritten() {
    let spec = http("talos", "v2");
    // Published as v1: other bytes than the manifest wants now.
    let old = record(&http("talos", "v1"), "v1", &[]);
    let p = plan(
        std::slice::from_ref(&spec),
        &unrecorded(&old),
        PlanOptions::default(),
    );
    let c = p.change("talos").unwrap();
    assert_eq!(c.action, Action::Create);
    assert!(c.adopt.is_none());
    assert!(
        c.reasons[0].to_string().contains("it is overwritten"),
        "{:?}",
        c.reasons
    );

    // Template changed: a build's fingerprint differs, so its output is not adopted.
    let built = record(&packer("gw", &[], "old template"), "built", &[]);
    let p = plan(
        &[packer("gw", &[], "new template")],
        &unrecorded(&built),
        PlanOptions::default(),
    );
    assert_eq!(p.change("gw").unwrap().action, Action::Create);
}

/// A store where a run replacing `rec` with `wanted`'s bytes (`content`) was killed after the
/// object became visible and before it wrote the record.
fn killed_replace(rec: &StateRecord, wanted: &NormalizedSpec, content: &str) -> ActualState {
    let mut entry = synced(rec);
    let published = record(wanted, content, &[]);
    if let ObjectState::Present(meta) = &mut entry.object {
        let ObjectState::Present(new) = object_of(&published) else {
            unreachable!()
        };
        *meta = ObjectMeta {
            etag: "\"new\"".into(),
            ..new
        };
    }
    state(vec![entry])
}

#[test]
fn a_replace_killed_before_its_record_is_adopted_with_the_copy_it_kept() {
    let (v3, v4) = (kept_http("a", "v3", 2), kept_http("a", "v4", 2));
    let mut rec = record(&v3, "v3", &[]);
    rec.history = vec![kept(&v3.destination, "v2"), kept(&v3.destination, "v1")];
    let p = plan(
        std::slice::from_ref(&v4),
        &killed_replace(&rec, &v4, "v4"),
        PlanOptions::default(),
    );
    let c = &p.changes[0];
    assert_eq!(c.action, Action::Update);
    assert_eq!(c.reasons[0], Reason::Adopt, "{:?}", c.reasons);
    let adopt = c.adopt.as_ref().expect("adopted, not downloaded again");
    assert_eq!(
        (adopt.checksum.clone(), adopt.etag.as_str()),
        (sum("v4"), "\"new\"")
    );
    // The same history an uninterrupted replace leaves: v3 kept, v1 trimmed.
    let h = c.history.as_ref().unwrap();
    assert!(h.keep_current);
    assert_eq!(
        h.keep_key.as_deref(),
        Some(crate::manifest::history_key(&v3.destination, &sum("v3")).as_str())
    );
    assert_eq!(h.trim, [kept(&v3.destination, "v1").key]);
    assert_eq!((h.kept, h.limit), (2, 2));
    assert!(crate::plan::check::check(&p).is_ok());
}

#[test]
fn a_restore_killed_before_its_record_is_adopted_and_leaves_the_history() {
    let (v1, v3) = (kept_http("a", "v1", 2), kept_http("a", "v3", 2));
    let mut rec = record(&v3, "v3", &[]);
    rec.history = vec![kept(&v3.destination, "v2"), kept(&v3.destination, "v1")];
    let p = plan(
        std::slice::from_ref(&v1),
        &killed_replace(&rec, &v1, "v1"),
        PlanOptions::default(),
    );
    let c = &p.changes[0];
    assert_eq!(c.action, Action::Update);
    assert!(c.restore.is_none());
    let h = c.history.as_ref().unwrap();
    assert!(h.keep_current, "v3 was kept before v1 came back");
    assert_eq!(h.trim, [kept(&v3.destination, "v1").key]);
    assert_eq!(h.kept, 2);
}

#[test]
fn a_killed_replace_is_not_adopted_when_a_replace_is_asked_for_or_the_object_is_foreign() {
    let (v1, v2) = (kept_http("a", "v1", 1), kept_http("a", "v2", 1));
    let rec = record(&v1, "v1", &[]);
    let asked = plan(
        std::slice::from_ref(&v2),
        &killed_replace(&rec, &v2, "v2"),
        PlanOptions {
            replace: vec!["a".into()],
            ..Default::default()
        },
    );
    assert_eq!(asked.changes[0].action, Action::Replace);
    assert!(asked.changes[0].adopt.is_none());
    // Bytes labelled for another spec (v3) are not what this change wants: replaced, and not
    // kept as history either.
    let v3 = kept_http("a", "v3", 1);
    let foreign = plan(
        std::slice::from_ref(&v2),
        &killed_replace(&rec, &v3, "v3"),
        PlanOptions::default(),
    );
    let c = &foreign.changes[0];
    assert_eq!(c.action, Action::Replace);
    assert!(c.adopt.is_none());
    assert!(c.history.is_none(), "{:?}", c.history);
}

#[test]
fn an_object_matching_its_record_with_facts_added_is_not_drift() {
    let v1 = http("a", "v1");
    let rec = record(&v1, "v1", &[]);
    let mut entry = synced(&rec);
    if let ObjectState::Present(meta) = &mut entry.object {
        crate::object::SourceFacts {
            size: Some(9),
            etag: Some("\"x\"".into()),
            ..Default::default()
        }
        .write_into(&mut meta.user_metadata);
    }
    let p = plan(&[v1], &state(vec![entry]), PlanOptions::default());
    assert_eq!(p.changes[0].action, Action::NoOp);
}

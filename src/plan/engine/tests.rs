//! One test per action and reason, on hand-made desired and actual states.

use std::collections::BTreeMap;

use super::*;
use crate::spec::SpecSource;
use crate::state::record::{LegacyRecord, RecordSource, SCHEMA_VERSION};
use crate::store::ObjectMeta;

fn sum(seed: &str) -> Checksum {
    Checksum::sha256(seed.as_bytes())
}

fn http(name: &str, content: &str) -> NormalizedSpec {
    NormalizedSpec {
        name: name.into(),
        destination: format!("{name}/{name}.img"),
        source: SpecSource::Http {
            url: format!("https://vendor.example/{name}.img"),
            checksum: sum(content).to_string(),
            decompress: None,
            signature: None,
        },
        expected: Some(sum(content)),
        depends_on: vec![],
        protect: false,
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
    }
}

/// The object apply leaves beside `rec`.
fn object_of(rec: &StateRecord) -> ObjectState {
    ObjectState::Present(ObjectMeta {
        key: rec.key.clone(),
        size: rec.size,
        etag: "\"e\"".into(),
        user_metadata: BTreeMap::from([
            (META_CHECKSUM.to_string(), rec.checksum.to_string()),
            (META_FINGERPRINT.to_string(), rec.fingerprint.to_string()),
        ]),
    })
}

fn actual_entry(
    destination: &str,
    record: Result<Record, String>,
    object: ObjectState,
) -> ActualRecord {
    ActualRecord {
        record_key: crate::manifest::record_key(destination),
        object_key: crate::manifest::object_key(destination),
        etag: format!("\"etag-{destination}\""),
        record,
        object,
    }
}

fn state(records: Vec<ActualRecord>) -> ActualState {
    ActualState {
        records: records
            .into_iter()
            .map(|r| (r.record_key.clone(), r))
            .collect(),
        refreshed: true,
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
}

fn action_of(p: &Plan, name: &str) -> (Action, Vec<String>) {
    let c = p
        .change(name)
        .unwrap_or_else(|| panic!("no change for {name}"));
    (c.action, c.reasons.clone())
}

fn reasons(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
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
    assert!(after.unknown.contains(&"fingerprint".to_string()));
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
fn replace_when_record_unreadable() {
    let spec = http("talos", "v1");
    let entry = actual_entry(
        &spec.destination,
        Err("record is not valid JSON".into()),
        ObjectState::Missing,
    );
    let p = plan(&[spec], &state(vec![entry]), PlanOptions::default());
    let (action, why) = action_of(&p, "talos");
    assert_eq!(action, Action::Replace);
    assert_eq!(why[0], "state record unreadable: record is not valid JSON");
}

#[test]
fn replace_when_unpinned_source_url_changed() {
    let mut old = http("harvester", "h1");
    old.expected = None;
    old.source = SpecSource::Http {
        url: "https://v/1.iso".into(),
        checksum: "file:https://v/1.sha256".into(),
        decompress: None,
        signature: None,
    };
    let mut new = old.clone();
    new.source = SpecSource::Http {
        url: "https://v/2.iso".into(),
        checksum: "file:https://v/2.sha256".into(),
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
        size: Some(2),
        uploaded_at: None,
        source_url: None,
    };
    let obj = ObjectState::Present(ObjectMeta {
        key: String::new(),
        size: 2,
        etag: String::new(),
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
        checksum: sum("v1").to_string(),
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
        checksum: sum("xz").to_string(),
        decompress: Some("xz".into()),
        signature: None,
    };
    let mut new = old.clone();
    new.source = SpecSource::Http {
        url: "https://f/t.raw.zst".into(),
        checksum: sum("zst").to_string(),
        decompress: Some("zstd".into()),
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
        size: Some(2),
        uploaded_at: Some("2025-12-20T00:00:00Z".into()),
        source_url: Some("https://old".into()),
    };
    let obj = ObjectState::Present(ObjectMeta {
        key: String::new(),
        size: 2,
        etag: String::new(),
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
        Err("record is not valid JSON".into()),
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
    assert_eq!(v["format_version"], "1.1");
    assert_eq!(v["changes"][0]["action"], "create");
    assert_eq!(v["summary"]["no_op"], 0);
    let back: Plan = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
    assert_eq!(serde_json::to_value(Action::NoOp).unwrap(), "no-op");
}

//! Units, waves and batching on plans computed from hand-made specs.

use std::collections::BTreeMap;

use super::*;
use crate::plan::{compute, Desired, PlanContext, PlanOptions};
use crate::spec::{NormalizedSpec, SpecChecksum};
use crate::state::ActualState;

fn sum(seed: &str) -> Checksum {
    Checksum::sha256(seed.as_bytes())
}

fn http(name: &str) -> NormalizedSpec {
    NormalizedSpec {
        name: name.into(),
        destination: format!("{name}/{name}.img"),
        source: SpecSource::Http {
            url: format!("https://vendor.example/{name}.img"),
            checksum: SpecChecksum::Digest(sum(name)),
            decompress: None,
            signature: None,
        },
        expected: Some(sum(name)),
        depends_on: vec![],
        protect: false,
        history: 0,
    }
}

/// A build whose variables are `variables` (references and all), depending on `deps`.
fn packer(name: &str, deps: &[&str], variables: &[(&str, &str)]) -> NormalizedSpec {
    NormalizedSpec {
        name: name.into(),
        destination: format!("{name}/{name}.raw"),
        source: SpecSource::Packer {
            path: format!("packer/{name}"),
            variables: variables
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            artifact: "output/out.raw".into(),
            template_hash: sum("template"),
        },
        expected: None,
        depends_on: deps.iter().map(|s| s.to_string()).collect(),
        protect: false,
        history: 0,
    }
}

fn plan_of(specs: &[NormalizedSpec]) -> Plan {
    let desired: Vec<Desired> = specs.iter().cloned().map(Desired::new).collect();
    compute(
        &desired,
        &ActualState {
            refreshed: true,
            ..Default::default()
        },
        &PlanOptions::default(),
        PlanContext {
            manifest: "images.yaml".into(),
            manifest_digest: sum("manifest"),
            store: "file:///tmp/store".into(),
        },
    )
    .expect("an empty store has no newer records")
}

fn waves(units: &[Unit]) -> Vec<(&str, usize)> {
    units.iter().map(|u| (u.name.as_str(), u.wave)).collect()
}

#[test]
fn downloads_and_builds_are_units_of_the_first_wave_when_nothing_feeds_them() {
    let p = plan_of(&[http("iso"), packer("vm", &[], &[("size", "10G")])]);
    let u = units(&p);
    assert_eq!(waves(&u), [("iso", 1), ("vm", 1)]);
    assert_eq!(u[0].kind, UnitKind::Download);
    assert_eq!(u[1].kind, UnitKind::Build);
    assert!(u[1].kind.needs_kvm() && !u[0].kind.needs_kvm());
}

#[test]
fn a_build_taking_a_units_checksum_waits_a_wave() {
    let p = plan_of(&[
        http("iso"),
        packer(
            "vm",
            &["iso"],
            &[
                ("iso_url", "{{ images.iso.url }}"),
                ("sum", "{{ images.iso.checksum }}"),
            ],
        ),
        packer("app", &["vm"], &[("base", "{{ images.vm.checksum }}")]),
    ]);
    let u = units(&p);
    assert_eq!(waves(&u), [("iso", 1), ("vm", 2), ("app", 3)]);
    assert_eq!(u[1].needs, ["iso"]);
}

#[test]
fn ordering_alone_or_a_key_reference_does_not_make_a_wave() {
    // dependsOn orders publication; a key is known from the plan: neither needs staged bytes.
    let p = plan_of(&[
        http("iso"),
        http("other"),
        packer("vm", &["iso", "other"], &[("key", "{{ images.iso.key }}")]),
    ]);
    assert_eq!(waves(&units(&p)), [("iso", 1), ("other", 1), ("vm", 1)]);
}

#[test]
fn a_restore_update_or_no_op_is_not_a_unit() {
    let mut p = plan_of(&[http("a"), http("b"), http("c")]);
    p.changes[0].action = Action::NoOp;
    p.changes[1].action = Action::Update;
    p.changes[2].restore = Some(Box::new(crate::state::record::HistoryEntry {
        checksum: sum("c"),
        sha256: sum("c"),
        key: "history/c/c.img/x".into(),
        size: 1,
        source_url: None,
        uploaded_at: "2026-11-01T00:00:00Z".into(),
        kept_at: "2026-11-02T00:00:00Z".into(),
    }));
    assert!(units(&p).is_empty());
    let m = matrix(&p, "id", &Limits::default());
    assert_eq!((m.units, m.legs, m.waves.len()), (0, 0, 0));
}

#[test]
fn a_leg_stages_the_units_asked_once_each_and_refuses_anything_else() {
    use crate::hint::Hint;
    let mut p = plan_of(&[
        http("iso"),
        http("same"),
        packer("vm", &["iso"], &[("sum", "{{ images.iso.checksum }}")]),
    ]);
    p.changes[1].action = Action::NoOp;
    let asked = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        requested(&p, &asked(&["vm", "iso", "vm"]), "plan.json"),
        Ok(vec![("vm".to_string(), 2), ("iso".to_string(), 1)])
    );
    let no_bytes = requested(&p, &asked(&["iso", "same"]), "plan.json").unwrap_err();
    assert_eq!(
        no_bytes.to_string(),
        "`same` has nothing to download or build in this plan"
    );
    assert_eq!(no_bytes.hint().as_deref(), Some("its units are: iso, vm"));
    let absent = requested(&p, &asked(&["gone"]), "plan.json").unwrap_err();
    assert_eq!(absent.to_string(), "`gone` is not in this plan");
    p.changes.retain(|c| c.name == "same");
    assert_eq!(
        requested(&p, &asked(&["same"]), "out/plan.json")
            .unwrap_err()
            .hint()
            .as_deref(),
        Some("`out/plan.json` has no units: apply it with `labctl apply out/plan.json`")
    );
}

#[test]
fn one_leg_per_unit_within_the_limits() {
    let p = plan_of(&[http("iso"), packer("vm", &[], &[])]);
    let m = matrix(&p, "0123456789abcdef", &Limits::default());
    assert_eq!(m.plan, "0123456789abcdef");
    assert!(!m.batched && m.notes.is_empty());
    assert_eq!((m.units, m.legs), (2, 2));
    let legs = &m.waves[0].matrix.include;
    assert_eq!(legs[0].leg, "iso");
    assert_eq!(legs[0].units, "iso");
    assert!(!legs[0].kvm);
    assert!(legs[1].kvm);
}

#[test]
fn more_units_than_legs_are_batched_and_builds_stay_apart() {
    let mut specs: Vec<NormalizedSpec> = (0..7).map(|i| http(&format!("d{i}"))).collect();
    specs.extend((0..3).map(|i| packer(&format!("b{i}"), &[], &[])));
    let p = plan_of(&specs);
    let limits = Limits {
        legs_per_matrix: 4,
        ..Limits::default()
    };
    let m = matrix(&p, "id", &limits);
    assert!(m.batched);
    assert_eq!((m.units, m.legs), (10, 4));
    assert_eq!(m.notes.len(), 1, "{:?}", m.notes);
    assert!(m.notes[0].contains("at most 4 legs"), "{}", m.notes[0]);
    let legs = &m.waves[0].matrix.include;
    let mut staged: Vec<String> = legs.iter().flat_map(|l| l.images.clone()).collect();
    staged.sort();
    let mut all: Vec<String> = p.changes.iter().map(|c| c.name.clone()).collect();
    all.sort();
    assert_eq!(staged, all, "every unit in exactly one leg");
    for l in legs {
        let builds = l.images.iter().filter(|n| n.starts_with('b')).count();
        assert!(builds == 0 || builds == l.images.len(), "{l:?} mixes kinds");
        assert_eq!(l.kvm, builds > 0);
        assert_eq!(l.units, l.images.join(","));
    }
    let names: std::collections::BTreeSet<&str> = legs.iter().map(|l| l.leg.as_str()).collect();
    assert_eq!(names.len(), legs.len(), "leg names are unique");
}

#[test]
fn a_matrix_too_large_for_a_job_output_is_batched_until_it_fits() {
    let specs: Vec<NormalizedSpec> = (0..40).map(|i| http(&format!("image-{i:03}"))).collect();
    let p = plan_of(&specs);
    let limits = Limits {
        legs_per_matrix: 256,
        output_bytes: 2_000,
    };
    let m = matrix(&p, "id", &limits);
    let json = serde_json::to_string(&m.waves[0].matrix).unwrap();
    assert!(json.len() <= 2_000, "{} bytes", json.len());
    assert!(m.batched && m.legs < 40);
    assert!(m.notes[0].contains("job output"), "{}", m.notes[0]);
}

#[test]
fn plan_ids_name_the_bytes() {
    assert_eq!(plan_id(b"a plan").len(), 16);
    assert_eq!(plan_id(b"a plan"), plan_id(b"a plan"));
    assert_ne!(plan_id(b"a plan"), plan_id(b"another plan"));
}

#[test]
fn stage_results_read_back_and_refuse_a_blob_key_that_is_not_their_checksum() {
    let blob = StagedBlob {
        key: crate::layout::blob_key(&sum("x")),
        checksum: sum("x"),
        sha256: sum("x"),
        size: 1,
        uploaded: true,
        etag: Some("\"e\"".into()),
        inputs: BTreeMap::new(),
        source: StagedSource::default(),
    };
    let result = StageResult {
        format_version: FORMAT_VERSION.into(),
        plan: "id".into(),
        image: "x".into(),
        status: StageStatus::Staged,
        error: None,
        hint: None,
        blob: Some(blob),
        staged_at: "2026-12-03T00:00:00Z".into(),
        ci_run: None,
    };
    assert_eq!(
        StageResult::parse(result.to_json().as_bytes()),
        Ok(result.clone())
    );
    let mut moved = result.clone();
    moved.blob.as_mut().unwrap().key = "images/x".into();
    assert!(StageResult::parse(moved.to_json().as_bytes())
        .unwrap_err()
        .contains("not the key of its checksum"));
    let mut newer = result;
    newer.format_version = "2.0".into();
    assert!(StageResult::parse(newer.to_json().as_bytes()).is_err());
    assert!(StageResult::parse(&vec![b' '; MAX_RESULT_BYTES + 1]).is_err());
    assert!(StageResult::parse(b"{").is_err());
}

#[test]
fn a_legs_results_read_back_and_refuse_what_a_result_alone_would_be_refused_for() {
    let result = |image: &str| StageResult {
        format_version: FORMAT_VERSION.into(),
        plan: "id".into(),
        image: image.into(),
        status: StageStatus::Failed,
        error: Some("no".into()),
        hint: None,
        blob: None,
        staged_at: "2026-12-03T00:00:00Z".into(),
        ci_run: None,
    };
    let leg = LegResults {
        format_version: FORMAT_VERSION.into(),
        plan: "id".into(),
        results: vec![
            WrittenResult {
                etag: "\"a\"".into(),
                result: result("a"),
            },
            WrittenResult {
                etag: "\"b\"".into(),
                result: result("b"),
            },
        ],
    };
    let json = leg.to_json().expect("small");
    assert_eq!(LegResults::parse(json.as_bytes()), Ok(leg.clone()));
    let mut bad = leg.clone();
    bad.results[1].result.blob = Some(StagedBlob {
        key: "images/x".into(),
        checksum: sum("x"),
        sha256: sum("x"),
        size: 1,
        uploaded: true,
        etag: None,
        inputs: BTreeMap::new(),
        source: StagedSource::default(),
    });
    let why = LegResults::parse(bad.to_json().unwrap().as_bytes()).unwrap_err();
    assert!(why.contains("the result of `b`") && why.contains("not the key of its checksum"));
    let mut newer = leg.clone();
    newer.results[0].result.format_version = "2.0".into();
    assert!(LegResults::parse(newer.to_json().unwrap().as_bytes()).is_err());
    let mut huge = leg;
    huge.results[0].result.error = Some("x".repeat(MAX_LEG_RESULTS_BYTES));
    assert_eq!(huge.to_json(), None, "too large to be read is not written");
    assert!(LegResults::parse(b"[]").is_err());
}

#[test]
fn blob_keys_round_trip_and_reject_anything_else() {
    let c = sum("x");
    let key = crate::layout::blob_key(&c);
    assert!(key.starts_with(".labctl/blobs/sha256/"));
    assert_eq!(crate::layout::checksum_of_blob_key(&key), Some(c));
    for other in [
        ".labctl/blobs/sha256/zz",
        ".labctl/blobs/md5/00",
        ".labctl/blobs/sha256",
        "images/a",
    ] {
        assert_eq!(crate::layout::checksum_of_blob_key(other), None, "{other}");
    }
}

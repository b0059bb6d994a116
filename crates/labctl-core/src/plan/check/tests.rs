use std::collections::BTreeMap;

use super::*;
use crate::checksum::Checksum;
use crate::plan::{compute, Desired, PlanContext, PlanOptions};
use crate::spec::{NormalizedSpec, SpecChecksum, SpecSource};
use crate::state::ActualState;

fn http(name: &str, deps: &[&str]) -> NormalizedSpec {
    NormalizedSpec {
        name: name.into(),
        destination: format!("{name}/{name}.img"),
        source: SpecSource::Http {
            url: format!("https://vendor.example/{name}.img"),
            checksum: SpecChecksum::Digest(Checksum::sha256(name.as_bytes())),
            decompress: None,
            signature: None,
        },
        expected: Some(Checksum::sha256(name.as_bytes())),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        protect: false,
        history: 0,
    }
}

/// A plan the engine made: two images, the second depending on the first.
fn valid() -> Plan {
    let desired: Vec<Desired> = [http("iso", &[]), http("gw", &["iso"])]
        .into_iter()
        .map(Desired::new)
        .collect();
    compute(
        &desired,
        &ActualState::default(),
        &PlanOptions::default(),
        PlanContext {
            manifest: "images.yaml".into(),
            manifest_digest: Checksum::sha256(b"m"),
            store: "file:///s".into(),
        },
    )
    .unwrap()
}

fn problems(plan: &Plan) -> String {
    check(plan).unwrap_err().to_string()
}

#[test]
fn a_plan_the_engine_made_passes() {
    assert_eq!(check(&valid()), Ok(()));
}

#[test]
fn a_dependency_cycle_or_unknown_dependency_is_refused() {
    let mut plan = valid();
    plan.changes[0].depends_on = vec!["gw".into()];
    assert!(
        problems(&plan)
            .contains("change 1 (`iso`): depends on `gw`, which is not an earlier change"),
        "{}",
        problems(&plan)
    );
    let mut plan = valid();
    plan.changes[1].depends_on = vec!["nowhere".into()];
    assert!(problems(&plan).contains("depends on `nowhere`"));
}

#[test]
fn keys_outside_the_image_are_refused() {
    for (key, record, expected) in [
        (
            "metadata/iso/iso.img.json",
            "metadata/iso/iso.img.json",
            "is not under images/",
        ),
        (
            "images/../secret",
            "metadata/../secret.json",
            "key `images/../secret`",
        ),
        (
            "images/iso/iso.img",
            "metadata/other.json",
            "does not belong to",
        ),
        (
            "images/SHA256SUMS",
            "metadata/SHA256SUMS.json",
            "is the consumer index",
        ),
        ("/etc/passwd", "metadata/x.json", "is not under images/"),
    ] {
        let mut plan = valid();
        plan.changes[0].key = key.into();
        plan.changes[0].record_key = record.into();
        let text = problems(&plan);
        assert!(text.contains(expected), "{key}: {text}");
    }
}

#[test]
fn versions_from_elsewhere_are_refused() {
    for (version, expected) in [
        ("1.99", "written by a newer labctl"),
        ("2.0", "is not one this labctl reads"),
        ("one", "is not a plan format version"),
        ("", "is not a plan format version"),
    ] {
        let mut plan = valid();
        plan.format_version = version.into();
        assert!(problems(&plan).contains(expected), "{version}");
    }
    let mut older = valid();
    older.format_version = "1.0".into();
    assert_eq!(check(&older), Ok(()));
}

#[test]
fn edits_that_change_what_apply_does_are_refused() {
    let mut plan = valid();
    plan.changes[1].action = Action::Delete;
    let text = problems(&plan);
    assert!(text.contains("a delete without the `before`"), "{text}");
    assert!(text.contains("the summary does not count"), "{text}");

    let mut plan = valid();
    plan.changes.push(plan.changes[0].clone());
    plan.summary.create += 1;
    assert!(problems(&plan).contains("the image appears twice"));

    let mut plan = valid();
    plan.index.files = vec!["images/iso/iso.img".into()];
    assert!(problems(&plan).contains("the index files must be"));

    let mut plan = valid();
    plan.index.deletes = vec!["images/iso/iso.img".into()];
    assert!(problems(&plan).contains("may only delete"));

    let mut plan = valid();
    plan.prior_state = BTreeMap::from([(".labctl/lock.json".into(), "\"e\"".into())]);
    assert!(problems(&plan).contains("is not a record key"));
}

#[test]
fn only_kept_versions_of_the_same_image_are_history() {
    let hex = "a".repeat(64);
    assert!(is_history_of(
        "images/vyos/x.iso",
        &format!("history/vyos/x.iso/{hex}")
    ));
    for other in [
        format!("history/vyos/y.iso/{hex}"),
        format!("history/vyos/x.iso/{hex}/more"),
        format!("history/vyos/x.iso.bak/{hex}"),
        "history/vyos/x.iso/short".to_string(),
        format!("images/vyos/x.iso/{hex}"),
        "metadata/vyos/x.iso.json".to_string(),
    ] {
        assert!(!is_history_of("images/vyos/x.iso", &other), "{other}");
    }
}

//! `labctl drift` and the GitHub Actions integration, against every store.

use crate::harness::*;
use crate::support::fixture::Faults;

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod drift_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod drift_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod drift_fs { $( #[test] fn $case() { super::$case(super::Backend::Fs) } )* }
        mod drift_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod drift_garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

on_every_store!(
    clean_bucket_has_no_drift,
    every_bucket_drift_kind_is_reported,
    deep_catches_same_size_forged_bytes,
    check_sources_catches_vanished_and_changed_upstreams,
    github_outputs_summaries_and_groups,
    unapplied_manifest_changes_are_drift,
    newer_records_stop_every_plan_and_corrupt_ones_survive_prune,
    records_cloud_sync_cannot_carry_are_unsyncable,
);

fn published(backend: Backend) -> (Lab, Vec<u8>, Vec<u8>) {
    let lab = Lab::new(backend);
    let a = image_bytes(40, 300_000);
    let b = image_bytes(41, 200_000);
    lab.serve("/a.img", a.clone(), Faults::default());
    lab.serve("/b.img.gz", gzip(&b), Faults::default());
    lab.write_manifest(&[
        Entry::raw("a", "/a.img", &a),
        Entry::compressed("b", "/b.img.gz", &gzip(&b), "gzip", &b),
    ]);
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    (lab, a, b)
}

fn findings(run: &Run) -> Vec<(String, String)> {
    let report: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.output()));
    assert_eq!(report["format_version"], "1.2");
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn clean_bucket_has_no_drift(backend: Backend) {
    let (lab, _, _) = published(backend);
    let run = lab.labctl(&["drift"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stdout.contains("No drift. 2 records checked"),
        "{}",
        run.output()
    );
    let deep = lab.labctl(&["drift", "--deep", "--check-sources", "--json"]);
    assert_eq!(deep.code, 0, "{}", deep.output());
    assert_eq!(findings(&deep), vec![]);
}

fn every_bucket_drift_kind_is_reported(backend: Backend) {
    let (lab, a, b) = published(backend);
    // An image leaves the manifest; its record stays: an orphan.
    let c = image_bytes(42, 1000);
    lab.serve("/c.img", c.clone(), Faults::default());
    lab.write_manifest(&[
        Entry::raw("a", "/a.img", &a),
        Entry::compressed("b", "/b.img.gz", &gzip(&b), "gzip", &b),
        Entry::raw("c", "/c.img", &c),
    ]);
    assert_eq!(lab.apply().code, 0);
    lab.write_manifest(&[
        Entry::raw("a", "/a.img", &a),
        Entry::compressed("b", "/b.img.gz", &gzip(&b), "gzip", &b),
    ]);

    lab.delete("images/test/a.img"); // object missing
    lab.put("images/test/b.img", b"replaced by hand"); // modified outside labctl
    lab.put("images/stray.iso", b"nobody knows"); // unmanaged
    lab.put("metadata/junk/x.img.json", b"{oops"); // unreadable record

    let run = lab.labctl(&["drift", "--json"]);
    assert_eq!(run.code, 2, "{}", run.output());
    assert_eq!(
        findings(&run),
        vec![
            (
                "object-missing".to_string(),
                "images/test/a.img".to_string()
            ),
            (
                "object-modified".to_string(),
                "images/test/b.img".to_string()
            ),
            ("unmanaged".to_string(), "images/stray.iso".to_string()),
            ("orphan".to_string(), "images/test/c.img".to_string()),
            (
                "record-unreadable".to_string(),
                "metadata/junk/x.img.json".to_string()
            ),
            // The index still lists the object that is gone: what a NAS would trip over.
            ("index-stale".to_string(), "images/SHA256SUMS".to_string()),
            ("index-stale".to_string(), "images/index.json".to_string()),
        ]
    );
    let human = lab.labctl(&["drift"]);
    assert_eq!(human.code, 2);
    assert!(
        human.stdout.contains("size 200000 → 16"),
        "{}",
        human.output()
    );
    assert!(human.stdout.contains("Drift: 2 index-stale, 1 object-missing, 1 object-modified, 1 orphan, 1 record-unreadable, 1 unmanaged."), "{}", human.output());

    // The plan keeps reporting bucket-side drift as replacements.
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2);
    assert!(
        plan.stdout.contains("because object missing from store"),
        "{}",
        plan.output()
    );
    assert!(
        plan.stdout
            .contains("because object modified outside labctl"),
        "{}",
        plan.output()
    );
}

fn deep_catches_same_size_forged_bytes(backend: Backend) {
    let (lab, a, _) = published(backend);
    let key = "images/test/a.img";
    let meta = lab.head(key).unwrap().user_metadata;
    let mut forged = a.clone();
    forged[1000] ^= 0x20;
    lab.put_with_metadata(key, &forged, meta);

    let shallow = lab.labctl(&["drift", "--json"]);
    assert!(
        !findings(&shallow)
            .iter()
            .any(|(k, _)| k == "content-mismatch"),
        "without --deep the bytes are not read"
    );
    let deep = lab.labctl(&["drift", "--deep", "--json"]);
    assert_eq!(deep.code, 2, "{}", deep.output());
    assert!(
        findings(&deep).contains(&("content-mismatch".to_string(), key.to_string())),
        "{}",
        deep.output()
    );
    assert!(
        deep.stdout.contains(&format!("expected {}", sha256(&a))),
        "{}",
        deep.output()
    );
    assert!(
        deep.stdout.contains(&sha256(&forged).to_string()),
        "{}",
        deep.output()
    );
}

fn check_sources_catches_vanished_and_changed_upstreams(backend: Backend) {
    let (lab, _, b) = published(backend);
    lab.fixture.clear_log();
    lab.fixture.remove("/a.img");
    // Changed upstream, on a server that refuses HEAD: probed with a 1-byte ranged GET.
    lab.serve(
        "/b.img.gz",
        gzip(&image_bytes(43, 250_000)),
        Faults {
            refuse_head: true,
            ..Default::default()
        },
    );
    let quiet = lab.labctl(&["drift", "--json"]);
    assert_eq!(
        quiet.code,
        0,
        "sources are probed only when asked: {}",
        quiet.output()
    );
    let run = lab.labctl(&["drift", "--check-sources", "--json"]);
    assert_eq!(run.code, 2, "{}", run.output());
    let found = findings(&run);
    assert!(
        found.contains(&("source-vanished".to_string(), lab.fixture.url("/a.img"))),
        "{found:?}"
    );
    assert!(
        found.contains(&("source-changed".to_string(), lab.fixture.url("/b.img.gz"))),
        "{found:?}"
    );
    assert!(
        run.stdout.contains(&format!("size {} → ", gzip(&b).len())),
        "{}",
        run.output()
    );
    let log = lab.fixture.log();
    assert!(
        log.iter().all(|e| e.body_bytes <= 1),
        "probes download no image: {log:?}"
    );
    assert!(
        log.iter().any(|e| e.method == "GET"
            && e.range.as_deref() == Some("bytes=0-0")
            && e.status == 206),
        "HEAD refused, so a ranged GET was used: {log:?}"
    );
}

fn github_outputs_summaries_and_groups(backend: Backend) {
    let lab = Lab::new(backend);
    let a = image_bytes(44, 1000);
    lab.serve("/a.img", a.clone(), Faults::default());
    lab.serve(
        "/bad.img",
        a.clone(),
        Faults {
            corrupt: true,
            ..Default::default()
        },
    );
    lab.write_manifest(&[
        Entry::raw("a", "/a.img", &a),
        Entry::raw("bad", "/bad.img", &a),
    ]);
    let output = lab.dir().join("github_output");
    let summary = lab.dir().join("step_summary");
    let env = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_OUTPUT", output.to_str().unwrap()),
        ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
    ];

    let plan = lab.labctl_env(&["plan"], &env);
    assert_eq!(plan.code, 0, "{}", plan.output());
    let outputs = std::fs::read_to_string(&output).unwrap();
    assert!(outputs.contains("changes=true\n"), "{outputs}");
    assert!(outputs.contains("create=2\n"), "{outputs}");
    assert!(std::fs::read_to_string(&summary)
        .unwrap()
        .contains("<!-- labctl-plan -->"));

    let apply = lab.labctl_env(&["apply", "--auto-approve"], &env);
    assert_eq!(apply.code, 1, "{}", apply.output());
    assert!(
        apply.stdout.contains("::group::a: created"),
        "{}",
        apply.output()
    );
    assert!(apply.stdout.contains("::endgroup::"), "{}", apply.output());
    assert!(
        apply.stdout.contains("::error title=labctl apply%3A bad::"),
        "{}",
        apply.output()
    );
    assert_eq!(
        apply.output().matches("checksum mismatch").count(),
        1,
        "a failure is told once, in its annotation: {}",
        apply.output()
    );
    assert!(std::fs::read_to_string(&summary)
        .unwrap()
        .contains("### labctl apply"));

    // The failed image is still to be published: that is drift until an apply succeeds.
    std::fs::write(&output, "").unwrap();
    let drift = lab.labctl_env(&["drift"], &env);
    assert_eq!(drift.code, 2, "{}", drift.output());
    let outputs = std::fs::read_to_string(&output).unwrap();
    assert!(
        outputs.contains("drift=true\n") && outputs.contains("findings=1\n"),
        "{outputs}"
    );
    assert!(
        drift
            .stdout
            .contains("::error title=labctl drift%3A bad::unapplied-change: images/test/bad.img (create: not in store)"),
        "{}",
        drift.output()
    );
}

/// Drift is the plan's changes plus what only drift looks for: a merged manifest change that was
/// never applied (or whose apply failed) is drift, not "No drift".
fn unapplied_manifest_changes_are_drift(backend: Backend) {
    let (lab, _, b) = published(backend);
    let a2 = image_bytes(43, 1000);
    let d = image_bytes(44, 1000);
    lab.serve("/a2.img", a2.clone(), Faults::default());
    lab.serve("/d.img", d.clone(), Faults::default());
    lab.write_manifest(&[
        Entry::raw("a", "/a2.img", &a2),
        Entry::compressed("b", "/b.img.gz", &gzip(&b), "gzip", &b),
        Entry::raw("d", "/d.img", &d),
    ]);
    let run = lab.labctl(&["drift", "--json"]);
    assert_eq!(run.code, 2, "{}", run.output());
    assert_eq!(
        findings(&run),
        vec![
            (
                "unapplied-change".to_string(),
                "images/test/a.img".to_string()
            ),
            (
                "unapplied-change".to_string(),
                "images/test/d.img".to_string()
            ),
        ]
    );
    let human = lab.labctl(&["drift"]);
    assert!(
        human.stdout.contains("replace: checksum changed"),
        "{}",
        human.output()
    );
    assert!(
        human.stdout.contains("create: not in store"),
        "{}",
        human.output()
    );
    // Once applied, the same drift run is clean.
    assert_eq!(lab.apply().code, 0);
    let after = lab.labctl(&["drift"]);
    assert_eq!(after.code, 0, "{}", after.output());
}

/// A record from a newer labctl is never guessed at: plan, apply and drift stop and say to
/// upgrade, and nothing is replaced or pruned. A corrupt record is shown, and `--prune` keeps it.
fn newer_records_stop_every_plan_and_corrupt_ones_survive_prune(backend: Backend) {
    let (lab, a, _) = published(backend);
    let record = lab.record("test/a.img").expect("record of a");
    let mut newer = record.clone();
    newer["schemaVersion"] = serde_json::json!(2);
    newer["somethingNew"] = serde_json::json!({"promise": "kept"});
    let newer_bytes = serde_json::to_vec(&newer).unwrap();
    lab.put("metadata/test/a.img.json", &newer_bytes);
    for args in [
        &["plan"][..],
        &["apply", "--auto-approve", "--prune"][..],
        &["drift"][..],
    ] {
        let run = lab.labctl(args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.output());
        assert!(
            run.stderr
                .contains("1 record is written by a newer labctl: metadata/test/a.img.json"),
            "{args:?}: {}",
            run.output()
        );
        assert!(run.stderr.contains("upgrade labctl"), "{}", run.output());
    }
    assert_eq!(lab.object("test/a.img").as_deref(), Some(&a[..]));
    assert_eq!(
        lab.store_bytes("metadata/test/a.img.json"),
        Some(newer_bytes),
        "the newer record is left as it was"
    );

    // Back to a record this labctl knows; a corrupt record beside it, for an image the manifest
    // no longer names, survives --prune.
    lab.put(
        "metadata/test/a.img.json",
        &serde_json::to_vec(&record).unwrap(),
    );
    lab.put("images/test/gone.img", b"someone still boots this");
    lab.put(
        "metadata/test/gone.img.json",
        b"{\"schemaVersion\": 1, \"na",
    );
    let plan = lab.labctl(&["plan", "--prune"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
    assert!(
        plan.stdout
            .contains("labctl never deletes what it cannot read"),
        "{}",
        plan.output()
    );
    let apply = lab.labctl(&["apply", "--auto-approve", "--prune"]);
    assert_eq!(apply.code, 0, "{}", apply.output());
    assert_eq!(
        lab.store_bytes("images/test/gone.img").as_deref(),
        Some(&b"someone still boots this"[..])
    );
    assert!(lab.store_bytes("metadata/test/gone.img.json").is_some());

    // The manifest claims the corrupt record's key: it is rewritten, with its own reason.
    lab.put("metadata/test/a.img.json", b"not json");
    let plan = lab.labctl(&["plan"]);
    assert!(
        plan.stdout
            .contains("the state record is corrupt: record is not valid JSON"),
        "{}",
        plan.output()
    );
    assert_eq!(lab.apply().code, 0);
    assert_eq!(lab.record("test/a.img").unwrap()["schemaVersion"], 1);
}

/// A record published before such destinations were refused (here: copied under a name that
/// begins with `~`, which Cloud Sync skips) is reported: the bucket holds it, the NAS never will.
fn records_cloud_sync_cannot_carry_are_unsyncable(backend: Backend) {
    let (lab, a, _) = published(backend);
    let record = lab.store_bytes("metadata/test/a.img.json").unwrap();
    lab.put("metadata/test/~a.img.json", &record);
    lab.put("images/test/~a.img", &a);
    let run = lab.labctl(&["drift", "--json"]);
    assert_eq!(run.code, 2, "{}", run.output());
    let found = findings(&run);
    assert!(
        found.contains(&("unsyncable".to_string(), "images/test/~a.img".to_string())),
        "{found:?}"
    );
    let human = lab.labctl(&["drift"]);
    assert!(
        human
            .stdout
            .contains("begins with `~`, which Synology Cloud Sync skips"),
        "{}",
        human.output()
    );
}

//! A run killed with SIGKILL at each of its commit points, then recovered: an apply needs no
//! human step (the killed run's lease expires and the next apply takes the lock over and adopts
//! what the killed run published), a promotion takes the documented steps. Every record and
//! object afterwards equals, field by field, what an uninterrupted run leaves in another prefix
//! of the same store — the download's facts included, so `drift --check-sources` still sees the
//! vendor replace a file. Where the facts are truly lost, the record says so and drift reports
//! `source-unknown`.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::Duration;

use crate::fanout::{
    assert_converged, plan_with_matrix, promote, recover, setup, snapshot, stage_all_waves, Images,
    BUILD_ENV, PLAN,
};
use crate::harness::*;
use crate::support::fixture::Faults;

macro_rules! on_locking_s3_stores {
    ($($case:ident),* $(,)?) => {
        mod recovery_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod recovery_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod recovery_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
    };
}

on_locking_s3_stores!(
    an_apply_killed_at_each_commit_point_is_recovered_as_if_uninterrupted,
    a_promotion_killed_at_each_commit_point_is_recovered_as_if_uninterrupted,
    an_object_whose_facts_are_lost_is_adopted_and_reported_as_source_unknown,
);

/// The lease is the bound on how long a request the killed run sent may still be carried out by
/// the store (docs/decisions.md, the timing argument). s3s-fs checks a copy's `If-Match` and
/// then copies in place, not atomically: on a loaded 2-core machine a request it is still
/// working on must not meet the next run's writes, so the lease is not the shortest possible.
const LEASE: &str = "8s";
const LEASE_SECS: u64 = 8;
/// Short prefixes: s3s-fs names a file after the whole key, and a staged sha512 blob's key is
/// already 149 characters (NAME_MAX is 255 after its encoding).
const REFERENCE: &str = "ref";
const POINTS: [&str; 4] = [
    "history-kept",
    "object-visible",
    "record-written",
    "index-written",
];

/// Starts `args` with `LABCTL_TEST_HALT_AT=point`, waits until it says it halted there, and
/// kills it with SIGKILL. Returns what it printed.
fn kill_at(lab: &Lab, args: &[&str], point: &str) -> String {
    let mut env = vec![("LABCTL_TEST_HALT_AT", point)];
    env.extend_from_slice(BUILD_ENV);
    let mut child = lab.spawn_env(args, &env);
    let mut stdout = child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let halted = line.contains("halted at");
            let _ = tx.send(line);
            if halted {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let halted = loop {
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => {
                let halted = line.contains(&format!("halted at {point}"));
                seen.push(line);
                if halted {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let stdout = drain.join().unwrap();
    let printed = format!("{stdout}\n{}", seen.join("\n"));
    assert!(
        halted,
        "labctl {args:?} never reached `{point}`:\n{printed}"
    );
    assert_eq!(status.code(), None, "killed by a signal");
    printed
}

/// Every prefix of the store holds what the uninterrupted run left in `reference`.
fn assert_same_as(lab: &Lab, reference: &str, prefix: &str, what: &str) {
    lab.use_prefix(reference);
    let expected = snapshot(lab, lab.store().as_ref(), "", "");
    lab.use_prefix(prefix);
    let got = snapshot(lab, lab.store().as_ref(), "", "");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: the same keys"
    );
    for (key, value) in &got {
        assert_eq!(
            value, &expected[key],
            "{what}: `{key}` differs from an uninterrupted run's"
        );
    }
}

fn apply_args() -> Vec<&'static str> {
    vec![
        "apply",
        "--auto-approve",
        "--lock-lease",
        LEASE,
        "--lock-timeout",
        "2m",
    ]
}

/// The vendor replaces each v2 file at its URL: every recovered prefix reports it.
fn vendor_replaces_the_files(lab: &Lab, prefixes: &[String]) {
    let other = Images::new(900);
    lab.serve("/iso-v2", other.iso.clone(), Faults::default());
    lab.serve("/xz-v2", xz(&other.xz_plain), Faults::default());
    lab.serve("/wide-v2", other.wide.clone(), Faults::default());
    for prefix in prefixes {
        lab.use_prefix(prefix);
        let drift = lab.labctl(&["drift", "--check-sources", "--json"]);
        assert_eq!(drift.code, 2, "{prefix}: {}", drift.output());
        let report: serde_json::Value = serde_json::from_str(&drift.stdout).unwrap();
        let mut changed: Vec<&str> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "source-changed")
            .map(|f| f["image"].as_str().unwrap())
            .collect();
        changed.sort();
        assert_eq!(
            changed,
            ["iso", "packed", "wide"],
            "{prefix}: {}",
            drift.stdout
        );
    }
}

fn an_apply_killed_at_each_commit_point_is_recovered_as_if_uninterrupted(backend: Backend) {
    let (lab, _) = setup(backend);
    let (v1, v2) = (Images::new(40), Images::new(60));
    let args = apply_args();
    // v1 published, then v2 over it (a replace of every image, the ISO kept in the history).
    let publish_v1 = |prefix: &str| {
        lab.use_prefix(prefix);
        v1.install(&lab, "v1");
        let run = lab.labctl_env(&args, BUILD_ENV);
        assert_eq!(run.code, 0, "{prefix}: {}", run.output());
        v2.install(&lab, "v2");
    };
    publish_v1(REFERENCE);
    let run = lab.labctl_env(&args, BUILD_ENV);
    assert_eq!(run.code, 0, "{}", run.output());

    let mut prefixes = vec![REFERENCE.to_string()];
    for (i, point) in POINTS.into_iter().enumerate() {
        let prefix = format!("a{i}");
        publish_v1(&prefix);
        kill_at(&lab, &args, point);
        assert!(
            lab.head(".labctl/lock.json").is_some(),
            "{point}: the killed run left its lock"
        );
        // No human step: the next apply waits out the dead run's lease and takes it over.
        let recovered = lab.labctl_env(&args, BUILD_ENV);
        assert_eq!(recovered.code, 0, "{point}: {}", recovered.output());
        assert!(
            recovered.stderr.contains("lease expired"),
            "{point}: {}",
            recovered.output()
        );
        assert!(lab.head(".labctl/lock.json").is_none(), "{point}");
        assert_converged(&lab);
        assert_same_as(&lab, REFERENCE, &prefix, point);
        prefixes.push(prefix);
    }
    vendor_replaces_the_files(&lab, &prefixes);
}

fn a_promotion_killed_at_each_commit_point_is_recovered_as_if_uninterrupted(backend: Backend) {
    let (lab, _) = setup(backend);
    let (v1, v2) = (Images::new(40), Images::new(60));
    let args = apply_args();
    let stage_v2 = |prefix: &str| {
        lab.use_prefix(prefix);
        v1.install(&lab, "v1");
        let run = lab.labctl_env(&args, BUILD_ENV);
        assert_eq!(run.code, 0, "{prefix}: {}", run.output());
        v2.install(&lab, "v2");
        let matrix = plan_with_matrix(&lab);
        stage_all_waves(&lab, &matrix);
    };
    stage_v2(REFERENCE);
    let promoted = promote(&lab);
    assert_eq!(promoted.code, 0, "{}", promoted.output());

    let mut prefixes = vec![REFERENCE.to_string()];
    for (i, point) in POINTS.into_iter().enumerate() {
        let prefix = format!("p{i}");
        stage_v2(&prefix);
        let mut promotion = vec!["apply", PLAN, "--staged", "--lock-lease", LEASE];
        // s3s-fs's CopyObject writes the bytes in place and then the metadata, and stops between
        // the two when the request is dropped: a copy still in flight when the run is killed
        // leaves an object holding new bytes under old labels, which no client can tell apart
        // without reading it (drift --deep does). Atomic stores (moto, Ceph) are killed with
        // other images' copies in flight; on s3s-fs one image at a time keeps the kill at the
        // commit point itself.
        if backend == Backend::S3sFs {
            promotion.extend(["--parallelism", "1"]);
        }
        kill_at(&lab, &promotion, point);
        // Requests the killed run had sent may still be carried out by the store (s3s-fs copies
        // in place, not atomically): its lease is the bound the lock promises, so the documented
        // force-unlock comes after it, as an operator who checked would.
        std::thread::sleep(Duration::from_secs(LEASE_SECS));
        recover(&lab);
        assert_converged(&lab);
        assert_same_as(&lab, REFERENCE, &prefix, point);
        prefixes.push(prefix);
    }
    vendor_replaces_the_files(&lab, &prefixes);
}

fn an_object_whose_facts_are_lost_is_adopted_and_reported_as_source_unknown(backend: Backend) {
    let lab = Lab::new(backend);
    let iso = image_bytes(7, 300_000);
    lab.serve("/iso", iso.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("iso", "/iso", &iso)]);
    let args = apply_args();
    kill_at(&lab, &args, "object-visible");
    // As an object published before objects carried their facts: only what says which bytes
    // they are.
    let key = "images/test/iso.img";
    let object = lab
        .head(key)
        .expect("the killed run made the object visible");
    assert_eq!(object.user_metadata["labctl-facts"], "complete");
    let identity: std::collections::BTreeMap<String, String> = object
        .user_metadata
        .into_iter()
        .filter(|(k, _)| k == "labctl-checksum" || k == "labctl-fingerprint")
        .collect();
    let store = lab.store();
    lab.runtime
        .block_on(store.set_metadata(key, identity))
        .unwrap();

    let recovered = lab.labctl(&args);
    assert_eq!(recovered.code, 0, "{}", recovered.output());
    assert!(
        recovered.stdout.contains("adopted"),
        "{}",
        recovered.output()
    );
    assert_eq!(lab.object("test/iso.img").unwrap(), iso);
    let record: serde_json::Value =
        serde_json::from_slice(&lab.store_bytes("metadata/test/iso.img.json").unwrap()).unwrap();
    assert_eq!(record["source"]["factsUnknown"], true, "{record}");
    assert!(record["source"].get("etag").is_none(), "{record}");

    // Never "No drift": the vendor could have replaced the file and nobody would know.
    let drift = lab.labctl(&["drift", "--check-sources", "--json"]);
    assert_eq!(drift.code, 2, "{}", drift.output());
    let report: serde_json::Value = serde_json::from_str(&drift.stdout).unwrap();
    let kinds: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["source-unknown"], "{}", drift.stdout);
    // Without --check-sources the store is as the manifest says.
    assert_eq!(lab.labctl(&["drift"]).code, 0);

    // The documented way out: download it again, facts and all.
    let replaced = lab.labctl(&["apply", "--auto-approve", "--replace", "iso"]);
    assert_eq!(replaced.code, 0, "{}", replaced.output());
    let record: serde_json::Value =
        serde_json::from_slice(&lab.store_bytes("metadata/test/iso.img.json").unwrap()).unwrap();
    assert!(record["source"].get("factsUnknown").is_none(), "{record}");
    assert!(record["source"]["etag"].is_string(), "{record}");
    assert_eq!(
        lab.labctl(&["drift", "--check-sources"]).code,
        0,
        "known facts, unchanged file"
    );
}

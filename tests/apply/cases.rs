//! Each case runs against s3s-fs, moto, Ceph RGW, Garage and the filesystem store; cases about
//! the lock run where the lock works (not on Garage, which ignores conditional writes).

use std::time::Duration;

use crate::harness::*;
use crate::support::fixture::Faults;
use crate::support::proxy::Proxy;

const MIB: usize = 1024 * 1024;

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod fs { $( #[test] fn $case() { super::$case(super::Backend::Fs) } )* }
        mod ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

/// Where the store lock works: every backend but Garage.
macro_rules! on_every_locking_store {
    ($($case:ident),* $(,)?) => {
        mod more_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod more_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod more_fs { $( #[test] fn $case() { super::$case(super::Backend::Fs) } )* }
        mod more_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
    };
}

on_every_store!(
    publishes_every_format_and_second_apply_moves_no_bytes,
    source_checksum_mismatch_publishes_nothing,
    decompressed_checksum_mismatch_publishes_nothing,
    dropped_body_resumes_with_range,
    server_ignoring_range_restarts_from_zero,
    retries_503_then_succeeds,
    refuses_without_a_terminal_or_auto_approve,
    stale_plans_are_refused_and_fresh_ones_applied,
    failed_image_skips_only_its_dependents,
    prune_deletes_orphans,
    an_object_published_without_its_record_is_adopted_not_downloaded,
    an_update_keeps_what_is_known_about_the_bytes,
    a_record_rewritten_after_the_plan_makes_it_stale,
);

/// A saved plan names the ETag of every record it read; a record rewritten since (by hand, by
/// another run) makes it stale — also on a store that lists no ETags (s3s-fs).
fn a_record_rewritten_after_the_plan_makes_it_stale(backend: Backend) {
    let lab = Lab::new(backend);
    let a = image_bytes(28, 1000);
    let b = image_bytes(29, 1000);
    lab.serve("/a.img", a.clone(), Faults::default());
    lab.serve("/b.img", b.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &a)]);
    assert_ok(&lab.apply());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &a), Entry::raw("b", "/b.img", &b)]);
    let saved = lab.dir().join("plan.json");
    let plan = lab.labctl(&["plan", "--out", saved.to_str().unwrap()]);
    assert_eq!(plan.code, 0, "{}", plan.output());
    let mut record = lab.record("test/a.img").unwrap();
    record["protect"] = serde_json::json!(true);
    lab.put(
        "metadata/test/a.img.json",
        &serde_json::to_vec_pretty(&record).unwrap(),
    );
    let run = lab.labctl(&["apply", saved.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .contains("record `metadata/test/a.img.json` changed"),
        "{}",
        run.output()
    );
    assert!(lab.object("test/b.img").is_none(), "nothing was applied");
}

fn publishes_every_format_and_second_apply_moves_no_bytes(backend: Backend) {
    let lab = Lab::new(backend);
    let raw = image_bytes(1, 6 * MIB);
    let big = image_bytes(2, 12 * MIB + 12345); // three parts of 5 MiB
    let gz = image_bytes(3, 7 * MIB);
    let zs = image_bytes(4, 5 * MIB); // exactly one part
    let small = image_bytes(5, 1000);
    lab.serve("/raw.img", raw.clone(), Faults::default());
    lab.serve("/big.img.xz", xz(&big), Faults::default());
    lab.serve("/gz.img.gz", gzip(&gz), Faults::default());
    lab.serve("/zs.img.zst", zstd(&zs), Faults::default());
    lab.serve("/small.img", small.clone(), Faults::default());
    let mut sha512_entry = Entry::raw("small512", "/small.img", &small);
    sha512_entry.checksum = sha512(&small);
    lab.write_manifest(&[
        Entry::raw("raw", "/raw.img", &raw),
        Entry::compressed("big", "/big.img.xz", &xz(&big), "xz", &big),
        Entry::compressed("gz", "/gz.img.gz", &gzip(&gz), "gzip", &gz),
        Entry::compressed("zs", "/zs.img.zst", &zstd(&zs), "zstd", &zs),
        sha512_entry,
    ]);

    let run = lab.apply();
    assert_ok(&run);
    assert!(
        run.stdout.contains("Apply complete: 5 created."),
        "{}",
        run.output()
    );
    for (name, body) in [
        ("raw", &raw),
        ("big", &big),
        ("gz", &gz),
        ("zs", &zs),
        ("small512", &small),
    ] {
        let dest = format!("test/{name}.img");
        let got = lab
            .object(&dest)
            .unwrap_or_else(|| panic!("{name} was not published"));
        assert!(
            got == *body,
            "{name}: published bytes differ ({} vs {} bytes)",
            got.len(),
            body.len()
        );
        let record = lab.record(&dest).unwrap();
        assert_eq!(record["schemaVersion"], 1);
        assert_eq!(record["name"], name);
        assert_eq!(record["size"], body.len() as u64);
        let meta = lab.head(&format!("images/{dest}")).unwrap().user_metadata;
        assert_eq!(
            meta.get("labctl-checksum"),
            record["checksum"].as_str().map(str::to_string).as_ref()
        );
        assert_eq!(
            meta.get("labctl-fingerprint"),
            record["fingerprint"].as_str().map(str::to_string).as_ref()
        );
    }
    assert_eq!(
        lab.record("test/small512.img").unwrap()["checksum"],
        sha512(&small).to_string()
    );
    assert_eq!(
        lab.record("test/big.img").unwrap()["source"]["checksum"],
        sha256(&xz(&big)).to_string()
    );
    if let Some(pending) = lab.pending_uploads() {
        assert!(pending.is_empty(), "{pending:?}");
    }
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "the lock is released"
    );

    lab.fixture.clear_log();
    let again = lab.apply();
    assert_ok(&again);
    assert!(again.stdout.contains("No changes."), "{}", again.output());
    assert_eq!(
        lab.fixture.log(),
        vec![],
        "a second apply downloads nothing"
    );

    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
}

fn mismatch_case(backend: Backend, wrong_source: bool) {
    let lab = Lab::new(backend);
    let big = image_bytes(7, 12 * MIB);
    let compressed = xz(&big);
    lab.serve("/big.img.xz", compressed.clone(), Faults::default());
    let mut entry = Entry::compressed("big", "/big.img.xz", &compressed, "xz", &big);
    let wrong = sha256(b"something else");
    if wrong_source {
        entry.checksum = wrong.clone();
    } else {
        entry.expected = Some(wrong.clone());
    }
    lab.write_manifest(&[entry]);
    let run = lab.apply();
    assert_eq!(run.code, 1, "{}", run.output());
    let actual = if wrong_source {
        sha256(&compressed)
    } else {
        sha256(&big)
    };
    let text = run.output();
    assert!(text.contains("big"), "{text}");
    assert!(text.contains(&format!("expected {wrong}")), "{text}");
    assert!(text.contains(&format!("got {actual}")), "{text}");
    assert!(lab.object("test/big.img").is_none(), "nothing is visible");
    assert!(lab.record("test/big.img").is_none(), "no record is written");
    if let Some(pending) = lab.pending_uploads() {
        assert!(
            pending.is_empty(),
            "the multipart upload was aborted: {pending:?}"
        );
    }
    assert!(run.stderr.contains("✗ big"), "{text}");
    assert_eq!(
        text.matches(&format!("expected {wrong}")).count(),
        1,
        "the failure is told once, in the summary: {text}"
    );
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "the lock is released after a failure"
    );
}

fn source_checksum_mismatch_publishes_nothing(backend: Backend) {
    mismatch_case(backend, true);
}

fn decompressed_checksum_mismatch_publishes_nothing(backend: Backend) {
    mismatch_case(backend, false);
}

fn dropped_body_resumes_with_range(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(8, 12 * MIB);
    lab.serve(
        "/drop.img",
        body.clone(),
        Faults {
            drop_after: Some(3 * MIB as u64),
            ..Default::default()
        },
    );
    lab.write_manifest(&[Entry::raw("drop", "/drop.img", &body)]);
    let run = lab.apply();
    assert_ok(&run);
    assert!(
        lab.object("test/drop.img").unwrap() == body,
        "resumed bytes are correct"
    );
    let log = lab.fixture.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!((log[0].status, log[0].body_bytes), (200, 3 * MIB as u64));
    assert_eq!(log[1].status, 206);
    assert_eq!(
        log[1].range.as_deref(),
        Some(format!("bytes={}-", 3 * MIB).as_str())
    );
    assert_eq!(
        lab.fixture.bytes_sent("/drop.img"),
        body.len() as u64,
        "no byte fetched twice"
    );
}

fn server_ignoring_range_restarts_from_zero(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(9, 8 * MIB);
    let compressed = gzip(&body);
    lab.serve(
        "/norange.img.gz",
        compressed.clone(),
        Faults {
            drop_after: Some((compressed.len() / 2) as u64),
            ignore_range: true,
            ..Default::default()
        },
    );
    lab.write_manifest(&[Entry::compressed(
        "norange",
        "/norange.img.gz",
        &compressed,
        "gzip",
        &body,
    )]);
    let run = lab.apply();
    assert_ok(&run);
    assert!(lab.object("test/norange.img").unwrap() == body);
    let log = lab.fixture.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[1].range.is_some(), "a resume was attempted");
    assert_eq!(log[1].status, 200, "and answered with the whole body");
    assert_eq!(log[1].body_bytes, compressed.len() as u64);
    assert!(
        run.stderr.contains("starting over from byte 0"),
        "{}",
        run.output()
    );
    if let Some(pending) = lab.pending_uploads() {
        assert!(
            pending.is_empty(),
            "the first attempt's upload was aborted: {pending:?}"
        );
    }
}

fn retries_503_then_succeeds(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(10, MIB);
    lab.serve(
        "/flaky.img",
        body.clone(),
        Faults {
            fail_first: 2,
            ..Default::default()
        },
    );
    lab.write_manifest(&[Entry::raw("flaky", "/flaky.img", &body)]);
    assert_ok(&lab.apply());
    let statuses: Vec<u16> = lab.fixture.log().iter().map(|e| e.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert!(lab.object("test/flaky.img").unwrap() == body);
}

fn refuses_without_a_terminal_or_auto_approve(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(11, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    let run = lab.labctl(&["apply"]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .contains("refusing to apply without confirmation"),
        "{}",
        run.output()
    );
    assert!(run.stderr.contains("--auto-approve"), "{}", run.output());
    assert!(lab.object("test/a.img").is_none());
    assert!(lab.head(".labctl/lock.json").is_none());
    assert_eq!(lab.fixture.log(), vec![]);
}

fn stale_plans_are_refused_and_fresh_ones_applied(backend: Backend) {
    let lab = Lab::new(backend);
    let a = image_bytes(12, 2000);
    let b = image_bytes(13, 3000);
    lab.serve("/a.img", a.clone(), Faults::default());
    lab.serve("/b.img", b.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &a)]);
    let plan_file = lab.dir().join("plan.json");
    let plan_arg = plan_file.display().to_string();

    // A fresh saved plan is applied without a prompt.
    assert_eq!(lab.labctl(&["plan", "--out", &plan_arg]).code, 0);
    let run = lab.labctl(&["apply", &plan_arg]);
    assert_ok(&run);
    assert!(lab.object("test/a.img").unwrap() == a);

    // The same plan again: the record it was computed without now exists.
    let run = lab.labctl(&["apply", &plan_arg]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(run.stderr.contains("the plan is stale"), "{}", run.output());
    assert!(
        run.stderr
            .contains("record `metadata/test/a.img.json` was added"),
        "{}",
        run.output()
    );

    // A plan made, then the manifest edited: stale.
    lab.write_manifest(&[Entry::raw("a", "/a.img", &a), Entry::raw("b", "/b.img", &b)]);
    assert_eq!(lab.labctl(&["plan", "--out", &plan_arg]).code, 0);
    lab.write_manifest(&[Entry::raw("b", "/b.img", &b), Entry::raw("a", "/a.img", &a)]);
    let run = lab.labctl(&["apply", &plan_arg]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(run.stderr.contains("manifest"), "{}", run.output());
    assert!(
        lab.object("test/b.img").is_none(),
        "a stale plan changes nothing"
    );
}

fn held_lock_is_reported_and_force_unlocked(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(14, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    let lock = serde_json::json!({
        "id": "deadbeef00000001", "holder": "ci", "host": "runner-7", "pid": 4242,
        "operation": "apply", "run_url": "https://github.com/lab/images/actions/runs/1",
        "created_at": "2026-11-26T08:00:00Z", "labctl_version": "0.1.0"
    });
    lab.put(".labctl/lock.json", lock.to_string().as_bytes());

    let run = lab.labctl(&["apply", "--auto-approve", "--lock-timeout", "1s"]);
    assert_eq!(run.code, 1, "{}", run.output());
    for expected in [
        "locked by ci on runner-7 (pid 4242)",
        "https://github.com/lab/images/actions/runs/1",
        "labctl force-unlock deadbeef00000001",
    ] {
        assert!(
            run.stderr.contains(expected),
            "missing {expected:?}: {}",
            run.output()
        );
    }
    assert!(lab.object("test/a.img").is_none());

    let wrong = lab.labctl(&["force-unlock", "0000"]);
    assert_eq!(wrong.code, 1, "{}", wrong.output());
    let unlock = lab.labctl(&["force-unlock", "deadbeef00000001"]);
    assert_ok(&unlock);
    assert_ok(&lab.apply());
    assert!(lab.object("test/a.img").unwrap() == body);
}

fn concurrent_apply_fails_on_the_lock(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(15, 6 * MIB);
    // About three seconds to serve: the second apply starts while the first holds the lock.
    lab.serve(
        "/slow.img",
        body.clone(),
        Faults {
            delay_per_mib: Duration::from_millis(500),
            ..Default::default()
        },
    );
    lab.write_manifest(&[Entry::raw("slow", "/slow.img", &body)]);
    let args = ["apply", "--auto-approve", "--part-size", "5"];
    let first = lab.spawn(&args);
    assert!(
        lab.wait_for_key(".labctl/lock.json", Duration::from_secs(30)),
        "the first apply took the lock"
    );
    let second = lab.labctl(&args);
    let first = finish(first, &args);
    assert_ok(&first);
    assert_eq!(second.code, 1, "{}", second.output());
    assert!(
        second.stderr.contains("the store is locked by"),
        "{}",
        second.output()
    );
    assert!(lab.object("test/slow.img").unwrap() == body);
    assert_eq!(
        lab.fixture.log().len(),
        1,
        "only the lock holder downloaded"
    );
}

fn failed_image_skips_only_its_dependents(backend: Backend) {
    let lab = Lab::new(backend);
    let good = image_bytes(16, 2000);
    let base = image_bytes(17, 2000);
    lab.serve("/good.img", good.clone(), Faults::default());
    lab.serve(
        "/base.img",
        base.clone(),
        Faults {
            corrupt: true,
            ..Default::default()
        },
    );
    lab.serve("/child.img", good.clone(), Faults::default());
    let mut child = Entry::raw("child", "/child.img", &good);
    child.depends_on = vec!["base"];
    lab.write_manifest(&[
        Entry::raw("base", "/base.img", &base),
        child,
        Entry::raw("good", "/good.img", &good),
    ]);
    let run = lab.apply();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(run.stderr.contains("✗ base"), "{}", run.output());
    assert!(
        run.stdout
            .contains("- child: skipped (dependency base failed)"),
        "{}",
        run.output()
    );
    assert!(run.stdout.contains("✓ good"), "{}", run.output());
    assert!(lab.object("test/good.img").is_some());
    assert!(lab.object("test/base.img").is_none());
    assert!(lab.object("test/child.img").is_none());
    assert!(
        !lab.fixture.log().iter().any(|e| e.path == "/child.img"),
        "a skipped image is not fetched"
    );
}

fn prune_deletes_orphans(backend: Backend) {
    let lab = Lab::new(backend);
    let a = image_bytes(18, 2000);
    let b = image_bytes(19, 2000);
    lab.serve("/a.img", a.clone(), Faults::default());
    lab.serve("/b.img", b.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &a), Entry::raw("b", "/b.img", &b)]);
    assert_ok(&lab.apply());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &a)]);
    let kept = lab.apply();
    assert_ok(&kept);
    assert!(
        lab.object("test/b.img").is_some(),
        "orphans are kept without --prune"
    );
    let pruned = lab.labctl(&["apply", "--auto-approve", "--prune"]);
    assert_ok(&pruned);
    assert!(pruned.stdout.contains("1 deleted"), "{}", pruned.output());
    assert!(lab.object("test/b.img").is_none());
    assert!(lab.record("test/b.img").is_none());
    assert!(lab.object("test/a.img").is_some());
}

// ---- S3 only ---------------------------------------------------------------------------------

fn s3_errors_are_retried(backend: Backend) {
    let lab = Lab::new(backend);
    let proxy = Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let lab = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    let body = image_bytes(20, 11 * MIB);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    proxy.fail("partNumber=2", 2);
    proxy.fail("PUT /lab-images/metadata/", 1);
    let run = lab.apply();
    assert_ok(&run);
    assert_eq!(proxy.injected(), 3, "{:?}", proxy.requests());
    assert!(lab.object("test/a.img").unwrap() == body);
    assert!(lab.record("test/a.img").is_some());
}

/// A store that refuses a part mid-upload (a bucket policy, a quota) is named as the cause: the
/// operation, the key and the store's error code — not a checksum mismatch of the vendor's
/// download, whose bytes were never all read.
fn store_refusal_mid_upload_names_its_cause(backend: Backend) {
    let lab = Lab::new(backend);
    let proxy = Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let lab = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    let body = image_bytes(21, 40 * MIB);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    proxy.refuse("partNumber=2", 1, 403, "AccessDenied");
    let run = lab.labctl(&["apply", "--auto-approve", "--part-size", "5"]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .contains("✗ a: upload part `images/test/a.img` failed: AccessDenied (HTTP 403)"),
        "{}",
        run.output()
    );
    assert!(
        !run.output().contains("checksum mismatch"),
        "{}",
        run.output()
    );
    assert!(lab.object("test/a.img").is_none());
    if let Some(pending) = lab.pending_uploads() {
        assert!(pending.is_empty(), "the upload was aborted: {pending:?}");
    }
}

#[test]
fn store_refusal_mid_upload_names_its_cause_s3s_fs() {
    store_refusal_mid_upload_names_its_cause(Backend::S3sFs);
}

#[test]
fn store_refusal_mid_upload_names_its_cause_moto() {
    store_refusal_mid_upload_names_its_cause(Backend::Moto);
}

#[test]
fn s3_errors_are_retried_s3s_fs() {
    s3_errors_are_retried(Backend::S3sFs);
}

#[test]
fn s3_errors_are_retried_moto() {
    s3_errors_are_retried(Backend::Moto);
}

/// Memory stays bounded by part size × parts in flight, whatever the image size.
#[test]
fn peak_memory_is_bounded() {
    let lab = Lab::new(Backend::S3sFs);
    let body = image_bytes(21, 160 * MIB);
    let compressed = zstd(&body);
    lab.serve("/big.img.zst", compressed.clone(), Faults::default());
    lab.write_manifest(&[Entry::compressed(
        "big",
        "/big.img.zst",
        &compressed,
        "zstd",
        &body,
    )]);
    drop(body);
    let kib = apply_peak_rss_kib(&lab, &["--part-size", "16", "--parts-in-flight", "4"]);
    assert!(
        kib < 150 * 1024,
        "peak RSS {} MiB exceeds 150 MiB",
        kib / 1024
    );
}

/// The peak RSS of `labctl apply --auto-approve ARGS…` of the lab's manifest into its store.
fn apply_peak_rss_kib(lab: &Lab, args: &[&str]) -> u64 {
    let manifest = lab.manifest_path().display().to_string();
    let store = lab.store_arg();
    peak_rss_kib(
        timed_labctl()
            .args(["apply", "--auto-approve"])
            .args(args)
            .args(["--manifest", &manifest, "--store", &store])
            .env("LABCTL_ALLOW_INSECURE_LOOPBACK", "1")
            .envs(lab.server.as_ref().unwrap().env())
            .current_dir(lab.dir()),
    )
}

/// Memory follows one budget for the run's parts, not `--parallelism`: 64 images at once, of
/// which hundreds are tiny (each holding what it needs, not a whole part) and four are 48 MiB
/// images decompressed on the way (taking turns for their parts), stay under 100 MiB.
#[test]
fn memory_follows_one_budget_not_parallelism() {
    let lab = Lab::new(Backend::S3sFs);
    let mut entries = Vec::new();
    for i in 0..4u64 {
        let body = image_bytes(100 + i, 48 * MIB);
        let compressed = zstd(&body);
        let name: &'static str = Box::leak(format!("large-{i}").into_boxed_str());
        let path: &'static str = Box::leak(format!("/large-{i}.img.zst").into_boxed_str());
        lab.serve(path, compressed.clone(), Faults::default());
        entries.push(Entry::compressed(name, path, &compressed, "zstd", &body));
    }
    let tiny: Vec<Vec<u8>> = (0..600)
        .map(|i| format!("tiny image {i}\n").repeat(64).into_bytes())
        .collect();
    for (i, body) in tiny.iter().enumerate() {
        let name: &'static str = Box::leak(format!("tiny-{i:03}").into_boxed_str());
        let path: &'static str = Box::leak(format!("/tiny-{i:03}.bin").into_boxed_str());
        lab.serve(path, body.clone(), Faults::default());
        entries.push(Entry::raw(name, path, body));
    }
    lab.write_manifest(&entries);
    let kib = apply_peak_rss_kib(&lab, &["--parallelism", "64"]);
    assert!(
        kib < 100 * 1024,
        "peak RSS {} MiB at --parallelism 64 exceeds 100 MiB",
        kib / 1024
    );
    for (i, body) in tiny.iter().enumerate().step_by(97) {
        assert_eq!(
            lab.object(&format!("test/tiny-{i:03}.img")).as_deref(),
            Some(body.as_slice())
        );
    }
    assert_eq!(
        lab.object("test/large-3.img").map(|b| sha256(&b)),
        Some(sha256(&image_bytes(103, 48 * MIB)))
    );
}

/// An xz dictionary is held from the run's budget while its decoder lives: two `xz -9` images
/// (a 64 MiB dictionary each, filled by 96 MiB of output) decode one after the other, each with
/// one part at a time beside its dictionary, instead of both dictionaries at once (130 MiB on
/// their own). (Measured with the release binary: docs/benchmarks.md.)
#[test]
fn xz_dictionaries_are_held_from_the_budget_not_beside_it() {
    use std::io::Read;
    let lab = Lab::new(Backend::S3sFs);
    let body = vec![0u8; 96 * MIB];
    let compressed = {
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new(&body[..], 9)
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let mut entries = Vec::new();
    for name in ["nine-a", "nine-b"] {
        let path: &'static str = Box::leak(format!("/{name}.raw.xz").into_boxed_str());
        lab.serve(path, compressed.clone(), Faults::default());
        entries.push(Entry::compressed(name, path, &compressed, "xz", &body));
    }
    lab.write_manifest(&entries);
    let kib = apply_peak_rss_kib(&lab, &["--parallelism", "64"]);
    assert!(
        kib < 120 * 1024,
        "peak RSS {} MiB: the two 64 MiB dictionaries were held at once",
        kib / 1024
    );
    eprintln!("peak RSS with two xz -9 images: {} MiB", kib / 1024);
    assert_eq!(
        lab.object("test/nine-b.img").map(|b| sha256(&b)),
        Some(sha256(&body))
    );
}

/// The consumer index at the end of an apply is built from the records the apply just wrote:
/// none is fetched again, nor its object HEADed (s3s-fs lists no ETags, which would otherwise
/// take one HEAD per object). Each new image costs the store its object and its record.
#[test]
fn the_index_asks_the_store_nothing_the_apply_just_wrote() {
    let lab = Lab::new(Backend::S3sFs);
    let proxy = Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let lab = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    let mut entries = Vec::new();
    for i in 0..12 {
        let body = format!("small image {i}\n").into_bytes();
        let name: &'static str = Box::leak(format!("small-{i:02}").into_boxed_str());
        let path: &'static str = Box::leak(format!("/small-{i:02}").into_boxed_str());
        lab.serve(path, body.clone(), Faults::default());
        entries.push(Entry::raw(name, path, &body));
    }
    lab.write_manifest(&entries);
    let run = lab.apply();
    assert_ok(&run);
    assert!(
        run.stdout.contains("consumer index: 12 objects"),
        "{}",
        run.output()
    );
    let requests = proxy.requests();
    let asked_again: Vec<&String> = requests
        .iter()
        .filter(|r| {
            (r.starts_with("GET ") && r.contains("/metadata/"))
                || (r.starts_with("HEAD ") && r.contains("/images/"))
        })
        .collect();
    assert!(asked_again.is_empty(), "{asked_again:#?}");
    let puts = requests.iter().filter(|r| r.starts_with("PUT ")).count();
    // The twelve objects and their records, the index files, the lock and the snapshot.
    assert!(puts <= 24 + 8, "{requests:#?}");
    // What the index says is what the store holds.
    let sums = String::from_utf8(lab.store_bytes("images/SHA256SUMS").unwrap_or_default()).unwrap();
    assert_eq!(sums.lines().count(), 12, "{sums}");
}

// ---- doctor, confirmation, interruption -----------------------------------------------------

on_every_locking_store!(
    held_lock_is_reported_and_force_unlocked,
    concurrent_apply_fails_on_the_lock,
    doctor_passes_on_a_capable_store,
    interactive_apply_asks_for_yes,
    ctrl_c_aborts_cleanly_and_releases_the_lock,
    sigterm_aborts_cleanly_and_releases_the_lock,
    ctrl_c_at_the_prompt_releases_the_lock,
    sigterm_while_waiting_for_the_lock_leaves_the_holders_lock,
    uploads_stranded_by_kill_9_are_counted_and_aborted,
);

/// An update rewrites the record only: it does not claim a new upload, and it keeps what the
/// download's server said (size, ETag, Last-Modified), which `drift --check-sources` watches.
fn an_update_keeps_what_is_known_about_the_bytes(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(27, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    assert_ok(&lab.apply());
    let before = lab.record("test/a.img").unwrap();
    assert!(before["source"]["etag"].is_string(), "{before}");

    let mut renamed = Entry::raw("a-renamed", "/a.img", &body);
    renamed.destination = "test/a.img".into();
    lab.write_manifest(&[renamed]);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a later second, if it moved
    let run = lab.apply();
    assert_ok(&run);
    assert!(run.stdout.contains("updated"), "{}", run.output());
    let after = lab.record("test/a.img").unwrap();
    assert_eq!(after["name"], "a-renamed");
    assert_eq!(after["uploadedAt"], before["uploadedAt"]);
    for fact in ["size", "etag", "lastModified", "checksum", "url"] {
        assert_eq!(after["source"][fact], before["source"][fact], "{fact}");
    }
}

/// A run killed after completing an upload and before writing the record leaves the object with
/// its labctl metadata and no record. The next apply adopts it — reading it back, verifying it —
/// without a request to the vendor. Bytes that do not match their metadata are not adopted.
fn an_object_published_without_its_record_is_adopted_not_downloaded(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(26, 7 * MIB);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    assert_ok(&lab.apply());
    let record = lab.record("test/a.img").unwrap();
    // The state a kill between "complete the upload" and "write the record" leaves.
    lab.delete("metadata/test/a.img.json");
    lab.fixture.remove("/a.img");
    lab.fixture.clear_log();

    let plan = lab.labctl(&["plan", "--json"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(plan["changes"][0]["action"], "update");
    assert_eq!(plan["changes"][0]["adopt"]["checksum"], record["checksum"]);
    let run = lab.apply();
    assert_ok(&run);
    assert!(
        run.stdout.contains("adopted") && run.stdout.contains("nothing downloaded"),
        "{}",
        run.output()
    );
    assert!(lab.fixture.log().is_empty(), "{:?}", lab.fixture.log());
    let adopted = lab.record("test/a.img").expect("the record is written");
    assert_eq!(adopted["checksum"], record["checksum"]);
    assert_eq!(adopted["sha256"], record["sha256"]);
    assert_eq!(adopted["size"], record["size"]);
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.output());

    // Forged: other bytes under the same metadata, no record. Not adopted.
    let metadata = lab.head("images/test/a.img").unwrap().user_metadata;
    lab.delete("metadata/test/a.img.json");
    lab.put_with_metadata("images/test/a.img", b"other bytes", metadata);
    let run = lab.apply();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.output().contains("claims") && run.output().contains("not adopted"),
        "{}",
        run.output()
    );
    assert!(lab.record("test/a.img").is_none(), "nothing is recorded");
}

/// kill -9 mid-upload leaves an unfinished multipart upload (invisible, but billed). Drift and
/// doctor count it; the next apply that holds the lock aborts it. A store that cannot list
/// unfinished uploads (s3s-fs) is named as such.
fn uploads_stranded_by_kill_9_are_counted_and_aborted(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(24, 24 * MIB);
    lab.serve(
        "/slow.img",
        body.clone(),
        Faults {
            delay_per_mib: Duration::from_millis(400),
            ..Default::default()
        },
    );
    lab.write_manifest(&[Entry::raw("slow", "/slow.img", &body)]);
    let mut child = lab.spawn(&["apply", "--auto-approve", "--part-size", "5"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lab.fixture.bytes_sent("/slow.img") < 12 * MIB as u64
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: nothing runs on the way out
    child.wait().unwrap();
    assert!(lab.object("test/slow.img").is_none(), "nothing is visible");
    let listable = lab.pending_uploads().is_some();
    if listable {
        assert_eq!(lab.pending_uploads().unwrap().len(), 1);
    }

    // The dead run's lock is still there; while it is, its uploads are not called stranded.
    let lock: serde_json::Value =
        serde_json::from_slice(&lab.store_bytes(".labctl/lock.json").expect("lock left")).unwrap();
    let drift = lab.labctl(&["drift", "--json"]);
    assert!(
        !drift.stdout.contains("stranded-upload"),
        "{}",
        drift.output()
    );
    let unlock = lab.labctl(&["force-unlock", lock["id"].as_str().unwrap()]);
    assert_eq!(unlock.code, 0, "{}", unlock.output());

    let drift = lab.labctl(&["drift", "--json"]);
    let doctor = lab.labctl(&["doctor"]);
    if listable {
        assert!(
            drift.stdout.contains("\"kind\": \"stranded-upload\"")
                && drift.stdout.contains("images/test/slow.img"),
            "{}",
            drift.output()
        );
        assert!(
            doctor.stdout.contains("1 left by interrupted runs"),
            "{}",
            doctor.output()
        );
    } else {
        assert!(
            doctor.stdout.contains("the store cannot list them"),
            "{}",
            doctor.output()
        );
    }

    // The next apply (a quick image now) aborts it first.
    let quick = image_bytes(25, 1000);
    lab.serve("/quick.img", quick.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("quick", "/quick.img", &quick)]);
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    if listable {
        assert!(
            run.stderr.contains(
                "Aborted 1 multipart upload left by an interrupted run: images/test/slow.img"
            ),
            "{}",
            run.output()
        );
        assert_eq!(lab.pending_uploads(), Some(vec![]));
    } else {
        assert!(
            run.stderr
                .contains("this store cannot list unfinished multipart uploads"),
            "{}",
            run.output()
        );
    }
}

fn doctor_passes_on_a_capable_store(backend: Backend) {
    let lab = Lab::new(backend);
    lab.write_manifest(&[]);
    let run = lab.labctl(&["doctor"]);
    assert_eq!(run.code, 0, "{}", run.output());
    for check in [
        "✓ credentials and list",
        "✓ write, read and metadata",
        "✓ multipart upload",
        "✓ abort multipart upload",
        "✓ conditional create (If-None-Match: *): enforced",
        "✓ server-side copy with new metadata (CopyObject, metadata REPLACE): the copy has the same bytes and the new metadata",
        "✓ part-by-part server-side copy (UploadPartCopy, x-amz-copy-source-range)",
    ] {
        assert!(
            run.stdout.contains(check),
            "missing {check:?}: {}",
            run.output()
        );
    }
    // Moto and Ceph RGW (Pacific) make a copy whatever x-amz-copy-source-if-match says, and
    // s3s-fs and Ceph RGW delete whatever If-Match says: limits doctor names, not failures
    // (labctl checks the ETag itself before each copy, and the lock's ID before a release).
    // Checked both ways, so a store that changes shows here.
    let copy_enforced = !matches!(backend, Backend::Moto | Backend::Ceph);
    let delete_enforced = !matches!(backend, Backend::S3sFs | Backend::Ceph);
    let limits = [copy_enforced, delete_enforced]
        .iter()
        .filter(|e| !**e)
        .count();
    let expected = [
        if copy_enforced {
            "✓ conditional copy (x-amz-copy-source-if-match): enforced".to_string()
        } else {
            "! conditional copy (x-amz-copy-source-if-match): NOT enforced".to_string()
        },
        if delete_enforced {
            "✓ conditional delete (If-Match): enforced".to_string()
        } else {
            "! conditional delete (If-Match): NOT enforced".to_string()
        },
        match limits {
            0 => "The store supports everything labctl needs.".to_string(),
            1 => "The store supports everything labctl needs; 1 check found a limit labctl works around".to_string(),
            n => format!("The store supports everything labctl needs; {n} checks found a limit labctl works around"),
        },
    ];
    for line in &expected {
        assert!(
            run.stdout.contains(line.as_str()),
            "missing {line:?}: {}",
            run.output()
        );
    }
    let store = lab.store();
    let left = lab
        .runtime
        .block_on(labctl::store::list_all(store.as_ref(), ""))
        .unwrap();
    assert!(left.is_empty(), "doctor leaves nothing behind: {left:?}");
}

/// Runs labctl on a pseudo-terminal (util-linux `script`), feeding `answer` to the prompt.
fn on_a_terminal(lab: &Lab, answer: &str) -> Run {
    let mut child = lab.spawn_on_a_terminal();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{answer}\n").as_bytes())
        .unwrap();
    finish(child, &["apply (on a terminal)"])
}

fn interactive_apply_asks_for_yes(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(22, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    let declined = on_a_terminal(&lab, "no");
    assert!(
        declined.stdout.contains("Only `yes` will be accepted"),
        "{}",
        declined.output()
    );
    assert!(
        declined.stdout.contains("Apply cancelled") || declined.stderr.contains("Apply cancelled"),
        "{}",
        declined.output()
    );
    assert!(lab.object("test/a.img").is_none());
    assert!(lab.head(".labctl/lock.json").is_none());
    let accepted = on_a_terminal(&lab, "yes");
    assert!(
        accepted.stdout.contains("Apply complete: 1 created."),
        "{}",
        accepted.output()
    );
    assert!(lab.object("test/a.img").unwrap() == body);
}

fn ctrl_c_aborts_cleanly_and_releases_the_lock(backend: Backend) {
    interrupted_transfer(backend, "-INT", 130);
}

/// What a CI runner sends when a job is cancelled or times out.
fn sigterm_aborts_cleanly_and_releases_the_lock(backend: Backend) {
    interrupted_transfer(backend, "-TERM", 143);
}

fn interrupted_transfer(backend: Backend, signal: &str, code: i32) {
    let lab = Lab::new(backend);
    let body = image_bytes(23, 24 * MIB);
    lab.serve(
        "/slow.img",
        body.clone(),
        Faults {
            delay_per_mib: Duration::from_millis(400),
            ..Default::default()
        },
    );
    lab.write_manifest(&[Entry::raw("slow", "/slow.img", &body)]);
    let args = ["apply", "--auto-approve", "--part-size", "5"];
    let child = lab.spawn(&args);
    // Wait until parts are being uploaded, then interrupt.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lab.fixture.bytes_sent("/slow.img") < 12 * MIB as u64
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    send_signal(&child, signal);
    let run = finish_or_hang(child, &args);
    assert_eq!(run.code, code, "{}", run.output());
    assert!(run.stderr.contains("stopping"), "{}", run.output());
    assert!(
        run.stderr.contains("Released the store lock"),
        "{}",
        run.output()
    );
    assert!(
        lab.object("test/slow.img").is_none(),
        "nothing half-written is visible"
    );
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "the lock is released"
    );
    if let Some(pending) = lab.pending_uploads() {
        assert!(
            pending.is_empty(),
            "the multipart upload was aborted: {pending:?}"
        );
    }
}

/// Waits for a signalled run; a run still alive a minute later hangs (a liveness check with a
/// generous bound, not a timing measurement).
fn finish_or_hang(mut child: std::process::Child, args: &[&str]) -> Run {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("labctl {args:?} did not stop after the signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    finish(child, args)
}

/// Ctrl-C typed at the `yes` prompt, on a real terminal (a pty from `script`).
fn ctrl_c_at_the_prompt_releases_the_lock(backend: Backend) {
    use std::io::{Read, Write};
    let lab = Lab::new(backend);
    let body = image_bytes(24, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    let mut child = lab.spawn_on_a_terminal();
    let mut stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&seen.lock().unwrap()).contains("Enter a value:") {
        assert!(
            std::time::Instant::now() < deadline,
            "no prompt: {}",
            String::from_utf8_lossy(&seen.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lab.head(".labctl/lock.json").is_some(),
        "the lock is held at the prompt"
    );
    // The terminal turns ^C into SIGINT for the foreground process.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    let output = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(output.contains("Released the store lock"), "{output}");
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "the lock is released"
    );
    assert!(lab.object("test/a.img").is_none(), "nothing was applied");
}

/// A run waiting for another's lock (`--lock-timeout`) stops on SIGTERM and leaves that lock.
fn sigterm_while_waiting_for_the_lock_leaves_the_holders_lock(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(25, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    let holder = br#"{"id":"0123456789abcdef","holder":"other","host":"elsewhere","pid":1,"operation":"apply","created_at":"2026-11-26T00:00:00Z","labctl_version":"0.1.0"}"#;
    lab.put(".labctl/lock.json", holder);
    let args = ["apply", "--auto-approve", "--lock-timeout", "10m"];
    let child = lab.spawn(&args);
    std::thread::sleep(Duration::from_millis(1500));
    send_signal(&child, "-TERM");
    let run = finish_or_hang(child, &args);
    assert_eq!(run.code, 143, "{}", run.output());
    let lock = lab
        .head(".labctl/lock.json")
        .expect("the holder's lock stays");
    assert_eq!(lock.size, holder.len() as u64);
    assert!(lab.object("test/a.img").is_none());
}

/// A plan of N unchanged images costs a handful of requests, not N: the records come from the
/// snapshot apply left (at the ETags the listing shows, or on s3s-fs, which lists none, at the
/// listed size and time), the objects from one listing. Counted through the suite's S3 proxy.
fn refresh_costs_list_pages_not_images(backend: Backend) {
    const N: usize = 40;
    let lab = Lab::new(backend);
    let mut entries = Vec::new();
    let bodies: Vec<Vec<u8>> = (0..N).map(|i| image_bytes(100 + i as u64, 200)).collect();
    let paths: Vec<&'static str> = (0..N)
        .map(|i| &*Box::leak(format!("/img{i}.img").into_boxed_str()))
        .collect();
    let names: Vec<&'static str> = (0..N)
        .map(|i| &*Box::leak(format!("img{i}").into_boxed_str()))
        .collect();
    for i in 0..N {
        lab.serve(paths[i], bodies[i].clone(), Faults::default());
        entries.push(Entry::raw(names[i], paths[i], &bodies[i]));
    }
    lab.write_manifest(&entries);
    assert_ok(&lab.apply());

    let proxy = Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let lab = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
    let requests = proxy.requests();
    let record_gets = requests
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("/metadata/"))
        .count();
    let heads = requests.iter().filter(|r| r.starts_with("HEAD")).count();
    assert_eq!((record_gets, heads), (0, 0), "{requests:#?}");
    assert!(
        requests.len() <= 8,
        "{} requests: {requests:#?}",
        requests.len()
    );

    // A record changed by hand is fetched again (the snapshot is never trusted over the
    // listing), and the plan sees the change.
    let mut record = lab.record("test/img7.img").unwrap();
    record["spec"]["protect"] = serde_json::json!(true);
    lab.put(
        "metadata/test/img7.img.json",
        &serde_json::to_vec_pretty(&record).unwrap(),
    );
    let plan = lab.labctl(&["plan", "--json"]);
    let changed: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let img7 = changed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "img7")
        .unwrap();
    assert_eq!(img7["action"], "update", "{img7}");
    // An object replaced by hand is HEADed (its listed ETag differs) and found modified.
    lab.put("images/test/img8.img", b"someone else's bytes");
    let plan = lab.labctl(&["plan"]);
    assert!(
        plan.stdout
            .contains("because object modified outside labctl"),
        "{}",
        plan.output()
    );
    // Rewrites that keep the size are caught too: by the ETag, or by the listed time.
    let mut same_size = bodies[9].clone();
    same_size[0] ^= 0x20;
    lab.put("images/test/img9.img", &same_size);
    let stored = lab.store_bytes("metadata/test/img6.img.json").unwrap();
    let mut record = lab.record("test/img6.img").unwrap();
    record["spec"]["protect"] = serde_json::json!(true);
    let mut edited = serde_json::to_vec(&record).unwrap();
    assert!(
        edited.len() < stored.len(),
        "the stored record is pretty-printed"
    );
    edited.resize(stored.len(), b' ');
    lab.put("metadata/test/img6.img.json", &edited);
    let plan = lab.labctl(&["plan", "--json"]);
    let changed: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let action_of = |name: &str| {
        changed["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| (c["action"].clone(), c["reasons"].clone()))
    };
    let (action, reasons) = action_of("img9").expect("img9 is in the plan");
    assert_eq!(action, "replace", "{reasons}");
    assert!(
        reasons
            .to_string()
            .contains("object modified outside labctl"),
        "{reasons}"
    );
    assert_eq!(action_of("img6").expect("img6 is in the plan").0, "update");

    // Applying those four changes HEADs no unchanged object: the consumer index is written from
    // one more listing, not a HEAD of all N. (Where the listing shows no ETags, the index
    // HEADs every object: its checksums go to the NAS.)
    let before = proxy.requests().len();
    assert_ok(&lab.apply());
    let requests = proxy.requests().split_off(before);
    let heads: Vec<&String> = requests.iter().filter(|r| r.starts_with("HEAD")).collect();
    if backend != Backend::S3sFs {
        assert!(
            heads.len() <= 8,
            "{} HEADs for 4 changed images of {N}: {heads:#?}",
            heads.len()
        );
    }
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
}

#[test]
fn refresh_costs_list_pages_not_images_s3s_fs() {
    refresh_costs_list_pages_not_images(Backend::S3sFs);
}

#[test]
fn refresh_costs_list_pages_not_images_moto() {
    refresh_costs_list_pages_not_images(Backend::Moto);
}

#[test]
fn refresh_costs_list_pages_not_images_ceph() {
    refresh_costs_list_pages_not_images(Backend::Ceph);
}

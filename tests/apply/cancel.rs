//! Cancellation as GitHub Actions does it: SIGINT, then SIGTERM 7.5 s later, then SIGKILL 2.5 s
//! after that (docs.github.com, "Canceling a workflow"). Sent to `apply` during a multipart
//! upload, to `stage` during its upload and to `apply --staged` during a part-by-part copy, and
//! to `plan` and `drift` while they wait on a slow store or vendor: each exits on its own before
//! the SIGKILL — the lock released, no multipart upload left open, nothing half-written visible,
//! nothing written by the read-only commands.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::fanout::{plan_with_matrix, PLAN};
use crate::harness::*;
use crate::support::fixture::Faults;
use crate::support::proxy::Proxy;

const MIB: usize = 1024 * 1024;

macro_rules! on_locking_s3_stores {
    ($($case:ident),* $(,)?) => {
        mod cancel_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod cancel_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod cancel_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
    };
}

on_locking_s3_stores!(
    apply_cancelled_during_a_multipart_upload,
    stage_cancelled_during_its_upload,
    promotion_cancelled_during_a_part_by_part_copy,
    promotion_cancelled_during_a_whole_copy_leaves_its_lock_to_expire,
    plan_and_drift_cancelled_while_waiting,
);

/// Which of GitHub's signals the process had received when it exited.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Interrupt,
    Terminate,
    Kill,
}

/// GitHub's sequence, stopping as soon as the process exits.
fn cancel_like_github(child: &mut Child) -> (Sent, ExitStatus) {
    let exited_within = |child: &mut Child, wait: Duration| {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    send_signal(child, "-INT");
    if let Some(status) = exited_within(child, Duration::from_millis(7500)) {
        return (Sent::Interrupt, status);
    }
    send_signal(child, "-TERM");
    if let Some(status) = exited_within(child, Duration::from_millis(2500)) {
        return (Sent::Terminate, status);
    }
    child.kill().unwrap();
    (Sent::Kill, child.wait().unwrap())
}

/// Cancels `child` the way GitHub does and returns its output; it must have exited on its own,
/// at the SIGINT, with 130.
fn cancelled(mut child: Child, args: &[&str]) -> Run {
    let (sent, status) = cancel_like_github(&mut child);
    let run = finish(child, args);
    assert_eq!(
        (sent, status.code()),
        (Sent::Interrupt, Some(130)),
        "labctl {args:?} did not exit at the SIGINT:\n{}",
        run.output()
    );
    run
}

fn assert_nothing_left_open(lab: &Lab, what: &str) {
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "{what}: the lock is released"
    );
    // s3s-fs cannot list unfinished uploads (ListMultipartUploads); moto and Ceph RGW can.
    if let Some(pending) = lab.pending_uploads() {
        assert!(
            pending.is_empty(),
            "{what}: every multipart upload was aborted: {pending:?}"
        );
    } else {
        assert_eq!(
            lab.backend,
            Backend::S3sFs,
            "{what}: the store lists uploads"
        );
    }
}

/// Serves `mib` MiB slowly: a transfer is still running seconds later.
fn slow_image(lab: &Lab, path: &str, seed: u64, mib: usize) -> Vec<u8> {
    let body = image_bytes(seed, mib * MIB);
    lab.serve(
        path,
        body.clone(),
        Faults {
            delay_per_mib: Duration::from_millis(400),
            ..Default::default()
        },
    );
    body
}

fn wait_until_sent(lab: &Lab, path: &str, bytes: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab.fixture.bytes_sent(path) < bytes as u64 {
        assert!(Instant::now() < deadline, "{path} never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn apply_cancelled_during_a_multipart_upload(backend: Backend) {
    let lab = Lab::new(backend);
    let body = slow_image(&lab, "/slow.img", 31, 24);
    lab.write_manifest(&[Entry::raw("slow", "/slow.img", &body)]);
    let args = ["apply", "--auto-approve", "--part-size", "5"];
    let child = lab.spawn(&args);
    // Two parts uploaded, a third in flight.
    wait_until_sent(&lab, "/slow.img", 12 * MIB);
    let run = cancelled(child, &args);
    assert!(
        run.stderr.contains("Released the store lock"),
        "{}",
        run.output()
    );
    assert!(
        lab.object("test/slow.img").is_none(),
        "nothing half-written"
    );
    assert_nothing_left_open(&lab, "apply");
}

fn stage_cancelled_during_its_upload(backend: Backend) {
    let lab = Lab::new(backend);
    let body = slow_image(&lab, "/slow.img", 32, 24);
    lab.write_manifest(&[Entry::raw("slow", "/slow.img", &body)]);
    plan_with_matrix(&lab);
    let args = ["stage", PLAN, "--unit", "slow", "--part-size", "5"];
    let child = lab.spawn(&args);
    wait_until_sent(&lab, "/slow.img", 12 * MIB);
    cancelled(child, &args);
    assert!(
        lab.keys(".labctl/blobs/").is_empty(),
        "{:?}",
        lab.keys(".labctl/blobs/")
    );
    assert_nothing_left_open(&lab, "stage");
}

fn promotion_cancelled_during_a_part_by_part_copy(backend: Backend) {
    let lab = Lab::new(backend);
    let proxy = Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let lab = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    let iso = image_bytes(33, 12 * MIB + 9);
    lab.serve("/big", iso.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("iso", "/big", &iso)]);
    plan_with_matrix(&lab);
    let staged = lab.labctl(&["stage", PLAN, "--unit", "iso"]);
    assert_eq!(staged.code, 0, "{}", staged.output());
    // The store takes its time over the second part of the copy, as with a copy of many GiB.
    proxy.stall("partNumber=2", 1, Duration::from_secs(30));
    let limit = (5 * MIB).to_string();
    let args = ["apply", PLAN, "--staged"];
    let earlier = proxy.requests().len();
    let child = lab.spawn_env(&args, &[("LABCTL_SINGLE_COPY_LIMIT", &limit)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy.requests()[earlier..]
        .iter()
        .any(|r| r.contains("partNumber=2"))
    {
        assert!(Instant::now() < deadline, "{:?}", proxy.requests());
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = cancelled(child, &args);
    assert!(
        run.stderr.contains("Released the store lock"),
        "{}",
        run.output()
    );
    assert!(lab.object("test/iso.img").is_none(), "nothing half-copied");
    assert_nothing_left_open(&lab, "apply --staged");
    // The staged blob is still there: promoting again finishes the job.
    let promoted = lab.labctl_env(&args, &[("LABCTL_SINGLE_COPY_LIMIT", &limit)]);
    assert_eq!(promoted.code, 0, "{}", promoted.output());
    assert_eq!(lab.object("test/iso.img").unwrap(), iso);
}

/// A CopyObject the run stopped waiting for may still be carried out by the store: the run
/// exits at the SIGINT but leaves its lock to expire instead of releasing it, and the next
/// promotion takes it over once the lease has run out — by when the copy has landed.
fn promotion_cancelled_during_a_whole_copy_leaves_its_lock_to_expire(backend: Backend) {
    let lab = Lab::new(backend);
    let proxy = Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let lab = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    let iso = image_bytes(35, MIB + 11);
    lab.serve("/iso", iso.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("iso", "/iso", &iso)]);
    plan_with_matrix(&lab);
    let staged = lab.labctl(&["stage", PLAN, "--unit", "iso"]);
    assert_eq!(staged.code, 0, "{}", staged.output());
    let copy = format!(
        "PUT /{}/images/test/iso.img?x-id=CopyObject",
        crate::support::servers::BUCKET
    );
    proxy.stall(&copy, 1, Duration::from_secs(6));
    let args = ["apply", PLAN, "--staged", "--lock-lease", "10s"];
    let earlier = proxy.requests().len();
    let child = lab.spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy.requests()[earlier..]
        .iter()
        .any(|r| r.starts_with(&copy))
    {
        assert!(Instant::now() < deadline, "{:?}", proxy.requests());
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = cancelled(child, &args);
    assert!(
        run.stderr.contains("the lock is left to expire"),
        "{}",
        run.output()
    );
    assert!(lab.head(".labctl/lock.json").is_some(), "{}", run.output());
    let again = lab.labctl(&["apply", PLAN, "--staged", "--lock-timeout", "1m"]);
    assert_eq!(again.code, 0, "{}", again.output());
    assert!(again.stderr.contains("lease expired"), "{}", again.output());
    assert_eq!(lab.object("test/iso.img").unwrap(), iso);
    assert_nothing_left_open(&lab, "the promotion after the takeover");
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "converged: {}", plan.output());
}

fn plan_and_drift_cancelled_while_waiting(backend: Backend) {
    let lab = Lab::new(backend);
    let body = image_bytes(34, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    assert_eq!(lab.apply().code, 0);
    let before = lab.keys("");

    // The store is slow to list: plan is waiting on it.
    let proxy = Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let slow = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    proxy.stall("list-type=2", 1, Duration::from_secs(30));
    let out = slow.dir().join("plan.json");
    let args = ["plan", "--out", out.to_str().unwrap()];
    let earlier = proxy.requests().len();
    let child = slow.spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy.requests()[earlier..]
        .iter()
        .any(|r| r.contains("list-type=2"))
    {
        assert!(Instant::now() < deadline, "{:?}", proxy.requests());
        std::thread::sleep(Duration::from_millis(20));
    }
    cancelled(child, &args);
    assert!(!out.exists(), "no plan is saved");

    // The vendor is slow to answer: drift is waiting on it.
    slow.serve(
        "/a.img",
        body.clone(),
        Faults {
            fail_first: 1,
            retry_after: Some(30),
            ..Default::default()
        },
    );
    let args = ["drift", "--check-sources"];
    slow.fixture.clear_log();
    let child = slow.spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !slow.fixture.log().iter().any(|e| e.path == "/a.img") {
        assert!(Instant::now() < deadline, "drift never asked the vendor");
        std::thread::sleep(Duration::from_millis(20));
    }
    cancelled(child, &args);
    assert_eq!(slow.keys(""), before, "drift writes nothing");
    assert_nothing_left_open(&slow, "plan and drift");
}

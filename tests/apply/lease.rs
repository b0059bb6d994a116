//! The lock's lease end to end, with short leases: a dead runner's lock is taken over with no
//! human step, a paused holder that lost its lease writes nothing, two takers of one lease
//! leave one winner, and a long run keeps its lock. Where the lock works: s3s-fs, moto, Ceph
//! RGW and the directory store (Garage ignores conditional writes).

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::fixture::Faults;

const MIB: usize = 1024 * 1024;
const LEASE: &str = "3s";

macro_rules! on_every_locking_store {
    ($($case:ident),* $(,)?) => {
        mod s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod fs { $( #[test] fn $case() { super::$case(super::Backend::Fs) } )* }
        mod ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
    };
}

on_every_locking_store!(
    a_dead_runners_lock_is_taken_over_without_a_human,
    a_paused_holder_that_lost_its_lease_writes_nothing,
    of_two_runs_taking_over_one_lease_one_wins,
    a_run_three_leases_long_keeps_its_lock,
);

/// Serves `mib` MiB slowly enough that an apply is still downloading a while later.
fn slow_image(lab: &Lab, path: &str, seed: u64, mib: usize, per_mib: Duration) -> Vec<u8> {
    let body = image_bytes(seed, mib * MIB);
    lab.serve(
        path,
        body.clone(),
        Faults {
            delay_per_mib: per_mib,
            ..Default::default()
        },
    );
    body
}

fn apply_args(timeout: &'static str) -> [&'static str; 8] {
    apply_args_with(timeout, LEASE)
}

fn apply_args_with(timeout: &'static str, lease: &'static str) -> [&'static str; 8] {
    [
        "apply",
        "--auto-approve",
        "--part-size",
        "5",
        "--lock-lease",
        lease,
        "--lock-timeout",
        timeout,
    ]
}

/// Waits until the holder is downloading (it holds the lock by then).
fn wait_until_downloading(lab: &Lab, path: &str) {
    assert!(
        lab.wait_for_key(".labctl/lock.json", Duration::from_secs(60)),
        "the first run took the lock"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab.fixture.bytes_sent(path) < MIB as u64 {
        assert!(Instant::now() < deadline, "the first run never downloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_lock_gone(lab: &Lab) {
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "the lock is released"
    );
    assert_eq!(
        lab.keys(".labctl/lease/"),
        Vec::<String>::new(),
        "the lease's chain is removed with it"
    );
}

fn a_dead_runners_lock_is_taken_over_without_a_human(backend: Backend) {
    let lab = Lab::new(backend);
    let body = slow_image(&lab, "/slow.img", 41, 8, Duration::from_millis(400));
    lab.write_manifest(&[Entry::raw("slow", "/slow.img", &body)]);
    let mut holder = lab.spawn(&apply_args("0s"));
    wait_until_downloading(&lab, "/slow.img");
    let pid = holder.id();
    holder.kill().unwrap(); // SIGKILL: the runner is gone, nothing runs on the way out
    holder.wait().unwrap();
    assert!(
        lab.head(".labctl/lock.json").is_some(),
        "the dead run's lock is left"
    );

    let run = lab.labctl(&apply_args("60s"));
    assert_ok(&run);
    for said in [
        "Took over the store lock".to_string(),
        format!("(pid {pid})"),
        "its lease expired at".to_string(),
    ] {
        assert!(
            run.stderr.contains(&said),
            "missing {said:?}: {}",
            run.output()
        );
    }
    assert!(lab.object("test/slow.img").unwrap() == body);
    assert_eq!(
        lab.record("test/slow.img").unwrap()["checksum"],
        sha256(&body).to_string()
    );
    assert_lock_gone(&lab);
}

/// SIGSTOP stands for a runner paused past its lease (a frozen VM, a network that dropped):
/// another run takes over and publishes other bytes; the first, resumed, must not overwrite
/// them, record anything or rewrite the index.
fn a_paused_holder_that_lost_its_lease_writes_nothing(backend: Backend) {
    let lab = Lab::new(backend);
    let old = slow_image(&lab, "/old.img", 42, 6, Duration::from_millis(800));
    let new = image_bytes(43, 2000);
    lab.serve("/new.img", new.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("a", "/old.img", &old)]);
    let args = apply_args("0s");
    let paused = lab.spawn(&args);
    wait_until_downloading(&lab, "/old.img");
    send_signal(&paused, "-STOP");

    lab.write_manifest(&[Entry::raw("a", "/new.img", &new)]);
    let taker = lab.labctl(&apply_args("60s"));
    assert_ok(&taker);
    assert!(
        taker.stderr.contains("Took over the store lock"),
        "{}",
        taker.output()
    );
    let index = lab.store_bytes("images/SHA256SUMS").expect("index written");

    send_signal(&paused, "-CONT");
    let resumed = finish(paused, &args);
    assert_eq!(resumed.code, 1, "{}", resumed.output());
    assert!(
        resumed.stderr.contains("lost the store lock"),
        "{}",
        resumed.output()
    );
    assert!(
        lab.object("test/a.img").unwrap() == new,
        "the taker's bytes stay"
    );
    assert_eq!(
        lab.record("test/a.img").unwrap()["checksum"],
        sha256(&new).to_string(),
        "the taker's record stays"
    );
    assert_eq!(
        lab.store_bytes("images/SHA256SUMS").unwrap(),
        index,
        "the index is the taker's"
    );
    if let Some(pending) = lab.pending_uploads() {
        assert!(
            pending.is_empty(),
            "the resumed run aborted its upload: {pending:?}"
        );
    }
    assert_lock_gone(&lab);
}

fn of_two_runs_taking_over_one_lease_one_wins(backend: Backend) {
    let lab = Lab::new(backend);
    let body = slow_image(&lab, "/slow.img", 44, 6, Duration::from_millis(400));
    lab.write_manifest(&[Entry::raw("slow", "/slow.img", &body)]);
    let mut holder = lab.spawn(&apply_args("0s"));
    wait_until_downloading(&lab, "/slow.img");
    holder.kill().unwrap();
    holder.wait().unwrap();

    // The winner's own lease must outlast a renewal delayed by a loaded machine while both
    // runs and every other test's servers compete for two cores: longer than the minimum.
    let args = apply_args_with("90s", "8s");
    let (a, b) = (lab.spawn(&args), lab.spawn(&args));
    let (a, b) = (finish(a, &args), finish(b, &args));
    assert_ok(&a);
    assert_ok(&b);
    let took_over = [&a, &b]
        .iter()
        .filter(|r| r.stderr.contains("Took over the store lock"))
        .count();
    assert_eq!(
        took_over,
        1,
        "one winner:\n{}\n---\n{}",
        a.output(),
        b.output()
    );
    let waited = if a.stderr.contains("Took over") {
        &b
    } else {
        &a
    };
    assert!(
        waited.stdout.contains("No changes."),
        "the other waited for the winner to finish: {}",
        waited.output()
    );
    assert!(lab.object("test/slow.img").unwrap() == body);
    assert_lock_gone(&lab);
}

/// Twelve seconds of download under a three-second lease: renewed all along, never taken.
fn a_run_three_leases_long_keeps_its_lock(backend: Backend) {
    let lab = Lab::new(backend);
    let body = slow_image(&lab, "/slow.img", 45, 12, Duration::from_millis(1000));
    lab.write_manifest(&[Entry::raw("slow", "/slow.img", &body)]);
    let args = apply_args("0s");
    let mut holder = lab.spawn(&args);
    wait_until_downloading(&lab, "/slow.img");
    let started = Instant::now();
    let mut refused = 0;
    while holder.try_wait().unwrap().is_none() {
        let other = lab.labctl(&args);
        if holder.try_wait().unwrap().is_some() {
            break;
        }
        assert_eq!(other.code, 1, "{}", other.output());
        assert!(
            other.stderr.contains("the store is locked by"),
            "{}",
            other.output()
        );
        refused += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let run = finish(holder, &args);
    assert_ok(&run);
    assert!(
        started.elapsed() > Duration::from_secs(9) && refused >= 5,
        "the run outlived three leases ({:?}, {refused} refusals)",
        started.elapsed()
    );
    assert!(lab.object("test/slow.img").unwrap() == body);
    assert_lock_gone(&lab);
}

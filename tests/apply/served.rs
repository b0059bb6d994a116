//! The folder machines boot from (`labctl verify SYNCED --into SERVED`): filled from what the
//! real `rclone` pulled from the suite's S3 servers, checked with the stock `sha256sum` and
//! `minisign`, and put through interrupted syncs, kill -9, concurrent runs and readers, other
//! filesystems (tmpfs, XFS and Btrfs loop mounts that make reflinks) and a full disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::nas::{
    manifest, minisign_accepts, minisign_keys, rclone_command, rclone_sync, run_tool, text, Img,
};
use crate::support::fixture::Faults;

macro_rules! on_s3_stores {
    ($($case:ident),* $(,)?) => {
        mod served_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod served_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod served_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod served_garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

on_s3_stores!(served_folder_follows_an_rclone_sync);

/// `labctl verify SYNCED --into SERVED [extra…] --json`, as the NAS's scheduled task runs it.
fn serve(lab: &Lab, synced: &Path, served: &Path, extra: &[&str]) -> (Run, serde_json::Value) {
    let mut args = vec![
        "verify".to_string(),
        synced.display().to_string(),
        "--into".to_string(),
        served.display().to_string(),
        "--json".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = lab.labctl_bare(&args);
    let report = serde_json::from_str(&run.stdout).unwrap_or(serde_json::Value::Null);
    (run, report)
}

fn status_of<'a>(report: &'a serde_json::Value, path: &str) -> &'a str {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .and_then(|f| f["status"].as_str())
        .unwrap_or_else(|| panic!("{path} is not in the report: {report:#}"))
}

fn sha256sum_accepts(dir: &Path) -> bool {
    let out = run_tool("sha256sum", &["--strict", "-c", "SHA256SUMS"], dir);
    if !out.status.success() {
        eprintln!("sha256sum -c in {}: {}", dir.display(), text(&out));
    }
    out.status.success()
}

fn signed_manifest(lab: &Lab, public: &str, images: &[(&str, &[u8], &str)]) {
    let signing = format!("  index:\n    signing:\n      minisign:\n        publicKey: {public}\n");
    let imgs: Vec<Img> = images
        .iter()
        .map(|(name, body, destination)| {
            let path = format!("/{name}.bin");
            lab.serve(&path, body.to_vec(), Faults::default());
            Img {
                name,
                path: Box::leak(path.into_boxed_str()),
                checksum: sha256(body).to_string(),
                source_extra: String::new(),
                destination,
                extra: String::new(),
            }
        })
        .collect();
    lab.write_manifest_text(&manifest(lab, &signing, &imgs));
}

const CI_RUN: [(&str, &str); 3] = [
    ("GITHUB_RUN_ID", "4242"),
    ("GITHUB_SERVER_URL", "https://github.example"),
    ("GITHUB_REPOSITORY", "lab/images"),
];

fn served_folder_follows_an_rclone_sync(backend: Backend) {
    let lab = Lab::new(backend);
    let keys = tempfile::tempdir().unwrap();
    let (public, secret) = minisign_keys(keys.path(), "lab");
    let a = image_bytes(90, 300_000);
    let c = image_bytes(91, 1000);
    signed_manifest(
        &lab,
        &public,
        &[("a", &a, "talos/a.raw"), ("c", &c, "vyos/c.iso")],
    );
    let mut env = vec![("LABCTL_MINISIGN_SECRET_KEY", secret.as_str())];
    env.extend(CI_RUN);
    let applied = lab.apply_with_env(&env);
    assert_eq!(applied.code, 0, "{}", applied.output());

    let root = tempfile::tempdir().unwrap();
    let synced = root.path().join("synced");
    let served = root.path().join("served");
    let sync = rclone_sync(&lab, &synced, &[]);
    assert!(sync.status.success(), "rclone sync: {}", text(&sync));

    // A clean sync converges: the served folder is checkable with stock tools.
    let key = ["--public-key", public.as_str()];
    let (first, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(first.code, 0, "{}", first.output());
    assert_eq!(report["complete"], true);
    assert_eq!(report["signature"]["verified"], true);
    assert_eq!(report["served_generation"]["ci_run"]["id"], "4242");
    assert_eq!(
        report["served_generation"]["ci_run"]["url"],
        "https://github.example/lab/images/actions/runs/4242"
    );
    assert!(report["served_generation"]["trusted_comment"]
        .as_str()
        .unwrap()
        .contains("by CI run https://github.example/lab/images/actions/runs/4242"));
    assert_eq!(std::fs::read(served.join("talos/a.raw")).unwrap(), a);
    assert!(sha256sum_accepts(&served));
    assert!(minisign_accepts(&served, &public));
    for name in ["SHA256SUMS", "SHA256SUMS.minisig", "index.json"] {
        assert_eq!(
            std::fs::read(served.join(name)).unwrap(),
            std::fs::read(synced.join(name)).unwrap(),
            "{name}"
        );
    }
    let plain = lab.labctl_bare(&[
        "verify",
        &served.display().to_string(),
        "--public-key",
        &public,
    ]);
    assert_eq!(plain.code, 0, "{}", plain.output());
    let human = lab.labctl_bare(&[
        "verify",
        &synced.display().to_string(),
        "--into",
        &served.display().to_string(),
    ]);
    assert_eq!(human.code, 0, "{}", human.output());
    assert!(
        human
            .stdout
            .contains("CI run https://github.example/lab/images/actions/runs/4242")
            && human.stdout.contains("Hashed 0 bytes, copied 0 bytes."),
        "{}",
        human.output()
    );

    // A second run with nothing new hashes nothing.
    let (second, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(second.code, 0, "{}", second.output());
    assert_eq!(report["bytes_hashed"], 0);

    // A new generation: a replaced, d added.
    let a2 = image_bytes(92, 310_000);
    let d = image_bytes(93, 5000);
    signed_manifest(
        &lab,
        &public,
        &[
            ("a", &a2, "talos/a.raw"),
            ("c", &c, "vyos/c.iso"),
            ("d", &d, "d.img"),
        ],
    );
    let applied = lab.apply_with_env(&env);
    assert_eq!(applied.code, 0, "{}", applied.output());

    // The new index arrives before its files: nothing of it is served yet, and the old
    // generation (still signed) is whole and checkable.
    sync_index_only(&lab, &synced);
    let (early, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(early.code, 2, "{}", early.output());
    assert_eq!(report["complete"], false);
    assert_eq!(status_of(&report, "talos/a.raw"), "pending");
    assert_eq!(status_of(&report, "d.img"), "pending");
    assert_eq!(std::fs::read(served.join("talos/a.raw")).unwrap(), a);
    assert!(!served.join("d.img").exists());
    assert!(sha256sum_accepts(&served));
    assert!(minisign_accepts(&served, &public));

    // The files arrive: the new generation is served whole.
    let full = rclone_sync(&lab, &synced, &["--checksum"]);
    assert!(full.status.success(), "{}", text(&full));
    let (done, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(done.code, 0, "{}", done.output());
    assert_eq!(status_of(&report, "talos/a.raw"), "replaced");
    assert_eq!(status_of(&report, "d.img"), "placed");
    assert_eq!(status_of(&report, "vyos/c.iso"), "current");
    assert_eq!(std::fs::read(served.join("talos/a.raw")).unwrap(), a2);
    assert!(sha256sum_accepts(&served));
    assert!(minisign_accepts(&served, &public));

    // The next generation's files arrive before their index: the served folder keeps serving
    // the generation its list names, without reading the new bytes; the index then completes it.
    let a3 = image_bytes(96, 320_000);
    signed_manifest(
        &lab,
        &public,
        &[
            ("a", &a3, "talos/a.raw"),
            ("c", &c, "vyos/c.iso"),
            ("d", &d, "d.img"),
        ],
    );
    let applied = lab.apply_with_env(&env);
    assert_eq!(applied.code, 0, "{}", applied.output());
    let files_only = rclone_sync(
        &lab,
        &synced,
        &[
            "--checksum",
            "--exclude",
            "/SHA256SUMS*",
            "--exclude",
            "/index.json",
        ],
    );
    assert!(files_only.status.success(), "{}", text(&files_only));
    assert_eq!(std::fs::read(synced.join("talos/a.raw")).unwrap(), a3);
    let (unchanged, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(unchanged.code, 0, "{}", unchanged.output());
    assert_eq!(status_of(&report, "talos/a.raw"), "current");
    assert_eq!(report["bytes_hashed"], 0);
    assert_eq!(std::fs::read(served.join("talos/a.raw")).unwrap(), a2);
    let index = rclone_sync(&lab, &synced, &["--checksum"]);
    assert!(index.status.success(), "{}", text(&index));
    let (after, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(after.code, 0, "{}", after.output());
    assert_eq!(status_of(&report, "talos/a.raw"), "replaced");
    assert_eq!(std::fs::read(served.join("talos/a.raw")).unwrap(), a3);
    assert!(minisign_accepts(&served, &public));
    let a2 = a3;

    // A byte flipped in the served folder is repaired from the verified synced copy.
    flip_byte(&served.join("talos/a.raw"), 1000);
    let (repaired, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(repaired.code, 0, "{}", repaired.output());
    assert_eq!(status_of(&report, "talos/a.raw"), "repaired");
    assert_eq!(std::fs::read(served.join("talos/a.raw")).unwrap(), a2);

    // Flipped in both: the synced copy is not placed, and the altered served copy is moved
    // out rather than served wrong.
    flip_byte(&synced.join("vyos/c.iso"), 10);
    flip_byte(&served.join("vyos/c.iso"), 20);
    let (both, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(both.code, 2, "{}", both.output());
    assert_eq!(status_of(&report, "vyos/c.iso"), "quarantined");
    assert!(!served.join("vyos/c.iso").exists());
    assert!(
        sha256sum_accepts(&served),
        "what is listed is what is served"
    );
    let healed = rclone_sync(&lab, &synced, &["--checksum"]);
    assert!(healed.status.success(), "{}", text(&healed));
    let (back, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(back.code, 0, "{}", back.output());
    assert_eq!(status_of(&report, "vyos/c.iso"), "placed");
    assert!(minisign_accepts(&served, &public));

    // A list that does not verify: nothing of it is placed (exit 1).
    let before = std::fs::read(served.join("SHA256SUMS")).unwrap();
    let mut forged = std::fs::read(synced.join("SHA256SUMS")).unwrap();
    forged.extend_from_slice(format!("{}  evil.img\n", sha256(b"evil").hex()).as_bytes());
    std::fs::write(synced.join("SHA256SUMS"), forged).unwrap();
    std::fs::write(synced.join("evil.img"), b"evil").unwrap();
    let (refused, _) = serve(&lab, &synced, &served, &key);
    assert_eq!(refused.code, 1, "{}", refused.output());
    assert!(
        refused.stderr.contains("does not verify with key"),
        "{}",
        refused.output()
    );
    assert!(!served.join("evil.img").exists());
    assert_eq!(std::fs::read(served.join("SHA256SUMS")).unwrap(), before);
}

/// Only the index files (`SHA256SUMS`, its signature, `index.json`): a sync that brought the
/// new list before the files it lists.
fn sync_index_only(lab: &Lab, synced: &Path) {
    let index_only = rclone_sync(
        lab,
        synced,
        // By checksum: a re-signed list has the same size, and the modification times some
        // servers report are too coarse to tell it apart.
        &[
            "--checksum",
            "--include",
            "/SHA256SUMS*",
            "--include",
            "/index.json",
        ],
    );
    assert!(index_only.status.success(), "{}", text(&index_only));
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// A sync interrupted mid-file (rclone killed while it writes the new bytes over the old
/// file): the served file stays the previous verified version until the sync finishes.
#[test]
fn an_interrupted_sync_keeps_the_previous_verified_file() {
    let lab = Lab::new(Backend::S3sFs);
    let keys = tempfile::tempdir().unwrap();
    let (public, secret) = minisign_keys(keys.path(), "lab");
    let env = [("LABCTL_MINISIGN_SECRET_KEY", secret.as_str())];
    let b1 = image_bytes(94, 6 * 1024 * 1024);
    signed_manifest(&lab, &public, &[("b", &b1, "harvester/b.iso")]);
    assert_eq!(lab.apply_with_env(&env).code, 0);
    let root = tempfile::tempdir().unwrap();
    let synced = root.path().join("synced");
    let served = root.path().join("served");
    assert!(rclone_sync(&lab, &synced, &[]).status.success());
    let key = ["--public-key", public.as_str()];
    assert_eq!(serve(&lab, &synced, &served, &key).0.code, 0);

    let b2 = image_bytes(95, 6 * 1024 * 1024);
    signed_manifest(&lab, &public, &[("b", &b2, "harvester/b.iso")]);
    assert_eq!(lab.apply_with_env(&env).code, 0);
    // The new list first, then the image, slowly; interrupted half way.
    sync_index_only(&lab, &synced);
    let mut slow = rclone_command(&lab, &synced, &["--bwlimit", "1M"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rclone runs");
    let target = synced.join("harvester/b.iso");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let changed = std::fs::read(&target)
            .map(|now| now != b1 && now.len() < b2.len())
            .unwrap_or(false);
        if changed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rclone never wrote part of the file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    slow.kill().unwrap();
    slow.wait().unwrap();
    let partial = std::fs::read(&target).unwrap();
    assert!(partial != b2, "the sync was interrupted");

    let (pending, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(pending.code, 2, "{}", pending.output());
    assert_eq!(status_of(&report, "harvester/b.iso"), "pending");
    assert_eq!(std::fs::read(served.join("harvester/b.iso")).unwrap(), b1);
    assert!(sha256sum_accepts(&served));
    assert!(minisign_accepts(&served, &public));

    assert!(rclone_sync(&lab, &synced, &[]).status.success());
    let (done, report) = serve(&lab, &synced, &served, &key);
    assert_eq!(done.code, 0, "{}", done.output());
    assert_eq!(status_of(&report, "harvester/b.iso"), "replaced");
    assert_eq!(std::fs::read(served.join("harvester/b.iso")).unwrap(), b2);
    assert!(minisign_accepts(&served, &public));
}

/// A synced folder written by the test: files, `SHA256SUMS` and `index.json` as apply writes
/// them (the sync itself is exercised above).
fn write_generation(dir: &Path, files: &[(&str, &[u8])], at: &str) {
    let mut lines: Vec<(String, String, usize)> = files
        .iter()
        .map(|(p, b)| (p.to_string(), sha256(b).hex().to_string(), b.len()))
        .collect();
    lines.sort();
    for (path, body) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let images: Vec<serde_json::Value> = lines
        .iter()
        .map(|(path, sha, size)| {
            serde_json::json!({"name": path, "path": path, "size": size, "sha256": sha,
                               "checksum": format!("sha256:{sha}")})
        })
        .collect();
    let doc = serde_json::json!({"format_version": "1.1", "generated_at": at,
                                 "labctl_version": "0.1.0", "images": images});
    std::fs::write(dir.join("index.json"), doc.to_string()).unwrap();
    let sums: String = lines
        .iter()
        .map(|(path, sha, _)| format!("{sha}  {path}\n"))
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
}

fn labctl_verify_into(synced: &Path, served: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labctl"));
    cmd.arg("verify")
        .arg(synced)
        .arg("--into")
        .arg(served)
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Exit code, stdout+stderr, and the JSON report when stdout holds one.
fn output(cmd: &mut Command) -> (i32, String, serde_json::Value) {
    let out = cmd.output().expect("labctl runs");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), text(&out), report)
}

/// Image files in the served folder (not its own `.labctl/`, not the index).
fn served_images(served: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == ".labctl" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else if !["SHA256SUMS", "SHA256SUMS.minisig", "index.json"]
                .contains(&name.to_str().unwrap())
            {
                out.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(served, &mut out);
    out.sort();
    out
}

fn temporary_files(served: &Path) -> usize {
    std::fs::read_dir(served.join(".labctl/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// kill -9 at several moments of a run that replaces every file: after each, whatever the
/// served folder lists is true and every file in it is one of the two verified versions;
/// then a clean run converges and leaves no temporary file.
#[test]
fn a_run_killed_at_any_moment_leaves_the_served_folder_consistent() {
    let root = tempfile::tempdir().unwrap();
    killed_at_any_moment(root.path());
}

/// The same on Btrfs, the filesystem of a Synology volume: every placement a reflink.
#[test]
fn a_run_killed_at_any_moment_on_btrfs_leaves_the_served_folder_consistent() {
    let (_root, _mount, volume) = loop_volume(Fs::Btrfs, 640);
    killed_at_any_moment(&volume);
}

fn killed_at_any_moment(root: &Path) {
    let synced = root.join("synced");
    let served = root.join("served");
    let names = ["talos/a.raw", "vyos/b.iso", "harvester/c.iso"];
    let old: Vec<Vec<u8>> = (0..3).map(|i| image_bytes(100 + i, 24 << 20)).collect();
    let new: Vec<Vec<u8>> = (0..3).map(|i| image_bytes(200 + i, 24 << 20)).collect();
    let gen = |v: &[Vec<u8>]| -> Vec<(&str, Vec<u8>)> {
        names.iter().copied().zip(v.iter().cloned()).collect()
    };
    let write = |g: &[(&str, Vec<u8>)], at: &str| {
        let files: Vec<(&str, &[u8])> = g.iter().map(|(p, b)| (*p, b.as_slice())).collect();
        write_generation(&synced, &files, at);
    };
    write(&gen(&old), "2026-12-01T00:00:00Z");
    let (code, out, _) = output(&mut labctl_verify_into(&synced, &served, &[]));
    assert_eq!(code, 0, "{out}");
    write(&gen(&new), "2026-12-02T00:00:00Z");

    // Kills that caught a run mid-way (a temporary file left, or the generations mixed): the
    // test means nothing unless some did.
    let mut caught = 0;
    for delay_ms in [1u64, 30, 80, 150, 250, 400, 700] {
        let mut child = labctl_verify_into(&synced, &served, &[]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(sha256sum_accepts(&served), "after a kill at {delay_ms} ms");
        let mut versions = std::collections::BTreeSet::new();
        for path in served_images(&served) {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                old.contains(&bytes) || new.contains(&bytes),
                "{} is neither verified version after a kill at {delay_ms} ms",
                path.display()
            );
            versions.insert(new.contains(&bytes));
        }
        if temporary_files(&served) > 0 || versions.len() > 1 {
            caught += 1;
        }
    }
    assert!(caught > 0, "no kill landed in the middle of a run");
    let (code, out, _) = output(&mut labctl_verify_into(&synced, &served, &[]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(temporary_files(&served), 0);
    for (name, body) in names.iter().zip(&new) {
        assert_eq!(&std::fs::read(served.join(name)).unwrap(), body);
    }
    assert_eq!(
        std::fs::read(served.join("SHA256SUMS")).unwrap(),
        std::fs::read(synced.join("SHA256SUMS")).unwrap()
    );
}

/// kill -9 at several moments of a first run over 10,000 files (placed in batches, recorded in
/// the journal): after each, every served file holds its listed bytes and what is listed is
/// true; each run keeps what the killed ones placed, and a clean run finishes the work
/// without copying it again.
#[test]
fn a_first_run_over_many_files_killed_at_any_moment_resumes() {
    let root = tempfile::tempdir().unwrap();
    let synced = root.path().join("synced");
    let served = root.path().join("served");
    const FILES: usize = 10_000;
    let bodies: Vec<(String, Vec<u8>)> = (0..FILES)
        .map(|i| {
            let mut body = format!("file {i}\n").into_bytes();
            body.resize(1024, b'.');
            (format!("pxe/d{:02}/f{i:05}.bin", i % 50), body)
        })
        .collect();
    let files: Vec<(&str, &[u8])> = bodies
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    write_generation(&synced, &files, "2026-12-01T00:00:00Z");
    let expected: std::collections::BTreeMap<PathBuf, &[u8]> =
        files.iter().map(|(p, b)| (served.join(p), *b)).collect();

    let tmp = served.join(".labctl/tmp");
    let mut caught = 0;
    let mut served_before = 0;
    for delay_ms in [0u64, 150, 400, 900, 1500] {
        let mut child = labctl_verify_into(&synced, &served, &[]).spawn().unwrap();
        // From the moment the run copies into its temporary folder, then a while longer.
        let started = Instant::now();
        while temporary_files(&served) == 0 && started.elapsed() < Duration::from_secs(60) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let left = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        let images = served_images(&served);
        for path in &images {
            let want = expected
                .get(path)
                .unwrap_or_else(|| panic!("{} is not listed", path.display()));
            assert_eq!(
                &std::fs::read(path).unwrap(),
                want,
                "{} after a kill {delay_ms} ms into copying",
                path.display()
            );
        }
        if served.join("SHA256SUMS").exists() {
            assert!(sha256sum_accepts(&served), "after a kill at {delay_ms} ms");
        }
        assert!(
            images.len() >= served_before,
            "a run lost what the killed one had placed: {} files served, {served_before} before",
            images.len()
        );
        if left > 0 || (images.len() > served_before && images.len() < FILES) {
            caught += 1;
        }
        served_before = images.len();
    }
    assert!(caught > 0, "no kill landed in the middle of a run");
    assert!(served_before > 0, "the killed runs placed nothing");

    let (code, out, report) = output(&mut labctl_verify_into(&synced, &served, &["--json"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["complete"], true, "{out}");
    assert_eq!(temporary_files(&served), 0);
    assert_eq!(served_images(&served).len(), FILES);
    // What the killed runs placed was kept, not copied again.
    let copied = report["bytes_copied"].as_u64().unwrap();
    assert!(
        copied <= ((FILES - served_before) * 1024) as u64,
        "the last run copied {copied} bytes; {served_before} of {FILES} files were served already"
    );
    assert_eq!(
        std::fs::read(served.join("SHA256SUMS")).unwrap(),
        std::fs::read(synced.join("SHA256SUMS")).unwrap()
    );
    assert!(sha256sum_accepts(&served));
    assert!(!served.join(".labctl/journal").exists());
}

/// Two runs at once: the second refuses (or, with --wait, queues); neither corrupts. A reader
/// looping over a served file meanwhile always reads one of its two verified versions.
#[test]
fn one_run_at_a_time_and_readers_see_whole_files() {
    let root = tempfile::tempdir().unwrap();
    let synced = root.path().join("synced");
    let served = root.path().join("served");
    let old = image_bytes(300, 32 << 20);
    let new = image_bytes(301, 32 << 20);
    let big_old = image_bytes(302, 48 << 20);
    let big_new = image_bytes(303, 48 << 20);
    write_generation(
        &synced,
        &[("a.raw", &old), ("big.raw", &big_old)],
        "2026-12-01T00:00:00Z",
    );
    assert_eq!(output(&mut labctl_verify_into(&synced, &served, &[])).0, 0);
    write_generation(
        &synced,
        &[("a.raw", &new), ("big.raw", &big_new)],
        "2026-12-02T00:00:00Z",
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), served.join("a.raw"));
        let (old, new) = (sha256(&old), sha256(&new));
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = sha256(&std::fs::read(&path).unwrap());
                assert!(got == old || got == new, "a reader saw a partial file");
                reads += 1;
            }
            reads
        })
    };

    let first = labctl_verify_into(&synced, &served, &["--jobs", "1"])
        .spawn()
        .unwrap();
    // Once the first run is copying, a second one is refused at once…
    let deadline = Instant::now() + Duration::from_secs(30);
    while temporary_files(&served) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first run never started copying"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, out, _) = output(&mut labctl_verify_into(&synced, &served, &[]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("another `labctl verify --into` is running") && out.contains("--wait"),
        "{out}"
    );
    // …and one told to wait runs after it.
    let (code, out, report) = output(&mut labctl_verify_into(
        &synced,
        &served,
        &["--wait", "5m", "--json"],
    ));
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["bytes_hashed"], 0, "the first run did the work");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw only whole files");
    assert!(reads > 0);
    assert_eq!(std::fs::read(served.join("a.raw")).unwrap(), new);
    assert_eq!(std::fs::read(served.join("big.raw")).unwrap(), big_new);
    assert!(sha256sum_accepts(&served));
}

/// A mount made for one test, unmounted however the test ends.
struct Mount(PathBuf);

impl Mount {
    fn new(args: &[&str], at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(args)
            .arg(at)
            .output()
            .expect("mount (util-linux) is installed");
        assert!(
            out.status.success(),
            "the test needs to mount {args:?} (run as root, as .ci/run does): {}",
            text(&out)
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn methods(report: &serde_json::Value) -> Vec<String> {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["method"].as_str().map(str::to_string))
        .collect()
}

/// The synced copy on tmpfs, the served folder on another filesystem: copied, never linked.
/// Both on one XFS or Btrfs volume (a Synology's filesystem): cloned.
#[test]
fn other_filesystems_are_copied_and_reflinks_are_used_where_they_exist() {
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm is a tmpfs");
    let root = tempfile::tempdir().unwrap();
    let synced = shm.path().join("synced");
    let served = root.path().join("served");
    let a = image_bytes(400, 3 << 20);
    write_generation(&synced, &[("a.raw", &a)], "2026-12-01T00:00:00Z");
    let (code, out, report) = output(&mut labctl_verify_into(&synced, &served, &["--json"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(methods(&report), ["copy"]);
    assert_eq!(report["bytes_copied"], a.len());
    use std::os::unix::fs::MetadataExt;
    let (s, d) = (
        std::fs::metadata(synced.join("a.raw")).unwrap(),
        std::fs::metadata(served.join("a.raw")).unwrap(),
    );
    assert_ne!((s.dev(), s.ino()), (d.dev(), d.ino()));

    for fs in [Fs::Xfs, Fs::Btrfs] {
        reflinked_on(fs, &a);
    }
}

#[derive(Debug, Clone, Copy)]
enum Fs {
    /// With reflinks (`mkfs.xfs -m reflink=1`, the default of recent xfsprogs).
    Xfs,
    /// A Synology volume's filesystem.
    Btrfs,
}

/// A fresh loop volume of `mib` MiB: its temporary directory, its mount, and where it is.
fn loop_volume(fs: Fs, mib: u64) -> (tempfile::TempDir, Mount, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let image = root.path().join("volume.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let (program, args, package): (&str, &[&str], &str) = match fs {
        Fs::Xfs => ("mkfs.xfs", &["-q", "-m", "reflink=1"], "xfsprogs"),
        Fs::Btrfs => ("mkfs.btrfs", &["-q"], "btrfs-progs"),
    };
    let mkfs = Command::new(program)
        .args(args)
        .arg(&image)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} ({package}) is installed: scripts/test installs it ({e})")
        });
    assert!(mkfs.status.success(), "{program}: {}", text(&mkfs));
    let volume = root.path().join("volume");
    let image_arg = image.display().to_string();
    let mount = Mount::new(&["-o", "loop", &image_arg], &volume);
    (root, mount, volume)
}

/// Both folders on one volume of `fs`: the file is cloned, and the clone is verified.
fn reflinked_on(fs: Fs, a: &[u8]) {
    let (_root, _mount, volume) = loop_volume(fs, 320);
    let synced = volume.join("synced");
    let served = volume.join("served");
    write_generation(&synced, &[("a.raw", a)], "2026-12-01T00:00:00Z");
    let (code, out, report) = output(&mut labctl_verify_into(&synced, &served, &["--json"]));
    assert_eq!(code, 0, "{fs:?}: {out}");
    assert_eq!(methods(&report), ["reflink"], "{fs:?}");
    assert_eq!(report["bytes_copied"], 0, "{fs:?}");
    assert_eq!(
        report["bytes_hashed"],
        a.len(),
        "{fs:?}: the clone itself is verified"
    );
    // A clone shares no inode: a later write to the synced file does not reach it.
    flip_byte(&synced.join("a.raw"), 5);
    assert_eq!(std::fs::read(served.join("a.raw")).unwrap(), a, "{fs:?}");
}

/// `--deep` also hashes the synced copies: one whose bytes rotted behind an intact served file
/// is reported (`synced-differs`, exit 2), and the served folder is left as it is.
#[test]
fn deep_reports_a_synced_copy_that_no_longer_matches_its_list() {
    let root = tempfile::tempdir().unwrap();
    let synced = root.path().join("synced");
    let served = root.path().join("served");
    let (a, b) = (image_bytes(410, 300_000), image_bytes(411, 200_000));
    write_generation(
        &synced,
        &[("a.raw", &a), ("b.raw", &b)],
        "2026-12-01T00:00:00Z",
    );
    assert_eq!(output(&mut labctl_verify_into(&synced, &served, &[])).0, 0);
    let deep = output(&mut labctl_verify_into(
        &synced,
        &served,
        &["--deep", "--json"],
    ));
    assert_eq!(deep.0, 0, "{}", deep.1);
    assert_eq!(
        deep.2["bytes_hashed"],
        a.len() + b.len() + a.len() + b.len()
    );

    flip_byte(&synced.join("b.raw"), 1000);
    let before = std::fs::read(served.join("b.raw")).unwrap();
    // Without --deep nothing looks at a current file's synced copy.
    assert_eq!(output(&mut labctl_verify_into(&synced, &served, &[])).0, 0);
    let (code, out, report) = output(&mut labctl_verify_into(
        &synced,
        &served,
        &["--deep", "--json"],
    ));
    assert_eq!(code, 2, "{out}");
    assert_eq!(status_of(&report, "b.raw"), "synced-differs", "{report}");
    assert_eq!(status_of(&report, "a.raw"), "current", "{report}");
    let row = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "b.raw")
        .unwrap();
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("the served file is intact"),
        "{row}"
    );
    assert_eq!(std::fs::read(served.join("b.raw")).unwrap(), before);
    assert_eq!(before, b);
    assert!(sha256sum_accepts(&served));
}

/// Not enough room for the new files: a clear error, and the served folder unchanged.
#[test]
fn a_full_disk_is_an_error_that_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let synced = root.path().join("synced");
    let served = root.path().join("served");
    let _mount = Mount::new(&["-t", "tmpfs", "-o", "size=2m", "tmpfs"], &served);
    let small = image_bytes(500, 100_000);
    write_generation(&synced, &[("small.raw", &small)], "2026-12-01T00:00:00Z");
    assert_eq!(output(&mut labctl_verify_into(&synced, &served, &[])).0, 0);
    let sums = std::fs::read(served.join("SHA256SUMS")).unwrap();

    let big = image_bytes(501, 3 << 20);
    write_generation(
        &synced,
        &[("small.raw", &small), ("big.raw", &big)],
        "2026-12-02T00:00:00Z",
    );
    let (code, out, _) = output(&mut labctl_verify_into(&synced, &served, &[]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("bytes free; placing the new files needs")
            && out.contains("nothing was placed"),
        "{out}"
    );
    assert!(out.contains("free space"), "a hint: {out}");
    assert_eq!(std::fs::read(served.join("SHA256SUMS")).unwrap(), sums);
    assert!(!served.join("big.raw").exists());
    assert_eq!(temporary_files(&served), 0);
}

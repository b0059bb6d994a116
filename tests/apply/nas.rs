//! The trust chain to the machines that boot: the consumer index in `images/` (checked with
//! plain `sha256sum -c`, the real `minisign`, and `labctl verify`), the NAS's copy pulled by the
//! real `rclone` over the S3 API, and history that outlives the vendor's file.

use std::path::Path;
use std::process::Command;

use crate::harness::*;
use crate::support::fixture::Faults;
use crate::support::servers::BUCKET;

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod nas_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod nas_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod nas_fs { $( #[test] fn $case() { super::$case(super::Backend::Fs) } )* }
        mod nas_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod nas_garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

on_every_store!(
    index_lists_exactly_the_managed_objects,
    history_restores_after_the_vendor_deleted_the_file,
    a_failed_replace_takes_back_its_kept_copy,
);

macro_rules! on_s3_stores {
    ($($case:ident),* $(,)?) => {
        mod nas_s3_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod nas_s3_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod nas_s3_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod nas_s3_garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

on_s3_stores!(
    nas_copy_pulled_by_rclone_is_verified,
    server_side_copy_above_the_single_copy_limit,
);

/// One image of a hand-written manifest.
pub(crate) struct Img<'a> {
    pub(crate) name: &'a str,
    pub(crate) path: &'a str,
    pub(crate) checksum: String,
    /// More lines of the source block.
    pub(crate) source_extra: String,
    pub(crate) destination: &'a str,
    /// More lines of the image after `destination`.
    pub(crate) extra: String,
}

pub(crate) fn manifest(lab: &Lab, spec_extra: &str, images: &[Img]) -> String {
    let mut text =
        format!("apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n{spec_extra}  images:\n");
    for i in images {
        text.push_str(&format!(
            "    - name: {}\n      source:\n        type: http\n        url: {}\n        checksum: {}\n{}      destination: {}\n{}",
            i.name,
            lab.fixture.url(i.path),
            i.checksum,
            i.source_extra,
            i.destination,
            i.extra
        ));
    }
    text
}

pub(crate) fn run_tool(program: &str, args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (scripts/test installs it): {e}"))
}

pub(crate) fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies every object under `images/` into `dir`, as a sync would.
fn download_images(lab: &Lab, dir: &Path) {
    let store = lab.store();
    let objects = lab
        .runtime
        .block_on(labctl::store::list_all(store.as_ref(), "images/"))
        .unwrap();
    for o in objects {
        let path = dir.join(o.key.strip_prefix("images/").unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let (_, bytes) = lab
            .runtime
            .block_on(labctl::store::get_bytes(store.as_ref(), &o.key, 1 << 30))
            .unwrap()
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn three_images(lab: &Lab) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let a = image_bytes(70, 400_000);
    let b = image_bytes(71, 6 * 1024 * 1024 + 17);
    let c = image_bytes(72, 1000);
    lab.serve("/a.raw", a.clone(), Faults::default());
    lab.serve("/b.raw.xz", xz(&b), Faults::default());
    lab.serve("/c.iso", c.clone(), Faults::default());
    let m = manifest(
        lab,
        "",
        &[
            Img {
                name: "a",
                path: "/a.raw",
                checksum: sha256(&a).to_string(),
                source_extra: String::new(),
                destination: "talos/a.raw",
                extra: String::new(),
            },
            // Declared with sha512: the index still needs its sha256.
            Img {
                name: "b",
                path: "/b.raw.xz",
                checksum: sha256(&xz(&b)).to_string(),
                source_extra: "        decompress: xz\n".into(),
                destination: "harvester/b.raw",
                extra: format!("      validation:\n        expected: {}\n", sha512(&b)),
            },
            Img {
                name: "c",
                path: "/c.iso",
                checksum: sha512(&c).to_string(),
                source_extra: String::new(),
                destination: "vyos/c.iso",
                extra: String::new(),
            },
        ],
    );
    lab.write_manifest_text(&m);
    (a, b, c)
}

fn index_lists_exactly_the_managed_objects(backend: Backend) {
    let lab = Lab::new(backend);
    let (a, b, c) = three_images(&lab);
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stdout.contains("consumer index: 3 objects"),
        "{}",
        run.output()
    );

    let sums = String::from_utf8(lab.object("SHA256SUMS").expect("SHA256SUMS written")).unwrap();
    assert_eq!(
        sums,
        format!(
            "{}  harvester/b.raw\n{}  talos/a.raw\n{}  vyos/c.iso\n",
            sha256(&b).hex(),
            sha256(&a).hex(),
            sha256(&c).hex()
        )
    );
    let index: serde_json::Value =
        serde_json::from_slice(&lab.object("index.json").expect("index.json written")).unwrap();
    assert_eq!(index["format_version"], "1.1");
    assert!(index["generated_at"].as_str().unwrap().ends_with('Z'));
    let images = index["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(images[0]["name"], "b");
    assert_eq!(images[0]["path"], "harvester/b.raw");
    assert_eq!(images[0]["size"], b.len());
    assert_eq!(images[0]["sha256"], sha256(&b).hex());
    assert_eq!(images[0]["checksum"], sha512(&b).to_string());
    assert_eq!(images[0]["source_url"], lab.fixture.url("/b.raw.xz"));
    assert!(images[0]["uploaded_at"].is_string());
    assert_eq!(images[0]["labctl_version"], env!("CARGO_PKG_VERSION"));
    // The record keeps the sha256 beside the declared sha512.
    let record = lab.record("harvester/b.raw").unwrap();
    assert_eq!(record["checksum"], sha512(&b).to_string());
    assert_eq!(record["sha256"], sha256(&b).to_string());

    // What the NAS does with plain coreutils.
    let copy = tempfile::tempdir().unwrap();
    download_images(&lab, copy.path());
    let check = run_tool("sha256sum", &["-c", "SHA256SUMS"], copy.path());
    assert!(check.status.success(), "{}", text(&check));

    // Nothing changed: no plan, no apply work, the index is left alone.
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
    let again = lab.apply();
    assert_eq!(again.code, 0, "{}", again.output());
    assert!(again.stderr.contains("No changes") || again.stdout.contains("No changes"));

    // A lost index is a change of its own, shown on its own line and carried by --json.
    lab.delete("images/SHA256SUMS");
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.output());
    assert!(
        plan.stdout.contains("the consumer index will be rewritten")
            && plan.stdout.contains("images/SHA256SUMS is missing"),
        "{}",
        plan.output()
    );
    let json = lab.labctl(&["plan", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["index"]["action"], "write");
    assert_eq!(v["summary"]["replace"], 0);
    let healed = lab.apply();
    assert_eq!(healed.code, 0, "{}", healed.output());
    assert_eq!(lab.object("SHA256SUMS").unwrap(), sums.as_bytes());

    // Drift: an object nobody manages is reported; the index files are not.
    lab.put("images/stray.bin", b"left by hand");
    let drift = lab.labctl(&["drift", "--json"]);
    assert_eq!(drift.code, 2, "{}", drift.output());
    let report: serde_json::Value = serde_json::from_str(&drift.stdout).unwrap();
    let unmanaged: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "unmanaged")
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(unmanaged, ["images/stray.bin"]);

    // A record published before the sha256 existed: apply reads the object back once.
    let mut old = lab.record("vyos/c.iso").unwrap();
    old.as_object_mut().unwrap().remove("sha256");
    lab.put(
        "metadata/vyos/c.iso.json",
        &serde_json::to_vec_pretty(&old).unwrap(),
    );
    lab.delete("images/stray.bin");
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.output());
    assert!(
        plan.stdout
            .contains("the sha256 of c is computed by reading images/vyos/c.iso back once"),
        "{}",
        plan.output()
    );
    let fixed = lab.apply();
    assert_eq!(fixed.code, 0, "{}", fixed.output());
    assert_eq!(
        lab.record("vyos/c.iso").unwrap()["sha256"],
        sha256(&c).to_string()
    );
    assert_eq!(lab.object("SHA256SUMS").unwrap(), sums.as_bytes());
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
}

/// `rclone` pulls the bucket's `images/` over the S3 API, download only, the way the NAS's
/// Cloud Sync does; `labctl verify` judges the copy.
fn nas_copy_pulled_by_rclone_is_verified(backend: Backend) {
    let lab = Lab::new(backend);
    let (a, _, c) = three_images(&lab);
    let d = image_bytes(73, 5000);
    lab.serve("/d.img", d.clone(), Faults::default());
    let mut m = std::fs::read_to_string(lab.manifest_path()).unwrap();
    m.push_str(&format!(
        "    - name: d\n      source:\n        type: http\n        url: {}\n        checksum: {}\n      destination: d.img\n",
        lab.fixture.url("/d.img"),
        sha256(&d)
    ));
    lab.write_manifest_text(&m);
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());

    let nas = tempfile::tempdir().unwrap();
    let sync = rclone_sync(&lab, nas.path(), &[]);
    assert!(sync.status.success(), "rclone sync: {}", text(&sync));
    assert!(nas.path().join("SHA256SUMS").is_file());
    assert_eq!(std::fs::read(nas.path().join("talos/a.raw")).unwrap(), a);

    let dir = nas.path().display().to_string();
    let clean = lab.labctl_bare(&["verify", &dir]);
    assert_eq!(clean.code, 0, "{}", clean.output());
    assert!(clean.stdout.contains("4 ok"), "{}", clean.output());
    let check = run_tool("sha256sum", &["-c", "SHA256SUMS"], nas.path());
    assert!(check.status.success(), "{}", text(&check));

    // One byte flipped, a truncated file, a missing file, an extra file.
    let mut flipped = std::fs::read(nas.path().join("vyos/c.iso")).unwrap();
    flipped[500] ^= 0x01;
    std::fs::write(nas.path().join("vyos/c.iso"), flipped).unwrap();
    let b_path = nas.path().join("harvester/b.raw");
    let b_len = std::fs::metadata(&b_path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&b_path)
        .unwrap()
        .set_len(b_len / 2)
        .unwrap();
    std::fs::remove_file(nas.path().join("d.img")).unwrap();
    std::fs::write(nas.path().join("talos/extra.raw"), b"not from the bucket").unwrap();

    let found = lab.labctl_bare(&["verify", &dir]);
    assert_eq!(found.code, 2, "{}", found.output());
    for (verdict, path) in [
        ("content-differs", "vyos/c.iso"),
        ("size-differs", "harvester/b.raw"),
        ("missing", "d.img"),
        ("unlisted", "talos/extra.raw"),
        ("ok", "talos/a.raw"),
    ] {
        assert!(
            found
                .stdout
                .lines()
                .any(|l| l.contains(verdict) && l.contains(path)),
            "{verdict} {path}:\n{}",
            found.output()
        );
    }
    let json = lab.labctl_bare(&["verify", &dir, "--json", "--jobs", "3"]);
    assert_eq!(json.code, 2, "{}", json.output());
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let verdicts: Vec<(String, String)> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |p: &str, v: &str| (p.to_string(), v.to_string());
    assert_eq!(
        verdicts,
        [
            expect("d.img", "missing"),
            expect("harvester/b.raw", "size-differs"),
            expect("talos/a.raw", "ok"),
            expect("vyos/c.iso", "content-differs"),
            expect("talos/extra.raw", "unlisted"),
        ]
    );
    assert_eq!(report["summary"]["ok"], 1);
    let _ = c;

    // The next sync heals the copy (download only: the extra file is the NAS's own business
    // for Cloud Sync, but `rclone sync` mirrors, so it goes too).
    // Same size and a newer local time: compare by checksum, as a careful sync does.
    let resync = rclone_sync(&lab, nas.path(), &["--checksum"]);
    assert!(resync.status.success(), "rclone sync: {}", text(&resync));
    let healed = lab.labctl_bare(&["verify", &dir]);
    assert_eq!(healed.code, 0, "{}", healed.output());

    // index.json is not signed: a consumer reading its sha256s relies on verify holding it to
    // SHA256SUMS. One altered on the NAS is caught, though every file is fine.
    let index_path = nas.path().join("index.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    let a_sha = sha256(&a).hex().to_string();
    assert!(index.contains(&a_sha));
    std::fs::write(&index_path, index.replace(&a_sha, &"0".repeat(64))).unwrap();
    let altered = lab.labctl_bare(&["verify", &dir]);
    assert_eq!(altered.code, 2, "{}", altered.output());
    assert!(
        altered
            .stdout
            .lines()
            .any(|l| l.contains("index-differs") && l.contains("talos/a.raw")),
        "{}",
        altered.output()
    );
}

/// `rclone sync` of the bucket's `images/` into `dir`: one direction, bucket to NAS.
pub(crate) fn rclone_sync(lab: &Lab, dir: &Path, extra: &[&str]) -> std::process::Output {
    rclone_command(lab, dir, extra)
        .output()
        .expect("rclone must be installed (scripts/test installs it)")
}

/// The `rclone sync` command, to run or to start and interrupt.
pub(crate) fn rclone_command(lab: &Lab, dir: &Path, extra: &[&str]) -> Command {
    let server = lab.server.as_ref().expect("an S3 backend");
    let mut cmd = Command::new("rclone");
    cmd.args([
        "sync",
        &format!("lab:{BUCKET}/images"),
        &dir.display().to_string(),
    ])
    // rclone first HEADs `images` to see whether it names a file; s3s-fs answers a key that
    // is a directory on its disk with 500 instead of 404, which rclone would retry with
    // back-off for over a minute.
    .args(["--low-level-retries", "1"])
    .args(extra)
    .env("RCLONE_CONFIG", "/dev/null")
    .env("RCLONE_CONFIG_LAB_TYPE", "s3")
    .env("RCLONE_CONFIG_LAB_PROVIDER", "Other")
    .env("RCLONE_CONFIG_LAB_ENV_AUTH", "false")
    .env("RCLONE_CONFIG_LAB_ACCESS_KEY_ID", &server.access_key)
    .env("RCLONE_CONFIG_LAB_SECRET_ACCESS_KEY", &server.secret_key)
    .env("RCLONE_CONFIG_LAB_ENDPOINT", &server.endpoint)
    .env(
        "RCLONE_CONFIG_LAB_REGION",
        server.region.as_deref().unwrap_or("us-east-1"),
    )
    .env("RCLONE_CONFIG_LAB_FORCE_PATH_STYLE", "true")
    // The AWS SDK inside rclone refuses a custom CA bundle on a plain-http endpoint.
    .env_remove("AWS_CA_BUNDLE");
    cmd
}

/// Whether the stock `minisign -Vm SHA256SUMS -P KEY` accepts the signature in `dir`.
pub(crate) fn minisign_accepts(dir: &Path, public: &str) -> bool {
    let out = run_tool("minisign", &["-Vm", "SHA256SUMS", "-P", public], dir);
    eprintln!("minisign -V: {}", text(&out));
    out.status.success()
}

/// A key pair made by the real minisign: `(public key, secret key file contents)`.
pub(crate) fn minisign_keys(dir: &Path, name: &str) -> (String, String) {
    let out = run_tool(
        "minisign",
        &[
            "-G",
            "-W",
            "-p",
            &format!("{name}.pub"),
            "-s",
            &format!("{name}.key"),
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub")))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let secret = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    (public, secret)
}

#[test]
fn signed_index_is_accepted_by_minisign_and_by_verify() {
    let lab = Lab::new(Backend::S3sFs);
    let keys = tempfile::tempdir().unwrap();
    let (public, secret) = minisign_keys(keys.path(), "lab");
    let (other_public, _) = minisign_keys(keys.path(), "other");
    let a = image_bytes(80, 70_000);
    lab.serve("/a.raw", a.clone(), Faults::default());
    let signing = format!("  index:\n    signing:\n      minisign:\n        publicKey: {public}\n");
    lab.write_manifest_text(&manifest(
        &lab,
        &signing,
        &[Img {
            name: "a",
            path: "/a.raw",
            checksum: sha256(&a).to_string(),
            source_extra: String::new(),
            destination: "a.raw",
            extra: String::new(),
        }],
    ));

    // Signing configured, no key: refused before anything is uploaded.
    let refused = lab.apply();
    assert_eq!(refused.code, 1, "{}", refused.output());
    assert!(
        refused
            .stderr
            .contains("LABCTL_MINISIGN_SECRET_KEY is not set"),
        "{}",
        refused.output()
    );
    assert!(lab.object("a.raw").is_none());
    assert!(lab.head(".labctl/lock.json").is_none());
    assert!(lab.fixture.log().is_empty(), "nothing was downloaded");

    let secret_line = secret.lines().nth(1).unwrap().to_string();
    let run = lab.apply_with_env(&[("LABCTL_MINISIGN_SECRET_KEY", &secret)]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stdout.contains("signed"), "{}", run.output());
    // The secret never shows: not in output, records, the plan or the index.
    assert!(!run.output().contains(&secret_line));
    let plan = lab.labctl_env(
        &["plan", "--json"],
        &[("LABCTL_MINISIGN_SECRET_KEY", &secret)],
    );
    assert!(!plan.output().contains(&secret_line));
    for key in [
        "metadata/a.raw.json",
        "images/index.json",
        "images/SHA256SUMS.minisig",
    ] {
        let store = lab.store();
        let (_, bytes) = lab
            .runtime
            .block_on(labctl::store::get_bytes(store.as_ref(), key, 1 << 20))
            .unwrap()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&secret_line),
            "{key}"
        );
    }
    // Signed as configured: nothing left to do.
    assert_eq!(plan.code, 0, "{}", plan.output());
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(v["index"]["action"], "no-op", "{}", plan.stdout);

    let copy = tempfile::tempdir().unwrap();
    download_images(&lab, copy.path());
    let dir = copy.path().display().to_string();
    assert!(minisign_accepts(copy.path(), &public));
    let ours = lab.labctl_bare(&["verify", &dir, "--public-key", &public]);
    assert_eq!(ours.code, 0, "{}", ours.output());
    assert!(
        ours.stdout.contains("verified with key"),
        "{}",
        ours.output()
    );
    let from_file = lab.labctl_bare(&[
        "verify",
        &dir,
        "--public-key-file",
        &keys.path().join("lab.pub").display().to_string(),
    ]);
    assert_eq!(from_file.code, 0, "{}", from_file.output());

    // The wrong key is refused by both.
    assert!(!minisign_accepts(copy.path(), &other_public));
    let ours = lab.labctl_bare(&["verify", &dir, "--public-key", &other_public]);
    assert_eq!(ours.code, 1, "{}", ours.output());

    // A signature made with another key (an attacker's) is refused by both.
    let forged = run_tool(
        "minisign",
        &[
            "-S",
            "-m",
            "SHA256SUMS",
            "-s",
            &keys.path().join("other.key").display().to_string(),
        ],
        copy.path(),
    );
    assert!(forged.status.success(), "{}", text(&forged));
    assert!(!minisign_accepts(copy.path(), &public));
    let ours = lab.labctl_bare(&["verify", &dir, "--public-key", &public]);
    assert_eq!(ours.code, 1, "{}", ours.output());
    assert!(ours.stderr.contains("was made by key"), "{}", ours.output());

    // A tampered list under a good signature is refused too.
    download_images(&lab, copy.path());
    let mut sums = std::fs::read_to_string(copy.path().join("SHA256SUMS")).unwrap();
    sums = sums.replace(sha256(&a).hex(), &"0".repeat(64));
    std::fs::write(copy.path().join("SHA256SUMS"), sums).unwrap();
    let ours = lab.labctl_bare(&["verify", &dir, "--public-key", &public]);
    assert_eq!(ours.code, 1, "{}", ours.output());
    assert!(ours.stderr.contains("does not verify"), "{}", ours.output());

    // A secret key that is not the manifest's is refused before anything moves.
    let (_, stranger) = minisign_keys(keys.path(), "stranger");
    lab.delete("images/a.raw");
    lab.fixture.clear_log();
    let wrong = lab.apply_with_env(&[("LABCTL_MINISIGN_SECRET_KEY", &stranger)]);
    assert_eq!(wrong.code, 1, "{}", wrong.output());
    assert!(
        wrong.stderr.contains("does not belong to"),
        "{}",
        wrong.output()
    );
    assert!(lab.fixture.log().is_empty());
}

/// A replace that fails (here: the new download does not match its checksum) keeps nothing:
/// the current bytes stay in place, so the copy made for the history is taken back, and drift
/// finds nothing unmanaged.
fn a_failed_replace_takes_back_its_kept_copy(backend: Backend) {
    let lab = Lab::new(backend);
    let v0 = image_bytes(95, 80_000);
    let v1 = image_bytes(96, 80_000);
    lab.serve("/vyos-0.iso", v0.clone(), Faults::default());
    lab.serve("/vyos-1.iso", v1.clone(), Faults::default());
    let write = |path: &str, checksum: labctl::checksum::Checksum| {
        lab.write_manifest_text(&manifest(
            &lab,
            "",
            &[Img {
                name: "vyos-iso",
                path,
                checksum: checksum.to_string(),
                source_extra: String::new(),
                destination: "vyos/vyos-rolling.iso",
                extra: "      history: 2\n".into(),
            }],
        ));
    };
    write("/vyos-0.iso", sha256(&v0));
    let first = lab.apply();
    assert_eq!(first.code, 0, "{}", first.output());
    // The manifest names v1's URL with a checksum the download will not match.
    write("/vyos-1.iso", sha256(b"not what the server sends"));
    let run = lab.apply();
    assert_eq!(run.code, 1, "{}", run.output());
    let kept = format!("history/vyos/vyos-rolling.iso/{}", sha256(&v0).hex());
    assert!(lab.head(&kept).is_none(), "{}", run.output());
    assert_eq!(lab.object("vyos/vyos-rolling.iso"), Some(v0.clone()));
    write("/vyos-0.iso", sha256(&v0));
    let drift = lab.labctl(&["drift"]);
    assert_eq!(drift.code, 0, "{}", drift.output());

    // A kept copy that was there before the failed run (an earlier replace kept the same
    // bytes) is not this run's to take back.
    lab.put(&kept, &v0);
    write("/vyos-1.iso", sha256(b"not what the server sends"));
    assert_eq!(lab.apply().code, 1);
    assert!(lab.head(&kept).is_some());
}

/// v1 → v2 → v3 with `history: 2`; the vendor deletes v1; the manifest reverts to v1.
fn history_restores_after_the_vendor_deleted_the_file(backend: Backend) {
    let lab = Lab::new(backend);
    let versions: Vec<Vec<u8>> = (0..3)
        .map(|i| image_bytes(90 + i, 90_000 + i as usize))
        .collect();
    for (i, v) in versions.iter().enumerate() {
        lab.serve(&format!("/vyos-{i}.iso"), v.clone(), Faults::default());
    }
    let write = |i: usize| {
        lab.write_manifest_text(&manifest(
            &lab,
            "",
            &[Img {
                name: "vyos-iso",
                path: &format!("/vyos-{i}.iso"),
                checksum: sha256(&versions[i]).to_string(),
                source_extra: String::new(),
                destination: "vyos/vyos-rolling.iso",
                extra: "      history: 2\n".into(),
            }],
        ));
    };
    for i in 0..3 {
        write(i);
        let run = lab.apply();
        assert_eq!(run.code, 0, "v{}: {}", i + 1, run.output());
    }
    let record = lab.record("vyos/vyos-rolling.iso").unwrap();
    let kept: Vec<&str> = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    let key_of = |i: usize| {
        format!(
            "history/vyos/vyos-rolling.iso/{}",
            sha256(&versions[i]).hex()
        )
    };
    assert_eq!(kept, [key_of(1), key_of(0)]);
    assert_eq!(
        record["history"][1]["sourceUrl"],
        lab.fixture.url("/vyos-0.iso")
    );
    let listed = lab.labctl(&["history", "vyos-iso", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.output());
    let v: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(v["images"][0]["history"].as_array().unwrap().len(), 2);
    let human = lab.labctl(&["history"]);
    assert!(human.stdout.contains(&key_of(0)), "{}", human.output());

    // The vendor deleted v1; the lab reverts the manifest in Git.
    lab.fixture.remove("/vyos-0.iso");
    write(0);
    let plan = lab.labctl(&["plan"]);
    assert!(
        plan.stdout.contains("restore from history"),
        "{}",
        plan.output()
    );
    assert!(
        plan.stdout
            .contains(&format!("restored from {}", key_of(0))),
        "{}",
        plan.output()
    );
    let drift = lab.labctl(&["drift", "--check-sources", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&drift.stdout).unwrap();
    let vanished = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "source-vanished")
        .unwrap_or_else(|| panic!("{}", drift.output()));
    assert!(
        vanished["detail"]
            .as_str()
            .unwrap()
            .contains("history holds the only copy"),
        "{vanished}"
    );

    lab.fixture.clear_log();
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stdout.contains("restored from history"),
        "{}",
        run.output()
    );
    let image_requests: Vec<_> = lab
        .fixture
        .log()
        .into_iter()
        .filter(|e| e.path.starts_with("/vyos-"))
        .collect();
    assert!(
        image_requests.is_empty(),
        "nothing downloaded: {image_requests:?}"
    );
    assert_eq!(lab.object("vyos/vyos-rolling.iso").unwrap(), versions[0]);

    // v3 was kept before v1 came back; v1 left the history; exactly two remain.
    let record = lab.record("vyos/vyos-rolling.iso").unwrap();
    assert_eq!(record["checksum"], sha256(&versions[0]).to_string());
    let kept: Vec<&str> = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [key_of(2), key_of(1)]);
    let store = lab.store();
    let mut in_store: Vec<String> = lab
        .runtime
        .block_on(labctl::store::list_all(store.as_ref(), "history/"))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    in_store.sort();
    let mut expected = vec![key_of(1), key_of(2)];
    expected.sort();
    assert_eq!(in_store, expected);
    assert_eq!(
        lab.object("SHA256SUMS").unwrap(),
        format!("{}  vyos/vyos-rolling.iso\n", sha256(&versions[0]).hex()).as_bytes()
    );

    // Nothing left to do, and nothing moves.
    lab.fixture.clear_log();
    let again = lab.apply();
    assert_eq!(again.code, 0, "{}", again.output());
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
    assert!(lab.fixture.log().is_empty());

    // A kept version no record lists (left by an interrupted apply) is reported by drift.
    let stray = format!("history/vyos/vyos-rolling.iso/{}", "e".repeat(64));
    lab.put(&stray, b"left behind");
    let drift = lab.labctl(&["drift", "--json"]);
    assert_eq!(drift.code, 2, "{}", drift.output());
    assert!(
        drift.stdout.contains(&stray) && drift.stdout.contains("no record lists"),
        "{}",
        drift.output()
    );
    lab.delete(&stray);

    // Pruning the image takes its history with it.
    lab.write_manifest_text(
        "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images: []\n",
    );
    // (An emptied manifest prunes the whole store only when that is asked for.)
    let plan = lab.labctl(&["plan", "--prune", "--allow-empty"]);
    assert!(
        plan.stdout
            .contains("its 2 kept versions under history/ are deleted with it"),
        "{}",
        plan.output()
    );
    let pruned = lab.labctl(&["apply", "--auto-approve", "--prune", "--allow-empty"]);
    assert_eq!(pruned.code, 0, "{}", pruned.output());
    assert!(lab
        .runtime
        .block_on(labctl::store::list_all(store.as_ref(), "history/"))
        .unwrap()
        .is_empty());
}

/// History copies use CopyObject, and UploadPartCopy above the single-copy limit (5 GiB on S3):
/// the limit is lowered so the part-by-part path runs on a small object.
fn server_side_copy_above_the_single_copy_limit(backend: Backend) {
    use labctl::store::{PutOptions, Store};
    let lab = Lab::new(backend);
    let store = lab.s3_store().with_single_copy_limit(5 * 1024 * 1024);
    let body = image_bytes(99, 12 * 1024 * 1024 + 3);
    let meta = std::collections::BTreeMap::from([(
        "labctl-checksum".to_string(),
        sha256(&body).to_string(),
    )]);
    lab.runtime
        .block_on(store.put(
            "images/big.raw",
            bytes::Bytes::from(body.clone()),
            PutOptions {
                user_metadata: meta.clone(),
                ..Default::default()
            },
        ))
        .unwrap();
    let key = format!("history/big.raw/{}", sha256(&body).hex());
    let copied = lab
        .runtime
        .block_on(store.copy("images/big.raw", &key, None, None))
        .unwrap();
    assert_eq!(copied.size, body.len() as u64);
    assert_eq!(copied.user_metadata, meta, "the copy keeps the metadata");
    let (_, bytes) = lab
        .runtime
        .block_on(labctl::store::get_bytes(&store, &key, 1 << 30))
        .unwrap()
        .unwrap();
    assert!(bytes == body, "the copy holds the same bytes");

    let other = std::collections::BTreeMap::from([("labctl-checksum".to_string(), "x".into())]);
    let back = lab
        .runtime
        .block_on(store.copy(&key, "images/back.raw", Some(other.clone()), Some(&copied)))
        .unwrap();
    assert_eq!(back.user_metadata, other, "the copy's metadata is replaced");
    assert_eq!(back.size, body.len() as u64);
    assert_eq!(
        lab.runtime
            .block_on(store.list_uploads(""))
            .unwrap()
            .unwrap_or_default(),
        vec![],
        "no multipart upload is left open"
    );
}

/// `labctl verify` streams: its memory does not grow with the files it hashes.
#[test]
fn verify_memory_stays_flat_whatever_the_file_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut sums = String::new();
    let mut images = Vec::new();
    for i in 0..3 {
        let body = image_bytes(100 + i, 96 * 1024 * 1024);
        let name = format!("big-{i}.raw");
        std::fs::write(dir.path().join(&name), &body).unwrap();
        let sum = sha256(&body);
        sums.push_str(&format!("{}  {name}\n", sum.hex()));
        images.push(serde_json::json!({
            "name": name, "path": name, "size": body.len(), "sha256": sum.hex(),
            "checksum": sum.to_string(),
        }));
    }
    std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
    let index = serde_json::json!({
        "format_version": "1.0", "generated_at": "2026-11-26T00:00:00Z",
        "labctl_version": "0.1.0", "images": images,
    });
    std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
    let kib = peak_rss_kib(
        timed_labctl()
            .arg("verify")
            .arg(dir.path())
            .args(["--jobs", "3"]),
    );
    assert!(
        kib < 48 * 1024,
        "peak RSS {} MiB for 288 MiB of files",
        kib / 1024
    );
}

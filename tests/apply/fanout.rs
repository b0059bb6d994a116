//! The fan-out over a CI matrix: `plan --matrix`, `labctl stage` legs started as separate
//! processes at the same time, then one `apply --staged` promotion, on every store. What the
//! store holds afterwards is compared with what one plain `labctl apply` leaves in another
//! prefix of the same store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::packer::{expected_gateway, gateway, gateway_template, SECRET};
use crate::support::fixture::Faults;

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod fanout_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod fanout_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod fanout_fs { $( #[test] fn $case() { super::$case(super::Backend::Fs) } )* }
        mod fanout_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod fanout_garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

on_every_store!(
    staged_legs_then_promotion_leave_the_store_as_one_apply_would,
    the_same_unit_staged_twice_at_once,
    a_stage_killed_mid_upload_is_staged_again,
    a_missing_unit_fails_alone_and_skips_its_dependents,
    a_stale_plan_is_neither_staged_nor_promoted,
    a_killed_promotion_is_recovered_by_the_documented_steps,
    a_blob_changed_or_gone_since_its_stage_is_not_promoted,
    a_legs_results_are_read_together_unless_a_unit_was_staged_again,
);

macro_rules! on_s3_stores {
    ($($case:ident),* $(,)?) => {
        mod fanout_s3_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod fanout_s3_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod fanout_s3_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod fanout_s3_garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

on_s3_stores!(
    an_object_above_the_single_copy_limit_is_promoted_part_by_part,
    a_leg_whose_results_cannot_be_written_together_still_stages,
);

pub(crate) const PLAN: &str = "plan.json";
const MATRIX: &str = "matrix.json";

/// Four units: a raw ISO, an xz image, a raw image pinned by sha512 (three downloads, wave 1)
/// and a Packer build that takes the ISO's URL and checksum (wave 2).
pub(crate) struct Images {
    pub iso: Vec<u8>,
    pub xz_plain: Vec<u8>,
    pub wide: Vec<u8>,
}

impl Images {
    pub fn new(seed: u64) -> Images {
        Images {
            iso: image_bytes(seed, 6 * 1024 * 1024 + 77),
            xz_plain: image_bytes(seed + 1, 3 * 1024 * 1024 + 5),
            wide: image_bytes(seed + 2, 2 * 1024 * 1024 + 3),
        }
    }

    /// Serves the images at paths of their own (`/iso-SEED`, …) and writes the manifest, with
    /// `history: 1` on the ISO.
    pub fn install(&self, lab: &Lab, tag: &str) {
        let iso_path: &'static str = Box::leak(format!("/iso-{tag}").into_boxed_str());
        let xz_path: &'static str = Box::leak(format!("/xz-{tag}").into_boxed_str());
        let wide_path: &'static str = Box::leak(format!("/wide-{tag}").into_boxed_str());
        let packed = xz(&self.xz_plain);
        lab.serve(iso_path, self.iso.clone(), Faults::default());
        lab.serve(xz_path, packed.clone(), Faults::default());
        lab.serve(wide_path, self.wide.clone(), Faults::default());
        let mut wide = Entry::raw("wide", wide_path, &self.wide);
        wide.checksum = sha512(&self.wide);
        lab.write_manifest_with(
            &[
                Entry::raw("iso", iso_path, &self.iso),
                Entry::compressed("packed", xz_path, &packed, "xz", &self.xz_plain),
                wide,
            ],
            &[gateway(true)],
        );
        let text = std::fs::read_to_string(lab.manifest_path()).unwrap();
        let text = text.replace(
            "destination: test/iso.img\n",
            "destination: test/iso.img\n      history: 1\n",
        );
        std::fs::write(lab.manifest_path(), text).unwrap();
    }
}

pub(crate) fn setup(backend: Backend) -> (Lab, Images) {
    let lab = Lab::new(backend);
    lab.template("gateway", &gateway_template("v1"));
    let images = Images::new(40);
    images.install(&lab, "v1");
    (lab, images)
}

pub(crate) fn plan_with_matrix(lab: &Lab) -> serde_json::Value {
    let run = lab.labctl(&["plan", "--out", PLAN, "--matrix", MATRIX]);
    assert_eq!(run.code, 0, "{}", run.output());
    serde_json::from_slice(&std::fs::read(lab.dir().join(MATRIX)).unwrap()).unwrap()
}

/// The legs of wave `wave` (1-based), as the workflow would start them.
fn legs(matrix: &serde_json::Value, wave: usize) -> Vec<String> {
    matrix["waves"][wave - 1]["matrix"]["include"]
        .as_array()
        .unwrap_or_else(|| panic!("no wave {wave} in {matrix}"))
        .iter()
        .map(|l| l["units"].as_str().unwrap().to_string())
        .collect()
}

pub(crate) const BUILD_ENV: &[(&str, &str)] = &[("PKR_VAR_build_secret", SECRET)];

/// Starts one `labctl stage` per leg at the same moment and waits for all of them.
fn stage_together(lab: &Lab, legs: &[String]) -> Vec<Run> {
    let children: Vec<_> = legs
        .iter()
        .map(|units| {
            let result = format!("result-{}.json", units.replace(',', "_"));
            lab.spawn_env(
                &["stage", PLAN, "--unit", units, "--result", &result],
                BUILD_ENV,
            )
        })
        .collect();
    children
        .into_iter()
        .map(|c| finish(c, &["stage"]))
        .collect()
}

pub(crate) fn stage_all_waves(lab: &Lab, matrix: &serde_json::Value) {
    for wave in 1..=matrix["waves"].as_array().unwrap().len() {
        for run in stage_together(lab, &legs(matrix, wave)) {
            assert_eq!(run.code, 0, "{}", run.output());
        }
    }
}

pub(crate) fn promote(lab: &Lab) -> Run {
    lab.labctl(&["apply", PLAN, "--staged"])
}

pub(crate) fn assert_converged(lab: &Lab) {
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
}

/// The store's keys and what they hold, with what differs between two runs by nature (times,
/// ETags, the CI run) left out. Keys are relative to `prefix`; labctl's own folder and `skip`
/// are not compared.
pub(crate) fn snapshot(
    lab: &Lab,
    store: &dyn labctl::store::Store,
    prefix: &str,
    skip: &str,
) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let listed = lab
        .runtime
        .block_on(labctl::store::list_all(store, prefix))
        .unwrap();
    for object in listed {
        let key = object.key;
        let relative = key.strip_prefix(prefix).unwrap().to_string();
        // `.labctl-fs/` is the directory store's own (a nested one shows it).
        if relative.starts_with(".labctl") || (!skip.is_empty() && relative.starts_with(skip)) {
            continue;
        }
        let (meta, bytes) = lab
            .runtime
            .block_on(labctl::store::get_bytes(store, &key, 1 << 30))
            .unwrap()
            .unwrap();
        let value = if relative.starts_with("metadata/") || relative == "images/index.json" {
            let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            strip_volatile(&mut json);
            json
        } else {
            serde_json::json!({
                "sha256": sha256(&bytes).to_string(),
                "size": bytes.len(),
                "metadata": lab.runtime.block_on(store.head(&key)).unwrap().map(|m| m.user_metadata),
                "get_size": meta.size,
            })
        };
        out.insert(relative, value);
    }
    out
}

fn strip_volatile(value: &mut serde_json::Value) {
    const VOLATILE: [&str; 7] = [
        "uploadedAt",
        "uploaded_at",
        "objectEtag",
        "keptAt",
        "generated_at",
        "ciRun",
        "ci_run",
    ];
    match value {
        serde_json::Value::Object(map) => {
            for k in VOLATILE {
                map.remove(k);
            }
            map.values_mut().for_each(strip_volatile);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

/// Where one plain apply goes for comparison: another prefix (or directory) of the same store.
fn single_store(lab: &Lab) -> String {
    let store = format!("{}/single", lab.store_arg());
    if lab.backend == Backend::Fs {
        std::fs::create_dir_all(&store).unwrap();
    }
    store
}

fn apply_single(lab: &Lab) {
    let run = lab.labctl_at(&single_store(lab), &["apply", "--auto-approve"], BUILD_ENV);
    assert_eq!(run.code, 0, "{}", run.output());
}

fn assert_same_as_single_apply(lab: &Lab) {
    let store = lab.store();
    let fanned = snapshot(lab, store.as_ref(), "", "single/");
    let single = match lab.backend {
        Backend::Fs => {
            let nested = labctl::store::fs::FsStore::new(lab.dir().join("store/single"));
            snapshot(lab, &nested, "", "")
        }
        _ => snapshot(lab, store.as_ref(), "single/", ""),
    };
    assert_eq!(
        fanned.keys().collect::<Vec<_>>(),
        single.keys().collect::<Vec<_>>(),
        "the same keys"
    );
    for (key, value) in &fanned {
        assert_eq!(value, &single[key], "`{key}` differs from a single apply's");
    }
}

pub(crate) fn staged_leftovers(lab: &Lab) -> Vec<String> {
    let mut keys = lab.keys(".labctl/blobs/");
    keys.extend(lab.keys(".labctl/staged/"));
    keys
}

fn staged_legs_then_promotion_leave_the_store_as_one_apply_would(backend: Backend) {
    let (lab, images) = setup(backend);
    let matrix = plan_with_matrix(&lab);
    assert_eq!(matrix["units"], 4, "{matrix}");
    assert_eq!(legs(&matrix, 1), ["iso", "packed", "wide"], "{matrix}");
    assert_eq!(legs(&matrix, 2), ["gateway"], "{matrix}");
    assert_eq!(matrix["waves"][1]["matrix"]["include"][0]["kvm"], true);
    assert_eq!(matrix["waves"][0]["matrix"]["include"][0]["kvm"], false);

    // Wave 1: three legs at once; nothing is published yet.
    for run in stage_together(&lab, &legs(&matrix, 1)) {
        assert_eq!(run.code, 0, "{}", run.output());
    }
    assert!(lab.keys("images/").is_empty(), "{:?}", lab.keys("images/"));
    assert!(lab.keys("metadata/").is_empty());
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "stage takes no lock"
    );
    let blobs = lab.keys(".labctl/blobs/");
    assert!(
        blobs.contains(&format!(
            ".labctl/blobs/sha256/{}",
            sha256(&images.iso).hex()
        )),
        "{blobs:?}"
    );
    assert!(
        blobs.contains(&format!(
            ".labctl/blobs/sha256/{}",
            sha256(&images.xz_plain).hex()
        )),
        "the decompressed bytes are staged: {blobs:?}"
    );
    assert!(
        blobs.contains(&format!(
            ".labctl/blobs/sha512/{}",
            sha512(&images.wide).hex()
        )),
        "{blobs:?}"
    );
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.dir().join("result-iso.json")).unwrap()).unwrap();
    assert_eq!(result["results"][0]["status"], "staged", "{result}");
    assert_eq!(result["results"][0]["blob"]["uploaded"], true, "{result}");

    // Wave 2: the build fetches the staged ISO.
    let runs = stage_together(&lab, &legs(&matrix, 2));
    assert_eq!(runs[0].code, 0, "{}", runs[0].output());
    assert!(
        !runs[0].stdout.contains(SECRET) && !runs[0].stderr.contains(SECRET),
        "{}",
        runs[0].output()
    );

    let promoted = promote(&lab);
    assert_eq!(promoted.code, 0, "{}", promoted.output());
    assert!(
        promoted.stdout.contains("promoted from its staged blob"),
        "{}",
        promoted.output()
    );
    assert_eq!(lab.object("test/iso.img").unwrap(), images.iso);
    assert_eq!(lab.object("test/packed.img").unwrap(), images.xz_plain);
    assert_eq!(
        lab.object("test/gateway.raw").unwrap(),
        expected_gateway(&images.iso, "v1")
    );
    assert!(
        staged_leftovers(&lab).is_empty(),
        "{:?}",
        staged_leftovers(&lab)
    );
    assert_converged(&lab);
    apply_single(&lab);
    assert_same_as_single_apply(&lab);

    // A new ISO: kept in the history, and the build replaced in its wave, as apply does.
    let v2 = Images::new(40);
    let v2 = Images {
        iso: image_bytes(90, 6 * 1024 * 1024 + 1),
        ..v2
    };
    v2.install(&lab, "v2");
    let matrix = plan_with_matrix(&lab);
    assert_eq!(matrix["units"], 2, "{matrix}");
    stage_all_waves(&lab, &matrix);
    let promoted = promote(&lab);
    assert_eq!(promoted.code, 0, "{}", promoted.output());
    assert_eq!(lab.object("test/iso.img").unwrap(), v2.iso);
    assert_eq!(
        lab.store_bytes(&format!(
            "history/test/iso.img/{}",
            sha256(&images.iso).hex()
        )),
        Some(images.iso.clone()),
        "the replaced ISO is kept"
    );
    assert_converged(&lab);
    apply_single(&lab);
    assert_same_as_single_apply(&lab);
    assert!(
        staged_leftovers(&lab).is_empty(),
        "{:?}",
        staged_leftovers(&lab)
    );
}

fn the_same_unit_staged_twice_at_once(backend: Backend) {
    let (lab, images) = setup(backend);
    let matrix = plan_with_matrix(&lab);
    let legs = vec!["iso".to_string(), "iso".to_string()];
    for run in stage_together(&lab, &legs) {
        assert_eq!(run.code, 0, "{}", run.output());
    }
    // Once more: the blob is there, nothing is downloaded.
    let again = lab.labctl(&["stage", PLAN, "--unit", "iso"]);
    assert_eq!(again.code, 0, "{}", again.output());
    assert!(
        again.stdout.contains("already staged") || again.stderr.contains("already staged"),
        "{}",
        again.output()
    );
    // A blob named by a sha512 is found again through this plan's result: its sha256 is there.
    for run in 0..2 {
        let wide = lab.labctl(&["stage", PLAN, "--unit", "wide"]);
        assert_eq!(wide.code, 0, "{}", wide.output());
        assert_eq!(
            wide.output().contains("already staged"),
            run == 1,
            "{}",
            wide.output()
        );
    }
    // A leg that fails (its source answers 503 while it checks the blob it found) does not undo
    // what another leg staged meanwhile: the other leg's result is written while this one
    // retries.
    let result_key = format!(
        ".labctl/staged/{}/iso.json",
        matrix["plan"].as_str().unwrap()
    );
    let result = lab.store_bytes(&result_key).unwrap();
    lab.delete(&result_key);
    lab.serve(
        "/iso-v1",
        images.iso.clone(),
        Faults {
            fail_first: 1_000,
            ..Faults::default()
        },
    );
    let summary = lab.dir().join("summary.md");
    let leg = lab.spawn_env(
        &["stage", PLAN, "--unit", "iso"],
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
        ],
    );
    // Its retries take seconds (6 attempts from 250 ms, doubling).
    std::thread::sleep(Duration::from_millis(700));
    lab.put(&result_key, &result);
    let failed = finish(leg, &["stage"]);
    assert_eq!(failed.code, 1, "{}", failed.output());
    assert!(
        failed.output().contains("another leg staged it"),
        "{}",
        failed.output()
    );
    assert_eq!(
        lab.store_bytes(&result_key),
        Some(result),
        "the result stands"
    );
    assert!(
        failed.stdout.contains("::error title=labctl stage"),
        "the failure is annotated: {}",
        failed.output()
    );
    let table = std::fs::read_to_string(&summary).unwrap();
    assert!(
        table.contains("### labctl stage") && table.contains("| iso | ✗ "),
        "{table}"
    );
    let promoted = promote(&lab);
    assert_eq!(promoted.code, 1, "the other units were not staged");
    assert_eq!(lab.object("test/iso.img").unwrap(), images.iso);
    let record = lab.record("test/iso.img").unwrap();
    assert_eq!(record["sha256"], sha256(&images.iso).to_string());
    assert!(record["source"]["etag"].as_str().is_some(), "{record}");
}

/// Uploads left open by a killed leg, under the blobs folder.
fn open_blob_uploads(lab: &Lab) -> Option<usize> {
    lab.pending_uploads().map(|u| {
        u.iter()
            .filter(|(k, _)| k.starts_with(".labctl/blobs/"))
            .count()
    })
}

fn a_stage_killed_mid_upload_is_staged_again(backend: Backend) {
    let lab = Lab::new(backend);
    lab.template("gateway", &gateway_template("v1"));
    let iso = image_bytes(7, 40 * 1024 * 1024);
    lab.serve(
        "/slow-iso",
        iso.clone(),
        Faults {
            delay_per_mib: Duration::from_millis(60),
            ..Faults::default()
        },
    );
    lab.write_manifest(&[Entry::raw("iso", "/slow-iso", &iso)]);
    plan_with_matrix(&lab);

    // SIGTERM: the leg aborts its upload and says so in its exit code and result.
    let child = lab.spawn(&["stage", PLAN, "--unit", "iso", "--result", "r.json"]);
    wait_for_an_upload(&lab, &child);
    send_signal(&child, "-TERM");
    let run = finish(child, &["stage"]);
    assert_eq!(run.code, 143, "{}", run.output());
    if let Some(open) = open_blob_uploads(&lab) {
        assert_eq!(open, 0, "a signal leaves no open upload");
    }
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.dir().join("r.json")).unwrap()).unwrap();
    assert_eq!(result["results"][0]["status"], "failed", "{result}");

    // kill -9 mid-upload: nothing becomes visible; the next stage starts over and completes.
    let mut child = lab.spawn(&["stage", PLAN, "--unit", "iso"]);
    wait_for_an_upload(&lab, &child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(lab.keys(".labctl/blobs/").is_empty(), "no partial blob");
    let again = lab.labctl(&["stage", PLAN, "--unit", "iso"]);
    assert_eq!(again.code, 0, "{}", again.output());
    let promoted = promote(&lab);
    assert_eq!(promoted.code, 0, "{}", promoted.output());
    assert_eq!(lab.object("test/iso.img").unwrap(), iso);
    assert_converged(&lab);
    // The killed leg's upload may still be open (no run can tell it from a running leg's; Garage
    // drops it once another upload of the key completes); with no leg running, cleanup aborts
    // whatever is left.
    if let Some(open) = open_blob_uploads(&lab) {
        let swept = lab.labctl(&["cleanup", "--older-than", "0s"]);
        assert_eq!(swept.code, 0, "{}", swept.output());
        assert!(
            swept.stdout.contains(&format!("{open} unfinished upload")),
            "{}",
            swept.output()
        );
        assert_eq!(open_blob_uploads(&lab), Some(0));
    }
}

/// Waits until the leg has a multipart upload open (or, on a store that cannot list them, has
/// been downloading for a while).
fn wait_for_an_upload(lab: &Lab, child: &std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match open_blob_uploads(lab) {
            Some(n) if n > 0 => return,
            None => {
                std::thread::sleep(Duration::from_secs(1));
                return;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    panic!("stage {} never started its upload", child.id());
}

fn a_missing_unit_fails_alone_and_skips_its_dependents(backend: Backend) {
    let (lab, images) = setup(backend);
    let matrix = plan_with_matrix(&lab);
    // The ISO's leg never ran; the build could not either (it takes the ISO).
    for run in stage_together(&lab, &["packed".to_string(), "wide".to_string()]) {
        assert_eq!(run.code, 0, "{}", run.output());
    }
    // Another image's result put where the ISO's would be does not stand in for it.
    let id = matrix["plan"].as_str().unwrap();
    let packed = lab
        .store_bytes(&format!(".labctl/staged/{id}/packed.json"))
        .unwrap();
    lab.put(&format!(".labctl/staged/{id}/iso.json"), &packed);
    let early = lab.labctl_env(&["stage", PLAN, "--unit", "gateway"], BUILD_ENV);
    assert_eq!(early.code, 1, "{}", early.output());
    assert!(
        early.output().contains("stage wave 1 first"),
        "{}",
        early.output()
    );
    let promoted = promote(&lab);
    assert_eq!(promoted.code, 1, "{}", promoted.output());
    assert!(
        promoted.stderr.contains("nothing was staged for `iso`"),
        "{}",
        promoted.output()
    );
    assert!(
        promoted.output().contains("gateway: skipped"),
        "{}",
        promoted.output()
    );
    assert!(
        promoted.stderr.contains("describes another image or plan"),
        "{}",
        promoted.output()
    );
    assert_eq!(lab.object("test/packed.img").unwrap(), images.xz_plain);
    assert_eq!(lab.object("test/wide.img").unwrap(), images.wide);
    assert!(lab.object("test/iso.img").is_none());
    assert!(lab.object("test/gateway.raw").is_none());
    let sums = String::from_utf8(lab.store_bytes("images/SHA256SUMS").unwrap()).unwrap();
    assert!(
        sums.contains("test/packed.img") && !sums.contains("test/iso.img"),
        "{sums}"
    );
    // The failed build's result stays for the next promotion to report; promoted blobs left.
    let leftovers = staged_leftovers(&lab);
    assert!(
        leftovers
            .iter()
            .all(|k| k.contains("gateway") || k.ends_with("/iso.json")),
        "{leftovers:?}"
    );
}

/// A leg of several units also writes their results in one object, which a promotion reads
/// instead of each result. A unit staged again alone since (its own result rewritten) is taken
/// from its own result; the leg's object goes with the results it held, and an unreadable one
/// is said to be ignored.
fn a_legs_results_are_read_together_unless_a_unit_was_staged_again(backend: Backend) {
    let (lab, images) = setup(backend);
    let matrix = plan_with_matrix(&lab);
    let id = matrix["plan"].as_str().unwrap();
    // The xz image's server sends a wrong byte at first: the leg stages two of its three units.
    let packed = xz(&images.xz_plain);
    let corrupt = Faults {
        corrupt: true,
        ..Faults::default()
    };
    lab.serve("/xz-v1", packed.clone(), corrupt);
    let leg = lab.labctl(&["stage", PLAN, "--unit", "iso,packed,wide"]);
    assert_eq!(leg.code, 1, "{}", leg.output());
    let legs = lab.keys(&format!(".labctl/staged/{id}/legs/"));
    assert_eq!(legs.len(), 1, "one object for the leg: {legs:?}");
    let written: serde_json::Value =
        serde_json::from_slice(&lab.store_bytes(&legs[0]).unwrap()).unwrap();
    let status: Vec<(&str, &str)> = written["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let r = &w["result"];
            (r["image"].as_str().unwrap(), r["status"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        status,
        [("iso", "staged"), ("packed", "failed"), ("wide", "staged")],
        "{written}"
    );

    lab.serve("/xz-v1", packed, Faults::default());
    let again = lab.labctl(&["stage", PLAN, "--unit", "packed"]);
    assert_eq!(again.code, 0, "{}", again.output());
    let build = lab.labctl_env(&["stage", PLAN, "--unit", "gateway"], BUILD_ENV);
    assert_eq!(build.code, 0, "{}", build.output());
    let unreadable = format!(".labctl/staged/{id}/legs/unreadable.json");
    lab.put(&unreadable, b"{ not json");

    let promoted = promote(&lab);
    assert_eq!(promoted.code, 0, "{}", promoted.output());
    // The ISO's and the raw image's results from the leg's object; the xz image's (written
    // since) and the build's (a leg of its own) read alone. s3s-fs lists no ETags: nothing
    // shows that a result is the one its leg wrote, so all are read alone and the legs' objects
    // are not read (they go with the results).
    let no_etags = backend == Backend::S3sFs;
    let read = if no_etags {
        "Read 4 stage results on their own: the store lists no ETags"
    } else {
        "Read 4 stage results: 2 through 1 leg's object, 2 on their own."
    };
    assert!(promoted.stderr.contains(read), "{}", promoted.output());
    let warned = promoted
        .stderr
        .contains(&format!("`{unreadable}` cannot be read"))
        && promoted
            .stderr
            .contains("ignored, its results are read one by one");
    assert_eq!(warned, !no_etags, "{}", promoted.output());
    assert_eq!(lab.object("test/iso.img").unwrap(), images.iso);
    assert_eq!(lab.object("test/packed.img").unwrap(), images.xz_plain);
    assert_eq!(lab.object("test/wide.img").unwrap(), images.wide);
    assert_eq!(
        lab.object("test/gateway.raw").unwrap(),
        expected_gateway(&images.iso, "v1")
    );
    assert!(
        staged_leftovers(&lab).is_empty(),
        "legs' objects, read or not, go once no result of the plan stays: {:?}",
        staged_leftovers(&lab)
    );
    assert_converged(&lab);
}

/// A store that refuses the leg's object of results (a bucket policy on `legs/`, say): the leg
/// still stages, says so, and the promotion reads each result on its own.
fn a_leg_whose_results_cannot_be_written_together_still_stages(backend: Backend) {
    let (lab, images) = setup(backend);
    let proxy = crate::support::proxy::Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let lab = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    let matrix = plan_with_matrix(&lab);
    let id = matrix["plan"].as_str().unwrap();
    proxy.refuse("/legs/", 10, 403, "AccessDenied");
    let leg = lab.labctl(&["stage", PLAN, "--unit", "iso,packed,wide"]);
    assert_eq!(leg.code, 0, "{}", leg.output());
    assert!(
        leg.stderr
            .contains("warning: cannot write the leg's results together at")
            && leg.stderr.contains("a promotion reads them one by one"),
        "{}",
        leg.output()
    );
    assert!(lab.keys(&format!(".labctl/staged/{id}/legs/")).is_empty());
    let build = lab.labctl_env(&["stage", PLAN, "--unit", "gateway"], BUILD_ENV);
    assert_eq!(build.code, 0, "{}", build.output());
    let promoted = promote(&lab);
    assert_eq!(promoted.code, 0, "{}", promoted.output());
    assert!(
        !promoted.stderr.contains("Read 4 stage results"),
        "no leg's object to read: {}",
        promoted.output()
    );
    assert_eq!(lab.object("test/wide.img").unwrap(), images.wide);
    assert!(
        staged_leftovers(&lab).is_empty(),
        "{:?}",
        staged_leftovers(&lab)
    );
    assert_converged(&lab);
}

/// Whether the store holds the copy to the ETag the leg recorded (s3s-fs, Garage, a directory)
/// or labctl checks each blob by HEAD first (moto and Ceph RGW copy whatever
/// `x-amz-copy-source-if-match` says), a blob that changed or went since its stage is refused
/// and said to be so, with the command that stages it again.
fn a_blob_changed_or_gone_since_its_stage_is_not_promoted(backend: Backend) {
    let (lab, images) = setup(backend);
    let matrix = plan_with_matrix(&lab);
    stage_all_waves(&lab, &matrix);
    let id = matrix["plan"].as_str().unwrap();
    let blob_of = |image: &str| {
        let result: serde_json::Value = serde_json::from_slice(
            &lab.store_bytes(&format!(".labctl/staged/{id}/{image}.json"))
                .unwrap(),
        )
        .unwrap();
        assert!(result["blob"]["etag"].is_string(), "{result}");
        result["blob"]["key"].as_str().unwrap().to_string()
    };
    // Bytes of the same size put over the blob outside labctl, and a blob deleted.
    let changed = blob_of("wide");
    let mut other = images.wide.clone();
    other[0] ^= 1;
    lab.put(&changed, &other);
    lab.delete(&blob_of("packed"));

    let promoted = promote(&lab);
    assert_eq!(promoted.code, 1, "{}", promoted.output());
    let out = promoted.output();
    assert!(
        out.contains(&format!(
            "the staged blob `{changed}` is not what its stage recorded"
        )) && out.contains("stage `wide` again"),
        "{out}"
    );
    assert!(out.contains("is gone from the store"), "{out}");
    assert!(out.contains("labctl stage PLANFILE --unit packed"), "{out}");
    assert!(lab.object("test/wide.img").is_none(), "{out}");
    assert!(lab.object("test/packed.img").is_none(), "{out}");
    assert_eq!(lab.object("test/iso.img").unwrap(), images.iso);
    assert!(
        lab.keys(".labctl/doctor/").is_empty(),
        "the probe leaves nothing"
    );
}

fn a_stale_plan_is_neither_staged_nor_promoted(backend: Backend) {
    let (lab, _) = setup(backend);
    let matrix = plan_with_matrix(&lab);
    stage_all_waves(&lab, &matrix);
    // Someone applies in between.
    let run = lab.labctl_env(&["apply", "--auto-approve"], BUILD_ENV);
    assert_eq!(run.code, 0, "{}", run.output());
    let records: Vec<(String, Option<Vec<u8>>)> = lab
        .keys("metadata/")
        .into_iter()
        .map(|k| (k.clone(), lab.store_bytes(&k)))
        .collect();
    let promoted = promote(&lab);
    assert_eq!(promoted.code, 1, "{}", promoted.output());
    assert!(
        promoted.stderr.contains("the plan is stale"),
        "{}",
        promoted.output()
    );
    let after: Vec<(String, Option<Vec<u8>>)> = lab
        .keys("metadata/")
        .into_iter()
        .map(|k| (k.clone(), lab.store_bytes(&k)))
        .collect();
    assert_eq!(records, after, "a refused promotion writes nothing");
    assert!(lab.head(".labctl/lock.json").is_none());
    let staged = lab.labctl(&["stage", PLAN, "--unit", "iso"]);
    assert_eq!(staged.code, 1, "{}", staged.output());
    assert!(
        staged.stderr.contains("the plan is stale"),
        "{}",
        staged.output()
    );
}

/// Moments at which a promotion is killed: once it holds the lock, once it wrote a first
/// record, once it wrote the index (before it removes the promoted blobs).
#[derive(Debug, Clone, Copy)]
enum Moment {
    LockHeld,
    FirstRecord,
    IndexWritten,
}

fn a_killed_promotion_is_recovered_by_the_documented_steps(backend: Backend) {
    let (lab, _) = setup(backend);
    let mut landed = Vec::new();
    for (round, moment) in [Moment::LockHeld, Moment::FirstRecord, Moment::IndexWritten]
        .into_iter()
        .enumerate()
    {
        let images = Images::new(100 + round as u64 * 10);
        images.install(&lab, &format!("round{round}"));
        let matrix = plan_with_matrix(&lab);
        stage_all_waves(&lab, &matrix);
        let etags = |keys: &[&str]| -> Vec<Option<String>> {
            keys.iter().map(|k| lab.head(k).map(|m| m.etag)).collect()
        };
        let records = [
            "metadata/test/iso.img.json",
            "metadata/test/packed.img.json",
            "metadata/test/wide.img.json",
            "metadata/test/gateway.raw.json",
        ];
        let (records_before, index_before) = (etags(&records), etags(&["images/SHA256SUMS"]));
        let mut child = lab.spawn(&["apply", PLAN, "--staged"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        let reached = loop {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break false;
            }
            let now = match moment {
                Moment::LockHeld => lab.head(".labctl/lock.json").is_some(),
                Moment::FirstRecord => etags(&records) != records_before,
                Moment::IndexWritten => etags(&["images/SHA256SUMS"]) != index_before,
            };
            if now {
                break true;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        child.kill().ok();
        let status = child.wait().unwrap();
        if reached && status.code().is_none() {
            landed.push(moment);
        }
        recover(&lab);
        assert_eq!(lab.object("test/iso.img").unwrap(), images.iso);
        assert_eq!(
            lab.object("test/gateway.raw").unwrap(),
            expected_gateway(&images.iso, "v1")
        );
        assert_converged(&lab);
        assert!(lab.head(".labctl/lock.json").is_none());
        assert!(
            staged_leftovers(&lab).is_empty(),
            "{:?}",
            staged_leftovers(&lab)
        );
    }
    assert!(!landed.is_empty(), "no kill landed during a promotion");
    eprintln!("kills that landed mid-promotion: {landed:?}");
}

/// docs/operations.md, "A promotion was killed": unlock, plan again, stage what the new plan
/// still needs (blobs already staged are not downloaded again), promote.
pub(crate) fn recover(lab: &Lab) {
    if let Some(lock) = lab.store_bytes(".labctl/lock.json") {
        let lock: serde_json::Value = serde_json::from_slice(&lock).unwrap();
        let run = lab.labctl(&["force-unlock", lock["id"].as_str().unwrap()]);
        assert_eq!(run.code, 0, "{}", run.output());
    }
    let matrix = plan_with_matrix(lab);
    if matrix["units"] == 0 {
        let run = lab.labctl(&["apply", PLAN]);
        assert_eq!(run.code, 0, "{}", run.output());
        let swept = lab.labctl(&["cleanup", "--older-than", "0s"]);
        assert_eq!(swept.code, 0, "{}", swept.output());
        return;
    }
    stage_all_waves(lab, &matrix);
    let promoted = promote(lab);
    assert_eq!(promoted.code, 0, "{}", promoted.output());
    // What the killed promotion's plan staged is named by no plan now.
    let swept = lab.labctl(&["cleanup", "--older-than", "0s"]);
    assert_eq!(swept.code, 0, "{}", swept.output());
}

fn an_object_above_the_single_copy_limit_is_promoted_part_by_part(backend: Backend) {
    let lab = Lab::new(backend);
    let iso = image_bytes(55, 12 * 1024 * 1024 + 9);
    lab.serve("/big", iso.clone(), Faults::default());
    lab.write_manifest(&[Entry::raw("iso", "/big", &iso)]);
    plan_with_matrix(&lab);
    let staged = lab.labctl(&["stage", PLAN, "--unit", "iso"]);
    assert_eq!(staged.code, 0, "{}", staged.output());
    let refused = lab.labctl_env(
        &["apply", PLAN, "--staged"],
        &[("LABCTL_SINGLE_COPY_LIMIT", "5MB")],
    );
    assert_eq!(refused.code, 1, "{}", refused.output());
    assert!(
        refused.stderr.contains("LABCTL_SINGLE_COPY_LIMIT is `5MB`"),
        "{}",
        refused.output()
    );
    let limit = (5 * 1024 * 1024).to_string();
    let promoted = lab.labctl_env(
        &["apply", PLAN, "--staged"],
        &[("LABCTL_SINGLE_COPY_LIMIT", &limit)],
    );
    assert_eq!(promoted.code, 0, "{}", promoted.output());
    assert_eq!(lab.object("test/iso.img").unwrap(), iso);
    let etag = lab.head("images/test/iso.img").unwrap().etag;
    assert!(
        etag.trim_matches('"').contains('-'),
        "a part-by-part copy has a multipart ETag, not {etag}"
    );
    assert_converged(&lab);
}

/// `plan --matrix` on a plan of 300 downloads and a build: accepted by the JSON Schema of
/// GitHub's matrix shape (docs/matrix.schema.json, checked with Python's `jsonschema`), batched
/// within 256 legs, each wave under a job output's 1 MiB, and accepted by actionlint as the
/// literal matrix of a workflow whose steps use the legs' fields.
#[test]
fn matrix_output_fits_githubs_matrix_and_passes_actionlint() {
    let lab = Lab::new(Backend::Fs);
    lab.template("gateway", &gateway_template("v1"));
    let entries: Vec<Entry> = (0..300)
        .map(|i| {
            let name: &'static str = Box::leak(format!("image-{i:03}").into_boxed_str());
            let path: &'static str = Box::leak(format!("/image-{i:03}").into_boxed_str());
            Entry::raw(name, path, format!("image {i}").as_bytes())
        })
        .collect();
    let mut iso = Entry::raw("iso", "/iso", b"iso");
    iso.destination = "test/iso.img".into();
    let mut all = entries;
    all.push(iso);
    lab.write_manifest_with(&all, &[gateway(true)]);
    let matrix = plan_with_matrix(&lab);
    assert_eq!(matrix["units"], 302, "{}", matrix["notes"]);
    assert_eq!(matrix["batched"], true);
    assert_eq!(matrix["waves"].as_array().unwrap().len(), 2);
    let wave1 = &matrix["waves"][0]["matrix"]["include"];
    assert_eq!(wave1.as_array().unwrap().len(), 256);
    assert!(
        matrix["notes"][0].as_str().unwrap().contains("256 legs"),
        "{}",
        matrix["notes"]
    );
    for wave in matrix["waves"].as_array().unwrap() {
        let json = serde_json::to_string(&wave["matrix"]).unwrap();
        assert!(json.len() <= 1024 * 1024, "{} bytes", json.len());
    }

    let schema = repo().join("docs/matrix.schema.json");
    let out = std::process::Command::new(test_python())
        .args(["-c", MATRIX_CHECK])
        .arg(&schema)
        .arg(lab.dir().join(MATRIX))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the schema is not one that accepts anything: 257 legs or a leg without units fail.
    let mut broken = matrix.clone();
    let include = broken["waves"][0]["matrix"]["include"]
        .as_array_mut()
        .unwrap();
    include.push(include[0].clone());
    let too_many = lab.dir().join("too-many.json");
    std::fs::write(&too_many, broken.to_string()).unwrap();
    let mut unnamed = matrix.clone();
    unnamed["waves"][0]["matrix"]["include"][0]
        .as_object_mut()
        .unwrap()
        .remove("units");
    let no_units = lab.dir().join("no-units.json");
    std::fs::write(&no_units, unnamed.to_string()).unwrap();
    for bad in [&too_many, &no_units] {
        let out = std::process::Command::new(test_python())
            .args(["-c", MATRIX_CHECK])
            .arg(&schema)
            .arg(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{} was accepted", bad.display());
    }

    // actionlint reads a literal matrix and checks every `matrix.*` the steps use against it.
    let workflows = lab.dir().join("sample/.github/workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let mut text = String::from("name: sample\non: workflow_dispatch\njobs:\n");
    for (i, wave) in matrix["waves"].as_array().unwrap().iter().enumerate() {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("    needs: stage-{i}\n")
        };
        text.push_str(&format!(
            "  stage-{n}:\n{needs}    strategy:\n      fail-fast: false\n      max-parallel: 8\n      matrix: {matrix}\n    runs-on: ${{{{ matrix.kvm && 'ubuntu-24.04' || 'ubuntu-latest' }}}}\n    steps:\n      - run: labctl stage plan.json --unit \"${{{{ matrix.units }}}}\" --result \"stage-${{{{ matrix.leg }}}}.json\"\n      - run: echo \"${{{{ matrix.images[0] }}}} in wave ${{{{ matrix.wave }}}}\"\n",
            n = i + 1,
            matrix = wave["matrix"]
        ));
    }
    std::fs::write(workflows.join("sample.yml"), &text).unwrap();
    let lint = std::process::Command::new(repo().join("scripts/actionlint"))
        .args(["-no-color", "-shellcheck=", "sample.yml"])
        .current_dir(&workflows)
        .output()
        .expect("scripts/actionlint runs (it installs actionlint once)");
    assert!(
        lint.status.success(),
        "actionlint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // The same workflow using a field no leg has is refused: the check is real.
    std::fs::write(
        workflows.join("sample.yml"),
        text.replace("matrix.units", "matrix.unit"),
    )
    .unwrap();
    let lint = std::process::Command::new(repo().join("scripts/actionlint"))
        .args(["-no-color", "-shellcheck=", "sample.yml"])
        .current_dir(&workflows)
        .output()
        .unwrap();
    assert!(!lint.status.success(), "actionlint accepted matrix.unit");
}

const MATRIX_CHECK: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
errors = list(jsonschema.Draft202012Validator(schema).iter_errors(json.load(open(sys.argv[2]))))
for e in errors[:5]:
    print(list(e.path), e.message[:300])
sys.exit(1 if errors else 0)
"#;

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test venv's Python (scripts/test installs it with moto, which brings jsonschema).
fn test_python() -> std::path::PathBuf {
    let cache = std::env::var("LABCTL_TEST_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/labctl-ci")
        });
    let python = cache.join("moto-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test installs it",
        python.display()
    );
    python
}

/// A fan-out that never promoted leaves blobs: after a day they are drift, and `labctl cleanup`
/// removes them (under the lock), except a blob a recent stage result still names. The
/// directory store is used so the test can age the files (`touch -d`).
#[test]
fn leftovers_older_than_a_day_are_drift_and_cleanup_removes_them() {
    let (lab, _) = setup(Backend::Fs);
    let matrix = plan_with_matrix(&lab);
    for run in stage_together(&lab, &legs(&matrix, 1)) {
        assert_eq!(run.code, 0, "{}", run.output());
    }
    // An abandoned plan's blob and result, two days old; the fresh plan's ISO blob is old too,
    // but its result (just written) still names it.
    let old = sha256(b"abandoned");
    let abandoned_blob = format!(".labctl/blobs/sha256/{}", old.hex());
    lab.put(&abandoned_blob, b"abandoned");
    lab.put(".labctl/staged/0123456789abcdef/gone.json", b"{}");
    // A probe object of a promotion killed while it probed, two days ago; and one of a doctor
    // running now.
    let killed_probe = ".labctl/doctor/if-match-source-promote-0123456789abcdef";
    let running_probe = ".labctl/doctor/conditional-create-4242";
    lab.put(killed_probe, b"probe");
    lab.put(running_probe, b"probe");
    let iso_blob = lab
        .keys(".labctl/blobs/sha256/")
        .into_iter()
        .find(|k| *k != abandoned_blob)
        .unwrap();
    for key in [
        abandoned_blob.as_str(),
        ".labctl/staged/0123456789abcdef/gone.json",
        iso_blob.as_str(),
        killed_probe,
    ] {
        let path = lab.dir().join("store").join(key);
        let status = std::process::Command::new("touch")
            .args(["-d", "2 days ago"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    // And an upload a killed leg left, idle for two days (the directory store keeps it in a
    // folder whose time is its last activity).
    let store = lab.store();
    let stalled_key = format!(".labctl/blobs/sha256/{}", sha256(b"stalled").hex());
    let upload_id = lab
        .runtime
        .block_on(store.create_multipart(&stalled_key, Default::default()))
        .unwrap();
    let status = std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(lab.dir().join("store/.labctl-fs/uploads").join(&upload_id))
        .status()
        .unwrap();
    assert!(status.success());

    let drift = lab.labctl(&["drift", "--json"]);
    assert_eq!(drift.code, 2, "{}", drift.output());
    let report: serde_json::Value = serde_json::from_str(&drift.stdout).unwrap();
    let mut leftovers: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "staged-leftover")
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    leftovers.sort();
    let mut expected = vec![
        abandoned_blob.as_str(),
        stalled_key.as_str(),
        ".labctl/staged/0123456789abcdef/gone.json",
    ];
    expected.sort();
    assert_eq!(leftovers, expected, "{}", drift.stdout);

    let dry = lab.labctl(&["cleanup", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.output());
    assert!(
        dry.stdout.contains("Would remove 1 blob")
            && dry.stdout.contains("1 probe object")
            && dry.stdout.contains(killed_probe),
        "{}",
        dry.output()
    );
    assert!(lab.head(&abandoned_blob).is_some());
    let swept = lab.labctl(&["cleanup"]);
    assert_eq!(swept.code, 0, "{}", swept.output());
    assert!(lab.head(&abandoned_blob).is_none());
    assert!(lab
        .head(".labctl/staged/0123456789abcdef/gone.json")
        .is_none());
    assert!(lab.head(killed_probe).is_none());
    assert!(
        lab.head(running_probe).is_some(),
        "a running doctor's probe stays"
    );
    assert_eq!(
        lab.pending_uploads(),
        Some(vec![]),
        "the stalled upload is aborted"
    );
    assert!(
        lab.head(&iso_blob).is_some(),
        "a recent result still names it"
    );
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "the lock is released"
    );
    // The plan still promotes.
    let run = lab.labctl_env(&["stage", PLAN, "--unit", "gateway"], BUILD_ENV);
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(promote(&lab).code, 0);
    assert_converged(&lab);
}

/// A store that does not answer while cleanup reads the recent stage results (throttled, say)
/// must not make their blobs look unwanted: cleanup fails and removes nothing.
#[test]
fn cleanup_removes_nothing_when_it_cannot_read_a_recent_result() {
    let (lab, _) = setup(Backend::S3sFs);
    let proxy = crate::support::proxy::Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let lab = Lab {
        endpoint: Some(proxy.endpoint.clone()),
        ..lab
    };
    let matrix = plan_with_matrix(&lab);
    let stage = || lab.labctl(&["stage", PLAN, "--unit", "iso,packed,wide"]);
    assert_eq!(stage().code, 0);
    // The blobs age past the cut-off; staging again rewrites the results (nothing is uploaded
    // again), so they are recent and still name the blobs.
    std::thread::sleep(Duration::from_secs(7));
    let again = stage();
    assert_eq!(again.code, 0, "{}", again.output());
    let blobs = lab.keys(".labctl/blobs/");
    assert_eq!(blobs.len(), 3, "{blobs:?}");
    let id = matrix["plan"].as_str().unwrap();
    proxy.fail(
        &format!("GET /lab-images/.labctl/staged/{id}/iso.json"),
        1000,
    );
    let swept = lab.labctl(&["cleanup", "--older-than", "5s"]);
    assert_eq!(swept.code, 1, "{}", swept.output());
    assert!(
        swept.stderr.contains("cannot read the stage result"),
        "{}",
        swept.output()
    );
    assert_eq!(lab.keys(".labctl/blobs/"), blobs, "nothing was removed");
}

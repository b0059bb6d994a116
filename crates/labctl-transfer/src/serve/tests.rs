//! Whole runs over real folders: convergence, generations arriving in pieces, altered and
//! foreign files, interrupted runs.

use std::path::Path;
use std::time::Duration;

use super::*;
use labctl_core::checksum::Checksum;
use labctl_core::consumer_index::{
    document, sha256sums, to_json, IndexEntry, JSON_NAME, SIGNATURE_NAME, SUMS_NAME,
};
use labctl_core::state::record::CiRun;

struct Folders2 {
    _root: tempfile::TempDir,
    synced: PathBuf,
    served: PathBuf,
}

fn folders() -> Folders2 {
    let root = tempfile::tempdir().unwrap();
    let synced = root.path().join("synced");
    let served = root.path().join("served");
    std::fs::create_dir(&synced).unwrap();
    Folders2 {
        synced,
        served,
        _root: root,
    }
}

fn entries(files: &[(&str, &[u8])]) -> Vec<IndexEntry> {
    let mut entries: Vec<IndexEntry> = files
        .iter()
        .map(|(path, body)| IndexEntry {
            name: format!("image-{path}"),
            path: path.to_string(),
            size: body.len() as u64,
            sha256: Checksum::sha256(body).hex().to_string(),
            checksum: Checksum::sha256(body),
            source_url: Some(format!("https://vendor.example/{path}")),
            uploaded_at: None,
            labctl_version: None,
        })
        .collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries
}

/// The index files of a generation, as apply writes them into images/.
fn write_index(dir: &Path, files: &[(&str, &[u8])], at: &str) {
    let entries = entries(files);
    std::fs::write(
        dir.join(JSON_NAME),
        to_json(&document(
            entries.clone(),
            at.into(),
            Some(CiRun {
                id: "77".into(),
                url: Some("https://github.com/lab/images/actions/runs/77".into()),
            }),
        )),
    )
    .unwrap();
    std::fs::write(dir.join(SUMS_NAME), sha256sums(&entries)).unwrap();
}

fn write_files(dir: &Path, files: &[(&str, &[u8])]) {
    for (path, body) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

fn options(f: &Folders2) -> Options {
    Options {
        synced: f.synced.clone(),
        served: f.served.clone(),
        public_key: None,
        deep: false,
        jobs: 2,
        wait: Duration::ZERO,
    }
}

fn serve(f: &Folders2) -> Report {
    run(&options(f), &|_, _, _| {}).unwrap()
}

fn statuses(r: &Report) -> Vec<(&str, Status)> {
    r.files
        .iter()
        .map(|x| (x.path.as_str(), x.status))
        .collect()
}

fn served_bytes(f: &Folders2, path: &str) -> Option<Vec<u8>> {
    std::fs::read(f.served.join(path)).ok()
}

const A1: &[u8] = b"talos 1.9 metal image";
const A2: &[u8] = b"talos 1.10 metal image, longer";
const B: &[u8] = b"harvester iso";

#[test]
fn a_clean_sync_converges_and_a_second_run_hashes_nothing() {
    let f = folders();
    let gen1 = [("talos/a.raw", A1), ("b.iso", B)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    let first = serve(&f);
    assert!(first.complete, "{first:?}");
    assert_eq!(
        statuses(&first),
        [("b.iso", Status::Placed), ("talos/a.raw", Status::Placed)]
    );
    assert_eq!(first.bytes_hashed, (A1.len() + B.len()) as u64);
    let generation = first.served_generation.as_ref().unwrap();
    assert_eq!(
        generation.generated_at.as_deref(),
        Some("2026-12-01T10:00:00Z")
    );
    assert_eq!(generation.ci_run.as_ref().unwrap().id, "77");
    // The index files are the synced ones, byte for byte.
    for name in [SUMS_NAME, JSON_NAME] {
        assert_eq!(
            served_bytes(&f, name),
            std::fs::read(f.synced.join(name)).ok()
        );
    }
    assert_eq!(served_bytes(&f, "talos/a.raw").unwrap(), A1);

    let second = serve(&f);
    assert!(second.complete);
    assert_eq!(second.bytes_hashed, 0);
    assert_eq!(second.bytes_copied, 0);
    assert_eq!(
        statuses(&second),
        [("b.iso", Status::Current), ("talos/a.raw", Status::Current)]
    );
    let deep = run(
        &Options {
            deep: true,
            ..options(&f)
        },
        &|_, _, _| {},
    )
    .unwrap();
    // Every served file, and the synced copy it would be repaired from.
    assert_eq!(deep.bytes_hashed, 2 * (A1.len() + B.len()) as u64);
    assert_eq!(
        statuses(&deep),
        [("b.iso", Status::Current), ("talos/a.raw", Status::Current)]
    );
}

#[test]
fn a_new_generation_replaces_files_only_as_they_verify_and_removes_old_ones_last() {
    let f = folders();
    let gen1 = [("talos/1.9/a.raw", A1), ("b.iso", B)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    assert!(serve(&f).complete);

    // The new index arrives before its files: nothing changes, the old generation is served.
    let gen2 = [("talos/1.10/a.raw", A2), ("b.iso", B)];
    write_index(&f.synced, &gen2, "2026-12-02T10:00:00Z");
    let early = serve(&f);
    assert!(!early.complete);
    assert_eq!(
        statuses(&early),
        [
            ("b.iso", Status::Current),
            ("talos/1.10/a.raw", Status::Pending),
            ("talos/1.9/a.raw", Status::Retained),
        ]
    );
    assert_eq!(served_bytes(&f, "talos/1.9/a.raw").unwrap(), A1);
    let sums = String::from_utf8(served_bytes(&f, SUMS_NAME).unwrap()).unwrap();
    assert!(
        sums.contains("talos/1.9/a.raw") && !sums.contains("1.10"),
        "{sums}"
    );

    // Half of the new file: still pending (index.json gives the size).
    write_files(&f.synced, &[("talos/1.10/a.raw", &A2[..10])]);
    let half = serve(&f);
    assert_eq!(half.files[1].status, Status::Pending);
    assert!(
        half.files[1].detail.contains("10 of 30 bytes"),
        "{:?}",
        half.files[1]
    );

    // The right size, the wrong bytes: copied once, refused, and remembered, so the next run
    // does not read them again.
    let wrong = vec![b'x'; A2.len()];
    write_files(&f.synced, &[("talos/1.10/a.raw", &wrong)]);
    let refused = serve(&f);
    assert_eq!(refused.files[1].status, Status::Pending);
    assert_eq!(refused.bytes_hashed, A2.len() as u64);
    assert!(refused.files[1].detail.contains("not the listed one"));
    assert_eq!(serve(&f).bytes_hashed, 0);
    assert_eq!(
        std::fs::read_dir(f.served.join(".labctl/tmp"))
            .unwrap()
            .count(),
        0
    );

    // The file lands: placed, the index becomes the synced one, and the old file leaves.
    write_files(&f.synced, &gen2);
    let done = serve(&f);
    assert!(done.complete, "{done:?}");
    assert_eq!(
        statuses(&done),
        [
            ("b.iso", Status::Current),
            ("talos/1.10/a.raw", Status::Placed),
            ("talos/1.9/a.raw", Status::Removed),
        ]
    );
    assert!(!f.served.join("talos/1.9").exists());
    assert_eq!(
        served_bytes(&f, SUMS_NAME),
        std::fs::read(f.synced.join(SUMS_NAME)).ok()
    );
    assert_eq!(
        done.served_generation.unwrap().generated_at.as_deref(),
        Some("2026-12-02T10:00:00Z")
    );
}

#[test]
fn files_arriving_before_their_index_wait_for_it() {
    let f = folders();
    let gen1 = [("a.raw", A1)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    assert!(serve(&f).complete);
    // The sync brings the new bytes for the same path first: the served folder still serves
    // what the list it has says, and does not even read the new file.
    write_files(&f.synced, &[("a.raw", A2)]);
    let early = serve(&f);
    assert_eq!(statuses(&early), [("a.raw", Status::Current)]);
    assert!(early.complete);
    assert_eq!(early.bytes_hashed, 0);
    assert_eq!(served_bytes(&f, "a.raw").unwrap(), A1);
    write_index(&f.synced, &[("a.raw", A2)], "2026-12-02T10:00:00Z");
    let done = serve(&f);
    assert_eq!(statuses(&done), [("a.raw", Status::Replaced)]);
    assert_eq!(served_bytes(&f, "a.raw").unwrap(), A2);
}

#[test]
fn an_altered_served_file_is_repaired_or_quarantined() {
    let f = folders();
    let gen1 = [("a.raw", A1), ("b.iso", B)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    assert!(serve(&f).complete);

    let mut flipped = A1.to_vec();
    flipped[3] ^= 1;
    std::fs::write(f.served.join("a.raw"), &flipped).unwrap();
    let repaired = serve(&f);
    assert_eq!(repaired.files[0].status, Status::Repaired);
    assert_eq!(served_bytes(&f, "a.raw").unwrap(), A1);

    // No verified source: moved out of the served folder, not served wrong.
    std::fs::write(f.served.join("b.iso"), b"harvester isx").unwrap();
    std::fs::write(f.synced.join("b.iso"), b"harvester is").unwrap();
    let quarantined = serve(&f);
    assert_eq!(
        quarantined.files[1].status,
        Status::Quarantined,
        "{quarantined:?}"
    );
    assert!(!f.served.join("b.iso").exists());
    assert!(!quarantined.complete);
    let sums = String::from_utf8(served_bytes(&f, SUMS_NAME).unwrap()).unwrap();
    assert!(!sums.contains("b.iso"), "{sums}");
    // Once the sync heals, it is placed again.
    write_files(&f.synced, &gen1);
    let healed = serve(&f);
    assert!(healed.complete);
    assert_eq!(healed.files[1].status, Status::Placed);
}

#[test]
fn files_labctl_did_not_place_are_never_replaced_or_removed() {
    let f = folders();
    std::fs::create_dir_all(&f.served).unwrap();
    std::fs::write(f.served.join("notes.txt"), b"mine").unwrap();
    std::fs::write(f.served.join("a.raw"), b"someone else's").unwrap();
    std::fs::write(f.served.join("b.iso"), B).unwrap();
    let gen1 = [("a.raw", A1), ("b.iso", B)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    let r = serve(&f);
    assert_eq!(
        statuses(&r),
        [("a.raw", Status::Conflict), ("b.iso", Status::Current)]
    );
    assert_eq!(served_bytes(&f, "a.raw").unwrap(), b"someone else's");
    // b.iso already held the listed bytes: adopted, and removed when no longer listed.
    std::fs::remove_file(f.served.join("a.raw")).unwrap();
    assert!(serve(&f).complete);
    write_index(&f.synced, &[("a.raw", A1)], "2026-12-02T10:00:00Z");
    let later = serve(&f);
    assert!(later.complete);
    assert!(!f.served.join("b.iso").exists());
    assert_eq!(served_bytes(&f, "notes.txt").unwrap(), b"mine");
}

#[test]
fn what_a_killed_run_left_is_cleaned_up_or_recognised() {
    let f = folders();
    let gen1 = [("a.raw", A1)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    assert!(serve(&f).complete);
    // A temporary file of a killed copy, and a replacement renamed into place whose state
    // was not updated yet (the claim was written first).
    std::fs::write(f.served.join(".labctl/tmp/4242-0"), b"half a fi").unwrap();
    let mut state = ServedState::load(&f.served.join(STATE_DIR)).unwrap();
    let placed = state.files.get_mut("a.raw").unwrap();
    placed.placing = Some(Box::new(state::Replacement {
        sha256: Checksum::sha256(A2).hex().to_string(),
        entry: std::sync::Arc::new(entries(&[("a.raw", A2)]).remove(0)),
    }));
    state
        .save(
            &f.served.join(STATE_DIR),
            &f.served.join(".labctl/tmp"),
            &state.hashes,
            None,
        )
        .unwrap();
    std::fs::write(f.served.join("a.raw"), A2).unwrap();
    write_files(&f.synced, &[("a.raw", A2)]);
    write_index(&f.synced, &[("a.raw", A2)], "2026-12-02T10:00:00Z");
    let r = serve(&f);
    assert_eq!(r.temporary_files_removed, 1);
    assert_eq!(statuses(&r), [("a.raw", Status::Current)]);
    assert!(r.complete);
    assert_eq!(
        std::fs::read_dir(f.served.join(".labctl/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_bad_signature_places_nothing() {
    let f = folders();
    let gen1 = [("a.raw", A1)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let public = pair.pk.to_base64();
    let signer = labctl_core::signing::IndexSigner::new(
        &public,
        &pair.sk.to_box(None).unwrap().to_string(),
        None,
    )
    .unwrap();
    let sums = std::fs::read(f.synced.join(SUMS_NAME)).unwrap();
    std::fs::write(
        f.synced.join(SIGNATURE_NAME),
        signer.sign(&sums, "generation 1").unwrap(),
    )
    .unwrap();
    let with_key = Options {
        public_key: Some(public.clone()),
        ..options(&f)
    };
    let good = run(&with_key, &|_, _, _| {}).unwrap();
    assert!(good.complete && good.signature.verified);
    assert_eq!(
        served_bytes(&f, SIGNATURE_NAME),
        std::fs::read(f.synced.join(SIGNATURE_NAME)).ok()
    );
    // The next list is tampered with: nothing of it is placed; the served folder keeps the
    // last verified generation with its signature.
    write_files(&f.synced, &[("a.raw", A2)]);
    let forged = sha256sums(&entries(&[("a.raw", A2)])).into_bytes();
    std::fs::write(f.synced.join(SUMS_NAME), &forged).unwrap();
    let err = run(&with_key, &|_, _, _| {}).unwrap_err();
    assert!(
        matches!(err, ServeError::Synced(VerifyError::BadSignature { .. })),
        "{err}"
    );
    assert_eq!(served_bytes(&f, "a.raw").unwrap(), A1);
    assert_eq!(served_bytes(&f, SUMS_NAME).unwrap(), sums);
}

#[test]
fn overlapping_folders_are_refused() {
    let f = folders();
    write_index(&f.synced, &[], "2026-12-01T10:00:00Z");
    let inside = Options {
        served: f.synced.join("served"),
        ..options(&f)
    };
    assert!(matches!(
        run(&inside, &|_, _, _| {}),
        Err(ServeError::Overlap { .. })
    ));
    let same = Options {
        served: f.synced.clone(),
        ..options(&f)
    };
    assert!(matches!(
        run(&same, &|_, _, _| {}),
        Err(ServeError::Overlap { .. })
    ));
}

/// Every line of the served list is checked against the served files, as `sha256sum -c` would.
fn served_list_is_true(f: &Folders2) {
    let sums = String::from_utf8(served_bytes(f, SUMS_NAME).unwrap()).unwrap();
    for line in sums.lines() {
        let (sha, path) = line.split_once("  ").unwrap();
        let body = served_bytes(f, path).unwrap_or_else(|| panic!("{path} is listed, not served"));
        assert_eq!(Checksum::sha256(&body).hex(), sha, "{path}");
    }
}

#[test]
fn a_claim_or_a_rename_left_by_a_kill_never_reaches_the_list() {
    let f = folders();
    let gen1 = [("a.raw", A1)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    assert!(serve(&f).complete);
    // Killed after renaming A2 over a.raw (claimed, not yet recorded), and after claiming
    // n.raw (nothing renamed yet).
    let state_dir = f.served.join(STATE_DIR);
    let mut state = ServedState::load(&state_dir).unwrap();
    state.files.get_mut("a.raw").unwrap().placing = Some(Box::new(state::Replacement {
        sha256: Checksum::sha256(A2).hex().to_string(),
        entry: std::sync::Arc::new(entries(&[("a.raw", A2)]).remove(0)),
    }));
    let mut claimed = state.files["a.raw"].clone();
    claimed.identity = None;
    claimed.placing = None;
    claimed.entry = std::sync::Arc::new(entries(&[("n.raw", B)]).remove(0));
    claimed.sha256 = Checksum::sha256(B).hex().to_string();
    state.files.insert("n.raw".into(), claimed);
    state
        .save(
            &state_dir,
            &f.served.join(".labctl/tmp"),
            &state.hashes,
            None,
        )
        .unwrap();
    std::fs::write(f.served.join("a.raw"), A2).unwrap();
    // A later generation, not synced yet.
    write_index(
        &f.synced,
        &[("a.raw", b"third"), ("n.raw", B)],
        "2026-12-03T10:00:00Z",
    );
    let r = serve(&f);
    assert_eq!(
        statuses(&r),
        [("a.raw", Status::Pending), ("n.raw", Status::Pending)]
    );
    assert_eq!(
        r.files[0].served_sha256.as_deref(),
        Some(Checksum::sha256(A2).hex())
    );
    served_list_is_true(&f);
    let sums = String::from_utf8(served_bytes(&f, SUMS_NAME).unwrap()).unwrap();
    assert!(!sums.contains("n.raw"), "{sums}");
}

#[test]
fn a_file_that_becomes_a_folder_and_back_converges() {
    let f = folders();
    let gen1 = [("talos/a", A1), ("c/y.raw", B)];
    write_files(&f.synced, &gen1);
    write_index(&f.synced, &gen1, "2026-12-01T10:00:00Z");
    assert!(serve(&f).complete);

    // The next generation has a folder where a file was, and a file where a folder was.
    std::fs::remove_dir_all(&f.synced).unwrap();
    std::fs::create_dir(&f.synced).unwrap();
    let gen2 = [("talos/a/x.raw", A2), ("c", B)];
    write_files(&f.synced, &gen2);
    write_index(&f.synced, &gen2, "2026-12-02T10:00:00Z");
    let r = serve(&f);
    assert!(r.complete, "{r:#?}");
    assert_eq!(served_bytes(&f, "talos/a/x.raw").unwrap(), A2);
    assert_eq!(served_bytes(&f, "c").unwrap(), B);
    let removed: Vec<&str> = r
        .files
        .iter()
        .filter(|x| x.status == Status::Removed)
        .map(|x| x.path.as_str())
        .collect();
    assert_eq!(removed.len(), 2, "{removed:?}");
    served_list_is_true(&f);
    assert_eq!(
        served_bytes(&f, SUMS_NAME),
        std::fs::read(f.synced.join(SUMS_NAME)).ok()
    );

    // Something labctl did not place in the way is a conflict, never removed.
    let gen3 = [("talos/a/x.raw", A2), ("c", B), ("notes/z.raw", A1)];
    std::fs::write(f.served.join("notes"), b"someone's notes").unwrap();
    write_files(&f.synced, &gen3);
    write_index(&f.synced, &gen3, "2026-12-03T10:00:00Z");
    let r = serve(&f);
    assert!(!r.complete);
    let notes = r.files.iter().find(|x| x.path == "notes/z.raw").unwrap();
    assert_eq!(notes.status, Status::Conflict, "{notes:?}");
    assert!(notes.detail.contains("`notes`"), "{notes:?}");
    assert_eq!(served_bytes(&f, "notes").unwrap(), b"someone's notes");
}

//! Verifying synced copies built in temporary folders.

use super::*;
use labctl_core::consumer_index::{document, sha256sums, to_json, IndexEntry};

#[test]
fn a_public_key_file_gives_its_key_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let pubfile = file(
        "a.pub",
        &format!("untrusted comment: minisign public key\n{key}\n"),
    );
    assert_eq!(read_public_key_file(&pubfile).unwrap(), key);
    assert_eq!(
        read_public_key_file(&file("b", &format!("  {key}  "))).unwrap(),
        key
    );
    let empty = file("c.pub", "untrusted comment: nothing else\n\n");
    assert!(matches!(
        read_public_key_file(&empty),
        Err(VerifyError::NoKeyInFile { .. })
    ));
    let huge = file("d.pub", &"x".repeat(MAX_KEY_FILE_BYTES as usize + 1));
    assert!(matches!(
        read_public_key_file(&huge),
        Err(VerifyError::KeyFile { .. })
    ));
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    let writer = {
        let (fifo, key) = (fifo.clone(), key.to_string());
        std::thread::spawn(move || std::fs::write(fifo, format!("{key}\n")))
    };
    assert_eq!(read_public_key_file(&fifo).unwrap(), key, "a pipe will do");
    writer.join().unwrap().unwrap();
    let missing = read_public_key_file(&dir.path().join("none")).unwrap_err();
    assert!(missing
        .to_string()
        .starts_with("cannot read the public key file"));
}

fn write_copy(dir: &Path, files: &[(&str, &[u8])], with_json: bool) {
    let mut entries: Vec<IndexEntry> = files
        .iter()
        .map(|(path, body)| IndexEntry {
            name: path.to_string(),
            path: path.to_string(),
            size: body.len() as u64,
            sha256: Checksum::sha256(body).hex().to_string(),
            checksum: Checksum::sha256(body),
            source_url: None,
            uploaded_at: None,
            labctl_version: None,
        })
        .collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    for (path, body) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    std::fs::write(dir.join(SUMS_NAME), sha256sums(&entries)).unwrap();
    if with_json {
        std::fs::write(
            dir.join(JSON_NAME),
            to_json(&document(
                entries.clone(),
                "2026-11-26T00:00:00Z".into(),
                None,
            )),
        )
        .unwrap();
    }
}

fn try_verify(dir: &Path, public_key: Option<&str>) -> Result<Report, VerifyError> {
    run(
        &Options {
            dir: dir.to_path_buf(),
            public_key: public_key.map(str::to_string),
            jobs: 3,
        },
        &|_, _| {},
    )
}

fn verify(dir: &Path) -> Report {
    try_verify(dir, None).unwrap()
}

fn verdicts(r: &Report) -> Vec<(&str, Verdict)> {
    r.files
        .iter()
        .map(|f| (f.path.as_str(), f.verdict))
        .collect()
}

#[test]
fn a_faithful_copy_is_ok() {
    let d = tempfile::tempdir().unwrap();
    write_copy(d.path(), &[("a/x.raw", b"xx"), ("b.iso", b"b")], true);
    std::fs::create_dir_all(d.path().join("@eaDir/a")).unwrap();
    std::fs::write(d.path().join("@eaDir/a/thumb"), b"t").unwrap();
    let r = verify(d.path());
    assert_eq!(r.problems(), 0, "{r:?}");
    assert!(r.sizes_known);
    assert_eq!(r.files.len(), 2);
}

#[test]
fn every_kind_of_problem_is_named() {
    let d = tempfile::tempdir().unwrap();
    write_copy(
        d.path(),
        &[
            ("flip.raw", b"abcdef"),
            ("short.raw", b"abcdef"),
            ("gone.raw", b"x"),
            ("fine.raw", b"y"),
        ],
        true,
    );
    std::fs::write(d.path().join("flip.raw"), b"abcdeF").unwrap();
    std::fs::write(d.path().join("short.raw"), b"abc").unwrap();
    std::fs::remove_file(d.path().join("gone.raw")).unwrap();
    std::fs::write(d.path().join("extra.bin"), b"?").unwrap();
    let r = verify(d.path());
    assert_eq!(
        verdicts(&r),
        [
            ("fine.raw", Verdict::Ok),
            ("flip.raw", Verdict::ContentDiffers),
            ("gone.raw", Verdict::Missing),
            ("short.raw", Verdict::SizeDiffers),
            ("extra.bin", Verdict::Unlisted),
        ]
    );
    assert_eq!(r.problems(), 4);
}

#[test]
fn without_index_json_a_short_file_differs_in_content() {
    let d = tempfile::tempdir().unwrap();
    write_copy(d.path(), &[("a.raw", b"abcdef")], false);
    std::fs::write(d.path().join("a.raw"), b"abc").unwrap();
    let r = verify(d.path());
    assert!(!r.sizes_known);
    assert_eq!(
        verdicts(&r),
        [
            ("a.raw", Verdict::ContentDiffers),
            (JSON_NAME, Verdict::Missing)
        ]
    );
}

#[test]
fn index_json_sizes_that_disagree_with_the_sums_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    write_copy(d.path(), &[("a.raw", b"abcdef")], true);
    // A forged index.json cannot make a good file look bad: its entry no longer matches.
    let forged = std::fs::read_to_string(d.path().join(JSON_NAME))
        .unwrap()
        .replace("\"size\": 6", "\"size\": 7")
        .replace(Checksum::sha256(b"abcdef").hex(), &"0".repeat(64));
    std::fs::write(d.path().join(JSON_NAME), forged).unwrap();
    // The file is fine; the index's disagreement is reported on its own.
    assert_eq!(
        verdicts(&verify(d.path())),
        [("a.raw", Verdict::Ok), ("a.raw", Verdict::IndexDiffers)]
    );
}

#[test]
fn index_json_must_agree_with_the_sums_and_the_files() {
    let d = tempfile::tempdir().unwrap();
    write_copy(d.path(), &[("a.raw", b"abcdef"), ("b.raw", b"xyz")], true);
    let good = std::fs::read_to_string(d.path().join(JSON_NAME)).unwrap();
    assert_eq!(verify(d.path()).problems(), 0);

    // A wrong size for a file that matches SHA256SUMS: the index is wrong, not the file.
    std::fs::write(
        d.path().join(JSON_NAME),
        good.replace("\"size\": 6", "\"size\": 60"),
    )
    .unwrap();
    let r = verify(d.path());
    assert_eq!(
        verdicts(&r),
        [
            ("a.raw", Verdict::Ok),
            ("b.raw", Verdict::Ok),
            ("a.raw", Verdict::IndexDiffers)
        ]
    );
    assert!(r.files[2].detail.contains("index.json says 60 bytes"));

    // An entry dropped from index.json, and one it lists that SHA256SUMS does not.
    let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
    let images = doc["images"].as_array_mut().unwrap();
    images[1]["path"] = "c.raw".into();
    std::fs::write(d.path().join(JSON_NAME), doc.to_string()).unwrap();
    assert_eq!(
        verdicts(&verify(d.path()))[2..],
        [
            ("b.raw", Verdict::IndexDiffers),
            ("c.raw", Verdict::IndexDiffers)
        ]
    );

    // Not an index at all.
    std::fs::write(d.path().join(JSON_NAME), "{").unwrap();
    assert_eq!(
        verdicts(&verify(d.path()))[2..],
        [(JSON_NAME, Verdict::Unreadable)]
    );
}

#[test]
fn signatures_are_checked_first() {
    let d = tempfile::tempdir().unwrap();
    write_copy(d.path(), &[("a.raw", b"a")], true);
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let public = pair.pk.to_base64();
    let none = try_verify(d.path(), Some(&public)).unwrap_err();
    assert!(matches!(none, VerifyError::NoSignature { .. }), "{none}");

    let sums = std::fs::read(d.path().join(SUMS_NAME)).unwrap();
    let signer = labctl_core::signing::IndexSigner::new(
        &public,
        &pair.sk.to_box(None).unwrap().to_string(),
        None,
    )
    .unwrap();
    std::fs::write(
        d.path().join(SIGNATURE_NAME),
        signer.sign(&sums, "test").unwrap(),
    )
    .unwrap();
    let r = try_verify(d.path(), Some(&public)).unwrap();
    assert!(r.signature.verified);
    assert_eq!(r.signature.trusted_comment.as_deref(), Some("test"));

    let other = minisign::KeyPair::generate_unencrypted_keypair()
        .unwrap()
        .pk
        .to_base64();
    let wrong = try_verify(d.path(), Some(&other)).unwrap_err();
    assert!(matches!(wrong, VerifyError::WrongKey { .. }), "{wrong}");

    std::fs::write(d.path().join(SUMS_NAME), [sums.as_slice(), b"\n"].concat()).unwrap();
    let bad = try_verify(d.path(), Some(&public)).unwrap_err();
    assert!(matches!(bad, VerifyError::BadSignature { .. }), "{bad}");
}

#[test]
fn a_listed_path_that_is_not_a_file_is_unreadable_not_a_hang() {
    let d = tempfile::tempdir().unwrap();
    write_copy(d.path(), &[("pipe", b"x"), ("dir", b"y")], true);
    std::fs::remove_file(d.path().join("pipe")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(d.path().join("pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::remove_file(d.path().join("dir")).unwrap();
    std::fs::create_dir(d.path().join("dir")).unwrap();
    let r = verify(d.path());
    assert_eq!(
        verdicts(&r),
        [("dir", Verdict::Unreadable), ("pipe", Verdict::Unreadable)]
    );
}

#[test]
fn missing_or_hostile_sums_are_errors() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        try_verify(d.path(), None),
        Err(VerifyError::NoSums { .. })
    ));
    std::fs::write(
        d.path().join(SUMS_NAME),
        format!("{}  ../../etc/passwd\n", "0".repeat(64)),
    )
    .unwrap();
    assert!(matches!(
        try_verify(d.path(), None),
        Err(VerifyError::BadSums { .. })
    ));
}

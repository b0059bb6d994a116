//! Saved plans, markdown, exit codes and error messages.

use crate::util::*;
use std::path::Path;

#[test]
fn saved_plan_is_the_json_plan_with_prior_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plan.json");
    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/drifted",
        "--out",
        out.to_str().unwrap(),
        "--detailed-exitcode",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stdout.contains("Plan: 1 to create"),
        "human output still printed"
    );
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let json = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/drifted",
        "--json",
    ])
    .json();
    assert_eq!(saved, json, "the saved plan is the same plan");
    assert_eq!(saved["format_version"], "1.4");
    let digest = format!(
        "sha256:{}",
        labctl::checksum::Checksum::sha256(
            &std::fs::read(repo().join("images/images.yaml")).unwrap()
        )
        .hex()
    );
    assert_eq!(saved["manifest_digest"], digest.as_str());
    let prior = saved["prior_state"].as_object().unwrap();
    assert_eq!(prior.len(), 7, "every record read, orphan included");
    assert!(prior.contains_key("metadata/talos/talos-1.8.4-metal-amd64.raw.json"));
    assert!(prior
        .values()
        .all(|etag| etag.as_str().is_some_and(|e| !e.is_empty())));
}

#[test]
fn markdown_puts_destructive_changes_first_in_collapsible_sections() {
    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/drifted",
        "--markdown",
        "--prune",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let md = &run.stdout;
    assert!(md.starts_with("<!-- labctl-plan -->\n### labctl plan: 1 to create, 4 to replace, 1 to update, 1 to delete"), "{md}");
    assert_eq!(
        md.matches("<details>").count(),
        7,
        "one section per change:\n{md}"
    );
    let pos = |s: &str| md.find(s).unwrap_or_else(|| panic!("{s} not in\n{md}"));
    assert!(
        pos("<b>talos-1.8.4-metal-amd64</b> will be deleted")
            < pos("<b>harvester-1.4.0-rootfs</b> will be replaced")
    );
    assert!(
        pos("<b>vyos-gateway</b> will be replaced")
            < pos("<b>harvester-1.4.0-initrd</b> will be created")
    );
    assert!(pos("will be created") < pos("will be updated in place"));
    assert!(md.contains("```diff\n--- record\n+++ manifest"), "{md}");
    assert!(md.len() < 65_536);
}

#[test]
fn detailed_exitcode_is_zero_without_changes_and_plain_plan_exits_zero() {
    assert_eq!(
        labctl(&["plan", "--offline", "--store", "state-examples/drifted"]).code,
        0
    );
    assert_eq!(
        labctl(&[
            "plan",
            "--offline",
            "--store",
            "state-examples/in-sync",
            "--detailed-exitcode"
        ])
        .code,
        0
    );
}

#[test]
fn store_from_environment_variable() {
    let dir = repo();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(["plan", "--offline", "--json"])
        .current_dir(&dir)
        .env("LABCTL_STORE", "file://state-examples/in-sync")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(plan["summary"]["no_op"], 7);
}

#[test]
fn errors_name_the_problem_and_hint_at_the_fix() {
    let run = labctl(&["plan", "--offline", "--store", "no/such/dir"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("error: store directory `no/such/dir` does not exist"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);

    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/empty",
        "--replace",
        "nope",
    ]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("`nope`"), "{}", run.stderr);

    let run = labctl(&["plan", "--offline", "--store", "gs://bucket"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unsupported store URL scheme"),
        "{}",
        run.stderr
    );

    // Without --store the manifest's S3 bucket is used; without credentials that fails clearly.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_labctl"))
        .arg("plan")
        .current_dir(repo())
        .env_remove("E2_ACCESS_KEY")
        .env_remove("E2_SECRET_KEY")
        .env_remove("LABCTL_STORE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("s3://lab-images"), "{stderr}");
    assert!(stderr.contains("no usable S3 credentials"), "{stderr}");
    assert!(
        stderr.contains("hint: set E2_ACCESS_KEY and E2_SECRET_KEY"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("DispatchFailure"),
        "no debug dumps: {stderr}"
    );
}

#[test]
fn replace_flag_forces_a_replacement() {
    let plan = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/in-sync",
        "--json",
        "--replace",
        "vyos-iso",
    ])
    .json();
    let rows = actions(&plan);
    assert_eq!(
        rows[1],
        row("vyos-iso", "replace", &["replacement requested"])
    );
    // The ISO's bytes are pinned, so the gateway built from it stays.
    assert_eq!(rows[2], row("vyos-gateway", "no-op", &[]));
}

#[test]
fn corrupt_record_is_replaced_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    std::fs::create_dir_all(store.join("metadata/vyos")).unwrap();
    std::fs::write(
        store.join("metadata/vyos/vyos-rolling-generic-amd64.iso.json"),
        "{not json",
    )
    .unwrap();
    std::fs::write(store.join("metadata/vyos/junk.json"), "[]").unwrap();
    let plan = labctl(&[
        "plan",
        "--offline",
        "--store",
        store.to_str().unwrap(),
        "--json",
    ])
    .json();
    let iso = actions(&plan)
        .into_iter()
        .find(|r| r.0 == "vyos-iso")
        .unwrap();
    assert_eq!(iso.1, "replace");
    assert!(
        iso.2[0].starts_with("the state record is corrupt: record is not valid JSON"),
        "{:?}",
        iso.2
    );
    assert_eq!(plan["orphans"][0]["name"], "vyos/junk");

    // A record from a newer labctl is not guessed at: no plan at all.
    std::fs::write(
        store.join("metadata/vyos/future.json"),
        r#"{"schemaVersion": 7}"#,
    )
    .unwrap();
    let refused = labctl(&["plan", "--offline", "--store", store.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("1 record is written by a newer labctl: metadata/vyos/future.json"),
        "{}",
        refused.stderr
    );
    let list = labctl(&["list", "--store", store.to_str().unwrap()]);
    assert_eq!(list.code, 1, "unreadable records make list fail");
    assert!(list.stderr.contains("upgrade labctl"), "{}", list.stderr);
}

#[test]
fn stray_files_under_metadata_do_not_break_the_plan() {
    let store = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("state-examples/in-sync"), store.path());
    for stray in ["..json", ".json", "notes.txt"] {
        std::fs::write(store.path().join("metadata").join(stray), b"{oops").unwrap();
    }
    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        store.path().to_str().unwrap(),
        "--detailed-exitcode",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A saved plan that was edited or corrupted is refused, each way with a message that says so,
/// before anything runs — a dependency cycle included, which must not leave apply waiting.
#[test]
fn hand_edited_plan_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    copy_dir(&repo().join("state-examples/drifted"), &store);
    let out = dir.path().join("plan.json");
    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        store.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let second = saved["changes"][1]["name"].as_str().unwrap().to_string();

    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "cycle",
            Box::new(move |p| {
                p["changes"][0]["depends_on"] = serde_json::json!([second.clone()]);
            }),
            "which is not an earlier change in the plan",
        ),
        (
            "unknown action",
            Box::new(|p| p["changes"][0]["action"] = "obliterate".into()),
            "is not a labctl plan",
        ),
        (
            "key outside the store",
            Box::new(|p| p["changes"][0]["key"] = "images/../../etc/passwd".into()),
            "key `images/../../etc/passwd`",
        ),
        (
            "a record as the image",
            Box::new(|p| p["changes"][0]["key"] = ".labctl/lock.json".into()),
            "is not under images/",
        ),
        (
            "newer format",
            Box::new(|p| p["format_version"] = "1.999".into()),
            "written by a newer labctl",
        ),
        (
            "not JSON",
            Box::new(|p| *p = serde_json::json!("garbage")),
            "is not a labctl plan",
        ),
    ];
    for (what, edit, expected) in cases {
        let mut plan = saved.clone();
        edit(&mut plan);
        let edited = dir.path().join("edited.json");
        std::fs::write(&edited, serde_json::to_vec(&plan).unwrap()).unwrap();
        let run = labctl(&[
            "apply",
            edited.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 1, "{what}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{what}: {}", run.stderr);
        assert!(
            !store.join(".labctl/lock.json").exists(),
            "{what}: the lock is released"
        );
    }
}

/// A plan path that is not a regular file is refused at once: a FIFO (which would wait for a
/// writer), a device, a directory.
#[test]
fn plan_files_that_are_not_regular_files_are_refused_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let fifo = dir.path().join("plan.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
        let run = labctl(&[
            "apply",
            path.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 1, "{}: {}", path.display(), run.stderr);
        assert!(
            run.stderr.contains("is not a regular file"),
            "{}: {}",
            path.display(),
            run.stderr
        );
        assert!(!store.join(".labctl/lock.json").exists());
    }
}

/// A usage error is an error (1), never the 2 that CI reads as "changes" or "drift".
#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    for args in [
        &["drift", "--jsn"][..],
        &["plan", "--detailed-exitcode", "--bogus"],
        &["verify", "--jobs", "0", "."],
        &[],
    ] {
        let run = labctl(args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert!(!run.stderr.is_empty(), "{args:?}");
    }
    for args in [&["--help"][..], &["--version"], &["plan", "--help"]] {
        let run = labctl(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert!(!run.stdout.is_empty(), "{args:?}");
    }
}

/// A saved plan says how to apply it (with the manifest and store it was made with), and is
/// applied only with those: another store or manifest is named, with the command that fits,
/// before any lock is taken.
#[test]
fn a_saved_plan_is_applied_with_the_manifest_and_store_it_was_made_with() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    copy_dir(&repo().join("state-examples/drifted"), &store);
    copy_dir(&repo().join("images"), &dir.path().join("lab"));
    let manifest = dir.path().join("lab/images.yaml");
    let out = dir.path().join("plan.json");
    let (m, s, o) = (
        manifest.to_str().unwrap(),
        store.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let run = labctl(&[
        "plan",
        "--offline",
        "--manifest",
        m,
        "--store",
        s,
        "--out",
        o,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("labctl apply --manifest {m} --store {s} {o}")),
        "{}",
        run.stderr
    );

    let run = labctl(&[
        "apply",
        "--manifest",
        m,
        "--store",
        other.to_str().unwrap(),
        o,
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("the plan was made for file://"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("labctl apply --store file://"),
        "{}",
        run.stderr
    );
    assert!(!other.join(".labctl").exists(), "no lock was taken");

    let run = labctl(&["apply", "--store", s, o]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "the plan was made from the manifest `{m}`, but this apply reads `images/images.yaml`"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("labctl apply --manifest {m} {o}")),
        "{}",
        run.stderr
    );
    assert!(!store.join(".labctl/lock.json").exists());
}

/// Store paths that are not a store are named for what they are.
#[test]
fn store_paths_that_are_not_stores_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.txt");
    std::fs::write(&file, "x").unwrap();
    let in_sync = repo().join("state-examples/in-sync");
    let cases: [(&str, &str, &str); 3] = [
        (file.to_str().unwrap(), "is a file, not a directory", ""),
        ("", "the store is given as an empty string", "CI secret"),
        (
            &*Box::leak(
                in_sync
                    .join("images")
                    .display()
                    .to_string()
                    .into_boxed_str(),
            ),
            "is the images/ folder of a store, not a store",
            &*Box::leak(format!("--store {}", in_sync.display()).into_boxed_str()),
        ),
    ];
    for (store, error, hint) in cases {
        let run = labctl(&["plan", "--offline", "--store", store]);
        assert_eq!(run.code, 1, "{store}: {}", run.stderr);
        assert!(run.stderr.contains(error), "{store}: {}", run.stderr);
        assert!(run.stderr.contains(hint), "{store}: {}", run.stderr);
    }
}

/// Output to a pipe whose reader went away (`labctl plan | head`, a log collector that died)
/// ends in the command's own exit code, never in a panic (101): an apply that panicked on a
/// progress line would stop with its lock held and its uploads open.
#[test]
fn a_closed_pipe_is_not_a_panic() {
    for (args, code) in [
        // The plan could not be shown: an error (1).
        (
            &["plan", "--offline", "--store", "state-examples/drifted"][..],
            1,
        ),
        (&["validate", "--manifest", "state-examples/none.yaml"], 1),
    ] {
        let (out_reader, out_writer) = std::io::pipe().unwrap();
        let (err_reader, err_writer) = std::io::pipe().unwrap();
        // Nobody will read: every write labctl makes fails with EPIPE.
        drop(out_reader);
        drop(err_reader);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_labctl"))
            .args(args)
            .current_dir(repo())
            .env("NO_COLOR", "1")
            .env_remove("LABCTL_STORE")
            .stdin(std::process::Stdio::null())
            .stdout(out_writer)
            .stderr(err_writer)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}

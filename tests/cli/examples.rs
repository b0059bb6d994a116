//! Plans of the lab's manifest against each example store in `state-examples/`.

use crate::util::*;

const ALL: [&str; 7] = [
    "talos-1.9.1-metal-amd64",
    "vyos-iso",
    "vyos-gateway",
    "harvester-1.4.0-iso",
    "harvester-1.4.0-vmlinuz",
    "harvester-1.4.0-initrd",
    "harvester-1.4.0-rootfs",
];

#[test]
fn empty_store_creates_everything_in_dependency_order() {
    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/empty",
        "--json",
        "--detailed-exitcode",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let plan = run.json();
    let expected: Vec<_> = ALL
        .iter()
        .map(|n| row(n, "create", &["not in store"]))
        .collect();
    assert_eq!(actions(&plan), expected);
    assert_eq!(plan["summary"]["create"], 7);
    let gw = &plan["changes"][2];
    assert_eq!(gw["after"]["checksum"], serde_json::Value::Null);
    assert_eq!(gw["after"]["unknown"][0], "checksum");
}

#[test]
fn in_sync_store_has_no_changes() {
    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/in-sync",
        "--detailed-exitcode",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);
    assert!(run
        .stdout
        .ends_with("Plan: 0 to create, 0 to replace, 0 to update, 0 to delete.\n"));

    let plan = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/in-sync",
        "--json",
    ])
    .json();
    let expected: Vec<_> = ALL.iter().map(|n| row(n, "no-op", &[])).collect();
    assert_eq!(actions(&plan), expected);
    assert_eq!(plan["orphans"], serde_json::json!([]));
    // The store's consumer index lists exactly its objects.
    assert_eq!(plan["index"]["action"], "no-op", "{}", plan["index"]);
    let sums =
        std::fs::read_to_string(repo().join("state-examples/in-sync/images/SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), ALL.len());
}

fn drifted_actions() -> Vec<(String, String, Vec<String>)> {
    vec![
        row(
            "talos-1.9.1-metal-amd64",
            "update",
            &[
                "source checksum changed",
                "decompression changed",
                "source url changed",
            ],
        ),
        row(
            "vyos-iso",
            "replace",
            &[
                "checksum changed",
                "source checksum changed",
                "source url changed",
            ],
        ),
        row(
            "vyos-gateway",
            "replace",
            &["dependency vyos-iso will be replaced"],
        ),
        // Offline, its checksum (from the release's list) is unknown, so the earlier tool's
        // record cannot be matched; with the list fetched it is adopted when the digests agree.
        row(
            "harvester-1.4.0-iso",
            "replace",
            &["record written by an earlier tool cannot be matched to this spec"],
        ),
        row("harvester-1.4.0-vmlinuz", "no-op", &[]),
        row("harvester-1.4.0-initrd", "create", &["not in store"]),
        row(
            "harvester-1.4.0-rootfs",
            "replace",
            &["object missing from store"],
        ),
    ]
}

#[test]
fn drifted_store_shows_every_kind_of_change() {
    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/drifted",
        "--json",
        "--detailed-exitcode",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let plan = run.json();
    assert_eq!(actions(&plan), drifted_actions());
    assert_eq!(
        plan["orphans"],
        serde_json::json!([{
            "name": "talos-1.8.4-metal-amd64",
            "key": "images/talos/talos-1.8.4-metal-amd64.raw",
            "record_key": "metadata/talos/talos-1.8.4-metal-amd64.raw.json",
            "protected": false,
            "reason": "image left the manifest"
        }])
    );
    assert_eq!(
        plan["summary"],
        serde_json::json!({"create": 1, "replace": 4, "update": 1, "delete": 0, "no_op": 1, "orphaned": 1})
    );
    // The index is rewritten after the changes; the rolling ISO (history: 3) keeps its current
    // bytes before it is replaced. The legacy sha512 record is replaced, so nothing is read back.
    assert_eq!(plan["index"]["action"], "write");
    assert_eq!(
        plan["index"]["files"],
        serde_json::json!(["images/index.json", "images/SHA256SUMS"])
    );
    assert!(plan["index"].get("backfill").is_none(), "{}", plan["index"]);
    let iso = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vyos-iso")
        .unwrap();
    assert_eq!(iso["history"]["keep_current"], true);
    assert_eq!(iso["history"]["limit"], 3);
}

#[test]
fn drifted_store_with_prune_deletes_the_orphan_last() {
    let plan = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/drifted",
        "--json",
        "--prune",
    ])
    .json();
    let mut expected = drifted_actions();
    expected.push(row(
        "talos-1.8.4-metal-amd64",
        "delete",
        &["image left the manifest"],
    ));
    assert_eq!(actions(&plan), expected);
    assert_eq!(plan["orphans"], serde_json::json!([]));
}

#[test]
fn drifted_store_human_output_names_every_action_and_reason() {
    let run = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/drifted",
        "--detailed-exitcode",
    ]);
    assert_eq!(run.code, 2);
    let out = &run.stdout;
    for expected in [
        "-/+ harvester-1.4.0-rootfs",
        "because object missing from store",
        "-/+ vyos-gateway",
        "because dependency vyos-iso will be replaced",
        "~ talos-1.9.1-metal-amd64",
        "~ source.decompress: \"xz\" → \"zstd\"",
        "-    \"decompress\": \"xz\",",
        "+    \"decompress\": \"zstd\",",
        "+ harvester-1.4.0-initrd",
        "checksum: (known after apply)",
        "! talos-1.8.4-metal-amd64",
        "1 image unchanged.",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        out.ends_with("Plan: 1 to create, 4 to replace, 1 to update, 0 to delete.\n"),
        "{out}"
    );
    assert!(!out.contains('\u{1b}'), "NO_COLOR output has escape codes");
    assert!(
        run.stderr.contains("Reading state from file://"),
        "{}",
        run.stderr
    );
}

#[test]
fn refresh_false_reads_records_only() {
    let plan = labctl(&[
        "plan",
        "--offline",
        "--store",
        "state-examples/drifted",
        "--json",
        "--refresh=false",
    ])
    .json();
    assert_eq!(plan["refreshed"], false);
    let rootfs = &actions(&plan)[6];
    assert_eq!(rootfs, &row("harvester-1.4.0-rootfs", "no-op", &[]));
}

#[test]
fn quickstart_command_from_the_readme_works() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("cargo run") && l.contains(" plan"))
        .expect("README has a `cargo run … plan` quickstart line");
    assert!(line.contains("state-examples/drifted"), "{line}");
    // Run the same arguments against the built binary (cargo run would rebuild).
    let args: Vec<&str> = line
        .split(" -- ")
        .nth(1)
        .expect("cargo run … -- ARGS")
        .split_whitespace()
        .collect();
    let run = labctl(&args);
    assert!(run.code == 0 || run.code == 2, "{}", run.stderr);
    assert!(run
        .stdout
        .contains("Plan: 1 to create, 4 to replace, 1 to update, 0 to delete."));
}

#[test]
fn list_shows_records_as_a_table() {
    let run = labctl(&["list", "--store", "state-examples/drifted"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{}", run.stdout);
    assert_eq!(lines.len(), 1 + 7);
    let iso = lines
        .iter()
        .find(|l| l.starts_with("harvester-1.4.0-iso"))
        .unwrap();
    assert!(iso.contains("images/harvester/v1.4.0/harvester-v1.4.0-amd64.iso"));
    assert!(iso.contains("(legacy)"));
    assert!(iso.contains("107 B"));

    let empty = labctl(&["list", "--store", "state-examples/empty"]);
    assert_eq!(empty.code, 0);
    assert!(empty.stderr.contains("No records"), "{}", empty.stderr);
}

/// `list --json` is data: sizes in bytes, whole checksums, and why a record is unreadable.
#[test]
fn list_json_is_data_not_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    let copy = std::process::Command::new("cp")
        .args(["-r", "state-examples/drifted/.", store.to_str().unwrap()])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::write(store.join("metadata/broken.raw.json"), "{").unwrap();
    let run = labctl(&["list", "--store", store.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 1, "an unreadable record: {}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["format_version"], "1.0");
    let records = doc["records"].as_array().unwrap();
    assert_eq!(records.len(), 8);
    let iso = records
        .iter()
        .find(|r| r["name"] == "harvester-1.4.0-iso")
        .unwrap();
    assert_eq!(iso["size"], 107);
    assert_eq!(iso["legacy"], true);
    assert_eq!(iso["uploaded_at"], "2025-12-20T14:03:11Z");
    assert_eq!(
        iso["checksum"].as_str().unwrap().len(),
        "sha512:".len() + 128
    );
    let broken = records
        .iter()
        .find(|r| r["record_key"] == "metadata/broken.raw.json")
        .unwrap();
    assert!(
        broken["error"].as_str().unwrap().contains("corrupt"),
        "{broken}"
    );
    assert!(broken.get("name").is_none());
}

#[test]
fn graph_prints_dot_with_the_gateway_edge() {
    let run = labctl(&["graph"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("digraph images {"));
    assert!(
        run.stdout.contains("\"vyos-iso\" -> \"vyos-gateway\";"),
        "{}",
        run.stdout
    );
}

/// An emptied manifest with --prune would delete every image: refused unless asked for.
#[test]
fn an_empty_manifest_prunes_everything_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("images.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images: []\n",
    )
    .unwrap();
    let m = manifest.to_str().unwrap();
    let base = [
        "plan",
        "--offline",
        "--store",
        "state-examples/in-sync",
        "-m",
        m,
    ];
    let refused = labctl(&[&base[..], &["--prune"]].concat());
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("the manifest declares no images"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("--allow-empty"),
        "{}",
        refused.stderr
    );
    let allowed = labctl(&[&base[..], &["--prune", "--allow-empty", "--json"]].concat());
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert!(allowed.json()["summary"]["delete"].as_u64().unwrap() > 0);
    // Without --prune nothing is deleted, so nothing needs allowing.
    let plain = labctl(&base);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let stray = labctl(&[&base[..], &["--allow-empty"]].concat());
    assert_eq!(
        stray.code, 1,
        "--allow-empty needs --prune: {}",
        stray.stderr
    );
}

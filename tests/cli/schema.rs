//! The JSON Schema for the manifest (`docs/manifest.schema.json`), checked with a real validator
//! (Python's `jsonschema`, from the test venv): it accepts every example manifest, rejects what a
//! schema can express, and never rejects a manifest `labctl validate` accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

const CHECK: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    errors = sorted(validator.iter_errors(yaml.safe_load(open(path))), key=lambda e: list(e.path))
    print(("INVALID " if errors else "OK ") + path + (": " + errors[0].message if errors else ""))
"#;

fn python() -> PathBuf {
    let cache = std::env::var("LABCTL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/labctl-ci")
        });
    let python = cache.join("moto-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test installs it (with jsonschema and PyYAML)",
        python.display()
    );
    python
}

/// The verdict for each file: `Ok(())` or `Err(first message)`.
fn check(files: &[PathBuf]) -> Vec<Result<(), String>> {
    let out = Command::new(python())
        .arg("-c")
        .arg(CHECK)
        .arg(repo().join("docs/manifest.schema.json"))
        .args(files)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| match l.strip_prefix("OK ") {
            Some(_) => Ok(()),
            None => Err(l.to_string()),
        })
        .collect()
}

const HEADER: &str = "apiVersion: labctl/v1alpha1\nkind: ImageManifest\n";

/// Every field the manifest has, valid for the schema and for `labctl validate`.
const EVERYTHING: &str = r#"metadata:
  name: lab
spec:
  store:
    s3: {bucket: lab-images, endpoint: "https://s3.example.com", region: eu-1, prefix: lab}
  index:
    signing:
      minisign: {publicKey: RWSIhkR/dkM2DSaBRniv/bbbAf8hmDqdbOEmgXkf1RxRoxzodgKcDyGq}
  images:
    - name: iso
      source:
        type: http
        url: https://vendor.example/os.iso.xz
        checksum: sha256:0000000000000000000000000000000000000000000000000000000000000001
        decompress: xz
        signature:
          minisign: {url: "https://vendor.example/os.iso.xz.minisig", publicKey: RWSIhkR/dkM2DSaBRniv/bbbAf8hmDqdbOEmgXkf1RxRoxzodgKcDyGq}
      destination: {path: os/os.iso}
      validation: {expected: "sha256:0000000000000000000000000000000000000000000000000000000000000002"}
      protect: true
      history: 3
    - name: listed
      source:
        type: http
        url: https://vendor.example/k
        checksum: "file:https://vendor.example/SHA512SUMS"
        signature:
          pgp: {url: "https://vendor.example/SHA512SUMS.sig", publicKeyFile: keys/vendor.asc}
      destination: os/k
    - name: os-{{ version.bare }}
      version: v1.9.1
      track: {channel: github, repository: vendor/os, api: "https://api.vendor.example", order: semver, minor: next, prereleases: false, minAge: 3d, group: os}
      source:
        type: http
        url: https://vendor.example/releases/download/{{ version }}/os-amd64.iso
        checksum: sha256:0000000000000000000000000000000000000000000000000000000000000003
      destination: os/{{ version }}/os-amd64.iso
    - name: gw
      source:
        type: packer
        path: packer/gw
        artifact: output/gw.raw
        variables: {iso_url: "{{ images.iso.url }}", version: 1.10, flag: yes, count: 3}
      destination: os/gw.raw
      dependsOn: [iso]
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_schema_accepts_every_example_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let everything = write(
        dir.path(),
        "everything.yaml",
        &format!("{HEADER}{EVERYTHING}"),
    );
    let files = vec![repo().join("images/images.yaml"), everything];
    for (file, verdict) in files.iter().zip(check(&files)) {
        assert_eq!(verdict, Ok(()), "{}", file.display());
    }
    let first_line = std::fs::read_to_string(repo().join("images/images.yaml")).unwrap();
    assert!(
        first_line.starts_with("# yaml-language-server: $schema=../docs/manifest.schema.json\n"),
        "editors find the schema from the manifest's first line"
    );
}

#[test]
fn the_schema_rejects_what_a_schema_can_express() {
    let image = |body: &str| {
        format!("{HEADER}spec:\n  images:\n    - name: a\n      destination: a.img\n{body}")
    };
    let http = |extra: &str| {
        image(&format!(
            "      source:\n        type: http\n        url: https://v.example/a.img\n        checksum: sha256:{}\n{extra}",
            "0".repeat(64)
        ))
    };
    let tracked = |version: &str, track: &str| {
        image(&format!(
            "{version}      track: {track}\n      source:\n        type: http\n        url: https://v.example/{{{{ version }}}}/a.img\n        checksum: sha256:{}\n",
            "0".repeat(64)
        ))
    };
    let v = "      version: v1.9.1\n";
    let cases: Vec<(&str, String)> = vec![
        ("wrong apiVersion", "apiVersion: labctl/v2\nkind: ImageManifest\nspec:\n  images: []\n".to_string()),
        ("unknown top-level field", format!("{HEADER}spec:\n  images: []\nextra: 1\n")),
        ("no images", format!("{HEADER}spec: {{}}\n")),
        ("typo in a source field", image("      source:\n        type: http\n        url: https://v.example/a\n        checksun: pin\n")),
        ("bad checksum", http("").replace(&"0".repeat(64), "abc")),
        ("decompress bz2", http("        decompress: bz2\n")),
        ("plain http url", image(&format!("      source:\n        type: http\n        url: http://v.example/a\n        checksum: sha256:{}\n", "0".repeat(64)))),
        ("history 101", http("      history: 101\n")),
        ("history negative", http("      history: -1\n")),
        ("protect not boolean", http("      protect: maybe\n")),
        ("packer variable not a scalar", image("      source:\n        type: packer\n        path: p\n        artifact: o/a.raw\n        variables: {nested: {a: 1}}\n")),
        ("unknown source type", image("      source:\n        type: ftp\n        url: https://v.example/a\n")),
        ("bad minisign key", http("        signature:\n          minisign: {url: \"https://v.example/a.minisig\", publicKey: notakey}\n")),
        ("pgp key twice", http("        signature:\n          pgp: {publicKey: \"-----BEGIN PGP PUBLIC KEY BLOCK-----\", publicKeyFile: k.asc}\n")),
        ("insecure store endpoint", format!("{HEADER}spec:\n  store:\n    s3: {{bucket: b, endpoint: \"http://s3.example.com\"}}\n  images: []\n")),
        ("version not a string", tracked("      version: 1.10\n", "{channel: github, repository: v/a}")),
        ("track without version", tracked("", "{channel: github, repository: v/a}")),
        ("unknown channel", tracked(v, "{channel: nightly}")),
        ("github without repository", tracked(v, "{channel: github}")),
        ("time order on talos", tracked(v, "{channel: talos, order: time}")),
        ("minor with time order", tracked("      version: 2025.01.06-0020-rolling\n", "{channel: github, repository: v/a, order: time, minor: next}")),
        ("minAge without a unit", tracked(v, "{channel: github, repository: v/a, minAge: 3}")),
        ("prereleases not boolean", tracked(v, "{channel: github, repository: v/a, prereleases: maybe}")),
        ("unknown track field", tracked(v, "{channel: github, repository: v/a, schedule: weekly}")),
        ("talos with a repository", tracked(v, "{channel: talos, repository: a/b}")),
        ("unknown placeholder in a name", tracked(v, "{channel: github, repository: v/a}").replace("name: a\n", "name: a-{{ version.minor }}\n")),
        ("tracked Packer image", image(&format!("{v}      track: {{channel: github, repository: v/a}}\n      source:\n        type: packer\n        path: p\n        artifact: o/a.raw\n"))),
    ];
    let mut bad_destinations = vec![];
    for dest in ["../escape.img", "/etc/passwd", "a//b.img", "a/./b.img"] {
        bad_destinations.push((
            dest,
            http("").replace("destination: a.img", &format!("destination: \"{dest}\"")),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut names = Vec::new();
    for (i, (name, text)) in cases.iter().chain(bad_destinations.iter()).enumerate() {
        files.push(write(dir.path(), &format!("case-{i}.yaml"), text));
        names.push(name.to_string());
    }
    for ((name, file), verdict) in names.iter().zip(&files).zip(check(&files)) {
        assert!(verdict.is_err(), "the schema accepts {name}");
        // Whatever the schema rejects, labctl rejects too: an editor never flags a manifest that
        // would validate.
        let run = labctl(&["validate", "--manifest", file.to_str().unwrap()]);
        assert_eq!(
            run.code, 1,
            "labctl validate accepts {name}: {}",
            run.stderr
        );
    }
}

//! `labctl validate`: every problem in one run, with locations; hostile input handled.

use std::path::Path;

use crate::util::*;

fn validate_text(text: &[u8]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.yaml");
    std::fs::write(&path, text).unwrap();
    labctl(&["validate", "--manifest", path.to_str().unwrap()])
}

#[test]
fn the_labs_manifest_is_valid() {
    let run = labctl(&["validate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "images/images.yaml is valid: 7 images (6 downloads, 1 build)\n"
    );
}

const HEADER: &str = "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n";
const SUM: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn reports_all_problems_with_locations_and_suggestions() {
    let text = format!(
        "{HEADER}    - name: talos
      source: {{type: http, url: https://f/t.raw.xz, checksun: {SUM}, decompress: xz}}
      destination: /talos.raw
    - name: talos
      source: {{type: http, url: http://example.com/a.iso, checksum: {SUM}}}
      destination: a//b
    - name: gw
      source: {{type: packer, path: missing-dir, artifact: out/x.raw, variables: {{u: '{{{{ images.vyos.url }}}}'}}}}
      destination: gw.raw
      dependsOn: [talos]
      protect: yes please
"
    );
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    let err = &run.stderr;
    for expected in [
        "images.yaml:6:53: image `talos`: unknown field `checksun` in source",
        "hint: did you mean `checksum`?",
        "image `talos`: missing required field `source.checksum`",
        "image `talos`: `validation.expected` is required when `decompress` is set",
        "images.yaml:7:20: image `talos`: destination `/talos.raw` must not start with `/`",
        "images.yaml:8:7: image `talos`: duplicate image name (first defined at 5:7)",
        "image `talos`: `source.url` `http://example.com/a.iso` is not an https:// URL",
        "destination `a//b` has an empty path segment",
        "image `gw`: Packer template directory",
        "image `gw`: a reference names `vyos`, which is not an image in this manifest",
        "image `gw`: `protect` must be true or false, found a string",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("problems in"), "{err}");
}

/// An image with a problem of its own is still an image: depending on it is not also reported
/// as naming an image that does not exist, while a name that really is missing still is.
#[test]
fn a_dependency_on_an_image_with_problems_is_not_a_missing_image() {
    let text = format!(
        "{HEADER}    - name: base
      source: {{type: http, url: https://f/a.iso, checksum: 'sha256:nothex'}}
      destination: a.iso
    - name: child
      source: {{type: http, url: https://f/b.iso, checksum: {SUM}}}
      destination: b.iso
      dependsOn: [base, ghost]
"
    );
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    let err = &run.stderr;
    assert!(err.contains("image `base`: `source.checksum`"), "{err}");
    assert!(
        err.contains("names `ghost`, which is not an image"),
        "{err}"
    );
    assert!(
        !err.contains("names `base`, which is not an image"),
        "{err}"
    );
}

#[test]
fn unknown_top_level_and_image_fields_are_errors() {
    let text =
        format!("{HEADER}    - name: a\n      sourc: {{}}\n      destination: a\nmetdata: {{}}\n");
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unknown field `sourc` in an image"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean `source`?"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("unknown field `metdata` in the manifest"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean `metadata`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn dependency_cycles_are_named() {
    let img = |n: &str, dep: &str| {
        format!("    - name: {n}\n      source: {{type: http, url: https://e/{n}, checksum: {SUM}}}\n      destination: {n}\n      dependsOn: [{dep}]\n")
    };
    let text = format!(
        "{HEADER}{}{}{}",
        img("a", "c"),
        img("b", "a"),
        img("c", "b")
    );
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("image `a`: dependency cycle: a → b → c → a"),
        "{}",
        run.stderr
    );
}

#[test]
fn wrong_api_version_and_missing_spec() {
    let run = validate_text(b"apiVersion: labctl/v2\nkind: ImageManifest\n");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unsupported apiVersion `labctl/v2`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("missing required field `spec`"),
        "{}",
        run.stderr
    );
}

#[test]
fn destination_as_a_path_block_and_file_checksums_are_accepted() {
    let text = format!(
        "{HEADER}    - name: h\n      source: {{type: http, url: https://r/h.iso, checksum: 'file:https://r/h.sha512'}}\n      destination: {{path: h/h.iso}}\n"
    );
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn loopback_http_sources_need_the_test_switch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    let text = format!(
        "{HEADER}    - name: t\n      source: {{type: http, url: 'http://127.0.0.1:8080/t.img', checksum: {SUM}}}\n      destination: t.img\n"
    );
    std::fs::write(&path, text).unwrap();
    let denied = labctl(&["validate", "--manifest", path.to_str().unwrap()]);
    assert_eq!(denied.code, 1);
    assert!(
        denied.stderr.contains("LABCTL_ALLOW_INSECURE_LOOPBACK=1"),
        "{}",
        denied.stderr
    );
    let allowed = std::process::Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(["validate", "--manifest", path.to_str().unwrap()])
        .env("LABCTL_ALLOW_INSECURE_LOOPBACK", "1")
        .output()
        .unwrap();
    assert_eq!(allowed.status.code(), Some(0));
}

#[test]
fn missing_manifest_says_where_it_looked() {
    let run = labctl_in(Path::new("/"), &["validate"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("cannot read manifest `images/images.yaml`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--manifest"), "{}", run.stderr);
}

// ---- hostile input: each must end in a clean error (exit 1), never a panic, hang or OOM ----

#[test]
fn alias_bomb_is_refused() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..12 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        text.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("invalid YAML"), "{}", run.stderr);
}

#[test]
fn deep_flow_nesting_is_refused() {
    let text = "[".repeat(20_000) + &"]".repeat(20_000);
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("invalid YAML"), "{}", run.stderr);
}

#[test]
fn deep_block_nesting_is_refused() {
    // `- - - - … x`: a sequence nested 20,000 deep in block style.
    let text = "- ".repeat(20_000) + "x\n";
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("invalid YAML"), "{}", run.stderr);
}

#[test]
fn binary_garbage_is_refused() {
    // A deterministic pseudo-random byte soup, with NULs and invalid UTF-8.
    let mut x: u32 = 0x1234_5678;
    let bytes: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let run = validate_text(&bytes);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not UTF-8"), "{}", run.stderr);
    let run = validate_text(b"\x00\x01\x02 key: \x7f value\n\t- [\x1b");
    assert_eq!(run.code, 1, "{}", run.stderr);
}

#[test]
fn multi_megabyte_manifest_is_handled() {
    // 6 MiB of valid YAML: one huge list of strings where images should be.
    let mut text =
        String::from("apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n");
    while text.len() < 6 * 1024 * 1024 {
        text.push_str(
            "    - \"padding padding padding padding padding padding padding padding\"\n",
        );
    }
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("an image must be a mapping") || run.stderr.contains("invalid YAML"),
        "{}",
        &run.stderr[..run.stderr.len().min(500)]
    );
}

#[test]
fn oversized_manifest_is_refused_before_parsing() {
    let text = "# x\n".repeat(3 * 1024 * 1024);
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("a manifest may be at most"),
        "{}",
        run.stderr
    );
}

#[test]
fn history_and_index_signing_are_checked() {
    let text = format!(
        "apiVersion: labctl/v1alpha1
kind: ImageManifest
spec:
  index:
    signing:
      minisign:
        publicKey: RWnot-a-key
  images:
    - name: a
      source: {{type: http, url: https://v/a.iso, checksum: {SUM}}}
      destination: a.iso
      history: 101
    - name: b
      source: {{type: http, url: https://v/b.iso, checksum: {SUM}}}
      destination: b.iso
      history: -1
    - name: c
      source: {{type: http, url: https://v/c.iso, checksum: {SUM}}}
      destination: c.iso
      history: lots
    - name: d
      source: {{type: http, url: https://v/d.iso, checksum: {SUM}}}
      destination: SHA256SUMS
"
    );
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1);
    let err = &run.stderr;
    for expected in [
        "images.yaml:7:20: invalid minisign public key",
        "image `a`: `history` must be a whole number from 0 to 100, found 101",
        "image `b`: `history` must be a whole number from 0 to 100, found -1",
        "image `c`: `history` must be a whole number from 0 to 100, found a string",
        "image `d`: destination `SHA256SUMS` is the consumer index's own file",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    let key = "RWTHzK05mpexa54oQi7r0o2RTxRjn/OuK9cvajnT88JGmqO/Z4lsE3n1";
    let good = format!(
        "apiVersion: labctl/v1alpha1
kind: ImageManifest
spec:
  index: {{signing: {{minisign: {{publicKey: {key}}}}}}}
  images:
    - name: a
      source: {{type: http, url: https://v/a.iso, checksum: {SUM}}}
      destination: a.iso
      history: 3
"
    );
    let run = validate_text(good.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let typo = good.replace("signing", "signin");
    let run = validate_text(typo.as_bytes());
    assert!(
        run.stderr.contains("did you mean `signing`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn file_references_stay_inside_the_manifests_directory() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("key.asc"), "not yours").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let image = |name: &str, key_file: &str| {
        format!(
            "    - name: {name}
      source:
        type: http
        url: https://v/{name}.iso
        checksum: file:https://v/SHA256SUMS
        signature: {{pgp: {{url: https://v/SHA256SUMS.sig, publicKeyFile: {key_file}}}}}
      destination: {name}.iso
"
        )
    };
    let mut text = HEADER.to_string();
    text.push_str(&image("zero", "/dev/zero"));
    text.push_str(&image("up", "../../etc/passwd"));
    text.push_str(&image("link", "escape/key.asc"));
    text.push_str(&image("dir", "keys"));
    text.push_str(
        "    - name: gw
      source: {type: packer, path: ../elsewhere, artifact: out/gw.raw}
      destination: gw.raw
",
    );
    let path = dir.path().join("images.yaml");
    std::fs::write(&path, text).unwrap();
    let run = labctl(&["validate", "--manifest", path.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    let err = &run.stderr;
    for expected in [
        "image `zero`: cannot use the public key file `/dev/zero`: must be a path relative to the manifest's directory",
        "image `up`: cannot use the public key file `../../etc/passwd`: must not contain `..`",
        "image `link`: cannot use the public key file `escape/key.asc`: leads outside the manifest's directory through a symbolic link",
        "image `dir`: cannot use the public key file `keys`: is not a regular file",
        "image `gw`: `source.path` `../elsewhere` must not contain `..`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("not yours"));
}

/// A manifest path that is not a regular file (a symlink to /dev/zero in a pull request, a FIFO)
/// is refused without reading it.
#[test]
fn a_manifest_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("images.yaml");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let run = labctl(&["validate", "--manifest", link.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("is not a regular file"),
        "{}",
        run.stderr
    );
}

/// Destinations Synology Cloud Sync would never carry to the NAS are refused, each with the
/// rule it breaks, the offending segment and where it is written.
#[test]
fn destinations_cloud_sync_would_skip_are_refused() {
    let image = |name: &str, destination: &str| {
        format!(
            "    - name: {name}\n      source: {{type: http, url: https://e.example/{name}.iso, checksum: {SUM}}}\n      destination: \"{destination}\"\n"
        )
    };
    let text = format!(
        "{HEADER}{}{}{}{}{}{}{}",
        image("fork", "vyos/._gateway.raw"),
        image("reserved", "talos/@eaDir/metal.raw"),
        image("trailing", "harvester/v1.4.0/initrd."),
        image("colon", "talos/v1:9/metal.raw"),
        image("fine", "talos/metal.raw"),
        image("state", ".labctl/state.json"),
        image("nested", "talos/.labctl/fine.raw"),
    );
    let run = validate_text(text.as_bytes());
    assert_eq!(run.code, 1, "{}", run.stderr);
    for expected in [
        "images.yaml:7:20: image `fork`: destination `vyos/._gateway.raw` would never reach the NAS: `._gateway.raw` begins with `._`",
        "image `reserved`: destination `talos/@eaDir/metal.raw` would never reach the NAS: `@eaDir` is a name Synology reserves",
        "image `trailing`: destination `harvester/v1.4.0/initrd.` would never reach the NAS: `initrd.` ends in a dot or a space",
        "image `colon`: destination `talos/v1:9/metal.raw` would never reach the NAS: `v1:9` contains `:`",
        "image `state`: destination `.labctl/state.json` is inside the served folder's own `.labctl/`",
    ] {
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.stderr);
    }
    assert!(run.stderr.contains("5 problems"), "{}", run.stderr);
    assert!(!run.stderr.contains("image `fine`"), "{}", run.stderr);
    assert!(!run.stderr.contains("image `nested`"), "{}", run.stderr);
}

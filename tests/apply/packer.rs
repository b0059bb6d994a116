//! Packer-built images with the real `packer` binary (Debian's package), using builders that
//! need no VM: a `null` source with `shell-local`, fetching the ISO labctl published through the
//! templated URL.

use crate::harness::*;
use crate::support::fixture::Faults;
use crate::support::plan_rows::{actions, row, Row};

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod packer_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod packer_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod packer_fs { $( #[test] fn $case() { super::$case(super::Backend::Fs) } )* }
        mod packer_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod packer_garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

on_every_store!(
    builds_from_the_published_iso_and_keeps_secrets_out,
    new_iso_replaces_iso_and_gateway_in_order,
    template_edit_replaces_only_the_gateway,
    failed_build_skips_dependents_and_keeps_the_old_object,
);

pub(crate) const SECRET: &str = "s3cr3t-gateway-password";

/// The gateway: the ISO's bytes, a line naming its checksum, and the sha256 of the secret (so a
/// test can tell the secret reached the build without the secret itself appearing anywhere).
pub(crate) fn gateway_template(marker: &str) -> String {
    format!(
        r#"
variable "iso_url" {{
  type = string
}}

variable "iso_checksum" {{
  type = string
}}

variable "build_secret" {{
  type    = string
  default = ""
}}

source "null" "gateway" {{
  communicator = "none"
}}

build {{
  sources = ["source.null.gateway"]

  provisioner "shell-local" {{
    inline = [
      "set -e",
      "mkdir -p output",
      "curl -sSf -o output/iso.bin '${{var.iso_url}}'",
      "cp output/iso.bin output/gateway.raw",
      "echo 'gateway {marker} from ${{var.iso_checksum}}' >> output/gateway.raw",
      "printf '%s' \"$PKR_VAR_build_secret\" | sha256sum | cut -c1-64 >> output/gateway.raw",
      "echo \"index signing key in the build: $${{LABCTL_MINISIGN_SECRET_KEY:-none}}\"",
    ]
  }}
}}
"#
    )
}

pub(crate) fn gateway(depends: bool) -> Build {
    Build {
        name: "gateway",
        template: "gateway",
        artifact: "output/gateway.raw",
        variables: vec![
            ("iso_url", "{{ images.iso.url }}".into()),
            ("iso_checksum", "{{ images.iso.checksum }}".into()),
        ],
        depends_on: if depends { vec!["iso"] } else { vec![] },
    }
}

pub(crate) fn expected_gateway(iso: &[u8], marker: &str) -> Vec<u8> {
    let mut out = iso.to_vec();
    out.extend_from_slice(format!("gateway {marker} from {}\n", sha256(iso)).as_bytes());
    out.extend_from_slice(format!("{}\n", sha256(SECRET.as_bytes()).hex()).as_bytes());
    out
}

fn plan_actions(lab: &Lab) -> Vec<Row> {
    let run = lab.labctl(&["plan", "--json"]);
    assert_eq!(run.code, 0, "{}", run.output());
    actions(&serde_json::from_str(&run.stdout).unwrap())
}

fn setup(backend: Backend, iso: &[u8]) -> Lab {
    let lab = Lab::new(backend);
    lab.serve("/iso", iso.to_vec(), Faults::default());
    lab.template("gateway", &gateway_template("v1"));
    lab.write_manifest_with(&[Entry::raw("iso", "/iso", iso)], &[gateway(true)]);
    lab
}

fn builds_from_the_published_iso_and_keeps_secrets_out(backend: Backend) {
    let iso = image_bytes(30, 6 * 1024 * 1024 + 77);
    let lab = setup(backend, &iso);

    let plan = lab.labctl(&["plan"]);
    assert!(
        plan.stdout.contains("checksum: (known after apply)"),
        "{}",
        plan.output()
    );

    let signing_key = "labctl-index-signing-key-stand-in";
    let run = lab.apply_with_env(&[
        ("PKR_VAR_build_secret", SECRET),
        ("LABCTL_MINISIGN_SECRET_KEY", signing_key),
    ]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stderr.contains("[gateway] "),
        "packer output is streamed with the image name: {}",
        run.output()
    );
    assert!(
        !run.output().contains(SECRET),
        "the secret is never printed"
    );
    assert!(
        run.output()
            .contains("index signing key in the build: none"),
        "the build never sees the index signing key: {}",
        run.output()
    );
    let got = lab
        .object("test/gateway.raw")
        .expect("the gateway is published");
    assert!(
        got == expected_gateway(&iso, "v1"),
        "the gateway was built from the published ISO"
    );

    let record = lab.record("test/gateway.raw").unwrap();
    assert!(
        !record.to_string().contains(SECRET),
        "the secret is not recorded"
    );
    assert_eq!(record["source"]["type"], "packer");
    assert!(record["source"]["packerVersion"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert_eq!(
        record["source"]["variables"]["iso_url"],
        "{{ images.iso.url }}"
    );
    assert_eq!(record["dependencies"]["iso"], sha256(&iso).to_string());
    assert_eq!(record["checksum"], sha256(&got).to_string());
    assert!(record["spec"]["source"]["templateHash"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(
        !lab.dir().join("packer/gateway/output").exists(),
        "the build ran in a scratch directory"
    );

    assert_eq!(
        plan_actions(&lab),
        vec![row("iso", "no-op", &[]), row("gateway", "no-op", &[])]
    );
}

fn new_iso_replaces_iso_and_gateway_in_order(backend: Backend) {
    let iso = image_bytes(31, 100_000);
    let lab = setup(backend, &iso);
    assert_eq!(
        lab.apply_with_env(&[("PKR_VAR_build_secret", SECRET)]).code,
        0
    );

    let new_iso = image_bytes(32, 120_000);
    lab.serve("/iso", new_iso.clone(), Faults::default());
    lab.write_manifest_with(&[Entry::raw("iso", "/iso", &new_iso)], &[gateway(true)]);
    assert_eq!(
        plan_actions(&lab),
        vec![
            row(
                "iso",
                "replace",
                &["checksum changed", "source checksum changed"]
            ),
            row("gateway", "replace", &["dependency iso will be replaced"]),
        ]
    );
    let run = lab.apply_with_env(&[("PKR_VAR_build_secret", SECRET)]);
    assert_eq!(run.code, 0, "{}", run.output());
    let iso_done = run.stdout.find("✓ iso").unwrap();
    let gw_done = run.stdout.find("✓ gateway").unwrap();
    assert!(iso_done < gw_done, "{}", run.stdout);
    assert!(lab.object("test/gateway.raw").unwrap() == expected_gateway(&new_iso, "v1"));
    assert_eq!(
        lab.record("test/gateway.raw").unwrap()["dependencies"]["iso"],
        sha256(&new_iso).to_string()
    );
}

fn template_edit_replaces_only_the_gateway(backend: Backend) {
    let iso = image_bytes(33, 50_000);
    let lab = setup(backend, &iso);
    assert_eq!(
        lab.apply_with_env(&[("PKR_VAR_build_secret", SECRET)]).code,
        0
    );

    lab.template("gateway", &gateway_template("v2"));
    assert_eq!(
        plan_actions(&lab),
        vec![
            row("iso", "no-op", &[]),
            row("gateway", "replace", &["template changed"])
        ]
    );
    lab.fixture.clear_log();
    let run = lab.apply_with_env(&[("PKR_VAR_build_secret", SECRET)]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(lab.fixture.log(), vec![], "the ISO is not downloaded again");
    assert!(lab.object("test/gateway.raw").unwrap() == expected_gateway(&iso, "v2"));
}

fn failed_build_skips_dependents_and_keeps_the_old_object(backend: Backend) {
    let iso = image_bytes(34, 50_000);
    let lab = setup(backend, &iso);
    assert_eq!(
        lab.apply_with_env(&[("PKR_VAR_build_secret", SECRET)]).code,
        0
    );
    let old = lab.object("test/gateway.raw").unwrap();
    let old_record = lab.record("test/gateway.raw").unwrap();

    // Break the template, add an image built on the gateway and an independent download.
    lab.template(
        "gateway",
        &gateway_template("v3").replace(
            "\"set -e\",",
            "\"set -e\", \"echo failing on purpose\", \"exit 3\",",
        ),
    );
    let tools = image_bytes(35, 3000);
    lab.serve("/tools", tools.clone(), Faults::default());
    let mut on_gateway = Entry::raw("on-gateway", "/tools", &tools);
    on_gateway.depends_on = vec!["gateway"];
    on_gateway.destination = "test/on-gateway.img".into();
    let mut independent = Entry::raw("independent", "/tools", &tools);
    independent.destination = "test/independent.img".into();
    lab.write_manifest_with(
        &[Entry::raw("iso", "/iso", &iso), on_gateway, independent],
        &[gateway(true)],
    );

    let run = lab.apply_with_env(&[("PKR_VAR_build_secret", SECRET)]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("[gateway]") && l.contains("failing on purpose")),
        "the build's output is shown with the image name: {}",
        run.output()
    );
    assert!(
        run.stderr.contains("✗ gateway: `packer build` failed"),
        "{}",
        run.output()
    );
    assert!(
        run.stdout
            .contains("- on-gateway: skipped (dependency gateway failed)"),
        "{}",
        run.output()
    );
    assert!(run.stdout.contains("✓ independent"), "{}", run.output());
    assert!(lab.object("test/independent.img").is_some());
    assert!(lab.object("test/on-gateway.img").is_none());
    assert!(
        lab.object("test/gateway.raw").unwrap() == old,
        "the old gateway object is untouched"
    );
    assert_eq!(lab.record("test/gateway.raw").unwrap(), old_record);
}

/// SIGTERM during a build: Packer gets SIGINT and stops its build (here a long shell step, on a
/// VM builder the VM), the lock is released, nothing is published, and no build process is left.
#[test]
fn sigterm_during_a_build_stops_packer_and_releases_the_lock() {
    let iso = image_bytes(36, 20_000);
    let lab = setup(Backend::Fs, &iso);
    assert_eq!(lab.apply().code, 0);
    let started = lab.dir().join("build-started");
    // A duration no other run uses, to find this build's shell step in the process table.
    let marker = format!("sleep {}", 100_000 + std::process::id());
    lab.template(
        "gateway",
        &gateway_template("v9").replace(
            "\"set -e\",",
            &format!("\"set -e\", \"touch {}\", \"{marker}\",", started.display()),
        ),
    );
    let args = ["apply", "--auto-approve"];
    let child = lab.spawn(&args);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the build never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let old = lab.object("test/gateway.raw").unwrap();
    send_signal(&child, "-TERM");
    let run = finish(child, &args);
    assert_eq!(run.code, 143, "{}", run.output());
    assert!(
        run.stderr.contains("Released the store lock"),
        "{}",
        run.output()
    );
    assert!(lab.head(".labctl/lock.json").is_none());
    assert_eq!(
        lab.object("test/gateway.raw").unwrap(),
        old,
        "the old build stays"
    );
    // Give the process table a moment, then look for the build's shell step.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "the build's processes are gone: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// Variables reach `packer build` exactly as written in YAML — `1.10` is not `1.1`, `yes` is not
/// `true`, `0x1F` is not `31` — and a presigned URL a build step echoes shows no credentials.
#[test]
fn variables_arrive_as_written_and_presigned_urls_are_redacted() {
    let lab = Lab::new(Backend::S3sFs);
    let iso = image_bytes(31, 4096);
    lab.serve("/iso", iso.clone(), Faults::default());
    lab.template(
        "vars",
        r#"
variable "iso_url" {
  type = string
}
variable "version" {
  type = string
}
variable "flag" {
  type = string
}
variable "mask" {
  type = string
}
variable "padded" {
  type = string
}

source "null" "vars" {
  communicator = "none"
}

build {
  sources = ["source.null.vars"]

  provisioner "shell-local" {
    inline = [
      "set -e",
      "mkdir -p output",
      "printf '%s|%s|%s|%s' '${var.version}' '${var.flag}' '${var.mask}' '${var.padded}' > output/vars.raw",
      "echo 'fetching ${var.iso_url}'",
    ]
  }
}
"#,
    );
    lab.write_manifest_text(&format!(
        "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n    - name: iso\n      source:\n        type: http\n        url: {}\n        checksum: \"{}\"\n      destination: test/iso.img\n    - name: vars\n      source:\n        type: packer\n        path: packer/vars\n        artifact: output/vars.raw\n        variables:\n          iso_url: \"{{{{ images.iso.url }}}}\"\n          version: 1.10\n          flag: yes\n          mask: 0x1F\n          padded: 007\n      destination: test/vars.raw\n",
        lab.fixture.url("/iso"),
        sha256(&iso)
    ));
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(
        lab.object("test/vars.raw").as_deref(),
        Some(&b"1.10|yes|0x1F|007"[..])
    );
    let echoed = run
        .output()
        .lines()
        .find(|l| l.contains("fetching "))
        .unwrap_or_else(|| panic!("the step's echo is streamed: {}", run.output()))
        .to_string();
    assert!(
        echoed.contains("X-Amz-Signature=<redacted>")
            && echoed.contains("X-Amz-Credential=<redacted>"),
        "{echoed}"
    );
    assert!(echoed.contains("/images/test/iso.img?"), "{echoed}");
}

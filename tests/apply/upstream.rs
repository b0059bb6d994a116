//! `labctl outdated` and `labctl bump` against fixture vendors on 127.0.0.1 over TLS, which
//! answer as the GitHub Releases API, the Talos Image Factory and Harvester's release folders
//! document: new versions found and written only after the bytes verified, and every refusal
//! leaving the manifest byte for byte as it was.

use serde_json::Value;

use crate::harness::{image_bytes, peak_rss_kib, sha256, timed_labctl, zstd, Backend, Lab, Run};
use crate::support::vendors::{
    github_release, sha512_list, version_yaml, vyos_assets, vyos_changelog, Asset, VendorServer,
};

const HEADER: &str = "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n";
const VYOS: &str = "vyos/vyos-nightly-build";
const OLD: &str = "2025.11.28-0019-rolling";
const NEW: &str = "2025.11.30-0019-rolling";
const NEWER_PRE: &str = "2025.12.01-0019-rolling";
const SCHEMATIC: &str = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";

/// Runs labctl trusting the fixture's CA, with no GitHub settings from the test's environment.
fn run(lab: &Lab, vendor: &VendorServer, args: &[&str], env: &[(&str, &str)]) -> Run {
    let ca = vendor.ca.display().to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("SSL_CERT_FILE", &ca),
        ("GITHUB_API_URL", "https://api.github.invalid"),
        ("GITHUB_TOKEN", ""),
    ];
    all.extend_from_slice(env);
    lab.labctl_env(args, &all)
}

fn manifest(lab: &Lab) -> String {
    std::fs::read_to_string(lab.manifest_path()).unwrap()
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.output()))
}

fn rfc3339_days_ago(days: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    labctl::timefmt::rfc3339(now - days * 86_400)
}

struct Vyos {
    vendor: VendorServer,
    iso: Vec<u8>,
    pk: minisign::PublicKey,
}

/// VyOS's rolling channel: the current build, a newer one with its signature (made by `signer`)
/// and GitHub's digest of `served` (the bytes the download gets), a newer pre-release, and a
/// draft. The manifest tracks it through `api:` pointing at the fixture.
fn vyos_lab(lab: &Lab, signer: Option<&minisign::KeyPair>, served: Option<&[u8]>) -> Vyos {
    let vendor = VendorServer::start(&lab.dir().join("vendors"));
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let iso = image_bytes(90, 300_000);
    let signer = signer.unwrap_or(&pair);
    let sig = minisign::sign(
        Some(&signer.pk),
        &signer.sk,
        std::io::Cursor::new(&iso),
        Some("timestamp:1764463152\tfile:vyos.iso"),
        None,
    )
    .unwrap()
    .to_bytes();
    let old_iso = image_bytes(89, 1000);
    let old_sig_bytes = minisign::sign(
        Some(&pair.pk),
        &pair.sk,
        std::io::Cursor::new(&old_iso),
        None,
        None,
    )
    .unwrap()
    .to_bytes();
    let (old_name, old_sig) = vyos_assets(OLD);
    let (new_name, new_sig) = vyos_assets(NEW);
    let (pre_name, pre_sig) = vyos_assets(NEWER_PRE);
    let asset = |name: &'static str, bytes: &'static [u8]| Asset {
        name,
        bytes,
        digest: true,
        content_type: "application/octet-stream",
    };
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let leak_bytes = |b: Vec<u8>| -> &'static [u8] { Box::leak(b.into_boxed_slice()) };
    let new_assets = [
        Asset {
            digest: true,
            ..asset(leak(new_name), leak_bytes(iso.clone()))
        },
        asset(leak(new_sig), leak_bytes(sig.clone())),
    ];
    let old_assets = [
        asset(leak(old_name), leak_bytes(old_iso.clone())),
        asset(leak(old_sig), leak_bytes(old_sig_bytes)),
    ];
    let pre_assets = [
        asset(leak(pre_name), leak_bytes(iso.clone())),
        asset(leak(pre_sig), leak_bytes(sig.clone())),
    ];
    let notes = vyos_changelog(
        &[("T7000: fix the @gateway route, closes #12", 4567)],
        &[("Build ISO", 890)],
    );
    let releases = vec![
        github_release(
            &vendor.base,
            VYOS,
            "2025.12.02-0019-rolling",
            None,
            false,
            true,
            "draft",
            &[],
        ),
        github_release(
            &vendor.base,
            VYOS,
            NEWER_PRE,
            Some(&rfc3339_days_ago(1)),
            true,
            false,
            "pre",
            &pre_assets,
        ),
        github_release(
            &vendor.base,
            VYOS,
            NEW,
            Some(&rfc3339_days_ago(3)),
            false,
            false,
            &notes,
            &new_assets,
        ),
        github_release(
            &vendor.base,
            VYOS,
            OLD,
            Some(&rfc3339_days_ago(5)),
            false,
            false,
            "old",
            &old_assets,
        ),
    ];
    vendor.serve_github_releases(VYOS, &releases, 2);
    for (tag, assets) in [
        (NEW, &new_assets[..]),
        (OLD, &old_assets[..]),
        (NEWER_PRE, &pre_assets[..]),
    ] {
        vendor.serve_release_assets(VYOS, tag, assets);
    }
    if let Some(bytes) = served {
        let (name, _) = vyos_assets(NEW);
        vendor.bytes(&format!("/{VYOS}/releases/download/{NEW}/{name}"), bytes);
    }
    let base = &vendor.base;
    lab.write_manifest_text(&format!(
        r#"{HEADER}    # VyOS rolling: signed with minisign.
    - name: vyos-iso
      version: "{OLD}"   # bumped by labctl bump
      track:
        channel: github
        repository: {VYOS}
        api: {base}
        order: time
      source:
        type: http
        url: {base}/{VYOS}/releases/download/{{{{ version }}}}/vyos-{{{{ version }}}}-generic-amd64.iso
        checksum: {old}
        signature:
          minisign:
            url: {base}/{VYOS}/releases/download/{{{{ version }}}}/vyos-{{{{ version }}}}-generic-amd64.iso.minisig
            publicKey: {pk}
      destination: vyos/vyos-rolling-generic-amd64.iso
"#,
        old = sha256(&old_iso),
        pk = pair.pk.to_base64(),
    ));
    Vyos {
        vendor,
        iso,
        pk: pair.pk,
    }
}

/// The whole loop on a VyOS rolling build: outdated sees it, bump shows the diff, writes it
/// (version and digest only, comments kept), a second bump changes nothing, and the plan of the
/// result is exactly the new ISO; apply publishes it.
#[test]
fn a_signed_rolling_build_is_found_verified_and_written() {
    let lab = Lab::new(Backend::Fs);
    let vyos = vyos_lab(&lab, None, None);
    let before = manifest(&lab);

    // A token in the environment belongs to GITHUB_API_URL's API, not to the manifest's.
    let out = run(
        &lab,
        &vyos.vendor,
        &["outdated", "--json"],
        &[("GITHUB_TOKEN", "not-for-this-host")],
    );
    assert_eq!(out.code, 2, "{}", out.output());
    let report = json(&out);
    let row = &report["images"][0];
    assert_eq!(row["status"], "update-available");
    assert_eq!(row["current"], OLD);
    assert_eq!(row["newest_allowed"]["version"], NEW);
    assert_eq!(
        row["newest"]["version"], NEWER_PRE,
        "drafts are never offered"
    );
    assert_eq!(row["held_back"][0]["version"], NEWER_PRE);
    assert_eq!(row["held_back"][0]["reasons"][0]["reason"], "prerelease");
    assert!(row["warnings"].as_array().unwrap().is_empty(), "{row}");
    // Two pages of releases, followed by their Link header; nothing downloaded.
    let log = vyos.vendor.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log.iter()
            .all(|r| r.path.contains("/releases") && !r.authorization),
        "{log:?}"
    );

    let human = run(&lab, &vyos.vendor, &["outdated"], &[]);
    assert_eq!(human.code, 2, "{}", human.output());
    assert!(
        human
            .stdout
            .contains(&format!("held back {NEWER_PRE}: a pre-release")),
        "{}",
        human.output()
    );

    let diff = run(&lab, &vyos.vendor, &["bump"], &[]);
    assert_eq!(diff.code, 0, "{}", diff.output());
    assert!(
        diff.stdout.contains(&format!("+      version: \"{NEW}\"")),
        "{}",
        diff.output()
    );
    assert_eq!(manifest(&lab), before, "without --write nothing is written");

    let written = run(&lab, &vyos.vendor, &["bump", "--write", "--markdown"], &[]);
    assert_eq!(written.code, 0, "{}", written.output());
    let old_sum = before
        .lines()
        .find_map(|l| l.trim().strip_prefix("checksum: "))
        .unwrap()
        .to_string();
    let expected = before
        .replace(&format!("\"{OLD}\""), &format!("\"{NEW}\""))
        .replace(&old_sum, &sha256(&vyos.iso).to_string());
    assert_eq!(
        manifest(&lab),
        expected,
        "only the version and the digest change"
    );
    let key_id = labctl::source::signature::MinisignKey::parse(&vyos.pk.to_base64())
        .unwrap()
        .key_id;
    let body = &written.stdout;
    assert!(
        body.contains(&format!("signature-verified (minisign key `{key_id}`)")),
        "{body}"
    );
    assert!(body.contains("matches GitHub's asset digest"), "{body}");
    assert!(
        body.contains("```text\n## vyos-1x"),
        "release notes are shown, fenced: {body}"
    );
    assert!(
        body.contains("| 1 | 0 | 0 | 0 | 0 | 0 |"),
        "the plan of the result creates the ISO: {body}"
    );

    let again = run(&lab, &vyos.vendor, &["bump", "--write"], &[]);
    assert_eq!(again.code, 0, "{}", again.output());
    assert!(
        again.stderr.contains("newest version its policy allows"),
        "{}",
        again.output()
    );
    assert_eq!(manifest(&lab), expected);
    let current = run(&lab, &vyos.vendor, &["outdated"], &[]);
    assert_eq!(current.code, 0, "up to date now: {}", current.output());

    let plan = run(
        &lab,
        &vyos.vendor,
        &["plan", "--json", "--detailed-exitcode"],
        &[],
    );
    assert_eq!(plan.code, 2, "{}", plan.output());
    let plan = json(&plan);
    assert_eq!(plan["summary"]["create"], 1);
    assert_eq!(plan["changes"][0]["action"], "create");
    assert!(plan["changes"][0]["after"]["spec"]["source"]["url"]
        .as_str()
        .unwrap()
        .contains(NEW));
    let applied = run(&lab, &vyos.vendor, &["apply", "--auto-approve"], &[]);
    assert_eq!(applied.code, 0, "{}", applied.output());
    assert_eq!(
        lab.object("vyos/vyos-rolling-generic-amd64.iso").unwrap(),
        vyos.iso
    );
}

/// A signature made by another key is refused before any byte of the image is downloaded, and
/// the manifest stays byte for byte as it was.
#[test]
fn a_signature_by_another_key_changes_nothing() {
    let lab = Lab::new(Backend::Fs);
    let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let vyos = vyos_lab(&lab, Some(&other), None);
    let before = manifest(&lab);
    let bump = run(&lab, &vyos.vendor, &["bump", "--write"], &[]);
    assert_eq!(bump.code, 1, "{}", bump.output());
    assert!(
        bump.stderr.contains("minisign signature refused"),
        "{}",
        bump.output()
    );
    assert!(
        bump.stderr.contains("nothing was written"),
        "{}",
        bump.output()
    );
    assert_eq!(manifest(&lab), before);
    let (iso, _) = vyos_assets(NEW);
    assert!(
        !vyos.vendor.log().iter().any(|r| r.path.ends_with(&iso)),
        "the image was not downloaded"
    );
}

/// Bytes that are not what GitHub computed at upload are refused (here the signature still
/// matches the real ISO, so the signature is what catches them first); without a signature,
/// GitHub's digest does.
#[test]
fn bytes_that_disagree_with_githubs_digest_are_refused() {
    let lab = Lab::new(Backend::Fs);
    let tampered = image_bytes(91, 300_000);
    let vyos = vyos_lab(&lab, None, Some(&tampered));
    let before = manifest(&lab);
    let bump = run(&lab, &vyos.vendor, &["bump", "--write"], &[]);
    assert_eq!(bump.code, 1, "{}", bump.output());
    assert!(
        bump.stderr
            .contains("the minisign signature refused the bytes"),
        "{}",
        bump.output()
    );
    assert_eq!(manifest(&lab), before);

    // The same without a signature in the manifest: the GitHub digest refuses them.
    let unsigned: String = before
        .lines()
        .filter(|l| {
            !l.contains("signature:")
                && !l.contains("minisign:")
                && !l.contains(".minisig")
                && !l.contains("publicKey")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    lab.write_manifest_text(&unsigned);
    let bump = run(&lab, &vyos.vendor, &["bump", "--write"], &[]);
    assert_eq!(bump.code, 1, "{}", bump.output());
    assert!(
        bump.stderr.contains("GitHub's digest of the asset"),
        "{}",
        bump.output()
    );
    assert!(
        bump.stderr.contains(&sha256(&tampered).to_string()),
        "names the bytes: {}",
        bump.output()
    );
    assert_eq!(manifest(&lab), unsigned);
}

/// An asset URL that answers 200 with an HTML error page is named as such.
#[test]
fn an_html_error_page_is_refused() {
    let lab = Lab::new(Backend::Fs);
    let vyos = vyos_lab(&lab, None, None);
    let (iso, _) = vyos_assets(NEW);
    vyos.vendor.text(
        &format!("/{VYOS}/releases/download/{NEW}/{iso}"),
        200,
        "text/html; charset=utf-8",
        "<!DOCTYPE html><html><body>Unicorn! This page is taking too long to load.</body></html>",
    );
    let before = manifest(&lab);
    let bump = run(&lab, &vyos.vendor, &["bump", "--write"], &[]);
    assert_eq!(bump.code, 1, "{}", bump.output());
    assert!(
        bump.stderr.contains("answered 200 with an HTML page"),
        "{}",
        bump.output()
    );
    assert_eq!(manifest(&lab), before);
}

/// The current pin is gone upstream (VyOS prunes old builds): outdated says so, and that the
/// bucket does not hold its bytes.
#[test]
fn a_pin_deleted_upstream_is_reported() {
    let lab = Lab::new(Backend::Fs);
    let vyos = vyos_lab(&lab, None, None);
    let text = manifest(&lab).replace(OLD, "2025.10.01-0019-rolling");
    lab.write_manifest_text(&text);
    let out = run(&lab, &vyos.vendor, &["outdated", "--json"], &[]);
    assert_eq!(out.code, 2, "{}", out.output());
    let row = &json(&out)["images"][0];
    assert_eq!(row["warnings"][0]["warning"], "current-not-listed", "{row}");
    assert_eq!(row["warnings"][0]["bucket"]["kept"], "nowhere", "{row}");
    assert!(row["warnings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("does not hold its bytes"));
}

fn talos_lab(lab: &Lab) -> (VendorServer, Vec<u8>, Vec<u8>) {
    talos_lab_of(lab, image_bytes(92, 400_000))
}

/// The factory with `raw` as v1.9.2's image, and a manifest tracking it from v1.9.1.
fn talos_lab_of(lab: &Lab, raw: Vec<u8>) -> (VendorServer, Vec<u8>, Vec<u8>) {
    let vendor = VendorServer::start(&lab.dir().join("vendors"));
    // /versions leaves broken versions out; ?broken=true lists them.
    vendor.serve_talos_versions(
        "/versions",
        &["v1.9.0", "v1.9.1", "v1.9.2", "v1.10.0", "v1.10.1-beta.0"],
    );
    vendor.serve_talos_versions("/versions?broken=true", &["v1.9.3"]);
    let compressed = zstd(&raw);
    vendor.bytes(
        &format!("/image/{SCHEMATIC}/v1.9.2/metal-amd64.raw.zst"),
        &compressed,
    );
    let base = &vendor.base;
    lab.write_manifest_text(&format!(
        r#"{HEADER}    - name: talos-{{{{ version.bare }}}}-metal-amd64
      version: v1.9.1
      track: {{channel: talos}}
      source:
        type: http
        url: {base}/image/{SCHEMATIC}/{{{{ version }}}}/metal-amd64.raw.zst
        checksum: sha256:0000000000000000000000000000000000000000000000000000000000000001 # PLACEHOLDER
        decompress: zstd
      destination: talos/talos-{{{{ version.bare }}}}-metal-amd64.raw
      validation:
        expected: sha256:0000000000000000000000000000000000000000000000000000000000000002 # PLACEHOLDER
"#
    ));
    (vendor, raw, compressed)
}

/// Talos: versions from the factory minus its broken list, a patch allowed and the next minor
/// held back by the policy; the bump pins both digests on first use and checks the size
/// against the factory's Content-Length.
#[test]
fn talos_is_pinned_on_first_use_with_both_digests() {
    let lab = Lab::new(Backend::Fs);
    let (vendor, raw, compressed) = talos_lab(&lab);
    let out = run(&lab, &vendor, &["outdated", "--json"], &[]);
    assert_eq!(out.code, 2, "{}", out.output());
    let row = &json(&out)["images"][0];
    assert_eq!(row["name"], "talos-1.9.1-metal-amd64");
    assert_eq!(row["newest_allowed"]["version"], "v1.9.2");
    assert_eq!(row["newest"]["version"], "v1.10.1-beta.0");
    let held: Vec<(&str, &str)> = row["held_back"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["version"].as_str().unwrap(),
                h["reasons"][0]["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        held,
        [
            ("v1.10.1-beta.0", "policy"),
            ("v1.10.0", "policy"),
            ("v1.9.3", "broken")
        ]
    );

    // minAge cannot be met by a channel that publishes no release times: held, and said why.
    let aged = manifest(&lab).replace("{channel: talos}", "{channel: talos, minAge: 3d}");
    lab.write_manifest_text(&aged);
    let out = run(&lab, &vendor, &["outdated", "--json"], &[]);
    assert_eq!(out.code, 0, "{}", out.output());
    let row = &json(&out)["images"][0];
    assert_eq!(row["status"], "up-to-date");
    let reasons = row["held_back"].to_string();
    assert!(
        reasons.contains("no-release-time") && reasons.contains("minAge: 3d"),
        "{reasons}"
    );

    let text = aged.replace(", minAge: 3d", "");
    lab.write_manifest_text(&text);
    let bump = run(&lab, &vendor, &["bump", "--write", "--markdown"], &[]);
    assert_eq!(bump.code, 0, "{}", bump.output());
    let after = manifest(&lab);
    assert!(after.contains("      version: v1.9.2\n"), "{after}");
    assert!(
        after.contains(&format!("checksum: {} # PLACEHOLDER", sha256(&compressed))),
        "{after}"
    );
    assert!(
        after.contains(&format!("expected: {} # PLACEHOLDER", sha256(&raw))),
        "{after}"
    );
    assert!(
        bump.stdout.contains("pinned on first use"),
        "{}",
        bump.output()
    );
    assert!(
        bump.stdout.contains(&format!(
            "size matches the factory's Content-Length ({} bytes)",
            compressed.len()
        )),
        "{}",
        bump.output()
    );
    assert!(
        bump.stdout.contains("Renamed to `talos-1.9.2-metal-amd64`"),
        "{}",
        bump.output()
    );
    let heads = vendor.log().iter().filter(|r| r.method == "HEAD").count();
    assert_eq!(heads, 1);
    let applied = run(&lab, &vendor, &["apply", "--auto-approve"], &[]);
    assert_eq!(applied.code, 0, "{}", applied.output());
    assert_eq!(
        lab.object("talos/talos-1.9.2-metal-amd64.raw").unwrap(),
        raw
    );
}

/// Harvester through GITHUB_API_URL (with the token, which goes to that API only): the next
/// minor allowed, the ISO checked against the release's sha512 list and its version.yaml; a list
/// that disagrees with the bytes refuses them.
#[test]
fn harvester_is_checked_against_its_list_and_version_yaml() {
    let lab = Lab::new(Backend::Fs);
    let vendor = VendorServer::start(&lab.dir().join("vendors"));
    let base = vendor.base.clone();
    // The kernel is also a GitHub asset of the release, with GitHub's digest.
    let kernel = image_bytes(94, 50_000);
    let kernel_asset = [Asset {
        name: "harvester-v1.5.0-vmlinuz-amd64",
        bytes: &kernel,
        digest: true,
        content_type: "application/octet-stream",
    }];
    let release = |tag: &str, pre: bool, assets: &[Asset]| {
        github_release(
            &base,
            "harvester/harvester",
            tag,
            Some(&rfc3339_days_ago(10)),
            pre,
            false,
            &format!("Harvester {tag}"),
            assets,
        )
    };
    vendor.serve_github_releases(
        "harvester/harvester",
        &[
            release("v1.6.0", false, &[]),
            release("v1.5.1-rc1", true, &[]),
            release("v1.5.0", false, &kernel_asset),
            release("v1.4.1", false, &[]),
            release("v1.4.0", false, &[]),
        ],
        100,
    );
    vendor.bytes("/harvester/v1.5.0/harvester-v1.5.0-vmlinuz-amd64", &kernel);
    let iso = image_bytes(93, 200_000);
    let iso_url = format!("{base}/harvester/v1.5.0/harvester-v1.5.0-amd64.iso");
    vendor.bytes("/harvester/v1.5.0/harvester-v1.5.0-amd64.iso", &iso);
    vendor.text(
        "/harvester/v1.5.0/version.yaml",
        200,
        "application/x-yaml",
        &version_yaml(
            "v1.5.0",
            &iso_url,
            labctl::checksum::Checksum::of_bytes(labctl::checksum::Algorithm::Sha512, &iso).hex(),
            "20250501",
        ),
    );
    vendor.text(
        "/harvester/v1.5.0/harvester-v1.5.0-amd64.sha512",
        200,
        "text/plain",
        &sha512_list(&[
            ("harvester-v1.5.0-amd64.iso", &iso),
            ("harvester-v1.5.0-vmlinuz-amd64", &kernel),
        ]),
    );
    lab.write_manifest_text(&format!(
        r#"{HEADER}    - name: harvester-{{{{ version.bare }}}}-iso
      version: v1.4.0
      track: {{channel: harvester, minor: next}}
      source:
        type: http
        url: {base}/harvester/{{{{ version }}}}/harvester-{{{{ version }}}}-amd64.iso
        checksum: file:{base}/harvester/{{{{ version }}}}/harvester-{{{{ version }}}}-amd64.sha512
      destination: harvester/{{{{ version }}}}/harvester-{{{{ version }}}}-amd64.iso
    - name: harvester-{{{{ version.bare }}}}-vmlinuz
      version: v1.4.0
      track: {{channel: harvester, minor: next}}
      source:
        type: http
        url: {base}/harvester/{{{{ version }}}}/harvester-{{{{ version }}}}-vmlinuz-amd64
        checksum: file:{base}/harvester/{{{{ version }}}}/harvester-{{{{ version }}}}-amd64.sha512
      destination: harvester/{{{{ version }}}}/harvester-{{{{ version }}}}-vmlinuz-amd64
"#
    ));
    let before = manifest(&lab);
    let env = [("GITHUB_API_URL", base.as_str()), ("GITHUB_TOKEN", "t0ken")];
    let out = run(&lab, &vendor, &["outdated", "--json"], &env);
    assert_eq!(out.code, 2, "{}", out.output());
    let report = json(&out);
    for row in report["images"].as_array().unwrap() {
        assert_eq!(row["newest_allowed"]["version"], "v1.5.0", "{row}");
    }
    let log = vendor.log();
    assert_eq!(
        log.len(),
        1,
        "one request for the repository both images track: {log:?}"
    );
    assert!(log[0].authorization, "the token goes to GITHUB_API_URL");

    let bump = run(&lab, &vendor, &["bump", "--write", "--markdown"], &env);
    assert_eq!(bump.code, 0, "{}", bump.output());
    assert_eq!(
        manifest(&lab),
        before.replace("version: v1.4.0", "version: v1.5.0"),
        "a `file:` checksum stays a list: only the versions change"
    );
    assert!(
        bump.stdout.contains("listed by the vendor"),
        "{}",
        bump.output()
    );
    assert!(
        bump.stdout.contains("matches `spec.isoChecksum`"),
        "{}",
        bump.output()
    );
    assert!(
        bump.stdout.contains("matches GitHub's asset digest"),
        "the kernel is cross-checked: {}",
        bump.output()
    );

    // A list that disagrees with the bytes: refused, nothing written.
    lab.write_manifest_text(&before);
    vendor.text(
        "/harvester/v1.5.0/harvester-v1.5.0-amd64.sha512",
        200,
        "text/plain",
        &sha512_list(&[
            ("harvester-v1.5.0-amd64.iso", b"other bytes"),
            ("harvester-v1.5.0-vmlinuz-amd64", &kernel),
        ]),
    );
    let bump = run(&lab, &vendor, &["bump", "--write"], &env);
    assert_eq!(bump.code, 1, "{}", bump.output());
    assert!(
        bump.stderr.contains("the vendor's list"),
        "{}",
        bump.output()
    );
    assert_eq!(manifest(&lab), before);
}

/// A lookup that returns malformed JSON, or never answers in time, is exit 1 with the channel
/// named: never a panic, never a write.
#[test]
fn failed_lookups_name_the_channel_and_write_nothing() {
    let lab = Lab::new(Backend::Fs);
    let (vendor, _, _) = talos_lab(&lab);
    let before = manifest(&lab);
    vendor.text(
        "/versions",
        200,
        "text/plain; charset=utf-8",
        "[\"v1.9.1\", ",
    );
    for args in [&["outdated"][..], &["bump", "--write"][..]] {
        let out = run(&lab, &vendor, args, &[]);
        assert_eq!(out.code, 1, "{args:?}: {}", out.output());
        let all = out.output();
        assert!(all.contains("the Talos factory at"), "{all}");
        assert!(all.contains("invalid JSON"), "{all}");
        assert!(!all.contains("panicked"), "{all}");
        assert_eq!(manifest(&lab), before);
    }
    let route: Value = serde_json::json!({"status": 200, "headers": {"Content-Type": "text/plain"}, "body": "[]", "delay": 5});
    vendor.route("/versions", route);
    let out = run(
        &lab,
        &vendor,
        &["outdated", "--json", "--timeout", "1s"],
        &[],
    );
    assert_eq!(out.code, 1, "{}", out.output());
    let row = &json(&out)["images"][0];
    assert_eq!(row["status"], "lookup-failed");
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("the Talos factory at"),
        "{row}"
    );
    assert_eq!(manifest(&lab), before);

    // A refusal says what the server said (GitHub and the factory answer JSON with a message).
    vendor.route(
        "/versions",
        serde_json::json!({"status": 404, "headers": {"Content-Type": "application/json"},
                           "body": "{\"message\":\"schematic not found\"}"}),
    );
    let out = run(&lab, &vendor, &["outdated"], &[]);
    assert_eq!(out.code, 1, "{}", out.output());
    assert!(
        out.output()
            .contains("answered HTTP 404: schematic not found"),
        "{}",
        out.output()
    );
}

/// A Packer image built from the tracked ISO is not bumped: the plan of the bump shows it
/// rebuilt because the ISO it depends on is replaced.
#[test]
fn a_dependent_packer_image_is_rebuilt_not_bumped() {
    let lab = Lab::new(Backend::Fs);
    let vyos = vyos_lab(&lab, None, None);
    lab.template(
        "gateway",
        r#"
variable "iso_checksum" {
  type = string
}

source "null" "gateway" {
  communicator = "none"
}

build {
  sources = ["source.null.gateway"]

  provisioner "shell-local" {
    inline = ["mkdir -p output", "echo 'gateway from ${var.iso_checksum}' > output/gateway.raw"]
  }
}
"#,
    );
    let text = format!(
        "{}    - name: vyos-gateway\n      source:\n        type: packer\n        path: packer/gateway\n        artifact: output/gateway.raw\n        variables:\n          iso_checksum: \"{{{{ images.vyos-iso.checksum }}}}\"\n      destination: vyos/vyos-gateway.raw\n",
        manifest(&lab)
    );
    lab.write_manifest_text(&text);
    let applied = run(&lab, &vyos.vendor, &["apply", "--auto-approve"], &[]);
    assert_eq!(applied.code, 0, "{}", applied.output());

    let bump = run(&lab, &vyos.vendor, &["bump", "--write", "--markdown"], &[]);
    assert_eq!(bump.code, 0, "{}", bump.output());
    let body = &bump.stdout;
    assert!(
        body.contains(&format!("## labctl bump: vyos-iso {NEW}\n")),
        "{body}"
    );
    assert!(
        !body.contains("### `vyos-gateway`"),
        "the gateway is not bumped: {body}"
    );
    assert!(
        body.contains("| 0 | 2 | 0 | 0 | 0 | 0 |"),
        "both replaced: {body}"
    );
    assert!(
        body.contains("dependency vyos-iso will be replaced"),
        "{body}"
    );
    let plan = run(&lab, &vyos.vendor, &["plan", "--json"], &[]);
    let plan = json(&plan);
    let actions: Vec<(&str, &str)> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [("vyos-iso", "replace"), ("vyos-gateway", "replace")]
    );
}

/// A bump streams: a 160 MiB image is downloaded, decompressed and hashed in bounded memory.
#[test]
fn a_bump_verifies_in_bounded_memory() {
    let lab = Lab::new(Backend::Fs);
    let (vendor, raw, _) = talos_lab_of(&lab, image_bytes(95, 160 * 1024 * 1024));
    let raw_sum = sha256(&raw);
    drop(raw);
    let manifest_path = lab.manifest_path().display().to_string();
    let kib = peak_rss_kib(
        timed_labctl()
            .args(["bump", "--write", "--manifest", &manifest_path])
            .env("SSL_CERT_FILE", &vendor.ca)
            .env("NO_COLOR", "1")
            .current_dir(lab.dir()),
    );
    assert!(
        manifest(&lab).contains(&format!("expected: {raw_sum}")),
        "{}",
        manifest(&lab)
    );
    assert!(
        kib < 150 * 1024,
        "peak RSS {} MiB exceeds 150 MiB",
        kib / 1024
    );
}

/// GitHub's releases are followed through every `Link` page, far past the ten pages labctl
/// once stopped at, up to the documented cap of 100 pages; past it the lookup fails, saying so.
#[test]
fn github_releases_are_followed_through_every_page_up_to_the_cap() {
    let lab = Lab::new(Backend::Fs);
    let vyos = vyos_lab(&lab, None, None);
    let filler = |n: usize| {
        github_release(
            &vyos.vendor.base,
            VYOS,
            &format!("2024.{:02}.{:02}-{n:04}-rolling", 1 + n % 12, 1 + n % 28),
            Some(&rfc3339_days_ago(400 + n as u64)),
            false,
            false,
            "older",
            &[],
        )
    };
    let with_new_at = |fillers: usize| {
        let base = &vyos.vendor.base;
        let mut releases: Vec<Value> = (0..fillers).map(filler).collect();
        // Newest last, as a long list of backports could put it: only the last page has it.
        releases.push(github_release(
            base,
            VYOS,
            NEW,
            Some(&rfc3339_days_ago(3)),
            false,
            false,
            "new",
            &[],
        ));
        releases
    };

    // Fifteen pages of one release each: the newest is on the last.
    vyos.vendor.serve_github_releases(VYOS, &with_new_at(14), 1);
    let out = run(&lab, &vyos.vendor, &["outdated", "--json"], &[]);
    assert_eq!(out.code, 0, "{}", out.output());
    // Found on the fifteenth page (held back only because this fixture gives it no assets).
    assert_eq!(json(&out)["images"][0]["newest"]["version"], NEW);
    let pages = vyos
        .vendor
        .log()
        .iter()
        .filter(|r| r.path.contains("releases"))
        .count();
    assert_eq!(pages, 15, "every page once");

    // 101 pages: past the cap, refused with what happened.
    vyos.vendor.clear_log();
    vyos.vendor
        .serve_github_releases(VYOS, &with_new_at(100), 1);
    let out = run(&lab, &vyos.vendor, &["outdated", "--json"], &[]);
    assert_eq!(out.code, 1, "{}", out.output());
    assert!(
        out.output().contains("more than 100 pages of releases"),
        "{}",
        out.output()
    );
}

/// A cache between the factory's two answers: `/versions` still lists a version that
/// `?broken=true` names. It is never proposed. Only a broken list equal to `/versions` (an old
/// factory ignoring the parameter) is no broken list.
#[test]
fn a_broken_talos_version_still_listed_is_never_proposed() {
    let lab = Lab::new(Backend::Fs);
    let (vendor, _, _) = talos_lab(&lab);
    vendor.serve_talos_versions("/versions", &["v1.9.0", "v1.9.1", "v1.9.2", "v1.9.3"]);
    vendor.serve_talos_versions("/versions?broken=true", &["v1.9.3"]);
    let out = run(&lab, &vendor, &["outdated", "--json"], &[]);
    assert_eq!(out.code, 2, "{}", out.output());
    let row = &json(&out)["images"][0];
    assert_eq!(row["newest_allowed"]["version"], "v1.9.2", "{row}");
    assert_eq!(row["held_back"][0]["version"], "v1.9.3", "{row}");
    assert_eq!(
        row["held_back"][0]["reasons"][0]["reason"], "broken",
        "{row}"
    );

    // An old factory: the same list twice. Nothing is broken, v1.9.3 is the newest.
    let all = ["v1.9.0", "v1.9.1", "v1.9.2", "v1.9.3"];
    vendor.serve_talos_versions("/versions?broken=true", &all);
    let out = run(&lab, &vendor, &["outdated", "--json"], &[]);
    assert_eq!(out.code, 2, "{}", out.output());
    assert_eq!(
        json(&out)["images"][0]["newest_allowed"]["version"],
        "v1.9.3"
    );
}

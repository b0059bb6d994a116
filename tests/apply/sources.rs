//! Source integrity: checksum lists in every shape vendors publish, minisign signatures over the
//! image, OpenPGP signatures over the list, and `labctl pin`. Sources do not depend on the store,
//! so these run against the filesystem store.

use crate::harness::*;
use crate::support::fixture::Faults;
use std::time::Duration;

const HEADER: &str = "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n";

fn image(name: &str, url: &str, checksum: &str, extra: &str) -> String {
    format!(
        "    - name: {name}\n      source:\n        type: http\n        url: {url}\n        checksum: \"{checksum}\"\n{extra}      destination: test/{name}.img\n"
    )
}

fn plan_json(lab: &Lab) -> serde_json::Value {
    let run = lab.labctl(&["plan", "--json"]);
    assert_eq!(run.code, 0, "{}", run.output());
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn checksum_lists_in_every_format_are_resolved_shown_and_recorded() {
    let lab = Lab::new(Backend::Fs);
    let (a, b, c) = (
        image_bytes(50, 5000),
        image_bytes(51, 6000),
        image_bytes(52, 7000),
    );
    lab.serve("/ubuntu/a.img", a.clone(), Faults::default());
    lab.serve("/fedora/b.iso", b.clone(), Faults::default());
    lab.serve("/harvester/c.raw", c.clone(), Faults::default());
    // GNU (Ubuntu's SHA256SUMS), BSD tags (Fedora's CHECKSUM), sha512sum (Harvester's .sha512).
    let gnu = format!(
        "{}  other.img\n{} *a.img\n",
        sha256(b"x").hex(),
        sha256(&a).hex()
    );
    let bsd = format!("# Fedora-style\nSHA256 (b.iso) = {}\n", sha256(&b).hex());
    let sha512sum = format!("{}  ./c.raw\n", sha512(&c).hex());
    lab.serve("/ubuntu/SHA256SUMS", gnu.into_bytes(), Faults::default());
    lab.serve("/fedora/CHECKSUM", bsd.into_bytes(), Faults::default());
    lab.serve(
        "/harvester/c.sha512",
        sha512sum.into_bytes(),
        Faults::default(),
    );
    let list = |p: &str| format!("file:{}", lab.fixture.url(p));
    lab.write_manifest_text(&format!(
        "{HEADER}{}{}{}",
        image(
            "a",
            &lab.fixture.url("/ubuntu/a.img"),
            &list("/ubuntu/SHA256SUMS"),
            ""
        ),
        image(
            "b",
            &lab.fixture.url("/fedora/b.iso"),
            &list("/fedora/CHECKSUM"),
            ""
        ),
        image(
            "c",
            &lab.fixture.url("/harvester/c.raw"),
            &list("/harvester/c.sha512"),
            ""
        ),
    ));

    let plan = plan_json(&lab);
    for (i, (name, sum)) in [("a", sha256(&a)), ("b", sha256(&b)), ("c", sha512(&c))]
        .iter()
        .enumerate()
    {
        assert_eq!(plan["changes"][i]["name"], *name);
        assert_eq!(
            plan["changes"][i]["after"]["checksum"],
            sum.to_string(),
            "the plan shows the listed checksum"
        );
    }
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(lab.object("test/c.img").unwrap() == c);
    let record = lab.record("test/c.img").unwrap();
    assert_eq!(record["checksum"], sha512(&c).to_string());
    assert_eq!(record["source"]["checksum"], sha512(&c).to_string());
    assert_eq!(
        record["source"]["checksumList"],
        lab.fixture.url("/harvester/c.sha512")
    );
    // Listed checksums make the images pinned: nothing to do now.
    assert_eq!(lab.labctl(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn a_list_without_the_entry_or_with_conflicting_entries_is_an_error() {
    let lab = Lab::new(Backend::Fs);
    let a = image_bytes(53, 3000);
    lab.serve("/a.img", a.clone(), Faults::default());
    lab.serve(
        "/SUMS",
        format!("{}  other.img\n", sha256(b"o").hex()).into_bytes(),
        Faults::default(),
    );
    lab.serve(
        "/CONFLICT",
        format!(
            "{}  a.img\n{}  a.img\n",
            sha256(&a).hex(),
            sha256(b"evil").hex()
        )
        .into_bytes(),
        Faults::default(),
    );
    for (list, expected) in [
        (
            "/SUMS",
            format!("`a.img` is not listed in {}", lab.fixture.url("/SUMS")),
        ),
        (
            "/CONFLICT",
            format!(
                "{} lists `a.img` more than once with different digests",
                lab.fixture.url("/CONFLICT")
            ),
        ),
    ] {
        lab.write_manifest_text(&format!(
            "{HEADER}{}",
            image(
                "a",
                &lab.fixture.url("/a.img"),
                &format!("file:{}", lab.fixture.url(list)),
                ""
            )
        ));
        let plan = lab.labctl(&["plan"]);
        assert_eq!(plan.code, 1, "{}", plan.output());
        assert!(
            plan.stderr.contains(&expected),
            "missing {expected:?}: {}",
            plan.output()
        );
        let apply = lab.apply();
        assert_eq!(apply.code, 1, "{}", apply.output());
        assert!(lab.object("test/a.img").is_none());
    }
}

fn minisign_pair() -> (minisign::PublicKey, minisign::SecretKey) {
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    (pair.pk, pair.sk)
}

fn minisign_sig(pk: &minisign::PublicKey, sk: &minisign::SecretKey, data: &[u8]) -> Vec<u8> {
    minisign::sign(
        Some(pk),
        sk,
        std::io::Cursor::new(data),
        Some("file:test"),
        None,
    )
    .unwrap()
    .to_string()
    .into_bytes()
}

fn minisign_manifest(lab: &Lab, body: &[u8], public_key: &str) {
    let extra = format!(
        "        signature:\n          minisign:\n            url: {}\n            publicKey: {public_key}\n",
        lab.fixture.url("/vyos.iso.minisig")
    );
    lab.write_manifest_text(&format!(
        "{HEADER}{}",
        image(
            "vyos",
            &lab.fixture.url("/vyos.iso"),
            &sha256(body).to_string(),
            &extra
        )
    ));
}

#[test]
fn minisign_signatures_are_verified_while_streaming() {
    let lab = Lab::new(Backend::Fs);
    let iso = image_bytes(54, 9 * 1024 * 1024);
    let (pk, sk) = minisign_pair();
    lab.serve("/vyos.iso", iso.clone(), Faults::default());

    // A signature over other bytes: the checksum matches, the signature does not.
    lab.serve(
        "/vyos.iso.minisig",
        minisign_sig(&pk, &sk, b"something else"),
        Faults::default(),
    );
    minisign_manifest(&lab, &iso, &pk.to_base64());
    let run = lab.apply();
    assert_eq!(run.code, 1, "{}", run.output());
    let key_id = labctl::source::signature::MinisignKey::parse(&pk.to_base64())
        .unwrap()
        .key_id;
    assert!(
        run.stderr
            .contains(&format!("does not verify with key {key_id}")),
        "{}",
        run.output()
    );
    assert!(
        run.stderr.contains(&lab.fixture.url("/vyos.iso.minisig")),
        "{}",
        run.output()
    );
    assert!(
        lab.object("test/vyos.img").is_none(),
        "nothing is published"
    );
    assert_eq!(lab.pending_uploads(), Some(vec![]));

    // A signature by another key fails before any image byte moves.
    let (other_pk, other_sk) = minisign_pair();
    lab.serve(
        "/vyos.iso.minisig",
        minisign_sig(&other_pk, &other_sk, &iso),
        Faults::default(),
    );
    lab.fixture.clear_log();
    let run = lab.apply();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.stderr.contains("not by the configured key"),
        "{}",
        run.output()
    );
    assert!(
        !lab.fixture.log().iter().any(|e| e.path == "/vyos.iso"),
        "the image was not downloaded"
    );

    // The right signature publishes, and the record names the key.
    lab.serve(
        "/vyos.iso.minisig",
        minisign_sig(&pk, &sk, &iso),
        Faults::default(),
    );
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(lab.object("test/vyos.img").unwrap() == iso);
    let record = lab.record("test/vyos.img").unwrap();
    assert_eq!(record["source"]["signature"]["type"], "minisign");
    assert_eq!(record["source"]["signature"]["publicKey"], pk.to_base64());
}

fn pgp_key() -> pgp::composed::SignedSecretKey {
    use pgp::composed::{KeyType, SecretKeyParamsBuilder};
    use rand::SeedableRng;
    let params = SecretKeyParamsBuilder::default()
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .primary_user_id("Release Signing <release@vendor.example>".into())
        .passphrase(None)
        .build()
        .unwrap();
    params
        .generate(rand::rngs::StdRng::seed_from_u64(7))
        .unwrap()
}

fn pgp_detached(key: &pgp::composed::SignedSecretKey, data: &[u8]) -> Vec<u8> {
    use rand::SeedableRng;
    let sig = pgp::composed::DetachedSignature::sign_binary_data(
        rand::rngs::StdRng::seed_from_u64(8),
        &key.primary_key,
        &pgp::types::Password::empty(),
        pgp::crypto::hash::HashAlgorithm::Sha256,
        data,
    )
    .unwrap();
    sig.to_armored_string(None.into()).unwrap().into_bytes()
}

fn pgp_manifest(lab: &Lab, signature_url: Option<&str>, key_file: &str) {
    let url_line = signature_url
        .map(|u| format!("            url: {u}\n"))
        .unwrap_or_default();
    let extra = format!(
        "        signature:\n          pgp:\n{url_line}            publicKeyFile: {key_file}\n"
    );
    lab.write_manifest_text(&format!(
        "{HEADER}{}",
        image(
            "ubuntu",
            &lab.fixture.url("/ubuntu.iso"),
            &format!("file:{}", lab.fixture.url("/SHA256SUMS")),
            &extra
        )
    ));
}

#[test]
fn openpgp_signatures_over_checksum_lists_are_verified() {
    use pgp::types::KeyDetails;
    let lab = Lab::new(Backend::Fs);
    let iso = image_bytes(55, 20_000);
    let key = pgp_key();
    let public = key.to_public_key().to_armored_string(None.into()).unwrap();
    std::fs::write(lab.dir().join("release.asc"), &public).unwrap();
    let fingerprint = format!("{:X}", key.fingerprint());
    let sums = format!("{} *ubuntu.iso\n", sha256(&iso).hex());
    lab.serve("/ubuntu.iso", iso.clone(), Faults::default());
    lab.serve("/SHA256SUMS", sums.clone().into_bytes(), Faults::default());

    // A signature over another list: refused, naming the key and the signature URL.
    lab.serve(
        "/SHA256SUMS.gpg",
        pgp_detached(&key, b"another list\n"),
        Faults::default(),
    );
    pgp_manifest(
        &lab,
        Some(&lab.fixture.url("/SHA256SUMS.gpg")),
        "release.asc",
    );
    let plan = lab.labctl(&["plan"]);
    assert_eq!(plan.code, 1, "{}", plan.output());
    assert!(
        plan.stderr.contains(&format!(
            "the OpenPGP signature {} does not verify with key {fingerprint}",
            lab.fixture.url("/SHA256SUMS.gpg")
        )),
        "{}",
        plan.output()
    );
    let run = lab.apply();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(lab.object("test/ubuntu.img").is_none());

    // The right detached signature.
    lab.serve(
        "/SHA256SUMS.gpg",
        pgp_detached(&key, sums.as_bytes()),
        Faults::default(),
    );
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(lab.object("test/ubuntu.img").unwrap() == iso);
    let record = lab.record("test/ubuntu.img").unwrap();
    assert_eq!(record["source"]["signature"]["keyFingerprint"], fingerprint);

    // A clearsigned list (Fedora's CHECKSUM files), with no separate signature URL.
    use rand::SeedableRng;
    let clearsigned = pgp::composed::CleartextSignedMessage::sign(
        rand::rngs::StdRng::seed_from_u64(9),
        &sums,
        &key.primary_key,
        &pgp::types::Password::empty(),
    )
    .unwrap()
    .to_armored_string(None.into())
    .unwrap();
    lab.serve(
        "/SHA256SUMS",
        clearsigned.clone().into_bytes(),
        Faults::default(),
    );
    pgp_manifest(&lab, None, "release.asc");
    let plan = plan_json(&lab);
    assert_eq!(
        plan["changes"][0]["after"]["checksum"],
        sha256(&iso).to_string()
    );
    // Tampering with the signed text breaks it.
    lab.serve(
        "/SHA256SUMS",
        clearsigned
            .replace(&sha256(&iso).hex()[..8], "00000000")
            .into_bytes(),
        Faults::default(),
    );
    let plan = lab.labctl(&["plan"]);
    assert_eq!(plan.code, 1, "{}", plan.output());
    assert!(
        plan.stderr.contains("does not verify with key"),
        "{}",
        plan.output()
    );
}

#[test]
fn pin_writes_only_the_checksums_and_the_result_applies() {
    let lab = Lab::new(Backend::Fs);
    let raw = image_bytes(56, 40_000);
    let disk = image_bytes(57, 3 * 1024 * 1024);
    lab.serve("/talos.raw.zst", zstd(&disk), Faults::default());
    lab.serve("/tools.img", raw.clone(), Faults::default());
    let original = format!(
        r#"# Lab images: reviewed in pull requests.
apiVersion: labctl/v1alpha1
kind: ImageManifest
spec:
  images:
    # The factory publishes no checksums: pin on first use, then review the diff.
    - name: talos
      source:
        type: http
        url: {}   # stable per schematic and version
        checksum: pin
        decompress: zstd
      destination: talos/metal-amd64.raw
      validation:
        expected: "pin"     # the decompressed disk
    - name: tools
      source: {{type: http, url: '{}'}}
      destination: tools.img
"#,
        lab.fixture.url("/talos.raw.zst"),
        lab.fixture.url("/tools.img")
    );
    lab.write_manifest_text(&original);

    let refused = lab.labctl_no_store(&["validate"]);
    assert_eq!(
        refused.code,
        1,
        "validation refuses unpinned sources: {}",
        refused.output()
    );
    assert!(
        refused.stderr.contains("labctl pin --write"),
        "{}",
        refused.output()
    );

    let dry = lab.labctl_no_store(&["pin"]);
    assert_eq!(dry.code, 0, "{}", dry.output());
    assert!(
        dry.stdout.contains(&format!(
            "talos: source.checksum {} validation.expected {}",
            sha256(&zstd(&disk)),
            sha256(&disk)
        )),
        "{}",
        dry.output()
    );
    assert_eq!(
        std::fs::read_to_string(lab.manifest_path()).unwrap(),
        original,
        "without --write nothing changes"
    );

    let write = lab.labctl_no_store(&["pin", "--write"]);
    assert_eq!(write.code, 0, "{}", write.output());
    let pinned = std::fs::read_to_string(lab.manifest_path()).unwrap();
    let expected = original
        .replace(
            "checksum: pin",
            &format!("checksum: {}", sha256(&zstd(&disk))),
        )
        .replace(
            "expected: \"pin\"",
            &format!("expected: \"{}\"", sha256(&disk)),
        )
        .replace(
            "source: {type: http, url:",
            &format!("source: {{type: http, checksum: {}, url:", sha256(&raw)),
        );
    assert_eq!(
        pinned, expected,
        "only the checksums changed, comments and layout kept"
    );

    assert_eq!(lab.labctl_no_store(&["validate"]).code, 0);
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(lab.object("talos/metal-amd64.raw").unwrap() == disk);
}

/// A plan stuck on a slow checksum list (the list takes 30 s to arrive) ends at SIGINT/SIGTERM, with the
/// code a shell expects, leaving no temporary file beside a saved plan.
#[test]
fn signals_end_a_plan_cleanly() {
    let lab = Lab::new(Backend::Fs);
    let body = image_bytes(50, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    let mut list = format!("{}  a.img\n", sha256(&body).hex()).into_bytes();
    // Filler lines make the list 1 MiB, sent over ~30 s.
    while list.len() < 1 << 20 {
        list.extend_from_slice(
            format!("{}  filler-{}.img\n", "0".repeat(64), list.len()).as_bytes(),
        );
    }
    lab.serve(
        "/SUMS",
        list,
        Faults {
            delay_per_mib: Duration::from_secs(30),
            ..Default::default()
        },
    );
    lab.write_manifest_text(&format!(
        "{HEADER}{}",
        image(
            "a",
            &lab.fixture.url("/a.img"),
            &format!("file:{}", lab.fixture.url("/SUMS")),
            ""
        )
    ));
    let saved = lab.dir().join("plans");
    std::fs::create_dir_all(&saved).unwrap();
    let out = saved.join("plan.json");
    for (args, signal, code) in [
        (vec!["plan", "--out", out.to_str().unwrap()], "-TERM", 143),
        (vec!["plan"], "-INT", 130),
    ] {
        let before = lab.fixture.bytes_sent("/SUMS");
        let child = lab.spawn(&args);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while lab.fixture.bytes_sent("/SUMS") == before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        send_signal(&child, signal);
        let run = finish(child, &args);
        assert_eq!(run.code, code, "{args:?}: {}", run.output());
        assert!(
            run.stderr.contains("stopping — nothing was changed"),
            "{}",
            run.output()
        );
        assert_eq!(
            std::fs::read_dir(&saved).unwrap().count(),
            0,
            "nothing is left where the plan would have been saved"
        );
    }
}

/// A wrong `decompress` is named as such — the data is gzip, not xz — rather than reported as a
/// checksum mismatch of a download that was never read to its end.
#[test]
fn a_wrong_decompress_format_is_named() {
    let lab = Lab::new(Backend::Fs);
    let plain = image_bytes(51, 24 * 1024 * 1024);
    let gz = gzip(&plain);
    lab.serve("/a.img.gz", gz.clone(), Faults::default());
    let mut entry = Entry::compressed("a", "/a.img.gz", &gz, "gzip", &plain);
    entry.decompress = Some("xz");
    lab.write_manifest(&[entry]);
    let run = lab.apply();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.output()
            .contains("xz decompression failed: the download is not xz data: it is gzip data"),
        "{}",
        run.output()
    );
    assert!(
        !run.output().contains("checksum mismatch"),
        "{}",
        run.output()
    );
    assert!(lab.object("test/a.img").is_none());
}

fn publish_one(lab: &Lab, path: &'static str, body: &[u8], faults: Faults) -> Run {
    lab.serve(path, body.to_vec(), faults);
    lab.write_manifest(&[Entry::raw("a", path, body)]);
    lab.apply()
}

/// A link that drops every megabyte still delivers a 12 MiB image: each resume makes progress,
/// so there is no fixed cap on how many are allowed.
#[test]
fn a_link_that_keeps_dropping_resumes_while_it_makes_progress() {
    let lab = Lab::new(Backend::Fs);
    let body = image_bytes(52, 12 * 1024 * 1024);
    let run = publish_one(
        &lab,
        "/flaky.img",
        &body,
        Faults {
            drop_every: Some(1024 * 1024),
            ..Default::default()
        },
    );
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(lab.object("test/a.img").unwrap() == body);
    let resumed = lab.fixture.log().iter().filter(|e| e.status == 206).count();
    assert!(resumed >= 11, "{resumed} resumes");
}

/// A chunked body that stops before its terminating chunk is a dropped transfer (resumed), never
/// a complete one: a checksum list cut short is not read as the whole list.
#[test]
fn a_chunked_body_that_ends_early_is_not_complete() {
    let lab = Lab::new(Backend::Fs);
    let body = image_bytes(53, 6 * 1024 * 1024);
    let run = publish_one(
        &lab,
        "/chunked.img",
        &body,
        Faults {
            chunked: true,
            drop_after: Some(2 * 1024 * 1024),
            ..Default::default()
        },
    );
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(lab.object("test/a.img").unwrap() == body);
    let log = lab.fixture.log();
    assert!(
        log.iter().any(|e| e.status == 206
            && e.range.as_deref() == Some(&format!("bytes={}-", 2 * 1024 * 1024)[..])),
        "{log:?}"
    );

    // A list whose entry for the image would come after the cut.
    let other = image_bytes(54, 1000);
    lab.serve("/b.img", other.clone(), Faults::default());
    let mut list = String::new();
    for i in 0..2000 {
        list.push_str(&format!("{}  filler-{i}.img\n", "0".repeat(64)));
    }
    list.push_str(&format!("{}  b.img\n", sha256(&other).hex()));
    lab.serve(
        "/SUMS",
        list.clone().into_bytes(),
        Faults {
            chunked: true,
            drop_every: Some(64 * 1024),
            ..Default::default()
        },
    );
    lab.write_manifest_text(&format!(
        "{HEADER}{}",
        image(
            "b",
            &lab.fixture.url("/b.img"),
            &format!("file:{}", lab.fixture.url("/SUMS")),
            ""
        )
    ));
    let plan = lab.labctl(&["plan"]);
    assert!(
        plan.stderr.contains("cannot fetch the checksum list"),
        "{}",
        plan.output()
    );
    assert!(
        !plan.output().contains("is not listed"),
        "a list cut short is not the list: {}",
        plan.output()
    );
}

/// The connection drops after the last byte, before the chunked body's end: the resume asks for
/// bytes past the end, the server answers 416 with the length, and the download is complete.
#[test]
fn a_416_at_the_end_completes_the_download() {
    let lab = Lab::new(Backend::Fs);
    let body = image_bytes(55, 3 * 1024 * 1024);
    let run = publish_one(
        &lab,
        "/whole.img",
        &body,
        Faults {
            chunked: true,
            drop_after: Some(3 * 1024 * 1024),
            ..Default::default()
        },
    );
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(lab.object("test/a.img").unwrap() == body);
    assert!(
        lab.fixture.log().iter().any(|e| e.status == 416),
        "{:?}",
        lab.fixture.log()
    );
}

/// A server that asks for patience (503 + Retry-After) gets it.
#[test]
fn retry_after_is_honoured() {
    let lab = Lab::new(Backend::Fs);
    let body = image_bytes(56, 1000);
    let run = publish_one(
        &lab,
        "/busy.img",
        &body,
        Faults {
            fail_first: 1,
            retry_after: Some(2),
            ..Default::default()
        },
    );
    assert_eq!(run.code, 0, "{}", run.output());
    let log: Vec<_> = lab
        .fixture
        .log()
        .into_iter()
        .filter(|e| e.path == "/busy.img" && e.method == "GET")
        .collect();
    assert_eq!(log[0].status, 503);
    // A lower bound, which a sleep always keeps (not a timing measurement).
    assert!(
        log[1].at.duration_since(log[0].at) >= Duration::from_secs(2),
        "retried after {:?}",
        log[1].at.duration_since(log[0].at)
    );
}

/// Redirects are followed (a mirror network's usual 302) and the bytes verified as always.
#[test]
fn redirects_are_followed() {
    let lab = Lab::new(Backend::Fs);
    let body = image_bytes(57, 1000);
    lab.serve("/mirror/a.img", body.clone(), Faults::default());
    lab.fixture
        .redirect("/a.img", &lab.fixture.url("/mirror/a.img"));
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);
    let run = lab.apply();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(lab.object("test/a.img").unwrap() == body);
}

/// A real HTTPS server (Python's, with a CA made here) that redirects the download to plain
/// HTTP: labctl refuses to follow it. The list or signature a downgrade could swap is the
/// checksum the image is verified against.
#[test]
fn a_redirect_from_https_to_http_is_refused() {
    let lab = Lab::new(Backend::Fs);
    let body = image_bytes(58, 1000);
    lab.serve("/a.img", body.clone(), Faults::default());
    let tls = crate::support::vendors::Tls::make(&lab.dir().join("tls"));
    let server = r#"
import http.server, ssl, sys
target = sys.argv[3]
class Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_HEAD = do_GET
    def log_message(self, *args):
        pass
httpd = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", server])
        .arg(&tls.cert)
        .arg(&tls.key)
        .arg(lab.fixture.url(""))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let https = format!("https://127.0.0.1:{}", port.trim());
    lab.write_manifest_text(&format!(
        "{HEADER}{}",
        image(
            "a",
            &format!("{https}/a.img"),
            &sha256(&body).to_string(),
            ""
        )
    ));
    let ca = tls.ca;
    let run = lab.apply_with_env(&[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(
        run.output().contains("labctl never leaves HTTPS"),
        "{}",
        run.output()
    );
    assert!(lab.object("test/a.img").is_none());
    assert!(
        lab.fixture.log().is_empty(),
        "nothing was fetched over plain HTTP: {:?}",
        lab.fixture.log()
    );
}

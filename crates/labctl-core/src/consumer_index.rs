//! The consumer index: what travels inside `images/` so that a synced copy (the NAS) can be
//! checked without the bucket's records — `SHA256SUMS` in GNU coreutils format, its optional
//! minisign signature, and `index.json` for templating tools.
//!
//! Pure: building the index from records, rendering and parsing it, and telling whether the
//! copy in the store is out of date. Writing it is apply's job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checksum::{Algorithm, Checksum};
use crate::layout::IMAGES_PREFIX;
use crate::state::record::CiRun;
use crate::state::{ActualRecord, ObjectState};

pub use crate::layout::{
    is_index_file, is_index_key, JSON_KEY, JSON_NAME, SERVED_STATE_DIR, SIGNATURE_KEY,
    SIGNATURE_NAME, SUMS_KEY, SUMS_NAME,
};

/// Version of the `index.json` format. Additive changes bump the minor version (1.1 added
/// `ci_run`).
pub const FORMAT_VERSION: &str = "1.1";

/// Index files are read whole; anything larger is not one labctl wrote.
pub const MAX_INDEX_BYTES: usize = 64 * 1024 * 1024;

/// One managed object, as `index.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub name: String,
    /// Relative to `images/`: the path on the NAS below the synced folder.
    pub path: String,
    pub size: u64,
    /// Lowercase hex, as in `SHA256SUMS`.
    pub sha256: String,
    /// The checksum the manifest declares for the published bytes (`sha256:…` or `sha512:…`).
    pub checksum: Checksum,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_at: Option<String>,
    /// The labctl that published the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labctl_version: Option<String>,
}

/// `images/index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDocument {
    pub format_version: String,
    pub generated_at: String,
    /// The labctl that wrote the index.
    pub labctl_version: String,
    /// The CI run that published this generation, when apply ran in one: what the NAS's served
    /// folder reports as the generation it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_run: Option<CiRun>,
    /// Sorted by path, like `SHA256SUMS`.
    pub images: Vec<IndexEntry>,
}

/// The index a set of records implies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    pub entries: Vec<IndexEntry>,
    /// Records whose sha256 (or size) is unknown: `(record key, image name)`. Apply reads their
    /// objects back once to learn it.
    pub lacking: Vec<(String, String)>,
}

/// The entries for every readable record whose object is (or may be) present. Unreadable
/// records and records whose object is missing are left out: there is nothing true to say.
pub fn entries(records: &BTreeMap<String, ActualRecord>) -> Entries {
    let (entries, lacking) = implied(records);
    Entries {
        entries: entries.collect(),
        lacking,
    }
}

/// [`entries`] made one at a time, in path order, and the records lacking a sha256 (or size):
/// a plan of tens of thousands of images compares the index without holding it.
pub fn implied(
    records: &BTreeMap<String, ActualRecord>,
) -> (impl Iterator<Item = IndexEntry> + '_, Vec<(String, String)>) {
    let mut lacking = Vec::new();
    let mut listed: Vec<(&str, &crate::state::Record)> = Vec::new();
    for (record_key, r) in records {
        let Ok(record) = &r.record else { continue };
        if matches!(r.object, ObjectState::Missing) {
            continue;
        }
        // Keys come from a listing of the store: one that is not a clean relative key (or that
        // would overwrite the index itself) is never written into the list a NAS trusts.
        let Some(path) = r.object_key.strip_prefix(IMAGES_PREFIX) else {
            continue;
        };
        if crate::layout::check_relative_key(path).is_err() || is_index_file(path) {
            continue;
        }
        if record.sha256().is_none() || record.size().is_none() {
            let name = record.name().unwrap_or(path).to_string();
            lacking.push((record_key.clone(), name));
            continue;
        }
        listed.push((path, record));
    }
    // By path, not by record key: `a+.json` sorts before `a.json`, `a+` after `a`.
    listed.sort_by(|a, b| a.0.cmp(b.0));
    let entries = listed.into_iter().filter_map(|(path, record)| {
        let (uploaded_at, labctl_version) = match record {
            crate::state::Record::Current(c) => {
                (Some(c.uploaded_at.clone()), Some(c.labctl_version.clone()))
            }
            crate::state::Record::Legacy(l) => (l.uploaded_at.clone(), None),
        };
        Some(IndexEntry {
            name: record.name().unwrap_or(path).to_string(),
            path: path.to_string(),
            size: record.size()?,
            sha256: record.sha256()?.hex().to_string(),
            checksum: record.checksum().clone(),
            source_url: record.source_url().map(str::to_string),
            uploaded_at,
            labctl_version,
        })
    });
    (entries, lacking)
}

/// `SHA256SUMS` in the format `sha256sum` writes and `sha256sum -c` reads: `<hex>  <path>`,
/// sorted by path. Keys never hold a backslash or a control character, so no line needs the
/// escaped form coreutils uses for such names.
pub fn sha256sums(entries: &[IndexEntry]) -> String {
    entries.iter().map(sums_line).collect()
}

fn sums_line(e: &IndexEntry) -> String {
    format!("{}  {}\n", e.sha256, e.path)
}

/// The entries are taken, not copied: at tens of thousands of images they are megabytes.
pub fn document(
    entries: Vec<IndexEntry>,
    generated_at: String,
    ci_run: Option<CiRun>,
) -> IndexDocument {
    IndexDocument {
        format_version: FORMAT_VERSION.to_string(),
        generated_at,
        labctl_version: env!("CARGO_PKG_VERSION").to_string(),
        ci_run,
        images: entries,
    }
}

pub fn to_json(doc: &IndexDocument) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(doc).expect("the index always serializes");
    out.push(b'\n');
    out
}

/// One line of a `SHA256SUMS` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumsLine {
    pub sha256: Checksum,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SumsError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("SHA256SUMS is not UTF-8 text")]
    NotText,
    #[error("`{path}` is listed twice (lines {first} and {second})")]
    Duplicate {
        path: String,
        first: usize,
        second: usize,
    },
}

/// Parses `SHA256SUMS` as `sha256sum -c` would (text `  ` and binary ` *` separators, escaped
/// names), refusing paths that could leave the directory it describes.
pub fn parse_sha256sums(bytes: &[u8]) -> Result<Vec<SumsLine>, SumsError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SumsError::NotText)?;
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let fail = |message: String| SumsError::Line { line, message };
        if raw.trim().is_empty() {
            continue;
        }
        let (escaped, rest) = match raw.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let (hex, path) = rest
            .split_once("  ")
            .or_else(|| rest.split_once(" *"))
            .ok_or_else(|| fail("expected `<sha256 hex>  <path>`".into()))?;
        let sha256 = Checksum::new(Algorithm::Sha256, hex)
            .map_err(|_| fail(format!("`{hex}` is not a sha256 digest")))?;
        let path = if escaped {
            unescape(path).ok_or_else(|| fail("invalid escape in the file name".into()))?
        } else {
            path.to_string()
        };
        crate::layout::check_relative_key(&path)
            .map_err(|reason| fail(format!("path `{path}` {reason}")))?;
        if let Some(first) = seen.insert(path.clone(), line) {
            return Err(SumsError::Duplicate {
                path,
                first,
                second: line,
            });
        }
        out.push(SumsLine { sha256, path });
    }
    Ok(out)
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            _ => return None,
        }
    }
    Some(out)
}

pub use crate::state::{IndexFiles, JsonFound};

/// The index files as the store holds them (`None` where absent), reduced to what
/// [`staleness`] compares.
pub fn found(sums: Option<&[u8]>, json: Option<&[u8]>, signature: Option<Vec<u8>>) -> IndexFiles {
    IndexFiles {
        sums: sums.map(sha256_of),
        json: json.map(
            |bytes| match serde_json::from_slice::<IndexDocument>(bytes) {
                Ok(d) if d.format_version.split('.').next() == FORMAT_VERSION.split('.').next() => {
                    JsonFound::Images(images_digest(&d.images))
                }
                _ => JsonFound::Other,
            },
        ),
        signature,
    }
}

fn sha256_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// The sha256 of `entries` as a compact JSON array, written as it is hashed: equal entries,
/// equal digest, whatever else the document around them says.
pub fn images_digest<E: std::borrow::Borrow<IndexEntry>>(
    entries: impl IntoIterator<Item = E>,
) -> [u8; 32] {
    let mut json = ArrayDigest::default();
    for e in entries {
        json.push(e.borrow());
    }
    json.finish()
}

/// The sha256 of a compact JSON array (as `serde_json` writes a whole one), fed an element at
/// a time.
#[derive(Default)]
struct ArrayDigest {
    hash: HashWriter,
    len: usize,
}

impl ArrayDigest {
    fn push(&mut self, entry: &IndexEntry) {
        sha2::Digest::update(&mut self.hash.0, if self.len == 0 { b"[" } else { b"," });
        serde_json::to_writer(&mut self.hash, entry).expect("index entries serialize");
        self.len += 1;
    }

    fn finish(mut self) -> [u8; 32] {
        sha2::Digest::update(&mut self.hash.0, if self.len == 0 { "[]" } else { "]" });
        sha2::Digest::finalize(self.hash.0).into()
    }
}

#[derive(Default)]
struct HashWriter(sha2::Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why the index `found` in the store is not the one `entries` (in path order) make: one
/// reason per file; empty when it is. `public_key` is the manifest's
/// `spec.index.signing.minisign.publicKey`. One pass over the entries, none of them held.
pub fn staleness<E: std::borrow::Borrow<IndexEntry>>(
    entries: impl IntoIterator<Item = E>,
    found: &IndexFiles,
    public_key: Option<&str>,
) -> Vec<String> {
    let mut sums = sha2::Sha256::default();
    let mut json = ArrayDigest::default();
    // The text itself only for a signature to check.
    let mut sums_text = (public_key.is_some() && found.signature.is_some()).then(String::new);
    for e in entries {
        let e = e.borrow();
        let line = sums_line(e);
        sha2::Digest::update(&mut sums, line.as_bytes());
        if let Some(text) = &mut sums_text {
            text.push_str(&line);
        }
        json.push(e);
    }
    let (sums, json): ([u8; 32], _) = (sha2::Digest::finalize(sums).into(), json.finish());

    let mut reasons = Vec::new();
    match &found.sums {
        None => reasons.push(format!("{SUMS_KEY} is missing")),
        Some(digest) if *digest != sums => reasons.push(format!(
            "{SUMS_KEY} does not list exactly the managed objects"
        )),
        Some(_) => {}
    }
    match &found.json {
        None => reasons.push(format!("{JSON_KEY} is missing")),
        Some(JsonFound::Images(digest)) if *digest == json => {}
        Some(_) => reasons.push(format!("{JSON_KEY} is out of date")),
    }
    match (public_key, &found.signature) {
        (Some(_), None) => reasons.push(format!("{SIGNATURE_KEY} is missing")),
        (Some(key), Some(sig)) => {
            let text = sums_text.unwrap_or_default();
            if !signature_verifies(key, text.as_bytes(), sig) {
                reasons.push(format!(
                    "{SIGNATURE_KEY} does not verify with spec.index.signing.minisign.publicKey"
                ));
            }
        }
        (None, Some(_)) => reasons.push(format!(
            "signing is not configured: {SIGNATURE_KEY} is deleted"
        )),
        (None, None) => {}
    }
    reasons
}

/// Whether `signature` (a `.minisig` file) is a valid signature of `data` by `public_key`.
pub fn signature_verifies(public_key: &str, data: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = minisign_verify::PublicKey::from_base64(public_key.trim()) else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(signature) else {
        return false;
    };
    let Ok(sig) = minisign_verify::Signature::decode(text) else {
        return false;
    };
    key.verify(data, &sig, false).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::record::{parse, Record};

    fn entry(path: &str, content: &[u8]) -> IndexEntry {
        IndexEntry {
            name: path.replace('/', "-"),
            path: path.into(),
            size: content.len() as u64,
            sha256: Checksum::sha256(content).hex().to_string(),
            checksum: Checksum::sha256(content),
            source_url: Some(format!("https://vendor.example/{path}")),
            uploaded_at: Some("2026-11-26T10:00:00Z".into()),
            labctl_version: Some("0.1.0".into()),
        }
    }

    fn actual(destination: &str, json: &str, object: ObjectState) -> (String, ActualRecord) {
        let record_key = crate::layout::record_key(destination);
        (
            record_key.clone(),
            ActualRecord {
                record_key,
                object_key: crate::layout::object_key(destination),
                etag: "\"e\"".into(),
                record: parse(json.as_bytes()).map_err(Into::into),
                object,
                listed: None,
                object_listed: None,
            },
        )
    }

    #[test]
    fn sums_are_gnu_format_sorted_by_path() {
        let a = entry("talos/a.raw", b"a");
        let b = entry("vyos/b.iso", b"b");
        let text = sha256sums(&[a.clone(), b.clone()]);
        assert_eq!(
            text,
            format!("{}  talos/a.raw\n{}  vyos/b.iso\n", a.sha256, b.sha256)
        );
        let parsed = parse_sha256sums(text.as_bytes()).unwrap();
        assert_eq!(parsed[1].path, "vyos/b.iso");
        assert_eq!(parsed[1].sha256, Checksum::sha256(b"b"));
    }

    #[test]
    fn escaped_lines_are_read_and_judged_by_their_name() {
        let hex = Checksum::sha256(b"x").hex().to_string();
        let plain = parse_sha256sums(format!("\\{hex}  a\\nb\n").as_bytes());
        assert!(plain.is_err(), "a newline in a name is refused: {plain:?}");
        let fine = parse_sha256sums(format!("\\{hex}  ab\n").as_bytes()).unwrap();
        assert_eq!(fine[0].path, "ab");
    }

    #[test]
    fn hostile_sums_are_refused() {
        let hex = Checksum::sha256(b"x").hex().to_string();
        for bad in [
            format!("{hex}  ../etc/passwd\n"),
            format!("{hex}  /etc/passwd\n"),
            format!("{hex}  a//b\n"),
            "abc  file\n".to_string(),
            "no separator\n".to_string(),
            format!("{hex}  a\n{hex}  a\n"),
        ] {
            assert!(parse_sha256sums(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(parse_sha256sums(&[0xff, 0xfe]), Err(SumsError::NotText));
        // Binary-mode lines (`sha256sum -b`) are read too.
        assert_eq!(
            parse_sha256sums(format!("{hex} *a.raw\n").as_bytes()).unwrap()[0].path,
            "a.raw"
        );
    }

    #[test]
    fn entries_come_from_readable_records_with_present_objects() {
        let sha = Checksum::sha256(b"a");
        let sha512 = Checksum::of_bytes(Algorithm::Sha512, b"b");
        let records = BTreeMap::from([
            actual(
                "t/a.raw",
                &format!(
                    r#"{{"name":"a","checksum":"{sha}","size":1,"uploadedAt":"2026-01-01T00:00:00Z","source":"https://v/a"}}"#
                ),
                ObjectState::NotChecked,
            ),
            actual(
                "t/b.raw",
                &format!(r#"{{"name":"b","checksum":"{sha512}","size":1}}"#),
                ObjectState::NotChecked,
            ),
            actual(
                "t/gone.raw",
                &format!(r#"{{"name":"gone","checksum":"{sha}","size":1}}"#),
                ObjectState::Missing,
            ),
            actual("t/bad.raw", "{", ObjectState::NotChecked),
            // A record whose key would overwrite the index never enters it.
            actual(
                "SHA256SUMS",
                &format!(r#"{{"name":"sneaky","checksum":"{sha}","size":1}}"#),
                ObjectState::NotChecked,
            ),
        ]);
        let e = entries(&records);
        assert_eq!(e.entries.len(), 1);
        assert_eq!(e.entries[0].path, "t/a.raw");
        assert_eq!(e.entries[0].sha256, sha.hex());
        assert_eq!(e.entries[0].source_url.as_deref(), Some("https://v/a"));
        assert_eq!(
            e.lacking,
            vec![("metadata/t/b.raw.json".to_string(), "b".to_string())]
        );
        assert!(matches!(
            &records["metadata/t/a.raw.json"].record,
            Ok(Record::Legacy(_))
        ));
    }

    #[test]
    fn the_images_digest_is_that_of_the_array_serde_json_writes() {
        use sha2::Digest as _;
        for entries in [
            vec![],
            vec![entry("a.raw", b"a")],
            vec![entry("a.raw", b"a"), entry("b/c.raw", b"c")],
        ] {
            let whole: [u8; 32] =
                sha2::Sha256::digest(serde_json::to_vec(&entries).unwrap()).into();
            assert_eq!(images_digest(&entries), whole, "{} entries", entries.len());
        }
    }

    #[test]
    fn staleness_names_each_file() {
        let entries = vec![entry("a.raw", b"a")];
        let json = |generated_at: &str, version: &str| {
            let mut doc = document(entries.clone(), generated_at.into(), None);
            doc.format_version = version.into();
            to_json(&doc)
        };
        let sums = sha256sums(&entries);
        let fresh = found(
            Some(sums.as_bytes()),
            Some(&json("2026-11-26T00:00:00Z", FORMAT_VERSION)),
            None,
        );
        assert!(staleness(&entries, &fresh, None).is_empty());
        // Neither the generation time nor a newer minor version makes the index out of date.
        for (at, version) in [
            ("2027-01-01T00:00:00Z", FORMAT_VERSION),
            ("2026-11-26T00:00:00Z", "1.9"),
        ] {
            let later = found(Some(sums.as_bytes()), Some(&json(at, version)), None);
            assert!(
                staleness(&entries, &later, None).is_empty(),
                "{at} {version}"
            );
        }
        // Another major version, a document that is not an index, other entries: out of date.
        let other = vec![entry("b.raw", b"b")];
        for json in [
            json("2026-11-26T00:00:00Z", "2.0"),
            b"{not json".to_vec(),
            to_json(&document(
                other.clone(),
                "2026-11-26T00:00:00Z".into(),
                None,
            )),
        ] {
            let stale = found(Some(sums.as_bytes()), Some(&json), None);
            assert_eq!(
                staleness(&entries, &stale, None),
                ["images/index.json is out of date"]
            );
        }

        let reasons = staleness(&entries, &IndexFiles::default(), None);
        assert_eq!(
            reasons,
            [
                "images/SHA256SUMS is missing",
                "images/index.json is missing"
            ]
        );
        let other = vec![entry("a.raw", b"changed")];
        let reasons = staleness(&other, &fresh, None);
        assert_eq!(
            reasons,
            [
                "images/SHA256SUMS does not list exactly the managed objects",
                "images/index.json is out of date"
            ]
        );

        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let public = pair.pk.to_base64();
        assert_eq!(
            staleness(&entries, &fresh, Some(&public)),
            ["images/SHA256SUMS.minisig is missing"]
        );
        let sig = minisign::sign(
            Some(&pair.pk),
            &pair.sk,
            std::io::Cursor::new(sha256sums(&entries)),
            None,
            None,
        )
        .unwrap()
        .to_string();
        let mut signed = fresh.clone();
        signed.signature = Some(sig.into_bytes());
        assert!(staleness(&entries, &signed, Some(&public)).is_empty());
        let other_key = minisign::KeyPair::generate_unencrypted_keypair()
            .unwrap()
            .pk
            .to_base64();
        assert_eq!(
            staleness(&entries, &signed, Some(&other_key)),
            ["images/SHA256SUMS.minisig does not verify with spec.index.signing.minisign.publicKey"]
        );
        assert_eq!(
            staleness(&entries, &signed, None),
            ["signing is not configured: images/SHA256SUMS.minisig is deleted"]
        );
    }
}

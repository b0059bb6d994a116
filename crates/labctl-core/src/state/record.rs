//! State records: one JSON document per published object, under `metadata/<destination>.json`.
//!
//! The reader also accepts records written by the earlier sync tool (no `schemaVersion`), so a
//! bucket it filled can be adopted without re-uploading anything.

use std::borrow::Cow;

use crate::hint::Hint;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;
use crate::spec::{NormalizedSpec, SpecSource};

pub const SCHEMA_VERSION: u32 = 1;

/// Records are small; refusing huge ones keeps a corrupted bucket from exhausting memory.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRecord {
    pub schema_version: u32,
    pub name: String,
    /// The object key, relative to the store prefix (`images/…`).
    pub key: String,
    /// Checksum of the stored bytes, in the algorithm the manifest declares.
    pub checksum: Checksum,
    pub size: u64,
    /// sha256 of the stored bytes, whatever the declared algorithm: what the consumer index
    /// (`images/SHA256SUMS`) lists. Absent in records written before it existed; apply fills it
    /// in by reading the object back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Checksum>,
    pub fingerprint: Checksum,
    /// The object's ETag right after labctl wrote it (drift compares it with a HEAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_etag: Option<String>,
    pub spec: NormalizedSpec,
    pub source: RecordSource,
    /// Checksum of each dependency's object when this one was produced.
    #[serde(default)]
    pub dependencies: BTreeMap<String, Checksum>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protect: bool,
    pub uploaded_at: String,
    pub labctl_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_run: Option<CiRun>,
    /// Earlier bytes of this image kept under `history/` (`history: N`), newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// One earlier version of an image, kept by a server-side copy before it was replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// In the algorithm the manifest declared when these bytes were published.
    pub checksum: Checksum,
    pub sha256: Checksum,
    /// `history/<destination>/<sha256 hex>`
    pub key: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// When these bytes were first published.
    pub uploaded_at: String,
    /// When they were moved into the history.
    pub kept_at: String,
}

/// Where the bytes came from, as acquired (non-secret values only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordSource {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Checksum of the downloaded bytes (before decompression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// The checksum list `checksum` was taken from, when the manifest names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_list: Option<String>,
    /// The signature that was verified, with the key that verified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::spec::SpecSignature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decompress: Option<crate::manifest::Compression>,
    /// What the server said about the download (`Content-Length`, `ETag`, `Last-Modified`), so
    /// `drift --check-sources` can tell when the vendor replaced or removed the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_hash: Option<Checksum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packer_version: Option<String>,
    /// The download's facts (`size`, `etag`, `lastModified`) and the Packer version are lost:
    /// the object was adopted after an interrupted run, from an object that did not carry them.
    /// `drift --check-sources` reports such an image as `source-unknown`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub facts_unknown: bool,
}

impl RecordSource {
    /// The facts as an object carries them in its metadata.
    pub fn facts(&self) -> crate::object::SourceFacts {
        crate::object::SourceFacts {
            size: self.size,
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            packer_version: self.packer_version.clone(),
            lost: self.facts_unknown,
        }
    }

    /// Takes the facts an adopted object carried; without them, says they are lost.
    pub fn set_facts(&mut self, facts: Option<crate::object::SourceFacts>) {
        match facts {
            Some(f) => {
                self.size = f.size;
                self.etag = f.etag;
                self.last_modified = f.last_modified;
                self.packer_version = f.packer_version;
                self.facts_unknown = false;
            }
            None => self.facts_unknown = true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiRun {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl CiRun {
    /// A GitHub Actions run: `GITHUB_RUN_ID`, with its URL when the server and repository are
    /// known.
    pub fn github(id: String, server: Option<&str>, repository: Option<&str>) -> CiRun {
        let url = match (server, repository) {
            (Some(server), Some(repo)) => Some(format!("{server}/{repo}/actions/runs/{id}")),
            _ => None,
        };
        CiRun { id, url }
    }
}

/// A record written by the earlier sync tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyRecord {
    pub name: Option<String>,
    pub checksum: Checksum,
    /// Added by labctl when it computed it for the consumer index.
    pub sha256: Option<Checksum>,
    pub size: Option<u64>,
    pub uploaded_at: Option<String>,
    pub source_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Current(Box<StateRecord>),
    Legacy(LegacyRecord),
}

impl Record {
    pub fn name(&self) -> Option<&str> {
        match self {
            Record::Current(r) => Some(&r.name),
            Record::Legacy(l) => l.name.as_deref(),
        }
    }

    pub fn checksum(&self) -> &Checksum {
        match self {
            Record::Current(r) => &r.checksum,
            Record::Legacy(l) => &l.checksum,
        }
    }

    pub fn size(&self) -> Option<u64> {
        match self {
            Record::Current(r) => Some(r.size),
            Record::Legacy(l) => l.size,
        }
    }

    pub fn uploaded_at(&self) -> Option<&str> {
        match self {
            Record::Current(r) => Some(&r.uploaded_at),
            Record::Legacy(l) => l.uploaded_at.as_deref(),
        }
    }

    pub fn protect(&self) -> bool {
        matches!(self, Record::Current(r) if r.protect)
    }

    /// The sha256 of the stored bytes, when the record knows it.
    pub fn sha256(&self) -> Option<Checksum> {
        let (checksum, sha256) = match self {
            Record::Current(r) => (&r.checksum, &r.sha256),
            Record::Legacy(l) => (&l.checksum, &l.sha256),
        };
        match checksum.algorithm {
            crate::checksum::Algorithm::Sha256 => Some(checksum.clone()),
            crate::checksum::Algorithm::Sha512 => sha256.clone(),
        }
    }

    pub fn source_url(&self) -> Option<&str> {
        match self {
            Record::Current(r) => r.source.url.as_deref(),
            Record::Legacy(l) => l.source_url.as_deref(),
        }
    }

    /// How an object differs from what this record says was published: the one definition of
    /// "modified outside labctl", shared by plan (a replace) and drift (a finding).
    pub fn differences_from(&self, meta: &crate::object::ObjectMeta) -> Vec<String> {
        use crate::object::{META_CHECKSUM, META_FINGERPRINT};
        let mut out = Vec::new();
        if let Some(size) = self.size() {
            if size != meta.size {
                out.push(format!("size {size} → {}", meta.size));
            }
        }
        if let Record::Current(rec) = self {
            if let Some(etag) = &rec.object_etag {
                if *etag != meta.etag {
                    out.push(format!("ETag {etag} → {}", meta.etag));
                }
            }
            let checksum = rec.checksum.to_string();
            match meta.user_metadata.get(META_CHECKSUM) {
                Some(c) if *c == checksum => {}
                Some(c) => out.push(format!("labctl-checksum {checksum} → {c}")),
                None => out.push("labctl-checksum metadata missing".into()),
            }
            let fingerprint = rec.fingerprint.to_string();
            match meta.user_metadata.get(META_FINGERPRINT) {
                Some(f) if *f == fingerprint => {}
                Some(_) => out.push("labctl-fingerprint differs".into()),
                None => out.push("labctl-fingerprint metadata missing".into()),
            }
        }
        out
    }

    pub fn history(&self) -> &[HistoryEntry] {
        match self {
            Record::Current(r) => &r.history,
            Record::Legacy(_) => &[],
        }
    }
}

/// Adds the sha256 (and, for records that lack it, the size) that reading the object back
/// produced to a record's JSON, leaving every other field as it was.
pub fn with_sha256(bytes: &[u8], sha256: &Checksum, size: u64) -> Result<Vec<u8>, RecordError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| RecordError::NotJson(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| RecordError::Invalid("a record is a JSON object".into()))?;
    object.insert(
        "sha256".into(),
        serde_json::Value::String(sha256.to_string()),
    );
    object
        .entry("size")
        .or_insert(serde_json::Value::from(size));
    let mut out = serde_json::to_vec_pretty(&value).expect("JSON values serialize");
    out.push(b'\n');
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is {0} bytes; records are at most 1 MiB")]
    TooLarge(usize),
    #[error("record is not valid JSON: {0}")]
    NotJson(String),
    #[error("record has schemaVersion {0}, which this labctl does not know")]
    NewerSchema(u64),
    #[error("record does not match schema version 1: {0}")]
    Invalid(String),
    #[error("legacy record has no valid `checksum`: {0}")]
    LegacyWithoutChecksum(String),
}

impl Hint for RecordError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        let hint = match self {
            RecordError::NewerSchema(_) => {
                Some("a newer labctl wrote it; upgrade labctl before planning against this store")
            }
            _ => None,
        };
        hint.map(Cow::Borrowed)
    }
}

pub fn parse(bytes: &[u8]) -> Result<Record, RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge(bytes.len()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| RecordError::NotJson(e.to_string()))?;
    match value.get("schemaVersion") {
        Some(v) => match v.as_u64() {
            Some(1) => {
                let r = serde_json::from_value::<StateRecord>(value)
                    .map_err(|e| RecordError::Invalid(e.to_string()))?;
                let mut sha256s = r.sha256.iter().chain(r.history.iter().map(|h| &h.sha256));
                if sha256s.any(|c| c.algorithm != crate::checksum::Algorithm::Sha256) {
                    return Err(RecordError::Invalid(
                        "a `sha256` field holds another algorithm's digest".into(),
                    ));
                }
                Ok(Record::Current(Box::new(r)))
            }
            Some(n) => Err(RecordError::NewerSchema(n)),
            None => Err(RecordError::Invalid(format!(
                "schemaVersion must be a number, found {v}"
            ))),
        },
        None => parse_legacy(&value).map(Record::Legacy),
    }
}

fn parse_legacy(value: &serde_json::Value) -> Result<LegacyRecord, RecordError> {
    let text = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let raw =
        text("checksum").ok_or_else(|| RecordError::LegacyWithoutChecksum("missing".into()))?;
    // The earlier tool wrote bare hex as well as prefixed digests; the length tells which.
    let checksum = if raw.contains(':') {
        raw.parse()
    } else if raw.len() == 128 {
        Checksum::new(crate::checksum::Algorithm::Sha512, &raw)
    } else {
        Checksum::new(crate::checksum::Algorithm::Sha256, &raw)
    }
    .map_err(|e| RecordError::LegacyWithoutChecksum(e.to_string()))?;
    let source_url = match value.get("source") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(obj @ serde_json::Value::Object(_)) => {
            obj.get("url").and_then(|u| u.as_str()).map(str::to_string)
        }
        _ => None,
    };
    Ok(LegacyRecord {
        name: text("name"),
        sha256: text("sha256")
            .and_then(|s| s.parse::<Checksum>().ok())
            .filter(|c| c.algorithm == crate::checksum::Algorithm::Sha256),
        checksum,
        size: value.get("size").and_then(|v| v.as_u64()),
        uploaded_at: text("uploadedAt"),
        source_url,
    })
}

/// What a record says about its source, derived from the spec that produced the object.
pub fn source_of(spec: &NormalizedSpec) -> RecordSource {
    match &spec.source {
        SpecSource::Http {
            url,
            checksum,
            decompress,
            signature,
        } => RecordSource {
            signature: signature.clone(),
            kind: "http".into(),
            url: Some(url.clone()),
            checksum: checksum.digest().cloned(),
            checksum_list: checksum.list_url().map(str::to_string),
            decompress: *decompress,
            ..Default::default()
        },
        SpecSource::Packer {
            path,
            variables,
            artifact,
            template_hash,
        } => RecordSource {
            kind: "packer".into(),
            path: Some(path.clone()),
            variables: variables.clone(),
            artifact: Some(artifact.clone()),
            template_hash: Some(template_hash.clone()),
            ..Default::default()
        },
    }
}

/// The record written after publishing the object `spec` describes.
pub fn new_record(
    spec: &NormalizedSpec,
    checksum: Checksum,
    size: u64,
    dependencies: BTreeMap<String, Checksum>,
    uploaded_at: String,
) -> StateRecord {
    StateRecord {
        schema_version: SCHEMA_VERSION,
        name: spec.name.clone(),
        key: crate::layout::object_key(&spec.destination),
        sha256: (checksum.algorithm == crate::checksum::Algorithm::Sha256)
            .then(|| checksum.clone()),
        checksum,
        size,
        fingerprint: spec.fingerprint(&dependencies),
        object_etag: None,
        spec: spec.clone(),
        source: source_of(spec),
        dependencies,
        protect: spec.protect,
        uploaded_at,
        labctl_version: env!("CARGO_PKG_VERSION").to_string(),
        // Apply adds the CI run it knows of when it writes the record.
        ci_run: None,
        history: Vec::new(),
    }
}

pub fn to_json(record: &StateRecord) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(record).expect("records always serialize");
    out.push(b'\n');
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> StateRecord {
        let checksum = Checksum::sha256(b"bytes");
        StateRecord {
            schema_version: SCHEMA_VERSION,
            name: "vyos-gateway".into(),
            key: "images/vyos/gw.raw".into(),
            checksum: checksum.clone(),
            sha256: Some(checksum.clone()),
            size: 5,
            fingerprint: Checksum::sha256(b"fp"),
            object_etag: Some("\"abc\"".into()),
            spec: NormalizedSpec {
                name: "vyos-gateway".into(),
                destination: "vyos/gw.raw".into(),
                source: SpecSource::Packer {
                    path: "packer/gw".into(),
                    variables: BTreeMap::from([("iso_url".into(), "{{ images.iso.url }}".into())]),
                    artifact: "output/gw.raw".into(),
                    template_hash: Checksum::sha256(b"tpl"),
                },
                expected: None,
                depends_on: vec!["iso".into()],
                protect: true,
                history: 2,
            },
            source: RecordSource {
                kind: "packer".into(),
                path: Some("packer/gw".into()),
                packer_version: Some("1.11.2".into()),
                ..Default::default()
            },
            dependencies: BTreeMap::from([("iso".into(), Checksum::sha256(b"iso"))]),
            protect: true,
            uploaded_at: "2026-11-26T09:00:00Z".into(),
            labctl_version: "0.1.0".into(),
            ci_run: Some(CiRun {
                id: "42".into(),
                url: None,
            }),
            history: vec![HistoryEntry {
                checksum: Checksum::sha256(b"old"),
                sha256: Checksum::sha256(b"old"),
                key: format!("history/vyos/gw.raw/{}", Checksum::sha256(b"old").hex()),
                size: 3,
                source_url: None,
                uploaded_at: "2026-11-01T09:00:00Z".into(),
                kept_at: "2026-11-26T09:00:00Z".into(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let record = sample();
        let bytes = to_json(&record);
        assert_eq!(parse(&bytes).unwrap(), Record::Current(Box::new(record)));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"schemaVersion\": 1"), "{text}");
        assert!(text.contains("\"uploadedAt\""), "{text}");
    }

    #[test]
    fn legacy_records_are_read() {
        let hex = Checksum::sha256(b"x").hex().to_string();
        let json = format!(
            r#"{{"name":"talos","checksum":"{hex}","size":12,"uploadedAt":"2025-12-20T10:00:00Z","source":"https://f/a.raw.xz"}}"#
        );
        let Record::Legacy(l) = parse(json.as_bytes()).unwrap() else {
            panic!("expected legacy")
        };
        assert_eq!(l.checksum, Checksum::sha256(b"x"));
        assert_eq!(l.size, Some(12));
        assert_eq!(l.source_url.as_deref(), Some("https://f/a.raw.xz"));

        let json = format!(
            r#"{{"name":"t","checksum":"sha256:{hex}","source":{{"type":"http","url":"https://u"}}}}"#
        );
        let Record::Legacy(l) = parse(json.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(l.source_url.as_deref(), Some("https://u"));
    }

    #[test]
    fn sha256_is_the_checksum_or_the_added_field() {
        let mut record = sample();
        record.sha256 = None;
        assert_eq!(
            Record::Current(Box::new(record.clone())).sha256(),
            Some(record.checksum.clone())
        );
        record.checksum = Checksum::of_bytes(crate::checksum::Algorithm::Sha512, b"bytes");
        assert_eq!(Record::Current(Box::new(record.clone())).sha256(), None);

        let added = with_sha256(&to_json(&record), &Checksum::sha256(b"bytes"), 99).unwrap();
        let back = parse(&added).unwrap();
        assert_eq!(back.sha256(), Some(Checksum::sha256(b"bytes")));
        assert_eq!(back.size(), Some(5), "an existing size is kept");

        let legacy = format!(
            r#"{{"name":"old","checksum":"{}"}}"#,
            Checksum::of_bytes(crate::checksum::Algorithm::Sha512, b"x")
        );
        let added = with_sha256(legacy.as_bytes(), &Checksum::sha256(b"x"), 1).unwrap();
        let Record::Legacy(l) = parse(&added).unwrap() else {
            panic!("still a legacy record")
        };
        assert_eq!(l.sha256, Some(Checksum::sha256(b"x")));
        assert_eq!(l.size, Some(1), "a missing size is filled in");
    }

    #[test]
    fn a_sha256_field_must_hold_a_sha256() {
        let mut record = sample();
        record.sha256 = Some(Checksum::of_bytes(crate::checksum::Algorithm::Sha512, b"x"));
        assert!(matches!(
            parse(&to_json(&record)),
            Err(RecordError::Invalid(_))
        ));
        let mut record = sample();
        record.history[0].sha256 = Checksum::of_bytes(crate::checksum::Algorithm::Sha512, b"x");
        assert!(matches!(
            parse(&to_json(&record)),
            Err(RecordError::Invalid(_))
        ));
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        assert!(matches!(parse(b"{"), Err(RecordError::NotJson(_))));
        assert!(matches!(
            parse(br#"{"schemaVersion":2}"#),
            Err(RecordError::NewerSchema(2))
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"name":"x"}"#),
            Err(RecordError::Invalid(_))
        ));
        assert!(matches!(
            parse(br#"{"name":"x"}"#),
            Err(RecordError::LegacyWithoutChecksum(_))
        ));
        assert!(matches!(
            parse(&vec![b' '; MAX_RECORD_BYTES + 1]),
            Err(RecordError::TooLarge(_))
        ));
    }
}

//! The normalized desired spec of one image and its fingerprint.
//!
//! The normalized spec is what a state record keeps of the manifest entry that produced an object,
//! so a later plan can say field by field what changed. The fingerprint condenses everything that
//! determines the published bytes: the spec without its metadata-only fields, plus the checksums
//! of the dependencies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;
use crate::manifest::model::{Compression, Image, Source, SourceChecksum};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NormalizedSpec {
    pub name: String,
    pub destination: String,
    pub source: SpecSource,
    /// The checksum the published object must have; absent when only known after apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Checksum>,
    /// Every dependency, from `dependsOn` and references, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub protect: bool,
    /// How many earlier versions of the object to keep under `history/` (`history: N`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub history: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SpecSource {
    Http {
        url: String,
        /// `sha256:…`, `sha512:…` or `file:<url>`.
        checksum: SpecChecksum,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decompress: Option<Compression>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<SpecSignature>,
    },
    #[serde(rename_all = "camelCase")]
    Packer {
        path: String,
        /// As written in the manifest (references unresolved; secrets never appear here).
        #[serde(default)]
        variables: BTreeMap<String, String>,
        artifact: String,
        /// Digest of the template directory's files.
        template_hash: Checksum,
    },
}

/// What the download must hash to, as the spec records it: on the wire the manifest's text
/// (`sha256:…`, `sha512:…`, `file:<url>`), so plans, records and fingerprints are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum SpecChecksum {
    Digest(Checksum),
    /// Looked up by file name in the checksum list at `url` when the image is acquired.
    List {
        url: String,
    },
    /// A text this labctl does not know (written by another version): kept as it is, compared
    /// as text, and never acquired.
    Unrecognized(String),
}

impl SpecChecksum {
    pub fn of(manifest: &SourceChecksum) -> SpecChecksum {
        match manifest {
            SourceChecksum::Digest(c) => SpecChecksum::Digest(c.clone()),
            SourceChecksum::List { url } => SpecChecksum::List { url: url.clone() },
            // Refused by validation outside `labctl pin`, which makes no spec.
            SourceChecksum::Pin => SpecChecksum::Unrecognized("pin".into()),
        }
    }

    /// The pinned checksum, when there is one.
    pub fn digest(&self) -> Option<&Checksum> {
        match self {
            SpecChecksum::Digest(c) => Some(c),
            _ => None,
        }
    }

    /// The checksum list's URL, when the checksum is looked up in one.
    pub fn list_url(&self) -> Option<&str> {
        match self {
            SpecChecksum::List { url } => Some(url),
            _ => None,
        }
    }
}

impl std::fmt::Display for SpecChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecChecksum::Digest(c) => write!(f, "{c}"),
            SpecChecksum::List { url } => write!(f, "file:{url}"),
            SpecChecksum::Unrecognized(text) => f.write_str(text),
        }
    }
}

impl From<String> for SpecChecksum {
    fn from(text: String) -> SpecChecksum {
        if let Some(url) = text.strip_prefix("file:") {
            return SpecChecksum::List {
                url: url.to_string(),
            };
        }
        match text.parse::<Checksum>() {
            // Only a text that reads back the same: the wire form never changes.
            Ok(c) if c.to_string() == text => SpecChecksum::Digest(c),
            _ => SpecChecksum::Unrecognized(text),
        }
    }
}

impl From<SpecChecksum> for String {
    fn from(c: SpecChecksum) -> String {
        c.to_string()
    }
}

/// A source signature as the spec records it: the key by its value (minisign) or fingerprint
/// (OpenPGP), so rotating a key shows in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SpecSignature {
    #[serde(rename_all = "camelCase")]
    Minisign { url: String, public_key: String },
    #[serde(rename_all = "camelCase")]
    Pgp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        key_fingerprint: String,
    },
}

impl NormalizedSpec {
    /// `template_hash` is required for Packer images (it is read from disk by the caller).
    pub fn of(image: &Image, template_hash: Option<&Checksum>) -> NormalizedSpec {
        let source = match &image.source {
            Source::Http(h) => SpecSource::Http {
                url: h.url.clone(),
                checksum: SpecChecksum::of(&h.checksum),
                decompress: h.decompress,
                signature: h.signature.as_ref().map(|s| match s {
                    crate::manifest::Signature::Minisign { url, public_key } => {
                        SpecSignature::Minisign {
                            url: url.clone(),
                            public_key: public_key.clone(),
                        }
                    }
                    crate::manifest::Signature::Pgp {
                        url, fingerprint, ..
                    } => SpecSignature::Pgp {
                        url: url.clone(),
                        key_fingerprint: fingerprint.clone(),
                    },
                }),
            },
            Source::Packer(p) => SpecSource::Packer {
                path: p.path.clone(),
                variables: p.variables.clone(),
                artifact: p.artifact.clone(),
                template_hash: template_hash
                    .cloned()
                    .expect("packer images need a template hash"),
            },
        };
        NormalizedSpec {
            name: image.name.clone(),
            destination: image.destination.clone(),
            source,
            expected: image.published_checksum(),
            depends_on: image.dependencies(),
            protect: image.protect,
            history: image.history,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("specs always serialize")
    }

    /// Hash of what determines the published bytes. `name`, `protect` and `history` are left
    /// out: renaming, protecting or keeping history of an image does not change its object.
    pub fn fingerprint(&self, dependencies: &BTreeMap<String, Checksum>) -> Checksum {
        #[derive(Serialize)]
        struct Content<'a> {
            destination: &'a str,
            source: &'a SpecSource,
            expected: &'a Option<Checksum>,
            dependencies: &'a BTreeMap<String, Checksum>,
        }
        let content = Content {
            destination: &self.destination,
            source: &self.source,
            expected: &self.expected,
            dependencies,
        };
        Checksum::sha256(&serde_json::to_vec(&content).expect("serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::model::*;

    /// Specs are kept in records and hashed into fingerprints: their JSON must read back to
    /// the very same bytes, whatever a record written by another version holds.
    #[test]
    fn source_checksums_and_compression_keep_their_wire_text() {
        let hex = "0".repeat(64);
        for (text, typed) in [
            (
                format!("sha256:{hex}"),
                SpecChecksum::Digest(format!("sha256:{hex}").parse().unwrap()),
            ),
            (
                "file:https://v/SHA256SUMS".to_string(),
                SpecChecksum::List {
                    url: "https://v/SHA256SUMS".into(),
                },
            ),
            (
                "md5:abc".to_string(),
                SpecChecksum::Unrecognized("md5:abc".into()),
            ),
            (
                format!("SHA256:{hex}"),
                SpecChecksum::Unrecognized(format!("SHA256:{hex}")),
            ),
        ] {
            let json = format!(
                r#"{{"type":"http","url":"https://v/a.iso","checksum":"{text}","decompress":"zstd"}}"#
            );
            let source: SpecSource = serde_json::from_str(&json).unwrap();
            let SpecSource::Http {
                checksum,
                decompress,
                ..
            } = &source
            else {
                panic!("{source:?}")
            };
            assert_eq!(checksum, &typed);
            assert_eq!(*decompress, Some(Compression::Zstd));
            assert_eq!(serde_json::to_string(&source).unwrap(), json);
        }
        let unknown = r#"{"type":"http","url":"u","checksum":"x","decompress":"lz4"}"#;
        let e = serde_json::from_str::<SpecSource>(unknown).unwrap_err();
        assert!(e.to_string().contains("unknown compression `lz4`"), "{e}");
    }

    fn http_image() -> Image {
        Image {
            name: "a".into(),
            loc: Default::default(),
            source: Source::Http(HttpSource {
                url: "https://e/a.raw".into(),
                checksum: SourceChecksum::Digest(Checksum::sha256(b"a")),
                decompress: None,
                signature: None,
            }),
            destination: "x/a.raw".into(),
            expected: None,
            depends_on: vec![],
            protect: false,
            history: 0,
            version: None,
            track: None,
        }
    }

    #[test]
    fn expected_defaults_to_source_checksum() {
        let spec = NormalizedSpec::of(&http_image(), None);
        assert_eq!(spec.expected, Some(Checksum::sha256(b"a")));
    }

    #[test]
    fn fingerprint_ignores_name_and_protect_but_not_dependencies() {
        let spec = NormalizedSpec::of(&http_image(), None);
        let mut renamed = spec.clone();
        renamed.name = "b".into();
        renamed.protect = true;
        renamed.history = 3;
        let none = BTreeMap::new();
        assert_eq!(spec.fingerprint(&none), renamed.fingerprint(&none));
        let deps = BTreeMap::from([("iso".to_string(), Checksum::sha256(b"iso"))]);
        assert_ne!(spec.fingerprint(&none), spec.fingerprint(&deps));
    }

    #[test]
    fn round_trips_through_json() {
        let spec = NormalizedSpec::of(&http_image(), None);
        let back: NormalizedSpec = serde_json::from_value(spec.to_json()).unwrap();
        assert_eq!(back, spec);
    }
}

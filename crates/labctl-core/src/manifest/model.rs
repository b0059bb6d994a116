//! The desired state, as the manifest declares it, after validation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::checksum::Checksum;
use crate::manifest::reference::Reference;
use crate::manifest::yaml::Loc;

pub const API_VERSION: &str = "labctl/v1alpha1";
pub const KIND: &str = "ImageManifest";

#[derive(Debug, Clone)]
pub struct Manifest {
    /// The path as the user gave it (for messages).
    pub path: PathBuf,
    /// The directory Packer template paths are relative to.
    pub base_dir: PathBuf,
    /// sha256 of the file's bytes: a saved plan records it so apply can refuse a stale plan.
    pub digest: Checksum,
    pub name: Option<String>,
    pub store: Option<StoreConfig>,
    /// `spec.index`: how the consumer index in `images/` is written.
    pub index: IndexConfig,
    pub images: Vec<Image>,
}

/// `spec.index`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexConfig {
    /// `signing.minisign.publicKey`: apply signs `images/SHA256SUMS` with the matching secret key
    /// (from the environment) and writes `images/SHA256SUMS.minisig`.
    pub minisign_public_key: Option<String>,
}

/// Most earlier versions an image may keep (`history: N`).
pub const MAX_HISTORY: u32 = 100;

impl Manifest {
    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.name == name)
    }

    /// The tracked images named (every image when none is), for `outdated` and `bump`.
    pub fn tracked(&self, names: &[String]) -> Result<Vec<&Image>, NamedImageError> {
        for name in names {
            match self.image(name) {
                None => Err(NamedImageError::NotAnImage {
                    name: name.clone(),
                    manifest: self.path.display().to_string(),
                })?,
                Some(i) if i.track.is_none() => {
                    Err(NamedImageError::NotTracked { name: name.clone() })?
                }
                Some(_) => {}
            }
        }
        Ok(self
            .images
            .iter()
            .filter(|i| names.is_empty() || names.contains(&i.name))
            .collect())
    }
}

/// An image named on the command line that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamedImageError {
    #[error("`{name}` is not an image in {manifest}")]
    NotAnImage { name: String, manifest: String },
    #[error("image `{name}` is not tracked")]
    NotTracked { name: String },
}

impl crate::hint::Hint for NamedImageError {
    fn hint(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some(match self {
            NamedImageError::NotAnImage { .. } => "name images as the manifest does (with their version written in), or give no names for every tracked image".into(),
            NamedImageError::NotTracked { .. } => "add a `track:` block to say where its new versions come from (docs/manifest.md)".into(),
        })
    }
}

/// `spec.store`: where the bucket is. Never holds secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub s3: S3Config,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub loc: Loc,
    pub source: Source,
    /// Object key below `images/`.
    pub destination: String,
    /// `validation.expected` as written (absent means: the source checksum).
    pub expected: Option<Checksum>,
    pub depends_on: Vec<String>,
    pub protect: bool,
    /// Earlier versions of the object kept under `history/` (0: none).
    pub history: u32,
    /// `version:`, written into the image's fields wherever they say `{{ version }}`.
    pub version: Option<String>,
    /// `track:`: where new versions come from and which are accepted.
    pub track: Option<crate::upstream::Track>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(HttpSource),
    Packer(PackerSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSource {
    pub url: String,
    pub checksum: SourceChecksum,
    pub decompress: Option<Compression>,
    pub signature: Option<Signature>,
}

/// `source.signature`: who vouches for the download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A minisign signature over the downloaded bytes.
    Minisign { url: String, public_key: String },
    /// An OpenPGP signature over the checksum list: detached at `url`, or (no `url`) the list
    /// itself is clearsigned.
    Pgp {
        url: Option<String>,
        /// The armored key, read from the manifest or from `publicKeyFile`.
        armored_key: String,
        fingerprint: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChecksum {
    Digest(Checksum),
    /// `file:<url>`: a checksum list (SHA256SUMS-style) in which the source's file name is looked
    /// up when the image is acquired.
    List {
        url: String,
    },
    /// `pin`: not known yet; `labctl pin` computes it (refused everywhere else).
    Pin,
}

impl From<&SourceChecksum> for crate::upstream::verdict::WrittenAs {
    fn from(checksum: &SourceChecksum) -> Self {
        use crate::upstream::verdict::WrittenAs;
        match checksum {
            SourceChecksum::Digest(d) => WrittenAs::Digest(d.algorithm),
            SourceChecksum::List { .. } => WrittenAs::List,
            SourceChecksum::Pin => WrittenAs::Pin,
        }
    }
}

impl std::fmt::Display for SourceChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceChecksum::Digest(c) => write!(f, "{c}"),
            SourceChecksum::List { url } => write!(f, "file:{url}"),
            SourceChecksum::Pin => write!(f, "pin"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Xz,
    Gzip,
    Zstd,
}

impl Compression {
    pub const NAMES: [&'static str; 3] = ["xz", "gzip", "zstd"];

    pub fn name(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    pub fn from_name(s: &str) -> Option<Compression> {
        match s {
            "xz" => Some(Compression::Xz),
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// As its name (`xz`), the manifest's word, in specs, records and plans.
impl serde::Serialize for Compression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Compression::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown compression `{name}` (expected one of {})",
                Compression::NAMES.join(", ")
            ))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackerSource {
    /// Template directory, relative to the manifest's directory.
    pub path: String,
    /// Values as written; they may contain `{{ images.NAME.field }}` references.
    pub variables: BTreeMap<String, String>,
    /// The build's output file, relative to the template directory.
    pub artifact: String,
}

impl Image {
    /// Where the published bytes live, relative to the store's prefix.
    pub fn object_key(&self) -> String {
        object_key(&self.destination)
    }

    /// Where this image's state record lives, relative to the store's prefix.
    pub fn record_key(&self) -> String {
        record_key(&self.destination)
    }

    /// The checksum the published object must have, when it can be known before apply.
    pub fn published_checksum(&self) -> Option<Checksum> {
        if let Some(expected) = &self.expected {
            return Some(expected.clone());
        }
        match &self.source {
            Source::Http(HttpSource {
                checksum: SourceChecksum::Digest(c),
                decompress: None,
                ..
            }) => Some(c.clone()),
            _ => None,
        }
    }

    /// References written in Packer variables.
    pub fn references(&self) -> Vec<Reference> {
        match &self.source {
            Source::Packer(p) => p
                .variables
                .values()
                .filter_map(|v| crate::manifest::reference::parse_all(v).ok())
                .flatten()
                .collect(),
            Source::Http(_) => Vec::new(),
        }
    }

    /// Every image this one needs first: `dependsOn` and the images its variables reference,
    /// sorted and without repeats.
    pub fn dependencies(&self) -> Vec<String> {
        let mut deps: Vec<String> = self.depends_on.clone();
        deps.extend(self.references().into_iter().map(|r| r.image));
        deps.sort();
        deps.dedup();
        deps
    }

    pub fn source_type(&self) -> &'static str {
        match self.source {
            Source::Http(_) => "http",
            Source::Packer(_) => "packer",
        }
    }
}

impl crate::graph::Node for Image {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> Vec<String> {
        Image::dependencies(self)
    }

    /// Name, source type and destination, on two lines.
    fn label(&self) -> String {
        format!(
            "{}\\n{} → {}",
            self.name,
            self.source_type(),
            self.destination
        )
    }
}

// The bucket's layout lives in `crate::layout`; the manifest names its keys through it.
pub use crate::layout::{
    destination_of_record_key, history_key, object_key, record_key, HISTORY_PREFIX, IMAGES_PREFIX,
    METADATA_PREFIX,
};

#[cfg(test)]
mod tests {
    use super::NamedImageError;
    use crate::hint::Hint;

    #[test]
    fn names_given_to_outdated_and_bump_must_be_tracked_images() {
        let sum = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let text = format!(
            "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n    - name: talos-{{{{ version.bare }}}}\n      version: \"v1.9.1\"\n      track: {{channel: talos}}\n      source: {{type: http, url: \"https://f.example/image/abc/{{{{ version }}}}/metal-amd64.raw.zst\", checksum: \"{}\", decompress: zstd}}\n      validation: {{expected: \"{}\"}}\n      destination: talos/a.raw\n    - name: plain\n      source: {{type: http, url: \"https://e.example/b.raw\", checksum: \"{}\"}}\n      destination: b.raw\n",
            sum(1),
            sum(3),
            sum(2)
        );
        let (m, _) = crate::manifest::parse(
            text.as_bytes(),
            std::path::Path::new("m.yaml"),
            std::path::Path::new("."),
            &crate::manifest::NoFiles,
            Default::default(),
        )
        .unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let tracked = |n: &[&str]| -> Result<Vec<String>, NamedImageError> {
            Ok(m.tracked(&names(n))?
                .iter()
                .map(|i| i.name.clone())
                .collect())
        };
        assert_eq!(tracked(&["talos-1.9.1"]), Ok(vec!["talos-1.9.1".into()]));
        assert_eq!(
            tracked(&[]),
            Ok(vec!["talos-1.9.1".into(), "plain".into()]),
            "every image; the untracked are the caller's to skip"
        );
        let untracked = tracked(&["plain"]).unwrap_err();
        assert_eq!(untracked.to_string(), "image `plain` is not tracked");
        assert!(untracked.hint().unwrap().contains("track:"));
        let unknown = tracked(&["talos"]).unwrap_err();
        assert_eq!(unknown.to_string(), "`talos` is not an image in m.yaml");
        assert!(unknown
            .hint()
            .unwrap()
            .contains("with their version written in"));
    }
}

//! What the run that published an object knew about where its bytes came from, carried in the
//! object's own metadata. The object becomes visible before its record is written; a run killed
//! between the two leaves only the object, and the next run adopts it. These keys let that
//! adoption write the record an uninterrupted run would have written, with no extra request and
//! nothing to clean up: they are set in the same request that makes the bytes visible.

use std::collections::BTreeMap;

/// `complete` when every fact below that the publishing run knew is present; `partial` when one
/// was too long to carry; `lost` when the run did not know them (its record said so); absent on
/// an object published before these keys existed. Anything but `complete` means lost.
pub const META_FACTS: &str = "labctl-facts";
pub const META_SOURCE_SIZE: &str = "labctl-source-size";
pub const META_SOURCE_ETAG: &str = "labctl-source-etag";
pub const META_SOURCE_LAST_MODIFIED: &str = "labctl-source-last-modified";
pub const META_PACKER_VERSION: &str = "labctl-packer-version";

const COMPLETE: &str = "complete";
const PARTIAL: &str = "partial";
const LOST: &str = "lost";

/// S3 allows 2 KiB of user metadata in all; a fact longer than this (a hostile server's ETag)
/// is not carried, and the object says its facts are partial.
pub const MAX_FACT_BYTES: usize = 256;

/// What the server said about the download, and which Packer built the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceFacts {
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub packer_version: Option<String>,
    /// The facts are not known (a record that says `factsUnknown`): carried as such, so that a
    /// later adoption does not take "nothing known" for "nothing to know".
    pub lost: bool,
}

impl SourceFacts {
    /// Facts nobody knows.
    pub fn lost() -> SourceFacts {
        SourceFacts {
            lost: true,
            ..Default::default()
        }
    }

    /// Adds the facts to an object's metadata.
    pub fn write_into(&self, metadata: &mut BTreeMap<String, String>) {
        if self.lost {
            metadata.insert(META_FACTS.to_string(), LOST.to_string());
            return;
        }
        let mut complete = true;
        let mut put = |key: &str, value: Option<&str>| {
            let Some(value) = value else { return };
            let encoded = encode(value);
            if encoded.len() > MAX_FACT_BYTES {
                complete = false;
            } else {
                metadata.insert(key.to_string(), encoded);
            }
        };
        put(
            META_SOURCE_SIZE,
            self.size.map(|s| s.to_string()).as_deref(),
        );
        put(META_SOURCE_ETAG, self.etag.as_deref());
        put(META_SOURCE_LAST_MODIFIED, self.last_modified.as_deref());
        put(META_PACKER_VERSION, self.packer_version.as_deref());
        metadata.insert(
            META_FACTS.to_string(),
            if complete { COMPLETE } else { PARTIAL }.to_string(),
        );
    }

    /// The facts an object carries; `None` when they are lost (an object published before
    /// labctl carried them, a fact too long to carry, or metadata changed by hand).
    pub fn read_from(metadata: &BTreeMap<String, String>) -> Option<SourceFacts> {
        if metadata.get(META_FACTS).map(String::as_str) != Some(COMPLETE) {
            return None;
        }
        // `None`: a value that does not decode; `Some(None)`: a fact the run did not know.
        let get = |key: &str| match metadata.get(key) {
            Some(v) => decode(v).map(Some),
            None => Some(None),
        };
        let size = match get(META_SOURCE_SIZE)? {
            Some(s) => Some(s.parse().ok()?),
            None => None,
        };
        Some(SourceFacts {
            size,
            etag: get(META_SOURCE_ETAG)?,
            last_modified: get(META_SOURCE_LAST_MODIFIED)?,
            packer_version: get(META_PACKER_VERSION)?,
            lost: false,
        })
    }

    /// The metadata without the facts: what says which bytes an object holds (checksum,
    /// fingerprint), for comparing two objects' identity.
    pub fn strip(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        metadata
            .iter()
            .filter(|(k, _)| !FACT_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

const FACT_KEYS: [&str; 5] = [
    META_FACTS,
    META_SOURCE_SIZE,
    META_SOURCE_ETAG,
    META_SOURCE_LAST_MODIFIED,
    META_PACKER_VERSION,
];

/// Metadata travels as HTTP header values, which stores trim and which cannot hold every byte:
/// anything outside visible ASCII, and `%` itself, is percent-encoded so the value comes back
/// exactly.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SourceFacts {
        SourceFacts {
            size: Some(123_456),
            etag: Some("\"5f2b-61a3c4\"".into()),
            last_modified: Some("Tue, 03 Dec 2026 10:00:00 GMT".into()),
            packer_version: Some("1.11.2".into()),
            lost: false,
        }
    }

    #[test]
    fn facts_come_back_exactly() {
        let mut meta = BTreeMap::new();
        facts().write_into(&mut meta);
        assert_eq!(meta[META_FACTS], "complete");
        assert_eq!(
            meta[META_SOURCE_LAST_MODIFIED],
            "Tue,%2003%20Dec%202026%2010:00:00%20GMT"
        );
        assert_eq!(SourceFacts::read_from(&meta), Some(facts()));
    }

    #[test]
    fn absent_facts_stay_absent() {
        let mut meta = BTreeMap::new();
        SourceFacts::default().write_into(&mut meta);
        assert_eq!(meta.len(), 1);
        assert_eq!(SourceFacts::read_from(&meta), Some(SourceFacts::default()));
    }

    #[test]
    fn awkward_bytes_round_trip() {
        let odd = SourceFacts {
            etag: Some(" W/\"é%20\u{7f}\" ".into()),
            ..Default::default()
        };
        let mut meta = BTreeMap::new();
        odd.write_into(&mut meta);
        assert!(meta[META_SOURCE_ETAG].bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(SourceFacts::read_from(&meta), Some(odd));
    }

    #[test]
    fn a_fact_too_long_to_carry_makes_the_facts_lost() {
        let long = SourceFacts {
            etag: Some("x".repeat(MAX_FACT_BYTES + 1)),
            ..facts()
        };
        let mut meta = BTreeMap::new();
        long.write_into(&mut meta);
        assert!(!meta.contains_key(META_SOURCE_ETAG));
        assert_eq!(SourceFacts::read_from(&meta), None);
    }

    #[test]
    fn objects_without_the_marker_or_with_damaged_values_have_lost_their_facts() {
        assert_eq!(SourceFacts::read_from(&BTreeMap::new()), None);
        let mut meta = BTreeMap::new();
        facts().write_into(&mut meta);
        let mut bad_size = meta.clone();
        bad_size.insert(META_SOURCE_SIZE.into(), "12x".into());
        assert_eq!(SourceFacts::read_from(&bad_size), None);
        let mut bad_escape = meta.clone();
        bad_escape.insert(META_SOURCE_ETAG.into(), "%G1".into());
        assert_eq!(SourceFacts::read_from(&bad_escape), None);
        let mut truncated = meta;
        truncated.insert(META_SOURCE_ETAG.into(), "ab%2".into());
        assert_eq!(SourceFacts::read_from(&truncated), None);
    }

    #[test]
    fn lost_facts_stay_lost() {
        let mut meta = BTreeMap::new();
        SourceFacts::lost().write_into(&mut meta);
        assert_eq!(meta[META_FACTS], "lost");
        assert_eq!(SourceFacts::read_from(&meta), None);
    }

    #[test]
    fn strip_leaves_the_identity() {
        let mut meta = BTreeMap::from([("labctl-checksum".to_string(), "sha256:ab".to_string())]);
        let identity = meta.clone();
        facts().write_into(&mut meta);
        assert_eq!(SourceFacts::strip(&meta), identity);
    }
}

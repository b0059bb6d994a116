//! What labctl knows about an object in a store, as data: the store crate fills it in.

use std::collections::BTreeMap;

pub mod facts;

pub use facts::SourceFacts;

/// User metadata keys labctl sets on every object it publishes, so a refresh can compare object
/// and record with a HEAD instead of a download.
pub const META_CHECKSUM: &str = "labctl-checksum";
pub const META_FINGERPRINT: &str = "labctl-fingerprint";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Changes whenever the object is rewritten.
    pub etag: String,
    pub user_metadata: BTreeMap<String, String>,
    /// When the store last wrote the key, as its listing shows it (opaque, compared only for
    /// equality); `None` where labctl did not list it or the store does not say. It stands in
    /// for the ETag on a store that lists none.
    pub listed_modified: Option<String>,
}

impl ObjectMeta {
    /// Whether labctl's metadata says the bytes hash to `checksum` (what it checks by HEAD
    /// before trusting a kept version, a staged blob or a build's blob).
    pub fn labelled_with(&self, checksum: &crate::checksum::Checksum) -> bool {
        self.user_metadata.get(META_CHECKSUM) == Some(&checksum.to_string())
    }

    /// Seconds since the listing's modification time, at `now` (seconds since the epoch);
    /// `None` when the listing gave none.
    pub fn listed_age(&self, now: u64) -> Option<u64> {
        let modified = self.listed_modified.as_deref()?;
        let secs: u64 = modified.split('.').next()?.parse().ok()?;
        Some(now.saturating_sub(secs))
    }
}

/// An unfinished multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub key: String,
    pub upload_id: String,
}

/// An unfinished multipart upload and when it started (seconds since the epoch), where the
/// store says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedUpload {
    pub upload: Upload,
    pub started: Option<u64>,
}

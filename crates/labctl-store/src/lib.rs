//! Where images and records are kept: an S3 bucket or a directory with the same layout.
//!
//! The trait is the narrow seam between labctl and a backend. Keys are relative to the store's
//! prefix and always use `/`. Bodies stream in both directions: large objects are written with
//! multipart uploads (parts of a few MiB) and read through an `AsyncRead`.
//!
//! The protocols labctl runs on a store live beside it: the lock ([`lock`], a conditional
//! create), pending and stranded multipart uploads, and reading state ([`refresh`]).

pub mod events;
pub mod fs;
pub mod identity;
pub mod location;
pub mod lock;
pub mod pending;
pub mod probe;
pub mod refresh;
pub mod s3;
pub mod stranded;

use std::borrow::Cow;

use labctl_core::hint::Hint;
use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

pub use location::StoreLocation;

pub use labctl_core::object::{
    ObjectMeta, SourceFacts, StartedUpload, Upload, META_CHECKSUM, META_FINGERPRINT,
};

pub type Body = Pin<Box<dyn AsyncRead + Send>>;

pub struct GetObject {
    pub meta: ObjectMeta,
    pub body: Body,
}

#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Only key, size and etag are filled in: listing does not return user metadata.
    pub objects: Vec<ObjectMeta>,
    /// Pass back to get the next page; `None` on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    #[default]
    Overwrite,
    /// Fail with [`StoreError::AlreadyExists`] if the key exists (`If-None-Match: *`).
    CreateOnly,
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub mode: PutMode,
    pub user_metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub part_number: u32,
    pub etag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`{key}` already exists")]
    AlreadyExists { key: String },
    /// Not written: this run no longer holds the store lock, so it may not change the store.
    #[error("{op} `{key}` refused: {why}")]
    Fenced {
        op: &'static str,
        key: String,
        why: lock::LeaseLost,
    },
    /// A copy's source is no longer the object that was checked: its ETag changed (the store
    /// refused `x-amz-copy-source-if-match`, or labctl saw it first).
    #[error("the copy source `{key}` changed since it was checked")]
    SourceChanged { key: String },
    /// A copy's source is not there.
    #[error("the copy source `{key}` is gone")]
    SourceGone { key: String },
    #[error("invalid key `{key}`: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("no multipart upload `{upload_id}` for `{key}`")]
    NoSuchUpload { key: String, upload_id: String },
    #[error("{op} `{key}` failed")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// No credentials could be found or used (the SDK's credential chain says why).
    #[error("no usable S3 credentials")]
    Credentials {
        #[source]
        source: BoxError,
    },
    /// No answer: the connection failed, timed out, or the answer could not be read. The SDK's
    /// error and its causes say which.
    #[error("{op} `{key}` failed: {kind}")]
    Unreachable {
        op: &'static str,
        key: String,
        kind: Unreachable,
        #[source]
        source: BoxError,
    },
    /// The store answered with an error (its code, HTTP status and message).
    #[error("{op} `{key}` failed: {message}")]
    Backend {
        op: &'static str,
        key: String,
        message: String,
    },
}

/// An error from below the store, kept whole so that its causes are printed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the store gave no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Timeout,
    /// Connecting, TLS, or the connection dropping.
    Connection,
    /// An answer that could not be read as S3's.
    BadResponse,
    /// The request could not be built (a bad endpoint, say).
    Request,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unreachable::Timeout => "the store did not answer in time",
            Unreachable::Connection => "cannot connect to the store",
            Unreachable::BadResponse => "the store's answer could not be read",
            Unreachable::Request => "the request could not be made",
        })
    }
}

impl Hint for StoreError {
    /// The next step, when there is an obvious one.
    fn hint(&self) -> Option<Cow<'static, str>> {
        let hint = match self {
            StoreError::Credentials { .. } => Some(
                "set E2_ACCESS_KEY and E2_SECRET_KEY (or AWS credentials), or plan against a directory with --store DIR",
            ),
            StoreError::Unreachable {
                kind: Unreachable::Connection | Unreachable::Timeout,
                ..
            } => Some("check the store's endpoint (spec.store.endpoint or E2_ENDPOINT) and the network"),
            _ => None,
        };
        hint.map(Cow::Borrowed)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// A URL naming the store, for messages and plans (`file:///…`, `s3://bucket/prefix`).
    fn url(&self) -> String;

    /// One page of the keys under `prefix`, in lexicographic order.
    async fn list_page(&self, prefix: &str, continuation: Option<String>) -> Result<ListPage>;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    async fn get(&self, key: &str) -> Result<Option<GetObject>>;

    /// Writes a whole object at once (records, locks, small images).
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<ObjectMeta>;

    /// Deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Deletes `keys`; a missing key counts as deleted. Returns the keys that could not be
    /// deleted, each with why. One request a key unless the store can do better (S3's
    /// DeleteObjects takes up to 1,000 keys a request).
    async fn delete_many(&self, keys: Vec<String>) -> Vec<(String, StoreError)> {
        let mut failed = Vec::new();
        for key in keys {
            if let Err(e) = self.delete(&key).await {
                failed.push((key, e));
            }
        }
        failed
    }

    /// Deletes `key` only while its ETag is `etag` (`If-Match`); `Ok(false)` when it has
    /// another, i.e. someone rewrote it since it was read. A missing key counts as deleted. A
    /// store that ignores the condition deletes unconditionally, so callers check what they
    /// read first and this narrows the window to nothing where the store supports it.
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool>;

    /// Starts a multipart upload; nothing is visible at `key` until [`Store::complete_multipart`].
    async fn create_multipart(&self, key: &str, options: PutOptions) -> Result<String>;

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<UploadedPart>;

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<ObjectMeta>;

    /// Discards the parts of an upload. Must be called on every failure path: S3 keeps (and bills
    /// for) unfinished uploads until they are aborted.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()>;

    /// Unfinished multipart uploads under `prefix` as `(key, upload id)`; `None` when the backend
    /// cannot list them.
    async fn list_uploads(&self, prefix: &str) -> Result<Option<Vec<(String, String)>>> {
        Ok(self.list_started_uploads(prefix).await?.map(|uploads| {
            uploads
                .into_iter()
                .map(|u| (u.upload.key, u.upload.upload_id))
                .collect()
        }))
    }

    /// [`Store::list_uploads`] with when each upload started, where the store says: what
    /// tells an upload left by a killed run from one running now when no lock says so.
    async fn list_started_uploads(&self, prefix: &str) -> Result<Option<Vec<StartedUpload>>>;

    /// A URL a local program (a Packer build) can fetch `key` from for `expiry`: presigned for
    /// S3, `file://` for a directory.
    async fn url_for(&self, key: &str, expiry: std::time::Duration) -> Result<String>;

    /// Replaces an object's user metadata without rewriting its bytes through labctl.
    async fn set_metadata(
        &self,
        key: &str,
        user_metadata: BTreeMap<String, String>,
    ) -> Result<ObjectMeta>;

    /// Copies `from` to `to` inside the store, without the bytes passing through labctl
    /// (CopyObject, or UploadPartCopy for objects above the single-copy limit; a file copy on
    /// a directory). `user_metadata` replaces the copy's metadata; `None` keeps the source's.
    /// With `checked`, the source as the caller just read it (by HEAD): the copy is made only
    /// while `from` still has its ETag (`x-amz-copy-source-if-match`), so bytes checked before
    /// are the bytes copied, and the store is not asked about the source again. The copy
    /// appears at `to` whole or not at all.
    async fn copy(
        &self,
        from: &str,
        to: &str,
        user_metadata: Option<BTreeMap<String, String>>,
        checked: Option<&ObjectMeta>,
    ) -> Result<ObjectMeta>;

    /// One server-side copy as `doctor` probes it, sent as it is: no check on labctl's side
    /// first, so that what answers is the store. A store without such requests (a directory)
    /// makes the plain [`Store::copy`].
    async fn probe_copy(&self, from: &str, to: &str, probe: CopyProbe) -> Result<ObjectMeta> {
        match probe {
            CopyProbe::ReplaceMetadata(m) => self.copy(from, to, Some(m), None).await,
            CopyProbe::InParts { .. } => self.copy(from, to, None, None).await,
            CopyProbe::IfMatch(etag) => {
                let source = self
                    .head(from)
                    .await?
                    .ok_or_else(|| StoreError::SourceGone {
                        key: from.to_string(),
                    })?;
                let checked = ObjectMeta { etag, ..source };
                self.copy(from, to, None, Some(&checked)).await
            }
        }
    }
}

/// What promotion and history rely on, one request each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyProbe {
    /// CopyObject with `x-amz-metadata-directive: REPLACE`.
    ReplaceMetadata(BTreeMap<String, String>),
    /// UploadPartCopy with `x-amz-copy-source-range`, in parts of this many bytes.
    InParts { part_size: u64 },
    /// CopyObject with `x-amz-copy-source-if-match`.
    IfMatch(String),
}

/// Deletes each group of keys once the group before it is done (what is deleted last is what
/// says the earlier groups are gone); what could not be deleted, as `key: why`.
pub async fn delete_in_turn(
    store: &dyn Store,
    groups: impl IntoIterator<Item = Vec<String>>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for keys in groups {
        failed.extend(
            store
                .delete_many(keys)
                .await
                .into_iter()
                .map(|(key, e)| format!("{key}: {e}")),
        );
    }
    failed
}

/// Every key under `prefix`, following continuation tokens.
pub async fn list_all(store: &dyn Store, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = store.list_page(prefix, token).await?;
        out.extend(page.objects);
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(out),
        }
    }
}

/// Reads a small object whole, refusing more than `limit` bytes.
pub async fn get_bytes(
    store: &dyn Store,
    key: &str,
    limit: usize,
) -> Result<Option<(ObjectMeta, Vec<u8>)>> {
    let Some(GetObject { meta, body }) = store.get(key).await? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    body.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|source| StoreError::Io {
            op: "read",
            key: key.to_string(),
            source,
        })?;
    Ok(Some((meta, buf)))
}

/// Whether two ETags name the same object version. Stores quote them differently (Ceph RGW
/// not at all), and an empty one (a listing that gives none) names nothing.
pub fn same_etag(a: &str, b: &str) -> bool {
    let a = a.trim_matches('"');
    !a.is_empty() && a == b.trim_matches('"')
}

/// Rejects keys that could escape the store or that S3 and a filesystem would treat differently.
pub fn check_key(key: &str) -> Result<()> {
    labctl_core::manifest::schema::check_relative_key(key).map_err(|reason| {
        StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn etags_compare_without_quotes_and_an_empty_one_matches_nothing() {
        assert!(super::same_etag("\"abc\"", "abc"));
        assert!(super::same_etag("abc", "\"abc\""));
        assert!(!super::same_etag("\"abc\"", "\"abd\""));
        assert!(!super::same_etag("", ""));
        assert!(!super::same_etag("\"\"", ""));
    }
}

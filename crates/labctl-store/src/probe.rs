//! What `labctl doctor` asks of a store: one probe per thing labctl relies on, each written
//! under `.labctl/doctor/` and removed again. They go through the [`Store`] trait like every
//! other request, so the conformance suite (which checks the trait against every backend) runs
//! them too and knows what each backend answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use labctl_core::checksum::Checksum;

use crate::pending::{AbortFailed, PendingUpload};
use crate::{
    get_bytes, list_all, CopyProbe, ObjectMeta, PutMode, PutOptions, Store, StoreError,
    UploadedPart, META_CHECKSUM,
};

/// Where the probes write; nothing else is ever there.
pub const PROBE_PREFIX: &str = ".labctl/doctor";

/// Whether the store refuses a copy whose source is not the object that was checked
/// (`x-amz-copy-source-if-match`): then the ETag a leg recorded is check enough before a
/// promotion's copy, and no HEAD is needed. Asked with a probe object under `.labctl/doctor/`
/// that is removed again; an error (the probe could not be written, run or removed) is an
/// answer the caller cannot rely on.
pub async fn copy_checks_its_source(store: &dyn Store, id: &str) -> Result<bool, StoreError> {
    let from = format!("{PROBE_PREFIX}/if-match-source-{id}");
    let to = format!("{PROBE_PREFIX}/if-match-{id}");
    store
        .put(
            &from,
            Bytes::from_static(b"labctl probe\n"),
            PutOptions::default(),
        )
        .await?;
    let stale = stale_copy(store, &from, &to).await;
    if let Some((_, e)) = store.delete_many(vec![from, to]).await.into_iter().next() {
        return Err(e);
    }
    match stale {
        Err(StoreError::SourceChanged { .. }) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An ETag no probe object has: what a conditional request about a changed object carries.
const NOT_ITS_ETAG: &str = "\"0123456789abcdef\"";

/// A copy of `from` to `to`, asked to be made only while `from` has an ETag it does not have.
async fn stale_copy(store: &dyn Store, from: &str, to: &str) -> Result<ObjectMeta, StoreError> {
    store
        .probe_copy(from, to, CopyProbe::IfMatch(NOT_ITS_ETAG.into()))
        .await
}

/// S3's smallest part: the multipart probes use parts of exactly this size.
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// One thing labctl relies on, in the order they are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    WriteRead,
    Multipart,
    AbortMultipart,
    ConditionalCreate,
    CopyWithMetadata,
    CopyInParts,
    ConditionalCopy,
    ConditionalDelete,
    StrandedUploads,
}

impl Check {
    /// The name a report shows for it.
    pub fn title(self) -> &'static str {
        match self {
            Check::WriteRead => "write, read and metadata",
            Check::Multipart => "multipart upload",
            Check::AbortMultipart => "abort multipart upload",
            Check::ConditionalCreate => "conditional create (If-None-Match: *)",
            Check::CopyWithMetadata => {
                "server-side copy with new metadata (CopyObject, metadata REPLACE)"
            }
            Check::CopyInParts => {
                "part-by-part server-side copy (UploadPartCopy, x-amz-copy-source-range)"
            }
            Check::ConditionalCopy => "conditional copy (x-amz-copy-source-if-match)",
            Check::ConditionalDelete => "conditional delete (If-Match)",
            Check::StrandedUploads => {
                "unfinished uploads labctl left (images/, history/, .labctl/doctor/)"
            }
        }
    }
}

/// What a probe found.
#[derive(Debug)]
pub enum Verdict {
    /// The store does what labctl relies on.
    Holds(String),
    /// The store lacks it, and labctl works around that at a cost the operator should know.
    Lacks(String),
    /// The store fails it.
    Fails(ProbeError),
}

#[derive(Debug)]
pub struct Finding {
    pub check: Check,
    pub verdict: Verdict,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Abort(#[from] AbortFailed),
    /// The part's error is the source; the abort's cause is said in the message, as an error
    /// has one source.
    #[error("a part failed, and {abort}: {}", abort.source)]
    PartAndAbort {
        #[source]
        part: StoreError,
        abort: AbortFailed,
    },
    /// The store answered, but not as S3 does.
    #[error("{0}")]
    Wrong(String),
}

impl From<&str> for ProbeError {
    fn from(wrong: &str) -> ProbeError {
        ProbeError::Wrong(wrong.to_string())
    }
}

/// Runs every probe in order, each handed to `found` as it ends, and removes whatever the
/// probes left (even after failures). `id` keeps two runs' probes apart.
pub async fn run(store: &Arc<dyn Store>, id: &str, mut found: impl FnMut(Finding)) {
    let mut report = |check: Check, verdict: Verdict| found(Finding { check, verdict });
    let plain = |result: Result<String, ProbeError>| match result {
        Ok(detail) => Verdict::Holds(detail),
        Err(e) => Verdict::Fails(e),
    };
    let either = |result: Result<Verdict, ProbeError>| result.unwrap_or_else(Verdict::Fails);
    report(Check::WriteRead, plain(write_read(store, id).await));
    report(Check::Multipart, plain(multipart(store, id).await));
    report(Check::AbortMultipart, plain(abort(store, id).await));
    report(
        Check::ConditionalCreate,
        plain(conditional(store, id).await),
    );
    // What history and a promotion of staged images rely on: copies inside the store.
    report(
        Check::CopyWithMetadata,
        plain(copy_with_metadata(store, id).await),
    );
    report(Check::CopyInParts, plain(copy_in_parts(store, id).await));
    report(
        Check::ConditionalCopy,
        either(conditional_copy(store, id).await),
    );
    report(
        Check::ConditionalDelete,
        either(conditional_delete(store, id).await),
    );
    report(
        Check::StrandedUploads,
        match crate::stranded::list(store.as_ref()).await {
            Ok(Some(u)) if u.is_empty() => Verdict::Holds("none".into()),
            Ok(Some(u)) => Verdict::Holds(format!(
                "{} left by interrupted runs (or an apply running now); the next apply aborts them",
                u.len()
            )),
            Ok(None) => Verdict::Holds("the store cannot list them; a lifecycle rule (AbortIncompleteMultipartUpload) cleans them up".into()),
            Err(e) => Verdict::Fails(e.into()),
        },
    );
    if let Ok(left) = list_all(store.as_ref(), PROBE_PREFIX).await {
        for o in left.iter().filter(|o| o.key.contains(id)) {
            let _ = store.delete(&o.key).await;
        }
    }
}

async fn write_read(store: &Arc<dyn Store>, id: &str) -> Result<String, ProbeError> {
    let key = format!("{PROBE_PREFIX}/probe-{id}");
    let body = Bytes::from(format!("labctl doctor probe {id}\n"));
    let meta = BTreeMap::from([(
        META_CHECKSUM.to_string(),
        Checksum::sha256(&body).to_string(),
    )]);
    store
        .put(
            &key,
            body.clone(),
            PutOptions {
                user_metadata: meta.clone(),
                ..Default::default()
            },
        )
        .await?;
    let (got_meta, got) = get_bytes(store.as_ref(), &key, 1024)
        .await?
        .ok_or("the probe written a moment ago cannot be read")?;
    if got != body {
        return Err("the probe read back differs from what was written".into());
    }
    let head = store
        .head(&key)
        .await?
        .ok_or("HEAD does not find the probe")?;
    if head.user_metadata.get(META_CHECKSUM) != meta.get(META_CHECKSUM)
        || got_meta.user_metadata.get(META_CHECKSUM) != meta.get(META_CHECKSUM)
    {
        return Err("user metadata is not kept: drift detection by HEAD will not work".into());
    }
    store.delete(&key).await?;
    if store.head(&key).await?.is_some() {
        return Err("a deleted probe is still there".into());
    }
    Ok("put, get, head, user metadata and delete work".into())
}

async fn multipart(store: &Arc<dyn Store>, id: &str) -> Result<String, ProbeError> {
    let key = format!("{PROBE_PREFIX}/multipart-{id}");
    let first = Bytes::from(vec![b'a'; MIN_PART_SIZE]);
    let second = Bytes::from_static(b"end");
    // Held by a guard: a failure or a signal here aborts the probe upload.
    let upload = PendingUpload::start(store.clone(), &key, PutOptions::default()).await?;
    let parts: Result<Vec<UploadedPart>, StoreError> = async {
        Ok(vec![
            store
                .upload_part(&key, upload.id(), 1, first.clone())
                .await?,
            store
                .upload_part(&key, upload.id(), 2, second.clone())
                .await?,
        ])
    }
    .await;
    let parts = match parts {
        Ok(p) => p,
        Err(e) => {
            if let Err(abort) = upload.abort().await {
                return Err(ProbeError::PartAndAbort { part: e, abort });
            }
            return Err(e.into());
        }
    };
    let done = upload.complete(parts).await?;
    let expected = (first.len() + second.len()) as u64;
    let result = if done.size == expected {
        Ok(format!("two parts ({} bytes) completed", expected))
    } else {
        Err(ProbeError::Wrong(format!(
            "completed object has {} bytes, expected {expected}",
            done.size
        )))
    };
    store.delete(&key).await?;
    result
}

async fn abort(store: &Arc<dyn Store>, id: &str) -> Result<String, ProbeError> {
    let key = format!("{PROBE_PREFIX}/aborted-{id}");
    let pending = PendingUpload::start(store.clone(), &key, PutOptions::default()).await?;
    let upload = pending.id().to_string();
    store
        .upload_part(&key, &upload, 1, Bytes::from_static(b"x"))
        .await?;
    pending.abort().await?;
    if store.head(&key).await?.is_some() {
        return Err("an aborted upload became visible".into());
    }
    match store.list_uploads(PROBE_PREFIX).await? {
        Some(list) if list.iter().any(|(_, u)| *u == upload) => {
            Err("the aborted upload is still listed".into())
        }
        Some(_) => Ok("aborted uploads leave nothing behind".into()),
        None => Ok("aborted (the store cannot list unfinished uploads to confirm)".into()),
    }
}

async fn conditional(store: &Arc<dyn Store>, id: &str) -> Result<String, ProbeError> {
    let key = format!("{PROBE_PREFIX}/conditional-{id}");
    let create = PutOptions {
        mode: PutMode::CreateOnly,
        ..Default::default()
    };
    store
        .put(&key, Bytes::from_static(b"1"), create.clone())
        .await?;
    let second = store.put(&key, Bytes::from_static(b"2"), create).await;
    let _ = store.delete(&key).await;
    match second {
        Err(StoreError::AlreadyExists { .. }) => {
            Ok("enforced: a second create is refused, so the apply lock works".into())
        }
        Ok(_) => Err(
            "NOT enforced: the store accepted a second create of the same key and overwrote it"
                .into(),
        ),
        Err(e) => Err(e.into()),
    }
}

/// A probe object of `size` bytes (a pattern, so that a misplaced part shows), with its bytes.
async fn probe_source(
    store: &Arc<dyn Store>,
    key: &str,
    size: usize,
) -> Result<(Vec<u8>, ObjectMeta), ProbeError> {
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let options = PutOptions {
        user_metadata: BTreeMap::from([("labctl-probe".to_string(), "source".to_string())]),
        ..Default::default()
    };
    let meta = store.put(key, Bytes::from(body.clone()), options).await?;
    Ok((body, meta))
}

/// Whether `key` holds exactly `body`.
async fn holds(store: &Arc<dyn Store>, key: &str, body: &[u8]) -> Result<(), ProbeError> {
    match get_bytes(store.as_ref(), key, body.len() + 1).await {
        Ok(Some((_, got))) if got == body => Ok(()),
        Ok(Some((_, got))) => Err(ProbeError::Wrong(format!(
            "the copy holds other bytes ({} bytes, {} expected)",
            got.len(),
            body.len()
        ))),
        Ok(None) => Err("the copy is not there".into()),
        Err(e) => Err(e.into()),
    }
}

async fn copy_with_metadata(store: &Arc<dyn Store>, id: &str) -> Result<String, ProbeError> {
    let from = format!("{PROBE_PREFIX}/copy-source-{id}");
    let to = format!("{PROBE_PREFIX}/copy-{id}");
    let (body, _) = probe_source(store, &from, 4096).await?;
    let wanted = BTreeMap::from([("labctl-probe".to_string(), "copy".to_string())]);
    let copied = store
        .probe_copy(&from, &to, CopyProbe::ReplaceMetadata(wanted.clone()))
        .await?;
    holds(store, &to, &body).await?;
    if copied.user_metadata.get("labctl-probe") != wanted.get("labctl-probe") {
        return Err(ProbeError::Wrong(format!(
            "the copy kept the source's metadata ({:?}) instead of the one sent",
            copied.user_metadata
        )));
    }
    Ok("the copy has the same bytes and the new metadata".into())
}

async fn copy_in_parts(store: &Arc<dyn Store>, id: &str) -> Result<String, ProbeError> {
    const PART: u64 = 5 * 1024 * 1024;
    let from = format!("{PROBE_PREFIX}/parts-source-{id}");
    let to = format!("{PROBE_PREFIX}/parts-{id}");
    // Two parts: the smallest S3 allows, and one byte.
    let (body, _) = probe_source(store, &from, PART as usize + 1).await?;
    store
        .probe_copy(&from, &to, CopyProbe::InParts { part_size: PART })
        .await?;
    holds(store, &to, &body).await?;
    Ok("5 MiB + 1 byte copied in 2 ranged parts, the same bytes".into())
}

/// Not enforced (moto, Ceph RGW Pacific) is a limit, not a failure: labctl checks the
/// source's ETag itself right before each copy, and only a change in that moment would go
/// unnoticed.
/// What removes the lock file at a release: deleted only while it is the one read.
async fn conditional_delete(store: &Arc<dyn Store>, id: &str) -> Result<Verdict, ProbeError> {
    let key = format!("{PROBE_PREFIX}/delete-if-{id}");
    let (_, written) = probe_source(store, &key, 64).await?;
    let stale = store.delete_if(&key, NOT_ITS_ETAG).await;
    let kept = store.head(&key).await?.is_some();
    let removed = store.delete_if(&key, &written.etag).await?;
    let gone = store.head(&key).await?.is_none();
    if !gone {
        store.delete(&key).await?;
    }
    Ok(match (stale, kept, removed && gone) {
        (Ok(false), true, true) => Verdict::Holds("enforced: kept on another ETag, deleted on its own".into()),
        (_, _, false) => return Err("a delete conditional on the object's own ETag did not delete it".into()),
        _ => Verdict::Lacks("NOT enforced: deleted on another ETag. The lock's lease does not depend on it (each link of the lease is created once, with If-None-Match); a lock file replaced by hand in the instant of a release could be removed with it".into()),
    })
}

async fn conditional_copy(store: &Arc<dyn Store>, id: &str) -> Result<Verdict, ProbeError> {
    let from = format!("{PROBE_PREFIX}/if-match-source-{id}");
    let to = format!("{PROBE_PREFIX}/if-match-{id}");
    let (body, source) = probe_source(store, &from, 1024).await?;
    let stale = stale_copy(store.as_ref(), &from, &to).await;
    store
        .probe_copy(&from, &to, CopyProbe::IfMatch(source.etag))
        .await?;
    holds(store, &to, &body).await?;
    Ok(if stale.is_ok() {
        Verdict::Lacks("NOT enforced: a copy conditional on another ETag was made. labctl checks the ETag itself right before each copy (history, restores), so only a change in that moment would go unnoticed".into())
    } else {
        Verdict::Holds("enforced: refused on another ETag, made on the source's".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both causes reach the user: the part's as the source, the abort's in the message.
    #[test]
    fn a_failed_part_whose_abort_failed_names_both_causes() {
        let refused = |op, message: &str| StoreError::Backend {
            op,
            key: "images/x".into(),
            message: message.into(),
        };
        let e = ProbeError::PartAndAbort {
            part: refused("upload part", "SlowDown"),
            abort: AbortFailed {
                key: "images/x".into(),
                source: refused("abort upload", "AccessDenied"),
            },
        };
        assert!(e.to_string().contains("AccessDenied"), "{e}");
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.contains("SlowDown"), "{source}");
    }
}

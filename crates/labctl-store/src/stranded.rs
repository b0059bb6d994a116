//! Multipart uploads left by a run that was killed (kill -9, a runner that vanished): invisible,
//! but kept and billed by the store until aborted. Only labctl's prefixes are looked at.
//!
//! The apply lock makes ownership simple: while a run holds it, no other run uploads, so every
//! unfinished upload under these prefixes found right after taking the lock is stranded.

use crate::{Store, StoreError, Upload};

/// Where labctl uploads: published images, kept versions, and `doctor`'s probes.
pub const PREFIXES: [&str; 3] = [
    ".labctl/doctor/",
    labctl_core::manifest::IMAGES_PREFIX,
    labctl_core::manifest::HISTORY_PREFIX,
];

/// The unfinished uploads under labctl's prefixes; `None` when the store cannot list them.
pub async fn list(store: &dyn Store) -> Result<Option<Vec<Upload>>, StoreError> {
    let mut out = Vec::new();
    for prefix in PREFIXES {
        match store.list_uploads(prefix).await? {
            Some(found) => out.extend(
                found
                    .into_iter()
                    .map(|(key, upload_id)| Upload { key, upload_id }),
            ),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// What cleaning up found and did.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// `None` when the store cannot list unfinished uploads.
    pub found: Option<usize>,
    pub aborted: Vec<Upload>,
    pub failed: Vec<(Upload, StoreError)>,
}

/// Aborts every unfinished upload under labctl's prefixes. Call only while holding the lock.
pub async fn abort_all(store: &dyn Store) -> Result<Cleanup, StoreError> {
    let Some(uploads) = list(store).await? else {
        return Ok(Cleanup::default());
    };
    let mut cleanup = Cleanup {
        found: Some(uploads.len()),
        ..Default::default()
    };
    for upload in uploads {
        match store.abort_multipart(&upload.key, &upload.upload_id).await {
            Ok(()) | Err(StoreError::NoSuchUpload { .. }) => cleanup.aborted.push(upload),
            Err(e) => cleanup.failed.push((upload, e)),
        }
    }
    Ok(cleanup)
}

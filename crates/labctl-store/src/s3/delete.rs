//! Deleting many keys: DeleteObjects, 1,000 keys a request, or one DELETE a key where the store
//! refuses it.

use super::*;

/// S3's most keys in one DeleteObjects request.
pub(super) const MAX_DELETE_BATCH: usize = 1000;
/// DeleteObjects requests sent at once.
pub(super) const BATCH_DELETES_AT_ONCE: usize = 4;
/// Deletes sent at once when a store refuses DeleteObjects.
pub(super) const DELETES_AT_ONCE: usize = 64;

impl S3Store {
    /// One batch of keys deleted: by DeleteObjects, or one DELETE a key where the store refuses
    /// it; the keys that could not be deleted, with why.
    pub(super) async fn delete_one_batch(&self, batch: &[String]) -> Vec<(String, StoreError)> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.batch_delete_refused.load(Relaxed) {
            match self.delete_batch(batch).await {
                Ok(failed) => return failed,
                // Answered: the store does not take DeleteObjects (or not this one).
                // Unanswered: the keys are tried one by one all the same.
                Err(StoreError::Backend { .. }) => self.batch_delete_refused.store(true, Relaxed),
                Err(_) => {}
            }
        }
        futures_util::stream::iter(batch.to_vec())
            .map(|key| async move { self.delete(&key).await.err().map(|e| (key, e)) })
            .buffer_unordered(DELETES_AT_ONCE)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// One DeleteObjects request (quiet: the answer lists only failures). `Err` when the store
    /// refused the request as a whole.
    pub(super) async fn delete_batch(&self, keys: &[String]) -> Result<Vec<(String, StoreError)>> {
        // The builders refuse only a missing key, which is always given.
        let unnameable = |key: &str| StoreError::InvalidKey {
            key: key.to_string(),
            reason: "cannot be named in a DeleteObjects request",
        };
        let mut failed = Vec::new();
        let mut objects = Vec::with_capacity(keys.len());
        for key in keys {
            let identifier = self.full_key(key).and_then(|full| {
                ObjectIdentifier::builder()
                    .key(full)
                    .build()
                    .map_err(|_| unnameable(key))
            });
            match identifier {
                Ok(o) => objects.push(o),
                Err(e) => failed.push((key.clone(), e)),
            }
        }
        if objects.is_empty() {
            return Ok(failed);
        }
        let first = keys.first().map(String::as_str).unwrap_or_default();
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|_| unnameable(first))?;
        let out = self
            .client
            .delete_objects()
            .bucket(self.bucket())
            .delete(delete)
            .send()
            .await
            .map_err(|e| backend("delete", first, e))?;
        for error in out.errors() {
            let key = self.strip(error.key().unwrap_or_default());
            // A missing key counts as deleted, as with DeleteObject.
            if error.code() == Some("NoSuchKey") {
                continue;
            }
            let message = match (error.code(), error.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_string(),
                (None, Some(msg)) => msg.to_string(),
                (None, None) => "the store did not say why".to_string(),
            };
            failed.push((
                key.clone(),
                StoreError::Backend {
                    op: "delete",
                    key,
                    message,
                },
            ));
        }
        Ok(failed)
    }
}

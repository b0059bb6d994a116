//! Server-side copies: CopyObject up to the single-copy limit, UploadPartCopy in parts above it,
//! each made only while the source has the ETag it was checked with.

use super::*;

/// S3 refuses CopyObject above 5 GiB; larger objects are copied part by part.
pub(super) const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
pub(super) const COPY_PART: u64 = 1024 * 1024 * 1024;
/// S3's minimum for every part but the last, copied parts included.
pub(super) const MIN_COPY_PART: u64 = 5 * 1024 * 1024;

/// One server-side copy: `from` (now `size` bytes) to `to`, whole up to `single_copy_limit`,
/// part by part above it.
pub(super) struct CopyRequest<'a> {
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    /// The source as it was just HEADed: its size, and the metadata a part-by-part copy keeps.
    pub(super) source: &'a ObjectMeta,
    /// Replaces the copy's metadata; `None` keeps the source's.
    pub(super) user_metadata: Option<&'a BTreeMap<String, String>>,
    /// Copy only while the source has this ETag (`x-amz-copy-source-if-match`).
    pub(super) source_etag: Option<&'a str>,
    pub(super) single_copy_limit: u64,
}

impl S3Store {
    /// Server-side copy of `from` (as `request.source` describes it now) to `to`; the copy as
    /// a HEAD would describe it, when the store's answer says that much.
    pub(super) async fn copy_object(
        &self,
        op: &'static str,
        request: CopyRequest<'_>,
    ) -> Result<Option<ObjectMeta>> {
        let source = copy_source(self.bucket(), &self.full_key(request.from)?);
        if request.source.size <= request.single_copy_limit {
            let etag = self.copy_whole(op, &source, &request).await?;
            // The answer's ETag is trusted only where it is the source's, the MD5 of the same
            // bytes: a source uploaded in parts has another kind of ETag than its copy.
            let same = etag.is_some_and(|e| same_etag(&e, &request.source.etag));
            return Ok(same.then(|| ObjectMeta {
                key: request.to.to_string(),
                size: request.source.size,
                etag: request.source.etag.clone(),
                user_metadata: request
                    .user_metadata
                    .cloned()
                    .unwrap_or_else(|| request.source.user_metadata.clone()),
                listed_modified: None,
            }));
        }
        // Part by part; the copy appears only on completion. UploadPartCopy does not carry the
        // source's metadata, so the new upload is created with it.
        let metadata = match request.user_metadata {
            Some(m) => m.clone(),
            None => request.source.user_metadata.clone(),
        };
        // Held by a guard: a copy of many GiB is hundreds of requests, and a run stopped by a
        // signal drops it midway — the upload is aborted then too, not left open.
        let upload = crate::pending::PendingUpload::start(
            std::sync::Arc::new(self.clone()),
            request.to,
            PutOptions {
                user_metadata: metadata,
                ..Default::default()
            },
        )
        .await?;
        match self.copy_parts(op, &source, upload.id(), &request).await {
            Ok(parts) => upload.complete(parts).await.map(Some),
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// CopyObject: the whole object in one request; the copy's ETag, when the answer gives it.
    pub(super) async fn copy_whole(
        &self,
        op: &'static str,
        source: &str,
        request: &CopyRequest<'_>,
    ) -> Result<Option<String>> {
        let directive = match request.user_metadata {
            Some(_) => MetadataDirective::Replace,
            None => MetadataDirective::Copy,
        };
        let key = self.full_key(request.to)?;
        // Once sent, the store copies whether or not the answer is awaited.
        let in_flight = crate::pending::InFlight::start();
        let sent = self
            .client
            .copy_object()
            .bucket(self.bucket())
            .key(key)
            .copy_source(source)
            .set_copy_source_if_match(request.source_etag.map(str::to_string))
            .metadata_directive(directive)
            .set_metadata(request.user_metadata.and_then(to_hashmap))
            .send()
            .await;
        in_flight.done();
        let copied = sent.map_err(|e| match status(&e) {
            // The source, as the request names it (x-amz-copy-source, and its condition).
            Some(412) => StoreError::SourceChanged {
                key: request.from.to_string(),
            },
            Some(404) => StoreError::SourceGone {
                key: request.from.to_string(),
            },
            _ => backend(op, request.to, e),
        })?;
        Ok(copied
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .filter(|e| !e.is_empty())
            .map(str::to_string))
    }

    /// UploadPartCopy of every range of the source into the upload `id`, in order.
    pub(super) async fn copy_parts(
        &self,
        op: &'static str,
        source: &str,
        id: &str,
        request: &CopyRequest<'_>,
    ) -> Result<Vec<UploadedPart>> {
        let full_to = self.full_key(request.to)?;
        let part = request.single_copy_limit.clamp(MIN_COPY_PART, COPY_PART);
        let mut parts = Vec::new();
        let mut start = 0;
        let mut number = 1;
        let size = request.source.size;
        while start < size {
            let end = (start + part).min(size) - 1;
            let copied = self
                .client
                .upload_part_copy()
                .bucket(self.bucket())
                .key(&full_to)
                .upload_id(id)
                .part_number(number)
                .copy_source(source)
                .set_copy_source_if_match(request.source_etag.map(str::to_string))
                .copy_source_range(format!("bytes={start}-{end}"))
                .customize()
                // The request has no body; Ceph RGW refuses it without saying so (411).
                .mutate_request(|req| {
                    req.headers_mut().insert("content-length", "0");
                })
                .send()
                .await
                .map_err(|e| backend(op, request.to, e))?;
            parts.push(UploadedPart {
                part_number: number as u32,
                etag: copied
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default()
                    .to_string(),
            });
            start = end + 1;
            number += 1;
        }
        Ok(parts)
    }

    /// The metadata of a copy's source, which must exist.
    pub(super) async fn copy_source_meta(&self, from: &str) -> Result<ObjectMeta> {
        self.head(from)
            .await?
            .ok_or_else(|| StoreError::SourceGone {
                key: from.to_string(),
            })
    }

    /// The metadata of a copy the store said it made.
    pub(super) async fn copied_meta(&self, to: &str) -> Result<ObjectMeta> {
        self.head(to).await?.ok_or_else(|| StoreError::Backend {
            op: "copy to",
            key: to.to_string(),
            message: "the copy is not there after the store confirmed it".into(),
        })
    }
}

/// CopySource is `bucket/key`, URL-encoded except for `/`.
pub(super) fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_source_is_url_encoded() {
        assert_eq!(
            super::copy_source("b", "images/a b/c+d.raw"),
            "b/images/a%20b/c%2Bd.raw"
        );
    }
}

//! The S3 backend, for AWS and S3-compatible services (iDrive e2, Garage, MinIO, …).
//!
//! Custom endpoints get path-style addressing, and the SDK's flexible checksums are switched to
//! "when required": several S3-compatible services reject the aws-chunked uploads with trailing
//! checksums the SDK sends by default. labctl verifies content with its own sha256/sha512 anyway.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures_util::StreamExt as _;

use super::*;
use copy::*;
use delete::*;

mod copy;
mod delete;

/// Where the bucket is and how to reach it, after `--store`, `E2_*` and `spec.store` were merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// Where the credentials came from, for `doctor` (never the values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    E2Env,
    AwsChain,
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    settings: S3Settings,
    pub credentials: CredentialSource,
    /// Objects above this size are copied part by part (S3 refuses CopyObject above 5 GiB).
    single_copy_limit: u64,
    /// Keys per listing page (1,000, S3's maximum; lowered by tests to exercise pagination).
    page_size: i32,
    /// Keys per DeleteObjects request (1,000, S3's maximum; lowered by tests).
    delete_batch: usize,
    /// The store answered a DeleteObjects with an error: deletes go one key at a time from then
    /// on, without asking again for every batch.
    batch_delete_refused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("store endpoint `{0}` must use https:// (plain http is accepted only on loopback addresses)")]
    InsecureEndpoint(String),
}

impl S3Store {
    /// Connects with the given access key and secret, or the AWS credential chain.
    pub async fn connect_with(
        settings: S3Settings,
        keys: Option<(String, String)>,
    ) -> std::result::Result<S3Store, S3ConfigError> {
        if let Some(endpoint) = &settings.endpoint {
            if !endpoint.starts_with("https://")
                && !labctl_core::manifest::schema::is_loopback_http(endpoint)
            {
                return Err(S3ConfigError::InsecureEndpoint(endpoint.clone()));
            }
        }
        // The region is the caller's to resolve (flags, environment, manifest).
        let region = settings
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_string());
        let retry = aws_sdk_s3::config::retry::RetryConfig::standard()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(200));
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build();

        let (mut builder, credentials) = match keys {
            Some((k, s)) => (
                aws_sdk_s3::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .credentials_provider(Credentials::new(k, s, None, None, "E2_ACCESS_KEY")),
                CredentialSource::E2Env,
            ),
            None => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(region.clone()))
                    .load()
                    .await;
                (
                    aws_sdk_s3::config::Builder::from(&shared),
                    CredentialSource::AwsChain,
                )
            }
        };
        builder = builder
            .region(Region::new(region))
            .retry_config(retry)
            .timeout_config(timeouts)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            settings,
            credentials,
            single_copy_limit: MAX_SINGLE_COPY,
            page_size: 1000,
            delete_batch: MAX_DELETE_BATCH,
            batch_delete_refused: Default::default(),
        })
    }

    /// A lower single-copy limit, so that tests exercise the part-by-part copy on small objects.
    pub fn with_single_copy_limit(mut self, limit: u64) -> S3Store {
        self.single_copy_limit = limit.clamp(1, MAX_SINGLE_COPY);
        self
    }

    /// Smaller listing pages, so that tests exercise pagination on a few keys.
    pub fn with_page_size(mut self, keys: i32) -> S3Store {
        self.page_size = keys.clamp(1, 1000);
        self
    }

    /// Fewer keys per DeleteObjects request, so that tests exercise several batches on a few keys.
    pub fn with_delete_batch(mut self, keys: usize) -> S3Store {
        self.delete_batch = keys.clamp(1, MAX_DELETE_BATCH);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.settings.bucket
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(match &self.settings.prefix {
            Some(p) => format!("{p}/{key}"),
            None => key.to_string(),
        })
    }

    fn strip(&self, full: &str) -> String {
        match &self.settings.prefix {
            Some(p) => full
                .strip_prefix(p.as_str())
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
                .to_string(),
            None => full.to_string(),
        }
    }

    fn list_prefix(&self, prefix: &str) -> String {
        match &self.settings.prefix {
            Some(p) => format!("{p}/{prefix}"),
            None => prefix.to_string(),
        }
    }

    /// A presigned GET URL of `key`, valid for `expiry`.
    pub async fn presign_get(&self, key: &str, expiry: Duration) -> Result<String> {
        let full = self.full_key(key)?;
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expiry).map_err(|e| {
            StoreError::Backend {
                op: "presign",
                key: key.to_string(),
                message: e.to_string(),
            }
        })?;
        let req = self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(full)
            .presigned(config)
            .await
            .map_err(|e| backend("presign", key, e))?;
        Ok(req.uri().to_string())
    }
}

/// Pages of ListMultipartUploads read at most (a million uploads).
const MAX_UPLOAD_PAGES: usize = 1_000;

fn status<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The store's error, classified by what the SDK says happened (never by its wording), with
/// the SDK's error kept as the source when there was no answer to quote.
fn backend<E>(
    op: &'static str,
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static + ProvideErrorMetadata,
{
    if let (code, message, Some(http)) = (err.code(), err.message(), status(&err)) {
        let message = match (code, message) {
            (Some(code), Some(msg)) => format!("{code} (HTTP {http}): {msg}"),
            (Some(code), None) => format!("{code} (HTTP {http})"),
            (None, _) => format!("HTTP {http}"),
        };
        return StoreError::Backend {
            op,
            key: key.to_string(),
            message,
        };
    }
    if is_credentials_error(&err) {
        return StoreError::Credentials {
            source: Box::new(err),
        };
    }
    let kind = match &err {
        SdkError::TimeoutError(_) => Unreachable::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Unreachable::Timeout,
        SdkError::DispatchFailure(_) => Unreachable::Connection,
        SdkError::ResponseError(_) | SdkError::ServiceError(_) => Unreachable::BadResponse,
        _ => Unreachable::Request,
    };
    StoreError::Unreachable {
        op,
        key: key.to_string(),
        kind,
        source: Box::new(err),
    }
}

/// Whether the credential chain is what failed: its error type somewhere among the causes.
fn is_credentials_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn to_meta(
    key: &str,
    size: Option<i64>,
    etag: Option<&str>,
    metadata: Option<&HashMap<String, String>>,
) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: size.unwrap_or(0).max(0) as u64,
        etag: etag.unwrap_or_default().to_string(),
        listed_modified: None,
        user_metadata: metadata
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn to_hashmap(m: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

#[async_trait]
impl Store for S3Store {
    fn url(&self) -> String {
        let mut url = format!("s3://{}", self.settings.bucket);
        if let Some(p) = &self.settings.prefix {
            url.push('/');
            url.push_str(p);
        }
        if let Some(e) = &self.settings.endpoint {
            url.push_str(&format!(" (endpoint {e})"));
        }
        url
    }

    async fn list_page(&self, prefix: &str, continuation: Option<String>) -> Result<ListPage> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(self.list_prefix(prefix))
            .set_continuation_token(continuation)
            .max_keys(self.page_size)
            .send()
            .await
            .map_err(|e| backend("list", prefix, e))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                let key = self.strip(o.key()?);
                let mut meta = to_meta(&key, o.size(), o.e_tag(), None);
                meta.listed_modified = o
                    .last_modified()
                    .map(|t| format!("{}.{:09}", t.secs(), t.subsec_nanos()));
                Some(meta)
            })
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage { objects, next })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(self.bucket())
            .key(full)
            .send()
            .await
        {
            Ok(o) => Ok(Some(to_meta(
                key,
                o.content_length(),
                o.e_tag(),
                o.metadata(),
            ))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(backend("head", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<GetObject>> {
        let full = self.full_key(key)?;
        match self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(full)
            .send()
            .await
        {
            Ok(o) => {
                let meta = to_meta(key, o.content_length(), o.e_tag(), o.metadata());
                Ok(Some(GetObject {
                    meta,
                    body: Box::pin(o.body.into_async_read()),
                }))
            }
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(backend("get", key, e)),
        }
    }

    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<ObjectMeta> {
        let full = self.full_key(key)?;
        let size = body.len() as i64;
        let mut req = self
            .client
            .put_object()
            .bucket(self.bucket())
            .key(full)
            .body(ByteStream::from(body))
            .set_metadata(to_hashmap(&options.user_metadata));
        if options.mode == PutMode::CreateOnly {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(o) => Ok(ObjectMeta {
                key: key.to_string(),
                size: size as u64,
                etag: o.e_tag().unwrap_or_default().to_string(),
                listed_modified: None,
                user_metadata: options.user_metadata,
            }),
            // 412: the key exists; 409: a concurrent conditional write won the race.
            Err(e)
                if options.mode == PutMode::CreateOnly && matches!(status(&e), Some(412 | 409)) =>
            {
                Err(StoreError::AlreadyExists {
                    key: key.to_string(),
                })
            }
            Err(e) => Err(backend("put", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(self.bucket())
            .key(full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(backend("delete", key, e)),
        }
    }

    async fn delete_many(&self, keys: Vec<String>) -> Vec<(String, StoreError)> {
        let batches: Vec<Vec<String>> = keys
            .chunks(self.delete_batch)
            .map(<[String]>::to_vec)
            .collect();
        // A few batches at once: a store deletes a batch's keys one after another (Garage takes
        // some 0.27 s for 1,000), so one batch at a time leaves its other cores idle.
        futures_util::stream::iter(batches)
            .map(|batch| async move { self.delete_one_batch(&batch).await })
            .buffer_unordered(BATCH_DELETES_AT_ONCE)
            .flat_map(futures_util::stream::iter)
            .collect()
            .await
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool> {
        let full = self.full_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(self.bucket())
            .key(full)
            .if_match(etag)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(true),
            Err(e) if status(&e) == Some(412) => Ok(false),
            Err(e) => Err(backend("delete", key, e)),
        }
    }

    async fn create_multipart(&self, key: &str, options: PutOptions) -> Result<String> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(full)
            .set_metadata(to_hashmap(&options.user_metadata))
            .send()
            .await
            .map_err(|e| backend("create multipart upload", key, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Backend {
                op: "create multipart upload",
                key: key.to_string(),
                message: "the store returned no upload id".into(),
            })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<UploadedPart> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .upload_part()
            .bucket(self.bucket())
            .key(full)
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .body(ByteStream::from(body))
            .customize()
            // The part's bytes are hashed end to end by labctl already (the object completes
            // only if they match); signing each part's payload would hash every byte again.
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| backend("upload part", key, e))?;
        Ok(UploadedPart {
            part_number,
            etag: out.e_tag().unwrap_or_default().to_string(),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: Vec<UploadedPart>,
    ) -> Result<ObjectMeta> {
        let full = self.full_key(key)?;
        parts.sort_by_key(|p| p.part_number);
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.part_number as i32)
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(self.bucket())
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(|e| backend("complete multipart upload", key, e))?;
        self.head(key).await?.ok_or_else(|| StoreError::Backend {
            op: "complete multipart upload",
            key: key.to_string(),
            message: "the object is not visible after completing the upload".into(),
        })
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let full = self.full_key(key)?;
        match self
            .client
            .abort_multipart_upload()
            .bucket(self.bucket())
            .key(full)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(backend("abort multipart upload", key, e)),
        }
    }

    async fn list_started_uploads(&self, prefix: &str) -> Result<Option<Vec<StartedUpload>>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        // Pages of up to 1,000 uploads; a bounded number of them, so that a store that keeps
        // answering "truncated" cannot keep labctl listing forever.
        for _ in 0..MAX_UPLOAD_PAGES {
            let page = match self
                .client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .prefix(self.list_prefix(prefix))
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
            {
                Ok(page) => page,
                Err(e) if matches!(status(&e), Some(400 | 404 | 405 | 501)) => return Ok(None),
                Err(e) => return Err(backend("list multipart uploads", prefix, e)),
            };
            out.extend(page.uploads().iter().filter_map(|u| {
                Some(StartedUpload {
                    upload: Upload {
                        key: self.strip(u.key()?),
                        upload_id: u.upload_id()?.to_string(),
                    },
                    started: u.initiated().and_then(|t| u64::try_from(t.secs()).ok()),
                })
            }));
            let next = (
                page.next_key_marker().map(str::to_string),
                page.next_upload_id_marker().map(str::to_string),
            );
            if page.is_truncated() != Some(true)
                || next.0.is_none()
                || next == (key_marker.clone(), id_marker.clone())
            {
                return Ok(Some(out));
            }
            (key_marker, id_marker) = next;
        }
        // Said, not swallowed: a partial list would look like a complete one.
        Err(StoreError::Backend {
            op: "list multipart uploads",
            key: prefix.to_string(),
            message: format!(
                "more than {} pages of unfinished uploads; stopped listing (a lifecycle rule that aborts incomplete uploads clears them)",
                MAX_UPLOAD_PAGES
            ),
        })
    }

    async fn url_for(&self, key: &str, expiry: Duration) -> Result<String> {
        self.presign_get(key, expiry).await
    }

    async fn set_metadata(
        &self,
        key: &str,
        user_metadata: BTreeMap<String, String>,
    ) -> Result<ObjectMeta> {
        let current = self.head(key).await?.ok_or_else(|| StoreError::Backend {
            op: "set metadata of",
            key: key.to_string(),
            message: "no such object".into(),
        })?;
        // Copying an object onto itself with new metadata is how S3 edits metadata.
        self.copy_object(
            "set metadata of",
            CopyRequest {
                from: key,
                to: key,
                source: &current,
                user_metadata: Some(&user_metadata),
                source_etag: Some(&current.etag),
                single_copy_limit: self.single_copy_limit,
            },
        )
        .await?;
        self.head(key).await?.ok_or_else(|| StoreError::Backend {
            op: "set metadata of",
            key: key.to_string(),
            message: "object vanished".into(),
        })
    }

    async fn copy(
        &self,
        from: &str,
        to: &str,
        user_metadata: Option<BTreeMap<String, String>>,
        checked: Option<&ObjectMeta>,
    ) -> Result<ObjectMeta> {
        // What the caller checked is not asked again for a CopyObject: a promotion of many small
        // images would otherwise spend a third of its requests on HEADs. A copy in parts asks
        // all the same: s3s-fs copies parts whatever x-amz-copy-source-if-match says, and one
        // HEAD is nothing beside hundreds of UploadPartCopy.
        let read;
        let source = match checked {
            Some(source) if source.size <= self.single_copy_limit => source,
            _ => {
                read = self.copy_source_meta(from).await?;
                if checked.is_some_and(|c| c.etag != read.etag) {
                    return Err(StoreError::SourceChanged {
                        key: from.to_string(),
                    });
                }
                &read
            }
        };
        let copied = self
            .copy_object(
                "copy to",
                CopyRequest {
                    from,
                    to,
                    source,
                    user_metadata: user_metadata.as_ref(),
                    source_etag: checked.map(|c| c.etag.as_str()),
                    single_copy_limit: self.single_copy_limit,
                },
            )
            .await?;
        match copied {
            Some(copied) => Ok(copied),
            None => self.copied_meta(to).await,
        }
    }

    async fn probe_copy(&self, from: &str, to: &str, probe: CopyProbe) -> Result<ObjectMeta> {
        let source = self.copy_source_meta(from).await?;
        let (metadata, etag, limit) = match &probe {
            CopyProbe::ReplaceMetadata(m) => (Some(m), None, MAX_SINGLE_COPY),
            // Parts as small as S3 allows, so that a small object is copied in several.
            CopyProbe::InParts { part_size } => (None, None, (*part_size).max(MIN_COPY_PART)),
            CopyProbe::IfMatch(etag) => (None, Some(etag.as_str()), MAX_SINGLE_COPY),
        };
        self.copy_object(
            "copy to",
            CopyRequest {
                from,
                to,
                source: &source,
                user_metadata: metadata,
                source_etag: etag,
                single_copy_limit: limit,
            },
        )
        .await?;
        self.copied_meta(to).await
    }
}

//! Fencing: the store a lock holder writes through. Every write that changes what others see —
//! an object made visible, a record, a history copy, the index, a delete — first checks that
//! the run still holds a live lease, so the check sits at every commit point without any of
//! them having to remember it. Reads, starting and feeding a multipart upload (invisible until
//! completed) and aborting one (cleanup) are let through.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::lease::Lease;
use crate::{
    CopyProbe, GetObject, ListPage, ObjectMeta, PutOptions, Result, StartedUpload, Store,
    StoreError, UploadedPart,
};

#[derive(Debug)]
pub struct Fenced {
    inner: Arc<dyn Store>,
    lease: Arc<Lease>,
}

impl Fenced {
    pub fn new(inner: Arc<dyn Store>, lease: Arc<Lease>) -> Fenced {
        Fenced { inner, lease }
    }

    fn check(&self, op: &'static str, key: &str) -> Result<()> {
        self.lease.check().map_err(|why| StoreError::Fenced {
            op,
            key: key.to_string(),
            why,
        })
    }
}

#[async_trait]
impl Store for Fenced {
    fn url(&self) -> String {
        self.inner.url()
    }
    async fn list_page(&self, prefix: &str, continuation: Option<String>) -> Result<ListPage> {
        self.inner.list_page(prefix, continuation).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.inner.head(key).await
    }
    async fn get(&self, key: &str) -> Result<Option<GetObject>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<ObjectMeta> {
        self.check("put", key)?;
        self.inner.put(key, body, options).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.check("delete", key)?;
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: Vec<String>) -> Vec<(String, StoreError)> {
        match self.lease.check() {
            Ok(()) => self.inner.delete_many(keys).await,
            // Not one of them is deleted; each says why.
            Err(why) => keys
                .into_iter()
                .map(|key| {
                    let error = StoreError::Fenced {
                        op: "delete",
                        key: key.clone(),
                        why: why.clone(),
                    };
                    (key, error)
                })
                .collect(),
        }
    }
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool> {
        self.check("delete", key)?;
        self.inner.delete_if(key, etag).await
    }
    async fn create_multipart(&self, key: &str, options: PutOptions) -> Result<String> {
        // Invisible, but there is no point starting what cannot be completed.
        self.check("start upload of", key)?;
        self.inner.create_multipart(key, options).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<UploadedPart> {
        self.inner
            .upload_part(key, upload_id, part_number, body)
            .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<ObjectMeta> {
        self.check("complete upload of", key)?;
        self.inner.complete_multipart(key, upload_id, parts).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.inner.abort_multipart(key, upload_id).await
    }
    async fn list_started_uploads(&self, prefix: &str) -> Result<Option<Vec<StartedUpload>>> {
        self.inner.list_started_uploads(prefix).await
    }
    async fn url_for(&self, key: &str, expiry: Duration) -> Result<String> {
        self.inner.url_for(key, expiry).await
    }
    async fn set_metadata(
        &self,
        key: &str,
        user_metadata: BTreeMap<String, String>,
    ) -> Result<ObjectMeta> {
        self.check("set metadata of", key)?;
        self.inner.set_metadata(key, user_metadata).await
    }
    async fn copy(
        &self,
        from: &str,
        to: &str,
        user_metadata: Option<BTreeMap<String, String>>,
        checked: Option<&ObjectMeta>,
    ) -> Result<ObjectMeta> {
        self.check("copy to", to)?;
        self.inner.copy(from, to, user_metadata, checked).await
    }
    async fn probe_copy(&self, from: &str, to: &str, probe: CopyProbe) -> Result<ObjectMeta> {
        self.check("copy to", to)?;
        self.inner.probe_copy(from, to, probe).await
    }
}

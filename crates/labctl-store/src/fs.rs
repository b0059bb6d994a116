//! A store in a local directory, with the bucket's layout.
//!
//! Objects are plain files at `<root>/<key>`, so the directory can be synced or served as is.
//! Every write goes to a temporary file in the target's directory, is fsynced, then renamed into
//! place: a reader sees the old object or the new one, never a partial one. User metadata lives
//! in a sidecar tree, `<root>/.labctl-fs/meta/<key>.json`, and unfinished multipart uploads in
//! `<root>/.labctl-fs/uploads/`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;

const INTERNAL_DIR: &str = ".labctl-fs";
const TEMP_PREFIX: &str = ".labctl-tmp-";

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    page_size: usize,
}

impl FsStore {
    pub fn new(root: impl Into<PathBuf>) -> FsStore {
        FsStore {
            root: root.into(),
            page_size: 1000,
        }
    }

    /// Smaller pages, so tests exercise pagination with few objects.
    pub fn with_page_size(mut self, page_size: usize) -> FsStore {
        self.page_size = page_size.max(1);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        if key == INTERNAL_DIR || key.starts_with(&format!("{INTERNAL_DIR}/")) {
            return Err(StoreError::InvalidKey {
                key: key.to_string(),
                reason: "is reserved for the filesystem store's own bookkeeping",
            });
        }
        if key.split('/').any(|s| s.starts_with(TEMP_PREFIX)) {
            return Err(StoreError::InvalidKey {
                key: key.to_string(),
                reason: "uses the prefix reserved for temporary files",
            });
        }
        Ok(self.root.join(key))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.root
            .join(INTERNAL_DIR)
            .join("meta")
            .join(format!("{key}.json"))
    }

    fn upload_dir(&self, upload_id: &str) -> PathBuf {
        self.root.join(INTERNAL_DIR).join("uploads").join(upload_id)
    }
}

fn io_err<'a>(op: &'static str, key: &'a str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        key: key.to_string(),
        source,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("filesystem task panicked")
}

/// Changes on every rewrite: an atomic rename gives the file a new inode.
fn etag_of(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "\"{:x}-{:x}-{:x}\"",
        meta.ino(),
        meta.mtime_nsec() as u64 ^ ((meta.mtime() as u64) << 30),
        meta.len()
    )
}

fn read_meta(path: &Path) -> BTreeMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes `path` atomically: temp file in the same directory, fsync, rename, fsync of the
/// directory so the rename itself survives a crash. With `create_only`, returns `false` instead
/// of replacing an existing file.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    create_only: bool,
) -> std::io::Result<bool> {
    let dir = path.parent().expect("keys have a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    if create_only {
        match tmp.persist_noclobber(path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e.error),
        }
    } else {
        tmp.persist(path).map_err(|e| e.error)?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

fn write_meta(store: &FsStore, key: &str, meta: &BTreeMap<String, String>) -> std::io::Result<()> {
    let path = store.meta_path(key);
    if meta.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => return Ok(()),
        }
    }
    let json = serde_json::to_vec_pretty(meta).expect("string maps serialize");
    write_atomic(&path, |f| f.write_all(&json), false).map(|_| ())
}

fn head_sync(store: &FsStore, key: &str) -> Result<Option<ObjectMeta>> {
    let path = store.path_of(key)?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
            key: key.to_string(),
            size: m.len(),
            etag: etag_of(&m),
            listed_modified: None,
            user_metadata: read_meta(&store.meta_path(key)),
        })),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("head", key)(e)),
    }
}

/// Removes now-empty directories between `path` and the root, as S3 has no directories.
fn prune_empty_parents(root: &Path, path: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::fs::Metadata)>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) || (dir == root && name == INTERNAL_DIR) {
            continue;
        }
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).expect("walk stays below root");
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((key, meta));
        }
    }
    Ok(())
}

static UPLOAD_COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_upload_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = UPLOAD_COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{}-{}-{}", std::process::id(), nanos, n);
    labctl_core::checksum::Checksum::sha256(seed.as_bytes()).hex()[..24].to_string()
}

#[async_trait]
impl Store for FsStore {
    fn url(&self) -> String {
        let abs = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("file://{}", abs.display())
    }

    async fn list_page(&self, prefix: &str, continuation: Option<String>) -> Result<ListPage> {
        let store = self.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let mut all = Vec::new();
            walk(&store.root, &store.root, &mut all).map_err(io_err("list", &prefix))?;
            all.retain(|(k, _)| k.starts_with(&prefix));
            if let Some(after) = &continuation {
                all.retain(|(k, _)| k > after);
            }
            all.sort_by(|a, b| a.0.cmp(&b.0));
            let more = all.len() > store.page_size;
            all.truncate(store.page_size);
            let next = if more {
                all.last().map(|(k, _)| k.clone())
            } else {
                None
            };
            Ok(ListPage {
                objects: all
                    .into_iter()
                    .map(|(key, m)| ObjectMeta {
                        size: m.len(),
                        etag: etag_of(&m),
                        // As S3 listings give it: seconds and nanoseconds since the epoch.
                        listed_modified: m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos())),
                        key,
                        user_metadata: BTreeMap::new(),
                    })
                    .collect(),
                next,
            })
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let store = self.clone();
        let key = key.to_string();
        blocking(move || head_sync(&store, &key)).await
    }

    async fn get(&self, key: &str) -> Result<Option<GetObject>> {
        let path = self.path_of(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("get", key)(e)),
        };
        let m = file.metadata().await.map_err(io_err("get", key))?;
        if !m.is_file() {
            return Ok(None);
        }
        Ok(Some(GetObject {
            meta: ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                etag: etag_of(&m),
                listed_modified: None,
                user_metadata: read_meta(&self.meta_path(key)),
            },
            body: Box::pin(file),
        }))
    }

    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<ObjectMeta> {
        let store = self.clone();
        let key = key.to_string();
        blocking(move || {
            let path = store.path_of(&key)?;
            let create_only = options.mode == PutMode::CreateOnly;
            let written = write_atomic(&path, |f| f.write_all(&body), create_only)
                .map_err(io_err("put", &key))?;
            if !written {
                return Err(StoreError::AlreadyExists { key });
            }
            // The object is renamed into place before its metadata is written: a crash between
            // the two leaves new bytes with old metadata, which a refresh reports as modified
            // (and a re-apply fixes), never old bytes that claim to be new.
            write_meta(&store, &key, &options.user_metadata).map_err(io_err("put", &key))?;
            head_sync(&store, &key)?.ok_or_else(|| StoreError::Backend {
                op: "put",
                key: key.clone(),
                message: "object vanished right after it was written".into(),
            })
        })
        .await
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool> {
        // A directory has no conditional delete; one labctl process per store directory makes
        // the check and the delete close enough.
        match self.head(key).await? {
            Some(meta) if meta.etag != etag => Ok(false),
            _ => self.delete(key).await.map(|()| true),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let store = self.clone();
        let key = key.to_string();
        blocking(move || {
            let path = store.path_of(&key)?;
            for p in [path.clone(), store.meta_path(&key)] {
                match std::fs::remove_file(&p) {
                    Ok(()) => prune_empty_parents(&store.root, &p),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("delete", &key)(e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn create_multipart(&self, key: &str, options: PutOptions) -> Result<String> {
        let store = self.clone();
        let key = key.to_string();
        blocking(move || {
            store.path_of(&key)?;
            let id = new_upload_id();
            let dir = store.upload_dir(&id);
            std::fs::create_dir_all(&dir).map_err(io_err("create multipart upload", &key))?;
            let info = serde_json::json!({"key": key, "userMetadata": options.user_metadata});
            std::fs::write(dir.join("upload.json"), info.to_string())
                .map_err(io_err("create multipart upload", &key))?;
            Ok(id)
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<UploadedPart> {
        let store = self.clone();
        let (key, upload_id) = (key.to_string(), upload_id.to_string());
        blocking(move || {
            let dir = store.upload_dir(&upload_id);
            if !dir.is_dir() {
                return Err(StoreError::NoSuchUpload { key, upload_id });
            }
            let path = dir.join(format!("part-{part_number:05}"));
            write_atomic(&path, |f| f.write_all(&body), false)
                .map_err(io_err("upload part", &key))?;
            Ok(UploadedPart {
                part_number,
                etag: labctl_core::checksum::Checksum::sha256(&body).hex()[..32].to_string(),
            })
        })
        .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<ObjectMeta> {
        let store = self.clone();
        let (key, upload_id) = (key.to_string(), upload_id.to_string());
        blocking(move || {
            let dir = store.upload_dir(&upload_id);
            let info: serde_json::Value = std::fs::read(dir.join("upload.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| StoreError::NoSuchUpload {
                    key: key.clone(),
                    upload_id: upload_id.clone(),
                })?;
            let meta: BTreeMap<String, String> =
                serde_json::from_value(info["userMetadata"].clone()).unwrap_or_default();
            let path = store.path_of(&key)?;
            let mut sorted = parts.clone();
            sorted.sort_by_key(|p| p.part_number);
            write_atomic(
                &path,
                |out| {
                    for part in &sorted {
                        let mut f =
                            std::fs::File::open(dir.join(format!("part-{:05}", part.part_number)))?;
                        std::io::copy(&mut f, out)?;
                    }
                    Ok(())
                },
                false,
            )
            .map_err(io_err("complete multipart upload", &key))?;
            write_meta(&store, &key, &meta).map_err(io_err("complete multipart upload", &key))?;
            let _ = std::fs::remove_dir_all(&dir);
            head_sync(&store, &key)?.ok_or_else(|| StoreError::Backend {
                op: "complete multipart upload",
                key: key.clone(),
                message: "object vanished right after it was written".into(),
            })
        })
        .await
    }

    async fn list_started_uploads(&self, prefix: &str) -> Result<Option<Vec<StartedUpload>>> {
        let dir = self.root.join(INTERNAL_DIR).join("uploads");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(out)),
            Err(e) => return Err(io_err("list uploads", prefix)(e)),
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            let info: Option<serde_json::Value> = std::fs::read(entry.path().join("upload.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(key) = info.as_ref().and_then(|i| i["key"].as_str()) {
                if key.starts_with(prefix) {
                    // Its directory changes with every part written: the upload's last activity,
                    // which tells a stalled upload from a running one as well as its start.
                    let started = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs());
                    out.push(StartedUpload {
                        upload: Upload {
                            key: key.to_string(),
                            upload_id: id,
                        },
                        started,
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.upload.key, &a.upload.upload_id).cmp(&(&b.upload.key, &b.upload.upload_id))
        });
        Ok(Some(out))
    }

    async fn url_for(&self, key: &str, _expiry: std::time::Duration) -> Result<String> {
        let path = self.path_of(key)?;
        let abs = std::path::absolute(&path).map_err(io_err("resolve", key))?;
        Ok(format!("file://{}", abs.display()))
    }

    async fn set_metadata(
        &self,
        key: &str,
        user_metadata: BTreeMap<String, String>,
    ) -> Result<ObjectMeta> {
        let store = self.clone();
        let key = key.to_string();
        let written = blocking(move || {
            if head_sync(&store, &key)?.is_none() {
                return Err(StoreError::Backend {
                    op: "set metadata of",
                    key,
                    message: "no such object".into(),
                });
            }
            write_meta(&store, &key, &user_metadata).map_err(io_err("set metadata of", &key))?;
            head_sync(&store, &key)?.ok_or_else(|| StoreError::Backend {
                op: "set metadata of",
                key: key.clone(),
                message: "object vanished".into(),
            })
        });
        // The blocking task goes on if this future is dropped, like a request the store got.
        let in_flight = crate::pending::InFlight::start();
        let done = written.await;
        in_flight.done();
        done
    }

    async fn copy(
        &self,
        from: &str,
        to: &str,
        user_metadata: Option<BTreeMap<String, String>>,
        checked: Option<&ObjectMeta>,
    ) -> Result<ObjectMeta> {
        let store = self.clone();
        let (from, to) = (from.to_string(), to.to_string());
        let source_etag = checked.map(|c| c.etag.clone());
        let copied = blocking(move || {
            let source = store.path_of(&from)?;
            let target = store.path_of(&to)?;
            if let Some(etag) = source_etag {
                let now = head_sync(&store, &from)?.map(|m| m.etag);
                if now.as_deref() != Some(etag.as_str()) {
                    return Err(StoreError::SourceChanged { key: from });
                }
            }
            let metadata = match user_metadata {
                Some(m) => m,
                None => read_meta(&store.meta_path(&from)),
            };
            let copied = write_atomic(
                &target,
                |out| {
                    let mut f = std::fs::File::open(&source)?;
                    std::io::copy(&mut f, out).map(|_| ())
                },
                false,
            );
            match copied {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.is_file() => {
                    return Err(StoreError::SourceGone { key: from })
                }
                Err(e) => return Err(io_err("copy to", &to)(e)),
            }
            write_meta(&store, &to, &metadata).map_err(io_err("copy to", &to))?;
            head_sync(&store, &to)?.ok_or_else(|| StoreError::Backend {
                op: "copy to",
                key: to.clone(),
                message: "the copy vanished right after it was written".into(),
            })
        });
        let in_flight = crate::pending::InFlight::start();
        let done = copied.await;
        in_flight.done();
        done
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let dir = self.upload_dir(upload_id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("abort multipart upload", key)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> PutOptions {
        PutOptions {
            mode: PutMode::Overwrite,
            user_metadata: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn put_get_head_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path()).with_page_size(2);
        let written = store
            .put(
                "images/a/x.raw",
                Bytes::from_static(b"hello"),
                meta(&[(META_CHECKSUM, "c")]),
            )
            .await
            .unwrap();
        assert_eq!(written.size, 5);
        for k in ["images/b.raw", "metadata/a/x.raw.json", "images/c/d/e.raw"] {
            store
                .put(k, Bytes::from_static(b"."), PutOptions::default())
                .await
                .unwrap();
        }
        let head = store.head("images/a/x.raw").await.unwrap().unwrap();
        assert_eq!(
            head.user_metadata.get(META_CHECKSUM).map(String::as_str),
            Some("c")
        );
        assert_eq!(head.etag, written.etag);
        let (m, bytes) = get_bytes(&store, "images/a/x.raw", 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(m.etag, written.etag);

        let keys: Vec<String> = list_all(&store, "images/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["images/a/x.raw", "images/b.raw", "images/c/d/e.raw"]);
        let first = store.list_page("images/", None).await.unwrap();
        assert_eq!(first.objects.len(), 2);
        assert!(first.next.is_some());

        store.delete("images/c/d/e.raw").await.unwrap();
        store.delete("images/c/d/e.raw").await.unwrap();
        assert!(store.head("images/c/d/e.raw").await.unwrap().is_none());
        assert!(
            !dir.path().join("images/c").exists(),
            "empty directories are pruned"
        );
        assert!(store.get("images/nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rewrite_changes_etag_and_create_only_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let lock = PutOptions {
            mode: PutMode::CreateOnly,
            ..Default::default()
        };
        let a = store
            .put(".labctl/lock.json", Bytes::from_static(b"1"), lock.clone())
            .await
            .unwrap();
        let again = store
            .put(".labctl/lock.json", Bytes::from_static(b"2"), lock)
            .await;
        assert!(matches!(again, Err(StoreError::AlreadyExists { .. })));
        let b = store
            .put(
                ".labctl/lock.json",
                Bytes::from_static(b"2"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        assert_ne!(a.etag, b.etag);
    }

    #[tokio::test]
    async fn multipart_is_invisible_until_complete_and_abort_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let key = "images/big.raw";
        let id = store
            .create_multipart(key, meta(&[(META_FINGERPRINT, "f")]))
            .await
            .unwrap();
        let p2 = store
            .upload_part(key, &id, 2, Bytes::from_static(b"world"))
            .await
            .unwrap();
        let p1 = store
            .upload_part(key, &id, 1, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        assert!(store.head(key).await.unwrap().is_none());
        assert!(
            list_all(&store, "").await.unwrap().is_empty(),
            "parts are not listed"
        );
        let done = store
            .complete_multipart(key, &id, vec![p2, p1])
            .await
            .unwrap();
        assert_eq!(done.size, 11);
        assert_eq!(
            done.user_metadata.get(META_FINGERPRINT).map(String::as_str),
            Some("f")
        );
        let (_, bytes) = get_bytes(&store, key, 100).await.unwrap().unwrap();
        assert_eq!(bytes, b"hello world");

        let id = store
            .create_multipart("images/other", PutOptions::default())
            .await
            .unwrap();
        store
            .upload_part("images/other", &id, 1, Bytes::from_static(b"x"))
            .await
            .unwrap();
        store.abort_multipart("images/other", &id).await.unwrap();
        assert!(store.head("images/other").await.unwrap().is_none());
        assert!(matches!(
            store
                .upload_part("images/other", &id, 2, Bytes::new())
                .await,
            Err(StoreError::NoSuchUpload { .. })
        ));
    }

    #[tokio::test]
    async fn rejects_escaping_and_reserved_keys() {
        let store = FsStore::new("/nonexistent");
        for key in [
            "../x",
            "/etc/passwd",
            "a//b",
            ".labctl-fs/meta/x",
            "a/.labctl-tmp-1",
        ] {
            assert!(
                matches!(store.head(key).await, Err(StoreError::InvalidKey { .. })),
                "{key}"
            );
        }
    }
}

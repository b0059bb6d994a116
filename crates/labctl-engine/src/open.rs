//! Opening the store a command names: `--store` (or `LABCTL_STORE`), else `E2_BUCKET`, else
//! the manifest's `spec.store`, with what the environment says about endpoints and keys.

use std::sync::Arc;

use crate::failure::{Failure, WithHint};
use crate::manifest::Manifest;
use crate::store::s3::{S3Settings, S3Store};
use crate::store::{fs::FsStore, Store, StoreLocation};

/// S3's smallest UploadPartCopy part: a lower single-copy limit could not be copied in parts.
const MIN_COPY_LIMIT: u64 = 5 * 1024 * 1024;

/// Where the store is, from the environment. Which wins is documented in the operations guide:
/// a store named outside the manifest (`--store s3://…`, `E2_BUCKET`) takes nothing from the
/// manifest's `spec.store`.
#[derive(Debug, Clone)]
pub struct StoreEnv {
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    /// `E2_REGION`, else `AWS_REGION`.
    pub region: Option<String>,
    /// `E2_ACCESS_KEY` and `E2_SECRET_KEY`; `Err` when only one is set.
    pub keys: Result<Option<(String, String)>, HalfKeys>,
    /// `LABCTL_SINGLE_COPY_LIMIT` (bytes): server-side copies above it go part by part
    /// (UploadPartCopy), for a store whose CopyObject limit is below S3's 5 GiB. As written:
    /// opening the store says what is wrong with it.
    pub single_copy_limit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("E2_ACCESS_KEY is set but E2_SECRET_KEY is not (or the other way round)")]
pub struct HalfKeys;

/// Opens the store named by `--store`/`LABCTL_STORE`, else `E2_BUCKET`, else the manifest's
/// `spec.store`.
///
/// A store named outside the manifest is taken whole from there: `--store s3://BUCKET/PREFIX`
/// or `E2_BUCKET` use `E2_ENDPOINT` and `E2_REGION` (else `AWS_REGION`), never the manifest's
/// endpoint or region, which describe the manifest's own bucket. With the manifest's store,
/// `E2_ENDPOINT` and `E2_REGION` still override its endpoint and region (a mirror of the same
/// bucket elsewhere).
pub async fn open_store(
    flag: Option<&str>,
    manifest: Option<&Manifest>,
    env: &StoreEnv,
) -> Result<Arc<dyn Store>, Failure> {
    match store_location(flag, manifest, env)? {
        StoreLocation::Dir(dir) => open_dir(dir),
        StoreLocation::S3 {
            bucket,
            prefix,
            endpoint,
            region,
        } => {
            let settings = S3Settings {
                bucket,
                prefix,
                endpoint: endpoint.or_else(|| env.endpoint.clone()),
                region: region.or_else(|| env.region.clone()),
            };
            open_s3(settings, env).await
        }
    }
}

/// Where the store is: the flag, else `E2_BUCKET`, else the manifest (see [`open_store`]).
fn store_location(
    flag: Option<&str>,
    manifest: Option<&Manifest>,
    env: &StoreEnv,
) -> Result<StoreLocation, Failure> {
    let from_manifest = manifest
        .and_then(|m| m.store.as_ref())
        .map(StoreLocation::from_config);
    Ok(match (flag, &env.bucket, from_manifest) {
        (Some(url), _, _) => StoreLocation::parse(url)?,
        (None, Some(bucket), _) => StoreLocation::S3 {
            bucket: bucket.clone(),
            prefix: None,
            endpoint: None,
            region: None,
        },
        (
            None,
            None,
            Some(StoreLocation::S3 {
                bucket,
                prefix,
                endpoint,
                region,
            }),
        ) => StoreLocation::S3 {
            bucket,
            prefix,
            endpoint: env.endpoint.clone().or(endpoint),
            region: env.region.clone().or(region),
        },
        (None, None, Some(location)) => location,
        (None, None, None) => return Err(anyhow::anyhow!("no store given")).hint(
            "pass --store DIR or s3://BUCKET, set LABCTL_STORE, or add spec.store to the manifest",
        ),
    })
}

/// A directory store, refusing what is most likely a mistake: an empty path (an unset CI
/// secret), a file, a missing directory, the store's images/ folder instead of the store.
fn open_dir(dir: std::path::PathBuf) -> Result<Arc<dyn Store>, Failure> {
    if dir.as_os_str().is_empty() {
        // What an unset CI secret looks like: `LABCTL_STORE=` or `--store ""`.
        return Err(anyhow::anyhow!("the store is given as an empty string"))
            .hint("pass --store DIR or s3://BUCKET (is a CI secret or variable unset?)");
    }
    if dir.exists() && !dir.is_dir() {
        return Err(anyhow::anyhow!(
            "store `{}` is a file, not a directory",
            dir.display()
        ))
        .hint("a directory store is a directory with the bucket layout (images/, metadata/); s3://BUCKET names a bucket");
    }
    if !dir.is_dir() {
        return Err(anyhow::anyhow!(
            "store directory `{}` does not exist",
            dir.display()
        ))
        .hint("create it first (an empty directory is an empty store), or check the path");
    }
    // The bucket's images/ named instead of the bucket: its SHA256SUMS gives it away.
    if dir.file_name().is_some_and(|n| n == "images")
        && dir.join(crate::consumer_index::SUMS_NAME).is_file()
        && dir.parent().is_some_and(|p| p.join("metadata").is_dir())
    {
        return Err(anyhow::anyhow!(
            "`{}` is the images/ folder of a store, not a store",
            dir.display()
        ))
        .hint(format!(
            "pass the directory that holds images/ and metadata/: --store {}",
            dir.parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    Ok(Arc::new(FsStore::new(dir)))
}

/// An S3 store with the environment's keys and single-copy limit.
async fn open_s3(settings: S3Settings, env: &StoreEnv) -> Result<Arc<dyn Store>, Failure> {
    let keys = env.keys.clone().hint(
        "set both E2_ACCESS_KEY and E2_SECRET_KEY, or neither to use the AWS credential chain",
    )?;
    let mut store = S3Store::connect_with(settings, keys).await?;
    if let Some(limit) = &env.single_copy_limit {
        let bytes = limit
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|b| *b >= MIN_COPY_LIMIT)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "LABCTL_SINGLE_COPY_LIMIT is `{limit}`, not a number of bytes of at least {MIN_COPY_LIMIT} (5 MiB, S3's smallest copy part)"
                )
            })?;
        store = store.with_single_copy_limit(bytes);
    }
    Ok(Arc::new(store))
}

//! `labctl doctor`: probes a store for everything labctl relies on, one line per check.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use console::style;

use crate::checksum::Checksum;
use crate::cli::DoctorArgs;
use crate::failure::Failure;
use crate::store::pending::PendingUpload;
use crate::store::{self, CopyProbe, PutMode, PutOptions, Store, StoreError, UploadedPart};

const PROBE_PREFIX: &str = ".labctl/doctor";

struct Checks {
    failed: usize,
    warned: usize,
}

/// A check labctl can work without, at a cost the operator should know.
enum Probe {
    Holds(String),
    Lacks(String),
}

impl Checks {
    fn report(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => println!("{} {name}: {detail}", style("✓").green()),
            Err(why) => {
                self.failed += 1;
                println!("{} {name}: {why}", style("✗").red());
            }
        }
    }

    /// The last line: whether labctl can use the store.
    fn verdict(&self) -> String {
        if self.failed == 0 && self.warned == 0 {
            "The store supports everything labctl needs.".to_string()
        } else if self.failed == 0 {
            format!(
                "The store supports everything labctl needs; {} check{} found a limit labctl works around (see above).",
                self.warned,
                if self.warned == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "{} check{} failed.",
                self.failed,
                if self.failed == 1 { "" } else { "s" }
            )
        }
    }

    fn report_probe(&mut self, name: &str, result: Result<Probe, String>) {
        match result {
            Ok(Probe::Holds(detail)) => self.report(name, Ok(detail)),
            Ok(Probe::Lacks(detail)) => {
                self.warned += 1;
                println!("{} {name}: {detail}", style("!").yellow());
            }
            Err(why) => self.report(name, Err(why)),
        }
    }
}

pub async fn run(args: &DoctorArgs) -> Result<ExitCode, Failure> {
    let manifest = super::optional_manifest(&args.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), manifest.as_ref()).await?;
    println!("Store: {}", store.url());
    let mut checks = Checks {
        failed: 0,
        warned: 0,
    };
    let id = Checksum::sha256(
        format!("{}-{}", std::process::id(), crate::timefmt::now_rfc3339()).as_bytes(),
    )
    .hex()[..12]
        .to_string();

    let listed = store::list_all(store.as_ref(), crate::manifest::METADATA_PREFIX).await;
    let can_list = listed.is_ok();
    checks.report(
        "credentials and list",
        listed
            .map(|l| format!("{} objects under metadata/", l.len()))
            .map_err(|e| format!("{e:#}", e = anyhow::Error::from(e))),
    );
    if !can_list {
        println!("  hint: check the bucket name, endpoint and credentials (E2_ACCESS_KEY/E2_SECRET_KEY or the AWS chain)");
        return Ok(super::exit(1));
    }

    probe_all(&store, &id, &mut checks).await;

    // Leave nothing behind, even after failures.
    if let Ok(left) = store::list_all(store.as_ref(), PROBE_PREFIX).await {
        for o in left.iter().filter(|o| o.key.contains(&id)) {
            let _ = store.delete(&o.key).await;
        }
    }
    println!("{}", checks.verdict());
    Ok(if checks.failed == 0 {
        ExitCode::SUCCESS
    } else {
        super::exit(1)
    })
}

/// Every probe after the listing, each reported as it ends.
async fn probe_all(store: &Arc<dyn Store>, id: &str, checks: &mut Checks) {
    checks.report("write, read and metadata", write_read(store, id).await);
    checks.report("multipart upload", multipart(store, id).await);
    checks.report("abort multipart upload", abort(store, id).await);
    let conditional = conditional(store, id).await;
    let enforced = conditional.is_ok();
    checks.report("conditional create (If-None-Match: *)", conditional);
    // What history and a promotion of staged images rely on: copies inside the store.
    checks.report(
        "server-side copy with new metadata (CopyObject, metadata REPLACE)",
        copy_with_metadata(store, id).await,
    );
    checks.report(
        "part-by-part server-side copy (UploadPartCopy, x-amz-copy-source-range)",
        copy_in_parts(store, id).await,
    );
    checks.report_probe(
        "conditional copy (x-amz-copy-source-if-match)",
        conditional_copy(store, id).await,
    );
    checks.report_probe(
        "conditional delete (If-Match)",
        conditional_delete(store, id).await,
    );
    checks.report(
        "unfinished uploads labctl left (images/, history/, .labctl/doctor/)",
        match crate::apply::stranded::list(store.as_ref()).await {
            Ok(Some(u)) if u.is_empty() => Ok("none".into()),
            Ok(Some(u)) => Ok(format!(
                "{} left by interrupted runs (or an apply running now); the next apply aborts them",
                u.len()
            )),
            Ok(None) => Ok("the store cannot list them; a lifecycle rule (AbortIncompleteMultipartUpload) cleans them up".into()),
            Err(e) => Err(err(e)),
        },
    );
    if !enforced {
        println!("  hint: apply cannot rely on this store's lock; run applies one at a time (a CI concurrency group) and pass --lock=false");
    }
}

fn err(e: StoreError) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

async fn write_read(store: &Arc<dyn Store>, id: &str) -> Result<String, String> {
    let key = format!("{PROBE_PREFIX}/probe-{id}");
    let body = Bytes::from(format!("labctl doctor probe {id}\n"));
    let meta = BTreeMap::from([(
        store::META_CHECKSUM.to_string(),
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
        .await
        .map_err(err)?;
    let (got_meta, got) = store::get_bytes(store.as_ref(), &key, 1024)
        .await
        .map_err(err)?
        .ok_or("the probe written a moment ago cannot be read")?;
    if got != body {
        return Err("the probe read back differs from what was written".into());
    }
    let head = store
        .head(&key)
        .await
        .map_err(err)?
        .ok_or("HEAD does not find the probe")?;
    if head.user_metadata.get(store::META_CHECKSUM) != meta.get(store::META_CHECKSUM)
        || got_meta.user_metadata.get(store::META_CHECKSUM) != meta.get(store::META_CHECKSUM)
    {
        return Err("user metadata is not kept: drift detection by HEAD will not work".into());
    }
    store.delete(&key).await.map_err(err)?;
    if store.head(&key).await.map_err(err)?.is_some() {
        return Err("a deleted probe is still there".into());
    }
    Ok("put, get, head, user metadata and delete work".into())
}

async fn multipart(store: &Arc<dyn Store>, id: &str) -> Result<String, String> {
    let key = format!("{PROBE_PREFIX}/multipart-{id}");
    let first = Bytes::from(vec![b'a'; crate::pipeline::MIN_PART_SIZE]);
    let second = Bytes::from_static(b"end");
    // Held by a guard: a failure or a signal here aborts the probe upload.
    let upload = PendingUpload::start(store.clone(), &key, PutOptions::default())
        .await
        .map_err(err)?;
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
            if let Err(failed) = upload.abort().await {
                return Err(format!("{}; and {failed}", err(e)));
            }
            return Err(err(e));
        }
    };
    let done = upload.complete(parts).await.map_err(err)?;
    let expected = (first.len() + second.len()) as u64;
    let result = if done.size == expected {
        Ok(format!("two parts ({} bytes) completed", expected))
    } else {
        Err(format!(
            "completed object has {} bytes, expected {expected}",
            done.size
        ))
    };
    store.delete(&key).await.map_err(err)?;
    result
}

async fn abort(store: &Arc<dyn Store>, id: &str) -> Result<String, String> {
    let key = format!("{PROBE_PREFIX}/aborted-{id}");
    let pending = PendingUpload::start(store.clone(), &key, PutOptions::default())
        .await
        .map_err(err)?;
    let upload = pending.id().to_string();
    store
        .upload_part(&key, &upload, 1, Bytes::from_static(b"x"))
        .await
        .map_err(err)?;
    pending.abort().await.map_err(|e| {
        let what = e.to_string();
        format!("{what}: {}", err(e.source))
    })?;
    if store.head(&key).await.map_err(err)?.is_some() {
        return Err("an aborted upload became visible".into());
    }
    match store.list_uploads(PROBE_PREFIX).await.map_err(err)? {
        Some(list) if list.iter().any(|(_, u)| *u == upload) => {
            Err("the aborted upload is still listed".into())
        }
        Some(_) => Ok("aborted uploads leave nothing behind".into()),
        None => Ok("aborted (the store cannot list unfinished uploads to confirm)".into()),
    }
}

async fn conditional(store: &Arc<dyn Store>, id: &str) -> Result<String, String> {
    let key = format!("{PROBE_PREFIX}/conditional-{id}");
    let create = PutOptions {
        mode: PutMode::CreateOnly,
        ..Default::default()
    };
    store
        .put(&key, Bytes::from_static(b"1"), create.clone())
        .await
        .map_err(err)?;
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
        Err(e) => Err(err(e)),
    }
}

/// A probe object of `size` bytes (a pattern, so that a misplaced part shows), with its bytes.
async fn probe_source(
    store: &Arc<dyn Store>,
    key: &str,
    size: usize,
) -> Result<(Vec<u8>, store::ObjectMeta), String> {
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let options = PutOptions {
        user_metadata: BTreeMap::from([("labctl-probe".to_string(), "source".to_string())]),
        ..Default::default()
    };
    let meta = store
        .put(key, Bytes::from(body.clone()), options)
        .await
        .map_err(err)?;
    Ok((body, meta))
}

/// Whether `key` holds exactly `body`.
async fn holds(store: &Arc<dyn Store>, key: &str, body: &[u8]) -> Result<(), String> {
    match store::get_bytes(store.as_ref(), key, body.len() + 1).await {
        Ok(Some((_, got))) if got == body => Ok(()),
        Ok(Some((_, got))) => Err(format!(
            "the copy holds other bytes ({} bytes, {} expected)",
            got.len(),
            body.len()
        )),
        Ok(None) => Err("the copy is not there".into()),
        Err(e) => Err(err(e)),
    }
}

async fn copy_with_metadata(store: &Arc<dyn Store>, id: &str) -> Result<String, String> {
    let from = format!("{PROBE_PREFIX}/copy-source-{id}");
    let to = format!("{PROBE_PREFIX}/copy-{id}");
    let (body, _) = probe_source(store, &from, 4096).await?;
    let wanted = BTreeMap::from([("labctl-probe".to_string(), "copy".to_string())]);
    let copied = store
        .probe_copy(&from, &to, CopyProbe::ReplaceMetadata(wanted.clone()))
        .await
        .map_err(err)?;
    holds(store, &to, &body).await?;
    if copied.user_metadata.get("labctl-probe") != wanted.get("labctl-probe") {
        return Err(format!(
            "the copy kept the source's metadata ({:?}) instead of the one sent",
            copied.user_metadata
        ));
    }
    Ok("the copy has the same bytes and the new metadata".into())
}

async fn copy_in_parts(store: &Arc<dyn Store>, id: &str) -> Result<String, String> {
    const PART: u64 = 5 * 1024 * 1024;
    let from = format!("{PROBE_PREFIX}/parts-source-{id}");
    let to = format!("{PROBE_PREFIX}/parts-{id}");
    // Two parts: the smallest S3 allows, and one byte.
    let (body, _) = probe_source(store, &from, PART as usize + 1).await?;
    store
        .probe_copy(&from, &to, CopyProbe::InParts { part_size: PART })
        .await
        .map_err(err)?;
    holds(store, &to, &body).await?;
    Ok("5 MiB + 1 byte copied in 2 ranged parts, the same bytes".into())
}

/// Not enforced (moto, Ceph RGW Pacific) is a limit, not a failure: labctl checks the
/// source's ETag itself right before each copy, and only a change in that moment would go
/// unnoticed.
/// What removes the lock file at a release: deleted only while it is the one read.
async fn conditional_delete(store: &Arc<dyn Store>, id: &str) -> Result<Probe, String> {
    let key = format!("{PROBE_PREFIX}/delete-if-{id}");
    let (_, written) = probe_source(store, &key, 64).await?;
    let stale = store.delete_if(&key, "\"0123456789abcdef\"").await;
    let kept = store.head(&key).await.map_err(err)?.is_some();
    let removed = store.delete_if(&key, &written.etag).await.map_err(err)?;
    let gone = store.head(&key).await.map_err(err)?.is_none();
    if !gone {
        store.delete(&key).await.map_err(err)?;
    }
    Ok(match (stale, kept, removed && gone) {
        (Ok(false), true, true) => Probe::Holds("enforced: kept on another ETag, deleted on its own".into()),
        (_, _, false) => return Err("a delete conditional on the object's own ETag did not delete it".into()),
        _ => Probe::Lacks("NOT enforced: deleted on another ETag. The lock's lease does not depend on it (each link of the lease is created once, with If-None-Match); a lock file replaced by hand in the instant of a release could be removed with it".into()),
    })
}

async fn conditional_copy(store: &Arc<dyn Store>, id: &str) -> Result<Probe, String> {
    let from = format!("{PROBE_PREFIX}/if-match-source-{id}");
    let to = format!("{PROBE_PREFIX}/if-match-{id}");
    let (body, source) = probe_source(store, &from, 1024).await?;
    let stale = store
        .probe_copy(
            &from,
            &to,
            CopyProbe::IfMatch("\"0123456789abcdef\"".into()),
        )
        .await;
    store
        .probe_copy(&from, &to, CopyProbe::IfMatch(source.etag))
        .await
        .map_err(err)?;
    holds(store, &to, &body).await?;
    Ok(if stale.is_ok() {
        Probe::Lacks("NOT enforced: a copy conditional on another ETag was made. labctl checks the ETag itself right before each copy (history, restores), so only a change in that moment would go unnoticed".into())
    } else {
        Probe::Holds("enforced: refused on another ETag, made on the source's".into())
    })
}

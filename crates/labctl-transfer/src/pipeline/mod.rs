//! The streaming publish pipeline: download → source hash → decompress (blocking thread) →
//! output hash → multipart upload, with no temporary file.
//!
//! Memory is bounded by one budget of bytes for the parts of every image of a run (see
//! [`budget`]), whatever the images' sizes and number: the decoder blocks when the budget is
//! spent or when its uploader has no free slot. The object becomes visible only when both
//! checksums matched: multipart uploads are completed (and small objects PUT) after
//! verification, and aborted on every failure path.

pub mod budget;
pub mod decode;
pub mod hash;
mod inspect;
pub mod upload;

pub use inspect::{hash_download, hash_stored, inspect_download, Inspect, Inspected};

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hash::Hasher;
use tokio::sync::{mpsc, watch};

use crate::progress::Progress;
use crate::source::http::{Chunk, Download, DownloadError, RetryPolicy};
use labctl_core::checksum::Checksum;
use labctl_core::manifest::Compression;
use labctl_store::{ObjectMeta, PutOptions, Store, StoreError};

pub const MIB: usize = 1024 * 1024;
/// As fast as 16 MiB parts on the stores measured, at about half the memory
/// (docs/benchmarks.md); parts grow for very large images (see `decode::part_size_of`).
pub const DEFAULT_PART_SIZE: usize = 8 * MIB;
/// S3's minimum for every part but the last.
pub const MIN_PART_SIZE: usize = 5 * MIB;
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 4;
/// How often a download may start over from byte 0 before the image fails.
const MAX_RESTARTS: u32 = 3;

/// The run's budget for parts held at once, at least: what one image needs at the default part
/// size and parts in flight (five parts of 8 MiB), shared by every image.
pub const DEFAULT_MEMORY_BUDGET: usize = 40 * MIB;
/// Large images streamed at once, whatever `--parallelism` lets start: small ones (see
/// [`SMALL_IMAGE`]) go beside them.
pub const LARGE_IMAGES_AT_ONCE: usize = 4;
/// An image whose download (or file) is known to be at most this large, and is not
/// decompressed, is small: it takes no large image's turn.
pub const SMALL_IMAGE: u64 = MIB as u64;

#[derive(Debug, Clone)]
pub struct Settings {
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub retry: RetryPolicy,
    /// Shared by every image the settings are cloned for.
    pub memory: budget::MemoryBudget,
}

impl Settings {
    /// One image uploading `parts_in_flight` parts of `part_size` while the decoder fills the
    /// next always fits in the budget.
    pub fn new(part_size: usize, parts_in_flight: usize) -> Settings {
        let one_image = part_size.saturating_mul(parts_in_flight.saturating_add(1));
        Settings {
            part_size,
            parts_in_flight,
            retry: RetryPolicy::default(),
            memory: budget::MemoryBudget::new(
                one_image.max(DEFAULT_MEMORY_BUDGET),
                LARGE_IMAGES_AT_ONCE,
            ),
        }
    }

    fn parts(&self) -> decode::Parts {
        decode::Parts {
            size: self.part_size,
            budget: self.memory.clone(),
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings::new(DEFAULT_PART_SIZE, DEFAULT_PARTS_IN_FLIGHT)
    }
}

/// One build artifact to publish.
#[derive(Debug, Clone, Copy)]
pub struct FileJob<'a> {
    pub image: &'a str,
    pub path: &'a std::path::Path,
    pub key: FileKey<'a>,
}

/// Where a build artifact goes.
#[derive(Debug, Clone, Copy)]
pub enum FileKey<'a> {
    /// The image's key; the fingerprint goes into the object's metadata beside the checksum.
    Image {
        key: &'a str,
        fingerprint: &'a Checksum,
        /// What its record will say about how it was made, carried by the object itself so a
        /// run killed before the record is written loses nothing.
        facts: &'a labctl_store::SourceFacts,
    },
    /// The content-addressed blob of its sha256 (`.labctl/blobs/sha256/<hex>`, a fan-out leg):
    /// not uploaded again when the same bytes are already there.
    Blob,
}

/// One HTTP image to publish.
#[derive(Debug, Clone)]
pub struct HttpJob {
    pub image: String,
    pub url: String,
    /// Of the downloaded bytes (already looked up when the manifest names a checksum list).
    pub source_checksum: Checksum,
    pub decompress: Option<Compression>,
    /// Of the published bytes.
    pub expected: Checksum,
    pub key: String,
    pub user_metadata: BTreeMap<String, String>,
    /// A minisign signature the downloaded bytes must verify against.
    pub minisign: Option<labctl_core::signature::MinisignCheck>,
}

#[derive(Debug, Clone)]
pub struct Published {
    pub checksum: Checksum,
    /// sha256 of the published bytes (the same as `checksum` when that is sha256).
    pub sha256: Checksum,
    pub size: u64,
    pub object: ObjectMeta,
    /// What the download's server said about the file (HTTP sources only).
    pub source: crate::source::http::SourceInfo,
    /// The same bytes were already at the key (a staged blob): nothing was uploaded.
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("checksum mismatch for the download from {url}: expected {expected}, got {actual}")]
    SourceMismatch {
        url: String,
        expected: Checksum,
        actual: Checksum,
    },
    #[error("checksum mismatch for the published bytes: expected {expected}, got {actual}")]
    OutputMismatch {
        expected: Checksum,
        actual: Checksum,
    },
    #[error("{format} decompression failed: {message}")]
    Decompress {
        format: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the server at {url} ignored Range {restarts} times; giving up")]
    TooManyRestarts { url: String, restarts: u32 },
    #[error(transparent)]
    Signature(labctl_core::signature::SignatureError),
    #[error("cannot read the artifact `{path}`: {message}")]
    Artifact { path: String, message: String },
    #[error("cancelled")]
    Cancelled,
}

enum Attempt {
    Done(Box<Published>),
    Restart,
}

/// Downloads, verifies and publishes one image. Nothing is visible at `job.key` unless this
/// returns `Ok`.
pub async fn publish_http(
    store: Arc<dyn Store>,
    client: reqwest::Client,
    job: &HttpJob,
    settings: &Settings,
    progress: &dyn Progress,
    cancel: watch::Receiver<bool>,
) -> Result<Published, PipelineError> {
    let mut download = Download::start(client, &job.url, settings.retry).await?;
    progress.start(&job.image, "downloading", download.total());
    let mut restarts = 0;
    loop {
        match attempt(
            &store,
            &mut download,
            job,
            settings,
            progress,
            cancel.clone(),
        )
        .await?
        {
            Attempt::Done(mut published) => {
                published.source = download.info().clone();
                return Ok(*published);
            }
            Attempt::Restart => {
                restarts += 1;
                if restarts > MAX_RESTARTS {
                    return Err(PipelineError::TooManyRestarts {
                        url: job.url.clone(),
                        restarts,
                    });
                }
                progress.restart(
                    &job.image,
                    download.total(),
                    "the server does not support resuming; starting over from byte 0",
                );
            }
        }
    }
}

/// Where the bytes come from: a download (resumed, perhaps restarted) or a local file (a build
/// artifact).
enum Input<'a> {
    Download(&'a mut Download),
    File {
        file: tokio::fs::File,
        path: &'a std::path::Path,
    },
}

impl Input<'_> {
    /// The size the bytes will have, when known.
    async fn size(&self) -> Option<u64> {
        match self {
            Input::Download(d) => d.total(),
            Input::File { file, .. } => file.metadata().await.ok().map(|m| m.len()),
        }
    }

    async fn next(&mut self) -> Result<Option<Chunk>, PipelineError> {
        match self {
            Input::Download(d) => Ok(d.next().await?),
            Input::File { file, path } => {
                use tokio::io::AsyncReadExt;
                // A quarter MiB a read: the channel to the decoder holds two.
                let mut buf = bytes::BytesMut::with_capacity(MIB / 4);
                let n = file
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| PipelineError::Artifact {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                Ok((n > 0).then(|| Chunk::Data(buf.freeze())))
            }
        }
    }
}

/// Where the decoded bytes go.
enum Sink<'a> {
    /// Uploaded in parts to `key`, invisible until published.
    Upload {
        store: &'a Arc<dyn Store>,
        key: &'a str,
        options: PutOptions,
        in_flight: usize,
    },
    /// Hashed only (`labctl pin`).
    Hash,
}

/// One pass over a download or a file: the transfer loop every image goes through, publishing
/// or only hashing. The input feeds the source hash (and a signature check), a blocking decoder
/// hashes and cuts the output into parts, and the sink uploads or drops them.
struct Pass {
    /// The input's hash, when one was asked for.
    source: Option<Checksum>,
    /// The input's sha256 beside it, when that was asked for too (only `labctl bump` needs
    /// both; publishing hashes the input once).
    source_sha256: Option<Checksum>,
    /// Whether the whole download was read: only then does `source` mean anything.
    complete: bool,
    decoded: Result<decode::Digests, decode::DecodeError>,
    /// `None` for [`Sink::Hash`].
    uploaded: Option<Result<upload::Uploaded, StoreError>>,
    signature_ok: Option<bool>,
    /// Bytes read from the input (the download's size when `complete`).
    input_bytes: u64,
}

enum Step {
    Passed(Box<Pass>),
    /// The server sent the whole body again: start over.
    Restart,
}

/// Resolves once the run is cancelled; never when nothing can cancel it any more (the sender
/// is gone).
pub async fn signalled(mut cancel: watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    mut input: Input<'_>,
    image: &str,
    // `None` when the decoder's output hash says all (a raw file: the same bytes).
    source_algorithm: Option<labctl_core::checksum::Algorithm>,
    // Also the input's sha256, when `source_algorithm` is another.
    source_sha256: bool,
    decompress: Option<Compression>,
    output_algorithm: labctl_core::checksum::Algorithm,
    parts: decode::Parts,
    sink: Sink<'_>,
    minisign: Option<&labctl_core::signature::MinisignCheck>,
    progress: &dyn Progress,
    cancel: &watch::Receiver<bool>,
) -> Result<Step, PipelineError> {
    // A large image waits for its turn here, its response's headers read (a server that drops
    // the waiting connection is resumed like any other drop).
    let small = decompress.is_none() && input.size().await.is_some_and(|s| s <= SMALL_IMAGE);
    let _turn = match small {
        true => None,
        false => {
            tokio::select! {
                turn = parts.budget.large_image_turn() => Some(turn),
                () = signalled(cancel.clone()) => return Err(PipelineError::Cancelled),
            }
        }
    };
    // Downloaded chunks (up to some hundred KiB each) waiting for the decoder: outside the
    // budget, so few.
    let (tx_in, rx_in) = mpsc::channel::<Result<Bytes, ()>>(2);
    let (tx_parts, mut rx_parts) = mpsc::channel::<upload::Part>(1);
    let decoder = tokio::task::spawn_blocking(move || {
        decode::run(rx_in, tx_parts, decompress, output_algorithm, &parts)
    });
    let uploader = match sink {
        Sink::Upload {
            store,
            key,
            options,
            in_flight,
        } => Some(tokio::spawn(upload::run(
            store.clone(),
            key.to_string(),
            options,
            rx_parts,
            in_flight,
        ))),
        Sink::Hash => {
            tokio::spawn(async move { while rx_parts.recv().await.is_some() {} });
            None
        }
    };

    let mut source = source_algorithm.map(Hasher::new);
    let sha256_beside = source_sha256
        && source_algorithm.is_some_and(|a| a != labctl_core::checksum::Algorithm::Sha256);
    let mut sha256 = sha256_beside.then(|| Hasher::new(labctl_core::checksum::Algorithm::Sha256));
    // Checked (mode and key) before the download started; here it only hashes.
    let mut signature = match minisign {
        Some(check) => Some(check.verifier().map_err(PipelineError::Signature)?),
        None => None,
    };
    let mut failure: Option<PipelineError> = None;
    let mut restart = false;
    let mut complete = false;
    let mut input_bytes = 0u64;
    // A signal must not wait for a slow server (a read timeout, a Retry-After).
    let on_cancel = signalled(cancel.clone());
    tokio::pin!(on_cancel);
    loop {
        let next = tokio::select! {
            next = input.next() => next,
            () = &mut on_cancel => {
                failure = Some(PipelineError::Cancelled);
                break;
            }
        };
        match next {
            Ok(Some(Chunk::Data(bytes))) => {
                if let Some(h) = source.as_mut() {
                    h.update(&bytes);
                }
                if let Some(h) = sha256.as_mut() {
                    h.update(&bytes);
                }
                if let Some(v) = signature.as_mut() {
                    v.update(&bytes);
                }
                progress.advance(image, bytes.len() as u64);
                input_bytes += bytes.len() as u64;
                if tx_in.send(Ok(bytes)).await.is_err() {
                    break; // the decoder stopped; its result says why
                }
            }
            Ok(Some(Chunk::Restart)) => {
                restart = true;
                break;
            }
            Ok(None) => {
                complete = true;
                break;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_some() || restart {
        let _ = tx_in.send(Err(())).await;
    }
    drop(tx_in);
    let decoded = decoder.await.expect("decoder thread panicked");
    let uploaded = match uploader {
        Some(task) => Some(task.await.expect("uploader task panicked")),
        None => None,
    };
    let discard = |uploaded: Option<Result<upload::Uploaded, StoreError>>| async move {
        if let Some(Ok(u)) = uploaded {
            u.discard().await;
        }
    };
    if let Some(e) = failure {
        discard(uploaded).await;
        return Err(e);
    }
    if restart {
        discard(uploaded).await;
        return Ok(Step::Restart);
    }
    Ok(Step::Passed(Box::new(Pass {
        source_sha256: match sha256 {
            Some(h) => Some(h.finish()),
            None if source_sha256 => source.clone().map(Hasher::finish),
            None => None,
        },
        source: source.map(Hasher::finish),
        complete,
        decoded,
        uploaded,
        signature_ok: signature.as_mut().map(|s| s.finalize().is_ok()),
        input_bytes,
    })))
}

/// One attempt at publishing: a pass, then verification, then (only then) visibility.
async fn attempt(
    store: &Arc<dyn Store>,
    download: &mut Download,
    job: &HttpJob,
    settings: &Settings,
    progress: &dyn Progress,
    cancel: watch::Receiver<bool>,
) -> Result<Attempt, PipelineError> {
    // The download's facts travel with the bytes: a run killed between the object becoming
    // visible and its record being written leaves them for the run that adopts it.
    let info = download.info();
    let mut user_metadata = job.user_metadata.clone();
    labctl_store::SourceFacts {
        size: info.size,
        etag: info.etag.clone(),
        last_modified: info.last_modified.clone(),
        packer_version: None,
        lost: false,
    }
    .write_into(&mut user_metadata);
    let options = PutOptions {
        user_metadata,
        ..Default::default()
    };
    let sink = Sink::Upload {
        store,
        key: &job.key,
        options: options.clone(),
        in_flight: settings.parts_in_flight,
    };
    // A raw download whose checksum is in the declared algorithm is hashed once, by the
    // decoder: the bytes it passes through are the bytes downloaded.
    let same_bytes =
        job.decompress.is_none() && job.source_checksum.algorithm == job.expected.algorithm;
    let pass = match stream(
        Input::Download(download),
        &job.image,
        (!same_bytes).then_some(job.source_checksum.algorithm),
        false,
        job.decompress,
        job.expected.algorithm,
        settings.parts(),
        sink,
        job.minisign.as_ref(),
        progress,
        &cancel,
    )
    .await?
    {
        Step::Restart => return Ok(Attempt::Restart),
        Step::Passed(pass) => pass,
    };
    let (uploaded, upload_failed) = match pass.uploaded.expect("the upload sink uploads") {
        Ok(u) => (Some(u), None),
        Err(e) => (None, Some(e)),
    };
    // Verified against the hashes first; only then does anything become visible. Every other
    // way out discards what was uploaded (and a dropped future's upload aborts itself).
    let source = pass
        .source
        .or_else(|| pass.decoded.as_ref().ok().map(|d| d.declared.clone()));
    let checked =
        verify(job, pass.complete, source, pass.decoded, upload_failed).and_then(|digests| {
            match (&job.minisign, pass.signature_ok) {
                // The signature is checked after the checksum, before anything becomes visible.
                (Some(check), Some(false)) => Err(PipelineError::Signature(check.bad())),
                _ => Ok(digests),
            }
        });
    let digests = match checked {
        Ok(digests) => digests,
        Err(e) => {
            if let Some(u) = uploaded {
                u.discard().await;
            }
            return Err(e);
        }
    };
    let object = uploaded
        .expect("verified only with an upload")
        .publish(store, &job.key, options)
        .await?;
    Ok(Attempt::Done(Box::new(Published {
        checksum: digests.declared,
        sha256: digests.sha256,
        size: digests.size,
        object,
        source: Default::default(),
        reused: false,
    })))
}

/// Publishes a local file (a build artifact) through the same transfer loop: a first pass
/// hashes it, so that the object can carry its checksum as metadata; the second uploads it in
/// parallel parts and hashes it again on the way: the upload completes only if the file did not
/// change in between.
pub async fn publish_file(
    store: Arc<dyn Store>,
    job: &FileJob<'_>,
    settings: &Settings,
    progress: &dyn Progress,
    cancel: watch::Receiver<bool>,
) -> Result<Published, PipelineError> {
    let FileJob { image, path, key } = *job;
    let size = tokio::fs::metadata(path).await.ok().map(|m| m.len());
    progress.start(image, "hashing the artifact", size);
    let pass = |sink| file_pass(image, path, sink, settings, progress, &cancel);
    let first = pass(Sink::Hash)
        .await?
        .decoded
        .map_err(|e| artifact_error(path, e))?
        .declared;
    let (key, options) = match file_target(&store, key, &first, size).await? {
        Target::Upload { key, options } => (key, options),
        Target::AlreadyThere(published) => return Ok(*published),
    };
    let key = key.as_str();
    progress.restart(image, size, "uploading the artifact");
    let second = pass(Sink::Upload {
        store: &store,
        key,
        options: options.clone(),
        in_flight: settings.parts_in_flight,
    })
    .await?;
    let uploaded = second.uploaded.expect("the upload sink uploads")?;
    let checked = match second.decoded.map_err(|e| artifact_error(path, e)) {
        Err(e) => Err(e),
        Ok(again) if again.declared != first => Err(PipelineError::OutputMismatch {
            expected: first.clone(),
            actual: again.declared,
        }),
        Ok(again) => Ok(again.size),
    };
    let size = match checked {
        Ok(size) => size,
        Err(e) => {
            uploaded.discard().await;
            return Err(e);
        }
    };
    let object = uploaded.publish(&store, key, options).await?;
    Ok(Published {
        sha256: first.clone(),
        checksum: first,
        size,
        object,
        source: Default::default(),
        reused: false,
    })
}

/// One pass over a local file into `sink`, hashing it with sha256. The decoder passes a raw
/// file through unchanged: its output hash is the file's hash, so it is not hashed twice.
async fn file_pass(
    image: &str,
    path: &std::path::Path,
    sink: Sink<'_>,
    settings: &Settings,
    progress: &dyn Progress,
    cancel: &watch::Receiver<bool>,
) -> Result<Pass, PipelineError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| PipelineError::Artifact {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    match stream(
        Input::File { file, path },
        image,
        None,
        false,
        None,
        labctl_core::checksum::Algorithm::Sha256,
        settings.parts(),
        sink,
        None,
        progress,
        cancel,
    )
    .await?
    {
        Step::Passed(pass) => Ok(*pass),
        Step::Restart => unreachable!("a file does not restart"),
    }
}

fn artifact_error(path: &std::path::Path, e: decode::DecodeError) -> PipelineError {
    PipelineError::Artifact {
        path: path.display().to_string(),
        message: match e {
            decode::DecodeError::Corrupt { message, .. } => message,
            decode::DecodeError::UploadStopped => "the upload stopped".into(),
        },
    }
}

/// Where an artifact goes once hashed.
enum Target {
    Upload {
        key: String,
        options: PutOptions,
    },
    /// Its blob holds the same bytes already (a fan-out leg staged them before).
    AlreadyThere(Box<Published>),
}

/// The key and metadata of an artifact whose sha256 is `sha256` (`size` bytes on disk).
async fn file_target(
    store: &Arc<dyn Store>,
    key: FileKey<'_>,
    sha256: &Checksum,
    size: Option<u64>,
) -> Result<Target, PipelineError> {
    let mut user_metadata =
        BTreeMap::from([(labctl_store::META_CHECKSUM.to_string(), sha256.to_string())]);
    let key = match key {
        FileKey::Image {
            key,
            fingerprint,
            facts,
        } => {
            user_metadata.insert(
                labctl_store::META_FINGERPRINT.to_string(),
                fingerprint.to_string(),
            );
            facts.write_into(&mut user_metadata);
            key.to_string()
        }
        FileKey::Blob => {
            let blob = labctl_core::layout::blob_key(sha256);
            if let Some(object) = store.head(&blob).await? {
                if Some(object.size) == size && object.labelled_with(sha256) {
                    return Ok(Target::AlreadyThere(Box::new(Published {
                        sha256: sha256.clone(),
                        checksum: sha256.clone(),
                        size: object.size,
                        object,
                        source: Default::default(),
                        reused: true,
                    })));
                }
            }
            blob
        }
    };
    let options = PutOptions {
        user_metadata,
        ..Default::default()
    };
    Ok(Target::Upload { key, options })
}

/// Both checksums must match before anything becomes visible. `complete` says whether the whole
/// download was read; when a later stage stopped early, its error is the cause, and a checksum
/// over part of the download says nothing.
/// `source` is the download's digest: `None` only when the decoder, which hashed a raw
/// download, failed.
fn verify(
    job: &HttpJob,
    complete: bool,
    source: Option<Checksum>,
    decoded: Result<decode::Digests, decode::DecodeError>,
    upload_failed: Option<StoreError>,
) -> Result<decode::Digests, PipelineError> {
    // A corrupt download usually shows first as a decompression error; the source checksum is
    // the more useful message, so it is checked first when there is one.
    if let Some(source) = source.filter(|s| complete && *s != job.source_checksum) {
        return Err(PipelineError::SourceMismatch {
            url: job.url.clone(),
            expected: job.source_checksum.clone(),
            actual: source,
        });
    }
    let decoded = decoded.map_err(|e| match e {
        decode::DecodeError::Corrupt { format, message } => {
            PipelineError::Decompress { format, message }
        }
        decode::DecodeError::UploadStopped => PipelineError::Decompress {
            format: "upload",
            message: "the uploader stopped".into(),
        },
    });
    // An upload failure stops the decoder too; report the cause, not the symptom.
    if let Some(e) = upload_failed {
        return Err(e.into());
    }
    let digests = decoded?;
    if !complete {
        // The decoder finished without reading everything: bytes after the compressed stream.
        return Err(PipelineError::Decompress {
            format: job.decompress.map_or("raw", Compression::name),
            message: format!(
                "the compressed stream ended before the download from {} did: it has trailing data",
                job.url
            ),
        });
    }
    if digests.declared != job.expected {
        return Err(PipelineError::OutputMismatch {
            expected: job.expected.clone(),
            actual: digests.declared,
        });
    }
    Ok(digests)
}

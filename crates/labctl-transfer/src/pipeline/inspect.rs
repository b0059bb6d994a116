//! Downloads and stored objects that are only hashed, never published: `labctl pin`'s
//! checksums, `labctl bump`'s verification (the signature checked as the bytes pass), and a
//! stored object read back. The same transfer loop as publishing, with a sink that only hashes.

use tokio::sync::watch;

use super::{decode, hash, stream, Input, PipelineError, Settings, Sink, Step, MAX_RESTARTS, MIB};
use crate::progress::Progress;
use crate::source::http::Download;
use labctl_core::checksum::Checksum;
use labctl_core::manifest::Compression;
use labctl_store::{Store, StoreError};

/// Downloads `url` once and hashes it, and, with `decompress`, its decompressed output: what
/// `labctl pin` writes into the manifest. Nothing is stored. The same transfer loop as
/// publishing, with a sink that only hashes.
pub async fn hash_download(
    client: reqwest::Client,
    image: &str,
    url: &str,
    source_algorithm: labctl_core::checksum::Algorithm,
    decompress: Option<Compression>,
    settings: &Settings,
    progress: &dyn Progress,
) -> Result<(Checksum, Option<Checksum>), PipelineError> {
    let inspect = Inspect {
        source_algorithm: Some(source_algorithm),
        decompress,
        minisign: None,
        purpose: "downloading to pin its checksum",
    };
    let inspected = inspect_download(client, image, url, &inspect, settings, progress).await?;
    let source = inspected
        .source
        .expect("the download is hashed in the algorithm asked for");
    Ok((source, inspected.output.map(|o| o.declared)))
}

/// What to compute over one download that is only inspected (`labctl bump`).
#[derive(Debug, Clone, Default)]
pub struct Inspect {
    /// A digest of the download in this algorithm besides its sha256 (a vendor's sha512 list).
    pub source_algorithm: Option<labctl_core::checksum::Algorithm>,
    pub decompress: Option<Compression>,
    pub minisign: Option<labctl_core::signature::MinisignCheck>,
    /// What the progress line says is happening.
    pub purpose: &'static str,
}

/// What one download was, hashed every way asked in one pass.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The download's sha256.
    pub sha256: Checksum,
    /// In [`Inspect::source_algorithm`], when asked.
    pub source: Option<Checksum>,
    /// Bytes downloaded.
    pub size: u64,
    /// The decompressed bytes, with `decompress`.
    pub output: Option<decode::Digests>,
    /// Whether the minisign signature verified, when one was given.
    pub signature_ok: Option<bool>,
    pub info: crate::source::http::SourceInfo,
}

/// Downloads `url` once and hashes it in every way `inspect` asks (with the signature checked
/// as the bytes pass), decompressing to hash the output: nothing is stored, memory stays
/// bounded. The caller judges the results; nothing here trusts them.
pub async fn inspect_download(
    client: reqwest::Client,
    image: &str,
    url: &str,
    inspect: &Inspect,
    settings: &Settings,
    progress: &dyn Progress,
) -> Result<Inspected, PipelineError> {
    use labctl_core::checksum::Algorithm;
    let mut download = Download::start(client, url, settings.retry).await?;
    progress.start(image, inspect.purpose, download.total());
    let (_never, cancel) = watch::channel(false);
    // Raw: the decoder's output hash is the download's sha256, so only another algorithm needs
    // a hasher of its own. Compressed: the source hashers take the download's digests and the
    // decoder the output's.
    let source_algorithm = match inspect.decompress {
        None => inspect.source_algorithm.filter(|a| *a != Algorithm::Sha256),
        Some(_) => Some(inspect.source_algorithm.unwrap_or(Algorithm::Sha256)),
    };
    for _ in 0..=MAX_RESTARTS {
        let step = stream(
            Input::Download(&mut download),
            image,
            source_algorithm,
            // Raw: the decoder's output hash is the download's sha256 already.
            inspect.decompress.is_some(),
            inspect.decompress,
            Algorithm::Sha256,
            // Hashed and dropped: parts of a MiB are enough.
            decode::Parts {
                size: MIB,
                budget: settings.memory.clone(),
            },
            Sink::Hash,
            inspect.minisign.as_ref(),
            progress,
            &cancel,
        )
        .await?;
        let pass = match step {
            Step::Restart => {
                progress.restart(
                    image,
                    download.total(),
                    "the server does not support resuming; starting over",
                );
                continue;
            }
            Step::Passed(pass) => pass,
        };
        let digests = match pass.decoded {
            Ok(d) => d,
            Err(decode::DecodeError::Corrupt { format, message }) => {
                return Err(PipelineError::Decompress { format, message })
            }
            Err(decode::DecodeError::UploadStopped) => {
                unreachable!("the hashing sink never stops early")
            }
        };
        if !pass.complete {
            return Err(PipelineError::Decompress {
                format: inspect.decompress.map_or("raw", Compression::name),
                message: format!(
                    "the compressed stream ended before the download from {url} did: it has trailing data"
                ),
            });
        }
        let (sha256, source, output) = match inspect.decompress {
            None => {
                let source = match inspect.source_algorithm {
                    Some(Algorithm::Sha256) => Some(digests.sha256.clone()),
                    Some(_) => pass.source,
                    None => None,
                };
                (digests.sha256.clone(), source, None)
            }
            Some(_) => {
                let sha256 = pass
                    .source_sha256
                    .expect("a compressed download is hashed on its way in");
                let source = inspect.source_algorithm.and(pass.source);
                (sha256, source, Some(digests))
            }
        };
        return Ok(Inspected {
            sha256,
            source,
            size: pass.input_bytes,
            output,
            signature_ok: pass.signature_ok,
            info: download.info().clone(),
        });
    }
    Err(PipelineError::TooManyRestarts {
        url: url.to_string(),
        restarts: MAX_RESTARTS + 1,
    })
}

/// Streams a stored object back and hashes it: in `algorithm`, in sha256, and its size. Memory
/// stays at one read buffer whatever the object's size.
pub async fn hash_stored(
    store: &dyn Store,
    key: &str,
    algorithm: labctl_core::checksum::Algorithm,
) -> Result<decode::Digests, StoreError> {
    use tokio::io::AsyncReadExt;
    let object = store.get(key).await?.ok_or_else(|| StoreError::Backend {
        op: "read",
        key: key.to_string(),
        message: "no such object".into(),
    })?;
    let mut body = object.body;
    let mut hasher = hash::WithSha256::new(algorithm);
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = body.read(&mut buf).await.map_err(|source| StoreError::Io {
            op: "read",
            key: key.to_string(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let (declared, sha256) = hasher.finish();
    Ok(decode::Digests {
        declared,
        sha256,
        size,
    })
}

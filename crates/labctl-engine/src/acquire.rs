//! Acquiring an image's bytes: the download of an HTTP source (its checksum pinned, planned or
//! looked up, its signature fetched first) and the build of a Packer one.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context};

use crate::checksum::Checksum;
use crate::context::ApplyContext;
use crate::fanout::StagedBlob;
use crate::manifest::reference::{self, Field, Reference};
use crate::pipeline::{self, HttpJob};
use crate::plan::{Change, Desired};
use crate::source::checksum_list;
use crate::source::packer;
use crate::source::signature::{MinisignCheck, MinisignKey};
use crate::spec::{NormalizedSpec, SpecChecksum, SpecSignature, SpecSource};
use crate::store::{META_CHECKSUM, META_FINGERPRINT};

/// The download's checksum: pinned, as the plan looked it up, or from the checksum list now
/// (verifying the list's signature).
pub(crate) async fn source_checksum(
    desired: &Desired,
    url: &str,
    planned: Option<&Checksum>,
    ctx: &ApplyContext,
) -> anyhow::Result<Checksum> {
    let SpecSource::Http { checksum, .. } = &desired.spec.source else {
        unreachable!("called for http sources")
    };
    match (checksum, planned) {
        (SpecChecksum::Digest(c), _) => Ok(c.clone()),
        (SpecChecksum::Unrecognized(text), _) => {
            bail!("the source checksum `{text}` is not one this labctl reads")
        }
        // Apply does what the plan showed (and verified), even if the list changed since.
        (SpecChecksum::List { .. }, Some(planned)) => Ok(planned.clone()),
        (SpecChecksum::List { url: list_url }, None) => {
            let pgp = crate::desired::pgp_check(desired)?;
            Ok(checksum_list::resolve(
                &ctx.client,
                list_url,
                url,
                pgp.as_ref(),
                &ctx.settings.retry,
            )
            .await?)
        }
    }
}

/// Fetches a minisign signature before the download, so a wrong key or a legacy signature
/// fails before any image byte moves.
pub(crate) async fn minisign_check(
    signature: Option<&SpecSignature>,
    ctx: &ApplyContext,
) -> anyhow::Result<Option<MinisignCheck>> {
    let Some(SpecSignature::Minisign { url, public_key }) = signature else {
        return Ok(None);
    };
    let key = MinisignKey::parse(public_key)?;
    let text = crate::source::http::fetch_text(&ctx.client, url, &ctx.settings.retry, 64 * 1024)
        .await
        .with_context(|| format!("cannot fetch the minisign signature {url}"))?;
    Ok(Some(MinisignCheck::new(key, &text, url)?))
}

/// How long a presigned URL handed to a build stays valid.
const BUILD_URL_EXPIRY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// The download of an HTTP image, verified against what the plan shows, going to `key`. Returns
/// the job and the download's checksum.
pub(crate) async fn http_job(
    change: &Change,
    desired: &Desired,
    key: String,
    fingerprint: Option<&Checksum>,
    ctx: &ApplyContext,
) -> anyhow::Result<(HttpJob, Checksum)> {
    let spec = &desired.spec;
    let SpecSource::Http {
        url,
        decompress,
        signature,
        ..
    } = &spec.source
    else {
        unreachable!("called for http sources")
    };
    let planned = change
        .after
        .as_ref()
        .and_then(|a| a.source_checksum.as_ref());
    let source = source_checksum(desired, url, planned, ctx).await?;
    let minisign = minisign_check(signature.as_ref(), ctx).await?;
    let decompress = *decompress;
    let expected = match (&spec.expected, decompress) {
        (Some(e), _) => e.clone(),
        (None, None) => source.clone(),
        (None, Some(_)) => bail!("`validation.expected` is required when `decompress` is set"),
    };
    let mut user_metadata = BTreeMap::from([(META_CHECKSUM.to_string(), expected.to_string())]);
    if let Some(f) = fingerprint {
        user_metadata.insert(META_FINGERPRINT.to_string(), f.to_string());
    }
    let job = HttpJob {
        image: change.name.clone(),
        url: url.clone(),
        source_checksum: source.clone(),
        decompress,
        expected,
        key,
        user_metadata,
        minisign,
    };
    Ok((job, source))
}

/// Downloads, verifies and publishes an HTTP job with the run's client, settings and progress.
pub(crate) async fn run_http_job(
    job: &HttpJob,
    ctx: &ApplyContext,
) -> Result<pipeline::Published, pipeline::PipelineError> {
    pipeline::publish_http(
        ctx.store.clone(),
        ctx.client.clone(),
        job,
        &ctx.settings,
        ctx.progress.as_ref(),
        ctx.cancel.clone(),
    )
    .await
}

/// The value of a `{{ images.NAME.FIELD }}` reference at apply time.
pub(crate) async fn reference_value(
    reference: &Reference,
    deps: &BTreeMap<String, Checksum>,
    staged: &BTreeMap<String, StagedBlob>,
    ctx: &ApplyContext,
) -> anyhow::Result<String> {
    // A fan-out leg builds before its inputs are published: their staged blobs are the same
    // bytes, verified the same way.
    if let Some(blob) = staged.get(&reference.image) {
        match reference.field {
            Field::Url => return Ok(ctx.store.url_for(&blob.key, BUILD_URL_EXPIRY).await?),
            Field::Checksum => return Ok(blob.checksum.to_string()),
            Field::Size => return Ok(blob.size.to_string()),
            Field::Key => {}
        }
    }
    let destination = ctx.destinations.get(&reference.image).ok_or_else(|| {
        anyhow!(
            "reference to `{}`, which the plan does not have",
            reference.image
        )
    })?;
    let key = crate::manifest::object_key(destination);
    Ok(match reference.field {
        Field::Url => ctx.store.url_for(&key, BUILD_URL_EXPIRY).await?,
        Field::Checksum => deps
            .get(&reference.image)
            .ok_or_else(|| anyhow!("`{}` is referenced but not a dependency", reference.image))?
            .to_string(),
        Field::Key => key,
        Field::Size => ctx
            .store
            .head(&key)
            .await?
            .ok_or_else(|| anyhow!("`{key}` is not in the store"))?
            .size
            .to_string(),
    })
}

/// Packer builds at once, whatever `--parallelism` lets start: each runs a VM and leaves an
/// artifact of GiBs on disk until it is published. As many as ran at the default parallelism
/// before small images were let through 64 at a time.
const BUILDS_AT_ONCE: usize = 16;
static BUILD_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BUILDS_AT_ONCE);

/// A finished build, holding its slot until it is dropped: its scratch directory (the artifact)
/// goes first, then the slot.
pub(crate) struct Built {
    pub build: packer::Build,
    _slot: tokio::sync::SemaphorePermit<'static>,
}

/// Runs the image's Packer build with its variables resolved (`staged`: inputs a fan-out leg
/// takes from staged blobs), once one of the build slots is free. Dropping the build removes
/// its scratch directory.
pub(crate) async fn build_packer(
    change: &Change,
    spec: &NormalizedSpec,
    deps: &BTreeMap<String, Checksum>,
    staged: &BTreeMap<String, StagedBlob>,
    ctx: &ApplyContext,
) -> anyhow::Result<Built> {
    let slot = tokio::select! {
        slot = BUILD_SLOTS.acquire() => slot.expect("the build slots are never closed"),
        () = pipeline::signalled(ctx.cancel.clone()) => {
            return Err(pipeline::PipelineError::Cancelled.into())
        }
    };
    let SpecSource::Packer {
        path,
        variables,
        artifact,
        ..
    } = &spec.source
    else {
        unreachable!("called for packer sources")
    };
    let mut resolved = Vec::new();
    for (name, written) in variables {
        let mut values = Vec::new();
        for r in reference::parse_all(written)? {
            values.push(reference_value(&r, deps, staged, ctx).await?);
        }
        let mut values = values.into_iter();
        let value = reference::substitute(written, |_| values.next().unwrap_or_default())?;
        resolved.push((name.clone(), value));
    }
    let template = ctx.base_dir.join(path);
    ctx.progress
        .start(&change.name, "building with Packer", None);
    packer::build(
        &change.name,
        &template,
        &resolved,
        artifact,
        &ctx.secrets,
        ctx.progress.as_ref(),
        ctx.cancel.clone(),
    )
    .await
    .map(|build| Built { build, _slot: slot })
    .map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished build keeps its slot until its scratch directory is gone: finished builds
    /// waiting to be published never add up past the slots on disk.
    #[tokio::test]
    async fn a_build_holds_its_slot_until_its_artifact_is_removed() {
        let before = BUILD_SLOTS.available_permits();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let built = Built {
            build: packer::Build {
                artifact: path.join("disk.raw"),
                dir,
                packer_version: "1.11.2".into(),
            },
            _slot: BUILD_SLOTS.acquire().await.unwrap(),
        };
        assert_eq!(BUILD_SLOTS.available_permits(), before - 1);
        drop(built);
        assert!(!path.exists(), "the scratch directory is removed");
        assert_eq!(BUILD_SLOTS.available_permits(), before);
        assert_eq!(before, BUILDS_AT_ONCE);
    }
}

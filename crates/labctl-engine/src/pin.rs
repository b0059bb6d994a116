//! `labctl pin`'s verification: what an image's manifest entry leaves to pin, learned from one
//! download of its source, never from bytes that contradict a checksum already pinned.

use anyhow::Context;

use crate::failure::{Failure, WithHint};
use crate::manifest::{Image, Manifest, Rules, Source, SourceChecksum};
use labctl_core::graph::DependencyGraph;
use labctl_core::pin::Pinned;
use labctl_transfer::pipeline;
use labctl_transfer::progress::{Done, Outcome, Progress};

/// What an image needs pinned.
#[derive(Debug)]
pub enum Need {
    /// A Packer build: its checksum is known only after apply.
    Build,
    /// Its checksums are all written.
    AlreadyPinned,
    /// The values learned from its download, to write.
    Learned(Pinned),
}

/// The manifest's `text` (as read from `manifest.path`) with `pins` written in, its formatting
/// kept, once the result still validates under `rules`; with what the result declares.
pub fn edited(
    manifest: &Manifest,
    text: &str,
    pins: &[Pinned],
    rules: Rules,
) -> anyhow::Result<(String, Manifest, DependencyGraph)> {
    let path = &manifest.path;
    let root = labctl_core::manifest::yaml::parse(text)
        .map_err(|(loc, msg)| anyhow::anyhow!("{}:{loc}: {msg}", path.display()))?;
    let updated = labctl_core::pin::apply(text, &root, pins)?;
    let dir = labctl_transfer::manifest_dir::Directory(manifest.base_dir.clone());
    let (edited, graph) =
        labctl_core::manifest::parse(updated.as_bytes(), path, &manifest.base_dir, &dir, rules)
            .map_err(|e| anyhow::anyhow!("the edited manifest does not validate: {e}"))?;
    Ok((updated, edited, graph))
}

/// Downloads `image`'s source once when its entry leaves a checksum to pin (`pin`, or a
/// decompressed image without `validation.expected`), and returns the values to write.
pub async fn pin_one(
    image: &Image,
    client: &reqwest::Client,
    progress: &dyn Progress,
) -> Result<Need, Failure> {
    let Source::Http(http) = &image.source else {
        return Ok(Need::Build);
    };
    let needs_checksum = http.checksum == SourceChecksum::Pin;
    let needs_expected = http.decompress.is_some() && image.expected.is_none();
    if !needs_checksum && !needs_expected {
        return Ok(Need::AlreadyPinned);
    }
    // Hash with the pinned checksum's algorithm, to compare; sha256 for new pins.
    let algorithm = match &http.checksum {
        SourceChecksum::Digest(c) => c.algorithm,
        _ => crate::checksum::Algorithm::Sha256,
    };
    let (source, output) = pipeline::hash_download(
        client.clone(),
        &image.name,
        &http.url,
        algorithm,
        http.decompress,
        &pipeline::Settings::default(),
        progress,
    )
    .await
    .with_context(|| format!("image `{}`: cannot download {}", image.name, http.url))?;
    // Never derive a published checksum from bytes that do not match a pinned source one.
    if let SourceChecksum::Digest(pinned) = &http.checksum {
        if &source != pinned {
            return Err(anyhow::anyhow!(
                "image `{}`: the download from {} has checksum {source}, but the manifest says {pinned}",
                image.name,
                http.url
            ))
            .hint("the source changed or the pinned checksum is wrong; fix `source.checksum` (or set it to `pin`) first");
        }
    }
    progress.finish(&image.name, &Outcome::Done(Done::Said("hashed".into())));
    Ok(Need::Learned(Pinned {
        image: image.name.clone(),
        version: None,
        checksum: needs_checksum.then_some(source),
        expected: if needs_expected { output } else { None },
    }))
}

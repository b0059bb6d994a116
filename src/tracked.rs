//! Tracked images and what their channels answered: which images a command names, and the
//! report `outdated` prints and `bump` acts on.

use crate::failure::{Failure, WithHint};
use crate::manifest::Image;
use labctl_core::upstream::report::Report;

/// The images named, or every image; names that are not images are an error.
pub fn select<'m>(
    manifest: &'m crate::manifest::Manifest,
    names: &[String],
) -> Result<Vec<&'m Image>, Failure> {
    for name in names {
        match manifest.image(name) {
            None => {
                return Err(anyhow::anyhow!(
                    "`{name}` is not an image in {}",
                    manifest.path.display()
                ))
                .hint("name images as the manifest does (with their version written in), or give no names for every tracked image")
            }
            Some(i) if i.track.is_none() => {
                return Err(anyhow::anyhow!("image `{name}` is not tracked")).hint(
                    "add a `track:` block to say where its new versions come from (docs/manifest.md)",
                )
            }
            Some(_) => {}
        }
    }
    Ok(manifest
        .images
        .iter()
        .filter(|i| names.is_empty() || names.contains(&i.name))
        .collect())
}

/// Looks every tracked image up and assesses it. Lookup failures are rows, not errors: the
/// other images are still reported.
pub async fn outdated(
    images: &[&Image],
    manifest: &crate::manifest::Manifest,
    store_flag: Option<&str>,
    timeout: std::time::Duration,
) -> Report {
    let client = crate::source::http::api_client(timeout);
    let listings = crate::upstream::fetch(images, &client).await;
    assess_all(images, manifest, &listings, store_flag).await
}

/// The report from what the channels answered; the store is opened only when a pin the vendor
/// no longer lists is to be looked for in the bucket.
pub async fn assess_all(
    images: &[&Image],
    manifest: &crate::manifest::Manifest,
    listings: &crate::upstream::Listings,
    store_flag: Option<&str>,
) -> Report {
    labctl_engine::outdated::assess_all(images, listings, || async {
        crate::commands::open_store(store_flag, Some(manifest))
            .await
            .map_err(|f| f.error.to_string())
    })
    .await
}

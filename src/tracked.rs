//! What the channels of tracked images answered: the report `outdated` prints and `bump` acts
//! on.

use crate::manifest::Image;
use labctl_core::upstream::report::Report;

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

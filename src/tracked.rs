//! Tracked images and what their channels answered: which images a command names, and the
//! report `outdated` prints and `bump` acts on.

use crate::hint::Hint;
use std::collections::BTreeMap;

use crate::failure::{Failure, WithHint};
use crate::manifest::Image;
use labctl_core::upstream::assess;
use labctl_core::upstream::listing::releases;
use labctl_core::upstream::report::{Kept, Report, Row, Warning};
use labctl_core::upstream::track::mutable_harvester_url;

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

/// The report from what the channels answered.
pub async fn assess_all(
    images: &[&Image],
    manifest: &crate::manifest::Manifest,
    listings: &crate::upstream::Listings,
    store_flag: Option<&str>,
) -> Report {
    let now = crate::timefmt::unix_now().as_secs();
    let mut rows = Vec::new();
    let mut gone: Vec<(usize, &Image)> = Vec::new();
    for image in images {
        let mutable = image_url(image)
            .and_then(mutable_harvester_url)
            .map(|folder| Warning::MutableUrl { folder });
        let Some(track) = &image.track else {
            if let Some(w) = mutable {
                rows.push(Row::untracked(&image.name, vec![w]));
            }
            continue;
        };
        let (lookup, answer) = listings
            .for_image(image)
            .expect("every tracked image was looked up");
        let current = image.version.clone().unwrap_or_default();
        let assessed = match answer {
            Ok(listing) => assess(&current, &releases(track, listing), &track.policy, now)
                .map_err(|e| e.to_string()),
            Err(e) => Err(match e.hint() {
                Some(hint) => format!("{lookup}: {e} (hint: {hint})"),
                None => format!("{lookup}: {e}"),
            }),
        };
        let assessment = match assessed {
            Ok(a) => a,
            Err(message) => {
                rows.push(Row::failed(
                    &image.name,
                    track.channel.kind(),
                    lookup.to_string(),
                    Some(current),
                    track.group.clone(),
                    message,
                ));
                continue;
            }
        };
        let mut warnings = Vec::new();
        if !assessment.current_listed {
            gone.push((rows.len(), image));
            warnings.push(Warning::CurrentNotListed {
                bucket: Kept::Unknown {
                    why: "not checked".into(),
                },
            });
        }
        if assessment.current_broken {
            warnings.push(Warning::CurrentBroken);
        }
        warnings.extend(mutable);
        rows.push(Row::assessed(
            &image.name,
            track.channel.kind(),
            lookup.to_string(),
            track.group.clone(),
            &assessment,
            warnings,
            now,
        ));
    }
    if !gone.is_empty() {
        let kept = bucket_holds(&gone, manifest, store_flag).await;
        for ((row, _), kept) in gone.iter().zip(kept) {
            let row = &mut rows[*row];
            if let Some(w) = row.warnings.first_mut() {
                w.warning = Warning::CurrentNotListed { bucket: kept };
                w.message = w.warning.to_string();
            }
        }
    }
    Report::new(env!("CARGO_PKG_VERSION"), rows)
}

fn image_url(image: &Image) -> Option<&str> {
    match &image.source {
        crate::manifest::Source::Http(h) => Some(&h.url),
        crate::manifest::Source::Packer(_) => None,
    }
}

/// Whether the bucket still holds the bytes of each image's current pin: in `images/` (the
/// record's checksum is the pin's) or in `history/`. A store that cannot be read says why.
async fn bucket_holds(
    images: &[(usize, &Image)],
    manifest: &crate::manifest::Manifest,
    store_flag: Option<&str>,
) -> Vec<Kept> {
    let unknown = |why: String| vec![Kept::Unknown { why }; images.len()];
    let store = match crate::commands::open_store(store_flag, Some(manifest)).await {
        Ok(s) => s,
        Err(f) => return unknown(format!("cannot open the store: {}", f.error)),
    };
    let state = match crate::state::refresh::read(store, crate::state::refresh::Objects::NotChecked)
        .await
    {
        Ok(s) => s,
        Err(e) => return unknown(format!("cannot read the store: {e}")),
    };
    let by_key: BTreeMap<&str, _> = state
        .records
        .values()
        .filter_map(|r| Some((r.object_key.as_str(), r.record.as_ref().ok()?)))
        .collect();
    images
        .iter()
        .map(|(_, image)| {
            let Some(want) = image.published_checksum() else {
                return Kept::Unknown {
                    why: "the manifest does not pin the published checksum".into(),
                };
            };
            let key = image.object_key();
            match by_key.get(key.as_str()) {
                Some(rec) if *rec.checksum() == want => Kept::Published,
                Some(rec)
                    if rec
                        .history()
                        .iter()
                        .any(|h| h.checksum == want || h.sha256 == want) =>
                {
                    Kept::History
                }
                _ => Kept::Nowhere,
            }
        })
        .collect()
}

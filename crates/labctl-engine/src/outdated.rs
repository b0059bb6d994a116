//! Assessing tracked images against what their channels answered: the report `labctl
//! outdated` prints and `labctl bump` acts on, with whether the bucket still holds a pin the
//! vendor no longer lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use labctl_core::hint::Hint;
use labctl_core::manifest::Image;
use labctl_core::upstream::assess;
use labctl_core::upstream::listing::releases;
use labctl_core::upstream::report::{Kept, Report, Row, Warning};
use labctl_core::upstream::track::mutable_harvester_url;
use labctl_transfer::source::upstream::Listings;

use crate::store::Store;

/// The report from what the channels answered.
pub async fn assess_all<F>(
    images: &[&Image],
    listings: &Listings,
    open_store: impl FnOnce() -> F,
) -> Report
where
    F: std::future::Future<Output = Result<Arc<dyn Store>, String>>,
{
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
        let kept = bucket_holds(&gone, open_store().await).await;
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
        labctl_core::manifest::Source::Http(h) => Some(&h.url),
        labctl_core::manifest::Source::Packer(_) => None,
    }
}

/// Whether the bucket still holds the bytes of each image's current pin: in `images/` (the
/// record's checksum is the pin's) or in `history/`. A store that cannot be read says why.
async fn bucket_holds(
    images: &[(usize, &Image)],
    store: Result<Arc<dyn Store>, String>,
) -> Vec<Kept> {
    let unknown = |why: String| vec![Kept::Unknown { why }; images.len()];
    let store = match store {
        Ok(s) => s,
        Err(why) => return unknown(format!("cannot open the store: {why}")),
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

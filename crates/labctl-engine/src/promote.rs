//! Promotion (`apply --staged`): under the lock, each staged blob is checked by HEAD and copied
//! server-side into `images/`, so no image byte passes through the promoting runner; the record
//! says what a single apply's record would. Promoted blobs are removed after the index.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt as _;

use anyhow::{anyhow, bail, Context};

use crate::checksum::Checksum;
use crate::context::{ApplyContext, ChangeResult, Done, Outcome, Report};
use crate::fanout::{
    LegResults, StageResult, StageStatus, StagedBlob, MAX_LEG_RESULTS_BYTES, MAX_RESULT_BYTES,
};
use crate::labelled::{copy_labelled, Labelled};
use crate::layout::StagedKey;
use crate::plan::{Change, Desired};
use crate::records::{delete_history, with_history, write_record};
use crate::staged::{BlobCheck, LegRead, Staged, StagedError};
use crate::state::record::{new_record, HistoryEntry};
use crate::store::{ObjectMeta, Store, StoreError};

/// Copies the image's staged blob to its key and writes its record.
pub(crate) async fn promote(
    change: &Change,
    desired: &Desired,
    deps: BTreeMap<String, Checksum>,
    kept: Option<HistoryEntry>,
    staged: &Staged,
    ctx: &ApplyContext,
) -> ChangeResult {
    let (blob, object) = checked_blob(change, &deps, staged, staged.check, ctx).await?;
    let spec = &desired.spec;
    let fingerprint = spec.fingerprint(&deps);
    let copied = match copy_blob(change, blob, &object, &fingerprint, ctx).await {
        // The ETag can move without the bytes (a directory store's file touched): then the blob
        // is checked by HEAD, as every other copy's source is, and decides.
        Err(e) if staged.check == BlobCheck::RecordedEtag && is_changed(&e) => {
            let (_, object) = checked_blob(change, &deps, staged, BlobCheck::Head, ctx).await?;
            copy_blob(change, blob, &object, &fingerprint, ctx).await
        }
        copied => copied,
    }
    .map_err(|e| blob_changed(e, change, blob))?;
    let mut record = new_record(
        spec,
        blob.checksum.clone(),
        blob.size,
        deps,
        crate::timefmt::now_rfc3339(),
    );
    record.sha256 = Some(blob.sha256.clone());
    record.object_etag = Some(copied.etag);
    record.source.checksum = blob.source.checksum.clone();
    record.source.size = blob.source.size;
    record.source.etag = blob.source.etag.clone();
    record.source.last_modified = blob.source.last_modified.clone();
    record.source.packer_version = blob.source.packer_version.clone();
    let trimmed = with_history(&mut record, change, kept);
    write_record(ctx, &change.record_key, &record).await?;
    delete_history(change, &trimmed, ctx).await?;
    Ok((
        Done::Promoted {
            size: blob.size,
            checksum: blob.checksum.clone(),
        },
        Some(blob.checksum.clone()),
    ))
}

/// The copy of a checked blob to the image's key, labelled as its record will describe it.
async fn copy_blob(
    change: &Change,
    blob: &StagedBlob,
    checked: &ObjectMeta,
    fingerprint: &Checksum,
    ctx: &ApplyContext,
) -> anyhow::Result<ObjectMeta> {
    copy_labelled(
        ctx,
        Labelled {
            from: &blob.key,
            to: &change.key,
            checked,
            size: blob.size,
            checksum: &blob.checksum,
            fingerprint,
            facts: crate::store::SourceFacts {
                size: blob.source.size,
                etag: blob.source.etag.clone(),
                last_modified: blob.source.last_modified.clone(),
                packer_version: blob.source.packer_version.clone(),
                lost: false,
            },
        },
    )
    .await
}

fn is_changed(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<StoreError>(),
        Some(StoreError::SourceChanged { .. })
    )
}

/// A copy refused because the blob is not what was checked, said as what it means for the
/// image: the blob went, or was changed outside labctl, since it was staged.
fn blob_changed(e: anyhow::Error, change: &Change, blob: &StagedBlob) -> anyhow::Error {
    let name = &change.name;
    match e.downcast_ref::<StoreError>() {
        Some(StoreError::SourceGone { .. }) => StagedError::BlobGone {
            name: name.clone(),
            key: blob.key.clone(),
        }
        .into(),
        Some(StoreError::SourceChanged { .. }) => anyhow!(
            "the staged blob `{}` is not what its stage recorded: it was changed outside labctl; stage `{name}` again",
            blob.key
        ),
        _ => e,
    }
}

/// The image's staged blob, once its stage result, the plan and the blob itself agree; with
/// the object as it was checked (the copy is made only while it keeps that ETag). The blob is
/// checked by HEAD (size and labctl's metadata), or, where the store holds the copy to it, by
/// the ETag its leg recorded.
async fn checked_blob<'s>(
    change: &Change,
    deps: &BTreeMap<String, Checksum>,
    staged: &'s Staged,
    check: BlobCheck,
    ctx: &ApplyContext,
) -> anyhow::Result<(&'s StagedBlob, ObjectMeta)> {
    let name = &change.name;
    let result = staged
        .results
        .get(name)
        .ok_or_else(|| StagedError::NothingStaged { name: name.clone() })?;
    let blob = match (result.status, &result.blob) {
        (StageStatus::Staged, Some(blob)) => blob,
        _ => Err(StagedError::LegFailed {
            name: name.clone(),
            error: result.error.clone(),
            hint: result.hint.clone(),
        })?,
    };
    // The bytes must be what the plan shows, and a build must have taken the inputs that are
    // published now.
    if let Some(wanted) = change.after.as_ref().and_then(|a| a.checksum.as_ref()) {
        if *wanted != blob.checksum {
            bail!(
                "the staged blob `{}` holds {}, but the plan wants {wanted}",
                blob.key,
                blob.checksum
            );
        }
    }
    for (input, took) in &blob.inputs {
        if deps.get(input) != Some(took) {
            bail!(
                "`{name}` was built from `{input}` {took}, which is not what this promotion publishes; stage `{name}` again"
            );
        }
    }
    if let (BlobCheck::RecordedEtag, Some(etag)) = (check, &blob.etag) {
        let recorded = ObjectMeta {
            key: blob.key.clone(),
            size: blob.size,
            etag: etag.clone(),
            user_metadata: BTreeMap::new(),
            listed_modified: None,
        };
        return Ok((blob, recorded));
    }
    let object = ctx
        .store
        .head(&blob.key)
        .await?
        .ok_or_else(|| StagedError::BlobGone {
            name: name.clone(),
            key: blob.key.clone(),
        })?;
    if object.size != blob.size || !object.labelled_with(&blob.checksum) {
        bail!(
            "the staged blob `{}` is not what its stage recorded ({} bytes, {}): it was changed outside labctl; stage `{name}` again",
            blob.key,
            blob.size,
            blob.checksum
        );
    }
    Ok((blob, object))
}

/// Stage results read at once: requests with next to no body, whose cost is the store's
/// latency. Each holds a connection the client keeps open until the run ends, through the
/// index. Promoting 10,000 images on s3s-fs, the first copy started after 6.2 s at 64 (peak RSS
/// 91 MiB), 4.4 s at 128 (93 MiB) and 3.9 s at 256 (99 MiB).
const SMALL_REQUESTS: usize = 128;

/// What the legs of a plan staged.
#[derive(Debug, Default)]
pub struct Found {
    /// By image.
    pub results: BTreeMap<String, StageResult>,
    pub legs: Vec<LegRead>,
    /// How many of `results` came from legs' objects.
    pub from_legs: usize,
    /// The listing gave no ETags, so the legs' objects were not read.
    pub without_etags: bool,
}

/// Legs' objects of results read at once: up to 2 MiB each, though a leg of 40 units writes
/// some 40 KiB.
const LEG_READS: usize = 16;

/// What the legs staged for the plan `plan_id`, by image: from the legs' objects of results
/// where the listing shows an image's own result unchanged since its leg wrote it, else from
/// the image's result. A result that cannot be read is reported by `warn` and treated as
/// missing (its image fails).
pub async fn staged_results(
    store: &dyn Store,
    plan_id: &str,
    warn: &dyn Fn(&str),
) -> anyhow::Result<Found> {
    let prefix = crate::layout::staged_results_prefix(plan_id);
    let listed = crate::store::list_all(store, &prefix)
        .await
        .with_context(|| format!("cannot list the stage results under `{prefix}`"))?;
    let mut etags: BTreeMap<String, String> = BTreeMap::new();
    let mut leg_keys = Vec::new();
    for object in listed {
        match crate::layout::staged_key(&prefix, &object.key) {
            StagedKey::Result { image } => {
                etags.insert(image.to_string(), object.etag);
            }
            StagedKey::LegResults => leg_keys.push(object.key),
            StagedKey::Other => warn(&format!(
                "`{}` is not a stage result of this plan: ignored",
                object.key
            )),
        }
    }
    let mut found = Found::default();
    // Where the listing gives no ETags (s3s-fs), no leg's result can be shown to be current:
    // the legs' objects are not read at all.
    if !etags.is_empty() && etags.values().all(String::is_empty) {
        let unread = leg_keys
            .into_iter()
            .map(|key| LegRead { key, images: None });
        found.legs.extend(unread);
        found.without_etags = !found.legs.is_empty();
        leg_keys = Vec::new();
    }
    let mut legs: Vec<_> = futures_util::stream::iter(leg_keys)
        .map(|key| async move {
            let read = read_leg(store, &key).await;
            (key, read)
        })
        .buffer_unordered(LEG_READS)
        .collect()
        .await;
    legs.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, read) in legs {
        // One that cannot be used is kept like one not read: it goes once no result of the
        // plan stays.
        let unusable = LegRead {
            key: key.clone(),
            images: None,
        };
        let leg = match read {
            Ok(Some(leg)) if leg.plan == plan_id => leg,
            Ok(Some(_)) => {
                warn(&format!(
                    "`{key}` describes another plan than its key names: ignored"
                ));
                found.legs.push(unusable);
                continue;
            }
            Ok(None) => continue,
            Err(e) => {
                warn(&format!("{e:#}: ignored, its results are read one by one"));
                found.legs.push(unusable);
                continue;
            }
        };
        let images = Some(leg.results.iter().map(|w| w.result.image.clone()).collect());
        for written in leg.results {
            let image = &written.result.image;
            // A store that lists no ETags (s3s-fs) or answered a write without one gives
            // nothing to compare: those results are read alone.
            let unchanged = etags
                .get(image)
                .is_some_and(|listed| crate::store::same_etag(listed, &written.etag));
            if unchanged && written.result.speaks_for(plan_id, image) {
                found.results.insert(image.clone(), written.result);
            }
        }
        found.legs.push(LegRead { key, images });
    }
    found.from_legs = found.results.len();
    // The rest one by one, many at a time: a promotion of thousands of small units otherwise
    // waits on a round trip per unit before its first copy (each a few hundred bytes; on
    // s3s-fs every GET takes some 35 ms however small).
    let unread: Vec<String> = etags
        .into_keys()
        .filter(|image| !found.results.contains_key(image))
        .collect();
    let mut read: Vec<_> = futures_util::stream::iter(unread)
        .map(|image| async move {
            let key = crate::layout::staged_result_key(plan_id, &image);
            let result = read_result(store, &key).await;
            (image, key, result)
        })
        .buffer_unordered(SMALL_REQUESTS)
        .collect()
        .await;
    // Warned about in key order, whichever answer came first.
    read.sort_by(|a, b| a.1.cmp(&b.1));
    for (image, key, result) in read {
        match result {
            Ok(Some(result)) if result.speaks_for(plan_id, &image) => {
                found.results.insert(image, result);
            }
            Ok(Some(_)) => warn(&format!(
                "`{key}` describes another image or plan than its key names: ignored"
            )),
            Ok(None) => {}
            Err(e) => warn(&format!("{e:#}: ignored")),
        }
    }
    Ok(found)
}

/// One leg's object of results; `None` when there is none.
async fn read_leg(store: &dyn Store, key: &str) -> anyhow::Result<Option<LegResults>> {
    let parse = LegResults::parse;
    read_document(
        store,
        key,
        MAX_LEG_RESULTS_BYTES,
        "the leg's results",
        parse,
    )
    .await
}

/// What was staged of `image` for the plan `plan_id`; `None` when nothing was, or when what is
/// at its key speaks for another image or plan (a result is trusted only where its key says).
pub async fn result_for(
    store: &dyn Store,
    plan_id: &str,
    image: &str,
) -> anyhow::Result<Option<StageResult>> {
    let key = crate::layout::staged_result_key(plan_id, image);
    Ok(read_result(store, &key)
        .await?
        .filter(|r| r.speaks_for(plan_id, image)))
}

/// One stage result from the store; `None` when there is none.
pub async fn read_result(store: &dyn Store, key: &str) -> anyhow::Result<Option<StageResult>> {
    read_document(
        store,
        key,
        MAX_RESULT_BYTES,
        "the stage result",
        StageResult::parse,
    )
    .await
}

/// A fan-out document at `key`, read up to `limit` bytes and parsed; `None` when there is none.
async fn read_document<T>(
    store: &dyn Store,
    key: &str,
    limit: usize,
    what: &str,
    parse: fn(&[u8]) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    let Some((_, bytes)) = crate::store::get_bytes(store, key, limit)
        .await
        .with_context(|| format!("cannot read {what} `{key}`"))?
    else {
        return Ok(None);
    };
    parse(&bytes)
        .map(Some)
        .map_err(|why| anyhow!("{what} `{key}` cannot be read: {why}"))
}

/// What a promotion leaves to delete once the index is written: the blobs of promoted images
/// (not one another image still waits for: it failed, or was not promoted) and their results.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftover {
    pub blobs: Vec<String>,
    pub results: Vec<String>,
}

/// What the promotion of the plan `plan_id` leaves to delete, from what was `staged`, the
/// `legs` whose results were read, and what became of each image.
pub fn leftover(
    plan_id: &str,
    staged: &BTreeMap<String, StageResult>,
    legs: &[LegRead],
    report: &Report,
) -> Leftover {
    let promoted: BTreeSet<&str> = report
        .results
        .iter()
        .filter(|(_, _, o)| matches!(o, Outcome::Done(_)))
        .map(|(n, _, _)| n.as_str())
        .filter(|n| staged.contains_key(*n))
        .collect();
    let blob_of = |name: &str| {
        staged
            .get(name)
            .and_then(|r| r.blob.as_ref())
            .map(|b| &b.key)
    };
    let still_wanted: BTreeSet<&String> = staged
        .keys()
        .filter(|n| !promoted.contains(n.as_str()))
        .filter_map(|n| blob_of(n))
        .collect();
    let blobs: BTreeSet<&String> = promoted
        .iter()
        .filter_map(|name| blob_of(name))
        .filter(|b| !still_wanted.contains(b))
        .collect();
    // A leg's object goes once no result it holds stays for a later promotion (one that was
    // not read, once none of the plan's results stays).
    let stays = |image: &String| staged.contains_key(image) && !promoted.contains(image.as_str());
    let done_legs = legs
        .iter()
        .filter(|leg| match &leg.images {
            Some(images) => !images.iter().any(stays),
            None => !staged.keys().any(stays),
        })
        .map(|leg| leg.key.clone());
    Leftover {
        blobs: blobs.into_iter().cloned().collect(),
        results: promoted
            .iter()
            .map(|name| crate::layout::staged_result_key(plan_id, name))
            .chain(done_legs)
            .collect(),
    }
}

/// Deletes what a promotion left, blobs first: a result left behind says what is gone. Returns
/// what could not be deleted.
pub async fn forget(store: &dyn Store, leftover: Leftover) -> Vec<String> {
    crate::store::delete_in_turn(store, [leftover.blobs, leftover.results]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Action;
    use crate::progress::Failed;

    fn staged(image: &str, blob: &str) -> (String, StageResult) {
        let checksum = Checksum::sha256(blob.as_bytes());
        let result = StageResult {
            format_version: crate::fanout::FORMAT_VERSION.into(),
            plan: "p".into(),
            image: image.into(),
            status: StageStatus::Staged,
            error: None,
            hint: None,
            blob: Some(StagedBlob {
                key: crate::layout::blob_key(&checksum),
                checksum: checksum.clone(),
                sha256: checksum,
                size: 1,
                uploaded: true,
                etag: None,
                inputs: BTreeMap::new(),
                source: Default::default(),
            }),
            staged_at: "2026-12-07T00:00:00Z".into(),
            ci_run: None,
        };
        (image.into(), result)
    }

    /// A blob goes with the last image that waited for it; results go with their images only.
    #[test]
    fn a_promotion_leaves_the_blobs_failed_images_still_need() {
        let results = BTreeMap::from([
            staged("a", "shared"),
            staged("b", "shared"),
            staged("c", "own"),
            staged("d", "never run"),
        ]);
        let done = || {
            Outcome::Done(Done::Promoted {
                size: 1,
                checksum: Checksum::sha256(b"x"),
            })
        };
        let report = Report {
            results: vec![
                ("a".into(), Action::Create, done()),
                (
                    "b".into(),
                    Action::Create,
                    Outcome::Failed(Failed::new("no")),
                ),
                ("c".into(), Action::Create, done()),
                ("e".into(), Action::Create, done()),
            ],
        };
        let legs = [
            LegRead {
                key: "leg-a-b".into(),
                images: Some(vec!["a".into(), "b".into()]),
            },
            LegRead {
                key: "leg-a-c-e".into(),
                images: Some(vec!["a".into(), "c".into(), "e".into()]),
            },
            LegRead {
                key: "leg-unread".into(),
                images: None,
            },
        ];
        let left = leftover("p", &results, &legs, &report);
        let key = |b: &str| crate::layout::blob_key(&Checksum::sha256(b.as_bytes()));
        assert_eq!(left.blobs, [key("own")]);
        assert_eq!(
            left.results,
            [
                crate::layout::staged_result_key("p", "a"),
                crate::layout::staged_result_key("p", "c"),
                "leg-a-c-e".into(),
            ],
            "the leg of `b`, which failed, stays with its result"
        );
        // Once nothing of the plan stays, a leg's object that was not read goes too.
        let all_done = Report {
            results: ["a", "b", "c", "d"]
                .map(|n| (n.to_string(), Action::Create, done()))
                .into(),
        };
        let left = leftover("p", &results, &legs, &all_done);
        assert!(
            left.results.contains(&"leg-unread".to_string()),
            "{:?}",
            left.results
        );
    }
}

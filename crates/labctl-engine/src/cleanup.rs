//! What fan-outs leave behind: blobs staged for a promotion that never came (a cancelled
//! workflow, a failed unit whose plan was replaced) and their stage results; and the probe
//! objects of a killed `doctor` or promotion. A blob a recent
//! result still names is kept, whatever its age: a promotion may still want it.

use std::collections::BTreeSet;

use anyhow::Context;
use futures_util::StreamExt as _;

use crate::fanout::StageResult;
use crate::store::{ObjectMeta, StartedUpload, Store, StoreError};

/// Recent stage results read at once.
const RESULT_READS: usize = 64;

/// Staged objects older than the cut-off that no recent stage result names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub blobs: Vec<ObjectMeta>,
    pub results: Vec<ObjectMeta>,
    /// Unfinished uploads of blobs started before the cut-off: left by a leg that was killed.
    pub uploads: Vec<StartedUpload>,
    /// Probe objects under `.labctl/doctor/` older than the cut-off: left by a `doctor` or a
    /// promotion killed while it probed (a probe lives for seconds).
    pub probes: Vec<ObjectMeta>,
    /// Recent (kept) results and the blobs they name.
    pub kept: usize,
}

impl Leftovers {
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
            && self.results.is_empty()
            && self.uploads.is_empty()
            && self.probes.is_empty()
    }
}

/// Finds the leftovers older than `older_than` seconds at `now` (seconds since the epoch). An
/// object or upload whose listing gives no time is taken for old only with a cut-off of 0
/// (everything).
pub async fn find(store: &dyn Store, older_than: u64, now: u64) -> anyhow::Result<Leftovers> {
    let is_old = |age: Option<u64>| older_than == 0 || age.is_some_and(|a| a >= older_than);
    let old = |m: &ObjectMeta| is_old(m.listed_age(now));
    let results = crate::store::list_all(store, crate::layout::STAGED_PREFIX)
        .await
        .context("cannot list the stage results")?;
    let blobs = crate::store::list_all(store, crate::layout::BLOBS_PREFIX)
        .await
        .context("cannot list the staged blobs")?;
    let (old_results, recent): (Vec<ObjectMeta>, Vec<ObjectMeta>) =
        results.into_iter().partition(|r| old(r));
    // Read many at a time: a fan-out of thousands of units leaves as many results, and a
    // nightly drift reads them all while they are recent.
    let read: Vec<anyhow::Result<Option<StageResult>>> = futures_util::stream::iter(&recent)
        // A leg's object of results names what the images' own results name.
        .filter(|r| {
            std::future::ready(matches!(
                crate::layout::any_staged_key(&r.key),
                crate::layout::StagedKey::Result { .. }
            ))
        })
        .map(|r| crate::promote::read_result(store, &r.key))
        .buffer_unordered(RESULT_READS)
        .collect()
        .await;
    let mut wanted = BTreeSet::new();
    for result in read {
        match result {
            Ok(result) => wanted.extend(result.and_then(|r| r.blob).map(|b| b.key)),
            // A store that did not answer (throttled, say) might hold a result naming an old
            // blob: nothing is taken for a leftover then.
            Err(e) if e.downcast_ref::<StoreError>().is_some() => return Err(e),
            // An unreadable recent result keeps nothing: it cannot be promoted either.
            Err(_) => {}
        }
    }
    let (old_blobs, kept_blobs): (Vec<ObjectMeta>, Vec<ObjectMeta>) = blobs
        .into_iter()
        .partition(|b| old(b) && !wanted.contains(&b.key));
    let uploads = store
        .list_started_uploads(crate::layout::BLOBS_PREFIX)
        .await
        .context("cannot list the unfinished uploads of blobs")?
        .unwrap_or_default()
        .into_iter()
        .filter(|u| is_old(u.started.map(|t| now.saturating_sub(t))))
        .collect();
    let probes = crate::store::list_all(store, &format!("{}/", crate::store::probe::PROBE_PREFIX))
        .await
        .context("cannot list the probes' objects")?
        .into_iter()
        .filter(|p| old(p))
        .collect();
    Ok(Leftovers {
        blobs: old_blobs,
        results: old_results,
        uploads,
        probes,
        kept: recent.len() + kept_blobs.len(),
    })
}

/// Removes the leftovers, results first (a blob without a result is still found by the next
/// run), and aborts the stalled uploads; returns what could not be removed.
pub async fn remove(store: &dyn Store, leftovers: &Leftovers) -> Vec<String> {
    let keys = |objects: &[ObjectMeta]| objects.iter().map(|o| o.key.clone()).collect();
    let groups = [
        keys(&leftovers.results),
        keys(&leftovers.blobs),
        keys(&leftovers.probes),
    ];
    let mut failed = crate::store::delete_in_turn(store, groups).await;
    for u in &leftovers.uploads {
        match store
            .abort_multipart(&u.upload.key, &u.upload.upload_id)
            .await
        {
            Ok(()) | Err(StoreError::NoSuchUpload { .. }) => {}
            Err(e) => failed.push(format!(
                "the upload {} of {}: {e}",
                u.upload.upload_id, u.upload.key
            )),
        }
    }
    failed
}

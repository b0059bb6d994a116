//! Writing the consumer index after the images: learn the sha256 of objects whose records lack
//! it, then write `index.json`, `SHA256SUMS` and its signature, in that order.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;

use crate::consumer_index::{self, JSON_KEY, SIGNATURE_KEY, SUMS_KEY};
use crate::plan::Backfill;
use crate::signing::IndexSigner;
use crate::state::record::{self, MAX_RECORD_BYTES};
use crate::store::{self, PutOptions, Store};

/// What reading objects back produced: one line per object done, and the objects that could not
/// be indexed (they stay out of the index; the apply fails so that someone looks).
#[derive(Debug, Default)]
pub struct Backfilled {
    pub done: Vec<String>,
    pub problems: Vec<String>,
}

/// Reads each object back once, checks it against its record's checksum, and adds the sha256
/// to the record. An object that cannot be read or does not match is reported and left out of
/// the index; the others are indexed regardless.
pub async fn backfill(store: &Arc<dyn Store>, items: &[Backfill]) -> anyhow::Result<Backfilled> {
    let mut out = Backfilled::default();
    for item in items {
        // A plan file names these keys: read back only an image object and rewrite only its
        // own record.
        let destination = item.key.strip_prefix(crate::manifest::IMAGES_PREFIX);
        if destination.is_none_or(|d| crate::manifest::record_key(d) != item.record_key)
            || crate::consumer_index::is_index_key(&item.key)
        {
            bail!(
                "the plan asks to read back `{}` for record `{}`, which do not belong together",
                item.key,
                item.record_key
            );
        }
        let Some((_, bytes)) =
            store::get_bytes(store.as_ref(), &item.record_key, MAX_RECORD_BYTES).await?
        else {
            continue; // deleted by this apply
        };
        let rec = record::parse(&bytes)
            .map_err(|e| anyhow!("cannot read the record `{}`: {e}", item.record_key))?;
        if rec.sha256().is_some() && rec.size().is_some() {
            continue;
        }
        crate::store::events::report(crate::store::events::Event::ReadingBack {
            image: item.name.clone(),
            key: item.key.clone(),
            size: rec.size(),
        });
        let algorithm = rec.checksum().algorithm;
        let digests = match crate::pipeline::hash_stored(store.as_ref(), &item.key, algorithm).await
        {
            Ok(d) => d,
            Err(e) => {
                out.problems.push(format!(
                    "{}: cannot read {} back for its sha256 ({e}); it is left out of the index",
                    item.name, item.key
                ));
                continue;
            }
        };
        if digests.declared != *rec.checksum() {
            out.problems.push(format!(
                "{}: {} hashes to {}, not to {} as its record says; it is left out of the index (run `labctl drift --deep`, then `labctl apply --replace {}`)",
                item.name,
                item.key,
                digests.declared,
                rec.checksum(),
                item.name
            ));
            continue;
        }
        let updated = record::with_sha256(&bytes, &digests.sha256, digests.size)?;
        store
            .put(
                &item.record_key,
                Bytes::from(updated),
                PutOptions::default(),
            )
            .await
            .with_context(|| format!("cannot add the sha256 to `{}`", item.record_key))?;
        out.done.push(format!(
            "{}: sha256 {} computed from the stored object",
            item.name,
            digests.sha256.short()
        ));
    }
    Ok(out)
}

/// The index after an apply: the objects read back for their sha256, then the index itself.
#[derive(Debug)]
pub struct Published {
    pub backfilled: Backfilled,
    pub written: Written,
}

/// Backfills the sha256s `backfill` names, then rewrites the index ([`write`]). A backfill that
/// found problems still writes the index for everything else; the caller fails the run so that
/// someone looks.
pub async fn publish(
    store: &Arc<dyn Store>,
    backfill_items: &[Backfill],
    signer: Option<&IndexSigner>,
    wrote: crate::state::refresh::Written,
    records_read: &(dyn Fn(usize, usize) + Sync),
) -> anyhow::Result<Published> {
    let backfilled = backfill(store, backfill_items).await?;
    let written = write(store, signer, wrote, records_read).await?;
    crate::halt::reached(crate::halt::CommitPoint::IndexWritten).await;
    Ok(Published {
        backfilled,
        written,
    })
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub objects: usize,
    pub signed: bool,
    /// Images left out because their sha256 is not known.
    pub left_out: Vec<String>,
}

/// Rewrites the index from the records as they are now in the store (after every record of
/// this apply was written).
///
/// Order: `index.json`, then `SHA256SUMS`, then `SHA256SUMS.minisig` (or, when signing is off,
/// the old signature is deleted first). A sync that lands in between sees a signature that
/// does not match the list yet: `labctl verify` reports it and the next sync heals it.
///
/// The records this apply `wrote` are taken as written (when the listing agrees), not fetched
/// again. `records_read(done, total)` reports the reading of the records; the index names the
/// CI run of [`crate::run_identity`].
pub async fn write(
    store: &Arc<dyn Store>,
    signer: Option<&IndexSigner>,
    wrote: crate::state::refresh::Written,
    records_read: &(dyn Fn(usize, usize) + Sync),
) -> anyhow::Result<Written> {
    let actual = crate::state::refresh::read_reporting(
        store.clone(),
        crate::state::refresh::Objects::ListedByEtag,
        wrote,
        records_read,
    )
    .await?;
    let consumer_index::Entries { entries, lacking } = consumer_index::entries(&actual.records);
    let objects = entries.len();
    let generated_at = crate::timefmt::now_rfc3339();
    let ci_run = crate::run_identity().ci_run.clone();
    let sums = consumer_index::sha256sums(&entries);
    let json = consumer_index::to_json(&consumer_index::document(
        entries,
        generated_at.clone(),
        ci_run.clone(),
    ));

    if signer.is_none() && actual.index.signature.is_some() {
        store
            .delete(SIGNATURE_KEY)
            .await
            .with_context(|| format!("cannot delete `{SIGNATURE_KEY}`"))?;
    }
    put(store, JSON_KEY, json).await?;
    let signature = match signer {
        Some(s) => Some(s.sign(
            sums.as_bytes(),
            // The trusted comment is signed: the generation's time and run, beyond doubt.
            &format!(
                "SHA256SUMS of {objects} objects, written by labctl {} at {generated_at}{}",
                env!("CARGO_PKG_VERSION"),
                ci_run
                    .as_ref()
                    .map(|r| format!(" by CI run {}", r.url.as_deref().unwrap_or(&r.id)))
                    .unwrap_or_default()
            ),
        )?),
        None => None,
    };
    put(store, SUMS_KEY, sums.into_bytes()).await?;
    if let Some(sig) = signature {
        put(store, SIGNATURE_KEY, sig.into_bytes()).await?;
    }
    // The records as they now are, for the next plan's refresh (an optimization: a failure is
    // reported and the next refresh fetches the records).
    if let Err(e) = crate::state::refresh::write_snapshot(store.as_ref(), &actual).await {
        crate::store::events::report(crate::store::events::Event::SnapshotNotSaved {
            error: e.to_string(),
        });
    }
    Ok(Written {
        objects,
        signed: signer.is_some(),
        left_out: lacking.into_iter().map(|(_, name)| name).collect(),
    })
}

async fn put(store: &Arc<dyn Store>, key: &str, body: Vec<u8>) -> anyhow::Result<()> {
    store
        .put(key, Bytes::from(body), PutOptions::default())
        .await
        .with_context(|| format!("cannot write the consumer index file `{key}`"))?;
    Ok(())
}

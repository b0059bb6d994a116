//! Records and their history: what a change writes once its object is in place, and the kept
//! versions it trims after.

use anyhow::{bail, Context};
use bytes::Bytes;

use crate::context::ApplyContext;
use crate::halt::CommitPoint;
use crate::plan::Change;
use crate::state::record::{to_json, HistoryEntry};
use crate::store::PutOptions;

/// Fills in the record's history after a change and returns the history keys to delete once
/// the record is written.
pub(crate) fn with_history(
    record: &mut crate::state::StateRecord,
    change: &Change,
    kept: Option<HistoryEntry>,
) -> Vec<String> {
    let before = change
        .before
        .as_ref()
        .map(|b| b.history.as_slice())
        .unwrap_or_default();
    let (list, delete) = super::history::after_change(
        kept,
        before,
        change.history.as_deref(),
        record.sha256.as_ref(),
        record.spec.history,
    );
    record.history = list;
    delete
}

/// Deleted only after the record that no longer lists them is written, so a record never names
/// a version that is gone. The image itself is done by then: a failed delete is reported, not
/// turned into a failed image (`labctl drift` lists kept versions no record names).
pub(crate) async fn delete_history(
    change: &Change,
    keys: &[String],
    ctx: &ApplyContext,
) -> anyhow::Result<()> {
    for key in keys {
        if !crate::plan::check::is_history_of(&change.key, key) {
            bail!(
                "refusing to delete `{key}`: it is not a kept version of `{}`",
                change.key
            );
        }
        if let Err(e) = ctx.store.delete(key).await {
            ctx.progress.line(
                &change.name,
                &format!("warning: cannot delete the kept version `{key}`: {e}"),
            );
        }
    }
    Ok(())
}

/// The record in the store now, when it is one this labctl reads.
pub(crate) async fn current_record(
    ctx: &ApplyContext,
    key: &str,
) -> anyhow::Result<Option<crate::state::StateRecord>> {
    let bytes = crate::store::get_bytes(
        ctx.store.as_ref(),
        key,
        crate::state::record::MAX_RECORD_BYTES,
    )
    .await
    .with_context(|| format!("cannot read the record `{key}`"))?;
    Ok(match bytes.map(|(_, b)| crate::state::record::parse(&b)) {
        Some(Ok(crate::state::Record::Current(r))) => Some(*r),
        _ => None,
    })
}

pub(crate) async fn write_record(
    ctx: &ApplyContext,
    key: &str,
    record: &crate::state::StateRecord,
) -> anyhow::Result<()> {
    let record = crate::state::StateRecord {
        ci_run: ctx.ci_run.clone(),
        ..record.clone()
    };
    crate::halt::reached(CommitPoint::ObjectVisible).await;
    let stored = ctx.store
        .put(key, Bytes::from(to_json(&record)), PutOptions::default())
        .await
        .with_context(|| format!("the object was published but its record `{key}` could not be written; the next plan replaces it"))?;
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, record, &stored);
    crate::halt::reached(CommitPoint::RecordWritten).await;
    Ok(())
}

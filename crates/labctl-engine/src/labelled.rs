//! Objects labelled with labctl's metadata, and server-side copies of checked bytes (promotion,
//! restores) raced against the run's cancellation.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use crate::checksum::Checksum;
use crate::context::ApplyContext;
use crate::pipeline;
use crate::store::{SourceFacts, META_CHECKSUM, META_FINGERPRINT};

pub(crate) fn object_metadata(
    checksum: &Checksum,
    fingerprint: &Checksum,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_CHECKSUM.to_string(), checksum.to_string()),
        (META_FINGERPRINT.to_string(), fingerprint.to_string()),
    ])
}

pub(crate) fn labelled_metadata(
    checksum: &Checksum,
    fingerprint: &Checksum,
    facts: &SourceFacts,
) -> BTreeMap<String, String> {
    let mut metadata = object_metadata(checksum, fingerprint);
    facts.write_into(&mut metadata);
    metadata
}

/// A server-side copy of checked bytes to an image's key, with labctl's metadata.
pub(crate) struct Labelled<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// The source as it was checked (by HEAD): the copy is made only while its ETag holds.
    pub checked: &'a crate::store::ObjectMeta,
    pub size: u64,
    pub checksum: &'a Checksum,
    pub fingerprint: &'a Checksum,
    /// What the record will say about how the bytes were made (see [`SourceFacts`]).
    pub facts: SourceFacts,
}

/// Work the store does in long requests (a server-side copy of many GiB, hundreds of
/// UploadPartCopy, reading an object back), raced against the run's cancellation so a signal
/// does not wait for it. What is dropped leaves nothing open: a part-by-part copy aborts its
/// upload; a whole-object copy the server already accepted may still land — complete, labelled
/// with its facts — and the next run adopts it.
pub(crate) async fn unless_interrupted<T>(
    ctx: &ApplyContext,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        out = work => out,
        () = pipeline::signalled(ctx.cancel.clone()) => Err(pipeline::PipelineError::Cancelled.into()),
    }
}

/// Makes the copy and checks its size.
pub(crate) async fn copy_labelled(
    ctx: &ApplyContext,
    copy: Labelled<'_>,
) -> anyhow::Result<crate::store::ObjectMeta> {
    let metadata = labelled_metadata(copy.checksum, copy.fingerprint, &copy.facts);
    let copying = async {
        ctx.store
            .copy(copy.from, copy.to, Some(metadata), Some(copy.checked))
            .await
            .with_context(|| format!("cannot copy `{}` to `{}`", copy.from, copy.to))
    };
    let object = unless_interrupted(ctx, copying).await?;
    if object.size != copy.size {
        bail!(
            "the copy of `{}` at `{}` has {} bytes, not {}",
            copy.from,
            copy.to,
            object.size,
            copy.size
        );
    }
    Ok(object)
}

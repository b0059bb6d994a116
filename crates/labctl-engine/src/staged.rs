//! What a promotion works from, and why a fan-out's staged blobs cannot be used: each with the
//! command that stages what is missing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::fanout::StageResult;
use crate::store::Store;

use labctl_core::hint::Hint;

#[derive(Debug, thiserror::Error)]
pub enum StagedError {
    /// The leg's error and hint crossed processes as text (its stage result).
    #[error("staging `{name}` failed: {}", error.as_deref().unwrap_or("no blob was staged"))]
    LegFailed {
        name: String,
        error: Option<String>,
        hint: Option<String>,
    },
    #[error("nothing was staged for `{name}`")]
    NothingStaged { name: String },
    #[error("the staged blob `{key}` is gone from the store")]
    BlobGone { name: String, key: String },
    #[error("`{name}` takes `{input}`, which is not staged yet")]
    InputNotStaged {
        name: String,
        input: String,
        wave: usize,
    },
}

impl Hint for StagedError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        Some(Cow::Owned(match self {
            StagedError::LegFailed { hint, .. } => return hint.clone().map(Cow::Owned),
            StagedError::NothingStaged { name } => format!(
                "stage it with `labctl stage PLANFILE --unit {name}`, or apply the plan without --staged"
            ),
            StagedError::BlobGone { name, .. } => {
                format!("stage it again: `labctl stage PLANFILE --unit {name}`")
            }
            StagedError::InputNotStaged { input, wave, .. } => {
                format!("stage wave {wave} first: `labctl stage PLANFILE --unit {input}`")
            }
        }))
    }
}

/// What a promotion works from.
#[derive(Debug, PartialEq, Eq)]
pub struct Staged {
    /// What the plan's legs staged, by image.
    pub results: BTreeMap<String, StageResult>,
    /// The legs' objects of results that were read.
    pub legs: Vec<LegRead>,
    pub check: BlobCheck,
}

/// A leg's object of results as a promotion found it: removed with the results once none of
/// its images waits for a later promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegRead {
    pub key: String,
    /// The images it names; `None` when it was not read (its store lists no ETags).
    pub images: Option<Vec<String>>,
}

/// How a staged blob is checked before it is copied to its image's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCheck {
    /// By HEAD, right before the copy (size and labctl's metadata), as every other copy is: the
    /// store copies whatever `x-amz-copy-source-if-match` says, or could not be asked.
    Head,
    /// By the ETag the leg recorded, which the store itself holds the copy to: a blob that
    /// changed or went since its stage is refused by the copy, without a request before it.
    RecordedEtag,
}

impl BlobCheck {
    /// Asks the store (one probe copy) whether the recorded ETag is check enough.
    pub async fn for_store(store: &dyn Store, plan_id: &str) -> BlobCheck {
        match crate::store::probe::copy_checks_its_source(store, &format!("promote-{plan_id}"))
            .await
        {
            Ok(true) => BlobCheck::RecordedEtag,
            Ok(false) | Err(_) => BlobCheck::Head,
        }
    }
}

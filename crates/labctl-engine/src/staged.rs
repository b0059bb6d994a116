//! Why a fan-out's staged blobs cannot be used: each with the command that stages what is
//! missing.

use std::borrow::Cow;

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

//! How a failed command reports itself: `error: …`, one `caused by: …` per source, then a hint
//! when there is an obvious next step.

use std::fmt;

use console::style;

#[derive(Debug)]
pub struct Failure {
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            error: e.into(),
            hint: None,
        }
    }
}

pub trait WithHint<T> {
    fn hint(self, hint: impl Into<String>) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> WithHint<T> for Result<T, E> {
    fn hint(self, hint: impl Into<String>) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            error: e.into(),
            hint: Some(hint.into()),
        })
    }
}

impl Failure {
    pub fn with_hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// The hint of the first cause in the chain that has one, unless a hint was given already.
    pub fn with_default_hint(mut self) -> Failure {
        if self.hint.is_none() {
            self.hint = hint_of(&self.error);
        }
        self
    }
}

/// The one way a hint is attached: each error type with an obvious next step says it in its
/// own `hint()`, and this asks the causes of `error` in order, so that a hint survives any
/// `context` wrapped around the error that carries it.
pub fn hint_of(error: &anyhow::Error) -> Option<String> {
    use crate::lock::LockError;
    use crate::store::StoreError;
    use labctl_core::plan::PlanError;
    use labctl_core::signing::SigningError;
    use labctl_core::state::record::RecordError;
    use labctl_transfer::serve::ServeError;
    use labctl_transfer::source::channel::LookupError;
    use labctl_transfer::source::packer::PackerError;
    use labctl_transfer::verify::VerifyError;

    let owned = |h: Option<&'static str>| h.map(str::to_string);
    error.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<LockError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<StoreError>() {
            owned(e.hint())
        } else if let Some(e) = cause.downcast_ref::<PlanError>() {
            Some(e.hint().to_string())
        } else if let Some(e) = cause.downcast_ref::<SigningError>() {
            owned(e.hint())
        } else if let Some(e) = cause.downcast_ref::<RecordError>() {
            owned(e.hint())
        } else if let Some(e) = cause.downcast_ref::<ServeError>() {
            owned(e.hint())
        } else if let Some(e) = cause.downcast_ref::<VerifyError>() {
            owned(e.hint())
        } else if let Some(e) = cause.downcast_ref::<LookupError>() {
            owned(e.hint())
        } else if let Some(e) = cause.downcast_ref::<PackerError>() {
            owned(e.hint())
        } else {
            None
        }
    })
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", style("error:").red().bold(), self.error)?;
        for cause in self.error.chain().skip(1) {
            write!(f, "\n  {} {cause}", style("caused by:").dim())?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n{} {hint}", style("hint:").cyan().bold())?;
        }
        Ok(())
    }
}

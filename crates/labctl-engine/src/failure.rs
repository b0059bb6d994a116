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

    /// A hint for errors whose fix is the same wherever they happen.
    pub fn with_default_hint(mut self) -> Failure {
        if self.hint.is_none() {
            for cause in self.error.chain() {
                use crate::lock::LockError;
                use crate::store::StoreError;
                // A lock error wraps the store's transparently: it is not its own cause.
                let credentials = matches!(
                    cause.downcast_ref::<StoreError>(),
                    Some(StoreError::Credentials { .. })
                ) || matches!(
                    cause.downcast_ref::<LockError>(),
                    Some(LockError::Store(StoreError::Credentials { .. }))
                );
                if credentials {
                    self.hint = Some(
                        "set E2_ACCESS_KEY and E2_SECRET_KEY (or AWS credentials), or plan against a directory with --store DIR".into(),
                    );
                }
            }
        }
        self
    }
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

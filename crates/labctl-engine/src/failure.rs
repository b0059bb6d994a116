//! How a failed command reports itself: `error: …`, one `caused by: …` per source, then a hint
//! when there is an obvious next step.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use labctl_core::hint::Hint;

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

/// An error and its causes on one line (`a: b: c`), a cause whose text is already in the
/// line left out (errors that print their source too).
pub fn one_line(error: &(dyn StdError + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

/// The one way a hint is attached: each error type with an obvious next step says it in its
/// [`Hint`] impl, and this asks the causes of `error` in order, so that a hint survives any
/// `context` wrapped around the error that carries it.
pub fn hint_of(error: &anyhow::Error) -> Option<String> {
    hint_in(error.chain())
}

/// The hint of the first of `causes` that has one (an image's [`crate::Failed`], say).
pub fn hint_in<'e>(
    mut causes: impl Iterator<Item = &'e (dyn StdError + 'static)>,
) -> Option<String> {
    causes
        .find_map(|cause| {
            HINTED
                .iter()
                .find_map(|hinted| hinted(cause))
                .and_then(|e| e.hint())
        })
        .map(Cow::into_owned)
}

/// The error types that implement [`Hint`]. Stable Rust cannot ask a `dyn Error` whether it
/// implements another trait, so each is named here once; a type missing from this list
/// fails `every_hinted_error_is_asked` below.
type Hinted = for<'e> fn(&'e (dyn StdError + 'static)) -> Option<&'e dyn Hint>;

const HINTED: &[Hinted] = &[
    hinted::<crate::lock::LockError>,
    hinted::<crate::store::StoreError>,
    hinted::<labctl_core::fanout::NotAUnit>,
    hinted::<labctl_core::manifest::NamedImageError>,
    hinted::<labctl_core::plan::PlanError>,
    hinted::<labctl_core::signing::SigningError>,
    hinted::<labctl_core::state::record::RecordError>,
    hinted::<labctl_transfer::serve::ServeError>,
    hinted::<labctl_transfer::verify::VerifyError>,
    hinted::<labctl_transfer::source::channel::LookupError>,
    hinted::<labctl_transfer::source::packer::PackerError>,
    hinted::<crate::staged::StagedError>,
    hinted::<crate::stale_plan::StalePlan>,
];

fn hinted<'e, E: StdError + Hint + 'static>(
    cause: &'e (dyn StdError + 'static),
) -> Option<&'e dyn Hint> {
    cause.downcast_ref::<E>().map(|e| e as &dyn Hint)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An image's failure keeps its hint on the way from the job (anyhow) to the report.
    #[test]
    fn a_failed_images_hint_survives_its_outcome() {
        let bare: anyhow::Error =
            crate::staged::StagedError::NothingStaged { name: "x".into() }.into();
        let failed = crate::schedule::failed(bare);
        assert!(hint_in(failed.chain()).is_some(), "{failed}");
        let wrapped =
            anyhow::Error::from(crate::staged::StagedError::NothingStaged { name: "x".into() })
                .context("promoting x");
        let failed = crate::schedule::failed(wrapped);
        assert!(hint_in(failed.chain()).is_some(), "{failed}");
    }

    /// Every `impl Hint for T` in the workspace is in [`HINTED`]: a type left out would have
    /// its hint silently never shown.
    #[test]
    fn every_hinted_error_is_asked() {
        let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let registry = include_str!("failure.rs");
        let mut implemented = Vec::new();
        let mut dirs = vec![crates.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
                let path = entry.path();
                if path.is_dir() && !path.ends_with("target") {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for line in text.lines() {
                        if let Some(rest) = line.trim().strip_prefix("impl Hint for ") {
                            let name = rest.trim_end_matches(" {").to_string();
                            implemented.push((name, path.display().to_string()));
                        }
                    }
                }
            }
        }
        assert!(implemented.len() >= 10, "found {implemented:?}");
        for (name, path) in implemented {
            assert!(
                registry.contains(&format!("::{name}>,")),
                "{name} ({path}) implements Hint but is not in HINTED"
            );
        }
    }

    #[test]
    fn a_hint_is_found_under_any_context() {
        let error =
            anyhow::Error::from(crate::staged::StagedError::NothingStaged { name: "iso".into() })
                .context("promoting iso")
                .context("apply");
        let hint = hint_of(&error).unwrap();
        assert!(hint.contains("--unit iso"), "{hint}");
        let failed = crate::Failed::new(error);
        assert_eq!(hint_in(failed.chain()), Some(hint));
        assert_eq!(
            failed.to_string(),
            "apply: promoting iso: nothing was staged for `iso`"
        );
    }
}

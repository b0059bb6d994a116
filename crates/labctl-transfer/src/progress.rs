//! How transfers and builds report progress. The views (bars, CI log lines, GitHub groups) are
//! the CLI's; this crate only calls them.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use labctl_core::checksum::Checksum;

/// Receives progress of each image's transfer. Implementations must be cheap: `advance` is
/// called for every chunk.
pub trait Progress: Send + Sync {
    fn start(&self, image: &str, what: &str, total: Option<u64>);
    fn advance(&self, image: &str, bytes: u64);
    /// The transfer starts over (a server ignored `Range`).
    fn restart(&self, image: &str, total: Option<u64>, why: &str);
    /// The image's work is over. Each view shows this once; the text of a failure is left to
    /// the summary (or the annotation), so it is printed once in every view.
    fn finish(&self, image: &str, outcome: &Outcome);
    /// A line of a build's output, prefixed with the image name.
    fn line(&self, image: &str, line: &str);
}

/// Reports nothing (tests, `--quiet` callers).
pub struct Silent;

impl Progress for Silent {
    fn line(&self, _: &str, _: &str) {}
    fn start(&self, _: &str, _: &str, _: Option<u64>) {}
    fn advance(&self, _: &str, _: u64) {}
    fn restart(&self, _: &str, _: Option<u64>, _: &str) {}
    fn finish(&self, _: &str, _: &Outcome) {}
}

/// How one image's work ended: the typed event every view renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    /// What was done (`created (N bytes, sha256:…)`).
    Done(Done),
    /// The error, with its causes.
    Failed(Failed),
    Skipped(Skip),
}

/// Why an image's work failed: the error itself, its causes kept, so that each view renders
/// the chain (and its hint) its own way. Shared, because a report and the views each hold it.
#[derive(Debug, Clone)]
pub struct Failed(Arc<dyn Causes>);

/// An error and its causes, outermost first, each as its own type: a view asks each for its
/// hint by downcasting. (An error boxed as `dyn Error` by anyhow no longer downcasts to its
/// type, so anyhow's errors come with their own chain.)
pub trait Causes: fmt::Debug + Send + Sync {
    fn causes(&self) -> Box<dyn Iterator<Item = &(dyn Error + 'static)> + '_>;
}

impl Causes for Box<dyn Error + Send + Sync> {
    fn causes(&self) -> Box<dyn Iterator<Item = &(dyn Error + 'static)> + '_> {
        let first: &(dyn Error + 'static) = &**self;
        Box::new(std::iter::successors(Some(first), |&e| e.source()))
    }
}

impl Failed {
    pub fn new(error: impl Into<Box<dyn Error + Send + Sync>>) -> Failed {
        Failed(Arc::new(error.into()))
    }

    /// A failure whose causes come as they are (see [`Causes`]).
    pub fn of(causes: impl Causes + 'static) -> Failed {
        Failed(Arc::new(causes))
    }

    /// The error and each of its causes, outermost first.
    pub fn chain(&self) -> impl Iterator<Item = &(dyn Error + 'static)> {
        self.0.causes()
    }
}

/// The error and its causes on one line, `outer: cause: root`.
impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.chain().enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Two failures are equal when they read the same (reports are compared in tests).
impl PartialEq for Failed {
    fn eq(&self, other: &Failed) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Failed {}

/// What an image's work did; its `Display` is the line every view shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Downloaded or built, verified and published.
    Published {
        how: Published,
        size: u64,
        checksum: Checksum,
    },
    /// Copied back from the history (a revert): nothing downloaded.
    Restored { size: u64, checksum: Checksum },
    /// Copied from the blob a fan-out leg staged.
    Promoted { size: u64, checksum: Checksum },
    /// An object a killed run published, read back and given its record.
    Adopted { size: u64, checksum: Checksum },
    /// Record (and metadata) only.
    Updated,
    /// The object, its kept versions and its record.
    Deleted { key: String, kept: usize },
    /// A fan-out leg's blob (`uploaded: false`: the same bytes were there already).
    Staged {
        key: String,
        size: u64,
        checksum: Checksum,
        uploaded: bool,
    },
    /// A command's own word for it (`pin`: hashed; `bump`: verified 1.2.3).
    Said(String),
}

/// How a published image came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Created,
    Replaced,
    Built,
    Rebuilt,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Published {
                how,
                size,
                checksum,
            } => {
                let verb = match how {
                    Published::Created => "created",
                    Published::Replaced => "replaced",
                    Published::Built => "built and published",
                    Published::Rebuilt => "rebuilt and replaced",
                };
                write!(f, "{verb} ({size} bytes, {})", checksum.short())
            }
            Done::Restored { size, checksum } => write!(
                f,
                "restored from history ({size} bytes, {}, verified; nothing downloaded)",
                checksum.short()
            ),
            Done::Promoted { size, checksum } => write!(
                f,
                "promoted from its staged blob ({size} bytes, {}; copied in the store)",
                checksum.short()
            ),
            Done::Adopted { size, checksum } => write!(
                f,
                "adopted ({size} bytes, {}, verified by reading it back; nothing downloaded)",
                checksum.short()
            ),
            Done::Updated => f.write_str("updated"),
            Done::Deleted { key, kept } => {
                write!(f, "deleted {key}")?;
                match kept {
                    0 => Ok(()),
                    1 => f.write_str(" and its kept version"),
                    n => write!(f, " and its {n} kept versions"),
                }
            }
            Done::Staged {
                key,
                size,
                checksum,
                uploaded,
            } => write!(
                f,
                "{} {key} ({size} bytes, {})",
                if *uploaded {
                    "staged at"
                } else {
                    "already staged at"
                },
                checksum.short()
            ),
            Done::Said(words) => f.write_str(words),
        }
    }
}

/// Why an image's work did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// This dependency (in the plan) failed or was skipped itself.
    DependencyFailed(String),
    /// A signal stopped the run before it started.
    Interrupted,
    /// Its dependencies can never finish (a cycle; a checked plan has none).
    DependenciesNeverFinish,
    /// The run ended without reaching it.
    NotRun,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::DependencyFailed(name) => write!(f, "dependency {name} failed"),
            Skip::Interrupted => f.write_str("interrupted"),
            Skip::DependenciesNeverFinish => f.write_str("its dependencies never finish"),
            Skip::NotRun => f.write_str("not run"),
        }
    }
}

impl Outcome {
    /// The short status a progress view shows: a failure's text is the summary's to print.
    pub fn status(&self) -> String {
        match self {
            Outcome::Unchanged => "unchanged".into(),
            Outcome::Done(what) => what.to_string(),
            Outcome::Failed(_) => "failed".into(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        }
    }
}

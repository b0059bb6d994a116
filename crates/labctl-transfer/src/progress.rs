//! How transfers and builds report progress. The views (bars, CI log lines, GitHub groups) are
//! the CLI's; this crate only calls them.

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
    Done(String),
    /// The error, with its causes.
    Failed(String),
    Skipped(Skip),
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
            Outcome::Done(what) => what.clone(),
            Outcome::Failed(_) => "failed".into(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        }
    }
}

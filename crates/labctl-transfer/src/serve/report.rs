//! What `labctl verify --into` is asked (`Options`) and what it answers: the report (each
//! file's `Status`, the synced generation) and its errors, each with its hint.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use labctl_core::consumer_index;
use labctl_core::hint::Hint;
use serde::{Deserialize, Serialize};

use super::lock::LockError;
use super::place::{self, Method};
use super::state::{Generation, StateError};
use crate::verify::{SignatureStatus, VerifyError};

/// Version of the `labctl verify --into --json` report. Additive changes bump the minor version.
pub const FORMAT_VERSION: &str = "1.0";
/// labctl's own folder inside the served folder: state, lock, temporary and quarantined files.
pub const STATE_DIR: &str = consumer_index::SERVED_STATE_DIR;

pub struct Options {
    pub synced: PathBuf,
    pub served: PathBuf,
    /// With a key, `SYNCED/SHA256SUMS.minisig` must verify or nothing is placed.
    pub public_key: Option<String>,
    /// Rehash every served file, whatever the identity cache says.
    pub deep: bool,
    /// Served files checked at once.
    pub jobs: usize,
    /// How long to wait for another run that holds the served folder's lock.
    pub wait: Duration,
}

/// What happened to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Served with the listed bytes already.
    Current,
    /// Newly served.
    Placed,
    /// Served in place of an earlier generation's file.
    Replaced,
    /// The served copy had been altered; verified bytes were put back.
    Repaired,
    /// The synced copy does not verify yet; the previous verified version (if any) stays served.
    Pending,
    /// A file labctl did not place holds other bytes at the path: left alone.
    Conflict,
    /// Not listed any more; kept until the new generation is whole.
    Retained,
    /// Not listed any more, and removed once the new generation was whole.
    Removed,
    /// The served copy was altered and no verified bytes could replace it: moved out of the
    /// served folder rather than served wrong.
    Quarantined,
    /// Could not be placed (an I/O error other than a full disk).
    Failed,
    /// `--deep`: served with the listed bytes, but the synced copy no longer hashes to its
    /// list (bit rot or an edit in the synced folder): the copy a repair would come from is
    /// gone. The served folder is left as it is.
    SyncedDiffers,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Current => "current",
            Status::Placed => "placed",
            Status::Replaced => "replaced",
            Status::Repaired => "repaired",
            Status::Pending => "pending",
            Status::Conflict => "conflict",
            Status::Retained => "retained",
            Status::Removed => "removed",
            Status::Quarantined => "quarantined",
            Status::Failed => "failed",
            Status::SyncedDiffers => "synced-differs",
        }
    }

    /// Serving the listed bytes.
    pub(super) fn serves_listed(self) -> bool {
        matches!(
            self,
            Status::Current
                | Status::Placed
                | Status::Replaced
                | Status::Repaired
                | Status::SyncedDiffers
        )
    }

    /// Needs attention (exit 2), or could not be done (exit 1).
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            Status::Pending
                | Status::Conflict
                | Status::Quarantined
                | Status::Failed
                | Status::SyncedDiffers
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// Relative to both folders, `/`-separated.
    pub path: String,
    pub status: Status,
    /// The listed sha256 (absent for paths no longer listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// What the served folder holds at the path after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    pub detail: String,
}

/// The generation the synced folder announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedGeneration {
    pub sums_sha256: String,
    pub files: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_run: Option<labctl_core::state::record::CiRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format_version: String,
    pub labctl_version: String,
    pub synced: String,
    pub served: String,
    pub signature: SignatureStatus,
    /// The served folder holds exactly the synced generation.
    pub complete: bool,
    /// The last generation the served folder held whole (this run's, when `complete`).
    pub served_generation: Option<Generation>,
    pub synced_generation: SyncedGeneration,
    pub bytes_hashed: u64,
    pub bytes_copied: u64,
    pub temporary_files_removed: usize,
    pub summary: BTreeMap<String, usize>,
    /// Listed paths in `SHA256SUMS` order, then paths no longer listed.
    pub files: Vec<FileReport>,
}

impl Report {
    pub fn problems(&self) -> usize {
        self.files.iter().filter(|f| f.status.is_problem()).count()
    }

    pub fn failed(&self) -> bool {
        self.files.iter().any(|f| f.status == Status::Failed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Synced(#[from] VerifyError),
    #[error("`{synced}` and `{served}` overlap: the served folder must be a folder of its own, outside the synced one")]
    Overlap { synced: String, served: String },
    #[error("cannot prepare the served folder `{path}`")]
    Prepare {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the served folder's filesystem has {available} bytes free; placing the new files needs {needed}: nothing was placed")]
    DiskFull { needed: u64, available: u64 },
    #[error("the served folder's filesystem filled up while placing `{path}`; it still serves what it served before that file")]
    NoSpace {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the served index file `{path}`")]
    Index {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Hint for ServeError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        let hint = match self {
            ServeError::Synced(e) => return e.hint(),
            ServeError::Lock(LockError::Busy { .. }) => Some(
                "a run that is still hashing or copying holds it; pass --wait 30m to queue behind it, or schedule runs further apart",
            ),
            ServeError::State(StateError::Corrupt { .. }) => Some(
                "delete .labctl/state.json and .labctl/journal in the served folder: the next run hashes the served files again and keeps those that hold listed bytes",
            ),
            ServeError::State(StateError::Newer { .. }) => Some("upgrade labctl on the NAS"),
            ServeError::State(StateError::Write { source, .. }) if place::is_no_space(source) => {
                Some("free space on the served folder's volume and run again")
            }
            ServeError::DiskFull { .. } | ServeError::NoSpace { .. } => Some(
                "free space on the served folder's volume (or put it on a larger one) and run again",
            ),
            _ => None,
        };
        hint.map(Cow::Borrowed)
    }
}

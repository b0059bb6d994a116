//! Stopping a run at one of its commit points on request, so that a test can kill it exactly
//! there and check that the next run recovers what an uninterrupted one would have left. The
//! command line turns `LABCTL_TEST_HALT_AT` into [`halt_at`]; nothing else calls it, and a run
//! that was not asked to halt pays one atomic load per commit point.

use std::sync::OnceLock;

/// Where a run has made something durable that the next run must find consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPoint {
    /// The bytes about to be replaced were copied under `history/`.
    HistoryKept,
    /// An image's object (or its metadata) is visible; its record is not written yet.
    ObjectVisible,
    /// An image's record is written.
    RecordWritten,
    /// The consumer index is written; the lock is still held (and, in a promotion, the
    /// promoted blobs are still staged).
    IndexWritten,
}

impl CommitPoint {
    pub const ALL: [CommitPoint; 4] = [
        CommitPoint::HistoryKept,
        CommitPoint::ObjectVisible,
        CommitPoint::RecordWritten,
        CommitPoint::IndexWritten,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CommitPoint::HistoryKept => "history-kept",
            CommitPoint::ObjectVisible => "object-visible",
            CommitPoint::RecordWritten => "record-written",
            CommitPoint::IndexWritten => "index-written",
        }
    }
}

impl std::str::FromStr for CommitPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        CommitPoint::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = CommitPoint::ALL.iter().map(|p| p.name()).collect();
                format!("`{s}` is not a commit point ({})", names.join(", "))
            })
    }
}

impl std::fmt::Display for CommitPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

type Announce = Box<dyn Fn(CommitPoint) + Send + Sync>;

static HALT: OnceLock<(CommitPoint, Announce)> = OnceLock::new();

/// Makes every task of this run that reaches `point` call `announce` and then wait forever
/// (holding whatever it holds, the lock included) for the kill. Set once per process.
pub fn halt_at(point: CommitPoint, announce: impl Fn(CommitPoint) + Send + Sync + 'static) {
    let _ = HALT.set((point, Box::new(announce)));
}

/// A commit point: returns at once unless the run was asked to halt here.
pub async fn reached(point: CommitPoint) {
    if let Some((at, announce)) = HALT.get() {
        if *at == point {
            announce(point);
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_from_their_names() {
        for p in CommitPoint::ALL {
            assert_eq!(p.name().parse::<CommitPoint>(), Ok(p));
        }
        let err = "somewhere".parse::<CommitPoint>().unwrap_err();
        assert!(err.contains("history-kept, object-visible"), "{err}");
    }
}

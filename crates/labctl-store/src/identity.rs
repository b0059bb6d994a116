//! Who runs labctl, as the lock and the consumer index name it. The command line resolves it
//! from the environment once ([`set_run_identity`]); nothing below it reads the environment.

use std::sync::OnceLock;

/// Who runs labctl.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunIdentity {
    /// `GITHUB_ACTOR`, else `USER`.
    pub user: Option<String>,
    /// `HOSTNAME`, when `/etc/hostname` says nothing.
    pub hostname: Option<String>,
    /// The CI run (`GITHUB_RUN_ID`, with its URL when known).
    pub ci_run: Option<labctl_core::state::record::CiRun>,
}

static RUN_IDENTITY: OnceLock<RunIdentity> = OnceLock::new();

/// Says who runs labctl; the first call wins (the command line makes it at startup).
pub fn set_run_identity(identity: RunIdentity) {
    let _ = RUN_IDENTITY.set(identity);
}

/// Who runs labctl: unknown until [`set_run_identity`] is called.
pub fn run_identity() -> &'static RunIdentity {
    RUN_IDENTITY.get_or_init(RunIdentity::default)
}

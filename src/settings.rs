//! Everything labctl takes from its environment, read once, when the process starts. Commands,
//! views and the store connection ask here; no other module reads the environment (the core
//! crate cannot, by its clippy configuration). Flags are clap's; where a flag and a variable
//! mean the same thing, clap resolves it (`LABCTL_STORE` is `--store`).

use std::path::PathBuf;
use std::sync::OnceLock;

use labctl_core::state::record::CiRun;

#[derive(Debug, Clone)]
pub struct Environment {
    /// `CI` is set: no progress bars even on a terminal.
    pub ci: bool,
    /// `NO_COLOR` is set and not empty (https://no-color.org).
    pub no_color: bool,
    /// GitHub Actions (`GITHUB_ACTIONS=true`): annotations, groups, summaries, outputs.
    pub github: Option<GitHub>,
    /// The CI run records and locks name (`GITHUB_RUN_ID`, with its URL when known).
    pub ci_run: Option<CiRun>,
    /// Who holds a lock: `GITHUB_ACTOR`, else `USER`.
    pub user: Option<String>,
    /// `HOSTNAME`, when `/etc/hostname` does not say.
    pub hostname: Option<String>,
    /// `LABCTL_ALLOW_INSECURE_LOOPBACK=1`: `http://` sources on loopback (test servers).
    pub allow_insecure_loopback: bool,
    pub store: StoreEnv,
    /// `LABCTL_MINISIGN_SECRET_KEY` / `LABCTL_MINISIGN_PASSWORD`: the index signing key.
    pub signing_key: Option<String>,
    pub signing_password: Option<String>,
    /// Values of `PKR_VAR_*` (secrets for builds): never printed.
    pub packer_secrets: Vec<String>,
    /// `GITHUB_API_URL` (GitHub Enterprise Server sets it), for release lookups.
    pub github_api_url: Option<String>,
    /// `GITHUB_TOKEN`: release lookups send it to that API only.
    pub github_token: Option<String>,
    /// `LABCTL_TEST_HALT_AT`: stop at this commit point and wait to be killed (the test
    /// suite's crash-recovery tests; see `labctl_engine::halt`).
    pub halt_at: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GitHub {
    pub output: Option<PathBuf>,
    pub step_summary: Option<PathBuf>,
}

pub use labctl_engine::open::{HalfKeys, StoreEnv};

impl Environment {
    /// Reads the process environment: the one place that does.
    #[allow(clippy::disallowed_methods)]
    pub fn from_process() -> Environment {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let github = (var("GITHUB_ACTIONS").as_deref() == Some("true")).then(|| GitHub {
            output: var("GITHUB_OUTPUT").map(PathBuf::from),
            step_summary: var("GITHUB_STEP_SUMMARY").map(PathBuf::from),
        });
        let ci_run = var("GITHUB_RUN_ID").map(|id| {
            CiRun::github(
                id,
                var("GITHUB_SERVER_URL").as_deref(),
                var("GITHUB_REPOSITORY").as_deref(),
            )
        });
        let keys = match (var("E2_ACCESS_KEY"), var("E2_SECRET_KEY")) {
            (Some(k), Some(s)) => Ok(Some((k, s))),
            (None, None) => Ok(None),
            _ => Err(HalfKeys),
        };
        let signing_key = std::env::var(labctl_core::signing::SECRET_KEY_VAR)
            .ok()
            .filter(|v| !v.trim().is_empty());
        Environment {
            ci: std::env::var_os("CI").is_some(),
            no_color: var("NO_COLOR").is_some(),
            github,
            ci_run,
            user: var("GITHUB_ACTOR").or_else(|| var("USER")),
            hostname: var("HOSTNAME"),
            allow_insecure_loopback: var("LABCTL_ALLOW_INSECURE_LOOPBACK").as_deref() == Some("1"),
            store: StoreEnv {
                bucket: var("E2_BUCKET"),
                endpoint: var("E2_ENDPOINT"),
                region: var("E2_REGION").or_else(|| var("AWS_REGION")),
                keys,
                single_copy_limit: var("LABCTL_SINGLE_COPY_LIMIT"),
            },
            signing_key,
            signing_password: var(labctl_core::signing::PASSWORD_VAR),
            packer_secrets: std::env::vars()
                .filter(|(k, v)| k.starts_with("PKR_VAR_") && v.len() >= 4)
                .map(|(_, v)| v)
                .collect(),
            github_api_url: var("GITHUB_API_URL"),
            github_token: var("GITHUB_TOKEN"),
            halt_at: var("LABCTL_TEST_HALT_AT"),
        }
    }
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// The environment as it was when first asked (at the start of `main`).
pub fn env() -> &'static Environment {
    ENVIRONMENT.get_or_init(Environment::from_process)
}

/// Tells the engine who runs it, as the lock and the consumer index name it: resolved here,
/// from the environment, once at the start of `main`.
pub fn identify_run() {
    // What the library crates report rather than print, rendered here like every other line.
    labctl_store::events::set_sink(|event| {
        if event.is_warning() {
            eprintln!("{} {event}", console::style("warning:").yellow());
        } else {
            eprintln!("{event}");
        }
    });
    let e = env();
    labctl_engine::set_run_identity(labctl_engine::RunIdentity {
        user: e.user.clone(),
        hostname: e.hostname.clone(),
        ci_run: e.ci_run.clone(),
    });
    if let Some(point) = &e.halt_at {
        match point.parse::<labctl_engine::halt::CommitPoint>() {
            Ok(point) => labctl_engine::halt::halt_at(point, |p| {
                eprintln!("labctl: halted at {p} (LABCTL_TEST_HALT_AT); waiting to be killed");
            }),
            Err(why) => eprintln!("warning: LABCTL_TEST_HALT_AT ignored: {why}"),
        }
    }
}

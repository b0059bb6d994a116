//! Command-line arguments. Only clap types here; commands turn them into settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const DEFAULT_MANIFEST: &str = "images/images.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "labctl",
    version,
    about = "Keep an S3-compatible bucket of machine images in the state a Git-tracked manifest declares",
    long_about = "Keep an S3-compatible bucket of machine images in the state a Git-tracked manifest declares.\n\n\
`labctl plan` compares the manifest (images/images.yaml) with the state records in the store and \
shows what would change; `labctl validate` checks the manifest alone.",
    after_help = "Exit codes: 0 success, 1 error, 2 changes present (plan --detailed-exitcode)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the manifest and report every problem in it.
    Validate(ManifestArg),
    /// Show what apply would change in the store to match the manifest.
    Plan(PlanArgs),
    /// Print the dependency graph between images as Graphviz DOT.
    Graph(ManifestArg),
    /// List the state records in a store.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ManifestArg {
    /// The manifest file.
    #[arg(long, short = 'm', value_name = "PATH", default_value = DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
}

#[derive(Debug, Args)]
pub struct StoreArg {
    /// The store: s3://BUCKET[/PREFIX], file://DIR or a directory path. Overrides the
    /// manifest's spec.store.
    #[arg(long, value_name = "URL", env = "LABCTL_STORE")]
    pub store: Option<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Plan the deletion of records (and objects) whose image left the manifest. Protected
    /// records are never deleted.
    #[arg(long)]
    pub prune: bool,
    /// HEAD every object to detect drift; `--refresh=false` reads only the records.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub refresh: bool,
    /// Plan to replace this image even if nothing changed (repeatable).
    #[arg(long, value_name = "NAME")]
    pub replace: Vec<String>,
    /// Exit 2 when the plan has changes, 0 when it has none, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Print the plan as JSON (see docs/plan-json.md).
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print the plan as markdown for a pull-request comment.
    #[arg(long)]
    pub markdown: bool,
    /// Also save the plan (JSON) to FILE, for `labctl apply FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The manifest whose spec.store is used when --store is not given.
    #[arg(long, short = 'm', value_name = "PATH", default_value = DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
    /// Print the records as JSON.
    #[arg(long)]
    pub json: bool,
}

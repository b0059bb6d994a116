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
    /// Make the store match the manifest (or execute a saved plan).
    Apply(ApplyArgs),
    /// Stage units of a saved plan for a fan-out (one CI matrix leg): download or build, verify,
    /// and upload to a content-addressed blob, without the lock; `labctl apply PLANFILE
    /// --staged` then promotes them.
    #[command(
        long_about = "Stage units of a saved plan, as one leg of a fan-out over a CI matrix \
(`labctl plan --out plan.json --matrix matrix.json` lists the units and legs).\n\n\
Each unit's bytes are acquired exactly as apply does — downloaded (signature, checksum, \
decompression, checksum) or built with Packer — and uploaded to \
.labctl/blobs/<algorithm>/<hex>, named by the verified checksum, so two legs staging the same \
content write the same key; a blob already there is not uploaded again. No lock is taken, and \
nothing under images/, metadata/ or the index is touched. What was staged (or why it failed) \
is recorded in .labctl/staged/<plan>/<image>.json for `labctl apply PLANFILE --staged` to \
promote, and with --result in a local file for the leg's artifact.\n\n\
A build that takes another unit's checksum, URL or size waits for that unit's wave: stage the \
earlier wave first (the matrix puts it in an earlier job).\n\n\
Exit codes: 0 every unit staged, 1 a unit failed or the plan is stale, 130/143 interrupted \
(the upload in progress is aborted)."
    )]
    Stage(StageArgs),
    /// Report drift between the manifest, the records, the objects and the sources
    /// (exit 0 clean, 1 error, 2 drift).
    Drift(DriftArgs),
    /// Download sources whose checksum is `pin` (or missing) once and write their checksums
    /// into the manifest (trust on first use, reviewable in the pull request).
    Pin(PinArgs),
    /// For every tracked image, the newest version its policy allows and why newer ones are
    /// held back (exit 0 up to date, 2 updates available, 1 a lookup failed).
    #[command(
        long_about = "For every image with a `track:` block, ask its channel (the Talos Image \
Factory, a repository's GitHub releases, Harvester's releases) what has been released, and show \
the current version, the newest the image's policy allows, the newest overall and its age, and \
why each newer release is held back (another minor, a pre-release, too young, marked broken, \
an asset missing). Warns about pins that cannot last: the current version no longer listed \
upstream (and whether the bucket still holds its bytes), marked broken, or from a URL that is \
rebuilt in place.\n\n\
Each channel and repository is asked once, however many images share it, all at once. \
GitHub is asked at GITHUB_API_URL (else api.github.com) with GITHUB_TOKEN when set, unless the \
manifest names another API.\n\n\
Exit codes: 0 every image up to date, 2 updates available, 1 a lookup failed."
    )]
    Outdated(OutdatedArgs),
    /// Download and verify the newest allowed version of tracked images, and write it into the
    /// manifest (or show the diff).
    Bump(BumpArgs),
    /// Remove the apply lock left by a run that is gone.
    ForceUnlock(ForceUnlockArgs),
    /// Remove staged blobs and stage results that no promotion came for (under the lock).
    #[command(
        long_about = "Remove what fan-outs left behind: blobs under .labctl/blobs/ and stage \
results under .labctl/staged/ older than --older-than, unless a more recent stage result still \
names the blob (a promotion may still want it). Runs under the store lock, like apply. \
`labctl drift` reports the same leftovers, probe objects aside.\n\n\
Unfinished uploads of blobs started before the cut-off (a leg that was killed: kill -9, a \
vanished runner) are aborted too, and probe objects under .labctl/doctor/ that a killed doctor \
or promotion left; `--older-than 0s` takes every one, so use it only when no leg or doctor is \
running."
    )]
    Cleanup(CleanupArgs),
    /// Check that a store does what labctl needs: credentials, reads, writes, multipart uploads
    /// and conditional writes.
    Doctor(DoctorArgs),
    /// Check a synced copy of the bucket's images/ (e.g. on the NAS) against its SHA256SUMS,
    /// offline, and with --into fill the folder machines boot from with verified files only
    /// (exit 0 all ok, 2 problems found or files pending, 1 error).
    #[command(
        long_about = "Check a synced copy of the bucket's images/ (e.g. on the NAS) against \
the consumer index labctl apply writes there, with no network and no credentials.\n\n\
With --public-key, SHA256SUMS.minisig must verify first (a missing or bad signature is an error). \
Then every file SHA256SUMS lists is streamed and hashed, in parallel: each is ok, missing, \
size-differs (e.g. a sync in progress; sizes come from index.json), content-differs or \
unreadable; files present but not listed are reported as unlisted. Synology's @eaDir, #recycle, \
#snapshot and .SynologyWorkingDirectory folders are ignored.\n\n\
With --into SERVED, verify also fills the folder the machines boot from: a file is copied there \
(a reflink where the filesystem has one; never a hard link) to a temporary name, verified, fsynced \
and renamed into place only once its sha256 is the listed one, so a reader sees the previous \
verified file or the new one, never a partial one. SERVED's SHA256SUMS and index.json always \
describe what it holds; once every listed file is in place they are the synced ones byte for byte \
(with the signature, when --public-key verified it), and only then do files no longer listed leave \
— only files labctl placed (SERVED/.labctl/state.json names them). Files whose identity (device, \
inode, size, times) is unchanged are not hashed again; --deep rehashes every served file. One run \
at a time (a lock in SERVED/.labctl); a killed run leaves only temporary files, which the next run \
removes.\n\n\
Exit codes: 0 every file ok (with --into: SERVED holds the whole synced generation), 2 problems \
found (with --into: files pending, e.g. a sync in progress; the previous verified versions stay \
served), 1 error (no SHA256SUMS, bad signature — nothing placed —, unreadable directory, another \
run holds SERVED, a full disk)."
    )]
    Verify(VerifyArgs),
    /// List the earlier versions kept for each image (`history: N` in the manifest).
    History(HistoryArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        long_about = "Print a shell completion script for labctl's commands and flags.\n\nbash: `labctl completions bash > /etc/bash_completion.d/labctl` (or `source <(labctl completions bash)` in ~/.bashrc)\nzsh: `labctl completions zsh > \"${fpath[1]}/_labctl\"`\nfish: `labctl completions fish > ~/.config/fish/completions/labctl.fish`"
    )]
    Completions(CompletionsArgs),
    /// Print the manual page (roff), e.g. `labctl man > /usr/local/share/man/man1/labctl.1`;
    /// with --dir, write it and one page per command (labctl-plan.1, …) there.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write labctl.1 and a page for every command into this directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
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
    /// With --prune, allow a manifest that declares no images to delete every image in the
    /// store (refused without it: an emptied manifest is more often a mistake).
    #[arg(long, requires = "prune")]
    pub allow_empty: bool,
    /// HEAD every object to detect drift; `--refresh=false` reads only the records.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub refresh: bool,
    /// Plan to replace this image even if nothing changed (repeatable).
    #[arg(long, value_name = "NAME")]
    pub replace: Vec<String>,
    /// Do not fetch the checksum lists the manifest names: their checksums are shown as known
    /// after apply.
    #[arg(long)]
    pub offline: bool,
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
    /// With --out, also write the fan-out's units as GitHub Actions matrices (JSON, one per
    /// wave, each for `strategy.matrix: ${{ fromJSON(...) }}`; see docs/fanout.md).
    #[arg(long, value_name = "FILE", requires = "out")]
    pub matrix: Option<PathBuf>,
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

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// A plan saved with `labctl plan --out FILE`; refused if the manifest or any record changed
    /// since.
    #[arg(value_name = "PLANFILE")]
    pub plan_file: Option<PathBuf>,
    /// Apply without asking for confirmation (required without a terminal).
    #[arg(long)]
    pub auto_approve: bool,
    /// How many images are processed at once. Of these, at most 4 large ones (over 1 MiB, or
    /// decompressed) stream at once and at most 16 Packer builds run at once; small images and
    /// copies inside the store go beside them.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallelism: u16,
    /// Delete records (and objects) whose image left the manifest. Protected records stay.
    #[arg(long)]
    pub prune: bool,
    /// With --prune, allow a manifest that declares no images to delete every image in the
    /// store (refused without it: an emptied manifest is more often a mistake).
    #[arg(long, requires = "prune")]
    pub allow_empty: bool,
    /// Replace this image even if nothing changed (repeatable).
    #[arg(long, value_name = "NAME")]
    pub replace: Vec<String>,
    /// How long to wait for another apply's lock, e.g. `30s`, `5m` (default: do not wait).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub lock_timeout: std::time::Duration,
    /// How long the store lock lasts unless this run renews it, e.g. `5m` (at least 3s). It is
    /// renewed every third of that while the run lives; a runner that dies stops renewing, and
    /// another run takes the lock over once the lease has run out.
    #[arg(long, value_name = "DURATION", env = "LABCTL_LOCK_LEASE", default_value = "5m",
          value_parser = parse_lease)]
    pub lock_lease: std::time::Duration,
    /// Take the store lock (`--lock=false` only when one apply at a time is guaranteed
    /// elsewhere, e.g. by a CI concurrency group).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub lock: bool,
    /// Multipart upload part size in MiB (at least 5); parts double every 2,000, so any image fits
    /// S3's 10,000 parts.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u16).range(5..=1024))]
    pub part_size: u16,
    /// Parts of one image uploaded at once. The parts of all images together hold at most part
    /// size × (this + 1) or 40 MiB, whichever is more.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub parts_in_flight: u16,
    /// Promote what `labctl stage` legs staged for PLANFILE instead of downloading or building:
    /// each blob is checked by HEAD and copied server-side into images/; an image with no
    /// staged blob fails alone (its dependents are skipped).
    #[arg(long, requires = "plan_file")]
    pub staged: bool,
}

#[derive(Debug, Args)]
pub struct StageArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// The plan saved with `labctl plan --out FILE` that the promotion will apply.
    #[arg(value_name = "PLANFILE")]
    pub plan_file: PathBuf,
    /// The image to stage (repeatable, or comma-separated as a matrix leg's `units` gives them).
    #[arg(
        long = "unit",
        value_name = "NAME",
        required = true,
        value_delimiter = ','
    )]
    pub units: Vec<String>,
    /// Also write what was staged (JSON) to FILE, e.g. for the leg's result artifact.
    #[arg(long, value_name = "FILE")]
    pub result: Option<PathBuf>,
    /// How many of the units are staged at once. Of these, at most 4 large ones (over 1 MiB, or
    /// decompressed) stream at once and at most 16 Packer builds run at once; small ones go
    /// beside them.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallelism: u16,
    /// Multipart upload part size in MiB (at least 5).
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u16).range(5..=1024))]
    pub part_size: u16,
    /// Parts of one image uploaded at once. The parts of all images together hold at most part
    /// size × (this + 1) or 40 MiB, whichever is more.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub parts_in_flight: u16,
}

#[derive(Debug, Args)]
pub struct DriftArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Also stream every managed object back and re-hash it (reads the whole bucket).
    #[arg(long)]
    pub deep: bool,
    /// Also probe every HTTP source (HEAD or a 1-byte GET): vanished or changed upstream files.
    #[arg(long)]
    pub check_sources: bool,
    /// Print the report as JSON.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print the report as markdown (for an issue).
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Images to pin (default: every image that needs it).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Write the checksums into the manifest (changing only those values).
    #[arg(long)]
    pub write: bool,
}

/// What `outdated` and `bump` both take: which images, the manifest, the store, the timeout.
#[derive(Debug, Args)]
pub struct TrackedArgs {
    /// Images (default: every tracked image).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// The store: asked whether it still holds a pin the vendor no longer lists, and (bump
    /// --markdown) what the plan of the result is.
    #[command(flatten)]
    pub store: StoreArg,
    /// How long one request to a vendor API may take (it is retried as downloads are).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct OutdatedArgs {
    #[command(flatten)]
    pub tracked: TrackedArgs,
    /// Print the report as JSON (docs/outdated-json.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BumpArgs {
    #[command(flatten)]
    pub tracked: TrackedArgs,
    /// Write the new versions and digests into the manifest (changing only those values);
    /// without it, print the diff.
    #[arg(long)]
    pub write: bool,
    /// Print a pull-request body: per image the versions, where each digest came from, sizes,
    /// the vendor's release notes and the plan of the result.
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Debug, Args)]
pub struct ForceUnlockArgs {
    /// The lock ID, as printed by the apply that holds it or by the error of one that waited.
    pub id: String,
    #[command(flatten)]
    pub store: StoreArg,
    #[arg(long, short = 'm', value_name = "PATH", default_value = DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The manifest whose spec.store is used when --store is not given.
    #[arg(long, short = 'm', value_name = "PATH", default_value = DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
    /// Only what was staged at least this long ago, e.g. `24h`, `168h` (a week), `0s`
    /// (everything no recent stage result names).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub older_than: std::time::Duration,
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for another run's lock (default: do not wait).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub lock_timeout: std::time::Duration,
    /// How long the store lock lasts unless this run renews it, e.g. `5m` (at least 3s). It is
    /// renewed every third of that while the run lives; a runner that dies stops renewing, and
    /// another run takes the lock over once the lease has run out.
    #[arg(long, value_name = "DURATION", env = "LABCTL_LOCK_LEASE", default_value = "5m",
          value_parser = parse_lease)]
    pub lock_lease: std::time::Duration,
    /// Take the store lock (`--lock=false` only when one run at a time is guaranteed
    /// elsewhere).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub lock: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The manifest whose spec.store is used when --store is not given.
    #[arg(long, short = 'm', value_name = "PATH", default_value = DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The directory the bucket's images/ is synced into (SHA256SUMS at its top).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The lab's minisign public key (RW…, as in spec.index.signing.minisign.publicKey):
    /// SHA256SUMS.minisig must verify with it.
    #[arg(long, value_name = "KEY", conflicts_with = "public_key_file")]
    pub public_key: Option<String>,
    /// Read the public key from a minisign `.pub` file.
    #[arg(long, value_name = "FILE")]
    pub public_key_file: Option<PathBuf>,
    /// Print the report as JSON (see docs/index-json.md).
    #[arg(long)]
    pub json: bool,
    /// Files hashed at once (default: the number of CPUs, at most 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,
    /// Fill SERVED, the folder the machines boot from, with the verified files (see above).
    #[arg(long, value_name = "SERVED")]
    pub into: Option<PathBuf>,
    /// With --into: rehash every served file, even those whose identity is unchanged.
    #[arg(long, requires = "into")]
    pub deep: bool,
    /// With --into: wait this long for a run that holds SERVED's lock (`90s`, `30m`; default:
    /// refuse at once).
    #[arg(long, value_name = "DURATION", requires = "into", value_parser = parse_duration)]
    pub wait: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this image (by name).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
    /// The manifest whose spec.store is used when --store is not given.
    #[arg(long, short = 'm', value_name = "PATH", default_value = DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub use labctl_core::units::parse_duration;

/// A vendor request's timeout: a duration of at least a second.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("the timeout must be at least 1s".into()),
        d => Ok(d),
    }
}

/// A lease: a duration no shorter than the lock allows, and short enough to add to a clock.
fn parse_lease(s: &str) -> Result<std::time::Duration, String> {
    let lease = parse_duration(s)?;
    let min = labctl_store::lock::MIN_LEASE;
    if lease < min {
        return Err(format!(
            "a lease shorter than {}s cannot be renewed reliably",
            min.as_secs()
        ));
    }
    if lease > std::time::Duration::from_secs(7 * 24 * 3600) {
        return Err(
            "a lease longer than a week (168h) would keep a dead runner's lock for as long".into(),
        );
    }
    Ok(lease)
}

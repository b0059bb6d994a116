use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use console::style;

use crate::apply::lock::{self, LockError};
use crate::apply::{self, ApplyContext, Outcome, Report};
use crate::cli::ApplyArgs;
use crate::failure::{Failure, WithHint};
use crate::pipeline::{self, MIB};
use crate::plan::{Action, Plan};
use crate::render;
use crate::store::Store;
use labctl_transfer::local_file::{self, Symlinks};

pub async fn run(args: &ApplyArgs) -> Result<ExitCode, Failure> {
    // A saved plan is read and checked first: before the lock, before the store is asked.
    let saved = match &args.plan_file {
        Some(path) => Some(read_saved_plan(path, &args.manifest.manifest)?),
        None => None,
    };
    let plan_id = saved.as_ref().map(|s| s.id.clone());
    let saved = saved.map(|s| s.plan);
    let (manifest, graph) = super::load_manifest(&args.manifest.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), Some(&manifest)).await?;
    if let (Some(plan), Some(path)) = (&saved, &args.plan_file) {
        refuse_other_store(plan, store.as_ref(), "apply", path)?;
    }

    // A signed index needs its key: find out before anything is uploaded.
    let signer = match &manifest.index.minisign_public_key {
        // Its hint comes with it (`Failure::with_default_hint`).
        Some(public) => Some(crate::signing::from_env(public)?),
        None => None,
    };

    // Decide how the plan will be approved before touching anything.
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if args.plan_file.is_none() && !args.auto_approve && !interactive {
        return Err(anyhow::anyhow!("refusing to apply without confirmation: no terminal to ask on"))
            .hint("pass --auto-approve, or save a reviewed plan with `labctl plan --out plan.json` and run `labctl apply plan.json`");
    }

    // From here on a signal stops the run cleanly instead of killing it with the lock held.
    let signals =
        crate::interrupt::install("aborting the uploads in progress and releasing the lock")
            .context("cannot listen for SIGINT and SIGTERM")?;
    let cancel = crate::interrupt::as_cancel(signals.clone());

    let held = match take_lock(args, &store, cancel.clone()).await {
        Ok(held) => held,
        Err(LockError::Interrupted) => return Ok(super::exit(interrupted_code(&signals))),
        Err(e) => return Err(lock_failure(e)),
    };
    // Every write from here goes through the lease: a run that lost the lock writes nothing,
    // and stops its transfers and builds as if signalled.
    let (writes, cancel) = match &held {
        Some(l) => (l.fence(store.clone()), l.lease().stop_when_lost(cancel)),
        None => (store.clone(), cancel),
    };

    let result = locked(
        args,
        saved,
        plan_id.as_deref(),
        &manifest,
        &graph,
        writes,
        interactive,
        signer.as_ref(),
        cancel,
    )
    .await;
    settle_dropped_uploads().await;

    let lost = held.as_ref().and_then(lock::Lock::lost);
    if let Some(l) = held {
        if crate::store::pending::abandoned_requests() > 0 {
            let lease = l.abandon();
            eprintln!(
                "{} a server-side copy was still running at the store when this run stopped: the lock is left to expire ({}s lease) rather than released, so no other run writes until it has landed; the next apply takes it over then (or `labctl force-unlock` once you know the copy is done).",
                style("Warning:").yellow(),
                lease.as_secs()
            );
        } else {
            release(l, signals.borrow().is_some()).await;
        }
    }
    if let Some(lost) = lost {
        return Err(lost_lock(lost));
    }
    if signals.borrow().is_some() {
        return Ok(super::exit(interrupted_code(&signals)));
    }
    result
}

/// Waits for the aborts of uploads a signal dropped mid-transfer (a part-by-part copy): leaving
/// `main` would drop them unfinished. Bounded, so a run cancelled by CI still exits within its
/// grace period (GitHub sends SIGKILL 10 s after the first signal).
pub(super) async fn settle_dropped_uploads() {
    let left = crate::store::pending::settle_dropped(std::time::Duration::from_secs(4)).await;
    if left > 0 {
        eprintln!(
            "{} {left} unfinished upload(s) could not be aborted in time; they stay invisible and the next apply aborts them",
            style("Warning:").yellow()
        );
    }
}

/// The run's end when its lease was lost: whatever it did not finish stays for the next run.
pub(super) fn lost_lock(lost: lock::LeaseLost) -> Failure {
    Failure::from(anyhow::Error::from(lost)).with_hint(
        "nothing more was made visible, recorded or indexed once the lease was lost; the run that holds the lock now finishes the work, and if none does, run apply again",
    )
}

/// The store lock, unless `--lock=false`; once held, uploads a killed run left are aborted.
async fn take_lock(
    args: &ApplyArgs,
    store: &Arc<dyn Store>,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<lock::Lock>, LockError> {
    if !args.lock {
        eprintln!(
            "{} running without the store lock (--lock=false).",
            style("Warning:").yellow()
        );
        return Ok(None);
    }
    let options = lock::LockOptions::new("apply", args.lock_timeout, args.lock_lease);
    let held = lock::acquire_unless(store.clone(), &options, cancel).await?;
    announce(&held);
    clean_up_stranded_uploads(store.as_ref()).await;
    Ok(Some(held))
}

/// Says how the lock was taken: the takeover of a dead run's lock names that run.
pub(super) fn announce(held: &lock::Lock) {
    match &held.took_over {
        Some(over) => {
            let mut said = over.to_string();
            if let Some(first) = said.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            eprintln!("{} {said}.", style("Warning:").yellow());
        }
        None => eprintln!(
            "Acquired the store lock (ID {}, lease {}s).",
            held.info.id,
            held.lease().duration.as_secs()
        ),
    }
}

/// Releases the lock, saying so after a signal (the user waits for that line).
pub(super) async fn release(held: lock::Lock, signalled: bool) {
    match held.release().await {
        Ok(()) if signalled => eprintln!("Released the store lock."),
        Ok(()) => {}
        Err(e) => eprintln!(
            "{} could not release the store lock: {e}",
            style("Warning:").yellow()
        ),
    }
}

/// The exit status of a run stopped by a signal: 130 for SIGINT, 143 for SIGTERM.
fn interrupted_code(
    signals: &tokio::sync::watch::Receiver<Option<crate::interrupt::Signal>>,
) -> u8 {
    signals.borrow().map_or(1, |s| s.exit_code())
}

/// Runs `work` unless `cancel` turns true first; `None` when it did (the work is dropped: only
/// for work that leaves nothing behind, such as reading state or waiting for an answer).
async fn unless_cancelled<T>(
    cancel: &mut tokio::sync::watch::Receiver<bool>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        out = work => Some(out),
        _ = cancel.wait_for(|c| *c) => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn locked(
    args: &ApplyArgs,
    saved: Option<Plan>,
    plan_id: Option<&str>,
    manifest: &crate::manifest::Manifest,
    graph: &crate::graph::DependencyGraph,
    store: Arc<dyn Store>,
    interactive: bool,
    signer: Option<&crate::signing::IndexSigner>,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<ExitCode, Failure> {
    let prepared = unless_cancelled(
        &mut cancel,
        prepare(args, saved, manifest, graph, &store, interactive),
    )
    .await;
    let Some(prepared) = prepared else {
        // Interrupted before anything was written: the caller releases the lock.
        return Ok(super::exit(1));
    };
    let plan = match prepared? {
        Ok(ready) => ready,
        Err(code) => return Ok(code),
    };
    if !plan.has_changes() {
        eprintln!("No changes to apply.");
        return Ok(ExitCode::SUCCESS);
    }
    let staged = match (args.staged, plan_id) {
        (true, Some(id)) => Some(Arc::new(staged_for(&plan, id, store.as_ref()).await?)),
        _ => None,
    };

    let transfer = Transfer {
        part_size_mib: args.part_size,
        parts_in_flight: args.parts_in_flight,
        parallelism: args.parallelism,
    };
    let ctx = Arc::new(context(
        &plan,
        manifest,
        store.clone(),
        &transfer,
        cancel.clone(),
        staged.clone(),
    ));
    // Not raced with the signal: on one, execute stops starting images and every transfer aborts
    // its own multipart upload before this returns.
    let report = apply::execute(&plan, ctx.clone()).await;
    let cancelled = *cancel.borrow();
    let code = finish(&store, &plan, &report, cancelled, signer, &ctx.written).await;
    if let (Some(staged), Some(id)) = (&staged, plan_id) {
        // After the index: a promotion killed before this point leaves the blobs for the next.
        for failed in apply::promote::forget_promoted(store.as_ref(), id, staged, &report).await {
            eprintln!(
                "{} could not remove a promoted blob ({failed}); `labctl cleanup` removes it later",
                style("Warning:").yellow()
            );
        }
    }
    code
}

/// Refuses a saved plan made for another store.
pub fn refuse_other_store(
    plan: &Plan,
    store: &dyn Store,
    command: &str,
    path: &std::path::Path,
) -> Result<(), Failure> {
    if plan.store == store.url() {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "the plan was made for {}, but this {command} would use {}",
        plan.store,
        store.url()
    ))
    .hint(format!(
        "{command} it with the store it was made for: labctl {command} --store {} {}",
        plan.store,
        path.display()
    ))
}

/// Refuses a saved plan when the manifest or a record changed since it was made.
pub async fn refuse_stale(
    plan: &Plan,
    manifest: &crate::manifest::Manifest,
    graph: &crate::graph::DependencyGraph,
    store: &Arc<dyn Store>,
) -> Result<(), Failure> {
    let desired = crate::desired::build(manifest, graph)?;
    let records = crate::state::refresh::record_etags(store.as_ref()).await?;
    let stale = apply::stale::reasons(plan, &manifest.digest, &store.url(), &desired, &records);
    if !stale.is_empty() {
        return Err(anyhow::anyhow!("the plan is stale: {}", stale.join("; ")))
            .hint("make a new plan with `labctl plan --out FILE`, review it, and apply that");
    }
    Ok(())
}

/// How bytes move: the flags apply and stage share.
pub struct Transfer {
    pub part_size_mib: u16,
    pub parts_in_flight: u16,
    pub parallelism: u16,
}

/// What the engine needs to run the plan's changes (or stage its units).
pub fn context(
    plan: &Plan,
    manifest: &crate::manifest::Manifest,
    store: Arc<dyn Store>,
    transfer: &Transfer,
    cancel: tokio::sync::watch::Receiver<bool>,
    staged: Option<Arc<BTreeMap<String, crate::fanout::StageResult>>>,
) -> ApplyContext {
    ApplyContext {
        store,
        client: crate::source::http::client(),
        settings: pipeline::Settings::new(
            transfer.part_size_mib as usize * MIB,
            transfer.parts_in_flight as usize,
        ),
        parallelism: transfer.parallelism as usize,
        progress: Arc::from(crate::progress::for_stderr()),
        cancel,
        // Everything else the executor needs comes from the plan's changes.
        destinations: plan
            .changes
            .iter()
            .filter_map(|c| {
                let after = c.after.as_ref()?;
                Some((c.name.clone(), after.spec.destination.clone()))
            })
            .collect::<HashMap<_, _>>(),
        base_dir: manifest.base_dir.clone(),
        ci_run: crate::github::ci_run(),
        staged,
        written: Default::default(),
        secrets: {
            let env = crate::settings::env();
            crate::source::packer::redactions(
                env.packer_secrets
                    .iter()
                    .chain(&env.signing_key)
                    .chain(&env.signing_password)
                    .map(String::as_str),
            )
        },
    }
}

/// What the plan's legs staged, said up front: which units have a blob, which failed, which
/// are missing.
async fn staged_for(
    plan: &Plan,
    plan_id: &str,
    store: &dyn Store,
) -> Result<BTreeMap<String, crate::fanout::StageResult>, Failure> {
    let warn = |m: &str| eprintln!("{} {m}", style("warning:").yellow());
    let staged = apply::promote::staged_results(store, plan_id, &warn).await?;
    let units = crate::fanout::units(plan);
    let ready = units
        .iter()
        .filter(|u| {
            staged
                .get(&u.name)
                .is_some_and(|r| r.status == crate::fanout::StageStatus::Staged)
        })
        .count();
    eprintln!(
        "Promoting plan {plan_id}: {ready} of {} staged images ready{}.",
        units.len(),
        if ready < units.len() {
            " (the others fail, and their dependents are skipped)"
        } else {
            ""
        }
    );
    Ok(staged)
}

/// Reads the plan (saved or computed now) and asks for approval. `Ok(Err(code))` ends the run
/// without changes (nothing to do, or not approved).
async fn prepare(
    args: &ApplyArgs,
    saved: Option<Plan>,
    manifest: &crate::manifest::Manifest,
    graph: &crate::graph::DependencyGraph,
    store: &Arc<dyn Store>,
    interactive: bool,
) -> Result<Result<Plan, ExitCode>, Failure> {
    Ok(Ok(match saved {
        Some(plan) => {
            refuse_stale(&plan, manifest, graph, store).await?;
            plan
        }
        None => {
            let request = super::plan::PlanRequest {
                prune: args.prune,
                allow_empty: args.allow_empty,
                replace: args.replace.clone(),
                objects: crate::state::refresh::Objects::Listed,
                offline: false,
            };
            let super::plan::Planned { plan, actual, .. } =
                super::plan::compute(manifest, graph, store, &request).await?;
            if !plan.has_changes() && actual.snapshot_misses > 0 {
                // Nothing to change, but the next plan should not have to fetch every record.
                if let Err(e) = crate::state::refresh::write_snapshot(store.as_ref(), &actual).await
                {
                    eprintln!("warning: could not save the record snapshot: {e}");
                }
            }
            print!("{}", render::human::plan(&plan));
            if !plan.has_changes() {
                return Ok(Err(ExitCode::SUCCESS));
            }
            if !args.auto_approve && interactive && !confirm().await? {
                eprintln!("Apply cancelled.");
                return Ok(Err(super::exit(1)));
            }
            plan
        }
    }))
}

/// After the images: the consumer index (unless interrupted), the summary, the exit status.
async fn finish(
    store: &Arc<dyn Store>,
    plan: &Plan,
    report: &Report,
    cancelled: bool,
    signer: Option<&crate::signing::IndexSigner>,
    written: &std::sync::Mutex<crate::state::refresh::Written>,
) -> Result<ExitCode, Failure> {
    let index = if cancelled {
        eprintln!(
            "The consumer index was not rewritten (interrupted); the next apply rewrites it."
        );
        None
    } else {
        let written = std::mem::take(&mut *written.lock().unwrap_or_else(|p| p.into_inner()));
        Some(write_index(store, plan, signer, written).await)
    };
    print_summary(report);
    let index_failed = match &index {
        Some(Ok(lines)) => {
            for line in lines {
                println!("{line}");
            }
            false
        }
        Some(Err(e)) => {
            eprintln!("  {} consumer index: {e:#}", style("✗").red());
            true
        }
        None => false,
    };
    if crate::github::active() {
        crate::github::summary(&summary_markdown(report));
        crate::github::plan_outputs(&plan.summary);
    }
    Ok(if report.failed() || cancelled || index_failed {
        super::exit(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Backfills missing sha256s and rewrites the consumer index; returns the lines to print.
async fn write_index(
    store: &Arc<dyn Store>,
    plan: &Plan,
    signer: Option<&crate::signing::IndexSigner>,
    written: crate::state::refresh::Written,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let backfilled = apply::index::backfill(store, &plan.index.backfill).await?;
    for line in &backfilled.done {
        lines.push(format!("  {} {line}", style("✓").green()));
    }
    let counter = crate::progress::Counter::new("Reading state for the index: records");
    let written = apply::index::write(store, signer, written, &|d, t| counter.update(d, t)).await;
    drop(counter);
    let written = written?;
    labctl_engine::halt::reached(labctl_engine::halt::CommitPoint::IndexWritten).await;
    lines.push(format!(
        "  {} consumer index: {} objects in images/SHA256SUMS and images/index.json{}",
        style("✓").green(),
        written.objects,
        if written.signed {
            ", signed (images/SHA256SUMS.minisig)"
        } else {
            ""
        }
    ));
    if !written.left_out.is_empty() {
        lines.push(format!(
            "  {} left out of the index (sha256 unknown): {}",
            style("!").yellow(),
            written.left_out.join(", ")
        ));
    }
    if !backfilled.problems.is_empty() {
        // The index was written for everything else; the apply still fails so someone looks.
        anyhow::bail!("{}\n{}", lines.join("\n"), backfilled.problems.join("\n"));
    }
    Ok(lines)
}

fn summary_markdown(report: &Report) -> String {
    let mut out = String::from("### labctl apply\n\n| image | action | result |\n|---|---|---|\n");
    for (name, action, outcome) in &report.results {
        let result = match outcome {
            Outcome::Unchanged => continue,
            Outcome::Done(msg) => format!("✓ {msg}"),
            Outcome::Failed(msg) => format!("✗ {msg}"),
            Outcome::Skipped(msg) => format!("skipped: {msg}"),
        };
        out.push_str(&format!(
            "| {name} | {action} | {} |\n",
            result.replace('|', "\\|")
        ));
    }
    out
}

/// Asks for `yes`. The read blocks a thread of its own, so a signal can end the wait.
async fn confirm() -> Result<bool, Failure> {
    print!(
        "\nDo you want to perform these actions? Only `yes` will be accepted.\n  Enter a value: "
    );
    std::io::stdout().flush().ok();
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .context("cannot read the answer")?
    .context("cannot read the answer")?;
    Ok(line.trim() == "yes")
}

fn print_summary(report: &Report) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    println!("\nApply summary:");
    for (name, action, outcome) in &report.results {
        let line = match outcome {
            Outcome::Unchanged => continue,
            Outcome::Done(msg) => {
                *counts
                    .entry(match action {
                        Action::Create => "created",
                        Action::Replace => "replaced",
                        Action::Update => "updated",
                        Action::Delete => "deleted",
                        Action::NoOp => "unchanged",
                    })
                    .or_default() += 1;
                format!("  {} {name}: {msg}", style("✓").green())
            }
            Outcome::Failed(msg) => {
                *counts.entry("failed").or_default() += 1;
                // In GitHub Actions the annotation is the failure's line: shown in the log and on
                // the run's page, once.
                if crate::github::active() {
                    crate::github::error(&format!("labctl apply: {name}"), msg);
                    continue;
                }
                // An error: on stderr, where a run whose report goes to a file still shows it.
                eprintln!("  {} {name}: {msg}", style("✗").red());
                continue;
            }
            Outcome::Skipped(msg) => {
                *counts.entry("skipped").or_default() += 1;
                format!("  {} {name}: skipped ({msg})", style("-").yellow())
            }
        };
        println!("{line}");
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "Apply complete: {}.",
        if parts.is_empty() {
            "nothing to do".into()
        } else {
            parts.join(", ")
        }
    );
}

/// A lock error with its hint (who holds it, how to unlock).
/// Far above any real plan (10,000 images are ~30 MB of JSON); a file beyond it is not read.
const MAX_PLAN_BYTES: u64 = 256 * 1024 * 1024;

/// Reads a saved plan, checks it is one labctl made, and that it was made from the manifest
/// this apply reads (a plan made with `--manifest` is applied with the same `--manifest`).
pub fn read_saved_plan(
    path: &std::path::Path,
    manifest: &std::path::Path,
) -> Result<SavedPlan, Failure> {
    let text = local_file::read(path, MAX_PLAN_BYTES, Symlinks::Follow)
        .with_context(|| format!("cannot read the plan `{}`", path.display()))?;
    let id = crate::fanout::plan_id(&text);
    let plan: Plan = serde_json::from_slice(&text)
        .with_context(|| format!("`{}` is not a labctl plan", path.display()))
        .hint("save a plan with `labctl plan --out FILE`; a plan file is not edited by hand")?;
    crate::plan::check::check(&plan)
        .with_context(|| {
            format!(
                "`{}` is not a plan labctl made (edited or corrupted)",
                path.display()
            )
        })
        .hint("make a new plan with `labctl plan --out FILE`, review it, and apply that")?;
    // Paths as written can differ for the same file (another working directory): compared
    // only when both name a file that exists from here.
    let planned = std::path::Path::new(&plan.manifest);
    if let (Ok(planned_real), Ok(now_real)) = (planned.canonicalize(), manifest.canonicalize()) {
        if planned_real != now_real {
            return Err(anyhow::anyhow!(
                "the plan was made from the manifest `{}`, but this apply reads `{}`",
                plan.manifest,
                manifest.display()
            ))
            .hint(format!(
                "apply it with the manifest it was made from: labctl apply --manifest {} {}",
                plan.manifest,
                path.display()
            ));
        }
    }
    Ok(SavedPlan { plan, id })
}

/// A plan file as read, and the name its stage results go under.
pub struct SavedPlan {
    pub plan: Plan,
    pub id: String,
}

/// Aborts the uploads a killed run left behind. Holding the lock, every one found is stranded.
/// Failures are reported and do not stop the apply: the uploads are invisible either way.
async fn clean_up_stranded_uploads(store: &dyn Store) {
    let warn = style("Warning:").yellow();
    match apply::stranded::abort_all(store).await {
        Ok(cleanup) => {
            if cleanup.found.is_none() {
                eprintln!("Note: this store cannot list unfinished multipart uploads, so uploads left by a killed run cannot be found; a lifecycle rule (AbortIncompleteMultipartUpload) cleans them up.");
            }
            if !cleanup.aborted.is_empty() {
                let keys: Vec<&str> = cleanup.aborted.iter().map(|u| u.key.as_str()).collect();
                eprintln!(
                    "Aborted {} multipart upload{} left by an interrupted run: {}",
                    keys.len(),
                    if keys.len() == 1 { "" } else { "s" },
                    keys.join(", ")
                );
            }
            for (upload, e) in &cleanup.failed {
                eprintln!(
                    "{warn} could not abort the stranded upload of `{}` ({}): {e}",
                    upload.key, upload.upload_id,
                );
            }
        }
        Err(e) => eprintln!(
            "{warn} could not list unfinished uploads: {:#}",
            anyhow::Error::from(e)
        ),
    }
}

pub fn lock_failure(e: LockError) -> Failure {
    Failure::from(e).with_default_hint()
}

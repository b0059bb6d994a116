use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use console::style;

use crate::apply::lock::{self, LockError};
use crate::apply::{self, Outcome, Report};
use crate::cli::ApplyArgs;
use crate::failure::{hint_in, Failure, WithHint};
use crate::plan::{Action, Plan};
use crate::render;
use crate::run_context::{context, Transfer};
use crate::saved_plan::{read_saved_plan, refuse_other_store, refuse_stale};
use crate::store::Store;
use crate::store_lock::{announce, lock_failure, lost_lock, release, settle_dropped_uploads};

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
            let request = crate::planning::PlanRequest {
                prune: args.prune,
                allow_empty: args.allow_empty,
                replace: args.replace.clone(),
                objects: crate::state::refresh::Objects::Listed,
                offline: false,
            };
            let crate::planning::Planned { plan, actual, .. } =
                crate::planning::compute(manifest, graph, store, &request).await?;
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
            Outcome::Failed(failed) => match hint_in(failed.chain()) {
                Some(hint) => format!("✗ {failed} (hint: {hint})"),
                None => format!("✗ {failed}"),
            },
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
            Outcome::Failed(failed) => {
                *counts.entry("failed").or_default() += 1;
                let hint = hint_in(failed.chain());
                // In GitHub Actions the annotation is the failure's line: shown in the log and on
                // the run's page, once.
                if crate::github::active() {
                    let message = match &hint {
                        Some(hint) => format!("{failed}\nhint: {hint}"),
                        None => failed.to_string(),
                    };
                    crate::github::error(&format!("labctl apply: {name}"), &message);
                    continue;
                }
                // An error: on stderr, where a run whose report goes to a file still shows it.
                eprintln!("  {} {name}: {failed}", style("✗").red());
                if let Some(hint) = hint {
                    eprintln!("    {} {hint}", style("hint:").cyan().bold());
                }
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

//! `labctl apply`: the engine's sequence ([`labctl_engine::session`]) with what the user sees
//! of each step, the approval, and the exit code.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use console::style;

use crate::apply::lock::{self, LockError};
use crate::apply::{self, Outcome, Report};
use crate::cli::ApplyArgs;
use crate::failure::{hint_in, Failure, WithHint};
use crate::plan::{Action, Plan};
use crate::planning::StderrEvents;
use crate::render;
use crate::run_context::{context, Transfer};
use crate::saved_plan::{read_saved_plan, refuse_other_store};
use crate::store::{Store, StoreError};
use crate::store_lock::{announce, lock_failure, lost_lock};
use labctl_engine::index::Published;
use labctl_engine::session::{
    self, ApplyRun, ApplySteps, Approval, Ended, LockEnd, PlanSource, Promoting,
};

pub async fn run(args: &ApplyArgs) -> Result<ExitCode, Failure> {
    // A saved plan is read and checked first: before the lock, before the store is asked.
    let saved = match &args.plan_file {
        Some(path) => Some(read_saved_plan(path, &args.manifest.manifest)?),
        None => None,
    };
    let (manifest, graph) = super::load_manifest(&args.manifest.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), Some(&manifest)).await?;
    if let (Some(saved), Some(path)) = (&saved, &args.plan_file) {
        refuse_other_store(&saved.plan, store.as_ref(), "apply", path)?;
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

    let was_saved = saved.is_some();
    let plan = match saved {
        Some(saved) => PlanSource::Saved {
            plan: Box::new(saved.plan),
            id: saved.id,
            staged: args.staged,
        },
        None => PlanSource::Now(crate::planning::PlanRequest {
            prune: args.prune,
            allow_empty: args.allow_empty,
            replace: args.replace.clone(),
            objects: crate::state::refresh::Objects::Listed,
            offline: false,
        }),
    };
    let lock = args
        .lock
        .then(|| lock::LockOptions::new("apply", args.lock_timeout, args.lock_lease));
    if lock.is_none() {
        eprintln!(
            "{} running without the store lock (--lock=false).",
            style("Warning:").yellow()
        );
    }
    let steps = Steps {
        manifest: &manifest,
        saved: was_saved,
        code: Mutex::new(None),
        auto_approve: args.auto_approve,
        interactive,
        transfer: Transfer {
            part_size_mib: args.part_size,
            parts_in_flight: args.parts_in_flight,
            parallelism: args.parallelism,
        },
        events: StderrEvents::default(),
        counter: Mutex::new(None),
    };
    let run = ApplyRun {
        manifest: &manifest,
        graph: &graph,
        store,
        lock,
        signer: signer.as_ref(),
        cancel,
    };
    let applied = match session::apply(run, plan, &steps).await {
        Ok(applied) => applied,
        Err(LockError::Interrupted) => return Ok(super::exit(interrupted_code(&signals))),
        Err(e) => return Err(lock_failure(e)),
    };
    let signalled = signals.borrow().is_some();
    // Shown through `Steps::ended` while the lock was held; its exit status kept there.
    let shown = steps.code.lock().unwrap_or_else(|p| p.into_inner()).take();
    let code = applied
        .ended
        .map(|_| shown.unwrap_or_else(|| super::exit(1)));
    if applied.uploads_left > 0 {
        eprintln!(
            "{} {} unfinished upload(s) could not be aborted in time; they stay invisible and the next apply aborts them",
            style("Warning:").yellow(),
            applied.uploads_left
        );
    }
    match applied.lock {
        LockEnd::NotTaken => {}
        LockEnd::Released if signalled => eprintln!("Released the store lock."),
        LockEnd::Released => {}
        LockEnd::ReleaseFailed(e) => eprintln!(
            "{} could not release the store lock: {e}",
            style("Warning:").yellow()
        ),
        LockEnd::LeftToExpire(lease) => eprintln!(
            "{} a server-side copy was still running at the store when this run stopped: the lock is left to expire ({}s lease) rather than released, so no other run writes until it has landed; the next apply takes it over then (or `labctl force-unlock` once you know the copy is done).",
            style("Warning:").yellow(),
            lease.as_secs()
        ),
    }
    if let Some(lost) = applied.lost {
        return Err(lost_lock(lost));
    }
    if signalled {
        return Ok(super::exit(interrupted_code(&signals)));
    }
    code
}

/// What the user sees of apply's steps, and how a plan computed now is approved.
struct Steps<'a> {
    manifest: &'a crate::manifest::Manifest,
    /// Whether the plan is a saved one (`labctl apply PLANFILE`).
    saved: bool,
    /// The exit status of the run's end, once shown.
    code: Mutex<Option<ExitCode>>,
    auto_approve: bool,
    interactive: bool,
    transfer: Transfer,
    events: StderrEvents,
    /// Reading the records for the index.
    counter: Mutex<Option<crate::progress::Counter>>,
}

impl ApplySteps for Steps<'_> {
    fn locked(&self, lock: &lock::Lock) {
        announce(lock);
    }

    fn stranded(&self, cleanup: Result<&apply::stranded::Cleanup, &StoreError>) {
        show_stranded(cleanup);
    }

    fn plan_events(&self) -> &dyn labctl_engine::planner::PlanEvents {
        &self.events
    }

    fn approve<'p>(&'p self, plan: &'p Plan) -> Approval<'p> {
        Box::pin(async move {
            print!("{}", render::human::plan(plan));
            if plan.has_changes() && !self.auto_approve && self.interactive && !confirm().await? {
                eprintln!("Apply cancelled.");
                return Ok(false);
            }
            Ok(true)
        })
    }

    fn promoting(&self, p: &Promoting<'_>) {
        eprintln!(
            "Promoting plan {}: {} of {} staged images ready{}.",
            p.plan_id,
            p.ready,
            p.units,
            if p.ready < p.units {
                " (the others fail, and their dependents are skipped)"
            } else {
                ""
            }
        );
        if p.legs > 0 {
            let legs = match p.legs {
                1 => "1 leg's object".to_string(),
                n => format!("{n} legs' objects"),
            };
            eprintln!(
                "Read {} stage results: {} through {legs}, {} on their own.",
                p.results,
                p.from_legs,
                p.results - p.from_legs
            );
        } else if p.without_etags {
            eprintln!(
                "Read {} stage results on their own: the store lists no ETags, so its legs' objects cannot show which are current.",
                p.results
            );
        }
    }

    fn context(
        &self,
        plan: &Plan,
        store: Arc<dyn Store>,
        cancel: tokio::sync::watch::Receiver<bool>,
        staged: Option<Arc<labctl_engine::staged::Staged>>,
    ) -> apply::ApplyContext {
        context(plan, self.manifest, store, &self.transfer, cancel, staged)
    }

    fn index_records_read(&self, done: usize, total: usize) {
        let mut counter = self.counter.lock().unwrap_or_else(|p| p.into_inner());
        counter
            .get_or_insert_with(|| {
                crate::progress::Counter::new("Reading state for the index: records")
            })
            .update(done, total);
    }

    fn index_read(&self) {
        self.counter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    fn ended(&self, ended: &Ended) {
        let code = shown(ended, self.saved);
        *self.code.lock().unwrap_or_else(|p| p.into_inner()) = Some(code);
    }

    fn blob_not_removed(&self, what: &str) {
        eprintln!(
            "{} could not remove a promoted blob ({what}); `labctl cleanup` removes it later",
            style("Warning:").yellow()
        );
    }
}

/// The exit status of a run stopped by a signal: 130 for SIGINT, 143 for SIGTERM.
fn interrupted_code(
    signals: &tokio::sync::watch::Receiver<Option<crate::interrupt::Signal>>,
) -> u8 {
    signals.borrow().map_or(1, |s| s.exit_code())
}

/// The run's end as the user sees it, and its exit status.
fn shown(ended: &Ended, saved: bool) -> ExitCode {
    match ended {
        Ended::NothingToDo => {
            if saved {
                eprintln!("No changes to apply.");
            }
            ExitCode::SUCCESS
        }
        Ended::NotApproved | Ended::Interrupted => super::exit(1),
        Ended::Applied {
            report,
            summary,
            index,
            cancelled,
        } => finish(report, summary, index.as_ref(), *cancelled),
    }
}

/// After the images: the summary, the consumer index's lines, the exit status.
fn finish(
    report: &Report,
    summary: &crate::plan::Summary,
    index: Option<&anyhow::Result<Published>>,
    cancelled: bool,
) -> ExitCode {
    if index.is_none() {
        eprintln!(
            "The consumer index was not rewritten (interrupted); the next apply rewrites it."
        );
    }
    print_summary(report);
    let index_failed = match index {
        Some(Ok(published)) => match index_lines(published) {
            (lines, None) => {
                for line in lines {
                    println!("{line}");
                }
                false
            }
            // The index was written for everything else; the apply fails so someone looks.
            (lines, Some(problems)) => {
                eprintln!(
                    "  {} consumer index: {}\n{problems}",
                    style("✗").red(),
                    lines.join("\n")
                );
                true
            }
        },
        Some(Err(e)) => {
            eprintln!("  {} consumer index: {e:#}", style("✗").red());
            true
        }
        None => false,
    };
    if crate::github::active() {
        crate::github::summary(&summary_markdown(report));
        crate::github::plan_outputs(summary);
    }
    if report.failed() || cancelled || index_failed {
        super::exit(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The lines that say what the index step did, and the objects that could not be read back
/// (left out of the index), when there are any.
fn index_lines(published: &Published) -> (Vec<String>, Option<String>) {
    let Published {
        backfilled,
        written,
    } = published;
    let mut lines = Vec::new();
    for line in &backfilled.done {
        lines.push(format!("  {} {line}", style("✓").green()));
    }
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
    let problems = (!backfilled.problems.is_empty()).then(|| backfilled.problems.join("\n"));
    (lines, problems)
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
async fn confirm() -> anyhow::Result<bool> {
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

/// What became of the uploads a killed run left (holding the lock, every one found is
/// stranded). Failures do not stop the apply: the uploads are invisible either way.
fn show_stranded(cleanup: Result<&apply::stranded::Cleanup, &StoreError>) {
    let warn = style("Warning:").yellow();
    match cleanup {
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
            "{warn} could not list unfinished uploads: {}",
            super::one_line(e)
        ),
    }
}

//! `labctl stage PLANFILE --unit NAME`: one fan-out leg. See `labctl_engine::stage`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use console::style;

use crate::cli::StageArgs;
use crate::failure::Failure;
use crate::fanout::{self, StageResult, StageStatus};
use crate::run_context::{context, Transfer};
use crate::saved_plan::{read_saved_plan, refuse_other_store};

pub async fn run(args: &StageArgs) -> Result<ExitCode, Failure> {
    let saved = read_saved_plan(&args.plan_file, &args.manifest.manifest)?;
    let plan = Arc::new(saved.plan);
    let plan_file = args.plan_file.display().to_string();
    let units = fanout::requested(&plan, &args.units, &plan_file)?;
    let (manifest, graph) = super::load_manifest(&args.manifest.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), Some(&manifest)).await?;
    refuse_other_store(&plan, store.as_ref(), "stage", &args.plan_file)?;
    // A stale plan is never promoted: staging it would be wasted work.
    labctl_engine::session::refuse_stale(&plan, &manifest, &graph, &store).await?;

    let signals = crate::interrupt::install("aborting the upload in progress")
        .context("cannot listen for SIGINT and SIGTERM")?;
    let cancel = crate::interrupt::as_cancel(signals.clone());
    let transfer = Transfer {
        part_size_mib: args.part_size,
        parts_in_flight: args.parts_in_flight,
        parallelism: args.parallelism,
    };
    let ctx = Arc::new(context(&plan, &manifest, store, &transfer, cancel, None));
    eprintln!(
        "Staging {} of plan {} into {}",
        units
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        saved.id,
        crate::layout::BLOBS_PREFIX
    );

    let leg =
        crate::apply::stage::stage_in_waves(&plan, &saved.id, &units, ctx, args.parallelism).await;
    if let Err(e) = &leg.together {
        eprintln!(
            "{} {}; a promotion reads them one by one",
            style("warning:").yellow(),
            super::one_line(e.as_ref())
        );
    }
    let results = leg.results;
    crate::store_lock::settle_dropped_uploads().await;
    let interrupted = signals.borrow().map(|s| s.exit_code());
    report(&results);
    if let Some(path) = &args.result {
        let document = serde_json::json!({
            "format_version": fanout::FORMAT_VERSION,
            "plan": saved.id,
            "results": results,
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&document).expect("serializes") + "\n",
        )
        .with_context(|| format!("cannot write the result to `{}`", path.display()))?;
    }
    if let Some(code) = interrupted {
        return Ok(super::exit(code));
    }
    Ok(if results.iter().all(|r| r.status == StageStatus::Staged) {
        ExitCode::SUCCESS
    } else {
        super::exit(1)
    })
}

fn report(results: &[StageResult]) {
    let staged = results
        .iter()
        .filter(|r| r.status == StageStatus::Staged)
        .count();
    let failed = results.len() - staged;
    println!("\nStage summary:");
    for r in results {
        match (&r.blob, &r.error) {
            (Some(blob), _) => println!(
                "  {} {}: {} ({} bytes, {})",
                style("✓").green(),
                r.image,
                blob.key,
                blob.size,
                blob.checksum.short()
            ),
            (None, error) => {
                let why = error.as_deref().unwrap_or("not staged");
                if crate::github::active() {
                    let message = match &r.hint {
                        Some(hint) => format!("{why}\nhint: {hint}"),
                        None => why.to_string(),
                    };
                    crate::github::error(&format!("labctl stage: {}", r.image), &message);
                } else {
                    eprintln!("  {} {}: {why}", style("✗").red(), r.image);
                    if let Some(hint) = &r.hint {
                        eprintln!("    {} {hint}", style("hint:").cyan().bold());
                    }
                }
            }
        }
    }
    println!(
        "Stage complete: {staged} staged{}.",
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    if crate::github::active() {
        crate::github::summary(&summary_markdown(results));
    }
}

/// The leg's table on the run's page: each image, and its blob or why it failed.
fn summary_markdown(results: &[StageResult]) -> String {
    let mut out = String::from("### labctl stage\n\n| image | result |\n|---|---|\n");
    for r in results {
        let result = match (&r.blob, &r.error) {
            (Some(blob), _) => format!(
                "✓ `{}` ({} bytes, {}{})",
                blob.key,
                blob.size,
                blob.checksum.short(),
                if blob.uploaded {
                    ""
                } else {
                    ", already staged"
                }
            ),
            (None, error) => {
                let why = error.as_deref().unwrap_or("not staged");
                match &r.hint {
                    Some(hint) => format!("✗ {why} (hint: {hint})"),
                    None => format!("✗ {why}"),
                }
            }
        };
        out.push_str(&format!(
            "| {} | {} |\n",
            r.image,
            result.replace('|', "\\|")
        ));
    }
    out
}

use crate::planning::{compute, PlanRequest};
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::PlanArgs;
use crate::failure::{Failure, WithHint};
use crate::render;
use crate::state::refresh::Objects;

pub async fn run(args: &PlanArgs) -> Result<ExitCode, Failure> {
    if args.out.as_deref() == Some(std::path::Path::new("-")) {
        return Err(anyhow::anyhow!(
            "--out takes a file to save the plan in, not `-`"
        ))
        .hint("print the JSON plan to stdout with --json");
    }
    let (manifest, graph) = super::load_manifest(&args.manifest.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), Some(&manifest)).await?;
    let request = PlanRequest {
        prune: args.prune,
        allow_empty: args.allow_empty,
        replace: args.replace.clone(),
        objects: if args.refresh {
            Objects::Listed
        } else {
            Objects::NotChecked
        },
        offline: args.offline,
    };
    let plan = compute(&manifest, &graph, &store, &request).await?.plan;

    let text = if args.json {
        render::json(&plan)
    } else if args.markdown {
        render::markdown::plan(&plan)
    } else {
        render::human::plan(&plan)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .context("cannot write the plan to stdout")?;
    stdout.flush().ok();

    if let Some(path) = &args.out {
        let json = render::json(&plan);
        write_plan_file(path, &json)
            .with_context(|| format!("cannot save the plan to `{}`", path.display()))?;
        eprintln!(
            "Saved the plan to {}. Apply exactly this plan with: {}",
            path.display(),
            apply_command(args, path)
        );
        if let Some(matrix) = &args.matrix {
            write_matrix(&plan, json.as_bytes(), matrix)?;
        }
    }

    if crate::github::active() {
        crate::github::summary(&render::markdown::plan(&plan));
        crate::github::plan_outputs(&plan.summary);
    }

    // The exit code comes from the same plan value the text was rendered from.
    if args.detailed_exitcode && plan.has_changes() {
        Ok(super::exit(super::EXIT_CHANGES))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// The fan-out's matrix for the plan saved as `saved` (its legs find each other under the
/// saved bytes' ID).
fn write_matrix(
    plan: &crate::plan::Plan,
    saved: &[u8],
    path: &std::path::Path,
) -> Result<(), Failure> {
    let id = crate::fanout::plan_id(saved);
    let matrix = crate::fanout::matrix(plan, &id, &crate::fanout::Limits::default());
    let json = serde_json::to_string_pretty(&matrix).expect("a matrix serializes") + "\n";
    write_plan_file(path, &json)
        .with_context(|| format!("cannot save the matrix to `{}`", path.display()))?;
    for note in &matrix.notes {
        eprintln!("{} {note}", console::style("note:").cyan());
    }
    eprintln!(
        "Saved the matrix to {}: {} unit{} to stage in {} leg{} over {} wave{} (plan {id}).",
        path.display(),
        matrix.units,
        if matrix.units == 1 { "" } else { "s" },
        matrix.legs,
        if matrix.legs == 1 { "" } else { "s" },
        matrix.waves.len(),
        if matrix.waves.len() == 1 { "" } else { "s" },
    );
    Ok(())
}

/// `labctl apply` of a saved plan, with the manifest and store the plan was made with when
/// they were not the defaults.
fn apply_command(args: &PlanArgs, path: &std::path::Path) -> String {
    let mut command = "labctl apply".to_string();
    if args.manifest.manifest != std::path::Path::new(crate::cli::DEFAULT_MANIFEST) {
        command.push_str(&format!(" --manifest {}", args.manifest.manifest.display()));
    }
    if let Some(store) = &args.store.store {
        command.push_str(&format!(" --store {store}"));
    }
    command.push_str(&format!(" {}", path.display()));
    command
}

/// Atomically, so a reader never sees half a plan.
fn write_plan_file(path: &std::path::Path, json: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(json.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

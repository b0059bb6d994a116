use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::cli::PlanArgs;
use crate::failure::{Failure, WithHint};
use crate::graph::DependencyGraph;
use crate::manifest::Manifest;
use crate::plan::{self, Desired, Plan, PlanContext, PlanOptions};
use crate::render;
use crate::state::refresh::Objects;
use crate::store::Store;

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
        write_plan_file(path, &render::json(&plan))
            .with_context(|| format!("cannot save the plan to `{}`", path.display()))?;
        eprintln!(
            "Saved the plan to {}. Apply exactly this plan with: {}",
            path.display(),
            apply_command(args, path)
        );
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

/// What a plan is asked for, beyond the manifest and the store.
pub struct PlanRequest {
    pub prune: bool,
    /// `--allow-empty`: an empty manifest may prune everything.
    pub allow_empty: bool,
    pub replace: Vec<String>,
    /// How much to learn about the objects.
    pub objects: Objects,
    /// Leave checksum lists unfetched.
    pub offline: bool,
}

/// A plan with what it was computed from.
pub struct Planned {
    pub desired: Vec<Desired>,
    pub actual: crate::state::ActualState,
    pub plan: Plan,
}

/// Reads the store and computes the plan: the one computation behind `plan`, `apply` and
/// `drift`, so that the three agree on what is to be done.
pub async fn compute(
    manifest: &Manifest,
    graph: &DependencyGraph,
    store: &Arc<dyn Store>,
    request: &PlanRequest,
) -> Result<Planned, Failure> {
    let (prune, replace) = (request.prune, &request.replace);
    let refresh = request.objects != Objects::NotChecked;
    for name in replace {
        if manifest.image(name).is_none() {
            return Err(anyhow::anyhow!(
                "--replace names `{name}`, which is not an image in the manifest"
            ))
            .hint("use an image name from the manifest");
        }
    }
    let mut desired = crate::desired::build(manifest, graph)?;
    if !request.offline {
        let client = crate::source::http::client();
        for warning in crate::desired::resolve_lists(&mut desired, &client).await? {
            eprintln!("{} {warning}", console::style("warning:").yellow());
        }
    }
    eprintln!(
        "Reading state from {}{}",
        store.url(),
        if refresh { "" } else { " (records only)" }
    );
    let counter = crate::progress::Counter::new("Reading state: records");
    let mut actual =
        crate::state::refresh::read_reporting(store.clone(), request.objects, &|d, t| {
            counter.update(d, t)
        })
        .await?;
    drop(counter);
    if prune && !request.allow_empty && desired.is_empty() && !actual.records.is_empty() {
        return Err(anyhow::anyhow!(
            "the manifest declares no images: --prune would delete all {} in the store",
            actual.records.len()
        ))
        .hint("check that the manifest is the one you meant; to delete every image, add --allow-empty");
    }
    if refresh {
        let wanted = desired
            .iter()
            .map(|d| crate::manifest::object_key(&d.spec.destination));
        crate::state::refresh::head_unrecorded(store.clone(), &mut actual, wanted).await?;
    }
    let plan = plan::compute(
        &desired,
        &actual,
        &PlanOptions {
            prune,
            replace: replace.to_vec(),
            index_public_key: manifest.index.minisign_public_key.clone(),
        },
        PlanContext {
            manifest: manifest.path.display().to_string(),
            manifest_digest: manifest.digest.clone(),
            store: store.url(),
        },
    )
    .map_err(|e| {
        let hint = e.hint();
        Failure::from(e).with_hint(hint)
    })?;
    Ok(Planned {
        desired,
        actual,
        plan,
    })
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

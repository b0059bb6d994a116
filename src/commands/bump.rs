//! `labctl bump [NAME…]`: move tracked images to the newest version their policy allows. Each
//! new version is downloaded once and verified as apply would — signature first, then the
//! vendor's checksum list, then GitHub's asset digest as a cross-check — and decompressed for the
//! published digest; only then is the manifest edited (its version and digests, nothing else).
//! Any failure writes nothing.

use std::process::ExitCode;

use anyhow::Context;

use crate::checksum::Checksum;
use crate::cli::BumpArgs;
use crate::failure::{Failure, WithHint};
use crate::manifest::{self, Image, Manifest};
use crate::pin::Pinned;
use labctl_engine::bump::Bumped;

/// Room left in a pull-request body for the plan of the result.
const PLAN_BUDGET: usize = 30_000;

pub async fn run(args: &BumpArgs) -> Result<ExitCode, Failure> {
    let path = &args.tracked.manifest.manifest;
    let (manifest, _) = super::load_manifest(path)?;
    let images = manifest.tracked(&args.tracked.names)?;
    let tracked: Vec<&Image> = images.into_iter().filter(|i| i.track.is_some()).collect();
    if tracked.is_empty() {
        eprintln!("No image in {} has a `track:` block.", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = args.tracked.timeout;
    let api = crate::source::http::api_client(timeout);
    let listings = crate::upstream::fetch(&tracked, &api).await;
    let report = crate::tracked::assess_all(
        &tracked,
        &manifest,
        &listings,
        args.tracked.store.store.as_deref(),
    )
    .await;

    // Read once: the edits are made on these bytes, and they must be the ones validated.
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest `{}`", path.display()))?;
    if Checksum::sha256(text.as_bytes()) != manifest.digest {
        return Err(anyhow::anyhow!(
            "{} changed while labctl was reading it",
            path.display()
        ))
        .hint("run labctl bump again");
    }

    let client = crate::source::http::client();
    let progress = crate::progress::for_stderr();
    let reparse = |text: &str| parse_text(&manifest, text).map(|(moved, _)| moved);
    let (bumped, failures) = labctl_engine::bump::verify_all(
        &report,
        &manifest,
        &text,
        &listings,
        &client,
        &api,
        progress.as_ref(),
        &reparse,
    )
    .await;
    if !failures.is_empty() {
        return Err(refused(&failures, &bumped));
    }
    if bumped.is_empty() {
        eprintln!("Every tracked image is at the newest version its policy allows.");
        return Ok(ExitCode::SUCCESS);
    }

    let pins: Vec<Pinned> = bumped.iter().map(|b| b.pin.clone()).collect();
    let (updated, new_manifest, new_graph) =
        labctl_engine::pin::edited(&manifest, &text, &pins, super::rules_from_env())?;

    for b in &bumped {
        eprintln!(
            "{}: {} → {} ({})",
            b.old_name,
            b.old_version,
            b.new_version,
            b.trust.describe()
        );
    }
    if args.write {
        crate::manifest_dir::write(path, &updated)?;
        eprintln!(
            "Wrote {} bump{} into {}. Review the diff: the new digests are now trusted.",
            bumped.len(),
            if bumped.len() == 1 { "" } else { "s" },
            path.display()
        );
    } else if !args.markdown {
        let name = path.display().to_string();
        print!("{}", crate::render::text_diff(&name, &text, &updated));
        eprintln!("Run again with --write to write these changes into {name}.");
    }
    if args.markdown {
        let plan = plan_markdown(
            &new_manifest,
            &new_graph,
            args.tracked.store.store.as_deref(),
        )
        .await;
        print!("{}", labctl_engine::pull_request::body(&bumped, &plan));
    }
    Ok(ExitCode::SUCCESS)
}

/// Nothing is written when any image failed: each failure is printed (and annotated), and the
/// error names the images that did verify, to bump them alone.
fn refused(failures: &[String], bumped: &[Bumped]) -> Failure {
    for f in failures {
        eprintln!("{} {f}", console::style("error:").red().bold());
        crate::github::error("labctl bump", f);
    }
    let verified: Vec<&str> = bumped.iter().map(|b| b.old_name.as_str()).collect();
    let total = failures.len() + bumped.len();
    let mut message = format!(
        "{} of {total} image{} could not be bumped; nothing was written",
        failures.len(),
        if total == 1 { "" } else { "s" }
    );
    if !verified.is_empty() {
        message.push_str(&format!(
            " (these verified and can be bumped by name: labctl bump {})",
            verified.join(" ")
        ));
    }
    anyhow::anyhow!(message).into()
}

fn parse_text(
    manifest: &Manifest,
    text: &str,
) -> Result<(Manifest, crate::graph::DependencyGraph), manifest::LoadError> {
    manifest::parse(
        text.as_bytes(),
        &manifest.path,
        &manifest.base_dir,
        &crate::manifest_dir::Directory(manifest.base_dir.clone()),
        super::rules_from_env(),
    )
}

async fn plan_markdown(
    manifest: &Manifest,
    graph: &crate::graph::DependencyGraph,
    store_flag: Option<&str>,
) -> String {
    let store = match super::open_store(store_flag, Some(manifest)).await {
        Ok(s) => s,
        Err(f) => {
            return format!(
                "_The plan of the result could not be computed: {}._\n",
                f.error
            )
        }
    };
    let request = crate::planning::PlanRequest {
        prune: false,
        allow_empty: false,
        replace: Vec::new(),
        objects: crate::state::refresh::Objects::Listed,
        offline: false,
    };
    match crate::planning::compute(manifest, graph, &store, &request).await {
        Ok(planned) => crate::render::markdown::plan_within(&planned.plan, PLAN_BUDGET)
            .replace(crate::render::markdown::MARKER, ""),
        Err(f) => format!(
            "_The plan of the result could not be computed: {}._\n",
            f.error
        ),
    }
}

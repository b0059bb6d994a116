//! `labctl drift`: read-only comparison of manifest, records, objects and (optionally) the bytes
//! and the upstream sources. Exit 0 clean, 1 error, 2 drift.

use std::process::ExitCode;

use crate::cli::DriftArgs;
use crate::drift::{self, Report};
use crate::failure::Failure;
use labctl_engine::drift as drift_checks;

pub async fn run(args: &DriftArgs) -> Result<ExitCode, Failure> {
    let (manifest, graph) = super::load_manifest(&args.manifest.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), Some(&manifest)).await?;
    // The plan apply would make, without fetching checksum lists: a vendor's list is looked at
    // by --check-sources, not by the nightly comparison of the manifest with the store.
    let request = crate::planning::PlanRequest {
        prune: false,
        allow_empty: false,
        replace: Vec::new(),
        // Every object HEADed: drift also compares the labctl metadata a listing does not show.
        objects: crate::state::refresh::Objects::Headed,
        offline: true,
    };
    let crate::planning::Planned {
        desired,
        actual,
        plan,
    } = crate::planning::compute(&manifest, &graph, &store, &request).await?;
    let mut findings = drift_checks::bucket_findings(
        store.as_ref(),
        &plan,
        &actual,
        manifest.index.minisign_public_key.as_deref(),
    )
    .await?;
    if args.deep {
        eprintln!("Re-hashing every managed object…");
        findings.extend(drift_checks::deep(store.clone(), &actual).await?);
    }
    if args.check_sources {
        eprintln!("Probing the sources…");
        findings.extend(drift_checks::check_sources(&desired, &actual).await);
    }
    let report = Report::new(
        manifest.path.display().to_string(),
        store.url(),
        args.deep,
        args.check_sources,
        actual.records.len(),
        findings,
    );

    show(&report, args);
    Ok(if report.has_drift() {
        super::exit(super::EXIT_CHANGES)
    } else {
        ExitCode::SUCCESS
    })
}

/// The report on stdout in the format asked for; in GitHub Actions also the step summary, the
/// job outputs and (for the human format) an annotation per finding.
fn show(report: &Report, args: &DriftArgs) {
    let text = if args.json {
        serde_json::to_string_pretty(report).expect("serializes") + "\n"
    } else if args.markdown {
        drift::markdown(report)
    } else {
        drift::human(report)
    };
    print!("{text}");
    if crate::github::active() {
        crate::github::summary(&drift::markdown(report));
        crate::github::outputs(&[
            ("drift", report.has_drift().to_string()),
            ("findings", report.findings.len().to_string()),
        ]);
        if !args.json && !args.markdown {
            for f in &report.findings {
                crate::github::error(
                    &format!("labctl drift: {}", f.image.as_deref().unwrap_or(&f.key)),
                    &format!("{}: {} ({})", f.kind.name(), f.key, f.detail),
                );
            }
        }
    }
}

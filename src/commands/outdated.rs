//! `labctl outdated [NAME…]`: for every tracked image, the newest version its policy allows,
//! the newest overall, and why newer ones are held back; warnings for pins that cannot last.
//! Exit 0 up to date, 2 updates available, 1 a lookup failed.

use std::process::ExitCode;

use crate::cli::OutdatedArgs;
use crate::failure::Failure;
use crate::tracked::outdated;

pub async fn run(args: &OutdatedArgs) -> Result<ExitCode, Failure> {
    let (manifest, _) = super::load_manifest(&args.tracked.manifest.manifest)?;
    let images = manifest.tracked(&args.tracked.names)?;
    let timeout = args.tracked.timeout;
    let report = outdated(
        &images,
        &manifest,
        args.tracked.store.store.as_deref(),
        timeout,
    )
    .await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else {
        print!("{}", report.human());
    }
    for row in report.images.iter().filter(|r| r.error.is_some()) {
        crate::github::error(
            &format!("labctl outdated: {}", row.name),
            row.error.as_deref().unwrap_or_default(),
        );
    }
    Ok(super::exit(report.exit_code()))
}

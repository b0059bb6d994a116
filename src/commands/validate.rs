use std::process::ExitCode;

use crate::cli::ManifestArg;
use crate::failure::Failure;
use crate::manifest::Source;

pub fn run(args: &ManifestArg) -> Result<ExitCode, Failure> {
    let (manifest, _graph) = super::load_manifest(&args.manifest)?;
    let builds = manifest
        .images
        .iter()
        .filter(|i| matches!(i.source, Source::Packer(_)))
        .count();
    let n = manifest.images.len();
    println!(
        "{} is valid: {} image{} ({} download{}, {} build{})",
        manifest.path.display(),
        n,
        if n == 1 { "" } else { "s" },
        n - builds,
        if n - builds == 1 { "" } else { "s" },
        builds,
        if builds == 1 { "" } else { "s" },
    );
    Ok(ExitCode::SUCCESS)
}

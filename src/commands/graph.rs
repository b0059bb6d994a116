use std::process::ExitCode;

use crate::cli::ManifestArg;
use crate::failure::Failure;

pub fn run(args: &ManifestArg) -> Result<ExitCode, Failure> {
    let (manifest, graph) = super::load_manifest(&args.manifest)?;
    print!("{}", graph.to_dot(&manifest.images));
    Ok(ExitCode::SUCCESS)
}

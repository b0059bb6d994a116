//! `labctl pin`: trust on first use, made explicit. Downloads each source whose checksum (or
//! published checksum) the manifest leaves as `pin` or absent, prints what it computed, and with
//! `--write` writes exactly those values into the manifest for review in the pull request.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::PinArgs;
use crate::failure::{Failure, WithHint};
use crate::manifest;
use crate::pin::Pinned;
use labctl_engine::pin::Need;

pub async fn run(args: &PinArgs) -> Result<ExitCode, Failure> {
    let path = &args.manifest.manifest;
    let mut rules = super::rules_from_env();
    rules.allow_pin = true;
    let (m, _) = match manifest::load(path, rules) {
        Ok(x) => x,
        Err(manifest::LoadError::Invalid(d)) => {
            return Err(Failure {
                error: anyhow::Error::new(d),
                hint: None,
            })
        }
        Err(e) => return Err(e.into()),
    };
    for name in &args.names {
        if m.image(name).is_none() {
            return Err(anyhow::anyhow!("`{name}` is not an image in {}", path.display()))
                .hint("name images as the manifest does, or give no names to pin every image that needs it");
        }
    }

    let client = crate::source::http::client();
    let progress = crate::progress::for_stderr();
    let named = !args.names.is_empty();
    let mut pins = Vec::new();
    for image in &m.images {
        if named && !args.names.contains(&image.name) {
            continue;
        }
        match labctl_engine::pin::pin_one(image, &client, progress.as_ref()).await? {
            Need::Build if named => eprintln!(
                "{}: a Packer build; its checksum is known only after apply",
                image.name
            ),
            Need::AlreadyPinned if named => eprintln!("{}: already pinned", image.name),
            Need::Build | Need::AlreadyPinned => {}
            Need::Learned(pinned) => {
                println!("{}", pin_line(&pinned));
                pins.push(pinned);
            }
        }
    }

    if pins.is_empty() {
        eprintln!("Nothing to pin: every HTTP source has its checksums.");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.write {
        eprintln!(
            "Run again with --write to put these values into {}.",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    write_pins(path, &m, rules, &pins)?;
    Ok(ExitCode::SUCCESS)
}

/// `NAME: source.checksum … validation.expected …`: what was learned, on stdout.
fn pin_line(pinned: &Pinned) -> String {
    let mut line = format!("{}:", pinned.image);
    if let Some(c) = &pinned.checksum {
        line.push_str(&format!(" source.checksum {c}"));
    }
    if let Some(e) = &pinned.expected {
        line.push_str(&format!(" validation.expected {e}"));
    }
    line
}

/// Writes the pins into the manifest, keeping its formatting, once the edited text still
/// validates (other images may still say `pin`).
fn write_pins(
    path: &std::path::Path,
    m: &manifest::Manifest,
    rules: manifest::Rules,
    pins: &[Pinned],
) -> Result<(), Failure> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (updated, _, _) = labctl_engine::pin::edited(m, &text, pins, rules)?;
    crate::manifest_dir::write(path, &updated)?;
    eprintln!(
        "Wrote {} checksum{} into {}. Review the diff: these values are now trusted.",
        pins.iter()
            .map(|p| p.checksum.is_some() as usize + p.expected.is_some() as usize)
            .sum::<usize>(),
        if pins.len() == 1 && pins[0].checksum.is_some() != pins[0].expected.is_some() {
            ""
        } else {
            "s"
        },
        path.display()
    );
    Ok(())
}

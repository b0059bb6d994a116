//! `labctl verify DIR`: check a synced copy of `images/` offline. Exit 0 all ok, 2 problems
//! found, 1 error (no index, bad signature, unreadable directory).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use console::style;

use crate::cli::VerifyArgs;
use crate::failure::Failure;
use crate::verify::{self, Options, Report, Verdict};

pub fn run(args: &VerifyArgs) -> Result<ExitCode, Failure> {
    let public_key = match (&args.public_key, &args.public_key_file) {
        (Some(k), _) => Some(k.trim().to_string()),
        (None, Some(path)) => Some(read_public_key_file(path)?),
        (None, None) => None,
    };
    let jobs = args.jobs.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(4)
    });
    let interactive = std::io::stderr().is_terminal();
    let report = verify::run(
        &Options {
            dir: args.dir.clone(),
            public_key,
            jobs,
        },
        &|done, total| {
            if interactive {
                eprint!("\rChecked {done} of {total} files");
                if done == total {
                    eprintln!();
                }
            }
        },
    )
    .map_err(|e| {
        let hint = e.hint().map(str::to_string);
        Failure {
            error: e.into(),
            hint,
        }
    })?;
    let text = if args.json {
        serde_json::to_string_pretty(&report).expect("serializes") + "\n"
    } else {
        human(&report)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .context("cannot write the report to stdout")?;
    stdout.flush().ok();
    Ok(if report.problems() > 0 {
        super::exit(super::EXIT_CHANGES)
    } else {
        ExitCode::SUCCESS
    })
}

/// A minisign `.pub` file (comment line, key line) or a file holding just the key.
fn read_public_key_file(path: &std::path::Path) -> Result<String, Failure> {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::fs::File::open(path)
                .with_context(|| format!("cannot read the public key file `{}`", path.display()))?,
            64 * 1024,
        ),
        &mut text,
    )
    .with_context(|| format!("cannot read the public key file `{}`", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .map(str::to_string)
        .ok_or_else(|| {
            Failure::from(anyhow::anyhow!(
                "`{}` holds no minisign public key",
                path.display()
            ))
        })
}

pub fn human(report: &Report) -> String {
    let mut out = String::new();
    if report.signature.verified {
        out.push_str(&format!(
            "{} SHA256SUMS.minisig verified with key {}{}\n",
            style("✓").green(),
            report.signature.key_id.as_deref().unwrap_or("?"),
            report
                .signature
                .trusted_comment
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        ));
    } else {
        out.push_str(&format!(
            "{} signature not checked (no --public-key)\n",
            style("!").yellow()
        ));
    }
    for f in &report.files {
        let mark = match f.verdict {
            Verdict::Ok => style("✓").green(),
            _ => style("✗").red(),
        };
        out.push_str(&format!("{mark} {:<15} {}", f.verdict.name(), f.path));
        if !f.detail.is_empty() && f.verdict != Verdict::Ok {
            out.push_str(&format!("  ({})", f.detail));
        }
        out.push('\n');
    }
    let counts: Vec<String> = report
        .summary
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let problems = report.problems();
    out.push_str(&format!(
        "\n{} {}\n",
        if problems == 0 {
            style("Verified:").green().bold()
        } else {
            style("Problems found:").red().bold()
        },
        if counts.is_empty() {
            "no files listed".to_string()
        } else {
            counts.join(", ")
        }
    ));
    out
}

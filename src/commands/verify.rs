//! `labctl verify DIR [--into SERVED]`: check a synced copy of `images/` offline, and fill the
//! folder machines boot from with verified files. Exit 0 all ok, 2 problems found (or files
//! pending), 1 error (no index, bad signature, unreadable directory, a busy or full served
//! folder).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use console::style;

use crate::cli::VerifyArgs;
use crate::failure::Failure;
use crate::serve;
use crate::verify::{self, Options, Report, Verdict};

pub fn run(args: &VerifyArgs) -> Result<ExitCode, Failure> {
    let public_key = match (&args.public_key, &args.public_key_file) {
        (Some(k), _) => Some(k.trim().to_string()),
        (None, Some(path)) => Some(verify::read_public_key_file(path)?),
        (None, None) => None,
    };
    let jobs = args.jobs.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(4)
    });
    let interactive = std::io::stderr().is_terminal();
    if let Some(served) = &args.into {
        return into(args, served, public_key, jobs, interactive);
    }
    let report = verify::run(
        &Options {
            dir: args.dir.clone(),
            public_key,
            jobs,
        },
        &|done, total| counter(interactive, "Files checked", done, total),
    )?;
    let text = if args.json {
        serde_json::to_string_pretty(&report).expect("serializes") + "\n"
    } else {
        human(&report)
    };
    print_report(&text)?;
    Ok(if report.problems() > 0 {
        super::exit(super::EXIT_CHANGES)
    } else {
        ExitCode::SUCCESS
    })
}

/// `WHAT: done of total` on one line of a terminal's stderr, finished with a newline; nothing
/// elsewhere (logs get the report).
fn counter(interactive: bool, what: &str, done: usize, total: usize) {
    if interactive {
        eprint!("\r{what}: {done} of {total}");
        if done == total {
            eprintln!();
        }
    }
}

/// `2 ok, 1 missing`, from a report's summary.
fn counted(summary: &std::collections::BTreeMap<String, usize>) -> String {
    if summary.is_empty() {
        return "no files listed".into();
    }
    summary
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as JSON, streamed: a served folder of 50,000 files makes a report of tens of MB.
fn print_json(report: &impl serde::Serialize) -> Result<(), Failure> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut stdout, report)
        .map_err(std::io::Error::from)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
        .context("cannot write the report to stdout")?;
    Ok(())
}

fn print_report(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .context("cannot write the report to stdout")?;
    stdout.flush().ok();
    Ok(())
}

/// `--into SERVED`.
fn into(
    args: &VerifyArgs,
    served: &std::path::Path,
    public_key: Option<String>,
    jobs: usize,
    interactive: bool,
) -> Result<ExitCode, Failure> {
    let report = serve::run(
        &serve::Options {
            synced: args.dir.clone(),
            served: served.to_path_buf(),
            public_key,
            deep: args.deep,
            jobs,
            wait: args.wait.unwrap_or_default(),
        },
        &|phase, done, total| counter(interactive, phase, done, total),
    )?;
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&served_human(&report))?;
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else if report.problems() > 0 || !report.complete {
        super::exit(super::EXIT_CHANGES)
    } else {
        ExitCode::SUCCESS
    })
}

fn signature_line(signature: &verify::SignatureStatus) -> String {
    if signature.verified {
        format!(
            "{} SHA256SUMS.minisig verified with key {}{}\n",
            style("✓").green(),
            signature.key_id.as_deref().unwrap_or("?"),
            signature
                .trusted_comment
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        )
    } else {
        format!(
            "{} signature not checked (no --public-key)\n",
            style("!").yellow()
        )
    }
}

/// Every path that changed or needs attention (current files only counted), then what the
/// served folder holds.
pub fn served_human(report: &serve::Report) -> String {
    let mut out = signature_line(&report.signature);
    for f in report
        .files
        .iter()
        .filter(|f| f.status != serve::Status::Current)
    {
        let mark = if f.status.is_problem() {
            style("✗").red()
        } else {
            style("✓").green()
        };
        out.push_str(&format!("{mark} {:<12} {}", f.status.name(), f.path));
        if !f.detail.is_empty() {
            out.push_str(&format!("  ({})", f.detail));
        }
        out.push('\n');
    }
    let generation = |g: &serve::Generation| {
        format!(
            "the generation of {}{} ({} files)",
            g.generated_at.as_deref().unwrap_or("unknown time"),
            g.ci_run
                .as_ref()
                .map(|r| format!(", CI run {}", r.url.as_deref().unwrap_or(&r.id)))
                .unwrap_or_default(),
            g.files
        )
    };
    let holds = match (&report.served_generation, report.complete) {
        (Some(g), true) => format!("{} serves {}", report.served, generation(g)),
        (Some(g), false) => format!(
            "{} serves {} and the new files verified so far",
            report.served,
            generation(g)
        ),
        (None, _) => format!(
            "{} serves the files verified so far (no generation whole yet)",
            report.served
        ),
    };
    out.push_str(&format!(
        "\n{} {}\n{holds}\nHashed {} bytes, copied {} bytes{}.\n",
        if report.complete {
            style("Served:").green().bold()
        } else {
            style("Pending:").yellow().bold()
        },
        counted(&report.summary),
        report.bytes_hashed,
        report.bytes_copied,
        match report.temporary_files_removed {
            0 => String::new(),
            n => format!("; removed {n} temporary files left by an interrupted run"),
        }
    ));
    out
}

pub fn human(report: &Report) -> String {
    let mut out = signature_line(&report.signature);
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
    let problems = report.problems();
    out.push_str(&format!(
        "\n{} {}\n",
        if problems == 0 {
            style("Verified:").green().bold()
        } else {
            style("Problems found:").red().bold()
        },
        counted(&report.summary)
    ));
    out
}

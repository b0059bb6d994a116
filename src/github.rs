//! GitHub Actions integration, active when `GITHUB_ACTIONS=true`: annotations, job summaries and
//! step outputs. Outside Actions every function here does nothing.

use std::io::Write;

/// The GitHub Actions run this process belongs to, if any.
pub fn ci_run() -> Option<labctl_core::state::record::CiRun> {
    crate::settings::env().ci_run.clone()
}

pub fn active() -> bool {
    crate::settings::env().github.is_some()
}

/// Escapes a workflow command's message.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a workflow command's property value.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// `::error title=…::message`, on stdout where the runner reads workflow commands.
pub fn error(title: &str, message: &str) {
    if active() {
        println!(
            "::error title={}::{}",
            escape_property(title),
            escape_data(message)
        );
    }
}

/// Prints `lines` inside a collapsible group.
pub fn group(title: &str, lines: &[String]) {
    if active() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "::group::{}", escape_data(title));
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "::endgroup::");
    }
}

fn append(file: Option<&std::path::Path>, text: &str) -> std::io::Result<()> {
    let Some(path) = file else {
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}

fn step_summary() -> Option<&'static std::path::Path> {
    crate::settings::env()
        .github
        .as_ref()?
        .step_summary
        .as_deref()
}

fn output_file() -> Option<&'static std::path::Path> {
    crate::settings::env().github.as_ref()?.output.as_deref()
}

/// Appends markdown to the job summary (`$GITHUB_STEP_SUMMARY`).
pub fn summary(markdown: &str) {
    if active() {
        if let Err(e) = append(step_summary(), &format!("{markdown}\n")) {
            eprintln!("warning: cannot write the job summary: {e}");
        }
    }
}

/// Sets step outputs (`$GITHUB_OUTPUT`); values are single-line.
pub fn outputs(pairs: &[(&str, String)]) {
    if active() {
        let text: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}\n", v.replace(['\n', '\r'], " ")))
            .collect();
        if let Err(e) = append(output_file(), &text) {
            eprintln!("warning: cannot write step outputs: {e}");
        }
    }
}

/// The outputs of a plan or apply: `changes` and the counts.
pub fn plan_outputs(summary: &crate::plan::Summary) {
    outputs(&[
        ("changes", summary.has_changes().to_string()),
        ("create", summary.create.to_string()),
        ("replace", summary.replace.to_string()),
        ("update", summary.update.to_string()),
        ("delete", summary.delete.to_string()),
        ("orphaned", summary.orphaned.to_string()),
    ]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_commands() {
        assert_eq!(super::escape_data("50% done\nnext"), "50%25 done%0Anext");
        assert_eq!(super::escape_property("a:b,c"), "a%3Ab%2Cc");
    }
}

//! Shell completions and the manual page, checked with the real consumers: bash completes from
//! the script, `man -l` renders the pages.

use std::process::Command;

use crate::util::*;

/// What bash offers for `COMP_WORDS` with the cursor on the last word.
fn complete(script: &std::path::Path, words: &[&str]) -> String {
    let cword = words.len() - 1;
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; _labctl labctl '{}' '{}'; echo \"${{COMPREPLY[*]}}\"",
            script.display(),
            quoted.join(" "),
            words[cword],
            words[cword - 1],
        ))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn bash_completes_commands_and_flags() {
    let run = labctl(&["completions", "bash"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("labctl.bash");
    std::fs::write(&script, &run.stdout).unwrap();
    assert_eq!(complete(&script, &["labctl", "pl"]), "plan");
    assert_eq!(complete(&script, &["labctl", "dr"]), "drift");
    assert_eq!(
        complete(&script, &["labctl", "plan", "--detailed"]),
        "--detailed-exitcode"
    );
    let completions = complete(&script, &["labctl", "apply", "--lock"]);
    assert!(completions.contains("--lock-timeout"), "{completions}");
}

#[test]
fn other_shells_get_their_scripts() {
    for (shell, marker) in [("zsh", "#compdef labctl"), ("fish", "complete -c labctl")] {
        let run = labctl(&["completions", shell]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stdout.contains(marker),
            "{shell}: {}",
            &run.stdout[..200.min(run.stdout.len())]
        );
        assert!(run.stdout.contains("detailed-exitcode"), "{shell}");
    }
    let bad = labctl(&["completions", "tcsh"]);
    assert_eq!(bad.code, 1, "a usage error is an error: {}", bad.stderr);
    assert!(bad.stderr.contains("possible values"), "{}", bad.stderr);
}

fn render(page: &std::path::Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("man is installed (scripts/test installs man-db)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bold and underline are overstrikes; drop them.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next();
            continue;
        }
        plain.push(c);
    }
    plain
}

#[test]
fn man_renders_the_page_and_one_per_command() {
    let run = labctl(&["man"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("labctl.1");
    std::fs::write(&page, &run.stdout).unwrap();
    let text = render(&page);
    for expected in [
        "NAME",
        "SYNOPSIS",
        "labctl-plan(1)",
        "labctl-apply(1)",
        "Exit codes",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }

    let pages = dir.path().join("man1");
    let run = labctl(&["man", "--dir", pages.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let apply = render(&pages.join("labctl-apply.1"));
    for expected in ["--lock-timeout", "--auto-approve", "--prune"] {
        assert!(apply.contains(expected), "{expected}: {apply}");
    }
    assert!(render(&pages.join("labctl-verify.1")).contains("--public-key"));
}

//! The body of the pull request `labctl bump` opens: each new version, where each digest came
//! from and the trust it earned, the vendor's notes shown (never rendered), and the plan of
//! the result.

use crate::bump::Bumped;

/// Release notes longer than this are cut: a pull request is not the changelog's home.
const MAX_NOTES: usize = 4_000;

/// The pull-request body.
pub fn body(bumped: &[Bumped], plan: &str) -> String {
    let mut out = String::from("<!-- labctl-bump -->\n");
    let title: Vec<String> = bumped
        .iter()
        .map(|b| format!("{} {}", b.old_name, b.new_version))
        .collect();
    out.push_str(&format!("## labctl bump: {}\n\n", title.join(", ")));
    out.push_str("Each new version below was downloaded once and verified by `labctl bump` before the manifest was edited. Review where each digest came from; `labctl plan` runs on this pull request as on any other.\n\n");
    for b in bumped {
        out.push_str(&format!(
            "### `{}`: {} → {}\n\n",
            b.old_name, b.old_version, b.new_version
        ));
        if b.new_name != b.old_name {
            out.push_str(&format!(
                "Renamed to `{}` (its name carries the version).\n\n",
                b.new_name
            ));
        }
        out.push_str("| | |\n|---|---|\n");
        out.push_str(&format!("| Source | {} |\n", b.url));
        out.push_str(&format!(
            "| Downloaded | {} ({} bytes) |\n",
            labctl_core::units::human_size(b.size),
            b.size
        ));
        if let Some(s) = b.published_size {
            out.push_str(&format!(
                "| Published (decompressed) | {} ({s} bytes) |\n",
                labctl_core::units::human_size(s)
            ));
        }
        if let Some(c) = &b.pin.checksum {
            out.push_str(&format!(
                "| `source.checksum` | `{c}`: {} |\n",
                b.trust.describe()
            ));
        } else {
            out.push_str(&format!(
                "| `source.checksum` | the vendor's list, looked up at apply: {} |\n",
                b.trust.describe()
            ));
        }
        if let Some(e) = &b.pin.expected {
            out.push_str(&format!(
                "| `validation.expected` | `{e}`: computed from the verified download |\n"
            ));
        }
        for c in &b.cross_checks {
            out.push_str(&format!("| Cross-check | {c} |\n"));
        }
        if let Some(url) = &b.release_url {
            out.push_str(&format!("| Release | {url} |\n"));
        }
        out.push('\n');
        if let Some(notes) = &b.notes {
            out.push_str("<details><summary>Release notes</summary>\n\n");
            out.push_str(&fenced(&cut(notes, MAX_NOTES)));
            out.push_str("\n</details>\n\n");
        }
    }
    out.push_str("<details><summary>Plan of the result</summary>\n\n");
    out.push_str(plan.trim());
    out.push_str("\n\n</details>\n");
    out
}

/// At most `limit` characters, cut at a line end, saying so.
fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let head: String = text.chars().take(limit).collect();
    let head = head.rsplit_once('\n').map_or(head.as_str(), |(h, _)| h);
    format!("{head}\n… (cut; the release page has the rest)")
}

/// The vendor's text inside a code fence longer than any it contains: shown, never rendered
/// (no mentions, no links, no closing keywords acting on this repository).
fn fenced(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{}\n{fence}\n", text.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_notes_are_fenced_and_cut() {
        let notes = "## vyos-1x\n- fix @someone's bug, closes #12\n```sh\nrm -rf\n```\n";
        let f = fenced(notes);
        assert!(f.starts_with("````text\n"), "{f}");
        assert!(f.ends_with("\n````\n"), "{f}");
        let long = "line\n".repeat(2_000);
        let c = cut(&long, 100);
        assert!(
            c.len() < 200 && c.ends_with("the release page has the rest)"),
            "{c}"
        );
        assert_eq!(cut("short", 100), "short");
    }
}

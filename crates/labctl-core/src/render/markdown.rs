//! The plan as a pull-request comment: a summary line, then one collapsible section per change,
//! destructive changes first, never longer than GitHub accepts.

use crate::plan::{Action, Change, IndexAction, Plan};
use crate::render::spec_diff;

/// GitHub rejects comments over 65,536 characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// A hidden marker by which CI finds its own comment to update instead of adding another.
pub const MARKER: &str = "<!-- labctl-plan -->";

/// Cap on one change's diff, so one huge change cannot crowd out all the others.
const MAX_SECTION: usize = 16_000;

pub fn plan(plan: &Plan) -> String {
    plan_within(plan, GITHUB_COMMENT_LIMIT)
}

pub fn plan_within(plan: &Plan, limit: usize) -> String {
    let footer = "\n_Run `labctl plan` locally for the full plan._\n";
    let sections = sections(plan);
    let mut out = header(plan);
    let mut shown = 0;
    for s in &sections {
        // Keep room for the truncation note.
        if out.len() + s.len() + footer.len() + 200 > limit {
            break;
        }
        out.push_str(s);
        shown += 1;
    }
    if shown < sections.len() {
        out.push_str(&format!(
            "\n> **Note:** {} more section{} not shown: the comment would exceed GitHub's limit.\n{footer}",
            sections.len() - shown,
            if sections.len() - shown == 1 { " is" } else { "s are" }
        ));
    }
    // A single enormous header cannot happen (names are short), but never exceed the limit.
    if out.len() > limit {
        let mut cut = limit - 100;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("\n\n> **Note:** truncated.\n");
    }
    out
}

/// The marker, headline, summary table and the index line: always shown.
fn header(plan: &Plan) -> String {
    let mut head = format!("{MARKER}\n### labctl plan: {}\n\n", headline(plan));
    head.push_str(&format!(
        "`{}` against `{}`{}\n\n",
        plan.manifest,
        plan.store,
        if plan.refreshed {
            ""
        } else {
            " (objects not checked: `--refresh=false`)"
        }
    ));
    let s = &plan.summary;
    head.push_str(&format!(
        "| create | replace | update | delete | unchanged | orphaned |\n|---:|---:|---:|---:|---:|---:|\n| {} | {} | {} | {} | {} | {} |\n\n",
        s.create, s.replace, s.update, s.delete, s.no_op, s.orphaned
    ));
    if plan.index.action == IndexAction::Write {
        head.push_str(&format!(
            "Consumer index rewritten ({}): {}\n\n",
            plan.index
                .files
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", "),
            html_escape(&plan.index.reasons.join("; "))
        ));
    }
    head
}

/// One collapsible section per change, destructive first, then the orphans kept.
fn sections(plan: &Plan) -> Vec<String> {
    let mut changes: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .collect();
    // Destructive first: they are what a reviewer must not miss.
    changes.sort_by_key(|c| match c.action {
        Action::Delete => 0,
        Action::Replace => 1,
        Action::Create => 2,
        Action::Update => 3,
        Action::NoOp => 4,
    });
    let mut sections: Vec<String> = changes.iter().map(|c| section(c)).collect();
    if !plan.orphans.is_empty() {
        let mut o = String::from("<details><summary>Orphaned records kept</summary>\n\n");
        for orphan in &plan.orphans {
            o.push_str(&format!(
                "- **{}** `{}`: {}\n",
                orphan.name, orphan.key, orphan.reason
            ));
        }
        o.push_str("\n</details>\n\n");
        sections.push(o);
    }
    sections
}

fn headline(plan: &Plan) -> String {
    if !plan.summary.has_changes() && plan.index.action == IndexAction::Write {
        "the consumer index is rewritten".to_string()
    } else if plan.summary.has_changes() {
        let s = &plan.summary;
        format!(
            "{} to create, {} to replace, {} to update, {} to delete",
            s.create, s.replace, s.update, s.delete
        )
    } else {
        "no changes".to_string()
    }
}

fn fence_for(text: &str) -> &'static str {
    if text.contains("```") {
        "~~~~"
    } else {
        "```"
    }
}

fn section(c: &Change) -> String {
    let mut s = format!(
        "<details><summary><code>{}</code> <b>{}</b> will be {}: {}</summary>\n\n",
        c.action.symbol(),
        c.name,
        c.action.verb(),
        html_escape(&crate::plan::reason::joined(&c.reasons, ", "))
    );
    s.push_str(&format!("- key: `{}`\n", c.key));
    if let Some(r) = &c.restore {
        s.push_str(&format!(
            "- restored from `{}` by a server-side copy (nothing downloaded)\n",
            r.key
        ));
    }
    if let Some(h) = &c.history {
        if h.keep_current {
            s.push_str(&format!(
                "- history: current bytes kept at `{}`\n",
                h.keep_key.as_deref().unwrap_or("history/…")
            ));
        }
        for key in &h.trim {
            s.push_str(&format!("- history: `{key}` deleted\n"));
        }
    }
    if let Some(after) = &c.after {
        let before = c.before.as_ref().and_then(|b| b.checksum.as_ref());
        let now = after
            .checksum
            .as_ref()
            .map(|c| format!("`{c}`"))
            .unwrap_or_else(|| "(known after apply)".into());
        match before {
            Some(b) => s.push_str(&format!("- checksum: `{b}` → {now}\n")),
            None => s.push_str(&format!("- checksum: {now}\n")),
        }
    }
    if !c.depends_on.is_empty() {
        s.push_str(&format!("- depends on: {}\n", c.depends_on.join(", ")));
    }
    if !c.field_changes.is_empty() {
        s.push_str("\n| field | before | after |\n|---|---|---|\n");
        for f in &c.field_changes {
            s.push_str(&format!(
                "| `{}` | {} | {} |\n",
                f.path,
                cell(f.before.as_deref()),
                cell(f.after.as_deref())
            ));
        }
    }
    if let (Some(before), Some(after)) = (c.before.as_ref().and_then(|b| b.spec.as_ref()), &c.after)
    {
        if !c.field_changes.is_empty() {
            let mut diff = spec_diff(before, &after.spec);
            if diff.len() > MAX_SECTION {
                let mut cut = MAX_SECTION;
                while !diff.is_char_boundary(cut) {
                    cut -= 1;
                }
                diff.truncate(cut);
                diff.push_str("\n… (diff truncated)\n");
            }
            let fence = fence_for(&diff);
            s.push_str(&format!("\n{fence}diff\n{diff}{fence}\n"));
        }
    }
    s.push_str("\n</details>\n\n");
    s
}

fn cell(v: Option<&str>) -> String {
    match v {
        None => "_(none)_".into(),
        Some(v) => format!("`{}`", v.replace('|', "\\|").replace('`', "'")),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Checksum;
    use crate::plan::{After, Before, Summary};

    fn change(i: usize, action: Action) -> Change {
        let spec = crate::spec::NormalizedSpec {
            name: format!("image-{i}"),
            destination: format!("i/{i}.raw"),
            source: crate::spec::SpecSource::Http {
                url: format!("https://v/{i}/{}", "x".repeat(300)),
                checksum: crate::spec::SpecChecksum::Digest(Checksum::sha256(b"a")),
                decompress: None,
                signature: None,
            },
            expected: None,
            depends_on: vec![],
            protect: false,
            history: 0,
        };
        let mut old = spec.clone();
        if let crate::spec::SpecSource::Http { url, .. } = &mut old.source {
            *url = "https://old".into();
        }
        Change {
            name: format!("image-{i}"),
            key: format!("images/i/{i}.raw"),
            record_key: format!("metadata/i/{i}.raw.json"),
            action,
            reasons: vec!["source url changed".into()],
            depends_on: vec![],
            before: Some(Box::new(Before {
                checksum: Some(Checksum::sha256(b"a")),
                size: Some(1),
                fingerprint: None,
                uploaded_at: None,
                legacy: false,
                spec: Some(old.clone()),
                sha256: None,
                history: vec![],
            })),
            after: Some(Box::new(After {
                checksum: Some(Checksum::sha256(b"a")),
                source_checksum: None,
                fingerprint: None,
                spec: spec.clone(),
                pgp_key: None,
                dependencies: Default::default(),
                unknown: vec![],
            })),
            field_changes: crate::plan::fields::diff(&old.to_json(), &spec.to_json()),
            restore: None,
            history: None,
            adopt: None,
        }
    }

    fn big_plan(n: usize) -> Plan {
        let changes: Vec<Change> = (0..n)
            .map(|i| {
                change(
                    i,
                    if i % 2 == 0 {
                        Action::Update
                    } else {
                        Action::Replace
                    },
                )
            })
            .collect();
        Plan {
            format_version: "1.0".into(),
            labctl_version: "0".into(),
            manifest: "m.yaml".into(),
            manifest_digest: Checksum::sha256(b"m"),
            store: "file:///s".into(),
            refreshed: true,
            prune: false,
            index: Default::default(),
            summary: Summary {
                update: n / 2,
                replace: n - n / 2,
                ..Default::default()
            },
            changes,
            orphans: vec![],
            prior_state: Default::default(),
        }
    }

    #[test]
    fn huge_plans_are_truncated_under_githubs_limit_with_a_note() {
        let md = plan(&big_plan(2000));
        assert!(md.chars().count() <= GITHUB_COMMENT_LIMIT, "{}", md.len());
        assert!(
            md.contains("more sections are not shown"),
            "{}",
            &md[md.len() - 300..]
        );
        assert!(md.starts_with(MARKER));
        // Destructive changes come first, so what is cut is the least dangerous.
        let first = md.find("will be ").unwrap();
        assert!(md[first..].starts_with("will be replaced"));
        // Every section that is shown is whole.
        assert_eq!(
            md.matches("<details>").count(),
            md.matches("</details>").count()
        );
    }

    #[test]
    fn small_plans_are_not_truncated() {
        let md = plan(&big_plan(3));
        assert!(!md.contains("not shown"));
        assert_eq!(md.matches("<details>").count(), 3);
    }

    #[test]
    fn an_index_rewrite_is_shown_even_without_image_changes() {
        let mut p = big_plan(0);
        p.index = crate::plan::IndexPlan {
            action: IndexAction::Write,
            reasons: vec!["images/SHA256SUMS is missing".into()],
            files: crate::plan::index_files(true),
            ..Default::default()
        };
        let md = plan(&p);
        assert!(
            md.contains("### labctl plan: the consumer index is rewritten"),
            "{md}"
        );
        assert!(
            md.contains("Consumer index rewritten (`images/index.json`, `images/SHA256SUMS`, `images/SHA256SUMS.minisig`): images/SHA256SUMS is missing"),
            "{md}"
        );
        let human = crate::render::human::plan(&p);
        assert!(
            human.contains("the consumer index will be rewritten"),
            "{human}"
        );
        assert!(
            human.contains("because images/SHA256SUMS is missing"),
            "{human}"
        );
    }

    #[test]
    fn diffs_with_backtick_fences_use_another_fence() {
        assert_eq!(fence_for("a ``` b"), "~~~~");
        assert_eq!(fence_for("plain"), "```");
    }
}

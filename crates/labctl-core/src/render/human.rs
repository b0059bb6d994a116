//! The plan for a person at a terminal, in Terraform's spirit. Colors come from `console`, which
//! the caller turns off for `NO_COLOR` and non-terminals.

use console::style;

use crate::plan::{Action, Change, HistoryPlan, IndexAction, IndexPlan, Plan};
use crate::render::spec_diff;

pub fn plan(plan: &Plan) -> String {
    let mut out = String::new();
    let changed: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .collect();
    if !plan.refreshed {
        out.push_str(&format!(
            "{} objects were not checked (--refresh=false): drift in the store is not shown.\n\n",
            style("Note:").yellow().bold()
        ));
    }
    if changed.is_empty() && plan.index.action == IndexAction::NoOp {
        out.push_str(&format!(
            "{} The store matches the manifest.\n",
            style("No changes.").green().bold()
        ));
    } else if changed.is_empty() {
        out.push_str("labctl will perform the following actions:\n");
    } else {
        out.push_str("labctl will perform the following actions:\n");
        for c in &changed {
            out.push('\n');
            change(&mut out, c);
        }
    }
    if plan.index.action == IndexAction::Write {
        out.push('\n');
        index(&mut out, &plan.index);
    }
    let unchanged = plan.summary.no_op;
    if unchanged > 0 && !changed.is_empty() {
        out.push_str(&format!(
            "\n{} image{} unchanged.\n",
            unchanged,
            if unchanged == 1 { "" } else { "s" }
        ));
    }
    if !plan.orphans.is_empty() {
        out.push_str(&format!(
            "\n{}\n",
            style(if plan.prune {
                "Orphaned records kept:"
            } else {
                "Orphaned records (kept; `--prune` plans their deletion):"
            })
            .yellow()
        ));
        for o in &plan.orphans {
            out.push_str(&format!(
                "  {} {}  {}  ({})\n",
                style("!").yellow(),
                style(&o.name).bold(),
                o.key,
                o.reason
            ));
        }
    }
    out.push_str(&format!("\n{}\n", style(plan.summary_line()).bold()));
    out
}

/// The consumer index, on its own line: it changes whenever an image does, and on its own when
/// it is missing or out of date.
fn index(out: &mut String, index: &IndexPlan) {
    out.push_str(&format!(
        "  {} {} will be rewritten\n",
        style("#").dim(),
        style("the consumer index").bold()
    ));
    out.push_str(&format!(
        "{:>5} index  {}\n",
        style("~").yellow().bold(),
        index.files.join(", ")
    ));
    let pad = "        ";
    if !index.reasons.is_empty() {
        out.push_str(&format!(
            "{pad}{} {}\n",
            style("because").dim(),
            index.reasons.join("; ")
        ));
    }
    for key in &index.deletes {
        out.push_str(&format!("{pad}{} {key} is deleted\n", style("-").red()));
    }
}

fn history(out: &mut String, h: &HistoryPlan, pad: &str) {
    if h.keep_current {
        out.push_str(&format!(
            "{pad}history: the current bytes are kept at {} (server-side copy)\n",
            h.keep_key
                .as_deref()
                .unwrap_or("history/… (sha256 read from the object first)")
        ));
    }
    for key in &h.trim {
        out.push_str(&format!(
            "{pad}history: {} {key} is deleted\n",
            style("-").red()
        ));
    }
    if h.limit > 0 {
        out.push_str(&format!(
            "{pad}history: {} of {} kept afterwards\n",
            h.kept, h.limit
        ));
    }
}

fn symbol(action: Action) -> console::StyledObject<&'static str> {
    let s = style(action.symbol());
    match action {
        Action::Create => s.green(),
        Action::Replace => s.magenta(),
        Action::Update => s.yellow(),
        Action::Delete => s.red(),
        Action::NoOp => s,
    }
    .bold()
}

fn change(out: &mut String, c: &Change) {
    out.push_str(&format!(
        "  {} {} will be {}\n",
        style("#").dim(),
        style(&c.name).bold(),
        c.action.verb()
    ));
    out.push_str(&format!("{:>5} {}  {}\n", symbol(c.action), c.name, c.key));
    let pad = "        ";
    if !c.reasons.is_empty() {
        out.push_str(&format!(
            "{pad}{} {}\n",
            style("because").dim(),
            crate::plan::reason::joined(&c.reasons, ", ")
        ));
    }
    if let Some(r) = &c.restore {
        out.push_str(&format!(
            "{pad}restored from {} by a server-side copy: nothing is downloaded\n",
            r.key
        ));
    }
    if let Some(h) = &c.history {
        history(out, h, pad);
    }
    if let Some(after) = &c.after {
        if c.action != Action::Update {
            let checksum = match &after.checksum {
                Some(sum) => sum.to_string(),
                None => "(known after apply)".to_string(),
            };
            let before = c.before.as_ref().and_then(|b| b.checksum.as_ref());
            match before {
                Some(b) if Some(b) != after.checksum.as_ref() => out.push_str(&format!(
                    "{pad}checksum: {} {} {}\n",
                    style(b).red(),
                    style("→").dim(),
                    style(checksum).green()
                )),
                _ => out.push_str(&format!("{pad}checksum: {checksum}\n")),
            }
        }
        if !after.dependencies.is_empty() {
            let deps: Vec<&str> = after.dependencies.keys().map(String::as_str).collect();
            out.push_str(&format!("{pad}depends on: {}\n", deps.join(", ")));
        }
    }
    for f in &c.field_changes {
        out.push_str(&format!(
            "{pad}{} {}: {} {} {}\n",
            style("~").yellow(),
            f.path,
            style(f.before.as_deref().unwrap_or("(none)")).red(),
            style("→").dim(),
            style(f.after.as_deref().unwrap_or("(none)")).green()
        ));
    }
    if let (Some(before), Some(after)) = (
        c.before.as_ref().and_then(|b| b.spec.as_ref()),
        c.after.as_ref(),
    ) {
        if !c.field_changes.is_empty() {
            for line in spec_diff(before, &after.spec).lines() {
                let styled = if line.starts_with("+++") || line.starts_with("---") {
                    style(line).bold()
                } else if line.starts_with('+') {
                    style(line).green()
                } else if line.starts_with('-') {
                    style(line).red()
                } else if line.starts_with("@@") {
                    style(line).cyan()
                } else {
                    style(line)
                };
                out.push_str(&format!("{pad}{styled}\n"));
            }
        }
    }
}

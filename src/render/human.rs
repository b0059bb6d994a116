//! The plan for a person at a terminal, in Terraform's spirit. Colors come from `console`, which
//! the caller turns off for `NO_COLOR` and non-terminals.

use console::style;

use crate::plan::{Action, Change, Plan};
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
    if changed.is_empty() {
        out.push_str(&format!(
            "{} The store matches the manifest.\n",
            style("No changes.").green().bold()
        ));
    } else {
        out.push_str("labctl will perform the following actions:\n");
        for c in &changed {
            out.push('\n');
            change(&mut out, c);
        }
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
            c.reasons.join(", ")
        ));
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

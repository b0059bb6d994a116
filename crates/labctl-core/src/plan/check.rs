//! A saved plan file is input like any other: hand-edited or corrupted, it is refused with a
//! clear error before apply executes anything. Apply trusts a plan's keys and order; this is
//! what makes that safe — every key is the one its image owns, and dependencies come first, so
//! there is no cycle to wait on.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::{object_key, record_key, schema::check_relative_key, IMAGES_PREFIX};
use crate::plan::{Action, Change, IndexAction, Plan, Summary, FORMAT_VERSION};

/// Everything wrong with a plan, each naming where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

/// Checks what serde cannot: versions, keys, names, dependency order, index files, counts.
pub fn check(plan: &Plan) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    if let Err(why) = compatible(&plan.format_version) {
        // Nothing else can be judged in a format this labctl does not know.
        return Err(Invalid(vec![why]));
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for (i, change) in plan.changes.iter().enumerate() {
        let at = format!("change {} (`{}`)", i + 1, change.name);
        // A moved image is a change at its new key and a delete of its old one, under one
        // name; otherwise a name, and always a key, appears once.
        if change.action != Action::Delete && seen.insert(change.name.as_str(), i).is_some() {
            problems.push(format!("{at}: the image appears twice"));
        }
        if !keys.insert(change.key.as_str()) {
            problems.push(format!("{at}: `{}` appears twice", change.key));
        }
        if let Err(why) = owned_keys(&change.key, &change.record_key) {
            problems.push(format!("{at}: {why}"));
        }
        for dep in &change.depends_on {
            // Dependencies first: a plan lists them before their dependents, which also rules
            // out a cycle.
            let earlier = seen.get(dep.as_str()).is_some_and(|&j| j < i);
            if !earlier {
                problems.push(format!(
                    "{at}: depends on `{dep}`, which is not an earlier change in the plan"
                ));
            }
        }
        let shape = match change.action {
            Action::Create | Action::Replace | Action::Update => change.after.is_some(),
            Action::Delete => change.before.is_some() && change.after.is_none(),
            Action::NoOp => true,
        };
        if !shape {
            problems.push(format!(
                "{at}: a {} without the {} it needs",
                change.action,
                if change.action == Action::Delete {
                    "`before` (and no `after`)"
                } else {
                    "`after`"
                }
            ));
        }
        if change.adopt.is_some() && change.action != Action::Update {
            problems.push(format!("{at}: only an update adopts an object"));
        }
        if change.restore.is_some() && change.action != Action::Replace {
            problems.push(format!("{at}: only a replace restores from history"));
        }
        if let Err(why) = history_keys(change) {
            problems.push(format!("{at}: {why}"));
        }
    }
    for orphan in &plan.orphans {
        if let Err(why) = owned_keys(&orphan.key, &orphan.record_key) {
            problems.push(format!("orphan `{}`: {why}", orphan.name));
        }
    }
    for key in plan.prior_state.keys() {
        if crate::manifest::destination_of_record_key(key).is_none() {
            problems.push(format!(
                "prior_state names `{key}`, which is not a record key"
            ));
        }
    }
    problems.extend(index_problems(plan));
    if plan.summary != counted(&plan.changes, &plan.orphans) {
        problems.push("the summary does not count the changes the plan lists".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

/// The same major version, and no newer minor: a newer labctl's additions may carry meaning
/// (`adopt`, `restore`) that this one would silently drop.
fn compatible(version: &str) -> Result<(), String> {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let (major, minor) = v.split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    let ours = parse(FORMAT_VERSION).expect("FORMAT_VERSION is major.minor");
    match parse(version) {
        Some((major, minor)) if major == ours.0 && minor <= ours.1 => Ok(()),
        Some((major, _)) if major == ours.0 => Err(format!(
            "plan format {version} was written by a newer labctl (this one reads up to {FORMAT_VERSION}); upgrade labctl"
        )),
        Some(_) => Err(format!(
            "plan format {version} is not one this labctl reads ({FORMAT_VERSION})"
        )),
        None => Err(format!("`{version}` is not a plan format version")),
    }
}

/// An image's object key and record key: `images/<destination>` and the record of the same
/// destination, nothing else (not a record, not the lock, not outside the store).
fn owned_keys(key: &str, record: &str) -> Result<(), String> {
    let destination = key
        .strip_prefix(IMAGES_PREFIX)
        .ok_or_else(|| format!("key `{key}` is not under {IMAGES_PREFIX}"))?;
    check_relative_key(destination).map_err(|why| format!("key `{key}`: {why}"))?;
    if crate::consumer_index::is_index_key(key) {
        return Err(format!("key `{key}` is the consumer index"));
    }
    if object_key(destination) != key || record_key(destination) != record {
        return Err(format!(
            "record key `{record}` does not belong to `{key}` (expected `{}`)",
            record_key(destination)
        ));
    }
    Ok(())
}

/// Whether `key` is a kept version of the image published at `object_key`: a plan never makes
/// apply copy from or delete anything else.
pub fn is_history_of(object_key: &str, key: &str) -> bool {
    let Some(destination) = object_key.strip_prefix(IMAGES_PREFIX) else {
        return false;
    };
    key.strip_prefix(crate::manifest::HISTORY_PREFIX)
        .and_then(|rest| rest.strip_prefix(destination))
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Every history key a change names belongs to its own image.
pub fn history_keys(change: &Change) -> Result<(), String> {
    let trim = change.history.iter().flat_map(|h| h.trim.iter());
    let keep = change.history.iter().flat_map(|h| h.keep_key.iter());
    let restore = change.restore.iter().map(|r| &r.key);
    let listed = change
        .before
        .iter()
        .flat_map(|b| b.history.iter().map(|h| &h.key));
    for key in trim.chain(keep).chain(restore).chain(listed) {
        if !is_history_of(&change.key, key) {
            return Err(format!(
                "names `{key}` as a kept version of `{}`, which it is not",
                change.key
            ));
        }
    }
    Ok(())
}

fn index_problems(plan: &Plan) -> Vec<String> {
    let index = &plan.index;
    let mut out = Vec::new();
    let expected = match index.action {
        IndexAction::Write => crate::plan::index_files(index.signed),
        IndexAction::NoOp => Vec::new(),
    };
    if index.files != expected {
        out.push(format!(
            "the index files must be {expected:?}, not {:?}",
            index.files
        ));
    }
    let signature = crate::consumer_index::SIGNATURE_KEY;
    if index.deletes.iter().any(|k| k != signature) {
        out.push(format!("the index may only delete `{signature}`"));
    }
    let images: BTreeSet<&str> = plan
        .changes
        .iter()
        .map(|c| c.key.as_str())
        .chain(plan.orphans.iter().map(|o| o.key.as_str()))
        .collect();
    for b in &index.backfill {
        if let Err(why) = owned_keys(&b.key, &b.record_key) {
            out.push(format!("backfill `{}`: {why}", b.name));
        } else if !images.contains(b.key.as_str()) && !plan.prior_state.contains_key(&b.record_key)
        {
            out.push(format!("backfill `{}`: no record the plan read", b.name));
        }
    }
    out
}

/// The summary of these changes and orphans.
pub fn counted(changes: &[Change], orphans: &[crate::plan::Orphan]) -> Summary {
    let mut s = Summary {
        orphaned: orphans.len(),
        ..Default::default()
    };
    for c in changes {
        match c.action {
            Action::Create => s.create += 1,
            Action::Replace => s.replace += 1,
            Action::Update => s.update += 1,
            Action::Delete => s.delete += 1,
            Action::NoOp => s.no_op += 1,
        }
    }
    s
}

#[cfg(test)]
mod tests;

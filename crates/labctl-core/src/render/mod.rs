//! Turning a plan into text: for a terminal, for a pull-request comment, or as JSON; and the
//! records `labctl list` shows.

pub mod human;
pub mod list;
pub mod markdown;

use crate::plan::Plan;
use crate::spec::NormalizedSpec;

/// The plan as its documented, versioned JSON.
pub fn json(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(plan).expect("plans always serialize");
    s.push('\n');
    s
}

/// A unified diff of a file's text before and after an edit (`labctl bump` without --write).
pub fn text_diff(name: &str, before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{name}"), &format!("b/{name}"))
        .to_string()
}

/// A unified diff of the record's spec against the manifest's, as pretty JSON.
pub fn spec_diff(before: &NormalizedSpec, after: &NormalizedSpec) -> String {
    // Through JSON values, whose keys are sorted: both sides list fields in one order.
    let old = serde_json::to_string_pretty(&before.to_json()).expect("serializes") + "\n";
    let new = serde_json::to_string_pretty(&after.to_json()).expect("serializes") + "\n";
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header("record", "manifest")
        .to_string()
}

//! A saved plan is applied only to the world it was computed from.

use std::collections::BTreeMap;

use crate::plan::{Desired, Plan, FORMAT_VERSION};

/// Every reason the saved plan no longer describes what apply would do; empty when it is fresh.
pub fn reasons(
    plan: &Plan,
    manifest_digest: &crate::checksum::Checksum,
    store_url: &str,
    desired: &[Desired],
    records_now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let major = |v: &str| v.split('.').next().unwrap_or("").to_string();
    if major(&plan.format_version) != major(FORMAT_VERSION) {
        out.push(format!(
            "the plan has format version {}, this labctl reads {}",
            plan.format_version, FORMAT_VERSION
        ));
        return out;
    }
    if &plan.manifest_digest != manifest_digest {
        out.push(format!(
            "the manifest `{}` changed since the plan was made",
            plan.manifest
        ));
    }
    if plan.store != store_url {
        out.push(format!(
            "the plan was made for {}, not {store_url}",
            plan.store
        ));
    }
    for (key, etag) in &plan.prior_state {
        match records_now.get(key) {
            None => out.push(format!("record `{key}` was deleted")),
            Some(now) if now != etag => out.push(format!("record `{key}` changed")),
            _ => {}
        }
    }
    for key in records_now.keys() {
        if !plan.prior_state.contains_key(key) {
            out.push(format!("record `{key}` was added"));
        }
    }
    // The manifest is the same file, but what it points at (a Packer template) may have changed.
    for d in desired {
        let now = &d.spec;
        let planned = plan
            .changes
            .iter()
            .find(|c| c.name == d.spec.name)
            .and_then(|c| c.after.as_ref())
            .map(|a| &a.spec);
        if planned != Some(now) {
            out.push(format!("the desired spec of `{}` changed", d.spec.name));
        }
    }
    out
}

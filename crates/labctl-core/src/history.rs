//! Kept versions of an image (`history: N`): which entries a record lists after a change,
//! which history objects go, and what `labctl history` lists.

use serde::Serialize;

use crate::checksum::Checksum;
use crate::plan::HistoryPlan;
use crate::state::record::HistoryEntry;
use crate::state::ActualState;

/// Version of the `labctl history --json` output.
pub const FORMAT_VERSION: &str = "1.0";

/// `labctl history --json`.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub format_version: &'static str,
    pub store: String,
    pub images: Vec<ImageHistory>,
}

/// One image's current bytes and its kept versions.
#[derive(Debug, Serialize)]
pub struct ImageHistory {
    pub name: String,
    pub key: String,
    /// The current object.
    pub checksum: Checksum,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded_at: Option<String>,
    /// Kept versions, newest first, as the state record lists them.
    pub history: Vec<HistoryEntry>,
}

/// Each readable record's current bytes and kept versions (only `name`'s, when given), by name.
pub fn images(state: &ActualState, name: Option<&str>) -> Vec<ImageHistory> {
    let mut images: Vec<ImageHistory> = state
        .records
        .values()
        .filter_map(|r| {
            let rec = r.record.as_ref().ok()?;
            Some(ImageHistory {
                name: rec.name().unwrap_or(&r.object_key).to_string(),
                key: r.object_key.clone(),
                checksum: rec.checksum().clone(),
                sha256: rec.sha256(),
                size: rec.size(),
                uploaded_at: rec.uploaded_at().map(str::to_string),
                history: rec.history().to_vec(),
            })
        })
        .filter(|i| name.is_none_or(|n| n == i.name))
        .collect();
    images.sort_by(|a, b| a.name.cmp(&b.name));
    images
}

/// The record's history after a change, newest first, and the history keys to delete once the
/// record is written.
///
/// `kept` is the version just copied into the history (if any), `before` what the record listed,
/// `current` the sha256 of the object the image has after the change (a version equal to it is
/// the object itself, not history).
pub fn after_change(
    kept: Option<HistoryEntry>,
    before: &[HistoryEntry],
    plan: Option<&HistoryPlan>,
    current: Option<&Checksum>,
    limit: u32,
) -> (Vec<HistoryEntry>, Vec<String>) {
    let trim: &[String] = plan.map(|p| p.trim.as_slice()).unwrap_or_default();
    let mut list: Vec<HistoryEntry> = Vec::new();
    let mut delete: Vec<String> = Vec::new();
    for entry in kept.into_iter().chain(before.iter().cloned()) {
        let is_current = current == Some(&entry.sha256);
        if list.iter().any(|e| e.key == entry.key) {
            continue;
        }
        if trim.contains(&entry.key) || is_current || list.len() >= limit as usize {
            if !delete.contains(&entry.key) {
                delete.push(entry.key);
            }
        } else {
            list.push(entry);
        }
    }
    // A key still listed (a copy made again under the same name) is never deleted.
    delete.retain(|k| !list.iter().any(|e| &e.key == k));
    (list, delete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: &str) -> HistoryEntry {
        let sha = Checksum::sha256(v.as_bytes());
        HistoryEntry {
            checksum: sha.clone(),
            key: format!("history/a.raw/{}", sha.hex()),
            sha256: sha,
            size: v.len() as u64,
            source_url: Some(format!("https://v/{v}")),
            uploaded_at: "2026-01-01T00:00:00Z".into(),
            kept_at: "2026-02-01T00:00:00Z".into(),
        }
    }

    fn keys(list: &[HistoryEntry]) -> Vec<&str> {
        list.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn newest_first_trimmed_to_the_limit() {
        let (v1, v2, v3) = (entry("v1"), entry("v2"), entry("v3"));
        let (list, delete) = after_change(
            Some(v3.clone()),
            &[v2.clone(), v1.clone()],
            None,
            Some(&Checksum::sha256(b"v4")),
            2,
        );
        assert_eq!(keys(&list), [v3.key.as_str(), v2.key.as_str()]);
        assert_eq!(delete, std::slice::from_ref(&v1.key));
    }

    #[test]
    fn a_restored_version_leaves_the_history() {
        let (v1, v2, v3) = (entry("v1"), entry("v2"), entry("v3"));
        let plan = HistoryPlan {
            keep_current: true,
            keep_key: Some(v3.key.clone()),
            trim: vec![v1.key.clone()],
            kept: 2,
            limit: 2,
        };
        let (list, delete) = after_change(
            Some(v3.clone()),
            &[v2.clone(), v1.clone()],
            Some(&plan),
            Some(&v1.sha256),
            2,
        );
        assert_eq!(keys(&list), [v3.key.as_str(), v2.key.as_str()]);
        assert_eq!(delete, std::slice::from_ref(&v1.key));
    }

    #[test]
    fn the_same_bytes_are_kept_once_and_never_deleted_while_listed() {
        let v2 = entry("v2");
        let (list, delete) =
            after_change(Some(v2.clone()), std::slice::from_ref(&v2), None, None, 3);
        assert_eq!(keys(&list), [v2.key.as_str()]);
        assert!(delete.is_empty());
    }

    #[test]
    fn a_limit_of_zero_deletes_everything() {
        let (v1, v2) = (entry("v1"), entry("v2"));
        let (list, delete) = after_change(None, &[v2.clone(), v1.clone()], None, None, 0);
        assert!(list.is_empty());
        assert_eq!(delete, [v2.key, v1.key]);
    }
}

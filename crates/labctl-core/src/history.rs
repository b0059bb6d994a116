//! Kept versions of an image (`history: N`): which entries a record lists after a change, and
//! which history objects go.

use crate::checksum::Checksum;
use crate::plan::HistoryPlan;
use crate::state::record::HistoryEntry;

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

//! Field-by-field comparison of two normalized specs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Dotted path, e.g. `source.url` or `source.variables.iso_url`.
    pub path: String,
    /// JSON text of the old value; `None` when the field is new.
    pub before: Option<String>,
    /// JSON text of the new value; `None` when the field is gone.
    pub after: Option<String>,
}

/// The leaves that differ between `before` and `after`, in path order.
pub fn diff(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut a = Vec::new();
    let mut b = Vec::new();
    flatten("", before, &mut a);
    flatten("", after, &mut b);
    let mut paths: Vec<&String> = a
        .iter()
        .map(|(p, _)| p)
        .chain(b.iter().map(|(p, _)| p))
        .collect();
    paths.sort();
    paths.dedup();
    let lookup = |list: &[(String, String)], p: &str| {
        list.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone())
    };
    paths
        .into_iter()
        .filter_map(|p| {
            let (old, new) = (lookup(&a, p), lookup(&b, p));
            (old != new).then(|| FieldChange {
                path: p.clone(),
                before: old,
                after: new,
            })
        })
        .collect()
}

/// Objects are walked into; arrays and scalars are compared whole, so `dependsOn` reads as one
/// field.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        Value::Null => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_changed_added_and_removed_leaves() {
        let before = json!({"name": "a", "source": {"url": "u1", "variables": {"x": "1"}}, "dependsOn": ["b"]});
        let after = json!({"name": "a", "source": {"url": "u2", "variables": {"y": "2"}}, "dependsOn": ["b", "c"]});
        let changes = diff(&before, &after);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dependsOn",
                "source.url",
                "source.variables.x",
                "source.variables.y"
            ]
        );
        assert_eq!(changes[1].before.as_deref(), Some("\"u1\""));
        assert_eq!(changes[2].after, None);
        assert_eq!(changes[3].before, None);
    }

    #[test]
    fn equal_specs_have_no_changes() {
        let v = json!({"a": {"b": [1, 2]}});
        assert!(diff(&v, &v).is_empty());
    }
}

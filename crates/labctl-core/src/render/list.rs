//! `labctl list`: the records in the store, as a table for people and as the documented JSON.

use crate::state::record::Record;
use crate::state::ActualState;
use crate::units::human_size;

/// The records as a table: name, key, size, checksum, upload time; an unreadable record says
/// so in its row.
pub fn table(state: &ActualState) -> String {
    let rows: Vec<[String; 5]> = state
        .records
        .values()
        .map(|r| {
            let (name, size, checksum, uploaded) = match &r.record {
                Ok(rec) => (
                    rec.name().unwrap_or("?").to_string(),
                    rec.size().map(human_size).unwrap_or_else(|| "?".into()),
                    rec.checksum().short(),
                    rec.uploaded_at().unwrap_or("?").to_string()
                        + if matches!(rec, Record::Legacy(_)) {
                            " (legacy)"
                        } else {
                            ""
                        },
                ),
                Err(_) => ("(unreadable)".into(), "?".into(), "?".into(), "?".into()),
            };
            [name, r.object_key.clone(), size, checksum, uploaded]
        })
        .collect();
    table_of(&["NAME", "KEY", "SIZE", "CHECKSUM", "UPLOADED AT"], &rows)
}

/// Version of the `labctl list --json` document. Additive changes bump the minor version.
pub const FORMAT_VERSION: &str = "1.0";

/// `labctl list --json`: the records as data (full checksums, sizes in bytes), not the table's
/// display text. An unreadable record says why instead of what.
pub fn document(store: &str, state: &ActualState) -> serde_json::Value {
    let records: Vec<serde_json::Value> = state
        .records
        .values()
        .map(|r| match &r.record {
            Ok(rec) => serde_json::json!({
                "name": rec.name(),
                "key": r.object_key,
                "record_key": r.record_key,
                "size": rec.size(),
                "checksum": rec.checksum().to_string(),
                "sha256": rec.sha256().map(|c| c.hex().to_string()),
                "uploaded_at": rec.uploaded_at(),
                "source_url": rec.source_url(),
                "legacy": matches!(rec, Record::Legacy(_)),
            }),
            Err(why) => serde_json::json!({
                "key": r.object_key,
                "record_key": r.record_key,
                "error": why.to_string(),
            }),
        })
        .collect();
    serde_json::json!({
        "format_version": FORMAT_VERSION,
        "store": store,
        "records": records,
    })
}

/// Cells longer than this are cut with `…`: a record is data from the store, and one enormous
/// field must not turn the table into megabytes of spaces.
const MAX_CELL: usize = 120;

fn cell(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_CELL {
        text.chars().take(MAX_CELL - 1).collect::<String>() + "…"
    } else {
        text
    }
}

fn table_of(header: &[&str; 5], rows: &[[String; 5]]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Padded by hand: `format!("{:<w$}")` panics for widths above 65,535.
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enormous_and_hostile_cells_neither_panic_nor_flood() {
        let huge = "x".repeat(70_000);
        let rows = vec![[
            huge.clone(),
            "images/a\nb".into(),
            "1 B".into(),
            "sha256:abc".into(),
            huge,
        ]];
        let out = table_of(&["NAME", "KEY", "SIZE", "CHECKSUM", "UPLOADED AT"], &rows);
        assert!(out.len() < 1_000, "{}", out.len());
        assert_eq!(out.lines().count(), 2);
        assert!(out.contains('…'));
    }
}

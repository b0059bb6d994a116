//! Commands do not import each other: what two commands share lives in a module of its own
//! (planning, the store lock, saved plans, the run's context, tracked images), or in
//! `commands/mod.rs`. Checked on the source, so that the next shortcut fails a test.

use std::path::Path;

#[test]
fn no_command_imports_another() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/commands");
    let commands: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .filter(|name| name != "mod")
        .collect();
    assert!(commands.len() > 10, "{commands:?}");
    let mut found = Vec::new();
    for command in &commands {
        let text = std::fs::read_to_string(dir.join(format!("{command}.rs"))).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for other in commands.iter().filter(|o| *o != command) {
            for spelling in [
                format!("super::{other}::"),
                format!("super::{other}::{{"),
                format!("commands::{other}::"),
            ] {
                if code.contains(&spelling) {
                    found.push(format!("{command} uses {spelling}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

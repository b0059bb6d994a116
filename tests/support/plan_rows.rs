//! Reading a JSON plan as `(name, action, reasons)` rows, for exact-action assertions.

pub type Row = (String, String, Vec<String>);

/// Every change of a JSON plan, in plan order.
pub fn actions(plan: &serde_json::Value) -> Vec<Row> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["action"].as_str().unwrap().to_string(),
                c["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

pub fn row(name: &str, action: &str, reasons: &[&str]) -> Row {
    (
        name.to_string(),
        action.to_string(),
        reasons.iter().map(|s| s.to_string()).collect(),
    )
}

//! Seeded mutation testing of everything labctl reads that someone else may have written: the
//! manifest (from a pull request), state records (from the store) and plan files. Each case
//! mutates a real example — bytes flipped, cut, repeated, tokens inserted, JSON values swapped
//! for hostile ones — and runs it through what labctl does with it: validation, planning,
//! rendering, checking. No case may panic.
//!
//! `LABCTL_MUTATION_SEED` and `LABCTL_MUTATION_CASES` reproduce or widen a run; a failure prints
//! the seed of its case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use labctl::plan::{Desired, Plan, PlanContext, PlanOptions};
use labctl::state::{ActualRecord, ActualState, ObjectState};

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Text that tends to break parsers and formatters.
const TOKENS: [&str; 24] = [
    "{{ images.",
    "{{ images.x.url }}",
    "&a ",
    "*a",
    "<<: *a",
    "../",
    "/etc/passwd",
    "\u{0}",
    "\u{202e}",
    "99999999999999999999999",
    "-1",
    "1e999",
    "0x1F",
    "null",
    "[]",
    "{}",
    "- ",
    ": ",
    "\n  ",
    "\"",
    "'",
    "sha256:",
    "file:",
    "https://",
];

/// Values a hostile record or plan might hold instead of the real one.
fn hostile_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(12) {
        0 => json!(null),
        1 => json!("x".repeat(70_000)),
        2 => json!(u64::MAX),
        3 => json!(-1),
        4 => json!(1.5e300),
        5 => json!([]),
        6 => json!({}),
        7 => json!("../../etc/passwd"),
        8 => json!("sha256:zz"),
        9 => json!(true),
        10 => json!([[[[[[[[[[1]]]]]]]]]]),
        _ => json!(TOKENS[rng.below(TOKENS.len())]),
    }
}

fn mutate_bytes(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            1 => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let end = (at + rng.below(256)).min(out.len());
                let piece = out[at..end].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, piece);
            }
            3 => {
                let token = rng.pick(&TOKENS).as_bytes().to_vec();
                out.splice(at..at, token);
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// Replaces one value somewhere in a JSON document with a hostile one.
fn mutate_json(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(input) else {
        return mutate_bytes(rng, input);
    };
    for _ in 0..=rng.below(3) {
        let mut node = &mut value;
        // Walk down a random path, stopping at a random depth.
        loop {
            let len = match node {
                serde_json::Value::Object(m) => m.len(),
                serde_json::Value::Array(a) => a.len(),
                _ => 0,
            };
            if len == 0 || rng.below(4) == 0 {
                break;
            }
            let i = rng.below(len);
            node = match node {
                serde_json::Value::Object(m) => m.values_mut().nth(i).expect("in range"),
                serde_json::Value::Array(a) => &mut a[i],
                _ => unreachable!(),
            };
        }
        *node = hostile_value(rng);
    }
    serde_json::to_vec(&value).expect("JSON values serialize")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with(".labctl-fs") {
            files_under(&path, suffix, out);
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
}

/// The example state, records keyed as a refresh would key them.
fn actual_from(records: &[(String, Vec<u8>)]) -> ActualState {
    let mut state = ActualState {
        refreshed: false,
        ..Default::default()
    };
    for (key, bytes) in records {
        let Some(destination) = labctl::manifest::destination_of_record_key(key) else {
            continue;
        };
        state.records.insert(
            key.clone(),
            ActualRecord {
                record_key: key.clone(),
                object_key: labctl::manifest::object_key(destination),
                etag: "\"e\"".into(),
                record: labctl::state::record::parse(bytes).map_err(Into::into),
                object: ObjectState::NotChecked,
                listed: None,
                object_listed: None,
            },
        );
    }
    state
}

fn rules() -> labctl::manifest::schema::Rules {
    labctl::manifest::schema::Rules {
        allow_insecure_loopback: true,
        allow_pin: true,
    }
}

fn desired_of(text: &[u8]) -> Option<Vec<Desired>> {
    let base = repo().join("images");
    let (manifest, graph) = labctl::manifest::parse(
        text,
        &base.join("images.yaml"),
        &base,
        &labctl::manifest_dir::Directory(base.clone()),
        rules(),
    )
    .ok()?;
    labctl::desired::build(&manifest, &graph).ok()
}

/// Plans, renders and checks: what `plan`, `drift` and `apply` do with these inputs.
fn plan_and_render(desired: &[Desired], actual: &ActualState, prune: bool) -> Option<Plan> {
    let plan = labctl::plan::compute(
        desired,
        actual,
        &PlanOptions {
            prune,
            ..Default::default()
        },
        PlanContext {
            manifest: "images.yaml".into(),
            manifest_digest: labctl::checksum::Checksum::sha256(b"m"),
            store: "file:///store".into(),
        },
    )
    .ok()?;
    let _ = labctl::render::human::plan(&plan);
    let _ = labctl::render::markdown::plan(&plan);
    let json = labctl::render::json(&plan);
    let _ = labctl::drift::plan_findings(&plan, actual);
    let _ = labctl::drift::records_vs_objects(actual, &[]);
    let _ = labctl::consumer_index::entries(&actual.records);
    assert_eq!(
        labctl::plan::check::check(&plan),
        Ok(()),
        "a plan the engine made passes its own check"
    );
    let back: Plan = serde_json::from_str(&json).expect("a plan reads back");
    assert_eq!(back, plan, "a plan survives its JSON");
    Some(plan)
}

#[test]
#[allow(clippy::disallowed_methods)] // the test's own knobs
fn no_mutated_manifest_record_or_plan_panics() {
    let seed: u64 = std::env::var("LABCTL_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1ab_c71);
    let cases: usize = std::env::var("LABCTL_MUTATION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);

    let manifest = std::fs::read(repo().join("images/images.yaml")).expect("the lab manifest");
    let mut record_files = Vec::new();
    files_under(&repo().join("state-examples"), ".json", &mut record_files);
    let records: Vec<(String, Vec<u8>)> = record_files
        .iter()
        .filter_map(|p| {
            let s = p.to_string_lossy();
            let key = &s[s.find("/metadata/")? + 1..];
            Some((key.to_string(), std::fs::read(p).ok()?))
        })
        .filter(|(k, _)| k.starts_with("metadata/"))
        .collect();
    assert!(
        records.len() >= 5,
        "example records found: {}",
        records.len()
    );
    let drifted: Vec<(String, Vec<u8>)> = records
        .iter()
        .filter(|(k, _)| !k.contains("in-sync"))
        .cloned()
        .collect();
    let desired = desired_of(&manifest).expect("the lab manifest is valid");
    let actual = actual_from(&drifted);
    let plan = plan_and_render(&desired, &actual, true).expect("the example plans");
    let plan_json = labctl::render::json(&plan).into_bytes();

    let mut failures = Vec::new();
    let mut counts = BTreeMap::<&str, usize>::new();
    for case in 0..cases {
        let case_seed = seed.wrapping_add(case as u64);
        let mut rng = Rng(case_seed);
        let kind = *rng.pick(&["manifest", "record", "plan"]);
        *counts.entry(kind).or_default() += 1;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
            "manifest" => {
                let text = mutate_bytes(&mut rng, &manifest);
                if let Some(d) = desired_of(&text) {
                    plan_and_render(&d, &actual, rng.below(2) == 0);
                }
            }
            "record" => {
                let mut mutated = drifted.clone();
                let i = rng.below(mutated.len());
                mutated[i].1 = if rng.below(2) == 0 {
                    mutate_json(&mut rng, &mutated[i].1)
                } else {
                    mutate_bytes(&mut rng, &mutated[i].1)
                };
                let actual = actual_from(&mutated);
                plan_and_render(&desired, &actual, rng.below(2) == 0);
            }
            _ => {
                let bytes = if rng.below(3) == 0 {
                    mutate_bytes(&mut rng, &plan_json)
                } else {
                    mutate_json(&mut rng, &plan_json)
                };
                if let Ok(p) = serde_json::from_slice::<Plan>(&bytes) {
                    if labctl::plan::check::check(&p).is_ok() {
                        let _ = labctl::render::human::plan(&p);
                        let _ = labctl::render::markdown::plan(&p);
                    }
                }
            }
        }));
        if outcome.is_err() {
            failures.push(format!("{kind} case seed {case_seed}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases panicked (rerun one with LABCTL_MUTATION_SEED=<seed> LABCTL_MUTATION_CASES=1):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        cases < 100 || counts.values().all(|&n| n >= cases / 4),
        "{counts:?}"
    );
}

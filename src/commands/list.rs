//! `labctl list`: the records in the store, as a table or as JSON (docs/state-records.md).

use std::process::ExitCode;

use crate::cli::ListArgs;
use crate::failure::Failure;
use crate::render::list;

pub async fn run(args: &ListArgs) -> Result<ExitCode, Failure> {
    // The manifest is only needed for its spec.store; with --store it may be absent.
    let manifest = match &args.store.store {
        Some(_) => super::optional_manifest(&args.manifest)?,
        None => Some(super::load_manifest(&args.manifest)?.0),
    };
    let store = super::open_store(args.store.store.as_deref(), manifest.as_ref()).await?;
    let state =
        crate::state::refresh::read(store.clone(), crate::state::refresh::Objects::NotChecked)
            .await?;
    let mut unreadable = 0;
    for r in state.records.values() {
        if let Err(why) = &r.record {
            unreadable += 1;
            eprintln!("warning: `{}`: {why}", r.record_key);
        }
    }
    if args.json {
        let document = list::document(&store.url(), &state);
        println!(
            "{}",
            serde_json::to_string_pretty(&document).expect("serializes")
        );
    } else if state.records.is_empty() {
        eprintln!("No records in {}.", store.url());
    } else {
        print!("{}", list::table(&state));
    }
    Ok(if unreadable > 0 {
        super::exit(1)
    } else {
        ExitCode::SUCCESS
    })
}

//! `labctl history [NAME]`: the earlier versions kept for each image (`history: N`).

use std::process::ExitCode;

use crate::cli::HistoryArgs;
use crate::failure::{Failure, WithHint};
use crate::history::{ImageHistory, Listing, FORMAT_VERSION};
use crate::units::human_size;

pub async fn run(args: &HistoryArgs) -> Result<ExitCode, Failure> {
    let manifest = match &args.store.store {
        Some(_) => super::optional_manifest(&args.manifest)?,
        None => Some(super::load_manifest(&args.manifest)?.0),
    };
    let store = super::open_store(args.store.store.as_deref(), manifest.as_ref()).await?;
    let state =
        crate::state::refresh::read(store.clone(), crate::state::refresh::Objects::NotChecked)
            .await?;
    let images = crate::history::images(&state, args.name.as_deref());
    if let Some(name) = &args.name {
        if images.is_empty() {
            return Err(anyhow::anyhow!(
                "no image `{name}` has a record in {}",
                store.url()
            ))
            .hint("`labctl list` shows the images the store has records for");
        }
    }
    if args.json {
        let out = Listing {
            format_version: FORMAT_VERSION,
            store: store.url(),
            images,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_human(&images, args.name.is_some(), &store.url());
    Ok(ExitCode::SUCCESS)
}

/// The images that keep versions (every image asked for by name), current bytes first.
fn print_human(images: &[ImageHistory], named: bool, store: &str) {
    let with_history: Vec<&ImageHistory> = if named {
        images.iter().collect()
    } else {
        images.iter().filter(|i| !i.history.is_empty()).collect()
    };
    if with_history.is_empty() {
        println!(
            "No kept versions in {store} (an image keeps them with `history: N` in the manifest)."
        );
        return;
    }
    for i in with_history {
        println!("{}  {}", console::style(&i.name).bold(), i.key);
        println!(
            "  current  {}  {}  uploaded {}",
            i.checksum.short(),
            i.size.map(human_size).unwrap_or_else(|| "?".into()),
            i.uploaded_at.as_deref().unwrap_or("?")
        );
        if i.history.is_empty() {
            println!("  (no kept versions)");
        }
        for h in &i.history {
            println!(
                "  kept     {}  {}  uploaded {}, kept {}  {}",
                h.checksum.short(),
                human_size(h.size),
                h.uploaded_at,
                h.kept_at,
                h.key
            );
            if let Some(url) = &h.source_url {
                println!("           from {url}");
            }
        }
        println!();
    }
}

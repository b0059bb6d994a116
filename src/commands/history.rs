//! `labctl history [NAME]`: the earlier versions kept for each image (`history: N`).

use std::process::ExitCode;

use serde::Serialize;

use crate::checksum::Checksum;
use crate::cli::HistoryArgs;
use crate::failure::{Failure, WithHint};
use crate::state::record::HistoryEntry;
use crate::units::human_size;

/// Version of the `labctl history --json` output.
pub const FORMAT_VERSION: &str = "1.0";

#[derive(Debug, Serialize)]
struct Output {
    format_version: &'static str,
    store: String,
    images: Vec<ImageHistory>,
}

#[derive(Debug, Serialize)]
struct ImageHistory {
    name: String,
    key: String,
    /// The current object.
    checksum: Checksum,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uploaded_at: Option<String>,
    /// Kept versions, newest first, as the state record lists them.
    history: Vec<HistoryEntry>,
}

pub async fn run(args: &HistoryArgs) -> Result<ExitCode, Failure> {
    let manifest = match &args.store.store {
        Some(_) => super::optional_manifest(&args.manifest)?,
        None => Some(super::load_manifest(&args.manifest)?.0),
    };
    let store = super::open_store(args.store.store.as_deref(), manifest.as_ref()).await?;
    let state =
        crate::state::refresh::read(store.clone(), crate::state::refresh::Objects::NotChecked)
            .await?;
    let mut images = images_of(&state, args.name.as_deref());
    images.sort_by(|a, b| a.name.cmp(&b.name));
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
        let out = Output {
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

/// Each readable record's current bytes and kept versions (only `name`'s, when given).
fn images_of(state: &crate::state::ActualState, name: Option<&str>) -> Vec<ImageHistory> {
    state
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
        .collect()
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

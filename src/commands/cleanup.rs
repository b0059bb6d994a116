//! `labctl cleanup`: removes what fan-outs left behind. See `labctl_engine::cleanup`.

use std::process::ExitCode;

use anyhow::Context;
use console::style;

use crate::apply::{cleanup, lock};
use crate::cli::CleanupArgs;
use crate::failure::Failure;

pub async fn run(args: &CleanupArgs) -> Result<ExitCode, Failure> {
    let manifest = super::optional_manifest(&args.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), manifest.as_ref()).await?;
    let mut signals = crate::interrupt::install("releasing the lock")
        .context("cannot listen for SIGINT and SIGTERM")?;
    let cancel = crate::interrupt::as_cancel(signals.clone());
    let held = if args.lock && !args.dry_run {
        let options = lock::LockOptions::new("cleanup", args.lock_timeout, args.lock_lease);
        match lock::acquire_unless(store.clone(), &options, cancel).await {
            Ok(l) => {
                crate::store_lock::announce(&l);
                Some(l)
            }
            Err(lock::LockError::Interrupted) => {
                return Ok(super::exit(signals.borrow().map_or(1, |s| s.exit_code())))
            }
            Err(e) => return Err(crate::store_lock::lock_failure(e)),
        }
    } else {
        None
    };
    let writes = match &held {
        Some(l) => l.fence(store.clone()),
        None => store.clone(),
    };
    let now = crate::timefmt::unix_now().as_secs();
    let work = async {
        let leftovers = cleanup::find(writes.as_ref(), args.older_than.as_secs(), now).await?;
        anyhow::Ok(sweep(writes.as_ref(), &leftovers, args.dry_run).await)
    };
    // A signal stops between deletes (each is whole); the lock is released either way.
    let outcome = tokio::select! {
        done = work => Some(done),
        _ = crate::interrupt::wait(&mut signals) => None,
    };
    let lost = held.as_ref().and_then(lock::Lock::lost);
    if let Some(l) = held {
        crate::store_lock::release(l, outcome.is_none()).await;
    }
    if let Some(lost) = lost {
        return Err(crate::store_lock::lost_lock(lost));
    }
    match outcome {
        None => Ok(super::exit(signals.borrow().map_or(1, |s| s.exit_code()))),
        Some(done) => Ok(if done? {
            ExitCode::SUCCESS
        } else {
            super::exit(1)
        }),
    }
}

/// Removes (or lists) the leftovers; `false` when some could not be removed.
async fn sweep(
    store: &dyn crate::store::Store,
    leftovers: &cleanup::Leftovers,
    dry_run: bool,
) -> bool {
    let verb = if dry_run { "Would remove" } else { "Removed" };
    let objects = leftovers.results.iter().chain(&leftovers.blobs);
    for object in objects.chain(&leftovers.probes) {
        println!(
            "  {} {} ({} bytes)",
            if dry_run { "-" } else { "✓" },
            object.key,
            object.size
        );
    }
    let failed = if dry_run {
        Vec::new()
    } else {
        cleanup::remove(store, leftovers).await
    };
    for f in &failed {
        eprintln!("  {} {f}", style("✗").red());
    }
    for u in &leftovers.uploads {
        println!(
            "  {} unfinished upload {} of {}",
            if dry_run { "-" } else { "✓" },
            u.upload.upload_id,
            u.upload.key
        );
    }
    let n = |count: usize, one: &str| format!("{count} {one}{}", if count == 1 { "" } else { "s" });
    println!(
        "{verb} {} ({} bytes), {}, {} and {}; kept {} recent.",
        n(leftovers.blobs.len(), "blob"),
        leftovers.bytes(),
        n(leftovers.results.len(), "stage result"),
        n(leftovers.uploads.len(), "unfinished upload"),
        n(leftovers.probes.len(), "probe object"),
        leftovers.kept
    );
    failed.is_empty()
}

use std::process::ExitCode;

use crate::apply::lock;
use crate::cli::ForceUnlockArgs;
use crate::failure::Failure;

pub async fn run(args: &ForceUnlockArgs) -> Result<ExitCode, Failure> {
    let manifest = super::optional_manifest(&args.manifest)?;
    let store = super::open_store(args.store.store.as_deref(), manifest.as_ref()).await?;
    match lock::force_unlock(store.as_ref(), &args.id)
        .await
        .map_err(crate::store_lock::lock_failure)?
    {
        lock::Removed::Lock(holder) => println!("Removed the lock held by {holder}."),
        lock::Removed::Unreadable => println!("Removed the unreadable lock file."),
    }
    Ok(ExitCode::SUCCESS)
}

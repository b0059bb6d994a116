//! The store lock as every command that takes it shows it: how it was taken, how it was lost,
//! its release, and uploads a signal dropped.

use console::style;

use crate::apply::lock::{self, LockError};
use crate::failure::Failure;

/// Waits for the aborts of uploads a signal dropped mid-transfer (a part-by-part copy): leaving
/// `main` would drop them unfinished. Bounded, so a run cancelled by CI still exits within its
/// grace period (GitHub sends SIGKILL 10 s after the first signal).
pub async fn settle_dropped_uploads() {
    let left = crate::store::pending::settle_dropped(std::time::Duration::from_secs(4)).await;
    if left > 0 {
        eprintln!(
            "{} {left} unfinished upload(s) could not be aborted in time; they stay invisible and the next apply aborts them",
            style("Warning:").yellow()
        );
    }
}

/// The run's end when its lease was lost: whatever it did not finish stays for the next run.
pub fn lost_lock(lost: lock::LeaseLost) -> Failure {
    Failure::from(anyhow::Error::from(lost)).with_hint(
        "nothing more was made visible, recorded or indexed once the lease was lost; the run that holds the lock now finishes the work, and if none does, run apply again",
    )
}

/// Says how the lock was taken: the takeover of a dead run's lock names that run.
pub fn announce(held: &lock::Lock) {
    match &held.took_over {
        Some(over) => {
            let mut said = over.to_string();
            if let Some(first) = said.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            eprintln!("{} {said}.", style("Warning:").yellow());
        }
        None => eprintln!(
            "Acquired the store lock (ID {}, lease {}s).",
            held.info.id,
            held.lease().duration.as_secs()
        ),
    }
}

/// Releases the lock, saying so after a signal (the user waits for that line).
pub async fn release(held: lock::Lock, signalled: bool) {
    match held.release().await {
        Ok(()) if signalled => eprintln!("Released the store lock."),
        Ok(()) => {}
        Err(e) => eprintln!(
            "{} could not release the store lock: {e}",
            style("Warning:").yellow()
        ),
    }
}

/// A lock error with its hint (who holds it, how to unlock).
pub fn lock_failure(e: LockError) -> Failure {
    Failure::from(e).with_default_hint()
}

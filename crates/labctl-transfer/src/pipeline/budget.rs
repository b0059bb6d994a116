//! One budget of bytes for the parts every image of a run holds at once: decoded bytes waiting
//! for their upload, on their way up, or (an image small enough for one PUT) waiting for
//! verification. Memory then follows the budget, not `--parallelism`: many small images run
//! side by side in little memory, and large ones take turns for their parts.
//!
//! A holder never waits while it holds: growing a hold gives it back first and then waits for
//! the larger one, so two images growing at once cannot wait on each other for ever.

use std::sync::{Arc, Condvar, Mutex};

#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
    /// Turns for large images: their downloads and decoders (an xz or zstd window of up to
    /// tens of MiB) are what the parts do not count.
    large_images: Arc<tokio::sync::Semaphore>,
}

struct Inner {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// Bytes of the budget, given back when dropped (with the part that holds them).
pub struct Held {
    inner: Arc<Inner>,
    bytes: usize,
}

/// Makes freed part buffers go back to the system at once. glibc serves blocks above its mmap
/// threshold from its heaps once it has raised the threshold (it does after the first large
/// free), one heap per thread: parts filled on decoder threads and freed by upload tasks then
/// linger there, tens of MiB beyond the budget. A fixed threshold keeps every part its own
/// mapping. (musl, which the release binaries use, maps large blocks alone already.) Call it
/// before any thread starts.
pub fn return_freed_parts_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator, and no other thread allocates yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.inner.limit)
            .field("large_images", &self.large_images.available_permits())
            .finish()
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("bytes", &self.bytes).finish()
    }
}

impl MemoryBudget {
    /// `limit` bytes of parts; `large_images` large images at once.
    pub fn new(limit: usize, large_images: usize) -> MemoryBudget {
        MemoryBudget {
            inner: Arc::new(Inner {
                limit: limit.max(1),
                used: Mutex::new(0),
                freed: Condvar::new(),
            }),
            large_images: Arc::new(tokio::sync::Semaphore::new(large_images.max(1))),
        }
    }

    /// Waits for a large image's turn, held until the image's bytes have passed.
    pub async fn large_image_turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.large_images
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Waits (blocking the thread: decoders run on blocking threads) until `bytes` fit. More
    /// than the whole budget waits until nothing else is held, then goes alone.
    pub fn hold(&self, bytes: usize) -> Held {
        hold(&self.inner, bytes)
    }

    /// Bytes held now, by every holder.
    pub fn used(&self) -> usize {
        *self.inner.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn hold(inner: &Arc<Inner>, bytes: usize) -> Held {
    let mut used = inner.used.lock().unwrap_or_else(|p| p.into_inner());
    while *used > 0 && *used + bytes > inner.limit {
        used = inner.freed.wait(used).unwrap_or_else(|p| p.into_inner());
    }
    *used += bytes;
    Held {
        inner: inner.clone(),
        bytes,
    }
}

impl Held {
    /// Makes this hold `bytes`: a smaller hold gives the difference back at once; a larger one
    /// is given back, then held again at the new size (see the module comment).
    pub fn resize(&mut self, bytes: usize) {
        if bytes <= self.bytes {
            let mut used = self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
            *used -= self.bytes - bytes;
            self.bytes = bytes;
            self.inner.freed.notify_all();
            return;
        }
        let inner = self.inner.clone();
        self.release();
        *self = hold(&inner, bytes);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn release(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes > 0 {
            let mut used = self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
            *used -= bytes;
            self.inner.freed.notify_all();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_wait_for_room_and_give_it_back_when_dropped() {
        let budget = MemoryBudget::new(10, 1);
        let a = budget.hold(6);
        assert_eq!(budget.used(), 6);
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.hold(6).bytes())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "6 + 6 does not fit in 10");
        drop(a);
        assert_eq!(waiter.join().unwrap(), 6);
        assert_eq!(budget.used(), 0, "the waiter's hold was dropped too");
    }

    #[test]
    fn large_images_take_turns() {
        let budget = MemoryBudget::new(10, 2);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let first = budget.large_image_turn().await;
            let _second = budget.large_image_turn().await;
            let third = tokio::time::timeout(Duration::from_millis(50), budget.large_image_turn());
            assert!(third.await.is_err(), "a third large image waits");
            drop(first);
            let third = tokio::time::timeout(Duration::from_secs(5), budget.large_image_turn());
            assert!(third.await.is_ok(), "and goes once a turn is given back");
        });
    }

    #[test]
    fn more_than_the_whole_budget_goes_alone() {
        let budget = MemoryBudget::new(10, 1);
        let big = budget.hold(25);
        assert_eq!(budget.used(), 25);
        let mut big = big;
        big.resize(3);
        assert_eq!(
            budget.used(),
            3,
            "a smaller hold gives the rest back at once"
        );
        drop(big);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn two_holders_growing_at_once_do_not_wait_on_each_other() {
        let budget = MemoryBudget::new(10, 1);
        let (mut a, mut b) = (budget.hold(4), budget.hold(4));
        let grower = std::thread::spawn(move || {
            // Needs 8 with b's 4 held: it gives its 4 back first, so b can grow.
            a.resize(8);
            a.bytes()
        });
        std::thread::sleep(Duration::from_millis(50));
        b.resize(6);
        assert_eq!(b.bytes(), 6);
        drop(b);
        assert_eq!(grower.join().unwrap(), 8);
        assert_eq!(budget.used(), 0);
    }
}

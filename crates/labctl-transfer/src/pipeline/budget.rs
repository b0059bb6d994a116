//! One budget of bytes for the parts every image of a run holds at once: decoded bytes waiting
//! for their upload, on their way up, or (an image small enough for one PUT) waiting for
//! verification. Memory then follows the budget, not `--parallelism`: many small images run
//! side by side in little memory, and large ones take turns for their parts.
//!
//! A holder never waits while it holds: growing a hold gives it back first and then waits for
//! the larger one, so two images growing at once cannot wait on each other for ever.
//!
//! Decoders' windows (an xz dictionary, a zstd window: read from the stream's header before
//! decoding) are held from the same budget, beside the parts, with [`WINDOWS`] of room of their
//! own: the usual windows (8 MiB or less) fit beside a full budget of parts, while an `xz -9`
//! dictionary (64 MiB) makes the parts wait until it fits, and goes alone among windows. The
//! parts of a decoder that holds a window may always go one at a time, so a waiting window
//! never stops the decoders it waits for; every other part waits behind it. The window is the
//! first frame's (or block's): a stream whose later frames declare larger ones is decoded
//! within the decoder's own limits (256 MiB for xz, 128 MiB for zstd), not the budget's.

use std::sync::{Arc, Condvar, Mutex};

/// Room for decoders' windows beyond the parts' own limit: four of the usual 8 MiB, or one
/// `xz -9` dictionary with one part beside it.
pub const WINDOWS: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
    /// This budget's parts are a windowed decoder's: they may go alone while a window waits.
    windowed: bool,
    /// Turns for large images: their downloads and decoders (an xz or zstd window of up to
    /// tens of MiB) are what the parts do not count.
    large_images: Arc<tokio::sync::Semaphore>,
}

struct Inner {
    /// For parts.
    limit: usize,
    /// For parts and windows together.
    total: usize,
    used: Mutex<Used>,
    freed: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct Used {
    parts: usize,
    windows: usize,
    /// Windows waiting to be held.
    waiting: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Part { windowed: bool },
    Window,
}

/// Bytes of the budget, given back when dropped (with the part or decoder that holds them).
pub struct Held {
    inner: Arc<Inner>,
    kind: Kind,
    bytes: usize,
}

/// Makes freed part buffers go back to the system at once. glibc serves blocks above its mmap
/// threshold from its heaps once it has raised the threshold (it does after the first large
/// free), one heap per thread: parts filled on decoder threads and freed by upload tasks then
/// linger there, tens of MiB beyond the budget. A fixed threshold keeps every part its own
/// mapping. One arena, not glibc's eight per core: the decoders' blocking threads otherwise
/// each keep their own arena of freed buffers, and memory freed in one arena is not reused by
/// another (measured: a mixed run at --parallelism 64 peaked at 91 MiB with two arenas, 93–99
/// MiB with eight; an apply of 10,000 small images at 107 MiB with two, 98 MiB with one, in
/// the same time). (musl, which the release binaries use, maps large blocks alone already and
/// has one heap.) Call it before any thread starts.
pub fn return_freed_parts_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator, and no other thread allocates yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
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
        f.debug_struct("Held")
            .field("kind", &self.kind)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl MemoryBudget {
    /// `limit` bytes of parts; `large_images` large images at once.
    pub fn new(limit: usize, large_images: usize) -> MemoryBudget {
        MemoryBudget {
            inner: Arc::new(Inner {
                limit: limit.max(1),
                total: limit.max(1) + WINDOWS,
                used: Mutex::new(Used::default()),
                freed: Condvar::new(),
            }),
            windowed: false,
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
    /// than the whole budget waits until no other part is held (and no window waits), then
    /// goes alone.
    pub fn hold(&self, bytes: usize) -> Held {
        hold(
            &self.inner,
            Kind::Part {
                windowed: self.windowed,
            },
            bytes,
        )
    }

    /// Waits (blocking the thread) until a decoder's window of `bytes` fits; held while it
    /// decodes. The budget the decoder then holds its parts from is [`Self::windowed`].
    pub fn hold_window(&self, bytes: usize) -> Held {
        hold(&self.inner, Kind::Window, bytes)
    }

    /// This budget, for the parts of a decoder that holds a window.
    pub fn windowed(&self) -> MemoryBudget {
        MemoryBudget {
            windowed: true,
            ..self.clone()
        }
    }

    /// Bytes held now, by every holder, parts and windows.
    pub fn used(&self) -> usize {
        let used = *self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
        used.parts + used.windows
    }
}

/// Whether a hold of `bytes` of `kind` may be taken now (see the module comment).
fn fits(inner: &Inner, used: Used, kind: Kind, bytes: usize) -> bool {
    let held = used.parts.saturating_add(used.windows);
    match kind {
        Kind::Part { windowed } => {
            (used.parts.saturating_add(bytes) <= inner.limit
                && held.saturating_add(used.waiting).saturating_add(bytes) <= inner.total)
                || (used.parts == 0 && (used.waiting == 0 || windowed))
        }
        Kind::Window => {
            held.saturating_add(bytes) <= inner.total || (used.windows == 0 && used.parts == 0)
        }
    }
}

fn hold(inner: &Arc<Inner>, kind: Kind, bytes: usize) -> Held {
    let mut used = inner.used.lock().unwrap_or_else(|p| p.into_inner());
    if kind == Kind::Window {
        used.waiting = used.waiting.saturating_add(bytes);
    }
    while !fits(inner, *used, kind, bytes) {
        used = inner.freed.wait(used).unwrap_or_else(|p| p.into_inner());
    }
    match kind {
        Kind::Part { .. } => used.parts += bytes,
        Kind::Window => {
            used.waiting = used.waiting.saturating_sub(bytes);
            used.windows = used.windows.saturating_add(bytes);
            // A window that stopped waiting may let parts go that it held back. (A part taken
            // frees nothing: no wakeup on the pipeline's every part.)
            inner.freed.notify_all();
        }
    }
    Held {
        inner: inner.clone(),
        kind,
        bytes,
    }
}

impl Held {
    /// Makes this hold `bytes`: a smaller hold gives the difference back at once; a larger one
    /// is given back, then held again at the new size (see the module comment).
    pub fn resize(&mut self, bytes: usize) {
        if bytes <= self.bytes {
            let mut used = self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
            *self.count(&mut used) -= self.bytes - bytes;
            self.bytes = bytes;
            self.inner.freed.notify_all();
            return;
        }
        let (inner, kind) = (self.inner.clone(), self.kind);
        self.release();
        *self = hold(&inner, kind, bytes);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The counter this hold is part of.
    fn count<'u>(&self, used: &'u mut Used) -> &'u mut usize {
        match self.kind {
            Kind::Part { .. } => &mut used.parts,
            Kind::Window => &mut used.windows,
        }
    }

    fn release(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes > 0 {
            let mut used = self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
            *self.count(&mut used) -= bytes;
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

    #[test]
    fn a_large_window_waits_for_the_parts_and_the_parts_behind_it() {
        let budget = MemoryBudget::new(10, 4);
        let part = budget.hold(8);
        let window = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.hold_window(WINDOWS + 5).bytes())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !window.is_finished(),
            "it does not fit beside 8 bytes of parts"
        );
        let later = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.hold(4).bytes())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !later.is_finished(),
            "a part does not go ahead of a waiting window"
        );
        drop(part);
        assert_eq!(window.join().unwrap(), WINDOWS + 5);
        assert_eq!(later.join().unwrap(), 4, "then parts go, one at a time");
    }

    #[test]
    fn a_windowed_decoders_parts_go_while_another_window_waits() {
        let budget = MemoryBudget::new(10, 4);
        let first = budget.hold_window(WINDOWS);
        let decoder = budget.windowed();
        let big = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.hold_window(WINDOWS + 5).bytes())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!big.is_finished(), "two large windows do not stack");
        // The first decoder must be able to finish, or the waiting window never fits.
        for _ in 0..3 {
            drop(decoder.hold(8));
        }
        drop(first);
        assert_eq!(big.join().unwrap(), WINDOWS + 5);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn usual_windows_fit_beside_a_full_budget_of_parts() {
        let budget = MemoryBudget::new(40, 4);
        let _parts = budget.hold(40);
        let windows: Vec<Held> = (0..4).map(|_| budget.hold_window(WINDOWS / 4)).collect();
        assert_eq!(budget.used(), 40 + WINDOWS);
        drop(windows);
    }
}

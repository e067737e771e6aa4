//! A test hook: the Nth pass through one site of the engine panics on its
//! core, as a bug would, so tests can prove a panic ends a run with an error
//! (`scheduler::Core::spawn`) instead of hanging it. Off unless a test sets
//! it; then one relaxed load per pass.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Where a test may make the engine panic: one in each kind of core task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Site {
    /// A connection, about to send a download request (chunk or object).
    Request = 1,
    /// A large object's hasher, about to hash what reached the frontier.
    Hasher = 2,
    /// A write task of a large object, about to write a buffer.
    Write = 3,
    /// A core's finisher of a large object, about to leave it.
    Finisher = 4,
}

/// 0: off.
static SITE: AtomicU8 = AtomicU8::new(0);
static AT_PASS: AtomicU64 = AtomicU64::new(0);
static PASSES: AtomicU64 = AtomicU64::new(0);

/// From now on, the `n`th pass through `site` panics (`n` from 1). For
/// tests only.
#[doc(hidden)]
pub fn panic_at(site: Site, n: u64) {
    SITE.store(0, Ordering::SeqCst);
    PASSES.store(0, Ordering::SeqCst);
    AT_PASS.store(n, Ordering::SeqCst);
    SITE.store(site as u8, Ordering::SeqCst);
}

/// Turns the hook off.
#[doc(hidden)]
pub fn off() {
    SITE.store(0, Ordering::SeqCst);
}

/// Called at each pass through `site`.
pub(super) fn pass(site: Site) {
    if SITE.load(Ordering::Relaxed) != site as u8 {
        return;
    }
    let at = AT_PASS.load(Ordering::Relaxed);
    if PASSES.fetch_add(1, Ordering::Relaxed) + 1 == at {
        panic!("failpoint: pass {at} through {site:?} panics (a test hook)");
    }
}

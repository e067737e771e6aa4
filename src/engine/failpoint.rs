//! A test hook: the Nth download request of the process panics on its core,
//! as a bug would, so tests can prove a panic ends a run with an error
//! (`scheduler::Core::spawn`) instead of hanging it. Off unless a test sets
//! it; then one relaxed load per request.

use std::sync::atomic::{AtomicU64, Ordering};

/// 0: off.
static PANIC_AT_REQUEST: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// From now on, the `n`th download request (chunk or small object) panics;
/// `0` turns the hook off. For tests only.
#[doc(hidden)]
pub fn panic_at_request(n: u64) {
    REQUESTS.store(0, Ordering::SeqCst);
    PANIC_AT_REQUEST.store(n, Ordering::SeqCst);
}

/// Called before each download request.
pub(super) fn request() {
    let at = PANIC_AT_REQUEST.load(Ordering::Relaxed);
    if at != 0 && REQUESTS.fetch_add(1, Ordering::Relaxed) + 1 == at {
        panic!("failpoint: download request {at} panics (a test hook)");
    }
}

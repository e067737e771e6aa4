//! A test hook: the Nth pass through one site of the engine panics on its
//! core, as a bug would, so tests can prove a panic ends a run with an error
//! (`scheduler::Core::spawn`) instead of hanging it; or, at a site where the
//! kernel can fail, fails as it would (EIO), so tests can prove what a run
//! leaves behind after such a failure. Off unless a test sets it; then one
//! relaxed load per pass.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// Where a test may make the engine panic: one in each kind of core task;
/// and where it may make `get` fail as the kernel can.
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
    /// `get --fsync`, about to fsync the verified download (`fail_at`).
    Fsync = 5,
    /// `get` of a resumable object, about to open the journal's writer for
    /// a round (`fail_at`).
    JournalWriter = 6,
}

/// 0: off.
static SITE: AtomicU8 = AtomicU8::new(0);
static AT_PASS: AtomicU64 = AtomicU64::new(0);
static PASSES: AtomicU64 = AtomicU64::new(0);
/// The pass at `AT_PASS` fails with EIO instead of panicking.
static FAILS: AtomicBool = AtomicBool::new(false);

/// From now on, the `n`th pass through `site` panics (`n` from 1). For
/// tests only.
#[doc(hidden)]
pub fn panic_at(site: Site, n: u64) {
    arm(site, n, false);
}

/// From now on, the `n`th pass through `site` fails with EIO (`n` from 1),
/// where the site can fail (`Site::Fsync`, `Site::JournalWriter`). For
/// tests only.
#[doc(hidden)]
pub fn fail_at(site: Site, n: u64) {
    assert!(
        matches!(site, Site::Fsync | Site::JournalWriter),
        "{site:?} cannot fail, only panic"
    );
    arm(site, n, true);
}

fn arm(site: Site, n: u64, fails: bool) {
    SITE.store(0, Ordering::SeqCst);
    PASSES.store(0, Ordering::SeqCst);
    AT_PASS.store(n, Ordering::SeqCst);
    FAILS.store(fails, Ordering::SeqCst);
    SITE.store(site as u8, Ordering::SeqCst);
}

/// Turns the hook off.
#[doc(hidden)]
pub fn off() {
    SITE.store(0, Ordering::SeqCst);
}

/// Called at each pass through `site`.
pub(super) fn pass(site: Site) {
    if is_hit(site) {
        let at = AT_PASS.load(Ordering::Relaxed);
        panic!("failpoint: pass {at} through {site:?} panics (a test hook)");
    }
}

/// Called at each pass through a `site` that can fail: the error to fail
/// with instead of doing the operation, if this is the pass to fail.
pub(crate) fn injected_error(site: Site) -> Option<rustix::io::Errno> {
    if !is_hit(site) {
        return None;
    }
    if !FAILS.load(Ordering::Relaxed) {
        let at = AT_PASS.load(Ordering::Relaxed);
        panic!("failpoint: pass {at} through {site:?} panics (a test hook)");
    }
    Some(rustix::io::Errno::IO)
}

/// Whether this pass through `site` is the one a test chose.
fn is_hit(site: Site) -> bool {
    if SITE.load(Ordering::Relaxed) != site as u8 {
        return false;
    }
    let at = AT_PASS.load(Ordering::Relaxed);
    PASSES.fetch_add(1, Ordering::Relaxed) + 1 == at
}

//! Thread-per-core plumbing that is not io_uring itself: how many cores to
//! use, pinning, the memory-lock budget for registered buffers and the
//! cgroup memory limit; signals, a run's cancel flag, and the control
//! plane's backoffs that end with them (`back_off`, `sleep_unless`).

use std::sync::atomic::{AtomicI32, Ordering};

use rustix::process::{Resource, getrlimit};
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

use crate::config::{MEMLOCK_MARGIN_BYTES, RETRY_WAIT_STOP_CHECK_MS};

/// `--pin auto|on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PinMode {
    Auto,
    On,
    Off,
}

/// CPUs this process may run on (honours cgroup quotas and taskset).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Pinning only makes sense when the affinity mask has exactly as many CPUs
/// as we run cores (otherwise a quota, not a mask, is limiting us).
pub fn should_pin(mode: PinMode, cores: usize) -> bool {
    match mode {
        PinMode::On => true,
        PinMode::Off => false,
        PinMode::Auto => affinity_cpus().is_some_and(|cpus| cpus.len() == cores),
    }
}

fn affinity_cpus() -> Option<Vec<usize>> {
    let set = sched_getaffinity(None).ok()?;
    Some(
        (0..CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
    )
}

/// Pins the calling thread to the `core_index`-th CPU of the affinity mask.
/// Failure is harmless (the scheduler still runs us), so it is ignored.
pub fn pin_current_thread(core_index: usize) {
    let Some(cpus) = affinity_cpus() else { return };
    if cpus.is_empty() {
        return;
    }
    let mut set = CpuSet::new();
    set.set(cpus[core_index % cpus.len()]);
    let _ = sched_setaffinity(None, &set);
}

/// Bytes of registered buffers this process may lock, or `None` when
/// unlimited (RLIM_INFINITY) or when we hold CAP_IPC_LOCK, which is never
/// charged. The limit is per user, so a margin is left for the rest.
pub fn memlock_budget_bytes() -> Option<u64> {
    if has_cap_ipc_lock() {
        return None;
    }
    let limit = getrlimit(Resource::Memlock);
    limit
        .current
        .map(|bytes| bytes.saturating_sub(MEMLOCK_MARGIN_BYTES))
}

/// The tightest memory limit of the cgroups this process is in (v2
/// `memory.max`, v1 `memory.limit_in_bytes`, each cgroup's ancestors
/// included), or `None` when there is none to read. The buffer pool is
/// touched up front when it is registered, so a pool above it is an OOM
/// kill, not an error.
pub fn memory_limit_bytes() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    memory_limit_files(&membership)
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .filter_map(|text| parse_memory_limit(&text))
        .min()
}

/// The files that hold the memory limits of the cgroups in `membership`
/// (the text of /proc/self/cgroup), from each cgroup up to its
/// hierarchy's root. A v2 line is `0::/PATH`; a v1 line names its
/// controllers, and only the `memory` one counts. Files that do not exist
/// (the root's, a v2 line on a v1 host) are skipped by the reader.
pub fn memory_limit_files(membership: &str) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (mount, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|name| name == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        // `..` cannot be in a cgroup's path; refuse it rather than read elsewhere.
        let relative = std::path::Path::new(path.trim_start_matches('/'));
        if relative
            .components()
            .any(|part| !matches!(part, std::path::Component::Normal(_)))
        {
            continue;
        }
        for ancestor in relative.ancestors() {
            files.push(std::path::Path::new(mount).join(ancestor).join(file));
        }
    }
    files
}

/// A limit file's value: bytes, or `None` for v2's `max`.
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Many files in flight need descriptors: lift the soft limit to the hard one.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

/// Reads CapEff from /proc (CAP_IPC_LOCK is bit 14).
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

static INTERRUPT_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Watches SIGINT, SIGTERM and SIGHUP on a small thread of its own. The first signal
/// asks the run to stop (`interrupted()`; every `EngineConfig::is_cancelled`
/// sees it: no new work, requests in flight finish, writes drain, what can
/// be resumed is kept, exit 130/143/129); a second one exits at once. The
/// handlers are installed before this returns, so no signal from then on
/// takes the default action (dying without cleanup). Idempotent.
///
/// For a process that runs one command (the CLI): the first signal's mark
/// is never cleared, so every later run in the process stops at once, and
/// a second signal exits the process. A program that embeds ringdown and
/// runs it more than once handles its own signals and stops a run with
/// `EngineConfig::cancel` instead.
pub fn watch_signals() {
    static WATCHING: std::sync::Once = std::sync::Once::new();
    WATCHING.call_once(|| {
        if let Err(error) = spawn_signal_watcher() {
            say!("ringdown: warning: cannot watch signals: {error}");
        }
    });
}

fn spawn_signal_watcher() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered here, on the caller's thread, before we return.
    // SIGXFSZ (a write past RLIMIT_FSIZE) is caught and never looked at:
    // its default action kills the process, where the write should fail
    // with EFBIG and fail that file alone. A signal the process started
    // with ignored stays ignored, as a shell's background job expects
    // (`ringdown restore … &` in a script is not stopped by Ctrl-C).
    let ignored = std::fs::read_to_string("/proc/self/status")
        .map(|status| ignored_signals(&status))
        .unwrap_or(0);
    let unless_ignored = |number: i32, kind: SignalKind| {
        let is_ignored = ignored & (1u64 << (number - 1)) != 0;
        (!is_ignored).then(|| signal(kind)).transpose()
    };
    // SIGHUP (an ssh session that drops, a closed terminal) stops as
    // SIGTERM does, draining and saying so, where its default action killed
    // the process mid-write; under `nohup` it is ignored, and stays so.
    let (mut interrupt, mut terminate, mut hangup, file_size) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            unless_ignored(libc::SIGINT, SignalKind::interrupt())?,
            unless_ignored(libc::SIGTERM, SignalKind::terminate())?,
            unless_ignored(libc::SIGHUP, SignalKind::hangup())?,
            signal(SignalKind::from_raw(libc::SIGXFSZ))?,
        ))
    })?;
    std::thread::Builder::new()
        .name("ringdown-signals".into())
        .spawn(move || {
            let _caught = file_size;
            runtime.block_on(async {
                loop {
                    let (received, name) = tokio::select! {
                        _ = received(&mut interrupt) => (libc::SIGINT, "SIGINT"),
                        _ = received(&mut terminate) => (libc::SIGTERM, "SIGTERM"),
                        _ = received(&mut hangup) => (libc::SIGHUP, "SIGHUP"),
                    };
                    if INTERRUPT_SIGNAL.swap(received, Ordering::SeqCst) != 0 {
                        std::process::exit(128 + received);
                    }
                    say!(
                        "ringdown: {name}: finishing requests in flight, keeping what can be resumed (again to exit at once)"
                    );
                    drain_deadline(received);
                }
            });
        })?;
    Ok(())
}

/// Set `SIGNAL_DRAIN_MAX_S` after the first signal: every request still
/// in flight is cut (`drain_expired`).
static DRAIN_EXPIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs (`EngineConfig::begin_run`) that have not returned yet. Only they
/// are cut short: a CLI writing its summary, or `demo` comparing and
/// removing its files, after its run returned, is not.
static RUNS_IN_PROGRESS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether the drain after a signal has run out of time: a stopping run's
/// requests are cut now, whatever their progress.
pub fn drain_expired() -> bool {
    DRAIN_EXPIRED.load(Ordering::Relaxed)
}

/// Counts a run as in progress until dropped, with `guard` (its other
/// per-run state) held as long.
pub struct RunInProgress<G> {
    _guard: G,
}

impl<G> RunInProgress<G> {
    pub fn new(guard: G) -> RunInProgress<G> {
        RUNS_IN_PROGRESS.fetch_add(1, Ordering::SeqCst);
        RunInProgress { _guard: guard }
    }
}

impl<G> Drop for RunInProgress<G> {
    fn drop(&mut self) {
        RUNS_IN_PROGRESS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bounds the drain after the first signal: at `SIGNAL_DRAIN_MAX_S` the
/// requests still in flight are cut, and the run ends as interrupted
/// (journal kept, summary and `--stats-json` written); should a run still
/// be in progress `SIGNAL_DRAIN_CUT_GRACE_S` later, the process exits as at
/// a second signal. A thread of its own: the signal watcher must stay free
/// to take a second signal meanwhile.
fn drain_deadline(received: i32) {
    use crate::config::{SIGNAL_DRAIN_CUT_GRACE_S, SIGNAL_DRAIN_MAX_S};
    let in_progress = || RUNS_IN_PROGRESS.load(Ordering::SeqCst) > 0;
    let spawned = std::thread::Builder::new()
        .name("ringdown-drain".into())
        .spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(SIGNAL_DRAIN_MAX_S));
            if !in_progress() {
                return;
            }
            say!(
                "ringdown: requests still in flight {SIGNAL_DRAIN_MAX_S} s after the signal: \
                 cutting them (what is journaled is kept)"
            );
            DRAIN_EXPIRED.store(true, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_secs(SIGNAL_DRAIN_CUT_GRACE_S));
            if in_progress() {
                say!(
                    "ringdown: the run has not ended {SIGNAL_DRAIN_CUT_GRACE_S} s after its \
                     requests were cut; exiting now (what is journaled is kept: run the same \
                     command again to resume)"
                );
                std::process::exit(128 + received);
            }
        });
    if let Err(error) = spawned {
        say!("ringdown: warning: no time limit on the drain: {error}");
    }
}

/// The next delivery of a signal listened to; never, for one not listened to.
async fn received(listener: &mut Option<tokio::signal::unix::Signal>) {
    match listener {
        Some(listener) => {
            listener.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The signals a process ignores, from its `/proc/self/status` (`SigIgn`,
/// a hex mask with bit N-1 for signal N); 0 when not said.
fn ignored_signals(status: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0)
}

/// Runs `work`, which blocks its thread on io_uring runtimes of its own
/// (`Download::run`, `Restore::run`), where a runtime may start. Outside any
/// tokio runtime that is this thread. Inside one's context it is a fresh
/// thread this one waits for: a runtime cannot start inside another's
/// ("Cannot start a runtime from within a runtime"), and tokio gives no way,
/// short of that panic, to tell an async task (where it would panic) from
/// `spawn_blocking`'s pool (where it would not), as both have a current handle.
pub fn outside_tokio<T: Send>(work: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(work());
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("ringdown-run".into())
            .spawn_scoped(scope, work)?;
        Ok(thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

thread_local! {
    /// The `EngineConfig::cancel` flag of the run this thread works for
    /// (its calling thread, its listing thread): control-plane calls, which
    /// know no run, look at it as they look at a signal.
    static RUN_CANCEL: std::cell::RefCell<Flag> =
        const { std::cell::RefCell::new(None) };
}

type Flag = Option<std::sync::Arc<std::sync::atomic::AtomicBool>>;

/// Puts back the flag a guard replaced: guards nest (a `get` run's round
/// of a length-less origin sets its own), and the inner one's end must
/// leave the outer run's flag, not none.
struct PutBack {
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Flag>>,
    previous: Flag,
}

impl Drop for PutBack {
    fn drop(&mut self) {
        let previous = self.previous.take();
        self.slot.with(|slot| *slot.borrow_mut() = previous);
    }
}

/// Makes `cancel` this thread's run flag until the guard drops.
pub fn cancel_on_this_thread(cancel: Flag) -> impl Drop {
    PutBack {
        slot: &RUN_CANCEL,
        previous: RUN_CANCEL.with(|slot| slot.replace(cancel)),
    }
}

thread_local! {
    /// Set once the run this thread works for has ended by itself (a
    /// run-fatal error in `restore`): the control-plane backoffs of its
    /// listing thread end at once instead of keeping the run waiting.
    static RUN_ENDED: std::cell::RefCell<Flag> =
        const { std::cell::RefCell::new(None) };
}

/// Makes `ended` this thread's "the run is over" flag until the guard drops.
pub fn end_with_run_on_this_thread(
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> impl Drop {
    PutBack {
        slot: &RUN_ENDED,
        previous: RUN_ENDED.with(|slot| slot.replace(Some(ended))),
    }
}

/// Whether the run this thread works for has ended by itself
/// (`end_with_run_on_this_thread`).
pub fn run_ended() -> bool {
    RUN_ENDED.with(|slot| {
        slot.borrow()
            .as_ref()
            .is_some_and(|ended| ended.load(Ordering::Acquire))
    })
}

/// Whether this thread's run is asked to stop (`stop_signal` of its
/// `cancel_on_this_thread` flag).
pub fn stop_requested() -> Option<i32> {
    RUN_CANCEL.with(|slot| stop_signal(slot.borrow().as_deref()))
}

/// The signal a run asked to stop reports: a signal's (`interrupted`), or
/// `CANCELLED` for its library caller's `cancel`.
pub fn stop_signal(cancel: Option<&std::sync::atomic::AtomicBool>) -> Option<i32> {
    interrupted().or_else(|| {
        cancel
            .is_some_and(|cancel| cancel.load(Ordering::Acquire))
            .then_some(CANCELLED)
    })
}

/// The "signal" of a run stopped by its program's `EngineConfig::cancel`:
/// 0, which no real signal is (as in `kill(pid, 0)`).
pub const CANCELLED: i32 = 0;

/// The signal that asked the run to stop, if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPT_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// A control-plane call's backoff of `delay`: `Interrupted` if the run is
/// asked to stop (`stop_requested`) before it ends, an error too if the
/// run ended by itself meanwhile (`end_with_run_on_this_thread`).
pub async fn back_off(delay: std::time::Duration) -> Result<(), crate::error::Error> {
    if sleep_unless(delay, || stop_requested().is_some() || run_ended()).await {
        return Ok(());
    }
    match stop_requested() {
        Some(signal) => Err(crate::error::Error::Interrupted { signal }),
        // The run's own error is what it reports.
        None => Err(crate::error::Error::Fatal("the run stopped".into())),
    }
}

/// Sleeps `delay` (a retry's wait), unless `stop` turns true first: then
/// returns `false` within `RETRY_WAIT_STOP_CHECK_MS`. On any tokio runtime.
pub async fn sleep_unless(delay: std::time::Duration, stop: impl Fn() -> bool) -> bool {
    let started = std::time::Instant::now();
    let step = std::time::Duration::from_millis(RETRY_WAIT_STOP_CHECK_MS);
    loop {
        if stop() {
            return false;
        }
        match delay.checked_sub(started.elapsed()) {
            Some(left) if !left.is_zero() => tokio::time::sleep(left.min(step)).await,
            _ => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_nested_cancel_guard_gives_back_the_outer_runs_flag() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let outer = Arc::new(AtomicBool::new(false));
        let _run = cancel_on_this_thread(Some(Arc::clone(&outer)));
        {
            let _round = cancel_on_this_thread(Some(Arc::new(AtomicBool::new(false))));
        }
        // The caller cancels after the inner round ended: still seen.
        outer.store(true, Ordering::Release);
        assert_eq!(stop_requested(), Some(CANCELLED));
        drop(_run);
        assert_eq!(stop_requested(), None);
    }

    #[test]
    fn ignored_signals_come_from_the_sigign_mask() {
        // A shell's background job: SIGINT (2) and SIGQUIT (3) ignored.
        let status = "Name:\tringdown\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000006\n";
        let ignored = ignored_signals(status);
        assert_ne!(ignored & (1 << (libc::SIGINT - 1)), 0);
        assert_eq!(ignored & (1 << (libc::SIGTERM - 1)), 0);
        assert_eq!(ignored_signals("Name:\tx\n"), 0);
        assert_eq!(ignored_signals("SigIgn:\tnot hex\n"), 0);
    }

    #[test]
    fn memory_limit_files_walk_each_memory_cgroup_up_to_its_root() {
        let v2 = memory_limit_files("0::/user.slice/session-1.scope\n");
        assert_eq!(
            v2,
            [
                "/sys/fs/cgroup/user.slice/session-1.scope/memory.max",
                "/sys/fs/cgroup/user.slice/memory.max",
                "/sys/fs/cgroup/memory.max",
            ]
            .map(PathBuf::from)
        );
        // A v1 hybrid host: the memory controller's line, and the unified
        // line whose file does not exist there (the reader skips it).
        let hybrid =
            memory_limit_files("5:devices:/\n4:memory:/process_api/1e4f\n1:cpu,cpuacct:/x\n0::/\n");
        assert_eq!(
            hybrid,
            [
                "/sys/fs/cgroup/memory/process_api/1e4f/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory.max",
            ]
            .map(PathBuf::from)
        );
        // Co-mounted controllers, and nothing outside the mount.
        assert_eq!(
            memory_limit_files("3:cpu,memory:/a\n"),
            [
                "/sys/fs/cgroup/memory/a/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            ]
            .map(PathBuf::from)
        );
        assert!(memory_limit_files("0::/a/../../etc\n").is_empty());
        assert!(memory_limit_files("garbage\n").is_empty());
    }

    #[test]
    fn memory_limit_values() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("67108864\n"), Some(64 << 20));
        assert_eq!(
            parse_memory_limit("9223372036854771712\n"),
            Some(9223372036854771712)
        );
        assert_eq!(parse_memory_limit(""), None);
    }
}

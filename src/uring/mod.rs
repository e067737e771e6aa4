//! The only module that touches `tokio_uring`. It exposes a small, safe
//! surface: the per-core runtime, TCP streams, positional file writes and the
//! aligned buffer pool. Replacing tokio-uring (compio, raw io-uring) touches
//! this module alone. It also holds the crate's other `unsafe` system call,
//! a read of cached bytes only (`cached`).

mod buffers;
mod cached;
mod file;
mod net;

pub use buffers::{AlignedBuf, BufferPool, PoolBuf, REGISTRATION_SKIPPED, Registration};
pub use cached::pread_cached;
pub use file::File;
pub use net::{Stopping, TcpStream};

use crate::error::Error;

/// Submission queue depth of each core's ring: connections × 2 in-flight ops
/// plus writes; 256 leaves ample headroom at the flag limits we use. Where
/// the kernel charges rings to a small RLIMIT_MEMLOCK (64 KiB on older
/// distributions: two rings of 256 entries do not fit), smaller rings are
/// tried before giving up: a full submission queue is submitted and refilled,
/// which costs system calls, not correctness.
const RING_ENTRIES: [u32; 3] = [256, 64, 16];

/// The ring of a thread that makes one control-plane call at a time (the
/// listing, authorization): a few operations in flight. Small, so that
/// under a small RLIMIT_MEMLOCK it never takes what a core's ring needs.
const CONTROL_RING_ENTRIES: [u32; 1] = [16];

/// A core's io_uring runtime (a current-thread tokio runtime driven by a ring).
pub struct Runtime {
    inner: tokio_uring::Runtime,
}

impl Runtime {
    /// Creates this thread's ring. Fails with a message naming the likely cause
    /// instead of panicking as `tokio_uring::start` would.
    pub fn new() -> Result<Runtime, Error> {
        Runtime::sized(&RING_ENTRIES)
    }

    /// `new` for a control-plane thread (`CONTROL_RING_ENTRIES`).
    pub fn control() -> Result<Runtime, Error> {
        Runtime::sized(&CONTROL_RING_ENTRIES)
    }

    /// The first ring of `sizes` (entries, largest first) that fits.
    fn sized(sizes: &[u32]) -> Result<Runtime, Error> {
        let mut last_error = None;
        for &entries in sizes {
            let mut builder = tokio_uring::builder();
            builder.entries(entries);
            match tokio_uring::Runtime::new(&builder) {
                Ok(inner) => return Ok(Runtime { inner }),
                Err(error) if error.raw_os_error() == Some(libc::ENOMEM) => {
                    last_error = Some(error);
                }
                Err(error) => return Err(Error::UringUnavailable(describe_uring_error(&error))),
            }
        }
        let error = last_error.expect("every size was tried");
        Err(Error::UringUnavailable(describe_uring_error(&error)))
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.inner.block_on(future)
    }
}

/// Spawns a task on the current core's runtime.
pub fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + 'static,
{
    tokio_uring::spawn(task)
}

fn describe_uring_error(error: &std::io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(0);
    match error.raw_os_error() {
        Some(libc::ENOSYS) => {
            format!(
                "io_uring_setup: {error}: the kernel lacks io_uring (needs Linux 5.11+) or a seccomp filter hides it"
            )
        }
        Some(libc::EPERM) if disabled > 0 => format!(
            "io_uring_setup: {error}: sysctl kernel.io_uring_disabled={disabled} forbids it; set it to 0 (or add this user to kernel.io_uring_group)"
        ),
        Some(libc::EPERM) => format!(
            "io_uring_setup: {error}: blocked, most likely by a seccomp profile (Docker/containerd defaults block io_uring; see deploy/ for a profile that allows it)"
        ),
        Some(libc::ENOMEM) => format!(
            "io_uring_setup: {error}: not enough locked memory for the ring (raise RLIMIT_MEMLOCK)"
        ),
        _ => format!("io_uring_setup: {error}"),
    }
}

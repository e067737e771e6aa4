//! Page-aligned I/O buffers and the per-core pool that hands them out.
//!
//! The pool is registered with the core's ring when RLIMIT_MEMLOCK allows
//! (`write_fixed_at` / `read_fixed` then skip the per-I/O page pinning), and
//! otherwise falls back to the same aligned buffers used with plain positional
//! writes. Either way the fixed number of buffers *is* the backpressure: no free
//! buffer means no receive.
//!
//! A few buffers are held back for the connection that receives the lowest
//! unhashed offset of an object: in-order hashing releases buffers only after
//! the bytes before them are hashed, so without the reserve, later chunks could
//! hold every buffer while the first one starves (DESIGN.md field notes).

use std::cell::RefCell;
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;

use tokio::sync::Notify;
use tokio_uring::buf::fixed::{FixedBuf, FixedBufRegistry};
use tokio_uring::buf::{IoBuf, IoBufMut};

use crate::config::{DIRECT_IO_ALIGN_BYTES, HEAD_RESERVE_DIVISOR};

/// One private anonymous mapping, zero-filled, that a pool's buffers are
/// carved from; unmapped when the last of them goes. Mapped rather than
/// taken from malloc, so a dropped pool's pages go back to the kernel at
/// once (a `get` runs an engine, with its own core threads, per round, as
/// may a library caller per object; glibc may keep a freed block in the
/// arena of a thread that has exited), and zeroed pages cost nothing until
/// touched (`alloc_zeroed` with 4 KiB alignment memsets the whole pool up
/// front).
///
/// One mapping, not one per buffer, so it can be made of huge pages
/// (`MADV_HUGEPAGE`, where transparent huge pages are on `madvise`, as
/// here): registration faults in and pins every page, and 4 KiB pages made
/// that 20 ms of a one-file restore's 31 ms of CPU (`perf record`).
struct Mapping {
    ptr: NonNull<u8>,
    len_bytes: usize,
}

impl Mapping {
    fn try_new(len_bytes: usize) -> std::io::Result<Mapping> {
        assert!(len_bytes > 0);
        // SAFETY: a fresh private anonymous mapping of non-zero length
        // (asserted above) aliases nothing; it is unmapped once, in `drop`.
        let mapped = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len_bytes,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        };
        let raw = mapped.map_err(std::io::Error::from)?;
        let ptr = NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
        // Advice only: without transparent huge pages the pool is made of
        // small ones, as before.
        // SAFETY: the range is exactly the mapping made above.
        let _ = unsafe { rustix::mm::madvise(raw, len_bytes, rustix::mm::Advice::LinuxHugepage) };
        Ok(Mapping { ptr, len_bytes })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `try_new` with exactly this length, unmapped
        // once; every buffer carved from it holds an `Rc` to it, so none
        // outlives it.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len_bytes) };
    }
}

/// A zero-initialised, page-aligned buffer: a slice of a pool's `Mapping`
/// that no other buffer overlaps. Its whole capacity is always initialised
/// memory, so exposing it as `&mut [u8]` is sound.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity_bytes: usize,
    /// Bytes tokio-uring considers initialised; never above `capacity_bytes`.
    init_bytes: usize,
    /// Keeps the memory mapped while the buffer lives.
    _mapping: Rc<Mapping>,
}

impl AlignedBuf {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `capacity_bytes` zero-initialised bytes of
        // the mapping that no other buffer overlaps, and the `&mut self`
        // borrow makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity_bytes) }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`, with a shared borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity_bytes) }
    }
}

// SAFETY: the mapping never moves while the buffer lives, so the
// pointer stays valid for as long as the kernel may use it; the lengths
// reported never exceed the allocation.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.init_bytes
    }
    fn bytes_total(&self) -> usize {
        self.capacity_bytes
    }
}

// SAFETY: as for `IoBuf`; `set_init` only ever raises the initialised length
// and is bounded by the capacity, all of which is initialised anyway.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        self.init_bytes = self.init_bytes.max(pos.min(self.capacity_bytes));
    }
}

/// Where the pool's memory lives.
enum Storage {
    /// Registered with this core's ring: buffers are checked out by index.
    Registered(FixedBufRegistry<AlignedBuf>),
    /// Not registered: the buffers themselves wait in their slots.
    Owned(RefCell<Vec<Option<AlignedBuf>>>),
}

struct PoolInner {
    storage: Storage,
    free_indices: RefCell<Vec<u16>>,
    buffer_size_bytes: usize,
    /// Buffers only the connection at the hash frontier may take.
    reserve_count: usize,
    returned: Notify,
}

/// The per-core buffer pool. Cheap to clone (an `Rc`); never leaves its core.
#[derive(Clone)]
pub struct BufferPool {
    inner: Rc<PoolInner>,
}

/// Why the pool is not registered, for the one-time message.
#[derive(Debug, Clone)]
pub enum Registration {
    Registered,
    Unregistered { reason: String },
}

impl BufferPool {
    /// Maps the `buffer_count` buffers of a pool: before its core takes
    /// work, so that memory the process may not have (RLIMIT_AS) is an error
    /// of the run's start, not an abort.
    pub fn map(buffer_count: usize, buffer_size_bytes: usize) -> std::io::Result<Vec<AlignedBuf>> {
        assert!(buffer_count > 0 && buffer_size_bytes % DIRECT_IO_ALIGN_BYTES == 0);
        let len_bytes = buffer_count
            .checked_mul(buffer_size_bytes)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        let mapping = Rc::new(Mapping::try_new(len_bytes)?);
        Ok((0..buffer_count)
            .map(|index| AlignedBuf {
                // SAFETY: `index * buffer_size_bytes` < `len_bytes`: within
                // the mapping, whose start is not null.
                ptr: unsafe {
                    NonNull::new_unchecked(mapping.ptr.as_ptr().add(index * buffer_size_bytes))
                },
                capacity_bytes: buffer_size_bytes,
                init_bytes: buffer_size_bytes,
                _mapping: Rc::clone(&mapping),
            })
            .collect())
    }

    /// A pool of `buffers` (from `map`, all of one size) that, if
    /// `try_register`, registers them with the current core's ring. Must run
    /// inside that core's runtime. Fails only where registration failed and
    /// the buffers mapped again in its place could not be.
    pub fn new(
        buffers: Vec<AlignedBuf>,
        try_register: bool,
    ) -> io::Result<(BufferPool, Registration)> {
        let buffer_count = buffers.len();
        assert!(buffer_count >= 2 && buffer_count <= u16::MAX as usize);
        let buffer_size_bytes = buffers[0].capacity_bytes;
        let buffers = buffers.into_iter();
        let (storage, registration) = if try_register {
            let registry = FixedBufRegistry::new(buffers);
            match registry.register() {
                Ok(()) => (Storage::Registered(registry), Registration::Registered),
                Err(error) => {
                    // Its buffers go before others are mapped in their place.
                    drop(registry);
                    let reason = describe_register_error(&error, buffer_count * buffer_size_bytes);
                    let buffers = BufferPool::map(buffer_count, buffer_size_bytes)?
                        .into_iter()
                        .map(Some)
                        .collect();
                    (
                        Storage::Owned(RefCell::new(buffers)),
                        Registration::Unregistered { reason },
                    )
                }
            }
        } else {
            let reason = format!("{REGISTRATION_SKIPPED} (RLIMIT_MEMLOCK too small for the pool)");
            (
                Storage::Owned(RefCell::new(buffers.map(Some).collect())),
                Registration::Unregistered { reason },
            )
        };
        let pool = PoolInner {
            storage,
            free_indices: RefCell::new((0..buffer_count as u16).rev().collect()),
            buffer_size_bytes,
            reserve_count: (buffer_count / HEAD_RESERVE_DIVISOR).max(1),
            returned: Notify::new(),
        };
        Ok((
            BufferPool {
                inner: Rc::new(pool),
            },
            registration,
        ))
    }

    /// Takes a buffer now if one is free. The last `reserve_count` free
    /// buffers are the reserve: only a caller that may use it gets them.
    pub fn try_take(&self, may_use_reserve: bool) -> Option<PoolBuf> {
        let mut free = self.inner.free_indices.borrow_mut();
        if free.len() > self.inner.reserve_count || (may_use_reserve && !free.is_empty()) {
            let index = free.pop().expect("non-empty");
            drop(free);
            Some(self.check_out(index))
        } else {
            None
        }
    }

    /// Waits until `try_take(may_use_reserve())` succeeds. `may_use_reserve` is
    /// asked again after every wake-up, because a connection becomes the head
    /// of its object while it waits.
    pub async fn take(&self, may_use_reserve: impl Fn() -> bool) -> PoolBuf {
        loop {
            let notified = self.inner.returned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(buf) = self.try_take(may_use_reserve()) {
                return buf;
            }
            notified.await;
        }
    }

    /// Wakes every waiter so they re-check their reserve eligibility.
    pub fn wake_waiters(&self) {
        self.inner.returned.notify_waiters();
    }

    fn check_out(&self, index: u16) -> PoolBuf {
        let memory = match &self.inner.storage {
            Storage::Registered(registry) => {
                let fixed = registry
                    .check_out(index as usize)
                    .expect("a free index is checked in");
                Memory::Fixed(fixed)
            }
            Storage::Owned(slots) => {
                let buf = slots.borrow_mut()[index as usize]
                    .take()
                    .expect("a free index holds its buffer");
                Memory::Owned(buf)
            }
        };
        PoolBuf {
            pool: Rc::clone(&self.inner),
            index,
            memory: Some(memory),
            filled_bytes: 0,
        }
    }
}

/// How the notice of a pool not registered by choice begins: the CLI said
/// why already, before the run.
pub const REGISTRATION_SKIPPED: &str = "registration skipped";

fn describe_register_error(error: &io::Error, pool_bytes: usize) -> String {
    match error.raw_os_error() {
        Some(libc::ENOMEM) | Some(libc::EPERM) => format!(
            "registering {} MiB of buffers failed ({error}): RLIMIT_MEMLOCK is too small; \
             raise it (systemd LimitMEMLOCK=, `ulimit -l`, or `setcap cap_ipc_lock+ep ringdown`)",
            pool_bytes >> 20
        ),
        _ => format!("registering buffers failed: {error}"),
    }
}

pub(super) enum Memory {
    Fixed(FixedBuf),
    Owned(AlignedBuf),
}

/// A buffer checked out of a pool. It goes back to its pool when dropped.
/// Bytes `[0, filled_bytes)` hold data; the rest is spare capacity.
pub struct PoolBuf {
    pool: Rc<PoolInner>,
    index: u16,
    /// Always `Some` outside of an in-flight operation and `drop`.
    memory: Option<Memory>,
    filled_bytes: usize,
}

impl PoolBuf {
    pub fn capacity_bytes(&self) -> usize {
        self.pool.buffer_size_bytes
    }

    pub fn filled_bytes(&self) -> usize {
        self.filled_bytes
    }

    pub fn spare_bytes(&self) -> usize {
        self.capacity_bytes() - self.filled_bytes
    }

    pub fn is_full(&self) -> bool {
        self.filled_bytes == self.capacity_bytes()
    }

    /// The filled bytes.
    pub fn filled(&self) -> &[u8] {
        &self.whole()[..self.filled_bytes]
    }

    /// Copies as much of `src` as fits after the filled bytes; returns how much.
    pub fn fill_from(&mut self, src: &[u8]) -> usize {
        let start = self.filled_bytes;
        let n = src.len().min(self.spare_bytes());
        self.whole_mut()[start..start + n].copy_from_slice(&src[..n]);
        self.filled_bytes += n;
        n
    }

    /// The filled bytes, to transform in place (TLS records decrypted where
    /// they were received).
    pub fn filled_mut(&mut self) -> &mut [u8] {
        let filled = self.filled_bytes;
        &mut self.whole_mut()[..filled]
    }

    /// Forgets the filled bytes from `len` on.
    pub fn truncate(&mut self, len: usize) {
        assert!(len <= self.filled_bytes, "truncate past the filled bytes");
        self.filled_bytes = len;
    }

    /// The unfilled capacity, for a copy (TLS plaintext) to land in; call
    /// `advance` with what was written.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let start = self.filled_bytes;
        &mut self.whole_mut()[start..]
    }

    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.spare_bytes(),
            "advance past the buffer's capacity"
        );
        self.filled_bytes += n;
    }

    /// Zeroes the spare capacity up to `aligned_len` and marks it filled, so an
    /// O_DIRECT write of a short tail covers whole blocks. Returns the padding.
    pub fn pad_to(&mut self, aligned_len: usize) -> usize {
        assert!(aligned_len >= self.filled_bytes && aligned_len <= self.capacity_bytes());
        let start = self.filled_bytes;
        self.whole_mut()[start..aligned_len].fill(0);
        let padding = aligned_len - start;
        self.filled_bytes = aligned_len;
        padding
    }

    fn whole(&self) -> &[u8] {
        match self.memory.as_ref().expect("buffer memory present") {
            // The registered buffer's memory is an `AlignedBuf`, all initialised;
            // FixedBuf's Deref stops at its own init mark, which we keep at capacity.
            Memory::Fixed(fixed) => &fixed[..],
            Memory::Owned(buf) => buf.as_slice(),
        }
    }

    fn whole_mut(&mut self) -> &mut [u8] {
        match self.memory.as_mut().expect("buffer memory present") {
            Memory::Fixed(fixed) => &mut fixed[..],
            Memory::Owned(buf) => buf.as_mut_slice(),
        }
    }

    pub(super) fn take_memory(&mut self) -> Memory {
        self.memory.take().expect("buffer memory present")
    }

    pub(super) fn put_memory(&mut self, memory: Memory) {
        debug_assert!(self.memory.is_none());
        self.memory = Some(memory);
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        // Check the FixedBuf back into the registry (or the buffer into its
        // slot) before the index becomes free again.
        match self.memory.take() {
            Some(Memory::Fixed(fixed)) => drop(fixed),
            Some(Memory::Owned(buf)) => {
                if let Storage::Owned(slots) = &self.pool.storage {
                    slots.borrow_mut()[self.index as usize] = Some(buf);
                }
            }
            // Dropped mid-operation: the op owns the memory and will free it;
            // the index is lost to the pool, which only shrinks the window.
            None => return,
        }
        let mut free = self.pool.free_indices.borrow_mut();
        debug_assert!(!free.contains(&self.index), "buffer returned twice");
        free.push(self.index);
        drop(free);
        self.pool.returned.notify_waiters();
    }
}

impl AsRef<[u8]> for PoolBuf {
    fn as_ref(&self) -> &[u8] {
        self.filled()
    }
}

//! Positional writes from pool buffers: no seek, no writer thread.
//!
//! Every write must be awaited before the file is truncated, renamed or
//! synced: dropping a tokio-uring future does not cancel the operation, so a
//! late write could land after them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tokio_uring::buf::BoundedBuf;

use super::buffers::{Memory, PoolBuf};
use crate::config::BUFFERED_WRITE_PIECE_BYTES;

pub struct File {
    inner: tokio_uring::fs::File,
    raw_fd: RawFd,
    /// O_DIRECT is on: one write per buffer, whole blocks (until `end_direct`).
    direct: std::cell::Cell<bool>,
}

impl File {
    /// Wraps an opened file for this core's ring (each core owns its own
    /// fd). `direct`: it was opened with O_DIRECT, as its opener knows.
    pub fn new(fd: OwnedFd, direct: bool) -> File {
        let raw_fd = fd.as_raw_fd();
        File {
            inner: tokio_uring::fs::File::from_std(std::fs::File::from(fd)),
            raw_fd,
            direct: std::cell::Cell::new(direct),
        }
    }

    /// Whether writes go around the page cache (whole blocks only).
    pub fn is_direct(&self) -> bool {
        self.direct.get()
    }

    /// Turns O_DIRECT off, for a last piece shorter than a block: written
    /// through the page cache instead, the file needs no padding cut back.
    /// Every write so far must have completed (they have, awaited).
    pub fn end_direct(&self) -> io::Result<()> {
        if !self.direct.get() {
            return Ok(());
        }
        let flags = rustix::fs::fcntl_getfl(self.fd())?;
        rustix::fs::fcntl_setfl(self.fd(), flags - rustix::fs::OFlags::DIRECT)?;
        self.direct.set(false);
        Ok(())
    }

    /// `inner`'s descriptor, for the syscalls tokio-uring does not wrap.
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `raw_fd` is `inner`'s descriptor, open for as long as
        // `self` (it is closed only by `close`, which consumes `self`), and
        // the borrow cannot outlive `self`.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.raw_fd) }
    }

    /// A second descriptor of the same open file (its offset-free writes,
    /// O_DIRECT flag and allocation are the open file's, so they carry
    /// over): for handing the file to another core or task.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd().try_clone_to_owned()
    }

    /// Writes the buffer's filled bytes at `offset_bytes`, all of them, and
    /// hands the buffer back whatever happened. Through the page cache, in
    /// pieces of `BUFFERED_WRITE_PIECE_BYTES` (see there why).
    pub async fn write_all_at(
        &self,
        mut buf: PoolBuf,
        offset_bytes: u64,
    ) -> (io::Result<()>, PoolBuf) {
        let len = buf.filled_bytes();
        let piece_bytes = if self.direct.get() {
            len.max(1)
        } else {
            BUFFERED_WRITE_PIECE_BYTES
        };
        let mut memory = buf.take_memory();
        let mut result = Ok(());
        let mut start = 0;
        while start < len && result.is_ok() {
            let end = len.min(start + piece_bytes);
            let at = offset_bytes + start as u64;
            (result, memory) = match memory {
                Memory::Fixed(fixed) => {
                    let (result, slice) = self
                        .inner
                        .write_fixed_all_at(fixed.slice(start..end), at)
                        .await;
                    (result, Memory::Fixed(slice.into_inner()))
                }
                Memory::Owned(owned) => {
                    let (result, slice) =
                        self.inner.write_all_at(owned.slice(start..end), at).await;
                    (result, Memory::Owned(slice.into_inner()))
                }
            };
            start = end;
        }
        buf.put_memory(memory);
        (result, buf)
    }

    /// Writes `bytes` (a few, through the page cache: see `end_direct`) at
    /// `offset_bytes`, all of them.
    pub async fn write_bytes_at(&self, bytes: Vec<u8>, offset_bytes: u64) -> io::Result<()> {
        debug_assert!(!self.direct.get(), "O_DIRECT wants a pool buffer");
        let (result, _) = self.inner.write_all_at(bytes, offset_bytes).await;
        result
    }

    pub async fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all().await
    }

    pub async fn close(self) -> io::Result<()> {
        self.inner.close().await
    }
}

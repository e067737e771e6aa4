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
    /// Opened with O_DIRECT: one write per buffer, whole blocks.
    direct: bool,
}

impl File {
    /// Wraps an opened file for this core's ring (each core owns its own
    /// fd). `direct`: it was opened with O_DIRECT, as its opener knows.
    pub fn new(fd: OwnedFd, direct: bool) -> File {
        let raw_fd = fd.as_raw_fd();
        File {
            inner: tokio_uring::fs::File::from_std(std::fs::File::from(fd)),
            raw_fd,
            direct,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.raw_fd
    }

    /// A second descriptor of the same open file (its offset-free writes,
    /// O_DIRECT flag and allocation are the open file's, so they carry
    /// over): for handing the file to another core or task.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        // SAFETY: `raw_fd` is `inner`'s descriptor, open for as long as
        // `self` (it is closed only by `close`, which consumes `self`); the
        // borrow ends before this returns.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.raw_fd) };
        borrowed.try_clone_to_owned()
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
        let piece_bytes = if self.direct {
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

    /// Reserves `len_bytes` so ENOSPC arrives here rather than mid-file.
    pub async fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        if len_bytes == 0 {
            return Ok(());
        }
        self.inner.fallocate(0, len_bytes, 0).await
    }

    pub async fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all().await
    }

    pub async fn close(self) -> io::Result<()> {
        self.inner.close().await
    }
}

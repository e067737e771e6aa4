//! Positional writes from pool buffers: no seek, no writer thread.
//!
//! Every write must be awaited before the file is truncated, renamed or
//! synced: dropping a tokio-uring future does not cancel the operation, so a
//! late write could land after them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio_uring::buf::BoundedBuf;

use super::buffers::{Memory, PoolBuf};

pub struct File {
    inner: tokio_uring::fs::File,
    raw_fd: RawFd,
}

impl File {
    /// Wraps an opened file for this core's ring (each core owns its own fd).
    pub fn from_std(file: std::fs::File) -> File {
        let raw_fd = file.as_raw_fd();
        File {
            inner: tokio_uring::fs::File::from_std(file),
            raw_fd,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.raw_fd
    }

    /// Writes the buffer's filled bytes at `offset_bytes`, all of them, and
    /// hands the buffer back whatever happened.
    pub async fn write_all_at(
        &self,
        mut buf: PoolBuf,
        offset_bytes: u64,
    ) -> (io::Result<()>, PoolBuf) {
        let len = buf.filled_bytes();
        if len == 0 {
            return (Ok(()), buf);
        }
        match buf.take_memory() {
            Memory::Fixed(fixed) => {
                let (result, slice) = self
                    .inner
                    .write_fixed_all_at(fixed.slice(..len), offset_bytes)
                    .await;
                buf.put_memory(Memory::Fixed(slice.into_inner()));
                (result, buf)
            }
            Memory::Owned(owned) => {
                let (result, slice) = self
                    .inner
                    .write_all_at(owned.slice(..len), offset_bytes)
                    .await;
                buf.put_memory(Memory::Owned(slice.into_inner()));
                (result, buf)
            }
        }
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

//! Reads that never wait for the disk, for threads that must not block
//! (`ringdown serve`'s async workers): only bytes already in the page cache.
//! Here because it reads into a `Vec`'s spare capacity, which takes `unsafe`:
//! zeroing the capacity first cost 4% of the server's CPU (h44).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Appends to `buf`, up to its capacity, the bytes of `file` from `offset`
/// that the page cache holds (`preadv2(RWF_NOWAIT)`) and returns how many
/// (0 at the end of the file, or when `buf` is full). `WouldBlock` when the
/// first of them is not cached; another error when the file system cannot
/// read without blocking: either way a blocking read can take over.
pub fn pread_cached(file: &impl AsFd, buf: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    if spare.is_empty() {
        return Ok(0);
    }
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    // SAFETY: the one iovec covers `spare`, memory `buf` owns and nothing
    // else borrows during the call; the kernel writes at most `iov_len`
    // bytes into it and reads nothing from it.
    let read =
        unsafe { libc::preadv2(file.as_fd().as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    debug_assert!(read <= iov.iov_len, "preadv2 read past its buffer");
    // SAFETY: the kernel initialised the first `read` bytes of the spare
    // capacity, and `read` ≤ its length.
    unsafe { buf.set_len(buf.len() + read) };
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_cached_bytes_into_the_spare_capacity() {
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        // Just written: the pages are in the cache.
        let mut buf = Vec::with_capacity(content.len());
        let mut offset = 0;
        loop {
            let read = pread_cached(&file, &mut buf, offset).unwrap();
            if read == 0 {
                break;
            }
            offset += read as u64;
        }
        assert_eq!(buf, content);
        // Past the end: nothing, and a full buffer reads nothing.
        let mut past = Vec::with_capacity(16);
        assert_eq!(pread_cached(&file, &mut past, 20_000).unwrap(), 0);
        assert_eq!(pread_cached(&file, &mut buf, 0).unwrap(), 0);
        assert_eq!(buf.len(), content.len());
    }
}

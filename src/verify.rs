//! In-order SHA1 of one object whose chunks arrive out of order, possibly on
//! several cores.
//!
//! Buffers cannot cross threads (registered buffers belong to their ring), so
//! the data stays on the core that received it and the small SHA1 state moves
//! instead: whichever core holds the bytes at the *frontier* (the lowest
//! unhashed offset) hashes them and advances the frontier, then wakes the other
//! cores so the next owner continues. Each core keeps its written-but-unhashed
//! buffers in a `ReorderWindow`, bounded by its buffer pool.
//!
//! Also the SHA1 of bytes in memory at full speed (`sha1_update`) and of a
//! local file (`sha1_of`: `--skip-existing`, a resumed prefix).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha1::{Digest, Sha1};
use tokio::sync::Notify;

/// The shared hashing state of one object.
pub struct SharedDigest {
    size_bytes: u64,
    cursor: Mutex<Cursor>,
    /// Mirror of `cursor.next_offset`, readable without the lock.
    frontier_bytes: AtomicU64,
    /// One waker per core, woken when the frontier moves.
    core_wakers: Vec<Arc<Notify>>,
}

struct Cursor {
    next_offset: u64,
    sha1: Sha1,
}

impl SharedDigest {
    #[cfg(test)]
    pub fn new(size_bytes: u64, cores: usize) -> SharedDigest {
        Self::resume(size_bytes, cores, 0, Sha1::new())
    }

    /// Continues from a state that already covers `[0, offset)`.
    pub fn resume(size_bytes: u64, cores: usize, offset: u64, sha1: Sha1) -> SharedDigest {
        SharedDigest {
            size_bytes,
            cursor: Mutex::new(Cursor {
                next_offset: offset,
                sha1,
            }),
            frontier_bytes: AtomicU64::new(offset),
            core_wakers: (0..cores).map(|_| Arc::new(Notify::new())).collect(),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The lowest offset not yet hashed.
    pub fn frontier(&self) -> u64 {
        self.frontier_bytes.load(Ordering::Acquire)
    }

    pub fn is_complete(&self) -> bool {
        self.frontier() == self.size_bytes
    }

    /// Cores that may hold bytes of the object (one waker each).
    pub fn cores(&self) -> usize {
        self.core_wakers.len()
    }

    pub fn core_waker(&self, core: usize) -> Arc<Notify> {
        Arc::clone(&self.core_wakers[core])
    }

    /// Hashes `data` if it starts at the frontier; returns whether it did.
    pub fn hash_if_next(&self, offset: u64, data: &[u8]) -> bool {
        let mut cursor = self.cursor.lock().expect("digest lock");
        if cursor.next_offset != offset {
            return false;
        }
        let end = offset + data.len() as u64;
        assert!(end <= self.size_bytes, "hashed past the object's end");
        sha1_update(&mut cursor.sha1, data);
        cursor.next_offset = end;
        self.frontier_bytes.store(end, Ordering::Release);
        true
    }

    /// Wakes every core's hasher: the frontier moved, or the job ended.
    pub fn wake_all(&self) {
        self.core_wakers.iter().for_each(|waker| waker.notify_one());
    }

    /// The digest of the whole object. Panics unless every byte was hashed.
    pub fn finish(&self) -> [u8; 20] {
        let cursor = self.cursor.lock().expect("digest lock");
        assert_eq!(
            cursor.next_offset, self.size_bytes,
            "digest finished before the last byte"
        );
        cursor.sha1.clone().finalize().into()
    }
}

/// Written buffers of one core waiting for the frontier to reach them.
pub struct ReorderWindow<B> {
    pending: BTreeMap<u64, (B, usize)>,
}

impl<B: AsRef<[u8]>> Default for ReorderWindow<B> {
    fn default() -> Self {
        ReorderWindow {
            pending: BTreeMap::new(),
        }
    }
}

impl<B: AsRef<[u8]>> ReorderWindow<B> {
    /// Parks a buffer whose first `data_len` bytes belong at `offset`
    /// (the rest, if any, is O_DIRECT padding).
    pub fn insert(&mut self, offset: u64, buf: B, data_len: usize) {
        debug_assert!(data_len <= buf.as_ref().len());
        let previous = self.pending.insert(offset, (buf, data_len));
        debug_assert!(previous.is_none(), "two buffers for offset {offset}");
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the buffer at the frontier, if this core holds it.
    pub fn take_at(&mut self, frontier: u64) -> Option<(u64, B, usize)> {
        self.pending
            .remove(&frontier)
            .map(|(buf, len)| (frontier, buf, len))
    }

    /// Drops every parked buffer (the download was abandoned).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Drops the parked buffers at `offset` and past it, which the frontier
    /// will never reach (a gap before them stays); returns how many.
    pub fn release_from(&mut self, offset: u64) -> usize {
        let released = self.pending.split_off(&offset);
        released.len()
    }
}

/// Lowercase hex of a digest.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// Feeds `data` to `sha1`, a piece at a time, after loading one byte of every
/// cache line of the next piece.
///
/// SHA1 is one serial chain of dependent rounds, so each cache miss stalls it,
/// and the hardware prefetcher does not run far enough ahead to hide them: on
/// the benchmark host, data that had left the cache (a buffer received a few
/// buffers ago) hashed at 1.2 GB/s against 2.15 GB/s in cache. The touches are
/// independent loads, which the CPU overlaps with each other and with the
/// rounds; with them, data out of cache hashes at ~1.85 GB/s
/// (`cargo bench --bench micro -- sha1`). Safe code: plain loads behave like
/// prefetch instructions here (measured alike).
pub fn sha1_update(sha1: &mut Sha1, data: &[u8]) {
    use crate::config::{CACHE_LINE_BYTES, SHA1_PIECE_BYTES};
    let mut pieces = data.chunks(SHA1_PIECE_BYTES).peekable();
    while let Some(piece) = pieces.next() {
        if let Some(next) = pieces.peek() {
            let mut touched = 0u8;
            for line in next.iter().step_by(CACHE_LINE_BYTES) {
                touched |= std::hint::black_box(*line);
            }
            std::hint::black_box(touched);
        }
        sha1.update(piece);
    }
}

/// SHA1 of everything `reader` yields (a local file: `--skip-existing`, the
/// prefix of a partial file on resume), with the byte count.
pub fn sha1_of(mut reader: impl std::io::Read) -> std::io::Result<(sha1::Sha1, u64)> {
    use sha1::Digest;
    let mut sha1 = sha1::Sha1::new();
    let mut buffer = vec![0u8; crate::config::LOCAL_HASH_READ_BYTES];
    let mut bytes = 0u64;
    loop {
        match reader.read(&mut buffer)? {
            0 => return Ok((sha1, bytes)),
            n => {
                sha1_update(&mut sha1, &buffer[..n]);
                bytes += n as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha1_of(data: &[u8]) -> [u8; 20] {
        Sha1::digest(data).into()
    }

    #[test]
    fn sha1_update_hashes_every_byte_once_at_piece_edges() {
        use crate::config::SHA1_PIECE_BYTES;
        let data: Vec<u8> = (0..3 * SHA1_PIECE_BYTES + 7)
            .map(|i| (i * 7) as u8)
            .collect();
        for len in [
            0,
            1,
            SHA1_PIECE_BYTES - 1,
            SHA1_PIECE_BYTES,
            SHA1_PIECE_BYTES + 1,
            data.len(),
        ] {
            let mut sha1 = Sha1::new();
            sha1_update(&mut sha1, &data[..len]);
            assert_eq!(
                <[u8; 20]>::from(sha1.finalize()),
                sha1_of(&data[..len]),
                "{len} bytes"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn sha1_update_in_any_split_is_the_digest(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..100_000),
            split in 0usize..100_000,
        ) {
            let split = split.min(data.len());
            let mut sha1 = Sha1::new();
            sha1_update(&mut sha1, &data[..split]);
            sha1_update(&mut sha1, &data[split..]);
            proptest::prop_assert_eq!(<[u8; 20]>::from(sha1.finalize()), sha1_of(&data));
        }
    }

    #[test]
    fn release_from_drops_what_lies_past_a_gap() {
        let mut window = ReorderWindow::default();
        for offset in [0u64, 100, 200, 300] {
            window.insert(offset, vec![0u8; 100], 100);
        }
        assert_eq!(window.release_from(200), 2);
        assert_eq!(window.len(), 2);
        assert!(window.take_at(200).is_none());
        assert!(window.take_at(100).is_some());
        assert_eq!(window.release_from(u64::MAX), 0);
    }

    #[test]
    fn out_of_order_pieces_on_two_cores_hash_in_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let digest = SharedDigest::new(data.len() as u64, 2);
        let mut windows = [ReorderWindow::default(), ReorderWindow::default()];
        // Pieces of 1000 bytes, delivered in a scrambled order to alternating cores.
        let order = [3usize, 0, 9, 1, 2, 8, 4, 7, 5, 6];
        for (step, &piece) in order.iter().enumerate() {
            let core = step % 2;
            let offset = piece as u64 * 1000;
            windows[core].insert(
                offset,
                data[piece * 1000..piece * 1000 + 1000].to_vec(),
                1000,
            );
            // Drain both cores until nothing moves, as their hasher tasks would.
            loop {
                let mut moved = false;
                for window in windows.iter_mut() {
                    while let Some((offset, buf, len)) = window.take_at(digest.frontier()) {
                        assert!(digest.hash_if_next(offset, &buf[..len]));
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        assert!(digest.is_complete());
        assert!(windows.iter().all(ReorderWindow::is_empty));
        assert_eq!(digest.finish(), sha1_of(&data));
    }

    #[test]
    fn padding_beyond_data_len_is_not_hashed() {
        let digest = SharedDigest::new(5, 1);
        let mut window = ReorderWindow::default();
        window.insert(0, b"hello\0\0\0".to_vec(), 5);
        let (offset, buf, len) = window.take_at(0).unwrap();
        assert!(digest.hash_if_next(offset, &buf[..len]));
        assert_eq!(
            to_hex(&digest.finish()),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
    }

    #[test]
    fn a_piece_off_the_frontier_is_refused() {
        let digest = SharedDigest::new(10, 1);
        assert!(!digest.hash_if_next(5, b"world"));
        assert_eq!(digest.frontier(), 0);
    }
}

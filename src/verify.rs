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
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

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

/// How `sha1_update` walks its input: plainly, or a piece at a time after
/// loading one byte of every cache line of the next piece.
///
/// SHA1 is one serial chain of dependent rounds, so each cache miss stalls
/// it. Which feed is faster depends on the host, and the same VM moves
/// between hosts (`cargo bench --bench micro -- sha1`):
/// - on an EPYC with AVX-512 (2026-11-28), data that had left the cache
///   hashed at 1.2 GB/s plainly and 1.85 GB/s touched ahead (2.15 in cache):
///   the touches are independent loads the CPU overlaps with the rounds;
/// - on an EPYC without it (2026-11-29), plainly hashed 1.52 GB/s in cache and
///   out, touched ahead 1.28: the hardware prefetcher keeps up, and the
///   touches only cost.
///
/// So the run times both on its own first inputs and keeps the faster
/// (`FeedChoice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha1Feed {
    Plain,
    TouchAhead,
}

impl Sha1Feed {
    pub fn update(self, sha1: &mut Sha1, data: &[u8]) {
        use crate::config::{CACHE_LINE_BYTES, SHA1_PIECE_BYTES};
        match self {
            Sha1Feed::Plain => sha1.update(data),
            Sha1Feed::TouchAhead => {
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
        }
    }

    /// The name in `--stats-json`.
    pub fn name(self) -> &'static str {
        match self {
            Sha1Feed::Plain => "plain",
            Sha1Feed::TouchAhead => "touch-ahead",
        }
    }
}

/// Timings of the two feeds on the run's first inputs of at least
/// `SHA1_FEED_TRIAL_MIN_BYTES`, taken in turn (so both see the same mix of
/// data in and out of cache), `SHA1_FEED_TRIALS` each. I/O-free.
#[derive(Debug, Default)]
struct FeedTrials {
    plain_ps_per_byte: Vec<u64>,
    touch_ps_per_byte: Vec<u64>,
}

impl FeedTrials {
    /// The feed the next trial uses, or `None` once both have their trials.
    fn next_feed(&self) -> Option<Sha1Feed> {
        use crate::config::SHA1_FEED_TRIALS;
        if self.plain_ps_per_byte.len() <= self.touch_ps_per_byte.len() {
            (self.plain_ps_per_byte.len() < SHA1_FEED_TRIALS).then_some(Sha1Feed::Plain)
        } else {
            Some(Sha1Feed::TouchAhead)
        }
    }

    fn record(&mut self, feed: Sha1Feed, bytes: usize, elapsed: std::time::Duration) {
        let ps_per_byte = (elapsed.as_nanos() * 1000 / bytes.max(1) as u128) as u64;
        match feed {
            Sha1Feed::Plain => self.plain_ps_per_byte.push(ps_per_byte),
            Sha1Feed::TouchAhead => self.touch_ps_per_byte.push(ps_per_byte),
        }
    }

    /// The faster feed by median (a trial the thread was preempted in is
    /// an outlier, not the rule), once both have all their trials; plain
    /// on a tie.
    fn decided(&self) -> Option<Sha1Feed> {
        use crate::config::SHA1_FEED_TRIALS;
        fn median(samples: &[u64]) -> u64 {
            let mut sorted = samples.to_vec();
            sorted.sort_unstable();
            sorted[sorted.len() / 2]
        }
        if self.plain_ps_per_byte.len() < SHA1_FEED_TRIALS
            || self.touch_ps_per_byte.len() < SHA1_FEED_TRIALS
        {
            return None;
        }
        if median(&self.touch_ps_per_byte) < median(&self.plain_ps_per_byte) {
            Some(Sha1Feed::TouchAhead)
        } else {
            Some(Sha1Feed::Plain)
        }
    }
}

/// The process's choice of feed: trials first, then one feed for good.
/// Shared by every core; after the choice, one atomic load per call.
struct FeedChoice {
    /// `TRYING`, `PLAIN` or `TOUCH_AHEAD`.
    chosen: AtomicU8,
    trials: Mutex<FeedTrials>,
}

static FEED_CHOICE: FeedChoice = FeedChoice::new();

impl FeedChoice {
    const TRYING: u8 = 0;
    const PLAIN: u8 = 1;
    const TOUCH_AHEAD: u8 = 2;

    const fn new() -> FeedChoice {
        FeedChoice {
            chosen: AtomicU8::new(Self::TRYING),
            trials: Mutex::new(FeedTrials {
                plain_ps_per_byte: Vec::new(),
                touch_ps_per_byte: Vec::new(),
            }),
        }
    }

    fn chosen(&self) -> Option<Sha1Feed> {
        match self.chosen.load(Ordering::Relaxed) {
            Self::PLAIN => Some(Sha1Feed::Plain),
            Self::TOUCH_AHEAD => Some(Sha1Feed::TouchAhead),
            _ => None,
        }
    }

    /// A poisoned lock only means another core panicked mid-trial: the
    /// timings taken stand.
    fn trials(&self) -> std::sync::MutexGuard<'_, FeedTrials> {
        self.trials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, sha1: &mut Sha1, data: &[u8]) {
        use crate::config::SHA1_FEED_TRIAL_MIN_BYTES;
        if let Some(feed) = self.chosen() {
            return feed.update(sha1, data);
        }
        let trial = match data.len() >= SHA1_FEED_TRIAL_MIN_BYTES {
            true => self.trials().next_feed(),
            false => None,
        };
        let Some(feed) = trial else {
            return Sha1Feed::Plain.update(sha1, data);
        };
        let started = std::time::Instant::now();
        feed.update(sha1, data);
        let elapsed = started.elapsed();
        let mut trials = self.trials();
        // Cores take trials at once: one that ends after the choice was
        // made does not reopen it (the first choice is the one for good,
        // and the one `--stats-json` reports). The choice is only made
        // under this lock, so TRYING here stays TRYING until the store.
        if self.chosen().is_some() {
            return;
        }
        trials.record(feed, data.len(), elapsed);
        if let Some(decided) = trials.decided() {
            let code = match decided {
                Sha1Feed::Plain => Self::PLAIN,
                Sha1Feed::TouchAhead => Self::TOUCH_AHEAD,
            };
            self.chosen.store(code, Ordering::Relaxed);
        }
    }
}

/// Feeds `data` to `sha1` with the feed this host hashes fastest
/// ([`Sha1Feed`]); the run's first large inputs time both.
pub fn sha1_update(sha1: &mut Sha1, data: &[u8]) {
    FEED_CHOICE.update(sha1, data)
}

/// The feed this process chose, once it has (`--stats-json`: `sha1_feed`).
pub fn sha1_feed_chosen() -> Option<Sha1Feed> {
    FEED_CHOICE.chosen()
}

/// SHA1 of everything `reader` yields (a local file: `--skip-existing`, the
/// prefix of a partial file on resume), with the byte count. Hashed plainly
/// and never as a feed trial: a buffer `read` just filled is in cache, where
/// touching ahead gains nothing, and a resumed run's first inputs must not
/// choose the feed for the bytes it downloads.
pub fn sha1_of(mut reader: impl std::io::Read) -> std::io::Result<(sha1::Sha1, u64)> {
    use sha1::Digest;
    let mut sha1 = sha1::Sha1::new();
    let mut buffer = vec![0u8; crate::config::LOCAL_HASH_READ_BYTES];
    let mut bytes = 0u64;
    loop {
        match reader.read(&mut buffer)? {
            0 => return Ok((sha1, bytes)),
            n => {
                Sha1Feed::Plain.update(&mut sha1, &buffer[..n]);
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
    fn each_feed_hashes_every_byte_once_at_piece_edges() {
        use crate::config::SHA1_PIECE_BYTES;
        let data: Vec<u8> = (0..3 * SHA1_PIECE_BYTES + 7)
            .map(|i| (i * 7) as u8)
            .collect();
        for feed in [Sha1Feed::Plain, Sha1Feed::TouchAhead] {
            for len in [
                0,
                1,
                SHA1_PIECE_BYTES - 1,
                SHA1_PIECE_BYTES,
                SHA1_PIECE_BYTES + 1,
                data.len(),
            ] {
                let mut sha1 = Sha1::new();
                feed.update(&mut sha1, &data[..len]);
                assert_eq!(
                    <[u8; 20]>::from(sha1.finalize()),
                    sha1_of(&data[..len]),
                    "{feed:?}, {len} bytes"
                );
            }
        }
    }

    #[test]
    fn feed_trials_alternate_then_keep_the_faster_median() {
        use crate::config::SHA1_FEED_TRIALS;
        use std::time::Duration;
        let mut trials = FeedTrials::default();
        // Touch-ahead is faster (600 ps/byte against 700), but two of its
        // trials were preempted: the medians still pick it.
        for trial in 0..SHA1_FEED_TRIALS {
            assert_eq!(trials.decided(), None);
            assert_eq!(trials.next_feed(), Some(Sha1Feed::Plain));
            trials.record(Sha1Feed::Plain, 1 << 20, Duration::from_nanos(700 << 10));
            assert_eq!(trials.next_feed(), Some(Sha1Feed::TouchAhead));
            let preempted = if trial < 2 { 20 } else { 0 };
            let nanos = (600 << 10) + preempted * 1_000_000;
            trials.record(Sha1Feed::TouchAhead, 1 << 20, Duration::from_nanos(nanos));
        }
        assert_eq!(trials.next_feed(), None);
        assert_eq!(trials.decided(), Some(Sha1Feed::TouchAhead));

        // Where the touches only cost, plain is kept; a tie keeps plain too.
        for (touch_nanos, kept) in [(800u64, Sha1Feed::Plain), (700, Sha1Feed::Plain)] {
            let mut trials = FeedTrials::default();
            for _ in 0..SHA1_FEED_TRIALS {
                trials.record(Sha1Feed::Plain, 1000, Duration::from_nanos(700));
                trials.record(
                    Sha1Feed::TouchAhead,
                    1000,
                    Duration::from_nanos(touch_nanos),
                );
            }
            assert_eq!(trials.decided(), Some(kept), "touch at {touch_nanos} ns");
        }
    }

    #[test]
    fn the_process_keeps_one_feed_after_its_trials() {
        use crate::config::{SHA1_FEED_TRIAL_MIN_BYTES, SHA1_FEED_TRIALS};
        let choice = FeedChoice::new();
        let data: Vec<u8> = (0..SHA1_FEED_TRIAL_MIN_BYTES).map(|i| i as u8).collect();
        let mut sha1 = Sha1::new();
        // Short inputs are not trials.
        for _ in 0..4 * SHA1_FEED_TRIALS {
            choice.update(&mut sha1, &data[..SHA1_FEED_TRIAL_MIN_BYTES - 1]);
        }
        assert_eq!(choice.chosen(), None);
        for _ in 0..2 * SHA1_FEED_TRIALS {
            choice.update(&mut sha1, &data);
        }
        assert!(choice.chosen().is_some());
        let mut expected = Sha1::new();
        for _ in 0..4 * SHA1_FEED_TRIALS {
            expected.update(&data[..SHA1_FEED_TRIAL_MIN_BYTES - 1]);
        }
        for _ in 0..2 * SHA1_FEED_TRIALS {
            expected.update(&data);
        }
        assert_eq!(sha1.finalize(), expected.finalize());
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

//! `--limit-rate`: a cap on the bytes received per second, over every core
//! and connection, for restores that share a link with production traffic.
//!
//! One GCRA bucket for the whole run: a theoretical arrival time that each
//! received byte pushes forward by `1 / rate`, and a connection that got
//! ahead by more than the burst waits before it reads again. It is the one
//! thing cores share per read when a limit is set (a compare-and-swap on one
//! atomic, at most once per read), the same order of traffic as the progress
//! counters; an equal share per core would have shared nothing, but left the
//! run well below the limit whenever work is uneven across cores (5 parts on
//! 2 cores: 84% of the limit, measured). Bytes are charged after they arrive
//! (a read cannot know its size beforehand), so reads are kept to about a
//! connection's share of the burst (`read_bytes_max`): every connection
//! reads once before any is charged, and with a core's share each, a 20 MB
//! get at 10 MB/s had 4.9-6.4 MB within its first 0.2 s (h23).
//!
//! A read is never below `LIMIT_RATE_READ_MIN_BYTES` (a TLS record), so
//! the first reads fit in one burst only while a connection's share is at
//! least that: a low limit over many connections (1 MB/s over 16 of them:
//! a 100 kB burst, 16 × 16 KiB read) overshoots it once, by up to that
//! many records, at the start and after an idle spell. The average rate
//! holds (8 MiB at 1 MB/s on 4 cores took 8.34 s, h26); charging before a
//! read instead would hold tokens for connections that wait on the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{LIMIT_RATE_BURST_MS, LIMIT_RATE_READ_MIN_BYTES};

pub struct Pace {
    bytes_per_s: u64,
    burst_ns: u64,
    read_bytes_max: usize,
    base: Instant,
    /// When the bytes charged so far would have arrived at the rate (ns
    /// since `base`).
    theoretical_arrival_ns: AtomicU64,
}

impl Pace {
    /// A limit of `bytes_per_s` shared by `readers` connections.
    pub fn new(bytes_per_s: u64, readers: usize) -> Pace {
        let bytes_per_s = bytes_per_s.max(1);
        let burst_bytes = u128::from(bytes_per_s) * u128::from(LIMIT_RATE_BURST_MS) / 1000;
        let share = burst_bytes / readers.max(1) as u128;
        Pace {
            bytes_per_s,
            burst_ns: LIMIT_RATE_BURST_MS * 1_000_000,
            read_bytes_max: usize::try_from(share)
                .unwrap_or(usize::MAX)
                .max(LIMIT_RATE_READ_MIN_BYTES),
            base: Instant::now(),
            theoretical_arrival_ns: AtomicU64::new(0),
        }
    }

    /// The most one read should ask for: a connection's share of a burst
    /// (at least `LIMIT_RATE_READ_MIN_BYTES`, so a slow limit is not tiny
    /// reads).
    pub fn read_bytes_max(&self) -> usize {
        self.read_bytes_max
    }

    /// Charges `bytes` just received; how long to wait before reading again.
    pub fn charge(&self, bytes: usize) -> Duration {
        let now_ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.charge_at(now_ns, bytes as u64))
    }

    /// `charge` at a given time: the I/O-free part.
    fn charge_at(&self, now_ns: u64, bytes: u64) -> u64 {
        let cost_ns = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_s);
        let cost_ns = u64::try_from(cost_ns).unwrap_or(u64::MAX);
        let mut current = self.theoretical_arrival_ns.load(Ordering::Relaxed);
        loop {
            let arrival = current.max(now_ns).saturating_add(cost_ns);
            match self.theoretical_arrival_ns.compare_exchange_weak(
                current,
                arrival,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return arrival.saturating_sub(now_ns.saturating_add(self.burst_ns)),
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;

    #[test]
    fn a_steady_reader_is_held_to_the_rate_after_one_burst() {
        // 1 MB/s: 1 µs per byte; a burst is 100 ms = 100,000 bytes.
        let pace = Pace::new(1_000_000, 1);
        assert_eq!(pace.read_bytes_max(), 100_000);
        // Reading as fast as possible at t=0: free up to the burst...
        assert_eq!(pace.charge_at(0, 50_000), 0);
        assert_eq!(pace.charge_at(0, 50_000), 0);
        // ...then every byte waits its turn.
        assert_eq!(pace.charge_at(0, 16_384), 16_384 * US);
        assert_eq!(pace.charge_at(16_384 * US, 100_000), 100 * MS);
        // 10 MB read back to back, each read as soon as allowed: 10 s less a burst.
        let pace = Pace::new(1_000_000, 1);
        let mut now = 0;
        for _ in 0..1000 {
            now += pace.charge_at(now, 10_000);
        }
        assert_eq!(now, 10_000 * MS - 100 * MS);
    }

    /// Every connection reads once before any read is charged: together,
    /// those first reads stay within one burst (when each connection's share
    /// of it is at least `LIMIT_RATE_READ_MIN_BYTES`; see the module).
    #[test]
    fn the_first_reads_of_every_connection_fit_in_one_burst() {
        // 10 MB/s: a burst is 1 MB; 2 cores × 16 connections.
        let pace = Pace::new(10_000_000, 32);
        assert_eq!(pace.read_bytes_max(), 31_250);
        let first_reads: u64 = (0..32)
            .map(|_| {
                let bytes = pace.read_bytes_max();
                assert_eq!(pace.charge_at(0, bytes as u64), 0);
                bytes as u64
            })
            .sum();
        assert!(first_reads <= 1_000_000);
    }

    #[test]
    fn idle_time_is_not_saved_up_beyond_one_burst() {
        let pace = Pace::new(1_000_000, 1);
        assert_eq!(pace.charge_at(0, 100_000), 0);
        // An hour idle, then a flood: still only one burst free.
        let hour = 3_600_000 * MS;
        assert_eq!(pace.charge_at(hour, 100_000), 0);
        assert_eq!(pace.charge_at(hour, 1_000), 1_000 * US);
    }

    #[test]
    fn threads_share_one_limit() {
        // 4 threads × 250 reads of 10 kB at 10 MB/s: 10 MB take 1 s less a
        // burst, however the reads interleave.
        let pace = Pace::new(10_000_000, 4);
        assert_eq!(pace.read_bytes_max(), 250_000);
        let waits: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..250).map(|_| pace.charge_at(0, 10_000)).max()))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap().unwrap())
                .collect()
        });
        assert_eq!(waits.into_iter().max(), Some(1000 * MS - 100 * MS));
    }

    #[test]
    fn extremes() {
        // Slow limits still read in useful pieces; huge ones never overflow.
        assert_eq!(Pace::new(1, 8).read_bytes_max(), LIMIT_RATE_READ_MIN_BYTES);
        assert_eq!(Pace::new(0, 1).bytes_per_s, 1);
        let fast = Pace::new(u64::MAX, 1);
        assert!(fast.read_bytes_max() > 1 << 40);
        assert_eq!(fast.charge_at(0, 1 << 40), 0);
        let slow = Pace::new(1, 1);
        assert_eq!(slow.charge_at(0, 10), 10_000 * MS - 100 * MS);
        // Saturates at the end of time instead of overflowing.
        assert_eq!(slow.charge_at(u64::MAX - 5, u64::MAX), 0);
    }
}

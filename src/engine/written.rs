//! The contiguous prefix of a large object's file whose writes have
//! completed: what the journal may say is on disk (I/O-free).

use std::collections::BTreeMap;

/// The contiguous prefix of a file whose writes have completed. Writes finish
/// out of order (several cores, several buffers each); ranges past a gap wait
/// here until the gap fills. At most the writes in flight are held.
#[derive(Debug, Default)]
pub struct WrittenPrefix {
    prefix_bytes: u64,
    /// offset → end of completed ranges beyond `prefix_bytes`.
    pending: BTreeMap<u64, u64>,
}

impl WrittenPrefix {
    pub fn starting_at(prefix_bytes: u64) -> WrittenPrefix {
        WrittenPrefix {
            prefix_bytes,
            pending: BTreeMap::new(),
        }
    }

    /// Records that `[offset, offset + len)` is written; returns the prefix.
    pub fn complete(&mut self, offset: u64, len: u64) -> u64 {
        let end = offset + len;
        if offset <= self.prefix_bytes {
            self.prefix_bytes = self.prefix_bytes.max(end);
        } else {
            let slot = self.pending.entry(offset).or_insert(end);
            *slot = (*slot).max(end);
        }
        while let Some((&start, &end)) = self.pending.first_key_value() {
            if start > self.prefix_bytes {
                break;
            }
            self.pending.pop_first();
            self.prefix_bytes = self.prefix_bytes.max(end);
        }
        self.prefix_bytes
    }

    pub fn prefix_bytes(&self) -> u64 {
        self.prefix_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::WrittenPrefix;

    #[test]
    fn the_prefix_waits_for_gaps() {
        let mut written = WrittenPrefix::starting_at(100);
        assert_eq!(written.complete(200, 100), 100);
        assert_eq!(written.complete(300, 50), 100);
        assert_eq!(written.complete(100, 100), 350);
        assert_eq!(written.complete(350, 10), 360);
        // A rewrite of an earlier range changes nothing.
        assert_eq!(written.complete(0, 10), 360);
        assert!(written.pending.is_empty());
    }

    #[test]
    fn any_completion_order_gives_the_whole_file() {
        for seed in 0..50u64 {
            let mut order: Vec<u64> = (0..64).collect();
            // Deterministic shuffle.
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for i in (1..order.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut written = WrittenPrefix::default();
            let mut done = std::collections::BTreeSet::new();
            for index in order {
                let prefix = written.complete(index * 10, 10);
                done.insert(index);
                let expected = (0..64).take_while(|i| done.contains(i)).count() as u64 * 10;
                assert_eq!(prefix, expected);
            }
            assert_eq!(written.prefix_bytes(), 640);
        }
    }
}

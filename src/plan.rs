//! Object → chunks: the byte ranges of one object that become range requests.
//!
//! The plan is arithmetic, not a list: a 1 TiB object in 8 MiB parts is
//! 131,072 chunks, and none of them is allocated until asked for.

/// One range request's worth of an object: bytes
/// `offset_bytes..offset_bytes + len_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    pub index: u64,
    pub offset_bytes: u64,
    pub len_bytes: u64,
}

impl Chunk {
    /// Exclusive end offset.
    pub fn end_bytes(&self) -> u64 {
        self.offset_bytes + self.len_bytes
    }

    /// Inclusive last byte, as a `Range: bytes=first-last` header wants it.
    /// Chunks are never empty, so this does not underflow.
    pub fn last_byte(&self) -> u64 {
        self.offset_bytes + self.len_bytes - 1
    }
}

/// The chunks of an object of `object_size_bytes` from `start_bytes` on, cut
/// every `part_size_bytes`: contiguous, ascending, each `part_size_bytes`
/// long but the last, which may be shorter. A 0-byte object has no chunks.
/// `start_bytes` is where a resumed download goes on: what an earlier run
/// journaled, cut in its own part size, which need not be this one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    object_size_bytes: u64,
    part_size_bytes: u64,
    start_bytes: u64,
    chunk_count: u64,
}

impl ChunkPlan {
    /// Panics if `part_size_bytes` is 0 (a configuration bug, caught by `cli`).
    pub fn new(object_size_bytes: u64, part_size_bytes: u64) -> ChunkPlan {
        ChunkPlan::starting_at(object_size_bytes, part_size_bytes, 0)
    }

    /// The chunks of `[start_bytes, object_size_bytes)`. Panics if
    /// `part_size_bytes` is 0 or `start_bytes` is past the end.
    pub fn starting_at(
        object_size_bytes: u64,
        part_size_bytes: u64,
        start_bytes: u64,
    ) -> ChunkPlan {
        assert!(part_size_bytes > 0, "part size must be positive");
        assert!(start_bytes <= object_size_bytes, "start past the end");
        ChunkPlan {
            object_size_bytes,
            part_size_bytes,
            start_bytes,
            chunk_count: (object_size_bytes - start_bytes).div_ceil(part_size_bytes),
        }
    }

    /// Where the first chunk begins.
    pub fn start_bytes(&self) -> u64 {
        self.start_bytes
    }

    pub fn object_size_bytes(&self) -> u64 {
        self.object_size_bytes
    }

    pub fn part_size_bytes(&self) -> u64 {
        self.part_size_bytes
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// The chunk at `index`, or `None` past the end. O(1).
    pub fn chunk(&self, index: u64) -> Option<Chunk> {
        if index >= self.chunk_count {
            return None;
        }
        // index < chunk_count, so start + index * part_size < object_size:
        // no overflow.
        let offset_bytes = self.start_bytes + index * self.part_size_bytes;
        let len_bytes = self
            .part_size_bytes
            .min(self.object_size_bytes - offset_bytes);
        debug_assert!(len_bytes > 0);
        Some(Chunk {
            index,
            offset_bytes,
            len_bytes,
        })
    }

    /// The chunk holding byte `offset_bytes` (resume from a byte position).
    pub fn chunk_containing(&self, offset_bytes: u64) -> Option<Chunk> {
        if offset_bytes >= self.object_size_bytes || offset_bytes < self.start_bytes {
            return None;
        }
        self.chunk((offset_bytes - self.start_bytes) / self.part_size_bytes)
    }

    /// The last whole-part chunk end at or below `prefix_bytes` (a written
    /// prefix), or `start_bytes`: how far a journal may say the object is
    /// done.
    pub fn boundary_at_or_below(&self, prefix_bytes: u64) -> u64 {
        let past_start = prefix_bytes.saturating_sub(self.start_bytes);
        self.start_bytes + past_start / self.part_size_bytes * self.part_size_bytes
    }

    /// All chunks in ascending order, computed one at a time.
    pub fn iter(&self) -> ChunkIter {
        ChunkIter {
            plan: *self,
            next_index: 0,
        }
    }
}

impl IntoIterator for &ChunkPlan {
    type Item = Chunk;
    type IntoIter = ChunkIter;

    fn into_iter(self) -> ChunkIter {
        self.iter()
    }
}

/// Iterator over a [`ChunkPlan`]; see [`ChunkPlan::iter`].
#[derive(Debug, Clone)]
pub struct ChunkIter {
    plan: ChunkPlan,
    next_index: u64,
}

impl Iterator for ChunkIter {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        let chunk = self.plan.chunk(self.next_index)?;
        self.next_index += 1;
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.plan.chunk_count - self.next_index;
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        (left, Some(left))
    }

    fn nth(&mut self, n: usize) -> Option<Chunk> {
        self.next_index = self.next_index.saturating_add(n as u64);
        self.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_cases() {
        assert_eq!(ChunkPlan::new(0, 8).chunk_count(), 0);
        assert_eq!(ChunkPlan::new(0, 8).iter().next(), None);
        assert_eq!(ChunkPlan::new(0, 8).chunk(0), None);
        let plan = ChunkPlan::new(20, 8);
        let chunks: Vec<Chunk> = plan.iter().collect();
        assert_eq!(
            chunks,
            vec![
                Chunk {
                    index: 0,
                    offset_bytes: 0,
                    len_bytes: 8
                },
                Chunk {
                    index: 1,
                    offset_bytes: 8,
                    len_bytes: 8
                },
                Chunk {
                    index: 2,
                    offset_bytes: 16,
                    len_bytes: 4
                },
            ]
        );
        assert_eq!(chunks[2].last_byte(), 19);
        assert_eq!(ChunkPlan::new(16, 8).chunk_count(), 2);
        assert_eq!(plan.chunk_containing(15), Some(chunks[1]));
        assert_eq!(plan.chunk_containing(20), None);
    }

    #[test]
    fn one_tebibyte_is_lazy_and_exact() {
        let plan = ChunkPlan::new(1 << 40, 8 << 20);
        assert_eq!(plan.chunk_count(), 131_072);
        let last = plan.chunk(131_071).unwrap();
        assert_eq!(last.end_bytes(), 1 << 40);
        assert_eq!(plan.iter().nth(131_071), Some(last));
        assert_eq!(plan.iter().size_hint(), (131_072, Some(131_072)));
    }

    #[test]
    fn extreme_sizes_do_not_overflow() {
        let plan = ChunkPlan::new(u64::MAX, 1);
        assert_eq!(plan.chunk_count(), u64::MAX);
        assert_eq!(plan.chunk(u64::MAX - 1).unwrap().end_bytes(), u64::MAX);
        let plan = ChunkPlan::new(u64::MAX, u64::MAX);
        assert_eq!(plan.chunk_count(), 1);
        let plan = ChunkPlan::new(u64::MAX, 3 << 62);
        assert_eq!(
            plan.chunk(1).unwrap(),
            Chunk {
                index: 1,
                offset_bytes: 3 << 62,
                len_bytes: (1 << 62) - 1
            }
        );
        assert_eq!(plan.iter().nth(usize::MAX), None);
    }

    #[test]
    #[should_panic(expected = "part size must be positive")]
    fn zero_part_size_panics() {
        ChunkPlan::new(1, 0);
    }

    #[test]
    fn a_plan_from_a_resumed_offset_tiles_the_rest() {
        // 10 MiB resumed at 3 MiB (an earlier run's 1 MiB parts) in 4 MiB parts.
        let plan = ChunkPlan::starting_at(10 << 20, 4 << 20, 3 << 20);
        let chunks: Vec<(u64, u64)> = plan.iter().map(|c| (c.offset_bytes, c.len_bytes)).collect();
        assert_eq!(
            chunks,
            [(3 << 20, 4 << 20), (7 << 20, 3 << 20)],
            "from the start, the last one short"
        );
        assert_eq!(plan.chunk_containing(2 << 20), None, "before the start");
        assert_eq!(plan.chunk_containing(8 << 20).map(|c| c.index), Some(1));
        assert_eq!(plan.boundary_at_or_below(6 << 20), 3 << 20);
        assert_eq!(plan.boundary_at_or_below(7 << 20), 7 << 20);
        assert_eq!(ChunkPlan::starting_at(5, 4, 5).chunk_count(), 0, "all done");
    }

    proptest! {
        #[test]
        fn resumed_chunks_tile_the_rest(size in 0u64..10_000_000, part in 1u64..2_000_000, start in 0u64..10_000_000) {
            let start = start.min(size);
            let plan = ChunkPlan::starting_at(size, part, start);
            let mut next = start;
            for chunk in plan.iter() {
                prop_assert_eq!(chunk.offset_bytes, next);
                prop_assert!(chunk.len_bytes > 0 && chunk.len_bytes <= part);
                next = chunk.end_bytes();
            }
            prop_assert_eq!(next, size);
        }
        #[test]
        fn chunks_tile_the_object(size in 0u64..10_000_000, part in 1u64..2_000_000) {
            let plan = ChunkPlan::new(size, part);
            let mut expected_offset = 0;
            let mut count = 0;
            for chunk in plan.iter() {
                prop_assert_eq!(chunk.index, count);
                prop_assert_eq!(chunk.offset_bytes, expected_offset);
                prop_assert!(chunk.len_bytes > 0 && chunk.len_bytes <= part);
                prop_assert_eq!(plan.chunk(chunk.index), Some(chunk));
                expected_offset = chunk.end_bytes();
                count += 1;
            }
            prop_assert_eq!(expected_offset, size);
            prop_assert_eq!(count, plan.chunk_count());
            prop_assert_eq!(plan.chunk(count), None);
        }

        #[test]
        fn any_u64_sizes_are_consistent(size in any::<u64>(), part in 1u64..=u64::MAX, pick in any::<u64>()) {
            let plan = ChunkPlan::new(size, part);
            if plan.chunk_count() > 0 {
                let index = pick % plan.chunk_count();
                let chunk = plan.chunk(index).unwrap();
                prop_assert!(chunk.len_bytes > 0 && chunk.len_bytes <= part);
                prop_assert!(chunk.end_bytes() <= size);
                let last = plan.chunk(plan.chunk_count() - 1).unwrap();
                prop_assert_eq!(last.end_bytes(), size);
                if index + 1 < plan.chunk_count() {
                    prop_assert_eq!(plan.chunk(index + 1).unwrap().offset_bytes, chunk.end_bytes());
                }
            }
        }
    }
}

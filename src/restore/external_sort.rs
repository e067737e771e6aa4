//! Sorting more lines than memory should hold, for the journal of completed
//! files and for `--files-from` lists (either can run to millions of names).
//!
//! Lines are gathered into a run of at most `run_bytes`; a full run is
//! sorted and spilled to a file the caller provides (unlinked, so a kill
//! leaves nothing behind). Files already sorted can join as runs. Reading
//! back is a k-way merge: ascending, without repeats. Open runs stay few:
//! `SORT_MERGE_FAN_IN` runs of one size merge into one as soon as they are
//! there (each line is rewritten once per 64× of input), and at the end the
//! oldest merge until the readers' buffers are bounded too.
//!
//! Lines are UTF-8 without `\n` (the callers' names and records have no
//! control characters). Read errors are returned, never taken for the end:
//! a journal or a list cut short would skip or drop names silently.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::config::{SORT_MERGE_FAN_IN, SORT_READ_BUFFER_BYTES};

/// Gathers lines into sorted runs.
pub struct Sorter<F> {
    run: Vec<String>,
    run_bytes: usize,
    run_bytes_max: usize,
    runs: Vec<Run>,
    make_file: F,
    pushed: u64,
}

/// A sorted run on disk; `level` counts the merges behind it.
struct Run {
    level: u32,
    file: Arc<File>,
}

impl<F: FnMut() -> io::Result<File>> Sorter<F> {
    /// `make_file` gives an empty, readable and writable file no one else
    /// uses (unlinked, or to be removed by the caller).
    pub fn new(run_bytes_max: usize, make_file: F) -> Sorter<F> {
        Sorter {
            run: Vec::new(),
            run_bytes: 0,
            run_bytes_max,
            runs: Vec::new(),
            make_file,
            pushed: 0,
        }
    }

    pub fn push(&mut self, line: String) -> io::Result<()> {
        debug_assert!(!line.contains('\n'));
        self.run_bytes += line.len() + std::mem::size_of::<String>();
        self.run.push(line);
        self.pushed += 1;
        if self.run_bytes >= self.run_bytes_max {
            self.spill()?;
        }
        Ok(())
    }

    /// A file of ascending lines, each ending in `\n` (a previous merge).
    pub fn add_sorted_file(&mut self, file: File) {
        // Never merged early: it may be large, and is read once anyway.
        self.runs.push(Run {
            level: u32::MAX,
            file: Arc::new(file),
        });
    }

    /// Lines pushed (repeats included; added files not counted).
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// The runs, ready to be read back as one (and as often as wanted).
    pub fn finish(mut self) -> io::Result<Sorted> {
        self.run.sort_unstable();
        self.run.dedup();
        // Merge the oldest runs into one until the readers are bounded
        // (the run kept in memory is a reader too).
        while self.runs.len() + 1 > SORT_MERGE_FAN_IN {
            self.merge_runs(0..SORT_MERGE_FAN_IN, u32::MAX)?;
        }
        Ok(Sorted {
            runs: self.runs.into_iter().map(|run| run.file).collect(),
            memory: Arc::from(std::mem::take(&mut self.run)),
        })
    }

    /// Replaces `runs[range]` with their merge, at `level`.
    fn merge_runs(&mut self, range: std::ops::Range<usize>, level: u32) -> io::Result<()> {
        let group = Sorted {
            runs: self.runs.drain(range).map(|run| run.file).collect(),
            memory: Arc::from([]),
        };
        let (file, _) = write_run((self.make_file)()?, group.lines())?;
        self.runs.push(Run {
            level,
            file: Arc::new(file),
        });
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.run.sort_unstable();
        self.run.dedup();
        let run = std::mem::take(&mut self.run);
        self.run_bytes = 0;
        let (file, _) = write_run((self.make_file)()?, run.into_iter().map(Ok))?;
        self.runs.push(Run {
            level: 0,
            file: Arc::new(file),
        });
        // The newest runs merge as soon as `SORT_MERGE_FAN_IN` of one level
        // are there (a counter in base `SORT_MERGE_FAN_IN`): open files
        // stay under a few hundred for any input.
        loop {
            let count = self.runs.len();
            let Some(first) = count.checked_sub(SORT_MERGE_FAN_IN) else {
                return Ok(());
            };
            let level = self.runs[count - 1].level;
            if level == u32::MAX || self.runs[first..].iter().any(|run| run.level != level) {
                return Ok(());
            }
            self.merge_runs(first..count, level + 1)?;
        }
    }
}

/// Sorted runs on disk and one in memory.
pub struct Sorted {
    runs: Vec<Arc<File>>,
    memory: Arc<[String]>,
}

impl Sorted {
    /// Writes every line once, ascending, into `file`; returns it with the
    /// number of lines.
    pub fn write_to(&self, file: File) -> io::Result<(File, u64)> {
        write_run(file, self.lines())
    }

    /// Every line once, ascending. Each call reads from the start.
    pub fn lines(&self) -> Merge {
        let mut sources: Vec<Source> = self
            .runs
            .iter()
            .map(|file| {
                Source::File(BufReader::with_capacity(
                    SORT_READ_BUFFER_BYTES,
                    RunReader {
                        file: Arc::clone(file),
                        offset: 0,
                    },
                ))
            })
            .collect();
        sources.push(Source::Memory(Arc::clone(&self.memory), 0));
        Merge {
            sources,
            heap: BinaryHeap::new(),
            last: None,
            started: false,
            failed: None,
        }
    }
}

/// The k-way merge of a `Sorted`: `Iterator<Item = io::Result<String>>`,
/// ending after the first error.
pub struct Merge {
    sources: Vec<Source>,
    heap: BinaryHeap<Reverse<(String, usize)>>,
    last: Option<String>,
    started: bool,
    /// Returned after the line popped before it.
    failed: Option<io::Error>,
}

enum Source {
    Memory(Arc<[String]>, usize),
    File(BufReader<RunReader>),
}

impl Source {
    fn next_line(&mut self) -> Option<io::Result<String>> {
        match self {
            Source::Memory(lines, at) => {
                let line = lines.get(*at)?.clone();
                *at += 1;
                Some(Ok(line))
            }
            Source::File(reader) => {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => None,
                    Ok(_) if line.ends_with('\n') => {
                        line.pop();
                        Some(Ok(line))
                    }
                    // Every line was written with its `\n`.
                    Ok(_) => Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a sorted run ends mid-line",
                    ))),
                    Err(error) => Some(Err(error)),
                }
            }
        }
    }
}

impl Merge {
    /// The next line of source `index` onto the heap. After an error the
    /// merge is over: nothing is read any more.
    fn pull(&mut self, index: usize) {
        match self.sources[index].next_line() {
            Some(Ok(line)) => self.heap.push(Reverse((line, index))),
            Some(Err(error)) => {
                self.heap.clear();
                self.sources.clear();
                self.failed = Some(error);
            }
            None => {}
        }
    }
}

impl Iterator for Merge {
    type Item = io::Result<String>;

    fn next(&mut self) -> Option<io::Result<String>> {
        if !self.started {
            self.started = true;
            for index in 0..self.sources.len() {
                self.pull(index);
                if self.failed.is_some() {
                    break;
                }
            }
        }
        loop {
            let Some(Reverse((line, index))) = self.heap.pop() else {
                return self.failed.take().map(Err);
            };
            self.pull(index);
            if self.last.as_deref() == Some(line.as_str()) {
                continue;
            }
            self.last = Some(line.clone());
            return Some(Ok(line));
        }
    }
}

/// Reads a run from its start with positional reads, so that any number of
/// merges can read the same file at once.
struct RunReader {
    file: Arc<File>,
    offset: u64,
}

impl Read for RunReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// Writes `lines` (ascending), one per line, into `file`; with their count.
fn write_run(
    file: File,
    lines: impl Iterator<Item = io::Result<String>>,
) -> io::Result<(File, u64)> {
    let mut writer = BufWriter::new(file);
    let mut count = 0u64;
    for line in lines {
        writer.write_all(line?.as_bytes())?;
        writer.write_all(b"\n")?;
        count += 1;
    }
    let file = writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    Ok((file, count))
}

/// An unnamed file in `dir` (`O_TMPFILE`: gone with its descriptor, even
/// after a kill), or, where the filesystem lacks that, a new name removed
/// at once.
pub fn anonymous_file(dir: &std::path::Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let mode = Mode::from_raw_mode(0o600);
    match rustix::fs::open(dir, OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, mode) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => {}
        Err(error) => return Err(error.into()),
    }
    for attempt in 0u32.. {
        let path = dir.join(format!(
            ".ringdown-sort-{}-{}-{attempt}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.subsec_nanos())
        ));
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::open(&path, flags, mode) {
            Ok(fd) => {
                let _ = std::fs::remove_file(&path);
                return Ok(File::from(fd));
            }
            Err(rustix::io::Errno::EXIST) if attempt < 100 => continue,
            Err(error) => return Err(error.into()),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_files() -> impl FnMut() -> io::Result<File> {
        let dir = std::env::temp_dir();
        move || anonymous_file(&dir)
    }

    fn shuffled(n: u64) -> Vec<String> {
        // A fixed permutation with repeats: i * 7919 mod n, twice over.
        (0..2 * n)
            .map(|i| format!("name-{:06}", (i * 7919) % n))
            .collect()
    }

    /// Tiny runs force spills and a merge pass (more runs than the fan-in);
    /// the result is every line once, ascending, and reads back twice.
    #[test]
    fn spills_merge_down_to_the_fan_in_and_read_back_sorted_without_repeats() {
        let n = 3_000;
        let mut sorter = Sorter::new(40 * 64, temp_files());
        for line in shuffled(n) {
            sorter.push(line).unwrap();
        }
        assert_eq!(sorter.pushed(), 2 * n);
        assert!(
            sorter.runs.len() < SORT_MERGE_FAN_IN,
            "{} runs open while pushing",
            sorter.runs.len()
        );
        let sorted = sorter.finish().unwrap();
        assert!(sorted.runs.len() < SORT_MERGE_FAN_IN);
        let expected: Vec<String> = (0..n).map(|i| format!("name-{i:06}")).collect();
        for _ in 0..2 {
            let lines: Vec<String> = sorted.lines().map(Result::unwrap).collect();
            assert_eq!(lines, expected);
        }
    }

    #[test]
    fn a_small_input_stays_in_memory_and_a_sorted_file_joins() {
        let mut sorter = Sorter::new(1 << 20, || -> io::Result<File> {
            panic!("nothing to spill")
        });
        let mut file = anonymous_file(&std::env::temp_dir()).unwrap();
        file.write_all(b"a\nc\ne\n").unwrap();
        sorter.add_sorted_file(file);
        for line in ["d", "c", "b"] {
            sorter.push(line.to_string()).unwrap();
        }
        let lines: Vec<String> = sorter
            .finish()
            .unwrap()
            .lines()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines, ["a", "b", "c", "d", "e"]);
    }

    /// A run cut mid-line is an error, not a shorter list.
    #[test]
    fn a_run_cut_short_is_an_error() {
        let mut sorter = Sorter::new(1 << 20, temp_files());
        let mut file = anonymous_file(&std::env::temp_dir()).unwrap();
        file.write_all(b"a\nb").unwrap();
        sorter.add_sorted_file(file);
        sorter.push("c".into()).unwrap();
        let lines: Vec<io::Result<String>> = sorter.finish().unwrap().lines().collect();
        assert_eq!(lines.len(), 2, "a, then the error, then nothing");
        assert_eq!(lines[0].as_ref().unwrap(), "a");
        assert!(lines[1].is_err());
    }
}

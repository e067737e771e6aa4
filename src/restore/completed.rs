//! Files completed by earlier runs, looked up in constant memory.
//!
//! The journal is appended in completion order, which is only roughly the
//! listing order. At start the journal's `ok` records and the sorted file of
//! the previous start are merged into one new sorted file (an external sort:
//! `external_sort`, with runs of `JOURNAL_SORT_RUN_BYTES`), and
//! the journal is rewritten to the chunk records of half-done large objects
//! (`journal::rewrite`: replaced whole, never emptied first).
//! The scheduler sees names in listing order (UTF-8 byte order, as B2 lists
//! them), so membership is a forward-only merge join against that file: one
//! record in memory, whatever the bucket holds.
//!
//! A record is `name\tfileId\tsize`. Names reaching the journal have no
//! control characters (`paths::map_name` refuses them), so a tab sorts below
//! every name byte and record order is name order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::external_sort::Sorter;
use crate::error::{Error, Result};
use crate::journal;

/// A journal record: the file's name and its key (`fileId\tsize`).
pub fn record(name: &str, key: &str) -> String {
    format!("{name}\t{key}")
}

/// What the start of a run learns from the journal.
pub struct Loaded {
    /// The journal to append to (`journal::rewrite` may have replaced it).
    pub journal: File,
    pub completed: Cursor,
    /// Large objects left half done: key → bytes written (a chunk boundary).
    pub chunks: HashMap<String, u64>,
    /// Records in the sorted file.
    pub completed_count: u64,
}

/// Forward-only membership test over the sorted file.
pub struct Cursor {
    lines: Option<std::io::Lines<BufReader<File>>>,
    current: Option<String>,
    last_query: String,
}

impl Cursor {
    fn open(file: Option<File>) -> Cursor {
        let mut cursor = Cursor {
            lines: file.map(|file| BufReader::new(file).lines()),
            current: None,
            last_query: String::new(),
        };
        cursor.advance();
        cursor
    }

    fn advance(&mut self) {
        self.current = match self.lines.as_mut().and_then(Iterator::next) {
            Some(Ok(line)) => Some(line),
            // A read error ends the set early: files are downloaded again,
            // never skipped wrongly.
            Some(Err(_)) | None => {
                self.lines = None;
                None
            }
        };
    }

    /// Whether `record` was completed. Queries must come in ascending
    /// order; one that goes backwards (a listing out of order) is answered
    /// "no", which costs a download, never a wrong skip.
    pub fn contains(&mut self, record: &str) -> bool {
        if record < self.last_query.as_str() {
            return false;
        }
        self.last_query.clear();
        self.last_query.push_str(record);
        loop {
            match self.current.as_deref() {
                Some(current) if current < record => self.advance(),
                Some(current) => return current == record,
                None => return false,
            }
        }
    }
}

/// Merges the journal into `sorted_name` (in the state directory), rewrites
/// the journal to its chunk records, and opens the cursor.
///
/// Only the lines the journal may be trusted for are read
/// (`journal::Trust`: all of this boot's, another boot's up to its last
/// `durable` mark). What they name is made durable (`syncfs`) before they
/// go into the sorted file, and the journal is rewritten: the chunk records
/// kept, a `durable` mark for them, and this run's `boot` line.
///
/// A chunk record is kept only while `partial_exists(key)`: the partial
/// file's name comes from the key, so a record that outlived its file (a
/// failed object, a run-fatal error, a cleaned `.ringdown/partial/`) would
/// vouch for the next partial of that name, a new file of zeros.
pub fn load(
    state: &OwnedFd,
    sorted_name: &str,
    mut journal: File,
    journal_name: &str,
    run_bytes: usize,
    boot: Option<&str>,
    partial_exists: &dyn Fn(&str) -> bool,
) -> Result<Loaded> {
    let context = |what: &str| format!("{what} (.ringdown/{sorted_name})");
    let reading = |error| {
        Error::io(
            format!("reading the journal (.ringdown/{journal_name})"),
            error,
        )
    };
    remove_leftovers(state, sorted_name);
    journal.rewind().map_err(reading)?;
    let mut chunks: HashMap<String, u64> = HashMap::new();
    let mut spilled = 0usize;
    // Each run gets its own name and is unlinked at once: the open file is
    // all the merge needs, and a kill leaves nothing.
    let mut sorter = Sorter::new(run_bytes, || {
        let name = format!("{sorted_name}.run-{spilled}");
        spilled += 1;
        let file = create(state, &name)?;
        let _ = rustix::fs::unlinkat(state, &name, AtFlags::empty());
        Ok(file)
    });
    let sort_error = |error| Error::io(context("sorting the journal"), error);
    let mut reader = BufReader::new(&journal);
    let mut line = Vec::new();
    let mut trust = journal::Trust::new(boot);
    let mut end_offset = 0u64;
    let mut trusted_lines = 0u64;
    let mut sort_failure = None;
    let mut take = |text: &str| {
        trusted_lines += 1;
        if let Some(rest) = text.strip_prefix("ok\t") {
            let Some((_, key)) = rest.split_once('\t') else {
                return;
            };
            chunks.remove(key);
            if let Err(error) = sorter.push(rest.to_string()) {
                sort_failure.get_or_insert(error);
            }
        } else if let Some((key, bytes)) = journal::parse_chunk_line(text) {
            // The last line wins: a round after a SHA1 mismatch starts
            // its object over with a line of 0 (`Job::next_round`), and
            // the prefix of the round before is not its to resume.
            chunks.insert(key.to_string(), bytes);
        }
    };
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(reading)?;
        // Only whole lines count: a line cut by a kill is ignored.
        if read == 0 || !line.ends_with(b"\n") {
            break;
        }
        end_offset += read as u64;
        // Nor does one that is not text (cut inside a character by a short
        // write on a full disk, then appended to): at worst a file is
        // downloaded again, and the journal never blocks a resume.
        let Ok(text) = std::str::from_utf8(&line[..line.len() - 1]) else {
            continue;
        };
        trust.line(text, end_offset, &mut take);
    }
    trust.finish();
    chunks.retain(|key, bytes| *bytes > 0 && partial_exists(key));
    if let Some(error) = sort_failure {
        return Err(sort_error(error));
    }
    drop(reader);
    // What this boot's lines name may still be in the page cache: durable
    // before the sorted file or the rewritten journal vouch for it.
    if trusted_lines > 0 {
        rustix::fs::syncfs(state)
            .map_err(|error| Error::io(context("syncing the restored files"), error.into()))?;
    }
    let previous = open_read(state, sorted_name);
    let (sorted, completed_count) = if sorter.pushed() == 0 {
        let count = match &previous {
            Some(file) => count_lines(file),
            None => 0,
        };
        (previous, count)
    } else {
        if let Some(file) = previous {
            sorter.add_sorted_file(file);
        }
        let merged = sorter.finish().map_err(sort_error)?;
        let temp_name = format!("{sorted_name}.tmp");
        let (temp, count) = create(state, &temp_name)
            .and_then(|temp| merged.write_to(temp))
            .map_err(|error| Error::io(context("writing the sorted journal"), error))?;
        // Durable before it replaces the old file: the journal is rewritten next.
        temp.sync_all()
            .map_err(|error| Error::io(context("syncing the sorted journal"), error))?;
        rustix::fs::renameat(state, &temp_name, state, sorted_name)
            .map_err(|error| Error::io(context("replacing the sorted journal"), error.into()))?;
        (open_read(state, sorted_name), count)
    };
    // Always rewritten (`journal::restated`), never emptied first
    // (`journal::rewrite`). A kill before the rename only merges the same
    // records again next time.
    let mut kept = String::new();
    for (key, bytes) in &chunks {
        kept.push_str(&journal::chunk_line(key, *bytes));
    }
    let kept = journal::restated(&kept, boot);
    let journal = journal::rewrite(state, journal_name, journal, &kept).map_err(|error| {
        Error::io(
            format!("rewriting the journal (.ringdown/{journal_name})"),
            error,
        )
    })?;
    Ok(Loaded {
        journal,
        completed: Cursor::open(sorted),
        chunks,
        completed_count,
    })
}

/// Removes the sorted file (the run finished; nothing to resume).
pub fn remove(state: &OwnedFd, sorted_name: &str) {
    let _ = rustix::fs::unlinkat(state, sorted_name, AtFlags::empty());
    remove_leftovers(state, sorted_name);
}

/// Sorted runs and a half-written merge of a run that was killed.
fn remove_leftovers(state: &OwnedFd, sorted_name: &str) {
    let prefix = format!("{sorted_name}.");
    let names = super::target::entry_names(state);
    for name in names.iter().filter(|name| name.starts_with(&prefix)) {
        let _ = rustix::fs::unlinkat(state, name, AtFlags::empty());
    }
}

fn count_lines(file: &File) -> u64 {
    let Ok(file) = file.try_clone() else {
        return 0;
    };
    let mut reader = BufReader::new(file);
    let count = (&mut reader).lines().count() as u64;
    let _ = reader.into_inner().rewind();
    count
}

/// The file `name` if it is a regular file: a FIFO planted there would
/// hold the run on its first read (opened without blocking, then left).
fn open_read(state: &OwnedFd, name: &str) -> Option<File> {
    let file = rustix::fs::openat(
        state,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&file).ok()?;
    let regular = rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file();
    regular.then(|| File::from(file))
}

/// A new file `name`: whatever had the name goes first, so a hard link
/// planted there to a file elsewhere is never written through.
fn create(state: impl AsFd, name: &str) -> std::io::Result<File> {
    let _ = rustix::fs::unlinkat(&state, name, AtFlags::empty());
    rustix::fs::openat(
        state,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o644),
    )
    .map(File::from)
    .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn state_dir() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (dir, fd)
    }

    fn journal_with(dir: &std::path::Path, text: &str) -> File {
        let path = dir.join("journal");
        std::fs::write(&path, text).unwrap();
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    const B: Option<&str> = Some("B");

    /// `load` of "journal" into "completed", every large object's partial
    /// file there (so every chunk record is kept).
    fn load_kept(
        state: &OwnedFd,
        journal: File,
        run_bytes: usize,
        boot: Option<&str>,
    ) -> Result<Loaded> {
        load(
            state,
            "completed",
            journal,
            "journal",
            run_bytes,
            boot,
            &|_| true,
        )
    }

    /// A permutation of 0..n that is far from sorted.
    fn shuffled(n: u64) -> Vec<u64> {
        (0..n).map(|i| (i * 7919) % n).collect()
    }

    #[test]
    fn spills_merges_dedups_and_answers_in_listing_order() {
        let (dir, state) = state_dir();
        let mut text = String::new();
        for i in shuffled(5000) {
            text.push_str(&format!("ok\tname-{i:05}\tid{i}\t{i}\n"));
        }
        // Duplicates and a chunk record for a file that completed later.
        text.push_str("chunk\tid7\t7\t4096\nok\tname-00007\tid7\t7\n");
        text.push_str("chunk\tid-big\t99\t8388608\n");
        text.push_str("ok\tname-cut-by-a-kill"); // no newline: ignored
        let mut journal = journal_with(dir.path(), &format!("boot\tB\n{text}"));
        // A line that is not UTF-8 (cut inside a character) is skipped too.
        journal.write_all(b"ok\tcaf\xc3\tidx\t1\n").unwrap();
        // Tiny runs: many spills, a real k-way merge.
        let mut loaded = load_kept(&state, journal, 4096, B).unwrap();
        assert_eq!(loaded.completed_count, 5000);
        assert_eq!(loaded.chunks.len(), 1);
        assert_eq!(loaded.chunks["id-big\t99"], 8_388_608);
        for i in (0..5000).step_by(3) {
            assert!(
                loaded
                    .completed
                    .contains(&record(&format!("name-{i:05}"), &format!("id{i}\t{i}")))
            );
            // Same name, another upload: not completed.
            assert!(
                !loaded
                    .completed
                    .contains(&record(&format!("name-{i:05}"), "other\t1"))
            );
        }
        assert!(!loaded.completed.contains("name-cut-by-a-kill"));
        // Backwards query: a safe "no".
        assert!(!loaded.completed.contains(&record("name-00001", "id1\t1")));
        // The journal is cut back to the chunk record of the unfinished object.
        let journal_text = std::fs::read_to_string(dir.path().join("journal")).unwrap();
        assert_eq!(
            journal_text,
            "chunk\tid-big\t99\t8388608\ndurable\t24\nboot\tB\n"
        );
        let sorted = std::fs::read_to_string(dir.path().join("completed")).unwrap();
        let lines: Vec<&str> = sorted.lines().collect();
        assert_eq!(lines.len(), 5000);
        assert!(lines.windows(2).all(|pair| pair[0] < pair[1]));
        // No spill files or temporaries left.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// A large object downloaded again after a SHA1 mismatch journals a
    /// boundary of 0 and then its new round's: the last line wins, so a
    /// run killed in the new round never resumes from the old one's bytes
    /// (the larger number, which the maximum used to pick).
    #[test]
    fn a_round_started_over_resumes_from_its_own_boundaries() {
        let (dir, state) = state_dir();
        let journal = journal_with(
            dir.path(),
            "boot\tB\nchunk\tid-big\t9\t8192\nchunk\tid-big\t9\t16384\n\
             chunk\tid-big\t9\t0\nchunk\tid-big\t9\t4096\n\
             chunk\tid-new\t9\t8192\nchunk\tid-new\t9\t0\n",
        );
        let loaded = load_kept(&state, journal, 1 << 20, B).unwrap();
        assert_eq!(loaded.chunks.len(), 1, "{:?}", loaded.chunks);
        assert_eq!(loaded.chunks["id-big\t9"], 4096);
        let text = std::fs::read_to_string(dir.path().join("journal")).unwrap();
        assert_eq!(text, "chunk\tid-big\t9\t4096\ndurable\t20\nboot\tB\n");
    }

    #[test]
    fn a_second_start_merges_new_records_into_the_sorted_file() {
        let (dir, state) = state_dir();
        let journal = journal_with(dir.path(), "boot\tB\nok\tb\tid-b\t1\nok\td\tid-d\t1\n");
        let mut journal = load_kept(&state, journal, 1 << 20, B).unwrap().journal;
        journal
            .write_all(b"ok\ta\tid-a\t1\nok\tc\tid-c\t1\n")
            .unwrap();
        let mut loaded = load_kept(&state, journal, 1 << 20, B).unwrap();
        assert_eq!(loaded.completed_count, 4);
        for name in ["a", "b", "c", "d"] {
            assert!(
                loaded
                    .completed
                    .contains(&record(name, &format!("id-{name}\t1")))
            );
        }
        // Nothing new: the sorted file is reused as it is.
        let journal = loaded.journal;
        let mut loaded = load_kept(&state, journal, 1 << 20, B).unwrap();
        assert_eq!(loaded.completed_count, 4);
        assert!(loaded.completed.contains(&record("c", "id-c\t1")));
        remove(&state, "completed");
        assert!(!dir.path().join("completed").exists());
    }

    /// A chunk record whose partial file is gone is dropped, from what
    /// resumes and from the rewritten journal: the next partial of that
    /// name is a new file (h29: a 20 GiB object's stale 8 GiB record, then
    /// a fresh partial killed early, resumed at 8 GiB over zeros).
    #[test]
    fn a_chunk_record_that_outlived_its_partial_file_is_dropped() {
        let (dir, state) = state_dir();
        let journal = journal_with(
            dir.path(),
            "boot\tB\nchunk\tid-gone\t99\t8192\nchunk\tid-here\t99\t4096\n",
        );
        let exists = |key: &str| key == "id-here\t99";
        let loaded = load(&state, "completed", journal, "journal", 1 << 20, B, &exists).unwrap();
        assert_eq!(loaded.chunks.len(), 1);
        assert_eq!(loaded.chunks["id-here\t99"], 4096);
        // Not restated: the next load finds it no more, whatever exists then.
        let loaded = load_kept(&state, loaded.journal, 1 << 20, B).unwrap();
        assert_eq!(loaded.chunks.len(), 1, "{:?}", loaded.chunks);
        let text = std::fs::read_to_string(dir.path().join("journal")).unwrap();
        assert!(!text.contains("id-gone"), "{text}");
    }

    /// After a reboot (a power cut), a record is trusted only where a
    /// `durable` mark covers it: the others' files may read back as zeros
    /// at their full size, and are fetched again.
    #[test]
    fn after_a_reboot_only_records_marked_durable_are_trusted() {
        let (dir, state) = state_dir();
        let journal = journal_with(
            dir.path(),
            "boot\tA\nok\tsafe\tid-s\t1\nchunk\tid-big\t9\t4096\n\
             durable\t42\nok\tlost\tid-l\t1\nchunk\tid-big\t9\t8192\n",
        );
        let mut loaded = load_kept(&state, journal, 1 << 20, Some("C")).unwrap();
        assert_eq!(loaded.completed_count, 1);
        assert_eq!(loaded.chunks["id-big\t9"], 4096);
        assert!(loaded.completed.contains(&record("safe", "id-s\t1")));
        // The journal no longer holds the unconfirmed lines: a mark made
        // later cannot vouch for them.
        let text = std::fs::read_to_string(dir.path().join("journal")).unwrap();
        assert_eq!(text, "chunk\tid-big\t9\t4096\ndurable\t20\nboot\tC\n");
        // The same journal in the boot that wrote it: every record.
        let (dir, state) = state_dir();
        let journal = journal_with(
            dir.path(),
            "boot\tA\nok\tsafe\tid-s\t1\ndurable\t22\nok\tlost\tid-l\t1\n",
        );
        let loaded = load_kept(&state, journal, 1 << 20, Some("A")).unwrap();
        assert_eq!(loaded.completed_count, 2);
    }

    #[test]
    fn record_order_is_name_order() {
        // "a" < "a b" as names; the tab must not reorder them.
        let mut records = [record("a b", "x\t1"), record("a", "y\t1")];
        records.sort();
        assert_eq!(records[0], record("a", "y\t1"));
    }
}

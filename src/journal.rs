//! What a journal line may be trusted for after a crash.
//!
//! A journal line says that bytes are on disk: a chunk of a partial file,
//! or a whole file renamed to its name. The bytes may still be in the page
//! cache when the line is written. Process death (`kill -9`, a panic)
//! keeps the page cache, so every line a run wrote is true for the next
//! run of the same boot. A power cut or a kernel crash does not: a file
//! preallocated to full size and renamed can read back as zeros, at the
//! size the journal has for it, and be skipped on the journal's word.
//!
//! So a journal says which boot wrote it (`boot\tID`, from
//! /proc/sys/kernel/random/boot_id, at each run's start), and a thread of
//! the run makes what it wrote durable now and then (`syncfs`) and says up
//! to where (`durable\tOFFSET`: every byte of the journal before OFFSET
//! names data that was on disk when the line was written). A later run
//! trusts the lines of its own boot, and of another boot (or of none
//! named, as an older ringdown's journal) only those a `durable` line
//! covers. The rest are ignored: those files and chunks are fetched again.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::JOURNAL_UNCONFIRMED_LINES_MAX;

const BOOT: &str = "boot\t";
const DURABLE: &str = "durable\t";

/// This boot's id, or `None` where /proc does not say (then no earlier
/// line is taken as this boot's).
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && !id.contains(['\t', '\n'])).then(|| id.to_string())
}

/// What a journal is rewritten to as a run starts: `durable_records`
/// (whole lines whose data is on disk: the caller made it so), a `durable`
/// mark for them when there are any, and the run's `boot` line. Rewritten
/// whole, never appended to: a mark after the old text would vouch for
/// another boot's lines that were not trusted.
pub fn restated(durable_records: &str, boot: Option<&str>) -> String {
    let mut text = durable_records.to_string();
    if !text.is_empty() {
        text.push_str(&format!("{DURABLE}{}\n", text.len()));
    }
    text.push_str(&format!("{BOOT}{}\n", boot.unwrap_or("unknown")));
    text
}

/// Puts `text` (`restated`) in place of the journal `name` in `dir`, held
/// open as `journal` (with `O_APPEND`, flocked), and returns the file to
/// append to from now on. An empty journal (a new one) is written to. One
/// that holds lines is never emptied first: a kill (or a power cut) between
/// the cut and the write would lose every record it held, and with them the
/// partial files they vouch for. `text` goes to `NAME.new` instead, locked,
/// synced when it carries records, and renamed over the name: the name
/// leads to the old journal or the new one, each whole. The old file's lock
/// goes with it, so whoever takes a journal's lock must check that the name
/// still leads to the file locked (as `get` and `restore` do).
pub fn rewrite(dir: &OwnedFd, name: &str, mut journal: File, text: &str) -> std::io::Result<File> {
    use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
    let new_name = replacement_name(name);
    // A run killed between its create and its rename left it.
    let _ = rustix::fs::unlinkat(dir, &new_name, AtFlags::empty());
    if journal.metadata()?.len() == 0 {
        journal.write_all(text.as_bytes())?;
        return Ok(journal);
    }
    let flags = OFlags::CREATE
        | OFlags::EXCL
        | OFlags::RDWR
        | OFlags::APPEND
        | OFlags::CLOEXEC
        | OFlags::NOFOLLOW;
    let fd = rustix::fs::openat(dir, &new_name, flags, Mode::from_raw_mode(0o644))?;
    let mut new = File::from(fd);
    let written = rustix::fs::flock(&new, FlockOperation::NonBlockingLockExclusive)
        .map_err(std::io::Error::from)
        .and_then(|()| new.write_all(text.as_bytes()))
        .and_then(|()| match text.lines().count() > 1 {
            true => new.sync_data(),
            false => Ok(()),
        })
        .and_then(|()| {
            rustix::fs::renameat(dir, &new_name, dir, name).map_err(std::io::Error::from)
        });
    if let Err(error) = written {
        let _ = rustix::fs::unlinkat(dir, &new_name, AtFlags::empty());
        return Err(error);
    }
    Ok(new)
}

/// Where `rewrite` writes the journal `name`'s new text.
fn replacement_name(name: &str) -> String {
    format!("{name}.new")
}

/// Removes the journal `name` in `dir`, and the new text a `rewrite` that
/// a kill interrupted may have left beside it.
/// Opens (creates) the journal `name` in `dir` to append to it, following
/// no symlink, and without blocking: a FIFO planted at the name held the
/// run forever on its first read (h42 #9, h43 #9). The caller looks at what
/// it opened (a regular file of one link) before trusting it.
pub fn open_to_append(dir: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::CREATE
        | OFlags::RDWR
        | OFlags::APPEND
        | OFlags::CLOEXEC
        | OFlags::NOFOLLOW
        | OFlags::NONBLOCK;
    rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644))
}

pub fn remove(dir: &OwnedFd, name: &str) {
    use rustix::fs::AtFlags;
    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
    let _ = rustix::fs::unlinkat(dir, replacement_name(name), AtFlags::empty());
}

/// A chunk record: every byte of the object `key` (its fileId and size,
/// or a URL's identity) below `bytes` is written to its partial file.
pub fn chunk_line(key: &str, bytes: u64) -> String {
    format!("chunk\t{key}\t{bytes}\n")
}

/// The key and bytes of a `chunk_line` (without its newline).
pub fn parse_chunk_line(line: &str) -> Option<(&str, u64)> {
    let (key, bytes) = line.strip_prefix("chunk\t")?.rsplit_once('\t')?;
    Some((key, bytes.parse().ok()?))
}

/// Whether `name` in `dir` leads to `file` (same st_dev/st_ino): a journal
/// whose lock was just taken (`rewrite` may have renamed another over the
/// name meanwhile), or a partial file about to be named or removed.
pub fn is_named(dir: &OwnedFd, name: &str, file: &impl std::os::fd::AsFd) -> bool {
    use rustix::fs::AtFlags;
    let held = rustix::fs::fstat(file);
    let named = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW);
    matches!((held, named), (Ok(held), Ok(named))
        if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino))
}

/// The error of a journal whose name, `JOURNAL_LOCK_TRIES_MAX` times in a
/// row, did not lead to the file just locked (`is_named`).
pub fn journal_not_named(path: &std::path::Path) -> String {
    format!(
        "{}: locked {} times, and each time the name led to another file than the one locked \
         (st_dev/st_ino differ): another process keeps replacing it, or this file system does not \
         keep a file's identity; restore into a local file system",
        path.display(),
        crate::config::JOURNAL_LOCK_TRIES_MAX
    )
}

/// Reads a journal line by line (I/O-free) and hands on the record lines
/// it may trust, in journal order: at once for a section of this boot;
/// for any other section once a `durable` line covers them. Markers and
/// boot lines are never handed on.
pub struct Trust<'a> {
    boot: Option<&'a str>,
    /// The section being read is this boot's.
    this_boot: bool,
    /// Lines of another boot not covered yet: (end offset, line).
    unconfirmed: Vec<(u64, String)>,
    /// Lines of another boot dropped: never covered, or beyond the bound.
    dropped: u64,
}

impl<'a> Trust<'a> {
    pub fn new(boot: Option<&'a str>) -> Trust<'a> {
        Trust {
            boot,
            this_boot: false,
            unconfirmed: Vec::new(),
            dropped: 0,
        }
    }

    /// One whole line, without its `\n`, that ends (with it) at byte
    /// `end_offset` of the journal.
    pub fn line(&mut self, line: &str, end_offset: u64, trusted: &mut impl FnMut(&str)) {
        if let Some(boot) = line.strip_prefix(BOOT) {
            self.dropped += self.unconfirmed.len() as u64;
            self.unconfirmed.clear();
            self.this_boot = self.boot.is_some_and(|current| current == boot);
        } else if let Some(offset) = line.strip_prefix(DURABLE) {
            let Ok(offset) = offset.parse::<u64>() else {
                return;
            };
            let covered = self.unconfirmed.partition_point(|(end, _)| *end <= offset);
            for (_, line) in self.unconfirmed.drain(..covered) {
                trusted(&line);
            }
        } else if self.this_boot {
            trusted(line);
        } else if self.unconfirmed.len() < JOURNAL_UNCONFIRMED_LINES_MAX {
            self.unconfirmed.push((end_offset, line.to_string()));
        } else {
            self.dropped += 1;
        }
    }

    /// The journal ended: lines never covered are not trusted. How many
    /// were dropped in all.
    pub fn finish(mut self) -> u64 {
        self.dropped += self.unconfirmed.len() as u64;
        self.unconfirmed.clear();
        self.dropped
    }
}

/// Every trusted record line of a whole journal (for the small ones of `get`).
pub fn trusted_lines(text: &str, boot: Option<&str>) -> Vec<String> {
    let mut trust = Trust::new(boot);
    let mut lines = Vec::new();
    let mut end = 0u64;
    for line in text.split_inclusive('\n') {
        end += line.len() as u64;
        // Only whole lines count: a line cut by a kill is ignored.
        let Some(line) = line.strip_suffix('\n') else {
            break;
        };
        trust.line(line, end, &mut |line| lines.push(line.to_string()));
    }
    trust.finish();
    lines
}

/// A journal file that records are appended to, shared with the thread
/// that marks it durable. Closed (`close`) when the run's state goes.
pub struct Journal {
    file: Mutex<Option<File>>,
    /// Bumped when the file is cut: a mark measured before the cut is not
    /// written after it.
    cuts: AtomicU64,
}

impl Journal {
    pub fn new(file: File) -> Arc<Journal> {
        Arc::new(Journal {
            file: Mutex::new(Some(file)),
            cuts: AtomicU64::new(0),
        })
    }

    /// Appends `text` (whole lines) in one `write`, so a kill leaves at
    /// most a cut last line, which a later run ignores.
    pub fn append(&self, text: &str) -> std::io::Result<()> {
        self.with_file(|file| file.write_all(text.as_bytes()))
    }

    /// Empties the file (it stays the one open and locked).
    pub fn cut(&self) -> std::io::Result<()> {
        self.with_file(|file| {
            self.cuts.fetch_add(1, Ordering::AcqRel);
            file.set_len(0)
        })
    }

    /// Closes the file: appends fail from now on.
    pub fn close(&self) {
        drop(self.file.lock().expect("journal lock").take());
    }

    fn with_file<T>(
        &self,
        work: impl FnOnce(&mut File) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut file = self.file.lock().expect("journal lock");
        let file = file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the journal was closed with the run's state"))?;
        work(file)
    }

    /// Makes everything the journal says durable, and says so: the
    /// journal's length now, `syncfs` of the file system (`fs`), then a
    /// `durable` line for that length. Nothing when nothing was added since
    /// `last_marked_bytes`; returns the length marked.
    pub fn mark_durable(&self, fs: &OwnedFd, last_marked_bytes: u64) -> std::io::Result<u64> {
        let cuts = self.cuts.load(Ordering::Acquire);
        let length = self.with_file(|file| file.seek(std::io::SeekFrom::End(0)))?;
        if length == last_marked_bytes {
            return Ok(length);
        }
        rustix::fs::syncfs(fs).map_err(std::io::Error::from)?;
        self.with_file(|file| {
            if self.cuts.load(Ordering::Acquire) != cuts {
                return Ok(0);
            }
            file.write_all(format!("{DURABLE}{length}\n").as_bytes())?;
            file.seek(std::io::SeekFrom::End(0))
        })
    }
}

/// The thread that marks a journal durable every `interval` while the run
/// lasts (`Journal::mark_durable`). Stops, without a last mark, when
/// dropped: a run that ends well removes its journal, and one that does
/// not is resumed by a run of the same boot, which trusts every line. The
/// run does not wait for it: a `syncfs` in flight (seconds on a slow disk
/// full of dirty pages) finishes on its own, and its mark fails on the
/// closed journal.
pub struct DurableMarks {
    /// Dropped with this: the thread's wait ends at once.
    _stop: std::sync::mpsc::Sender<()>,
}

impl DurableMarks {
    pub fn start(journal: Arc<Journal>, fs: OwnedFd, interval: Duration) -> DurableMarks {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // Without the thread (none could be made), lines stay unconfirmed:
        // after a power cut they are fetched again, no more.
        let _ = std::thread::Builder::new()
            .name("ringdown-journal".into())
            .spawn(move || {
                let mut marked_bytes = 0;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(interval)
                {
                    // A failed mark leaves lines unconfirmed: after a
                    // power cut they are fetched again, no more.
                    if let Ok(bytes) = journal.mark_durable(&fs, marked_bytes) {
                        marked_bytes = bytes;
                    }
                }
            });
        DurableMarks { _stop: stop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(text: &str, boot: Option<&str>) -> Vec<String> {
        trusted_lines(text, boot)
    }

    /// The journal `text` in a new directory, opened as runs open it.
    fn journal_in(text: &str) -> (tempfile::TempDir, OwnedFd, File) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("journal"), text).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(dir.path().join("journal"))
            .unwrap();
        let fd = OwnedFd::from(File::open(dir.path()).unwrap());
        (dir, fd, file)
    }

    fn read(dir: &tempfile::TempDir, name: &str) -> String {
        std::fs::read_to_string(dir.path().join(name)).unwrap()
    }

    #[test]
    fn chunk_lines_read_back() {
        let line = chunk_line("4_zid\t99", 8192);
        assert_eq!(line, "chunk\t4_zid\t99\t8192\n");
        assert_eq!(parse_chunk_line(line.trim_end()), Some(("4_zid\t99", 8192)));
        assert_eq!(parse_chunk_line("chunk\tk\tmany"), None);
        assert_eq!(parse_chunk_line("ok\tname\tk\t1"), None);
    }

    #[test]
    fn a_new_journal_is_written_to_in_place() {
        let (dir, fd, file) = journal_in("");
        let rewritten = rewrite(&fd, "journal", file, "boot\tB\n").unwrap();
        assert_eq!(read(&dir, "journal"), "boot\tB\n");
        assert!(is_named(&fd, "journal", &rewritten));
    }

    /// A journal with lines is replaced whole by a rename, never emptied
    /// first: the old file keeps its text to the end (a kill before the
    /// rename leaves it under the name), the new one is locked before it
    /// takes the name, and a stale `journal.new` is no obstacle.
    #[test]
    fn a_journal_with_lines_is_replaced_never_emptied() {
        let old_text = "boot\tA\nchunk\tk\t4096\nchunk\tk\t8192\n";
        let (dir, fd, file) = journal_in(old_text);
        std::fs::write(dir.path().join("journal.new"), "stale").unwrap();
        let old = file.try_clone().unwrap();
        let new_text = restated("chunk\tk\t8192\n", Some("B"));
        let mut rewritten = rewrite(&fd, "journal", file, &new_text).unwrap();
        assert_eq!(read(&dir, "journal"), new_text);
        assert!(!dir.path().join("journal.new").exists());
        assert!(is_named(&fd, "journal", &rewritten) && !is_named(&fd, "journal", &old));
        let mut kept = String::new();
        std::io::Read::read_to_string(&mut &old, &mut kept).unwrap();
        assert_eq!(kept, old_text);
        let locked = rustix::fs::flock(
            File::open(dir.path().join("journal")).unwrap(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        );
        assert_eq!(locked, Err(rustix::io::Errno::WOULDBLOCK));
        rewritten.write_all(b"chunk\tk\t12288\n").unwrap();
        assert_eq!(read(&dir, "journal"), new_text + "chunk\tk\t12288\n");
    }

    /// A rewrite that fails leaves the journal as it was.
    #[test]
    fn a_failed_rewrite_keeps_the_journal() {
        let old_text = "boot\tA\nchunk\tk\t4096\n";
        let (dir, fd, file) = journal_in(old_text);
        // Where the new text would go, a directory that cannot be removed.
        std::fs::create_dir_all(dir.path().join("journal.new/busy")).unwrap();
        assert!(rewrite(&fd, "journal", file, "boot\tB\n").is_err());
        assert_eq!(read(&dir, "journal"), old_text);
    }

    #[test]
    fn lines_of_this_boot_are_trusted_and_of_another_only_when_covered() {
        let text = "boot\tA\nok\ta\nchunk\tk\t8\n";
        // A kill: the same boot, every line.
        assert_eq!(trusted(text, Some("A")), ["ok\ta", "chunk\tk\t8"]);
        // A reboot since, and no mark: none.
        assert!(trusted(text, Some("B")).is_empty());
        // Unknown boot now: none either.
        assert!(trusted(text, None).is_empty());
        // A mark covers the lines before its offset, not those after it.
        let marked = "boot\tA\nok\ta\ndurable\t12\nok\tb\n";
        assert_eq!(trusted(marked, Some("B")), ["ok\ta"]);
        assert_eq!(trusted(marked, Some("A")), ["ok\ta", "ok\tb"]);
        // A line written while the mark was being made (after its offset,
        // before it): not covered.
        let racing = "boot\tA\nok\ta\nok\tb\ndurable\t12\n";
        assert_eq!(trusted(racing, Some("B")), ["ok\ta"]);
    }

    #[test]
    fn each_run_section_is_judged_by_its_own_boot() {
        // An older ringdown's lines (no boot line), then a run of boot A
        // with a mark, then a run of boot B cut by a power cut.
        let text = "ok\told\nboot\tA\nok\ta1\ndurable\t26\nok\ta2\nboot\tB\nok\tb1\n";
        assert_eq!(trusted(text, Some("B")), ["ok\ta1", "ok\tb1"]);
        assert_eq!(trusted(text, Some("C")), ["ok\ta1"]);
        // A mark in a later section does not cover an earlier boot's lines.
        let later = "boot\tA\nok\ta\nboot\tB\ndurable\t999\n";
        assert!(trusted(later, Some("C")).is_empty());
    }

    #[test]
    fn cut_lines_and_bad_marks_are_ignored() {
        assert_eq!(trusted("boot\tA\nok\ta\nok\tb", Some("A")), ["ok\ta"]);
        assert!(trusted("boot\tA\nok\ta\ndurable\tx\n", Some("B")).is_empty());
    }

    #[test]
    fn unconfirmed_lines_are_bounded() {
        let mut text = String::from("boot\tA\n");
        for i in 0..JOURNAL_UNCONFIRMED_LINES_MAX + 10 {
            text.push_str(&format!("ok\t{i}\n"));
        }
        let end = text.len();
        text.push_str(&format!("durable\t{end}\n"));
        let mut trust = Trust::new(Some("B"));
        let mut count = 0;
        let mut offset = 0u64;
        for line in text.split_inclusive('\n') {
            offset += line.len() as u64;
            trust.line(line.trim_end_matches('\n'), offset, &mut |_| count += 1);
        }
        assert_eq!(count, JOURNAL_UNCONFIRMED_LINES_MAX);
        assert_eq!(trust.finish(), 10);
    }

    #[test]
    fn a_mark_covers_what_was_written_before_it_and_not_after_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .create(true)
            .read(true)
            .append(true)
            .open(dir.path().join("j"))
            .unwrap();
        let fs = rustix::fs::open(
            dir.path(),
            rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let journal = Journal::new(file);
        journal.append("boot\tA\nok\ta\n").unwrap();
        let marked = journal.mark_durable(&fs, 0).unwrap();
        assert_eq!(marked, "boot\tA\nok\ta\ndurable\t12\n".len() as u64);
        // Nothing new: no second mark.
        assert_eq!(journal.mark_durable(&fs, marked).unwrap(), marked);
        journal.append("ok\tb\n").unwrap();
        let text = std::fs::read_to_string(dir.path().join("j")).unwrap();
        assert_eq!(text, "boot\tA\nok\ta\ndurable\t12\nok\tb\n");
        assert_eq!(trusted(&text, Some("B")), ["ok\ta"]);
        journal.close();
        assert!(journal.append("ok\tc\n").is_err());
    }

    /// h35 #1: a run's journal lock must go with its run, though the
    /// durable-marks thread still holds the `Journal` (in a `syncfs` that can
    /// last seconds): `close` drops the locked file, so a run started right
    /// after takes the lock instead of blaming "another ringdown".
    #[test]
    fn closing_releases_the_lock_while_the_marks_thread_still_holds_the_journal() {
        use rustix::fs::FlockOperation;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let open = || {
            File::options()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap()
        };
        let first = open();
        rustix::fs::flock(&first, FlockOperation::NonBlockingLockExclusive).unwrap();
        let journal = Journal::new(first);
        let held_by_thread = Arc::clone(&journal);
        let second = open();
        assert_eq!(
            rustix::fs::flock(&second, FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
        journal.close();
        drop(journal);
        rustix::fs::flock(&second, FlockOperation::NonBlockingLockExclusive)
            .expect("the next run's lock, with the thread's reference alive");
        assert!(held_by_thread.append("ok\ta\n").is_err());
    }
}

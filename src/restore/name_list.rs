//! `--files-from` lists, read line by line, checked, and sorted in bounded
//! memory: `FILES_FROM_SORT_RUN_BYTES` at a time, the rest spilled to
//! unnamed files in `TMPDIR` (`external_sort`). A list of ten million names
//! costs disk there, not memory.

use std::io::{BufRead, Read};

use super::external_sort::{Sorted, Sorter, anonymous_file};
use super::wanted::{self, Keep, Wanted};
use crate::config::{B2_FILE_NAME_MAX_BYTES, FILES_FROM_SORT_RUN_BYTES};
use crate::error::{Error, Result};

/// The names of a `--files-from` list, relative to the restore's prefix,
/// ready to be walked (as often as wanted) in B2's order.
pub struct NameList {
    sorted: Sorted,
    /// Names in the list, repeats included.
    names: u64,
}

impl std::fmt::Debug for NameList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameList")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl NameList {
    /// One name per line (`wanted::list_entry`), each a possible B2 name
    /// under `prefix`; `shown` names the list in messages (a path, or `-`).
    /// A bad line is a usage error naming its number.
    pub fn read(mut reader: impl BufRead, prefix: &str, shown: &str) -> Result<NameList> {
        let mut builder = Builder::new(prefix, shown);
        let read_error = |error| Error::Usage(format!("--files-from {shown}: {error}"));
        let mut line = Vec::new();
        let mut number = 0usize;
        loop {
            line.clear();
            // A line is read up to one byte past the longest a name can be,
            // so that no line (a JSON manifest passed by mistake, /dev/zero)
            // is held whole.
            let read = (&mut reader)
                .take(LIST_LINE_MAX_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(read_error)?;
            if read == 0 {
                break;
            }
            number += 1;
            if line.last() == Some(&b'\n') {
                line.pop();
            } else if line.len() > LIST_LINE_MAX_BYTES {
                let comment = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&line);
                if !comment.starts_with(b"#") {
                    return Err(Error::Usage(format!(
                        "--files-from {shown}: line {number} is longer than any B2 file name \
                         ({B2_FILE_NAME_MAX_BYTES} bytes)"
                    )));
                }
                skip_line(&mut reader).map_err(read_error)?;
                continue;
            }
            let text = std::str::from_utf8(&line).map_err(|_| {
                Error::Usage(format!(
                    "--files-from {shown}: line {number} is not UTF-8 (B2 names are UTF-8)"
                ))
            })?;
            if let Some(name) = wanted::list_entry(number, text) {
                builder.push(number, name)?;
            }
        }
        builder.finish()
    }

    /// A list from names already split (library callers): the same checks.
    pub fn from_names<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
        prefix: &str,
    ) -> Result<NameList> {
        let mut builder = Builder::new(prefix, "(names)");
        for (index, name) in names.into_iter().enumerate() {
            builder.push(index + 1, name.as_ref())?;
        }
        builder.finish()
    }

    /// Names in the list, repeats included.
    pub fn len(&self) -> u64 {
        self.names
    }

    pub fn is_empty(&self) -> bool {
        self.names == 0
    }

    /// A walk of the list beside a listing under `prefix`, of the names
    /// `keep` keeps. A first pass counts those, so that no listing page is
    /// longer than the names still sought (B2 bills a page per 1,000 names).
    pub(crate) fn wanted(&self, prefix: &str, keep: Keep) -> Wanted {
        let mut kept = 0u64;
        for name in self.sorted.lines() {
            match name {
                Ok(relative) => kept += u64::from(keep(&format!("{prefix}{relative}"), &relative)),
                // The walk fails at once, saying why.
                Err(error) => {
                    return Wanted::new(Box::new(std::iter::once(Err(error))), 0, prefix, keep);
                }
            }
        }
        Wanted::new(Box::new(self.sorted.lines()), kept, prefix, keep)
    }
}

/// The longest line that can hold a name: a name's bytes, a byte-order
/// mark and a CR.
const LIST_LINE_MAX_BYTES: usize = B2_FILE_NAME_MAX_BYTES + 3 + 1;

/// Consumes the rest of a line (a long comment) without keeping it.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        match buffer.iter().position(|&byte| byte == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let all = buffer.len();
                reader.consume(all);
            }
        }
    }
}

struct Builder<'a> {
    sorter: Sorter<Box<dyn FnMut() -> std::io::Result<std::fs::File>>>,
    prefix: &'a str,
    shown: &'a str,
}

impl<'a> Builder<'a> {
    fn new(prefix: &'a str, shown: &'a str) -> Builder<'a> {
        // Sorting holds up to a few hundred runs open (as a restore holds
        // its files): the soft limit can be 256.
        crate::runtime::raise_open_files_limit();
        let spill_dir = std::env::temp_dir();
        let make_file: Box<dyn FnMut() -> std::io::Result<std::fs::File>> =
            Box::new(move || anonymous_file(&spill_dir));
        Builder {
            sorter: Sorter::new(FILES_FROM_SORT_RUN_BYTES, make_file),
            prefix,
            shown,
        }
    }

    fn push(&mut self, number: usize, name: &str) -> Result<()> {
        wanted::check_list_name(self.prefix, name).map_err(|why| {
            Error::Usage(format!(
                "--files-from {}: line {number} is not a B2 file name: {why}",
                self.shown
            ))
        })?;
        self.sorter
            .push(name.to_string())
            .map_err(|error| self.spill_error(error))
    }

    fn finish(self) -> Result<NameList> {
        let names = self.sorter.pushed();
        if names == 0 {
            return Err(Error::Usage(format!(
                "--files-from {}: no names in it (one per line; # starts a comment)",
                self.shown
            )));
        }
        let shown = self.shown;
        let sorted = self
            .sorter
            .finish()
            .map_err(|error| spill_error(shown, error))?;
        Ok(NameList { sorted, names })
    }

    fn spill_error(&self, error: std::io::Error) -> Error {
        spill_error(self.shown, error)
    }
}

fn spill_error(shown: &str, error: std::io::Error) -> Error {
    let dir = std::env::temp_dir();
    // No such directory, or not ours to write: the setting is wrong, not
    // the run (exit 2, before any request).
    if let Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES | libc::EROFS) = error.raw_os_error() {
        return Error::Usage(format!(
            "--files-from {shown}: cannot sort it in TMPDIR {}: {error}; point TMPDIR at a \
             writable directory",
            dir.display()
        ));
    }
    let hint = match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => " (set TMPDIR to a directory with room)",
        Some(libc::EMFILE | libc::ENFILE) => " (raise the open files limit: ulimit -n)",
        _ => "",
    };
    Error::io(
        format!(
            "sorting --files-from {shown} in {}{hint}",
            std::env::temp_dir().display()
        ),
        error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(list: &NameList, prefix: &str) -> Vec<String> {
        let mut wanted = list.wanted(prefix, Box::new(|_, _| true));
        let mut names = Vec::new();
        let next = wanted.continue_from(None, &mut |name| {
            names.push(name);
            true
        });
        assert_eq!(next, None);
        assert!(wanted.take_error().is_none());
        names
    }

    #[test]
    fn a_list_reads_line_by_line_into_b2_order() {
        let text = "\u{feff}b.txt\r\n# a comment\n\ndir/a c.txt\nb.txt\nlast";
        let list = NameList::read(text.as_bytes(), "p/", "list.txt").unwrap();
        assert_eq!(list.len(), 4, "repeats included");
        assert_eq!(walk(&list, "p/"), ["p/b.txt", "p/dir/a c.txt", "p/last"]);
        assert_eq!(walk(&list, "p/").len(), 3, "walks again from the start");
    }

    /// A TMPDIR that is not there is a usage error (exit 2), said so.
    #[test]
    fn a_missing_spill_directory_is_a_usage_error() {
        let error = spill_error("list.txt", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(&error, Error::Usage(text) if text.contains("point TMPDIR")));
    }

    #[test]
    fn bad_lines_are_usage_errors_with_their_number() {
        let message = |bytes: &[u8]| {
            NameList::read(bytes, "", "list.txt")
                .unwrap_err()
                .to_string()
        };
        assert!(message(b"ok\n\xff\n").contains("line 2 is not UTF-8"));
        assert!(message(b"ok\n\nbad\tname\n").contains("line 3 is not a B2 file name"));
        assert!(message(b"# nothing\n\n").contains("no names in it"));
        let long = format!("a\n{}\n", "x".repeat(1025));
        assert!(message(long.as_bytes()).contains("line 2 is not a B2 file name"));
        // Longer than any line that can hold a name: refused before it is
        // read whole, wherever it ends; a comment that long is skipped.
        let huge = format!("a\n{}", "x".repeat(10 << 20));
        assert!(message(huge.as_bytes()).contains("line 2 is longer than any B2 file name"));
        let comment = format!("\u{feff}# {}\r\nb\n", "c".repeat(10 << 20));
        let list = NameList::read(comment.as_bytes(), "", "list.txt").unwrap();
        assert_eq!(walk(&list, ""), ["b"]);
    }

    /// More names than one run holds: spilled, merged, walked in order.
    #[test]
    fn a_long_list_is_sorted_on_disk() {
        let count = 2 * FILES_FROM_SORT_RUN_BYTES / 40;
        let names: Vec<String> = (0..count)
            .map(|i| format!("dir-{:03}/file-{:08}", (i * 7) % 997, i))
            .collect();
        let list = NameList::from_names(&names, "").unwrap();
        let mut expected = names.clone();
        expected.sort_unstable();
        assert_eq!(walk(&list, ""), expected);
    }
}

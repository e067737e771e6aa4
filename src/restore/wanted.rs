//! `--files-from`: restore exactly the names of a list (an incident's
//! damaged files, a manifest). I/O-free: parses the list, then walks beside
//! the listing, so that
//!
//! - the listing jumps from one wanted name to the next (`startFileName`):
//!   twenty names from a bucket of fifty million cost a few calls, not a walk
//!   of the whole bucket;
//! - every wanted name the bucket does not have (or, with `--as-of`, did not
//!   have then) is reported as failed instead of silently left out.
//!
//! The list is held in memory, sorted as B2 lists (UTF-8 bytes).

use super::listing::{Action, ListEntry, PageStart};
use crate::config::B2_FILE_NAME_MAX_BYTES;

/// The names of a list file, relative to the restore's PREFIX: one per line;
/// a leading byte-order mark and a trailing CR on each line are dropped
/// (lists saved on Windows); empty lines and lines starting with `#` are
/// skipped.
/// Each name comes with its line number (from 1), for messages.
pub fn parse_list(text: &str) -> Vec<(usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(index, line)| (index + 1, line))
        .collect()
}

/// Why `prefix` + `name` cannot be a B2 file name (a listing started at it
/// would be refused as a bad request, ending the run).
pub fn check_list_name(prefix: &str, name: &str) -> Result<(), String> {
    let bytes = prefix.len() + name.len();
    if bytes > B2_FILE_NAME_MAX_BYTES {
        return Err(format!(
            "{bytes} bytes with the prefix; B2 names are at most {B2_FILE_NAME_MAX_BYTES}"
        ));
    }
    if name.chars().any(|c| c.is_ascii_control()) {
        return Err("a control character; B2 names have none".into());
    }
    Ok(())
}

/// The wanted names and how far the listing has come through them.
#[derive(Debug)]
pub struct Wanted {
    /// Full names (PREFIX + the list's name), sorted, unique.
    names: Vec<String>,
    /// The first name not yet passed by the listing.
    cursor: usize,
    /// `names[cursor]` was listed as something to restore.
    current_found: bool,
    /// Names passed without being found, not yet taken.
    missing: Vec<String>,
}

impl Wanted {
    /// `keep(full, relative)` leaves out names this process does not restore
    /// (another shard's, or excluded by the filters): those are not wanted,
    /// so not missing either.
    pub fn new<'a>(
        relative_names: impl IntoIterator<Item = &'a str>,
        prefix: &str,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Wanted {
        let mut names: Vec<String> = relative_names
            .into_iter()
            .filter_map(|relative| {
                let full = format!("{prefix}{relative}");
                keep(&full, relative).then_some(full)
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        Wanted {
            names,
            cursor: 0,
            current_found: false,
            missing: Vec::new(),
        }
    }

    /// Names not yet passed by the listing.
    pub fn remaining(&self) -> usize {
        self.names.len() - self.cursor
    }

    /// Where the listing starts.
    pub fn first_start(&self) -> Option<PageStart> {
        self.names.first().map(PageStart::at)
    }

    /// A listed name (any entry, before `--as-of` picks among versions):
    /// every wanted name before it has been passed.
    pub fn observe(&mut self, listed: &str) {
        while let Some(name) = self.names.get(self.cursor) {
            if name.as_str() >= listed {
                break;
            }
            self.pass_current();
        }
    }

    /// An entry chosen for restoring: kept if wanted.
    pub fn accept(&mut self, entry: ListEntry) -> Option<ListEntry> {
        self.observe(&entry.name);
        if self.names.get(self.cursor) != Some(&entry.name) {
            return None;
        }
        if matches!(entry.action, Action::Upload | Action::Folder) {
            self.current_found = true;
        }
        Some(entry)
    }

    /// Where the listing goes on after a page whose own next start is
    /// `listing_next`: there, when it has not passed the next name still
    /// wanted; else a jump to that name. `None`: nothing more to list (every
    /// name found or passed; at the listing's end, the rest are missing).
    pub fn continue_from(&mut self, listing_next: Option<PageStart>) -> Option<PageStart> {
        let Some(next) = listing_next else {
            while self.cursor < self.names.len() {
                self.pass_current();
            }
            return None;
        };
        // A name found needs none of its other versions: go past it.
        if self.current_found {
            self.pass_current();
        }
        let wanted = self.names.get(self.cursor)?;
        match next.file_name.as_deref() {
            Some(listed) if listed >= wanted.as_str() => Some(next),
            _ => Some(PageStart::at(wanted.as_str())),
        }
    }

    /// Wanted names the listing passed without finding, since the last call.
    pub fn take_missing(&mut self) -> Vec<String> {
        std::mem::take(&mut self.missing)
    }

    fn pass_current(&mut self) {
        if !self.current_found {
            self.missing.push(self.names[self.cursor].clone());
        }
        self.cursor += 1;
        self.current_found = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, action: Action) -> ListEntry {
        ListEntry::named(name, action)
    }

    fn start(name: &str) -> Option<PageStart> {
        Some(PageStart::at(name))
    }

    #[test]
    fn the_list_is_one_name_per_line() {
        let text = "a.txt\r\n# a comment\n\ndir/b c.txt\n  spaced \nlast";
        assert_eq!(
            parse_list(text),
            [
                (1, "a.txt"),
                (4, "dir/b c.txt"),
                (5, "  spaced "),
                (6, "last")
            ]
        );
        assert_eq!(check_list_name("p/", "a b.txt"), Ok(()));
        assert!(check_list_name("p/", "tab\there").is_err());
        assert!(check_list_name("p/", &"x".repeat(1023)).is_err());
        assert_eq!(check_list_name("", &"x".repeat(1024)), Ok(()));
        assert!(parse_list("").is_empty());
        assert_eq!(
            parse_list("\u{feff}a.txt\r\nb.txt"),
            [(1, "a.txt"), (2, "b.txt")]
        );
    }

    #[test]
    fn names_are_prefixed_sorted_unique_and_filtered() {
        let wanted = Wanted::new(["b", "a", "b", "skip/x"], "p/", |full, relative| {
            assert!(full.starts_with("p/"));
            !relative.starts_with("skip/")
        });
        assert_eq!(wanted.names, ["p/a", "p/b"]);
        assert_eq!(wanted.first_start(), start("p/a"));
        assert!(Wanted::new([], "", |_, _| true).first_start().is_none());
    }

    /// Sparse names jump; dense ones follow the listing; names the listing
    /// passes or never reaches are missing.
    #[test]
    fn the_walk_jumps_between_wanted_names_and_reports_the_missing() {
        let mut wanted = Wanted::new(["b", "c", "m", "n", "q", "z"], "", |_, _| true);
        // Page from "b": b, c, d; the listing would go on at "e".
        for name in ["b", "c", "d"] {
            let kept = wanted.accept(entry(name, Action::Upload));
            assert_eq!(kept.is_some(), name != "d");
        }
        assert_eq!(
            wanted.continue_from(start("e")),
            start("m"),
            "jump over e..l"
        );
        // Page from "m": m, o (n is not in the bucket).
        assert!(wanted.accept(entry("m", Action::Upload)).is_some());
        assert!(wanted.accept(entry("o", Action::Upload)).is_none());
        assert_eq!(wanted.take_missing(), ["n"]);
        // The listing's own next ("p") is before "q": jump.
        assert_eq!(wanted.continue_from(start("p")), start("q"));
        // Page from "q": q is only an unfinished large file; the listing ends.
        assert!(wanted.accept(entry("q", Action::Other)).is_some());
        assert_eq!(wanted.continue_from(None), None);
        assert_eq!(wanted.take_missing(), ["q", "z"]);
        assert_eq!(wanted.remaining(), 0);
    }

    /// Versions: a page that ends inside a wanted name not yet found goes
    /// on within it; once found, its older versions are skipped.
    #[test]
    fn versions_continue_within_a_name_until_it_is_found() {
        let mut wanted = Wanted::new(["a", "k"], "", |_, _| true);
        wanted.observe("a");
        let inside_a = Some(PageStart {
            file_name: Some("a".into()),
            file_id: Some("id-a-2".into()),
        });
        assert_eq!(wanted.continue_from(inside_a.clone()), inside_a);
        assert!(wanted.accept(entry("a", Action::Upload)).is_some());
        let still_inside_a = Some(PageStart {
            file_name: Some("a".into()),
            file_id: Some("id-a-9".into()),
        });
        assert_eq!(wanted.continue_from(still_inside_a), start("k"));
        // `k`'s versions were all newer than the instant: listed, never
        // picked, then passed.
        wanted.observe("k");
        wanted.observe("l");
        assert_eq!(wanted.take_missing(), ["k"]);
        assert_eq!(
            wanted.continue_from(start("m")),
            None,
            "nothing left to want"
        );
    }

    /// Against simulated buckets (`fuzz_targets::files_from`): every
    /// wanted name is found or reported missing exactly once, whatever the
    /// bucket, the list and the page size.
    #[test]
    fn every_wanted_name_is_found_or_missing_exactly_once() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for _ in 0..500 {
            let mut input = vec![1 + random(12) as u8];
            for i in 0..60 {
                if random(3) == 0 {
                    input.extend(format!("{i:02}\n").bytes());
                }
            }
            input.push(0);
            for i in 0..60 {
                if random(4) == 0 {
                    input.extend(format!("{i:02}\n").bytes());
                }
            }
            crate::fuzz_targets::files_from(&input);
        }
    }
}

//! `--files-from`: restore exactly the names of a list (an incident's
//! damaged files, a manifest). I/O-free: parses the list's lines, then walks
//! beside the listing, so that
//!
//! - the listing jumps from one wanted name to the next (`startFileName`):
//!   twenty names from a bucket of fifty million cost a few calls, not a walk
//!   of the whole bucket;
//! - every wanted name the bucket does not have (or, with `--as-of`, did not
//!   have then) is reported as failed instead of silently left out.
//!
//! The names come sorted as B2 lists them (UTF-8 bytes) and drawn one at a
//! time (`name_list` sorts them on disk), so a list of any length walks in
//! the same memory.

use std::io;

use super::listing::{Action, ListEntry, PageStart};
use crate::config::B2_FILE_NAME_MAX_BYTES;

/// The name on line `number` (from 1) of a list, if the line holds one:
/// a leading byte-order mark (line 1) and a trailing CR are dropped (lists
/// saved on Windows); empty lines and lines starting with `#` hold none.
pub fn list_entry(number: usize, line: &str) -> Option<&str> {
    let line = if number == 1 {
        line.strip_prefix('\u{feff}').unwrap_or(line)
    } else {
        line
    };
    let line = line.strip_suffix('\r').unwrap_or(line);
    (!line.is_empty() && !line.starts_with('#')).then_some(line)
}

/// The names of a whole list text (`list_entry` for each line), each with
/// its line number.
pub fn parse_list(text: &str) -> Vec<(usize, &str)> {
    text.split('\n')
        .enumerate()
        .filter_map(|(index, line)| list_entry(index + 1, line).map(|name| (index + 1, name)))
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

/// Whether a wanted name is restored by this process: `(full, relative)`
/// (another shard's, or one the filters exclude, is not wanted, so not
/// missing either).
pub type Keep = Box<dyn Fn(&str, &str) -> bool + Send>;

/// The list's names, ascending and each once, relative to the prefix.
pub type Names = Box<dyn Iterator<Item = io::Result<String>> + Send>;

/// The wanted names and how far the listing has come through them.
pub struct Wanted {
    names: Names,
    prefix: String,
    keep: Keep,
    /// Names `keep` keeps not yet drawn from `names`.
    undrawn: u64,
    /// The first wanted full name (PREFIX + name) the listing has not passed.
    current: Option<String>,
    /// `current` was listed as something to restore.
    current_found: bool,
    /// `missing` said to stop: the walk is over.
    stopped: bool,
    /// Reading `names` failed: the walk ended early, and the run must fail.
    failed: Option<io::Error>,
}

/// Where the names the listing passed without finding go, one at a time, as
/// they are passed (a list can hold millions the bucket lacks). It returns
/// false to end the walk (the run is over).
pub type Missing<'a> = &'a mut dyn FnMut(String) -> bool;

impl std::fmt::Debug for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wanted")
            .field("current", &self.current)
            .field("undrawn", &self.undrawn)
            .finish_non_exhaustive()
    }
}

impl Wanted {
    /// `names` is ascending, each name once, and `kept` of them pass `keep`.
    pub fn new(names: Names, kept: u64, prefix: &str, keep: Keep) -> Wanted {
        let mut wanted = Wanted {
            names,
            prefix: prefix.to_string(),
            keep,
            undrawn: kept,
            current: None,
            current_found: false,
            stopped: false,
            failed: None,
        };
        wanted.draw();
        wanted
    }

    /// Wanted names not yet passed: a bound for a page's length.
    pub fn remaining(&self) -> u64 {
        self.undrawn + u64::from(self.current.is_some())
    }

    /// Where the listing starts.
    pub fn first_start(&self) -> Option<PageStart> {
        self.current.as_deref().map(PageStart::at)
    }

    /// A listed name (any entry, before `--as-of` picks among versions):
    /// every wanted name before it has been passed.
    pub fn observe(&mut self, listed: &str, missing: Missing) {
        while self.current.as_deref().is_some_and(|name| name < listed) {
            self.pass_current(missing);
        }
    }

    /// An entry chosen for restoring: kept if wanted.
    pub fn accept(&mut self, entry: ListEntry, missing: Missing) -> Option<ListEntry> {
        self.observe(&entry.name, missing);
        if self.current.as_deref() != Some(entry.name.as_str()) {
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
    pub fn continue_from(
        &mut self,
        listing_next: Option<PageStart>,
        missing: Missing,
    ) -> Option<PageStart> {
        let Some(next) = listing_next else {
            while self.current.is_some() {
                self.pass_current(missing);
            }
            return None;
        };
        // A name found needs none of its other versions: go past it.
        if self.current_found {
            self.pass_current(missing);
        }
        let wanted = self.current.as_deref()?;
        match next.file_name.as_deref() {
            Some(listed) if listed >= wanted => Some(next),
            _ => Some(PageStart::at(wanted)),
        }
    }

    /// Why the names stopped coming before their end, once.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.failed.take()
    }

    fn pass_current(&mut self, missing: Missing) {
        if let Some(name) = self.current.take() {
            if !self.current_found && !missing(name) {
                self.stopped = true;
            }
        }
        self.current_found = false;
        self.draw();
    }

    /// The next kept name into `current` (`None` at the end, or on error).
    fn draw(&mut self) {
        if self.stopped {
            self.current = None;
            return;
        }
        for next in self.names.by_ref() {
            match next {
                Ok(relative) => {
                    let full = format!("{}{relative}", self.prefix);
                    if (self.keep)(&full, &relative) {
                        self.undrawn = self.undrawn.saturating_sub(1);
                        self.current = Some(full);
                        return;
                    }
                }
                Err(error) => {
                    self.failed = Some(error);
                    break;
                }
            }
        }
        self.current = None;
        self.undrawn = 0;
    }
}

/// Sorted, without repeats, ready for `Wanted::new` (lists held in memory:
/// tests, the fuzz target).
pub fn sorted_names<'a>(names: impl IntoIterator<Item = &'a str>) -> (Names, u64) {
    let mut names: Vec<String> = names.into_iter().map(str::to_string).collect();
    names.sort_unstable();
    names.dedup();
    let count = names.len() as u64;
    (Box::new(names.into_iter().map(Ok)), count)
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

    /// A walk with the missing names gathered, as the tests read them.
    struct Walk {
        wanted: Wanted,
        missing: Vec<String>,
    }

    impl Walk {
        fn new(wanted: Wanted) -> Walk {
            Walk {
                wanted,
                missing: Vec::new(),
            }
        }

        fn observe(&mut self, listed: &str) {
            let missing = &mut self.missing;
            self.wanted.observe(listed, &mut |name| {
                missing.push(name);
                true
            });
        }

        fn accept(&mut self, entry: ListEntry) -> Option<ListEntry> {
            let missing = &mut self.missing;
            self.wanted.accept(entry, &mut |name| {
                missing.push(name);
                true
            })
        }

        fn continue_from(&mut self, next: Option<PageStart>) -> Option<PageStart> {
            let missing = &mut self.missing;
            self.wanted.continue_from(next, &mut |name| {
                missing.push(name);
                true
            })
        }

        fn take_missing(&mut self) -> Vec<String> {
            std::mem::take(&mut self.missing)
        }
    }

    impl std::ops::Deref for Walk {
        type Target = Wanted;
        fn deref(&self) -> &Wanted {
            &self.wanted
        }
    }

    impl std::ops::DerefMut for Walk {
        fn deref_mut(&mut self) -> &mut Wanted {
            &mut self.wanted
        }
    }

    fn wanted_of(names: &[&str]) -> Walk {
        let (names, count) = sorted_names(names.iter().copied());
        Walk::new(Wanted::new(names, count, "", Box::new(|_, _| true)))
    }

    #[test]
    fn names_are_prefixed_and_filtered() {
        let (names, count) = sorted_names(["b", "a", "b", "skip/x"]);
        assert_eq!(count, 3);
        let keep: Keep = Box::new(|full, relative| {
            assert!(full.starts_with("p/"));
            !relative.starts_with("skip/")
        });
        let mut wanted = Walk::new(Wanted::new(names, 2, "p/", keep));
        assert_eq!(wanted.first_start(), start("p/a"));
        assert_eq!(wanted.remaining(), 2);
        assert_eq!(wanted.continue_from(None), None);
        assert_eq!(wanted.take_missing(), ["p/a", "p/b"]);
        assert_eq!(wanted.remaining(), 0);
        assert!(wanted.take_error().is_none());
        assert!(wanted_of(&[]).first_start().is_none());
    }

    /// A list that cannot be read to its end ends the walk and says why:
    /// the names after the failure are neither restored nor reported
    /// missing, so the run must fail.
    #[test]
    fn a_list_that_fails_mid_way_ends_the_walk_with_its_error() {
        let names: Names = Box::new(
            [
                Ok("a".to_string()),
                Err(io::Error::other("disk gone")),
                Ok("z".to_string()),
            ]
            .into_iter(),
        );
        let mut wanted = Walk::new(Wanted::new(names, 3, "", Box::new(|_, _| true)));
        assert_eq!(wanted.first_start(), start("a"));
        assert!(wanted.accept(entry("a", Action::Upload)).is_some());
        assert_eq!(wanted.continue_from(start("b")), None);
        assert!(wanted.take_missing().is_empty());
        assert_eq!(wanted.take_error().unwrap().to_string(), "disk gone");
    }

    /// A sink that says stop ends the walk at once: no more names are drawn.
    #[test]
    fn the_walk_stops_when_the_missing_names_have_nowhere_to_go() {
        let (names, count) = sorted_names(["a", "b", "c"]);
        let mut wanted = Wanted::new(names, count, "", Box::new(|_, _| true));
        let mut passed = Vec::new();
        let next = wanted.continue_from(None, &mut |name| {
            passed.push(name);
            false
        });
        assert_eq!(next, None);
        assert_eq!(passed, ["a"]);
        assert!(wanted.first_start().is_none());
    }

    /// Sparse names jump; dense ones follow the listing; names the listing
    /// passes or never reaches are missing.
    #[test]
    fn the_walk_jumps_between_wanted_names_and_reports_the_missing() {
        let mut wanted = wanted_of(&["b", "c", "m", "n", "q", "z"]);
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
        let mut wanted = wanted_of(&["a", "k"]);
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

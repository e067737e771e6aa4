//! Object name → local path, shard choice and include/exclude filters.
//! I/O-free: the decisions here are unit-tested without a filesystem.
//!
//! A name is never joined onto the target as a string: it is split on `/`
//! and each segment is checked, then created one component at a time by the
//! caller (`restore::target`), relative to the DIR fd, never following a symlink.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use globset::{GlobSet, GlobSetBuilder};
use sha1::{Digest, Sha1};

use crate::config::B2_FILE_NAME_MAX_BYTES;

/// The directory the restore keeps its journal and partial files in.
pub const STATE_DIR_NAME: &str = ".ringdown";
/// Longest path segment a Linux filesystem accepts (NAME_MAX).
const SEGMENT_MAX_BYTES: usize = 255;

/// What a (prefix-relative) object name means on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped<'a> {
    /// A regular file at these segments (at least one).
    File(Vec<&'a str>),
    /// A directory marker (`folder` entry, `x/`, `x/.bzEmpty`): create the
    /// directory only. Empty = DIR itself.
    Directory(Vec<&'a str>),
    /// Not restorable, with the reason shown to the user.
    Refused(String),
}

/// The name relative to the restore's folder prefix (`photos/` of
/// `b2://bkt/photos`). `None` when the name is not under the prefix.
pub fn relative_name<'a>(name: &'a str, folder_prefix: &str) -> Option<&'a str> {
    name.strip_prefix(folder_prefix)
}

/// The folder prefix for `b2://BUCKET/PREFIX`: `PREFIX/` (folder semantics,
/// as `b2 sync`), or empty for the whole bucket.
pub fn folder_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// As `map_name`, for a listed object of `size_bytes`: a marker's name
/// (`x/`, `x/.bzEmpty`) means a directory only when the object is empty, as
/// B2 and `b2 sync` make them. With content, `x/.bzEmpty` is a file of that
/// name, and `x/` is refused (a file cannot be named as a directory):
/// either way reported, never dropped without a word.
pub fn map_entry(relative: &str, is_folder_entry: bool, size_bytes: u64) -> Mapped<'_> {
    if size_bytes == 0 || is_folder_entry {
        return map_name(relative, is_folder_entry);
    }
    // Empty: the name is the restored folder's own (`PREFIX/`).
    if relative.is_empty() || relative.ends_with('/') {
        return Mapped::Refused(format!(
            "the name ends in '/' (a directory's) but the object holds {size_bytes} bytes"
        ));
    }
    // No marker then: the whole name is a file's, `.bzEmpty` included.
    map_as(relative, relative, false)
}

/// Maps a prefix-relative name to local path segments, refusing anything that
/// could escape DIR or that the filesystem cannot represent.
pub fn map_name(relative: &str, is_folder_entry: bool) -> Mapped<'_> {
    let (body, directory_only) = if is_folder_entry || relative.ends_with('/') {
        (relative.trim_end_matches('/'), true)
    } else if relative == ".bzEmpty" {
        ("", true)
    } else if let Some(parent) = relative.strip_suffix("/.bzEmpty") {
        (parent, true)
    } else {
        (relative, false)
    };
    map_as(relative, body, directory_only)
}

/// `relative`'s `body` (the name less a marker's suffix) as a directory or
/// a file.
fn map_as<'a>(relative: &'a str, body: &'a str, directory_only: bool) -> Mapped<'a> {
    if relative.is_empty() {
        return Mapped::Directory(Vec::new());
    }
    // B2's own limit: it bounds the work per name (a name is checked and
    // created one segment at a time) and the local path's length.
    if relative.len() > B2_FILE_NAME_MAX_BYTES {
        return Mapped::Refused(format!(
            "the name is {} bytes; B2 names are at most {B2_FILE_NAME_MAX_BYTES}",
            relative.len()
        ));
    }
    if let Some(byte) = relative.bytes().find(|&b| b < 0x20 || b == 0x7f) {
        return Mapped::Refused(format!("the name contains control character 0x{byte:02x}"));
    }
    if relative.starts_with('/') {
        return Mapped::Refused("the name starts with '/' (absolute path)".into());
    }
    let segments: Vec<&str> = if body.is_empty() {
        Vec::new()
    } else {
        body.split('/').collect()
    };
    for segment in &segments {
        match *segment {
            "" => return Mapped::Refused("the name has an empty path segment ('//')".into()),
            "." | ".." => {
                return Mapped::Refused(format!("the name has a '{segment}' path segment"));
            }
            s if s.len() > SEGMENT_MAX_BYTES => {
                return Mapped::Refused(format!(
                    "a path segment is {} bytes (the filesystem limit is {SEGMENT_MAX_BYTES})",
                    s.len()
                ));
            }
            _ => {}
        }
    }
    // At any depth: `sub/.ringdown/journal-0-of-1` restored into DIR would
    // be trusted by a later restore into DIR/sub, and skip its files (h42 #3).
    // Any case: on a case-insensitive file system `.RINGDOWN/…` is the
    // journal's directory.
    if segments
        .iter()
        .any(|segment| segment.eq_ignore_ascii_case(STATE_DIR_NAME))
    {
        return Mapped::Refused(format!(
            "names with a {STATE_DIR_NAME}/ segment are reserved for ringdown's journal \
             (a restore into the directory above it would trust what it says)"
        ));
    }
    if directory_only {
        Mapped::Directory(segments)
    } else {
        Mapped::File(segments)
    }
}

/// Files listed so far that a later name could lie beneath, so that the
/// first name in listing order wins a file/directory clash whatever became
/// of it: `d/f` listed after the file `d` is refused whether `d` is still
/// downloading, renamed into place, or failed (then neither is restored,
/// every run alike, instead of `d/f` winning only when `d` failed early).
/// Names come sorted (`listing::check_order`), and the names that start with
/// a string are contiguous from it: a file `e` not a prefix of the name now
/// is a prefix of no later one and is forgotten. What is kept is a chain of
/// prefixes of one name: at most as many as its bytes.
#[derive(Default)]
pub struct ListedFiles {
    /// Local paths (`a/b`), each a string prefix of the next.
    prefixes: Vec<String>,
}

impl ListedFiles {
    /// The file listed earlier that is `path` itself or one of its
    /// ancestors (then no directory `path` can be made). `relative` is the
    /// name `path` comes from (`x/.bzEmpty` for the directory `x`): names,
    /// not paths, come in order.
    pub fn in_the_way(&mut self, relative: &str, path: &str) -> Option<&str> {
        debug_assert!(relative.starts_with(path));
        while self
            .prefixes
            .last()
            .is_some_and(|file| !relative.starts_with(file.as_str()))
        {
            self.prefixes.pop();
        }
        self.prefixes.iter().map(String::as_str).find(|file| {
            path.starts_with(file)
                && (path.len() == file.len() || path.as_bytes()[file.len()] == b'/')
        })
    }

    /// A file at `path` (its name) is planned: nothing may go beneath it.
    pub fn add(&mut self, path: &str) {
        self.prefixes.push(path.to_string());
    }
}

/// The shard of an object name: the first 8 bytes of SHA-1 of the full name,
/// big-endian, mod `count`. This function never changes (CONVENTIONS.md).
pub fn shard_of(name: &str, count: u64) -> u64 {
    debug_assert!(count > 0);
    let digest = Sha1::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % count
}

/// `--shard K/N` (0 ≤ K < N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn parse(text: &str) -> Result<Shard, String> {
        let (k, n) = text
            .split_once('/')
            .ok_or_else(|| format!("--shard {text:?}: expected K/N, e.g. 0/4"))?;
        let index: u64 = k
            .trim()
            .parse()
            .map_err(|_| format!("--shard {text:?}: K is not a number"))?;
        let count: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard {text:?}: N is not a number"))?;
        Shard::new(index, count).map_err(|why| format!("--shard {text:?}: {why}"))
    }

    pub fn new(index: u64, count: u64) -> Result<Shard, String> {
        if count == 0 {
            return Err("N must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "K is 0-based and must be below N ({index} ≥ {count})"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Resolves the shard from flags, then the environment of a Kubernetes
    /// Indexed Job or a Slurm job array. Flags beat environment.
    pub fn resolve(
        flag: Option<&str>,
        count_flag: Option<u64>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Shard, String> {
        Shard::resolve_from(flag, count_flag, env).map(|(shard, _)| shard)
    }

    /// `resolve`, and which variables chose the shard when the environment
    /// did (`None`: the flag, or the whole bucket), for the run to say.
    pub fn resolve_from(
        flag: Option<&str>,
        count_flag: Option<u64>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Shard, Option<&'static str>), String> {
        if let Some(text) = flag {
            let shard = Shard::parse(text)?;
            // Two counts that disagree: one of them is a mistake.
            if count_flag.is_some_and(|count| count != shard.count) {
                return Err(format!(
                    "--shard {text} and --shard-count {} disagree on the number of shards",
                    count_flag.unwrap_or_default()
                ));
            }
            return Ok((shard, None));
        }
        let number = |name: &str| -> Result<Option<u64>, String> {
            match env(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(value) => value
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name}={value:?} is not a number")),
            }
        };
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let (count, source) = match count_flag {
                Some(count) => (count, "JOB_COMPLETION_INDEX and --shard-count"),
                None => (
                    number("RINGDOWN_SHARD_COUNT")?.ok_or(
                        "JOB_COMPLETION_INDEX is set: pass --shard-count N or set RINGDOWN_SHARD_COUNT (the Job's completions)",
                    )?,
                    "JOB_COMPLETION_INDEX and RINGDOWN_SHARD_COUNT",
                ),
            };
            return Shard::new(index, count)
                .map(|shard| (shard, Some(source)))
                .map_err(|why| format!("JOB_COMPLETION_INDEX: {why}"));
        }
        if let Some(task) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let (count, source) = match count_flag {
                Some(count) => (
                    count,
                    "the Slurm array's SLURM_ARRAY_TASK_ID and --shard-count",
                ),
                None => (
                    number("SLURM_ARRAY_TASK_COUNT")?
                        .ok_or("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?,
                    "the Slurm array's SLURM_ARRAY_TASK_* variables",
                ),
            };
            // `--array 0-30:2`: tasks min, min + step, …, one shard each.
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
            let offset = task
                .checked_sub(min)
                .ok_or("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN")?;
            let max = number("SLURM_ARRAY_TASK_MAX")?;
            let irregular = step == 0
                || offset % step != 0
                || max.is_some_and(|max| {
                    count
                        .checked_sub(1)
                        .and_then(|n| n.checked_mul(step))
                        .and_then(|n| n.checked_add(min))
                        != Some(max)
                });
            if irregular {
                return Err(format!(
                    "Slurm array: task {task} of MIN {min}, MAX {}, COUNT {count}, STEP {step} \
                     is no shard of an evenly stepped array, and some shards would go to no \
                     task: use --array A-B[:S], or pass --shard K/N",
                    max.map_or("unset".to_string(), |max| max.to_string())
                ));
            }
            return Shard::new(offset / step, count)
                .map(|shard| (shard, Some(source)))
                .map_err(|why| format!("Slurm array: {why}"));
        }
        // A count with no index: a pod template that sets it, run as a Job
        // without `completionMode: Indexed` (or as a Deployment), has none,
        // and each of its N pods would restore everything. The flag and its
        // environment twin alike; a count of 1 is the whole bucket anyway.
        let (count, named) = match count_flag {
            Some(count) => (Some(count), format!("--shard-count {count}")),
            None => {
                let count = number("RINGDOWN_SHARD_COUNT")?;
                (
                    count,
                    format!("RINGDOWN_SHARD_COUNT={}", count.unwrap_or(0)),
                )
            }
        };
        match count {
            None | Some(1) => Ok((Shard::ALL, None)),
            Some(0) => Err(format!("{named}: N must be at least 1")),
            Some(_) => Err(format!(
                "{named} needs an index: JOB_COMPLETION_INDEX is not set (is the Job \
                 `completionMode: Indexed`?); or pass --shard K/N"
            )),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.count == 1 || shard_of(name, self.count) == self.index
    }
}

/// `--include` / `--exclude` globs on the prefix-relative name: `*` stays
/// within a segment, `**` crosses; with any include a name must match one;
/// an exclude wins. Remembers which globs matched a name (clones share
/// that), so a run can say which never did: an exclude that matches
/// nothing protects nothing.
#[derive(Debug, Clone)]
pub struct NameFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    include_patterns: Vec<String>,
    exclude_patterns: Vec<String>,
    /// One flag per include, then per exclude: matched a name.
    matched: Arc<[AtomicBool]>,
    /// Every glob has matched: nothing more to remember.
    all_matched: Arc<AtomicBool>,
}

impl NameFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<NameFilter, String> {
        let build = |patterns: &[String], flag: &str| -> Result<Option<GlobSet>, String> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                // rclone's anchored form: here every glob is anchored, and a
                // name relative to PREFIX never starts with '/'.
                if let Some(anchored) = pattern.strip_prefix('/') {
                    return Err(format!(
                        "{flag} {pattern:?} starts with '/' and would match nothing: globs match \
                         whole names relative to PREFIX, which never start with '/'; write {:?}",
                        anchored.trim_start_matches('/')
                    ));
                }
                let glob = globset::GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|error| format!("{flag} {pattern:?}: {error}"))?;
                builder.add(glob);
            }
            builder
                .build()
                .map(Some)
                .map_err(|error| format!("{flag}: {error}"))
        };
        let (matched, all_matched) = fresh_record(include.len() + exclude.len());
        Ok(NameFilter {
            include: build(include, "--include")?,
            exclude: build(exclude, "--exclude")?,
            include_patterns: include.to_vec(),
            exclude_patterns: exclude.to_vec(),
            matched,
            all_matched,
        })
    }

    /// The same globs, with a record of their own that no glob matched
    /// yet (a run's: `unmatched` tells that run's story only).
    pub fn with_fresh_record(&self) -> NameFilter {
        let (matched, all_matched) = fresh_record(self.matched.len());
        NameFilter {
            matched,
            all_matched,
            ..self.clone()
        }
    }

    pub fn accepts(&self, relative: &str) -> bool {
        // Until every glob has matched, each set is matched whole (which
        // globs, not only whether one did), once per name.
        let remembering = !self.all_matched.load(Ordering::Relaxed);
        let mut hits = Vec::new();
        let mut matches = |set: &GlobSet, offset: usize| {
            if !remembering {
                return set.is_match(relative);
            }
            set.matches_into(relative, &mut hits);
            for &index in &hits {
                self.matched[offset + index].store(true, Ordering::Relaxed);
            }
            !hits.is_empty()
        };
        let excluded =
            (self.exclude.as_ref()).is_some_and(|set| matches(set, self.include_patterns.len()));
        // An excluded name meets the includes too while remembering: an
        // include that only such names match did match.
        let included =
            (!excluded || remembering) && self.include.as_ref().is_none_or(|set| matches(set, 0));
        if remembering && self.matched.iter().all(|flag| flag.load(Ordering::Relaxed)) {
            self.all_matched.store(true, Ordering::Relaxed);
        }
        !excluded && included
    }

    /// The globs that matched no name so far, as `(flag, pattern)`.
    pub fn unmatched(&self) -> Vec<(&'static str, &str)> {
        let flags = std::iter::repeat_n("--include", self.include_patterns.len()).chain(
            std::iter::repeat_n("--exclude", self.exclude_patterns.len()),
        );
        let patterns = self.include_patterns.iter().chain(&self.exclude_patterns);
        flags
            .zip(patterns)
            .zip(self.matched.iter())
            .filter(|(_, matched)| !matched.load(Ordering::Relaxed))
            .map(|((flag, pattern), _)| (flag, pattern.as_str()))
            .collect()
    }
}

/// `NameFilter`'s record of `globs` globs, none matched yet.
fn fresh_record(globs: usize) -> (Arc<[AtomicBool]>, Arc<AtomicBool>) {
    let matched = (0..globs).map(|_| AtomicBool::new(false)).collect();
    (matched, Arc::new(AtomicBool::new(globs == 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestCaseError;
    use proptest::{prop_assert, prop_assert_eq};

    fn refused(name: &str) -> bool {
        matches!(map_name(name, false), Mapped::Refused(_))
    }

    #[test]
    fn plain_names_map_to_segments() {
        assert_eq!(
            map_name("a/b/c.txt", false),
            Mapped::File(vec!["a", "b", "c.txt"])
        );
        assert_eq!(map_name("x", false), Mapped::File(vec!["x"]));
        // Backslashes, colons and device names are ordinary bytes on Linux.
        assert_eq!(map_name("a\\b", false), Mapped::File(vec!["a\\b"]));
        assert_eq!(map_name("C:x", false), Mapped::File(vec!["C:x"]));
        assert_eq!(map_name("CON", false), Mapped::File(vec!["CON"]));
        assert_eq!(map_name("..a/b..", false), Mapped::File(vec!["..a", "b.."]));
        assert_eq!(
            map_name("a/.ringdownx/x.ringdown", false),
            Mapped::File(vec!["a", ".ringdownx", "x.ringdown"])
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        for name in [
            "../x",
            "a/../../b",
            "..",
            ".",
            "./a",
            "a/./b",
            "/etc/passwd",
            "a//b",
            "a/b/..",
            "nul\0byte",
            "line\nbreak",
            "del\x7f",
            "esc\x1b[2J",
            ".ringdown/journal-0-of-1",
            ".ringdown",
            // The journal's directory too on a case-insensitive file system.
            ".RINGDOWN/journal-0-of-1",
            ".RingDown/partial/x",
            // At any depth: a restore into DIR/a would trust it (h42 #3).
            "a/.ringdown/journal-0-of-1",
            "a/b/.RINGDOWN",
        ] {
            assert!(refused(name), "{name:?} must be refused");
        }
        let long = "x".repeat(256);
        assert!(refused(&long));
        assert!(!refused(&"x".repeat(255)));
        // B2's limit on a whole name: 1,024 bytes.
        let deep = |segments: usize| vec!["d"; segments].join("/");
        assert!(!refused(&deep(512)));
        assert!(refused(&deep(513)));
    }

    #[test]
    fn a_listed_file_is_in_the_way_of_names_beneath_it_only() {
        let mut listed = ListedFiles::default();
        assert_eq!(listed.in_the_way("d", "d"), None);
        listed.add("d");
        // A marker for the directory `d` itself, and names beneath `d`.
        assert_eq!(listed.in_the_way("d-", "d-"), None);
        assert_eq!(listed.in_the_way("d/", "d"), Some("d"));
        assert_eq!(listed.in_the_way("d/.bzEmpty", "d"), Some("d"));
        assert_eq!(listed.in_the_way("d/e", "d/e"), Some("d"));
        assert_eq!(listed.in_the_way("d/e/f", "d/e/f"), Some("d"));
        // Past every name starting with "d": forgotten.
        assert_eq!(listed.in_the_way("dd/e", "dd/e"), None);
        assert_eq!(listed.in_the_way("e", "e"), None);
        assert!(listed.prefixes.is_empty());
        listed.add("x/y");
        assert_eq!(listed.in_the_way("x/y-", "x/y-"), None);
        listed.add("x/y-");
        assert_eq!(listed.in_the_way("x/y/z", "x/y/z"), Some("x/y"));
        assert_eq!(listed.in_the_way("x/yz", "x/yz"), None);
        assert_eq!(listed.in_the_way("x/z", "x/z"), None);
    }

    #[test]
    fn marker_names_with_content_are_files_or_refused() {
        assert_eq!(
            map_entry("a/.bzEmpty", false, 0),
            Mapped::Directory(vec!["a"])
        );
        assert_eq!(
            map_entry("a/.bzEmpty", false, 5),
            Mapped::File(vec!["a", ".bzEmpty"])
        );
        assert_eq!(
            map_entry(".bzEmpty", false, 5),
            Mapped::File(vec![".bzEmpty"])
        );
        assert_eq!(map_entry("a/", false, 0), Mapped::Directory(vec!["a"]));
        assert!(matches!(map_entry("a/", false, 5), Mapped::Refused(_)));
        assert!(matches!(map_entry("", false, 5), Mapped::Refused(_)));
        assert_eq!(map_entry("a", true, 0), Mapped::Directory(vec!["a"]));
        assert_eq!(map_entry("a/b", false, 5), Mapped::File(vec!["a", "b"]));
        // The checks of every name still apply.
        assert!(matches!(
            map_entry("../.bzEmpty", false, 5),
            Mapped::Refused(_)
        ));
        assert!(matches!(
            map_entry(".ringdown/.bzEmpty", false, 5),
            Mapped::Refused(_)
        ));
    }

    #[test]
    fn directory_markers_create_directories_only() {
        assert_eq!(map_name("a/b/", false), Mapped::Directory(vec!["a", "b"]));
        assert_eq!(map_name("a/b", true), Mapped::Directory(vec!["a", "b"]));
        assert_eq!(map_name("a/.bzEmpty", false), Mapped::Directory(vec!["a"]));
        assert_eq!(map_name(".bzEmpty", false), Mapped::Directory(vec![]));
        assert_eq!(map_name("", false), Mapped::Directory(vec![]));
        assert!(matches!(map_name("../", false), Mapped::Refused(_)));
        assert!(matches!(map_name("../.bzEmpty", false), Mapped::Refused(_)));
    }

    /// Checks the invariant the restore relies on: refused, or segments that,
    /// joined under DIR, name a path strictly beneath it.
    fn assert_beneath(
        relative: &str,
        is_folder_entry: bool,
        size_bytes: u64,
    ) -> Result<(), TestCaseError> {
        use std::path::{Component, Path};
        let (segments, is_file) = match map_entry(relative, is_folder_entry, size_bytes) {
            Mapped::Refused(reason) => {
                prop_assert!(!reason.is_empty());
                return Ok(());
            }
            Mapped::File(segments) => (segments, true),
            Mapped::Directory(segments) => (segments, false),
        };
        prop_assert!(!is_file || !segments.is_empty(), "a file needs a leaf");
        prop_assert!(!(is_file && is_folder_entry));
        for segment in &segments {
            prop_assert!(!segment.is_empty() && *segment != "." && *segment != "..");
            prop_assert!(!segment.contains('/') && !segment.contains('\0'));
            prop_assert!(!segment.bytes().any(|b| b < 0x20 || b == 0x7f));
            prop_assert!(segment.len() <= SEGMENT_MAX_BYTES);
        }
        prop_assert!(segments.first() != Some(&STATE_DIR_NAME));
        let dir = Path::new("/restore/dir");
        let mut path = dir.to_path_buf();
        for segment in &segments {
            path.push(segment);
        }
        prop_assert!(path.starts_with(dir));
        let below: Vec<Component<'_>> = path.strip_prefix(dir).unwrap().components().collect();
        prop_assert_eq!(below.len(), segments.len());
        prop_assert!(below.iter().all(|c| matches!(c, Component::Normal(_))));
        prop_assert!(!is_file || path != dir);
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4096))]

        /// Any byte string (names arrive as UTF-8 JSON strings: invalid bytes
        /// become U+FFFD, as a lossy decoder would hand them over).
        #[test]
        fn any_bytes_map_beneath_dir_or_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let name = String::from_utf8_lossy(&bytes);
            assert_beneath(&name, false, 0)?;
            assert_beneath(&name, true, 0)?;
            assert_beneath(&name, false, 1)?;
        }

        /// Any string, biased towards separators, dots and long segments.
        #[test]
        fn any_string_maps_beneath_dir_or_is_refused(
            name in proptest::prop_oneof![
                proptest::arbitrary::any::<String>(),
                "(\\.{1,3}|/|[ab]{1,3}|\\.bzEmpty|\\.ringdown|\\\\|\u{0}|\u{7f}|\u{e9}){0,12}",
                "([a-z]{200,300}/){0,4}[a-z]{0,300}/?",
            ],
            is_folder_entry in proptest::bool::ANY,
            size_bytes in 0u64..2,
        ) {
            assert_beneath(&name, is_folder_entry, size_bytes)?;
        }
    }

    #[test]
    fn prefix_is_a_folder() {
        assert_eq!(folder_prefix("photos"), "photos/");
        assert_eq!(folder_prefix("photos/"), "photos/");
        assert_eq!(folder_prefix(""), "");
        assert_eq!(relative_name("photos/a/b", "photos/"), Some("a/b"));
        assert_eq!(relative_name("photos2/a", "photos/"), None);
    }

    #[test]
    fn shard_function_is_stable() {
        // SHA-1("a") = 86f7e437faa5a7fc…: 0x86f7e437faa5a7fc mod 7.
        assert_eq!(shard_of("a", 7), 0x86f7_e437_faa5_a7fc_u64 % 7);
        assert_eq!(shard_of("anything", 1), 0);
        let counts = (0..1000).fold([0u32; 4], |mut acc, i| {
            acc[shard_of(&format!("file-{i}"), 4) as usize] += 1;
            acc
        });
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
    }

    #[test]
    fn shard_resolution_flags_beat_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = env(&[]);
        assert_eq!(Shard::resolve(None, None, &none), Ok(Shard::ALL));
        assert!(
            Shard::resolve(Some("0/2"), Some(4), &none)
                .unwrap_err()
                .contains("disagree")
        );
        assert_eq!(
            Shard::resolve(Some("1/2"), Some(2), &none),
            Shard::parse("1/2")
        );
        assert_eq!(
            Shard::resolve(Some("1/3"), None, &env(&[("JOB_COMPLETION_INDEX", "2")])),
            Ok(Shard { index: 1, count: 3 })
        );
        assert_eq!(
            Shard::resolve(
                None,
                None,
                &env(&[("JOB_COMPLETION_INDEX", "2"), ("RINGDOWN_SHARD_COUNT", "4")])
            ),
            Ok(Shard { index: 2, count: 4 })
        );
        assert_eq!(
            Shard::resolve(
                None,
                Some(5),
                &env(&[("JOB_COMPLETION_INDEX", "2"), ("RINGDOWN_SHARD_COUNT", "4")])
            ),
            Ok(Shard { index: 2, count: 5 })
        );
        assert_eq!(
            Shard::resolve(
                None,
                None,
                &env(&[
                    ("SLURM_ARRAY_TASK_ID", "12"),
                    ("SLURM_ARRAY_TASK_MIN", "10"),
                    ("SLURM_ARRAY_TASK_COUNT", "3")
                ])
            ),
            Ok(Shard { index: 2, count: 3 })
        );
        // `--array 0-4:2`: tasks 0, 2 and 4 are shards 0, 1 and 2 (task 2
        // took shard 2 and task 4 none: shard 1 went to nobody).
        let stepped = |task: &'static str, max: &'static str| {
            let pairs = vec![
                ("SLURM_ARRAY_TASK_ID", task),
                ("SLURM_ARRAY_TASK_MIN", "0"),
                ("SLURM_ARRAY_TASK_MAX", max),
                ("SLURM_ARRAY_TASK_STEP", "2"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ];
            Shard::resolve(None, None, &env(Vec::leak(pairs)))
        };
        for (task, index) in [("0", 0), ("2", 1), ("4", 2)] {
            assert_eq!(stepped(task, "4"), Ok(Shard { index, count: 3 }));
        }
        // A task between the steps, or an array that is not evenly stepped.
        assert!(stepped("3", "4").unwrap_err().contains("evenly stepped"));
        assert!(stepped("2", "5").unwrap_err().contains("evenly stepped"));
        assert!(Shard::resolve(None, None, &env(&[("JOB_COMPLETION_INDEX", "2")])).is_err());
        // A count with no index restores nothing twice over: refused (but 1).
        let lone = Shard::resolve(None, None, &env(&[("RINGDOWN_SHARD_COUNT", "4")]));
        assert!(
            lone.unwrap_err()
                .contains("JOB_COMPLETION_INDEX is not set")
        );
        assert_eq!(
            Shard::resolve(None, None, &env(&[("RINGDOWN_SHARD_COUNT", "1")])),
            Ok(Shard::ALL)
        );
        // The flag and its twin alike: 1 is the whole bucket, 0 no count.
        assert_eq!(Shard::resolve(None, Some(1), &none), Ok(Shard::ALL));
        assert!(
            Shard::resolve(None, Some(3), &none)
                .unwrap_err()
                .contains("--shard-count 3 needs an index")
        );
        // Which variables chose it, for the run to say; none for a flag.
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "1")]);
        assert_eq!(
            Shard::resolve_from(None, Some(2), &slurm),
            Ok((
                Shard { index: 1, count: 2 },
                Some("the Slurm array's SLURM_ARRAY_TASK_ID and --shard-count")
            ))
        );
        assert_eq!(
            Shard::resolve_from(Some("1/2"), None, &slurm),
            Ok((Shard { index: 1, count: 2 }, None))
        );
        let zero = Shard::resolve(None, None, &env(&[("RINGDOWN_SHARD_COUNT", "0")]));
        assert!(zero.unwrap_err().contains("N must be at least 1"));
        assert!(Shard::parse("3/3").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("x").is_err());
    }

    #[test]
    fn globs_match_relative_names() {
        let filter = NameFilter::new(
            &["*.txt".into(), "docs/**".into()],
            &["docs/secret/**".into()],
        )
        .unwrap();
        assert!(filter.accepts("a.txt"));
        assert!(!filter.accepts("dir/a.txt"), "* stays within a segment");
        assert!(filter.accepts("docs/x/y.bin"));
        assert!(!filter.accepts("docs/secret/k.txt"));
        assert!(!filter.accepts("b.bin"));
        let exclude_only = NameFilter::new(&[], &["**/*.tmp".into()]).unwrap();
        assert!(exclude_only.accepts("a/b.bin"));
        assert!(!exclude_only.accepts("a/b.tmp"));
        assert!(!exclude_only.accepts("b.tmp"));
    }

    #[test]
    fn a_glob_that_can_match_nothing_is_refused_or_reported() {
        // rclone's anchored form can never match a relative name.
        let error = NameFilter::new(&[], &["/nested/**".into()]).unwrap_err();
        assert!(
            error.contains("--exclude \"/nested/**\" starts with '/'"),
            "{error}"
        );
        assert!(error.contains("write \"nested/**\""), "{error}");
        assert!(NameFilter::new(&["//x".into()], &[]).is_err());

        let filter = NameFilter::new(
            &["*.txt".into(), "nested/deep/**".into()],
            &["*.tmp".into(), "deep/**".into()],
        )
        .unwrap();
        assert_eq!(
            filter.unmatched(),
            [
                ("--include", "*.txt"),
                ("--include", "nested/deep/**"),
                ("--exclude", "*.tmp"),
                ("--exclude", "deep/**"),
            ]
        );
        // Clones (the listing thread's) share what matched.
        let clone = filter.clone();
        assert!(clone.accepts("a.txt"));
        assert!(!filter.accepts("deep/b.txt"), "an exclude wins");
        assert_eq!(
            filter.unmatched(),
            [("--include", "nested/deep/**"), ("--exclude", "*.tmp")]
        );
        // A run's own record starts from none matched, and leaves the
        // record it was made from alone.
        let fresh = filter.with_fresh_record();
        assert_eq!(fresh.unmatched().len(), 4);
        assert!(fresh.accepts("nested/deep/c.log"));
        assert_eq!(fresh.unmatched().len(), 3);
        assert_eq!(filter.unmatched().len(), 2);
        assert!(NameFilter::new(&[], &[]).unwrap().unmatched().is_empty());
        let none = NameFilter::new(&[], &[]).unwrap().with_fresh_record();
        assert!(none.accepts("x") && none.unmatched().is_empty());
    }
}

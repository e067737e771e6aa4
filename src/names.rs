//! Object name → local relative path, for `restore` (b2-api.md §7).
//!
//! The caller joins the returned components one at a time under the target
//! directory without following symlinks; this module only decides which
//! components are safe. It never touches the filesystem.
//!
//! `PREFIX` is a folder, as in `b2 sync`, rclone and `aws s3 sync`:
//! `b2://bkt/photos` restores `photos/a/b` to `DIR/a/b`. A prefix without a
//! trailing `/` gets one ([`folder_prefix`]), so `photos` covers
//! `photos/…` but neither `photos2/x` nor an object named exactly `photos`:
//! those are outside the folder and map to `Ok(None)`. An empty prefix is the
//! whole bucket.

use std::fmt;

use crate::config::NAME_SEGMENT_MAX_BYTES;

/// The top-level directory ringdown keeps its journal and partials in.
pub const RESERVED_TOP_LEVEL: &str = ".ringdown";

/// What a name becomes under the target directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A regular file at these components (never empty).
    File(Vec<String>),
    /// Create this directory only: a name ending in `/`, or `x/.bzEmpty`.
    /// Empty components mean the target directory itself.
    DirOnly(Vec<String>),
}

impl Mapped {
    pub fn components(&self) -> &[String] {
        match self {
            Mapped::File(components) | Mapped::DirOnly(components) => components,
        }
    }
}

/// Why a name is not restored (reported, then skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRefusal {
    Empty,
    LeadingSlash,
    /// `a//b`: an empty path component.
    EmptySegment,
    /// `.` or `..` as a component.
    DotSegment,
    /// A byte below 0x20 (NUL included) or DEL.
    ControlByte(u8),
    /// A component longer than NAME_MAX.
    SegmentTooLong {
        len_bytes: usize,
    },
    /// `.ringdown/…` at the top level: ringdown's own state lives there.
    Reserved,
}

impl fmt::Display for NameRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameRefusal::Empty => write!(f, "the name is empty"),
            NameRefusal::LeadingSlash => write!(f, "the name starts with '/' (an absolute path)"),
            NameRefusal::EmptySegment => write!(f, "the name has an empty path component ('//')"),
            NameRefusal::DotSegment => write!(f, "the name has a '.' or '..' path component"),
            NameRefusal::ControlByte(byte) => {
                write!(f, "the name contains control byte 0x{byte:02x}")
            }
            NameRefusal::SegmentTooLong { len_bytes } => write!(
                f,
                "a path component is {len_bytes} bytes long; the file system allows {NAME_SEGMENT_MAX_BYTES}"
            ),
            NameRefusal::Reserved => {
                write!(
                    f,
                    "names under {RESERVED_TOP_LEVEL}/ are reserved for ringdown's journal"
                )
            }
        }
    }
}

impl std::error::Error for NameRefusal {}

/// The listing prefix for a restore `PREFIX`: `""` stays `""`, anything else
/// ends in exactly one added `/` unless it already ends in one.
pub fn folder_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// Maps an object name to path components under the target directory.
/// `Ok(None)`: the name is outside the `prefix` folder (not ours to restore).
pub fn map_name(name: &str, prefix: &str) -> Result<Option<Mapped>, NameRefusal> {
    if name.is_empty() {
        return Err(NameRefusal::Empty);
    }
    if let Some(byte) = name.bytes().find(|&b| b < 0x20 || b == 0x7f) {
        return Err(NameRefusal::ControlByte(byte));
    }
    let folder = folder_prefix(prefix);
    let Some(relative) = name.strip_prefix(folder.as_str()) else {
        return Ok(None);
    };
    if relative.is_empty() {
        // The folder marker of PREFIX itself.
        return Ok(Some(Mapped::DirOnly(Vec::new())));
    }
    if relative.starts_with('/') {
        return Err(NameRefusal::LeadingSlash);
    }
    let (body, mut dir_only) = match relative.strip_suffix('/') {
        Some(body) => (body, true),
        None => (relative, false),
    };
    let mut segments: Vec<&str> = body.split('/').collect();
    if !dir_only && segments.last() == Some(&".bzEmpty") {
        segments.pop();
        dir_only = true;
    }
    let mut components = Vec::with_capacity(segments.len());
    for segment in segments {
        match segment {
            "" => return Err(NameRefusal::EmptySegment),
            "." | ".." => return Err(NameRefusal::DotSegment),
            _ if segment.len() > NAME_SEGMENT_MAX_BYTES => {
                return Err(NameRefusal::SegmentTooLong {
                    len_bytes: segment.len(),
                });
            }
            _ => components.push(segment.to_string()),
        }
    }
    if components.first().map(String::as_str) == Some(RESERVED_TOP_LEVEL) {
        return Err(NameRefusal::Reserved);
    }
    Ok(Some(if dir_only {
        Mapped::DirOnly(components)
    } else {
        Mapped::File(components)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(parts: &[&str]) -> Option<Mapped> {
        Some(Mapped::File(parts.iter().map(|p| p.to_string()).collect()))
    }

    fn dir(parts: &[&str]) -> Option<Mapped> {
        Some(Mapped::DirOnly(
            parts.iter().map(|p| p.to_string()).collect(),
        ))
    }

    #[test]
    fn prefix_is_a_folder() {
        assert_eq!(map_name("photos/a/b", "photos"), Ok(file(&["a", "b"])));
        assert_eq!(map_name("photos/a/b", "photos/"), Ok(file(&["a", "b"])));
        assert_eq!(map_name("photos2/a", "photos"), Ok(None));
        assert_eq!(map_name("photos", "photos"), Ok(None));
        assert_eq!(map_name("photos/", "photos"), Ok(dir(&[])));
        assert_eq!(map_name("a/b.txt", ""), Ok(file(&["a", "b.txt"])));
        assert_eq!(folder_prefix(""), "");
        assert_eq!(folder_prefix("photos"), "photos/");
        assert_eq!(folder_prefix("photos/"), "photos/");
    }

    #[test]
    fn folder_markers_create_directories_only() {
        assert_eq!(map_name("a/b/", ""), Ok(dir(&["a", "b"])));
        assert_eq!(map_name("a/b/.bzEmpty", ""), Ok(dir(&["a", "b"])));
        assert_eq!(map_name(".bzEmpty", ""), Ok(dir(&[])));
        assert_eq!(map_name("p/x/.bzEmpty", "p"), Ok(dir(&["x"])));
        // Only the last component is special.
        assert_eq!(map_name(".bzEmpty/x", ""), Ok(file(&[".bzEmpty", "x"])));
    }

    #[test]
    fn unsafe_names_are_refused_with_a_reason() {
        let long = "x".repeat(256);
        let cases: Vec<(&str, NameRefusal)> = vec![
            ("", NameRefusal::Empty),
            ("/etc/passwd", NameRefusal::LeadingSlash),
            ("/", NameRefusal::LeadingSlash),
            ("a//b", NameRefusal::EmptySegment),
            ("a//", NameRefusal::EmptySegment),
            ("../x", NameRefusal::DotSegment),
            ("a/../../b", NameRefusal::DotSegment),
            ("a/./b", NameRefusal::DotSegment),
            ("..", NameRefusal::DotSegment),
            ("a\0b", NameRefusal::ControlByte(0)),
            ("a\nb", NameRefusal::ControlByte(b'\n')),
            ("a\u{7f}", NameRefusal::ControlByte(0x7f)),
            (
                long.as_str(),
                NameRefusal::SegmentTooLong { len_bytes: 256 },
            ),
            (".ringdown/journal-0-of-1", NameRefusal::Reserved),
            (".ringdown/", NameRefusal::Reserved),
            (".ringdown", NameRefusal::Reserved),
        ];
        for (name, refusal) in cases {
            assert_eq!(map_name(name, ""), Err(refusal.clone()), "{name:?}");
            assert!(!refusal.to_string().is_empty());
        }
        assert_eq!(map_name("p//etc", "p"), Err(NameRefusal::LeadingSlash));
        assert_eq!(map_name("p/.ringdown/x", "p"), Err(NameRefusal::Reserved));
        // Not at the top level: an ordinary directory name.
        assert_eq!(
            map_name("a/.ringdown/x", ""),
            Ok(file(&["a", ".ringdown", "x"]))
        );
        // Allowed on Linux, even if odd elsewhere.
        assert_eq!(
            map_name("a\\b/C:x/CON", ""),
            Ok(file(&["a\\b", "C:x", "CON"]))
        );
        assert_eq!(
            map_name(&"y".repeat(255), ""),
            Ok(file(&[&"y".repeat(255)]))
        );
        assert_eq!(map_name("...", ""), Ok(file(&["..."])));
    }

    proptest! {
        #[test]
        fn any_mapped_name_is_safe(
            name in prop_oneof![any::<String>(), "[a./\\\\\0\n]{0,12}", "(\\.\\.?/|[ab]{1,3}/|/){0,5}[ab.]{0,3}"],
            prefix in prop_oneof![Just(""), Just("a"), Just("a/"), Just(".")],
        ) {
            if let Ok(Some(mapped)) = map_name(&name, prefix) {
                let components = mapped.components();
                if let Mapped::File(_) = mapped {
                    prop_assert!(!components.is_empty());
                }
                for component in components {
                    prop_assert!(!component.is_empty());
                    prop_assert!(component != "." && component != "..");
                    prop_assert!(!component.contains('/'));
                    prop_assert!(!component.bytes().any(|b| b < 0x20 || b == 0x7f));
                    prop_assert!(component.len() <= NAME_SEGMENT_MAX_BYTES);
                }
                prop_assert!(components.first().map(String::as_str) != Some(RESERVED_TOP_LEVEL));
                // Joining the components back gives the name after the folder.
                let relative = &name[folder_prefix(prefix).len()..];
                prop_assert!(relative.starts_with(&components.join("/")));
            }
        }
    }
}

//! Older versions and hide markers of `ringdown serve`'s buckets, so that
//! `b2_list_file_versions` and downloads by fileId can be tested against
//! more than one version per name (`restore --as-of`).
//!
//! Layout, beside the buckets (a name starting with `.` is never a bucket):
//!
//! ```text
//! DIR/.versions/BUCKET/NAME/@MS        NAME's content as uploaded at MS
//! DIR/.versions/BUCKET/NAME/@MS.hide   NAME hidden (deleted) at MS
//! ```
//!
//! MS is the uploadTimestamp, in milliseconds since the epoch. The bucket
//! directory keeps each name's newest upload (uploadTimestamp: its mtime);
//! a name whose newest entry is a hide marker is not listed by
//! `b2_list_file_names` and cannot be downloaded by name. Other files under
//! `.versions` are ignored. Not cached: a walk per listing page, which is
//! fine for the test trees this exists for; a bucket without a `.versions`
//! directory costs one failed `stat`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::store::{
    Bucket, ObjectMeta, OpenError, Store, file_id_for_version, is_servable_name, walk,
};

/// The directory beneath DIR that holds the history of every bucket.
pub const HISTORY_DIR: &str = ".versions";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionKind {
    Upload { size_bytes: u64 },
    Hide,
}

/// One older version or hide marker.
#[derive(Debug, Clone)]
pub struct Version {
    pub name: String,
    pub upload_ms: u64,
    pub kind: VersionKind,
    pub file_id: String,
}

/// `@MS` or `@MS.hide`, the last segment of a history path.
fn parse_leaf(leaf: &str) -> Option<(u64, bool)> {
    let stamp = leaf.strip_prefix('@')?;
    let (digits, hide) = match stamp.strip_suffix(".hide") {
        Some(digits) => (digits, true),
        None => (stamp, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, hide))
}

/// The version a history file at `path` (`…/NAME/LEAF`) stands for; `None`
/// for other files (and symlinks, and uploads that are not regular files).
fn version_from(bucket: &Bucket, path: &Path, name: &str, leaf: &str) -> Option<Version> {
    let (upload_ms, hide) = parse_leaf(leaf)?;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let kind = if hide {
        VersionKind::Hide
    } else {
        VersionKind::Upload {
            size_bytes: meta.len(),
        }
    };
    Some(Version {
        file_id: file_id_for_version(bucket, name, upload_ms, &kind),
        name: name.to_string(),
        upload_ms,
        kind,
    })
}

impl Store {
    fn history_path(&self, bucket: &Bucket) -> PathBuf {
        self.root().join(HISTORY_DIR).join(&bucket.name)
    }

    /// Every older version and hide marker of `bucket`, by name and newest
    /// first within a name (B2's order); `None` when it has no history.
    pub fn history(&self, bucket: &Bucket) -> std::io::Result<Option<Arc<Vec<Version>>>> {
        let dir = self.history_path(bucket);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        }
        let mut paths = Vec::new();
        walk(&dir, "", &mut paths, &mut Vec::new())?;
        let mut versions: Vec<Version> = paths
            .iter()
            .filter_map(|path| {
                let (name, leaf) = path.rsplit_once('/')?;
                version_from(bucket, &dir.join(path), name, leaf)
            })
            .collect();
        versions.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then(b.upload_ms.cmp(&a.upload_ms))
                // A hide marker and an upload of the same millisecond: the
                // marker is the newer (it can only hide an existing upload).
                .then((b.kind == VersionKind::Hide).cmp(&(a.kind == VersionKind::Hide)))
        });
        Ok(Some(Arc::new(versions)))
    }

    /// The older versions and hide markers of one name (one directory read,
    /// not a walk of the bucket's whole history), in no particular order.
    fn versions_of(&self, bucket: &Bucket, name: &str) -> Vec<Version> {
        if !is_servable_name(name) {
            return Vec::new();
        }
        let dir = self.history_path(bucket).join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let leaf = entry.ok()?.file_name().into_string().ok()?;
                version_from(bucket, &dir.join(&leaf), name, &leaf)
            })
            .collect()
    }

    /// The hide marker of `name` whose ID is `file_id`, if there is one.
    pub fn hide_marker(&self, bucket: &Bucket, name: &str, file_id: &str) -> Option<Version> {
        self.versions_of(bucket, name)
            .into_iter()
            .find(|version| version.kind == VersionKind::Hide && version.file_id == file_id)
    }

    /// True when the kernel's lookup cache shows, without a disk read, that
    /// `name` has no history directory, so `hidden_since` is `None`; false
    /// when it may have one, or the cache cannot tell. The same path
    /// `versions_of` reads (symlinks followed, as `read_dir` does).
    pub fn has_no_history_cached(&self, bucket: &Bucket, name: &str) -> bool {
        if !is_servable_name(name) {
            return true;
        }
        let dir = self.history_path(bucket).join(name);
        // A negative entry in the cache is authoritative; one the cache does
        // not hold is EAGAIN.
        matches!(
            rustix::fs::openat2(
                rustix::fs::CWD,
                &dir,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
                rustix::fs::ResolveFlags::CACHED,
            ),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)
        )
    }

    /// The newest hide marker of `name`, if any (ms).
    pub fn hidden_since(&self, bucket: &Bucket, name: &str) -> Option<u64> {
        self.versions_of(bucket, name)
            .into_iter()
            .filter(|version| version.kind == VersionKind::Hide)
            .map(|version| version.upload_ms)
            .max()
    }

    /// Opens an older upload of `name` by its fileId.
    pub fn open_version(
        &self,
        bucket: &Arc<Bucket>,
        name: &str,
        file_id: &str,
    ) -> Result<(std::fs::File, ObjectMeta), OpenError> {
        let version = self
            .versions_of(bucket, name)
            .into_iter()
            .find(|version| version.file_id == file_id)
            .ok_or(OpenError::NotFound)?;
        self.open_version_file(bucket, &version)
    }

    /// The metadata of an older upload, as listings report it.
    pub fn version_meta(
        &self,
        bucket: &Arc<Bucket>,
        version: &Version,
    ) -> Result<ObjectMeta, OpenError> {
        self.open_version_file(bucket, version)
            .map(|(_, meta)| meta)
    }

    fn open_version_file(
        &self,
        bucket: &Arc<Bucket>,
        version: &Version,
    ) -> Result<(std::fs::File, ObjectMeta), OpenError> {
        let VersionKind::Upload { .. } = version.kind else {
            return Err(OpenError::NotFound);
        };
        let path = format!(
            "{HISTORY_DIR}/{}/{}/@{}",
            bucket.name, version.name, version.upload_ms
        );
        let (file, stat) = self.open_under_root(&path)?;
        Ok((
            file,
            ObjectMeta {
                bucket: bucket.clone(),
                name: version.name.clone(),
                size_bytes: stat.st_size.max(0) as u64,
                mtime_ms: version.upload_ms,
                version: super::store::FileVersion::of(&stat),
                file_id: version.file_id.clone(),
                history_path: Some(path),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name with a hide marker is never said to have no history (the
    /// workers would serve it by name); one without is, once looked up.
    #[test]
    fn only_a_name_without_history_is_said_to_have_none() {
        let root = tempfile::tempdir().unwrap();
        let markers = root.path().join(HISTORY_DIR).join("bkt/hidden.txt");
        std::fs::create_dir_all(root.path().join("bkt")).unwrap();
        std::fs::create_dir_all(&markers).unwrap();
        std::fs::write(markers.join("@1700000000000.hide"), b"").unwrap();
        let store =
            Store::open(root.path(), super::super::sha1_cache::Sha1Cache::open(None)).unwrap();
        let bucket = super::super::store::bucket_named("bkt").unwrap();
        for _ in 0..2 {
            assert_eq!(
                store.hidden_since(&bucket, "hidden.txt"),
                Some(1_700_000_000_000)
            );
            assert!(!store.has_no_history_cached(&bucket, "hidden.txt"));
            assert_eq!(store.hidden_since(&bucket, "plain.txt"), None);
            assert!(store.has_no_history_cached(&bucket, "plain.txt"));
        }
    }

    #[test]
    fn history_leaves() {
        assert_eq!(
            parse_leaf("@1700000000000"),
            Some((1_700_000_000_000, false))
        );
        assert_eq!(parse_leaf("@17.hide"), Some((17, true)));
        for other in ["1700", "@", "@.hide", "@12x", "@-3", "@1.hide.hide", "x@1"] {
            assert_eq!(parse_leaf(other), None, "{other}");
        }
    }
}

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

use std::path::PathBuf;
use std::sync::Arc;

use super::store::{Bucket, ObjectMeta, OpenError, Store, file_id_for_version, walk};

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
        let mut versions = Vec::with_capacity(paths.len());
        for path in paths {
            let Some((name, leaf)) = path.rsplit_once('/') else {
                continue;
            };
            let Some((upload_ms, hide)) = parse_leaf(leaf) else {
                continue;
            };
            let kind = if hide {
                VersionKind::Hide
            } else {
                match std::fs::symlink_metadata(dir.join(&path)) {
                    Ok(meta) if meta.is_file() => VersionKind::Upload {
                        size_bytes: meta.len(),
                    },
                    _ => continue,
                }
            };
            versions.push(Version {
                file_id: file_id_for_version(bucket, name, upload_ms, &kind),
                name: name.to_string(),
                upload_ms,
                kind,
            });
        }
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

    /// The newest hide marker of `name`, if any (ms).
    pub fn hidden_since(&self, bucket: &Bucket, name: &str) -> Option<u64> {
        let entries = std::fs::read_dir(self.history_path(bucket).join(name)).ok()?;
        entries
            .filter_map(|entry| {
                let leaf = entry.ok()?.file_name().into_string().ok()?;
                parse_leaf(&leaf)
                    .filter(|(_, hide)| *hide)
                    .map(|(ms, _)| ms)
            })
            .max()
    }

    /// Opens an older upload of `name` by its fileId.
    pub fn open_version(
        &self,
        bucket: &Arc<Bucket>,
        name: &str,
        file_id: &str,
    ) -> Result<(std::fs::File, ObjectMeta), OpenError> {
        let history = self.history(bucket).map_err(OpenError::Io)?;
        let version = history
            .iter()
            .flat_map(|versions| versions.iter())
            .find(|version| version.name == name && version.file_id == file_id)
            .ok_or(OpenError::NotFound)?;
        self.open_version_file(bucket, version)
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
                mtime_ns: super::store::mtime_ns_of(&stat),
                file_id: version.file_id.clone(),
                history_path: Some(path),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

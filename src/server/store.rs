//! The served tree: buckets (subdirectories of DIR), their sorted name lists,
//! safe opening of object files, stable IDs and per-object metadata.
//!
//! Every open goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! relative to a directory fd, so neither `..` nor a symlink can lead outside
//! DIR. Listings skip symlinks and anything that is not a regular file.
//!
//! Listing cache: one sorted `Vec<String>` of names per bucket, built by a walk
//! of the bucket directory and reused while the stamps of all its directories
//! are unchanged. Every listing page checks them (one `statx` per directory,
//! no directory read), so a listing sent once a write has returned lists the
//! written file, as B2 lists an upload as soon as it is acknowledged. Sizes
//! and mtimes are not cached: each page stats its own (≤ 10,000) entries.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use sha1::{Digest, Sha1};

use super::config::{LISTING_SETTLE_COARSE_MS, LISTING_SETTLE_MS};
use super::encoding::hex;
use super::sha1_cache::Sha1Cache;

/// What tells one content of a file from another: the SHA1 cache and the
/// fileId key on it. Taken from `fstat` of a descriptor, so a digest is
/// remembered under the version of the file that was actually hashed.
///
/// Size and mtime alone miss a same-size rewrite whose mtime was put back
/// (`touch -d`, `cp -p`, `rsync -t`, `tar x`, a fixture generator's
/// `os.utime`). The ctime cannot be set that way and changes on every write
/// and rename; the inode and device tell a replaced file from the original.
/// All of them stay the same for an unchanged file across server restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    pub device: u64,
    pub inode: u64,
    pub size_bytes: u64,
    pub mtime_ns: u128,
    pub ctime_ns: u128,
}

impl FileVersion {
    pub fn of(stat: &rustix::fs::Stat) -> FileVersion {
        FileVersion {
            device: stat.st_dev,
            inode: stat.st_ino,
            size_bytes: stat.st_size.max(0) as u64,
            mtime_ns: mtime_ns_of(stat),
            ctime_ns: nanoseconds(stat.st_ctime as i128, stat.st_ctime_nsec as i128),
        }
    }
}

/// Metadata of one object (one regular file), as listings and downloads report it.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub bucket: Arc<Bucket>,
    pub name: String,
    pub size_bytes: u64,
    pub mtime_ms: u64,
    pub version: FileVersion,
    pub file_id: String,
    /// An older version (`history`): its file beneath DIR. Its uploadTimestamp
    /// (`mtime_ms`) comes from that path, not from the file's mtime.
    pub history_path: Option<String>,
}

#[derive(Debug)]
pub struct Bucket {
    pub name: String,
    pub id: String,
}

/// Why an object could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The name can never be a served object (`..`, empty segment, NUL, leading `/`).
    InvalidName,
    /// Missing, not a regular file, or reached through a symlink.
    NotFound,
    Io(std::io::Error),
}

/// What tells one state of a directory's entries from another. Creating,
/// removing or renaming an entry sets the directory's mtime and ctime; the
/// inode tells a directory replaced by another; the size moves with every
/// entry on tmpfs and btrfs, even within one timestamp tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DirectoryStamp {
    inode: u64,
    size_bytes: u64,
    mtime_ns: u128,
    ctime_ns: u128,
}

impl DirectoryStamp {
    /// `statx` of `path` itself (a symlink is not followed); `None` when it
    /// cannot be read (gone, or not reachable).
    fn of(path: &Path) -> Option<DirectoryStamp> {
        let stat = rustix::fs::statx(
            rustix::fs::CWD,
            path,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            rustix::fs::StatxFlags::INO
                | rustix::fs::StatxFlags::SIZE
                | rustix::fs::StatxFlags::MTIME
                | rustix::fs::StatxFlags::CTIME,
        )
        .ok()?;
        let time_ns = |time: rustix::fs::StatxTimestamp| {
            nanoseconds(time.tv_sec as i128, time.tv_nsec as i128)
        };
        Some(DirectoryStamp {
            inode: stat.stx_ino,
            size_bytes: stat.stx_size,
            mtime_ns: time_ns(stat.stx_mtime),
            ctime_ns: time_ns(stat.stx_ctime),
        })
    }

    /// The last change is old enough, at `walked_at_ns`, that any later
    /// change gets another ctime. The kernel stamps with a clock that moves
    /// once per tick (and some filesystems keep whole or even seconds): a
    /// second change within the tick of the first leaves mtime and ctime as
    /// they were, so a walk that read the directory between the two would
    /// be trusted with the second missing.
    fn is_settled(&self, walked_at_ns: u128) -> bool {
        let settle_ms = if self.ctime_ns % 1_000_000_000 == 0 {
            LISTING_SETTLE_COARSE_MS
        } else {
            LISTING_SETTLE_MS
        };
        self.ctime_ns + u128::from(settle_ms) * 1_000_000 < walked_at_ns
    }
}

/// Every directory of a bucket with its stamp, taken before it was read.
pub(super) type DirectoryStamps = Vec<(PathBuf, Option<DirectoryStamp>)>;

struct NameIndex {
    names: Arc<Vec<String>>,
    directories: DirectoryStamps,
    /// False when a directory changed too shortly before the walk for its
    /// stamp to show a later change (`DirectoryStamp::is_settled`): the next
    /// listing walks again instead of trusting the stamps.
    settled: bool,
}

impl NameIndex {
    /// Still the names the bucket holds: one `statx` per directory.
    fn is_current(&self) -> bool {
        self.settled
            && self
                .directories
                .iter()
                .all(|(path, stamp)| DirectoryStamp::of(path) == *stamp)
    }
}

pub struct Store {
    root: PathBuf,
    root_fd: OwnedFd,
    name_indexes: Mutex<HashMap<String, Arc<NameIndex>>>,
    /// Bucket id → name, so a download by id does not read DIR each time;
    /// refilled from DIR on a miss, and every hit is checked with `openat2`.
    bucket_names_by_id: Mutex<HashMap<String, String>>,
    pub sha1_cache: Sha1Cache,
}

/// How object files are opened for reading. O_NONBLOCK because the type
/// check (regular file only) can only run on an open fd: without it, opening
/// a FIFO waits for a writer forever and pins a blocking thread (enough of
/// them starve every request). Reads of regular files ignore O_NONBLOCK.
const OBJECT_OPEN_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::NONBLOCK);

fn resolve_beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// First 24 hex digits of SHA1 over the parts, separated by NUL.
fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0u8]);
    }
    hex(&hasher.finalize()[..12])
}

pub fn bucket_id_for(name: &str) -> String {
    short_hash(&[b"ringdown-bucket", name.as_bytes()])
}

/// `4_z<bucketId>_f<version hash>_n<base64url(name)>`: the name travels in the
/// ID, so `b2_download_file_by_id` works across restarts without a table;
/// the version hash (bucket, name, size, mtime) makes an ID of a changed
/// file stop resolving, as a replaced B2 version would.
///
/// Not the inode, device or ctime, which the SHA1 cache keys on too: the
/// fileId is in the fault dice's key (a download by id), and a test that
/// writes its files with a fixed mtime gets the same dice on every run
/// only while the fileId is made of what it fixed. A rewrite that keeps
/// size and mtime therefore keeps its fileId; its SHA1 is still right.
pub fn file_id_for(bucket: &Bucket, name: &str, version: &FileVersion) -> String {
    let version = short_hash(&[
        bucket.name.as_bytes(),
        name.as_bytes(),
        &version.size_bytes.to_be_bytes(),
        &version.mtime_ns.to_be_bytes(),
    ]);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name.as_bytes());
    format!("4_z{}_f{}_n{}", bucket.id, version, encoded)
}

/// The ID of an older version or hide marker (`history`): the same shape, so
/// `parse_file_id` finds its bucket and name.
pub fn file_id_for_version(
    bucket: &Bucket,
    name: &str,
    upload_ms: u64,
    kind: &super::history::VersionKind,
) -> String {
    let (tag, size_bytes): (&[u8], u64) = match kind {
        super::history::VersionKind::Upload { size_bytes } => (b"upload", *size_bytes),
        super::history::VersionKind::Hide => (b"hide", 0),
    };
    let version = short_hash(&[
        b"ringdown-version",
        bucket.name.as_bytes(),
        name.as_bytes(),
        tag,
        &upload_ms.to_be_bytes(),
        &size_bytes.to_be_bytes(),
    ]);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name.as_bytes());
    format!("4_z{}_f{}_n{}", bucket.id, version, encoded)
}

/// Splits a file ID into (bucket id, name). The version part is checked by the caller.
pub fn parse_file_id(file_id: &str) -> Option<(String, String)> {
    let rest = file_id.strip_prefix("4_z")?;
    let bucket_id = rest.get(..24)?;
    let rest = rest.get(24..)?.strip_prefix("_f")?;
    let _version = rest.get(..24)?;
    let encoded = rest.get(24..)?.strip_prefix("_n")?;
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    Some((bucket_id.to_string(), String::from_utf8(name).ok()?))
}

/// Object names we serve: relative, no empty/`.`/`..` segments, no NUL.
pub fn is_servable_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && name
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

fn is_servable_bucket_name(name: &str) -> bool {
    is_servable_name(name) && !name.contains('/') && !name.starts_with('.')
}

/// The bucket `name` names if it exists (not checked here).
pub fn bucket_named(name: &str) -> Option<Arc<Bucket>> {
    is_servable_bucket_name(name).then(|| {
        Arc::new(Bucket {
            name: name.to_string(),
            id: bucket_id_for(name),
        })
    })
}

/// Opens `name` beneath a directory (a bucket's, or DIR itself): no `..`,
/// no symlink on the way.
fn open_under(dir_fd: &OwnedFd, name: &str, flags: OFlags) -> Result<OwnedFd, OpenError> {
    open_under_resolving(dir_fd, name, flags, resolve_beneath())
}

/// `open_under` with `resolve` (at least `resolve_beneath()`).
fn open_under_resolving(
    dir_fd: &OwnedFd,
    name: &str,
    flags: OFlags,
    resolve: ResolveFlags,
) -> Result<OwnedFd, OpenError> {
    debug_assert!(
        resolve.contains(resolve_beneath()),
        "an open that may leave DIR"
    );
    if !is_servable_name(name) {
        return Err(OpenError::InvalidName);
    }
    rustix::fs::openat2(
        dir_fd,
        name,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        resolve,
    )
    .map_err(|error| match error {
        rustix::io::Errno::NOENT
        | rustix::io::Errno::NOTDIR
        | rustix::io::Errno::LOOP
        | rustix::io::Errno::XDEV
        | rustix::io::Errno::ISDIR
        | rustix::io::Errno::NAMETOOLONG => OpenError::NotFound,
        other => OpenError::Io(other.into()),
    })
}

fn mtime_ns_of(stat: &rustix::fs::Stat) -> u128 {
    nanoseconds(stat.st_mtime as i128, stat.st_mtime_nsec as i128)
}

/// A timestamp of `stat` in ns since the epoch (times before it count as 0).
fn nanoseconds(seconds: i128, nanoseconds: i128) -> u128 {
    (seconds.max(0) * 1_000_000_000 + nanoseconds.max(0)) as u128
}

impl Store {
    pub fn open(root: &Path, sha1_cache: Sha1Cache) -> std::io::Result<Store> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Store {
            root: root.to_path_buf(),
            root_fd,
            name_indexes: Mutex::new(HashMap::new()),
            bucket_names_by_id: Mutex::new(HashMap::new()),
            sha1_cache,
        })
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    /// Opens a regular file at `path` beneath DIR (no `..`, no symlink) and
    /// stats it.
    pub(super) fn open_under_root(
        &self,
        path: &str,
    ) -> Result<(File, rustix::fs::Stat), OpenError> {
        let fd = open_under(&self.root_fd, path, OBJECT_OPEN_FLAGS)?;
        let stat = rustix::fs::fstat(&fd).map_err(|error| OpenError::Io(error.into()))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(OpenError::NotFound);
        }
        Ok((File::from(fd), stat))
    }

    /// Buckets sorted by name: the real (non-symlink) subdirectories of DIR
    /// whose names are UTF-8 and do not start with `.`.
    pub fn buckets(&self) -> std::io::Result<Vec<Arc<Bucket>>> {
        let mut buckets = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_servable_bucket_name(&name) {
                continue;
            }
            let id = bucket_id_for(&name);
            buckets.push(Arc::new(Bucket { name, id }));
        }
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(buckets)
    }

    /// One `openat2` instead of reading DIR: downloads by name call this per request.
    pub fn bucket_by_name(&self, name: &str) -> std::io::Result<Option<Arc<Bucket>>> {
        let Some(bucket) = bucket_named(name) else {
            return Ok(None);
        };
        match self.open_bucket(&bucket) {
            Ok(_) => Ok(Some(bucket)),
            Err(OpenError::NotFound | OpenError::InvalidName) => Ok(None),
            Err(OpenError::Io(error)) => Err(error),
        }
    }

    /// The bucket `id` stood for when DIR was last read, without checking
    /// that it is still there (no system call): the open of one of its
    /// objects checks that on the way.
    pub fn known_bucket(&self, id: &str) -> Option<Arc<Bucket>> {
        let names = self.bucket_names_by_id.lock().expect("bucket ids");
        bucket_named(names.get(id)?)
    }

    pub fn bucket_by_id(&self, id: &str) -> std::io::Result<Option<Arc<Bucket>>> {
        let known = self
            .bucket_names_by_id
            .lock()
            .expect("bucket ids")
            .get(id)
            .cloned();
        if let Some(name) = known {
            if let Some(bucket) = self.bucket_by_name(&name)? {
                return Ok(Some(bucket));
            }
        }
        let buckets = self.buckets()?;
        let mut names = self.bucket_names_by_id.lock().expect("bucket ids");
        names.clear();
        names.extend(
            buckets
                .iter()
                .map(|bucket| (bucket.id.clone(), bucket.name.clone())),
        );
        Ok(buckets.into_iter().find(|bucket| bucket.id == id))
    }

    /// The bucket's directory, beneath DIR; a listing page opens it once for
    /// a run of `stat_in`.
    pub fn open_bucket(&self, bucket: &Bucket) -> Result<OwnedFd, OpenError> {
        rustix::fs::openat2(
            &self.root_fd,
            bucket.name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_beneath(),
        )
        .map_err(|error| match error {
            // A name longer than a directory's can be is no bucket here.
            rustix::io::Errno::NOENT
            | rustix::io::Errno::NOTDIR
            | rustix::io::Errno::LOOP
            | rustix::io::Errno::NAMETOOLONG => OpenError::NotFound,
            other => OpenError::Io(other.into()),
        })
    }

    fn meta_from_stat(
        &self,
        bucket: &Arc<Bucket>,
        name: &str,
        stat: &rustix::fs::Stat,
    ) -> Result<ObjectMeta, OpenError> {
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(OpenError::NotFound);
        }
        let version = FileVersion::of(stat);
        Ok(ObjectMeta {
            bucket: bucket.clone(),
            name: name.to_string(),
            size_bytes: version.size_bytes,
            mtime_ms: (version.mtime_ns / 1_000_000) as u64,
            version,
            file_id: file_id_for(bucket, name, &version),
            history_path: None,
        })
    }

    /// Stats an object without opening its data (O_PATH), beneath its bucket.
    pub fn stat(&self, bucket: &Arc<Bucket>, name: &str) -> Result<ObjectMeta, OpenError> {
        self.stat_in(&self.open_bucket(bucket)?, bucket, name)
    }

    /// `stat` of a name in a bucket directory from `open_bucket`.
    pub fn stat_in(
        &self,
        bucket_fd: &OwnedFd,
        bucket: &Arc<Bucket>,
        name: &str,
    ) -> Result<ObjectMeta, OpenError> {
        let fd = open_under(bucket_fd, name, OFlags::PATH)?;
        let stat = rustix::fs::fstat(&fd).map_err(|error| OpenError::Io(error.into()))?;
        self.meta_from_stat(bucket, name, &stat)
    }

    /// Opens an object for reading and returns it with the metadata of the
    /// opened file (fstat of the same fd, so they cannot disagree).
    pub fn open_object(
        &self,
        bucket: &Arc<Bucket>,
        name: &str,
    ) -> Result<(File, ObjectMeta), OpenError> {
        self.open_object_resolving(bucket, name, resolve_beneath())
    }

    /// `open_object` when that needs no disk read and no wait (the path's
    /// directory entries and inodes are in the kernel's lookup cache), for
    /// a thread that must not block; `None` when it cannot be, or failed
    /// (`open_object` then says why).
    pub fn open_object_cached(
        &self,
        bucket: &Arc<Bucket>,
        name: &str,
    ) -> Option<(File, ObjectMeta)> {
        // `fstat` of an open file reads the inode the open brought in.
        self.open_object_resolving(bucket, name, resolve_beneath() | ResolveFlags::CACHED)
            .ok()
    }

    fn open_object_resolving(
        &self,
        bucket: &Arc<Bucket>,
        name: &str,
        resolve: ResolveFlags,
    ) -> Result<(File, ObjectMeta), OpenError> {
        // One `openat2` of BUCKET/NAME beneath DIR, not one of the bucket
        // and another beneath it (and a close): the walk is the same (no
        // `..`, no symlink, the bucket a directory), and two opens and a
        // close per download were 7% of the server's CPU (h44). Names that
        // cannot be joined so take the two opens, which say why they fail.
        let fd = if is_servable_bucket_name(&bucket.name) && is_servable_name(name) {
            let path = format!("{}/{name}", bucket.name);
            open_under_resolving(&self.root_fd, &path, OBJECT_OPEN_FLAGS, resolve)?
        } else {
            open_under_resolving(&self.open_bucket(bucket)?, name, OBJECT_OPEN_FLAGS, resolve)?
        };
        let stat = rustix::fs::fstat(&fd).map_err(|error| OpenError::Io(error.into()))?;
        let meta = self.meta_from_stat(bucket, name, &stat)?;
        Ok((File::from(fd), meta))
    }

    /// Opens the file a listed (stat-only) `meta` describes, to hash it. The
    /// current object may have been replaced since the stat: then the newer
    /// file and its metadata are returned. An older version's file is
    /// immutable history; if it changed, the listed version is gone.
    pub fn reopen(&self, meta: &ObjectMeta) -> Result<(File, ObjectMeta), OpenError> {
        match &meta.history_path {
            None => self.open_object(&meta.bucket, &meta.name),
            Some(path) => {
                let (file, stat) = self.open_under_root(path)?;
                if FileVersion::of(&stat) != meta.version {
                    return Err(OpenError::NotFound);
                }
                Ok((file, meta.clone()))
            }
        }
    }

    /// The sorted names of a bucket: the cached list while every directory
    /// of the bucket has the stamp it had when the list was walked, else a
    /// new walk.
    pub fn names(&self, bucket: &Bucket) -> std::io::Result<Arc<Vec<String>>> {
        let cached = self
            .name_indexes
            .lock()
            .expect("name index lock")
            .get(&bucket.name)
            .cloned();
        // Checked and walked outside the lock: a big tree must not block
        // other buckets.
        if let Some(index) = cached.filter(|index| index.is_current()) {
            return Ok(index.names.clone());
        }
        let walked_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let bucket_path = self.root.join(&bucket.name);
        let mut names = Vec::new();
        let mut directories = Vec::new();
        walk(&bucket_path, "", &mut names, &mut directories)?;
        names.sort_unstable();
        let names = Arc::new(names);
        let settled = directories
            .iter()
            .all(|(_, stamp)| stamp.is_none_or(|stamp| stamp.is_settled(walked_at_ns)));
        self.name_indexes.lock().expect("name index lock").insert(
            bucket.name.clone(),
            Arc::new(NameIndex {
                names: names.clone(),
                directories,
                settled,
            }),
        );
        Ok(names)
    }
}

/// Collects regular files below `directory` (names relative to the bucket,
/// `/`-separated). Symlinks, sockets, fifos and non-UTF-8 names are skipped.
pub(super) fn walk(
    directory: &Path,
    prefix: &str,
    names: &mut Vec<String>,
    directories: &mut DirectoryStamps,
) -> std::io::Result<()> {
    // Stamped before it is read, so a change during or after the read moves
    // the stamp.
    directories.push((directory.to_path_buf(), DirectoryStamp::of(directory)));
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        // A directory that vanished or is unreadable lists as empty.
        Err(error) if !prefix.is_empty() => {
            say!("ringdown serve: skipping {}: {error}", directory.display());
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let Ok(file_name) = entry.file_name().into_string() else {
            say!(
                "ringdown serve: skipping non-UTF-8 name in {}",
                directory.display()
            );
            continue;
        };
        let name = format!("{prefix}{file_name}");
        if file_type.is_dir() {
            walk(&entry.path(), &format!("{name}/"), names, directories)?;
        } else if file_type.is_file() && is_servable_name(&name) {
            names.push(name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_round_trip() {
        let bucket = Bucket {
            name: "bkt".into(),
            id: bucket_id_for("bkt"),
        };
        let version = FileVersion {
            device: 1,
            inode: 2,
            size_bytes: 11,
            mtime_ns: 5,
            ctime_ns: 7,
        };
        let id = file_id_for(&bucket, "dir/a b+c.txt", &version);
        let (bucket_id, name) = parse_file_id(&id).unwrap();
        assert_eq!(bucket_id, bucket.id);
        assert_eq!(name, "dir/a b+c.txt");
        let touched = FileVersion {
            mtime_ns: 6,
            ..version
        };
        assert_ne!(id, file_id_for(&bucket, "dir/a b+c.txt", &touched));
        // Deterministic for fixtures with a fixed mtime (see `file_id_for`).
        let recreated = FileVersion {
            inode: 3,
            ctime_ns: 8,
            ..version
        };
        assert_eq!(id, file_id_for(&bucket, "dir/a b+c.txt", &recreated));
        assert!(parse_file_id("4_zshort").is_none());
    }

    #[test]
    fn a_stamp_is_settled_once_its_tick_is_surely_past() {
        let stamp = |ctime_ns| DirectoryStamp {
            inode: 1,
            size_bytes: 4096,
            mtime_ns: ctime_ns,
            ctime_ns,
        };
        let ms = 1_000_000u128;
        let fine = stamp(1_700_000_000_123_456_789);
        assert!(!fine.is_settled(fine.ctime_ns));
        assert!(!fine.is_settled(fine.ctime_ns + u128::from(LISTING_SETTLE_MS) * ms));
        assert!(fine.is_settled(fine.ctime_ns + u128::from(LISTING_SETTLE_MS) * ms + 1));
        // Whole seconds: a filesystem with coarse timestamps.
        let coarse = stamp(1_700_000_000_000_000_000);
        assert!(!coarse.is_settled(coarse.ctime_ns + u128::from(LISTING_SETTLE_MS) * ms + 1));
        assert!(coarse.is_settled(coarse.ctime_ns + u128::from(LISTING_SETTLE_COARSE_MS) * ms + 1));
    }

    /// The open a worker makes without blocking finds what the blocking
    /// open finds, refuses what it refuses (symlinked file or bucket), and
    /// follows a bucket directory renamed away or replaced while serving.
    #[test]
    fn a_cached_open_agrees_with_the_blocking_one() {
        let root = tempfile::tempdir().unwrap();
        let path = |name: &str| root.path().join(name);
        std::fs::create_dir(path("bkt")).unwrap();
        std::fs::write(path("bkt/a.txt"), b"hello").unwrap();
        std::fs::write(path("secret.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(path("secret.txt"), path("bkt/link.txt")).unwrap();
        std::os::unix::fs::symlink(path("bkt"), path("linked")).unwrap();
        let store = Store::open(root.path(), Sha1Cache::open(None)).unwrap();
        let bkt = bucket_named("bkt").unwrap();
        let not_found = |opened: Result<(File, ObjectMeta), OpenError>| {
            matches!(opened, Err(OpenError::NotFound))
        };

        // The blocking open leaves the path in the lookup cache.
        let (_, meta) = store.open_object(&bkt, "a.txt").unwrap();
        let (_, cached) = store.open_object_cached(&bkt, "a.txt").expect("warm path");
        assert_eq!(cached.version, meta.version);
        assert_eq!(cached.file_id, meta.file_id);
        for (bucket, name) in [
            (&bkt, "link.txt"),
            (&bucket_named("linked").unwrap(), "a.txt"),
        ] {
            assert!(not_found(store.open_object(bucket, name)), "{name}");
            assert!(store.open_object_cached(bucket, name).is_none(), "{name}");
        }
        assert!(matches!(
            store.open_object(&bkt, "../secret.txt"),
            Err(OpenError::InvalidName)
        ));
        assert!(store.open_object_cached(&bkt, "../secret.txt").is_none());

        std::fs::rename(path("bkt"), path("gone")).unwrap();
        assert!(not_found(store.open_object(&bkt, "a.txt")));
        assert!(store.open_object_cached(&bkt, "a.txt").is_none());
        std::fs::create_dir(path("bkt")).unwrap();
        std::fs::write(path("bkt/a.txt"), b"replaced").unwrap();
        let (_, replaced) = store.open_object(&bkt, "a.txt").unwrap();
        assert_ne!(replaced.version, meta.version);
        let (_, cached) = store.open_object_cached(&bkt, "a.txt").expect("warm path");
        assert_eq!(cached.version, replaced.version);
    }

    #[test]
    fn servable_names() {
        assert!(is_servable_name("a/b.txt"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "a/",
            "a\0b",
        ] {
            assert!(!is_servable_name(bad), "{bad:?}");
        }
    }
}

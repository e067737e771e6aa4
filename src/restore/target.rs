//! The destination directory: the DIR fd, parents created one component at
//! a time (`mkdirat` + `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)`), the
//! `.ringdown/` state directory with partial files, and the journal.
//!
//! Nothing here follows a symlink inside DIR: a symlinked parent gets the
//! name refused; a symlink at a final path is replaced, never followed
//! (`renameat`; a link is never made over one).
//!
//! A small file is written unnamed in its own directory (`O_TMPFILE`) and
//! named there once verified (`linkat`); a large one, and a small one where
//! no unnamed file can be made, in `.ringdown/partial` and renamed from it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::completed::{self, Cursor};
use super::paths::{STATE_DIR_NAME, Shard};
use crate::config::{FSYNC_BATCH_FILES, JOURNAL_DURABLE_INTERVAL_MS, JOURNAL_SORT_RUN_BYTES};
use crate::error::{Error, Result};
use crate::journal::{self, DurableMarks, Journal};

const PARTIAL_DIR_NAME: &str = "partial";

/// Where a file being restored is written until it is verified.
#[derive(Debug)]
pub enum Partial {
    /// `.ringdown/partial/<name>`: a large object's (its stable name lets a
    /// rerun resume it), or a small one's where no unnamed file can be made.
    /// `file` is another descriptor of it than the engine's, flocked while
    /// this lives (`claim_partial`): another run leaves the name alone, and
    /// it is named only if the name still leads to it (`publish`). A name
    /// is not an owner: a second run let in by a deleted journal removed
    /// the first's partial and made its own under the same name, which the
    /// first then renamed into place, verified from its own bytes (h42 #2).
    Named { name: String, file: OwnedFd },
    /// An unnamed file in the final directory (`O_TMPFILE`; this is another
    /// descriptor than the engine's): a small object's. A crash or failure
    /// leaves nothing of it, and naming it locks that directory only. A
    /// rename from `.ringdown/partial` locks both directories, and the two
    /// cores then waited on each other's file creation: 8% of a restore's
    /// CPU spun on those locks (`perf`, 2,000 × 64 KiB, 2026-11-29).
    Unnamed(OwnedFd),
}

/// How an unnamed file is given its name (`Target::publish`), found once a
/// run (`probe_link_unnamed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkUnnamed {
    /// `linkat(fd, "", AT_EMPTY_PATH)`: with CAP_DAC_READ_SEARCH, or (Linux
    /// 6.10) by the process that opened it.
    EmptyPath,
    /// `linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW)`, as open(2) shows.
    ProcFd,
}

fn link_unnamed(
    how: LinkUnnamed,
    file: &OwnedFd,
    dir: &OwnedFd,
    name: &str,
) -> std::result::Result<(), Errno> {
    use std::os::fd::AsRawFd;
    match how {
        LinkUnnamed::EmptyPath => rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH),
        LinkUnnamed::ProcFd => rustix::fs::linkat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{}", file.as_raw_fd()),
            dir,
            name,
            AtFlags::SYMLINK_FOLLOW,
        ),
    }
}

/// Whether (and how) an unnamed file made in `dir` can be named there.
/// `None`: no `O_TMPFILE` here (NFS, some FUSE file systems), or no way to
/// link one (no /proc, an older kernel without the capability).
fn probe_link_unnamed(dir: &OwnedFd, probe_name: &str) -> Option<LinkUnnamed> {
    [LinkUnnamed::EmptyPath, LinkUnnamed::ProcFd]
        .into_iter()
        .find(|&how| links_unnamed(how, dir, probe_name))
}

/// Whether an unnamed file made in `dir` can be named there `how`:
/// `probe_name` is made and removed.
fn links_unnamed(how: LinkUnnamed, dir: &OwnedFd, probe_name: &str) -> bool {
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    let Ok(file) = rustix::fs::openat(dir, ".", flags, Mode::from_raw_mode(0o600)) else {
        return false;
    };
    let linked = link_unnamed(how, &file, dir, probe_name).is_ok();
    if linked {
        let _ = rustix::fs::unlinkat(dir, probe_name, AtFlags::empty());
    }
    linked
}

/// A directory files are named in: its descriptor, and the path under DIR
/// that led to it. A directory another process renames during the run
/// (out of DIR even, with a symlink left at its name) keeps its descriptor
/// working, so each naming first checks that the path still leads to it
/// (`Target::publish`).
pub struct ParentDir {
    pub fd: OwnedFd,
    /// Relative to DIR; empty for DIR itself.
    path: String,
    /// `(st_dev, st_ino)` of `fd`.
    identity: (u64, u64),
    /// Where `fd` is mounted (`Target::same_mount`), looked at once per
    /// directory: per file, it was one `statx` of the seven syscalls a
    /// small file cost (h44).
    mount: Option<Mount>,
}

impl ParentDir {
    fn new(fd: OwnedFd, path: String) -> std::result::Result<ParentDir, PathError> {
        let stat = rustix::fs::fstat(&fd).map_err(|error| {
            PathError::Failed(Error::io(
                format!("looking at the directory {path:?} under DIR"),
                error.into(),
            ))
        })?;
        let identity = (stat.st_dev, stat.st_ino);
        let mount = mount_of(&fd);
        Ok(ParentDir {
            fd,
            path,
            identity,
            mount,
        })
    }
}

/// Why a path could not be created: the name is refused, or the run failed.
#[derive(Debug)]
pub enum PathError {
    /// The filesystem says no for this name (clash, symlinked parent).
    Refused(String),
    Failed(Error),
}

pub struct Target {
    pub root_path: PathBuf,
    root: OwnedFd,
    state: OwnedFd,
    pub partial: OwnedFd,
    /// Where `partial` is mounted (`mount_of`), to tell a directory a
    /// partial file cannot be renamed into.
    partial_mount: Option<Mount>,
    journal_name: String,
    /// Closed once the run's state is removed (`remove_state`).
    journal: Arc<Journal>,
    /// Makes what the journal says durable now and then; stops on drop.
    _durable_marks: DurableMarks,
    /// `--fsync`: the directories of files named since the last batch,
    /// not synced yet (see `journal_completed_synced`).
    unsynced: Mutex<Vec<Arc<ParentDir>>>,
    /// The parent directory of the last file planned, by path under DIR:
    /// names come sorted, so most files share their predecessor's.
    last_parent: Mutex<Option<Arc<ParentDir>>>,
    /// Files completed by earlier runs, asked in listing order.
    completed: Mutex<Cursor>,
    completed_name: String,
    /// How many files earlier runs completed (skipped when listed again).
    pub completed_before: u64,
    /// Large objects an earlier run left half done: key → bytes on disk
    /// (a chunk boundary), whose partial file still exists.
    resumable: HashMap<String, u64>,
    shard_tag: String,
    temp_counter: AtomicU64,
    temp_salt: u64,
    /// DIR is on a case-insensitive file system: the file paths listed so
    /// far, lowercased (`claim_file_path`). This grows with the listing, on
    /// such file systems only.
    claimed_folded: Option<Mutex<HashSet<String>>>,
    /// How a small file's unnamed partial is named; `None`: small files
    /// are named partials too.
    link_unnamed: Option<LinkUnnamed>,
}

/// A file's device and, where the kernel says (`STATX_MNT_ID`, Linux 5.8),
/// its mount.
#[derive(Debug, Clone, Copy)]
struct Mount {
    device: (u32, u32),
    mount_id: Option<u64>,
}

impl Mount {
    fn is_same(self, other: Mount) -> bool {
        self.device == other.device
            && match (self.mount_id, other.mount_id) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }
}

fn mount_of(fd: &OwnedFd) -> Option<Mount> {
    use rustix::fs::StatxFlags;
    let stat = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    Some(Mount {
        device: (stat.stx_dev_major, stat.stx_dev_minor),
        mount_id: StatxFlags::from_bits_retain(stat.stx_mask)
            .contains(StatxFlags::MNT_ID)
            .then_some(stat.stx_mnt_id),
    })
}

/// Partial files are renamed from `partial/` into DIR: across mounts (one
/// put on `.ringdown/` for faster storage, a bind mount) every file failed,
/// each blaming its own directory (h42 #10).
fn check_one_mount(root: &OwnedFd, partial: &OwnedFd, state_context: &str) -> Result<()> {
    if let (Some(root), Some(partial)) = (mount_of(root), mount_of(partial)) {
        if !root.is_same(partial) {
            return Err(Error::Usage(format!(
                "{state_context}/{PARTIAL_DIR_NAME} is on another mount than DIR (a mount point \
                 or bind mount at it or at {state_context}): ringdown renames each file from \
                 there into DIR, which needs one mount; unmount it and run again"
            )));
        }
    }
    Ok(())
}

/// `--dry-run`'s share of `Target::open`'s checks, making nothing: where
/// DIR and its state directories exist already, they are on one mount
/// (else the real run is exit 2 at its start, h46 #8a).
pub fn check_existing_state(root_path: &Path) -> Result<()> {
    let Ok(root) = rustix::fs::open(
        root_path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        // Missing, or the real run's own error to give.
        return Ok(());
    };
    let state_context = format!("{}/{STATE_DIR_NAME}", root_path.display());
    let Ok(state) = open_dir_beneath(&root, STATE_DIR_NAME) else {
        return Ok(());
    };
    match open_dir_beneath(&state, PARTIAL_DIR_NAME) {
        Ok(partial) => check_one_mount(&root, &partial, &state_context),
        // The run would make `partial/` on the mount of `.ringdown/`.
        Err(_) => check_one_mount(&root, &state, &state_context),
    }
}

/// The name of `is_case_insensitive`'s probe file, before its salt: one a
/// kill left behind is removed with `.ringdown/` (`remove_state`).
const CASE_PROBE_PREFIX: &str = "Case-Probe-";

/// Whether `dir` takes names that differ in case only for one: a probe
/// file made under one case is looked up under the other.
fn is_case_insensitive(dir: &OwnedFd, salt: u64) -> bool {
    let made = format!("{CASE_PROBE_PREFIX}{salt:016x}");
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if rustix::fs::openat(dir, made.as_str(), flags, Mode::from_raw_mode(0o600)).is_err() {
        return false;
    }
    let other = made.to_lowercase();
    let insensitive = rustix::fs::statat(dir, other.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok();
    let _ = rustix::fs::unlinkat(dir, made.as_str(), AtFlags::empty());
    insensitive
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn open_dir_beneath(dir: impl AsFd, path: &str) -> std::result::Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        beneath(),
    )
}

fn mkdir_and_open(dir: impl AsFd + Copy, name: &str) -> std::result::Result<OwnedFd, Errno> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(error) => return Err(error),
    }
    open_dir_beneath(dir, name)
}

/// Takes the shard's journal lock: one restore of a shard into a DIR at a
/// time (exit 2 for the second).
fn lock_journal(
    journal: &OwnedFd,
    shard: Shard,
    root_path: &Path,
    state_context: &str,
    journal_name: &str,
) -> Result<()> {
    use rustix::fs::FlockOperation;
    rustix::fs::flock(journal, FlockOperation::NonBlockingLockExclusive).map_err(|error| {
        if error == Errno::WOULDBLOCK {
            Error::Usage(format!(
                "another ringdown restore of shard {}/{} is running into {} (its journal is locked)",
                shard.index,
                shard.count,
                root_path.display()
            ))
        } else {
            Error::io(
                format!("locking {state_context}/{journal_name}"),
                error.into(),
            )
        }
    })
}

/// DIR, its `.ringdown/` and `.ringdown/partial/`, and this shard's journal.
struct StateFiles<'a> {
    root: &'a OwnedFd,
    state: &'a OwnedFd,
    partial: &'a OwnedFd,
    journal: &'a OwnedFd,
}

impl StateFiles<'_> {
    /// ringdown trusts what `.ringdown/` holds (a journal line skips a
    /// file; a partial file is renamed into place), so it must belong to
    /// this user or to DIR's owner (an NFS export that squashes root makes
    /// both another uid), and the journal must be a file of its own.
    /// Another user's could be filled, or its partial files swapped, by
    /// that user (h42 #4); a FIFO or device at the journal's name held the
    /// run forever on its first read, and a hard link there had the journal
    /// written into another file (h42 #9, #13). Each is refused, naming the
    /// way out.
    fn check(&self, state_context: &str, journal_name: &str) -> Result<()> {
        let stat = |fd: &OwnedFd, path: &str| {
            rustix::fs::fstat(fd)
                .map_err(|error| Error::io(format!("inspecting {path}"), error.into()))
        };
        let us = rustix::process::geteuid().as_raw();
        let dir_owner = stat(self.root, "DIR")?.st_uid;
        let partial_context = format!("{state_context}/{PARTIAL_DIR_NAME}");
        for (fd, path) in [
            (self.state, state_context),
            (self.partial, &partial_context),
        ] {
            let owner = stat(fd, path)?.st_uid;
            if owner != us && owner != dir_owner {
                return Err(Error::Usage(format!(
                    "{path} belongs to uid {owner}, neither this user (uid {us}) nor DIR's \
                     owner (uid {dir_owner}): ringdown trusts what it finds there; remove it \
                     and run again"
                )));
            }
        }
        check_one_mount(self.root, self.partial, state_context)?;
        let journal_path = format!("{state_context}/{journal_name}");
        let journal_stat = stat(self.journal, &journal_path)?;
        let kind = rustix::fs::FileType::from_raw_mode(journal_stat.st_mode);
        let wrong = if !kind.is_file() {
            Some("not a regular file".to_string())
        } else if journal_stat.st_nlink != 1 {
            Some(format!(
                "a file with {} names (hard links): writing it would change the others",
                journal_stat.st_nlink
            ))
        } else {
            None
        };
        match wrong {
            Some(wrong) => Err(Error::Usage(format!(
                "{journal_path} is {wrong}; ringdown keeps its journal there: move it away \
                 and run again"
            ))),
            None => Ok(()),
        }
    }
}

/// What a shard's partial file names start with: `K-of-N-`. Runs of
/// different shard counts may share one DIR (a whole-bucket run beside a
/// `--shard 0/2` one): each cleans up only names with its own tag, and no
/// tag is a prefix of another.
fn shard_tag(shard: Shard) -> String {
    format!("{}-of-{}-", shard.index, shard.count)
}

/// `<shard tag><12 hex of SHA-1(key)>.part`.
fn large_temp_name(shard_tag: &str, key: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(key.as_bytes());
    let hex = crate::verify::to_hex(&digest[..6]);
    format!("{shard_tag}{hex}.part")
}

/// The journal key of a completed file.
pub fn journal_key(file_id: &str, size_bytes: u64) -> String {
    format!("{file_id}\t{size_bytes}")
}

/// `mkdir -p`: each directory on the way, in order, as the kernel resolves
/// it, so `NEW/.` and `a/../NEW/` are made as `mkdir -p` makes them
/// (`create_dir_all` makes `NEW/.` by its own idea of the parent, and fails
/// with ENOENT, h46 #8c).
fn make_dirs(path: &Path) -> std::io::Result<()> {
    let mut walked = std::path::PathBuf::new();
    for component in path.components() {
        walked.push(component);
        match std::fs::create_dir(&walked) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            // `.`, `..`, `/`: not made, only walked (a `..` of a missing
            // directory fails at the next step, with ENOENT).
            Err(_) if !matches!(component, std::path::Component::Normal(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

impl Target {
    /// Creates DIR (like `mkdir -p`), `.ringdown/partial/`, and takes the
    /// journal lock of this shard.
    pub fn open(root_path: &Path, shard: Shard) -> Result<Target> {
        make_dirs(root_path)
            .map_err(|error| Error::io(format!("creating {}", root_path.display()), error))?;
        let root = rustix::fs::open(
            root_path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|error| Error::io(format!("opening {}", root_path.display()), error.into()))?;
        let state_context = format!("{}/{STATE_DIR_NAME}", root_path.display());
        let journal_name = format!("journal-{}-of-{}", shard.index, shard.count);
        // The journal is created before `partial/`: another shard finishing
        // into the same DIR removes `.ringdown/` only when it is empty. If it
        // removed it under us anyway (between our mkdir and our create), the
        // next step meets ENOENT: start over.
        let open_state = || -> std::result::Result<(OwnedFd, OwnedFd, OwnedFd), (Errno, String)> {
            let state = mkdir_and_open(&root, STATE_DIR_NAME)
                .map_err(|error| (error, state_context.clone()))?;
            // Every running shard holds a shared lock on `.ringdown/`; the
            // last one to finish is the one that gets it exclusively and may
            // remove the directory (see `remove_state`).
            rustix::fs::flock(&state, FlockOperation::LockShared)
                .map_err(|error| (error, state_context.clone()))?;
            let journal_fd = journal::open_to_append(&state, &journal_name)
                .map_err(|error| (error, format!("{state_context}/{journal_name}")))?;
            let partial = mkdir_and_open(&state, PARTIAL_DIR_NAME)
                .map_err(|error| (error, format!("{state_context}/{PARTIAL_DIR_NAME}")))?;
            Ok((state, journal_fd, partial))
        };
        let mut tries_left = 3;
        let mut locks_left = crate::config::JOURNAL_LOCK_TRIES_MAX;
        let (state, journal_fd, partial) = loop {
            match open_state() {
                Ok((state, journal_fd, partial)) => {
                    let state_files = StateFiles {
                        root: &root,
                        state: &state,
                        partial: &partial,
                        journal: &journal_fd,
                    };
                    state_files.check(&state_context, &journal_name)?;
                    lock_journal(&journal_fd, shard, root_path, &state_context, &journal_name)?;
                    // A run that started just before rewrote it since
                    // (`journal::rewrite`): the lock taken is on the old one.
                    if journal::is_named(&state, &journal_name, &journal_fd) {
                        break (state, journal_fd, partial);
                    }
                    locks_left -= 1;
                    if locks_left == 0 {
                        let path = root_path.join(STATE_DIR_NAME).join(&journal_name);
                        return Err(Error::Fatal(journal::journal_not_named(&path)));
                    }
                }
                Err((Errno::NOENT, _)) if tries_left > 1 => tries_left -= 1,
                Err((Errno::ROFS, _)) => {
                    return Err(Error::Fatal(format!(
                        "{} is read-only",
                        root_path.display()
                    )));
                }
                // `open_dir_beneath` follows no symlink: one planted at a
                // state path (or a file there) is the operator's to move.
                Err((Errno::NOTDIR | Errno::LOOP, context)) => {
                    return Err(Error::Usage(format!(
                        "{context} is a symlink or not a directory: ringdown keeps its state \
                         there and follows no symlink inside DIR; move it away and run again"
                    )));
                }
                Err((error, context)) => return Err(Error::io(context, error.into())),
            }
        };
        let completed_name = format!("completed-{}-of-{}", shard.index, shard.count);
        let shard_tag = shard_tag(shard);
        // A half-done large object resumes only if its partial file survived.
        let partial_exists = |key: &str| {
            rustix::fs::statat(
                &partial,
                large_temp_name(&shard_tag, key),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|stat| {
                rustix::fs::FileType::from_raw_mode(stat.st_mode)
                    == rustix::fs::FileType::RegularFile
            })
        };
        let loaded = completed::load(
            &state,
            &completed_name,
            std::fs::File::from(journal_fd),
            &journal_name,
            JOURNAL_SORT_RUN_BYTES,
            journal::boot_id().as_deref(),
            &partial_exists,
        )?;
        let journal = Journal::new(loaded.journal);
        let durable_marks = DurableMarks::start(
            Arc::clone(&journal),
            state
                .try_clone()
                .map_err(|error| Error::io(format!("{state_context}: duplicating"), error))?,
            std::time::Duration::from_millis(JOURNAL_DURABLE_INTERVAL_MS),
        );
        let resumable = loaded.chunks;
        let temp_salt = {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish()
        };
        let claimed_folded = is_case_insensitive(&partial, temp_salt).then(Default::default);
        let probe_name = format!("{shard_tag}{temp_salt:012x}.part");
        let link_unnamed = probe_link_unnamed(&partial, &probe_name);
        let target = Target {
            root_path: root_path.to_path_buf(),
            root,
            state,
            partial_mount: mount_of(&partial),
            partial,
            journal_name,
            journal,
            _durable_marks: durable_marks,
            unsynced: Mutex::new(Vec::new()),
            last_parent: Mutex::new(None),
            completed: Mutex::new(loaded.completed),
            completed_name,
            completed_before: loaded.completed_count,
            resumable,
            shard_tag,
            temp_counter: AtomicU64::new(0),
            temp_salt,
            claimed_folded,
            link_unnamed,
        };
        // Partial files of an earlier run of this shard cannot be resumed.
        target.remove_partials();
        Ok(target)
    }

    /// Whether an earlier run completed this file. Ask in listing order
    /// (see `completed::Cursor::contains`).
    pub fn is_completed(&self, name: &str, key: &str) -> bool {
        self.completed
            .lock()
            .expect("completed lock")
            .contains(&completed::record(name, key))
    }

    /// Appends one completed file to the journal (one `write`, so a kill
    /// leaves at most a cut last line, which the next run ignores).
    pub fn journal_completed(&self, name: &str, key: &str) -> Result<()> {
        self.journal_line(&format!("ok\t{}\n", completed::record(name, key)))
    }

    /// Records that `[0, bytes)` of a large object is written to its partial file.
    pub fn journal_chunks(&self, key: &str, bytes: u64) -> Result<()> {
        self.journal_line(&journal::chunk_line(key, bytes))
    }

    /// `--fsync`: the file's data is synced and it is named. Its record
    /// is written at once, as without `--fsync`: a kill keeps the page
    /// cache, and a run of the same boot trusts it (see `journal`); held
    /// back for the batch, a kill lost up to `FSYNC_BATCH_FILES` records of
    /// files on disk, fetched again (h37 #1). Its directory entry becomes
    /// durable with the next batch: one fsync per distinct directory. After
    /// a power cut the record counts only once a `durable` mark, written
    /// after a `syncfs`, covers it: the journal itself needs no fsync here.
    pub fn journal_completed_synced(
        &self,
        parent: Arc<ParentDir>,
        name: &str,
        key: &str,
    ) -> Result<()> {
        self.journal_completed(name, key)?;
        let batch = {
            let mut unsynced = self.unsynced.lock().expect("unsynced lock");
            unsynced.push(parent);
            if unsynced.len() < FSYNC_BATCH_FILES {
                return Ok(());
            }
            std::mem::take(&mut *unsynced)
        };
        self.sync_batch(batch)
    }

    /// `--fsync`: fsyncs the directories of the files named since the last
    /// batch (end of run).
    pub fn flush_synced(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.unsynced.lock().expect("unsynced lock"));
        self.sync_batch(batch)
    }

    fn sync_batch(&self, batch: Vec<Arc<ParentDir>>) -> Result<()> {
        let mut synced_dirs = HashSet::new();
        for parent in &batch {
            if synced_dirs.insert(parent.identity) {
                rustix::fs::fsync(&parent.fd)
                    .map_err(|error| Error::io("fsync of a restored directory", error.into()))?;
            }
        }
        Ok(())
    }

    fn journal_line(&self, line: &str) -> Result<()> {
        self.journal
            .append(line)
            .map_err(|error| self.journal_error(error))
    }

    /// A failed journal append stops the run: the journal is named, and
    /// what to do when the disk is full or read-only.
    fn journal_error(&self, error: std::io::Error) -> Error {
        let path = format!(
            "{}/{STATE_DIR_NAME}/{}",
            self.root_path.display(),
            self.journal_name
        );
        let context = format!("appending to the journal {path}");
        match crate::engine::failure::write_failure(&context, &error) {
            (detail, true) => Error::Fatal(format!(
                "{detail} (a file whose record did not make it is fetched again)"
            )),
            (_, false) => Error::io(context, error),
        }
    }

    /// Bytes of a large object an earlier run left in its partial file.
    pub fn resumable_bytes(&self, key: &str) -> Option<u64> {
        self.resumable.get(key).copied()
    }

    /// The stable partial name of a large object (so a rerun finds it).
    pub fn large_temp_name(&self, key: &str) -> String {
        large_temp_name(&self.shard_tag, key)
    }

    /// `<shard tag><12 hex>.part`: short, unique, and tagged with the shard
    /// so a run cleans up only its own leftovers.
    pub fn temp_name(&self) -> String {
        let counter = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let unique =
            (self.temp_salt ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & 0xffff_ffff_ffff;
        format!("{}{unique:012x}.part", self.shard_tag)
    }

    /// The directory a file goes in (created if missing), shared with the
    /// files before it that went in the same one.
    pub fn parent_dir(&self, segments: &[&str]) -> std::result::Result<Arc<ParentDir>, PathError> {
        let path = segments.join("/");
        let mut last = self.last_parent.lock().expect("parent lock");
        if let Some(parent) = &*last {
            if parent.path == path {
                return Ok(Arc::clone(parent));
            }
        }
        let parent = Arc::new(ParentDir::new(self.ensure_dir(segments)?, path)?);
        *last = Some(Arc::clone(&parent));
        Ok(parent)
    }

    /// Whether DIR's path (as given) still leads to the directory the run
    /// opened there and wrote into.
    /// An error that says nothing of where it is (a file system gone dead:
    /// ENOTCONN, ESTALE) does not count as moved.
    pub fn is_dir_still_at_its_path(&self) -> bool {
        crate::dest::path_leads_to(&self.root_path, &self.root) != Some(false)
    }

    /// Whether `parent`'s path under DIR still leads to it. Where it does
    /// not, the cache lets go of it: the next file looks afresh (and meets
    /// whatever is at the path now, a symlink refused, a directory made).
    fn is_still_at_its_path(&self, parent: &Arc<ParentDir>) -> bool {
        if parent.path.is_empty() {
            // DIR is where the run writes, whatever its path is now.
            return true;
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let now = rustix::fs::openat2(&self.root, &parent.path, flags, Mode::empty(), beneath())
            .and_then(|fd| rustix::fs::fstat(&fd))
            .map(|stat| (stat.st_dev, stat.st_ino));
        if now == Ok(parent.identity) {
            return true;
        }
        let mut last = self.last_parent.lock().expect("parent lock");
        if last
            .as_ref()
            .is_some_and(|cached| Arc::ptr_eq(cached, parent))
        {
            *last = None;
        }
        false
    }

    /// Creates the parent directories of a file (or a directory itself), one
    /// component at a time, and returns the innermost directory's fd.
    pub fn ensure_dir(&self, segments: &[&str]) -> std::result::Result<OwnedFd, PathError> {
        let joined = segments.join("/");
        if segments.is_empty() {
            return self
                .root
                .try_clone()
                .map_err(|error| PathError::Failed(Error::io("duplicating the DIR fd", error)));
        }
        // Fast path: the directory usually exists already. On any failure,
        // walk one component at a time: that creates what is missing and
        // names the component in the way.
        if let Ok(fd) = open_dir_beneath(&self.root, &joined) {
            return Ok(fd);
        }
        let mut current = self
            .root
            .try_clone()
            .map_err(|error| PathError::Failed(Error::io("duplicating the DIR fd", error)))?;
        for (depth, segment) in segments.iter().enumerate() {
            current = mkdir_and_open(&current, segment)
                .map_err(|error| self.path_error(&segments[..=depth].join("/"), error))?;
        }
        Ok(current)
    }

    /// `path` is relative to DIR; messages name it with DIR in front, as
    /// every other message about a restored path does.
    fn path_error(&self, path: &str, error: Errno) -> PathError {
        // `O_DIRECTORY | O_NOFOLLOW` on a symlink fails with ENOTDIR, not
        // ELOOP: look at what is there so the reason names the symlink.
        let is_symlink = || {
            rustix::fs::statat(&self.root, path, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|stat| {
                rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink
            })
        };
        let shown = format!("{}/{path}", self.root_path.display());
        match error {
            Errno::LOOP | Errno::XDEV => PathError::Refused(format!(
                "{shown} is (or passes through) a symlink inside the destination; not followed"
            )),
            Errno::NOTDIR | Errno::EXIST if is_symlink() => PathError::Refused(format!(
                "{shown} is a symlink inside the destination; not followed"
            )),
            Errno::NOTDIR | Errno::EXIST => {
                PathError::Refused(format!("{shown}: a file is in the way of a directory"))
            }
            _ => PathError::Failed(crate::dest::file_system_error(
                format!("creating {shown}"),
                error,
            )),
        }
    }

    /// Size of a regular file at `segments`, opened without following
    /// symlinks. Anything else there is looked at (`O_PATH`) but never
    /// opened: opening a FIFO waits for a writer, and a device's open may
    /// act (a tape rewinds). The file is then opened for reading, and must
    /// be the one looked at.
    pub fn open_existing(&self, segments: &[&str]) -> Option<(OwnedFd, rustix::fs::Stat)> {
        let looked_at = self.existing_file(segments)?;
        let fd = self.open_beneath(segments, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let stat = rustix::fs::fstat(&fd).ok()?;
        let same = (stat.st_dev, stat.st_ino) == (looked_at.st_dev, looked_at.st_ino);
        (same && is_regular_file(&stat)).then_some((fd, stat))
    }

    /// The status of a regular file at `segments`, looked at without
    /// opening it or following a symlink; `None` for anything else.
    pub fn existing_file(&self, segments: &[&str]) -> Option<rustix::fs::Stat> {
        existing_file_beneath(&self.root, segments)
    }

    fn open_beneath(&self, segments: &[&str], flags: OFlags) -> Option<OwnedFd> {
        open_beneath(&self.root, segments, flags)
    }

    /// On a case-insensitive file system (exFAT, SMB, ext4 casefold), the
    /// file path of a listed name, unless another listed earlier in this run
    /// differs from it in case only: then why it is refused (the first name
    /// in listing order wins). Both were renamed into one file, and reported
    /// restored. Elsewhere always `Ok`.
    pub fn claim_file_path(&self, display_path: &str) -> std::result::Result<(), String> {
        let Some(claimed) = &self.claimed_folded else {
            return Ok(());
        };
        if claimed
            .lock()
            .expect("claimed lock")
            .insert(display_path.to_lowercase())
        {
            Ok(())
        } else {
            Err(format!(
                "{display_path}: a name listed earlier differs from it in case only, and this \
                 file system does not tell them apart; the first name wins"
            ))
        }
    }

    /// Whether `dir` is on the mount of `.ringdown/partial`, so a partial
    /// file can be renamed into it: the same file system is not enough, as
    /// a bind mount inside DIR refuses the rename too (EXDEV).
    pub fn same_mount(&self, dir: &ParentDir) -> bool {
        match (dir.mount, self.partial_mount) {
            (Some(dir), Some(partial)) => dir.is_same(partial),
            // Not known: the rename will tell.
            _ => true,
        }
    }

    /// Creates a small file's partial: unnamed in `parent` where that can
    /// be done, else named in `.ringdown/partial`. Returns the engine's
    /// descriptor and whether O_DIRECT is on (see `dest::create_temp`).
    pub fn create_partial(
        &self,
        parent: &ParentDir,
        display_path: &str,
        size_bytes: u64,
        mode: crate::dest::DirectIo,
    ) -> Result<(OwnedFd, bool, Partial)> {
        use crate::dest::create_temp;
        if self.link_unnamed.is_some() {
            match create_temp(&parent.fd, None, display_path, size_bytes, mode) {
                Ok((file, direct)) => {
                    if let Ok(kept) = file.try_clone() {
                        return Ok((file, direct, Partial::Unnamed(kept)));
                    }
                }
                // This directory's file system makes none: named, as below.
                Err(Error::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(error) => return Err(error),
            }
        }
        let name = self.temp_name();
        let (file, direct) =
            create_temp(&self.partial, Some(&name), display_path, size_bytes, mode)?;
        let kept = self.claim_partial(&file, &name, display_path)?;
        Ok((file, direct, Partial::Named { name, file: kept }))
    }

    /// A large object's partial file, under its stable name: made afresh,
    /// or (`resume`) reopened as an earlier run left it (no truncation).
    pub fn large_partial(
        &self,
        name: String,
        display_path: &str,
        size_bytes: u64,
        mode: crate::dest::DirectIo,
        resume: bool,
    ) -> Result<(OwnedFd, bool, Partial)> {
        use crate::dest::DirectIo;
        let opened = match resume {
            true => crate::dest::reopen_partial(&self.partial, &name, mode != DirectIo::Off),
            false => {
                crate::dest::create_temp(&self.partial, Some(&name), display_path, size_bytes, mode)
            }
        };
        let (file, direct) = opened.map_err(|error| match error {
            // Another run's, which this run's start left alone (`remove_partials_unless`).
            Error::Io { source, .. } if source.raw_os_error() == Some(libc::EEXIST) => {
                self.held_by_another_run(&name, display_path)
            }
            error => error,
        })?;
        let kept = self.claim_partial(&file, &name, display_path)?;
        Ok((file, direct, Partial::Named { name, file: kept }))
    }

    /// Locks a named partial file for this run (see `Partial::Named`): a
    /// duplicate of the engine's descriptor, flocked; the lock goes with the
    /// last of the two.
    fn claim_partial(&self, file: &OwnedFd, name: &str, display_path: &str) -> Result<OwnedFd> {
        let kept = file
            .try_clone()
            .map_err(|error| Error::io(format!("duplicating partial {name}"), error))?;
        match rustix::fs::flock(&kept, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(kept),
            Err(Errno::WOULDBLOCK) => Err(self.held_by_another_run(name, display_path)),
            Err(error) => Err(Error::io(format!("locking partial {name}"), error.into())),
        }
    }

    fn held_by_another_run(&self, name: &str, display_path: &str) -> Error {
        Error::io(
            format!(
                "{display_path}: its partial file {STATE_DIR_NAME}/{PARTIAL_DIR_NAME}/{name} \
                 belongs to another ringdown restore into this DIR, which holds its lock (was \
                 that run's journal deleted under it?); left alone, run again once it ended"
            ),
            std::io::Error::from_raw_os_error(libc::EWOULDBLOCK),
        )
    }

    /// Sets a partial file's times (B2's `src_last_modified_millis`), once
    /// every write has completed, through the descriptor it keeps.
    pub fn set_mtime(&self, partial: &Partial, mtime_ms: i64) {
        let times = crate::dest::timestamps_at(mtime_ms);
        let (Partial::Named { file, .. } | Partial::Unnamed(file)) = partial;
        let _ = rustix::fs::futimens(file, &times);
    }

    /// Gives a verified partial file its final name. A file or symlink
    /// there is replaced (a symlink not followed); a directory there
    /// refuses the name. Whatever the outcome, the partial is gone.
    pub fn publish(
        &self,
        partial: Partial,
        parent: &Arc<ParentDir>,
        leaf: &str,
        display_path: &str,
    ) -> std::result::Result<(), PathError> {
        let moved = || {
            PathError::Failed(Error::io(
                format!("naming {display_path}"),
                std::io::Error::other(
                    "its directory was moved or replaced during the run (the path under DIR \
                     no longer leads to it); not named there: run again to restore it",
                ),
            ))
        };
        if !self.is_still_at_its_path(parent) {
            self.discard(partial);
            return Err(moved());
        }
        let file = self.name_partial(partial, &parent.fd, leaf, display_path)?;
        // Moved between the check and the naming: the file is no longer
        // under DIR, and must not be reported there. Taken back, while the
        // name leads to it.
        if !self.is_still_at_its_path(parent) {
            if journal::is_named(&parent.fd, leaf, &file) {
                let _ = rustix::fs::unlinkat(&parent.fd, leaf, AtFlags::empty());
            }
            return Err(moved());
        }
        Ok(())
    }

    /// `publish`'s naming; returns the named file's descriptor.
    fn name_partial(
        &self,
        partial: Partial,
        parent: &OwnedFd,
        leaf: &str,
        display_path: &str,
    ) -> std::result::Result<OwnedFd, PathError> {
        let (temp_name, file) = match partial {
            // Renamed only while the name leads to what was written and
            // verified: another process may have put a file there since.
            Partial::Named { name, file } if journal::is_named(&self.partial, &name, &file) => {
                (name, file)
            }
            Partial::Named { name, .. } => {
                return Err(PathError::Failed(Error::io(
                    format!(
                        "{display_path}: naming its partial file \
                         {STATE_DIR_NAME}/{PARTIAL_DIR_NAME}/{name}"
                    ),
                    std::io::Error::other(
                        "the name no longer leads to the file written and verified: \
                         another process replaced or removed it during the run",
                    ),
                )));
            }
            Partial::Unnamed(file) => {
                let how = self
                    .link_unnamed
                    .expect("an unnamed partial is linked as probed");
                match link_unnamed(how, &file, parent, leaf) {
                    Ok(()) => return Ok(file),
                    // Something is there (a file from before, a symlink,
                    // a directory): a link replaces nothing, a rename does.
                    Err(Errno::EXIST) => {}
                    Err(error) => return Err(publish_error(error, display_path)),
                }
                let name = self.temp_name();
                link_unnamed(how, &file, &self.partial, &name)
                    .map_err(|error| publish_error(error, display_path))?;
                (name, file)
            }
        };
        crate::dest::keep_permissions_of(&file, parent, std::ffi::OsStr::new(leaf));
        let renamed = rustix::fs::renameat(&self.partial, temp_name.as_str(), parent, leaf);
        match renamed {
            Ok(()) => Ok(file),
            Err(error) => {
                self.unlink_partial(&temp_name);
                Err(publish_error(error, display_path))
            }
        }
    }

    pub fn unlink_partial(&self, temp_name: &str) {
        let _ = rustix::fs::unlinkat(&self.partial, temp_name, AtFlags::empty());
    }

    /// Drops a partial that is not to be kept: a named one is removed, an
    /// unnamed one goes with its last descriptor.
    pub fn discard(&self, partial: Partial) {
        if let Partial::Named { name, file } = partial {
            if journal::is_named(&self.partial, &name, &file) {
                self.unlink_partial(&name);
            }
        }
    }

    /// Removes this shard's partial files but the resumable ones.
    pub fn remove_partials(&self) {
        self.remove_partials_but(&HashSet::new());
    }

    /// Exit 1: partial files go, resumable ones too (CONVENTIONS.md); the
    /// journal stays so completed files are skipped next time.
    pub fn remove_all_partials(&self) {
        self.remove_partials_unless(|_| false);
    }

    /// Removes this shard's partial files but `keep` and the ones resumable
    /// when the run began.
    pub fn remove_partials_but(&self, keep: &HashSet<String>) {
        let resumable: HashSet<String> = self
            .resumable
            .keys()
            .map(|key| self.large_temp_name(key))
            .collect();
        self.remove_partials_unless(|name| keep.contains(name) || resumable.contains(name));
    }

    /// Removes this shard's partial files but those `kept` says to keep.
    fn remove_partials_unless(&self, kept: impl Fn(&String) -> bool) {
        let ours = |name: &String| {
            name.starts_with(&self.shard_tag) && name.ends_with(".part") && !kept(name)
        };
        for name in entry_names(&self.partial).iter().filter(|name| ours(name)) {
            // One another run holds (`claim_partial`) is its to remove.
            let opened = rustix::fs::openat(
                &self.partial,
                name.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            );
            if let Ok(file) = &opened {
                let held = rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive);
                if held == Err(Errno::WOULDBLOCK) {
                    continue;
                }
            }
            self.unlink_partial(name);
        }
    }

    /// Exit 0: the journal and (when no other shard uses it) `.ringdown/` go.
    pub fn remove_state(&self) {
        self.remove_all_partials();
        journal::remove(&self.state, &self.journal_name);
        // Closed too: a FUSE file system keeps an unlinked file that is still
        // open as a hidden one, and `.ringdown/` would not be empty.
        self.journal.close();
        completed::remove(&self.state, &self.completed_name);
        // Another shard still running into this DIR holds its shared lock:
        // then `partial/` and `.ringdown/` stay (it writes there).
        // Drop our shared lock first, so two shards finishing together
        // cannot both fail to upgrade and leave the directory behind.
        let _ = rustix::fs::flock(&self.state, FlockOperation::Unlock);
        if rustix::fs::flock(&self.state, FlockOperation::NonBlockingLockExclusive).is_ok() {
            // A probe a killed run left (no shard runs now to make one):
            // `partial/` would never be empty, and `.ringdown/` stay.
            for name in entry_names(&self.partial) {
                if name.starts_with(CASE_PROBE_PREFIX) {
                    let _ = rustix::fs::unlinkat(&self.partial, name.as_str(), AtFlags::empty());
                }
            }
            let _ = rustix::fs::unlinkat(&self.state, PARTIAL_DIR_NAME, AtFlags::REMOVEDIR);
            let _ = rustix::fs::unlinkat(&self.root, STATE_DIR_NAME, AtFlags::REMOVEDIR);
        }
    }
}

/// Why a verified file could not be given its final name.
fn publish_error(error: Errno, display_path: &str) -> PathError {
    match error {
        Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR => PathError::Refused(
            format!("{display_path}: a directory is in the way of the file"),
        ),
        // As for a creation (`path_error`): the next file would fail the
        // same way. An unnamed small file makes its entry here, last.
        _ => match crate::dest::run_stopping_hint(Some(error.raw_os_error())) {
            Some(hint) => PathError::Failed(Error::Fatal(format!(
                "naming {display_path}: {}{hint}",
                std::io::Error::from(error)
            ))),
            None => PathError::Failed(Error::io(
                format!("naming {display_path} (from its partial file)"),
                error.into(),
            )),
        },
    }
}

/// See `Target::existing_file`; `root` is DIR.
pub fn existing_file_beneath(root: &OwnedFd, segments: &[&str]) -> Option<rustix::fs::Stat> {
    let stat = rustix::fs::fstat(open_beneath(root, segments, OFlags::PATH)?).ok()?;
    is_regular_file(&stat).then_some(stat)
}

fn open_beneath(root: &OwnedFd, segments: &[&str], flags: OFlags) -> Option<OwnedFd> {
    rustix::fs::openat2(
        root,
        segments.join("/"),
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        beneath(),
    )
    .ok()
}

fn is_regular_file(stat: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile
}

/// The names in a directory, read through an open file description of
/// their own (`Dir::read_from` opens "." afresh): a `Dir` over a duplicated
/// descriptor shares the read position of the original, which an earlier
/// listing left at the end, and would see nothing.
pub(super) fn entry_names(dir: &OwnedFd) -> Vec<String> {
    let Ok(mut entries) = rustix::fs::Dir::read_from(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{PathError, Target, publish_error, shard_tag};
    use crate::error::Error;
    use crate::restore::paths::Shard;
    use rustix::io::Errno;

    #[test]
    fn naming_on_a_full_read_only_or_failed_file_system_stops_the_run() {
        for errno in [Errno::NOSPC, Errno::ROFS, Errno::DQUOT, Errno::NOTCONN] {
            match publish_error(errno, "DIR/a") {
                PathError::Failed(Error::Fatal(why)) => assert!(why.starts_with("naming DIR/a: ")),
                _ => panic!("{errno:?}"),
            }
        }
        assert!(matches!(
            publish_error(Errno::ISDIR, "DIR/a"),
            PathError::Refused(_)
        ));
        for one_file in [Errno::NAMETOOLONG, Errno::IO] {
            assert!(matches!(
                publish_error(one_file, "DIR/a"),
                PathError::Failed(Error::Io { .. })
            ));
        }
    }

    #[test]
    fn a_case_sensitive_directory_is_seen_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        assert!(!super::is_case_insensitive(&fd, 7));
        // The probe is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn no_shard_tag_is_a_prefix_of_another() {
        let mut tags = Vec::new();
        for count in [1, 2, 3, 10, 20, 65537] {
            for index in [0, 1, 2, 9, 19, 65536].into_iter().filter(|i| *i < count) {
                tags.push(shard_tag(Shard { index, count }));
            }
        }
        for (i, a) in tags.iter().enumerate() {
            for (j, b) in tags.iter().enumerate() {
                assert!(i == j || !b.starts_with(a.as_str()), "{a:?} prefixes {b:?}");
            }
        }
    }

    /// A journal append that fails names the journal, and on a full disk
    /// says what to do (it said "appending to the journal: No space left
    /// on device", no path, no way out).
    #[test]
    fn a_failed_journal_append_names_the_journal_and_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path(), Shard { index: 1, count: 2 }).unwrap();
        let journal = format!("{}/.ringdown/journal-1-of-2", dir.path().display());
        let full = target.journal_error(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let said = full.to_string();
        assert!(said.contains(&journal), "{said}");
        assert!(said.contains("free space"), "{said}");
        assert!(!full.may_pass_on_retry(), "{said}");
        let eio = target.journal_error(std::io::Error::from_raw_os_error(libc::EIO));
        let said = eio.to_string();
        assert!(
            said.contains(&journal) && !said.contains("free space"),
            "{said}"
        );
    }

    /// A case probe a `kill -9` left in `partial/` is removed with the
    /// run's state: it kept `.ringdown/` after every run that ended well.
    #[test]
    fn a_left_case_probe_does_not_keep_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join(".ringdown/partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("Case-Probe-0987f936f1d61cc3"), b"").unwrap();
        let target = Target::open(dir.path(), Shard::ALL).unwrap();
        target.remove_state();
        assert!(!dir.path().join(".ringdown").exists());
    }

    #[test]
    fn files_of_one_directory_share_its_fd_and_refusals_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path(), Shard::ALL).unwrap();
        let a1 = target.parent_dir(&["a", "b"]).unwrap();
        let a2 = target.parent_dir(&["a", "b"]).unwrap();
        assert!(Arc::ptr_eq(&a1, &a2), "same directory, same fd");
        assert!(dir.path().join("a/b").is_dir(), "created on first use");
        let c = target.parent_dir(&["c"]).unwrap();
        assert!(!Arc::ptr_eq(&a1, &c));
        // A symlink planted where a directory is wanted: refused, every time.
        std::os::unix::fs::symlink("/tmp", dir.path().join("s")).unwrap();
        for _ in 0..2 {
            assert!(matches!(
                target.parent_dir(&["s"]),
                Err(PathError::Refused(_))
            ));
        }
        // The cache still holds the last good directory, not the refusal.
        let c_again = target.parent_dir(&["c"]).unwrap();
        assert!(Arc::ptr_eq(&c, &c_again));
    }

    /// h42 #1: a directory renamed out of DIR during the run, a symlink to
    /// it left at its name. Its descriptor still works; nothing is named
    /// through it, and the next file of that directory meets the symlink.
    #[test]
    fn a_directory_moved_out_of_dir_receives_nothing_more() {
        use super::entry_names;
        use crate::dest::DirectIo;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path(), Shard::ALL).unwrap();
        let parent = target.parent_dir(&["d"]).unwrap();
        let mut partials = Vec::new();
        for leaf in ["f1", "f2"] {
            let (file, _, partial) = target
                .create_partial(&parent, leaf, 5, DirectIo::Off)
                .unwrap();
            rustix::io::pwrite(&file, b"bytes", 0).unwrap();
            partials.push((leaf, partial));
        }
        let (leaf, partial) = partials.remove(0);
        target.publish(partial, &parent, leaf, leaf).unwrap();
        assert!(dir.path().join("d/f1").is_file());

        std::fs::rename(dir.path().join("d"), outside.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("d"), dir.path().join("d")).unwrap();
        let (leaf, partial) = partials.remove(0);
        let published = target.publish(partial, &parent, leaf, leaf);
        let Err(PathError::Failed(error)) = published else {
            panic!("named through a moved directory: {published:?}");
        };
        assert!(error.to_string().contains("moved"), "{error}");
        assert!(!outside.path().join("d/f2").exists(), "written outside DIR");
        assert!(entry_names(&target.partial).is_empty(), "partial left");
        assert!(matches!(
            target.parent_dir(&["d"]),
            Err(PathError::Refused(_))
        ));
    }
    /// h46 #8b: DIR renamed away (a symlink to elsewhere left at its
    /// name) is told apart from DIR still where it was, as the run's end
    /// says.
    #[test]
    fn dir_moved_away_is_noticed() {
        let work = tempfile::tempdir().unwrap();
        let (dir, moved, elsewhere) = (
            work.path().join("dir"),
            work.path().join("moved"),
            work.path().join("elsewhere"),
        );
        std::fs::create_dir(&elsewhere).unwrap();
        let target = Target::open(&dir, Shard::ALL).unwrap();
        assert!(target.is_dir_still_at_its_path());
        std::fs::rename(&dir, &moved).unwrap();
        assert!(!target.is_dir_still_at_its_path());
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        assert!(!target.is_dir_still_at_its_path());
        std::fs::remove_file(&dir).unwrap();
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        assert!(
            target.is_dir_still_at_its_path(),
            "a link to it leads to it"
        );
    }

    /// A small file's partial, each way it can be made (unnamed and linked
    /// either way; named where no unnamed file can be), is put in place:
    /// under a new name, over a file from before, over a symlink (replaced,
    /// not followed), and refused by a directory. Nothing is left in
    /// `partial/`, and the mtime is the one set.
    #[test]
    fn a_small_files_partial_is_put_in_place_each_way_it_can_be_made() {
        use super::{LinkUnnamed, Partial, entry_names, links_unnamed};
        use crate::dest::DirectIo;
        use std::os::unix::fs::MetadataExt;
        let outside = tempfile::tempdir().unwrap();
        let sentinel = outside.path().join("sentinel");
        std::fs::write(&sentinel, b"untouched").unwrap();
        for how in [
            None,
            Some(LinkUnnamed::EmptyPath),
            Some(LinkUnnamed::ProcFd),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut target = Target::open(dir.path(), Shard::ALL).unwrap();
            // A way this kernel, file system or user cannot take (AT_EMPTY_PATH
            // before Linux 6.10 without CAP_DAC_READ_SEARCH, no O_TMPFILE in
            // TMPDIR) is the probe's to rule out, not this test's to use.
            if let Some(how) = how {
                let probe = format!("{}probe.part", target.shard_tag);
                if !links_unnamed(how, &target.partial, &probe) {
                    eprintln!("skipped {how:?}: not taken here");
                    continue;
                }
            }
            target.link_unnamed = how;
            std::fs::write(dir.path().join("old"), b"from before").unwrap();
            let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
            std::fs::set_permissions(dir.path().join("old"), private).unwrap();
            std::os::unix::fs::symlink(&sentinel, dir.path().join("link")).unwrap();
            std::fs::create_dir(dir.path().join("dir")).unwrap();
            let parent = target.parent_dir(&[]).unwrap();
            for leaf in ["new", "old", "link", "dir"] {
                let body = format!("the bytes of {leaf} ({how:?})");
                let made = target.create_partial(&parent, leaf, body.len() as u64, DirectIo::Off);
                let (file, direct, partial) = made.unwrap();
                assert!(!direct);
                assert_eq!(
                    how.is_some(),
                    matches!(partial, Partial::Unnamed(_)),
                    "{how:?}"
                );
                rustix::io::pwrite(&file, body.as_bytes(), 0).unwrap();
                drop(file);
                target.set_mtime(&partial, 1_600_000_000_123);
                let published = target.publish(partial, &parent, leaf, leaf);
                let path = dir.path().join(leaf);
                if leaf == "dir" {
                    assert!(matches!(published, Err(PathError::Refused(_))), "{how:?}");
                    assert!(path.is_dir());
                } else {
                    assert!(published.is_ok(), "{leaf} {how:?}: {published:?}");
                    let meta = std::fs::symlink_metadata(&path).unwrap();
                    assert!(meta.is_file(), "{leaf} {how:?}");
                    assert_eq!(meta.mtime(), 1_600_000_000, "{leaf} {how:?}");
                    // A file replaced keeps its permissions (h42 #6).
                    if leaf == "old" {
                        assert_eq!(meta.mode() & 0o777, 0o600, "{how:?}");
                    }
                    assert_eq!(std::fs::read_to_string(&path).unwrap(), body);
                }
                let left = entry_names(&target.partial);
                assert!(left.is_empty(), "{leaf} {how:?}: {left:?}");
            }
            assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched");
        }
    }
}

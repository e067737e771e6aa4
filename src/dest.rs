//! The file a download is written to, until it is verified and named:
//! created (named, or unnamed with `O_TMPFILE`) and pre-allocated, with
//! O_DIRECT where the file system's alignment suits the buffers, reopened
//! to resume, and given the object's times. `get` and `restore` both put
//! their files on disk through here.

use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags, Timestamps};

use crate::config::{DIRECT_IO_ALIGN_BYTES, DIRECT_IO_MIN_OBJECT_BYTES};
use crate::error::{Error, Result};

/// `--direct-io auto|on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectIo {
    Auto,
    On,
    Off,
}

/// Whether a file opened with O_DIRECT (`opened_direct`) of `size_bytes`
/// gets any byte written direct: its last partial block goes through the
/// page cache (`uring::File::end_direct`), so one below a block gets none,
/// and the summary's "O_DIRECT: yes" would not be true of it.
pub fn writes_direct(opened_direct: bool, size_bytes: u64) -> bool {
    opened_direct && size_bytes >= DIRECT_IO_ALIGN_BYTES as u64
}

impl DirectIo {
    /// The mode for one object of `size_bytes`. `auto` uses O_DIRECT from
    /// `DIRECT_IO_MIN_OBJECT_BYTES` up (where the file system's alignment
    /// suits; see `create_temp`), as DESIGN.md advises: it writes from the
    /// registered buffers as they are, for ~0.1 s of CPU per GiB against
    /// 0.3-2.4 s through the page cache (this VM, `dd` at 256 KiB and 16 KiB
    /// pieces, 2026-11-26), and leaves the page cache of the server alone.
    /// On 2 cores shared with the origin that CPU is the wall time: a 1 GiB
    /// get took 1.31-1.45 s (median of 6) with O_DIRECT against 1.98 s
    /// through the page cache. The page cache wins only where the disk is
    /// slower than the download and the object fits under the writeback
    /// threshold (an earlier host, disk ~420 MB/s: 1 GiB in 1.9-2.4 s
    /// buffered, 2.8-3.0 s direct); `--direct-io off` is for such a disk.
    pub fn for_object(self, size_bytes: u64) -> DirectIo {
        match self {
            DirectIo::Auto if size_bytes < DIRECT_IO_MIN_OBJECT_BYTES => DirectIo::Off,
            mode => mode,
        }
    }
}

/// Reopens a partial file an earlier run left (no O_EXCL, no truncation),
/// with O_DIRECT when wanted and possible.
pub(crate) fn reopen_partial(
    dir: &OwnedFd,
    temp_name: &str,
    want_direct: bool,
) -> Result<(OwnedFd, bool)> {
    let flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let open = |flags| rustix::fs::openat(dir, temp_name, flags, Mode::empty());
    if want_direct {
        if let Ok(fd) = open(flags | OFlags::DIRECT) {
            if direct_io_alignment_ok(&fd) {
                return Ok((fd, true));
            }
        }
    }
    open(flags)
        .map(|fd| (fd, false))
        .map_err(|error| Error::io(format!("reopening partial {temp_name}"), error.into()))
}

/// Whether `path` (symbolic links followed) leads to the directory `dir`:
/// `Some(false)` where it leads to another file or to none (ENOENT,
/// ENOTDIR: moved or removed), `None` where that cannot be told (a file
/// system gone dead: ENOTCONN, ESTALE). Each caller decides what an
/// unknown answer means for it.
pub(crate) fn path_leads_to(path: &std::path::Path, dir: &OwnedFd) -> Option<bool> {
    let identity = |stat: rustix::fs::Stat| (stat.st_dev, stat.st_ino);
    let held = rustix::fs::fstat(dir).ok()?;
    match rustix::fs::stat(path) {
        Ok(named) => Some(identity(named) == identity(held)),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Some(false),
        Err(_) => None,
    }
}

/// What to do about an error of the destination file system that every
/// file after this one would meet too, so it stops the run (CONVENTIONS.md);
/// `None` for an error of one file.
pub(crate) fn run_stopping_hint(raw_os_error: Option<i32>) -> Option<&'static str> {
    match raw_os_error? {
        // Not "to resume": exit 1 removes partial files (CONVENTIONS.md),
        // which frees their space; only finished files are kept.
        libc::ENOSPC | libc::EROFS | libc::EDQUOT => {
            Some("; free space (or make the file system writable), then run the same command again")
        }
        // The file system is gone: ENOTCONN from a FUSE file system whose
        // daemon died, ESHUTDOWN. h42 #12 saw 22 objects fetched after
        // that (egress B2 bills) only to fail, with 111 lines saying so.
        // Not EIO: a FUSE or network file system answers one object's
        // failure with it, and stopping the run at that file made reruns
        // stop there too, restoring nothing more (h46 #7). (An XFS
        // shutdown, EIO for everything, fails file by file; telling it
        // apart needs a probe of the file system.)
        libc::ENOTCONN | libc::ESHUTDOWN => Some(
            "; the destination file system failed or is gone (see the kernel log, dmesg): \
             repair or remount it, then run the same command again",
        ),
        // The kernel's answer when io_uring cannot start a worker thread
        // for a write (a cgroup's pids.max, RLIMIT_NPROC): without the hint
        // it read "Operation canceled" on hundreds of files.
        libc::ECANCELED => Some(
            "; io_uring could not start a worker thread for the write: raise the process's \
             thread limit (the cgroup's pids.max, ulimit -u), then run the same command again",
        ),
        _ => None,
    }
}

/// What to do about an error of one file's write that is no reason to
/// stop the run (`run_stopping_hint`), where there is something to say.
pub(crate) fn one_file_hint(raw_os_error: Option<i32>) -> Option<&'static str> {
    match raw_os_error? {
        // RLIMIT_FSIZE (SIGXFSZ is ignored), or the file system's largest file.
        libc::EFBIG => Some(
            "; the file passed the size this process may write (ulimit -f, RLIMIT_FSIZE) or \
             the largest file its file system takes: raise the limit, or give a DEST on \
             another file system",
        ),
        _ => None,
    }
}

/// A file or directory that cannot be created or named: run-fatal when
/// the next would fail the same way (`run_stopping_hint`), else an error
/// of this file.
pub(crate) fn file_system_error(context: String, error: rustix::io::Errno) -> Error {
    match run_stopping_hint(Some(error.raw_os_error())) {
        Some(hint) => Error::Fatal(format!("{context}: {}{hint}", std::io::Error::from(error))),
        None => Error::io(context, error.into()),
    }
}

/// Gives `file`, about to be renamed over `name` in `dir`, the permissions
/// of the regular file there, as `cp` over an existing file keeps them:
/// a 0600 key restored over became 0644, readable by every local user, and
/// a 0755 script lost its execute bits (h42 #6, h43 #5). Without set-id
/// bits. As root, its owner and group too (a user's file restored by root
/// stays the user's), unless the directory is sticky and the file is
/// neither the directory owner's nor ours: in `/tmp` or a shared drop
/// directory, whoever planted a file at the name first was handed root's
/// verified file, free to rewrite it (h46 #6). A file this run does not
/// give its owner's, owned by another: no write bits for others, so a
/// planted 0666 file hands out nothing. Nothing there, or anything else:
/// the mode the file was made with.
pub(crate) fn keep_permissions_of(file: &OwnedFd, dir: &OwnedFd, name: &std::ffi::OsStr) {
    let Ok(old) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return;
    };
    if rustix::fs::FileType::from_raw_mode(old.st_mode) != rustix::fs::FileType::RegularFile {
        return;
    }
    let Ok(dir_stat) = rustix::fs::fstat(dir) else {
        return;
    };
    let euid = rustix::process::geteuid();
    let sticky = dir_stat.st_mode & libc::S_ISVTX != 0;
    let owner_kept = euid.is_root() && (!sticky || old.st_uid == dir_stat.st_uid);
    // Another's file whose owner is not kept: its permissions are not
    // trusted to hand out writes, nor is its ACL (whose `other` entry
    // would give back the bits taken here).
    let trusted = owner_kept || old.st_uid == euid.as_raw();
    let mut mode = old.st_mode & 0o777;
    if !trusted {
        mode &= !0o022;
    }
    if owner_kept {
        let owner = rustix::process::Uid::from_raw(old.st_uid);
        let group = rustix::process::Gid::from_raw(old.st_gid);
        let _ = rustix::fs::fchown(file, Some(owner), Some(group));
    }
    // (After the chown, which clears set-id bits: there are none here.)
    let _ = rustix::fs::fchmod(file, Mode::from_raw_mode(mode));
    if trusted {
        copy_access_acl(file, dir, name);
    }
}

/// The POSIX ACL of the file at `name` in `dir`, if it has one, given to
/// `file` too. With an ACL, a file's group bits are its mask, not its
/// group's rights: the mode alone granted the group what the ACL denied it
/// (h46 #3).
fn copy_access_acl(file: &OwnedFd, dir: &OwnedFd, name: &std::ffi::OsStr) {
    use std::os::fd::AsRawFd;
    const ACL: &str = "system.posix_acl_access";
    let mut path = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    let mut acl = [0u8; crate::config::ACL_MAX_BYTES];
    if let Ok(length) = rustix::fs::lgetxattr(&path, ACL, &mut acl[..]) {
        let _ = rustix::fs::fsetxattr(file, ACL, &acl[..length], rustix::fs::XattrFlags::empty());
    }
}

/// Narrows `file`'s mode to the regular file at `name` in `dir`, if one
/// is there: a partial file that will replace it is no more readable than
/// it while it downloads. Its owner comes at the end
/// (`keep_permissions_of`): given now, the owner could rewrite bytes
/// already hashed.
pub(crate) fn narrow_mode_to(file: &OwnedFd, dir: &OwnedFd, name: &std::ffi::OsStr) {
    let Ok(old) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return;
    };
    let Ok(now) = rustix::fs::fstat(file) else {
        return;
    };
    if rustix::fs::FileType::from_raw_mode(old.st_mode) == rustix::fs::FileType::RegularFile {
        let narrowed = now.st_mode & old.st_mode & 0o777;
        let _ = rustix::fs::fchmod(file, Mode::from_raw_mode(narrowed));
    }
}

/// Access and modification time both at `mtime_ms` (B2's
/// `src_last_modified_millis`), for `futimens`/`utimensat`.
pub(crate) fn timestamps_at(mtime_ms: i64) -> Timestamps {
    // Before 1970 too: -1 ms is 1 ms short of the epoch, (-1 s, 999 ms),
    // as `timespec` counts (its nanoseconds are never negative).
    let when = rustix::fs::Timespec {
        tv_sec: mtime_ms.div_euclid(1000),
        tv_nsec: (mtime_ms.rem_euclid(1000) * 1_000_000) as _,
    };
    Timestamps {
        last_access: when,
        last_modification: when,
    }
}

/// Creates the temporary file (never following a symlink), pre-allocated:
/// `name` in `dir`, or (`None`) an unnamed one there (`O_TMPFILE`), which
/// a crash or a failure leaves nothing of (restore names it once verified:
/// `Target::publish`).
/// `mode` is the object's, from `DirectIo::for_object`. Returns whether
/// O_DIRECT is on. `display_path` is the final path, named
/// in errors (the temporary name means nothing to the user).
pub(crate) fn create_temp(
    dir: &OwnedFd,
    name: Option<&str>,
    display_path: &str,
    size_bytes: u64,
    mode: DirectIo,
) -> Result<(OwnedFd, bool)> {
    let flags = match name {
        Some(_) => {
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW
        }
        None => OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
    };
    let unlink = || {
        if let Some(name) = name {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
        }
    };
    let shown = name.unwrap_or("an unnamed file");
    // `mode` comes from `DirectIo::for_object`, which decided `auto` by size;
    // `auto` still falls back when the file system's alignment does not suit.
    let want_direct = mode != DirectIo::Off;
    let open = |flags: OFlags| {
        rustix::fs::openat(dir, name.unwrap_or("."), flags, Mode::from_raw_mode(0o644))
    };
    let (file, direct) = if want_direct {
        match open(flags | OFlags::DIRECT) {
            Ok(file) if mode == DirectIo::On || direct_io_alignment_ok(&file) => (file, true),
            Ok(file) => {
                // The filesystem's O_DIRECT alignment does not suit our buffers.
                rustix::fs::fcntl_setfl(&file, OFlags::empty())
                    .map_err(|error| Error::io("clearing O_DIRECT", error.into()))?;
                (file, false)
            }
            Err(rustix::io::Errno::INVAL) if mode == DirectIo::Auto => {
                // No O_DIRECT here (tmpfs before Linux 6.6, some FUSE file
                // systems). The kernel refuses the flag only after creating
                // the file, so the name may be ours already: O_EXCL said
                // nobody else's file was there (that would be EEXIST, not EINVAL).
                let reopened = match open(flags) {
                    Err(rustix::io::Errno::EXIST) if name.is_some() => {
                        open(flags - OFlags::CREATE - OFlags::EXCL)
                    }
                    other => other,
                };
                let file = reopened.map_err(|error| {
                    file_system_error(format!("creating {shown} for {display_path}"), error)
                })?;
                (file, false)
            }
            Err(rustix::io::Errno::INVAL) => {
                // `on` insists, and this file system takes no O_DIRECT. The
                // kernel refuses the flag after creating the file, which
                // O_EXCL made ours: it goes. Every file would fail alike,
                // so the run stops here, saying what to change.
                unlink();
                return Err(Error::Fatal(format!(
                    "{display_path}: the destination file system does not take O_DIRECT \
                     (EINVAL on open): use --direct-io auto (O_DIRECT where it is taken) or off"
                )));
            }
            Err(error) => {
                return Err(file_system_error(
                    format!("creating {shown} with O_DIRECT for {display_path}"),
                    error,
                ));
            }
        }
    } else {
        (
            open(flags).map_err(|error| {
                file_system_error(format!("creating {shown} for {display_path}"), error)
            })?,
            false,
        )
    };
    if size_bytes >= crate::config::PREALLOCATE_MIN_BYTES {
        if let Err(error) = rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, size_bytes) {
            // Filesystems without fallocate still work (ENOSPC then arrives
            // mid-file), with the file kept: it is the one we write.
            if error == rustix::io::Errno::OPNOTSUPP {
                return Ok((file, direct));
            }
            unlink();
            if error == rustix::io::Errno::NOSPC {
                return Err(Error::Fatal(format!(
                    "{display_path}: no space for {size_bytes} bytes in the destination filesystem (ENOSPC: No space left on device)"
                )));
            }
            // EINVAL/EFBIG: larger than a file can be (a hostile or broken
            // origin announcing an exabyte): say what size was asked for.
            return Err(Error::io(
                format!(
                    "pre-allocating {display_path}: {size_bytes} bytes (the announced object size)"
                ),
                error.into(),
            ));
        }
    }
    Ok((file, direct))
}

/// `statx(STATX_DIOALIGN)`: O_DIRECT is used when the filesystem's alignment
/// divides the buffer alignment (unknown alignment: trust the open).
fn direct_io_alignment_ok(file: &OwnedFd) -> bool {
    match rustix::fs::statx(
        file,
        "",
        AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::DIOALIGN,
    ) {
        Ok(stat) if stat.stx_mask & rustix::fs::StatxFlags::DIOALIGN.bits() != 0 => {
            let mem = stat.stx_dio_mem_align as usize;
            let offset = stat.stx_dio_offset_align as usize;
            mem != 0
                && offset != 0
                && DIRECT_IO_ALIGN_BYTES % mem == 0
                && DIRECT_IO_ALIGN_BYTES % offset == 0
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replaced file's ACL comes with its mode (h46 #3): its group bits
    /// are the ACL's mask, and alone they granted the group what the ACL
    /// denied it.
    #[test]
    fn a_replaced_files_acl_is_kept_with_its_mode() {
        const ACL: &str = "system.posix_acl_access";
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::write(&old, b"old").unwrap();
        std::fs::write(&new, b"new").unwrap();
        // user::rw- user:65534:r-- group::--- mask::r-- other::---
        let mut acl = 2u32.to_le_bytes().to_vec();
        let entries = [
            (1u16, 6u16, u32::MAX),
            (2, 4, 65534),
            (4, 0, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ];
        for (tag, perm, id) in entries {
            acl.extend(tag.to_le_bytes());
            acl.extend(perm.to_le_bytes());
            acl.extend(id.to_le_bytes());
        }
        if rustix::fs::setxattr(&old, ACL, &acl, rustix::fs::XattrFlags::empty()).is_err() {
            eprintln!("skipped: no POSIX ACLs on {}", dir.path().display());
            return;
        }
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let dir_fd = rustix::fs::open(dir.path(), flags, Mode::empty()).unwrap();
        let file = rustix::fs::open(&new, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap();
        keep_permissions_of(&file, &dir_fd, std::ffi::OsStr::new("old"));
        let mut copied = [0u8; 256];
        let length = rustix::fs::getxattr(&new, ACL, &mut copied[..]).unwrap();
        assert_eq!(&copied[..length], &acl[..]);
    }

    #[test]
    fn timestamps_before_1970_count_back_from_the_epoch() {
        let at = |mtime_ms| {
            let when = timestamps_at(mtime_ms).last_modification;
            (when.tv_sec, when.tv_nsec)
        };
        assert_eq!(at(1_600_000_000_123), (1_600_000_000, 123_000_000));
        assert_eq!(at(0), (0, 0));
        assert_eq!(at(-1), (-1, 999_000_000));
        assert_eq!(at(-86_400_000), (-86_400, 0));
        assert_eq!(at(-1_500), (-2, 500_000_000));
    }

    #[test]
    fn direct_io_auto_uses_o_direct_from_one_mib_up() {
        let min = DIRECT_IO_MIN_OBJECT_BYTES;
        assert_eq!(DirectIo::Auto.for_object(0), DirectIo::Off);
        assert_eq!(DirectIo::Auto.for_object(min - 1), DirectIo::Off);
        assert_eq!(DirectIo::Auto.for_object(min), DirectIo::Auto);
        assert_eq!(DirectIo::Auto.for_object(u64::MAX), DirectIo::Auto);
        for mode in [DirectIo::On, DirectIo::Off] {
            assert_eq!(mode.for_object(1), mode);
            assert_eq!(mode.for_object(u64::MAX), mode);
        }
    }
}

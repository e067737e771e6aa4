//! Flags and environment → configuration. No I/O beyond reading the
//! environment and checking that output files can be written; the commands
//! themselves live in the library.

pub mod demo;
pub mod get;
pub mod restore;
mod summary;
mod ticker;

use clap::{Parser, Subcommand};

use crate::error::Result;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    some object failed, was refused, or was unverified under --require-verified
       (restore --dry-run: a real run would fail or refuse some name)
  2    usage or configuration error (caught before any network I/O)
  3    authentication or TLS trust failure, a proxy refusing the tunnel (4xx), an
       application key not allowed to do this (bucket, name prefix, capability), or a
       plain URL refused with 401/403 (an expired presigned URL)
  4    io_uring unavailable (seccomp profile, kernel.io_uring_disabled, old kernel)
  130  interrupted by SIGINT, 143 by SIGTERM, 129 by SIGHUP
  134  internal error (a bug): aborted, partial files and journals kept

Proxies: https_proxy / http_proxy / all_proxy (http://[user:pass@]host[:port]) and
no_proxy are honoured through CONNECT tunnels; loopback is never proxied.";

#[derive(Debug, Parser)]
#[command(name = "ringdown", version, about = "Restore data from Backblaze B2 and HTTP origins onto Linux servers, fast and verified", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a directory as a B2-compatible origin (for tests, demos and benchmarks).
    Serve(crate::server::ServeArgs),
    /// Download one object (b2://BUCKET/NAME or an http(s) URL) to a file, verified.
    Get(get::GetArgs),
    /// Restore a bucket or folder (b2://BUCKET[/PREFIX]) into a directory, verified and resumable.
    Restore(restore::RestoreArgs),
    /// Generate a bucket, serve it locally over TLS, restore it and verify it (no network needed).
    Demo(demo::DemoArgs),
}

/// An output file given with `flag` (`--stats-json`) must be writable
/// before the run starts (exit 2), not found unwritable at its end, after
/// the work is done. Nothing is created here; a file in `created_dir`, the
/// directory the run itself creates (restore's DIR), is taken on trust.
///
/// A FIFO (or any file that is not a regular one) is opened without
/// blocking, and returned to be written at the end: a FIFO nobody reads
/// held the run in `open` before its download, forever (h43 #15g), and a
/// FIFO's reader takes the last writer's close for the end of the data.
fn check_output_file(
    flag: &str,
    path: &std::path::Path,
    created_dir: Option<&std::path::Path>,
) -> Result<Option<std::fs::File>> {
    use crate::error::Error;
    let unusable = |why: String| Err(Error::Usage(format!("{flag} {}: {why}", path.display())));
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return unusable("is a directory".into()),
        Ok(meta) => {
            return match open_output(path, false) {
                Ok(_) if meta.is_file() => Ok(None),
                Ok(file) => Ok(Some(file)),
                Err(error) => unusable(unwritable_output(&error)),
            };
        }
        Err(_) => {}
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        // DIR itself, however spelled (`out`, `./out/`, `$PWD/out`): the run
        // makes it. Only DIR: deeper directories it does not make.
        let lexically_absolute = |path: &std::path::Path| {
            std::path::absolute(path)
                .ok()
                .map(|absolute| absolute.components().collect::<std::path::PathBuf>())
        };
        if created_dir.is_some_and(|dir| lexically_absolute(dir) == lexically_absolute(parent)) {
            return Ok(None);
        }
        return unusable(format!("its directory {} does not exist", parent.display()));
    }
    if rustix::fs::access(parent, rustix::fs::Access::WRITE_OK).is_err() {
        return unusable(format!(
            "its directory {} is not writable",
            parent.display()
        ));
    }
    Ok(None)
}

/// Opens an output file for writing (`create`: made if missing, and
/// emptied) without waiting for a FIFO's reader: none is ENXIO. The file
/// returned blocks as usual, so that a slow reader gets every byte.
fn open_output(path: &std::path::Path, create: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(create)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

/// Why an output file could not be opened, with what to do.
fn unwritable_output(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENXIO) => "is a FIFO that no process reads: start its reader first".into(),
        _ => format!("cannot be written ({error})"),
    }
}

/// A file's (st_dev, st_ino), its symlink not followed; `None` if nothing
/// is there.
fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path).ok()?;
    Some((metadata.dev(), metadata.ino()))
}

impl Command {
    /// What to do after a bug stopped this command (the panic hook's advice).
    pub fn after_a_bug(&self) -> &'static str {
        match self {
            Command::Get(_) | Command::Restore(_) => {
                "Rerunning the same command resumes what its journal kept."
            }
            Command::Serve(_) => "The origin stopped; start it again.",
            Command::Demo(_) => "The demo's temporary directory may be left behind.",
        }
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve(args) => crate::server::run(args).map(|()| 0),
        Command::Get(args) => get::run(args),
        Command::Restore(args) => restore::run(args),
        Command::Demo(args) => demo::run(args),
    }
}

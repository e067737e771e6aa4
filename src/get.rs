//! `ringdown get`: one object to one file, verified. Also the library API
//! (`Download`) a Rust program uses to do the same.
//!
//! Order of operations per object: probe metadata → temporary file beside
//! DEST (`.ringdown-<16 hex>.part`, pre-allocated) → engine → cut the O_DIRECT
//! padding → compare SHA1 → mtime → rename to DEST. A wrong or partial file
//! never appears under DEST.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags};

#[cfg(test)]
use crate::b2::CustomerKey;
use crate::b2::{ExpectedSha1, FileAction, KeyChoice, Keyring};
use crate::client::b2_api::{Authorizer, denied, describe_error, refusal};
use crate::client::url::Url;
use crate::client::{ApiRetry, conn::Origin, exchange, resolve};
use crate::config::{
    API_BODY_MAX_BYTES, JOURNAL_LOCK_TRIES_MAX, OBJECT_REDOWNLOADS_ON_MISMATCH, URL_REDIRECTS_MAX,
};
pub use crate::dest::DirectIo;
use crate::dest::{create_temp, reopen_partial, timestamps_at, writes_direct};
use crate::engine::failpoint::{self, Site};
use crate::engine::{self, EngineConfig, ObjectSource, Progress, Validator};
use crate::error::{Error, Result};
use crate::http;
use crate::stats::RunSummary;
use crate::uring;
use crate::verify::to_hex;

/// Where an object comes from.
#[derive(Clone)]
pub enum Source {
    /// `b2://BUCKET/NAME`.
    B2 { bucket: String, name: String },
    /// `b2id://FILEID`: one version of a file, by the ID B2 gave it (as the
    /// b2 CLI names it; `b2 ls --versions --long` shows them).
    B2Id { file_id: String },
    /// `http(s)://…`: ranged GETs, or one whole GET if the origin ignores Range.
    Url(String),
}

/// A plain URL may carry a token in its query (`?Authorization=…`): never printed.
impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::B2 { bucket, name } => f
                .debug_struct("B2")
                .field("bucket", bucket)
                .field("name", name)
                .finish(),
            Source::B2Id { file_id } => f.debug_struct("B2Id").field("file_id", file_id).finish(),
            Source::Url(url) => {
                let shown = Url::parse(url)
                    .map(|url| url.display_without_query())
                    .unwrap_or_else(|_| "<unparsable URL>".to_string());
                f.debug_tuple("Url").field(&shown).finish()
            }
        }
    }
}

impl Source {
    pub fn parse(text: &str) -> Result<Source> {
        if let Some(rest) = text.strip_prefix("b2://") {
            let (bucket, name) = rest
                .split_once('/')
                .filter(|(bucket, name)| !bucket.is_empty() && !name.is_empty())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{text:?}: expected b2://BUCKET/NAME (to restore a whole bucket or folder, use `ringdown restore`)"
                    ))
                })?;
            // A folder, or at most an empty folder marker (`dir/`, which
            // some tools upload and restore skips too; b2-api.md §7).
            if name.ends_with('/') {
                return Err(Error::Usage(format!(
                    "{text:?} ends in '/': ringdown takes it for a folder (an object of such a \
                     name is at most an empty folder marker); to restore a folder, use \
                     `ringdown restore {text} DIR`"
                )));
            }
            return Ok(Source::B2 {
                bucket: bucket.into(),
                name: name.into(),
            });
        }
        if let Some(file_id) = text.strip_prefix("b2id://") {
            // IDs are ASCII letters, digits, `_` and `-`; anything else is a
            // typo (or a path) that B2 would only refuse later.
            let plausible = !file_id.is_empty()
                && file_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !plausible {
                return Err(Error::Usage(format!(
                    "{text:?}: expected b2id://FILEID (letters, digits, _ and -, as `b2 ls --versions --long` prints them)"
                )));
            }
            return Ok(Source::B2Id {
                file_id: file_id.into(),
            });
        }
        Url::parse(text).map_err(|why| {
            // `get DEST SOURCE`: the source given second.
            let hint = if text.contains("://") {
                ""
            } else {
                " (a source is b2://BUCKET/NAME, b2id://FILEID or an http(s) URL, given before DEST)"
            };
            Error::Usage(format!("{why}{hint}"))
        })?;
        Ok(Source::Url(text.into()))
    }

    /// The object's base name, for a DEST that is a directory.
    pub fn base_name(&self) -> Option<String> {
        match self {
            Source::B2 { name, .. } => name
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            Source::Url(url) => Url::parse(url).ok()?.base_name(),
            // Known only once B2 is asked: DEST must name the file.
            Source::B2Id { .. } => None,
        }
    }

    /// A B2 source (credentials needed), by name or by ID.
    pub fn is_b2(&self) -> bool {
        matches!(self, Source::B2 { .. } | Source::B2Id { .. })
    }
}

/// Everything a download needs, resolved from flags and environment.
/// `Debug` is written by hand: the application key is redacted.
#[derive(Clone)]
pub struct DownloadOptions {
    pub engine: EngineConfig,
    pub realm: String,
    pub key_id: Option<String>,
    pub key: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub force: bool,
    pub fsync: bool,
    pub direct_io: DirectIo,
    /// Expected SHA1 for plain URLs (`--sha1`).
    pub sha1: Option<[u8; 20]>,
    pub require_verified: bool,
    /// `--as-of` (b2:// only): the version current at this instant (ms since
    /// the epoch), found with `b2_list_file_versions`.
    pub as_of_ms: Option<u64>,
    /// b2:// only: the SSE-C keys given; the object's requests carry the
    /// one B2 opens it with (see `Keyring`).
    pub sse_c_keys: Option<Arc<Keyring>>,
    /// No notes on stderr while the download runs (`--quiet`); errors, and
    /// the note that an interrupted run kept what resumes, still are.
    pub quiet: bool,
}

impl DownloadOptions {
    /// `ringdown get`'s defaults with these credentials: `realm` is
    /// `production`, `staging`, `dev` or a URL; every other field can be
    /// changed before the run.
    pub fn new(
        realm: impl Into<String>,
        key_id: impl Into<String>,
        key: impl Into<String>,
    ) -> DownloadOptions {
        DownloadOptions {
            engine: EngineConfig::defaults(false),
            realm: realm.into(),
            key_id: Some(key_id.into()),
            key: Some(key.into()),
            ca_file: None,
            force: false,
            fsync: false,
            direct_io: DirectIo::Auto,
            sha1: None,
            quiet: false,
            require_verified: false,
            as_of_ms: None,
            sse_c_keys: None,
        }
    }
}

impl std::fmt::Debug for DownloadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadOptions")
            .field("engine", &self.engine)
            .field("realm", &self.realm)
            .field("key_id", &self.key_id)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("force", &self.force)
            .field("fsync", &self.fsync)
            .field("direct_io", &self.direct_io)
            .field("sha1", &self.sha1.as_ref().map(|sha1| to_hex(sha1)))
            .field("require_verified", &self.require_verified)
            .field("quiet", &self.quiet)
            .field("as_of_ms", &self.as_of_ms)
            .field("sse_c_keys", &self.sse_c_keys)
            .finish()
    }
}

/// How the object was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The digest matched the published SHA1.
    Verified,
    /// Matched, but the published digest is client-supplied (`unverified:`).
    VerifiedUnverifiedPrefix,
    /// No digest was published; the bytes are as received.
    NotVerified { why: String },
}

/// Whether `name` has the form of a file a run keeps beside DEST
/// (`ResumeFiles::names_for`: `.ringdown-<16 hex>.part` or `.journal`);
/// other names starting with `.ringdown-` are anyone's (h46 #8d).
pub(crate) fn is_kept_beside_dest(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b".ringdown-") else {
        return false;
    };
    let (hex, suffix) = rest.split_at(rest.len().min(16));
    hex.len() == 16
        && hex.iter().all(|byte| byte.is_ascii_hexdigit())
        && (suffix == b".part" || suffix == b".journal")
}

/// Whether `name` is one plain file name, fit to join beneath a directory;
/// if not, why.
fn plain_file_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("is not a file name");
    }
    if name.contains('/') {
        return Err("holds a '/' (percent-encoded in the URL)");
    }
    if name.chars().any(char::is_control) {
        return Err("holds a NUL or control character");
    }
    // The names of what a run keeps beside DEST: this one would be put
    // over another run's partial file (h43 #8).
    if is_kept_beside_dest(name.as_bytes()) {
        return Err("is the name of a file ringdown keeps beside a download");
    }
    Ok(())
}

/// What a finished download reports.
#[derive(Debug)]
pub struct DownloadReport {
    pub dest: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
    pub sha1_hex: String,
    pub verification: Verification,
    pub summary: RunSummary,
    pub notices: Vec<String>,
}

/// Metadata of the object, from one probe request.
struct ObjectMeta {
    size_bytes: u64,
    expected: ExpectedSha1,
    mtime_ms: Option<i64>,
    source: ObjectSource,
    /// How the origin answers `Range` (B2 with 206s framed by length; a
    /// plain URL told us in its probe).
    ranges: RangeAnswers,
    /// `size_bytes` is the object's size. Not so for a plain URL whose
    /// origin ignores Range and sends no Content-Length (a chunked body,
    /// or one delimited by the close): its size is known at its end
    /// (`engine::stream`), and `size_bytes` is 0.
    length_known: bool,
    /// What the summary should mention (redirects followed).
    notices: Vec<String>,
}

/// The library entry point: `Download::new(source, dest, options).run()`.
pub struct Download {
    pub source: Source,
    pub dest: PathBuf,
    pub options: DownloadOptions,
    pub progress: Arc<Progress>,
}

impl Download {
    pub fn new(source: Source, dest: PathBuf, options: DownloadOptions) -> Download {
        Download {
            source,
            dest,
            options,
            progress: Arc::new(Progress::default()),
        }
    }

    /// Checks everything that needs no network (exit code 2 on failure) and
    /// returns the final path.
    pub fn resolve_dest(&self) -> Result<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        if self.dest.as_os_str().is_empty() {
            return Err(Error::Usage(
                "DEST is empty: give the file's path or an existing directory".into(),
            ));
        }
        // curl's and wget's stdout; here it made a file named `-` (h43 #15i).
        if self.dest.as_os_str() == "-" {
            return Err(Error::Usage(
                "DEST '-': ringdown writes a file, never stdout (it renames the verified \
                 download into place); give a path (./- for a file named '-')"
                    .into(),
            ));
        }
        // `Path` drops a last `.` (`out/new/.` is `out/new` to it), so a
        // DEST naming a directory that does not exist would be taken as a
        // file of that name.
        let spelled = self.dest.as_os_str().as_bytes();
        let names_a_directory = spelled.ends_with(b"/") || spelled.ends_with(b"/.");
        if names_a_directory && !self.dest.is_dir() {
            let end = if spelled.ends_with(b"/") { "/" } else { "/." };
            let bare = Path::new(std::ffi::OsStr::from_bytes(
                &spelled[..spelled.len() - end.len()],
            ));
            let there = match bare.as_os_str().is_empty() {
                true => None,
                false => Some(std::fs::symlink_metadata(bare)),
            };
            return Err(Error::Usage(match there {
                Some(Ok(meta)) => format!(
                    "DEST {} names a directory (it ends in '{end}'), but {} is {}",
                    self.dest.display(),
                    bare.display(),
                    file_kind(&meta)
                ),
                Some(Err(error)) if !is_missing(bare, &error) => format!(
                    "DEST {} names a directory (it ends in '{end}'), and it {}",
                    self.dest.display(),
                    unreachable_dir(bare, &error)
                ),
                _ => format!(
                    "DEST {} names a directory (it ends in '{end}'), and there is none; create it first",
                    self.dest.display()
                ),
            }));
        }
        let dest = if self.dest.is_dir() {
            // A download into this very name, kept when a directory took
            // it: `--force` (as told) went into the directory instead, and
            // the kept files stayed beside it for good (h43 #15c).
            if let Some(kept) = kept_for(&self.dest) {
                let kept = kept.display();
                return Err(Error::Usage(format!(
                    "{} is a directory, and beside it ringdown keeps {kept} and its journal, \
                     from a download into that name when the directory took it: remove the \
                     directory and run that download again to resume it, or remove {kept} and \
                     its journal to download into the directory",
                    self.dest.display()
                )));
            }
            let base = self.source.base_name().ok_or_else(|| {
                Error::Usage(match self.source {
                    Source::B2Id { .. } => format!(
                        "{} is a directory: with a b2id:// source, give DEST as the file's path",
                        self.dest.display()
                    ),
                    _ => format!(
                        "{} is a directory and the source has no file name to append",
                        self.dest.display()
                    ),
                })
            })?;
            // One plain name beneath DEST: a URL's `%2F` decodes to a
            // slash, and `..%2F..%2Fx` or `%2Fetc%2Fx` would join to a path
            // outside it (an absolute one replaces DEST altogether).
            if let Err(why) = plain_file_name(&base) {
                return Err(Error::Usage(format!(
                    "the source's file name {base:?} {why}, so it cannot be appended to {}: \
                     give DEST as the file's path",
                    self.dest.display()
                )));
            }
            self.dest.join(base)
        } else {
            self.dest.clone()
        };
        if dest.file_name().is_none() {
            return Err(Error::Usage(format!(
                "DEST {} names no file (it ends in '..') and is no existing directory: \
                 give the file's path",
                dest.display()
            )));
        }
        let parent = parent_dir(&dest);
        if !parent.is_dir() {
            return Err(Error::Usage(match std::fs::metadata(&parent) {
                Ok(meta) => format!(
                    "the directory of DEST, {}, is {}, not a directory",
                    parent.display(),
                    file_kind(&meta)
                ),
                Err(error) if is_missing(&parent, &error) => format!(
                    "the directory of DEST, {}, does not exist; create it first",
                    parent.display()
                ),
                Err(error) => format!(
                    "the directory of DEST, {}, {}",
                    parent.display(),
                    unreachable_dir(&parent, &error)
                ),
            }));
        }
        // Another run's partial file or journal: replaced under it (h43 #8).
        if dest
            .file_name()
            .is_some_and(|name| is_kept_beside_dest(name.as_encoded_bytes()))
        {
            return Err(Error::Usage(format!(
                "DEST {} is named like a file ringdown keeps beside a download (.ringdown-…); \
                 give another name",
                dest.display()
            )));
        }
        // Found at the rename, the whole object fetched in vain (h43 #4).
        let name_bytes = dest.file_name().map_or(0, |name| name.len());
        if name_bytes > crate::config::NAME_SEGMENT_MAX_BYTES {
            return Err(Error::Usage(format!(
                "DEST's file name is {name_bytes} bytes, past the {} a file name may have: \
                 give DEST as a file's path with a shorter name",
                crate::config::NAME_SEGMENT_MAX_BYTES
            )));
        }
        if let Err(error) = rustix::fs::access(&parent, rustix::fs::Access::WRITE_OK) {
            return Err(Error::Usage(format!(
                "the directory of DEST, {}, is not writable ({})",
                parent.display(),
                std::io::Error::from(error)
            )));
        }
        // `/dev/stdout` is a link into /proc, to a regular file when
        // stdout is redirected to one: `--force` replaced the system's
        // link with a file (h43 #3). Nothing in /dev, /proc or /sys is a
        // download's place.
        // By file system, not by path: a tmpfs at /dev/shm is a place for
        // files like any other (h46).
        let device = |path: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).ok().map(|meta| meta.dev())
        };
        let system_dir = device(&parent).is_some_and(|here| {
            ["/dev", "/proc", "/sys"]
                .iter()
                .any(|system| device(Path::new(system)) == Some(here))
        });
        if system_dir {
            return Err(Error::Usage(format!(
                "DEST {} is on the system's /dev, /proc or /sys: ringdown writes regular \
                 files, renamed into place; give a path elsewhere",
                dest.display()
            )));
        }
        let there = std::fs::symlink_metadata(&dest);
        // A symbolic link to a device, FIFO or socket (`/dev/stdout`, a
        // link to `/dev/null`): the rename would replace the link, and as
        // root `/dev/stdout` became a file for every program (h43 #3).
        let linked_node = match &there {
            Ok(meta) if meta.is_symlink() => std::fs::metadata(&dest).ok(),
            _ => None,
        };
        if let Some(target) = linked_node.filter(|target| !target.is_file()) {
            return Err(Error::Usage(format!(
                "{} is a symbolic link to {}: ringdown writes regular files, and would replace \
                 the link (even with --force, it does not); give a regular file's path",
                dest.display(),
                file_kind(&target)
            )));
        }
        match there {
            Ok(meta) if meta.is_dir() => {
                return Err(Error::Usage(format!("{} is a directory", dest.display())));
            }
            // A device, FIFO or socket: the download is renamed over DEST,
            // which would replace the node itself (`/dev/null` with a file).
            Ok(meta) if !meta.is_file() && !meta.is_symlink() => {
                return Err(Error::Usage(format!(
                    "{} is {}: ringdown puts a verified download in place by renaming it over \
                     DEST, which would replace it (even with --force, it does not); give a \
                     regular file's path",
                    dest.display(),
                    file_kind(&meta)
                )));
            }
            Ok(meta) if !self.options.force => {
                if let Some(file_name) = dest.file_name() {
                    ResumeFiles::remove_orphan_journal(&parent, file_name);
                }
                let link = match meta.is_symlink() {
                    true => " (a symbolic link: --force replaces the link, not what it points to)",
                    false => "",
                };
                return Err(Error::Usage(format!(
                    "{} exists{link}; pass --force to replace it",
                    dest.display()
                )));
            }
            // What the rename at the end could not replace, found before the
            // whole object was fetched in vain (h43 #4).
            Ok(_) => {
                if let Some(why) = unreplaceable_file(&dest) {
                    return Err(Error::Usage(format!(
                        "{} {why}: the verified download could not be renamed over it, even \
                         with --force; give another DEST",
                        dest.display()
                    )));
                }
            }
            Err(_) => {}
        }
        if let Some(ca) = &self.options.ca_file {
            crate::tls::check_ca_file(ca)?;
        }
        if matches!(self.source, Source::Url(_)) && self.options.sse_c_keys.is_some() {
            return Err(Error::Usage(
                "--sse-c-key-file needs a b2://BUCKET/NAME source: SSE-C headers are B2's, and this is a plain URL"
                    .into(),
            ));
        }
        if self.source.is_b2() && (self.options.key_id.is_none() || self.options.key.is_none()) {
            return Err(Error::Usage(
                "no B2 credentials: set B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY".into(),
            ));
        }
        Ok(dest)
    }

    /// Downloads the object to DEST. It blocks its thread until the run
    /// ends. From async code, call it through `tokio::task::spawn_blocking`:
    /// called on a runtime's worker it works (on a thread of its own) but
    /// holds that worker meanwhile.
    pub fn run(&self) -> Result<DownloadReport> {
        self.run_with_summary().0
    }

    /// `run`, and the summary of what the run did whether or not it
    /// succeeded: a failed or interrupted run's retries and stage
    /// histograms tell where its time went (`--stats-json` writes them).
    pub fn run_with_summary(&self) -> (Result<DownloadReport>, RunSummary) {
        let started = Instant::now();
        let mut summary = RunSummary {
            command: "get".into(),
            ..RunSummary::default()
        };
        let result = crate::runtime::outside_tokio(|| self.run_counted(&mut summary))
            .unwrap_or_else(|error| Err(Error::io("starting the run's thread", error)));
        match &result {
            Ok(report) => summary = report.summary.clone(),
            Err(_) => {
                // What it fetched before it ended (no file was restored).
                summary.bytes = self.progress.bytes_done.load(Ordering::Relaxed);
                summary.seconds = started.elapsed().as_secs_f64();
                summary.failed = 1;
            }
        }
        (result, summary)
    }

    /// The download; `summary` gathers retries and histograms round by round.
    ///
    /// Where the origin's answers dispute the size its probe gave (the same
    /// version, another size), the probe was as likely wrong as they are:
    /// the object is probed again and fetched anew, once.
    fn run_counted(&self, summary: &mut RunSummary) -> Result<DownloadReport> {
        let started = Instant::now();
        match self.run_probed(summary, started, None) {
            Err(Error::SizeDisputed { context, detail })
                if crate::runtime::interrupted().is_none() =>
            {
                summary.retries += 1;
                let notice =
                    format!("{context}: {detail}; probed the object again and started over");
                self.run_probed(summary, started, Some(notice))
                    .map_err(|error| match error {
                        Error::SizeDisputed { context, detail } => Error::SizeDisputed {
                            context,
                            detail: format!("{detail}, after the object was probed again"),
                        },
                        other => other,
                    })
            }
            other => other,
        }
    }

    /// One probe of the object and the download it plans; `reprobed` says
    /// why this is the second.
    fn run_probed(
        &self,
        summary: &mut RunSummary,
        started: Instant,
        reprobed: Option<String>,
    ) -> Result<DownloadReport> {
        let _run = self.options.engine.begin_run()?;
        self.progress.reset();
        let dest = self.resolve_dest()?;
        let options = &self.options;
        let tls = crate::tls::client_config(options.ca_file.as_deref())?;
        let control = uring::Runtime::control()?;
        let meta = control.block_on(self.probe(tls))?;
        drop(control);
        if let Some(signal) = crate::runtime::interrupted() {
            return Err(Error::Interrupted { signal });
        }
        // Bytes that could not be verified, where that is not acceptable,
        // are not fetched at all.
        let source_name = display_source(&self.source);
        if let Some(why) = meta.expected.malformed() {
            return Err(Error::http(format!("GET {source_name}"), why));
        }
        if options.require_verified && meta.expected == ExpectedSha1::None {
            return Err(Error::http(
                format!("GET {source_name}"),
                "no published SHA1 to verify against (--require-verified): nothing was downloaded",
            ));
        }
        let parent = parent_dir(&dest);
        let dir = rustix::fs::open(
            &parent,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|error| Error::io(format!("opening {}", parent.display()), error.into()))?;
        let file_name = dest.file_name().expect("dest has a file name").to_owned();
        let mut attempts_left = 1 + OBJECT_REDOWNLOADS_ON_MISMATCH;
        let mut notices = meta.notices.clone();
        notices.extend(reprobed);
        // What earlier whole downloads of this run hashed to (mismatches).
        let mut mismatched = Vec::new();
        // A partial file and a journal beside DEST, named from DEST: the
        // same command after a crash finds them, resumes from the journal
        // when the object has an identity (its lines carry it), and
        // otherwise starts over in the same file, so that a killed run
        // never leaves a partial file nothing would take away.
        // An origin that ignores Range cannot continue a transfer: the whole
        // object comes in one GET, through the page cache (its tail is not
        // padded to a block, as chunks' are for O_DIRECT).
        let (files, direct_io) = if meta.ranges == RangeAnswers::Ranged {
            (
                ResumeFiles::new(&file_name, &meta.source, meta.size_bytes),
                options.direct_io.for_object(meta.size_bytes),
            )
        } else {
            notices.push(match meta.length_known {
                _ if matches!(meta.ranges, RangeAnswers::Chunked { .. }) => {
                    "the origin answers Range requests with chunked bodies, which parallel ranges do not take: the whole object came in one GET on one connection"
                }
                true => "the origin ignores Range requests: the whole object came in one GET on one connection",
                false => "the origin ignores Range requests and sends no Content-Length: the whole object came in one GET on one connection, its size known at its end",
            }.to_string());
            (ResumeFiles::unresumable(&file_name), DirectIo::Off)
        };
        // Held until the run ends: another get into the same DEST would
        // otherwise remove or overwrite our partial file.
        let mut journal = files.lock(&dir, &dest)?;
        let mut may_resume = files.key.is_some();
        // The object's size; for a body of unknown length, known at its end.
        let mut size_bytes = meta.size_bytes;
        loop {
            attempts_left -= 1;
            let note_as = (!options.quiet).then(|| dest.display().to_string());
            let (file, direct, resume) = journal.open_round(
                may_resume,
                meta.size_bytes,
                direct_io,
                &dest,
                note_as.as_deref(),
                meta.expected.digest().is_some(),
            )?;
            may_resume = false;
            let temp_name = files.part.clone();
            // This round's bytes on top of what earlier rounds counted: a
            // round after a SHA1 mismatch fetches the object again.
            let resumed_bytes = resume.as_ref().map_or(0, |resume| resume.offset_bytes);
            let counted_bytes = self.progress.bytes_done.load(Ordering::Relaxed);
            self.progress.bytes_to_fetch.store(
                counted_bytes + meta.size_bytes.saturating_sub(resumed_bytes),
                Ordering::Relaxed,
            );
            // An early return below must not leave the temporary file: this
            // round has journaled nothing it could resume from.
            let discard = |error: Error| {
                let _ = rustix::fs::unlinkat(&dir, &temp_name, AtFlags::empty());
                error
            };
            let resumable = files.key.is_some();
            journal.begin_round(resume.as_ref().map_or(0, |resume| resume.offset_bytes));
            // Marks the journal durable until this round ends.
            let mut _durable_marks = None;
            let fetch = if meta.ranges == RangeAnswers::Ranged {
                let on_written = match journal.writer().map_err(discard)? {
                    Some((writer, marks)) => {
                        _durable_marks = Some(marks);
                        Some(writer)
                    }
                    None => None,
                };
                engine::Fetch::Ranged { resume, on_written }
            } else {
                engine::Fetch::Whole
            };
            let outcome = match meta.length_known {
                true => engine::download(
                    &options.engine,
                    &meta.source,
                    meta.size_bytes,
                    &file,
                    direct,
                    Arc::clone(&self.progress),
                    fetch,
                ),
                false => engine::stream::download_unknown_length(
                    &options.engine,
                    &meta.source,
                    &file,
                    &dest.display().to_string(),
                    &self.progress,
                )
                .and_then(|streamed| match meta.ranges {
                    RangeAnswers::Chunked { announced_bytes } if streamed.bytes != announced_bytes => {
                        Err(Error::http(
                            format!("GET {}", meta.source.display_name),
                            format!(
                                "the chunked body held {} bytes, where Content-Range announced {announced_bytes}",
                                streamed.bytes
                            ),
                        ))
                    }
                    _ => Ok(streamed),
                })
                .map(|streamed| {
                    size_bytes = streamed.bytes;
                    engine::ObjectOutcome {
                        sha1: Ok(streamed.sha1),
                        stages: streamed.stages,
                        retries: streamed.retries,
                        registered_buffers: false,
                        notices: Vec::new(),
                    }
                }),
            };
            // A failed round's retries and histograms count too.
            let outcome = outcome.and_then(|outcome| {
                summary.stages.merge(&outcome.stages);
                summary.retries += outcome.retries;
                summary.registered_buffers = outcome.registered_buffers;
                summary.direct_io = writes_direct(direct, size_bytes);
                outcome.sha1.map(|sha1| (sha1, outcome.notices))
            });
            // Whatever a stop ended the round with (a round stopped before
            // its first request ends "not started"), it ends as the signal
            // or `cancel` it was: a resumed prefix is kept below, where it
            // was removed as if the round had failed (h37 #10).
            let outcome = outcome.map_err(|error| match options.engine.stop_signal() {
                Some(signal) => Error::Interrupted { signal },
                None => error,
            });
            let (actual, round_notices) = match outcome {
                Ok(outcome) => outcome,
                Err(error @ Error::Interrupted { .. })
                    if resumable && files.journaled_bytes(&journal.file) > 0 =>
                {
                    // CONVENTIONS: an interrupted run keeps what it can
                    // resume (with no chunk journaled, that is nothing: the
                    // arm below removes the preallocated file).
                    journal.keep = true;
                    say!(
                        "ringdown: kept {} and its journal in {}: run the same command again to resume",
                        temp_name,
                        parent.display()
                    );
                    return Err(error);
                }
                // Refused midway (a presigned URL expired, a key revoked, a
                // certificate replaced), or the account's cap spent: what
                // arrived is kept for the run that fixes that, which resumes
                // from it (the journal names the object, not the URL or the key).
                Err(error)
                    if error.keeps_partials()
                        && resumable
                        && files.journaled_bytes(&journal.file) > 0 =>
                {
                    journal.keep = true;
                    say!(
                        "ringdown: kept {} and its journal in {}: once the origin accepts the request again \
                         (a fresh URL, a valid key, the cap raised or reset), the same command resumes from them",
                        temp_name,
                        parent.display()
                    );
                    return Err(error);
                }
                // Also a signal that cut a transfer nothing can resume (an
                // origin that ignores Range), or one that came before any
                // chunk was journaled.
                Err(error) => {
                    journal.remove();
                    // What arrived is gone: said, where "interrupted after
                    // N bytes" alone read as if a rerun would go on from
                    // there (h43 #15f).
                    let received_bytes = self.progress.bytes_done.load(Ordering::Relaxed);
                    if matches!(error, Error::Interrupted { .. }) && received_bytes > 0 {
                        let why = match resumable {
                            false => {
                                "this origin cannot resume a transfer (it ignores Range \
                                 requests): the next run starts over"
                            }
                            true => "no chunk of it was whole on disk yet",
                        };
                        say!("ringdown: the {received_bytes} bytes received were discarded: {why}");
                    }
                    return Err(error);
                }
            };
            for notice in round_notices {
                if !notices.contains(&notice) {
                    notices.push(notice);
                }
            }
            let verification = match &meta.expected {
                ExpectedSha1::Verified(expected) | ExpectedSha1::Unverified(expected)
                    if *expected != actual =>
                {
                    journal.start_over();
                    let earlier = mismatched.clone();
                    // A resumed round's digest is partly of bytes from disk.
                    if resumed_bytes == 0 {
                        mismatched.push(to_hex(&actual));
                    }
                    if attempts_left > 0 {
                        // The whole object again: a retry, as `restore` counts it.
                        summary.retries += 1;
                        notices.push(format!(
                            "SHA1 mismatch (expected {}, got {}); downloading again",
                            to_hex(expected),
                            to_hex(&actual)
                        ));
                        continue;
                    }
                    return Err(Error::Sha1Mismatch {
                        name: display_source(&self.source),
                        expected: to_hex(expected),
                        actual: to_hex(&actual),
                        earlier,
                    });
                }
                ExpectedSha1::Verified(_) => Verification::Verified,
                ExpectedSha1::Unverified(_) => Verification::VerifiedUnverifiedPrefix,
                ExpectedSha1::None | ExpectedSha1::Malformed(_) => Verification::NotVerified {
                    why: match &self.source {
                        Source::B2 { .. } | Source::B2Id { .. } => {
                            "the object has no contentSha1 and no large_file_sha1".into()
                        }
                        Source::Url(_) => {
                            "the origin published no SHA1 (pass --sha1 HEX to verify)".into()
                        }
                    },
                },
            };
            let placing = Placing {
                mtime_ms: meta.mtime_ms,
                fsync: options.fsync,
                force: options.force,
                size_bytes,
            };
            journal.put_in_place(file, &dest, &file_name, &placing)?;
            let seconds = started.elapsed().as_secs_f64();
            let (ok, unverified) = match verification {
                Verification::NotVerified { .. } => (0, 1),
                _ => (1, 0),
            };
            let summary = RunSummary {
                command: "get".into(),
                bytes: size_bytes,
                resumed_bytes,
                files: 1,
                seconds,
                verified_ok: ok,
                unverified,
                failed: 0,
                skipped: 0,
                refused: 0,
                retries: summary.retries,
                direct_io: writes_direct(direct, size_bytes),
                registered_buffers: summary.registered_buffers,
                sha1_feed: crate::verify::sha1_feed_chosen(),
                stages: summary.stages.clone(),
            };
            return Ok(DownloadReport {
                dest,
                bytes: size_bytes,
                seconds,
                sha1_hex: to_hex(&actual),
                verification,
                summary,
                notices,
            });
        }
    }

    /// Authorizes (B2) and learns the object's size, digest and identity.
    async fn probe(&self, tls: Arc<rustls::ClientConfig>) -> Result<ObjectMeta> {
        let options = &self.options;
        let timeout = options.engine.timeout;
        match &self.source {
            Source::B2 { .. } | Source::B2Id { .. } => {
                let credentials = crate::client::b2_api::Credentials {
                    key_id: options.key_id.clone().unwrap_or_default(),
                    key: options.key.clone().unwrap_or_default(),
                };
                let auth = Arc::new(
                    Authorizer::new(&options.realm, credentials, Some(Arc::clone(&tls)), timeout)?
                        .limit_attempts(options.engine.max_attempts),
                );
                auth.authorize().await?;
                if let Source::B2 { bucket, name } = &self.source {
                    let reach = crate::b2::Reach::Name {
                        name,
                        list: options.as_of_ms.is_some(),
                    };
                    auth.scope().check(bucket, reach).map_err(Error::Denied)?;
                }
                let sse_c = options.sse_c_keys.as_ref();
                if sse_c.is_some() {
                    crate::b2::sse::check_key_transport(&auth.download_url())
                        .map_err(Error::Usage)?;
                }
                let download = Url::parse(&auth.download_url())
                    .map_err(|why| Error::http("b2_authorize_account downloadUrl", why))?;
                let origin = resolve(&download)?;
                let base = download.path_and_query.trim_end_matches('/').to_string();
                let display_name = display_source(&self.source);
                let mut notices = Vec::new();
                let headed_by_name =
                    matches!((&self.source, options.as_of_ms), (Source::B2 { .. }, None));
                let object = match (&self.source, options.as_of_ms) {
                    (Source::B2Id { file_id }, _) => {
                        let (object, notice) =
                            file_info_by_id(&auth, file_id, sse_c, timeout).await?;
                        notices.push(notice);
                        object
                    }
                    (Source::B2 { bucket, name }, Some(at_ms)) => {
                        let (object, notice) =
                            version_as_of(&auth, bucket, name, at_ms, sse_c, timeout).await?;
                        notices.push(notice);
                        object
                    }
                    (Source::B2 { bucket, name }, None) => {
                        let path = format!(
                            "{base}/file/{}/{}",
                            crate::b2::b2_url_encode(bucket),
                            crate::b2::b2_url_encode(name)
                        );
                        let request = HeadRequest {
                            by_name: &path,
                            display_name: &display_name,
                            sse_c,
                            timeout,
                        };
                        head_by_name(&auth, &origin, &tls, request).await?
                    }
                    (Source::Url(_), _) => unreachable!("a B2 source"),
                };
                let B2Object {
                    size_bytes,
                    file_id,
                    expected,
                    mtime_ms,
                    sse_c,
                } = object;
                let expected = with_given_sha1(expected, options.sha1, &display_name)?;
                // Fetch by fileId so a newer upload under the same name
                // cannot be spliced in. A HEAD by name without one leaves
                // nothing to pin the ranges to: refused, as restore refuses
                // an answer without it (h41 #4: two versions spliced, exit 0,
                // where the object had no digest to catch it).
                let Some(id) = &file_id else {
                    let what = match headed_by_name {
                        true => {
                            "the HEAD answer carries no x-bz-file-id, so nothing pins the \
                             version its ranges would be fetched from (a newer upload could be \
                             spliced in): the download host (a proxy or mirror?) drops B2's \
                             x-bz-* headers; let them through"
                        }
                        false => "B2 named no fileId",
                    };
                    return Err(Error::http(&display_name, what));
                };
                let path_and_query = format!(
                    "{base}/b2api/v3/b2_download_file_by_id?fileId={}",
                    crate::b2::b2_url_encode(id)
                );
                let source = ObjectSource {
                    origin: origin.clone(),
                    tls: origin.tls.then(|| Arc::clone(&tls)),
                    path_and_query,
                    auth: Some(auth),
                    expect_file_id: file_id,
                    validator: None,
                    sse_c,
                    display_name,
                };
                Ok(ObjectMeta {
                    size_bytes,
                    expected,
                    mtime_ms,
                    source,
                    ranges: RangeAnswers::Ranged,
                    length_known: true,
                    notices,
                })
            }
            Source::Url(text) => {
                let mut url = Url::parse(text).map_err(Error::Usage)?;
                let display_name = url.display_without_query();
                let mut notices = Vec::new();
                let mut redirects = 0;
                let (origin, reply) = loop {
                    let origin = resolve(&url)?;
                    let mut request = Vec::new();
                    http::write_get_request(
                        &mut request,
                        "GET",
                        &origin.host_header(),
                        &url.path_and_query,
                        Some((0, 0)),
                        &[],
                    )
                    .map_err(|error| Error::Usage(format!("{display_name}: {error}")))?;
                    let tls_opt = origin.tls.then_some(&tls);
                    // A 1-byte range tells size, ETag and range support in one round trip.
                    // The object's own request: no more tries than --max-attempts
                    // gives a chunk of it (at most a startup call's).
                    let retry = ApiRetry::startup(options.engine.max_attempts);
                    let reply =
                        probe_url(&origin, tls_opt, timeout, &request, &display_name, retry)
                            .await?;
                    if !matches!(reply.head.status, 301 | 302 | 303 | 307 | 308) {
                        break (origin, reply);
                    }
                    let context = format!("GET {display_name}");
                    if redirects == URL_REDIRECTS_MAX {
                        return Err(Error::http(
                            context,
                            format!("more than {URL_REDIRECTS_MAX} redirects (a loop?)"),
                        ));
                    }
                    let location = reply.head.header("location").unwrap_or("");
                    url = url.redirect_to(location).map_err(|why| {
                        Error::http(
                            &context,
                            format!("HTTP {}: cannot follow it: {why}", reply.head.status),
                        )
                    })?;
                    redirects += 1;
                };
                if redirects > 0 {
                    notices.push(format!(
                        "followed {redirects} redirect(s) to {}",
                        url.display_without_query()
                    ));
                }
                let head = &reply.head;
                let size_bytes = match head.status {
                    206 => head
                        .content_range
                        .and_then(|range| range.complete_length)
                        .ok_or_else(|| {
                            Error::http(
                                format!("GET {display_name}"),
                                "206 without a complete length in Content-Range",
                            )
                        })?,
                    416 => head
                        .unsatisfied_range_complete_length
                        .filter(|&n| n == 0)
                        .ok_or_else(|| {
                            Error::http(
                                format!("GET {display_name}"),
                                "416 for bytes=0-0 on a non-empty object",
                            )
                        })?,
                    // No Content-Length (chunked, or up to the close): the
                    // size is known once the body ends.
                    200 => head.content_length.unwrap_or(0),
                    401 | 403 => {
                        let now_ms = crate::client::presign::now_ms();
                        let cause =
                            crate::client::presign::refusal_cause(&url.path_and_query, now_ms)
                                .unwrap_or_else(|| {
                                    "a presigned URL: has it expired, or lost its query string?"
                                        .to_string()
                                });
                        return Err(Error::Refused(format!(
                            "GET {display_name}: HTTP {}: the origin refuses this URL. ringdown \
                             sends no credentials to a plain URL, so the URL must carry its own ({cause})",
                            head.status
                        )));
                    }
                    status => {
                        return Err(Error::http(
                            format!("GET {display_name}"),
                            format!("HTTP {status}"),
                        ));
                    }
                };
                let expected = match options.sha1 {
                    Some(sha1) => ExpectedSha1::Verified(sha1),
                    None => crate::b2::expected_sha1(
                        head.header("x-bz-content-sha1"),
                        head.header("x-bz-info-large_file_sha1"),
                    ),
                };
                // Saved as sent, as curl does without --compressed (a .tar.gz
                // marked `Content-Encoding: gzip` is the file wanted), but said.
                if let Some(encoding) = head
                    .header("content-encoding")
                    .filter(|encoding| !encoding.trim().eq_ignore_ascii_case("identity"))
                {
                    notices.push(format!(
                        "the origin marked the body `Content-Encoding: {encoding}`: it was saved as sent, not decoded"
                    ));
                }
                let validator = crate::engine::Validator::of(head);
                // Ranges of two versions would make a file that never was;
                // without a validator, nothing tells them apart, and
                // without a digest nothing finds out afterwards.
                let unverifiable =
                    matches!(expected, ExpectedSha1::None | ExpectedSha1::Malformed(_));
                let several_ranges =
                    head.status != 200 && size_bytes > options.engine.part_size_bytes;
                if validator.is_none() && unverifiable && several_ranges {
                    notices.push(
                        "the origin sends no ETag or Last-Modified: were the object replaced during the download, \
                         its ranges could mix two versions and nothing would tell; pass --sha1 HEX to verify"
                            .to_string(),
                    );
                }
                let source = ObjectSource {
                    origin: origin.clone(),
                    tls: origin.tls.then(|| Arc::clone(&tls)),
                    path_and_query: url.path_and_query.clone(),
                    auth: None,
                    expect_file_id: None,
                    validator,
                    sse_c: None,
                    display_name,
                };
                let ranges = match head.status {
                    200 => RangeAnswers::Ignored,
                    _ if head.chunked => RangeAnswers::Chunked {
                        announced_bytes: size_bytes,
                    },
                    _ => RangeAnswers::Ranged,
                };
                // A chunked body is streamed (`engine::stream`), its size
                // known at its end, as a 200's without a length.
                let length_known = match ranges {
                    RangeAnswers::Ranged => true,
                    RangeAnswers::Ignored => head.content_length.is_some(),
                    RangeAnswers::Chunked { .. } => false,
                };
                Ok(ObjectMeta {
                    size_bytes: if length_known { size_bytes } else { 0 },
                    expected,
                    mtime_ms: None,
                    source,
                    ranges,
                    length_known,
                    notices,
                })
            }
        }
    }
}

/// How an origin answers a `Range` request, as its probe showed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RangeAnswers {
    /// 206s with a Content-Length: fetched in parallel ranges.
    Ranged,
    /// 200 and the whole object.
    Ignored,
    /// 206s with a chunked body (valid HTTP/1.1, from some proxies), which
    /// the ranged engine does not take: every chunk failed its attempts
    /// after the probe had taken the same framing (h41 #7). One GET,
    /// streamed, whose length must be the one its Content-Range announced.
    Chunked { announced_bytes: u64 },
}

/// What `get` needs to know of a B2 object before downloading it.
struct B2Object {
    size_bytes: u64,
    file_id: Option<String>,
    expected: crate::b2::ExpectedSha1,
    mtime_ms: Option<i64>,
    /// SSE-C: which key given its requests carry.
    sse_c: Option<Arc<KeyChoice>>,
}

/// What `head_by_name` asks about.
struct HeadRequest<'a> {
    /// Path of the download by name, URL-encoded.
    by_name: &'a str,
    display_name: &'a str,
    sse_c: Option<&'a Arc<Keyring>>,
    timeout: Duration,
}

/// The object as it is now: a HEAD by name.
async fn head_by_name(
    auth: &Authorizer,
    origin: &Origin,
    tls: &Arc<rustls::ClientConfig>,
    request: HeadRequest<'_>,
) -> Result<B2Object> {
    let HeadRequest {
        by_name,
        display_name,
        sse_c,
        timeout,
    } = request;
    // HEAD for the metadata; a GET of one byte only to learn why a HEAD was
    // refused (its answer has no body to carry B2's error code).
    let send = |method: &'static str, key: Option<usize>| async move {
        let token = auth.token();
        let mut headers = vec![("Authorization", token.as_str())];
        if let (Some(ring), Some(key)) = (sse_c, key) {
            headers.extend(ring.keys()[key].headers());
        }
        let mut request = Vec::new();
        let range = (method == "GET").then_some((0, 0));
        http::write_get_request(
            &mut request,
            method,
            &origin.host_header(),
            by_name,
            range,
            &headers,
        )
        .map_err(|error| Error::Usage(format!("{display_name}: {error}")))?;
        exchange(
            origin,
            origin.tls.then_some(tls),
            timeout,
            &request,
            method == "HEAD",
            API_BODY_MAX_BYTES,
            auth.startup_retry(),
            None,
        )
        .await
        .map_err(|error| crate::client::in_context(error, &format!("{method} {display_name}")))
    };
    // With several keys, each in turn until B2 opens the object with one
    // (B2 does not say which key an object is under: a wrong one is
    // refused). The GET that says why is sent once no key is left.
    let key_count = sse_c.map_or(0, |ring| ring.keys().len());
    let mut key = sse_c.map(|_| 0);
    let mut reauthorized = false;
    let reply = loop {
        let seen_generation = auth.generation();
        let reply = send("HEAD", key).await?;
        match reply.head.status {
            200 => break reply,
            // A HEAD's 401 has no body to say why: the token may have
            // expired since it was issued (b2-api.md §6). Once.
            401 if !reauthorized => {
                reauthorized = true;
                auth.reauthorize(seen_generation).await?;
                continue;
            }
            // Most likely the key: the next one, before asking why.
            403 if key.is_some_and(|tried| tried + 1 < key_count) => {
                key = key.map(|tried| tried + 1);
                continue;
            }
            401 | 403 => {}
            // Fatal, not Http: asking again will not make it appear.
            404 => {
                return Err(Error::Fatal(format!(
                    "HEAD {display_name}: not found: no such bucket or object (names are \
                     case-sensitive)"
                )));
            }
            _ => {
                return Err(Error::http(
                    format!("HEAD {display_name}"),
                    describe_error(&reply),
                ));
            }
        }
        let why = send("GET", key).await?;
        let code = crate::b2::parse_error_body(&why.body).map(|e| e.code);
        let status = why.head.status;
        let detail = format!("GET {display_name}: {}", describe_error(&why));
        return Err(if (200..300).contains(&status) {
            Error::http(
                format!("HEAD {display_name}"),
                format!(
                    "HTTP {} to HEAD while a GET is answered: an origin (or proxy) \
                     that refuses HEAD is not supported",
                    reply.head.status
                ),
            )
        } else if code.as_deref() == Some("access_denied") {
            // B2's answer to a missing or wrong SSE-C key too.
            match (sse_c, key) {
                (Some(_), Some(tried)) if tried + 1 < key_count => {
                    key = Some(tried + 1);
                    continue;
                }
                // The object failed, as `restore`, `--as-of` and `b2id://`
                // report it (exit 1): the key's scope was checked before,
                // so the SSE-C keys are the likely cause.
                (Some(ring), _) => Error::http(
                    format!("HEAD {display_name}"),
                    format!(
                        "{detail}: {}; if one of them is its key, {}",
                        ring.all_refused(),
                        crate::b2::DENIED_HINT
                    ),
                ),
                (None, _) => denied(format!(
                    "{detail}; an object encrypted with SSE-C is refused this way until its \
                     key is given (--sse-c-key-file FILE or {})",
                    crate::b2::sse::KEY_ENV
                )),
            }
        } else {
            // A spent cap included (run-fatal, with what to do about it).
            refusal(detail, &why)
        });
    };
    let head = &reply.head;
    // A HEAD answered without the key (B2 may describe an SSE-C object so)
    // must not turn into downloads refused one by one.
    let encrypted_with = head.header("x-bz-server-side-encryption-customer-key-md5");
    let sse_c = match (encrypted_with, sse_c, key) {
        (Some(_), None, _) => {
            return Err(Error::Usage(format!(
                "{display_name}: {}",
                crate::b2::sse::NO_KEY
            )));
        }
        (Some(md5), Some(ring), _) => match ring.by_md5(md5) {
            Some(index) => Some(Arc::new(KeyChoice::starting_at(Arc::clone(ring), index))),
            None => {
                return Err(Error::Usage(format!(
                    "{display_name}: encrypted with SSE-C under the key whose MD5 is {md5}; \
                     the {} given {}",
                    if key_count == 1 { "key" } else { "keys" },
                    describe_md5s(ring)
                )));
            }
        },
        // No word of the key: the requests carry the one the HEAD did, as
        // b2sdk's do.
        (None, Some(ring), Some(index)) => {
            Some(Arc::new(KeyChoice::starting_at(Arc::clone(ring), index)))
        }
        (None, _, _) => None,
    };
    let size_bytes = head
        .content_length
        .ok_or_else(|| Error::http(format!("HEAD {display_name}"), "no Content-Length"))?;
    let file_id = head.header("x-bz-file-id").map(str::to_string);
    let expected = crate::b2::expected_sha1(
        head.header("x-bz-content-sha1"),
        head.header("x-bz-info-large_file_sha1"),
    );
    let mtime_ms = head
        .header("x-bz-info-src_last_modified_millis")
        .and_then(crate::b2::parse_millis)
        .or_else(|| {
            head.header("x-bz-upload-timestamp")
                .and_then(crate::b2::parse_millis)
        });
    Ok(B2Object {
        size_bytes,
        file_id,
        expected,
        mtime_ms,
        sse_c,
    })
}

/// "has MD5 X" or "have MD5s X, Y": the keys given, by their MD5 only.
fn describe_md5s(ring: &Keyring) -> String {
    match ring.keys() {
        [_] => format!("has MD5 {}", ring.md5s()),
        _ => format!("have MD5s {}", ring.md5s()),
    }
}

/// `b2id://FILEID`: that version's metadata from `b2_get_file_info`, and
/// the notice that says which file and upload it is.
async fn file_info_by_id(
    auth: &Authorizer,
    file_id: &str,
    sse_c: Option<&Arc<Keyring>>,
    timeout: Duration,
) -> Result<(B2Object, String)> {
    let display_name = format!("b2id://{file_id}");
    let body = serde_json::to_vec(&serde_json::json!({ "fileId": file_id }))
        .expect("a JSON object serialises");
    let reply = crate::restore::api_call(
        auth,
        "b2_get_file_info",
        &body,
        timeout,
        auth.startup_retry(),
        None,
    )
    .await
    .map_err(|error| match error {
        // 404 for an ID of no version, 400 for one B2 cannot read as an ID:
        // neither passes on a retry (b2-api.md §4).
        Error::Http { context, detail }
            if detail.contains("not_found") || detail.contains("HTTP 400 bad_request") =>
        {
            Error::Fatal(format!(
                "{context}: {detail}: no file version has this ID (deleted, or a typo?)"
            ))
        }
        other => other,
    })?;
    let file: crate::b2::FileObject = serde_json::from_slice(&reply)
        .map_err(|error| Error::http("b2_get_file_info", format!("unexpected reply: {error}")))?;
    if file.file_id.as_deref() != Some(file_id) {
        return Err(Error::http(
            "b2_get_file_info",
            format!("asked for {file_id}, answered for {:?}", file.file_id),
        ));
    }
    match file.action {
        Some(FileAction::Upload) | None => {}
        Some(FileAction::Hide) => {
            return Err(Error::http(
                &display_name,
                format!(
                    "{:?} was hidden (deleted) by this version: it has no bytes",
                    file.file_name
                ),
            ));
        }
        Some(action) => {
            return Err(Error::http(
                &display_name,
                format!(
                    "not a finished upload of {:?} (action {action:?})",
                    file.file_name
                ),
            ));
        }
    }
    let sse_c = match (file.is_sse_c(), sse_c) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::Usage(format!(
                "{display_name} ({:?}) is {}",
                file.file_name,
                crate::b2::sse::NO_KEY
            )));
        }
        (true, Some(ring)) => Some(Arc::new(KeyChoice::new(
            Arc::clone(ring),
            file.info_str("sse_c_key_id"),
        ))),
    };
    let size_bytes = file
        .length_bytes()
        .ok_or_else(|| Error::http("b2_get_file_info", "no contentLength"))?;
    let notice = format!(
        "{display_name} is {:?}, the version uploaded at {}",
        file.file_name,
        crate::units::format_instant_ms(file.upload_timestamp.unwrap_or_default())
    );
    let object = B2Object {
        size_bytes,
        file_id: file.file_id.clone(),
        expected: file.expected_sha1(),
        mtime_ms: file.modified_millis(),
        sse_c,
    };
    Ok((object, notice))
}

/// `--as-of`: the version of `bucket`/`name` current at `at_ms`, from its
/// listed versions, and the notice that says which upload it is.
async fn version_as_of(
    auth: &Authorizer,
    bucket: &str,
    name: &str,
    at_ms: u64,
    sse_c: Option<&Arc<Keyring>>,
    timeout: std::time::Duration,
) -> Result<(B2Object, String)> {
    let display_name = format!("b2://{bucket}/{name}");
    let at = crate::units::format_instant_ms(at_ms);
    let entry = crate::restore::version_at(auth, bucket, name, at_ms, timeout)
        .await?
        .ok_or_else(|| {
            Error::http(
                format!("{display_name} as of {at}"),
                "no version existed then: first uploaded later, or deleted (hidden) by then",
            )
        })?;
    let sse_c = match (&entry.sse_c, sse_c) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::Usage(format!(
                "{display_name}: the version current at {at} is {}",
                crate::b2::sse::NO_KEY
            )));
        }
        (Some(encryption), Some(ring)) => Some(Arc::new(KeyChoice::new(
            Arc::clone(ring),
            encryption.key_id.as_deref(),
        ))),
    };
    // By fileId only: the name now serves another version.
    let Some(file_id) = entry.file_id else {
        return Err(Error::http(
            "b2_list_file_versions",
            format!("{display_name}: a version without fileId"),
        ));
    };
    let notice = format!(
        "as of {at}: the version uploaded at {}",
        crate::units::format_instant_ms(entry.upload_ms.unwrap_or_default())
    );
    let object = B2Object {
        size_bytes: entry.size_bytes,
        file_id: Some(file_id),
        expected: entry.expected,
        mtime_ms: entry.mtime_ms,
        sse_c,
    };
    Ok((object, notice))
}

/// The probe reads at most the 1-byte body; a 200 (no Range support) body is
/// not read at all: the connection is dropped.
async fn probe_url(
    origin: &Origin,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
    request: &[u8],
    display_name: &str,
    retry: ApiRetry,
) -> Result<crate::client::Exchange> {
    let reply = exchange(origin, tls, timeout, request, true, 0, retry, None).await;
    reply.map_err(|error| match error {
        Error::Http { detail, .. } => Error::http(format!("GET {display_name}"), detail),
        other => other,
    })
}

fn display_source(source: &Source) -> String {
    match source {
        Source::B2 { bucket, name } => format!("b2://{bucket}/{name}"),
        Source::B2Id { file_id } => format!("b2id://{file_id}"),
        Source::Url(url) => Url::parse(url)
            .map(|u| u.display_without_query())
            .unwrap_or_default(),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `get`'s partial file and crash-resume state beside DEST:
/// `.ringdown-<16 hex>.part` and `.ringdown-<16 hex>.journal` (short: a
/// 255-byte name plus a suffix would overflow NAME_MAX), named from DEST
/// alone, so that the next run into DEST finds what a killed one left
/// (restore's journal format: `chunk\tKEY\tBYTES` lines, KEY = `fileId\tsize`,
/// or the plain URL's ETag and size).
struct ResumeFiles {
    part: String,
    journal: String,
    /// The object's version; `None` for a download nothing can resume (no
    /// stable identity, or an origin that ignores Range), whose journal
    /// holds no line and serves only as the lock.
    key: Option<String>,
}

impl ResumeFiles {
    /// Resumable only with a stable identity (a fileId, a strong ETag):
    /// without one, a partial file could belong to another version.
    ///
    /// The journal's lines carry the version (`key`). A run for another
    /// version of the object (changed on the origin since) finds no line of
    /// its own, starts over and so replaces the old partial file: named
    /// from the version too, that one was left behind for good, at the
    /// object's size.
    fn new(file_name: &std::ffi::OsStr, source: &ObjectSource, size_bytes: u64) -> Self {
        let if_match = source.validator.as_ref().and_then(Validator::if_match);
        let identity = match (&source.expect_file_id, if_match) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(etag)) => Some(format!("etag:{etag}")),
            (None, None) => None,
        };
        let identity = identity.filter(|identity| !identity.chars().any(char::is_control));
        ResumeFiles {
            key: identity.map(|identity| format!("{identity}\t{size_bytes}")),
            ..ResumeFiles::unresumable(file_name)
        }
    }

    /// The files of a download nothing can resume: it starts over in them,
    /// and a run killed during it leaves them to the next run into DEST.
    fn unresumable(file_name: &std::ffi::OsStr) -> Self {
        let (part, journal) = ResumeFiles::names_for(file_name);
        ResumeFiles {
            part,
            journal,
            key: None,
        }
    }

    /// The partial file's and the journal's names for DEST's file name.
    fn names_for(file_name: &std::ffi::OsStr) -> (String, String) {
        use sha1::{Digest, Sha1};
        let digest = Sha1::digest(file_name.as_encoded_bytes());
        let hex = to_hex(&digest[..8]);
        (
            format!(".ringdown-{hex}.part"),
            format!(".ringdown-{hex}.journal"),
        )
    }

    /// Removes `journal` in `dir`, and `part` first, unless a run holds the
    /// journal's lock (or there is no journal).
    fn remove_unless_held(dir: &OwnedFd, journal: &str, part: Option<&str>) {
        use rustix::fs::FlockOperation;
        let flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let Ok(fd) = rustix::fs::openat(dir, journal, flags, Mode::empty()) else {
            return;
        };
        // The lock of a journal the run holding it has since replaced
        // (`journal::rewrite`) says nothing: the name must still lead to it.
        if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok()
            && crate::journal::is_named(dir, journal, &fd)
        {
            if let Some(part) = part {
                let _ = rustix::fs::unlinkat(dir, part, AtFlags::empty());
            }
            crate::journal::remove(dir, journal);
        }
    }

    /// A journal beside DEST whose partial file is gone resumes nothing: a
    /// run killed between renaming its file into DEST and removing its
    /// journal left it, and only `--force` (a whole download again) took it
    /// away. Removed here, unless a run holds it. A journal whose partial
    /// file is still there stays (`--force` resumes from it).
    fn remove_orphan_journal(parent: &Path, file_name: &std::ffi::OsStr) {
        let (part, journal) = ResumeFiles::names_for(file_name);
        let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let Ok(dir) = rustix::fs::open(parent, dir_flags, Mode::empty()) else {
            return;
        };
        if rustix::fs::statat(&dir, &part, AtFlags::SYMLINK_NOFOLLOW).is_err() {
            ResumeFiles::remove_unless_held(&dir, &journal, None);
        }
    }

    /// The partial file of an earlier run, reopened, with its journaled
    /// prefix re-hashed; None when there is nothing usable.
    fn find(
        &self,
        dir: &OwnedFd,
        journal: &std::fs::File,
        size_bytes: u64,
        mode: DirectIo,
        note_as: Option<&str>,
    ) -> Option<(OwnedFd, bool, engine::Resume)> {
        let bytes = engine::resumable_prefix(self.journaled_bytes(journal));
        if bytes == 0 || bytes > size_bytes {
            return None;
        }
        let stat = rustix::fs::statat(dir, &self.part, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if !is_trusted_leftover(&stat, dir) || (stat.st_size as u64) < bytes {
            return None;
        }
        // `mode` comes from `DirectIo::for_object`, which decided `auto` by size.
        let want_direct = mode != DirectIo::Off;
        let (file, direct) = reopen_partial(dir, &self.part, want_direct).ok()?;
        // The file opened must be the one looked at (and the one hashed).
        let opened = rustix::fs::fstat(&file).ok()?;
        if (opened.st_dev, opened.st_ino) != (stat.st_dev, stat.st_ino) {
            return None;
        }
        let resume = engine::hash_prefix(dir, &self.part, &file, bytes, note_as)?;
        Some((file, direct, resume))
    }

    /// The prefix `journal` (the one locked, read from its start: the
    /// lines trusted are the lock's file's, not another a name leads to
    /// now) says is written.
    fn journaled_bytes(&self, journal: &std::fs::File) -> u64 {
        use std::io::{Read, Seek};
        let mut text = String::new();
        // A journal is a few lines per GiB; a huge one is not ours.
        // (Appends go to the end whatever the offset.)
        let mut reader = journal;
        if reader.seek(std::io::SeekFrom::Start(0)).is_err() {
            return 0;
        }
        let _ = reader
            .take(crate::config::GET_JOURNAL_MAX_BYTES)
            .read_to_string(&mut text);
        // Lines of another boot only up to a `durable` mark (`journal`).
        crate::journal::trusted_lines(&text, crate::journal::boot_id().as_deref())
            .iter()
            .filter_map(|line| {
                let (key, bytes) = crate::journal::parse_chunk_line(line)?;
                (Some(key) == self.key.as_deref()).then_some(bytes)
            })
            .max()
            .unwrap_or(0)
    }

    /// Why the journal's name could not be opened, where it is something
    /// ringdown did not make: exit 2, with the way out (a bare ELOOP or
    /// EACCES failed every rerun alike: h43 #7, #14).
    fn not_openable(
        &self,
        error: rustix::io::Errno,
        dir: &OwnedFd,
        dest: &Path,
        creating: &dyn Fn(rustix::io::Errno) -> Error,
    ) -> Error {
        use rustix::io::Errno;
        match (
            error,
            rustix::fs::statat(dir, &self.journal, AtFlags::SYMLINK_NOFOLLOW),
        ) {
            (Errno::LOOP | Errno::ISDIR | Errno::ACCESS | Errno::PERM, Ok(stat)) => {
                self.untrusted_journal(&stat, dest)
            }
            _ => creating(error),
        }
    }

    /// Exit 2 for a journal that is not a file this run may trust or
    /// write (`is_trusted_leftover`), naming what it is.
    fn untrusted_journal(&self, stat: &rustix::fs::Stat, dest: &Path) -> Error {
        let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        let us = rustix::process::geteuid().as_raw();
        let what = if kind != rustix::fs::FileType::RegularFile {
            kind_name(kind).to_string()
        } else if stat.st_nlink != 1 {
            format!(
                "a file with {} names (hard links): writing it would change the others",
                stat.st_nlink
            )
        } else {
            format!(
                "another user's (uid {}; this is uid {us}), which could be rewritten under this run",
                stat.st_uid
            )
        };
        Error::Usage(format!(
            "{} is {what}; ringdown keeps the journal to resume DEST from there, and made \
             none of that: remove it (or give another DEST) and run again",
            parent_dir(dest).join(&self.journal).display()
        ))
    }

    /// Opens (creates) the journal and locks it for this run: one run at a
    /// time downloads an object into a directory. The lock is on the file
    /// the name leads to once it is held (a run that just ended may have
    /// removed the one opened); the journal is cut, never removed, while
    /// the run lasts.
    fn lock<'a>(&'a self, dir: &'a OwnedFd, dest: &Path) -> Result<HeldJournal<'a>> {
        use rustix::fs::FlockOperation;
        // Named in DEST's directory: a bare hidden name says nothing of
        // where the download was to go.
        let creating = |error: rustix::io::Errno| {
            let path = parent_dir(dest).join(&self.journal);
            Error::io(
                format!("creating {} (beside DEST, to resume from)", path.display()),
                error.into(),
            )
        };
        for _ in 0..JOURNAL_LOCK_TRIES_MAX {
            let fd = crate::journal::open_to_append(dir, &self.journal)
                .map_err(|error| self.not_openable(error, dir, dest, &creating))?;
            let stat = rustix::fs::fstat(&fd).map_err(creating)?;
            if !is_trusted_leftover(&stat, dir) {
                return Err(self.untrusted_journal(&stat, dest));
            }
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                // Exit 2, as restore's lock: nothing was tried, and the
                // operator's next step is to wait, not to look into a failure.
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(Error::Usage(format!(
                        "another ringdown is downloading into {} (it holds {}); wait for it to finish, or stop it and run this again to resume",
                        dest.display(),
                        self.journal
                    )));
                }
                Err(error) => return Err(creating(error)),
            }
            let held = HeldJournal {
                files: self,
                dir,
                file: std::fs::File::from(fd),
                shared: None,
                keep: false,
            };
            if held.is_named() {
                return Ok(held);
            }
        }
        Err(Error::Fatal(crate::journal::journal_not_named(
            &dest.with_file_name(&self.journal),
        )))
    }

    /// What the engine calls each time the written prefix crosses a chunk
    /// boundary: one journal line, one `write` (a kill cuts at most the last
    /// line, which the next run ignores). A failed write stops journaling:
    /// the download goes on, and a resume starts from the last good line.
    fn journal_writer(
        &self,
        journal: Arc<crate::journal::Journal>,
        key: String,
    ) -> engine::large::OnWritten {
        Box::new(move |boundary| {
            if journal
                .append(&crate::journal::chunk_line(&key, boundary))
                .is_err()
            {
                journal.close();
            }
        })
    }
}

/// Renames the verified download to its final name in `dir`. Without
/// `force`, never over a file that appeared there since the run checked
/// (`EEXIST`): `RENAME_NOREPLACE`, or where the file system lacks it (some
/// FUSE and network file systems), a look first.
fn place(
    dir: &OwnedFd,
    temp_name: &str,
    file_name: &std::ffi::OsStr,
    force: bool,
) -> rustix::io::Result<()> {
    use rustix::fs::{RenameFlags, renameat, renameat_with, statat};
    use rustix::io::Errno;
    if force {
        return renameat(dir, temp_name, dir, file_name);
    }
    match renameat_with(dir, temp_name, dir, file_name, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS) => {
            if statat(dir, file_name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                return Err(Errno::EXIST);
            }
            renameat(dir, temp_name, dir, file_name)
        }
        other => other,
    }
}

/// How a verified file goes under DEST (`HeldJournal::put_in_place`).
struct Placing {
    /// B2's `src_last_modified_millis`, when known.
    mtime_ms: Option<i64>,
    fsync: bool,
    force: bool,
    size_bytes: u64,
}

/// The journal this run holds locked (`ResumeFiles::lock`), and with it the
/// partial file. Removed when the run ends, whichever way, unless it is
/// kept to resume from (a signal); and only while the name still leads to
/// it, so that a run started after this one removed its own keeps its
/// journal.
struct HeldJournal<'a> {
    files: &'a ResumeFiles,
    dir: &'a OwnedFd,
    file: std::fs::File,
    /// The round's shared handle on `file` (`writer`), which its
    /// `DurableMarks` thread writes through: a cut goes through it too, so
    /// a mark measured before the cut is not written after it
    /// (`Journal::cut`).
    shared: Option<Arc<crate::journal::Journal>>,
    keep: bool,
}

impl HeldJournal<'_> {
    /// A round's file: the partial file an earlier run left, resumed from
    /// its journaled prefix (re-hashed from disk) where `may_resume`, or a
    /// new one, pre-allocated. `note_as`: DEST, for the lines that say so
    /// (`None`: quiet).
    fn open_round(
        &mut self,
        may_resume: bool,
        size_bytes: u64,
        direct_io: DirectIo,
        dest: &Path,
        note_as: Option<&str>,
        digest_known: bool,
    ) -> Result<(OwnedFd, bool, Option<engine::Resume>)> {
        let found = match may_resume {
            true => self
                .files
                .find(self.dir, &self.file, size_bytes, direct_io, note_as),
            false => None,
        };
        if let Some((file, direct, resume)) = found {
            if note_as.is_some() {
                // Re-hashed, the prefix is checked only against a digest:
                // without one, what the disk holds is taken (h43 #6).
                let checked = match digest_known {
                    true => "the prefix was re-hashed from disk, to be verified with the rest",
                    false => {
                        "the prefix was read back from disk, and nothing can check it: the \
                         origin publishes no SHA1"
                    }
                };
                say!(
                    "ringdown: resumed at byte {} of {size_bytes} from {} (its journal says so; {checked})",
                    resume.offset_bytes,
                    self.files.part
                );
            }
            return Ok((file, direct, Some(resume)));
        }
        self.start_over();
        let (file, direct) = create_temp(
            self.dir,
            Some(&self.files.part),
            &dest.display().to_string(),
            size_bytes,
            direct_io,
        )?;
        // A 0600 DEST's bytes were readable by all in the partial file for
        // the whole download (h45): no wider than DEST from the start.
        if let Some(name) = dest.file_name() {
            crate::dest::narrow_mode_to(&file, self.dir, name);
        }
        Ok((file, direct, None))
    }

    /// Puts the verified round's file under DEST: its times, `--fsync`,
    /// the rename, then the journal goes. A DEST made by someone else since
    /// the start is not replaced without `--force`, and the download is not
    /// lost either: the file and its journal stay, to resume from.
    fn put_in_place(
        &mut self,
        file: OwnedFd,
        dest: &Path,
        file_name: &std::ffi::OsStr,
        placing: &Placing,
    ) -> Result<()> {
        let (dir, temp_name) = (self.dir, self.files.part.as_str());
        let parent = parent_dir(dest);
        if let Some(mtime_ms) = placing.mtime_ms {
            let _ = rustix::fs::futimens(&file, &timestamps_at(mtime_ms));
        }
        if placing.fsync {
            let synced = match failpoint::injected_error(Site::Fsync) {
                Some(error) => Err(error),
                None => rustix::fs::fsync(&file),
            };
            if let Err(error) = synced {
                let _ = rustix::fs::unlinkat(dir, temp_name, AtFlags::empty());
                return Err(Error::io(
                    format!(
                        "fsync of {temp_name} before renaming it to {}",
                        dest.display()
                    ),
                    error.into(),
                ));
            }
        }
        // Only what was written and verified goes under DEST: the name must
        // still lead to it. A second run let in by a journal deleted under
        // this one starts its own partial file under the same name (h42 #2);
        // that one is its own, left alone here.
        if !crate::journal::is_named(dir, temp_name, &file) {
            return Err(Error::io(
                format!("renaming {temp_name} into {}", dest.display()),
                std::io::Error::other(
                    "the name no longer leads to the file written and verified: another \
                     process replaced or removed it during the download (another ringdown \
                     into DEST, once its journal was deleted?); DEST was left as it was",
                ),
            ));
        }
        crate::dest::keep_permissions_of(&file, dir, file_name);
        let written = rustix::fs::fstat(&file).map(|stat| (stat.st_dev, stat.st_ino));
        drop(file);
        // DEST was checked before the download (`resolve_dest`); a
        // directory, device, FIFO or socket put there since is not renamed
        // over either (a directory would fail the rename, and lose the
        // download with it).
        if let Some(kind) = unreplaceable_at(dir, file_name) {
            let advice = format!(
                "once {} is gone or a regular file (it resumes)",
                dest.display()
            );
            self.keep_for_next_run(placing.size_bytes, &parent, &advice);
            return Err(Error::Usage(format!(
                "{} became {kind} during the download; it is left as it is (ringdown replaces \
                 only a file or a symbolic link, and only with --force)",
                dest.display()
            )));
        }
        match place(dir, temp_name, file_name, placing.force) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                let advice = format!(
                    "with --force to replace {} from it (it resumes)",
                    dest.display()
                );
                self.keep_for_next_run(placing.size_bytes, &parent, &advice);
                return Err(Error::Usage(format!(
                    "{} was made by another program during the download; it is left as it is: pass --force to replace it",
                    dest.display()
                )));
            }
            Err(error) => {
                self.remove();
                // Where the rename was refused, removing may be too (an
                // immutable directory): what stays was not said (h43 #15d).
                let stays = rustix::fs::statat(dir, temp_name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
                if stays && self.files.key.is_some() {
                    self.keep = true;
                    self.record_whole(placing.size_bytes);
                    return Err(Error::io(
                        format!("renaming {temp_name} into {}", dest.display()),
                        std::io::Error::other(format!(
                            "{}; it could not be removed either, nor its journal: fix the \
                             permissions or attributes (lsattr -d) of {} and run the same \
                             command again, which resumes from them",
                            std::io::Error::from(error),
                            parent.display()
                        )),
                    ));
                }
                return Err(Error::io(
                    format!("renaming into {}", dest.display()),
                    error.into(),
                ));
            }
        }
        // The check above and the rename act on names: a file swapped in
        // at the partial's name between the two is what the rename put
        // under DEST (h43 #10, 1 run in 150). It is not left there.
        let named = rustix::fs::statat(dir, file_name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|stat| (stat.st_dev, stat.st_ino));
        if named.is_ok() && named != written {
            let _ = rustix::fs::unlinkat(dir, file_name, AtFlags::empty());
            self.remove();
            return Err(Error::io(
                format!("renaming {temp_name} into {}", dest.display()),
                std::io::Error::other(
                    "another process put a file at the partial's name as it was renamed: \
                     DEST does not hold the download verified, and was removed",
                ),
            ));
        }
        self.remove();
        if placing.fsync {
            rustix::fs::fsync(dir)
                .map_err(|error| Error::io("fsync of the destination directory", error.into()))?;
        }
        // The rename went into the directory opened at the start (a link
        // swapped in for it is not followed). Moved away meanwhile, DEST's
        // path leads elsewhere: exit 0 said the file was there, and a new
        // directory of that name could hold an older one (h43 #15l).
        // Only a path seen to lead there holds it: here a success is said.
        if crate::dest::path_leads_to(&parent, dir) != Some(true) {
            return Err(Error::Fatal(format!(
                "{} does not hold the download: its directory was moved or replaced during \
                 it, and the verified file went into the directory opened at the start, now {}; \
                 move it where it belongs",
                dest.display(),
                where_now(dir).join(file_name).display()
            )));
        }
        Ok(())
    }

    /// A verified download that cannot go under DEST now: kept with its
    /// journal, so that the next run (`advice`) resumes from it, where the
    /// object has an identity to resume by; else removed.
    fn keep_for_next_run(&mut self, size_bytes: u64, parent: &Path, advice: &str) {
        if self.files.key.is_none() {
            self.remove();
            return;
        }
        self.keep = true;
        self.record_whole(size_bytes);
        say!(
            "ringdown: kept {} and its journal in {}: run again {advice}",
            self.files.part,
            parent.display(),
        );
    }

    /// Whether the journal's name still leads to the file held.
    fn is_named(&self) -> bool {
        crate::journal::is_named(self.dir, &self.files.journal, &self.file)
    }

    /// The engine's journal writer, appending to the file held, and the
    /// thread that marks it durable while the round lasts; none for a
    /// download nothing can resume.
    fn writer(
        &mut self,
    ) -> Result<Option<(engine::large::OnWritten, crate::journal::DurableMarks)>> {
        let Some(key) = self.files.key.clone() else {
            return Ok(None);
        };
        let duplicating = |error| Error::io(format!("duplicating {}", self.files.journal), error);
        if let Some(error) = failpoint::injected_error(Site::JournalWriter) {
            return Err(duplicating(error.into()));
        }
        let journal = crate::journal::Journal::new(self.file.try_clone().map_err(duplicating)?);
        // The last round's, if any, is done with (see `drop`).
        if let Some(last) = self.shared.replace(Arc::clone(&journal)) {
            last.close();
        }
        let fs = self.dir.try_clone().map_err(duplicating)?;
        let marks = crate::journal::DurableMarks::start(
            Arc::clone(&journal),
            fs,
            std::time::Duration::from_millis(crate::config::JOURNAL_DURABLE_INTERVAL_MS),
        );
        Ok(Some((self.files.journal_writer(journal, key), marks)))
    }

    /// What the journal holds as a round starts (`journal::restated`, put
    /// in place by `journal::rewrite`): the prefix it resumes from, made
    /// durable first (this boot's lines may name bytes still in the page
    /// cache), and this run's boot. Where that sync fails, the prefix's
    /// line comes after the boot line: trusted by a run of this boot, not
    /// after a power cut. A journal that cannot be written costs a resume,
    /// not the download.
    fn begin_round(&mut self, resumed_bytes: u64) {
        use crate::journal::{restated, rewrite};
        let Some(key) = &self.files.key else {
            return;
        };
        let boot = crate::journal::boot_id();
        let boot = boot.as_deref();
        let text = match resumed_bytes {
            0 => restated("", boot),
            _ => {
                let record = crate::journal::chunk_line(key, resumed_bytes);
                match rustix::fs::syncfs(self.dir) {
                    Ok(()) => restated(&record, boot),
                    Err(_) => restated("", boot) + &record,
                }
            }
        };
        let held = self.file.try_clone();
        match held.and_then(|held| rewrite(self.dir, &self.files.journal, held, &text)) {
            Ok(file) => {
                // A new file: the last round's marks (if one is still being
                // made) land in the old one, which nothing reads.
                self.file = file;
                self.shared = None;
            }
            // No new file to be had (a full disk): cut and written in
            // place, as before `rewrite`. Appended after the old lines, this
            // round's would be judged by the old boot's rule, and its
            // `durable` marks would vouch for the old lines too.
            Err(_) => {
                use std::io::Write;
                let _ = self
                    .cut()
                    .and_then(|()| (&self.file).write_all(text.as_bytes()));
            }
        }
    }

    /// Empties the journal, unless it is empty already (a new one). ext4
    /// remembers a cut to length 0 and, at the next close of the file,
    /// writes it back (`auto_da_alloc`): the block that gets is freed when
    /// the journal goes, and with `-o discard` and no ext4 journal that
    /// free waits for a discard, up to 2 s at the end of a 2 s download.
    fn cut(&self) -> std::io::Result<()> {
        if self.file.metadata()?.len() == 0 {
            return Ok(());
        }
        // A journal writer that failed closed the shared handle: the cut
        // is made on the file held, as it must be made.
        match &self.shared {
            Some(journal) => journal.cut().or_else(|_| self.file.set_len(0)),
            None => self.file.set_len(0),
        }
    }

    /// The partial file is whole and verified (kept: DEST appeared): the
    /// journal says so, and a rerun resumes it all but its last part-block
    /// (`engine::resumable_prefix`), where the last chunk boundary journaled
    /// left the whole last chunk to fetch again.
    fn record_whole(&self, size_bytes: u64) {
        use std::io::Write;
        let Some(key) = &self.files.key else {
            return;
        };
        let line = crate::journal::chunk_line(key, size_bytes);
        let _ = (&self.file).write_all(line.as_bytes());
    }

    /// A new round from byte 0: the partial file goes, the journal is cut
    /// (not removed: it stays the file locked).
    fn start_over(&self) {
        let _ = rustix::fs::unlinkat(self.dir, &self.files.part, AtFlags::empty());
        let _ = self.cut();
    }

    /// The run is over: its partial file and journal go.
    fn remove(&self) {
        let _ = rustix::fs::unlinkat(self.dir, &self.files.part, AtFlags::empty());
        crate::journal::remove(self.dir, &self.files.journal);
    }
}

impl Drop for HeldJournal<'_> {
    fn drop(&mut self) {
        if !self.keep && self.is_named() {
            let _ = rustix::fs::unlinkat(self.dir, &self.files.journal, AtFlags::empty());
        }
        // The durable-marks thread may outlive the run by a `syncfs`, and
        // holds the shared journal meanwhile: its descriptor, a duplicate
        // of the locked one, would hold the lock too, and the next run into
        // DEST (a program's retry after a cancel) would be told another
        // ringdown is downloading there (h35 #1).
        if let Some(shared) = &self.shared {
            shared.close();
        }
    }
}

/// The partial file a run into `path` (as a file's name) keeps beside it,
/// if one is there.
fn kept_for(path: &Path) -> Option<PathBuf> {
    let (part, _journal) = ResumeFiles::names_for(path.file_name()?);
    let kept = parent_dir(path).join(part);
    std::fs::symlink_metadata(&kept).is_ok().then_some(kept)
}

/// Whether `error`, from looking at `path`, means only that it is not
/// there yet (no part of it is a file in the way).
fn is_missing(path: &Path, error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound && file_in_the_way(path).is_none()
}

/// The deepest of `path`'s ancestors that is there but no directory.
fn file_in_the_way(path: &Path) -> Option<(&Path, std::fs::Metadata)> {
    path.ancestors()
        .skip(1)
        .filter(|ancestor| !ancestor.as_os_str().is_empty())
        .find_map(|ancestor| {
            let meta = std::fs::metadata(ancestor).ok()?;
            (!meta.is_dir()).then_some((ancestor, meta))
        })
}

/// Why the directory `path`, which `error` says cannot be looked at,
/// cannot be written into, and what to do: each cause read "does not
/// exist; create it first" (h43 #15a).
fn unreachable_dir(path: &Path, error: &std::io::Error) -> String {
    if let Some((ancestor, meta)) = file_in_the_way(path) {
        return format!(
            "cannot be one: {} is {}, not a directory",
            ancestor.display(),
            file_kind(&meta)
        );
    }
    match error.raw_os_error() {
        Some(libc::ENAMETOOLONG) => format!(
            "is longer than a path may be ({error}): give a shorter path to it, from a working \
             directory nearer it"
        ),
        Some(libc::EACCES) => format!(
            "cannot be reached ({error}): a directory on the way does not let this user \
             through (no search permission)"
        ),
        _ => format!("cannot be looked at ({error})"),
    }
}

/// Where the directory `dir` is now, as the kernel names it (` (deleted)`
/// if it was removed).
fn where_now(dir: &OwnedFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .unwrap_or_else(|_| PathBuf::from("(a directory no path leads to)"))
}

/// Whether a file an earlier run left beside DEST may be resumed (the
/// partial file) or trusted (the journal): a regular file with one link,
/// this user's or the directory owner's, as restore asks of `.ringdown/`.
/// A hard link had the rest of the download written into a file outside
/// DEST (a `cp -al` snapshot's: h43 #1); another user's, in a shared
/// directory, left that user able to rewrite the verified result (h43 #12).
fn is_trusted_leftover(stat: &rustix::fs::Stat, dir: &OwnedFd) -> bool {
    let regular =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    let us = rustix::process::geteuid().as_raw();
    let ours = stat.st_uid == us
        || rustix::fs::fstat(dir).is_ok_and(|dir_stat| stat.st_uid == dir_stat.st_uid);
    regular && stat.st_nlink == 1 && ours
}

/// Why the file or link at `path` cannot be renamed over, where statx
/// says: a mount point (EBUSY), immutable or append-only (EPERM).
fn unreplaceable_file(path: &Path) -> Option<&'static str> {
    use rustix::fs::{StatxAttributes, StatxFlags};
    let stat = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .ok()?;
    let known = stat.stx_attributes_mask;
    let has = |attribute: StatxAttributes| {
        known.contains(attribute) && stat.stx_attributes.contains(attribute)
    };
    if has(StatxAttributes::MOUNT_ROOT) {
        Some("is a mount point")
    } else if has(StatxAttributes::IMMUTABLE) {
        Some("is immutable (chattr +i)")
    } else if has(StatxAttributes::APPEND) {
        Some("is append-only (chattr +a)")
    } else {
        None
    }
}

/// What is at `name` in `dir`, if it is neither a file nor a symbolic
/// link: a directory (renaming a file over it fails), or a device, FIFO or
/// socket (renaming would replace the node: `/dev/null` with a file).
fn unreplaceable_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> Option<&'static str> {
    use rustix::fs::FileType;
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    (!matches!(kind, FileType::RegularFile | FileType::Symlink)).then(|| kind_name(kind))
}

/// "a regular file", "a character device", …: what is at a path, for a
/// message.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::MetadataExt;
    kind_name(rustix::fs::FileType::from_raw_mode(meta.mode()))
}

fn kind_name(kind: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType;
    match kind {
        FileType::Directory => "a directory",
        FileType::RegularFile => "a regular file",
        FileType::Symlink => "a symbolic link",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::Unknown => "not a regular file",
    }
}

/// `--sha1` on a B2 object: the digest to verify against when B2 publishes
/// none (`none`, a large file without `large_file_sha1`), a check of the
/// published one otherwise. Given and published differ: which one is wrong
/// is for the user to find out, before any byte is fetched.
fn with_given_sha1(
    published: ExpectedSha1,
    given: Option<[u8; 20]>,
    display_name: &str,
) -> Result<ExpectedSha1> {
    let Some(given) = given else {
        return Ok(published);
    };
    match published.digest() {
        Some(digest) if *digest != given => Err(Error::Fatal(format!(
            "{display_name}: --sha1 {} is not the SHA1 B2 publishes for it ({}); check which one is right",
            to_hex(&given),
            to_hex(digest)
        ))),
        _ => Ok(ExpectedSha1::Verified(given)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn only_plain_names_join_beneath_dest() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\0b",
            "a\nb",
            "\u{7f}",
            ".ringdown-0123456789abcdef.part",
            ".ringdown-0123456789ABCDEF.journal",
        ] {
            assert!(plain_file_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "a.bin",
            "..a",
            "a..",
            "日本.txt",
            "a b%c+d",
            "-x",
            ".ringdown-note",
            ".ringdown-0123456789abcdef.parts",
            ".ringdown-0123456789abcde.part",
        ] {
            assert!(plain_file_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn sources_by_name_by_id_and_by_url() {
        assert!(matches!(
            Source::parse("b2://bkt/a/b.txt"),
            Ok(Source::B2 { bucket, name }) if bucket == "bkt" && name == "a/b.txt"
        ));
        let by_id =
            Source::parse("b2id://4_z27c8_f1004ba650fe24e6b_d20231114_m221320_c005_v0501000_t0012");
        assert!(
            matches!(&by_id, Ok(Source::B2Id { file_id }) if file_id.starts_with("4_z27c8_f1004"))
        );
        let by_id = by_id.unwrap();
        assert!(by_id.is_b2());
        assert_eq!(by_id.base_name(), None);
        for bad in [
            "b2id://",
            "b2id://4_z/../x",
            "b2id://4 z",
            "b2://bkt",
            "b2://bkt/",
            "b2:///x",
        ] {
            assert!(
                matches!(Source::parse(bad), Err(Error::Usage(_))),
                "{bad} was accepted"
            );
        }
        assert!(!Source::parse("https://example.com/x").unwrap().is_b2());
    }

    #[test]
    fn debug_output_redacts_the_key_and_url_tokens() {
        let mut options = DownloadOptions::new(
            "production",
            "visible-key-id",
            "K005-very-secret-application-key",
        );
        options.sse_c_keys = Some(Arc::new(
            Keyring::new(vec![CustomerKey::from_bytes(
                b"sse-c-secret-sse-c-secret-012345",
            )])
            .unwrap(),
        ));
        let text = format!("{options:?} {options:#?}");
        assert!(!text.contains("very-secret"), "{text}");
        // The SSE-C key shows as its MD5 only (base64 of the key starts "c3NlLWMt").
        assert!(
            !text.contains("c3NlLWMt") && text.contains("CustomerKey(md5 "),
            "{text}"
        );
        assert!(text.contains("visible-key-id") && text.contains("<redacted>"));
        let source =
            Source::parse("https://example.com/file/b/x?Authorization=4_0123_token-value").unwrap();
        let text = format!("{source:?}");
        assert!(!text.contains("token-value"), "{text}");
        assert!(text.contains("example.com/file/b/x"), "{text}");
    }
}

//! `ringdown restore`: a whole bucket or folder to a directory, verified.
//!
//! Listing thread (pages of `b2_list_file_names`) → bounded queue →
//! planner (this thread: filters, shard, name mapping, journal, parents) →
//! the engine's scheduler: small objects are one GET each, large ones are
//! split into chunks over every core and connection, on the same keep-alive
//! connections.
//! Per file: temp in `.ringdown/partial/` → verify → `utimensat` (by name, once
//! the last write completed) → `renameat` → journal line → report line.

pub mod completed;
pub mod external_sort;
pub mod listing;
pub mod name_list;
pub mod paths;
pub mod target;
pub mod wanted;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::json;

#[cfg(test)]
use crate::b2::CustomerKey;
use crate::b2::{ExpectedSha1, Reach};
use crate::b2::{KeyChoice, Keyring};
use crate::client::b2_api::{Authorizer, Credentials, describe_error, refusal};
use crate::client::url::Url;
use crate::client::{ApiRetry, KeepAlive, exchange, resolve};
use crate::config::{
    API_BODY_MAX_BYTES, LIST_PAGE_FILES_MAX, LIST_QUEUE_ENTRIES, SUMMARY_FAILED_NAMES_SHOWN,
};
use crate::dest::DirectIo;
use crate::engine::large::{LargeJob, LargeSpec};
use crate::engine::scheduler::{
    Destination, Done, ObjectJob, ObjectResult, ObjectSpec, PoolSource, Scheduler, Stopper, Work,
};
use crate::engine::{self, EngineConfig, Progress};
use crate::error::{Error, Result};
use crate::http;
use crate::stats::{RunSummary, StageHistograms};
use crate::uring;
use crate::verify::to_hex;
use listing::{Action, ListEntry};
use paths::{ListedFiles, Mapped, NameFilter, Shard};
use target::{ParentDir, Partial, PathError, Target};

/// Everything a restore needs, resolved from flags and environment.
/// `Debug` is written by hand: the application key is redacted.
#[derive(Clone)]
pub struct RestoreOptions {
    pub engine: EngineConfig,
    pub realm: String,
    pub key_id: String,
    pub key: String,
    pub ca_file: Option<PathBuf>,
    pub direct_io: DirectIo,
    pub bucket: String,
    /// `PREFIX/` of `b2://BUCKET/PREFIX`, or empty.
    pub folder_prefix: String,
    pub dir: PathBuf,
    pub filter: NameFilter,
    pub shard: Shard,
    pub skip_existing: bool,
    /// Data durable before each rename, the rename durable before the
    /// journal line (`fdatasync` file, `fsync` parent).
    pub fsync: bool,
    pub dry_run: bool,
    pub report: Option<PathBuf>,
    /// `--as-of`: restore each name's version current at this instant (ms
    /// since the epoch, as B2's uploadTimestamp), from `b2_list_file_versions`.
    pub as_of_ms: Option<u64>,
    /// `--files-from`: restore exactly these names (relative to the prefix);
    /// each one the bucket lacks is a failure.
    pub files_from: Option<Arc<name_list::NameList>>,
    /// `--sse-c-key-file` (repeated): the keys of the objects the listing
    /// marks SSE-C (only those requests carry one; see `Keyring` for which).
    pub sse_c_keys: Option<Arc<Keyring>>,
    /// A file with no published digest fails without being downloaded
    /// (`--require-verified`), instead of being restored unverified.
    pub require_verified: bool,
    /// No notes on stderr while the restore runs (`--quiet`); errors, and
    /// each failed file, still are (unless `set_message_sink` takes them).
    pub quiet: bool,
}

impl RestoreOptions {
    /// `ringdown restore SOURCE DIR`'s defaults with these credentials:
    /// `source` is `b2://BUCKET[/PREFIX]`, `realm` is `production`,
    /// `staging`, `dev` or a URL; every other field can be changed before
    /// the run.
    pub fn new(
        source: &str,
        dir: impl Into<PathBuf>,
        realm: impl Into<String>,
        key_id: impl Into<String>,
        key: impl Into<String>,
    ) -> Result<RestoreOptions> {
        let (bucket, prefix) = crate::cli::restore::parse_source(source)?;
        Ok(RestoreOptions {
            engine: EngineConfig::defaults(true),
            realm: realm.into(),
            key_id: key_id.into(),
            key: key.into(),
            ca_file: None,
            direct_io: DirectIo::Auto,
            bucket,
            folder_prefix: paths::folder_prefix(&prefix),
            dir: dir.into(),
            filter: NameFilter::new(&[], &[]).map_err(Error::Usage)?,
            shard: Shard { index: 0, count: 1 },
            skip_existing: false,
            fsync: false,
            dry_run: false,
            report: None,
            as_of_ms: None,
            files_from: None,
            sse_c_keys: None,
            require_verified: false,
            quiet: false,
        })
    }

    /// Refuses what the CLI refuses before any request (DIR a file, under
    /// one, or not writable) and what it cannot give but a program can
    /// set: an empty DIR, a shard that selects nothing (`K ≥ N`) or
    /// divides by zero.
    pub fn check(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Err(Error::Usage(
                "DIR is empty: give the directory to restore into".into(),
            ));
        }
        if !self.dry_run {
            check_target_dir(&self.dir)?;
            if let Some(report) = &self.report {
                check_report_path(report, &self.dir)?;
            }
        }
        Shard::new(self.shard.index, self.shard.count).map_err(|why| {
            Error::Usage(format!(
                "shard {}/{}: {why}",
                self.shard.index, self.shard.count
            ))
        })?;
        Ok(())
    }
}

/// DIR, or the directory it would be made in, must be a writable
/// directory: found out here (exit 2), not after authorizing and listing.
pub(crate) fn check_target_dir(dir: &std::path::Path) -> Result<()> {
    let unusable = |why: String| Err(Error::Usage(format!("DIR {}: {why}", dir.display())));
    let mut existing = dir;
    loop {
        match std::fs::symlink_metadata(existing) {
            Ok(_) => break,
            // Not there (or under a file, found as the walk goes up): the
            // run makes it.
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
            // A name no file system takes: found out here, not after listing.
            Err(error) if error.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                return unusable(format!("{error}"));
            }
            // A dead file system (ENOTCONN of a FUSE daemon gone), EACCES
            // of a directory on the way: exit 2 here, as `get` does, not
            // exit 1 at `creating DIR` after authorizing (h46 #8e).
            Err(error) => {
                let hint = crate::dest::run_stopping_hint(error.raw_os_error()).unwrap_or("");
                return unusable(if existing == dir {
                    format!("cannot be looked at ({error}){hint}")
                } else {
                    format!("{} cannot be looked at ({error}){hint}", existing.display())
                });
            }
        }
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => {
                existing = std::path::Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return unusable(if existing == dir {
            "exists and is not a directory".into()
        } else {
            format!("{} is not a directory", existing.display())
        });
    }
    match not_writable(existing) {
        Some(why) => unusable(why),
        None => Ok(()),
    }
}

/// Whether `path` is `ancestor` or beneath it, by their names alone (no
/// file need exist; `.` components aside).
fn is_within(path: &std::path::Path, ancestor: &std::path::Path) -> bool {
    use std::path::Component;
    let named = |path: &std::path::Path| -> Option<Vec<std::ffi::OsString>> {
        let absolute = std::path::absolute(path).ok()?;
        Some(
            absolute
                .components()
                .filter(|component| !matches!(component, Component::CurDir))
                .map(|component| component.as_os_str().to_owned())
                .collect(),
        )
    };
    match (named(path), named(ancestor)) {
        (Some(path), Some(ancestor)) => path.starts_with(&ancestor),
        _ => false,
    }
}

/// Why the directory `dir` is not writable, if it is not.
fn not_writable(dir: &std::path::Path) -> Option<String> {
    let error = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).err()?;
    Some(format!(
        "{} is not writable ({})",
        dir.display(),
        std::io::Error::from(error)
    ))
}

/// The `--report` file must be creatable where it is named: found out here
/// (exit 2), not after authorizing, listing and making DIR's journal. Its
/// directory may be DIR or one of DIR's, which the run makes first.
fn check_report_path(report: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    let unusable = |why: String| {
        Err(Error::Usage(format!(
            "--report {}: {why}",
            report.display()
        )))
    };
    if report.is_dir() {
        return unusable("is a directory; name a file".into());
    }
    let parent = match report.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        if is_within(dir, parent) {
            return Ok(());
        }
        return unusable(format!(
            "its directory {} does not exist; create it first",
            parent.display()
        ));
    }
    match not_writable(parent) {
        Some(why) => unusable(format!("its directory {why}")),
        None => Ok(()),
    }
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("engine", &self.engine)
            .field("realm", &self.realm)
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("direct_io", &self.direct_io)
            .field("bucket", &self.bucket)
            .field("folder_prefix", &self.folder_prefix)
            .field("dir", &self.dir)
            .field("filter", &self.filter)
            .field("shard", &self.shard)
            .field("skip_existing", &self.skip_existing)
            .field("require_verified", &self.require_verified)
            .field("fsync", &self.fsync)
            .field("dry_run", &self.dry_run)
            .field("report", &self.report)
            .field("as_of_ms", &self.as_of_ms)
            .field(
                "files_from",
                &self.files_from.as_ref().map(|list| list.len()),
            )
            .field("sse_c_keys", &self.sse_c_keys)
            .field("quiet", &self.quiet)
            .finish()
    }
}

/// Final status of one file (the `--report` `status` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Skipped,
    Failed,
    Refused,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::Refused => "refused",
        }
    }
}

/// Counters and the report file; shared by every thread that finishes files.
/// In a dry run only `failed` and `refused` (with `failed_names`) count: the
/// names a real run would fail or refuse, so its exit code can be predicted.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub unverified: u64,
    pub skipped: u64,
    pub failed: u64,
    pub refused: u64,
    pub bytes: u64,
    /// Of `bytes`: resumed prefixes, found on disk rather than fetched.
    pub resumed_bytes: u64,
    pub files: u64,
    /// The first `SUMMARY_FAILED_NAMES_SHOWN` failed names (the summary's);
    /// no refused one. `--report` names every file.
    pub failed_names: Vec<String>,
}

impl Tally {
    /// One more failed name; the first few are kept for the summary.
    fn add_failed(&mut self, name: &str) {
        self.failed += 1;
        if self.failed_names.len() < SUMMARY_FAILED_NAMES_SHOWN {
            self.failed_names.push(name.to_string());
        }
    }
}

struct Reporter {
    tally: Mutex<Tally>,
    files: Arc<FileCounts>,
    report: Option<Mutex<ReportFile>>,
    quiet: bool,
}

/// The `--report` file, and its first write error: from then on the report
/// is incomplete, no line is added after a cut one, and the run ends with
/// the error (exit 1), never a silent 0.
struct ReportFile {
    path: PathBuf,
    writer: std::io::BufWriter<std::fs::File>,
    failed: Option<std::io::Error>,
}

/// One line of `--report`.
struct FileRecord<'a> {
    /// The listed version: name, size, fileId, published digest, upload time.
    entry: &'a ListEntry,
    /// Of the entry's size, a resumed prefix that was already on disk.
    resumed_bytes: u64,
    /// Where the name's file is: restored there (`Ok`) or found there
    /// (`Skipped`). `None` for `Failed` and `Refused`, which put no file
    /// there (a local file already at that path is not theirs, and stays).
    path: Option<String>,
    sha1: Option<String>,
    verified: bool,
    attempts: u32,
    status: Status,
    reason: Option<String>,
}

fn expected_hex(expected: &ExpectedSha1) -> Option<String> {
    match expected {
        ExpectedSha1::Verified(sha1) => Some(to_hex(sha1)),
        ExpectedSha1::Unverified(sha1) => Some(format!("unverified:{}", to_hex(sha1))),
        ExpectedSha1::None => None,
        // As published: the report shows what could not be read.
        ExpectedSha1::Malformed(text) => Some(text.clone()),
    }
}

impl Reporter {
    /// A dry run's name that a real run would fail (its own line on stderr
    /// is already out): counted, so that the dry run's exit code is the
    /// real run's, but not reported.
    fn count_predicted_failure(&self, name: &str) {
        self.tally.lock().expect("tally lock").add_failed(name);
    }

    /// A dry run's name that a real run would refuse: counted, as above.
    fn count_predicted_refusal(&self) {
        self.tally.lock().expect("tally lock").refused += 1;
    }

    /// A name that never got a file: refused, or listed and not there.
    fn record_unwritten(&self, entry: &ListEntry, status: Status, reason: String) {
        self.record(FileRecord {
            entry,
            resumed_bytes: 0,
            path: None,
            sha1: None,
            verified: false,
            attempts: 0,
            status,
            reason: Some(reason),
        });
    }

    fn record(&self, record: FileRecord<'_>) {
        debug_assert!(
            record.path.is_none() || matches!(record.status, Status::Ok | Status::Skipped),
            "{:?} claims a path: {:?}",
            record.status,
            record.path
        );
        self.files.done.fetch_add(1, Ordering::Relaxed);
        {
            let mut tally = self.tally.lock().expect("tally lock");
            match record.status {
                Status::Ok => {
                    tally.files += 1;
                    tally.bytes += record.entry.size_bytes;
                    tally.resumed_bytes += record.resumed_bytes;
                    if record.verified {
                        tally.ok += 1;
                    } else {
                        tally.unverified += 1;
                    }
                }
                Status::Skipped => tally.skipped += 1,
                Status::Failed => tally.add_failed(&record.entry.name),
                Status::Refused => tally.refused += 1,
            }
        }
        // What a stop left unstarted is the stop's doing, said once (the
        // error, or the interrupted note), counted in the summary and
        // listed in the report: not a line per file.
        let unstarted = record
            .reason
            .as_deref()
            .is_some_and(|reason| reason.ends_with(crate::engine::NOT_STARTED));
        match record.status {
            Status::Failed if unstarted => {}
            Status::Failed => say!(
                "ringdown: failed: {}: {}",
                record.entry.name,
                record.reason.as_deref().unwrap_or("")
            ),
            Status::Refused => say!(
                "ringdown: refused: {:?}: {}",
                record.entry.name,
                record.reason.as_deref().unwrap_or("")
            ),
            Status::Ok if !record.verified && !self.quiet => say!(
                "ringdown: warning: {}: no published SHA1; restored unverified",
                record.entry.name
            ),
            _ => {}
        }
        if let Some(report) = &self.report {
            let line = json!({
                "name": record.entry.name,
                "path": record.path,
                "bytes": record.entry.size_bytes,
                "sha1": record.sha1,
                "expected_sha1": expected_hex(&record.entry.expected),
                "file_id": record.entry.file_id,
                "upload_timestamp": record.entry.upload_ms,
                "verified": record.verified,
                "attempts": record.attempts,
                "status": record.status.as_str(),
                "reason": record.reason,
            });
            let line = line.to_string();
            let line = json_escaping_c1(&line);
            let mut report = report.lock().expect("report lock");
            if report.failed.is_none() {
                let written =
                    writeln!(report.writer, "{line}").and_then(|()| report.writer.flush());
                if let Err(error) = written {
                    say!(
                        "ringdown: error: writing the --report file {}: {error}; the report is \
                         incomplete from {:?} on (the restore goes on)",
                        report.path.display(),
                        record.entry.name
                    );
                    report.failed = Some(error);
                }
            }
        }
    }
}

/// `json` (one serialized value) with DEL and the C1 controls written as
/// `\u00XX` escapes, which serde_json leaves raw: the same value to a JSON
/// reader, and `cat report.jsonl` on a terminal cannot be steered by a
/// name holding U+009B (CSI). They can only be inside strings, so
/// escaping them wherever they are keeps the JSON valid.
fn json_escaping_c1(json: &str) -> std::borrow::Cow<'_, str> {
    crate::escape_chars(
        json,
        |c| ('\u{7f}'..='\u{9f}').contains(&c),
        |c| format!("\\u{:04x}", u32::from(c)),
    )
}

/// What a finished restore reports.
#[derive(Debug)]
pub struct RestoreReport {
    pub tally: Tally,
    pub summary: RunSummary,
    pub notices: Vec<String>,
    /// Notes on what was selected (nothing at all; a glob that matched no
    /// name): said by a `--dry-run` too, which says nothing else.
    pub selection_notices: Vec<String>,
    /// What stopped the run once it was under way: auth, trust, disk
    /// full, a listing failure, or a signal (`Error::Interrupted`). `None`
    /// when it ran to its end, whatever the tally says (see `Restore::run`).
    pub fatal: Option<Error>,
}

/// Shared state of one run.
struct Run {
    options: RestoreOptions,
    target: Option<Target>,
    reporter: Reporter,
    /// Set by a run-fatal error: stop scheduling (and listing: the
    /// listing thread's backoffs end with it).
    stop: Arc<AtomicBool>,
    /// Stops the scheduler on a run-fatal error (set once it runs).
    scheduler: OnceLock<Stopper>,
    fatal: Mutex<Option<Error>>,
    /// Partial files of large objects a refusal stopped with chunks
    /// journaled (`finish_file`): kept for the run that fixes the key, as
    /// `get` keeps its own. At most the large objects in flight.
    kept_for_resume: Mutex<HashSet<String>>,
    retries: AtomicU64,
    direct_io_used: AtomicBool,
}

impl Run {
    fn fail_run(&self, error: Error) {
        let mut fatal = self.fatal.lock().expect("fatal lock");
        if fatal.is_none() {
            // Said when it happens, for a long run's log; `--quiet` has it
            // once, as the run's last line.
            if !self.reporter.quiet {
                say!("ringdown: error: {error}; stopping");
            }
            *fatal = Some(error);
        }
        self.stop.store(true, Ordering::Release);
        // Also once the listing is over: queued objects are not started,
        // and waits and stalled receives are cut short.
        if let Some(stopper) = self.scheduler.get() {
            stopper.stop();
        }
    }

    fn target(&self) -> &Target {
        self.target.as_ref().expect("not a dry run")
    }

    /// Whether the run is stopping on a refusal (exit 3: a key revoked,
    /// a capability gone, a certificate replaced) or a spent cap, after
    /// which what resumes is kept (`Error::keeps_partials`).
    fn stops_keeping_partials(&self) -> bool {
        self.fatal
            .lock()
            .expect("fatal lock")
            .as_ref()
            .is_some_and(Error::keeps_partials)
    }
}

/// One file being restored: where it goes and what it must hash to.
struct FileTask {
    entry: ListEntry,
    /// Journal key: `fileId\tsize`.
    key: String,
    /// Fetched by the whole engine (partial name is stable, resumable).
    large: bool,
    parent: Arc<ParentDir>,
    leaf: String,
    display_path: String,
    /// Where it is written until verified (a large object's is named).
    partial: Partial,
    /// A large object's prefix found on disk (journaled chunks), not fetched.
    resumed_bytes: u64,
    /// A large object's prefix journaled so far (its last chunk boundary).
    journaled_bytes: Arc<AtomicU64>,
}

/// What a progress display needs beyond bytes: files as listed so far.
#[derive(Default)]
pub struct FileCounts {
    /// Names under PREFIX the listing brought, before filters and shard.
    pub seen: AtomicU64,
    /// Files selected so far (after filters and shard), skipped ones included.
    pub listed: AtomicU64,
    /// Files finished in any way (restored, skipped, failed, refused).
    pub done: AtomicU64,
    /// Bytes of the files handed to a download so far.
    pub bytes_to_fetch: AtomicU64,
    /// The listing has reached its end: totals are final.
    pub listing_done: AtomicBool,
}

impl FileCounts {
    /// Back to nothing listed, as a run starts.
    fn reset(&self) {
        for count in [&self.seen, &self.listed, &self.done, &self.bytes_to_fetch] {
            count.store(0, Ordering::Relaxed);
        }
        self.listing_done.store(false, Ordering::Relaxed);
    }
}

/// The library entry point: `Restore::new(options).run()`.
pub struct Restore {
    pub options: RestoreOptions,
    pub progress: Arc<Progress>,
    pub files: Arc<FileCounts>,
}

impl Restore {
    pub fn new(options: RestoreOptions) -> Restore {
        Restore {
            options,
            progress: Arc::new(Progress::default()),
            files: Arc::new(FileCounts::default()),
        }
    }

    /// Restores what `options` select. `Err` when the run could not start:
    /// a bad option, authorization, trust, the bucket, DIR, or a signal (or
    /// `engine.cancel`) before the listing began; nothing was written then.
    /// Once the run is under way, an error that stops it (a signal or
    /// `engine.cancel` included: `Error::Interrupted`) comes back in
    /// `RestoreReport::fatal`, beside the tally of what finished. Either
    /// way, `Error::exit_code` is what the CLI exits with.
    ///
    /// It blocks its thread until the run ends. From async code, call it
    /// through `tokio::task::spawn_blocking`: called on a runtime's worker
    /// it works (on a thread of its own) but holds that worker meanwhile.
    pub fn run(&self) -> Result<RestoreReport> {
        crate::runtime::outside_tokio(|| self.run_here())
            .unwrap_or_else(|error| Err(Error::io("starting the run's thread", error)))
    }

    /// `run`, on a thread where its runtimes may start.
    fn run_here(&self) -> Result<RestoreReport> {
        let _run = self.options.engine.begin_run()?;
        self.options.check()?;
        self.progress.reset();
        self.files.reset();
        let started = Instant::now();
        // Which globs matched is this run's to remember: a second run of
        // the same options, or of a clone on another thread, starts from
        // none (the record is shared by clones, the listing thread's too).
        let options = &RestoreOptions {
            filter: self.options.filter.with_fresh_record(),
            ..self.options.clone()
        };
        // SIGINT/SIGTERM (`runtime::watch_signals`, or `engine.cancel`): stop
        // handing out work, let requests in flight finish, keep the journal
        // and resumable partials, print the summary.
        let tls = crate::tls::client_config(options.ca_file.as_deref())?;
        let control = uring::Runtime::control()?;
        let auth = Arc::new(
            Authorizer::new(
                &options.realm,
                Credentials {
                    key_id: options.key_id.clone(),
                    key: options.key.clone(),
                },
                Some(Arc::clone(&tls)),
                options.engine.timeout,
            )?
            .limit_attempts(options.engine.max_attempts),
        );
        let bucket_id = control.block_on(async {
            auth.authorize().await?;
            let reach = Reach::Listing {
                prefix: &options.folder_prefix,
                read: !options.dry_run,
            };
            auth.scope()
                .check(&options.bucket, reach)
                .map_err(Error::Denied)?;
            // A dry run downloads nothing, so sends no key.
            if options.sse_c_keys.is_some() && !options.dry_run {
                crate::b2::sse::check_key_transport(&auth.download_url()).map_err(Error::Usage)?;
            }
            bucket_id(&auth, &options.bucket, options.engine.timeout).await
        })?;
        drop(control);
        let target = if options.dry_run {
            target::check_existing_state(&options.dir)?;
            None
        } else {
            Some(Target::open(&options.dir, options.shard)?)
        };
        // A dry run creates nothing, not even the report.
        let report = match options.report.as_ref().filter(|_| !options.dry_run) {
            Some(path) => Some(Mutex::new(ReportFile {
                path: path.clone(),
                writer: std::io::BufWriter::new(std::fs::File::create(path).map_err(|error| {
                    Error::io(
                        format!("creating the --report file {}", path.display()),
                        error,
                    )
                })?),
                failed: None,
            })),
            None => None,
        };
        let run = Arc::new(Run {
            options: options.clone(),
            target,
            reporter: Reporter {
                tally: Mutex::new(Tally::default()),
                files: Arc::clone(&self.files),
                report,
                quiet: options.quiet,
            },
            stop: Arc::new(AtomicBool::new(false)),
            scheduler: OnceLock::new(),
            fatal: Mutex::new(None),
            kept_for_resume: Mutex::new(HashSet::new()),
            retries: AtomicU64::new(0),
            direct_io_used: AtomicBool::new(false),
        });

        let (list_sender, list_receiver) = std::sync::mpsc::sync_channel(LIST_QUEUE_ENTRIES);
        let lister = {
            let auth = Arc::clone(&auth);
            let plan = ListingPlan {
                bucket_id,
                prefix: options.folder_prefix.clone(),
                as_of_ms: options.as_of_ms,
                wanted: options.files_from.as_ref().map(|list| {
                    let (shard, filter) = (options.shard, options.filter.clone());
                    // As in `schedule`, the filter sees every name of the
                    // list, whatever the shard: a glob matched by names of
                    // other shards only did match (`unmatched_globs`).
                    list.wanted(
                        &options.folder_prefix,
                        Box::new(move |full, relative| {
                            filter.accepts(relative) && shard.contains(full)
                        }),
                    )
                }),
                timeout: options.engine.timeout,
                stopped: {
                    let (run, engine) = (Arc::clone(&run), options.engine.clone());
                    Box::new(move || run.stop.load(Ordering::Acquire) || engine.is_cancelled())
                },
                mid_run: ApiRetry {
                    attempts: options.engine.max_attempts,
                    base_ms: options.engine.retry_base_ms,
                    max_ms: options.engine.retry_max_ms,
                },
            };
            // The listing's ring is made before the cores make theirs: where
            // RLIMIT_MEMLOCK fits only some rings, the cores that get none
            // are left out at the start (said once), and the listing, which
            // nothing can replace, is never the one left without.
            let (ring_made, ring) = std::sync::mpsc::channel();
            let cancel = options.engine.cancel.clone();
            let run_stop = Arc::clone(&run.stop);
            let lister = std::thread::Builder::new()
                .name("ringdown-list".into())
                .spawn(move || match uring::Runtime::control() {
                    Ok(runtime) => {
                        let _cancel = crate::runtime::cancel_on_this_thread(cancel);
                        let _ended = crate::runtime::end_with_run_on_this_thread(run_stop);
                        let _ = ring_made.send(Ok(()));
                        list_all(&runtime, &auth, plan, list_sender)
                    }
                    Err(error) => {
                        let _ = ring_made.send(Err(error));
                        false
                    }
                })
                .map_err(|error| Error::io("spawning the listing thread", error))?;
            ring.recv().unwrap_or_else(|_| {
                Err(Error::Fatal(
                    "the listing thread ended before it started".into(),
                ))
            })?;
            lister
        };

        let download = Url::parse(&auth.download_url())
            .map_err(|why| Error::http("b2_authorize_account downloadUrl", why))?;
        let origin = resolve(&download)?;
        let base = download.path_and_query.trim_end_matches('/').to_string();
        let mut stages = StageHistograms::new();
        let mut notices = Vec::new();
        if let Some(target) = run.target.as_ref().filter(|t| t.completed_before > 0) {
            notices.push(format!(
                "resuming: the journal in {1}/.ringdown has {0} files completed by earlier runs; \
                 those listed again and still in place are skipped",
                target.completed_before,
                options.dir.display()
            ));
        }
        if let Some(at_ms) = options.as_of_ms {
            notices.push(format!(
                "as of {}: restoring each name's version current then; names created later or deleted by then are left out",
                crate::units::format_instant_ms(at_ms)
            ));
        }
        let mut registered_buffers = true;
        let scheduler = if options.dry_run {
            None
        } else {
            let (engine, limit_notices) = options.engine.within_limits(true)?;
            notices.extend(limit_notices);
            Some(Scheduler::start(
                &engine,
                PoolSource {
                    origin: origin.clone(),
                    tls: origin.tls.then(|| Arc::clone(&tls)),
                    auth: Some(Arc::clone(&auth)),
                },
                Arc::clone(&self.progress),
            )?)
        };
        if let Some(scheduler) = &scheduler {
            let _ = run.scheduler.set(scheduler.stopper());
        }

        let mut listing_error = None;
        let mut listed_files = ListedFiles::default();
        // Every name the listing brought was taken (not cut short by a stop).
        let mut listed_whole = true;
        for message in list_receiver.iter() {
            let listed = match message {
                Ok(listed) => listed,
                Err(error) => {
                    listing_error = Some(error);
                    listed_whole = false;
                    break;
                }
            };
            if run.stop.load(Ordering::Acquire) || options.engine.is_cancelled() {
                listed_whole = false;
                break;
            }
            match listed {
                Listed::Entry(entry) => {
                    schedule(&run, entry, &base, scheduler.as_ref(), &mut listed_files)
                }
                Listed::Missing(name) => not_in_the_bucket(&run, name),
            }
        }
        self.files.listing_done.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a listing thread that is still sending.
        drop(list_receiver);
        match lister.join() {
            // Stopped at a page boundary, its channel closed as at its end
            // (pages that bring nothing: `--as-of`, `--files-from`).
            Ok(reached_end) => listed_whole &= reached_end,
            Err(_) => {
                // Its channel closed as at the end of the listing: without
                // this, a partial restore would look complete.
                listed_whole = false;
                listing_error.get_or_insert(Error::Fatal(
                    "internal error: the listing thread panicked (its message is on stderr); \
                     this is a bug, please report it"
                        .into(),
                ));
            }
        }
        if let Some(scheduler) = scheduler {
            // A run-fatal error stopped it already (`Run::fail_run`).
            match scheduler.finish() {
                Ok(report) => {
                    stages.merge(&report.stages);
                    run.retries.fetch_add(report.retries, Ordering::Relaxed);
                    registered_buffers &= report.registered_buffers;
                    for notice in report.notices {
                        if !notices.contains(&notice) {
                            notices.push(notice);
                        }
                    }
                }
                Err(error) => run.fail_run(error),
            }
        }
        if let Some(error) = listing_error {
            run.fail_run(error);
        }
        if let Some(target) = &run.target {
            if let Err(error) = target.flush_synced() {
                run.fail_run(error);
            }
        }
        let tally = std::mem::take(&mut *run.reporter.tally.lock().expect("tally lock"));
        // A signal, or a library caller's `engine.cancel` (`runtime::CANCELLED`).
        let interrupted = options.engine.stop_signal();
        let report_failed = run.reporter.report.as_ref().and_then(|report| {
            let mut report = report.lock().expect("report lock");
            // Its name given to a restored object of that name (a report
            // inside DIR): the records went to a file no name leads to (h42 #8).
            use std::os::unix::fs::MetadataExt;
            let unnamed = report
                .writer
                .get_ref()
                .metadata()
                .is_ok_and(|m| m.nlink() == 0);
            if unnamed && report.failed.is_none() {
                report.failed = Some(std::io::Error::other(
                    "a restored object of the same name replaced it during the run: write the \
                     report outside DIR or under another name",
                ));
            }
            let error = report.failed.take()?;
            Some(Error::io(
                format!(
                    "writing the --report file {} (it is incomplete)",
                    report.path.display()
                ),
                error,
            ))
        });
        let fatal = match interrupted {
            Some(signal) => Some(Error::Interrupted { signal }),
            None => run
                .fatal
                .lock()
                .expect("fatal lock")
                .take()
                .or(report_failed),
        };
        if interrupted.is_some() {
            // The summary counts what finished; say what did not, and that
            // none of it is lost.
            let listed = self.files.listed.load(Ordering::Relaxed);
            let unfinished = listed.saturating_sub(self.files.done.load(Ordering::Relaxed));
            let of = if listed_whole {
                format!("of the {listed} selected")
            } else {
                format!("of the {listed} selected so far (the listing had not ended)")
            };
            notices.push(format!(
                "interrupted: {unfinished} files {of} were not finished; run the same command \
                 again to resume (finished files are skipped, large objects go on from their \
                 journaled chunks)"
            ));
        }
        if interrupted.is_none() && fatal.is_some() && !listed_whole {
            // The unstarted files of what was listed count as failed; what
            // the listing had not reached is in neither the counts nor the
            // report, which would otherwise read as the whole shortfall
            // (a disk-full stop said "73 failed" of 2,321 selected: h37 #4).
            notices.push(format!(
                "stopped before the listing ended: only the first {} selected names were \
                 considered; those after them are in neither the counts nor --report. Once \
                 the cause is fixed, run the same command again (finished files are skipped)",
                self.files.listed.load(Ordering::Relaxed)
            ));
        }
        let mut selection_notices = Vec::new();
        let source = format!("b2://{}/{}", options.bucket, options.folder_prefix);
        if fatal.is_none() && listed_whole {
            selection_notices.extend(unmatched_globs(options, &source));
        }
        if fatal.is_none() && self.files.listed.load(Ordering::Relaxed) == 0 {
            // A typo in PREFIX, or an object's name given as a folder, ran
            // to a clean "0 files" with nothing said.
            selection_notices.push(match self.files.seen.load(Ordering::Relaxed) {
                // The listing was asked for the list's kept names only: an
                // empty walk says nothing of the bucket.
                0 if options.files_from.is_some() => format!(
                    "nothing to restore: none of the {} names of --files-from is under {source} \
                     and passes --include/--exclude and --shard",
                    options.files_from.as_ref().map_or(0, |list| list.len())
                ),
                0 if options.as_of_ms.is_some() => {
                    format!("nothing to restore: {source} listed no file as of --as-of")
                }
                0 if options.folder_prefix.is_empty() => {
                    format!("nothing to restore: the bucket {} lists no file", options.bucket)
                }
                0 => format!(
                    "nothing to restore: {source} lists no file (PREFIX is a folder; \
                     for one object, use `ringdown get b2://BUCKET/NAME FILE`)"
                ),
                seen => format!(
                    "nothing to restore: none of the {seen} names under {source} passed \
                     --include/--exclude, --files-from or --shard (globs match names relative to PREFIX)"
                ),
            });
        }
        let seconds = started.elapsed().as_secs_f64();
        let summary = RunSummary {
            command: "restore".into(),
            bytes: tally.bytes,
            resumed_bytes: tally.resumed_bytes,
            files: tally.files,
            seconds,
            verified_ok: tally.ok,
            unverified: tally.unverified,
            failed: tally.failed,
            skipped: tally.skipped,
            refused: tally.refused,
            retries: run.retries.load(Ordering::Relaxed),
            direct_io: run.direct_io_used.load(Ordering::Relaxed),
            registered_buffers,
            sha1_feed: crate::verify::sha1_feed_chosen(),
            stages,
        };
        if run
            .target
            .as_ref()
            .is_some_and(|target| !target.is_dir_still_at_its_path())
        {
            // Nothing went elsewhere: every file went into the directory
            // opened at the start. But its paths, said here and in
            // --report, lead somewhere else now (h46 #8b).
            notices.push(format!(
                "{} was moved or replaced during the run: the files went into the directory \
                 first found there, wherever it is now; the paths said here and in --report \
                 name where it was",
                options.dir.display()
            ));
        }
        let kept_for_resume = std::mem::take(&mut *run.kept_for_resume.lock().expect("kept lock"));
        if let Some(target) = run.target.as_ref().filter(|_| interrupted.is_none()) {
            if fatal.is_none() && tally.failed == 0 && tally.refused == 0 {
                target.remove_state();
            } else if fatal.as_ref().is_some_and(Error::keeps_partials) {
                // Exit 3 or a spent cap: what resumes stays, for the run that
                // fixes the key or comes after the cap's reset (an earlier
                // run's resumable partials too).
                target.remove_partials_but(&kept_for_resume);
                if !kept_for_resume.is_empty() {
                    notices.push(format!(
                        "kept the journaled chunks of {} large objects in {}: once the origin \
                         accepts the request again (a valid key, a trusted certificate, the \
                         cap raised or reset), the same command resumes them",
                        kept_for_resume.len(),
                        options.dir.join(".ringdown").display()
                    ));
                }
            } else {
                target.remove_all_partials();
            }
        }
        Ok(RestoreReport {
            tally,
            summary,
            notices,
            selection_notices,
            fatal,
        })
    }
}

/// The version of `bucket`/`name` that was current at `at_ms` (`get
/// --as-of`): that name's versions from `b2_list_file_versions`, chosen as
/// `restore --as-of` chooses. `None` when it did not exist then.
pub(crate) async fn version_at(
    auth: &Authorizer,
    bucket: &str,
    name: &str,
    at_ms: u64,
    timeout: std::time::Duration,
) -> Result<Option<ListEntry>> {
    const CALL: &str = "b2_list_file_versions";
    let bucket_id = bucket_id(auth, bucket, timeout).await?;
    let mut choice = listing::VersionAt::new(at_ms);
    let mut start = listing::PageStart::at(name);
    let mut page_files = None;
    // A name with many versions is several pages: one connection.
    let mut keep = KeepAlive::default();
    loop {
        let files = listing::next_page_files(page_files);
        page_files = Some(files);
        // The prefix also lists `name/…` and `name…` after `name` itself.
        let body = listing::request_body(&bucket_id, name, &start, files);
        let page = fetch_page(
            auth,
            CALL,
            &body,
            &start,
            timeout,
            auth.startup_retry(),
            Some(&mut keep),
        )
        .await?;
        let next = listing::PageStart::after(&page);
        for entry in page.entries {
            if entry.name != name {
                return Ok(None);
            }
            if let Some(picked) = choice.pick(entry).map_err(|why| Error::http(CALL, why))? {
                return Ok(Some(picked));
            }
        }
        match next {
            Some(next) => start = next,
            None => return Ok(None),
        }
    }
}

/// One page of `call` (`b2_list_file_names` or `_versions`) from `start`:
/// requested with `body`, parsed, and checked not to loop or go backwards.
async fn fetch_page(
    auth: &Authorizer,
    call: &str,
    body: &[u8],
    start: &listing::PageStart,
    timeout: std::time::Duration,
    retry: ApiRetry,
    keep: Option<&mut KeepAlive>,
) -> Result<listing::ListPage> {
    let reply = api_call(auth, call, body, timeout, retry, keep).await?;
    let page = listing::parse_page(&reply).map_err(|why| Error::http(call, why))?;
    listing::check_progress(start, &page).map_err(|why| Error::http(call, why))?;
    let versions = call == "b2_list_file_versions";
    listing::check_order(&page, versions).map_err(|why| Error::http(call, why))?;
    Ok(page)
}

/// `bucketId` of `bucket`: from the key when it names the bucket (a key
/// for one bucket may not list buckets), else by `b2_list_buckets`.
async fn bucket_id(
    auth: &Authorizer,
    bucket: &str,
    timeout: std::time::Duration,
) -> Result<String> {
    if let Some(id) = auth.scope().bucket_id(bucket) {
        return Ok(id.to_string());
    }
    let body = json!({
        "accountId": auth.account_id().unwrap_or_default(),
        "bucketName": bucket,
        "bucketTypes": ["all"],
    });
    let reply = api_call(
        auth,
        "b2_list_buckets",
        &serde_json::to_vec(&body).expect("json"),
        timeout,
        auth.startup_retry(),
        None,
    )
    .await?;
    listing::parse_bucket_id(&reply, bucket)
        .map_err(|why| Error::http("b2_list_buckets", why))?
        .ok_or_else(|| {
            // Fatal, not Http: asking again will not make it appear.
            Error::Fatal(format!(
                "b2_list_buckets: no bucket named {bucket:?} is visible to this key"
            ))
        })
}

/// One POST to `{apiUrl}/b2api/v3/{operation}`, re-authorizing once on an
/// expired token; on `keep`'s connection when it holds one.
pub(crate) async fn api_call(
    auth: &Authorizer,
    operation: &str,
    body: &[u8],
    timeout: std::time::Duration,
    retry: ApiRetry,
    mut keep: Option<&mut KeepAlive>,
) -> Result<Vec<u8>> {
    let mut reauthorized = false;
    let mut refresh_failures = 0;
    loop {
        let api = auth.api_host()?;
        let origin = api.origin;
        let path = format!("{}/b2api/v3/{operation}", api.base_path);
        let seen_generation = auth.generation();
        let token = auth.token();
        let mut request = Vec::new();
        http::write_post_json(
            &mut request,
            &origin.host_header(),
            &path,
            &[("Authorization", &token)],
            body,
        )
        .map_err(|error| Error::Usage(format!("{operation}: {error}")))?;
        let reply = exchange(
            &origin,
            auth.tls().filter(|_| origin.tls),
            timeout,
            &request,
            false,
            API_BODY_MAX_BYTES,
            retry,
            keep.as_deref_mut(),
        )
        .await
        .map_err(|error| crate::client::in_context(error, operation))?;
        match reply.head.status {
            200 => return Ok(reply.body),
            401 if !reauthorized
                && matches!(
                    crate::b2::parse_error_body(&reply.body)
                        .map(|e| e.code)
                        .as_deref(),
                    Some("expired_auth_token" | "bad_auth_token")
                ) =>
            {
                match auth.reauthorize(seen_generation).await {
                    Ok(refreshed) => reauthorized = refreshed,
                    // The API unreachable for a while (this refresh failed,
                    // or one another call made, shared for a while): back
                    // off as the call's own retries do and ask again, as
                    // downloads do. A listing page used to end the run.
                    Err(error)
                        if error.may_pass_on_retry() && refresh_failures + 1 < retry.attempts =>
                    {
                        refresh_failures += 1;
                        // Within REAUTHORIZE_FAILURE_SHARED_MS of the failed
                        // refresh, asking again is answered with its error,
                        // untried: each retry waits that out, so that each
                        // is a real authorization (h26 S6).
                        let delay = retry
                            .backoff_ms(refresh_failures)
                            .max(crate::config::REAUTHORIZE_FAILURE_SHARED_MS);
                        crate::runtime::back_off(std::time::Duration::from_millis(delay)).await?;
                    }
                    Err(error) => return Err(error),
                }
                continue;
            }
            401 | 403 => {
                return Err(refusal(
                    format!("{operation}: {}", describe_error(&reply)),
                    &reply,
                ));
            }
            _ => return Err(Error::http(operation, describe_error(&reply))),
        }
    }
}

/// The listing thread: pages of names into the bounded queue. Blocks when
/// the scheduler is behind; stops when the scheduler hangs up. The first
/// page fails fast, as every call that starts a run does; later pages are
/// fetched over the whole run (hours, for millions of names) and retry as
/// patiently as downloads (`mid_run`), so a minute of API trouble does not
/// end it.
fn list_all(
    runtime: &uring::Runtime,
    auth: &Authorizer,
    plan: ListingPlan,
    sender: std::sync::mpsc::SyncSender<Result<Listed>>,
) -> bool {
    let ListingPlan {
        bucket_id,
        prefix,
        as_of_ms,
        mut wanted,
        timeout,
        stopped,
        mid_run,
    } = plan;
    // `--as-of`: every version, each name's then-current one picked here.
    let (call, mut version_at) = match as_of_ms {
        Some(at_ms) => (
            "b2_list_file_versions",
            Some(listing::VersionAt::new(at_ms)),
        ),
        None => ("b2_list_file_names", None),
    };
    // Missing names go to the planner as the walk passes them (the bounded
    // queue holds the walk back); a hang-up ends the walk.
    let hung_up = std::cell::Cell::new(false);
    let mut to_planner = |name: String| {
        let sent = sender.send(Ok(Listed::Missing(name))).is_ok();
        hung_up.set(!sent);
        sent
    };
    // Whether the walk goes on: not once the planner hung up, nor once the
    // list could not be read on (then the run fails: the names after the
    // failure were neither restored nor reported).
    let walk_goes_on = |wanted: &mut wanted::Wanted| {
        if let Some(error) = wanted.take_error() {
            let _ = sender.send(Err(Error::io(
                "reading the sorted --files-from list",
                error,
            )));
            return false;
        }
        !hung_up.get()
    };
    // Whether the walk reached its end: a stop, a hang-up or an error ends
    // it early and closes the channel as its end does, so only this tells
    // the planner the selection it saw was not all of it.
    runtime.block_on(async {
        // `--files-from`: from the first wanted name, not the bucket's first.
        let mut start = match wanted.as_mut() {
            Some(wanted) => match wanted.first_start() {
                Some(start) => start,
                None => return walk_goes_on(wanted),
            },
            None => listing::PageStart::default(),
        };
        // Page after page on one connection while the server keeps it.
        let mut keep = KeepAlive::default();
        let mut first_page = true;
        let mut page_files = None;
        loop {
            // The planner looks for a stop as entries arrive; pages that
            // bring none (all older than --as-of, names not in
            // --files-from) would keep it waiting past a signal.
            if stopped() {
                return false;
            }
            let files = match &wanted {
                // No page longer than what is left to find; but within one
                // name's versions (`--as-of`, a page ended inside it) the
                // pages grow, so a name with thousands of versions newer
                // than the instant costs a few calls, not one per version.
                Some(wanted) if start.file_id.is_none() => {
                    wanted.remaining().clamp(1, u64::from(LIST_PAGE_FILES_MAX)) as u32
                }
                _ => listing::next_page_files(page_files),
            };
            page_files = Some(files);
            let body = listing::request_body(&bucket_id, &prefix, &start, files);
            let retry = if first_page {
                auth.startup_retry()
            } else {
                mid_run
            };
            first_page = false;
            let page = match fetch_page(auth, call, &body, &start, timeout, retry, Some(&mut keep))
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return false;
                }
            };
            let mut next = listing::PageStart::after(&page);
            for entry in page.entries {
                if let Some(wanted) = wanted.as_mut() {
                    wanted.observe(&entry.name, &mut to_planner);
                    if !walk_goes_on(wanted) {
                        return false;
                    }
                }
                let entry = match version_at.as_mut() {
                    None => Some(entry),
                    Some(choice) => match choice.pick(entry) {
                        Ok(picked) => picked,
                        Err(why) => {
                            let _ = sender.send(Err(Error::http(call, why)));
                            return false;
                        }
                    },
                };
                let entry = match (entry, wanted.as_mut()) {
                    (Some(entry), Some(wanted)) => wanted.accept(entry, &mut to_planner),
                    (entry, _) => entry,
                };
                if let Some(entry) = entry {
                    if sender.send(Ok(Listed::Entry(entry))).is_err() {
                        return false;
                    }
                }
            }
            if let Some(wanted) = wanted.as_mut() {
                next = wanted.continue_from(next, &mut to_planner);
                if !walk_goes_on(wanted) {
                    return false;
                }
            }
            match next {
                Some(next) => start = next,
                None => return true,
            }
        }
    })
}

/// What the listing thread lists, and how patiently.
struct ListingPlan {
    bucket_id: String,
    /// The folder prefix (`PREFIX/`), or empty.
    prefix: String,
    /// `--as-of`: list every version and pick each name's then-current one.
    as_of_ms: Option<u64>,
    /// `--files-from`: only these names, jumping from one to the next.
    wanted: Option<wanted::Wanted>,
    timeout: std::time::Duration,
    /// The run is stopping (a signal, a fatal error): list no further.
    stopped: Box<dyn Fn() -> bool + Send>,
    /// Retries of pages after the first (see `list_all`).
    mid_run: ApiRetry,
}

/// What the listing thread hands the planner.
enum Listed {
    Entry(ListEntry),
    /// A `--files-from` name the bucket does not have (or did not, `--as-of`).
    Missing(String),
}

/// A `--files-from` name the listing passed without finding: a failure
/// (the list asked for it), reported like any other.
fn not_in_the_bucket(run: &Run, name: String) {
    let reason = match run.options.as_of_ms {
        Some(at_ms) => format!(
            "not in the bucket at {} (--files-from)",
            crate::units::format_instant_ms(at_ms)
        ),
        None => "not in the bucket (--files-from)".to_string(),
    };
    run.reporter.files.listed.fetch_add(1, Ordering::Relaxed);
    if run.options.dry_run {
        say!("missing\t{name:?}\t{reason}");
        run.reporter.count_predicted_failure(&name);
        return;
    }
    let entry = ListEntry::named(name, Action::Upload);
    run.reporter
        .record_unwritten(&entry, Status::Failed, reason);
}

/// Decides what to do with one listed entry and hands it to a worker.
fn schedule(
    run: &Arc<Run>,
    entry: ListEntry,
    base: &str,
    scheduler: Option<&Scheduler>,
    listed: &mut ListedFiles,
) {
    let options = &run.options;
    if matches!(entry.action, Action::Hide | Action::Other) {
        return;
    }
    let Some(relative) = paths::relative_name(&entry.name, &options.folder_prefix) else {
        return;
    };
    run.reporter.files.seen.fetch_add(1, Ordering::Relaxed);
    // The filter sees every name, whatever the shard: it remembers which
    // globs matched (`unmatched_globs`), and a shard's share may hold none.
    if !options.filter.accepts(relative) || !options.shard.contains(&entry.name) {
        return;
    }
    run.reporter.files.listed.fetch_add(1, Ordering::Relaxed);
    let refuse = |reason: String| {
        if options.dry_run {
            say!("refused\t{:?}\t{reason}", entry.name);
            run.reporter.count_predicted_refusal();
        } else {
            run.reporter
                .record_unwritten(&entry, Status::Refused, reason);
        }
    };
    // A directory or file that cannot be made fails this name; the disk
    // full or read-only (`Error::Fatal`) stops the run too. Anything else
    // (EACCES, EPERM of an immutable directory) fails only the names it
    // touches, as a failed rename fails its file.
    let fail = |error: Error| {
        run.reporter
            .record_unwritten(&entry, Status::Failed, error.to_string());
        if matches!(error, Error::Fatal(_)) {
            run.fail_run(error);
        }
    };
    let is_folder_entry = entry.action == Action::Folder;
    let segments = match paths::map_entry(relative, is_folder_entry, entry.size_bytes) {
        Mapped::Refused(reason) => return refuse(reason),
        Mapped::Directory(segments) => {
            if let Some(file) = listed.in_the_way(relative, &segments.join("/")) {
                return refuse(in_the_way(file));
            }
            if !options.dry_run {
                match run.target().ensure_dir(&segments) {
                    Ok(_) => {
                        run.reporter.files.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(PathError::Refused(reason)) => refuse(reason),
                    Err(PathError::Failed(error)) => fail(error),
                }
            }
            return;
        }
        Mapped::File(segments) => segments,
    };
    let path = segments.join("/");
    if let Some(file) = listed.in_the_way(relative, &path) {
        return refuse(in_the_way(file));
    }
    listed.add(&path);
    let display_path = format!("{}/{path}", options.dir.display());
    if let Some(Err(reason)) = run
        .target
        .as_ref()
        .map(|t| t.claim_file_path(&display_path))
    {
        return refuse(reason);
    }
    let skip = |reason: &str| {
        run.reporter.record(FileRecord {
            entry: &entry,
            resumed_bytes: 0,
            path: Some(display_path.clone()),
            sha1: None,
            verified: false,
            attempts: 0,
            status: Status::Skipped,
            reason: Some(reason.to_string()),
        });
    };
    let key = target::journal_key(
        entry.file_id.as_deref().unwrap_or(&entry.name),
        entry.size_bytes,
    );
    if let Some(target) = &run.target {
        // Done by an earlier run, and still there: a file deleted since (to
        // make room after a disk-full stop, say) or cut short is restored
        // again, not skipped on the journal's word; so is one with other
        // names (a hard link put in its place: h42 #5), or whose mtime is no
        // longer the one the run gave it (changed since; 2 s of slack for
        // file systems that keep coarse times).
        let still_there = || {
            target.existing_file(&segments).is_some_and(|stat| {
                let mtime_ms =
                    stat.st_mtime as i128 * 1000 + stat.st_mtime_nsec as i128 / 1_000_000;
                stat.st_size as u64 == entry.size_bytes
                    && stat.st_nlink == 1
                    && entry
                        .mtime_ms
                        .is_none_or(|want| (mtime_ms - want as i128).abs() < 2000)
            })
        };
        // `--skip-existing` promises the same SHA1, not only the size: a
        // file with a digest to compare is hashed below like any other (it
        // may have been changed in place since).
        let hashed_below = options.skip_existing
            && matches!(
                entry.expected,
                ExpectedSha1::Verified(_) | ExpectedSha1::Unverified(_)
            );
        if !hashed_below && target.is_completed(&entry.name, &key) && still_there() {
            return skip("journal");
        }
    }
    if options.skip_existing {
        if options.dry_run {
            if local_size(&options.dir, &segments) == Some(entry.size_bytes) {
                return;
            }
        } else if let Some((fd, stat)) = run.target().open_existing(&segments) {
            let file = std::fs::File::from(fd);
            if stat.st_size as u64 == entry.size_bytes && same_sha1(&file, &entry.expected) {
                // Kept, with the time a restored file gets: else the tree's
                // times would depend on the flag (and mislead make, rsync).
                // Not through a hard link, though: the inode is also a file
                // outside DIR (a `cp -al` snapshot), which a restore, making
                // a new inode, would leave alone.
                if let Some(mtime_ms) = entry.mtime_ms.filter(|_| stat.st_nlink == 1) {
                    let _ = rustix::fs::futimens(&file, &crate::dest::timestamps_at(mtime_ms));
                }
                return skip("exists");
            }
        }
    }
    // Bytes that cannot be verified, where that is not acceptable, are not
    // fetched at all: a broken published digest, or none under
    // --require-verified.
    let unfetchable = if entry.sse_c.is_some() && options.sse_c_keys.is_none() {
        Some(crate::b2::sse::NO_KEY.to_string())
    } else if let Some(why) = entry.expected.malformed() {
        Some(why)
    } else if options.require_verified && entry.expected == ExpectedSha1::None {
        Some("no published SHA1 to verify against (--require-verified): not downloaded".into())
    } else {
        None
    };
    if let Some(reason) = unfetchable {
        if options.dry_run {
            say!("failed\t{:?}\t{reason}", entry.name);
            run.reporter.count_predicted_failure(&entry.name);
        } else {
            run.reporter
                .record_unwritten(&entry, Status::Failed, reason);
        }
        return;
    }
    if options.dry_run {
        use std::io::{IsTerminal as _, Write as _};
        // A name may hold C1 controls (B2 allows them; C0 and DEL were
        // refused above): escaped on a terminal, where one could move the
        // cursor or recolour the screen, as they are into a pipe, for the
        // program that reads the list (as `ls` does).
        static STDOUT_IS_TERMINAL: OnceLock<bool> = OnceLock::new();
        let name = match *STDOUT_IS_TERMINAL.get_or_init(|| std::io::stdout().is_terminal()) {
            true => crate::printable(&entry.name, false),
            false => std::borrow::Cow::Borrowed(entry.name.as_str()),
        };
        let line = format!("{}\t{name}\n", entry.size_bytes);
        match std::io::stdout().lock().write_all(line.as_bytes()) {
            Ok(()) => {}
            // Nobody reads on (`--dry-run | head`): list no further.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                run.stop.store(true, Ordering::Release);
            }
            // A full disk, /dev/full: the list is cut short, and says so.
            Err(error) => run.fail_run(Error::io("writing the --dry-run list to stdout", error)),
        }
        return;
    }
    // Only a dry run (returned above) has none.
    let scheduler = scheduler.expect("a real run has a scheduler");
    let target = run.target();
    let (parent_segments, leaf) = segments.split_at(segments.len() - 1);
    let parent = match target.parent_dir(parent_segments) {
        Ok(parent) => parent,
        Err(PathError::Refused(reason)) => return refuse(reason),
        Err(PathError::Failed(error)) => return fail(error),
    };
    // A large file is renamed from DIR/.ringdown/partial, and so is a small
    // one that replaces a name or cannot be made unnamed: neither can cross
    // into another mount inside DIR (EXDEV), even a bind mount of the same
    // file system. Which small files would cross is known only as each is
    // named, after its download: every file there is refused before it.
    if !target.same_mount(&parent) {
        let why = format!(
            "{display_path}: its directory is on another mount than DIR (a mount point, \
             bind mount or btrfs subvolume inside DIR); restore that part with DIR set to it"
        );
        let cross_device = std::io::Error::from_raw_os_error(libc::EXDEV);
        return fail(Error::io(why, cross_device));
    }
    let is_large = entry.size_bytes >= options.engine.part_size_bytes;
    // `auto` leaves objects below a part to the page cache: on the mix
    // (`scripts/bench.sh --scenario mixed`, the origin reading its disk
    // cold), O_DIRECT for its 1 MiB objects saved 5-8% of the client's CPU
    // and cost 10-20% of wall time, its writes meeting the origin's reads at
    // the disk where buffered ones wait for writeback after the run.
    let direct = if is_large || options.direct_io == DirectIo::On {
        options.direct_io.for_object(entry.size_bytes)
    } else {
        DirectIo::Off
    };
    let resume_bytes = if is_large {
        target.resumable_bytes(&key)
    } else {
        None
    };
    // A large object started afresh says so before its partial file is
    // made: a record an earlier run left for that name (a partial since
    // removed) must not vouch for the new file's zeros after a kill.
    if is_large && resume_bytes.is_none() {
        if let Err(error) = target.journal_chunks(&key, 0) {
            return fail(error);
        }
    }
    let created = if is_large {
        target.large_partial(
            target.large_temp_name(&key),
            &display_path,
            entry.size_bytes,
            direct,
            resume_bytes.is_some(),
        )
    } else {
        target.create_partial(&parent, &display_path, entry.size_bytes, direct)
    };
    let (file, direct_io, partial) = match created {
        Ok(created) => created,
        Err(error) => return fail(error),
    };
    if crate::dest::writes_direct(direct_io, entry.size_bytes) {
        run.direct_io_used.store(true, Ordering::Relaxed);
    }
    run.reporter
        .files
        .bytes_to_fetch
        .fetch_add(entry.size_bytes, Ordering::Relaxed);
    let mut task = FileTask {
        key,
        large: is_large,
        leaf: leaf[0].to_string(),
        entry,
        parent,
        display_path,
        partial,
        resumed_bytes: 0,
        journaled_bytes: Arc::new(AtomicU64::new(0)),
    };
    // The engine owns the file from here (see `Destination`).
    let destination = Destination {
        fd: file,
        direct_io,
    };
    let size_bytes = task.entry.size_bytes;
    let object = ObjectSpec {
        path_and_query: download_path(base, &options.bucket, &task.entry),
        display_name: format!("b2://{}/{}", options.bucket, task.entry.name),
        expect_file_id: task.entry.file_id.clone(),
        validator: None,
        sse_c: match (&options.sse_c_keys, &task.entry.sse_c) {
            (Some(ring), Some(encryption)) => Some(Arc::new(KeyChoice::new(
                Arc::clone(ring),
                encryption.key_id.as_deref(),
            ))),
            _ => None,
        },
        plain_url: false,
        size_bytes,
        expected_sha1: task.entry.expected.digest().copied(),
        fsync: options.fsync,
    };
    let work = if task.large {
        let resume = resume_bytes
            .map(engine::resumable_prefix)
            .filter(|&bytes| bytes > 0 && bytes <= size_bytes)
            .and_then(|bytes| {
                let note_as = (!run.reporter.quiet).then_some(task.entry.name.as_str());
                let Partial::Named { name, file } = &task.partial else {
                    return None;
                };
                engine::hash_prefix(&target.partial, name, file, bytes, note_as)
            });
        if let Some(resume) = &resume {
            task.resumed_bytes = resume.offset_bytes;
            task.journaled_bytes
                .store(resume.offset_bytes, Ordering::Release);
            run.reporter
                .files
                .bytes_to_fetch
                .fetch_sub(resume.offset_bytes, Ordering::Relaxed);
            if !run.reporter.quiet {
                say!(
                    "ringdown: {}: resuming at byte {} of {size_bytes} (journal)",
                    task.entry.name,
                    resume.offset_bytes
                );
            }
        }
        let on_written = {
            let run = Arc::clone(run);
            let key = task.key.clone();
            let journaled_bytes = Arc::clone(&task.journaled_bytes);
            Box::new(move |boundary| {
                // A failed journal line costs a re-download after a crash, no more.
                if run.target().journal_chunks(&key, boundary).is_ok() {
                    journaled_bytes.store(boundary, Ordering::Release);
                }
            })
        };
        Work::Large(LargeJob {
            spec: LargeSpec {
                object,
                destination,
                on_written: Some(on_written),
            },
            resume,
            done: finish_later(run, task),
        })
    } else {
        Work::Object(ObjectJob::new(object, destination, finish_later(run, task)))
    };
    if let Err(error) = scheduler.submit(work) {
        run.fail_run(error);
    }
}

/// What the engine runs on a core thread once the file's last write completed.
fn finish_later(run: &Arc<Run>, task: FileTask) -> Done {
    let run = Arc::clone(run);
    Box::new(move |result: ObjectResult| {
        let mut task = task;
        if result.started_over {
            // Downloaded again from byte 0: the prefix found on disk was
            // thrown away, and every byte was fetched.
            task.resumed_bytes = 0;
        }
        let sha1 = result
            .outcome
            .map_err(|failure| (failure.error, failure.run_fatal));
        finish_file(&run, task, sha1, result.attempts);
    })
}

/// A note for each `--include`/`--exclude` glob that matched no listed name:
/// most often a glob written for full names (as `--dry-run` prints them)
/// where it matches names relative to PREFIX.
fn unmatched_globs(options: &RestoreOptions, source: &str) -> Vec<String> {
    let prefix = options.folder_prefix.as_str();
    options
        .filter
        .unmatched()
        .into_iter()
        .map(|(flag, pattern)| {
            let hint = match pattern.strip_prefix(prefix).filter(|_| !prefix.is_empty()) {
                Some(relative) => format!(
                    "globs match names relative to PREFIX {prefix:?}: did you mean {relative:?}?"
                ),
                None => "globs match whole names relative to PREFIX".to_string(),
            };
            format!("{flag} {pattern:?} matched no name under {source} ({hint})")
        })
        .collect()
}

/// Why a name beneath a file listed (and still downloading) earlier is refused.
fn in_the_way(file: &str) -> String {
    format!("{file}: a file is in the way of a directory (listed earlier, first name wins)")
}

/// By fileId, so a newer upload under the same name cannot be spliced in.
/// Without a fileId (a server that lists none), by bucket and name.
fn download_path(base: &str, bucket: &str, entry: &ListEntry) -> String {
    use crate::b2::b2_url_encode;
    match &entry.file_id {
        Some(id) => format!(
            "{base}/b2api/v3/b2_download_file_by_id?fileId={}",
            b2_url_encode(id)
        ),
        None => format!(
            "{base}/file/{}/{}",
            b2_url_encode(bucket),
            b2_url_encode(&entry.name)
        ),
    }
}

/// `--dry-run --skip-existing`: the size of a regular file at `segments`
/// beneath `dir`, looked up as the restore would (no symlink followed, a
/// symlinked parent included), so the dry run leaves out what the restore
/// would skip, no more.
fn local_size(dir: &std::path::Path, segments: &[&str]) -> Option<u64> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    let root = rustix::fs::open(dir, flags | OFlags::DIRECTORY, Mode::empty()).ok()?;
    target::existing_file_beneath(&root, segments).map(|stat| stat.st_size as u64)
}

/// Hashes an existing local file and compares it with the published digest.
fn same_sha1(file: &std::fs::File, expected: &ExpectedSha1) -> bool {
    use sha1::Digest;
    let (ExpectedSha1::Verified(expected) | ExpectedSha1::Unverified(expected)) = expected else {
        return false;
    };
    crate::verify::sha1_of(file)
        .is_ok_and(|(sha1, _)| <[u8; 20]>::from(sha1.finalize()) == *expected)
}

/// Verify → mtime → name (`Target::publish`: a link or a rename) →
/// journal → report. Runs on the thread that
/// downloaded the file, after its last write completed.
fn finish_file(
    run: &Run,
    task: FileTask,
    sha1: std::result::Result<[u8; 20], (Error, bool)>,
    attempts: u32,
) {
    let target = run.target();
    let entry = &task.entry;
    let record =
        |status: Status, sha1: Option<&[u8; 20]>, verified: bool, reason: Option<String>| {
            run.reporter.record(FileRecord {
                entry,
                resumed_bytes: task.resumed_bytes,
                // Only a file put in place is there.
                path: (status == Status::Ok).then(|| task.display_path.clone()),
                sha1: sha1.map(|sha1| to_hex(sha1)),
                verified,
                attempts,
                status,
                reason,
            });
        };
    let actual = match sha1 {
        Ok(actual) => actual,
        Err(_) if run.options.engine.is_cancelled() => {
            // Interrupted: not a failure. A large object keeps its partial
            // file and journaled chunks for the next run.
            if !task.large {
                target.discard(task.partial);
            }
            return;
        }
        Err((error, run_fatal)) => {
            // Refused midway or the cap spent: what arrived is kept for the
            // run that fixes the key (exit 3) or follows the cap's reset, as
            // `get` keeps it; else it goes (exit 1).
            let kept = error.keeps_partials() || run.stops_keeping_partials();
            match task.partial {
                Partial::Named { name, .. }
                    if task.large && kept && task.journaled_bytes.load(Ordering::Acquire) > 0 =>
                {
                    run.kept_for_resume.lock().expect("kept lock").insert(name);
                }
                partial => target.discard(partial),
            }
            record(Status::Failed, None, false, Some(error.to_string()));
            if run_fatal {
                run.fail_run(error);
            }
            return;
        }
    };
    let verified = match &entry.expected {
        ExpectedSha1::Verified(expected) | ExpectedSha1::Unverified(expected)
            if *expected != actual =>
        {
            target.discard(task.partial);
            record(
                Status::Failed,
                Some(&actual),
                false,
                Some(format!(
                    "SHA1 mismatch: expected {}, got {}",
                    to_hex(expected),
                    to_hex(&actual)
                )),
            );
            return;
        }
        ExpectedSha1::Verified(_) | ExpectedSha1::Unverified(_) => true,
        // (Malformed never reaches a download: `schedule` fails it.)
        ExpectedSha1::None | ExpectedSha1::Malformed(_) => false,
    };
    if let Some(mtime_ms) = entry.mtime_ms {
        target.set_mtime(&task.partial, mtime_ms);
    }
    match target.publish(task.partial, &task.parent, &task.leaf, &task.display_path) {
        Ok(()) => {}
        Err(PathError::Refused(reason)) => {
            record(Status::Refused, Some(&actual), verified, Some(reason));
            return;
        }
        Err(PathError::Failed(error)) => {
            record(
                Status::Failed,
                Some(&actual),
                verified,
                Some(error.to_string()),
            );
            // The disk full or read-only stops the run, as at a creation.
            if matches!(error, Error::Fatal(_)) {
                run.fail_run(error);
            }
            return;
        }
    }
    let journaled = if run.options.fsync {
        target.journal_completed_synced(task.parent, &entry.name, &task.key)
    } else {
        target.journal_completed(&entry.name, &task.key)
    };
    if let Err(error) = journaled {
        run.fail_run(error);
    }
    let reason = (!verified).then(|| "no published SHA1 (unverified)".to_string());
    record(Status::Ok, Some(&actual), verified, reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_escape_c1_and_read_back_the_same() {
        let value = serde_json::json!({"name": "esc\u{9b}31m\u{7f}\u{85}é\u{a0}x", "reason": null});
        let line = json_escaping_c1(&value.to_string()).into_owned();
        assert!(
            !line.chars().any(|c| ('\u{7f}'..='\u{9f}').contains(&c)),
            "{line:?}"
        );
        // U+00A0 is no control: kept as it is.
        assert!(
            line.contains("esc\\u009b31m\\u007f\\u0085é\u{a0}x"),
            "{line:?}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            value
        );
        let plain = value
            .to_string()
            .replace('\u{9b}', "")
            .replace(['\u{7f}', '\u{85}'], "");
        assert!(matches!(
            json_escaping_c1(&plain),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_report_may_go_in_dir_before_the_run_makes_it() {
        use std::path::Path;
        assert!(is_within(Path::new("/a/b/c"), Path::new("/a/b")));
        assert!(is_within(Path::new("/a/b"), Path::new("/a/b/.")));
        assert!(is_within(Path::new("out"), Path::new("./out")));
        assert!(!is_within(Path::new("/a/bc"), Path::new("/a/b")));
        assert!(!is_within(Path::new("/a"), Path::new("/a/b")));
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("new/dir");
        assert!(check_report_path(&dir.join("report.jsonl"), &dir).is_ok());
        assert!(check_report_path(&work.path().join("new/r.jsonl"), &dir).is_ok());
        let elsewhere = work.path().join("other/r.jsonl");
        let refused = check_report_path(&elsewhere, &dir).unwrap_err().to_string();
        assert!(refused.contains("does not exist"), "{refused}");
    }

    #[test]
    fn downloads_by_id_or_by_bucket_and_name() {
        let mut entry = ListEntry::named("otherbkt/secret.txt", Action::Upload);
        // Without the bucket, `/file/otherbkt/secret.txt` is another bucket's object.
        assert_eq!(
            download_path("https://f.example", "bkt", &entry),
            "https://f.example/file/bkt/otherbkt/secret.txt"
        );
        entry.file_id = Some("4_z1+2".into());
        assert_eq!(
            download_path("", "bkt", &entry),
            "/b2api/v3/b2_download_file_by_id?fileId=4_z1%2B2"
        );
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let mut options = RestoreOptions::new(
            "b2://bkt",
            "/tmp/x",
            "production",
            "visible-key-id",
            "K005-very-secret-application-key",
        )
        .unwrap();
        options.sse_c_keys = Some(Arc::new(
            Keyring::new(vec![CustomerKey::from_bytes(
                b"sse-c-secret-sse-c-secret-012345",
            )])
            .unwrap(),
        ));
        let text = format!("{options:?} {options:#?}");
        // The SSE-C key shows as its MD5 only (base64 of the key starts "c3NlLWMt").
        assert!(
            !text.contains("c3NlLWMt") && text.contains("CustomerKey(md5 "),
            "{text}"
        );
        assert!(!text.contains("very-secret"), "{text}");
        assert!(text.contains("visible-key-id") && text.contains("<redacted>"));
    }
}

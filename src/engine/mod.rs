//! Thread-per-core downloads. One `scheduler::Scheduler` runs every
//! download: N OS threads, each with its own io_uring runtime, buffer pool,
//! connections and histograms; small objects are one GET each (`object`),
//! large ones are split into chunks spread over every core and connection
//! (`large`, `chunk`). `get` is a scheduler with one object (`Fetch`).

mod chunk;
mod conn;
#[doc(hidden)]
pub mod failpoint;
pub(crate) mod failure;
pub mod large;
mod object;
mod pace;
mod request;
pub mod scheduler;
pub mod stream;
mod written;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::client::conn::Origin;
use crate::error::{Error, Result};
use crate::stats::StageHistograms;
use large::{LargeJob, LargeSpec, OnWritten};
use scheduler::{Destination, ObjectJob, ObjectSpec, PoolSource, Scheduler, Work};

/// How the engine is tuned; resolved from flags by `cli/`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub cores: usize,
    /// Whether each core's thread is pinned to a CPU (the i-th of the
    /// affinity mask), decided when the run starts: `Auto` pins only when
    /// the mask has exactly `cores` CPUs. Runs side by side in one process
    /// should say `Off`: each would pin its core 0 to the same CPU.
    pub pin: crate::runtime::PinMode,
    pub connections_per_core: usize,
    /// Connections per core that may take chunks of large objects at once
    /// (more than `connections_per_core` count as that many); the part size
    /// is sized for these.
    pub large_connections_per_core: usize,
    pub buffers_per_core: usize,
    pub buffer_size_bytes: usize,
    pub part_size_bytes: u64,
    /// Tries of each chunk or object, the first included. The calls that
    /// start a run (authorization, bucket lookup, first listing page, a
    /// plain URL's probe) make the fewer of this and `config::API_ATTEMPTS`.
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub timeout: Duration,
    /// Register buffers with the ring (false when RLIMIT_MEMLOCK is too small).
    pub register_buffers: bool,
    /// `--limit-rate`: bytes received per second, over every core and
    /// connection (each core paces its connections with an equal share).
    pub limit_rate_bytes_per_s: Option<u64>,
    /// Set by a signal handler: hand out no more chunks or objects; requests
    /// in flight finish and their writes complete.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// How many connections per core fit in `open_files_limit` descriptors
/// (`RLIMIT_NOFILE`): `connections_per_core` when all do, fewer when not
/// (`Ok(fewer)`), or why not even one does. `small_objects`: a restore,
/// where each connection also holds the objects it reads and claimed
/// ahead (`OPEN_FILES_PER_OBJECT` each), queued objects hold theirs, and
/// so do objects being written after their connection moved on (one per
/// buffer at most: `buffers_per_core`); `get` holds one file.
pub fn connections_within_open_files(
    open_files_limit: u64,
    cores: usize,
    connections_per_core: usize,
    buffers_per_core: usize,
    small_objects: bool,
) -> std::result::Result<usize, String> {
    use crate::config::{
        OPEN_FILES_PER_OBJECT, OPEN_FILES_RESERVED, PIPELINE_OBJECTS_AHEAD,
        SCHEDULER_QUEUE_JOBS_MAX, SCHEDULER_QUEUE_JOBS_PER_CORE,
    };
    let cores = cores.max(1) as u64;
    let (per_connection, queued) = if small_objects {
        let queued_jobs =
            (SCHEDULER_QUEUE_JOBS_PER_CORE as u64 * cores).min(SCHEDULER_QUEUE_JOBS_MAX as u64);
        let ending_jobs = buffers_per_core as u64 * cores;
        let per_object = OPEN_FILES_PER_OBJECT;
        (
            1 + per_object * (1 + PIPELINE_OBJECTS_AHEAD as u64),
            per_object * (queued_jobs + ending_jobs),
        )
    } else {
        (1, 1)
    };
    let fixed = OPEN_FILES_RESERVED + queued;
    let fit = open_files_limit.saturating_sub(fixed) / (cores * per_connection);
    if fit == 0 {
        return Err(format!(
            "the open files limit (RLIMIT_NOFILE) is {open_files_limit}, below the ~{} \
             descriptors a run on {cores} cores needs with one connection each: raise it \
             (ulimit -n, systemd LimitNOFILE=) or give fewer --cores",
            fixed + cores * per_connection
        ));
    }
    Ok((fit as usize).min(connections_per_core))
}

/// How many buffers per core fit in a cgroup's `memory_limit_bytes` beside
/// what the rest of a run takes (`MEMORY_BESIDES_POOL_BYTES`):
/// `buffers_per_core` when all do, fewer (2 at least) when not, or why not
/// even 2 do. A registered pool is touched when registered: beyond the
/// limit it is an OOM kill, with nothing said.
pub fn buffers_within_memory(
    memory_limit_bytes: u64,
    cores: usize,
    buffer_size_bytes: usize,
    buffers_per_core: usize,
) -> std::result::Result<usize, String> {
    use crate::config::MEMORY_BESIDES_POOL_BYTES;
    let cores = cores.max(1) as u64;
    let per_buffer_on_each_core = cores * buffer_size_bytes.max(1) as u64;
    let fit =
        memory_limit_bytes.saturating_sub(MEMORY_BESIDES_POOL_BYTES) / per_buffer_on_each_core;
    if fit < 2 {
        return Err(format!(
            "the cgroup's memory limit is {} MiB, below the ~{} MiB a run on {cores} cores \
             needs with two buffers of {} KiB each (~{} MiB for the rest): raise the limit, or \
             give a smaller --buffer-size or fewer --cores",
            memory_limit_bytes >> 20,
            (MEMORY_BESIDES_POOL_BYTES + 2 * per_buffer_on_each_core).div_ceil(1 << 20),
            buffer_size_bytes >> 10,
            MEMORY_BESIDES_POOL_BYTES >> 20
        ));
    }
    Ok((fit.min(buffers_per_core as u64)) as usize)
}

impl EngineConfig {
    /// What `Download::run` and `Restore::run` do first, on the thread that
    /// runs them (`runtime::outside_tokio`): refuse this configuration if it
    /// is unusable, lift the soft open-files limit, and make `cancel` this
    /// thread's run flag (`runtime::stop_requested`) until the returned
    /// guard drops.
    pub fn begin_run(&self) -> Result<impl Drop + use<>> {
        self.check()?;
        crate::runtime::raise_open_files_limit();
        Ok(crate::runtime::RunInProgress::new(
            crate::runtime::cancel_on_this_thread(self.cancel.clone()),
        ))
    }

    /// This configuration fitted to the process's limits: as many
    /// connections per core as the open files limit allows
    /// (`within_open_files`), as many buffers per core as the cgroup's
    /// memory limit allows (`buffers_within_memory`); a notice for each
    /// that is fewer than asked, or an error when not even the least fits.
    pub fn within_limits(&self, small_objects: bool) -> Result<(EngineConfig, Vec<String>)> {
        let (mut config, open_files_notice) = self.within_open_files(small_objects)?;
        let mut notices: Vec<String> = open_files_notice.into_iter().collect();
        if let Some(limit) = crate::runtime::memory_limit_bytes() {
            let asked = config.buffers_per_core;
            let fit = buffers_within_memory(limit, config.cores, config.buffer_size_bytes, asked)
                .map_err(Error::Usage)?;
            if fit < asked {
                config.buffers_per_core = fit;
                notices.push(format!(
                    "the cgroup's memory limit ({} MiB) fits {fit} buffers per core, not the \
                     {asked} asked: running with {fit} (fewer bytes in flight)",
                    limit >> 20
                ));
            }
        }
        Ok((config, notices))
    }

    /// This configuration with as many connections per core as the open
    /// files limit allows, and a notice when that is fewer than asked.
    fn within_open_files(&self, small_objects: bool) -> Result<(EngineConfig, Option<String>)> {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let asked = self.connections_per_core;
        let fit = connections_within_open_files(
            limit,
            self.cores,
            asked,
            self.buffers_per_core,
            small_objects,
        )
        .map_err(Error::Usage)?;
        let mut config = self.clone();
        config.connections_per_core = fit;
        let notice = (fit < asked).then(|| {
            format!(
                "the open files limit (RLIMIT_NOFILE {limit}) fits {fit} connections per core, \
                 not the {asked} asked: running with {fit} (raise it with ulimit -n for more)"
            )
        });
        Ok((config, notice))
    }

    /// Refuses sizes the engine cannot write with O_DIRECT: buffers of whole
    /// 4 KiB blocks, parts of whole buffers. The CLI rounds its flags so;
    /// a library caller setting the fields by hand learns it here, before
    /// any request, rather than from EINVAL on the first write.
    pub fn check(&self) -> Result<()> {
        use crate::config::{BUFFER_SIZE_BYTES_MAX, DIRECT_IO_ALIGN_BYTES, buffer_size_ok};
        let buffer = self.buffer_size_bytes;
        if !buffer_size_ok(buffer as u64) {
            return Err(Error::Usage(format!(
                "EngineConfig: buffer_size_bytes {buffer} must be a multiple of \
                 {DIRECT_IO_ALIGN_BYTES} up to {BUFFER_SIZE_BYTES_MAX}"
            )));
        }
        let part = self.part_size_bytes;
        if part == 0 || part % buffer as u64 != 0 {
            return Err(Error::Usage(format!(
                "EngineConfig: part_size_bytes {part} must be a whole number of buffers \
                 ({buffer} bytes each): use {}, as `--part-size` rounds",
                part.max(1).next_multiple_of(buffer as u64)
            )));
        }
        // What the CLI refuses, a library caller is refused too: each of
        // these hung or panicked a run instead (rate 0 fetched nothing,
        // forever; one buffer tripped the pool's assertion).
        if self.cores == 0 || self.connections_per_core == 0 || self.large_connections_per_core == 0
        {
            return Err(Error::Usage(
                "EngineConfig: cores, connections_per_core and large_connections_per_core \
                 must be at least 1"
                    .into(),
            ));
        }
        if self.cores > crate::config::CORES_MAX
            || self.connections_per_core > crate::config::CONNECTIONS_PER_CORE_MAX
        {
            return Err(Error::Usage(format!(
                "EngineConfig: cores {} and connections_per_core {} must be at most {} and {}",
                self.cores,
                self.connections_per_core,
                crate::config::CORES_MAX,
                crate::config::CONNECTIONS_PER_CORE_MAX
            )));
        }
        if self.buffers_per_core < 2 {
            return Err(Error::Usage(
                "EngineConfig: buffers_per_core must be at least 2 (one is kept for the \
                 lowest unhashed offset)"
                    .into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(Error::Usage(
                "EngineConfig: max_attempts must be at least 1 (it counts the first)".into(),
            ));
        }
        if self.retry_base_ms > self.retry_max_ms {
            return Err(Error::Usage(format!(
                "EngineConfig: retry_base_ms {} is above retry_max_ms {}",
                self.retry_base_ms, self.retry_max_ms
            )));
        }
        if self.limit_rate_bytes_per_s == Some(0) {
            return Err(Error::Usage(
                "EngineConfig: limit_rate_bytes_per_s must be above 0 (None: no limit)".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::Usage("EngineConfig: timeout must be above 0".into()));
        }
        let buffers = self.buffers_per_core;
        if buffers > crate::config::BUFFERS_PER_CORE_MAX {
            return Err(Error::Usage(format!(
                "EngineConfig: buffers_per_core {buffers} is more than a ring can register ({})",
                crate::config::BUFFERS_PER_CORE_MAX
            )));
        }
        Ok(())
    }

    /// A signal asked the run to stop: `cancel`, or the process-wide watcher
    /// of `runtime::watch_signals`.
    pub fn is_cancelled(&self) -> bool {
        self.stop_signal().is_some()
    }

    /// The signal a stopped run reports (`runtime::stop_signal`:
    /// `runtime::CANCELLED` for `cancel`).
    pub fn stop_signal(&self) -> Option<i32> {
        crate::runtime::stop_signal(self.cancel.as_deref())
    }
}

/// Where the bytes of one object come from.
#[derive(Clone)]
pub struct ObjectSource {
    pub origin: Origin,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Path and query of the GET, already URL-encoded.
    pub path_and_query: String,
    /// Credentials for the request; refreshed on `expired_auth_token`.
    pub auth: Option<Arc<crate::client::b2_api::Authorizer>>,
    /// B2: every response must carry this `x-bz-file-id` (no splicing of a
    /// newer upload under the same name).
    pub expect_file_id: Option<String>,
    /// Plain URLs: every answer must be of the version the probe saw, and
    /// requests carry `If-Match` when it is a strong ETag that can be sent.
    pub validator: Option<Validator>,
    /// B2 SSE-C: which of the customer keys given the requests carry.
    pub sse_c: Option<Arc<crate::b2::KeyChoice>>,
    /// What shows in messages: `b2://bucket/name` or the URL without query.
    pub display_name: String,
}

/// What names the version of a plain URL's object that its probe saw: the
/// ETag (weak or strong), else Last-Modified. An answer that carries the
/// same header with another value is of another version: an origin that
/// ignores `If-Match` (or a weak ETag, which `If-Match` cannot carry) would
/// otherwise splice two versions into one file and report it done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    /// `etag` or `last-modified`.
    pub header: &'static str,
    pub value: String,
}

impl Validator {
    pub fn of(head: &crate::http::ResponseHead) -> Option<Validator> {
        let found = |header: &'static str| {
            head.header(header).map(|value| Validator {
                header,
                value: value.to_string(),
            })
        };
        found("etag").or_else(|| found("last-modified"))
    }

    /// The `If-Match` value requests carry, so a changed object fails
    /// loudly (412): a strong ETag as the origin sent it. One that is not
    /// visible ASCII (or huge) would come back altered or overflow the
    /// request head, and the origin would refuse every chunk; a weak one
    /// cannot be matched strongly. `matches` still sees a change then.
    pub fn if_match(&self) -> Option<&str> {
        Some(self.value.as_str())
            .filter(|_| self.header == "etag")
            .filter(|etag| !etag.starts_with("W/"))
            .filter(|etag| etag.len() <= crate::config::IF_MATCH_ETAG_MAX_BYTES)
            .filter(|etag| etag.bytes().all(|b| b.is_ascii_graphic()))
    }

    /// RFC 9110 §8.8.3.2's weak comparison for ETags: the opaque tags
    /// match, `W/` or not. Last-Modified: the same date.
    pub fn matches(&self, seen: &str) -> bool {
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
        match self.header {
            "etag" => opaque(&self.value) == opaque(seen),
            _ => self.value.trim() == seen.trim(),
        }
    }
}

/// The result of one object's download.
pub struct ObjectOutcome {
    /// The object's SHA1, or why it could not be fetched. The rest is there
    /// either way: a failed run's histograms tell where its time went.
    pub sha1: Result<[u8; 20]>,
    pub stages: StageHistograms,
    pub retries: u64,
    pub registered_buffers: bool,
    pub notices: Vec<String>,
}

/// Shared progress counters a caller may watch from another thread.
#[derive(Default)]
pub struct Progress {
    /// Bytes received: a large object's as they arrive on each connection
    /// (written and hashed in file order later), a small one's once written.
    pub bytes_done: AtomicU64,
    /// `get`: the bytes this run fetches (the object less a resumed prefix,
    /// and the object again for a round after a SHA1 mismatch), once known;
    /// 0 before. `restore` counts its totals per file, and here only the
    /// large objects fetched again after a SHA1 mismatch (`Job::next_round`).
    pub bytes_to_fetch: AtomicU64,
    pub retries: AtomicU64,
    /// Why the last retry was made (`Progress::last_retry`): a progress
    /// line of retries alone said nothing of a dead origin for minutes.
    last_retry: std::sync::Mutex<String>,
}

impl Progress {
    /// Back to nothing done, as a run starts: a `Download` run again counts
    /// from 0, not on top of its last run.
    pub fn reset(&self) {
        self.bytes_done.store(0, Ordering::Relaxed);
        self.bytes_to_fetch.store(0, Ordering::Relaxed);
        self.retries.store(0, Ordering::Relaxed);
        self.last_retry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Counts a retry, made because of `why`.
    pub fn count_retry(&self, why: &str) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_retry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.clear();
        last.push_str(why);
    }

    /// Why the last retry was made, at most `max_chars` of it ("" before
    /// any).
    pub fn last_retry(&self, max_chars: usize) -> String {
        let last = self
            .last_retry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.char_indices().nth(max_chars) {
            Some((end, _)) => format!("{}…", &last[..end]),
            None => last.clone(),
        }
    }
}

/// Of `journaled_bytes` (a journal's "done up to"), what a download may
/// resume from: all of it, in whatever part size this run uses
/// (`ChunkPlan::starting_at`), cut to the block its writes must start on
/// should the journal say otherwise (it never does).
pub fn resumable_prefix(journaled_bytes: u64) -> u64 {
    let block = crate::config::DIRECT_IO_ALIGN_BYTES as u64;
    journaled_bytes / block * block
}

/// Whether a download may resume at `offset_bytes` of an object of
/// `size_bytes`: a block boundary (as `resumable_prefix` gives), within it.
pub fn resume_offset_fits(offset_bytes: u64, size_bytes: u64) -> bool {
    offset_bytes == resumable_prefix(offset_bytes) && offset_bytes <= size_bytes
}

/// Where an interrupted download continues: `[0, offset_bytes)` is already
/// in the file and `sha1` covers it. The offset is a block boundary
/// (`resumable_prefix`), not necessarily one of this run's chunks.
pub struct Resume {
    pub offset_bytes: u64,
    pub sha1: sha1::Sha1,
}

/// Re-hashes `[0, bytes)` of a partial file an earlier run left in `dir`
/// (crash resume: reading the prefix back is the price of not fetching it).
/// `note_as`: the name to say it under first, for a long prefix. `None`
/// unless the name still leads to `written`, the partial file as reopened
/// to write the rest: the prefix hashed must be the one that goes under
/// the final name (h43 #13: a name swapped between the two opens had one
/// file's prefix vouch for another's, "verified", exit 0).
pub fn hash_prefix(
    dir: &OwnedFd,
    temp_name: &str,
    written: &OwnedFd,
    bytes: u64,
    note_as: Option<&str>,
) -> Option<Resume> {
    use std::io::Read;
    if let Some(name) = note_as.filter(|_| bytes >= crate::config::REHASH_NOTE_MIN_BYTES) {
        say!(
            "ringdown: {name}: reading back the {bytes} bytes already on disk to hash them \
             before resuming (about {} s)",
            bytes / crate::config::REHASH_BYTES_PER_S_ESTIMATE + 1
        );
    }
    let fd = rustix::fs::openat(
        dir,
        temp_name,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let identity = |fd: &OwnedFd| rustix::fs::fstat(fd).map(|stat| (stat.st_dev, stat.st_ino));
    if identity(&fd).ok()? != identity(written).ok()? {
        return None;
    }
    let (sha1, hashed) = crate::verify::sha1_of(std::fs::File::from(fd).take(bytes)).ok()?;
    (hashed == bytes).then_some(Resume {
        offset_bytes: bytes,
        sha1,
    })
}

/// How one object's bytes are requested.
pub enum Fetch {
    /// Ranged GETs in parts spread over every core and connection, skipping
    /// the chunks a `Resume` says are done and telling `on_written` of each
    /// chunk boundary the written prefix crosses.
    Ranged {
        resume: Option<Resume>,
        on_written: Option<OnWritten>,
    },
    /// One GET of the whole object on one connection, for an origin that
    /// ignores `Range`: a cut-off transfer that gets the whole object again
    /// starts over from byte 0.
    Whole,
}

/// The end of the reason of an object a stopped run never started.
pub const NOT_STARTED: &str = "not started: the run stopped";

/// The end of the reason of a large object a run stopped by an error
/// elsewhere (`scheduler::Stopper`) left unfinished.
pub const NOT_FINISHED: &str = "not finished: the run stopped";

/// Downloads one object of `object_size_bytes` into `file` (a scheduler
/// with this one object) and returns its SHA1, computed in order from
/// memory; O_DIRECT padding is already cut back.
pub fn download(
    config: &EngineConfig,
    source: &ObjectSource,
    object_size_bytes: u64,
    file: &OwnedFd,
    direct_io: bool,
    progress: Arc<Progress>,
    fetch: Fetch,
) -> Result<ObjectOutcome> {
    if let Fetch::Ranged {
        resume: Some(resume),
        ..
    } = &fetch
    {
        if !resume_offset_fits(resume.offset_bytes, object_size_bytes) {
            return Err(Error::Usage(format!(
                "resume offset {} is not a multiple of {} bytes within the object's {object_size_bytes}; \
                 round it down with engine::resumable_prefix",
                resume.offset_bytes,
                crate::config::DIRECT_IO_ALIGN_BYTES
            )));
        }
    }
    // No thread, ring, pool, buffer or connection that would get no work,
    // then no more connections than descriptors allow, nor buffers than
    // memory: a registered pool is touched whole, a small object's too.
    let mut config = config.clone();
    let bytes_left = match &fetch {
        Fetch::Ranged { resume, .. } => object_size_bytes
            .saturating_sub(resume.as_ref().map_or(0, |resume| resume.offset_bytes)),
        Fetch::Whole => object_size_bytes,
    };
    let parts_left = match &fetch {
        Fetch::Ranged { .. } => bytes_left.div_ceil(config.part_size_bytes),
        Fetch::Whole => {
            config.connections_per_core = 1;
            1
        }
    };
    config.cores = config.cores.max(1).min(parts_left.max(1) as usize);
    // One more than the object's bytes need: an O_DIRECT tail is padded.
    let buffers_needed = bytes_left.div_ceil(config.buffer_size_bytes as u64) + 1;
    config.buffers_per_core = config.buffers_per_core.min(buffers_needed.max(2) as usize);
    let (config, limit_notices) = config.within_limits(false)?;
    let scheduler = Scheduler::start(
        &config,
        PoolSource {
            origin: source.origin.clone(),
            tls: source.tls.clone(),
            auth: source.auth.clone(),
        },
        progress,
    )?;
    let fd = file
        .try_clone()
        .map_err(|error| Error::io("duplicating the destination file descriptor", error))?;
    let (sender, receiver) = std::sync::mpsc::channel();
    let object = ObjectSpec {
        path_and_query: source.path_and_query.clone(),
        display_name: source.display_name.clone(),
        expect_file_id: source.expect_file_id.clone(),
        validator: source.validator.clone(),
        sse_c: source.sse_c.clone(),
        plain_url: source.auth.is_none(),
        size_bytes: object_size_bytes,
        expected_sha1: None,
        fsync: false,
    };
    let destination = Destination { fd, direct_io };
    let done: scheduler::Done = Box::new(move |result| {
        let _ = sender.send(result);
    });
    let work = match fetch {
        Fetch::Ranged { resume, on_written } => Work::Large(LargeJob {
            spec: LargeSpec {
                object,
                destination,
                on_written,
            },
            resume,
            done,
        }),
        Fetch::Whole => Work::Object(ObjectJob::new(object, destination, done)),
    };
    let submitted = scheduler.submit(work);
    let report = scheduler.finish();
    submitted?;
    let mut report = report?;
    report.notices.extend(limit_notices);
    let sha1 = match receiver.recv() {
        Ok(result) => result.outcome.map_err(|failure| failure.error),
        Err(_) => Err(Error::Fatal(format!(
            "{}: the download never ended",
            source.display_name
        ))),
    };
    Ok(ObjectOutcome {
        sha1,
        stages: report.stages,
        retries: report.retries,
        registered_buffers: report.registered_buffers,
        notices: report.notices,
    })
}

#[cfg(test)]
mod tests {
    use super::Validator;
    use super::connections_within_open_files as fit;

    #[test]
    fn only_a_strong_sendable_etag_becomes_if_match() {
        let validator = |header: &'static str, value: &str| Validator {
            header,
            value: value.to_string(),
        };
        assert_eq!(validator("etag", "\"abc\"").if_match(), Some("\"abc\""));
        // Weak, not visible ASCII, too long, or a date: compared, never sent.
        assert_eq!(validator("etag", "W/\"abc\"").if_match(), None);
        assert_eq!(validator("etag", "\"a b\"").if_match(), None);
        let huge = format!("\"{}\"", "x".repeat(crate::config::IF_MATCH_ETAG_MAX_BYTES));
        assert_eq!(validator("etag", &huge).if_match(), None);
        let date = validator("last-modified", "Tue, 15 Nov 1994 08:12:31 GMT");
        assert_eq!(date.if_match(), None);
        // The weak comparison still sees the same version through `W/`.
        assert!(validator("etag", "W/\"abc\"").matches("\"abc\""));
        assert!(!validator("etag", "\"abc\"").matches("\"abd\""));
    }

    /// The prefix is hashed only from the file that is written to and
    /// named: a name that leads elsewhere now resumes nothing (h43 #13).
    #[test]
    fn a_prefix_is_hashed_only_from_the_file_written() {
        use rustix::fs::{Mode, OFlags};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p"), b"prefix--").unwrap();
        std::fs::write(dir.path().join("other"), b"prefix--").unwrap();
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let dir_fd = rustix::fs::open(dir.path(), flags, Mode::empty()).unwrap();
        let open = |name| rustix::fs::openat(&dir_fd, name, OFlags::RDWR, Mode::empty()).unwrap();
        let (written, elsewhere) = (open("p"), open("other"));
        let resume = super::hash_prefix(&dir_fd, "p", &written, 8, None).unwrap();
        assert_eq!(resume.offset_bytes, 8);
        assert!(super::hash_prefix(&dir_fd, "p", &elsewhere, 8, None).is_none());
    }

    /// A library caller's resume offset off a block, or past the object,
    /// is a usage error before anything starts (it was an assert inside the
    /// scheduler's lock: a panic, reported as a bug).
    #[test]
    fn a_resume_offset_off_a_block_is_a_usage_error() {
        use super::{Fetch, ObjectSource, Progress, Resume, download};
        let source = ObjectSource {
            origin: crate::client::conn::Origin::new(
                false,
                "example.test".into(),
                80,
                vec!["127.0.0.1:9".parse().unwrap()],
            ),
            tls: None,
            path_and_query: "/o".into(),
            auth: None,
            expect_file_id: None,
            validator: None,
            sse_c: None,
            display_name: "http://example.test/o".into(),
        };
        let file = tempfile::tempfile().unwrap();
        let config = crate::engine::EngineConfig::defaults(false);
        for offset_bytes in [100, 1 << 20] {
            let fetch = Fetch::Ranged {
                resume: Some(Resume {
                    offset_bytes,
                    sha1: <sha1::Sha1 as sha1::Digest>::new(),
                }),
                on_written: None,
            };
            let progress = std::sync::Arc::new(Progress::default());
            let size_bytes = 8192;
            let fd = std::os::fd::OwnedFd::from(file.try_clone().unwrap());
            match download(&config, &source, size_bytes, &fd, false, progress, fetch) {
                Err(crate::Error::Usage(message)) => {
                    assert!(message.contains("resume offset"), "{message}")
                }
                Err(other) => panic!("offset {offset_bytes}: {other}"),
                Ok(_) => panic!("offset {offset_bytes} accepted"),
            }
        }
    }

    #[test]
    fn connections_fit_the_open_files_limit() {
        // The default soft limit leaves `get` and restore as asked.
        assert_eq!(fit(1024, 2, 8, 12, false), Ok(8));
        assert_eq!(fit(1024, 2, 8, 12, true), Ok(8));
        // get at 32: (32 - 64 reserved - 1) does not fit even one.
        assert!(
            fit(32, 2, 64, 12, false)
                .unwrap_err()
                .contains("RLIMIT_NOFILE) is 32")
        );
        // get at 128: (128 - 65) / 2 cores = 31 per core.
        assert_eq!(fit(128, 2, 64, 12, false), Ok(31));
        // restore at 256, 2 cores, 2 buffers each: 64 + 3 × (32 queued + 4
        // being written) = 172 fixed; each connection 1 + 3 × 4 = 13
        // (OPEN_FILES_PER_OBJECT = 3 for the object it reads and the 3
        // claimed ahead): (256 - 172) / 26 = 3.
        assert_eq!(fit(256, 2, 128, 2, true), Ok(3));
        // With 12 buffers each, 24 objects being written hold 72 more.
        assert!(fit(256, 2, 128, 12, true).is_err());
        assert!(fit(128, 2, 8, 2, true).is_err());
        // Unlimited.
        assert_eq!(fit(u64::MAX, 64, 256, 12, true), Ok(256));
    }

    #[test]
    fn buffers_fit_the_cgroup_memory_limit() {
        use super::buffers_within_memory as fit;
        const MIB: u64 = 1 << 20;
        // No limit (v1's "unlimited"), or room for all: as asked.
        assert_eq!(fit(9223372036854771712, 2, 1 << 20, 16), Ok(16));
        assert_eq!(fit(64 * MIB, 2, 1 << 20, 16), Ok(16));
        // 48 MiB: 16 MiB beside the 32 for the rest, on 2 cores of 1 MiB buffers.
        assert_eq!(fit(48 * MIB, 2, 1 << 20, 16), Ok(8));
        // 2 GiB with 1,024 buffers of 64 MiB asked (h9's OOM kill): 15.
        assert_eq!(fit(2048 * MIB, 2, 64 << 20, 1024), Ok(15));
        // Not even 2 buffers per core: why, and what to do.
        let error = fit(32 * MIB, 2, 1 << 20, 12).unwrap_err();
        assert!(error.contains("memory limit is 32 MiB"), "{error}");
        assert!(error.contains("--buffer-size"), "{error}");
        assert!(fit(35 * MIB, 2, 1 << 20, 12).is_err());
        assert_eq!(fit(36 * MIB, 2, 1 << 20, 12), Ok(2));
    }

    #[test]
    fn a_library_config_the_cli_would_refuse_is_refused() {
        use super::EngineConfig;
        assert!(EngineConfig::defaults(false).check().is_ok());
        type Change = fn(&mut EngineConfig);
        let refused: [(&str, Change); 9] = [
            ("rate 0", |c| c.limit_rate_bytes_per_s = Some(0)),
            ("one buffer", |c| c.buffers_per_core = 1),
            ("no attempt", |c| c.max_attempts = 0),
            ("base above max", |c| c.retry_base_ms = c.retry_max_ms + 1),
            ("no large connection", |c| c.large_connections_per_core = 0),
            ("no timeout", |c| c.timeout = std::time::Duration::ZERO),
            ("no core", |c| c.cores = 0),
            ("too many cores", |c| c.cores = crate::config::CORES_MAX + 1),
            ("too many connections", |c| {
                c.connections_per_core = crate::config::CONNECTIONS_PER_CORE_MAX + 1
            }),
        ];
        for (what, change) in refused {
            let mut config = EngineConfig::defaults(false);
            change(&mut config);
            let error = config.check().expect_err(what);
            assert_eq!(error.exit_code(), crate::error::exit_code::USAGE, "{what}");
        }
    }
}

//! Thread-per-core download of one object: N OS threads, each with its own
//! io_uring runtime, buffer pool, connections and histograms. Cross-core
//! traffic is limited to taking the next chunk index (one atomic), the SHA1
//! baton (see `verify`), progress counters, and merging stats at the end.

mod chunk;
mod failure;
pub mod objects;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// How often a core looks for SIGINT/SIGTERM (a poll keeps signal handling
/// out of the rings).
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

use crate::client::conn::Origin;
use crate::error::{Error, Result};
use crate::plan::{Chunk, ChunkPlan};
use crate::stats::{Stage, StageHistograms};
use crate::uring::{self, BufferPool, File, PoolBuf, Registration};
use crate::verify::{ReorderWindow, SharedDigest, WrittenPrefix};

/// How the engine is tuned; resolved from flags by `cli/`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub cores: usize,
    pub pin_cores: bool,
    pub connections_per_core: usize,
    pub buffers_per_core: usize,
    pub buffer_size_bytes: usize,
    pub part_size_bytes: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub timeout: Duration,
    /// Register buffers with the ring (false when RLIMIT_MEMLOCK is too small).
    pub register_buffers: bool,
    /// Set by a signal handler: hand out no more chunks or objects; requests
    /// in flight finish and their writes complete.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl EngineConfig {
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|cancel| cancel.load(Ordering::Acquire))
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
    /// Plain URLs: `If-Match` this ETag so a changed object fails loudly.
    pub if_match: Option<String>,
    /// What shows in messages: `b2://bucket/name` or the URL without query.
    pub display_name: String,
}

/// The result of one object's download.
pub struct ObjectOutcome {
    pub sha1: [u8; 20],
    pub stages: StageHistograms,
    pub retries: u64,
    pub registered_buffers: bool,
    pub notices: Vec<String>,
}

/// Shared progress counters a caller may watch from another thread.
#[derive(Default)]
pub struct Progress {
    /// Bytes received and hashed (a write may still be in flight).
    pub bytes_done: AtomicU64,
    pub retries: AtomicU64,
    /// File offset below which every write has completed (`download`
    /// only): what a crash-resume journal may record.
    pub written_prefix_bytes: AtomicU64,
}

/// Everything the cores share about one object download.
pub(crate) struct Job {
    pub config: EngineConfig,
    pub source: ObjectSource,
    pub plan: ChunkPlan,
    pub digest: SharedDigest,
    pub direct_io: bool,
    next_chunk: AtomicU64,
    aborted: AtomicBool,
    first_error: Mutex<Option<Error>>,
    pub progress: Arc<Progress>,
    written: Mutex<WrittenPrefix>,
}

impl Job {
    /// A write completed: move the written prefix on (one short lock per
    /// buffer, off the receive path).
    pub fn wrote(&self, offset: u64, len: u64) {
        let prefix = self
            .written
            .lock()
            .expect("written lock")
            .complete(offset, len);
        self.progress
            .written_prefix_bytes
            .fetch_max(prefix, Ordering::Relaxed);
    }

    fn next_chunk(&self) -> Option<Chunk> {
        if self.config.is_cancelled() {
            self.abort(Error::Interrupted { signal: 0 });
        }
        if self.is_aborted() {
            return None;
        }
        let index = self.next_chunk.fetch_add(1, Ordering::Relaxed);
        self.plan.chunk(index)
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Stops the download: the first error wins and is reported.
    pub fn abort(&self, error: Error) {
        let mut first = self.first_error.lock().expect("error lock");
        if first.is_none() {
            *first = Some(error);
        }
        drop(first);
        self.aborted.store(true, Ordering::Release);
        self.digest.wake_all();
    }
}

/// The state of one core during a download. Lives on that core only.
pub(crate) struct Core {
    pub index: usize,
    pub job: Arc<Job>,
    pub pool: BufferPool,
    pub file: File,
    pub stats: RefCell<StageHistograms>,
    pub window: RefCell<ReorderWindow<PoolBuf>>,
    pub writes_in_flight: Cell<usize>,
    pub writes_drained: Notify,
    pub retries: Cell<u64>,
}

impl Core {
    pub fn record(&self, stage: Stage, elapsed: Duration) {
        self.stats.borrow_mut().record(stage, elapsed);
    }

    /// Hashes `data` if it starts at the frontier (a buffer just received,
    /// before its write completes), then everything parked behind it.
    pub fn hash_if_at_frontier(&self, offset: u64, data: &[u8]) -> bool {
        if self.job.digest.frontier() != offset || !self.hash(offset, data) {
            return false;
        }
        self.drain_hashable();
        self.frontier_moved();
        true
    }

    /// Hashes every parked buffer that sits at the frontier, in order.
    pub fn drain_hashable(&self) {
        let mut advanced = false;
        loop {
            let frontier = self.job.digest.frontier();
            let Some((offset, buf, data_len)) = self.window.borrow_mut().take_at(frontier) else {
                break;
            };
            let hashed = self.hash(offset, &buf.filled()[..data_len]);
            debug_assert!(hashed, "frontier moved under its owner");
            drop(buf);
            advanced = true;
        }
        if advanced {
            self.frontier_moved();
        }
    }

    fn hash(&self, offset: u64, data: &[u8]) -> bool {
        let started = std::time::Instant::now();
        let hashed = self.job.digest.hash_if_next(offset, data);
        if hashed {
            self.record(Stage::Hash, started.elapsed());
            self.job
                .progress
                .bytes_done
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        hashed
    }

    fn frontier_moved(&self) {
        // Our own hasher task must see completion too, hence all cores.
        self.job.digest.wake_all();
        // A connection of ours may now be the head and allowed the reserve.
        self.pool.wake_waiters();
    }
}

/// Downloads the object described by `plan` into `file`, on `config.cores`
/// threads, and returns its SHA1 computed in order from memory.
pub fn download(
    config: &EngineConfig,
    source: &ObjectSource,
    object_size_bytes: u64,
    file: &OwnedFd,
    direct_io: bool,
    progress: Arc<Progress>,
) -> Result<ObjectOutcome> {
    download_resumed(
        config,
        source,
        object_size_bytes,
        file,
        direct_io,
        progress,
        None,
    )
}

/// Where an interrupted download continues: `[0, offset_bytes)` is already
/// in the file and `sha1` covers it. The offset is a chunk boundary.
pub struct Resume {
    pub offset_bytes: u64,
    pub sha1: sha1::Sha1,
}

/// Runs beside a download (on another thread) until `finished` is set:
/// `record(boundary)` each time the written prefix crosses a chunk boundary
/// past `from_bytes` (hashing runs ahead of the writes, so only the written
/// prefix may be journaled), `tick()` every `JOURNAL_POLL_MS` before that.
/// Stops early when `record` fails.
pub fn journal_written_chunks(
    progress: &Progress,
    part_size_bytes: u64,
    from_bytes: u64,
    finished: &AtomicBool,
    mut record: impl FnMut(u64) -> bool,
    mut tick: impl FnMut(),
) {
    let mut journaled = from_bytes;
    loop {
        let done = finished.load(Ordering::Acquire);
        tick();
        let written = progress.written_prefix_bytes.load(Ordering::Relaxed);
        let boundary = written / part_size_bytes * part_size_bytes;
        if boundary > journaled {
            if !record(boundary) {
                return;
            }
            journaled = boundary;
        }
        if done {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(
            crate::config::JOURNAL_POLL_MS,
        ));
    }
}

/// Re-hashes `[0, bytes)` of a partial file an earlier run left in `dir`
/// (crash resume: reading the prefix back is the price of not fetching it).
pub fn hash_prefix(dir: &OwnedFd, temp_name: &str, bytes: u64) -> Option<Resume> {
    use std::io::Read;
    let fd = rustix::fs::openat(
        dir,
        temp_name,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let (sha1, hashed) = crate::verify::sha1_of(std::fs::File::from(fd).take(bytes)).ok()?;
    (hashed == bytes).then_some(Resume {
        offset_bytes: bytes,
        sha1,
    })
}

/// [`download`], skipping the chunks a `Resume` says are done.
pub fn download_resumed(
    config: &EngineConfig,
    source: &ObjectSource,
    object_size_bytes: u64,
    file: &OwnedFd,
    direct_io: bool,
    progress: Arc<Progress>,
    resume: Option<Resume>,
) -> Result<ObjectOutcome> {
    let plan = ChunkPlan::new(object_size_bytes, config.part_size_bytes);
    let (offset_bytes, sha1) = match resume {
        Some(resume) => (resume.offset_bytes, resume.sha1),
        None => (0, <sha1::Sha1 as sha1::Digest>::new()),
    };
    assert!(
        offset_bytes % config.part_size_bytes == 0 && offset_bytes <= object_size_bytes,
        "resume offset {offset_bytes} is not a chunk boundary"
    );
    let first_chunk = offset_bytes / config.part_size_bytes;
    let chunks_left = plan.chunk_count().saturating_sub(first_chunk);
    let cores = config.cores.max(1).min(chunks_left.max(1) as usize);
    progress
        .written_prefix_bytes
        .fetch_max(offset_bytes, Ordering::Relaxed);
    let job = Arc::new(Job {
        config: config.clone(),
        source: source.clone(),
        plan,
        digest: SharedDigest::resume(object_size_bytes, cores, offset_bytes, sha1),
        direct_io,
        next_chunk: AtomicU64::new(first_chunk),
        aborted: AtomicBool::new(false),
        first_error: Mutex::new(None),
        written: Mutex::new(WrittenPrefix::starting_at(offset_bytes)),
        progress,
    });
    let mut handles = Vec::with_capacity(cores);
    for core_index in 0..cores {
        let job = Arc::clone(&job);
        let fd = file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|error| Error::io("duplicating the destination file descriptor", error))?;
        let pin = config.pin_cores;
        let handle = std::thread::Builder::new()
            .name(format!("ringdown-core-{core_index}"))
            .spawn(move || run_core(core_index, job, fd, pin))
            .map_err(|error| Error::io("spawning a core thread", error))?;
        handles.push(handle);
    }
    let mut stages = StageHistograms::new();
    let mut retries = 0;
    let mut registered_all = true;
    let mut notices = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok(report)) => {
                stages.merge(&report.stages);
                retries += report.retries;
                if let Registration::Unregistered { reason } = report.registration {
                    registered_all = false;
                    if !notices.contains(&reason) {
                        notices.push(reason);
                    }
                }
            }
            Ok(Err(error)) => job.abort(error),
            Err(_) => job.abort(Error::Fatal("a core thread panicked".into())),
        }
    }
    if let Some(error) = job.first_error.lock().expect("error lock").take() {
        return Err(error);
    }
    if !job.digest.is_complete() {
        return Err(Error::Fatal(format!(
            "{}: download ended at byte {} of {}",
            source.display_name,
            job.digest.frontier(),
            object_size_bytes
        )));
    }
    Ok(ObjectOutcome {
        sha1: job.digest.finish(),
        stages,
        retries,
        registered_buffers: registered_all,
        notices,
    })
}

struct CoreReport {
    stages: StageHistograms,
    retries: u64,
    registration: Registration,
}

fn run_core(core_index: usize, job: Arc<Job>, fd: OwnedFd, pin: bool) -> Result<CoreReport> {
    if pin {
        crate::runtime::pin_current_thread(core_index);
    }
    let runtime = uring::Runtime::new()?;
    runtime.block_on(async move {
        let config = &job.config;
        let (pool, registration) = BufferPool::new(
            config.buffers_per_core,
            config.buffer_size_bytes,
            config.register_buffers,
        );
        let core = Rc::new(Core {
            index: core_index,
            job: Arc::clone(&job),
            pool,
            file: File::from_std(std::fs::File::from(fd)),
            stats: RefCell::new(StageHistograms::new()),
            window: RefCell::new(ReorderWindow::default()),
            writes_in_flight: Cell::new(0),
            writes_drained: Notify::new(),
            retries: Cell::new(0),
        });
        let hasher = uring::spawn(hash_loop(Rc::clone(&core)));
        let watcher = uring::spawn(interrupt_watch(Rc::clone(&core)));
        let mut connections = Vec::with_capacity(config.connections_per_core);
        for _ in 0..config.connections_per_core {
            connections.push(uring::spawn(chunk::connection_loop(Rc::clone(&core))));
        }
        for connection in connections {
            if connection.await.is_err() {
                job.abort(Error::Fatal("a connection task panicked".into()));
            }
        }
        // Never leave a write behind: the file is truncated and renamed next.
        while core.writes_in_flight.get() > 0 {
            core.writes_drained.notified().await;
        }
        core.drain_hashable();
        // Our connections are done; the hasher ends once every core's parked
        // buffers are hashed (or the job aborted).
        let _ = hasher.await;
        // The watcher only sleeps between polls (no io_uring op in flight), so
        // it can be cancelled; awaiting it cost up to `INTERRUPT_POLL` (100 ms)
        // at the end of every object.
        watcher.abort();
        let _ = watcher.await;
        core.window.borrow_mut().clear();
        let report = CoreReport {
            stages: core.stats.borrow().clone(),
            retries: core.retries.get(),
            registration,
        };
        // Close our descriptor on the ring before the runtime goes away; every
        // task holding the core has ended, so we are its only owner.
        if let Ok(core) = Rc::try_unwrap(core) {
            let _ = core.file.close().await;
        }
        Ok(report)
    })
}

/// Turns SIGINT/SIGTERM into an abort of the job, so every core drains its
/// writes and the caller removes the temporary file.
async fn interrupt_watch(core: Rc<Core>) {
    let job = &core.job;
    while !job.digest.is_complete() && !job.is_aborted() {
        if let Some(signal) = crate::runtime::interrupted() {
            job.abort(Error::Interrupted { signal });
            core.pool.wake_waiters();
            break;
        }
        tokio::time::sleep(INTERRUPT_POLL).await;
    }
}

/// Hashes this core's parked buffers whenever the frontier may have reached
/// them; ends when the object is fully hashed or the job aborted.
async fn hash_loop(core: Rc<Core>) {
    let waker = core.job.digest.core_waker(core.index);
    loop {
        let notified = waker.notified();
        core.drain_hashable();
        // The frontier moved somewhere: whichever of our connections now sits
        // at it may take the reserve buffer, so let waiters re-check.
        core.pool.wake_waiters();
        if core.job.digest.is_complete() || core.job.is_aborted() {
            break;
        }
        notified.await;
    }
    if core.job.is_aborted() {
        // Free parked buffers so connections waiting for one can see the abort.
        core.window.borrow_mut().clear();
        core.pool.wake_waiters();
    }
}

//! A large object, split into chunks that every core's connections take in
//! ascending order, hashed in file order across cores (see `verify`).
//!
//! `Job` is what all cores share about one object; `CoreJob` is one core's
//! part in it (a descriptor on its ring, its reorder window, its writes in
//! flight). A core joins a job when one of its connections first takes a
//! chunk; its finisher task leaves once that core's connections have moved
//! on, its writes have completed and the object is hashed. The last core to
//! leave completes the job: O_DIRECT tail, `fsync`, digest check, `done`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

use super::scheduler::{Core, Destination, Done, ObjectError, ObjectResult, ObjectSpec};
use super::written::WrittenPrefix;
use super::{Progress, Resume};
use crate::config::{BUFFERED_WRITES_PER_FILE_MAX, OBJECT_REDOWNLOADS_ON_MISMATCH};
use crate::error::{Error, Result};
use crate::plan::{Chunk, ChunkPlan};
use crate::stats::Stage;
use crate::uring::{File, PoolBuf};
use crate::verify::{ReorderWindow, SharedDigest};

/// Called with the new written prefix each time it crosses a chunk
/// boundary: everything below it is on disk (what a crash-resume journal may
/// record). Runs on a core thread, under the job's written-prefix lock, so
/// calls arrive in increasing order.
pub type OnWritten = Box<dyn Fn(u64) + Send + Sync>;

/// One large object to download in chunks.
pub struct LargeJob {
    pub spec: LargeSpec,
    /// Where an earlier run stopped (first round only).
    pub resume: Option<Resume>,
    pub done: Done,
}

/// What stays the same across download rounds of one large object.
pub struct LargeSpec {
    pub object: ObjectSpec,
    /// Every core that joins writes through its own copy of the fd.
    pub destination: Destination,
    pub on_written: Option<OnWritten>,
}

/// Why a run is stopping (`Shared::stop`), as a large object's chunks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A signal, or the library caller's `cancel` (`runtime::CANCELLED`):
    /// what the chunks in flight bring is kept for a resume.
    Signal(i32),
    /// The scheduler's `Stopper`: an error elsewhere ended the run
    /// (restore's run-fatal errors).
    Run,
}

impl Stop {
    /// The error of an object this stop left unfinished. A `Run` stop's is
    /// not the run's cause (that one was reported where it happened).
    fn error(self, display_name: &str) -> Error {
        match self {
            Stop::Signal(signal) => Error::Interrupted { signal },
            Stop::Run => Error::Fatal(format!("{display_name}: {}", super::NOT_FINISHED)),
        }
    }
}

/// Set in `Job::members` once the last core has left: nobody may join.
const CLOSED: u64 = 1 << 63;

/// Everything the cores share about one round of one object's download.
pub(crate) struct Job {
    pub spec: Arc<LargeSpec>,
    /// When the first round began.
    started: Instant,
    pub plan: ChunkPlan,
    pub digest: SharedDigest,
    pub progress: Arc<Progress>,
    next_chunk: AtomicU64,
    /// What stopped the handing out of chunks (`next_chunk`): the chunks
    /// in flight still finish, and the last connection to leave aborts the
    /// job with its error (`TakingChunks::drop`).
    stop: OnceLock<Stop>,
    /// After a stop, the offset of the lowest chunk that gave up (it
    /// failed, or waited to retry: nothing will fill its gap); `u64::MAX`
    /// while none did. What the chunks above it bring cannot extend the
    /// journaled prefix, so they stop too; those below it finish.
    given_up_at: AtomicU64,
    aborted: AtomicBool,
    first_error: Mutex<Option<Error>>,
    written: Mutex<Written>,
    /// Cores taking part (a count), or `CLOSED`.
    members: AtomicU64,
    /// Connections (on any core) taking chunks now.
    connections: AtomicUsize,
    done: Mutex<Option<Done>>,
    /// Rounds so far, counting this one (a SHA1 mismatch starts another).
    round: u32,
    /// The most attempts one chunk took, in this round or an earlier one.
    chunk_attempts_max: AtomicU32,
    /// One buffered write of this file at a time, across cores. The kernel
    /// serializes them anyway (ext4 takes the inode lock exclusively for a
    /// buffered write), but a core that finds it held *spins* on it: with
    /// each core's io_uring worker writing 1 MiB copies into the page cache,
    /// that spinning was 8% of a 1 GiB get's CPU, and one core alone got
    /// it done 0.4-0.6 s sooner. Waiting here costs nothing. O_DIRECT
    /// writes do not take this gate.
    pub write_gate: tokio::sync::Semaphore,
}

struct Written {
    prefix: WrittenPrefix,
    /// The last chunk boundary `on_written` was told of.
    reported_bytes: u64,
}

impl Job {
    pub fn new(
        large: LargeJob,
        part_size_bytes: u64,
        cores: usize,
        progress: Arc<Progress>,
    ) -> Job {
        Job::round(
            Arc::new(large.spec),
            Instant::now(),
            part_size_bytes,
            cores,
            progress,
            large.resume,
            large.done,
            1,
            0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn round(
        spec: Arc<LargeSpec>,
        started: Instant,
        part_size_bytes: u64,
        cores: usize,
        progress: Arc<Progress>,
        resume: Option<Resume>,
        done: Done,
        round: u32,
        chunk_attempts_max: u32,
    ) -> Job {
        let size_bytes = spec.object.size_bytes;
        let (offset_bytes, sha1) = match resume {
            Some(resume) => (resume.offset_bytes, resume.sha1),
            None => (0, <sha1::Sha1 as sha1::Digest>::new()),
        };
        // Chunks start where the resumed prefix ends, in this run's part
        // size: an earlier run's parts need not divide it (rounded down to
        // it, a rerun with larger parts fetched its whole prefix again).
        // Buffers land at aligned offsets, as O_DIRECT wants.
        assert!(
            super::resume_offset_fits(offset_bytes, size_bytes),
            "resume offset {offset_bytes} is not a block boundary"
        );
        let plan = ChunkPlan::starting_at(size_bytes, part_size_bytes, offset_bytes);
        Job {
            spec,
            started,
            plan,
            digest: SharedDigest::resume(size_bytes, cores, offset_bytes, sha1),
            progress,
            next_chunk: AtomicU64::new(0),
            stop: OnceLock::new(),
            given_up_at: AtomicU64::new(u64::MAX),
            aborted: AtomicBool::new(false),
            first_error: Mutex::new(None),
            written: Mutex::new(Written {
                prefix: WrittenPrefix::starting_at(offset_bytes),
                reported_bytes: offset_bytes,
            }),
            members: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            done: Mutex::new(Some(done)),
            round,
            chunk_attempts_max: AtomicU32::new(chunk_attempts_max),
            write_gate: tokio::sync::Semaphore::new(BUFFERED_WRITES_PER_FILE_MAX),
        }
    }

    /// The object's next round after a SHA1 mismatch: from byte 0, same
    /// object, cores and counters. The journal hears of it first (a
    /// boundary of 0): a run killed before this round's first boundary
    /// would resume from the last round's, over the bytes that failed.
    fn next_round(&self, done: Done) -> Job {
        if let Some(on_written) = &self.spec.on_written {
            on_written(0);
        }
        // Fetched again: a progress line's total grows by it.
        self.progress
            .bytes_to_fetch
            .fetch_add(self.spec.object.size_bytes, Ordering::Relaxed);
        Job::round(
            Arc::clone(&self.spec),
            self.started,
            self.plan.part_size_bytes(),
            self.digest.cores(),
            Arc::clone(&self.progress),
            None,
            done,
            self.round + 1,
            self.chunk_attempts_max.load(Ordering::Relaxed),
        )
    }

    /// A chunk is done with (fetched, or given up on) after `made` attempts.
    pub fn note_chunk_attempts(&self, made: u32) {
        self.chunk_attempts_max.fetch_max(made, Ordering::Relaxed);
    }

    /// The object's attempts, as `--report` counts them: the most one chunk
    /// took (`--max-attempts` bounds each chunk), plus one for every
    /// download again after a SHA1 mismatch.
    fn attempts(&self) -> u32 {
        self.chunk_attempts_max.load(Ordering::Relaxed).max(1) + (self.round - 1)
    }

    /// Connections (on any core) taking chunks now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether a connection should come: there are chunks to take, or no
    /// core has joined yet (an object with no chunks left, or one aborted
    /// before it began, is completed by the first core that joins).
    pub fn wants_connections(&self) -> bool {
        let stopping = self.stop.get().is_some();
        let has_chunks = !self.is_aborted() && !stopping && self.has_chunks_left();
        has_chunks || self.members.load(Ordering::Acquire) == 0
    }

    /// Whether chunks are left to take (a plain load: once none are, a
    /// connection checking each read must not touch the shared counter).
    pub fn has_chunks_left(&self) -> bool {
        self.next_chunk.load(Ordering::Relaxed) < self.plan.chunk_count()
    }

    /// The next chunk to fetch; none once the job is aborted, or once the
    /// run is stopping (`stop`, see `Shared::stop`): then the chunks in
    /// flight finish, so that what they received is kept for a resume (a
    /// chunk's bytes count only once all are written), and the job ends
    /// when the last of them does.
    pub fn next_chunk(&self, stop: Option<Stop>) -> Option<Chunk> {
        if self.is_aborted() {
            return None;
        }
        if let Some(stop) = stop {
            self.stop.get_or_init(|| stop);
            return None;
        }
        let index = self.next_chunk.fetch_add(1, Ordering::Relaxed);
        self.plan.chunk(index)
    }

    /// A connection taking chunks leaves, after `before - 1` others did or
    /// while they still work: the last one out of a job stopped with chunks
    /// left aborts it (nothing else will), so its cores finish and report
    /// the stop.
    fn connection_left(&self, before: usize) {
        let gave_up = self.given_up_at.load(Ordering::Acquire) != u64::MAX;
        let stopped_short = self
            .stop
            .get()
            .filter(|_| gave_up || self.has_chunks_left());
        if let (1, Some(stop)) = (before, stopped_short) {
            self.abort(stop.error(&self.spec.object.display_name));
        }
    }

    /// Whether the chunk at `offset`, which cannot finish by itself (it
    /// failed, or waits to retry), is to stop: the job is over, or the run
    /// is stopping (`stop`). Then it gives up alone: the chunks below it
    /// finish and are journaled, those above it stop (`gave_up_below`),
    /// and the last connection out ends the job (`connection_left`).
    pub fn chunk_stops(&self, stop: Option<Stop>, offset: u64) -> bool {
        if self.is_aborted() {
            return true;
        }
        let Some(stop) = stop else {
            return false;
        };
        self.stop.get_or_init(|| stop);
        if self.given_up_at.fetch_min(offset, Ordering::AcqRel) > offset {
            // Connections above it waiting for a buffer may now take the
            // reserve, to find out and leave (each core's hasher wakes
            // its pool's waiters).
            self.digest.wake_all();
        }
        true
    }

    /// Whether a chunk below `offset` (or at it) gave up after a stop: what
    /// a chunk at `offset` brings would never be journaled.
    pub fn gave_up_below(&self, offset: u64) -> bool {
        self.given_up_at.load(Ordering::Acquire) <= offset
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Stops the download: the first error wins and is reported.
    pub fn abort(&self, error: Error) {
        // Also runs while a panic unwinds (`Shared::poison`).
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(error);
        }
        drop(first);
        self.aborted.store(true, Ordering::Release);
        self.digest.wake_all();
    }

    /// A write completed: move the written prefix on, and tell `on_written`
    /// when it crosses a chunk boundary (one short lock per buffer).
    pub fn wrote(&self, offset: u64, len: u64) {
        let mut written = self.written.lock().expect("written lock");
        let prefix = written.prefix.complete(offset, len);
        let Some(on_written) = &self.spec.on_written else {
            return;
        };
        let boundary = self.plan.boundary_at_or_below(prefix);
        if boundary > written.reported_bytes {
            written.reported_bytes = boundary;
            on_written(boundary);
        }
    }

    /// A core takes part; false once the job is over.
    fn join(&self) -> bool {
        self.members
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |members| {
                (members & CLOSED == 0).then_some(members + 1)
            })
            .is_ok()
    }

    /// A core is done with the job; true for the last one (the job closes).
    fn leave(&self) -> bool {
        let before = self
            .members
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |members| {
                Some(if members == 1 { CLOSED } else { members - 1 })
            })
            .expect("always updates");
        before == 1
    }

    /// The object's digest, or why the download failed.
    fn outcome(&self) -> Result<[u8; 20]> {
        if let Some(error) = self.first_error.lock().expect("error lock").take() {
            return Err(error);
        }
        if !self.digest.is_complete() {
            return Err(Error::Fatal(format!(
                "{}: download ended at byte {} of {}",
                self.spec.object.display_name,
                self.digest.frontier(),
                self.spec.object.size_bytes
            )));
        }
        Ok(self.digest.finish())
    }
}

/// One core's part in a `Job`. Lives on that core only.
pub(crate) struct CoreJob {
    pub core: Rc<Core>,
    pub job: Arc<Job>,
    /// `None` only if duplicating the descriptor failed (the job is aborted).
    file: Option<File>,
    window: RefCell<ReorderWindow<PoolBuf>>,
    writes_in_flight: Cell<usize>,
    /// This core's connections working on the job now.
    connections: Cell<usize>,
    /// Wakes the finisher: a write completed or a connection moved on.
    changed: Notify,
}

impl CoreJob {
    /// This core's connections taking chunks of the job now.
    pub fn connections_here(&self) -> usize {
        self.connections.get()
    }

    pub fn file(&self) -> &File {
        self.file.as_ref().expect("a core with chunks has the file")
    }

    pub fn record(&self, stage: Stage, elapsed: std::time::Duration) {
        self.core.record(stage, elapsed);
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

    /// Frees the parked buffers past a chunk given up after a stop (see
    /// `park`), for the connections of this core waiting for one.
    fn release_past_gap(&self) {
        let gap = self.job.given_up_at.load(Ordering::Acquire);
        if gap != u64::MAX && self.window.borrow_mut().release_from(gap) > 0 {
            self.core.pool.wake_waiters();
        }
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

    /// A written buffer whose bytes are not hashed yet waits for the frontier.
    pub fn park(&self, offset: u64, buf: PoolBuf, data_len: usize) {
        // Past a chunk given up after a stop, the frontier never comes
        // either: the bytes are written, and the buffer is of more use to
        // the chunks still finishing below the gap.
        if self.job.is_aborted() || self.job.gave_up_below(offset) {
            // Nothing will be hashed any more, and the hasher that frees the
            // parked buffers of an aborted job may be gone already: parked
            // now, the buffer would be lost to the pool, and a connection
            // waiting for one (with the finisher behind it) would wait
            // forever. Dropping it returns it and wakes them.
            drop(buf);
            return;
        }
        let frontier = self.job.digest.frontier();
        if offset < frontier {
            // The frontier would never reach it and the hasher would wait
            // forever: fail loudly instead.
            self.job.abort(Error::Fatal(format!(
                "internal error: {data_len} bytes at offset {offset} arrived behind the hash \
                 frontier at {frontier}; please report it"
            )));
        }
        self.window.borrow_mut().insert(offset, buf, data_len);
        self.drain_hashable();
    }

    fn hash(&self, offset: u64, data: &[u8]) -> bool {
        let started = Instant::now();
        let hashed = self.job.digest.hash_if_next(offset, data);
        if hashed {
            self.record(Stage::Hash, started.elapsed());
        }
        hashed
    }

    fn frontier_moved(&self) {
        // Our own hasher task must see completion too, hence all cores.
        self.job.digest.wake_all();
        // A connection of ours may now be the head and allowed the reserve.
        self.core.pool.wake_waiters();
    }
}

/// One of this core's writes of the job, counted from `start` until dropped
/// (unwinding too): the finisher waits for the count to reach zero.
pub(super) struct WriteInFlight(Rc<CoreJob>);

impl WriteInFlight {
    pub fn start(core_job: &Rc<CoreJob>) -> WriteInFlight {
        core_job
            .writes_in_flight
            .set(core_job.writes_in_flight.get() + 1);
        WriteInFlight(Rc::clone(core_job))
    }
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        let core_job = &self.0;
        core_job
            .writes_in_flight
            .set(core_job.writes_in_flight.get() - 1);
        core_job.changed.notify_one();
    }
}

/// A connection taking chunks of the job, counted (per core and over all
/// cores) until dropped, unwinding too: the finisher waits for this core's
/// count to reach zero, and the scheduler reads the total.
struct TakingChunks<'a>(&'a CoreJob);

impl<'a> TakingChunks<'a> {
    fn start(core_job: &'a CoreJob) -> TakingChunks<'a> {
        core_job.connections.set(core_job.connections.get() + 1);
        core_job.job.connections.fetch_add(1, Ordering::AcqRel);
        TakingChunks(core_job)
    }
}

impl Drop for TakingChunks<'_> {
    fn drop(&mut self) {
        let core_job = self.0;
        // AcqRel: the last one out sees the stop signal any other set.
        let before = core_job.job.connections.fetch_sub(1, Ordering::AcqRel);
        core_job.job.connection_left(before);
        core_job.connections.set(core_job.connections.get() - 1);
        core_job.changed.notify_one();
    }
}

/// Takes chunks of `job` on this connection until none are left; then the
/// connection goes back to the scheduler for other work.
pub(super) async fn take_chunks(
    core: &Rc<Core>,
    connection: &mut Option<super::conn::EngineConn>,
    job: Arc<Job>,
) {
    let Some(core_job) = core_job_for(core, job) else {
        return;
    };
    let _taking = TakingChunks::start(&core_job);
    let job = &core_job.job;
    let mut next = job.next_chunk(core.shared.stop());
    while let Some(chunk) = next {
        // The chunk whose GET went out behind this one's, if any.
        let mut ahead = None;
        let downloaded =
            super::chunk::download_chunk(&core_job, connection, chunk, &mut ahead).await;
        if let Err(error) = downloaded {
            job.abort(error);
            break;
        }
        next = match ahead {
            // Its GET is out: a request in flight, which a stop lets finish
            // unless a chunk below it gave up.
            Some(chunk) => {
                (!job.is_aborted() && !job.gave_up_below(chunk.offset_bytes)).then_some(chunk)
            }
            None => job.next_chunk(core.shared.stop()),
        };
    }
    // A GET sent ahead whose answer nobody will read.
    super::request::retire_if_answer_owed(connection);
}

/// This core's part in `job`, joining it (and starting its hasher and
/// finisher) on first use. `None` once the job is over.
fn core_job_for(core: &Rc<Core>, job: Arc<Job>) -> Option<Rc<CoreJob>> {
    let existing = core
        .large
        .borrow()
        .iter()
        .find(|core_job| Arc::ptr_eq(&core_job.job, &job))
        .cloned();
    if existing.is_some() {
        return existing;
    }
    if !job.join() {
        return None;
    }
    let destination = &job.spec.destination;
    let file = match destination.fd.try_clone() {
        Ok(fd) => Some(File::new(fd, destination.direct_io)),
        Err(error) => {
            job.abort(Error::io(
                "duplicating the destination file descriptor",
                error,
            ));
            None
        }
    };
    let core_job = Rc::new(CoreJob {
        core: Rc::clone(core),
        job,
        file,
        window: RefCell::new(ReorderWindow::default()),
        writes_in_flight: Cell::new(0),
        connections: Cell::new(0),
        changed: Notify::new(),
    });
    core.large.borrow_mut().push(Rc::clone(&core_job));
    let hasher = core.spawn("hasher", hash_loop(Rc::clone(&core_job)));
    let finisher = core.spawn("finisher", finish_on_core(Rc::clone(&core_job), hasher));
    core.keep_until_exit(finisher);
    Some(core_job)
}

/// Hashes this core's parked buffers whenever the frontier may have reached
/// them; ends when the object is fully hashed or the job aborted.
async fn hash_loop(core_job: Rc<CoreJob>) {
    let job = &core_job.job;
    let _release = ReleaseParkedIfAborted(&core_job);
    let waker = job.digest.core_waker(core_job.core.index);
    loop {
        let notified = waker.notified();
        super::failpoint::pass(super::failpoint::Site::Hasher);
        core_job.drain_hashable();
        core_job.release_past_gap();
        // The frontier moved somewhere: whichever of our connections now sits
        // at it may take the reserve buffer, so let waiters re-check.
        core_job.core.pool.wake_waiters();
        if job.digest.is_complete() || job.is_aborted() {
            break;
        }
        notified.await;
    }
}

/// When the hasher ends on an aborted job, or dies in a panic (which aborts
/// every job): frees this core's parked buffers, so its connections waiting
/// for one see the abort instead of waiting for a hasher that is gone.
struct ReleaseParkedIfAborted<'a>(&'a CoreJob);

impl Drop for ReleaseParkedIfAborted<'_> {
    fn drop(&mut self) {
        let core_job = self.0;
        if !(core_job.job.is_aborted() || std::thread::panicking()) {
            return;
        }
        // A panic inside a borrow of the window leaves it borrowed until
        // the unwinding passes that frame; nothing else may hold it now.
        if let Ok(mut window) = core_job.window.try_borrow_mut() {
            window.clear();
        }
        core_job.core.pool.wake_waiters();
    }
}

/// Leaves the job once this core has nothing more to do for it; the last
/// core to leave completes it.
async fn finish_on_core(core_job: Rc<CoreJob>, hasher: tokio::task::JoinHandle<()>) {
    loop {
        let changed = core_job.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if core_job.connections.get() == 0 && core_job.writes_in_flight.get() == 0 {
            break;
        }
        changed.await;
    }
    core_job.drain_hashable();
    // Ends once every core's parked buffers are hashed (or the job aborted).
    let _ = hasher.await;
    core_job.window.borrow_mut().clear();
    let core = &core_job.core;
    core.large
        .borrow_mut()
        .retain(|other| !Rc::ptr_eq(other, &core_job));
    let job = Arc::clone(&core_job.job);
    super::failpoint::pass(super::failpoint::Site::Finisher);
    if job.leave() {
        complete(core, &job, core_job.file.as_ref()).await;
    }
    if let Some(file) = Rc::into_inner(core_job).and_then(|core_job| core_job.file) {
        let _ = file.close().await;
    }
}

/// The last core has left: check the object and hand it to `done`, or start
/// it over after a SHA1 mismatch.
async fn complete(core: &Rc<Core>, job: &Arc<Job>, file: Option<&File>) {
    let spec = &job.spec;
    let object = &spec.object;
    let mut outcome = job.outcome();
    // The digest is of the bytes received, hashed from memory, often before
    // their write: only the written prefix says they all reached the file.
    // A lost write would leave a hole (zeros, the file is pre-allocated)
    // under a digest that matches. Checked in release builds too: they are
    // the ones that write users' data.
    let written_bytes = job
        .written
        .lock()
        .expect("written lock")
        .prefix
        .prefix_bytes();
    if outcome.is_ok() && written_bytes < object.size_bytes {
        outcome = Err(Error::Fatal(format!(
            "{}: hashed whole, but only {written_bytes} of its {} bytes were written \
             (an internal error; please report it)",
            object.display_name, object.size_bytes
        )));
    }
    if outcome.is_ok() {
        // O_DIRECT wrote the tail padded to a block; and a partial file
        // resumed from an earlier run can be longer still (that run's padded
        // tail, cut back only at its end), whatever this run writes with.
        // The digest is of the bytes received, so the file is cut to the
        // object's size here, always.
        outcome = rustix::fs::ftruncate(&spec.destination.fd, object.size_bytes)
            .map_err(|error| Error::io("cutting the file to the object's size", error.into()))
            .and(outcome);
    }
    if let (Ok(_), true, Some(file)) = (&outcome, object.fsync, file) {
        let synced = Instant::now();
        if let Err(error) = file.sync_all().await {
            outcome = Err(Error::io(
                format!("fsync of {}", object.display_name),
                error,
            ));
        }
        core.record(Stage::Write, synced.elapsed());
    }
    let mismatch = matches!(
        (&outcome, &object.expected_sha1),
        (Ok(actual), Some(expected)) if actual != expected
    );
    let shared = &core.shared;
    let done = job
        .done
        .lock()
        .expect("done lock")
        .take()
        .expect("done once");
    if mismatch
        && job.round <= OBJECT_REDOWNLOADS_ON_MISMATCH
        // Not once the run stops (a panic stops it too).
        && !shared.is_stopped()
    {
        say!(
            "ringdown: {}: SHA1 mismatch; downloading it again",
            object.display_name
        );
        core.count_retry("SHA1 mismatch");
        shared.restart(job, Arc::new(job.next_round(done)));
        return;
    }
    core.record(Stage::File, job.started.elapsed());
    let outcome = outcome.map_err(|error| {
        // Left unfinished by a `Stopper` stop, it is not the run's cause:
        // that was reported where it happened.
        let stopped_by_run = job.stop.get() == Some(&Stop::Run);
        let run_fatal = !stopped_by_run
            && (error.is_refusal()
                || matches!(error, Error::Fatal(_) | Error::UringUnavailable(_)));
        ObjectError { error, run_fatal }
    });
    done(ObjectResult {
        outcome,
        attempts: job.attempts(),
        started_over: job.round > 1,
    });
    shared.large_finished(job);
}

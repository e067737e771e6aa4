//! The one scheduler of every download: N core threads, each with its own
//! io_uring runtime, buffer pool and C keep-alive connection tasks. Every
//! connection takes work from one bounded queue shared by the cores:
//!
//! - a small object is one GET on one connection (`object`);
//! - a large object becomes an active `Job` whose chunks every connection
//!   of every core takes in ascending order (`large`, `chunk`).
//!
//! A free connection takes a chunk of an active large object while large
//! objects hold fewer than `large_connections_per_core` per core (and, until
//! nothing else is left to queue, fewer than their share of all
//! connections), else the next queued item; so a mixed listing
//! keeps every connection busy, small files keep completing beside a large
//! one, and the connections (and their TLS sessions) outlive each object. Cross-core
//! traffic is the queue lock (once per object or chunk), the SHA1 baton of
//! a large object (see `verify`), progress counters, and stats at the end.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::conn::EngineConn;
use super::failure::Retries;
use super::large::{self, Job, LargeJob};
use super::object::Ran;
use super::{EngineConfig, Progress};
use crate::client::b2_api::Authorizer;
use crate::client::conn::Origin;
use crate::config::{
    LARGE_ALL_CONNECTIONS_ROUND_TRIP_MIN_US, LARGE_OBJECT_CONNECTIONS_DIVISOR,
    LONG_ROUND_TRIP_SAMPLES_MIN, PIPELINE_OBJECTS_AHEAD, SCHEDULER_QUEUE_JOBS_MAX,
    SCHEDULER_QUEUE_JOBS_PER_CORE, SUBMIT_DEAD_CORE_CHECK_MS,
};
use crate::error::{Error, Result};
use crate::stats::{Stage, StageHistograms};
use crate::uring::{self, BufferPool, Registration};

/// Where every object of a run comes from (one origin, one account).
#[derive(Clone)]
pub struct PoolSource {
    pub origin: Origin,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub auth: Option<Arc<Authorizer>>,
}

/// What a connection can be given.
pub enum Work {
    /// One GET, whole object, on one connection.
    Object(ObjectJob),
    /// Chunks spread over every core and connection.
    Large(LargeJob),
}

/// One object to download into an already created file, small or large.
pub struct ObjectSpec {
    /// Path and query of the GET, URL-encoded.
    pub path_and_query: String,
    /// Shown in messages.
    pub display_name: String,
    /// B2: every response must carry this `x-bz-file-id` (no splicing of a
    /// newer upload under the same name).
    pub expect_file_id: Option<String>,
    /// Plain URLs: every answer must be of the version the probe saw
    /// (and requests carry its `If-Match`, if any).
    pub validator: Option<super::Validator>,
    /// B2 SSE-C: which of the customer keys given the requests carry.
    pub sse_c: Option<Arc<crate::b2::KeyChoice>>,
    /// A plain URL: no credentials of ours go with its requests, so a 401
    /// or 403 refuses the URL itself (a B2 object listed without a fileId
    /// has no `expect_file_id` either, but its token can be refreshed).
    pub plain_url: bool,
    pub size_bytes: u64,
    /// The published digest: a mismatch downloads the object again
    /// (`OBJECT_REDOWNLOADS_ON_MISMATCH` times) before `done` hears of it.
    /// `None`: the caller checks the digest itself, if there is one.
    pub expected_sha1: Option<[u8; 20]>,
    /// `fsync` the file once written, before `done` runs.
    pub fsync: bool,
}

/// Where an object's bytes go: the file, opened for writing. The engine owns
/// it from `submit` on. When `done` runs, every write (and the O_DIRECT cut,
/// and `fsync`) has completed; a small object's file is closed by then, a
/// large one's may still be open on a core, with nothing left to write.
pub struct Destination {
    pub fd: OwnedFd,
    /// Opened with O_DIRECT: whole blocks from aligned buffers; a large
    /// object's tail is written padded to a block and cut back before `done`,
    /// a small one's last partial block goes through the page cache.
    pub direct_io: bool,
}

/// One small object: one GET on one connection.
pub struct ObjectJob {
    pub object: ObjectSpec,
    pub destination: Destination,
    pub done: Done,
    /// Its attempts so far: an object deferred after a retryable answer
    /// (`object::Ran::Deferred`) resumes their count against
    /// `--max-attempts`, and what they saw (a disputed size, a refreshed
    /// token), when its turn comes again.
    pub(super) retries: Retries,
    /// When its first attempt started: the `file` stage of an object that
    /// backed off counts its whole time, waits included, as a chunk's does.
    pub(super) first_started: Option<Instant>,
}

impl ObjectJob {
    pub fn new(object: ObjectSpec, destination: Destination, done: Done) -> ObjectJob {
        ObjectJob {
            object,
            destination,
            done,
            retries: Retries::new(),
            first_started: None,
        }
    }
}

/// Runs on a core thread once an object is written and checked (or failed).
pub type Done = Box<dyn FnOnce(ObjectResult) + Send>;

/// What became of one object, small or large.
pub struct ObjectResult {
    pub outcome: std::result::Result<[u8; 20], ObjectError>,
    /// Requests made for a small object (counting the first); download
    /// rounds of a large one (a SHA1 mismatch starts another).
    pub attempts: u32,
    /// A SHA1 mismatch started a large object over from byte 0: nothing
    /// found on disk at the start (a resumed prefix) was kept.
    pub started_over: bool,
}

#[derive(Debug)]
pub struct ObjectError {
    pub error: Error,
    /// Retrying other objects will not help either (auth, trust, disk full):
    /// the caller stops the run.
    pub run_fatal: bool,
}

/// Totals of the scheduler once it has shut down.
pub struct PoolReport {
    pub stages: StageHistograms,
    pub retries: u64,
    pub registered_buffers: bool,
    pub notices: Vec<String>,
}

/// The running scheduler. `submit` blocks while the queue is full
/// (backpressure all the way to the listing); `finish` drains it and joins
/// the cores.
pub struct Scheduler {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<Result<CoreReport>>>,
    /// Said once in the report: fewer cores than asked for got a ring.
    start_notice: Option<String>,
}

/// What a core thread learns once every thread has tried to make its ring:
/// its index and the scheduler, or `None` (the scheduler did not start).
type Assignment = Option<(usize, Arc<Shared>)>;

/// `Shared::pipelining_doubt`: the GET whose answer sent ahead named
/// another version.
struct PipeliningDoubt {
    path_and_query: String,
    range: Option<(u64, u64)>,
}

/// What every core shares.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub source: PoolSource,
    pub progress: Arc<Progress>,
    /// Shared with `Stopper`s.
    stopped: Arc<AtomicBool>,
    /// What panicked (a bug), once a task did: the run ends with that error.
    panicked: Mutex<Option<String>>,
    state: Mutex<State>,
    capacity_jobs: usize,
    /// Connections of all cores.
    connections_total: usize,
    /// Bound on `State::claimed_ahead`: `PIPELINE_OBJECTS_AHEAD` per
    /// connection, capped like the queue, so descriptors stay bounded. It
    /// bounds `State::backing_off` too.
    claimed_ahead_max: usize,
    /// Connections of all cores that may take chunks of large objects.
    large_connections: usize,
    /// Producers wait here while the queue is full.
    space: Condvar,
    /// Connections wait here for work (an item, a new large object, the end).
    work: Notify,
    /// `--limit-rate`, over every core.
    pace: Option<super::pace::Pace>,
    /// GETs may be sent ahead (HTTP/1.1 pipelining: chunks, small objects)
    /// until the origin fails to answer one before it has answered any
    /// (`request::read_pipelined_head`, `stop_pipelining`).
    pipelining: AtomicBool,
    /// An answer to a GET sent ahead has come: the origin takes them.
    pipelining_answered: AtomicBool,
    /// A GET sent ahead was answered with another version of its object:
    /// pipelining is off at once, and the note saying why waits for that
    /// GET sent alone (`settle_pipelining_doubt`). The version asked for
    /// there means the origin was out of step; the other again means the
    /// object changed, which its own error says (the note before it was
    /// noise, h25).
    pipelining_doubt: Mutex<Option<PipeliningDoubt>>,
    /// The shortest time from a request sent to its response head in this
    /// run, in ns (`u64::MAX`: none yet): about one network round trip.
    /// The shortest, as most waits also hold the server's queueing, which
    /// sending ahead does not hide (on loopback a connection's own shortest
    /// wait was several times the run's).
    round_trip_ns: AtomicU64,
    /// Response heads that `round_trip_ns` has seen.
    round_trip_samples: AtomicU64,
}

struct State {
    queue: VecDeque<Work>,
    closed: bool,
    /// Large objects that may still want connections, oldest first.
    active: Vec<Arc<Job>>,
    /// Large objects taken from the queue and not yet handed to `done`
    /// (chunks, writes or hashing left). Connections stay while any is open:
    /// a SHA1 mismatch puts its object's next round back in `active`. A
    /// panic aborts them all.
    open_large: Vec<Arc<Job>>,
    /// Small objects claimed by connections to send their GETs ahead, not
    /// yet begun (`claim_object`); each holds descriptors like a queued one.
    claimed_ahead: usize,
    /// Small objects waiting out a backoff off the queue (`back_off`), each
    /// holding a descriptor; the run is not over while any is.
    backing_off: usize,
}

/// What a free connection does next.
enum Next {
    Chunks(Arc<Job>),
    Object(ObjectJob),
    /// Taken from the queue after `stop`: failed without a request.
    Refuse(Work),
    Wait,
    Exit,
}

impl Shared {
    pub fn is_stopped(&self) -> bool {
        self.stop().is_some()
    }

    /// Why the run is stopping, if it is: a signal (or the caller's
    /// `cancel`) first, as that is what the run reports; else the
    /// `Stopper` (or a panic).
    pub fn stop(&self) -> Option<large::Stop> {
        match self.config.stop_signal() {
            Some(signal) => Some(large::Stop::Signal(signal)),
            None => self
                .stopped
                .load(Ordering::Acquire)
                .then_some(large::Stop::Run),
        }
    }

    /// A producer that found the queue full waits until it is this short.
    fn refill_below_jobs(&self) -> usize {
        self.capacity_jobs / 2
    }

    /// A task panicked (a bug): stop handing out work, abort every open
    /// large object (so nothing waits for the chunks, writes or hashing the
    /// dead task held) and wake every waiter. The run ends with an error.
    /// Runs while unwinding: it never panics on a poisoned lock.
    fn poison(&self, what: &str, core_index: usize) {
        let note = format!(
            "internal error: a {what} task on core {core_index} panicked (its message is on \
             stderr); this is a bug, please report it"
        );
        self.panicked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(note.clone());
        self.stopped.store(true, Ordering::Release);
        let open = self.state().open_large.clone();
        for job in open {
            job.abort(Error::Fatal(note.clone()));
        }
        self.work.notify_waiters();
        self.space.notify_all();
    }

    /// The state, also after a panic while it was held: a poisoned run
    /// must still wind down and report, not panic in its caller.
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn pipelining(&self) -> bool {
        self.pipelining.load(Ordering::Relaxed)
    }

    /// A response head arrived `waited` after its request was sent.
    pub fn note_round_trip(&self, waited: Duration) {
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX - 1);
        self.round_trip_ns.fetch_min(ns, Ordering::Relaxed);
        let samples = self.round_trip_samples.fetch_add(1, Ordering::Relaxed) + 1;
        if samples == LONG_ROUND_TRIP_SAMPLES_MIN {
            // `large_limit` may now let waiting connections take chunks.
            self.work.notify_waiters();
        }
    }

    /// Whether the link's round trip is long (a WAN): its shortest seen is
    /// `LARGE_ALL_CONNECTIONS_ROUND_TRIP_MIN_US` or more over at least
    /// `LONG_ROUND_TRIP_SAMPLES_MIN` answers.
    fn long_round_trip(&self) -> bool {
        self.round_trip_samples.load(Ordering::Relaxed) >= LONG_ROUND_TRIP_SAMPLES_MIN
            && self.round_trip_at_least(LARGE_ALL_CONNECTIONS_ROUND_TRIP_MIN_US)
    }

    /// Whether the round trip seen so far is at least `min_us` (false
    /// before any answer).
    pub fn round_trip_at_least(&self, min_us: u64) -> bool {
        self.round_trip()
            .is_some_and(|round_trip| round_trip >= Duration::from_micros(min_us))
    }

    /// About one network round trip to the origin; `None` before any answer.
    pub fn round_trip(&self) -> Option<Duration> {
        let ns = self.round_trip_ns.load(Ordering::Relaxed);
        (ns != u64::MAX).then(|| Duration::from_nanos(ns))
    }

    /// No more work comes: cores take what is queued, then exit.
    fn close(&self) {
        self.state().closed = true;
        self.work.notify_waiters();
    }

    /// An answer to a GET sent ahead came.
    pub fn note_pipelined_answer(&self) {
        self.pipelining_answered.store(true, Ordering::Relaxed);
    }

    /// The origin closed a connection instead of answering a GET sent
    /// ahead: from now on, one request at a time (`stop_pipelining`).
    /// Unless it has answered one before: it takes them, and this is that
    /// connection's end (a keep-alive limit, a reset), not a refusal. One
    /// such cut turned pipelining off for the rest of a run.
    pub fn stop_pipelining_after_cut(&self, error: &dyn std::fmt::Display) {
        if !self.pipelining_answered.load(Ordering::Relaxed) {
            self.stop_pipelining(error);
        }
    }

    /// The answer to the GET of `object` and `range` sent ahead names
    /// another version: one request at a time from now on, said once that
    /// GET, sent alone, shows whether the object changed
    /// (`settle_pipelining_doubt`).
    pub fn doubt_pipelining(&self, object: &ObjectSpec, range: Option<(u64, u64)>) {
        if self.pipelining.swap(false, Ordering::Relaxed) {
            *self
                .pipelining_doubt
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(PipeliningDoubt {
                path_and_query: object.path_and_query.clone(),
                range,
            });
        }
    }

    /// The GET of `object` and `range` was answered alone (while pipelining
    /// is off), with the version asked for (`same_version`) or not: if it
    /// is the one whose answer sent ahead named another, the note waiting
    /// for it is said (the origin was out of step) or dropped (the object
    /// changed).
    pub fn settle_pipelining_doubt(
        &self,
        object: &ObjectSpec,
        range: Option<(u64, u64)>,
        same_version: bool,
    ) {
        let settled = self
            .pipelining_doubt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_if(|held| held.range == range && held.path_and_query == object.path_and_query)
            .is_some();
        if settled && same_version {
            say!(
                "ringdown: the origin answered a pipelined request with another version of its \
                 object, and the same request sent alone with the one asked for: it answers \
                 pipelined requests out of step (one lost, the next in its place); sending one \
                 request at a time per connection from now on"
            );
        }
    }

    /// The origin stalled (or closed, before answering any) a GET sent
    /// ahead: from now on, one request at a time (said once). A stall is
    /// never forgiven: each connection sending ahead again would wait out
    /// `--timeout-s` for every GET the origin leaves unanswered.
    pub fn stop_pipelining(&self, error: &dyn std::fmt::Display) {
        if self.pipelining.swap(false, Ordering::Relaxed) {
            say!(
                "ringdown: the origin did not answer a pipelined request ({error}); \
                 sending one request at a time per connection from now on"
            );
        }
    }

    pub fn has_panicked(&self) -> bool {
        self.panicked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn panic_error(&self) -> Option<Error> {
        let panicked = self.panicked.lock().unwrap_or_else(PoisonError::into_inner);
        panicked.clone().map(Error::Fatal)
    }

    /// Connections (of all cores) taking chunks of the large objects that
    /// still want some, and how many may (`large_limit`); drops the active
    /// objects that want none.
    fn chunk_takers(&self, state: &mut State) -> (usize, usize) {
        state.active.retain(|job| job.wants_connections());
        let on_large = state.active.iter().map(|job| job.connections()).sum();
        let nothing_else = state.closed && state.queue.is_empty();
        let limit = large_limit(
            self.large_connections,
            self.connections_total,
            nothing_else,
            self.long_round_trip(),
        );
        (on_large, limit)
    }

    /// The next thing for a connection of a core on which `on_large_here`
    /// connections already take chunks of large objects.
    fn next(&self, on_large_here: usize) -> Next {
        let mut state = self.state();
        // Large objects (all of them together) take chunks on at most
        // `large_connections`, and only up to their share of all connections
        // until the last work is queued and taken. (An empty queue alone says
        // little: the listing may be a page behind.)
        let (on_large, limit) = self.chunk_takers(&mut state);
        let may_take = may_take_chunks(on_large, on_large_here, limit, self.config.cores);
        if may_take {
            if let Some(job) = state.active.first() {
                return Next::Chunks(Arc::clone(job));
            }
        }
        // A stopped run refuses the queue in order. Over a long round trip
        // a connection moves at most its window per round trip, so each
        // free one may start another large object (as `large_limit` lets
        // every connection take chunks there once nothing else is left);
        // elsewhere more chunk takers only spread the pool thinner.
        let stopped = self.is_stopped();
        let may_start_large = may_take || stopped || self.long_round_trip();
        let kinds = state
            .queue
            .iter()
            .map(|work| matches!(work, Work::Large(_)));
        let taken = next_in_queue(kinds, may_start_large).and_then(|at| state.queue.remove(at));
        let Some(work) = taken else {
            // After a panic, open objects end without this connection (they
            // are aborted) and the producer learns at `finish`. (Large
            // objects left in the queue wait for a connection that may
            // take chunks: one leaving its object comes back here.)
            let over = state.closed
                && state.queue.is_empty()
                && state.open_large.is_empty()
                && state.backing_off == 0;
            return if over || self.has_panicked() {
                Next::Exit
            } else {
                Next::Wait
            };
        };
        if state.queue.len() == self.refill_below_jobs() {
            // A waiting producer refills from here: one wake-up per half a
            // queue, not a futex round trip per object.
            self.space.notify_all();
        }
        if stopped {
            return Next::Refuse(work);
        }
        match work {
            Work::Object(job) => Next::Object(job),
            Work::Large(large) => {
                let job = Arc::new(Job::new(
                    large,
                    self.config.part_size_bytes,
                    self.config.cores.max(1),
                    Arc::clone(&self.progress),
                ));
                state.active.push(Arc::clone(&job));
                state.open_large.push(Arc::clone(&job));
                drop(state);
                // Idle connections on every core join it.
                self.work.notify_waiters();
                Next::Chunks(job)
            }
        }
    }

    /// The next queued small object, for a connection to send its GET ahead
    /// (HTTP/1.1 pipelining); `None` if the next work is a large object (or
    /// none, or the run stopped), which `next` hands out as it would.
    pub fn claim_object(&self) -> Option<ObjectJob> {
        if self.is_stopped() {
            return None;
        }
        let mut state = self.state();
        let full = state.claimed_ahead >= self.claimed_ahead_max;
        if full || !matches!(state.queue.front(), Some(Work::Object(_))) {
            return None;
        }
        // A large object short of its connections: this one goes back to
        // `next` (once its objects ahead are done) to be offered its chunks.
        let (on_large, limit) = self.chunk_takers(&mut state);
        if !state.active.is_empty() && on_large < limit {
            return None;
        }
        let Some(Work::Object(job)) = state.queue.pop_front() else {
            unreachable!("checked above");
        };
        state.claimed_ahead += 1;
        if state.queue.len() == self.refill_below_jobs() {
            self.space.notify_all();
        }
        Some(job)
    }

    /// A claimed object's turn came (it runs or is refused).
    fn begin_claimed(&self) {
        self.state().claimed_ahead -= 1;
    }

    /// Objects claimed by a connection that failed before their turn go
    /// back to the front of the queue, in order, for any connection.
    pub fn give_back(&self, jobs: impl DoubleEndedIterator<Item = ObjectJob>) {
        let mut state = self.state();
        let before = state.queue.len();
        for job in jobs.rev() {
            state.queue.push_front(Work::Object(job));
        }
        let returned = state.queue.len() - before;
        state.claimed_ahead -= returned;
        drop(state);
        if returned > 0 {
            self.work.notify_waiters();
        }
    }

    /// An object whose turn was running goes back to the front of the
    /// queue (`object::Ran::Deferred`); unlike `give_back`, it was not
    /// counted as claimed ahead.
    pub fn requeue(&self, job: ObjectJob) {
        self.state().queue.push_front(Work::Object(job));
        self.work.notify_waiters();
    }

    /// Reserves a place for one more object to wait out a backoff off the
    /// queue (`back_off`); `false` when `claimed_ahead_max` already do.
    pub fn reserve_backoff(&self) -> bool {
        let mut state = self.state();
        if state.backing_off >= self.claimed_ahead_max {
            return false;
        }
        state.backing_off += 1;
        true
    }

    /// Ends a `reserve_backoff`: the object that waited out its backoff
    /// goes back to the front of the queue (`None`: it failed instead).
    fn end_backoff(&self, job: Option<ObjectJob>) {
        let mut state = self.state();
        state.backing_off -= 1;
        if let Some(job) = job {
            state.queue.push_front(Work::Object(job));
        }
        drop(state);
        self.work.notify_waiters();
    }

    /// A SHA1 mismatch: the object's next round takes its old one's place.
    pub fn restart(&self, old: &Arc<Job>, job: Arc<Job>) {
        let mut state = self.state();
        state.open_large.retain(|open| !Arc::ptr_eq(open, old));
        state.open_large.push(Arc::clone(&job));
        state.active.push(job);
        drop(state);
        self.work.notify_waiters();
    }

    /// A large object went to `done`.
    pub fn large_finished(&self, job: &Arc<Job>) {
        let mut state = self.state();
        state.open_large.retain(|open| !Arc::ptr_eq(open, job));
        drop(state);
        self.work.notify_waiters();
    }
}

/// Where in the queue (each entry: whether it is a large object) a free
/// connection takes its work: the front, or, where it may not start a
/// large object (it may not take chunks: the large objects have their
/// connections), the first small object behind it, so that starting one
/// more large object never takes chunks past the limit. `None`: nothing it
/// may take.
fn next_in_queue(mut is_large: impl Iterator<Item = bool>, may_start_large: bool) -> Option<usize> {
    if may_start_large {
        return is_large.next().map(|_| 0);
    }
    is_large.position(|large| !large)
}

/// How many connections (of all cores) may take chunks of large objects:
/// `large_connections`, and while other work may still come, no more than
/// their share of all connections, so small files keep completing. Once
/// nothing else is left, over a long round trip, every connection: there a
/// connection moves at most its window per round trip, so more connections
/// move more, where on loopback more chunk takers than `large_connections`
/// only spread the pool thinner.
fn large_limit(
    large_connections: usize,
    connections_total: usize,
    nothing_else: bool,
    long_round_trip: bool,
) -> usize {
    match (nothing_else, long_round_trip) {
        (true, true) => connections_total.max(large_connections),
        (true, false) => large_connections,
        (false, _) => {
            large_connections.min(connections_total.div_ceil(LARGE_OBJECT_CONNECTIONS_DIVISOR))
        }
    }
}

/// Whether one more connection may take chunks: fewer than `limit` do over
/// all cores, and fewer than its share of them on this core. Without the
/// share, where there are more connections than chunk takers (restore: 16
/// per core, 4 for chunks), the first core to ask took every chunk of a
/// large object, and the other cores' CPUs sat out its decrypting and
/// hashing (one restore of 1 GiB: 98% of the client's CPU on one core).
fn may_take_chunks(on_large: usize, on_large_here: usize, limit: usize, cores: usize) -> bool {
    on_large < limit && on_large_here < limit.div_ceil(cores.max(1))
}

struct CoreReport {
    stages: StageHistograms,
    retries: u64,
    registration: Registration,
}

/// A core thread that made (or failed to make) its ring and buffers, and
/// waits to be assigned its place, or `None` to end.
type Spawned = (
    std::thread::JoinHandle<Result<CoreReport>>,
    std::sync::mpsc::Sender<Assignment>,
);

/// Spawns core thread `slot`: it makes its ring and buffer pool, says how
/// that went on `ready`, then runs the core it is assigned.
fn spawn_core(
    slot: usize,
    ready: std::sync::mpsc::Sender<(usize, Result<()>)>,
    buffers_per_core: usize,
    buffer_size_bytes: usize,
) -> Result<Spawned> {
    let (assign, assignment) = std::sync::mpsc::channel::<Assignment>();
    let thread = std::thread::Builder::new()
        .name(format!("ringdown-core-{slot}"))
        .spawn(move || {
            // What a thread returns without a core is never read.
            let unused = || Err(Error::Fatal("core not started".into()));
            let runtime = match uring::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send((slot, Err(error)));
                    return unused();
                }
            };
            let buffers = match BufferPool::map(buffers_per_core, buffer_size_bytes) {
                Ok(buffers) => buffers,
                Err(error) => {
                    let _ = ready.send((
                        slot,
                        Err(Error::Fatal(format!(
                            "mapping its {buffers_per_core} buffers of {buffer_size_bytes} \
                             bytes: {error}; lower --buffers or --buffer-size, or raise \
                             the address-space limit (ulimit -v)"
                        ))),
                    ));
                    return unused();
                }
            };
            let _ = ready.send((slot, Ok(())));
            // The scheduler reads until every sender is gone.
            drop(ready);
            match assignment.recv() {
                Ok(Some((core_index, shared))) => run_core(core_index, shared, runtime, buffers),
                _ => unused(),
            }
        })
        .map_err(|error| Error::io("spawning a core thread", error))?;
    Ok((thread, assign))
}

/// Ends core threads that were never assigned a place.
fn end_unassigned(spawned: Vec<Spawned>) {
    for (thread, assign) in spawned {
        let _ = assign.send(None);
        let _ = thread.join();
    }
}

impl Shared {
    /// What `cores` core threads share; every bound scales with them.
    fn new(
        config: &EngineConfig,
        source: PoolSource,
        progress: Arc<Progress>,
        cores: usize,
    ) -> Shared {
        let connections_per_core = config.connections_per_core.max(1);
        let mut config = config.clone();
        config.cores = cores;
        Shared {
            source,
            progress,
            stopped: Arc::new(AtomicBool::new(false)),
            panicked: Mutex::new(None),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                active: Vec::new(),
                open_large: Vec::new(),
                claimed_ahead: 0,
                backing_off: 0,
            }),
            pace: config.limit_rate_bytes_per_s.map(|bytes_per_s| {
                super::pace::Pace::new(bytes_per_s, cores * connections_per_core)
            }),
            capacity_jobs: (cores * SCHEDULER_QUEUE_JOBS_PER_CORE).min(SCHEDULER_QUEUE_JOBS_MAX),
            connections_total: cores * connections_per_core,
            claimed_ahead_max: (cores * connections_per_core * PIPELINE_OBJECTS_AHEAD)
                .min(SCHEDULER_QUEUE_JOBS_MAX),
            large_connections: cores
                * config
                    .large_connections_per_core
                    .clamp(1, connections_per_core),
            space: Condvar::new(),
            work: Notify::new(),
            pipelining: AtomicBool::new(true),
            pipelining_answered: AtomicBool::new(false),
            pipelining_doubt: Mutex::new(None),
            round_trip_ns: AtomicU64::new(u64::MAX),
            round_trip_samples: AtomicU64::new(0),
            config,
        }
    }
}

impl Scheduler {
    pub fn start(
        config: &EngineConfig,
        source: PoolSource,
        progress: Arc<Progress>,
    ) -> Result<Scheduler> {
        // Every core thread makes its ring first. Where RLIMIT_MEMLOCK fits
        // fewer rings than cores, the run goes on with those that got one
        // (said once); with none, it fails here with one error, before any
        // work is queued.
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let mut spawned = Vec::with_capacity(config.cores.max(1));
        for slot in 0..config.cores.max(1) {
            let core = spawn_core(
                slot,
                ready_sender.clone(),
                config.buffers_per_core,
                config.buffer_size_bytes,
            );
            match core {
                Ok(core) => spawned.push(core),
                Err(error) => {
                    end_unassigned(spawned);
                    return Err(error);
                }
            }
        }
        drop(ready_sender);
        let mut made = vec![false; spawned.len()];
        let mut first_error = None;
        for (slot, result) in ready.iter() {
            match result {
                Ok(()) => made[slot] = true,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let cores = made.iter().filter(|&&made| made).count();
        if cores == 0 {
            end_unassigned(spawned);
            return Err(first_error
                .unwrap_or_else(|| Error::Fatal("no core thread reported its ring".into())));
        }
        let start_notice = first_error.map(|error| {
            format!(
                "running on {cores} of {} cores: the others could not start ({error})",
                spawned.len()
            )
        });
        let shared = Arc::new(Shared::new(config, source, progress, cores));
        let mut threads = Vec::with_capacity(cores);
        let mut unassigned = Vec::new();
        for (core, made) in spawned.into_iter().zip(made) {
            if made {
                let _ = core.1.send(Some((threads.len(), Arc::clone(&shared))));
                threads.push(core.0);
            } else {
                unassigned.push(core);
            }
        }
        end_unassigned(unassigned);
        Ok(Scheduler {
            shared,
            threads,
            start_notice,
        })
    }

    /// Queues work, waiting while the queue is full. Fails (dropping the
    /// job, whose partial file the caller removes) if every core has exited.
    pub fn submit(&self, work: Work) -> Result<()> {
        let shared = &self.shared;
        let mut state = shared.state();
        // After a panic no core takes work any more (`next`): say so now,
        // not once the queue has filled.
        if let Some(error) = shared.panic_error() {
            return Err(error);
        }
        if state.queue.len() >= shared.capacity_jobs {
            // Full: wait until it is down to `refill_below_jobs`, so the
            // cores wake this thread once per half a queue.
            while state.queue.len() > shared.refill_below_jobs() {
                if let Some(error) = shared.panic_error() {
                    return Err(error);
                }
                if self.threads.iter().all(|thread| thread.is_finished()) {
                    return Err(Error::Fatal(
                        "every core of the scheduler has stopped".into(),
                    ));
                }
                // A core that died would never make room: look again now and
                // then. A task that panicked holding the lock poisoned it;
                // the run still winds down (`Shared::state`).
                let check = Duration::from_millis(SUBMIT_DEAD_CORE_CHECK_MS);
                state = shared
                    .space
                    .wait_timeout(state, check)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        // A large object is for a connection that may take chunks, which
        // the one `notify_one` wakes need not be (`next_in_queue`).
        let large = matches!(work, Work::Large(_));
        state.queue.push_back(work);
        drop(state);
        match large {
            true => shared.work.notify_waiters(),
            false => shared.work.notify_one(),
        }
        Ok(())
    }

    /// Stops this scheduler, also from where it is not at hand: the thread
    /// that finds a run-fatal error in an object's `done`. Work still queued
    /// fails with "not started"; running work finishes.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.shared.stopped))
    }

    /// Closes the queue, waits for every queued job and joins the cores.
    pub fn finish(mut self) -> Result<PoolReport> {
        self.shared.close();
        let mut report = PoolReport {
            stages: StageHistograms::new(),
            retries: 0,
            registered_buffers: true,
            notices: self.start_notice.take().into_iter().collect(),
        };
        let mut first_error = None;
        for thread in self.threads.drain(..) {
            match thread.join() {
                Ok(Ok(core)) => {
                    report.stages.merge(&core.stages);
                    report.retries += core.retries;
                    if let Registration::Unregistered { reason } = core.registration {
                        report.registered_buffers = false;
                        if !report.notices.contains(&reason) {
                            report.notices.push(reason);
                        }
                    }
                }
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::Fatal("a core thread panicked".into()));
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

/// A scheduler dropped without `finish` (its owner returned early, or
/// panicked): stopped and closed, so its core threads end once their work
/// in flight has, instead of waiting for work forever (a panic on a
/// restore's planner thread left them, and their connections, for the life
/// of the process). Not joined: a panicking owner may still hold what that
/// work waits for.
impl Drop for Scheduler {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.close();
        self.shared.space.notify_all();
    }
}

/// Stops a scheduler, from anywhere (`Scheduler::stopper`): queued work is
/// refused, and retry waits, backoffs and stalled receives are cut short.
/// Requests in flight finish, as on a signal (`large::Stop`).
#[derive(Clone)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The state of one core. Lives on that core only.
pub(crate) struct Core {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub pool: BufferPool,
    stats: RefCell<StageHistograms>,
    retries: Cell<u64>,
    /// This core's part in each large object it works on.
    pub large: RefCell<Vec<Rc<large::CoreJob>>>,
    /// Tasks awaited before the core exits: one per large object this core
    /// joined, per object backing off, per small object being written.
    pub finishers: RefCell<Vec<tokio::task::JoinHandle<()>>>,
}

impl Core {
    /// Keeps `task` to be awaited before the core exits (`run_core`).
    pub fn keep_until_exit(&self, task: tokio::task::JoinHandle<()>) {
        let mut finishers = self.finishers.borrow_mut();
        // A finished task stays allocated while its handle lives: a restore
        // of many objects must not keep one per object.
        finishers.retain(|finisher| !finisher.is_finished());
        finishers.push(task);
    }

    pub fn record(&self, stage: Stage, elapsed: Duration) {
        self.stats.borrow_mut().record(stage, elapsed);
    }

    pub fn count_retry(&self, why: &str) {
        self.retries.set(self.retries.get() + 1);
        self.shared.progress.count_retry(why);
    }

    /// The most one body read should ask for (`--limit-rate` keeps reads
    /// within a burst).
    pub fn read_bytes_max(&self, want: usize) -> usize {
        self.shared
            .pace
            .as_ref()
            .map_or(want, |pace| want.min(pace.read_bytes_max()))
    }

    /// `--limit-rate`: charges `bytes` just received, and waits (the
    /// `rate_wait` stage) while the run is ahead of the limit. A stopping
    /// run does not wait: its requests in flight drain at full speed.
    pub async fn pace(&self, bytes: usize) {
        let Some(pace) = &self.shared.pace else {
            return;
        };
        let wait = pace.charge(bytes);
        if wait.is_zero() {
            return;
        }
        let waited = Instant::now();
        crate::runtime::sleep_unless(wait, || self.shared.is_stopped()).await;
        self.record(Stage::RateWait, waited.elapsed());
    }

    /// Spawns a task of this core that poisons the scheduler if it panics
    /// (`Shared::poison`): a bug then ends the run with an error instead of
    /// leaving the other tasks waiting for what the dead one held.
    pub fn spawn<F>(&self, what: &'static str, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + 'static,
    {
        let guard = PanicGuard {
            shared: Arc::clone(&self.shared),
            core_index: self.index,
            what,
        };
        uring::spawn(async move {
            let output = task.await;
            drop(guard);
            output
        })
    }

    /// `runtime::sleep_unless`, timed as the `retry_wait` stage.
    pub async fn sleep_unless_stopped(&self, delay: Duration, stop: impl Fn() -> bool) -> bool {
        let waited = Instant::now();
        let slept = crate::runtime::sleep_unless(delay, stop).await;
        self.record(Stage::RetryWait, waited.elapsed());
        slept
    }
}

/// Poisons the scheduler when dropped by an unwinding task (see `Core::spawn`).
struct PanicGuard {
    shared: Arc<Shared>,
    core_index: usize,
    what: &'static str,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.poison(self.what, self.core_index);
        }
    }
}

fn run_core(
    core_index: usize,
    shared: Arc<Shared>,
    runtime: uring::Runtime,
    buffers: Vec<uring::AlignedBuf>,
) -> Result<CoreReport> {
    if crate::runtime::should_pin(shared.config.pin, shared.config.cores) {
        crate::runtime::pin_current_thread(core_index);
    }
    runtime.block_on(async move {
        let config = &shared.config;
        let (pool, registration) = BufferPool::new(buffers, config.register_buffers)
            .map_err(|error| Error::io("mapping the buffer pool again, unregistered", error))?;
        let core = Rc::new(Core {
            index: core_index,
            shared: Arc::clone(&shared),
            pool,
            stats: RefCell::new(StageHistograms::new()),
            retries: Cell::new(0),
            large: RefCell::new(Vec::new()),
            finishers: RefCell::new(Vec::new()),
        });
        let mut tasks = Vec::with_capacity(config.connections_per_core);
        for _ in 0..config.connections_per_core {
            tasks.push(core.spawn("connection", connection_loop(Rc::clone(&core))));
        }
        for task in tasks {
            let _ = task.await;
        }
        // Never leave a write or a descriptor behind on this ring.
        loop {
            let finishers = std::mem::take(&mut *core.finishers.borrow_mut());
            if finishers.is_empty() {
                break;
            }
            for finisher in finishers {
                let _ = finisher.await;
            }
        }
        if let Some(error) = shared.panic_error() {
            return Err(error);
        }
        let stages = core.stats.borrow().clone();
        Ok(CoreReport {
            stages,
            retries: core.retries.get(),
            registration,
        })
    })
}

async fn connection_loop(core: Rc<Core>) {
    let mut connection: Option<EngineConn> = None;
    // Small objects whose GETs went out ahead on `connection`, in order.
    let mut ahead: VecDeque<ObjectJob> = VecDeque::new();
    loop {
        if let Some(job) = ahead.pop_front() {
            core.shared.begin_claimed();
            if core.shared.is_stopped() {
                refuse(&core.shared, Work::Object(job));
            } else {
                run_object(&core, &mut connection, job, &mut ahead).await;
            }
            continue;
        }
        let notified = core.shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let on_large_here = core
            .large
            .borrow()
            .iter()
            .map(|core_job| core_job.connections_here())
            .sum();
        match core.shared.next(on_large_here) {
            Next::Chunks(job) => large::take_chunks(&core, &mut connection, job).await,
            Next::Object(job) => run_object(&core, &mut connection, job, &mut ahead).await,
            Next::Refuse(work) => refuse(&core.shared, work),
            Next::Wait => notified.await,
            Next::Exit => break,
        }
    }
    if let Some(connection) = connection {
        connection.shutdown();
    }
}

async fn run_object(
    core: &Rc<Core>,
    connection: &mut Option<EngineConn>,
    job: ObjectJob,
    ahead: &mut VecDeque<ObjectJob>,
) {
    let ObjectJob {
        object,
        destination,
        done,
        retries,
        first_started,
    } = job;
    let started = first_started.unwrap_or_else(Instant::now);
    let ran =
        super::object::download_object(core, connection, &object, destination, retries, ahead);
    match ran.await {
        // An empty object has nothing to write: ended here, which also
        // yields (closing its file), so a queue of empty files does not
        // go by in one poll, spawning a task each that none runs meanwhile.
        Ran::Received(ending) if object.size_bytes == 0 => {
            let attempts = ending.attempts;
            let outcome = ending.run(core, &object).await;
            end_object(core, started, done, outcome, attempts);
        }
        Ran::Received(ending) => {
            // Off the connection, which goes on to its next GET.
            let ending_core = Rc::clone(core);
            let task = core.spawn("object-ending", async move {
                let attempts = ending.attempts;
                let outcome = ending.run(&ending_core, &object).await;
                end_object(&ending_core, started, done, outcome, attempts);
            });
            core.keep_until_exit(task);
        }
        Ran::Failed(error, attempts) => end_object(core, started, done, Err(error), attempts),
        Ran::Deferred(deferred) => {
            let job = ObjectJob {
                object,
                destination: deferred.destination,
                done,
                retries: deferred.retries,
                first_started: Some(started),
            };
            match deferred.backoff {
                None => core.shared.requeue(job),
                Some(backoff) => back_off(core, job, backoff),
            }
        }
    }
}

/// Times the object's `file` stage (from `started`) and tells `done` how
/// it ended.
fn end_object(
    core: &Core,
    started: Instant,
    done: Done,
    outcome: std::result::Result<[u8; 20], ObjectError>,
    attempts: u32,
) {
    core.record(Stage::File, started.elapsed());
    done(ObjectResult {
        outcome,
        attempts,
        started_over: false,
    });
}

/// Holds `job` off the queue for its backoff, on a task of this core, then
/// puts it back at the front. Its place was reserved
/// (`Shared::reserve_backoff`), so connections wait for it before they exit.
/// If the run stops meanwhile (an error elsewhere, a signal, a panic), the
/// object fails here, as it would have waiting where it failed.
fn back_off(core: &Rc<Core>, job: ObjectJob, backoff: super::object::Backoff) {
    let waiting = Rc::clone(core);
    let task = core.spawn("backoff", async move {
        let shared = Arc::clone(&waiting.shared);
        waiting
            .sleep_unless_stopped(backoff.delay, || shared.is_stopped())
            .await;
        if shared.is_stopped() {
            let attempts = job.retries.made();
            fail(&shared, job.done, backoff.if_stopped, attempts);
            shared.end_backoff(None);
        } else {
            shared.end_backoff(Some(job));
        }
    });
    core.keep_until_exit(task);
}

/// Fails work the run stopped before its turn (its caller removes the
/// file); an object that went back to the queue after failed attempts says
/// how many. After a panic, with the panic's error, fatal to the run: the
/// producer stops instead of feeding the rest of a listing to be refused.
fn refuse(shared: &Shared, work: Work) {
    let (display_name, done, attempts) = match work {
        Work::Object(job) => (job.object.display_name, job.done, job.retries.made()),
        Work::Large(job) => (job.spec.object.display_name, job.done, 0),
    };
    let why = match attempts {
        0 => format!("{display_name}: {}", super::NOT_STARTED),
        _ => format!("{display_name}: the run stopped after {attempts} failed attempts"),
    };
    fail(shared, done, Error::Fatal(why), attempts);
}

/// Ends an object the run stopped with `error`; after a panic, with the
/// panic's error, fatal to the run.
fn fail(shared: &Shared, done: Done, error: Error, attempts: u32) {
    let (error, run_fatal) = match shared.panic_error() {
        Some(panic) => (panic, true),
        None => (error, false),
    };
    done(ObjectResult {
        outcome: Err(ObjectError { error, run_fatal }),
        attempts,
        started_over: false,
    });
}

#[cfg(test)]
mod tests {
    use super::{large_limit, may_take_chunks, next_in_queue};

    #[test]
    fn a_connection_that_may_not_take_chunks_starts_no_large_object() {
        let queue = [true, true, false, true, false];
        assert_eq!(next_in_queue(queue.into_iter(), true), Some(0));
        assert_eq!(next_in_queue(queue.into_iter(), false), Some(2));
        assert_eq!(next_in_queue([true, true].into_iter(), false), None);
        assert_eq!(next_in_queue([false].into_iter(), false), Some(0));
        assert_eq!(next_in_queue(std::iter::empty(), true), None);
    }

    #[test]
    fn a_scheduler_dropped_unfinished_lets_its_cores_end() {
        let mut config = crate::engine::EngineConfig::defaults(true);
        config.cores = 2;
        config.pin = crate::runtime::PinMode::Off;
        let address: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let source = super::PoolSource {
            origin: crate::client::conn::Origin::new(false, "127.0.0.1".into(), 9, vec![address]),
            tls: None,
            auth: None,
        };
        let scheduler =
            super::Scheduler::start(&config, source, std::sync::Arc::default()).unwrap();
        // Each core thread holds the shared state until it ends.
        let shared = std::sync::Arc::downgrade(&scheduler.shared);
        drop(scheduler);
        let started = std::time::Instant::now();
        while shared.strong_count() > 0 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "core threads are left"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn each_core_takes_its_share_of_the_chunk_takers() {
        // restore defaults on 2 cores: 8 takers, 4 per core.
        assert!(may_take_chunks(4, 0, 8, 2));
        assert!(may_take_chunks(7, 3, 8, 2));
        assert!(!may_take_chunks(4, 4, 8, 2), "one core took all it may");
        assert!(!may_take_chunks(8, 3, 8, 2), "all takers are busy");
        // An odd limit rounds the share up, so every taker finds a core.
        assert!(may_take_chunks(2, 1, 3, 2));
        assert!(!may_take_chunks(2, 2, 3, 2));
        // One core: the share is the whole limit.
        assert!(may_take_chunks(3, 3, 4, 1));
    }

    #[test]
    fn large_objects_leave_connections_to_small_ones_until_the_end() {
        for long_round_trip in [false, true] {
            // get: one core's 4 connections, the queue closed at once.
            assert_eq!(large_limit(4, 4, true, long_round_trip), 4);
            // restore defaults on 2 cores: 16 connections each, 4 for chunks.
            assert_eq!(large_limit(8, 32, false, long_round_trip), 8);
            // restore --connections 3 on 2 cores: half while work may come.
            assert_eq!(large_limit(6, 6, false, long_round_trip), 3);
            assert_eq!(large_limit(6, 6, true, long_round_trip), 6);
            // One connection in all still gets to take chunks.
            assert_eq!(large_limit(1, 1, false, long_round_trip), 1);
        }
        // Nothing else left: over a LAN the chunk takers stay few, over a
        // long round trip every connection takes chunks.
        assert_eq!(large_limit(8, 32, true, false), 8);
        assert_eq!(large_limit(8, 32, true, true), 32);
    }
}

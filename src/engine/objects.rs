//! A persistent thread-per-core pool for many small objects: N core threads,
//! each with its own io_uring runtime, buffer pool and C keep-alive
//! connection tasks that pull whole-object jobs from one shared bounded queue.
//!
//! One object = one GET on one connection, so its bytes arrive in order and
//! SHA1 runs on the fly from the pool buffer before the positional write.
//! A cut-off body resumes with `Range` from the first missing byte, keeping
//! the running digest. The job's `done` callback runs on the core thread
//! after every write of the object has completed.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use super::failure::{Failure, FailureKind, backoff, conn_failure, status_failure};
use super::{EngineConfig, Progress};
use crate::client::b2_api::Authorizer;
use crate::client::conn::{Connection, Origin};
use crate::config::{
    OBJECT_BUFFER_SIZE_BYTES, OBJECT_BUFFERS_PER_CONNECTION, OBJECT_QUEUE_JOBS_MAX,
    OBJECT_QUEUE_JOBS_PER_CORE, OBJECT_REDOWNLOADS_ON_MISMATCH,
};
use crate::error::{Error, Result};
use crate::http::{self, ResponseHead};
use crate::stats::{Stage, StageHistograms};
use crate::uring::{self, BufferPool, File, Registration};

/// Where every object of the pool comes from (one origin, one account).
#[derive(Clone)]
pub struct PoolSource {
    pub origin: Origin,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub auth: Option<Arc<Authorizer>>,
}

/// One object to download into an already created (empty) file.
pub struct ObjectJob {
    /// Path and query of the GET, URL-encoded.
    pub path_and_query: String,
    /// Shown in messages.
    pub display_name: String,
    /// Every response must carry this `x-bz-file-id`.
    pub expect_file_id: Option<String>,
    pub size_bytes: u64,
    /// The published digest, if any: a mismatch downloads the object again
    /// (`OBJECT_REDOWNLOADS_ON_MISMATCH` times) before it is reported.
    pub expected_sha1: Option<[u8; 20]>,
    /// `fsync` the file once written, before `done` runs.
    pub fsync: bool,
    /// The destination, opened for writing; closed by the pool.
    pub file: OwnedFd,
    /// Runs on the core thread once the object is written (or failed).
    pub done: Box<dyn FnOnce(ObjectResult) + Send>,
}

/// What became of one object.
pub struct ObjectResult {
    pub outcome: std::result::Result<[u8; 20], ObjectError>,
    /// Requests made, counting the first.
    pub attempts: u32,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub struct ObjectError {
    pub error: Error,
    /// Retrying other objects will not help either (auth, trust, disk full):
    /// the scheduler stops the run.
    pub run_fatal: bool,
}

/// Totals of the pool once it has shut down.
pub struct PoolReport {
    pub stages: StageHistograms,
    pub retries: u64,
    pub registered_buffers: bool,
    pub notices: Vec<String>,
}

type Queue = tokio::sync::Mutex<tokio::sync::mpsc::Receiver<ObjectJob>>;

/// The running pool. `submit` blocks while the queue is full (backpressure
/// all the way to the listing); `finish` drains it and joins the cores.
pub struct ObjectPool {
    sender: Option<tokio::sync::mpsc::Sender<ObjectJob>>,
    threads: Vec<std::thread::JoinHandle<Result<CoreReport>>>,
    stopped: Arc<AtomicBool>,
}

struct Shared {
    config: EngineConfig,
    source: PoolSource,
    queue: Queue,
    progress: Arc<Progress>,
    stopped: Arc<AtomicBool>,
}

struct CoreReport {
    stages: StageHistograms,
    retries: u64,
    registration: Registration,
}

impl ObjectPool {
    pub fn start(
        config: &EngineConfig,
        source: PoolSource,
        progress: Arc<Progress>,
    ) -> Result<ObjectPool> {
        let cores = config.cores.max(1);
        let (sender, receiver) = tokio::sync::mpsc::channel(
            (cores * OBJECT_QUEUE_JOBS_PER_CORE).min(OBJECT_QUEUE_JOBS_MAX),
        );
        let stopped = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            config: config.clone(),
            source,
            queue: tokio::sync::Mutex::new(receiver),
            progress,
            stopped: Arc::clone(&stopped),
        });
        let mut threads = Vec::with_capacity(cores);
        for core_index in 0..cores {
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("ringdown-objects-{core_index}"))
                .spawn(move || run_core(core_index, shared))
                .map_err(|error| Error::io("spawning a core thread", error))?;
            threads.push(thread);
        }
        Ok(ObjectPool {
            sender: Some(sender),
            threads,
            stopped,
        })
    }

    /// Queues a job, waiting while the queue is full. Fails (dropping the
    /// job, whose partial file the caller removes) if every core has exited.
    pub fn submit(&self, job: ObjectJob) -> Result<()> {
        let sender = self.sender.as_ref().expect("pool is running");
        sender
            .blocking_send(job)
            .map_err(|_| Error::Fatal("every core of the object pool has stopped".into()))
    }

    /// Jobs still queued are failed with "stopped"; running ones finish.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Closes the queue, waits for every queued job and joins the cores.
    pub fn finish(mut self) -> Result<PoolReport> {
        drop(self.sender.take());
        let mut report = PoolReport {
            stages: StageHistograms::new(),
            retries: 0,
            registered_buffers: true,
            notices: Vec::new(),
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

struct Core {
    shared: Arc<Shared>,
    pool: BufferPool,
    stats: RefCell<StageHistograms>,
    retries: Cell<u64>,
}

impl Core {
    fn record(&self, stage: Stage, elapsed: Duration) {
        self.stats.borrow_mut().record(stage, elapsed);
    }
}

fn run_core(core_index: usize, shared: Arc<Shared>) -> Result<CoreReport> {
    if shared.config.pin_cores {
        crate::runtime::pin_current_thread(core_index);
    }
    let runtime = uring::Runtime::new()?;
    runtime.block_on(async move {
        let config = &shared.config;
        let (buffers, buffer_size_bytes) = pool_shape(config);
        let (pool, registration) =
            BufferPool::new(buffers, buffer_size_bytes, config.register_buffers);
        let core = Rc::new(Core {
            shared: Arc::clone(&shared),
            pool,
            stats: RefCell::new(StageHistograms::new()),
            retries: Cell::new(0),
        });
        let mut tasks = Vec::with_capacity(config.connections_per_core);
        for _ in 0..config.connections_per_core {
            tasks.push(uring::spawn(connection_loop(Rc::clone(&core))));
        }
        for task in tasks {
            let _ = task.await;
        }
        let stages = core.stats.borrow().clone();
        Ok(CoreReport {
            stages,
            retries: core.retries.get(),
            registration,
        })
    })
}

/// Buffers per core and their size. A connection receives into one buffer
/// at a time and awaits its write, so two per connection keep it busy; small
/// buffers keep the pool a few MiB beside the large-object engine's.
pub fn pool_shape(config: &EngineConfig) -> (usize, usize) {
    let buffers = config.connections_per_core.max(1) * OBJECT_BUFFERS_PER_CONNECTION;
    let buffer_size_bytes = config.buffer_size_bytes.min(OBJECT_BUFFER_SIZE_BYTES);
    (buffers, buffer_size_bytes)
}

/// Bytes of registered memory the pool takes on all cores.
pub fn pool_bytes(config: &EngineConfig) -> u64 {
    let (buffers, buffer_size_bytes) = pool_shape(config);
    (config.cores.max(1) * buffers * buffer_size_bytes) as u64
}

async fn connection_loop(core: Rc<Core>) {
    let mut connection: Option<Connection> = None;
    loop {
        let job = {
            let mut queue = core.shared.queue.lock().await;
            queue.recv().await
        };
        let Some(job) = job else { break };
        let started = Instant::now();
        let stopped =
            core.shared.stopped.load(Ordering::Acquire) || core.shared.config.is_cancelled();
        let (outcome, attempts) = if stopped {
            let error = Error::Fatal(format!(
                "{}: not started: the run stopped",
                job.display_name
            ));
            (
                Err(ObjectError {
                    error,
                    run_fatal: false,
                }),
                0,
            )
        } else {
            download_object(&core, &mut connection, &job).await
        };
        let elapsed = started.elapsed();
        core.record(Stage::File, elapsed);
        (job.done)(ObjectResult {
            outcome,
            attempts,
            elapsed,
        });
    }
    if let Some(connection) = connection {
        connection.shutdown();
    }
}

/// Per-object download state that survives a retry.
struct Received {
    bytes: u64,
    hasher: Sha1,
}

async fn download_object(
    core: &Rc<Core>,
    connection: &mut Option<Connection>,
    job: &ObjectJob,
) -> (std::result::Result<[u8; 20], ObjectError>, u32) {
    let fd = match job.file.try_clone() {
        Ok(fd) => fd,
        Err(error) => {
            let error = Error::io("duplicating the destination file descriptor", error);
            return (
                Err(ObjectError {
                    error,
                    run_fatal: true,
                }),
                0,
            );
        }
    };
    let file = File::from_std(std::fs::File::from(fd));
    let config = &core.shared.config;
    let mut received = Received {
        bytes: 0,
        hasher: Sha1::new(),
    };
    let mut attempt = 0u32;
    let mut reauthorized = false;
    let mut redownloads_left = OBJECT_REDOWNLOADS_ON_MISMATCH;
    let result = loop {
        if job.size_bytes == 0 {
            // An empty object has nothing to fetch: its digest is SHA1("").
            break Ok(());
        }
        attempt += 1;
        let failure = match attempt_object(core, connection, job, &file, &mut received).await {
            Ok(()) => {
                let mismatch = job.expected_sha1.is_some_and(|expected| {
                    expected != <[u8; 20]>::from(received.hasher.clone().finalize())
                });
                if mismatch && redownloads_left > 0 {
                    // The same offsets are written again; the size is unchanged.
                    redownloads_left -= 1;
                    received = Received {
                        bytes: 0,
                        hasher: Sha1::new(),
                    };
                    core.retries.set(core.retries.get() + 1);
                    core.shared.progress.retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                break Ok(());
            }
            Err(failure) => failure,
        };
        if let Some(connection) = connection.take() {
            connection.shutdown();
        }
        let context = format!(
            "GET {} bytes={}-{}",
            job.display_name,
            received.bytes,
            job.size_bytes - 1
        );
        let fatal = |error: Error| ObjectError {
            error,
            run_fatal: true,
        };
        match failure.kind {
            FailureKind::Retry => {}
            FailureKind::Reauthorize if !reauthorized => {
                reauthorized = true;
                if let Some(auth) = &core.shared.source.auth {
                    if let Err(error) = auth.reauthorize().await {
                        break Err(fatal(error));
                    }
                }
            }
            FailureKind::Reauthorize | FailureKind::Auth => {
                break Err(fatal(Error::Auth(format!("{context}: {}", failure.detail))));
            }
            FailureKind::Trust => break Err(fatal(Error::Trust(failure.detail))),
            FailureKind::Run => {
                break Err(fatal(Error::Fatal(format!(
                    "{context}: {}",
                    failure.detail
                ))));
            }
            FailureKind::Object => {
                break Err(ObjectError {
                    error: Error::http(context, failure.detail),
                    run_fatal: false,
                });
            }
        }
        if attempt >= config.max_attempts
            || core.shared.stopped.load(Ordering::Acquire)
            || config.is_cancelled()
        {
            break Err(ObjectError {
                error: Error::http(
                    context,
                    format!("{} after {attempt} attempts", failure.detail),
                ),
                run_fatal: false,
            });
        }
        core.retries.set(core.retries.get() + 1);
        core.shared.progress.retries.fetch_add(1, Ordering::Relaxed);
        let delay = backoff(
            config.retry_base_ms,
            config.retry_max_ms,
            attempt,
            failure.retry_after_s,
            // Any per-object value decorrelates objects that failed together.
            job.path_and_query.len() as u64 ^ job.size_bytes,
        );
        let waited = Instant::now();
        tokio::time::sleep(delay).await;
        core.record(Stage::RetryWait, waited.elapsed());
    };
    // Every write was awaited inside the attempts. `--fsync`: the data is
    // durable before the caller renames the file and journals it.
    let result = match result {
        Ok(()) if job.fsync => {
            let synced = Instant::now();
            let outcome = file.sync_all().await.map_err(|error| ObjectError {
                error: Error::io(format!("fsync of {}", job.display_name), error),
                run_fatal: false,
            });
            core.record(Stage::Write, synced.elapsed());
            outcome
        }
        other => other,
    };
    let _ = file.close().await;
    let outcome = result.map(|()| {
        debug_assert_eq!(
            received.bytes, job.size_bytes,
            "hashed bytes == written bytes"
        );
        received.hasher.finalize().into()
    });
    (outcome, attempt.max(1))
}

async fn attempt_object(
    core: &Rc<Core>,
    connection: &mut Option<Connection>,
    job: &ObjectJob,
    file: &File,
    received: &mut Received,
) -> std::result::Result<(), Failure> {
    let source = &core.shared.source;
    let config = &core.shared.config;
    if connection.is_none() {
        let record = |stage, elapsed| core.record(stage, elapsed);
        let opened =
            Connection::open(&source.origin, source.tls.as_ref(), config.timeout, &record).await;
        *connection = Some(opened.map_err(conn_failure)?);
    }
    let conn = connection.as_mut().expect("connected");
    let first_byte = received.bytes;
    let last_byte = job.size_bytes - 1;
    // The first request needs no Range: the whole object on one connection.
    let range = (first_byte > 0).then_some((first_byte, last_byte));
    let token = source.auth.as_ref().map(|auth| auth.token());
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(token) = token.as_deref() {
        headers.push(("Authorization", token));
    }
    let mut request = Vec::with_capacity(512);
    http::write_get_request(
        &mut request,
        "GET",
        &source.origin.host_header(),
        &job.path_and_query,
        range,
        &headers,
    )
    .map_err(|error| Failure {
        detail: error.to_string(),
        kind: FailureKind::Object,
        retry_after_s: None,
    })?;
    let sent = Instant::now();
    conn.send(request).await.map_err(conn_failure)?;
    let head = conn.read_head().await.map_err(conn_failure)?;
    core.record(Stage::Ttfb, sent.elapsed());
    check_head(conn, &head, job, first_byte, last_byte).await?;
    let mut body_left = job.size_bytes - first_byte;
    while body_left > 0 {
        let waited = Instant::now();
        let mut buf = core.pool.take(|| true).await;
        core.record(Stage::BufferWait, waited.elapsed());
        let buffer_started = Instant::now();
        // Fill the whole buffer (or the rest of the body) before writing.
        while buf.spare_bytes() > 0 && (buf.filled_bytes() as u64) < body_left {
            let want = (buf.spare_bytes() as u64).min(body_left - buf.filled_bytes() as u64);
            let (result, returned) = conn.read_body_into(buf, want as usize).await;
            buf = returned;
            match result {
                Ok(0) => {
                    flush(core, file, buf, received).await?;
                    return Err(Failure::retry(format!(
                        "connection closed with {} body bytes missing",
                        job.size_bytes - received.bytes
                    )));
                }
                Ok(_) => {}
                Err(error) => {
                    flush(core, file, buf, received).await?;
                    return Err(conn_failure(error));
                }
            }
        }
        core.record(Stage::Recv, buffer_started.elapsed());
        let filled = buf.filled_bytes() as u64;
        flush(core, file, buf, received).await?;
        body_left -= filled;
    }
    conn.requests_done += 1;
    if !head.keep_alive {
        conn.shutdown();
        *connection = None;
    }
    Ok(())
}

/// Hashes the buffer's bytes (in order: one connection per object) and
/// writes them at their offset. A write error is local and not retried.
async fn flush(
    core: &Rc<Core>,
    file: &File,
    buf: crate::uring::PoolBuf,
    received: &mut Received,
) -> std::result::Result<(), Failure> {
    let len = buf.filled_bytes();
    if len == 0 {
        return Ok(());
    }
    let hashed = Instant::now();
    received.hasher.update(buf.filled());
    core.record(Stage::Hash, hashed.elapsed());
    let offset = received.bytes;
    let written = Instant::now();
    let (result, buf) = file.write_all_at(buf, offset).await;
    core.record(Stage::Write, written.elapsed());
    drop(buf);
    match result {
        Ok(()) => {
            received.bytes += len as u64;
            core.shared
                .progress
                .bytes_done
                .fetch_add(len as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => {
            let run_fatal = matches!(
                error.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EROFS) | Some(libc::EDQUOT)
            );
            Err(Failure {
                detail: format!("writing at byte {offset}: {error}"),
                kind: if run_fatal {
                    FailureKind::Run
                } else {
                    FailureKind::Object
                },
                retry_after_s: None,
            })
        }
    }
}

async fn check_head(
    conn: &mut Connection,
    head: &ResponseHead,
    job: &ObjectJob,
    first_byte: u64,
    last_byte: u64,
) -> std::result::Result<(), Failure> {
    let requested = last_byte - first_byte + 1;
    match head.status {
        200 if first_byte == 0 => {}
        206 => {
            let Some(range) = head.content_range else {
                return Err(Failure::retry("206 without Content-Range"));
            };
            if range.first != first_byte || range.last != last_byte {
                return Err(Failure::retry(format!(
                    "Content-Range bytes {}-{} does not match the requested {first_byte}-{last_byte}",
                    range.first, range.last
                )));
            }
            if range
                .complete_length
                .is_some_and(|total| total != job.size_bytes)
            {
                return Err(Failure {
                    detail: "the object changed size since it was listed".into(),
                    kind: FailureKind::Object,
                    retry_after_s: None,
                });
            }
        }
        200 => {
            return Err(Failure::retry(
                "200 (whole object) where a range was requested",
            ));
        }
        _ => return Err(status_failure(conn, head).await),
    }
    if head.chunked {
        return Err(Failure::retry("chunked body where a length was expected"));
    }
    match head.content_length {
        Some(length) if length == requested => {}
        Some(length) => {
            return Err(Failure {
                detail: format!(
                    "Content-Length {length} is not the listed {requested} bytes; the object changed since it was listed"
                ),
                kind: FailureKind::Object,
                retry_after_s: None,
            });
        }
        None => return Err(Failure::retry("response without Content-Length")),
    }
    if let Some(expected) = &job.expect_file_id {
        match head.header("x-bz-file-id") {
            Some(id) if id == expected => {}
            other => {
                return Err(Failure {
                    detail: format!(
                        "x-bz-file-id {:?} is not the listed version {expected}; the object was replaced",
                        other.unwrap_or("")
                    ),
                    kind: FailureKind::Object,
                    retry_after_s: None,
                });
            }
        }
    }
    Ok(())
}

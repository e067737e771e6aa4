//! One object on one connection (a restore's small objects; `get` from an
//! origin that ignores Range): a single GET (no Range), so its bytes
//! arrive in order and SHA1 runs on the fly from the pool buffer before each
//! positional write. A cut-off body resumes with `Range` from the first
//! missing byte, keeping the running digest (or starts over from byte 0 if
//! the origin answers with the whole object); a mismatch downloads it again.
//!
//! The last buffer's write is not the connection's: once the body is in and
//! hashed, an `Ending` task of the core writes it, `--fsync`s and closes the
//! file and runs `done`, while the connection sends its next GET. A
//! buffered ext4 write always goes through an io-wq worker (ext4 takes no
//! IOCB_NOWAIT write), whose latency (p50 3 ms with 32 connections busy,
//! h44) every connection waited out once per small object. The buffer
//! pool bounds the writes in flight.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use sha1::{Digest, Sha1};

use super::conn::EngineConn;
use super::failure::{Failure, FailureKind, GiveUp, Retries, Then, conn_failure};
use super::request::{
    build_get, check_head, next_head, send_get_ahead, stop_pipelining_if_refused,
};
use super::scheduler::{Core, Destination, ObjectError, ObjectJob, ObjectSpec};
use crate::client::conn::ConnError;
use crate::config::{
    DIRECT_IO_ALIGN_BYTES, OBJECT_REDOWNLOADS_ON_MISMATCH, PIPELINE_OBJECTS_AHEAD,
    PIPELINE_ROUND_TRIP_MIN_US,
};
use crate::error::Error;
use crate::http::ResponseHead;
use crate::stats::Stage;
use crate::uring::File;

/// Per-object download state that survives a retry.
struct Received {
    bytes: u64,
    hasher: Sha1,
}

impl Received {
    fn new() -> Received {
        Received {
            bytes: 0,
            hasher: Sha1::new(),
        }
    }

    /// Forgets every byte so far (they will come again), in the progress
    /// counters too.
    fn start_over(&mut self, core: &Core) {
        core.shared
            .progress
            .bytes_done
            .fetch_sub(self.bytes, Ordering::Relaxed);
        *self = Received::new();
    }
}

/// A 200 with the object's full length: the whole object, whatever Range
/// asked for.
fn is_whole_object(head: &ResponseHead, size_bytes: u64) -> bool {
    head.status == 200 && !head.chunked && head.content_length == Some(size_bytes)
}

/// How `download_object` ended.
pub(super) enum Ran {
    /// Received and checked whole: `Ending::run` writes its last bytes and
    /// says how it ended.
    Received(Ending),
    /// Why it failed, and the requests made.
    Failed(ObjectError, u32),
    /// An error answer that calls for another attempt (B2 refused the SSE-C
    /// key guessed; 429, 503, ...) came while answers to GETs sent ahead
    /// were still owed on the connection: the object goes back to the queue
    /// (after its backoff, if any), and the connection goes on with those
    /// answers instead of dropping them, to fetch them again elsewhere.
    Deferred(Deferred),
}

pub(super) struct Deferred {
    /// Another descriptor of the file: nothing was written to it yet.
    pub destination: Destination,
    pub retries: Retries,
    /// Held off the queue first (its place reserved with
    /// `Shared::reserve_backoff`); `None`: its turn may come at once.
    pub backoff: Option<Backoff>,
}

pub(super) struct Backoff {
    pub delay: std::time::Duration,
    /// How the object fails if the run stops before its next turn: as it
    /// would have, waiting where it failed.
    pub if_stopped: Error,
}

pub(super) async fn download_object(
    core: &Rc<Core>,
    connection: &mut Option<EngineConn>,
    job: &ObjectSpec,
    destination: Destination,
    mut retries: Retries,
    ahead: &mut VecDeque<ObjectJob>,
) -> Ran {
    let file = File::new(destination.fd, destination.direct_io);
    let mut received = Received::new();
    let mut redownloads_left = OBJECT_REDOWNLOADS_ON_MISMATCH;
    let result = loop {
        if job.size_bytes == 0 {
            // An empty object has nothing to fetch: its digest is SHA1("").
            break Ok(None);
        }
        retries.start(core);
        let attempt = attempt_object(core, connection, job, &file, &mut received, ahead);
        let failure = match attempt.await {
            Ok(last) => {
                let mismatch = job.expected_sha1.is_some_and(|expected| {
                    expected != <[u8; 20]>::from(received.hasher.clone().finalize())
                });
                if mismatch && redownloads_left > 0 {
                    // The same offsets are written again; the size is unchanged.
                    redownloads_left -= 1;
                    received.start_over(core);
                    core.count_retry("SHA1 mismatch");
                    continue;
                }
                break Ok(Some(last));
            }
            Err(failure) => failure,
        };
        let context = format!(
            "GET {} bytes={}-{}",
            job.display_name,
            received.bytes,
            job.size_bytes - 1
        );
        let stop = || core.shared.is_stopped();
        // Any per-object value decorrelates objects that failed together.
        let salt = job.path_and_query.len() as u64 ^ job.size_bytes;
        if received.bytes == 0 && connection.as_ref().is_some_and(|conn| failure.defers(conn)) {
            let idle = connection
                .as_ref()
                .is_some_and(|conn| failure.leaves_idle(conn));
            // Given up, the object fails here, and the connection (in step)
            // goes on to the answers it owes.
            let then = match retries
                .next_attempt(core, failure, &context, stop, salt)
                .await
            {
                Ok(then) => then,
                Err(GiveUp { error, run_fatal }) => break Err(ObjectError { error, run_fatal }),
            };
            let then = match defer(core, &file, then, &retries, &context) {
                Ok(deferred) => {
                    let _ = file.close().await;
                    return Ran::Deferred(deferred);
                }
                Err(then) => then,
            };
            // It could not be deferred: it waits here. With nothing owed on
            // it, its connection idles through a short backoff, as a chunk's
            // does, and the objects claimed ahead (no GET out) go back to the
            // queue rather than wait too; else it is dropped, as below.
            if idle && then.may_idle_through() {
                core.shared.give_back(ahead.drain(..));
            } else {
                drop_connection(core, connection, ahead);
            }
            if let Then::After { delay, detail } = then {
                let waited = retries.wait(core, delay, &detail, &context, stop);
                if let Err(GiveUp { error, run_fatal }) = waited.await {
                    break Err(ObjectError { error, run_fatal });
                }
            }
            continue;
        }
        // An error answer read to its end leaves the connection in step:
        // it carries this object's next request, or (the object failed for
        // good) goes on to the answers it owes the objects ahead.
        if !connection
            .as_ref()
            .is_some_and(|conn| failure.leaves_in_step(conn))
        {
            drop_connection(core, connection, ahead);
        }
        let next = retries.after_failure(core, failure, context, stop, salt);
        if let Err(GiveUp { error, run_fatal }) = next.await {
            break Err(ObjectError { error, run_fatal });
        }
    };
    let attempts = retries.made().max(1);
    match result {
        Ok(last) => Ran::Received(Ending {
            file,
            last,
            offset_bytes: received.bytes,
            digest: received.hasher.finalize().into(),
            attempts,
        }),
        Err(error) => {
            let _ = file.close().await;
            Ran::Failed(error, attempts)
        }
    }
}

/// An object received and hashed whole, and checked against its SHA1 where
/// `download_object` checks it: what is left is to write its last buffer,
/// `--fsync` and close the file (see the module's comment).
pub(super) struct Ending {
    file: File,
    /// The body's last bytes, hashed; `None` for an empty object.
    last: Option<crate::uring::PoolBuf>,
    /// Where `last` goes: every byte before it is written.
    offset_bytes: u64,
    digest: [u8; 20],
    /// Requests made (counting the first).
    pub attempts: u32,
}

impl Ending {
    /// Writes the last bytes and, for `--fsync`, makes the file durable
    /// before the caller renames and journals it; closes the file either way.
    pub(super) async fn run(
        self,
        core: &Rc<Core>,
        job: &ObjectSpec,
    ) -> Result<[u8; 20], ObjectError> {
        let Ending {
            file,
            last,
            offset_bytes,
            digest,
            attempts: _,
        } = self;
        let written = match last {
            Some(buf) => write_out(core, &file, buf, offset_bytes).await,
            None => Ok(0),
        };
        let outcome = match written {
            Ok(written_bytes) => {
                debug_assert_eq!(
                    offset_bytes + written_bytes,
                    job.size_bytes,
                    "hashed bytes == written bytes"
                );
                if job.fsync {
                    let synced = Instant::now();
                    let synced_all = file.sync_all().await;
                    core.record(Stage::Write, synced.elapsed());
                    synced_all.map_err(|error| ObjectError {
                        error: Error::io(format!("fsync of {}", job.display_name), error),
                        run_fatal: false,
                    })
                } else {
                    Ok(())
                }
            }
            Err(failure) => {
                let context = format!(
                    "GET {} bytes={offset_bytes}-{}",
                    job.display_name,
                    job.size_bytes - 1
                );
                let GiveUp { error, run_fatal } = failure.give_up_at_once(&context);
                Err(ObjectError { error, run_fatal })
            }
        };
        let _ = file.close().await;
        outcome.map(|()| digest)
    }
}

/// Readies the object for a later turn: another descriptor of its file
/// (nothing was written to it yet; the caller closes this one) and, for a
/// backoff, a reserved place off the queue. `Err`: it cannot be (a failed
/// dup, or as many objects back off as may), and retries on this
/// connection's task.
fn defer(
    core: &Core,
    file: &File,
    then: Then,
    retries: &Retries,
    context: &str,
) -> std::result::Result<Deferred, Then> {
    let Ok(fd) = file.try_clone_fd() else {
        return Err(then);
    };
    let backoff = match &then {
        Then::Now => None,
        Then::After { delay, detail } if core.shared.reserve_backoff() => Some(Backoff {
            delay: *delay,
            if_stopped: retries.give_up(context, detail).error,
        }),
        // The duplicate descriptor closes here.
        Then::After { .. } => return Err(then),
    };
    Ok(Deferred {
        // Nothing was written: the file's O_DIRECT is as it was opened.
        destination: Destination {
            fd,
            direct_io: file.is_direct(),
        },
        retries: retries.clone(),
        backoff,
    })
}

/// Shuts the connection down; the objects whose GETs it carried ahead go
/// back to the queue, for any connection, while this one waits to retry.
fn drop_connection(
    core: &Core,
    connection: &mut Option<EngineConn>,
    ahead: &mut VecDeque<ObjectJob>,
) {
    if let Some(conn) = connection.take() {
        conn.shutdown();
    }
    core.shared.give_back(ahead.drain(..));
}

async fn attempt_object(
    core: &Rc<Core>,
    connection: &mut Option<EngineConn>,
    job: &ObjectSpec,
    file: &File,
    received: &mut Received,
    ahead: &mut VecDeque<ObjectJob>,
) -> std::result::Result<crate::uring::PoolBuf, Failure> {
    let mut first_byte = received.bytes;
    let last_byte = job.size_bytes - 1;
    // The first request needs no Range: the whole object on one connection.
    let range = (first_byte > 0).then_some((first_byte, last_byte));
    let head = next_head(core, connection, job, range).await?;
    let conn = connection.as_mut().expect("connected");
    if first_byte > 0 && is_whole_object(&head, job.size_bytes) {
        // The origin ignored Range and sends the whole object (some do for
        // every request, others now and then): rather than fail the attempt,
        // start over from byte 0, writing the same offsets again.
        received.start_over(core);
        first_byte = 0;
    }
    check_head(conn, &head, job, first_byte, last_byte).await?;
    if head.keep_alive {
        send_objects_ahead(core, conn, ahead).await?;
    }
    let mut body_left = job.size_bytes - first_byte;
    // A stop lets a small object's answer finish; not a whole object larger
    // than a part (from an origin that ignores Range), which could take
    // minutes: its attempt ends here, and its caller says why.
    let cut_at_stop = job.size_bytes > core.shared.config.part_size_bytes;
    let stopping = || cut_at_stop && core.shared.is_stopped();
    let mut floor = conn.body_floor();
    let last = loop {
        let waited = Instant::now();
        // The reserve belongs to large objects' hash frontiers, when any run here.
        let mut buf = core.pool.take(|| core.large.borrow().is_empty()).await;
        core.record(Stage::BufferWait, waited.elapsed());
        let buffer_started = Instant::now();
        // Fill the whole buffer (or the rest of the body) before writing.
        while buf.spare_bytes() > 0 && (buf.filled_bytes() as u64) < body_left {
            if stopping() {
                return Err(Failure::retry("the run is stopping"));
            }
            let want = (buf.spare_bytes() as u64).min(body_left - buf.filled_bytes() as u64);
            let want = core.read_bytes_max(want as usize);
            let receiving = Instant::now();
            let (result, returned) = conn.read_body_into(buf, want).await;
            let waited = receiving.elapsed();
            buf = returned;
            match result {
                Ok(0) => {
                    flush(core, file, buf, received).await?;
                    let closed = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    stop_pipelining_if_refused(core, conn, &closed);
                    return Err(Failure::retry(format!(
                        "connection closed with {} body bytes missing",
                        job.size_bytes - received.bytes
                    )));
                }
                Ok(n) => {
                    // A slow read that ends the body ends it: a retry would
                    // ask for the bytes after the last one.
                    let body_ended = buf.filled_bytes() as u64 == body_left;
                    if let (Err(error), false) = (floor.received(waited, n), body_ended) {
                        flush(core, file, buf, received).await?;
                        return Err(conn_failure(error));
                    }
                    core.pace(n).await;
                }
                Err(error) => {
                    flush(core, file, buf, received).await?;
                    if let ConnError::Transport(io_error) = &error {
                        stop_pipelining_if_refused(core, conn, io_error);
                    }
                    return Err(conn_failure(error));
                }
            }
        }
        core.record(Stage::Recv, buffer_started.elapsed());
        let filled = buf.filled_bytes() as u64;
        if filled == body_left {
            // The body's end: hashed here, written by the object's `Ending`.
            hash(core, &buf, received);
            break buf;
        }
        flush(core, file, buf, received).await?;
        body_left -= filled;
    };
    conn.requests.answered();
    if !head.keep_alive {
        conn.shutdown();
        *connection = None;
        // Their GETs went unanswered with it: any connection may take them.
        core.shared.give_back(ahead.drain(..));
    }
    Ok(last)
}

/// Keeps `PIPELINE_OBJECTS_AHEAD` GETs of the next small objects going out
/// behind the answer being read (HTTP/1.1 pipelining), where a round trip
/// is long enough to hide: a small object's body takes less than a round
/// trip, so one request at a time leaves a connection idle most of the
/// time. The claimed objects are run next on this connection.
async fn send_objects_ahead(
    core: &Core,
    conn: &mut EngineConn,
    ahead: &mut VecDeque<ObjectJob>,
) -> std::result::Result<(), Failure> {
    let worth_it = core.shared.round_trip_at_least(PIPELINE_ROUND_TRIP_MIN_US);
    // In step: every object ahead that needs a GET has one out on this
    // connection. (A connection retired or closed under them took their
    // GETs along: those objects send their own, then topping up resumes.)
    let needing_gets = ahead.iter().filter(|job| job.object.size_bytes > 0).count();
    if !worth_it || !core.shared.pipelining() || needing_gets != conn.requests.answers_owed() {
        return Ok(());
    }
    while ahead.len() < PIPELINE_OBJECTS_AHEAD {
        let Some(next) = core.shared.claim_object() else {
            return Ok(());
        };
        if next.object.size_bytes == 0 {
            // Nothing to fetch (`download_object` sends no GET for it).
            ahead.push_back(next);
            continue;
        }
        let Ok(request) = build_get(core, &next.object, None) else {
            // Its own turn will fail it, saying why; not this object's.
            core.shared.give_back(std::iter::once(next));
            return Ok(());
        };
        // Claimed before sending: if sending fails, the failure gives it back.
        ahead.push_back(next);
        let next = &ahead.back().expect("just pushed").object;
        send_get_ahead(conn, next, None, request).await?;
    }
    Ok(())
}

/// Hashes and writes a buffer the body goes on after, or that a failed
/// attempt cut short (its bytes in order: one connection per object). A
/// write error is local and not retried.
///
/// O_DIRECT writes whole blocks at block offsets: such a buffer keeps its
/// whole blocks (buffer sizes are multiples of a block); the rest is
/// fetched again.
async fn flush(
    core: &Rc<Core>,
    file: &File,
    mut buf: crate::uring::PoolBuf,
    received: &mut Received,
) -> std::result::Result<(), Failure> {
    if file.is_direct() {
        buf.truncate(buf.filled_bytes() / DIRECT_IO_ALIGN_BYTES * DIRECT_IO_ALIGN_BYTES);
    }
    if buf.filled_bytes() == 0 {
        return Ok(());
    }
    hash(core, &buf, received);
    received.bytes += write_out(core, file, buf, received.bytes).await?;
    Ok(())
}

fn hash(core: &Core, buf: &crate::uring::PoolBuf, received: &mut Received) {
    let hashed = Instant::now();
    crate::verify::sha1_update(&mut received.hasher, buf.filled());
    core.record(Stage::Hash, hashed.elapsed());
}

/// Writes a hashed buffer at `offset_bytes`; returns the bytes written.
///
/// The body's last buffer, on an O_DIRECT file: its whole blocks go direct
/// and the rest through the page cache (`File::end_direct`), so nothing is
/// padded and cut back after (cutting a block written direct reads it back
/// from disk, once per file).
async fn write_out(
    core: &Rc<Core>,
    file: &File,
    mut buf: crate::uring::PoolBuf,
    offset_bytes: u64,
) -> std::result::Result<u64, Failure> {
    let whole_blocks_bytes = buf.filled_bytes() / DIRECT_IO_ALIGN_BYTES * DIRECT_IO_ALIGN_BYTES;
    if !file.is_direct() || buf.filled_bytes() == whole_blocks_bytes {
        return write(core, file, Bytes::Pool(buf), offset_bytes).await;
    }
    let rest = buf.filled()[whole_blocks_bytes..].to_vec();
    buf.truncate(whole_blocks_bytes);
    let direct_bytes = write(core, file, Bytes::Pool(buf), offset_bytes).await?;
    let rest_at = offset_bytes + direct_bytes;
    if let Err(error) = file.end_direct() {
        return Err(write_error(rest_at, &error));
    }
    Ok(direct_bytes + write(core, file, Bytes::Owned(rest), rest_at).await?)
}

/// What `write` writes: a pool buffer's filled bytes, or a few bytes of
/// its own (an O_DIRECT file's last, partial block).
enum Bytes {
    Pool(crate::uring::PoolBuf),
    Owned(Vec<u8>),
}

/// Writes `bytes` (hashed already) at `offset_bytes`; returns their length.
async fn write(
    core: &Rc<Core>,
    file: &File,
    bytes: Bytes,
    offset_bytes: u64,
) -> std::result::Result<u64, Failure> {
    let written = Instant::now();
    let (result, len) = match bytes {
        Bytes::Pool(buf) if buf.filled_bytes() == 0 => return Ok(0),
        Bytes::Pool(buf) => {
            let len = buf.filled_bytes();
            (file.write_all_at(buf, offset_bytes).await.0, len)
        }
        Bytes::Owned(bytes) => {
            let len = bytes.len();
            (file.write_bytes_at(bytes, offset_bytes).await, len)
        }
    };
    core.record(Stage::Write, written.elapsed());
    match result {
        Ok(()) => {
            core.shared
                .progress
                .bytes_done
                .fetch_add(len as u64, Ordering::Relaxed);
            Ok(len as u64)
        }
        Err(error) => Err(write_error(offset_bytes, &error)),
    }
}

fn write_error(offset: u64, error: &std::io::Error) -> Failure {
    let (detail, run_fatal) =
        super::failure::write_failure(&format!("writing at byte {offset}"), error);
    Failure {
        detail,
        kind: if run_fatal {
            FailureKind::Run
        } else {
            FailureKind::Object
        },
        retry_after_s: None,
        answer_read: false,
        size_dispute: None,
    }
}

//! One chunk of a large object on one connection: a range request, retried
//! from the first missing byte; each full buffer is written at its offset on
//! a task of its own and hashed when the frontier reaches it.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::conn::EngineConn;
use crate::client::conn::ConnError;
use crate::config::{
    DIRECT_IO_ALIGN_BYTES, PIPELINE_LOOKAHEAD_ROUND_TRIPS, PIPELINE_ROUND_TRIP_MIN_US,
};
use crate::error::Error;
use crate::plan::Chunk;
use crate::stats::Stage;
use crate::uring::PoolBuf;

use super::failure::{Failure, Retries, Then, conn_failure};
use super::large::{CoreJob, WriteInFlight};
use super::request::{
    build_get, check_head, next_head, send_get_ahead, stop_pipelining_if_refused,
};

pub(super) async fn download_chunk(
    core: &Rc<CoreJob>,
    connection: &mut Option<EngineConn>,
    chunk: Chunk,
    ahead: &mut Option<Chunk>,
) -> Result<(), Error> {
    let mut retries = Retries::new();
    let result = retry_chunk(core, connection, chunk, ahead, &mut retries).await;
    core.job.note_chunk_attempts(retries.made());
    result
}

async fn retry_chunk(
    core: &Rc<CoreJob>,
    connection: &mut Option<EngineConn>,
    chunk: Chunk,
    ahead: &mut Option<Chunk>,
    retries: &mut Retries,
) -> Result<(), Error> {
    let job = &core.job;
    let chunk_started = Instant::now();
    // Bytes of this chunk received so far: written, in flight, or in `current`.
    let mut received_bytes: u64 = 0;
    let mut current: Option<PoolBuf> = None;
    let mut buffer_started = Instant::now();
    loop {
        retries.start(&core.core);
        let failure = match attempt_chunk(
            core,
            connection,
            &chunk,
            &mut received_bytes,
            &mut current,
            &mut buffer_started,
            ahead,
        )
        .await
        {
            Ok(()) => break,
            Err(failure) => failure,
        };
        if let Some(conn) = connection.take_if(|conn| !failure.leaves_idle(conn)) {
            conn.shutdown();
        }
        if job.is_aborted() {
            return Ok(());
        }
        let context = format!(
            "GET {} bytes={}-{}",
            job.spec.object.display_name,
            chunk.offset_bytes + received_bytes,
            chunk.last_byte()
        );
        let stop = || job.chunk_stops(core.core.shared.stop(), chunk.offset_bytes);
        let next = retries
            .next_attempt(&core.core, failure, &context, &stop, chunk.index)
            .await;
        let waited = match next {
            Ok(then) => {
                // The chunk waits here, at the hash frontier or near it, so
                // its connection idles through the backoff: kept when that is
                // short (a retryable answer costs no handshake), else replaced.
                if !then.may_idle_through() {
                    if let Some(conn) = connection.take() {
                        conn.shutdown();
                    }
                }
                match then {
                    Then::Now => Ok(()),
                    Then::After { delay, detail } => {
                        let wait = retries.wait(&core.core, delay, &detail, &context, &stop);
                        wait.await
                    }
                }
            }
            Err(give_up) => Err(give_up),
        };
        match waited {
            Ok(()) => {}
            // Stopped by another chunk's error or a signal: that one is
            // reported. A chunk given up after a signal leaves its gap.
            Err(_) if job.is_aborted() || job.gave_up_below(chunk.offset_bytes) => return Ok(()),
            Err(give_up) => return Err(give_up.error),
        }
    }
    core.record(Stage::Chunk, chunk_started.elapsed());
    Ok(())
}

async fn attempt_chunk(
    core: &Rc<CoreJob>,
    connection: &mut Option<EngineConn>,
    chunk: &Chunk,
    received_bytes: &mut u64,
    current: &mut Option<PoolBuf>,
    buffer_started: &mut Instant,
    ahead: &mut Option<Chunk>,
) -> Result<(), Failure> {
    let job = &core.job;
    let spec = &job.spec;
    let first_byte = chunk.offset_bytes + *received_bytes;
    let last_byte = chunk.last_byte();
    let range = (first_byte, last_byte);
    let head = next_head(&core.core, connection, &spec.object, Some(range)).await?;
    let conn = connection.as_mut().expect("connected");
    let body_len = check_head(conn, &head, &spec.object, first_byte, last_byte).await?;
    let pipelining = head.keep_alive && core.core.shared.pipelining();
    let body_started = Instant::now();
    let mut body_left = body_len;
    let mut floor = conn.body_floor();
    while body_left > 0 {
        // A stop lets the body finish (`Job::next_chunk`), unless a
        // chunk below gave up: then nothing this one brings is kept.
        if job.is_aborted() || job.gave_up_below(chunk.offset_bytes) {
            return Err(Failure::retry("aborted"));
        }
        let mut buf = match current.take() {
            Some(buf) => buf,
            None => {
                let waited = Instant::now();
                let head_offset = chunk.offset_bytes + *received_bytes;
                let digest = &job.digest;
                let buf = core
                    .core
                    .pool
                    .take(|| {
                        digest.frontier() == head_offset
                            || job.is_aborted()
                            || job.gave_up_below(chunk.offset_bytes)
                    })
                    .await;
                core.record(Stage::BufferWait, waited.elapsed());
                *buffer_started = Instant::now();
                buf
            }
        };
        let want = core
            .core
            .read_bytes_max((buf.spare_bytes() as u64).min(body_left) as usize);
        let receiving = Instant::now();
        let (result, returned) = conn.read_body_into(buf, want).await;
        let waited = receiving.elapsed();
        buf = returned;
        let n = match result {
            Ok(0) => Err(ConnError::Transport(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed with {body_left} body bytes missing"),
            ))),
            Ok(n) => Ok(n),
            Err(error) => Err(error),
        };
        let n = match n {
            Ok(n) => n,
            Err(error) => {
                if buf.filled_bytes() > 0 {
                    *current = Some(buf);
                }
                if let ConnError::Transport(io_error) = &error {
                    stop_pipelining_if_refused(&core.core, conn, io_error);
                }
                return Err(conn_failure(error));
            }
        };
        *received_bytes += n as u64;
        body_left -= n as u64;
        // Progress counts bytes as they arrive, on every connection: counted
        // as hashed (in file order, a whole buffer at a time), the chunks
        // behind the first showed nothing until the end, and a rate-limited
        // get said "0.0 MB" 10 s in. A retry resumes after these bytes.
        job.progress
            .bytes_done
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        // The bytes counted in `received_bytes` are handed on before
        // anything else can fail: a retry resumes after them.
        if buf.is_full() || *received_bytes == chunk.len_bytes {
            core.record(Stage::Recv, buffer_started.elapsed());
            let offset = chunk.offset_bytes + *received_bytes - buf.filled_bytes() as u64;
            submit_write(core, buf, offset);
        } else {
            *current = Some(buf);
        }
        // After the bytes are handed on: a retry resumes after them. A slow
        // read that ends the body ends it (a retry would ask for nothing).
        if body_left > 0 {
            floor.received(waited, n).map_err(conn_failure)?;
        }
        if pipelining && ahead.is_none() && body_left > 0 && job.has_chunks_left() {
            if let Some(round_trip) = core.core.shared.round_trip() {
                let receiving = body_started.elapsed();
                let received_here = body_len - body_left;
                if send_ahead_now(body_left, received_here, receiving, round_trip) {
                    send_ahead(core, conn, ahead).await?;
                }
            }
        }
        core.core.pace(n).await;
    }
    if let Some(conn) = connection.as_mut() {
        conn.requests.answered();
        if !head.keep_alive {
            conn.shutdown();
            *connection = None;
        }
    }
    Ok(())
}

/// Whether to send the next chunk's GET now, behind this body (HTTP/1.1
/// pipelining): once what is left of the body will arrive within
/// `PIPELINE_LOOKAHEAD_ROUND_TRIPS` round trips at the rate seen so far, so
/// the next answer follows this one without the connection idling for a
/// round trip. No sooner: a chunk claimed early widens the reorder window.
/// Needs a rate measured over at least one round trip, and a round trip of
/// `PIPELINE_ROUND_TRIP_MIN_US` or more.
pub(crate) fn send_ahead_now(
    body_left_bytes: u64,
    received_bytes: u64,
    receiving: Duration,
    round_trip: Duration,
) -> bool {
    let too_short = round_trip < Duration::from_micros(PIPELINE_ROUND_TRIP_MIN_US);
    if too_short || received_bytes == 0 || receiving < round_trip {
        return false;
    }
    // body_left / (received / receiving) <= lookahead, without dividing.
    let lookahead_ns = u128::from(PIPELINE_LOOKAHEAD_ROUND_TRIPS) * round_trip.as_nanos();
    u128::from(body_left_bytes) * receiving.as_nanos() <= lookahead_ns * u128::from(received_bytes)
}

/// Sends the GET of the job's next chunk (claiming it) behind the response
/// being read.
async fn send_ahead(
    core: &Rc<CoreJob>,
    conn: &mut EngineConn,
    ahead: &mut Option<Chunk>,
) -> Result<(), Failure> {
    let job = &core.job;
    let Some(next) = job.next_chunk(core.core.shared.stop()) else {
        return Ok(());
    };
    let range = Some((next.offset_bytes, next.last_byte()));
    *ahead = Some(next);
    let request = build_get(&core.core, &job.spec.object, range)?;
    send_get_ahead(conn, &job.spec.object, range, request).await
}

/// Writes a full buffer at its offset on a task of its own, so the connection
/// keeps receiving; the written buffer then waits in the reorder window.
fn submit_write(core: &Rc<CoreJob>, mut buf: PoolBuf, offset: u64) {
    let size = core.job.digest.size_bytes();
    let data_len = buf.filled_bytes();
    debug_assert!(offset + data_len as u64 <= size);
    if core.job.spec.destination.direct_io
        && offset + data_len as u64 == size
        && data_len % DIRECT_IO_ALIGN_BYTES != 0
    {
        // O_DIRECT writes whole blocks: pad the tail; the file is cut back after.
        let aligned = data_len.next_multiple_of(DIRECT_IO_ALIGN_BYTES);
        buf.pad_to(aligned);
    }
    // At the frontier, hash now: the frontier then moves on without waiting
    // for the write, and other cores' parked buffers follow sooner.
    let hashed = core.hash_if_at_frontier(offset, &buf.filled()[..data_len]);
    let in_flight = WriteInFlight::start(core);
    let on_core = Rc::clone(&core.core);
    let core = Rc::clone(core);
    on_core.spawn("write", async move {
        let _in_flight = in_flight;
        super::failpoint::pass(super::failpoint::Site::Write);
        // Buffered writes of one file take turns across cores (see `write_gate`).
        let _turn = if core.job.spec.destination.direct_io {
            None
        } else {
            Some(core.job.write_gate.acquire().await.expect("never closed"))
        };
        let started = Instant::now();
        let (result, buf) = core.file().write_all_at(buf, offset).await;
        core.record(Stage::Write, started.elapsed());
        if result.is_ok() {
            core.job.wrote(offset, data_len as u64);
        }
        match result {
            Ok(()) if hashed => drop(buf),
            Ok(()) => core.park(offset, buf, data_len),
            Err(error) => {
                drop(buf);
                let context = format!(
                    "writing {} at byte {offset}",
                    core.job.spec.object.display_name
                );
                core.job
                    .abort(match super::failure::write_failure(&context, &error) {
                        (detail, true) => Error::Fatal(detail),
                        (_, false) => Error::io(context, error),
                    });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::send_ahead_now;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_next_get_goes_out_when_the_rest_of_the_body_is_two_round_trips_away() {
        // 1 MB received in 40 ms (25 MB/s); a 20 ms round trip: 2 round
        // trips carry 1 MB.
        let rtt = 20 * MS;
        assert!(send_ahead_now(1_000_000, 1_000_000, 40 * MS, rtt));
        assert!(send_ahead_now(999_999, 1_000_000, 40 * MS, rtt));
        assert!(!send_ahead_now(1_000_001, 1_000_000, 40 * MS, rtt));
        // Faster link, same round trip: further ahead.
        assert!(send_ahead_now(4_000_000, 2_000_000, 20 * MS, rtt));
    }

    #[test]
    fn no_rate_no_send() {
        let rtt = 20 * MS;
        assert!(!send_ahead_now(1, 0, 40 * MS, rtt), "nothing received");
        // Received faster than a round trip: the rate is a burst from the
        // socket buffer, not the link's.
        assert!(!send_ahead_now(1, 1_000_000, 19 * MS, rtt));
    }

    #[test]
    fn a_round_trip_under_the_minimum_never_sends_ahead() {
        let min = Duration::from_micros(crate::config::PIPELINE_ROUND_TRIP_MIN_US);
        let under = min - Duration::from_micros(1);
        assert!(!send_ahead_now(0, 1_000_000, 100 * MS, under));
        assert!(!send_ahead_now(0, 1_000_000, 100 * MS, Duration::ZERO));
        assert!(send_ahead_now(0, 1_000_000, 100 * MS, min));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let day = Duration::from_secs(86_400);
        assert!(!send_ahead_now(u64::MAX, 1, day, day));
        assert!(send_ahead_now(u64::MAX, u64::MAX, day, day));
    }
}

//! `--latency-ms`: a delay line between a connection's socket and the server,
//! below TLS, as a long link would be. Every byte, in each direction, is
//! delivered half the round trip after it arrived, and the link carries at
//! most `DELAY_LINE_WINDOW_BYTES` each way (a TCP window: one connection
//! moves at most a window per one-way delay).
//!
//! So a TLS handshake pays its round trips, and a request sent while an
//! answer is still on its way is not held up by it: HTTP/1.1 pipelining
//! hides round trips here as it does over a WAN. (Delaying each answer
//! inside the handler, as `serve` once did, made a pipelined request wait
//! for the one before it, and let `--rate-per-conn`'s token bucket refill
//! during the wait.) The kernel's TCP handshake is not delayed: no netem.
//!
//! Each direction reads bytes as they arrive, stamps them, and writes each
//! when it is due; the queue between is the window. One task carries both
//! directions of a connection and ends when the server's side has closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use super::config::{
    DELAY_LINE_PIPE_BYTES, DELAY_LINE_SEGMENT_BYTES, DELAY_LINE_SEGMENTS_MAX,
    DELAY_LINE_WINDOW_BYTES,
};

/// Puts a delay line of `round_trip` in front of `socket`; the server
/// serves the returned stream instead.
pub fn insert(socket: TcpStream, round_trip: Duration) -> DuplexStream {
    let one_way = round_trip / 2;
    let (server_side, line_side) = tokio::io::duplex(DELAY_LINE_PIPE_BYTES);
    let (socket_read, socket_write) = socket.into_split();
    let (line_read, line_write) = tokio::io::split(line_side);
    tokio::spawn(async move {
        let upstream = carry(socket_read, line_write, one_way);
        let downstream = carry(line_read, socket_write, one_way);
        tokio::pin!(upstream, downstream);
        tokio::select! {
            // The client closed first: its answers still go out until the
            // server closes too.
            () = &mut upstream => (&mut downstream).await,
            // The server closed (and all it sent went out): the connection
            // is over, whether or not the client ever closes its side.
            () = &mut downstream => {}
        }
    });
    server_side
}

/// What the line holds: bytes, or the end of the stream, due at an instant.
struct Segment {
    due: Instant,
    bytes: Option<Vec<u8>>,
    /// The segment's share of the window, given back once it is delivered.
    _window: Option<OwnedSemaphorePermit>,
}

/// Moves bytes from `from` to `to`, each `one_way` after it was read, until
/// either side ends. An error reading ends the stream like an EOF does (the
/// far side sees the connection close); an error writing drops the reader.
async fn carry(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    one_way: Duration,
) {
    // The window is bytes in flight, whatever the size of the reads that
    // brought them: counted in segments, it was 64 reads, which TLS records
    // (~16 KiB each) made ~1 MiB, and 64 KiB writes the full 4 MiB.
    let window = Arc::new(Semaphore::new(DELAY_LINE_WINDOW_BYTES));
    let (line, mut arrivals) = mpsc::channel::<Segment>(DELAY_LINE_SEGMENTS_MAX);
    let reading = async move {
        let mut buf = vec![0u8; DELAY_LINE_SEGMENT_BYTES];
        loop {
            let read = tokio::select! {
                read = from.read(&mut buf) => read,
                // The writer is gone: nobody would deliver what we read.
                () = line.closed() => return,
            };
            let bytes = match read {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buf[..n].to_vec()),
            };
            let end = bytes.is_none();
            let share = bytes.as_ref().map_or(0, Vec::len) as u32;
            let permit = match share {
                0 => None,
                _ => match Arc::clone(&window).acquire_many_owned(share).await {
                    Ok(permit) => Some(permit),
                    Err(_) => return,
                },
            };
            // Stamped once there is room: bytes the window held back are
            // sent now, as TCP sends them, and arrive a one-way delay later
            // (stamped as read, they would arrive at once).
            let due = Instant::now() + one_way;
            let segment = Segment {
                due,
                bytes,
                _window: permit,
            };
            if line.send(segment).await.is_err() || end {
                return;
            }
        }
    };
    let writing = async move {
        while let Some(segment) = arrivals.recv().await {
            tokio::time::sleep_until(segment.due).await;
            let Some(bytes) = segment.bytes else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reading, writing);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback socket pair: (client end, server end).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_each_way_take_half_the_round_trip_and_pipelined_bytes_do_not_queue() {
        let round_trip = Duration::from_millis(200);
        let (mut client, server_socket) = socket_pair().await;
        let mut server = insert(server_socket, round_trip);
        let started = Instant::now();
        // Two "requests" back to back, the second 50 ms after the first.
        client.write_all(b"one").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"two").await.unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one");
        let first_in = started.elapsed();
        assert!(first_in >= Duration::from_millis(100), "{first_in:?}");
        // The server answers at once; the answer takes another half.
        server.write_all(b"ONE").await.unwrap();
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"two");
        server.write_all(b"TWO").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ONE");
        let first_answer = started.elapsed();
        assert!(first_answer >= round_trip, "{first_answer:?}");
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"TWO");
        // The second answer trails the first by the 50 ms between the
        // requests, not by another round trip.
        let second_answer = started.elapsed();
        assert!(
            second_answer < first_answer + round_trip / 2,
            "{first_answer:?} then {second_answer:?}"
        );
    }

    #[tokio::test]
    async fn a_close_reaches_the_far_side_after_the_bytes_before_it() {
        let (mut client, server_socket) = socket_pair().await;
        let mut server = insert(server_socket, Duration::from_millis(20));
        let body: Vec<u8> = (0..3 * DELAY_LINE_WINDOW_BYTES)
            .map(|i| (i % 251) as u8)
            .collect();
        let expected = body.clone();
        let sending = tokio::spawn(async move {
            server.write_all(&body).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        sending.await.unwrap();
        assert!(received == expected, "{} bytes", received.len());
    }
}

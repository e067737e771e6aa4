//! TCP streams on the core's ring. Sockets are created with socket2
//! (TCP_NODELAY before connect) and connected through tokio's driver so the
//! connect is really awaited and bounded by a timeout (DESIGN.md field notes).
//!
//! Every receive is bounded by a stall timeout. On timeout the socket is shut
//! down and the receive is still awaited, so its buffer comes back: dropping a
//! tokio-uring future would not cancel the operation. Once the run is
//! stopping (a stop signal, SIGINT or SIGTERM; what the connect's
//! `Stopping` says: an error elsewhere in the run; or, on a thread without
//! one, `runtime::run_ended`), the timeout shortens to
//! `STOPPING_STALL_TIMEOUT_MS`: requests that make progress finish, a stalled
//! one does not hold the exit; and a connect still in flight gives up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio_uring::buf::BoundedBuf;

use super::buffers::{Memory, PoolBuf};
use crate::config::{RECV_GROW_BYTES, STOP_CHECK_MS, STOPPING_STALL_TIMEOUT_MS};

/// Says the run is stopping (an error elsewhere in it), besides a stop
/// signal: then a connect gives up, and an operation without progress is
/// cut short, as after a stop signal.
pub type Stopping = Rc<dyn Fn() -> bool>;

pub struct TcpStream {
    inner: tokio_uring::net::TcpStream,
    stopping: Option<Stopping>,
}

/// Whether the run is stopping: a signal or its caller's cancel, what
/// `stopping` says, or, on a thread without one (a restore's listing
/// thread), the run ended by a run-fatal error elsewhere.
fn is_stopping(stopping: Option<&Stopping>) -> bool {
    crate::runtime::stop_requested().is_some()
        || crate::runtime::run_ended()
        || stopping.is_some_and(|stopping| stopping())
}

impl TcpStream {
    /// Connects within `timeout`, unless the run stops first (checked every
    /// `STOP_CHECK_MS`): an unreachable origin that drops SYNs does not hold
    /// a stopping run's exit for the whole timeout. The connect runs on
    /// tokio's driver, so dropping it cancels it.
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        stopping: Option<Stopping>,
    ) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        let std_stream: std::net::TcpStream = socket.into();
        let tokio_socket = tokio::net::TcpSocket::from_std_stream(std_stream);
        let connecting = tokio_socket.connect(addr);
        tokio::pin!(connecting);
        let started = std::time::Instant::now();
        let check = Duration::from_millis(STOP_CHECK_MS);
        let connected = loop {
            if is_stopping(stopping.as_ref()) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {addr} given up: the run is stopping"),
                ));
            }
            let Some(left) = timeout
                .checked_sub(started.elapsed())
                .filter(|left| !left.is_zero())
            else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {addr} timed out after {} s", timeout.as_secs()),
                ));
            };
            if let Ok(result) = tokio::time::timeout(left.min(check), &mut connecting).await {
                break result?;
            }
        };
        let std_stream = connected.into_std()?;
        Ok(TcpStream {
            inner: tokio_uring::net::TcpStream::from_std(std_stream),
            stopping,
        })
    }

    /// Receives into `buf[len..capacity]`, appending; returns the byte count
    /// (0 = the peer closed).
    pub async fn recv_append(
        &self,
        mut buf: Vec<u8>,
        timeout: Duration,
    ) -> (io::Result<usize>, Vec<u8>) {
        let start = buf.len();
        if start == buf.capacity() {
            buf.reserve(RECV_GROW_BYTES);
        }
        let capacity = buf.capacity();
        let receive = self.inner.read(buf.slice(start..capacity));
        let (result, slice) = self.bounded(receive, timeout).await;
        (result, slice.into_inner())
    }

    /// Receives at most `max_bytes` into the buffer's spare capacity.
    pub async fn recv_into(
        &self,
        mut buf: PoolBuf,
        max_bytes: usize,
        timeout: Duration,
    ) -> (io::Result<usize>, PoolBuf) {
        let start = buf.filled_bytes();
        let end = start + max_bytes.min(buf.spare_bytes());
        debug_assert!(end > start, "receive into a full buffer");
        let result = match buf.take_memory() {
            Memory::Fixed(fixed) => {
                let (result, slice) = self
                    .bounded(self.inner.read_fixed(fixed.slice(start..end)), timeout)
                    .await;
                buf.put_memory(Memory::Fixed(slice.into_inner()));
                result
            }
            Memory::Owned(owned) => {
                let (result, slice) = self
                    .bounded(self.inner.read(owned.slice(start..end)), timeout)
                    .await;
                buf.put_memory(Memory::Owned(slice.into_inner()));
                result
            }
        };
        if let Ok(n) = result {
            buf.advance(n);
        }
        (result, buf)
    }

    pub async fn send_all(&self, bytes: Vec<u8>, timeout: Duration) -> (io::Result<()>, Vec<u8>) {
        self.bounded(self.inner.write_all(bytes), timeout).await
    }

    /// Whether anything waits to be read on the socket now (bytes, the
    /// peer's FIN, or a pending error), without reading it: one
    /// `recv(MSG_PEEK | MSG_DONTWAIT)`.
    pub fn has_bytes_waiting(&self) -> bool {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the descriptor belongs to `self.inner`, which keeps it
        // open for as long as `self` is borrowed here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.inner.as_raw_fd()) };
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        let mut byte = [0u8; 1];
        !matches!(
            rustix::net::recv(fd, &mut byte[..], flags),
            Err(rustix::io::Errno::AGAIN)
        )
    }

    /// Shuts the socket down both ways: pending operations complete promptly.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown(std::net::Shutdown::Both);
    }

    async fn bounded<T, B>(
        &self,
        operation: impl Future<Output = (io::Result<T>, B)>,
        timeout: Duration,
    ) -> (io::Result<T>, B) {
        tokio::pin!(operation);
        let started = std::time::Instant::now();
        // Woken every `STOP_CHECK_MS` to look for a stop: an operation that
        // completes first costs nothing more than one timer.
        let check = Duration::from_millis(STOP_CHECK_MS);
        let stall = loop {
            let (limit, why) = if is_stopping(self.stopping.as_ref()) {
                match crate::runtime::drain_expired() {
                    // `config::SIGNAL_DRAIN_MAX_S` after the signal.
                    true => (Duration::ZERO, "the drain after the signal ran out of time"),
                    false => (
                        timeout.min(Duration::from_millis(STOPPING_STALL_TIMEOUT_MS)),
                        "the run is stopping",
                    ),
                }
            } else {
                (timeout, "stall timeout")
            };
            let Some(left) = limit
                .checked_sub(started.elapsed())
                .filter(|left| !left.is_zero())
            else {
                break match limit.is_zero() {
                    true => why.to_string(),
                    false => format!("no progress for {} s ({why})", limit.as_secs_f64()),
                };
            };
            if let Ok(done) = tokio::time::timeout(left.min(check), &mut operation).await {
                return done;
            }
        };
        self.shutdown();
        let (_, buf) = operation.await;
        (Err(io::Error::new(io::ErrorKind::TimedOut, stall)), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::TcpStream;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    /// A loopback listener that never accepts, its queue filled: a connect
    /// to it hangs (its SYNs are dropped, as a blackholed origin's are).
    /// `None` where the kernel answers it anyway.
    fn blackhole() -> Option<(socket2::Socket, Vec<std::net::TcpStream>)> {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut queued = Vec::new();
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => queued.push(stream),
                Err(_) => return Some((listener, queued)),
            }
        }
        None
    }

    #[test]
    fn a_connect_in_flight_gives_up_once_the_run_stops() {
        let Some((listener, _queued)) = blackhole() else {
            eprintln!("skipped: connects to a full listen queue are answered here");
            return;
        };
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let runtime = crate::uring::Runtime::new().unwrap();
        runtime.block_on(async {
            let stopped = Rc::new(Cell::new(false));
            let stopping = {
                let stopped = Rc::clone(&stopped);
                Rc::new(move || stopped.get())
            };
            let started = Instant::now();
            let connect = TcpStream::connect(addr, Duration::from_secs(30), Some(stopping));
            let stop = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                stopped.set(true);
            };
            let (connected, ()) = tokio::join!(connect, stop);
            let Err(error) = connected else {
                panic!("connected to a full listen queue");
            };
            assert!(error.to_string().contains("the run is stopping"), "{error}");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(5), "the stop took {took:?}");
            // A control-plane connect (a restore's listing thread) has no
            // `Stopping`: the run's end on its thread stops it.
            let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let _ended = crate::runtime::end_with_run_on_this_thread(std::sync::Arc::clone(&ended));
            let started = Instant::now();
            let connect = TcpStream::connect(addr, Duration::from_secs(30), None);
            let end = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                ended.store(true, std::sync::atomic::Ordering::Release);
            };
            let (connected, ()) = tokio::join!(connect, end);
            assert!(connected.is_err(), "connected to a full listen queue");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(5), "the run's end took {took:?}");
        });
    }
}

//! One keep-alive HTTP/1.1 connection (plain or TLS) on a core's ring: send a
//! request head, read a response head, read the body into pool buffers.
//!
//! Parsing lives in `http/` (no I/O); this file moves bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::proxy::{Proxy, authority, check_connect_reply};
use crate::config::{
    API_BODY_RECV_BYTES, BODY_MIN_BYTES_PER_S, CONNECT_NEXT_ADDRESS_AFTER_MS, HTTP_HEAD_MAX_BYTES,
};
use crate::http::{self, ChunkedDecoder, ChunkedStep, ResponseHead};
use crate::stats::Stage;
use crate::tls::{self, TlsStream};
use crate::uring::{PoolBuf, Stopping, TcpStream};

/// Where requests go: resolved once, off the hot path.
#[derive(Debug, Clone)]
pub struct Origin {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Every address the name resolved to (at most `ORIGIN_ADDRESSES_MAX`),
    /// in resolver order; never empty.
    pub addrs: Arc<[SocketAddr]>,
    /// Index into `addrs` of the address the last connect reached: later
    /// connections (clones share it) try that one first.
    preferred: Arc<AtomicUsize>,
    /// Reached through this proxy's CONNECT tunnel; `addrs` are then the
    /// proxy's (the origin's name is resolved by the proxy, not here).
    pub proxy: Option<Arc<Proxy>>,
}

impl Origin {
    pub fn new(tls: bool, host: String, port: u16, addrs: Vec<SocketAddr>) -> Origin {
        assert!(!addrs.is_empty(), "an origin needs an address");
        Origin {
            tls,
            host,
            port,
            addrs: addrs.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            proxy: None,
        }
    }

    /// The same origin reached through `proxy`, whose addresses `addrs`
    /// must then be.
    pub fn through(mut self, proxy: Proxy) -> Origin {
        self.proxy = Some(Arc::new(proxy));
        self
    }

    /// A TCP stream to the origin: connected directly, or a tunnel opened
    /// by the proxy.
    async fn open_stream(
        &self,
        timeout: Duration,
        stopping: Option<Stopping>,
    ) -> Result<TcpStream, ConnError> {
        let connected = self.connect(timeout, stopping).await;
        let Some(proxy) = &self.proxy else {
            return connected.map_err(ConnError::Transport);
        };
        // Said as the proxy's: "Connection refused" alone blamed the origin
        // (h40 #5).
        let tcp = connected.map_err(|error| {
            ConnError::Transport(io::Error::new(
                error.kind(),
                format!("connecting to proxy {}: {error}", proxy.display()),
            ))
        })?;
        let request = proxy.connect_request(&self.host, self.port);
        let (sent, _) = tcp.send_all(request, timeout).await;
        sent.map_err(ConnError::Transport)?;
        let mut received = Vec::with_capacity(1024);
        let started = Instant::now();
        loop {
            // A total bound, as a response head has: a proxy trickling its
            // answer a byte inside each stall window held the run (h41).
            if started.elapsed() > timeout {
                return Err(ConnError::Transport(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "proxy {} did not answer CONNECT within {timeout:?}",
                        proxy.display()
                    ),
                )));
            }
            let (result, buffer) = tcp.recv_append(received, timeout).await;
            received = buffer;
            match result {
                Ok(0) => {
                    return Err(ConnError::Transport(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "proxy {} closed the connection before answering CONNECT",
                            proxy.display()
                        ),
                    )));
                }
                Ok(_) => {}
                Err(error) => return Err(ConnError::Transport(error)),
            }
            match check_connect_reply(&received, proxy, &authority(&self.host, self.port)) {
                Ok(Some(())) => return Ok(tcp),
                Ok(None) if received.len() < HTTP_HEAD_MAX_BYTES => {}
                Ok(None) => {
                    return Err(ConnError::Protocol(format!(
                        "proxy {}: CONNECT answer longer than {HTTP_HEAD_MAX_BYTES} bytes",
                        proxy.display()
                    )));
                }
                // Policy or credentials: retrying will not help.
                Err(refused) if refused.is_final() => {
                    return Err(ConnError::ProxyRefused(refused.message));
                }
                Err(refused) => {
                    return Err(ConnError::Transport(io::Error::other(refused.message)));
                }
            }
        }
    }

    /// Connects to the first address that answers, starting with the one
    /// that answered last. All but the last address tried get at most
    /// `CONNECT_NEXT_ADDRESS_AFTER_MS`.
    async fn connect(
        &self,
        timeout: Duration,
        stopping: Option<Stopping>,
    ) -> io::Result<TcpStream> {
        let count = self.addrs.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut first_error = None;
        for step in 0..count {
            let index = (first + step) % count;
            let last = step + 1 == count;
            let limit = if last {
                timeout
            } else {
                timeout.min(Duration::from_millis(CONNECT_NEXT_ADDRESS_AFTER_MS))
            };
            match TcpStream::connect(self.addrs[index], limit, stopping.clone()).await {
                Ok(stream) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(stream);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let error = first_error.expect("at least one address");
        if count == 1 {
            return Err(error);
        }
        let host = self.proxy.as_ref().map_or(&self.host, |proxy| &proxy.host);
        Err(io::Error::new(
            error.kind(),
            format!(
                "{error} (and on the other {} addresses of {host})",
                count - 1
            ),
        ))
    }

    /// The `Host` header value (an IPv6 literal in brackets).
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        let host = super::url::host_text(&self.host);
        if self.port == default_port {
            host.into_owned()
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host_header()
        )
    }
}

/// What went wrong on a connection. `Transport` and `Protocol` failures retire
/// the connection; the caller decides about retries.
#[derive(Debug)]
pub enum ConnError {
    /// Connect, TLS or socket failure, or the peer closed early.
    Transport(io::Error),
    /// The server's certificate was rejected: not worth retrying.
    Trust(String),
    /// The proxy refused the tunnel (4xx to `CONNECT`): not worth retrying.
    ProxyRefused(String),
    /// The peer sent something that is not valid HTTP for our request.
    Protocol(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Transport(error) => write!(f, "{error}"),
            ConnError::Trust(detail) | ConnError::ProxyRefused(detail) => write!(f, "{detail}"),
            ConnError::Protocol(detail) => write!(f, "bad response: {detail}"),
        }
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct Connection {
    transport: Transport,
    /// Plaintext received past the bytes consumed so far (head or body).
    leftover: Vec<u8>,
    leftover_start: usize,
    timeout: Duration,
}

impl Connection {
    pub async fn open(
        origin: &Origin,
        tls_config: Option<&Arc<rustls::ClientConfig>>,
        timeout: Duration,
        stopping: Option<Stopping>,
        record: &impl Fn(Stage, Duration),
    ) -> Result<Connection, ConnError> {
        let started = Instant::now();
        let tcp = origin.open_stream(timeout, stopping).await?;
        record(Stage::Connect, started.elapsed());
        let transport = if origin.tls {
            let config = tls_config.expect("TLS origin needs a client config");
            let started = Instant::now();
            let stream = TlsStream::connect(tcp, Arc::clone(config), &origin.host, timeout)
                .await
                .map_err(|error| {
                    if tls::is_trust_error(&error) {
                        ConnError::Trust(format!(
                            "TLS handshake with {}: {error}; {}",
                            origin.host,
                            tls::trust_advice(&error)
                        ))
                    } else {
                        ConnError::Transport(error)
                    }
                })?;
            record(Stage::TlsHandshake, started.elapsed());
            Transport::Tls(Box::new(stream))
        } else {
            Transport::Plain(tcp)
        };
        Ok(Connection {
            transport,
            leftover: Vec::new(),
            leftover_start: 0,
            timeout,
        })
    }

    pub async fn send(&mut self, request: Vec<u8>) -> Result<(), ConnError> {
        let result = match &mut self.transport {
            Transport::Plain(tcp) => tcp.send_all(request, self.timeout).await.0,
            Transport::Tls(tls) => tls.send_all(&request).await,
        };
        result.map_err(ConnError::Transport)
    }

    /// Reads and parses one response head. Bytes after it stay buffered for
    /// the body.
    ///
    /// `--timeout-s` bounds the whole head, not only each receive: a server
    /// trickling one byte per second would otherwise hold a 16 KiB head open
    /// for hours. (A receive in flight may add up to one more timeout.)
    pub async fn read_head(&mut self) -> Result<ResponseHead, ConnError> {
        self.compact_leftover();
        let started = Instant::now();
        loop {
            match http::parse_response_head(&self.leftover) {
                Ok(Some(head)) => {
                    self.leftover_start = head.head_len;
                    return Ok(head);
                }
                Ok(None) => {}
                Err(error) => return Err(ConnError::Protocol(error.to_string())),
            }
            // The parser refuses a partial head of this size itself.
            debug_assert!(self.leftover.len() < HTTP_HEAD_MAX_BYTES);
            if started.elapsed() > self.timeout {
                return Err(ConnError::Transport(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "response head not complete within {} s (the server trickles it)",
                        self.timeout.as_secs()
                    ),
                )));
            }
            let n = self
                .receive_more(HTTP_HEAD_MAX_BYTES - self.leftover.len())
                .await?;
            if n == 0 {
                return Err(ConnError::Transport(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response head",
                )));
            }
        }
    }

    /// Receives up to `max_bytes` body bytes into `buf`: leftover bytes first,
    /// then straight from the transport (into the buffer itself on plain HTTP).
    /// Returns the count; 0 means the peer closed.
    pub async fn read_body_into(
        &mut self,
        mut buf: PoolBuf,
        max_bytes: usize,
    ) -> (Result<usize, ConnError>, PoolBuf) {
        let max_bytes = max_bytes.min(buf.spare_bytes());
        debug_assert!(max_bytes > 0);
        if self.leftover_start < self.leftover.len() {
            let available = &self.leftover[self.leftover_start..];
            let n = buf.fill_from(&available[..available.len().min(max_bytes)]);
            self.leftover_start += n;
            return (Ok(n), buf);
        }
        match &mut self.transport {
            Transport::Plain(tcp) => {
                let (result, buf) = tcp.recv_into(buf, max_bytes, self.timeout).await;
                (result.map_err(ConnError::Transport), buf)
            }
            Transport::Tls(tls) => {
                let (result, buf) = tls.recv_into_pool(buf, max_bytes).await;
                (result.map_err(ConnError::Transport), buf)
            }
        }
    }

    /// Reads a whole body of at most `limit_bytes` into memory (API JSON,
    /// error bodies). Framed by Content-Length, chunked, or close.
    pub async fn read_body_to_vec(
        &mut self,
        head: &ResponseHead,
        limit_bytes: usize,
    ) -> Result<Vec<u8>, ConnError> {
        // A declared length over the bound is refused before any byte is read.
        if !head.chunked
            && head
                .content_length
                .is_some_and(|length| length > limit_bytes as u64)
        {
            return Err(body_too_big(limit_bytes as u64));
        }
        let mut body = Vec::with_capacity(head.content_length.unwrap_or(0) as usize);
        self.read_body_each(head, limit_bytes as u64, |piece| {
            body.extend_from_slice(piece);
            Ok(Duration::ZERO)
        })
        .await?;
        Ok(body)
    }

    /// Reads a body of at most `limit_bytes`, handing it to `each` piece by
    /// piece as it arrives (at most what one receive brings), and returns
    /// its length. Framed by Content-Length, chunked, or the close. An error
    /// `each` returns ends the read; what it returns otherwise is how long
    /// to wait before the next receive (`--limit-rate`'s pace; zero for
    /// none), a wait that a stop (`runtime::stop_requested`) cuts short and
    /// that the rate floor does not count.
    pub async fn read_body_each(
        &mut self,
        head: &ResponseHead,
        limit_bytes: u64,
        mut each: impl FnMut(&[u8]) -> Result<Duration, ConnError>,
    ) -> Result<u64, ConnError> {
        let mut floor = self.body_floor();
        let mut wait = Duration::ZERO;
        let mut body_bytes = 0u64;
        if head.chunked {
            let mut decoder = ChunkedDecoder::new();
            loop {
                if self.leftover_start == self.leftover.len() {
                    self.compact_leftover();
                    pause(std::mem::take(&mut wait)).await;
                    if self.receive_within_floor(&mut floor).await? == 0 {
                        return Err(self.early_eof());
                    }
                }
                let input = &self.leftover[self.leftover_start..];
                match decoder
                    .decode(input)
                    .map_err(|error| ConnError::Protocol(error.to_string()))?
                {
                    ChunkedStep::NeedMore { consumed } => {
                        self.leftover_start += consumed;
                        // The decoder may need more than what is buffered.
                        self.compact_leftover();
                        pause(std::mem::take(&mut wait)).await;
                        if self.receive_within_floor(&mut floor).await? == 0 {
                            return Err(self.early_eof());
                        }
                    }
                    ChunkedStep::Data { start, len } => {
                        if body_bytes + len as u64 > limit_bytes {
                            return Err(body_too_big(limit_bytes));
                        }
                        wait = each(&input[start..start + len])?;
                        body_bytes += len as u64;
                        self.leftover_start += start + len;
                    }
                    ChunkedStep::Done { consumed } => {
                        self.leftover_start += consumed;
                        return Ok(body_bytes);
                    }
                }
            }
        }
        if head
            .content_length
            .is_some_and(|length| length > limit_bytes)
        {
            return Err(body_too_big(limit_bytes));
        }
        // No length: delimited by close (HTTP/1.0 style), read until EOF, bounded.
        let length = head.content_length.unwrap_or(u64::MAX);
        while body_bytes < length {
            if self.leftover_start == self.leftover.len() {
                self.compact_leftover();
                pause(std::mem::take(&mut wait)).await;
                if self.receive_within_floor(&mut floor).await? == 0 {
                    if length == u64::MAX {
                        return Ok(body_bytes);
                    }
                    return Err(self.early_eof());
                }
            }
            let available = &self.leftover[self.leftover_start..];
            let wanted = (length - body_bytes).min(available.len() as u64) as usize;
            if body_bytes + wanted as u64 > limit_bytes {
                return Err(body_too_big(limit_bytes));
            }
            wait = each(&available[..wanted])?;
            body_bytes += wanted as u64;
            self.leftover_start += wanted;
        }
        Ok(body_bytes)
    }

    /// The rate floor of a body, for one read through `read_body_into`
    /// (`read_body_each` keeps its own).
    pub fn body_floor(&self) -> BodyFloor {
        BodyFloor::new(self.timeout)
    }

    /// `receive_more` of a body's next piece, its wait counted by `floor`.
    async fn receive_within_floor(&mut self, floor: &mut BodyFloor) -> Result<usize, ConnError> {
        let receiving = Instant::now();
        let n = self.receive_more(API_BODY_RECV_BYTES).await?;
        if n > 0 {
            floor.received(receiving.elapsed(), n)?;
        }
        Ok(n)
    }

    /// Nothing of a response has arrived since the last one was read: a
    /// failure now means the peer closed without answering.
    pub fn has_nothing_buffered(&self) -> bool {
        self.leftover_start == self.leftover.len()
    }

    /// Nothing is waiting to be read, here, in the TLS session or on the
    /// socket: what arrives next can only answer the next request. An
    /// origin that sent more than its last answer framed (or a proxy out of
    /// step with it) leaves bytes that would be read as that answer, an
    /// answer that can look valid: a 206 for the same range, with other
    /// bytes. Such a connection is closed, never reused (as curl does).
    /// Only for a connection that owes no answer to a request sent ahead.
    pub fn is_quiet(&self) -> bool {
        self.has_nothing_buffered()
            && !match &self.transport {
                Transport::Plain(tcp) => tcp.has_bytes_waiting(),
                Transport::Tls(tls) => tls.has_bytes_waiting(),
            }
    }

    pub fn shutdown(&self) {
        match &self.transport {
            Transport::Plain(tcp) => tcp.shutdown(),
            Transport::Tls(tls) => tls.shutdown(),
        }
    }

    fn early_eof(&self) -> ConnError {
        ConnError::Transport(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-body",
        ))
    }

    fn compact_leftover(&mut self) {
        if self.leftover_start > 0 {
            self.leftover.drain(..self.leftover_start);
            self.leftover_start = 0;
        }
    }

    /// Appends received plaintext to `leftover`: over TLS up to `max_bytes`
    /// (and `API_BODY_RECV_BYTES`); over plain TCP as much as the vector's
    /// spare capacity holds, with room made for that much (callers bound
    /// what they parse, not what a receive brings).
    async fn receive_more(&mut self, max_bytes: usize) -> Result<usize, ConnError> {
        let max_bytes = max_bytes.max(1);
        match &mut self.transport {
            Transport::Plain(tcp) => {
                let mut buffer = std::mem::take(&mut self.leftover);
                buffer.reserve(max_bytes.min(API_BODY_RECV_BYTES));
                let (result, buffer) = tcp.recv_append(buffer, self.timeout).await;
                self.leftover = buffer;
                result.map_err(ConnError::Transport)
            }
            Transport::Tls(tls) => {
                let start = self.leftover.len();
                let want = max_bytes.min(API_BODY_RECV_BYTES);
                self.leftover.resize(start + want, 0);
                let result = tls.recv(&mut self.leftover[start..]).await;
                let n = *result.as_ref().unwrap_or(&0);
                self.leftover.truncate(start + n);
                result.map_err(ConnError::Transport)
            }
        }
    }
}

fn body_too_big(limit_bytes: u64) -> ConnError {
    ConnError::Protocol(format!("response body exceeds {limit_bytes} bytes"))
}

/// The rate floor of a body, an API answer's or a download's
/// (`BODY_MIN_BYTES_PER_S`), over windows of the stall timeout spent waiting
/// on the origin: only the receives count, not a wait for a buffer, a
/// `--limit-rate` pause or a write, which are this side's. A server that
/// trickled a byte just inside each stall window held a chunk forever; an
/// average over the whole body (what API bodies had) let a fast start pay
/// for minutes of trickle (h41 #2).
pub struct BodyFloor {
    window: Duration,
    receiving: Duration,
    window_bytes: u64,
}

impl BodyFloor {
    pub fn new(window: Duration) -> BodyFloor {
        BodyFloor {
            window,
            receiving: Duration::ZERO,
            window_bytes: 0,
        }
    }

    /// Counts a receive that waited `waited` for `bytes`; an error once a
    /// window brought less than the floor.
    pub fn received(&mut self, waited: Duration, bytes: usize) -> Result<(), ConnError> {
        self.receiving += waited;
        self.window_bytes += bytes as u64;
        if self.receiving < self.window {
            return Ok(());
        }
        let seconds = self.receiving.as_secs_f64();
        let (window_bytes, floor_bytes) =
            (self.window_bytes, seconds * BODY_MIN_BYTES_PER_S as f64);
        self.receiving = Duration::ZERO;
        self.window_bytes = 0;
        if window_bytes as f64 >= floor_bytes {
            return Ok(());
        }
        Err(ConnError::Transport(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the body arrived at {:.0} bytes/s over the last {seconds:.1} s of waiting on \
                 the origin, below the {BODY_MIN_BYTES_PER_S} bytes/s floor (the server trickles it)",
                window_bytes as f64 / seconds
            ),
        )))
    }
}

/// Waits `wait` (`--limit-rate`'s pace), unless the run stops: outside any
/// receive, so no `BodyFloor` counts it.
async fn pause(wait: Duration) {
    if !wait.is_zero() {
        crate::runtime::sleep_unless(wait, || crate::runtime::stop_requested().is_some()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Origin;
    use std::net::{SocketAddr, TcpListener};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// A loopback port nothing listens on (bound, then released).
    fn refusing_address() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[test]
    fn the_host_header_brackets_an_ipv6_literal() {
        let v6 = "[::1]:8080".parse::<SocketAddr>().unwrap();
        let origin = Origin::new(false, "::1".into(), 8080, vec![v6]);
        assert_eq!(origin.host_header(), "[::1]:8080");
        assert_eq!(origin.base_url(), "http://[::1]:8080");
        let origin = Origin::new(true, "2001:db8::5".into(), 443, vec![v6]);
        assert_eq!(origin.host_header(), "[2001:db8::5]");
        let origin = Origin::new(true, "example.test".into(), 8443, vec![v6]);
        assert_eq!(origin.host_header(), "example.test:8443");
    }

    #[test]
    fn a_refused_address_falls_through_to_the_next_which_is_then_preferred() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let live = listener.local_addr().unwrap();
        let dead = refusing_address();
        let origin = Origin::new(false, "example.test".into(), live.port(), vec![dead, live]);
        let runtime = crate::uring::Runtime::new().unwrap();
        runtime.block_on(async {
            let first = origin.connect(Duration::from_secs(5), None).await.unwrap();
            assert_eq!(origin.preferred.load(Ordering::Relaxed), 1);
            // A clone (another core's copy) starts at the address that answered.
            let clone = origin.clone();
            let second = clone.connect(Duration::from_secs(5), None).await.unwrap();
            drop((first, second));
            let nowhere = Origin::new(
                false,
                "nowhere.test".into(),
                1,
                vec![refusing_address(), refusing_address()],
            );
            let Err(error) = nowhere.connect(Duration::from_secs(5), None).await else {
                panic!("connected to a refusing address");
            };
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
            assert!(
                error
                    .to_string()
                    .contains("other 1 addresses of nowhere.test"),
                "{error}"
            );
        });
        listener.set_nonblocking(true).unwrap();
        let accepted = std::iter::from_fn(|| listener.accept().ok()).count();
        assert_eq!(accepted, 2, "both connects reached the live address");
    }
}

//! A stream wrapper that cuts a connection after a chosen number of written
//! bytes: the connection faults that hyper cannot express (a reset part-way
//! through a response head or a TLS handshake, a keep-alive connection that
//! closes instead of answering). Reads pass through untouched.
//!
//! The handler arms the cut for the *next* response through [`WriteCut`]:
//! hyper answers one request at a time (pipelined requests wait unread in
//! its buffer), so every byte written after the handler returns belongs to
//! the response being cut.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared between a connection's handler and its [`FaultIo`].
#[derive(Default)]
pub struct WriteCut {
    /// Bytes still allowed before the cut, armed by the handler; -1 = none.
    armed_bytes: AtomicI64,
}

impl WriteCut {
    pub fn new() -> WriteCut {
        WriteCut {
            armed_bytes: AtomicI64::new(-1),
        }
    }

    /// The connection breaks after `bytes` more bytes are written.
    pub fn arm(&self, bytes: usize) {
        self.armed_bytes
            .store(bytes.min(i64::MAX as usize) as i64, Ordering::Relaxed);
    }

    fn take(&self) -> Option<usize> {
        let armed = self.armed_bytes.swap(-1, Ordering::Relaxed);
        (armed >= 0).then_some(armed as usize)
    }
}

pub struct FaultIo<S> {
    inner: S,
    cut: Arc<WriteCut>,
    /// Bytes left before the cut, once armed.
    left_bytes: Option<usize>,
    broken: bool,
}

impl<S> FaultIo<S> {
    pub fn new(inner: S, cut: Arc<WriteCut>) -> FaultIo<S> {
        FaultIo {
            inner,
            cut,
            left_bytes: None,
            broken: false,
        }
    }
}

fn cut_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "injected connection cut",
    )
}

impl<S: AsyncWrite + Unpin> FaultIo<S> {
    /// `Some(limit)` while a cut is armed: at most `limit` bytes may go out.
    fn limit(&mut self) -> Option<usize> {
        if let Some(armed) = self.cut.take() {
            self.left_bytes = Some(armed);
        }
        self.left_bytes
    }

    /// Flushes what went out before the cut (so the peer sees those bytes),
    /// then fails every later write.
    fn poll_break(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if !self.broken {
            let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
            self.broken = true;
        }
        Poll::Ready(Err(cut_error()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FaultIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FaultIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Ready(Err(cut_error()));
        }
        match this.limit() {
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
            Some(0) => this.poll_break(cx),
            Some(left) => {
                let allowed = buf.len().min(left);
                let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]))?;
                this.left_bytes = Some(left - written);
                Poll::Ready(Ok(written))
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if !this.broken && this.limit().is_none() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|buf| !buf.is_empty())
            .map_or(&[][..], |buf| &buf[..]);
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_stop_at_the_armed_cut() {
        let (client, mut server) = tokio::io::duplex(1024);
        let cut = Arc::new(WriteCut::new());
        let mut io = FaultIo::new(client, cut.clone());
        io.write_all(b"before ").await.unwrap();
        cut.arm(3);
        let error = io.write_all(b"HTTP/1.1 200 OK").await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        drop(io);
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"before HTT");
    }
}

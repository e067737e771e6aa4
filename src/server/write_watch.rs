//! Closes connections whose peer stopped taking bytes: a client that asks
//! for a large object and never reads would otherwise hold its connection,
//! its descriptor and the download's buffers (two `BODY_BLOCK_BYTES` blocks)
//! forever. Only the socket refusing bytes counts as a stall; a body that
//! is silent on purpose (`--stall-rate`, `--rate-per-conn`) writes nothing
//! and is not one.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When the connection's writes started waiting for the peer, shared between
/// [`WatchedIo`] and [`close_when_writes_stall`].
pub struct WriteProgress {
    started: Instant,
    /// ms since `started` + 1 when a write last returned `Pending` with no
    /// write accepted since; 0 while writes go through.
    blocked_since_ms: AtomicU64,
}

impl WriteProgress {
    pub fn new() -> Arc<WriteProgress> {
        Arc::new(WriteProgress {
            started: Instant::now(),
            blocked_since_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn blocked(&self) {
        let now_ms = self.now_ms();
        // Only the first Pending of a stall starts the clock.
        let _ =
            self.blocked_since_ms
                .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn progressed(&self) {
        self.blocked_since_ms.store(0, Ordering::Relaxed);
    }

    /// How long writes have waited for the peer (zero while they go through).
    fn blocked_for(&self) -> Duration {
        match self.blocked_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since_ms => Duration::from_millis(self.now_ms().saturating_sub(since_ms)),
        }
    }

    fn note<T>(&self, result: &Poll<std::io::Result<T>>, made_progress: impl Fn(&T) -> bool) {
        match result {
            Poll::Pending => self.blocked(),
            Poll::Ready(Ok(value)) if made_progress(value) => self.progressed(),
            Poll::Ready(_) => {}
        }
    }
}

/// Records write progress of the stream it wraps; reads pass through.
pub struct WatchedIo<S> {
    inner: S,
    progress: Arc<WriteProgress>,
}

impl<S> WatchedIo<S> {
    pub fn new(inner: S, progress: Arc<WriteProgress>) -> WatchedIo<S> {
        WatchedIo { inner, progress }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress.note(&result, |written| *written > 0);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress.note(&result, |written| *written > 0);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress.note(&result, |_| true);
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Runs `serving` (a connection over a [`WatchedIo`] with this `progress`)
/// until it ends, or until its writes have waited `limit` for the peer;
/// then the connection is dropped, which closes it and frees its buffers.
pub async fn close_when_writes_stall(
    serving: impl Future,
    progress: &WriteProgress,
    limit: Duration,
) {
    tokio::pin!(serving);
    loop {
        let left = limit.saturating_sub(progress.blocked_for());
        if left.is_zero() {
            return;
        }
        tokio::select! {
            _ = &mut serving => return,
            _ = tokio::time::sleep(left) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_peer_that_stops_reading_ends_the_connection() {
        // A 1 KiB pipe whose other end is never read.
        let (client, _unread) = tokio::io::duplex(1024);
        let progress = WriteProgress::new();
        let mut io = WatchedIo::new(client, progress.clone());
        let writing = async move {
            let _ = io.write_all(&[0u8; 64 * 1024]).await;
        };
        let started = Instant::now();
        close_when_writes_stall(writing, &progress, Duration::from_millis(200)).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
}

//! Response bodies: small in-memory ones (JSON) and file bodies streamed in
//! `BODY_BLOCK_BYTES` blocks read on blocking threads, one block read ahead,
//! handed to hyper as `Bytes` without another copy. Per-connection rate
//! limits and the body faults (reset, stall, corrupt, short) act here.
//! The access log line of a download is written when its body is dropped, so
//! it records the bytes actually handed to the connection.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use super::access_log::{AccessLog, AccessRecord};
use super::config::{BODY_BLOCK_BYTES, STALL_HOLD_S};
use super::faults::{BodyFault, TokenBucket};

pub enum ServeBody {
    Full(Option<Bytes>),
    File(Box<FileBody>),
}

impl ServeBody {
    pub fn empty() -> ServeBody {
        ServeBody::Full(None)
    }

    pub fn bytes(data: impl Into<Bytes>) -> ServeBody {
        let data = data.into();
        if data.is_empty() {
            ServeBody::Full(None)
        } else {
            ServeBody::Full(Some(data))
        }
    }
}

type BlockRead = JoinHandle<(File, std::io::Result<Vec<u8>>)>;

pub struct FileBody {
    /// The file, when no read is in flight.
    file: Option<File>,
    read: Option<BlockRead>,
    next_read_offset: u64,
    end_offset: u64,
    ready: Bytes,
    sent_bytes: u64,
    body_bytes: u64,
    fault: BodyFault,
    limiter: Option<Arc<Mutex<TokenBucket>>>,
    /// Rate limit: `held` goes out when `pause` ends.
    pause: Option<Pin<Box<Sleep>>>,
    held: Option<Bytes>,
    stalled: Option<Pin<Box<Sleep>>>,
    /// One `Pending` was returned at the fault offset so hyper flushed the
    /// head and the bytes before it (else a reset could lose the head too).
    flushed_before_fault: bool,
    log: Option<(Arc<AccessLog>, AccessRecord)>,
}

impl FileBody {
    /// Streams `file[start_offset..start_offset + body_bytes]`, beginning
    /// with `first_block` (those bytes, already read) when given.
    pub fn new(
        file: File,
        start_offset: u64,
        body_bytes: u64,
        first_block: Option<Bytes>,
        fault: BodyFault,
        limiter: Option<Arc<Mutex<TokenBucket>>>,
        log: Option<(Arc<AccessLog>, AccessRecord)>,
    ) -> FileBody {
        let ready = first_block.unwrap_or_default();
        FileBody {
            file: Some(file),
            read: None,
            next_read_offset: start_offset + ready.len() as u64,
            end_offset: start_offset + body_bytes,
            ready,
            sent_bytes: 0,
            body_bytes,
            fault,
            limiter,
            pause: None,
            held: None,
            stalled: None,
            flushed_before_fault: false,
            log,
        }
    }

    fn start_read_if_idle(&mut self) {
        if self.read.is_some() || self.next_read_offset >= self.end_offset {
            return;
        }
        let Some(mut file) = self.file.take() else {
            return;
        };
        let offset = self.next_read_offset;
        let length = (self.end_offset - offset).min(BODY_BLOCK_BYTES as u64);
        self.next_read_offset += length;
        self.read = Some(tokio::task::spawn_blocking(move || {
            let result = (|| {
                file.seek(SeekFrom::Start(offset))?;
                // read_to_end fills spare capacity without zeroing it first.
                let mut block = Vec::with_capacity(length as usize);
                (&mut file).take(length).read_to_end(&mut block)?;
                Ok(block)
            })();
            (file, result)
        }));
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        loop {
            if let Some(stalled) = self.stalled.as_mut() {
                ready!(stalled.as_mut().poll(cx));
                return Poll::Ready(Some(Err(std::io::Error::other("stall fault: giving up"))));
            }
            if let Some(pause) = self.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
                if let Some(piece) = self.held.take() {
                    return Poll::Ready(Some(Ok(piece)));
                }
            }
            if self.sent_bytes == self.body_bytes {
                return Poll::Ready(None);
            }
            if let BodyFault::Reset { at_bytes } | BodyFault::Short { at_bytes } = self.fault {
                if at_bytes == self.sent_bytes && !self.flushed_before_fault {
                    self.flushed_before_fault = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            match self.fault {
                BodyFault::Reset { at_bytes } if at_bytes == self.sent_bytes => {
                    return Poll::Ready(Some(Err(std::io::Error::other("reset fault"))));
                }
                BodyFault::Stall { at_bytes } if at_bytes == self.sent_bytes => {
                    self.stalled = Some(Box::pin(tokio::time::sleep(Duration::from_secs(
                        STALL_HOLD_S,
                    ))));
                    continue;
                }
                BodyFault::Short { at_bytes } if at_bytes == self.sent_bytes => {
                    return Poll::Ready(None);
                }
                _ => {}
            }
            if self.ready.is_empty() {
                self.start_read_if_idle();
                let Some(read) = self.read.as_mut() else {
                    return Poll::Ready(Some(Err(std::io::Error::other("no read in flight"))));
                };
                let joined = ready!(Pin::new(read).poll(cx));
                self.read = None;
                let (file, result) = joined.map_err(std::io::Error::other)?;
                self.file = Some(file);
                let block = result?;
                if block.is_empty() {
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "file shrank while being served",
                    ))));
                }
                self.ready = Bytes::from(block);
                self.start_read_if_idle();
            }
            let mut piece_bytes = self.ready.len() as u64;
            if let Some(limiter) = &self.limiter {
                let limit = limiter.lock().expect("limiter lock").piece_bytes() as u64;
                piece_bytes = piece_bytes.min(limit);
            }
            if let BodyFault::Reset { at_bytes }
            | BodyFault::Stall { at_bytes }
            | BodyFault::Short { at_bytes } = self.fault
            {
                if at_bytes > self.sent_bytes {
                    piece_bytes = piece_bytes.min(at_bytes - self.sent_bytes);
                }
            }
            let mut piece = self.ready.split_to(piece_bytes as usize);
            if let BodyFault::Corrupt { at_bytes } = self.fault {
                if (self.sent_bytes..self.sent_bytes + piece_bytes).contains(&at_bytes) {
                    let mut corrupted = BytesMut::from(&piece[..]);
                    corrupted[(at_bytes - self.sent_bytes) as usize] ^= 0xFF;
                    piece = corrupted.freeze();
                }
            }
            self.sent_bytes += piece_bytes;
            if let Some((_, record)) = self.log.as_mut() {
                record.bytes_sent = self.sent_bytes;
            }
            if let Some(limiter) = &self.limiter {
                let wait = limiter
                    .lock()
                    .expect("limiter lock")
                    .debit(piece_bytes as usize);
                if !wait.is_zero() {
                    // Wait before sending, so the client sees the rate.
                    self.pause = Some(Box::pin(tokio::time::sleep(wait)));
                    self.held = Some(piece);
                    continue;
                }
            }
            return Poll::Ready(Some(Ok(piece)));
        }
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        if let Some((log, record)) = self.log.take() {
            log.write(&record);
        }
    }
}

impl Body for ServeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ServeBody::Full(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            ServeBody::File(body) => body
                .poll_data(cx)
                .map(|next| next.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServeBody::Full(data) => data.is_none(),
            ServeBody::File(body) => body.sent_bytes == body.body_bytes,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ServeBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ServeBody::File(body) => SizeHint::with_exact(body.body_bytes - body.sent_bytes),
        }
    }
}

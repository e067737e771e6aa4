//! A body of unknown length (no Content-Length: chunked, or delimited by
//! the close) from a plain-URL origin that ignores Range: one GET on one
//! connection, its bytes written in order as they arrive (plain positional
//! writes through the page cache: its size is unknown, so nothing is
//! preallocated or aligned) and hashed from memory. Nothing can resume
//! it: a cut transfer starts over from byte 0, as `Fetch::Whole` does.
//!
//! Nothing bounds such a body but the origin: one that never ends (or is
//! far larger than it should be) stops once it would leave DEST's file
//! system with little free (`config::STREAM_FREE_SPACE_MARGIN_*`), instead
//! of filling it for every other process there.

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use super::{EngineConfig, ObjectSource, Progress};
use crate::client::ApiRetry;
use crate::client::conn::{ConnError, Connection};
use crate::error::{Error, Result};
use crate::stats::{Stage, StageHistograms};

/// What a streamed download brought.
pub struct Streamed {
    pub sha1: [u8; 20],
    pub bytes: u64,
    pub retries: u64,
    pub stages: StageHistograms,
}

/// How one attempt ended, when not with the whole body.
enum Cut {
    /// Worth another attempt: a transport failure, 408, 429, 5xx.
    Retry {
        detail: String,
        retry_after_s: Option<u64>,
    },
    /// Final: a local write failed, the origin refused, a stop.
    Fatal(Error),
}

/// Downloads `source` into `file` (empty, opened for writing; the partial
/// file of `dest_shown`, as errors name it), starting over after a
/// failure, up to `config.max_attempts` attempts.
pub fn download_unknown_length(
    config: &EngineConfig,
    source: &ObjectSource,
    file: &OwnedFd,
    dest_shown: &str,
    progress: &Arc<Progress>,
) -> Result<Streamed> {
    let file = std::fs::File::from(
        file.try_clone()
            .map_err(|error| Error::io("duplicating the destination file descriptor", error))?,
    );
    let runtime = crate::uring::Runtime::control()?;
    let _cancel = crate::runtime::cancel_on_this_thread(config.cancel.clone());
    let retry = ApiRetry {
        attempts: config.max_attempts.max(1),
        base_ms: config.retry_base_ms,
        max_ms: config.retry_max_ms,
    };
    let context = format!("GET {}", source.display_name);
    let room_bytes = room_for_body(&file)?;
    runtime.block_on(async {
        let mut stages = StageHistograms::new();
        for attempt in 1u32.. {
            let started = Instant::now();
            let mut received_bytes = 0;
            let body = Body {
                file: &file,
                dest_shown,
                progress,
                room_bytes,
            };
            let once = stream_once(config, source, body, &mut received_bytes).await;
            // Bytes of an attempt that is retried come again from byte 0;
            // those of the last attempt stay counted, a stop's too: the
            // summary said "interrupted after 0 bytes" of 20 MB received
            // (h43 #15f).
            let (detail, retry_after_s) = match once {
                Ok(sha1) => {
                    stages.record(Stage::File, started.elapsed());
                    return Ok(Streamed {
                        sha1,
                        bytes: received_bytes,
                        // Each attempt before this one was retried.
                        retries: u64::from(attempt - 1),
                        stages,
                    });
                }
                Err(Cut::Fatal(error)) => return Err(error),
                Err(Cut::Retry { .. }) if config.stop_signal().is_some() => {
                    let signal = config.stop_signal().unwrap_or_default();
                    return Err(Error::Interrupted { signal });
                }
                Err(Cut::Retry {
                    detail,
                    retry_after_s,
                }) => (detail, retry_after_s),
            };
            if attempt >= retry.attempts {
                return Err(Error::http(
                    context,
                    format!("{detail} after {}", crate::units::attempts(attempt)),
                ));
            }
            progress
                .bytes_done
                .fetch_sub(received_bytes, Ordering::Relaxed);
            progress.count_retry(&detail);
            let retry_after_ms =
                retry_after_s.map(|s| s.min(crate::config::RETRY_AFTER_MAX_S) * 1000);
            let delay_ms = retry_after_ms.unwrap_or(0).max(retry.backoff_ms(attempt));
            crate::runtime::back_off(std::time::Duration::from_millis(delay_ms)).await?;
        }
        unreachable!("the attempts end the loop")
    })
}

/// One attempt: the GET, then the body into `file` from byte 0, counted
/// in `received_bytes` (and the progress) as it arrives.
async fn stream_once(
    config: &EngineConfig,
    source: &ObjectSource,
    body: Body<'_>,
    received_bytes: &mut u64,
) -> std::result::Result<[u8; 20], Cut> {
    let retry = |error: ConnError| match error {
        ConnError::Trust(detail) => Cut::Fatal(Error::Trust(detail)),
        ConnError::ProxyRefused(detail) => Cut::Fatal(Error::ProxyRefused(detail)),
        other => Cut::Retry {
            detail: other.to_string(),
            retry_after_s: None,
        },
    };
    let mut request = Vec::with_capacity(crate::config::REQUEST_HEAD_INITIAL_BYTES);
    crate::http::write_get_request(
        &mut request,
        "GET",
        &source.origin.host_header(),
        &source.path_and_query,
        None,
        &[],
    )
    .map_err(|error| Cut::Fatal(Error::Usage(error.to_string())))?;
    let mut conn = Connection::open(
        &source.origin,
        source.tls.as_ref(),
        config.timeout,
        None,
        &|_, _| {},
    )
    .await
    .map_err(retry)?;
    let outcome = stream_on(&mut conn, source, config, body, request, received_bytes).await;
    conn.shutdown();
    outcome
}

/// Where a streamed body goes, and how much of it there is room for.
struct Body<'a> {
    file: &'a std::fs::File,
    /// DEST, as errors name it.
    dest_shown: &'a str,
    progress: &'a Progress,
    room_bytes: u64,
}

async fn stream_on(
    conn: &mut Connection,
    source: &ObjectSource,
    config: &EngineConfig,
    body: Body<'_>,
    request: Vec<u8>,
    received_bytes: &mut u64,
) -> std::result::Result<[u8; 20], Cut> {
    let Body {
        file,
        dest_shown,
        progress,
        room_bytes,
    } = body;
    let context = format!("GET {}", source.display_name);
    let context = context.as_str();
    let retry = |error: ConnError| Cut::Retry {
        detail: error.to_string(),
        retry_after_s: None,
    };
    conn.send(request).await.map_err(retry)?;
    let head = conn.read_head().await.map_err(retry)?;
    match head.status {
        200 => {}
        408 | 429 | 500..=599 => {
            return Err(Cut::Retry {
                detail: format!("HTTP {}", head.status),
                retry_after_s: head.retry_after_s,
            });
        }
        401 | 403 => {
            let now_ms = crate::client::presign::now_ms();
            let cause = crate::client::presign::refusal_cause(&source.path_and_query, now_ms)
                .unwrap_or_else(|| "run the command again with a URL it accepts".to_string());
            return Err(Cut::Fatal(Error::Refused(format!(
                "{context}: HTTP {}: the origin refuses the URL it answered a moment ago: {cause}",
                head.status
            ))));
        }
        status => {
            return Err(Cut::Fatal(Error::http(context, format!("HTTP {status}"))));
        }
    }
    file.set_len(0)
        .map_err(|error| Cut::Fatal(Error::io("emptying the partial file", error)))?;
    let mut sha1 = Sha1::new();
    let mut written_bytes = 0u64;
    let mut local: Option<Cut> = None;
    // `--limit-rate`: one connection, so its whole burst per read.
    let pace = config
        .limit_rate_bytes_per_s
        .map(|rate| super::pace::Pace::new(rate, 1));
    let body = conn
        .read_body_each(&head, u64::MAX, |piece| {
            if let Some(signal) = config.stop_signal() {
                local = Some(Cut::Fatal(Error::Interrupted { signal }));
                return Err(ConnError::Protocol(String::new()));
            }
            if written_bytes + piece.len() as u64 > room_bytes {
                local = Some(Cut::Fatal(Error::Fatal(format!(
                    "{context}: the body, sent without a Content-Length, passed {room_bytes} bytes, \
                     what the destination's file system has free less a margin: an endless body? \
                     Nothing was kept; make room, or have the origin send a Content-Length"
                ))));
                return Err(ConnError::Protocol(String::new()));
            }
            if let Err(error) = file.write_all_at(piece, written_bytes) {
                // Named, with what to do, as the preallocating path's
                // errors are: a bare "writing at byte N: File too large"
                // said neither (h43 #15e).
                let (detail, _) = super::failure::write_failure(
                    &format!("writing {dest_shown} (its partial file) at byte {written_bytes}"),
                    &error,
                );
                local = Some(Cut::Fatal(Error::Fatal(detail)));
                return Err(ConnError::Protocol(String::new()));
            }
            crate::verify::sha1_update(&mut sha1, piece);
            written_bytes += piece.len() as u64;
            *received_bytes = written_bytes;
            progress
                .bytes_done
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
            Ok(pace
                .as_ref()
                .map_or(Duration::ZERO, |pace| pace.charge(piece.len())))
        })
        .await;
    if let Some(cut) = local {
        return Err(cut);
    }
    body.map_err(retry)?;
    Ok(sha1.finalize().into())
}

/// The most a body of unknown length may take of the file system `file`
/// is on: what is free there now, less a margin
/// (`STREAM_FREE_SPACE_MARGIN_FRACTION` of it, at most
/// `STREAM_FREE_SPACE_MARGIN_MAX_BYTES`).
fn room_for_body(file: &std::fs::File) -> Result<u64> {
    use crate::config::{STREAM_FREE_SPACE_MARGIN_FRACTION, STREAM_FREE_SPACE_MARGIN_MAX_BYTES};
    let stats = rustix::fs::fstatvfs(file)
        .map_err(|error| Error::io("reading the destination's free space", error.into()))?;
    let free_bytes = stats.f_bavail.saturating_mul(stats.f_frsize);
    let margin_bytes =
        (free_bytes / STREAM_FREE_SPACE_MARGIN_FRACTION).min(STREAM_FREE_SPACE_MARGIN_MAX_BYTES);
    Ok(free_bytes - margin_bytes)
}

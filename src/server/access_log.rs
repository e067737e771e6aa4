//! `--access-log FILE`: one JSON object per response, one line each, written
//! with a single `write` so concurrent lines never interleave. Tests read it
//! to prove what was and was not downloaded. Tokens and keys never appear:
//! the query string is dropped from `path`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    pub time_ms: u64,
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    pub bucket: Option<String>,
    /// Decoded object name (downloads).
    pub name: Option<String>,
    /// The `Range` header as received.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes handed to the connection (after any injected fault).
    pub bytes_sent: u64,
    /// The injected fault, if any: fail, throttle, status, expired_token, reset, stall,
    /// corrupt, short_body, long_body (a 206 by `--long-body-rate`, a 200 by
    /// `--short-object-rate`), wrong_range, ignore_range, reset_head,
    /// close_keepalive, reset_handshake (method `TLS`: no request was read).
    pub fault: Option<String>,
    /// Which TCP connection carried the request (accept order, from 0).
    pub connection: u64,
    /// The request carried an SSE-C key (never the key itself).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sse_c_key: bool,
}

pub struct AccessLog {
    file: Mutex<File>,
}

impl AccessLog {
    pub fn create(path: &Path) -> std::io::Result<AccessLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AccessLog {
            file: Mutex::new(file),
        })
    }

    pub fn write(&self, record: &AccessRecord) {
        let mut line = serde_json::to_string(record).expect("access record serialises");
        line.push('\n');
        let mut file = self.file.lock().expect("access log lock");
        if let Err(error) = file.write_all(line.as_bytes()) {
            say!("ringdown serve: warning: access log write failed: {error}");
        }
    }
}

//! I/O-free HTTP/1.1 for the download engine: a request writer, a response-head
//! parser (httparse underneath), `Content-Range` parsing and a chunked-body
//! decoder.
//!
//! Nothing here reads a socket or a clock it was not given (except the
//! convenience [`parse_response_head`], which reads the system clock for an
//! HTTP-date `Retry-After`). Callers feed bytes and get decisions back, so
//! every function can be tested and fuzzed with byte strings. Every input is
//! bounded by a named limit in [`crate::config`].

mod chunked;
mod range;
mod redact;
mod request;
mod response;

pub use chunked::{ChunkedDecoder, ChunkedStep};
pub use range::{ContentRange, ContentRangeValue, parse_content_range, parse_content_range_value};
pub use redact::{REDACTED, query_secrets, redact, redact_bytes, request_secrets};
pub use request::{USER_AGENT, write_get_request, write_post_json};
pub use response::{
    BodyFraming, ResponseHead, parse_http_date, parse_response_head, parse_response_head_at,
    retry_after_s,
};

use std::fmt;

/// `value` as an error quotes it: its first `HTTP_ECHO_MAX_CHARS` characters.
fn shown(value: &str) -> String {
    value
        .chars()
        .take(crate::config::HTTP_ECHO_MAX_CHARS)
        .collect()
}

/// What was wrong with bytes we were given or asked to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The response head did not end within `limit_bytes`.
    HeadTooLarge { limit_bytes: usize },
    /// The response head has more header lines than we parse.
    TooManyHeaders { limit: usize },
    /// httparse refused the head (bad status line, header name, line ending).
    MalformedHead(&'static str),
    /// `101 Switching Protocols`: we never ask for an upgrade.
    UnexpectedUpgrade,
    /// `Content-Length` is not a plain non-negative decimal that fits in u64.
    InvalidContentLength(String),
    /// Several `Content-Length` values that disagree (a smuggling signal).
    ConflictingContentLength { first: u64, second: u64 },
    /// Both `Content-Length` and `Transfer-Encoding: chunked` (a smuggling signal).
    ContentLengthWithChunked,
    /// A transfer coding other than `chunked` (we never ask for one).
    UnsupportedTransferEncoding(String),
    /// A `Content-Range` value we cannot use.
    InvalidContentRange { value: String, reason: &'static str },
    /// A request we were asked to write would be malformed or inject headers.
    InvalidRequest(String),
    /// The request head would exceed `limit_bytes`.
    RequestTooLarge { limit_bytes: usize },
    /// A chunk-size line is longer than `limit_bytes`.
    ChunkSizeLineTooLong { limit_bytes: usize },
    /// A chunk-size line is not hex digits followed by optional extensions.
    InvalidChunkSize(&'static str),
    /// A chunk size does not fit in u64.
    ChunkSizeOverflow,
    /// Chunk data was not followed by CRLF.
    MissingChunkDataCrlf,
    /// The trailer section is longer than `limit_bytes`.
    TrailerTooLarge { limit_bytes: usize },
    /// A line of the chunked framing does not end in CRLF (bare CR or LF).
    BadLineEnding,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLarge { limit_bytes } => {
                write!(f, "response head is larger than {limit_bytes} bytes")
            }
            HttpError::TooManyHeaders { limit } => {
                write!(f, "response head has more than {limit} headers")
            }
            HttpError::MalformedHead(what) => write!(f, "malformed response head: {what}"),
            HttpError::UnexpectedUpgrade => {
                write!(
                    f,
                    "server answered 101 Switching Protocols to a plain request"
                )
            }
            HttpError::InvalidContentLength(value) => {
                write!(
                    f,
                    "invalid Content-Length {value:?}: expected a non-negative integer below 2^64"
                )
            }
            HttpError::ConflictingContentLength { first, second } => {
                write!(f, "conflicting Content-Length values {first} and {second}")
            }
            HttpError::ContentLengthWithChunked => {
                write!(
                    f,
                    "response has both Content-Length and Transfer-Encoding: chunked"
                )
            }
            HttpError::UnsupportedTransferEncoding(value) => {
                write!(
                    f,
                    "unsupported Transfer-Encoding {value:?} (only chunked is accepted)"
                )
            }
            HttpError::InvalidContentRange { value, reason } => {
                write!(f, "invalid Content-Range {value:?}: {reason}")
            }
            HttpError::InvalidRequest(why) => write!(f, "refusing to write request: {why}"),
            HttpError::RequestTooLarge { limit_bytes } => {
                write!(f, "request head would be larger than {limit_bytes} bytes")
            }
            HttpError::ChunkSizeLineTooLong { limit_bytes } => {
                write!(f, "chunk-size line is longer than {limit_bytes} bytes")
            }
            HttpError::InvalidChunkSize(what) => write!(f, "invalid chunk-size line: {what}"),
            HttpError::ChunkSizeOverflow => write!(f, "chunk size does not fit in 64 bits"),
            HttpError::MissingChunkDataCrlf => write!(f, "chunk data is not followed by CRLF"),
            HttpError::TrailerTooLarge { limit_bytes } => {
                write!(
                    f,
                    "chunked trailer section is larger than {limit_bytes} bytes"
                )
            }
            HttpError::BadLineEnding => write!(f, "a chunked framing line does not end in CRLF"),
        }
    }
}

impl std::error::Error for HttpError {}

//! How a failed request attempt is classified, shared by chunks of large
//! objects and whole small objects: retry, re-authorize, give up on the
//! object, or stop the run.

use std::time::Duration;

use crate::b2::{ErrorClass, classify};
use crate::client::conn::{ConnError, Connection};
use crate::config::ERROR_BODY_MAX_BYTES;
use crate::http::ResponseHead;

/// Why one attempt at a request failed, and what to do about it.
pub(super) struct Failure {
    pub detail: String,
    pub kind: FailureKind,
    pub retry_after_s: Option<u64>,
}

pub(super) enum FailureKind {
    /// Try again after a backoff (a new connection if the old one is gone).
    Retry,
    /// Re-authorize, then try again (once per chunk or object).
    Reauthorize,
    /// Retrying will not help this object.
    Object,
    /// Retrying will not help anything: stop the whole run.
    Run,
    /// Trust failure (exit code 3).
    Trust,
    /// Credentials refused (exit code 3).
    Auth,
}

impl Failure {
    pub(super) fn retry(detail: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            kind: FailureKind::Retry,
            retry_after_s: None,
        }
    }
}

/// Reads a (small) error body and classifies the status per b2-api.md §6.
pub(super) async fn status_failure(conn: &mut Connection, head: &ResponseHead) -> Failure {
    let body = match head.content_length {
        Some(length) if (length as usize) <= ERROR_BODY_MAX_BYTES => conn
            .read_body_to_vec(head, ERROR_BODY_MAX_BYTES)
            .await
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let parsed = crate::b2::parse_error_body(&body);
    let code = parsed.as_ref().map(|e| e.code.as_str()).unwrap_or("");
    let message = parsed.as_ref().map(|e| e.message.as_str()).unwrap_or("");
    let detail = if code.is_empty() {
        format!("HTTP {}", head.status)
    } else {
        format!("HTTP {} {code}: {message}", head.status)
    };
    // 412 (If-Match failed: the object changed) is Fatal, hence Object.
    let kind = match classify(head.status, code) {
        ErrorClass::Retry => FailureKind::Retry,
        ErrorClass::ReauthorizeOnce => FailureKind::Reauthorize,
        ErrorClass::RunFatal => FailureKind::Run,
        ErrorClass::Fatal if head.status == 401 || head.status == 403 => FailureKind::Auth,
        ErrorClass::Fatal => FailureKind::Object,
    };
    Failure {
        detail,
        kind,
        retry_after_s: head.retry_after_s,
    }
}

pub(super) fn conn_failure(error: ConnError) -> Failure {
    match error {
        ConnError::Trust(detail) => Failure {
            detail,
            kind: FailureKind::Trust,
            retry_after_s: None,
        },
        other => Failure::retry(other.to_string()),
    }
}

/// Exponential backoff with jitter; `Retry-After` (capped) wins when longer.
pub(super) fn backoff(
    base_ms: u64,
    max_ms: u64,
    attempt: u32,
    retry_after_s: Option<u64>,
    salt: u64,
) -> Duration {
    let exponential_ms = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(max_ms);
    // Cheap, deterministic-enough jitter: decorrelates chunks that failed together.
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (attempt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 29;
    let jitter_ms = if exponential_ms > 1 {
        x % (exponential_ms / 2 + 1)
    } else {
        0
    };
    let delay_ms = exponential_ms / 2 + jitter_ms;
    let retry_after_ms = retry_after_s
        .map(|s| s.min(crate::config::RETRY_AFTER_MAX_S) * 1000)
        .unwrap_or(0);
    Duration::from_millis(delay_ms.max(retry_after_ms))
}

//! How a failed request attempt is classified, shared by the chunk engine and
//! the small-object pool: retry, re-authorize, give up on the object, or stop
//! the run.

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

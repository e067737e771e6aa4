//! How a failed request attempt is classified, shared by chunks of large
//! objects and whole small objects: retry, re-authorize, give up on the
//! object, or stop the run.

use std::time::Duration;

use super::conn::EngineConn;
use super::scheduler::{Core, ObjectSpec};
use crate::b2::{AfterRefusal, ErrorClass, classify};
use crate::client::conn::ConnError;
use crate::config::{ERROR_BODY_MAX_BYTES, KEEPALIVE_IDLE_MAX_MS, SSE_C_KEYS_MAX};
use crate::error::Error;
use crate::http::ResponseHead;

/// Why one attempt at a request failed, and what to do about it.
pub(super) struct Failure {
    pub detail: String,
    pub kind: FailureKind,
    pub retry_after_s: Option<u64>,
    /// An error answer read to its end on a connection kept alive: the
    /// connection is in step, ready for the next answer it owes (or the
    /// next request).
    pub answer_read: bool,
    /// An answer of the very version the download began with that gives
    /// it another size (`request::size_differs`).
    pub size_dispute: Option<SizeDispute>,
}

/// An answer of the version a download began with that gives it a size
/// other than the one the download was planned with (the probe's or the
/// listing's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SizeDispute {
    pub expected_bytes: u64,
    pub said_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// Try again after a backoff (a new connection if the old one is gone).
    Retry,
    /// An answer that breaks HTTP for the request made (200 to a range, a
    /// Content-Range or Content-Length not the one asked for, a chunked
    /// body where a length was due): an attempt like `Retry`, on a new
    /// connection, but after a backoff that does not grow. Nothing is
    /// overloaded: a proxy's glitch clears on a new connection at once, and
    /// an origin that does this by design fails in seconds, where the
    /// growing backoff held it 3 minutes (15 attempts, up to 30 s apart).
    Protocol,
    /// Re-authorize, then try again (once per chunk or object).
    Reauthorize,
    /// B2 refused the SSE-C key the request carried, and another key given
    /// is left to try: at once, not counted as an attempt, up to
    /// `SSE_C_KEYS_MAX` times per request (each key is refused once per
    /// object); past that, an attempt like `Retry`.
    NextKey,
    /// Retrying will not help this object.
    Object,
    /// Retrying will not help anything: stop the whole run.
    Run,
    /// Trust failure (exit code 3).
    Trust,
    /// The proxy refused the tunnel (exit code 3).
    ProxyRefused,
    /// Credentials refused (exit code 3).
    Auth,
    /// A plain URL refused with 401 or 403: no credentials were sent, the
    /// URL itself was refused (exit code 3).
    Refused,
    /// The key is valid but may not read this (exit code 3).
    Denied,
}

impl Failure {
    pub(super) fn retry(detail: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            kind: FailureKind::Retry,
            retry_after_s: None,
            answer_read: false,
            size_dispute: None,
        }
    }

    /// An answer that does not fit the request made (see
    /// `FailureKind::Protocol`); the connection is out of step.
    pub(super) fn protocol(detail: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            kind: FailureKind::Protocol,
            retry_after_s: None,
            answer_read: false,
            size_dispute: None,
        }
    }

    /// Retrying will not help this object (it changed, or cannot be asked
    /// for); no answer was left in step.
    pub(super) fn object(detail: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            kind: FailureKind::Object,
            retry_after_s: None,
            answer_read: false,
            size_dispute: None,
        }
    }

    /// Whether the object should wait its next turn away from the
    /// connection, which is in step (the error answer was read to its end):
    /// - a retryable answer (429, 503, ...): the connection carries other
    ///   objects (and reads the answers it owes them) while this one backs
    ///   off, instead of idling through the backoff or being replaced;
    /// - an SSE-C key's refusal with answers to GETs sent ahead owed: they
    ///   are read first (with nothing owed, the next key goes out at once
    ///   on this connection).
    pub(super) fn defers(&self, conn: &EngineConn) -> bool {
        self.answer_read
            && match self.kind {
                FailureKind::Retry => true,
                FailureKind::NextKey => conn.requests.owes_answers(),
                _ => false,
            }
    }

    /// Whether the connection this failure came on can carry the next
    /// request of this object at once: an error answer read to its end, with
    /// no answer owed to a GET sent ahead, and no backoff to idle through
    /// first (a server, NAT or balancer may drop an idle flow silently: the
    /// retry would wait out `--timeout-s`; see `KEEPALIVE_IDLE_MAX_MS`). Any
    /// other failure may have left it mid-answer, out of step, or closed.
    pub(super) fn leaves_usable(&self, conn: &EngineConn) -> bool {
        self.leaves_idle(conn) && !matches!(self.kind, FailureKind::Retry | FailureKind::Protocol)
    }

    /// Whether the connection is in step with nothing owed on it: an error
    /// answer read to its end, and no GET sent ahead. It can carry the next
    /// request, after the backoff if any: a chunk keeps it through a short
    /// one (`chunk::download_chunk`).
    pub(super) fn leaves_idle(&self, conn: &EngineConn) -> bool {
        self.answer_read && !conn.requests.owes_answers()
    }

    /// Whether the connection can go on reading the answers it owes to GETs
    /// sent ahead: this object is done with (it failed on an error answer
    /// read to its end), so nothing is sent on it out of turn.
    pub(super) fn leaves_in_step(&self, conn: &EngineConn) -> bool {
        self.leaves_usable(conn) || (self.answer_read && matches!(self.kind, FailureKind::Object))
    }
}

/// The retry policy of one request that both download loops share (a chunk
/// of a large object, a whole small object): attempts counted against
/// `--max-attempts`, re-authorization, backoff, and a stop that cuts a wait
/// short.
#[derive(Clone)]
pub(super) struct Retries {
    made: u32,
    /// This request refreshed the token and has not succeeded since: a
    /// refusal now is final.
    reauthorized: bool,
    /// The token generation seen when the last attempt started.
    seen_generation: u64,
    /// SSE-C keys this request moved on from, not counted as attempts.
    key_changes: usize,
    /// The last answer of the planned version that gave it another size.
    size_dispute: Option<SizeDispute>,
}

/// When the next attempt may go out.
pub(super) enum Then {
    Now,
    /// After this backoff; `detail` says why, should a stop cut it short.
    After {
        delay: Duration,
        detail: String,
    },
}

impl Then {
    /// Whether a connection may idle through this wait and carry the next
    /// attempt after it: up to `KEEPALIVE_IDLE_MAX_MS`, a server, NAT or
    /// balancer keeps an idle flow; longer, one may drop it without a word.
    pub(super) fn may_idle_through(&self) -> bool {
        match self {
            Then::Now => true,
            Then::After { delay, .. } => *delay <= Duration::from_millis(KEEPALIVE_IDLE_MAX_MS),
        }
    }
}

impl Failure {
    /// How a failure that no attempt can mend ends its object: a local one
    /// (a write's), or one that stops the run. Other kinds give `next_attempt`
    /// more to decide, and end as an object's own (`FailureKind::Object`).
    pub(super) fn give_up_at_once(self, context: &str) -> GiveUp {
        debug_assert!(
            matches!(self.kind, FailureKind::Run | FailureKind::Object),
            "{:?} is for next_attempt to decide",
            self.kind
        );
        match self.kind {
            FailureKind::Run => GiveUp {
                error: Error::Fatal(format!("{context}: {}", self.detail)),
                run_fatal: true,
            },
            _ => GiveUp {
                error: Error::http(context, self.detail),
                run_fatal: false,
            },
        }
    }
}

/// Why a download loop stopped retrying.
pub(super) struct GiveUp {
    pub error: Error,
    /// Nothing else in the run can succeed either (credentials, trust, a
    /// fatal server answer); otherwise only this object failed.
    pub run_fatal: bool,
}

impl Retries {
    pub(super) fn new() -> Retries {
        Retries {
            made: 0,
            reauthorized: false,
            seen_generation: 0,
            key_changes: 0,
            size_dispute: None,
        }
    }

    /// Counts an attempt about to be made.
    pub(super) fn start(&mut self, core: &Core) {
        self.made += 1;
        if let Some(auth) = &core.shared.source.auth {
            self.seen_generation = auth.generation();
        }
    }

    pub(super) fn made(&self) -> u32 {
        self.made
    }

    /// What follows a failed attempt: `Ok` with when the next may go out,
    /// or why to stop. `context` names the request in errors; `stop` says
    /// the run or object is being stopped; `salt` decorrelates the jitter
    /// of requests that failed together.
    pub(super) async fn next_attempt(
        &mut self,
        core: &Core,
        mut failure: Failure,
        context: &str,
        stop: impl Fn() -> bool,
        salt: u64,
    ) -> Result<Then, GiveUp> {
        let config = &core.shared.config;
        let fatal = |error| GiveUp {
            error,
            run_fatal: true,
        };
        // The detail may quote the server, and the server may quote the
        // request: its credentials go before the detail goes anywhere.
        // (The URL's own, a presigned signature, went in `status_failure`.)
        if let Some(auth) = &core.shared.source.auth {
            failure.detail = crate::http::redact(&failure.detail, &auth.secrets());
        }
        // A new token is there (ours, or one another request fetched).
        let mut token_refreshed = false;
        match failure.kind {
            // A token can expire again later (long objects, short TTLs): only
            // a refusal right after re-authorizing is final.
            FailureKind::Retry => self.reauthorized = false,
            FailureKind::Protocol => {
                self.reauthorized = false;
                // One such answer may be a glitch. A second that says the
                // same (each on a new connection) is the origin's word
                // against the size the download was planned with, and no
                // number of retries settles that: 15 per chunk were 69 GETs
                // of a 14 MB object for nothing (h34).
                if let Some(dispute) = failure.size_dispute {
                    if self.size_dispute.replace(dispute) == Some(dispute) {
                        return Err(GiveUp {
                            error: Error::SizeDisputed {
                                context: context.to_string(),
                                detail: format!(
                                    "two answers of the version the download began with say it has {} bytes, \
                                     not the {} it was planned with (as probed or listed): the origin contradicts itself",
                                    dispute.said_bytes, dispute.expected_bytes
                                ),
                            },
                            run_fatal: false,
                        });
                    }
                }
            }
            // Free, but bounded: past one change per key possible, a
            // refusal is an attempt like any other.
            FailureKind::NextKey if self.key_changes < SSE_C_KEYS_MAX && !stop() => {
                self.key_changes += 1;
                self.made = self.made.saturating_sub(1);
                return Ok(Then::Now);
            }
            FailureKind::NextKey => self.reauthorized = false,
            FailureKind::Reauthorize if !self.reauthorized => {
                if let Some(auth) = &core.shared.source.auth {
                    match auth.reauthorize(self.seen_generation).await {
                        Ok(refreshed) => {
                            self.reauthorized = refreshed;
                            token_refreshed = true;
                        }
                        // A refusal, a spent cap: the run stops, as it
                        // would have at its first authorization.
                        Err(error) if !error.may_pass_on_retry() => return Err(fatal(error)),
                        // The API being unreachable for a while is not a
                        // reason to stop the run: this request backs off.
                        Err(error) => {
                            failure = Failure::retry(format!(
                                "{}; re-authorizing: {error}",
                                failure.detail
                            ));
                        }
                    }
                }
            }
            FailureKind::Reauthorize | FailureKind::Auth => {
                return Err(fatal(Error::Auth(format!("{context}: {}", failure.detail))));
            }
            FailureKind::Refused => {
                return Err(fatal(Error::Refused(format!(
                    "{context}: {}",
                    failure.detail
                ))));
            }
            FailureKind::Denied => {
                return Err(fatal(crate::client::b2_api::denied(format!(
                    "{context}: {}",
                    failure.detail
                ))));
            }
            FailureKind::Trust => return Err(fatal(Error::Trust(failure.detail))),
            FailureKind::ProxyRefused => return Err(fatal(Error::ProxyRefused(failure.detail))),
            FailureKind::Run | FailureKind::Object => return Err(failure.give_up_at_once(context)),
        }
        if token_refreshed && !stop() {
            // Not a failure of the request: its token expired. The fresh
            // token goes out at once (a backoff could outlast a short token
            // lifetime), and is no attempt: a request refused again right
            // after it refreshed the token fails for good (above), so this
            // happens at most twice in a row.
            self.made = self.made.saturating_sub(1);
            return Ok(Then::Now);
        }
        if self.made >= config.max_attempts || stop() {
            return Err(self.give_up_after(context, &failure));
        }
        core.count_retry(&failure.detail);
        if matches!(failure.kind, FailureKind::Reauthorize) {
            // No token source to refresh (or it could not be reached).
            return Ok(Then::Now);
        }
        let max_ms = if matches!(failure.kind, FailureKind::Protocol) {
            config.retry_base_ms
        } else {
            config.retry_max_ms
        };
        let delay = backoff(
            config.retry_base_ms,
            max_ms,
            self.made,
            failure.retry_after_s,
            salt,
        );
        Ok(Then::After {
            delay,
            detail: failure.detail,
        })
    }

    /// `next_attempt`, waiting out its backoff here: `Ok` once it is time
    /// for the next attempt.
    pub(super) async fn after_failure(
        &mut self,
        core: &Core,
        failure: Failure,
        context: String,
        stop: impl Fn() -> bool,
        salt: u64,
    ) -> Result<(), GiveUp> {
        match self
            .next_attempt(core, failure, &context, &stop, salt)
            .await?
        {
            Then::Now => Ok(()),
            Then::After { delay, detail } => self.wait(core, delay, &detail, &context, &stop).await,
        }
    }

    /// Waits out a backoff unless `stop` cuts it short (then gives up).
    pub(super) async fn wait(
        &self,
        core: &Core,
        delay: Duration,
        detail: &str,
        context: &str,
        stop: impl Fn() -> bool,
    ) -> Result<(), GiveUp> {
        if core.sleep_unless_stopped(delay, stop).await {
            Ok(())
        } else {
            Err(self.give_up(context, detail))
        }
    }

    /// The error of a request that stops retrying after the attempts made.
    pub(super) fn give_up(&self, context: &str, detail: &str) -> GiveUp {
        GiveUp {
            error: Error::http(
                context,
                format!("{detail} after {}", crate::units::attempts(self.made)),
            ),
            run_fatal: false,
        }
    }

    /// `give_up` after `failure`, the last attempt's. An earlier answer that
    /// disputed the object's size is named too: it is a likelier cause of
    /// the failure than the transient fault that happened to come last.
    fn give_up_after(&self, context: &str, failure: &Failure) -> GiveUp {
        let mut give_up = self.give_up(context, &failure.detail);
        if let (Some(dispute), None, Error::Http { detail, .. }) =
            (self.size_dispute, failure.size_dispute, &mut give_up.error)
        {
            detail.push_str(&format!(
                "; an earlier answer of the same version said it has {} bytes, not {}",
                dispute.said_bytes, dispute.expected_bytes
            ));
        }
        give_up
    }
}

/// Reads a (small) error body and classifies the status per b2-api.md §6.
pub(super) async fn status_failure(
    conn: &mut EngineConn,
    head: &ResponseHead,
    object: &ObjectSpec,
) -> Failure {
    let body = match head.content_length {
        Some(length) if (length as usize) <= ERROR_BODY_MAX_BYTES => {
            conn.read_body_to_vec(head, ERROR_BODY_MAX_BYTES).await.ok()
        }
        _ => None,
    };
    // The answer was read to its end on a connection kept open: the next
    // request may go on it.
    let answer_read = body.is_some() && head.keep_alive;
    if answer_read {
        // A request done: if the server closes the connection while it
        // idles (a backoff), the next request's send finds out and goes
        // out again on a new one (`request::get_head`), not as an attempt.
        conn.requests.answered();
    }
    let mut body = body.unwrap_or_default();
    // The server's text may quote the URL's credentials (a presigned
    // signature, `?Authorization=`) and the SSE-C key the request carried;
    // the account's go in `next_attempt`.
    let mut secrets = crate::http::query_secrets(&object.path_and_query);
    if let Some(choice) = &object.sse_c {
        secrets.extend(choice.secrets());
    }
    crate::http::redact_bytes(&mut body, &secrets);
    let parsed = crate::b2::parse_error_body(&body);
    let code = parsed.as_ref().map(|e| e.code.as_str()).unwrap_or("");
    let message = parsed.as_ref().map(|e| e.message.as_str()).unwrap_or("");
    let detail = if code.is_empty() {
        format!("HTTP {}", head.status)
    } else {
        format!("HTTP {} {code}: {message}", head.status)
    };
    let detail = if head.status == 412
        && object
            .validator
            .as_ref()
            .is_some_and(|validator| validator.if_match().is_some())
    {
        format!(
            "{detail}: the object changed on the origin during the download (If-Match failed); \
             run the command again to fetch the new version"
        )
    } else if head.status == 416 {
        // Every range asked for lies within the size the run started from.
        format!(
            "{detail}: the range asked for lies past the object's end, so it shrank on the origin \
             during the download; run the command again to fetch the new version"
        )
    } else {
        detail
    };
    if let Some(choice) = &object.sse_c {
        if (head.status, code) == (403, "access_denied") {
            // B2's answer to a wrong SSE-C key: the next key given, if any;
            // else this object fails, and others (unencrypted, or under a
            // key given) go on.
            let index = conn
                .requests
                .answering_sse_c_key()
                .unwrap_or_else(|| choice.current().0);
            return match choice.refused(index) {
                AfterRefusal::TryNext => Failure {
                    detail: format!("{detail}: not its SSE-C key; trying the next one given"),
                    kind: FailureKind::NextKey,
                    retry_after_s: None,
                    answer_read,
                    size_dispute: None,
                },
                AfterRefusal::Fail(why) => Failure {
                    detail: format!("{detail}: {why}"),
                    kind: FailureKind::Object,
                    retry_after_s: None,
                    answer_read,
                    size_dispute: None,
                },
            };
        }
    }
    let class = classify(head.status, code);
    // A spent cap stops the run: say what to do about it.
    let detail = if class == ErrorClass::RunFatal {
        format!("{detail}; {}", crate::b2::CAP_HINT)
    } else {
        detail
    };
    // A plain URL that served the probe and now is refused: a presigned
    // URL's signature is checked again on every request, and expires.
    let plain_url_refused = object.plain_url
        && (head.status == 401 || head.status == 403)
        && class != ErrorClass::RunFatal;
    let detail = if plain_url_refused {
        let now_ms = crate::client::presign::now_ms();
        match crate::client::presign::refusal_cause(&object.path_and_query, now_ms) {
            Some(cause) => {
                format!("{detail}: the origin refuses the URL it served until now: {cause}")
            }
            None => format!(
                "{detail}: the origin refuses the URL it served until now (a presigned URL that expired?); \
                 run the command again with a URL it accepts"
            ),
        }
    } else {
        detail
    };
    // 412 (If-Match failed: the object changed) is Fatal, hence Object.
    let kind = match class {
        ErrorClass::Retry => FailureKind::Retry,
        ErrorClass::RunFatal => FailureKind::Run,
        // There is nothing to re-authorize: the URL carries its own
        // signature (a 401 was an attempt per backoff until they ran out).
        _ if plain_url_refused => FailureKind::Refused,
        ErrorClass::ReauthorizeOnce => FailureKind::Reauthorize,
        ErrorClass::Fatal if crate::b2::is_denial(head.status, code) => FailureKind::Denied,
        ErrorClass::Fatal if head.status == 401 || head.status == 403 => FailureKind::Auth,
        ErrorClass::Fatal => FailureKind::Object,
    };
    Failure {
        detail,
        kind,
        retry_after_s: head.retry_after_s,
        answer_read,
        size_dispute: None,
    }
}

pub(super) fn conn_failure(error: ConnError) -> Failure {
    match error {
        ConnError::Trust(detail) => Failure {
            detail,
            kind: FailureKind::Trust,
            retry_after_s: None,
            answer_read: false,
            size_dispute: None,
        },
        ConnError::ProxyRefused(detail) => Failure {
            detail,
            kind: FailureKind::ProxyRefused,
            retry_after_s: None,
            answer_read: false,
            size_dispute: None,
        },
        other => Failure::retry(other.to_string()),
    }
}

/// What a failed write of a downloaded body means: the detail (with what to
/// do), and whether it stops the whole run (`dest::run_stopping_hint`).
pub(crate) fn write_failure(context: &str, error: &std::io::Error) -> (String, bool) {
    match crate::dest::run_stopping_hint(error.raw_os_error()) {
        Some(hint) => (format!("{context}: {error}{hint}"), true),
        None => {
            let hint = crate::dest::one_file_hint(error.raw_os_error()).unwrap_or("");
            (format!("{context}: {error}{hint}"), false)
        }
    }
}

/// Exponential backoff with jitter; `Retry-After` (capped) wins when longer.
fn backoff(
    base_ms: u64,
    max_ms: u64,
    attempt: u32,
    retry_after_s: Option<u64>,
    salt: u64,
) -> Duration {
    let exponential_ms = base_ms
        .saturating_mul(
            1u64 << attempt
                .saturating_sub(1)
                .min(crate::config::BACKOFF_DOUBLINGS_MAX),
        )
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

#[cfg(test)]
mod tests {
    use super::write_failure;
    use std::io::Error;

    #[test]
    fn write_failures_that_stop_the_run_say_what_to_do() {
        let (detail, run_fatal) =
            write_failure("writing x", &Error::from_raw_os_error(libc::ENOSPC));
        assert!(run_fatal && detail.contains("free space"), "{detail}");
        let (detail, run_fatal) =
            write_failure("writing x", &Error::from_raw_os_error(libc::ECANCELED));
        assert!(run_fatal && detail.contains("pids.max"), "{detail}");
        for gone in [libc::ENOTCONN, libc::ESHUTDOWN] {
            let (detail, run_fatal) = write_failure("writing x", &Error::from_raw_os_error(gone));
            assert!(run_fatal && detail.contains("remount"), "{detail}");
        }
        // EIO may be one file's (a FUSE or network file system's answer).
        for one_file in [libc::EFBIG, libc::EIO] {
            let (detail, run_fatal) =
                write_failure("writing x", &Error::from_raw_os_error(one_file));
            assert!(!run_fatal, "{detail}");
            assert!(detail.starts_with("writing x: "), "{detail}");
        }
        // A file past RLIMIT_FSIZE says which limit (h43 #15e).
        let (detail, _) = write_failure("writing x", &Error::from_raw_os_error(libc::EFBIG));
        assert!(detail.contains("ulimit -f"), "{detail}");
    }
}

//! One GET on a core's connection slot, shared by small objects and chunks:
//! connect if the slot is empty, send the request, read the response head.

use std::time::Instant;

use super::conn::{EngineConn, Pipelined};
use super::failure::{Failure, SizeDispute, conn_failure, status_failure};
use super::scheduler::{Core, ObjectSpec};
use crate::client::conn::{ConnError, Connection};
use crate::http::{self, ResponseHead};
use crate::stats::Stage;

/// The response head to the GET of `object` and `range`: read it if that
/// GET went out ahead on this connection (HTTP/1.1 pipelining), else send
/// it (`get_head`), on a new connection if this one owes other answers.
pub(super) async fn next_head(
    core: &Core,
    connection: &mut Option<EngineConn>,
    object: &ObjectSpec,
    range: Option<(u64, u64)>,
) -> Result<ResponseHead, Failure> {
    let sent_ahead = connection
        .as_ref()
        .is_some_and(|conn| conn.requests.answers_next(&object.path_and_query, range));
    let head = if sent_ahead {
        let head = read_pipelined_head(core, connection, object, range).await?;
        // Another version in the answer to a GET sent ahead: the object
        // may have changed, but an origin (or proxy) that lost one of the
        // GETs and answered the next in its place says the same. Taken as
        // out of step: one request at a time from now on, and this one
        // again, alone, on a new connection, where a change fails it. (An
        // error answer names no version: the caller reads its status.)
        let version = match head.status {
            200 | 206 => check_version(&head, object),
            _ => Ok(()),
        };
        if let Err(failure) = version {
            let why = format!(
                "it may have answered another in its place: {}",
                failure.detail
            );
            core.shared.doubt_pipelining(object, range);
            return Err(Failure::protocol(why));
        }
        head
    } else {
        // A GET sent ahead for something else would answer first.
        retire_if_answer_owed(connection);
        let head = get_head(core, connection, object, range).await?;
        if !core.shared.pipelining() && matches!(head.status, 200 | 206) {
            let same_version = check_version(&head, object).is_ok();
            core.shared
                .settle_pipelining_doubt(object, range, same_version);
        }
        head
    };
    if let (Some(choice), Some(conn)) = (&object.sse_c, connection.as_ref()) {
        if (200..300).contains(&head.status) {
            if let Some(index) = conn.requests.answering_sse_c_key() {
                choice.opened(index);
            }
        }
    }
    Ok(head)
}

/// The bytes of one GET, and the SSE-C key they carry (its index among the
/// keys given), if any.
pub(super) struct GetRequest {
    pub bytes: Vec<u8>,
    pub sse_c_key: Option<usize>,
}

/// Shuts down and drops a connection that still owes the answer to a GET
/// sent ahead: it is out of step and cannot carry another request.
pub(super) fn retire_if_answer_owed(connection: &mut Option<EngineConn>) {
    if let Some(conn) = connection.take_if(|conn| conn.requests.owes_answers()) {
        conn.shutdown();
    }
}

/// Sends `request`, the GET of `object` and `range` (`build_get`), behind
/// the answers this connection still owes (HTTP/1.1 pipelining);
/// `next_head` reads its answer.
pub(super) async fn send_get_ahead(
    conn: &mut EngineConn,
    object: &ObjectSpec,
    range: Option<(u64, u64)>,
    request: GetRequest,
) -> Result<(), Failure> {
    let sent = Instant::now();
    conn.send(request.bytes).await.map_err(conn_failure)?;
    conn.requests.sent_ahead(Pipelined {
        path_and_query: object.path_and_query.clone(),
        range,
        sent,
        sse_c_key: request.sse_c_key,
    });
    Ok(())
}

/// A server that will not take GETs sent ahead may close (or reset) the
/// connection as they arrive, cutting the body being read too: when a body
/// read ends with `error` while GETs are out ahead, the run sends one
/// request at a time from then on.
pub(super) fn stop_pipelining_if_refused(core: &Core, conn: &EngineConn, error: &std::io::Error) {
    if conn.requests.owes_answers() && is_closed(error) {
        core.shared.stop_pipelining_after_cut(error);
    }
}

/// Reads the answer to the oldest GET sent ahead. A connection stalled
/// instead of answering it says the server does not take pipelined
/// requests, and so does one closed before the origin ever answered one
/// (after, it is a keep-alive limit or a reset): the run stops sending
/// ahead. This GET goes out again on a new connection, not counted as an
/// attempt.
async fn read_pipelined_head(
    core: &Core,
    connection: &mut Option<EngineConn>,
    object: &ObjectSpec,
    range: Option<(u64, u64)>,
) -> Result<ResponseHead, Failure> {
    let conn = connection.as_mut().expect("checked by the caller");
    let sent = conn
        .requests
        .answer_next()
        .expect("checked by the caller")
        .sent;
    match conn.read_head().await {
        Ok(head) => {
            // `ttfb` is request sent → head (DESIGN.md), here too: for a
            // GET sent ahead, that includes the body it was sent behind.
            let waited = sent.elapsed();
            core.record(Stage::Ttfb, waited);
            core.shared.note_round_trip(waited);
            core.shared.note_pipelined_answer();
            Ok(head)
        }
        // (After a stop signal, a receive is cut short as timed out: that
        // says nothing of the origin.)
        Err(ConnError::Transport(error))
            if conn.has_nothing_buffered()
                && !core.shared.is_stopped()
                && (is_closed(&error) || error.kind() == std::io::ErrorKind::TimedOut) =>
        {
            match is_closed(&error) {
                true => core.shared.stop_pipelining_after_cut(&error),
                false => core.shared.stop_pipelining(&error),
            }
            if let Some(conn) = connection.take() {
                conn.shutdown();
            }
            get_head(core, connection, object, range).await
        }
        Err(error) => Err(conn_failure(error)),
    }
}

/// Sends `GET` of `object` (with `Range` when given, the account's token,
/// and the object's `If-Match` and SSE-C key when it has them) on
/// `connection`, opening it first if needed, and returns the response head.
/// Records connect, TLS handshake and time to first byte.
pub(super) async fn get_head(
    core: &Core,
    connection: &mut Option<EngineConn>,
    object: &ObjectSpec,
    range: Option<(u64, u64)>,
) -> Result<ResponseHead, Failure> {
    let reused = connection
        .as_ref()
        .is_some_and(|conn| conn.requests.reused());
    // Bytes past the last answer: the connection is out of step (see
    // `Connection::is_quiet`); a FIN or an alert waiting: it is closing. A
    // new one either way, no attempt lost, and nothing said: under TLS a
    // close_notify and stray bytes look alike until opened.
    if reused && connection.as_ref().is_some_and(|conn| !conn.is_quiet()) {
        connection.take().expect("checked").shutdown();
    }
    let reused = reused && connection.is_some();
    if connection.is_none() {
        *connection = Some(connect(core).await?);
    }
    let GetRequest {
        bytes: request,
        sse_c_key,
    } = build_get(core, object, range)?;
    let mut sent = Instant::now();
    let conn = connection.as_mut().expect("connected");
    conn.requests.answering(sse_c_key);
    let head = match send_and_read_head(conn, &request).await {
        Ok(head) => head,
        // Servers close keep-alive connections that idle (B2 and nginx after
        // some seconds), and we learn it only by using one. Closed without
        // a byte of answer: a new connection and the same GET, once, not an
        // attempt of its own.
        Err(ConnError::Transport(error))
            if reused && conn.has_nothing_buffered() && is_closed(&error) =>
        {
            conn.shutdown();
            let conn = connection.insert(connect(core).await?);
            conn.requests.answering(sse_c_key);
            // The connect and handshake have stages of their own.
            sent = Instant::now();
            send_and_read_head(conn, &request)
                .await
                .map_err(conn_failure)?
        }
        Err(error) => return Err(conn_failure(error)),
    };
    let waited = sent.elapsed();
    core.record(Stage::Ttfb, waited);
    core.shared.note_round_trip(waited);
    Ok(head)
}

/// The `GET` of `object` (see `get_head`).
pub(super) fn build_get(
    core: &Core,
    object: &ObjectSpec,
    range: Option<(u64, u64)>,
) -> Result<GetRequest, Failure> {
    super::failpoint::pass(super::failpoint::Site::Request);
    let source = &core.shared.source;
    let token = source.auth.as_ref().map(|auth| auth.token());
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(token) = token.as_deref() {
        headers.push(("Authorization", token));
    }
    if let Some(etag) = object
        .validator
        .as_ref()
        .and_then(super::Validator::if_match)
    {
        headers.push(("If-Match", etag));
    }
    let sse_c_key = object.sse_c.as_ref().map(|choice| choice.current());
    if let Some((_, key)) = sse_c_key {
        headers.extend(key.headers());
    }
    let mut request = Vec::with_capacity(crate::config::REQUEST_HEAD_INITIAL_BYTES);
    http::write_get_request(
        &mut request,
        "GET",
        &source.origin.host_header(),
        &object.path_and_query,
        range,
        &headers,
    )
    .map_err(|error| Failure::object(error.to_string()))?;
    Ok(GetRequest {
        bytes: request,
        sse_c_key: sse_c_key.map(|(index, _)| index),
    })
}

pub(super) fn is_closed(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

async fn connect(core: &Core) -> Result<EngineConn, Failure> {
    let source = &core.shared.source;
    let record = |stage, elapsed| core.record(stage, elapsed);
    // An error elsewhere that stops the run (disk full, credentials
    // refused, a panic) cuts a connect, a handshake or a stalled receive
    // short, as a signal does.
    let shared = std::sync::Arc::clone(&core.shared);
    Connection::open(
        &source.origin,
        source.tls.as_ref(),
        core.shared.config.timeout,
        Some(std::rc::Rc::new(move || shared.is_stopped())),
        &record,
    )
    .await
    .map(EngineConn::new)
    .map_err(conn_failure)
}

async fn send_and_read_head(
    conn: &mut Connection,
    request: &[u8],
) -> Result<ResponseHead, ConnError> {
    conn.send(request.to_vec()).await?;
    conn.read_head().await
}

/// Validates the response head to the GET of bytes `first_byte..=last_byte`
/// of `object`: an error status, its body read (`status_failure`), or a
/// 200/206 answer checked by `check_range_head`. Returns the body's length.
pub(super) async fn check_head(
    conn: &mut EngineConn,
    head: &ResponseHead,
    object: &ObjectSpec,
    first_byte: u64,
    last_byte: u64,
) -> Result<u64, Failure> {
    if !matches!(head.status, 200 | 206) {
        return Err(status_failure(conn, head, object).await);
    }
    check_range_head(head, object, first_byte, last_byte)
}

/// Checks a 200 or 206 answer to the GET of bytes `first_byte..=last_byte`
/// of `object` (a 200 only where that is the whole object): its version,
/// range, size and framing. Returns the body's length. I/O-free: an error
/// status's body is read first (`check_head`). Small objects and chunks
/// share it, so the same answer gets the same verdict.
pub(super) fn check_range_head(
    head: &ResponseHead,
    object: &ObjectSpec,
    first_byte: u64,
    last_byte: u64,
) -> Result<u64, Failure> {
    debug_assert!(matches!(head.status, 200 | 206), "status {}", head.status);
    let size = object.size_bytes;
    let requested = last_byte - first_byte + 1;
    // The version first: what the sizes below mean depends on it.
    check_version(head, object)?;
    match head.status {
        206 => {
            let Some(range) = head.content_range else {
                return Err(Failure::protocol("206 without Content-Range"));
            };
            if range.first != first_byte || range.last != last_byte {
                return Err(Failure::protocol(format!(
                    "Content-Range bytes {}-{} does not match the requested {first_byte}-{last_byte}",
                    range.first, range.last
                )));
            }
            if let Some(total) = range.complete_length.filter(|&total| total != size) {
                return Err(size_differs(
                    head,
                    object,
                    total,
                    format!(
                        "the size changed: Content-Range says {total} bytes, not the {size} expected"
                    ),
                ));
            }
        }
        // A whole-object answer is fine when the whole object was asked for.
        200 if first_byte == 0 && last_byte + 1 == size => {}
        _ => {
            return Err(Failure::protocol(
                "200 (whole object) where a range was requested",
            ));
        }
    }
    if head.chunked {
        return Err(Failure::protocol(
            "chunked body where a length was expected",
        ));
    }
    match head.content_length {
        Some(length) if length == requested => Ok(requested),
        // The whole object, of another length: it changed.
        Some(length) if head.status == 200 => Err(size_differs(
            head,
            object,
            length,
            format!(
                "the size changed: Content-Length {length} is not the {requested} bytes expected"
            ),
        )),
        // Content-Range and the object's size matched: a broken reply.
        Some(length) => Err(Failure::protocol(format!(
            "Content-Length {length} is not the {requested} bytes of range {first_byte}-{last_byte}"
        ))),
        None => Err(Failure::protocol("response without Content-Length")),
    }
}

/// A size that is not the listed one (`what`), in an answer `check_version`
/// let through: the object changed, unless the answer names the very
/// version that was listed (its file id, a B2 version's content never
/// changes; or its validator): then it is a broken reply, retried like one.
pub(super) fn size_differs(
    head: &ResponseHead,
    object: &ObjectSpec,
    said_bytes: u64,
    what: String,
) -> Failure {
    let same_version = object
        .expect_file_id
        .as_deref()
        .is_some_and(|id| head.header("x-bz-file-id") == Some(id))
        || object.validator.as_ref().is_some_and(|validator| {
            head.header(validator.header)
                .is_some_and(|seen| validator.matches(seen))
        });
    match (same_version, object.expect_file_id.is_some()) {
        (true, _) => Failure {
            size_dispute: Some(SizeDispute {
                expected_bytes: object.size_bytes,
                said_bytes,
            }),
            ..Failure::protocol(format!("{what}, in an answer of the listed version"))
        },
        (false, true) => Failure::object(format!("{what}; the object changed since it was listed")),
        // A plain URL's size came from its probe, not a listing.
        (false, false) => Failure::object(format!(
            "{what}; the object changed on the origin during the download: \
             run the command again to fetch the new version"
        )),
    }
}

/// That an answer is of the version the download began with: B2's
/// `x-bz-file-id` (no newer upload under the same name spliced into the
/// file), or a plain URL's ETag / Last-Modified (`Validator`).
pub(super) fn check_version(head: &ResponseHead, object: &ObjectSpec) -> Result<(), Failure> {
    if let Some(expected) = object.expect_file_id.as_deref() {
        match head.header("x-bz-file-id") {
            Some(id) if id == expected => {}
            Some(id) => {
                return Err(Failure::object(format!(
                    "x-bz-file-id {id:?} is not the listed version {expected}; the object was replaced"
                )));
            }
            // A proxy, CDN or mirror in front of B2 that drops B2's
            // headers: nothing says which version it serves.
            None => {
                return Err(Failure::object(format!(
                    "the answer carries no x-bz-file-id, so nothing says it is the listed version {expected}: \
                     the download host (a proxy or mirror?) drops B2's x-bz-* headers; let them through"
                )));
            }
        }
    }
    if let Some(validator) = &object.validator {
        if let Some(seen) = head.header(validator.header) {
            if !validator.matches(seen) {
                // As sent, when printable: an ETag carries its own quotes.
                let shown = |value: &str| match value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                    true => value.to_string(),
                    false => format!("{value:?}"),
                };
                return Err(Failure::object(format!(
                    "the object changed on the origin during the download ({} {} at the start, {} now); \
                     run the command again to fetch the new version",
                    validator.header,
                    shown(&validator.value),
                    shown(seen)
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_range_head;
    use crate::engine::failure::{FailureKind, SizeDispute};
    use crate::engine::scheduler::ObjectSpec;
    use crate::http::parse_response_head;

    const SIZE: u64 = 1000;

    fn object(file_id: Option<&str>) -> ObjectSpec {
        ObjectSpec {
            path_and_query: "/file/b/o".into(),
            display_name: "b2://b/o".into(),
            expect_file_id: file_id.map(String::from),
            validator: None,
            sse_c: None,
            plain_url: file_id.is_none(),
            size_bytes: SIZE,
            expected_sha1: None,
            fsync: false,
        }
    }

    /// The verdict on `head` (status line and headers) for bytes
    /// `first..=last`: the body length, or the failure's kind.
    fn verdict(
        head: &str,
        file_id: Option<&str>,
        first: u64,
        last: u64,
    ) -> Result<u64, FailureKind> {
        let text = format!("{head}\r\n\r\n");
        let head = parse_response_head(text.as_bytes()).unwrap().unwrap();
        check_range_head(&head, &object(file_id), first, last).map_err(|failure| failure.kind)
    }

    /// The size an answer disputes, if any.
    fn dispute(head: &str, file_id: Option<&str>, first: u64, last: u64) -> Option<SizeDispute> {
        let text = format!("{head}\r\n\r\n");
        let head = parse_response_head(text.as_bytes()).unwrap().unwrap();
        check_range_head(&head, &object(file_id), first, last)
            .err()
            .and_then(|failure| failure.size_dispute)
    }

    #[test]
    fn small_objects_and_chunks_get_one_verdict_per_answer() {
        let id = Some("4_z1");
        let ok_206 = "HTTP/1.1 206 P\r\nx-bz-file-id: 4_z1\r\nContent-Range: bytes 100-199/1000\r\nContent-Length: 100";
        assert_eq!(verdict(ok_206, id, 100, 199), Ok(100));
        // Another range, or another length of the range asked for: broken.
        assert_eq!(verdict(ok_206, id, 100, 299), Err(FailureKind::Protocol));
        let short = "HTTP/1.1 206 P\r\nx-bz-file-id: 4_z1\r\nContent-Range: bytes 100-199/1000\r\nContent-Length: 99";
        assert_eq!(verdict(short, id, 100, 199), Err(FailureKind::Protocol));
        let no_range = "HTTP/1.1 206 P\r\nx-bz-file-id: 4_z1\r\nContent-Length: 100";
        assert_eq!(verdict(no_range, id, 100, 199), Err(FailureKind::Protocol));
        // Another version: the object was replaced.
        let other = "HTTP/1.1 206 P\r\nx-bz-file-id: 4_z2\r\nContent-Range: bytes 100-199/1000\r\nContent-Length: 100";
        assert_eq!(verdict(other, id, 100, 199), Err(FailureKind::Object));
        // Another total size: in the listed version's own answer, broken;
        // with nothing to say which version (a plain URL), it changed.
        let bigger = "HTTP/1.1 206 P\r\nx-bz-file-id: 4_z1\r\nContent-Range: bytes 100-199/2000\r\nContent-Length: 100";
        assert_eq!(verdict(bigger, id, 100, 199), Err(FailureKind::Protocol));
        // ... which disputes the planned size: a second such answer ends
        // the retries (`Retries::next_attempt`).
        assert_eq!(
            dispute(bigger, id, 100, 199),
            Some(SizeDispute {
                expected_bytes: SIZE,
                said_bytes: 2000
            })
        );
        assert_eq!(dispute(short, id, 100, 199), None);
        let bigger = "HTTP/1.1 206 P\r\nContent-Range: bytes 100-199/2000\r\nContent-Length: 100";
        assert_eq!(dispute(bigger, None, 100, 199), None);
        assert_eq!(verdict(bigger, None, 100, 199), Err(FailureKind::Object));
        // A 200 is the whole object: fine where that was asked for.
        let whole = "HTTP/1.1 200 OK\r\nContent-Length: 1000";
        assert_eq!(verdict(whole, None, 0, SIZE - 1), Ok(SIZE));
        assert_eq!(verdict(whole, None, 0, 499), Err(FailureKind::Protocol));
        assert_eq!(
            verdict(whole, None, 500, SIZE - 1),
            Err(FailureKind::Protocol)
        );
        // ... of another length, it changed (a small object and a
        // one-chunk large object used to disagree here).
        let shrunk = "HTTP/1.1 200 OK\r\nContent-Length: 900";
        assert_eq!(verdict(shrunk, None, 0, SIZE - 1), Err(FailureKind::Object));
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked";
        assert_eq!(
            verdict(chunked, None, 0, SIZE - 1),
            Err(FailureKind::Protocol)
        );
        let lengthless = "HTTP/1.1 200 OK\r\nConnection: close";
        assert_eq!(
            verdict(lengthless, None, 0, SIZE - 1),
            Err(FailureKind::Protocol)
        );
    }
}

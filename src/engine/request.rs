//! One GET on a core's connection slot, shared by small objects and chunks:
//! connect if the slot is empty, send the request, read the response head.

use std::time::Instant;

use super::failure::{Failure, FailureKind, conn_failure};
use super::scheduler::Core;
use crate::client::conn::Connection;
use crate::http::{self, ResponseHead};
use crate::stats::Stage;

/// Sends `GET path_and_query` (with `Range` when given, the account's
/// token, and `If-Match` when given) on `connection`, opening it first if
/// needed, and returns the response head. Records connect, TLS handshake and
/// time to first byte.
pub(super) async fn get_head(
    core: &Core,
    connection: &mut Option<Connection>,
    path_and_query: &str,
    range: Option<(u64, u64)>,
    if_match: Option<&str>,
) -> Result<ResponseHead, Failure> {
    let source = &core.shared.source;
    if connection.is_none() {
        let record = |stage, elapsed| core.record(stage, elapsed);
        let opened = Connection::open(
            &source.origin,
            source.tls.as_ref(),
            core.shared.config.timeout,
            &record,
        )
        .await;
        *connection = Some(opened.map_err(conn_failure)?);
    }
    let conn = connection.as_mut().expect("connected");
    let token = source.auth.as_ref().map(|auth| auth.token());
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(token) = token.as_deref() {
        headers.push(("Authorization", token));
    }
    if let Some(etag) = if_match {
        headers.push(("If-Match", etag));
    }
    let mut request = Vec::with_capacity(512);
    http::write_get_request(
        &mut request,
        "GET",
        &source.origin.host_header(),
        path_and_query,
        range,
        &headers,
    )
    .map_err(|error| Failure {
        detail: error.to_string(),
        kind: FailureKind::Object,
        retry_after_s: None,
    })?;
    let sent = Instant::now();
    conn.send(request).await.map_err(conn_failure)?;
    let head = conn.read_head().await.map_err(conn_failure)?;
    core.record(Stage::Ttfb, sent.elapsed());
    Ok(head)
}

/// B2: a download must come from the listed version of the object (no
/// newer upload under the same name spliced into the file).
pub(super) fn check_file_id(head: &ResponseHead, expected: Option<&str>) -> Result<(), Failure> {
    let Some(expected) = expected else {
        return Ok(());
    };
    match head.header("x-bz-file-id") {
        Some(id) if id == expected => Ok(()),
        other => Err(Failure {
            detail: format!(
                "x-bz-file-id {:?} is not the listed version {expected}; the object was replaced",
                other.unwrap_or("")
            ),
            kind: FailureKind::Object,
            retry_after_s: None,
        }),
    }
}

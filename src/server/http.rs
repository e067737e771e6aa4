//! Request routing, B2 error responses and downloads. Every response goes
//! through here, so fail/throttle faults and the access log are
//! applied in one place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::access_log::AccessRecord;
use super::api::{self, Params};
use super::auth::{DownloadGrant, TokenError, now_ms};
use super::body::{FileBody, ServeBody};
use super::config::{
    API_REQUEST_BODY_MAX_BYTES, REQUEST_HEAD_TIMEOUT_S, SMALL_OBJECT_INLINE_BYTES,
};
use super::encoding::{
    RangeRequest, b2_url_encode, echoed, parse_query, parse_range, percent_decode,
};
use super::fault_io::WriteCut;
use super::faults::{BodyFault, ConnFault, HeadFault, RangeFault, TokenBucket};
use super::store::{self, OpenError};
use super::{AuthorizeRefusal, Server};
use crate::b2::KeyRefusal;
use crate::b2::sse::{HEADER_ALGORITHM, HEADER_KEY_MD5, SSE_C_ALGORITHM};

/// A B2 error: HTTP status, `code`, `message` (body `{status, code, message}`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    retry_after_s: Option<u64>,
    fault: Option<&'static str>,
    content_range: Option<String>,
    /// Answer with `Connection: close` (the request body was not read whole).
    close_connection: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            fault: None,
            content_range: None,
            close_connection: false,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn bad_request_code(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
    fn token(error: TokenError) -> ApiError {
        match error {
            TokenError::Bad => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_auth_token",
                "invalid authorization token",
            ),
            TokenError::Expired => {
                let mut error = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "expired_auth_token",
                    "authorization token has expired",
                );
                error.fault = Some("expired_token");
                error
            }
        }
    }
}

/// Per-connection state: the `--rate-per-conn` token bucket, the number of
/// requests answered before (keep-alive faults need a reused connection) and
/// the cut of the connection faults.
pub struct Connection {
    /// Accept order, from 0 (the access log's `connection`).
    pub id: u64,
    pub limiter: Option<Arc<Mutex<TokenBucket>>>,
    pub requests_served: AtomicU64,
    pub write_cut: Arc<WriteCut>,
}

impl Connection {
    /// Applies a connection fault to the response about to be sent.
    fn apply(&self, fault: ConnFault, context: &mut RequestContext) {
        match fault {
            ConnFault::None => {}
            ConnFault::ResetHead { at_bytes } => {
                self.write_cut.arm(at_bytes);
                context.conn_fault = Some("reset_head");
            }
            ConnFault::CloseKeepAlive => {
                self.write_cut.arm(0);
                context.conn_fault = Some("close_keepalive");
            }
        }
    }
}

struct RequestContext {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    range: Option<String>,
    authorization: Option<String>,
    /// The SSE-C headers: algorithm, key, key MD5.
    sse_c: [Option<String>; 3],
    record: AccessRecord,
    /// Set when a connection fault cuts this response (for the access log).
    conn_fault: Option<&'static str>,
}

impl RequestContext {
    fn token(&self) -> Option<&str> {
        self.authorization.as_deref().or_else(|| {
            self.query
                .iter()
                .find(|(key, _)| key == "Authorization")
                .map(|(_, value)| value.as_str())
        })
    }

    /// The key of the fault dice: method, path, query (tokens left out), range, body.
    fn fault_key(&self, body: &[u8]) -> String {
        let query: Vec<String> = self
            .query
            .iter()
            .filter(|(key, _)| key != "Authorization")
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        format!(
            "{} {}?{} {} {}",
            self.method,
            self.path,
            query.join("&"),
            self.range.as_deref().unwrap_or(""),
            String::from_utf8_lossy(body)
        )
    }
}

fn header_text(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

pub async fn handle(
    server: Arc<Server>,
    connection: Arc<Connection>,
    request: Request<Incoming>,
) -> Result<Response<ServeBody>, std::convert::Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let range = header_text(&request, "range");
    let record = AccessRecord {
        time_ms: now_ms(),
        method: method.to_string(),
        path: path.clone(),
        bucket: None,
        name: None,
        range: range.clone(),
        status: 0,
        bytes_sent: 0,
        fault: None,
        connection: connection.id,
        sse_c_key: request
            .headers()
            .contains_key(crate::b2::sse::REQUEST_HEADERS[1]),
    };
    let mut context = RequestContext {
        method,
        path,
        query: Vec::new(),
        range,
        authorization: header_text(&request, "authorization"),
        sse_c: crate::b2::sse::REQUEST_HEADERS.map(|name| header_text(&request, name)),
        record,
        conn_fault: None,
    };
    let reused = connection.requests_served.fetch_add(1, Ordering::Relaxed) > 0;
    let response = match request
        .uri()
        .query()
        .map(parse_query)
        .unwrap_or(Ok(Vec::new()))
    {
        Ok(query) => {
            context.query = query;
            route(&server, &connection, reused, &mut context, request).await
        }
        Err(message) => Err(ApiError::bad_request(message)),
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => error_response(&server, &mut context, error),
    };
    Ok(response)
}

fn error_response(
    server: &Server,
    context: &mut RequestContext,
    error: ApiError,
) -> Response<ServeBody> {
    let body =
        json!({"status": error.status.as_u16(), "code": error.code, "message": error.message});
    let text = serde_json::to_vec(&body).expect("error body serialises");
    let is_head = context.method == Method::HEAD;
    let mut builder = Response::builder()
        .status(error.status)
        .header("content-type", "application/json")
        .header("cache-control", "max-age=0, no-cache, no-store");
    if let Some(seconds) = error.retry_after_s {
        builder = builder.header("retry-after", seconds.to_string());
    }
    if let Some(content_range) = &error.content_range {
        builder = builder.header("content-range", content_range.as_str());
    }
    if error.close_connection {
        builder = builder.header("connection", "close");
    }
    context.record.status = error.status.as_u16();
    context.record.fault = context.conn_fault.or(error.fault).map(str::to_string);
    context.record.bytes_sent = if is_head { 0 } else { text.len() as u64 };
    if let Some(log) = &server.access_log {
        log.write(&context.record);
    }
    if error.status.is_server_error() {
        say!(
            "ringdown serve: {} {}: {} {}",
            context.method,
            echoed(&context.path),
            error.code,
            error.message
        );
    }
    let body = if is_head {
        ServeBody::empty()
    } else {
        ServeBody::bytes(text)
    };
    builder.body(body).expect("valid error response")
}

fn json_response(
    server: &Server,
    context: &mut RequestContext,
    text: Vec<u8>,
) -> Response<ServeBody> {
    context.record.status = 200;
    context.record.fault = context.conn_fault.map(str::to_string);
    context.record.bytes_sent = text.len() as u64;
    if let Some(log) = &server.access_log {
        log.write(&context.record);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "max-age=0, no-cache, no-store")
        .body(ServeBody::bytes(text))
        .expect("valid json response")
}

fn head_fault_error(server: &Server, fault: HeadFault) -> Option<ApiError> {
    match fault {
        HeadFault::None => None,
        HeadFault::Fail => {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "injected fault: service unavailable",
            );
            error.retry_after_s = Some(1);
            error.fault = Some("fail");
            Some(error)
        }
        HeadFault::Throttle => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "injected fault: too many requests",
            );
            error.retry_after_s = server.faults.config.retry_after_s;
            error.fault = Some("throttle");
            Some(error)
        }
        HeadFault::Status(fault) => {
            let status =
                StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = match fault.status {
                408 => "request_timeout",
                429 => "too_many_requests",
                500 => "internal_error",
                503 => "service_unavailable",
                _ => "injected_status",
            };
            let mut error = ApiError::new(status, code, format!("injected fault: {status}"));
            error.retry_after_s = fault.retry_after_s;
            error.fault = Some("status");
            Some(error)
        }
    }
}

/// The buffer for the whole content of an object of `size_bytes`, if it is
/// small enough to be read at once (at most `SMALL_OBJECT_INLINE_BYTES`).
fn small_object_buffer(size_bytes: u64) -> Option<Vec<u8>> {
    (size_bytes > 0 && size_bytes <= SMALL_OBJECT_INLINE_BYTES as u64)
        .then(|| Vec::with_capacity(size_bytes as usize))
}

/// Fills `whole` (up to its capacity) with what the page cache holds of the
/// file, without blocking; false when the rest needs a blocking read. The
/// end of the file (it shrank since its `fstat`) counts as complete.
fn read_cached(file: &std::fs::File, whole: &mut Vec<u8>) -> bool {
    while whole.len() < whole.capacity() {
        match crate::uring::pread_cached(file, whole, whole.len() as u64) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Fills the rest of `whole` (up to its capacity) from the file, blocking.
/// Read into the spare capacity: zeroing it first cost 4% of the server's
/// CPU on 64 KiB objects (h44).
fn read_rest(file: &std::fs::File, whole: &mut Vec<u8>) -> std::io::Result<()> {
    while whole.len() < whole.capacity() {
        let offset = whole.len() as u64;
        if rustix::io::pread(file, rustix::buffer::spare_capacity(&mut *whole), offset)? == 0 {
            break;
        }
    }
    Ok(())
}

/// `find_object` when nothing in it can block: the bucket known (by ID) or
/// named, the object's path in the kernel's lookup cache, no history of
/// the name (by name), its digest in the SHA1 cache. `None` in every other
/// case, failures included: `find_object` on a blocking thread then does
/// it all again, and says why a request fails.
fn find_cached(server: &Server, target: &Target) -> Option<(std::fs::File, api::ObjectView)> {
    let store = &server.store;
    let (bucket, name) = match target {
        Target::Name { bucket, name } => {
            api::check_read(server, bucket, name).ok()?;
            (store::bucket_named(bucket)?, name.clone())
        }
        Target::Id(file_id) => {
            let (bucket_id, name) = store::parse_file_id(file_id)?;
            let bucket = store.known_bucket(&bucket_id)?;
            api::check_read(server, &bucket.name, &name).ok()?;
            (bucket, name)
        }
    };
    let (file, meta) = store.open_object_cached(&bucket, &name)?;
    let current = match target {
        Target::Name { .. } => store.has_no_history_cached(&bucket, &name),
        Target::Id(file_id) => meta.file_id == *file_id,
    };
    if !current {
        return None;
    }
    Some((file, api::view_if_cached(server, meta)?))
}

/// Finds the object a download names (by bucket and name, or by ID, an
/// older version's included), opens it and describes the opened file.
/// Blocking: it may read directories, history and the file (to hash it).
fn find_object(
    server: &Server,
    target: Target,
) -> Result<(std::fs::File, api::ObjectView), ApiError> {
    let (bucket, name, expected_id) = match target {
        Target::Name { bucket, name } => {
            api::check_read(server, &bucket, &name)?;
            let bucket = server
                .store
                .bucket_by_name(&bucket)
                .map_err(|error| ApiError::internal(format!("listing buckets: {error}")))?
                .ok_or_else(|| {
                    ApiError::not_found(format!("bucket {} does not exist", echoed(&bucket)))
                })?;
            (bucket, name, None)
        }
        Target::Id(file_id) => {
            let (bucket, name) = api::object_by_id(server, &file_id)?;
            api::check_read(server, &bucket.name, &name)?;
            (bucket, name, Some(file_id))
        }
    };
    let opened = match server.store.open_object(&bucket, &name) {
        Ok((file, meta)) => match &expected_id {
            // By name: unless the name's newest version is a hide marker.
            None if server
                .store
                .hidden_since(&bucket, &name)
                .is_some_and(|hidden_ms| hidden_ms >= meta.mtime_ms) =>
            {
                Err(OpenError::NotFound)
            }
            None => Ok((file, meta)),
            Some(id) if *id == meta.file_id => Ok((file, meta)),
            // By the ID of an older version (`DIR/.versions`).
            Some(id) => server.store.open_version(&bucket, &name, id),
        },
        Err(OpenError::NotFound) if expected_id.is_some() => {
            let id = expected_id.as_deref().expect("checked");
            server.store.open_version(&bucket, &name, id)
        }
        Err(error) => Err(error),
    };
    let quoted = echoed(&name);
    let (file, meta) = opened.map_err(|error| match error {
        OpenError::InvalidName => {
            ApiError::bad_request(format!("file name not allowed: {quoted:?}"))
        }
        OpenError::NotFound => ApiError::not_found(format!("file not present: {quoted}")),
        OpenError::Io(error) => ApiError::internal(format!("opening {quoted}: {error}")),
    })?;
    let view = api::view_of(server, meta, &file)
        .map_err(|error| ApiError::internal(format!("hashing {quoted}: {error}")))?;
    Ok((file, view))
}

/// Runs blocking store work (stat, hash, walk) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(ApiError::internal(format!("worker failed: {error}"))))
}

async fn route(
    server: &Arc<Server>,
    connection: &Arc<Connection>,
    reused: bool,
    context: &mut RequestContext,
    request: Request<Incoming>,
) -> Result<Response<ServeBody>, ApiError> {
    if let Some(rest) = context.path.strip_prefix("/file/") {
        if context.method != Method::GET && context.method != Method::HEAD {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "downloads take GET or HEAD",
            ));
        }
        let (bucket, encoded_name) = rest
            .split_once('/')
            .ok_or_else(|| ApiError::bad_request("download path must be /file/BUCKET/NAME"))?;
        let bucket = percent_decode(bucket, false)
            .ok_or_else(|| ApiError::bad_request("bad bucket name encoding"))?;
        let name = percent_decode(encoded_name, false)
            .ok_or_else(|| ApiError::bad_request("bad file name encoding"))?;
        return download(
            server,
            connection,
            reused,
            context,
            Target::Name { bucket, name },
        )
        .await;
    }
    let Some(rest) = context.path.strip_prefix("/b2api/v") else {
        return Err(ApiError::not_found(format!(
            "no such path: {}",
            echoed(&context.path)
        )));
    };
    let (version, operation) = rest
        .split_once('/')
        .and_then(|(version, operation)| Some((version.parse::<u8>().ok()?, operation.to_string())))
        .filter(|(version, _)| (1..=4).contains(version))
        .ok_or_else(|| ApiError::not_found(format!("no such path: {}", echoed(&context.path))))?;

    if operation == "b2_download_file_by_id" {
        // As on B2 (and /file/...): a download is a GET or a HEAD.
        if context.method != Method::GET && context.method != Method::HEAD {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "b2_download_file_by_id takes GET or HEAD, with ?fileId=",
            ));
        }
        let file_id = context
            .query
            .iter()
            .find(|(key, _)| key == "fileId")
            .map(|(_, value)| value.clone())
            .ok_or_else(|| ApiError::bad_request("required parameter fileId is missing"))?;
        return download(server, connection, reused, context, Target::Id(file_id)).await;
    }

    if context.method != Method::GET && context.method != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "API calls take GET or POST",
        ));
    }
    // Everything the head decides is checked before the body is read, so a
    // client without credentials cannot hold a connection by sending none.
    let authorizing = operation == "b2_authorize_account";
    if authorizing {
        if !server
            .credentials
            .check_basic(context.authorization.as_deref())
        {
            return Err(ApiError::unauthorized(
                "invalid application key id or application key",
            ));
        }
    } else {
        server
            .tokens
            .check(context.authorization.as_deref())
            .map_err(ApiError::token)?;
        if !API_CALLS.contains(&operation.as_str()) {
            return Err(ApiError::not_found(format!(
                "unsupported API call: {}",
                echoed(&operation)
            )));
        }
    }
    let body_bytes: Bytes = if context.method == Method::POST {
        read_api_body(request).await?
    } else {
        Bytes::new()
    };
    let params = if context.method == Method::POST {
        Params::from_json(&body_bytes)?
    } else {
        Params::from_query(context.query.clone())
    };

    if authorizing {
        if let Some(refusal) = server.authorize_refusal() {
            let (status, code) = match refusal {
                AuthorizeRefusal::Outage => {
                    (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
                }
                AuthorizeRefusal::Revoked => (StatusCode::UNAUTHORIZED, "unauthorized"),
                AuthorizeRefusal::Cap => (StatusCode::FORBIDDEN, "transaction_cap_exceeded"),
            };
            return Err(ApiError::new(
                status,
                code,
                "--authorize-max: no more authorizations",
            ));
        }
        let value = api::authorize_account(server, version)?;
        return Ok(json_response(server, context, api::to_body(&value)));
    }

    let fault_key = context.fault_key(&body_bytes);
    let dice = server.faults.roll(&fault_key);
    connection.apply(server.faults.conn_fault(dice.as_ref(), reused), context);
    if let Some(error) = head_fault_error(server, server.faults.head_fault(dice.as_ref())) {
        return Err(error);
    }

    let worker_server = server.clone();
    let value = blocking(move || {
        let server = &*worker_server;
        match operation.as_str() {
            "b2_list_buckets" => {
                api::list_buckets(server, &params).map(|value| api::to_body(&value))
            }
            "b2_list_file_names" => api::list_files(server, &params, false),
            "b2_list_file_versions" => api::list_files(server, &params, true),
            "b2_get_file_info" => api::get_file_info(server, &params),
            "b2_get_download_authorization" => {
                api::get_download_authorization(server, &params).map(|value| api::to_body(&value))
            }
            other => Err(ApiError::not_found(format!(
                "unsupported API call: {}",
                echoed(other)
            ))),
        }
    })
    .await?;
    Ok(json_response(server, context, value))
}

/// The API calls served besides `b2_authorize_account` (and downloads).
const API_CALLS: [&str; 5] = [
    "b2_list_buckets",
    "b2_list_file_names",
    "b2_list_file_versions",
    "b2_get_file_info",
    "b2_get_download_authorization",
];

/// The JSON body of an API call: at most `API_REQUEST_BODY_MAX_BYTES`, whole
/// within `REQUEST_HEAD_TIMEOUT_S` (as the head must be), else 408 and the
/// connection is closed: a client that stops sending would hold it forever.
async fn read_api_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let reading = Limited::new(request.into_body(), API_REQUEST_BODY_MAX_BYTES).collect();
    match tokio::time::timeout(Duration::from_secs(REQUEST_HEAD_TIMEOUT_S), reading).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) => {
            let mut error = ApiError::bad_request(format!(
                "request body unreadable or over {API_REQUEST_BODY_MAX_BYTES} bytes: {error}"
            ));
            error.close_connection = true;
            Err(error)
        }
        Err(_) => {
            let mut error = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {REQUEST_HEAD_TIMEOUT_S} s; send it with the head"
                ),
            );
            error.close_connection = true;
            Err(error)
        }
    }
}

enum Target {
    Name { bucket: String, name: String },
    Id(String),
}

async fn download(
    server: &Arc<Server>,
    connection: &Arc<Connection>,
    reused: bool,
    context: &mut RequestContext,
    target: Target,
) -> Result<Response<ServeBody>, ApiError> {
    let grant = server
        .tokens
        .check_download(context.token())
        .map_err(ApiError::token)?;
    // A download-authorization token reaches its bucket and prefix only;
    // checked before the object is looked up, as the key's restriction is.
    let granted = |bucket_id: &str, name: &str| {
        if grant.allows(bucket_id, name) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "the download authorization does not cover this file",
            ))
        }
    };
    match &target {
        Target::Name { bucket, name } => granted(&store::bucket_id_for(bucket), name)?,
        Target::Id(file_id) => {
            if let Some((bucket_id, name)) = store::parse_file_id(file_id) {
                granted(&bucket_id, &name)?;
            } else if grant != DownloadGrant::Account {
                return Err(ApiError::unauthorized(
                    "the download authorization does not cover this file",
                ));
            }
        }
    }

    // Where nothing can block (the usual warm case), the object is found
    // and read on this worker: the hop to a blocking thread and back cost
    // the server 7–12% of its CPU (h44). Else, or when its bytes are not
    // all in the page cache, a blocking thread does it.
    let (file, view, whole) = match find_cached(server, &target) {
        Some((file, view)) => {
            let mut whole = small_object_buffer(view.meta.size_bytes);
            let complete = whole.as_mut().is_none_or(|whole| read_cached(&file, whole));
            if complete {
                (file, view, whole)
            } else {
                let quoted = echoed(&view.meta.name).into_owned();
                let mut whole = whole.expect("only a small object is read");
                let (file, whole) = blocking(move || {
                    read_rest(&file, &mut whole).map_err(|error| {
                        ApiError::internal(format!("reading {quoted}: {error}"))
                    })?;
                    Ok((file, whole))
                })
                .await?;
                (file, view, Some(whole))
            }
        }
        None => {
            let worker_server = server.clone();
            blocking(move || {
                let (file, view) = find_object(&worker_server, target)?;
                // A small object is read here too, on the same blocking
                // thread: one hop per request instead of two (the hops cost
                // more than the read).
                let mut whole = small_object_buffer(view.meta.size_bytes);
                if let Some(whole) = whole.as_mut() {
                    read_rest(&file, whole).map_err(|error| {
                        ApiError::internal(format!("reading {}: {error}", echoed(&view.meta.name)))
                    })?;
                }
                Ok((file, view, whole))
            })
            .await?
        }
    };
    let whole = whole.map(Bytes::from);
    context.record.bucket = Some(view.meta.bucket.name.clone());
    context.record.name = Some(view.meta.name.clone());
    let sse_c_key = server.sse_c_key(&view.meta.name);
    if let Some(key) = sse_c_key {
        let [algorithm, sent, md5] = context.sse_c.each_ref().map(Option::as_deref);
        key.check_request(algorithm, sent, md5)
            .map_err(|refusal| match refusal {
                KeyRefusal::Missing | KeyRefusal::Wrong => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "access_denied",
                    "the SSE-C key is missing or is not this file's",
                ),
                KeyRefusal::Malformed(why) => ApiError::bad_request(why),
            })?;
    }

    let size_bytes = view.meta.size_bytes;
    let (status, start, body_bytes) = match parse_range(context.range.as_deref(), size_bytes) {
        RangeRequest::Whole => (StatusCode::OK, 0, size_bytes),
        RangeRequest::Slice { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeRequest::Unsatisfiable => {
            let mut error = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!(
                    "range {} is outside the {size_bytes}-byte file",
                    echoed(context.range.as_deref().unwrap_or(""))
                ),
            );
            error.content_range = Some(format!("bytes */{size_bytes}"));
            return Err(error);
        }
    };

    let fault_key = context.fault_key(b"");
    let dice = server.faults.roll(&fault_key);
    connection.apply(server.faults.conn_fault(dice.as_ref(), reused), context);
    if let Some(error) = head_fault_error(server, server.faults.head_fault(dice.as_ref())) {
        return Err(error);
    }
    let is_head = context.method == Method::HEAD;
    // The framing faults are of bodies, as their help says: a HEAD sends
    // none, and one that gave a short Content-Length would be a probe that
    // lies about the object's size (h34 #3), which no flag promises.
    let range_fault = if is_head {
        RangeFault::None
    } else {
        server.faults.range_fault(
            dice.as_ref(),
            status == StatusCode::PARTIAL_CONTENT,
            body_bytes,
            size_bytes,
        )
    };
    // What the head says (`claimed_*`) and what is sent differ only for the
    // framing faults.
    let (status, start, body_bytes, claimed_first, claimed_last) = match range_fault {
        RangeFault::None => (
            status,
            start,
            body_bytes,
            start,
            start + body_bytes.max(1) - 1,
        ),
        RangeFault::IgnoreRange => (StatusCode::OK, 0, size_bytes, 0, size_bytes.max(1) - 1),
        RangeFault::WrongRange => {
            let last = start + body_bytes - 1;
            // Shifted by one byte, or cut by one where it cannot shift.
            let (first, last) = if last + 1 < size_bytes {
                (start + 1, last + 1)
            } else if start > 0 {
                (start - 1, last - 1)
            } else {
                (start, last - 1)
            };
            (status, start, body_bytes, first, last)
        }
        RangeFault::LongBody { missing_bytes } => (
            status,
            start,
            body_bytes - missing_bytes,
            start,
            start + body_bytes - 1,
        ),
    };
    let body_fault = if is_head {
        BodyFault::None
    } else {
        server.faults.body_fault(dice.as_ref(), body_bytes)
    };

    let mut response = Response::builder()
        .status(status)
        .header("content-type", view.content_type())
        .header("content-length", body_bytes.to_string())
        .header("accept-ranges", "bytes")
        .header("cache-control", "max-age=0")
        .header("x-bz-file-name", b2_url_encode(&view.meta.name))
        .header("x-bz-file-id", view.meta.file_id.as_str())
        .header("x-bz-content-sha1", view.content_sha1())
        .header("x-bz-upload-timestamp", view.meta.mtime_ms.to_string());
    if let Some(key) = sse_c_key {
        response = response
            .header(HEADER_ALGORITHM, SSE_C_ALGORITHM)
            .header(HEADER_KEY_MD5, key.md5_base64());
    }
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            "content-range",
            format!("bytes {claimed_first}-{claimed_last}/{size_bytes}"),
        );
    }
    for (key, value) in view.file_info(server) {
        let name = HeaderName::from_bytes(format!("x-bz-info-{key}").as_bytes())
            .expect("valid header name");
        let value = HeaderValue::from_str(&b2_url_encode(&value)).expect("encoded value is ASCII");
        response = response.header(name, value);
    }

    context.record.status = status.as_u16();
    context.record.fault = context
        .conn_fault
        .or(range_fault.label())
        .or(body_fault.label())
        .map(str::to_string);
    let body = if is_head || body_bytes == 0 {
        if let Some(log) = &server.access_log {
            log.write(&context.record);
        }
        ServeBody::empty()
    } else {
        let log = server
            .access_log
            .clone()
            .map(|log| (log, context.record.clone()));
        // The slice of a small object read above; `None` (a large object, or
        // a file that shrank since) streams from the file.
        let first_block = whole.and_then(|whole| {
            let end = usize::try_from(start + body_bytes).ok()?;
            (end <= whole.len()).then(|| whole.slice(start as usize..end))
        });
        ServeBody::File(Box::new(FileBody::new(
            file,
            start,
            body_bytes,
            first_block,
            body_fault,
            connection.limiter.clone(),
            log,
        )))
    };
    Ok(response.body(body).expect("valid download response"))
}

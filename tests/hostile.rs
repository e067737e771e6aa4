//! Hostile servers and hostile names (issue 7), end to end: a small scriptable
//! fake origin (plain HTTP on 127.0.0.1, one thread per connection) answers
//! `b2_authorize_account` (v3), `b2_list_buckets`, `b2_list_file_names` and
//! downloads, and each test overrides the routes it makes hostile. The real
//! `ringdown get` / `ringdown restore` binaries run against it. A second,
//! HTTPS origin (`TlsOrigin`) lets rustls do the handshake and seals its own
//! TLS 1.3 records after it, to send what rustls never would.
//!
//! Every case asserts: a clear error (the message says what was wrong) or a
//! safe skip, the exit code, no file under the final name, no temporary file
//! left, a bounded run time (`--timeout-s 3`, and a wall-clock bound here),
//! and a bounded peak RSS (VmHWM of the child, polled from /proc).
//!
//! Decisions written down here:
//! - Names that differ only by case (`A.txt`/`a.txt`) or by Unicode
//!   normalisation (NFC `é` vs NFD `e` + U+0301) are different byte strings,
//!   and Linux file systems store bytes: both are restored as distinct files
//!   (as rsync, rclone and `b2 sync` do on Linux). On a case-insensitive file
//!   system the second would meet the first by rename and replace it; this
//!   test runs on a case-sensitive one.
//! - A listing whose `nextFileName` does not move past both the page's start
//!   and its last name is a loop: the restore stops with an error naming it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

const KEY_ID: &str = "hostile-key-id";
const KEY: &str = "hostile-application-key";
const TOKEN: &str = "hostile-token";
const BUCKET: &str = "bkt";
/// Peak RSS allowed to any ringdown run here.
const RSS_MAX_KIB: u64 = 200 * 1024;
/// Wall-clock bound of one run (the client's own stall timeout is 3 s; API
/// calls retry 5 times with backoff of up to ~4 s in total).
const RUN_MAX: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- fake origin

/// One parsed request.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    /// Path without the query string.
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `bytes=a-b` → (a, b).
    fn range(&self) -> Option<(u64, u64)> {
        let spec = self.header("range")?.strip_prefix("bytes=")?;
        let (first, last) = spec.split_once('-')?;
        Some((first.parse().ok()?, last.parse().ok()?))
    }
}

#[derive(Clone)]
struct Object {
    name: String,
    id: String,
    data: Vec<u8>,
}

impl Object {
    fn sha1(&self) -> String {
        hex(&Sha1::digest(&self.data))
    }
}

/// Returns true when it answered the request itself.
type Hook = dyn Fn(&Req, &mut TcpStream) -> bool + Send + Sync;

struct Fake {
    port: u16,
}

impl Fake {
    /// Starts a fake origin with these objects (names in listing order are
    /// sorted by the caller when it matters) and a hook run before the
    /// default routes.
    fn start(
        objects: Vec<(&str, Vec<u8>)>,
        hook: impl Fn(&Req, &mut TcpStream) -> bool + Send + Sync + 'static,
    ) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let objects: Arc<Vec<Object>> = Arc::new(
            objects
                .into_iter()
                .enumerate()
                .map(|(i, (name, data))| Object {
                    name: name.to_string(),
                    id: format!("4_zid{i}"),
                    data,
                })
                .collect(),
        );
        let hook: Arc<Hook> = Arc::new(hook);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let objects = Arc::clone(&objects);
                let hook = Arc::clone(&hook);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    while let Some(req) = read_request(&mut stream) {
                        if !hook(&req, &mut stream) {
                            default_route(&req, &mut stream, port, &objects);
                        }
                    }
                });
            }
        });
        Fake { port }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/plain/{name}", self.port)
    }
}

fn read_request(stream: &mut impl Read) -> Option<Req> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => return None,
        }
        if raw.len() > 64 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (target, String::new()),
    };
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// Writes a complete response (`Connection: close` is left to the caller's
/// headers; the connection stays open for keep-alive otherwise).
fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status} X\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn respond_json(stream: &mut TcpStream, status: u16, value: serde_json::Value) {
    respond(
        stream,
        status,
        &[("Content-Type", "application/json".into())],
        &serde_json::to_vec(&value).unwrap(),
    );
}

/// Writes raw bytes and closes the write side.
/// B2's error answer: `{"status":STATUS,"code":CODE,"message":MESSAGE}`.
fn b2_error(stream: &mut TcpStream, status: u16, code: &str, message: &str) {
    respond_json(
        stream,
        status,
        serde_json::json!({"status": status, "code": code, "message": message}),
    );
}

/// A listing of `entries` in one page; true, as a hook that answered returns.
fn answer_one_page(stream: &mut TcpStream, entries: &[serde_json::Value]) -> bool {
    respond_json(
        stream,
        200,
        serde_json::json!({"files": entries, "nextFileName": null}),
    );
    true
}

fn respond_raw(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Writes `head` then repeats `block` until the peer goes away (or a cap far
/// beyond anything ringdown may read, so a bug shows as a test failure and
/// not as a full disk).
fn respond_endless(stream: &mut TcpStream, head: &[u8], block: &[u8]) {
    if stream.write_all(head).is_err() {
        return;
    }
    let mut written = 0usize;
    while written < 4 << 30 {
        if stream.write_all(block).is_err() {
            return;
        }
        written += block.len();
    }
}

fn authorize_json(port: u16) -> serde_json::Value {
    authorize_json_at(&format!("http://127.0.0.1:{port}"))
}

/// `b2_authorize_account`'s answer naming `base` as API and download host.
fn authorize_json_at(base: &str) -> serde_json::Value {
    serde_json::json!({
        "accountId": "acc1",
        "authorizationToken": TOKEN,
        "apiInfo": {"storageApi": {
            "infoType": "storageApi", "apiUrl": base, "downloadUrl": base, "s3ApiUrl": base,
            "recommendedPartSize": 100_000_000, "absoluteMinimumPartSize": 5_000_000,
            "bucketId": null, "bucketName": null,
            "capabilities": ["listBuckets", "listFiles", "readFiles"], "namePrefix": null
        }}
    })
}

fn file_json(object: &Object) -> serde_json::Value {
    serde_json::json!({
        "accountId": "acc1", "bucketId": "b1", "fileId": object.id, "fileName": object.name,
        "action": "upload", "contentLength": object.data.len(), "contentSha1": object.sha1(),
        "contentType": "application/octet-stream", "fileInfo": {"src_last_modified_millis": "1700000000000"},
        "uploadTimestamp": 1_700_000_000_000u64
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves an object body honouring `Range`.
fn serve_object(req: &Req, stream: &mut TcpStream, object: &Object) {
    let size = object.data.len() as u64;
    let common = vec![
        ("x-bz-file-id", object.id.clone()),
        ("x-bz-file-name", object.name.clone()),
        ("x-bz-content-sha1", object.sha1()),
        ("x-bz-upload-timestamp", "1700000000000".to_string()),
        ("Content-Type", "application/octet-stream".to_string()),
    ];
    if req.method == "HEAD" {
        let mut head = String::from("HTTP/1.1 200 OK\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n");
        for (name, value) in &common {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {size}\r\n\r\n"));
        let _ = stream.write_all(head.as_bytes());
        return;
    }
    match req.range() {
        Some((first, _)) if size == 0 || first >= size => {
            let mut headers = common.clone();
            headers.push(("Content-Range", format!("bytes */{size}")));
            respond(stream, 416, &headers, b"");
        }
        Some((first, last)) => {
            let last = last.min(size - 1);
            let mut headers = common.clone();
            headers.push(("Content-Range", format!("bytes {first}-{last}/{size}")));
            respond(
                stream,
                206,
                &headers,
                &object.data[first as usize..=last as usize],
            );
        }
        None => respond(stream, 200, &common, &object.data),
    }
}

fn default_route(req: &Req, stream: &mut TcpStream, port: u16, objects: &[Object]) {
    let path = req.path.as_str();
    if path.ends_with("/b2_authorize_account") {
        let expected = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{KEY_ID}:{KEY}")
            )
        );
        if req.header("authorization") != Some(expected.as_str()) {
            return b2_error(stream, 401, "unauthorized", "bad key");
        }
        return respond_json(stream, 200, authorize_json(port));
    }
    if path.ends_with("/b2_list_buckets") {
        return respond_json(
            stream,
            200,
            serde_json::json!({"buckets":[{"accountId":"acc1","bucketId":"b1","bucketName":BUCKET,"bucketType":"allPrivate"}]}),
        );
    }
    if path.ends_with("/b2_list_file_names") {
        let files: Vec<serde_json::Value> = objects.iter().map(file_json).collect();
        return respond_json(
            stream,
            200,
            serde_json::json!({"files": files, "nextFileName": null}),
        );
    }
    let found = if path.ends_with("/b2_download_file_by_id") {
        let id = req
            .query
            .split('&')
            .find_map(|pair| pair.strip_prefix("fileId="))
            .map(percent_decode)
            .unwrap_or_default();
        objects.iter().find(|object| object.id == id)
    } else if let Some(name) = path
        .strip_prefix(&format!("/file/{BUCKET}/"))
        .or_else(|| path.strip_prefix("/plain/"))
    {
        let name = percent_decode(name);
        objects.iter().find(|object| object.name == name)
    } else {
        None
    };
    match found {
        Some(object) => serve_object(req, stream, object),
        None => b2_error(stream, 404, "not_found", "no such file"),
    }
}

fn no_hook(_: &Req, _: &mut TcpStream) -> bool {
    false
}

fn is_download(req: &Req) -> bool {
    req.path.ends_with("/b2_download_file_by_id")
        || req.path.starts_with("/file/")
        || req.path.starts_with("/plain/")
}

// ---------------------------------------------------------------- running ringdown

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stderr: String,
    peak_rss_kib: u64,
    elapsed: Duration,
}

impl Run {
    fn assert_bounded(&self) {
        // No sample at all would make the bound below pass vacuously. A run
        // is sampled every ~5 ms once it execs ringdown, so only a run that
        // ends within a few ms (a refusal at once) may go without one.
        assert!(
            self.peak_rss_kib > 0 || self.elapsed < Duration::from_millis(100),
            "RSS never sampled in {:?}",
            self.elapsed
        );
        assert!(
            self.peak_rss_kib <= RSS_MAX_KIB,
            "peak RSS {} KiB > {} KiB; stderr:\n{}",
            self.peak_rss_kib,
            RSS_MAX_KIB,
            self.stderr
        );
        assert!(self.elapsed < RUN_MAX, "took {:?}", self.elapsed);
    }

    /// Exit 1 and stderr naming every one of `needles` (case-insensitive).
    fn assert_failed_with(&self, needles: &[&str]) {
        self.assert_bounded();
        assert_eq!(self.code, Some(1), "exit code; stderr:\n{}", self.stderr);
        let lower = self.stderr.to_lowercase();
        for needle in needles {
            assert!(
                lower.contains(&needle.to_lowercase()),
                "stderr lacks {needle:?}:\n{}",
                self.stderr
            );
        }
        assert!(!self.stderr.contains(TOKEN) && !self.stderr.contains(KEY));
    }
}

/// Runs `ringdown ARGS` with the fake's credentials, polling its peak RSS.
fn ringdown(args: &[&str]) -> Run {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args(args)
        .env("B2_APPLICATION_KEY_ID", KEY_ID)
        .env("B2_APPLICATION_KEY", KEY)
        .env_remove("SSL_CERT_FILE")
        .env_remove("B2_REALM")
        .env_remove("B2_ENVIRONMENT")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .stdin(Stdio::null());
    let mut peak = 0;
    let output = common::run_with_deadline(command, RUN_MAX, |pid| {
        if let Some(rss) = common::peak_rss_kib(pid) {
            peak = peak.max(rss);
        }
    });
    Run {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        peak_rss_kib: peak,
        elapsed: started.elapsed(),
    }
}

const TUNING: [&str; 14] = [
    "--timeout-s",
    "3",
    "--max-attempts",
    "2",
    "--retry-base-ms",
    "5",
    "--retry-max-ms",
    "20",
    "--cores",
    "1",
    "--connections",
    "2",
    "--buffers",
    "4",
];

fn get_b2(fake: &Fake, name: &str, dest: &Path, extra: &[&str]) -> Run {
    let source = format!("b2://{BUCKET}/{name}");
    let realm = fake.realm();
    let mut args = vec![
        "get",
        source.as_str(),
        dest.to_str().unwrap(),
        "--realm",
        &realm,
    ];
    args.extend(TUNING);
    args.extend(extra);
    ringdown(&args)
}

fn get_url(url: &str, dest: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["get", url, dest.to_str().unwrap()];
    args.extend(TUNING);
    args.extend(extra);
    ringdown(&args)
}

/// `ringdown restore` of the fake's bucket into `dir`, with `extra` flags
/// only (not `TUNING`).
fn restore_into(fake: &Fake, dir: &Path, extra: &[&str]) -> Run {
    let source = format!("b2://{BUCKET}");
    let realm = fake.realm();
    let mut args = vec!["restore", &source, dir.to_str().unwrap(), "--realm", &realm];
    args.extend(extra);
    ringdown(&args)
}

fn restore(fake: &Fake, dir: &Path, report: &Path, extra: &[&str]) -> Run {
    let source = format!("b2://{BUCKET}");
    let realm = fake.realm();
    let mut args = vec![
        "restore",
        source.as_str(),
        dir.to_str().unwrap(),
        "--realm",
        &realm,
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend(TUNING);
    args.extend(extra);
    let run = ringdown(&args);
    // Whatever the outcome, no partial file is left (every object here is
    // small: only an interrupted large object keeps its partial).
    let partials: Vec<String> = tree(dir)
        .into_iter()
        .filter(|path| path.ends_with(".part"))
        .collect();
    assert!(partials.is_empty(), "temporary files left: {partials:?}");
    run
}

/// Every path under `root` (relative, sorted), symlinks not followed.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.symlink_metadata().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A `get` failed cleanly: nothing at DEST, nothing else in its directory.
fn assert_nothing_written(dest_dir: &Path) {
    let left = tree(dest_dir);
    assert!(left.is_empty(), "files left behind: {left:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn data(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------- response heads

/// A head of `extra_headers` after a 200/206 status line.
fn head_with(status: &str, extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n{extra}\r\n").into_bytes()
}

/// Each hostile head is answered to every download request (HEAD for b2://,
/// the probe for URLs); both `get` flavours fail with `needle` in the message.
fn assert_hostile_head(head: Vec<u8>, needles: &[&str]) {
    let head = Arc::new(head);
    let fake = Fake::start(vec![("obj", data(1000, 1))], {
        let head = Arc::clone(&head);
        move |req, stream| {
            if is_download(req) {
                respond_raw(stream, &head);
                return true;
            }
            false
        }
    });
    for use_b2 in [true, false] {
        let work = tempfile::tempdir().unwrap();
        let dest_dir = work.path().join("out");
        std::fs::create_dir(&dest_dir).unwrap();
        let dest = dest_dir.join("obj");
        let run = if use_b2 {
            get_b2(&fake, "obj", &dest, &[])
        } else {
            get_url(&fake.url("obj"), &dest, &[])
        };
        run.assert_failed_with(needles);
        assert_nothing_written(&dest_dir);
    }
}

#[test]
fn response_head_over_the_limit() {
    let mut extra = String::new();
    for i in 0..40 {
        extra.push_str(&format!("x-filler-{i}: {}\r\n", "v".repeat(500)));
    }
    assert_hostile_head(
        head_with("200 OK", &extra),
        &["response head", "16384 bytes"],
    );
}

#[test]
fn ten_thousand_headers() {
    let extra: String = (0..10_000).map(|i| format!("h{i}: v\r\n")).collect();
    // The head is also far over 16 KiB: whichever limit trips first, the
    // message names a limit of the response head.
    assert_hostile_head(head_with("200 OK", &extra), &["response head"]);
    // Under the byte limit but over the header count.
    let extra: String = (0..1_000).map(|i| format!("h{i}:v\r\n")).collect();
    assert!(extra.len() < 16 * 1024);
    assert_hostile_head(head_with("200 OK", &extra), &["more than 64 headers"]);
}

#[test]
fn header_line_of_one_mebibyte() {
    let extra = format!("x-long: {}\r\n", "a".repeat(1 << 20));
    assert_hostile_head(
        head_with("200 OK", &extra),
        &["response head", "16384 bytes"],
    );
}

/// A head trickled one byte every 300 ms never trips a per-receive stall
/// timeout; `--timeout-s` bounds the whole head.
#[test]
fn response_head_trickled_byte_by_byte() {
    let head = head_with("200 OK", &format!("x-pad: {}\r\n", "p".repeat(200)));
    let fake = Fake::start(vec![("obj", data(1000, 1))], move |req, stream| {
        if is_download(req) {
            for byte in &head {
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            return true;
        }
        false
    });
    for use_b2 in [true, false] {
        let work = tempfile::tempdir().unwrap();
        let dest_dir = work.path().join("out");
        std::fs::create_dir(&dest_dir).unwrap();
        let dest = dest_dir.join("obj");
        let run = if use_b2 {
            get_b2(&fake, "obj", &dest, &[])
        } else {
            get_url(&fake.url("obj"), &dest, &[])
        };
        run.assert_failed_with(&["response head not complete within 3 s"]);
        assert_nothing_written(&dest_dir);
    }
}

#[test]
fn negative_and_overflowing_content_length() {
    for value in [
        "-1",
        "-0",
        "18446744073709551616",
        "99999999999999999999999999",
        "1e3",
        "0x10",
    ] {
        let extra = format!(
            "Content-Length: {value}\r\nContent-Range: bytes 0-0/1000\r\nx-bz-content-sha1: none\r\n"
        );
        assert_hostile_head(
            head_with("206 Partial Content", &extra),
            &["invalid content-length"],
        );
    }
}

#[test]
fn content_range_overflowing_or_beyond_the_object() {
    for (value, needle) in [
        ("bytes 0-0/18446744073709551616", "invalid content-range"),
        ("bytes 0-18446744073709551616/5", "invalid content-range"),
        ("bytes 5-0/1000", "invalid content-range"),
        ("bytes 0-1000/1000", "invalid content-range"),
        ("bytes 2000-2000/1000", "invalid content-range"),
    ] {
        let extra = format!("Content-Length: 1\r\nContent-Range: {value}\r\n");
        assert_hostile_head(head_with("206 Partial Content", &extra), &[needle]);
    }
}

/// The probe claims the largest object a u64 can describe: ringdown must not
/// try to fill the disk, and must not leave a (sparse) file behind.
#[test]
fn content_range_claims_an_exabyte_object() {
    let fake = Fake::start(vec![("obj", data(1000, 2))], |req, stream| {
        if req.path.starts_with("/plain/") {
            let mut head = head_with(
                "206 Partial Content",
                "Content-Length: 1\r\nContent-Range: bytes 0-0/18446744073709551615\r\n",
            );
            head.push(b'x');
            respond_raw(stream, &head);
            return true;
        }
        false
    });
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_url(&fake.url("obj"), &dest_dir.join("obj"), &[]);
    run.assert_failed_with(&[
        "pre-allocating",
        "18446744073709551615 bytes (the announced object size)",
    ]);
    assert_nothing_written(&dest_dir);
}

// ---------------------------------------------------------------- bodies on plain URLs

/// The probe is answered properly; every ranged GET after it gets `answer`.
fn plain_with_hostile_body(
    size: usize,
    answer: impl Fn(&Req, &mut TcpStream) + Send + Sync + 'static,
) -> Fake {
    let probes = AtomicUsize::new(0);
    Fake::start(vec![("obj", data(size, 3))], move |req, stream| {
        if !req.path.starts_with("/plain/") {
            return false;
        }
        if req.range() == Some((0, 0)) && probes.fetch_add(1, Ordering::Relaxed) == 0 {
            return false;
        }
        answer(req, stream);
        true
    })
}

/// The origin ignores Range: 200, chunked, no length, never ends. Such a
/// body is streamed (its size known at its end), so it is stopped once it
/// would leave DEST's file system (here a tmpfs of 16 MiB) with little
/// free: it must not fill it for every other process there.
#[test]
fn endless_chunked_body_instead_of_a_range() {
    let fake = Fake::start(vec![("obj", data(1000, 4))], |req, stream| {
        if req.path.starts_with("/plain/") {
            let block: Vec<u8> = [b"10000\r\n".as_slice(), &[b'z'; 0x10000], b"\r\n"].concat();
            respond_endless(
                stream,
                &head_with("200 OK", "Transfer-Encoding: chunked\r\n"),
                &block,
            );
            return true;
        }
        false
    });
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let Some(_tmpfs) = common::Tmpfs::mount(&dest_dir, "16m") else {
        return;
    };
    let run = get_url(&fake.url("obj"), &dest_dir.join("obj"), &[]);
    run.assert_failed_with(&["without a Content-Length", "an endless body?"]);
    assert_nothing_written(&dest_dir);
}

#[test]
fn endless_chunked_body_on_a_range_response() {
    // Probe fine (1000 bytes), then a 206 with the right Content-Range but a
    // chunked body that never ends.
    let fake = plain_with_hostile_body(1000, |req, stream| {
        let (first, last) = req.range().unwrap_or((0, 999));
        let block: Vec<u8> = [b"10000\r\n".as_slice(), &[b'z'; 0x10000], b"\r\n"].concat();
        respond_endless(
            stream,
            &head_with(
                "206 Partial Content",
                &format!(
                    "Content-Range: bytes {first}-{last}/1000\r\nTransfer-Encoding: chunked\r\n"
                ),
            ),
            &block,
        );
    });
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_url(&fake.url("obj"), &dest_dir.join("obj"), &[]);
    run.assert_failed_with(&["chunked body"]);
    assert_nothing_written(&dest_dir);
}

#[test]
fn endless_body_past_a_declared_length() {
    // Content-Length says 1000 (matching the probe) but the body never ends:
    // ringdown reads exactly the requested bytes and the SHA1 decides.
    let size = 1000;
    let good = data(size, 5);
    let fake = plain_with_hostile_body(size, |req, stream| {
        let (first, last) = req.range().unwrap_or((0, 999));
        respond_endless(
            stream,
            &head_with(
                "206 Partial Content",
                &format!(
                    "Content-Range: bytes {first}-{last}/1000\r\nContent-Length: {}\r\n",
                    last - first + 1
                ),
            ),
            &[b'q'; 65536],
        );
    });
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let sha1 = hex(&Sha1::digest(&good));
    let run = get_url(&fake.url("obj"), &dest_dir.join("obj"), &["--sha1", &sha1]);
    run.assert_failed_with(&["sha1 mismatch"]);
    assert_nothing_written(&dest_dir);
}

#[test]
fn endless_body_with_a_size_mismatch() {
    // Content-Length larger than the range asked for, or none at all
    // (close-delimited) with an endless body: refused before any byte lands.
    for length_header in ["Content-Length: 1099511627776\r\n", ""] {
        let length_header = length_header.to_string();
        let fake = plain_with_hostile_body(1000, move |req, stream| {
            let (first, last) = req.range().unwrap_or((0, 999));
            respond_endless(
                stream,
                &head_with(
                    "206 Partial Content",
                    &format!("Content-Range: bytes {first}-{last}/1000\r\n{length_header}"),
                ),
                &[b'q'; 65536],
            );
        });
        let work = tempfile::tempdir().unwrap();
        let dest_dir = work.path().join("out");
        std::fs::create_dir(&dest_dir).unwrap();
        let run = get_url(&fake.url("obj"), &dest_dir.join("obj"), &[]);
        run.assert_failed_with(&["content-length"]);
        assert_nothing_written(&dest_dir);
    }
}

#[test]
fn content_range_beyond_the_object_on_a_chunk() {
    // Probe says 1000 bytes; the download says the object is 5000.
    let fake = plain_with_hostile_body(1000, |req, stream| {
        let (first, last) = req.range().unwrap_or((0, 999));
        respond(
            stream,
            206,
            &[("Content-Range", format!("bytes {first}-{last}/5000"))],
            &vec![b'q'; (last - first + 1) as usize],
        );
    });
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_url(&fake.url("obj"), &dest_dir.join("obj"), &[]);
    run.assert_failed_with(&["size changed"]);
    assert_nothing_written(&dest_dir);
}

/// h41 #2: each ranged answer's body trickles, a byte every 300 ms: never
/// a stall (`TUNING`'s `--timeout-s 3`), so it held the download without
/// bound. The body floor (1 KiB/s over each 3 s spent waiting) cuts each
/// attempt.
#[test]
fn a_trickling_chunk_body_is_cut_by_the_floor() {
    let fake = plain_with_hostile_body(100_000, |req, stream| {
        let (first, last) = req.range().unwrap_or((0, 99_999));
        let head = head_with(
            "206 Partial Content",
            &format!(
                "Content-Range: bytes {first}-{last}/100000\r\nContent-Length: {}\r\n",
                last - first + 1
            ),
        );
        if stream.write_all(&head).is_err() {
            return;
        }
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(300));
            if stream.write_all(b"t").is_err() {
                return;
            }
        }
    });
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_url(&fake.url("obj"), &dest_dir.join("obj"), &[]);
    run.assert_failed_with(&["below the 1024 bytes/s floor", "trickles"]);
    // Two attempts of one window each, and their backoff: far from RUN_MAX.
    assert!(
        run.elapsed < Duration::from_secs(20),
        "took {:?}",
        run.elapsed
    );
    assert_nothing_written(&dest_dir);
}

/// h41 #1: every answer is right, and each is followed at once, on the same
/// keep-alive connection, by an answer nobody asked for: a 206 for the
/// second MiB, the object's ETag, zeros. A connection with bytes waiting
/// past its last answer is out of step with its origin; reading them as the
/// next chunk's answer wrote zeros into DEST and exited 0 (no digest on a
/// plain URL to catch it). Such a connection is replaced, never reused.
#[test]
fn bytes_past_an_answer_are_never_read_as_the_next_one() {
    const SIZE: usize = 200_000;
    const PART: usize = 64 << 10;
    const STRAY: (usize, usize) = (PART, 2 * PART - 1);
    let object = data(SIZE, 8);
    let served = object.clone();
    let fake = Fake::start(vec![("obj", object.clone())], move |req, stream| {
        if !req.path.starts_with("/plain/") {
            return false;
        }
        let answer = |(first, last): (usize, usize), body: &[u8]| {
            let extra = format!(
                "ETag: \"v1\"\r\nContent-Range: bytes {first}-{last}/{SIZE}\r\nContent-Length: {}\r\n",
                body.len()
            );
            [head_with("206 Partial Content", &extra), body.to_vec()].concat()
        };
        let (first, last) = req.range().map_or((0, SIZE - 1), |(first, last)| {
            (first as usize, (last as usize).min(SIZE - 1))
        });
        // One write: the stray answer is on the socket as soon as the
        // real one is, so it is there when the next request would go out.
        // (The body, read at once, also leaves no time to send a GET ahead
        // behind it: one that went out before the stray arrived could not
        // tell it from its own answer, as HTTP/1.1 pairs answers by order.)
        let both = [
            answer((first, last), &served[first..=last]),
            answer(STRAY, &vec![0u8; STRAY.1 - STRAY.0 + 1]),
        ]
        .concat();
        let _ = stream.write_all(&both);
        true
    });
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("obj");
    let url = fake.url("obj");
    #[rustfmt::skip]
    let run = ringdown(&[
        "get", &url, dest.to_str().unwrap(),
        "--part-size", "64K", "--buffer-size", "64K", "--cores", "1", "--connections", "1",
        "--timeout-s", "3", "--max-attempts", "2", "--retry-base-ms", "5",
    ]);
    run.assert_bounded();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let written = std::fs::read(&dest).unwrap();
    assert_eq!(written.len(), SIZE);
    assert!(
        written == object,
        "DEST differs from the object (first differing byte {:?})",
        written.iter().zip(&object).position(|(a, b)| a != b)
    );
}

// ---------------------------------------------------------------- B2 JSON

fn api_hook(
    operation: &'static str,
    answer: impl Fn(&mut TcpStream) + Send + Sync + 'static,
) -> impl Fn(&Req, &mut TcpStream) -> bool + Send + Sync + 'static {
    move |req, stream| {
        if req.path.ends_with(operation) {
            answer(stream);
            return true;
        }
        false
    }
}

/// Answers every request `matches` picks with `status` and `body` (a B2
/// error JSON), and counts them.
fn counted_json_answer(
    matches: impl Fn(&Req) -> bool + Send + Sync + 'static,
    status: u16,
    body: serde_json::Value,
) -> (
    Arc<AtomicUsize>,
    impl Fn(&Req, &mut TcpStream) -> bool + Send + Sync + 'static,
) {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if !matches(req) {
            return false;
        }
        counter.fetch_add(1, Ordering::SeqCst);
        respond_json(stream, status, body.clone());
        true
    };
    (asked, hook)
}

fn raw_json(stream: &mut TcpStream, body: &[u8]) {
    respond(
        stream,
        200,
        &[("Content-Type", "application/json".into())],
        body,
    );
}

/// A listing body trickled one byte every 300 ms: each receive is inside the
/// stall timeout, so only the rate floor on API bodies ends it.
#[test]
fn api_body_trickled_byte_by_byte() {
    let fake = Fake::start(
        vec![("a", data(1, 7))],
        api_hook("b2_list_file_names", |stream| {
            let body = br#"{"files":[],"nextFileName":null}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            for byte in body {
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }),
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let report = work.path().join("report.jsonl");
    let run = restore(&fake, &dir, &report, &[]);
    run.assert_failed_with(&[
        "b2_list_file_names",
        "bytes/s floor (the server trickles it)",
    ]);
}

/// A plain URL's probe is the object's own first request: it makes no
/// more tries than `--max-attempts` (2 here) gives each chunk, where it
/// made a startup call's 5 whatever the flag said.
#[test]
fn a_url_probe_tries_no_more_than_max_attempts() {
    let (asked, hook) = counted_json_answer(
        |req| req.path.starts_with("/plain/"),
        503,
        serde_json::json!({"status":503,"code":"service_unavailable","message":"busy"}),
    );
    let fake = Fake::start(vec![("obj", data(10, 6))], hook);
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_url(&fake.url("obj"), &dest_dir.join("obj"), &[]);
    run.assert_failed_with(&["503"]);
    assert_eq!(asked.load(Ordering::SeqCst), 2, "{}", run.stderr);
    assert_nothing_written(&dest_dir);
}

/// The calls that start a run (authorization, the bucket lookup) make no
/// more tries than `--max-attempts` (2 here) either: a startup call made 5
/// whatever the flag said.
#[test]
fn startup_calls_try_no_more_than_max_attempts() {
    for call in ["b2_authorize_account", "b2_list_buckets"] {
        let (asked, hook) = counted_json_answer(
            move |req| req.path.ends_with(call),
            503,
            serde_json::json!({"status":503,"code":"service_unavailable","message":"busy"}),
        );
        let fake = Fake::start(vec![("obj", data(10, 6))], hook);
        let work = tempfile::tempdir().unwrap();
        let run = if call == "b2_list_buckets" {
            let report = work.path().join("report.jsonl");
            restore(&fake, &work.path().join("dir"), &report, &[])
        } else {
            get_b2(&fake, "obj", &work.path().join("obj"), &[])
        };
        run.assert_failed_with(&[call, "503"]);
        assert_eq!(asked.load(Ordering::SeqCst), 2, "{call}: {}", run.stderr);
    }
}

/// A B2-compatible server that stops at v3 (b2sdk's version) answers the
/// v4 `b2_authorize_account` with 404: the client asks v3 then, and the
/// download goes on (it used to fail with "HTTP 404").
#[test]
fn a_server_without_v4_is_authorized_on_v3() {
    let (asked_v4, hook) = counted_json_answer(
        |req| req.path == "/b2api/v4/b2_authorize_account",
        404,
        serde_json::json!({"status":404,"code":"not_found","message":"unsupported API version"}),
    );
    let fake = Fake::start(vec![("obj", data(10, 6))], hook);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("obj");
    let run = get_b2(&fake, "obj", &dest, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), data(10, 6));
    assert_eq!(asked_v4.load(Ordering::SeqCst), 1, "v4 first, once");
}

#[test]
fn authorize_answers_invalid_utf8_and_invalid_json() {
    let bodies: Vec<&'static [u8]> = vec![
        b"{\"accountId\":\"a\xff\xfe\",\"authorizationToken\":\"t\"}",
        b"{\"accountId\": ",
        b"<html>proxy error</html>",
        b"{\"accountId\":\"a\",\"authorizationToken\":\"t\",\"apiInfo\":{\"storageApi\":{}}}",
        b"[]",
    ];
    for body in bodies {
        let fake = Fake::start(
            vec![("obj", data(10, 6))],
            api_hook("b2_authorize_account", move |stream| raw_json(stream, body)),
        );
        let work = tempfile::tempdir().unwrap();
        let dest_dir = work.path().join("out");
        std::fs::create_dir(&dest_dir).unwrap();
        let run = get_b2(&fake, "obj", &dest_dir.join("obj"), &[]);
        run.assert_failed_with(&["b2_authorize_account"]);
        assert!(
            run.stderr.contains("not the expected JSON") || run.stderr.contains("no apiInfo"),
            "{}",
            run.stderr
        );
        assert_nothing_written(&dest_dir);
    }
}

#[test]
fn list_answers_invalid_utf8_and_invalid_json() {
    let bodies: Vec<&'static [u8]> = vec![
        b"{\"files\":[{\"fileName\":\"a\xff\",\"contentLength\":1}],\"nextFileName\":null}",
        b"{\"files\":[",
        b"not json",
        b"{\"files\":{}}",
        b"{\"files\":[{\"fileName\":\"a\",\"contentLength\":-5}],\"nextFileName\":null}",
        b"{\"files\":[],\"nextFileName\":7}",
    ];
    for body in bodies {
        let fake = Fake::start(
            vec![("a", data(1, 7))],
            api_hook("b2_list_file_names", move |stream| raw_json(stream, body)),
        );
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("dir");
        let report = work.path().join("report.jsonl");
        let run = restore(&fake, &dir, &report, &[]);
        run.assert_failed_with(&["b2_list_file_names"]);
        assert!(
            tree(&dir).iter().all(|p| p.starts_with(".ringdown")),
            "{:?}",
            tree(&dir)
        );
    }
    for body in [
        &b"{\"buckets\":[{\"bucketName\":\"bk\xfft\"}]}"[..],
        b"{\"buckets\"",
    ] {
        let fake = Fake::start(
            vec![("a", data(1, 7))],
            api_hook("b2_list_buckets", move |stream| raw_json(stream, body)),
        );
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("dir");
        let report = work.path().join("report.jsonl");
        let run = restore(&fake, &dir, &report, &[]);
        run.assert_failed_with(&["b2_list_buckets"]);
    }
}

/// 64 MiB and more: refused at the API body bound, memory stays bounded.
#[test]
fn api_bodies_over_the_bound() {
    const OVER: usize = 64 * 1024 * 1024 + 1;
    // Declared length over the bound, then the bytes (or not).
    let fake = Fake::start(
        vec![("obj", data(10, 8))],
        api_hook("b2_authorize_account", |stream| {
            let head = head_with("200 OK", &format!("Content-Length: {OVER}\r\n"));
            let mut block = vec![b' '; 1 << 20];
            block[0] = b'[';
            respond_endless(stream, &head, &block);
        }),
    );
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_b2(&fake, "obj", &dest_dir.join("obj"), &[]);
    run.assert_failed_with(&["exceeds 67108864 bytes"]);
    assert_nothing_written(&dest_dir);
    // Chunked, endless.
    let fake = Fake::start(
        vec![("obj", data(10, 8))],
        api_hook("b2_list_file_names", |stream| {
            let block: Vec<u8> =
                [b"100000\r\n".as_slice(), &vec![b' '; 0x100000], b"\r\n"].concat();
            respond_endless(
                stream,
                &head_with("200 OK", "Transfer-Encoding: chunked\r\n"),
                &block,
            );
        }),
    );
    let dir = work.path().join("dir");
    let report = work.path().join("report.jsonl");
    let run = restore(&fake, &dir, &report, &[]);
    run.assert_failed_with(&["b2_list_file_names", "exceeds 67108864 bytes"]);
}

/// Dense JSON just under the body bound: parsing must not multiply it into
/// gigabytes of in-memory values (a `serde_json::Value` of `[0,0,…]` costs
/// ~16× its JSON).
#[test]
fn dense_json_under_the_bound() {
    fn dense(prefix: &str, item: &str, suffix: &str) -> Arc<Vec<u8>> {
        let mut body = prefix.as_bytes().to_vec();
        let target = 60 * 1024 * 1024;
        while body.len() < target {
            body.extend_from_slice(item.as_bytes());
        }
        body.pop();
        body.extend_from_slice(suffix.as_bytes());
        Arc::new(body)
    }
    let refused: Vec<(&'static str, Arc<Vec<u8>>, &'static str)> = vec![
        (
            "b2_list_file_names",
            dense("{\"files\":[", "{},", "],\"nextFileName\":null}"),
            "missing field `fileName`",
        ),
        (
            "b2_list_file_names",
            dense("{\"files\":[", "0,", "],\"nextFileName\":null}"),
            "invalid type",
        ),
        (
            "b2_list_file_names",
            dense(
                "{\"files\":[",
                "{\"fileName\":\"\",\"contentLength\":0},",
                "],\"nextFileName\":null}",
            ),
            "more than 10000 files",
        ),
        (
            "b2_list_buckets",
            dense("{\"buckets\":[", "{},", "]}"),
            "more than 10000 buckets",
        ),
    ];
    for (operation, body, needle) in refused {
        let fake = Fake::start(
            vec![("a", data(1, 9))],
            api_hook(operation, move |stream| raw_json(stream, &body)),
        );
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("dir");
        let report = work.path().join("report.jsonl");
        let run = restore(&fake, &dir, &report, &[]);
        run.assert_failed_with(&[operation, needle]);
        eprintln!(
            "{operation} {needle}: peak RSS {} KiB, {:?}",
            run.peak_rss_kib, run.elapsed
        );
    }
    // A valid page whose ignored fields hold ~60 MiB of nested arrays: skipped
    // while parsing, never stored; the file itself is restored.
    let object = data(1, 9);
    let body = dense(
        &format!(
            "{{\"files\":[{{\"fileId\":\"4_zid0\",\"fileName\":\"a\",\"contentLength\":1,\"contentSha1\":\"{}\",\"fileInfo\":{{\"src_last_modified_millis\":[",
            hex(&Sha1::digest(&object))
        ),
        "[],",
        "]}}],\"nextFileName\":null}",
    );
    let fake = Fake::start(
        vec![("a", object.clone())],
        api_hook("b2_list_file_names", move |stream| raw_json(stream, &body)),
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let report = work.path().join("report.jsonl");
    let run = restore(&fake, &dir, &report, &[]);
    run.assert_bounded();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(std::fs::read(dir.join("a")).unwrap(), object);
    eprintln!(
        "nested fileInfo: peak RSS {} KiB, {:?}",
        run.peak_rss_kib, run.elapsed
    );
}

// ---------------------------------------------------------------- listings

/// Pages scripted by `startFileName`.
fn paged(
    pages: impl Fn(Option<&str>) -> serde_json::Value + Send + Sync + 'static,
    pages_served: Arc<AtomicUsize>,
) -> impl Fn(&Req, &mut TcpStream) -> bool + Send + Sync + 'static {
    move |req, stream| {
        if req.path.ends_with("/b2_list_file_names") {
            pages_served.fetch_add(1, Ordering::Relaxed);
            let body = req.json();
            let start = body["startFileName"].as_str().map(str::to_string);
            respond_json(stream, 200, pages(start.as_deref()));
            return true;
        }
        false
    }
}

fn listing_entry(name: &str, size: usize, id: &str, sha1: &str) -> serde_json::Value {
    serde_json::json!({"fileId": id, "fileName": name, "action": "upload",
        "contentLength": size, "contentSha1": sha1, "fileInfo": {}, "uploadTimestamp": 1})
}

/// The listing entries of `objects`, with the IDs `Fake::start` gives them.
fn listing_entries(objects: &[(&str, Vec<u8>)]) -> Vec<serde_json::Value> {
    objects
        .iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            listing_entry(
                name,
                bytes.len(),
                &format!("4_zid{i}"),
                &hex(&Sha1::digest(bytes)),
            )
        })
        .collect()
}

/// The token expires as a later listing page is asked for, and the API
/// cannot authorize again for a while (503s, longer than a refresh's own
/// tries): the page backs off, as downloads do, and asks again once the
/// failed refresh is no longer shared (`REAUTHORIZE_FAILURE_SHARED_MS`,
/// 10 s), whatever its own backoff. The restore finishes. It used to end
/// the run at the first failed refresh (h24), and then, with backoffs
/// shorter than 10 s, at the second: asked within the 10 s, the refresh
/// answered with the shared failure, untried (h26 S6).
#[test]
fn a_listing_page_outlasts_a_refresh_the_api_cannot_answer() {
    let objects = [("a", data(3, 1)), ("b", data(4, 2))];
    let entries = listing_entries(&objects);
    let lists = Arc::new(AtomicUsize::new(0));
    let authorizations = Arc::new(AtomicUsize::new(0));
    let (listed, authorized) = (Arc::clone(&lists), Arc::clone(&authorizations));
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if req.path.ends_with("/b2_authorize_account") {
            // The first answers; the refresh's 3 tries meet the outage.
            let call = authorized.fetch_add(1, Ordering::SeqCst);
            if (1..=3).contains(&call) {
                b2_error(stream, 503, "service_unavailable", "busy");
                return true;
            }
            return false;
        }
        if req.path.ends_with("/b2_list_file_names") {
            // The token expires after the first page, until an
            // authorization after the outage (the fifth) gives a new one.
            let expired = authorized.load(Ordering::SeqCst) < 5;
            let page = match listed.fetch_add(1, Ordering::SeqCst) {
                0 => serde_json::json!({"files": [entries[0]], "nextFileName": "b"}),
                _ if expired => {
                    b2_error(stream, 401, "expired_auth_token", "expired");
                    return true;
                }
                _ => serde_json::json!({"files": [entries[1]], "nextFileName": null}),
            };
            respond_json(stream, 200, page);
            return true;
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    // One backoff (--max-attempts 2) of 100 ms: stretched to the 10 s of
    // the shared failure.
    let run = restore_into(
        &fake,
        &dir,
        &[
            "--max-attempts",
            "2",
            "--retry-base-ms",
            "100",
            "--retry-max-ms",
            "200",
            "--cores",
            "1",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(std::fs::read(dir.join("a")).unwrap(), data(3, 1));
    assert_eq!(std::fs::read(dir.join("b")).unwrap(), data(4, 2));
    // The first, the refresh's 3 tries, and the one after the backoff.
    assert_eq!(authorizations.load(Ordering::SeqCst), 5, "{}", run.stderr);
    // The first page, the expired one asked twice, the last page.
    assert_eq!(lists.load(Ordering::SeqCst), 4, "{}", run.stderr);
}

/// An origin that quotes an SSE-C request's key back in its error (a proxy,
/// a WAF, a broken server): the key, the one credential B2 cannot give back,
/// reaches neither stderr nor the report. It did, since only tokens and
/// URL signatures were redacted (h30).
#[test]
fn an_sse_c_key_quoted_back_by_the_origin_is_redacted() {
    let key = *b"quoted-back-key-0123456789abcdef";
    let key_base64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
    let objects = [("enc", data(3, 1))];
    let entries: Vec<serde_json::Value> = listing_entries(&objects)
        .into_iter()
        .map(|mut entry| {
            entry["serverSideEncryption"] =
                serde_json::json!({"mode": "SSE-C", "algorithm": "AES256"});
            entry
        })
        .collect();
    // The TLS front's address, known once it listens.
    let front = Arc::new(std::sync::OnceLock::<String>::new());
    let front_base = Arc::clone(&front);
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if req.path.ends_with("/b2_authorize_account") {
            let base = front_base.get().expect("the front listens");
            respond_json(stream, 200, authorize_json_at(base));
            return true;
        }
        if req.path.ends_with("/b2_list_file_names") {
            return answer_one_page(stream, &entries);
        }
        if is_download(req) {
            let sent = req
                .header("x-bz-server-side-encryption-customer-key")
                .unwrap_or("none")
                .to_string();
            b2_error(
                stream,
                400,
                "bad_request",
                &format!("key {sent} is not accepted"),
            );
            return true;
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let work = tempfile::tempdir().unwrap();
    // SSE-C keys go to https:// hosts only: TLS in front of the fake.
    let ca_file = work.path().join("ca.pem");
    let realm = tls_front(fake.port, &ca_file);
    front.set(realm.clone()).unwrap();
    let key_file = work.path().join("key");
    std::fs::write(&key_file, key).unwrap();
    let dir = work.path().join("dir");
    let report = work.path().join("report.jsonl");
    let source = format!("b2://{BUCKET}");
    let mut args = vec![
        "restore",
        &source,
        dir.to_str().unwrap(),
        "--realm",
        &realm,
        "--ca-file",
        ca_file.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--sse-c-key-file",
        key_file.to_str().unwrap(),
    ];
    args.extend(TUNING);
    let run = ringdown(&args);
    run.assert_failed_with(&["enc", "bad_request", "is not accepted"]);
    let report = std::fs::read_to_string(&report).unwrap();
    assert!(report.contains("[redacted] is not accepted"), "{report}");
    for text in [&run.stderr, &report] {
        assert!(!text.contains(&key_base64), "the key leaked: {text}");
        assert!(
            !text.contains("none is not accepted"),
            "no key was sent: {text}"
        );
    }
}

/// A server that lists no fileIds (a B2-compatible gateway, an older
/// mirror): each file is downloaded by bucket and name, with no file id to
/// expect. The token expires at the first download; the restore
/// authorizes again once and finishes. A plain URL is the source without
/// credentials, not a download without a file id: when it was the second,
/// this 401 was final at once and both files failed (exit 3).
#[test]
fn a_listing_without_file_ids_refreshes_an_expired_token_for_its_downloads() {
    let objects = [("a", data(3, 1)), ("b b", data(70_000, 2))];
    let entries: Vec<serde_json::Value> = listing_entries(&objects)
        .into_iter()
        .map(|mut entry| {
            entry["fileId"] = serde_json::Value::Null;
            entry
        })
        .collect();
    let authorizations = Arc::new(AtomicUsize::new(0));
    let expired_answers = Arc::new(AtomicUsize::new(0));
    let by_name = Arc::new(AtomicUsize::new(0));
    let (authorized, expired, named) = (
        Arc::clone(&authorizations),
        Arc::clone(&expired_answers),
        Arc::clone(&by_name),
    );
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if req.path.ends_with("/b2_authorize_account") {
            authorized.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        if req.path.ends_with("/b2_list_file_names") {
            return answer_one_page(stream, &entries);
        }
        if is_download(req) {
            assert!(
                req.path.starts_with(&format!("/file/{BUCKET}/")),
                "downloaded by {} {}",
                req.path,
                req.query
            );
            named.fetch_add(1, Ordering::SeqCst);
            // Every download before the second authorization meets the
            // expired token.
            if authorized.load(Ordering::SeqCst) < 2 {
                expired.fetch_add(1, Ordering::SeqCst);
                b2_error(stream, 401, "expired_auth_token", "expired");
                return true;
            }
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let run = restore_into(&fake, &dir, &["--cores", "1"]);
    run.assert_bounded();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(std::fs::read(dir.join("a")).unwrap(), data(3, 1));
    assert_eq!(std::fs::read(dir.join("b b")).unwrap(), data(70_000, 2));
    assert!(
        expired_answers.load(Ordering::SeqCst) >= 1,
        "{}",
        run.stderr
    );
    assert_eq!(authorizations.load(Ordering::SeqCst), 2, "{}", run.stderr);
    assert!(by_name.load(Ordering::SeqCst) >= 3, "{}", run.stderr);
}

#[test]
fn listing_pages_that_repeat_or_go_backwards() {
    let objects = [("a", data(3, 1)), ("b", data(4, 2)), ("c", data(5, 3))];
    let entries = listing_entries(&objects);
    type Script =
        Box<dyn Fn(Option<&str>, &[serde_json::Value]) -> serde_json::Value + Send + Sync>;
    let scripts: Vec<(&str, Script)> = vec![
        // The same page forever, whatever the start.
        (
            "same page",
            Box::new(|_, e| serde_json::json!({"files": [e[0], e[1]], "nextFileName": "c"})),
        ),
        // nextFileName equal to the last name.
        (
            "next = last",
            Box::new(|_, e| serde_json::json!({"files": [e[0], e[1]], "nextFileName": "b"})),
        ),
        // nextFileName before the last name.
        (
            "next < last",
            Box::new(|start, e| match start {
                None => serde_json::json!({"files": [e[0], e[1]], "nextFileName": "b"}),
                Some(_) => serde_json::json!({"files": [e[2]], "nextFileName": "a"}),
            }),
        ),
        // Empty pages that never move.
        (
            "empty page, same start",
            Box::new(
                |start, _| serde_json::json!({"files": [], "nextFileName": start.unwrap_or("a")}),
            ),
        ),
        // The second page answers names before its start.
        (
            "names before the start",
            Box::new(|start, e| match start {
                None => serde_json::json!({"files": [e[0]], "nextFileName": "b"}),
                Some(_) => serde_json::json!({"files": [e[0], e[1]], "nextFileName": "b\u{0}"}),
            }),
        ),
        // One name twice in a page: both would be restored into one path,
        // the last write winning, both reported done.
        (
            "a name twice",
            Box::new(|_, e| serde_json::json!({"files": [e[0], e[1], e[1]], "nextFileName": null})),
        ),
        // Names out of order within a page.
        (
            "names out of order",
            Box::new(|_, e| serde_json::json!({"files": [e[0], e[2], e[1]], "nextFileName": null})),
        ),
    ];
    for (label, script) in scripts {
        let served = Arc::new(AtomicUsize::new(0));
        let entries = entries.clone();
        let fake = Fake::start(
            objects.iter().map(|(n, d)| (*n, d.clone())).collect(),
            paged(move |start| script(start, &entries), Arc::clone(&served)),
        );
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("dir");
        let report = work.path().join("report.jsonl");
        let run = restore(&fake, &dir, &report, &[]);
        run.assert_failed_with(&["b2_list_file_names", "listing"]);
        assert!(
            served.load(Ordering::Relaxed) <= 3,
            "{label}: {} pages requested",
            served.load(Ordering::Relaxed)
        );
    }
}

/// A listing whose pages bring nothing to restore (here: empty pages, each
/// a step further, forever) still ends at SIGTERM: the listing looks for a
/// stop before every page, since the planner, which looks as entries
/// arrive, gets none.
#[test]
fn sigterm_ends_a_listing_that_brings_nothing() {
    let served = Arc::new(AtomicUsize::new(0));
    let fake = Fake::start(
        Vec::new(),
        paged(
            |start| {
                let next = format!("{}a", start.unwrap_or(""));
                serde_json::json!({"files": [], "nextFileName": next})
            },
            Arc::clone(&served),
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let source = format!("b2://{BUCKET}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args([
            "restore",
            &source,
            dir.to_str().unwrap(),
            "--realm",
            &fake.realm(),
        ])
        .args(TUNING)
        .env("B2_APPLICATION_KEY_ID", KEY_ID)
        .env("B2_APPLICATION_KEY", KEY)
        .env_remove("SSL_CERT_FILE")
        .env_remove("B2_REALM")
        .stdin(Stdio::null());
    let mut signalled: Option<Instant> = None;
    let output = common::run_with_deadline(command, RUN_MAX, |pid| {
        if signalled.is_none() && served.load(Ordering::Relaxed) >= 20 {
            common::send_signal(pid, "-TERM");
            signalled = Some(Instant::now());
        }
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    let signalled = signalled.unwrap_or_else(|| panic!("ended before 20 pages:\n{stderr}"));
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exited {:?} after SIGTERM",
        signalled.elapsed()
    );
}

/// The first name in listing order wins a file/directory clash whatever
/// becomes of it: the file `a` fails (404) before `a/b` is listed, and `a/b`
/// is still refused. Before, it was restored when `a` had failed first, and
/// refused when `a` was still downloading: timing chose.
#[test]
fn the_first_name_wins_even_when_it_fails() {
    let objects = [("a", data(7, 1)), ("a/b", data(8, 2))];
    let [first, second] = <[_; 2]>::try_from(listing_entries(&objects)).unwrap();
    let pages = paged(
        move |start| match start {
            None => serde_json::json!({"files": [first], "nextFileName": "a/b"}),
            Some(_) => {
                // `a` has failed by now.
                std::thread::sleep(Duration::from_millis(500));
                serde_json::json!({"files": [second], "nextFileName": null})
            }
        },
        Arc::new(AtomicUsize::new(0)),
    );
    let fake = Fake::start(
        objects.iter().map(|(n, d)| (*n, d.clone())).collect(),
        move |req, stream| {
            if is_download(req) && req.query.contains("fileId=4_zid0") {
                b2_error(stream, 404, "not_found", "gone");
                return true;
            }
            pages(req, stream)
        },
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let report = work.path().join("report.jsonl");
    let run = restore(&fake, &dir, &report, &[]);
    run.assert_failed_with(&["a/b", "first name wins"]);
    let lines = common::json_lines(&report);
    let status = |name: &str| {
        let line = lines.iter().find(|line| line["name"] == name).unwrap();
        line["status"].as_str().unwrap().to_string()
    };
    assert_eq!(status("a"), "failed");
    assert_eq!(status("a/b"), "refused");
    assert!(!dir.join("a").exists(), "{:?}", tree(&dir));
}

#[test]
fn names_differing_by_case_or_normalisation_are_distinct_files() {
    let nfc = "caf\u{e9}.txt";
    let nfd = "cafe\u{301}.txt";
    let mut objects = vec![
        ("A.txt", data(10, 1)),
        ("a.txt", data(11, 2)),
        (nfc, data(12, 3)),
        (nfd, data(13, 4)),
    ];
    objects.sort_by(|a, b| a.0.cmp(b.0));
    let fake = Fake::start(objects.clone(), no_hook);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let report = work.path().join("report.jsonl");
    let run = restore(&fake, &dir, &report, &[]);
    run.assert_bounded();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for (name, bytes) in &objects {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
    }
    assert_eq!(tree(&dir).len(), 4, "{:?}", tree(&dir));
    let lines = common::json_lines(&report);
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|line| line["status"] == "ok"), "{lines:?}");
}

#[test]
fn hostile_names_never_escape_dir() {
    let long_segment = "l".repeat(1024);
    let long_path = format!("{}/{}", "s".repeat(200), "t".repeat(200)); // 401 bytes, fine
    let long_name_1024 = [
        "p".repeat(255),
        "q".repeat(255),
        "r".repeat(255),
        "u".repeat(256),
    ]
    .join("/");
    assert_eq!(long_name_1024.len(), 1024);
    let refused: Vec<(String, &str)> = vec![
        ("../x".into(), "'..'"),
        ("a/../../x".into(), "'..'"),
        ("/abs".into(), "absolute"),
        ("a//b".into(), "empty path segment"),
        (".".into(), "'.'"),
        ("..".into(), "'..'"),
        ("../".into(), "'..'"),
        (long_segment.clone(), "1024 bytes"),
        (long_name_1024.clone(), "256 bytes"),
        ("nul\0byte".into(), "0x00"),
        ("ctl\x1b[2Jx".into(), "0x1b"),
        ("tab\tx".into(), "0x09"),
        (".ringdown/journal-0-of-1".into(), "reserved"),
        // `d` is a file (listed first), so `d/f` cannot be a path beneath it.
        ("d/f".into(), "in the way"),
    ];
    let fine: Vec<String> = vec![
        "d".into(),
        "ok/x.txt".into(),
        "a\\b".into(),
        "...".into(),
        long_path.clone(),
        "dir/".into(),
        "e/.bzEmpty".into(),
    ];
    let mut objects: Vec<(String, Vec<u8>)> = refused
        .iter()
        .map(|(name, _)| name.clone())
        .chain(fine.iter().cloned())
        .enumerate()
        .map(|(i, name)| {
            let size = if name.ends_with('/') || name.ends_with(".bzEmpty") {
                0
            } else {
                5 + i
            };
            (name, data(size, i as u8))
        })
        .collect();
    objects.sort();
    let fake = Fake::start(
        objects
            .iter()
            .map(|(n, d)| (n.as_str(), d.clone()))
            .collect(),
        no_hook,
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let sentinel = work.path().join("sentinel");
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir(&sentinel).unwrap();
    let report = work.path().join("report.jsonl");
    let run = restore(&fake, &dir, &report, &[]);
    run.assert_bounded();
    assert_eq!(run.code, Some(1), "refusals make exit 1; {}", run.stderr);
    // Nothing outside DIR.
    assert!(tree(&sentinel).is_empty());
    let outside: Vec<String> = tree(work.path())
        .into_iter()
        .filter(|p| !p.starts_with("dir") && p != "report.jsonl")
        .filter(|p| p != "sentinel")
        .collect();
    assert!(outside.is_empty(), "written outside DIR: {outside:?}");
    // The fine ones are restored.
    for name in ["d", "ok/x.txt", "a\\b", "...", long_path.as_str()] {
        let expected = &objects.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), expected, "{name}");
    }
    assert!(dir.join("dir").is_dir() && dir.join("e").is_dir());
    assert!(!dir.join("e/.bzEmpty").exists());
    // Each refused name is in the report with a reason.
    let lines = common::json_lines(&report);
    for (name, reason) in &refused {
        let line = lines
            .iter()
            .find(|line| line["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name:?} not in the report: {lines:?}"));
        assert_eq!(line["status"], "refused", "{name:?}: {line}");
        let text = line["reason"].as_str().unwrap_or("");
        assert!(
            text.contains(reason),
            "{name:?}: reason {text:?} lacks {reason:?}"
        );
    }
    // No partial or temp files left anywhere.
    assert!(
        tree(&dir)
            .iter()
            .all(|p| !p.ends_with(".part") && !p.contains("partial/")),
        "{:?}",
        tree(&dir)
    );
}

#[test]
fn symlink_planted_inside_dir_pointing_outside() {
    // In B2's order (the fake lists them as given).
    let objects = vec![
        ("link", data(7, 1)),
        ("linkdir/sub/y", data(9, 3)),
        ("linkdir/x", data(8, 2)),
        ("z", data(10, 4)),
    ];
    let fake = Fake::start(objects.clone(), no_hook);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let sentinel = work.path().join("sentinel");
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir(&sentinel).unwrap();
    std::os::unix::fs::symlink(&sentinel, dir.join("linkdir")).unwrap();
    std::os::unix::fs::symlink(sentinel.join("target-file"), dir.join("link")).unwrap();
    let report = work.path().join("report.jsonl");
    let run = restore(&fake, &dir, &report, &[]);
    run.assert_bounded();
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(tree(&sentinel).is_empty(), "{:?}", tree(&sentinel));
    // A symlink at a final path is replaced by the file, never followed.
    let link_meta = dir.join("link").symlink_metadata().unwrap();
    assert!(link_meta.is_file());
    assert_eq!(std::fs::read(dir.join("link")).unwrap(), objects[0].1);
    assert_eq!(std::fs::read(dir.join("z")).unwrap(), objects[3].1);
    // A symlinked parent gets the names beneath it refused.
    assert!(dir.join("linkdir").symlink_metadata().unwrap().is_symlink());
    let lines = common::json_lines(&report);
    for name in ["linkdir/x", "linkdir/sub/y"] {
        let line = lines.iter().find(|line| line["name"] == name).unwrap();
        assert_eq!(line["status"], "refused", "{line}");
        assert!(
            line["reason"].as_str().unwrap().contains("symlink"),
            "{line}"
        );
    }
}

// ---------------------------------------------------------------- credentials quoted back

/// A server whose error answers quote the request back: its `Authorization`
/// header and its query. Every message ringdown prints is built from such
/// text, and none may show a credential.
fn quoting_hook(
    fails: impl Fn(&Req) -> bool + Send + Sync + 'static,
) -> impl Fn(&Req, &mut TcpStream) -> bool + Send + Sync + 'static {
    move |req, stream| {
        if !fails(req) {
            return false;
        }
        let sent = req.header("authorization").unwrap_or("").to_string();
        let decoded = sent
            .strip_prefix("Basic ")
            .and_then(|basic| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, basic).ok()
            })
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let message = format!(
            "refused Authorization {sent:?} ({decoded}) for {}?{}",
            req.path,
            percent_decode(&req.query)
        );
        b2_error(stream, 400, "bad_request", &message);
        true
    }
}

#[test]
fn credentials_quoted_back_by_a_server_are_never_shown() {
    // b2_authorize_account: the Basic pair, encoded and decoded.
    let fake = Fake::start(
        vec![("obj", data(10, 1))],
        quoting_hook(|req| req.path.ends_with("/b2_authorize_account")),
    );
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_b2(&fake, "obj", &dest_dir.join("obj"), &[]);
    assert!(
        run.stderr.contains("refused Authorization"),
        "{}",
        run.stderr
    );
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{KEY_ID}:{KEY}"),
    );
    assert!(!run.stderr.contains(&basic), "{}", run.stderr);
    run.assert_failed_with(&["b2_authorize_account", "[redacted]"]);

    // A control-plane call and a download (the data plane): the token.
    for (what, needle) in [
        ("b2_list_file_names", "b2_list_file_names"),
        ("b2_download_file_by_id", "obj"),
    ] {
        let fake = Fake::start(
            vec![("obj", data(10, 2))],
            quoting_hook(move |req| req.path.contains(what)),
        );
        let dir = work.path().join(format!("restore-{what}"));
        let report = work.path().join("report.jsonl");
        let run = restore(&fake, &dir, &report, &[]);
        assert!(
            run.stderr.contains("refused Authorization"),
            "{}",
            run.stderr
        );
        run.assert_failed_with(&[needle, "[redacted]"]);
        let report = std::fs::read_to_string(&report).unwrap_or_default();
        assert!(!report.contains(TOKEN), "{report}");
    }

    // A plain URL carrying its credential in the query.
    // The probe (the first range) passes; the next ranges are refused.
    let fake = Fake::start(
        vec![("obj", data(300_000, 3))],
        quoting_hook(|req| {
            req.path.starts_with("/plain/") && req.range().is_some_and(|(first, _)| first > 0)
        }),
    );
    let signature = "Sig%2Fnature0123456789abcdef";
    let url = format!("{}?X-Signature={signature}", fake.url("obj"));
    let run = get_url(
        &url,
        &dest_dir.join("obj"),
        &["--part-size", "64KiB", "--buffer-size", "16KiB"],
    );
    assert!(
        run.stderr.contains("refused Authorization"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("0123456789abcdef"), "{}", run.stderr);
    run.assert_failed_with(&["[redacted]"]);
}

// ---------------------------------------------------------------- TLS records that carry nothing

/// Gap between two things a hostile TLS origin sends: each arrives well
/// within `--timeout-s`, so no single receive ever times out.
const TLS_TRICKLE_GAP: Duration = Duration::from_millis(50);

/// Stall timeout of the TLS runs; the whole run must end within
/// `TLS_RUN_MAX` (one attempt: a handshake, or a head, or a body, each
/// bounded by about two timeouts, a receive in flight included).
const TLS_TIMEOUT_S: &str = "2";
const TLS_RUN_MAX: Duration = Duration::from_secs(20);

/// What a hostile TLS origin does to a download. The URL's probe (the
/// first connection, `Range: bytes=0-0`) is answered as any origin would:
/// the probe retries as API calls do, whatever `--max-attempts` says.
#[derive(Clone, Copy, Debug)]
enum TlsHostility {
    /// The handshake flight of every connection after the probe's goes out
    /// one byte at a time.
    HandshakeTrickled,
    /// Zero-length application-data records (RFC 8446 §5.4 allows them)
    /// where the response head should be.
    EmptyRecordsForHead,
    /// A valid head and half the body, then zero-length records.
    EmptyRecordsMidBody,
}

/// An HTTPS origin on 127.0.0.1 serving one object at any path. rustls does
/// its handshake and reads requests; its answers to download requests are
/// sealed here with the traffic keys taken from rustls, so it can send
/// what rustls never would: records that carry no data, forever.
struct TlsOrigin {
    port: u16,
    ca_file: std::path::PathBuf,
    _certs: tempfile::TempDir,
}

impl TlsOrigin {
    fn start(object: Vec<u8>, hostility: TlsHostility) -> TlsOrigin {
        let certs = tempfile::tempdir().unwrap();
        let ca_file = certs.path().join("ca.pem");
        let config = tls_origin_config(&ca_file);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let object = Arc::new(object);
        std::thread::spawn(move || {
            for (index, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let config = Arc::clone(&config);
                let object = Arc::clone(&object);
                let trickle = index > 0 && matches!(hostility, TlsHostility::HandshakeTrickled);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    serve_tls_connection(stream, config, &object, hostility, trickle);
                });
            }
        });
        TlsOrigin {
            port,
            ca_file,
            _certs: certs,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/x", self.port)
    }
}

/// A CA (written to `ca_file`) and a server certificate for 127.0.0.1;
/// TLS 1.3 with AES-128-GCM only, so one sealer serves every connection;
/// no session tickets, so nothing but our own records follows the
/// handshake; secrets extractable.
/// TLS in front of a plain fake: a thread per connection terminates TLS
/// (the CA goes to `ca_file`) and relays bytes both ways to 127.0.0.1:
/// `backend_port`, polling each side in turn. Returns the front's
/// `https://` base.
fn tls_front(backend_port: u16, ca_file: &Path) -> String {
    let config = tls_origin_config(ca_file);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let config = Arc::clone(&config);
            std::thread::spawn(move || relay_tls(client, backend_port, config));
        }
    });
    format!("https://127.0.0.1:{port}")
}

fn relay_tls(client: TcpStream, backend_port: u16, config: Arc<rustls::ServerConfig>) {
    let Ok(mut backend) = TcpStream::connect(("127.0.0.1", backend_port)) else {
        return;
    };
    let tick = Some(Duration::from_millis(2));
    let _ = client.set_read_timeout(tick);
    let _ = backend.set_read_timeout(tick);
    let session = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(session, client);
    let idle = |error: &std::io::Error| {
        matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if backend.write_all(&buf[..n]).is_err() => return,
            Ok(_) => {}
            Err(error) if idle(&error) => {}
            Err(_) => return,
        }
        match backend.read(&mut buf) {
            Ok(0) => {
                tls.conn.send_close_notify();
                let _ = tls.flush();
                return;
            }
            Ok(n) if tls.write_all(&buf[..n]).is_err() => return,
            Ok(_) => {}
            Err(error) if idle(&error) => {}
            Err(_) => return,
        }
    }
}

fn tls_origin_config(ca_file: &Path) -> Arc<rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(ca_file, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .retain(|suite| suite.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
    config.send_tls13_tickets = 0;
    config.enable_secret_extraction = true;
    Arc::new(config)
}

fn serve_tls_connection(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    object: &[u8],
    hostility: TlsHostility,
    trickle_handshake: bool,
) {
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    if trickle_handshake {
        // Its flight one byte at a time until the client goes away (or the
        // handshake ends, which fails the test: it never should).
        while conn.is_handshaking() {
            if conn.wants_read() && !conn.wants_write() {
                if conn.read_tls(&mut tcp).unwrap_or(0) == 0 {
                    return;
                }
                if conn.process_new_packets().is_err() {
                    return;
                }
            }
            let mut flight = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut flight).unwrap();
            }
            for byte in flight {
                if tcp.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(TLS_TRICKLE_GAP);
            }
        }
    }
    loop {
        let Some(req) = read_request(&mut rustls::Stream::new(&mut conn, &mut tcp)) else {
            return;
        };
        let size = object.len() as u64;
        let (first, last) = req.range().unwrap_or((0, size - 1));
        let last = last.min(size - 1);
        let body = &object[first as usize..=last as usize];
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{last}/{size}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if (first, last) == (0, 0) {
            // The probe: answered in full, by rustls.
            let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
            if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
                return;
            }
            continue;
        }
        // A download request: every record from here on is ours.
        while conn.wants_write() {
            if conn.write_tls(&mut tcp).is_err() {
                return;
            }
        }
        let secrets = conn.dangerous_extract_secrets().unwrap();
        let mut sealer = RecordSealer::new(secrets.tx);
        let mut records = Vec::new();
        if let TlsHostility::EmptyRecordsMidBody = hostility {
            sealer.seal(head.as_bytes(), &mut records);
            sealer.seal(&body[..body.len() / 2], &mut records);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            sealer.seal(b"", &mut records);
            if tcp.write_all(&records).is_err() {
                return;
            }
            records.clear();
            std::thread::sleep(TLS_TRICKLE_GAP);
        }
        return;
    }
}

/// TLS 1.3 application-data records under one direction's AES-128-GCM key
/// (RFC 8446 §5.2-5.3): what rustls would send, and also what it never
/// would (a record of no data).
struct RecordSealer {
    key: aws_lc_rs::aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl RecordSealer {
    fn new((seq, secrets): (u64, rustls::ConnectionTrafficSecrets)) -> RecordSealer {
        let rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("the origin offers AES-128-GCM only");
        };
        let key =
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, key.as_ref()).unwrap();
        RecordSealer {
            key: aws_lc_rs::aead::LessSafeKey::new(key),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    /// Appends `data` as one record (several past 16 KiB), or, when empty,
    /// one record of no data.
    fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) {
        const APPLICATION_DATA: u8 = 23;
        let pieces: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(16 * 1024).collect()
        };
        for piece in pieces {
            // TLSInnerPlaintext: the content, then its real type.
            let mut inner = piece.to_vec();
            inner.push(APPLICATION_DATA);
            let fragment_len = u16::try_from(inner.len() + 16).unwrap();
            let mut header = [APPLICATION_DATA, 3, 3, 0, 0];
            header[3..].copy_from_slice(&fragment_len.to_be_bytes());
            let mut nonce = self.iv;
            for (byte, seq_byte) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
                *byte ^= seq_byte;
            }
            self.seq += 1;
            self.key
                .seal_in_place_append_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(header),
                    &mut inner,
                )
                .unwrap();
            out.extend_from_slice(&header);
            out.extend_from_slice(&inner);
        }
    }
}

/// `get` of the hostile TLS origin's object: one attempt, `TLS_TIMEOUT_S`.
fn get_tls(origin: &TlsOrigin, dest: &Path) -> Run {
    ringdown(&[
        "get",
        &origin.url(),
        dest.to_str().unwrap(),
        "--ca-file",
        origin.ca_file.to_str().unwrap(),
        "--timeout-s",
        TLS_TIMEOUT_S,
        "--max-attempts",
        "1",
        "--cores",
        "1",
        "--connections",
        "1",
    ])
}

/// A TLS peer that keeps sending, but never a byte of plaintext, holds no
/// receive past `--timeout-s`: each byte or record restarts the stall timer
/// of one receive, so the loop of receives is bounded as a whole
/// (`TlsStream::within_timeout`). Before that bound, such a run went on
/// for as long as the origin kept sending.
fn assert_tls_run_ends_at_the_timeout(hostility: TlsHostility, needle: &str) {
    let origin = TlsOrigin::start(data(100_000, 9), hostility);
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_tls(&origin, &dest_dir.join("obj"));
    assert!(
        run.elapsed < TLS_RUN_MAX,
        "{hostility:?}: took {:?}; stderr:\n{}",
        run.elapsed,
        run.stderr
    );
    run.assert_failed_with(&[needle, "after 1 attempt"]);
    assert_nothing_written(&dest_dir);
}

#[test]
fn tls_handshake_trickled_byte_by_byte_ends_at_the_timeout() {
    assert_tls_run_ends_at_the_timeout(
        TlsHostility::HandshakeTrickled,
        "the TLS handshake did not complete within 2s",
    );
}

#[test]
fn empty_tls_records_instead_of_a_response_head_end_at_the_timeout() {
    assert_tls_run_ends_at_the_timeout(
        TlsHostility::EmptyRecordsForHead,
        "receiving over TLS brought no data within 2s",
    );
}

#[test]
fn empty_tls_records_mid_body_end_at_the_timeout() {
    assert_tls_run_ends_at_the_timeout(
        TlsHostility::EmptyRecordsMidBody,
        "receiving over TLS brought no data within 2s",
    );
}

/// A run-fatal error (the download cap) while the listing thread backs off
/// a failed token refresh ends the run at once: the backoff ends with the
/// run (`runtime::end_with_run_on_this_thread`). Before, the run said
/// "; stopping" and then waited for the listing's backoffs: 47 s here,
/// minutes at the defaults (h26 S2).
#[test]
fn a_run_fatal_error_cuts_the_listings_refresh_backoff_short() {
    let objects = [("a", data(3, 1)), ("b", data(4, 2))];
    let entries = listing_entries(&objects);
    let lists = Arc::new(AtomicUsize::new(0));
    let authorizations = Arc::new(AtomicUsize::new(0));
    let (listed, authorized) = (Arc::clone(&lists), Arc::clone(&authorizations));
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if req.path.ends_with("/b2_authorize_account") {
            // The first answers; every refresh meets an outage.
            if authorized.fetch_add(1, Ordering::SeqCst) >= 1 {
                b2_error(stream, 503, "service_unavailable", "busy");
                return true;
            }
            return false;
        }
        if req.path.ends_with("/b2_list_file_names") {
            match listed.fetch_add(1, Ordering::SeqCst) {
                0 => respond_json(
                    stream,
                    200,
                    serde_json::json!({"files": [entries[0]], "nextFileName": "b"}),
                ),
                _ => b2_error(stream, 401, "expired_auth_token", "expired"),
            }
            return true;
        }
        if is_download(req) {
            // The download of "a" meets the spent daily cap: run-fatal.
            b2_error(stream, 403, "download_cap_exceeded", "cap");
            return true;
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let started = std::time::Instant::now();
    let run = restore_into(
        &fake,
        &dir,
        &[
            "--max-attempts",
            "6",
            "--retry-base-ms",
            "4000",
            "--retry-max-ms",
            "8000",
            "--cores",
            "1",
        ],
    );
    let took = started.elapsed();
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("download_cap_exceeded"),
        "{}",
        run.stderr
    );
    // The backoffs are 4-8 s each: one at most was waited out.
    assert!(
        took.as_secs() < 10,
        "the run-fatal error waited {took:?} for the listing: {}",
        run.stderr
    );
}

/// A run-fatal error (the download cap, on a small object) while a chunk of
/// a large object waits out a long `Retry-After` ends the run at once: the
/// run's stop reaches the chunk's backoff. Chunks used to look at signals
/// only, and the run waited 30 s for each of the chunk's attempts (h28 #1).
#[test]
fn a_run_fatal_error_cuts_a_chunks_backoff_short() {
    const PART: usize = 64 * 1024;
    let objects = [("a-big", data(3 * PART, 1)), ("b-small", data(1000, 2))];
    let backing_off = Arc::new(AtomicBool::new(false));
    let chunk_backs_off = Arc::clone(&backing_off);
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if !is_download(req) {
            return false;
        }
        if req.query.contains("fileId=4_zid1") {
            // Once a chunk of "a-big" waits out its Retry-After, the small
            // object meets the spent daily cap: run-fatal.
            let waited = Instant::now();
            while !chunk_backs_off.load(Ordering::SeqCst) && waited.elapsed().as_secs() < 10 {
                std::thread::sleep(Duration::from_millis(10));
            }
            b2_error(stream, 403, "download_cap_exceeded", "cap");
            return true;
        }
        if req.range().is_some_and(|(first, _)| first >= PART as u64) {
            let body = serde_json::json!({"status": 503, "code": "service_unavailable", "message": "busy"});
            let headers = [
                ("Content-Type", "application/json".to_string()),
                ("Retry-After", "30".to_string()),
            ];
            respond(stream, 503, &headers, body.to_string().as_bytes());
            chunk_backs_off.store(true, Ordering::SeqCst);
            return true;
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let started = Instant::now();
    let run = restore_into(
        &fake,
        &dir,
        &[
            "--part-size",
            "64KiB",
            "--buffer-size",
            "16KiB",
            "--cores",
            "1",
        ],
    );
    let took = started.elapsed();
    assert!(
        backing_off.load(Ordering::SeqCst),
        "no chunk backed off: {}",
        run.stderr
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("download_cap_exceeded"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(ringdown::engine::NOT_FINISHED),
        "the large object is not named as left unfinished: {}",
        run.stderr
    );
    assert!(
        took.as_secs() < 10,
        "the run-fatal error waited {took:?} for a chunk's Retry-After: {}",
        run.stderr
    );
    // Exit 1 on a spent cap: the journal stays, no file is named, and the
    // large object's journaled chunks stay to resume after the cap's reset
    // (h40 #1), as after a refusal.
    let left: Vec<String> = tree(&dir)
        .into_iter()
        .filter(|path| !path.starts_with(".ringdown/") || path.starts_with(".ringdown/partial/"))
        .filter(|path| path != ".ringdown")
        .collect();
    assert!(
        left.len() == 1 && left[0].starts_with(".ringdown/partial/0-of-1-"),
        "left behind: {left:?}"
    );
    assert!(
        run.stderr.contains("the cap raised or reset"),
        "{}",
        run.stderr
    );
}

/// Waits (at most 10 s) until a journal in `state` (DIR/.ringdown) has a
/// chunk boundary past 0: a large object's first chunk is on disk and
/// journaled. For a hook to hold its answer until then.
fn until_a_chunk_is_journaled(state: std::path::PathBuf) -> impl Fn() {
    let journaled = move || {
        let Ok(entries) = std::fs::read_dir(&state) else {
            return false;
        };
        entries.flatten().any(|entry| {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            text.lines()
                .any(|line| line.starts_with("chunk\t") && !line.ends_with("\t0"))
        })
    };
    move || {
        let asked = Instant::now();
        while !journaled() && asked.elapsed().as_secs() < 10 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A large object of 4 parts on one core, its chunks of several buffers.
const FOUR_PARTS_ON_ONE_CORE: [&str; 6] = [
    "--part-size",
    "64KiB",
    "--buffer-size",
    "16KiB",
    "--cores",
    "1",
];

/// The key is revoked midway through a large object, after a chunk was
/// journaled: the restore ends with exit 3 and keeps that object's partial
/// file and journal, and the run with a valid key resumes from them, as
/// `get` does. It used to throw them away, as on exit 1 (h29 #3).
#[test]
fn a_key_revoked_mid_restore_keeps_a_large_objects_progress() {
    const PART: usize = 64 * 1024;
    let objects = [("big", data(4 * PART, 7))];
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let state = dir.join(".ringdown");
    let journaled = until_a_chunk_is_journaled(state.clone());
    let revoked = Arc::new(AtomicBool::new(false));
    let is_revoked = Arc::clone(&revoked);
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if req.path.ends_with("/b2_authorize_account") && is_revoked.load(Ordering::SeqCst) {
            b2_error(stream, 401, "unauthorized", "the key was deleted");
            return true;
        }
        if is_download(req) && req.range().is_some_and(|(first, _)| first >= PART as u64) {
            // The key goes once the first chunk is journaled.
            journaled();
            is_revoked.store(true, Ordering::SeqCst);
            b2_error(stream, 401, "bad_auth_token", "the key was deleted");
            return true;
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let tuning = FOUR_PARTS_ON_ONE_CORE;
    let run = restore_into(&fake, &dir, &tuning);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains("the same command resumes them"),
        "{}",
        run.stderr
    );
    let partials: Vec<_> = std::fs::read_dir(state.join("partial"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(partials.len(), 1, "{}", run.stderr);
    assert!(!dir.join("big").exists());

    let fake = Fake::start(objects.to_vec(), |_: &Req, _: &mut TcpStream| false);
    let run = restore_into(&fake, &dir, &tuning);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("resuming at byte"), "{}", run.stderr);
    assert_eq!(std::fs::read(dir.join("big")).unwrap(), objects[0].1);
}

/// The same large object fails midway for a cause other than a refusal
/// (503 after its last attempt), with a chunk journaled: exit 1 removes its
/// partial file, as every failure's (CONVENTIONS.md), and the notice of
/// partials kept for a rerun, which belongs to exit 3, is not printed.
#[test]
fn a_large_object_failing_midway_keeps_nothing_and_says_so() {
    const PART: usize = 64 * 1024;
    let objects = [("big", data(4 * PART, 7))];
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let state = dir.join(".ringdown");
    let journaled = until_a_chunk_is_journaled(state.clone());
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if is_download(req) && req.range().is_some_and(|(first, _)| first >= PART as u64) {
            journaled();
            b2_error(stream, 503, "service_unavailable", "down for good");
            return true;
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let tuning = [&FOUR_PARTS_ON_ONE_CORE[..], &["--max-attempts", "1"]].concat();
    let run = restore_into(&fake, &dir, &tuning);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("down for good"), "{}", run.stderr);
    assert!(!run.stderr.contains("resumes them"), "{}", run.stderr);
    let partials: Vec<_> = std::fs::read_dir(state.join("partial"))
        .map(|entries| entries.flatten().map(|entry| entry.file_name()).collect())
        .unwrap_or_default();
    assert!(partials.is_empty(), "{partials:?}\n{}", run.stderr);
    assert!(!dir.join("big").exists());
}

/// A server's error message with terminal escape sequences (ESC and the
/// 8-bit CSI) and a line break reaches stderr escaped: it cannot erase the
/// line above it, recolour one, or forge a line of ours (h29 #6).
#[test]
fn escape_sequences_in_a_servers_error_message_are_printed_escaped() {
    let objects = [("a", data(3, 1))];
    let hook = |req: &Req, stream: &mut TcpStream| {
        if is_download(req) {
            let message = "\u{1b}[1A\u{1b}[2K\u{1b}[32mok\u{1b}[0m\u{9b}2J\nringdown: all good";
            b2_error(stream, 503, "service_unavailable", message);
            return true;
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let run = restore_into(
        &fake,
        &dir,
        &[
            "--max-attempts",
            "2",
            "--retry-base-ms",
            "10",
            "--cores",
            "1",
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        !run.stderr.contains('\u{1b}') && !run.stderr.contains('\u{9b}'),
        "a control character reached stderr: {:?}",
        run.stderr
    );
    assert!(run.stderr.contains("\\u{1b}[2K"), "{}", run.stderr);
    assert!(
        !run.stderr.lines().any(|line| line == "ringdown: all good"),
        "{}",
        run.stderr
    );
}

/// h41 #4: `get b2://` whose HEAD answer lacks `x-bz-file-id` fetched its
/// ranges by name, pinned to no version: two uploads could be spliced, and
/// with no digest nothing caught it. Refused as restore refuses it.
#[test]
fn get_refuses_a_head_without_a_file_id() {
    let hook = |req: &Req, stream: &mut TcpStream| {
        if req.method == "HEAD" && is_download(req) {
            let head = head_with(
                "200 OK",
                "Content-Length: 3\r\nx-bz-content-sha1: none\r\nx-bz-file-name: a\r\n",
            );
            let _ = stream.write_all(&head);
            return true;
        }
        false
    };
    let fake = Fake::start(vec![("a", data(3, 1))], hook);
    let work = tempfile::tempdir().unwrap();
    let dest_dir = work.path().join("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let run = get_b2(&fake, "a", &dest_dir.join("a"), &[]);
    run.assert_failed_with(&["carries no x-bz-file-id", "drops B2's x-bz-* headers"]);
    assert_nothing_written(&dest_dir);
}

/// A download host in front of B2 that drops B2's `x-bz-*` headers (a
/// proxy, a CDN, a mirror): each file is refused, as nothing says which
/// version came, and the message says so. It said "the object was
/// replaced", which nothing was (h25).
#[test]
fn a_download_host_that_drops_b2s_headers_is_named_as_the_cause() {
    let objects = [("a", data(3, 1))];
    let hook = move |req: &Req, stream: &mut TcpStream| {
        if is_download(req) {
            let body = data(3, 1);
            let headers = [("Content-Type", "application/octet-stream".to_string())];
            match req.range() {
                Some((first, last)) => {
                    let last = last.min(body.len() as u64 - 1);
                    let mut headers = headers.to_vec();
                    headers.push((
                        "Content-Range",
                        format!("bytes {first}-{last}/{}", body.len()),
                    ));
                    respond(stream, 206, &headers, &body[first as usize..=last as usize]);
                }
                None => respond(stream, 200, &headers, &body),
            }
            return true;
        }
        false
    };
    let fake = Fake::start(objects.to_vec(), hook);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    let run = restore_into(&fake, &dir, &["--cores", "1"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("carries no x-bz-file-id")
            && run.stderr.contains("drops B2's x-bz-* headers"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("the object was replaced"),
        "{}",
        run.stderr
    );
    assert!(!dir.join("a").exists());
}

// ---------------------------------------------------------------- a size in dispute

/// Flags of a size-dispute run: as `TUNING`, but with `get`'s default of 15
/// attempts, which a dispute must not spend.
const DISPUTE_TUNING: [&str; 12] = [
    "--max-attempts",
    "15",
    "--retry-base-ms",
    "5",
    "--retry-max-ms",
    "20",
    "--cores",
    "1",
    "--connections",
    "2",
    "--part-size",
    "1MiB",
];

/// A probe (HEAD by name) that gives the object a third of its size, for
/// the very version the downloads then serve whole. Two answers that
/// dispute the planned size end a chunk's retries, and `get` probes once
/// more: a truthful second probe lets the download finish; a second lie
/// fails it at once, naming both sizes. It used to retry every chunk 15
/// times (69 GETs of a 14 MB object) and could blame the last transient
/// fault instead (h34 #3).
#[test]
fn a_probe_that_misstates_the_size_is_probed_once_more() {
    const SIZE: usize = 3 << 20;
    const CLAIMED: usize = 1 << 20;
    let object = data(SIZE, 7);
    for lies in [1, usize::MAX] {
        let heads = Arc::new(AtomicUsize::new(0));
        let gets = Arc::new(AtomicUsize::new(0));
        let (headed, got) = (Arc::clone(&heads), Arc::clone(&gets));
        let sha1 = hex(&Sha1::digest(&object));
        let hook = move |req: &Req, stream: &mut TcpStream| {
            if !is_download(req) {
                return false;
            }
            if req.method != "HEAD" {
                got.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            if headed.fetch_add(1, Ordering::SeqCst) >= lies {
                return false;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nx-bz-file-id: 4_zid0\r\nx-bz-file-name: obj\r\n\
                 x-bz-content-sha1: {sha1}\r\nx-bz-upload-timestamp: 1700000000000\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {CLAIMED}\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            true
        };
        let fake = Fake::start(vec![("obj", object.clone())], hook);
        let work = tempfile::tempdir().unwrap();
        let dest_dir = work.path().join("out");
        std::fs::create_dir(&dest_dir).unwrap();
        let dest = dest_dir.join("obj");
        let source = format!("b2://{BUCKET}/obj");
        let realm = fake.realm();
        let mut args = vec!["get", &source, dest.to_str().unwrap(), "--realm", &realm];
        args.extend(DISPUTE_TUNING);
        let run = ringdown(&args);
        assert_eq!(heads.load(Ordering::SeqCst), 2, "{}", run.stderr);
        // Per probe, one chunk of the claimed size: its two disputing
        // answers, and a GET the other connection may have sent ahead.
        let gets = gets.load(Ordering::SeqCst);
        if lies == 1 {
            assert_eq!(run.code, Some(0), "{}", run.stderr);
            assert!(std::fs::read(&dest).unwrap() == object);
            assert!(
                run.stderr.contains("probed the object again"),
                "{}",
                run.stderr
            );
            assert!(gets <= 3 + 3 + 2, "{gets} GETs\n{}", run.stderr);
        } else {
            run.assert_failed_with(&[
                "3145728 bytes",
                "not the 1048576",
                "after the object was probed again",
            ]);
            assert!(!run.stderr.contains("after 15 attempts"), "{}", run.stderr);
            assert!(gets <= 2 * 3, "{gets} GETs\n{}", run.stderr);
            assert_nothing_written(&dest_dir);
        }
    }
}

/// DEST turns into a FIFO or a directory while the object downloads
/// (another program made it): it is not renamed over, `--force` or not, as
/// it is not when there from the start; the download is kept with its
/// journal, and the next run into DEST resumes from it. (The check was made
/// before the download only; a directory failed the rename and lost the
/// download: h36 #2.)
#[test]
fn a_dest_that_becomes_a_fifo_or_directory_mid_download_is_not_replaced() {
    let object = data(300_000, 9);
    for (kind, force) in [
        ("a FIFO", true),
        ("a directory", true),
        ("a directory", false),
    ] {
        let work = tempfile::tempdir().unwrap();
        let dest_dir = work.path().join("out");
        std::fs::create_dir(&dest_dir).unwrap();
        let dest = dest_dir.join("obj");
        let made_at = dest.clone();
        let made = Arc::new(AtomicBool::new(false));
        let hook = move |req: &Req, _: &mut TcpStream| {
            if is_download(req) && req.method == "GET" && !made.swap(true, Ordering::SeqCst) {
                if kind == "a FIFO" {
                    common::make_fifo(&made_at);
                } else {
                    std::fs::create_dir(&made_at).unwrap();
                }
            }
            false
        };
        let fake = Fake::start(vec![("obj", object.clone())], hook);
        let flags: &[&str] = if force { &["--force"] } else { &[] };
        let run = get_b2(&fake, "obj", &dest, flags);
        run.assert_bounded();
        assert_eq!(run.code, Some(2), "{kind}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("became {kind} during the download")),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("pass --force"), "{}", run.stderr);
        let meta = std::fs::symlink_metadata(&dest).unwrap();
        assert!(meta.is_dir() || std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
        // What was kept is where the same DEST's next run looks: once the
        // obstacle is gone, that run resumes and fetches nothing.
        if meta.is_dir() {
            std::fs::remove_dir(&dest).unwrap();
        } else {
            std::fs::remove_file(&dest).unwrap();
        }
        let run = get_b2(&fake, "obj", &dest, flags);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(std::fs::read(&dest).unwrap() == object);
        assert!(run.stderr.contains("resum"), "{}", run.stderr);
    }
}

/// A listing that gives an object another size than its downloads (the
/// same fileId) fails that file after two answers, naming both sizes; the
/// other files are restored. So it does when a 503 between the two defers
/// the object off its connection: the dispute travels with the attempt
/// count (it was forgotten at the deferral, and the object went on to a
/// third answer: h36 #7).
#[test]
fn a_listed_size_the_downloads_dispute_fails_that_file_quickly() {
    let objects = [("a", data(3, 1)), ("b", data(300_000, 2))];
    for deferred in [false, true] {
        let mut entries = listing_entries(&objects);
        entries[1]["contentLength"] = serde_json::json!(100_000);
        let gets = Arc::new(AtomicUsize::new(0));
        let got = Arc::clone(&gets);
        let hook = move |req: &Req, stream: &mut TcpStream| {
            if req.path.ends_with("/b2_list_file_names") {
                return answer_one_page(stream, &entries);
            }
            if is_download(req) && req.query.contains("4_zid1") {
                // The second GET is told to come back later.
                if got.fetch_add(1, Ordering::SeqCst) == 1 && deferred {
                    b2_error(stream, 503, "service_unavailable", "busy");
                    return true;
                }
            }
            false
        };
        let fake = Fake::start(objects.to_vec(), hook);
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("dir");
        let run = restore_into(&fake, &dir, &DISPUTE_TUNING);
        run.assert_failed_with(&["300000 bytes", "not the 100000", "contradicts itself"]);
        assert!(!run.stderr.contains("after 15 attempts"), "{}", run.stderr);
        let gets = gets.load(Ordering::SeqCst);
        let expected = if deferred { 3..=3 } else { 2..=3 };
        assert!(expected.contains(&gets), "{gets} GETs of b\n{}", run.stderr);
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), data(3, 1));
        assert!(!dir.join("b").exists());
    }
}

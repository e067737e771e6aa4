//! Test harness for `ringdown serve`: spawns the built binary on port 0,
//! reads its ready line, and talks to it with a tiny blocking HTTP/1.1 client
//! (plain TCP or rustls trusting the printed CA).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

pub struct Served {
    pub child: Child,
    pub realm: String,
    pub address: String,
    pub ca_file: Option<PathBuf>,
    pub key_id: String,
    pub key: String,
    pub line: String,
    pub work: tempfile::TempDir,
}

pub const DEMO_KEY_ID: &str = "ringdown-demo-key-id";
pub const DEMO_KEY: &str = "ringdown-demo-application-key";

/// Starts `ringdown serve DIR --listen 127.0.0.1:0 [--plain] EXTRA…` with its
/// cache and certificates in a fresh temporary directory.
pub fn serve(dir: &Path, plain: bool, extra: &[&str]) -> Served {
    serve_with_env(dir, plain, extra, &[])
}

pub fn serve_with_env(dir: &Path, plain: bool, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let work = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .arg("serve")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .arg("--cert-dir")
        .arg(work.path().join("certs"))
        .args(extra)
        .env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.path().join("stderr.log")).unwrap());
    if plain {
        command.arg("--plain");
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn ringdown serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.ends_with('\n'),
        "no ready line; stderr: {}",
        std::fs::read_to_string(work.path().join("stderr.log")).unwrap_or_default()
    );
    let line = line.trim_end().to_string();
    let field = |name: &str| {
        line.split(' ')
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let realm = field("realm").expect("realm=");
    let address = realm.split("://").nth(1).unwrap().to_string();
    let ca_file = field("ca_file")
        .filter(|value| value != "none")
        .map(PathBuf::from);
    let key_id = field("key_id").expect("key_id=");
    let key = field("key").unwrap_or_else(|| {
        env.iter()
            .find(|(k, _)| *k == "B2_APPLICATION_KEY")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    });
    Served {
        child,
        realm,
        address,
        ca_file,
        key_id,
        key,
        line,
        work,
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The read timed out before the connection closed (stalled body).
    pub timed_out: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .map(|value| value.parse().unwrap())
    }
}

pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: Option<Vec<u8>>,
    pub read_timeout: Duration,
}

impl<'a> Request<'a> {
    pub fn new(method: &'a str, target: &'a str) -> Request<'a> {
        Request {
            method,
            target,
            headers: Vec::new(),
            body: None,
            read_timeout: Duration::from_secs(20),
        }
    }
    pub fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    pub fn json(mut self, value: serde_json::Value) -> Self {
        self.body = Some(serde_json::to_vec(&value).unwrap());
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    fn bytes(&self, host: &str) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = &self.body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body);
        }
        bytes
    }
}

/// Reads until EOF (or the read timeout) and splits head from body. The body
/// is whatever arrived, so truncated bodies show as shorter than Content-Length.
fn read_response(mut stream: impl Read, is_head: bool) -> Response {
    let mut raw = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut timed_out = false;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => raw.extend_from_slice(&buffer[..count]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                timed_out = true;
                break;
            }
            // A reset or an unclean TLS close ends the body; what arrived counts.
            Err(_) => break,
        }
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect();
    let body = if is_head {
        Vec::new()
    } else {
        raw[head_end..].to_vec()
    };
    Response {
        status,
        headers,
        body,
        timed_out,
    }
}

impl Served {
    pub fn send(&self, request: Request<'_>) -> Response {
        let stream = TcpStream::connect(&self.address).unwrap();
        stream.set_read_timeout(Some(request.read_timeout)).unwrap();
        let bytes = request.bytes(&self.address);
        let is_head = request.method == "HEAD";
        match &self.ca_file {
            None => {
                let mut stream = stream;
                stream.write_all(&bytes).unwrap();
                read_response(stream, is_head)
            }
            Some(ca_file) => {
                let mut tls = rustls::StreamOwned::new(tls_client(ca_file, "127.0.0.1"), stream);
                tls.write_all(&bytes).unwrap();
                tls.flush().unwrap();
                read_response(tls, is_head)
            }
        }
    }

    pub fn get(&self, target: &str, token: &str) -> Response {
        self.send(Request::new("GET", target).header("Authorization", token))
    }

    pub fn post(&self, operation: &str, token: &str, body: serde_json::Value) -> Response {
        let target = format!("/b2api/v3/{operation}");
        self.send(
            Request::new("POST", &target)
                .header("Authorization", token)
                .json(body),
        )
    }

    pub fn basic_auth(&self) -> String {
        let pair = format!("{}:{}", self.key_id, self.key);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// `b2_authorize_account` v3: (token, account id).
    pub fn authorize(&self) -> (String, String) {
        let response = self.send(
            Request::new("GET", "/b2api/v3/b2_authorize_account")
                .header("Authorization", self.basic_auth()),
        );
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let json = response.json();
        (
            json["authorizationToken"].as_str().unwrap().to_string(),
            json["accountId"].as_str().unwrap().to_string(),
        )
    }

    pub fn bucket_id(&self, token: &str, name: &str) -> String {
        let response = self.post(
            "b2_list_buckets",
            token,
            serde_json::json!({"bucketName": name}),
        );
        assert_eq!(response.status, 200);
        response.json()["buckets"][0]["bucketId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn access_log(&self) -> PathBuf {
        self.work.path().join("access.jsonl")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.work.path().join("stderr.log")).unwrap_or_default()
    }
}

pub fn tls_client(ca_file: &Path, server_name: &str) -> rustls::ClientConnection {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    rustls::ClientConnection::new(
        Arc::new(config),
        server_name.to_string().try_into().unwrap(),
    )
    .unwrap()
}

/// Deterministic content of `size` bytes for a name.
pub fn content(name: &str, size: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u32, |acc, b| acc.wrapping_mul(31).wrapping_add(b as u32));
    (0..size)
        .map(|i| (seed.wrapping_add(i as u32).wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

pub fn write_file(root: &Path, relative: &str, bytes: &[u8]) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A FIFO at `path` (its parents made): a node that a download must not
/// open, read, or rename a file over.
pub fn make_fifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap_or_else(|error| panic!("mkfifo {}: {error}", path.display()));
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends `signal` (as kill(1) spells it: "-TERM", "-INT") to `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Waits for `child` to exit; panics if it still runs after `limit`.
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "still running {:?} after {what}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// 16 KiB parts and buffers, 64 buffers: an object of a few MiB is hundreds
/// of chunks, enough answers to learn the round trip and to spread over
/// every connection (the wide-connection tests of `get` and `restore`).
pub const SMALL_CHUNKS: [&str; 6] = [
    "--part-size",
    "16KiB",
    "--buffer-size",
    "16KiB",
    "--buffers",
    "64",
];

/// `VmHWM` of `pid` once it runs ringdown, else `None`.
///
/// Right after `spawn` returns, the child may still be on the test's own
/// memory: exec wakes the vfork parent (posix_spawn) before it switches the
/// child to the new program's memory, so a read in that window reports the
/// test process's peak (hundreds of MiB while the dense-JSON test holds its
/// bodies). The name is set after the switch, so a status that already
/// names ringdown describes ringdown's memory.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    if field("Name:")? != "ringdown" {
        return None;
    }
    field("VmHWM:")?.trim_end_matches("kB").trim().parse().ok()
}

/// Runs a command to completion within `deadline`, draining both pipes on
/// threads so a chatty child never blocks on a full pipe. `on_poll(pid)` is
/// called every few ms while it runs (peak-RSS sampling); a child still
/// running at the deadline is killed and the test panics with its stderr.
pub fn run_with_deadline(
    mut command: Command,
    deadline: Duration,
    mut on_poll: impl FnMut(u32),
) -> std::process::Output {
    let started = std::time::Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringdown");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let pid = child.id();
    let status = loop {
        on_poll(pid);
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not finish within {deadline:?}; stderr:\n{}",
                command.get_args().collect::<Vec<_>>(),
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A CONNECT proxy on 127.0.0.1 for tests: each tunnel's target, as the
/// client named it, is recorded and mapped to 127.0.0.1 at the same port, or
/// at `to_port` when given (so a made-up host name the client never resolves
/// still arrives). With `refuse_with`, every CONNECT is answered with that
/// status instead.
pub struct ConnectProxy {
    pub url: String,
    pub targets: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ConnectProxy {
    pub fn start(refuse_with: Option<u16>) -> ConnectProxy {
        ConnectProxy::start_to(refuse_with, None)
    }

    pub fn start_to(refuse_with: Option<u16>, to_port: Option<u16>) -> ConnectProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&targets);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || tunnel(client, refuse_with, to_port, &recorded));
            }
        });
        ConnectProxy { url, targets }
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

/// Reads one request head from a test server's client: the request line
/// (headers are skipped), and the reader, for replying or relaying.
pub fn read_request_head(stream: TcpStream) -> Option<(String, BufReader<TcpStream>)> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    Some((request_line, reader))
}

fn tunnel(
    client: TcpStream,
    refuse_with: Option<u16>,
    to_port: Option<u16>,
    recorded: &std::sync::Mutex<Vec<String>>,
) {
    let Some((request_line, mut reader)) = read_request_head(client) else {
        return;
    };
    let mut parts = request_line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        let _ = reader
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    recorded.lock().unwrap().push(target.to_string());
    if let Some(status) = refuse_with {
        let reply = format!("HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\n\r\n");
        let _ = reader.get_mut().write_all(reply.as_bytes());
        return;
    }
    let port = match to_port {
        Some(port) => port.to_string(),
        None => target.rsplit(':').next().unwrap_or("0").to_string(),
    };
    let Ok(upstream) = TcpStream::connect(format!("127.0.0.1:{port}")) else {
        let _ = reader
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let mut client = reader.into_inner();
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (mut client_read, mut upstream_write) =
        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let upload = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(std::net::Shutdown::Write);
    });
    let mut upstream_read = upstream;
    let _ = std::io::copy(&mut upstream_read, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = upload.join();
}

/// Regular files under `dir` (relative names), excluding `.ringdown/`.
/// The records of a JSON Lines file (a `--report`, an access log); none if
/// it does not exist.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The names a `--report` (which must exist) has as skipped on the
/// journal's word.
pub fn skipped_by_journal(report: &Path) -> Vec<String> {
    assert!(report.is_file(), "no report at {}", report.display());
    json_lines(report)
        .iter()
        .filter(|line| line["status"] == "skipped" && line["reason"] == "journal")
        .map(|line| line["name"].as_str().unwrap().to_string())
        .collect()
}

pub fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let path = entry.path();
            let relative = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if relative == ".ringdown" {
                continue;
            }
            if kind.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(relative);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// The connections (access log ids) that served ranges of `name`, from a
/// `serve --access-log` file.
pub fn connections_serving_ranges(log: &Path, name: &str) -> BTreeSet<u64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|record| record["name"] == name && record["range"].is_string())
        .map(|record| record["connection"].as_u64().unwrap())
        .collect()
}

/// Whether `tool` is on PATH (tests that need setpriv or prlimit skip, with
/// a message, where it is not).
pub fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A memory cgroup of this test's own (v1 or v2), removed on drop; `None`
/// where none can be made (not root, no writable memory controller).
pub struct MemoryCgroup {
    dir: PathBuf,
    limit_file: &'static str,
}

impl MemoryCgroup {
    pub fn create(name: &str) -> Option<MemoryCgroup> {
        let name = format!("{name}-{}", std::process::id());
        let v2_controllers =
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control").unwrap_or_default();
        let (dir, limit_file) = if v2_controllers.split_whitespace().any(|c| c == "memory") {
            (Path::new("/sys/fs/cgroup").join(name), "memory.max")
        } else if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            (
                Path::new("/sys/fs/cgroup/memory").join(name),
                "memory.limit_in_bytes",
            )
        } else {
            return None;
        };
        std::fs::create_dir(&dir).ok()?;
        let cgroup = MemoryCgroup { dir, limit_file };
        std::fs::write(cgroup.dir.join(limit_file), (64u64 << 20).to_string()).ok()?;
        Some(cgroup)
    }

    pub fn limit(&self, bytes: u64) {
        std::fs::write(self.dir.join(self.limit_file), bytes.to_string()).unwrap();
    }

    /// `program` started inside the cgroup (a shell joins it, then execs).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(program);
        command
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes have exited; a cgroup directory is removed empty.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A tmpfs of `size` mounted at `dir` until dropped; `None` where it
/// cannot be mounted (not root), said on stderr.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|output| output.status.success());
        if !mounted {
            eprintln!(
                "skipped: cannot mount a tmpfs at {} (not root?)",
                dir.display()
            );
        }
        mounted.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
    }
}

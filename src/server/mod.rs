//! `ringdown serve DIR`: a B2-compatible origin for tests, demos and benchmarks.
//!
//! Every subdirectory of DIR is a bucket; every regular file below it is an
//! object. The B2 native API (v1–v4) is spoken closely enough for b2sdk, the
//! b2 CLI and rclone. Faults can be injected deterministically.
//!
//! Modules: `store` (buckets, names, safe opens, IDs), `sha1_cache` (digests
//! remembered outside DIR), `api` (JSON calls), `http` (routing, errors,
//! downloads), `body` (streamed file bodies), `faults`, `auth`, `tls`,
//! `access_log`, `encoding` (I/O-free text helpers), `write_watch` (closes
//! connections whose client stopped reading).

mod access_log;
mod api;
mod auth;
mod body;
pub mod config;
mod delay_line;
mod encoding;
mod fault_io;
mod faults;
mod history;
mod http;
mod sha1_cache;
mod store;
pub(crate) mod tls;
mod write_watch;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};

use crate::error::{Error, Result};
use crate::units::{parse_rate_bytes_per_s, parse_size_bytes};
use access_log::AccessLog;
use auth::{Credentials, KeyRestriction, Tokens};
use config::*;
use fault_io::{FaultIo, WriteCut};
use faults::{FaultConfig, Faults, StatusFault, TokenBucket};
use sha1_cache::Sha1Cache;
use store::Store;
use write_watch::{WatchedIo, WriteProgress, close_when_writes_stall};

fn parse_probability(text: &str) -> std::result::Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a probability"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{text:?}: a probability is between 0 and 1"));
    }
    Ok(value)
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints one line on stdout once listening:
  realm=https://127.0.0.1:PORT ca_file=/abs/ca.pem key_id=ID [key=SECRET]
(key= only with the built-in demo credentials; --plain prints realm=http://… ca_file=none).
Fault decisions hash (seed, request, attempt number), so runs repeat exactly.")]
pub struct ServeArgs {
    /// Directory whose subdirectories are served as buckets. Older versions and deletions:
    /// DIR/.versions/BUCKET/NAME/@MS (content uploaded at MS, ms since the epoch) and
    /// @MS.hide (NAME hidden at MS).
    pub dir: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain: bool,
    /// Directory for ca.pem (default: a temporary directory removed on exit). One running
    /// server per directory: it holds ca.pem.lock there, and a second one is refused.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Also write server.pem and server-key.pem into the cert dir (benchmarks: same cert for nginx).
    #[arg(long, hide = true)]
    pub write_server_key: bool,
    /// Application key ID clients must use (default: demo credentials, printed on stdout).
    #[arg(long, env = "B2_APPLICATION_KEY_ID", hide_env_values = true)]
    pub key_id: Option<String>,
    /// Application key clients must use (with --key-id).
    #[arg(long, env = "B2_APPLICATION_KEY", hide_env_values = true)]
    pub key: Option<SecretText>,
    /// Restrict the key to this bucket (`b2 key create --bucket`): calls on
    /// other buckets, and b2_list_buckets without a bucket, get 401 unauthorized.
    /// Repeatable: a multi-bucket key, which b2_authorize_account v1–v3 refuses.
    #[arg(long, value_name = "BUCKET")]
    pub key_bucket: Vec<String>,
    /// Restrict the key to names starting with PREFIX (`b2 key create --name-prefix`).
    #[arg(long, value_name = "PREFIX")]
    pub key_name_prefix: Option<String>,
    /// The key's capabilities, comma-separated [default: listBuckets,listFiles,readFiles,shareFiles].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub key_capabilities: Option<Vec<String>>,
    /// Objects of this size or more are reported as large files (contentSha1 "none",
    /// fileInfo.large_file_sha1).
    #[arg(long, default_value = LARGE_FILE_THRESHOLD_DEFAULT, value_parser = parse_size_bytes, value_name = "SIZE")]
    pub large_file_threshold: u64,
    /// What to publish as each object's SHA1 (real digests; `unverified:` ones; none at all).
    #[arg(long, value_enum, default_value = "real", value_name = "MODE")]
    pub publish_sha1: api::PublishSha1,
    /// Where the SHA1 index lives (default: $XDG_CACHE_HOME or ~/.cache /ringdown/serve/<hash of DIR>).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not hash the whole tree in the background at start (hash lazily only).
    #[arg(long)]
    pub no_index: bool,
    /// Seed of the fault decisions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Round trip added to every connection: each byte, either way, arrives
    /// half of it late (a delay line below TLS; a long link's window too).
    #[arg(long, default_value_t = 0, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=config::LATENCY_MS_MAX))]
    pub latency_ms: u64,
    /// Bandwidth limit of each connection (e.g. 10MB/s, 512KiB).
    #[arg(long, value_parser = parse_rate_bytes_per_s, value_name = "RATE")]
    pub rate_per_conn: Option<u64>,
    /// Probability of 503 service_unavailable (with Retry-After: 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub fail_rate: f64,
    /// Probability of 429 too_many_requests.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub throttle_rate: f64,
    /// Send Retry-After with 429s (b2sdk 2.8.0 crashes on it, so off by default).
    #[arg(long, value_name = "S")]
    pub retry_after_s: Option<u64>,
    /// Probability of closing the connection mid-body.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub reset_rate: f64,
    /// Probability of going silent mid-body with the socket left open.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub stall_rate: f64,
    /// Probability of flipping one byte of a body.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub corrupt_rate: f64,
    /// Probability of ending a body early (Content-Length promised more), then closing.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub short_body_rate: f64,
    /// Probability of cutting the connection part-way through a response head.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub reset_head_rate: f64,
    /// Probability of cutting a new TLS connection part-way through the handshake.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub reset_handshake_rate: f64,
    /// Probability of closing a reused keep-alive connection instead of answering it.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub close_keepalive_rate: f64,
    /// Answer with HTTP status CODE (400-599, B2 error body) with probability P, with
    /// `Retry-After: S` when given. Repeatable, e.g. --status-rate 500:0.1 --status-rate 503:0.1:1.
    #[arg(long, value_parser = StatusFault::parse, value_name = "CODE:P[:S]")]
    pub status_rate: Vec<StatusFault>,
    /// Probability of a 206 whose Content-Range is not the range requested.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub wrong_range_rate: f64,
    /// Probability of answering a range request with 200 and the whole object.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub ignore_range_rate: f64,
    /// Probability that a 206 answer to a range request has a Content-Length shorter
    /// than its Content-Range (which is unchanged; only that many bytes are sent).
    /// A 200 (the whole object) is left alone: see --short-object-rate.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub long_body_rate: f64,
    /// Probability that a 200 answer (the whole object) has a Content-Length shorter
    /// than the object; only that many bytes are sent (as if it shrank since listed).
    /// A HEAD, which sends no body, always gives the object's size.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub short_object_rate: f64,
    /// Publish a wrong SHA1 for this object name (listing, file info and download
    /// headers agree on it; the bytes are right). Repeatable.
    #[arg(long, value_name = "NAME")]
    pub wrong_sha1: Vec<String>,
    /// Issue the server certificate for this DNS name only (instead of localhost,
    /// 127.0.0.1 and ::1), to test clients against a certificate for another name.
    #[arg(long, value_name = "NAME")]
    pub cert_name: Option<String>,
    /// Authorization tokens expire after this many seconds (401 expired_auth_token).
    #[arg(long, value_name = "S")]
    pub token_ttl_s: Option<u64>,
    /// Answer b2_authorize_account with 503 service_unavailable after the first N
    /// (an API outage after the run began: tokens that expire cannot be refreshed).
    #[arg(long, value_name = "N")]
    pub authorize_max: Option<u64>,
    /// What b2_authorize_account answers past `--authorize-max`: `outage`
    /// (503 service_unavailable), `revoked` (401 unauthorized: the key was
    /// deleted) or `cap` (403 transaction_cap_exceeded: the daily cap is spent).
    #[arg(long, value_name = "ANSWER", value_enum, default_value_t = AuthorizeRefusal::Outage)]
    pub authorize_max_answer: AuthorizeRefusal,
    /// Append one JSON line per response (method, path, name, range, status, bytes_sent, fault).
    #[arg(long, value_name = "FILE")]
    pub access_log: Option<PathBuf>,
    /// Publish URL as `downloadUrl` in b2_authorize_account instead of this server's
    /// own address, as B2 publishes download hosts apart from API hosts: another
    /// origin (nginx, a cache) that serves the same files under /file/BUCKET/NAME.
    #[arg(long, value_parser = parse_download_url, value_name = "URL")]
    pub download_url: Option<String>,
    /// Serve objects as encrypted with this SSE-C key (a file of the 32 raw bytes or their
    /// base64): listed with serverSideEncryption SSE-C, and downloaded (or HEAD) only with
    /// the key's headers; a missing or wrong key gets 403 access_denied, as on B2. Repeat it
    /// with one --sse-c-prefix each for a bucket under several keys.
    #[arg(long, value_name = "FILE")]
    pub sse_c_key_file: Vec<PathBuf>,
    /// Only names starting with PREFIX are encrypted (every bucket), under the
    /// --sse-c-key-file given in the same place; the longest matching prefix wins.
    #[arg(long, value_name = "PREFIX", requires = "sse_c_key_file")]
    pub sse_c_prefix: Vec<String>,
    /// List the objects of each --sse-c-key-file (in order) with this fileInfo sse_c_key_id,
    /// as b2sdk and the b2 CLI store a key's ID when given one.
    #[arg(long, value_name = "ID", requires = "sse_c_key_file")]
    pub sse_c_key_id: Vec<String>,
}

/// `--sse-c-key-file`: which objects are stored encrypted, under which key.
pub struct SseCObjects {
    pub key: crate::b2::CustomerKey,
    pub prefix: String,
    /// fileInfo `sse_c_key_id` of these objects.
    pub key_id: Option<String>,
}

impl SseCObjects {
    fn from_args(args: &ServeArgs) -> Result<Vec<SseCObjects>> {
        let keys = args.sse_c_key_file.len();
        let prefixes = match args.sse_c_prefix.len() {
            0 if keys <= 1 => vec![String::new(); keys],
            n if n == keys => args.sse_c_prefix.clone(),
            n => {
                return Err(Error::Usage(format!(
                    "{keys} --sse-c-key-file and {n} --sse-c-prefix: give one prefix per key \
                     (none for a single key over every name)"
                )));
            }
        };
        if let Some(twice) = prefixes
            .iter()
            .enumerate()
            .find(|(index, prefix)| prefixes[..*index].contains(prefix))
            .map(|(_, prefix)| prefix)
        {
            return Err(Error::Usage(format!(
                "--sse-c-prefix {twice:?} given twice: one key per prefix"
            )));
        }
        if !args.sse_c_key_id.is_empty() && args.sse_c_key_id.len() != keys {
            return Err(Error::Usage(format!(
                "{keys} --sse-c-key-file and {} --sse-c-key-id: give one ID per key, or none",
                args.sse_c_key_id.len()
            )));
        }
        let mut objects = Vec::with_capacity(keys);
        for (index, (path, prefix)) in args.sse_c_key_file.iter().zip(prefixes).enumerate() {
            // A flag naming a file that cannot be read: exit 2, as the client's.
            let contents = std::fs::read(path).map_err(|error| {
                Error::Usage(format!("--sse-c-key-file {}: {error}", path.display()))
            })?;
            let key = crate::b2::CustomerKey::parse(&contents).map_err(|why| {
                Error::Usage(format!("--sse-c-key-file {}: {why}", path.display()))
            })?;
            objects.push(SseCObjects {
                key,
                prefix,
                key_id: args.sse_c_key_id.get(index).cloned(),
            });
        }
        Ok(objects)
    }
}

fn parse_download_url(text: &str) -> std::result::Result<String, String> {
    let url = crate::client::url::Url::parse(text)?;
    if url.path_and_query != "/" {
        return Err(format!(
            "{text:?}: a download URL is scheme://host[:port] only; clients append /file/BUCKET/NAME"
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// A secret flag value: `Debug` never shows it.
#[derive(Clone)]
pub struct SecretText(String);

impl std::str::FromStr for SecretText {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> std::result::Result<SecretText, Self::Err> {
        Ok(SecretText(text.to_string()))
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Shared state of the running server.
pub struct Server {
    store: Store,
    credentials: Credentials,
    /// What that key may do.
    key: KeyRestriction,
    tokens: Tokens,
    realm: String,
    /// `downloadUrl` of b2_authorize_account: the realm unless `--download-url`.
    download_url: String,
    large_file_threshold_bytes: u64,
    publish_sha1: api::PublishSha1,
    faults: Faults,
    access_log: Option<Arc<AccessLog>>,
    /// Numbers accepted connections for the access log.
    connections_accepted: std::sync::atomic::AtomicU64,
    sse_c: Vec<SseCObjects>,
    /// `--authorize-max`, and the authorizations answered so far.
    authorize_max: Option<u64>,
    authorize_max_answer: AuthorizeRefusal,
    authorized: std::sync::atomic::AtomicU64,
}

/// `--authorize-max-answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthorizeRefusal {
    Outage,
    Revoked,
    Cap,
}

impl Server {
    /// Counts an authorization; past `--authorize-max`, how it is refused.
    pub fn authorize_refusal(&self) -> Option<AuthorizeRefusal> {
        let before = self
            .authorized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let refused = self.authorize_max.is_some_and(|max| before >= max);
        refused.then_some(self.authorize_max_answer)
    }

    /// How `name` is stored if encrypted with SSE-C: under the key of the
    /// longest `--sse-c-prefix` it starts with.
    pub fn sse_c(&self, name: &str) -> Option<&SseCObjects> {
        self.sse_c
            .iter()
            .filter(|sse_c| name.starts_with(&sse_c.prefix))
            .max_by_key(|sse_c| sse_c.prefix.len())
    }

    /// The SSE-C key `name` is stored under, if it is.
    pub fn sse_c_key(&self, name: &str) -> Option<&crate::b2::CustomerKey> {
        self.sse_c(name).map(|sse_c| &sse_c.key)
    }
}

fn credentials_from(args: &ServeArgs) -> Result<Credentials> {
    let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let key = args.key.as_ref().map(|key| key.0.clone());
    match (non_empty(&args.key_id), non_empty(&key)) {
        (Some(key_id), Some(key)) => Ok(Credentials::new(key_id, key, false)),
        (None, None) => Ok(Credentials::new(DEMO_KEY_ID.to_string(), DEMO_KEY.to_string(), true)),
        _ => Err(Error::Usage(
            "give both --key-id and --key (or B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY), or neither for the demo credentials"
                .into(),
        )),
    }
}

/// The host clients should use: loopback for wildcard listens.
fn realm_host(address: &SocketAddr) -> String {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

fn make_temp_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = base.join(format!(
            "ringdown-serve-{}-{nanos:08x}-{attempt}",
            std::process::id()
        ));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(Error::io(
                    format!("creating a directory in {}", base.display()),
                    error,
                ));
            }
        }
    }
    Err(Error::Fatal(format!(
        "cannot create a temporary directory in {}",
        base.display()
    )))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let dir = std::fs::canonicalize(&args.dir)
        .map_err(|error| Error::Usage(format!("{}: {error}", args.dir.display())))?;
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let credentials = credentials_from(&args)?;
    // Flags checked before anything is written: a bad one leaves no
    // certificate directory behind (nor replaces --cert-dir's ca.pem).
    let sse_c = SseCObjects::from_args(&args)?;

    // TLS identity and ca.pem before binding, so the ready line is final.
    // A temporary directory goes with the server, however `run` returns.
    let mut _temporary_cert_dir = None;
    // Held until the server exits (dropped at the end of `run`).
    let mut _cert_dir_lock = None;
    let (acceptor, ca_file) = if args.plain {
        (None, None)
    } else {
        let cert_dir = match &args.cert_dir {
            Some(cert_dir) => {
                std::fs::create_dir_all(cert_dir).map_err(|error| {
                    Error::io(format!("creating {}", cert_dir.display()), error)
                })?;
                std::fs::canonicalize(cert_dir).map_err(|error| {
                    Error::io(format!("resolving {}", cert_dir.display()), error)
                })?
            }
            None => {
                let cert_dir = make_temp_dir()?;
                _temporary_cert_dir = Some(RemovedOnDrop(cert_dir.clone()));
                cert_dir
            }
        };
        _cert_dir_lock = Some(tls::lock_cert_dir(&cert_dir)?);
        let identity = tls::generate(args.cert_name.as_deref())?;
        tls::write_pem(&cert_dir, "ca.pem", &identity.ca_pem, 0o644)?;
        if args.write_server_key {
            tls::write_pem(&cert_dir, "server.pem", &identity.server_cert_pem, 0o644)?;
            tls::write_pem(&cert_dir, "server-key.pem", &identity.server_key_pem, 0o600)?;
        }
        (
            Some(tls::acceptor(&identity)?),
            Some(cert_dir.join("ca.pem")),
        )
    };

    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| sha1_cache::default_cache_dir(&dir));
    let sha1_cache = Sha1Cache::open(Some(&cache_dir));
    let store = Store::open(&dir, sha1_cache)
        .map_err(|error| Error::io(format!("opening {}", dir.display()), error))?;
    let access_log = match &args.access_log {
        Some(path) => Some(Arc::new(AccessLog::create(path).map_err(|error| {
            Error::io(format!("opening {}", path.display()), error)
        })?)),
        None => None,
    };
    let faults = Faults::new(FaultConfig {
        seed: args.seed,
        latency_ms: args.latency_ms,
        rate_per_conn_bytes_per_s: args.rate_per_conn.filter(|rate| *rate > 0),
        fail_rate: args.fail_rate,
        throttle_rate: args.throttle_rate,
        retry_after_s: args.retry_after_s,
        reset_rate: args.reset_rate,
        stall_rate: args.stall_rate,
        corrupt_rate: args.corrupt_rate,
        short_body_rate: args.short_body_rate,
        reset_head_rate: args.reset_head_rate,
        reset_handshake_rate: args.reset_handshake_rate,
        close_keepalive_rate: args.close_keepalive_rate,
        status_faults: args.status_rate.clone(),
        wrong_range_rate: args.wrong_range_rate,
        ignore_range_rate: args.ignore_range_rate,
        long_body_rate: args.long_body_rate,
        short_object_rate: args.short_object_rate,
        wrong_sha1_names: args.wrong_sha1.clone(),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ringdown-serve")
        .build()
        .map_err(|error| Error::io("starting the server runtime", error))?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|error| Error::io(format!("listening on {}", args.listen), error))?;
        let local = listener
            .local_addr()
            .map_err(|error| Error::io("reading the bound address", error))?;
        let scheme = if args.plain { "http" } else { "https" };
        let realm = format!("{scheme}://{}:{}", realm_host(&local), local.port());
        let server = Arc::new(Server {
            store,
            credentials,
            key: KeyRestriction {
                buckets: args.key_bucket.clone(),
                name_prefix: args.key_name_prefix.clone().filter(|p| !p.is_empty()),
                // `--key-capabilities ''`: a key that may do nothing.
                capabilities: match &args.key_capabilities {
                    Some(list) => list.iter().filter(|c| !c.is_empty()).cloned().collect(),
                    None => KeyRestriction::default().capabilities,
                },
            },
            tokens: Tokens::new(args.token_ttl_s),
            authorize_max: args.authorize_max,
            authorize_max_answer: args.authorize_max_answer,
            authorized: std::sync::atomic::AtomicU64::new(0),
            download_url: args.download_url.clone().unwrap_or_else(|| realm.clone()),
            realm,
            large_file_threshold_bytes: args.large_file_threshold,
            publish_sha1: args.publish_sha1,
            faults,
            access_log,
            connections_accepted: std::sync::atomic::AtomicU64::new(0),
            sse_c,
        });
        // Handlers go in before the ready line: a script may signal us as
        // soon as it has read it.
        let signals = Signals::install()?;
        print_ready_line(&server, ca_file.as_deref())?;
        say!(
            "ringdown serve: serving {} on {} (SHA1 cache: {})",
            dir.display(),
            server.realm,
            server
                .store
                .sha1_cache
                .index_path
                .as_ref()
                .map_or("memory only".to_string(), |p| p.display().to_string())
        );
        if !args.no_index {
            let indexer_server = server.clone();
            std::thread::Builder::new()
                .name("ringdown-serve-index".into())
                .spawn(move || index_everything(&indexer_server))
                .map_err(|error| Error::io("starting the SHA1 indexer", error))?;
        }
        accept_loop(server, listener, acceptor, signals).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// A directory of ours, removed with what it holds when dropped.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn print_ready_line(server: &Server, ca_file: Option<&Path>) -> Result<()> {
    let mut line = format!(
        "realm={} ca_file={} key_id={}",
        server.realm,
        ca_file.map_or("none".to_string(), |path| path.display().to_string()),
        server.credentials.key_id
    );
    if server.credentials.is_demo {
        line.push_str(&format!(" key={}", server.credentials.key()));
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|error| Error::io("writing the ready line to stdout", error))
}

/// Hashes every object not yet in the SHA1 cache, one file at a time (so a
/// benchmark started meanwhile keeps the other cores), and reports the speed.
fn index_everything(server: &Server) {
    let started = Instant::now();
    let (mut files, mut hashed_files, mut hashed_bytes) = (0u64, 0u64, 0u64);
    let Ok(buckets) = server.store.buckets() else {
        return;
    };
    for bucket in buckets {
        let Ok(names) = server.store.names(&bucket) else {
            continue;
        };
        for name in names.iter() {
            let Ok(meta) = server.store.stat(&bucket, name) else {
                continue;
            };
            files += 1;
            let key = format!("{}/{}", bucket.name, name);
            if server
                .store
                .sha1_cache
                .lookup(&key, &meta.version)
                .is_some()
            {
                continue;
            }
            let size_bytes = meta.size_bytes;
            if api::view_of_listed(server, meta).is_ok() {
                hashed_files += 1;
                hashed_bytes += size_bytes;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    say!(
        "ringdown serve: SHA1 index ready: {files} files, hashed {hashed_files} ({hashed_bytes} bytes) in {seconds:.3} s ({:.0} MB/s)",
        hashed_bytes as f64 / seconds.max(1e-9) / 1e6
    );
}

struct Signals {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let sigterm = signal(SignalKind::terminate())
            .map_err(|error| Error::io("installing SIGTERM handler", error))?;
        let sigint = signal(SignalKind::interrupt())
            .map_err(|error| Error::io("installing SIGINT handler", error))?;
        Ok(Signals { sigterm, sigint })
    }
}

async fn accept_loop(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    signals: Signals,
) -> Result<()> {
    let Signals {
        mut sigterm,
        mut sigint,
    } = signals;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(server.clone(), stream, acceptor.clone()));
                }
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    say!("ringdown serve: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_FAILURE_BACKOFF_MS)).await;
                }
            },
            _ = sigterm.recv() => { say!("ringdown serve: SIGTERM, exiting"); return Ok(()); }
            _ = sigint.recv() => { say!("ringdown serve: SIGINT, exiting"); return Ok(()); }
        }
    }
}

async fn serve_connection(
    server: Arc<Server>,
    socket: tokio::net::TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let _ = socket.set_nodelay(true);
    match server.faults.config.latency_ms {
        0 => serve_stream(server, socket, acceptor).await,
        round_trip_ms => {
            let line = delay_line::insert(socket, Duration::from_millis(round_trip_ms));
            serve_stream(server, line, acceptor).await;
        }
    }
}

async fn serve_stream<S>(
    server: Arc<Server>,
    stream: S,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let write_cut = Arc::new(WriteCut::new());
    let connection = Arc::new(http::Connection {
        id: server
            .connections_accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        requests_served: std::sync::atomic::AtomicU64::new(0),
        write_cut: write_cut.clone(),
        limiter: server
            .faults
            .config
            .rate_per_conn_bytes_per_s
            .map(|rate| Arc::new(Mutex::new(TokenBucket::new(rate)))),
    });
    let connection_id = connection.id;
    let service_server = server.clone();
    let service = hyper::service::service_fn(move |request| {
        http::handle(service_server.clone(), connection.clone(), request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(REQUEST_HEAD_TIMEOUT_S))
        .max_buf_size(REQUEST_HEAD_MAX_BYTES)
        .max_header_size(REQUEST_HEAD_MAX_BYTES)
        .max_headers(REQUEST_HEADERS_MAX)
        .keep_alive(true);
    let write_progress = WriteProgress::new();
    let write_stall_limit = Duration::from_secs(WRITE_STALL_TIMEOUT_S);
    // Connection errors (client gone, injected resets) are normal here: not logged.
    match acceptor {
        Some(acceptor) => {
            // A handshake cut acts below TLS, on the ciphertext.
            let handshake_cut = Arc::new(WriteCut::new());
            if let Some(at_bytes) = server.faults.handshake_cut() {
                handshake_cut.arm(at_bytes);
                if let Some(log) = &server.access_log {
                    log.write(&access_log::AccessRecord {
                        time_ms: auth::now_ms(),
                        method: "TLS".into(),
                        path: String::new(),
                        bucket: None,
                        name: None,
                        range: None,
                        status: 0,
                        bytes_sent: at_bytes as u64,
                        fault: Some("reset_handshake".into()),
                        connection: connection_id,
                        sse_c_key: false,
                    });
                }
            }
            let handshake = tokio::time::timeout(
                Duration::from_secs(TLS_HANDSHAKE_TIMEOUT_S),
                acceptor.accept(FaultIo::new(stream, handshake_cut)),
            )
            .await;
            if let Ok(Ok(tls)) = handshake {
                let io = WatchedIo::new(FaultIo::new(tls, write_cut), write_progress.clone());
                let serving = builder.serve_connection(TokioIo::new(io), service);
                close_when_writes_stall(serving, &write_progress, write_stall_limit).await;
            }
        }
        None => {
            let io = WatchedIo::new(FaultIo::new(stream, write_cut), write_progress.clone());
            let serving = builder.serve_connection(TokioIo::new(io), service);
            close_when_writes_stall(serving, &write_progress, write_stall_limit).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_flag_values_are_redacted_in_debug() {
        let key: SecretText = "K005-server-side-secret".parse().unwrap();
        let text = format!("{:?}", Some(key));
        assert!(!text.contains("server-side-secret"), "{text}");
    }
}

//! `ringdown get` flags → `DownloadOptions`, then the human and JSON output.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ticker::{Ticker, eta_text};
use crate::b2::{CustomerKey, Keyring};
use crate::config;
use crate::engine::{EngineConfig, Progress};
use crate::error::{Error, Result};
use crate::get::{DirectIo, Download, DownloadOptions, Source, Verification};
use crate::runtime::{self, PinMode};
use crate::units::parse_size_bytes;

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// b2://BUCKET/NAME, b2id://FILEID (one version, as `b2 ls --versions --long` shows it),
    /// or an http(s):// URL of an origin that supports Range.
    pub source: String,
    /// A file path, or an existing directory (the object's base name is appended).
    pub dest: PathBuf,
    /// `production`, `staging`, `dev` or a URL. Also B2_REALM, then B2_ENVIRONMENT.
    #[arg(long)]
    pub realm: Option<String>,
    /// Trust this CA (PEM) in addition to the system roots (SSL_CERT_FILE replaces those).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Replace DEST if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// Expected SHA1 (40 hex): what a plain URL's object is verified against;
    /// for a B2 object, checked against the SHA1 B2 publishes (or used where
    /// it publishes none).
    #[arg(long)]
    pub sha1: Option<String>,
    /// Exit 1 when the object carries no digest to verify against.
    #[arg(long)]
    pub require_verified: bool,
    /// b2:// only: the version that was current at this instant (the newest uploaded at or
    /// before it; an error if the name was deleted by then or created later). RFC 3339 with a
    /// zone, or a date (00:00 UTC).
    #[arg(long, value_name = "TIME", value_parser = crate::units::parse_instant_ms)]
    pub as_of: Option<u64>,
    /// The SSE-C key of objects B2 stores encrypted with a customer key: a file holding the 32
    /// raw bytes or their base64 (else B2_SOURCE_SSE_C_KEY_B64, as for the b2 CLI). Sent only
    /// over https, with every request for the object. Repeat it for an object whose key is one
    /// of several (a rotated key): each is tried until B2 opens the object.
    #[arg(long, value_name = "FILE")]
    pub sse_c_key_file: Vec<PathBuf>,
    /// fsync the file and its directory before reporting success.
    #[arg(long)]
    pub fsync: bool,
    /// Write the summary and stage histograms as JSON to this file.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// One result line plus errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Engine tuning shared by `get` and `restore`. Defaults were chosen by
/// measurement (README, "Tuning").
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// Cores (threads with their own io_uring). Default: CPUs in the affinity mask.
    #[arg(long)]
    pub cores: Option<usize>,
    /// Keep-alive connections per core. Default: 16. A large object's chunks
    /// go to at most 4 per core, and to all of them once nothing else is left
    /// where the round trip is 1 ms or more (a WAN, where each connection
    /// moves at most a window per round trip); `restore`'s others fetch
    /// small objects. `get --connections N`: N per core take chunks.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Bytes per range request (e.g. 8M, 64MiB), rounded up to whole buffers.
    /// Default: 8 MiB, or less so that two parts of every connection taking
    /// chunks (4 per core) fit in the buffer pool at once (the in-order
    /// hash window never starves).
    #[arg(long, value_parser = parse_size_bytes)]
    pub part_size: Option<u64>,
    /// Bytes per registered buffer (multiple of 4 KiB).
    #[arg(long, value_parser = parse_size_bytes, default_value = "1MiB")]
    pub buffer_size: u64,
    /// Registered buffers per core [default: 16 for get, 12 for restore].
    #[arg(long)]
    pub buffers: Option<usize>,
    /// Attempts per chunk, counting the first (the calls that start a run
    /// make at most 5).
    #[arg(long, default_value_t = config::MAX_ATTEMPTS_DEFAULT)]
    pub max_attempts: u32,
    /// First retry backoff, doubled per attempt.
    #[arg(long, default_value_t = config::RETRY_BASE_MS_DEFAULT)]
    pub retry_base_ms: u64,
    /// Longest retry backoff.
    #[arg(long, default_value_t = config::RETRY_MAX_MS_DEFAULT)]
    pub retry_max_ms: u64,
    /// Stall timeout: connect, TLS handshake, response head or an idle body.
    #[arg(long, default_value_t = config::TIMEOUT_S_DEFAULT)]
    pub timeout_s: u64,
    /// O_DIRECT writes from the aligned buffers (auto: objects ≥ 1 MiB, in `restore` those fetched in parts, where the filesystem supports it; on: every object).
    #[arg(long, value_enum, default_value_t = DirectIo::Auto)]
    pub direct_io: DirectIo,
    /// Receive at most RATE in total (e.g. 100MB/s, 50MiB, 1G/s; K M G are powers of 1024,
    /// KB MB GB of 1000), over every core and connection. Default: no limit.
    #[arg(long, value_parser = crate::units::parse_rate_bytes_per_s, value_name = "RATE")]
    pub limit_rate: Option<u64>,
    /// Pin each core's thread to a CPU (auto: when the affinity mask has exactly --cores CPUs).
    #[arg(long, value_enum, default_value_t = PinMode::Auto)]
    pub pin: PinMode,
}

/// The flags' defaults: the clap attributes above are their one source.
impl Default for TuningArgs {
    fn default() -> TuningArgs {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            tuning: TuningArgs,
        }
        <Defaults as clap::Parser>::parse_from(["ringdown"]).tuning
    }
}

impl EngineConfig {
    /// The engine as `ringdown get` (`restore`: `ringdown restore`) runs it
    /// without tuning flags, its buffer pool sized against this process's
    /// RLIMIT_MEMLOCK (unregistered buffers when it does not fit; the run's
    /// notices say so). For library callers.
    pub fn defaults(restore: bool) -> EngineConfig {
        let (engine, _memlock_notice) = TuningArgs::default()
            .engine_config(restore)
            .expect("the default flags are valid");
        engine
    }
}

impl TuningArgs {
    /// Validates the flags and sizes the buffer pool against RLIMIT_MEMLOCK.
    /// The engine's configuration and, when RLIMIT_MEMLOCK is too small to
    /// register the buffers, the notice saying so. `restore`: the defaults
    /// of `ringdown restore` (fewer buffers per core; see `config`).
    pub fn engine_config(&self, restore: bool) -> Result<(EngineConfig, Option<String>)> {
        let usage = |msg: String| Err(Error::Usage(msg));
        let cores = self.cores.unwrap_or_else(runtime::available_cores);
        if cores == 0 || cores > config::CORES_MAX {
            return usage(format!(
                "--cores {cores}: expected 1..={}",
                config::CORES_MAX
            ));
        }
        let connections = self.connections.unwrap_or(if restore {
            config::RESTORE_CONNECTIONS_PER_CORE_DEFAULT
        } else {
            config::GET_CONNECTIONS_PER_CORE_DEFAULT
        });
        if connections == 0 || connections > config::CONNECTIONS_PER_CORE_MAX {
            return usage(format!(
                "--connections {connections}: expected 1..={}",
                config::CONNECTIONS_PER_CORE_MAX
            ));
        }
        // A large object's chunks take at most a few connections per core
        // (all of them over a long round trip, once nothing else is left):
        // restore's others keep fetching small objects, get's wait for a WAN.
        // `get --connections N` means N taking chunks.
        let large_connections = if restore || self.connections.is_none() {
            connections.min(config::LARGE_CONNECTIONS_PER_CORE_DEFAULT)
        } else {
            connections
        };
        if !config::buffer_size_ok(self.buffer_size) {
            return usage(format!(
                "--buffer-size {}: expected a multiple of 4 KiB up to {} MiB",
                self.buffer_size,
                config::BUFFER_SIZE_BYTES_MAX >> 20
            ));
        }
        let buffers = self.buffers.unwrap_or(if restore {
            config::RESTORE_BUFFERS_PER_CORE_DEFAULT
        } else {
            config::BUFFERS_PER_CORE_DEFAULT
        });
        // Two buffers at least: one is the reserve for the hash frontier.
        if !(2..=config::BUFFERS_PER_CORE_MAX).contains(&buffers) {
            return usage(format!(
                "--buffers {buffers}: expected 2..={}",
                config::BUFFERS_PER_CORE_MAX
            ));
        }
        if self.part_size == Some(0) {
            return usage("--part-size must be positive".into());
        }
        if self.max_attempts == 0 {
            return usage("--max-attempts counts the first try: at least 1".into());
        }
        if self.retry_base_ms > self.retry_max_ms {
            return usage(format!(
                "--retry-base-ms {} is more than --retry-max-ms {}: the first backoff would pass the longest",
                self.retry_base_ms, self.retry_max_ms
            ));
        }
        if self.timeout_s == 0 {
            return usage("--timeout-s must be at least 1".into());
        }
        if self.limit_rate == Some(0) {
            return usage("--limit-rate must be positive (leave it out for no limit)".into());
        }
        // Whole buffers per part keep every O_DIRECT write aligned.
        let part_share_bytes = (buffers as u64 * self.buffer_size)
            / (large_connections as u64 * config::POOL_PARTS_PER_CONNECTION);
        let part_size_bytes = self
            .part_size
            .unwrap_or_else(|| config::PART_SIZE_BYTES_DEFAULT.min(part_share_bytes))
            .max(1)
            .next_multiple_of(self.buffer_size);
        let mut engine = EngineConfig {
            cores,
            pin: self.pin,
            connections_per_core: connections,
            large_connections_per_core: large_connections,
            buffers_per_core: buffers,
            buffer_size_bytes: self.buffer_size as usize,
            part_size_bytes,
            max_attempts: self.max_attempts,
            retry_base_ms: self.retry_base_ms,
            retry_max_ms: self.retry_max_ms,
            timeout: Duration::from_secs(self.timeout_s),
            register_buffers: true,
            limit_rate_bytes_per_s: self.limit_rate,
            cancel: None,
        };
        let pool_bytes = cores as u64 * buffers as u64 * self.buffer_size;
        let (register_buffers, notice) = match runtime::memlock_budget_bytes() {
            Some(budget) if pool_bytes > budget => (
                false,
                Some(format!(
                    "RLIMIT_MEMLOCK leaves {} KiB for registered buffers, the pool needs {} KiB: \
                     using unregistered buffers (plain positional writes). To register them, raise the \
                     limit (systemd LimitMEMLOCK=, ulimit -l) or run `setcap cap_ipc_lock+ep $(which ringdown)`",
                    budget >> 10,
                    pool_bytes >> 10
                )),
            ),
            _ => (true, None),
        };
        engine.register_buffers = register_buffers;
        Ok((engine, notice))
    }
}

impl TuningArgs {
    /// `--cores` beyond the CPUs this process may run on: thread-per-core
    /// gains nothing from it, and each core adds its buffer pool and
    /// connections (a typo of 1000 took gigabytes). Said, not refused.
    pub fn cores_notice(&self, restore: bool) -> Option<String> {
        let buffers_default = if restore {
            config::RESTORE_BUFFERS_PER_CORE_DEFAULT
        } else {
            config::BUFFERS_PER_CORE_DEFAULT
        };
        let cpus = runtime::available_cores();
        let cores = self.cores.filter(|&cores| cores > cpus)?;
        Some(format!(
            "--cores {cores} is more than the {cpus} CPUs this process may run on: \
             threads will share CPUs, and each core adds {} MiB of buffers and its own connections",
            (self.buffers.unwrap_or(buffers_default) as u64 * self.buffer_size) >> 20
        ))
    }
}

/// `--realm`, else `B2_REALM`, else `B2_ENVIRONMENT` (the b2 CLI's), else production.
pub fn resolve_realm(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var("B2_REALM").ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            std::env::var("B2_ENVIRONMENT")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "production".into())
}

fn parse_sha1_hex(text: &str) -> Result<[u8; 20]> {
    crate::b2::parse_sha1_hex(text)
        .ok_or_else(|| Error::Usage(format!("--sha1 {text:?}: expected 40 hex digits")))
}

/// The SSE-C keys: each `--sse-c-key-file`, else `B2_SOURCE_SSE_C_KEY_B64`.
/// Errors name where a key came from, never what it holds.
pub fn read_sse_c_keys(flags: &[std::path::PathBuf]) -> Result<Option<Arc<Keyring>>> {
    if flags.len() > config::SSE_C_KEYS_MAX {
        return Err(Error::Usage(format!(
            "{} --sse-c-key-file; one run takes at most {}",
            flags.len(),
            config::SSE_C_KEYS_MAX
        )));
    }
    let mut keys = Vec::with_capacity(flags.len());
    for path in flags {
        let mut contents = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| {
                // A key file is 32 to ~50 bytes: a bound keeps a wrong
                // path (a log, a disk image) from being read whole.
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(file, config::SSE_C_KEY_FILE_MAX_BYTES),
                    &mut contents,
                )
            })
            .map_err(|error| {
                Error::Usage(format!("--sse-c-key-file {}: {error}", path.display()))
            })?;
        keys.push(CustomerKey::parse(&contents).map_err(|why| {
            Error::Usage(format!(
                "--sse-c-key-file {}: {why}: it must hold the 32-byte key or its base64",
                path.display()
            ))
        })?);
    }
    if keys.is_empty() {
        match std::env::var(crate::b2::sse::KEY_ENV) {
            Ok(text) if !text.is_empty() => {
                keys.push(CustomerKey::parse_base64(text.as_bytes()).map_err(|why| {
                    Error::Usage(format!(
                        "{}: {why}: it must hold the base64 of the 32-byte key",
                        crate::b2::sse::KEY_ENV
                    ))
                })?);
            }
            _ => return Ok(None),
        }
    }
    let ring =
        Keyring::new(keys).map_err(|why| Error::Usage(format!("--sse-c-key-file: {why}")))?;
    Ok(Some(Arc::new(ring)))
}

pub fn run(args: GetArgs) -> Result<i32> {
    let source = Source::parse(&args.source)?;
    if args.as_of.is_some() && matches!(source, Source::B2Id { .. }) {
        return Err(Error::Usage(
            "--as-of picks a version by time, and a b2id:// source is one version already".into(),
        ));
    }
    if args.as_of.is_some() && !matches!(source, Source::B2 { .. }) {
        // Not the URL itself: a presigned one carries its signature.
        return Err(Error::Usage(
            "--as-of needs a b2://BUCKET/NAME source: versions are B2's, and this is a plain URL"
                .into(),
        ));
    }
    let (engine, memlock_notice) = args.tuning.engine_config(false)?;
    let sha1 = args.sha1.as_deref().map(parse_sha1_hex).transpose()?;
    let options = DownloadOptions {
        engine,
        realm: resolve_realm(args.realm.as_deref()),
        key_id: std::env::var("B2_APPLICATION_KEY_ID")
            .ok()
            .filter(|v| !v.is_empty()),
        key: std::env::var("B2_APPLICATION_KEY")
            .ok()
            .filter(|v| !v.is_empty()),
        ca_file: args.ca_file.clone(),
        force: args.force,
        fsync: args.fsync,
        direct_io: args.tuning.direct_io,
        sha1,
        require_verified: args.require_verified,
        quiet: args.quiet,
        as_of_ms: args.as_of,
        // B2_SOURCE_SSE_C_KEY_B64 left in the environment is no reason to
        // refuse a plain URL; the flag is (`resolve_dest`).
        sse_c_keys: match source {
            Source::Url(_) if args.sse_c_key_file.is_empty() => None,
            _ => read_sse_c_keys(&args.sse_c_key_file)?,
        },
    };
    // (The URL given: one it redirects to is not watched.)
    let source_url = match &source {
        Source::Url(url) => Some(url.clone()),
        _ => None,
    };
    let download = Download::new(source, args.dest.clone(), options);
    let dest = download.resolve_dest()?;
    let mut stats_held = None;
    if let Some(path) = &args.stats_json {
        stats_held = super::check_output_file("--stats-json", path, None)?;
        check_stats_beside_dest(path, &dest)?;
    }
    let stats_before = args.stats_json.as_deref().and_then(super::file_identity);
    if !args.quiet {
        for notice in args
            .tuning
            .cores_notice(false)
            .iter()
            .chain(&memlock_notice)
        {
            say!("ringdown: note: {notice}");
        }
    }
    crate::runtime::watch_signals();
    let progress = (!args.quiet).then(|| start_progress_line(Arc::clone(&download.progress)));
    let expiry_watch = match &source_url {
        Some(url) => watch_expiry(url, Arc::clone(&download.progress)),
        None => None,
    };
    let (result, summary) = download.run_with_summary();
    if let Some(progress) = progress {
        progress.stop();
    }
    if let Some(watch) = expiry_watch {
        watch.stop();
    }
    // A harness wants the numbers of a failed or interrupted run too; a
    // usage error ran nothing worth counting, unless it came after bytes
    // were fetched (DEST made by another program during the download: the
    // whole object fetched and kept, and no stats, h43 #15m).
    if let Some(path) = &args.stats_json {
        if !matches!(result, Err(Error::Usage(_))) || summary.bytes > 0 {
            // Another file there than before the run: not written over
            // (the stats path check above is by name; a link can lead to
            // DEST as well).
            // Nor through a link to DEST (h45).
            let leads_to_dest = std::fs::metadata(path)
                .ok()
                .zip(std::fs::metadata(&dest).ok())
                .is_some_and(|(stats, dest)| {
                    use std::os::unix::fs::MetadataExt;
                    (stats.dev(), stats.ino()) == (dest.dev(), dest.ino())
                });
            let written = match super::file_identity(path) {
                _ if leads_to_dest => Err(Error::io(
                    format!("not writing --stats-json {}", path.display()),
                    std::io::Error::other("it leads to DEST, the download"),
                )),
                Some(now) if Some(now) != stats_before => Err(Error::io(
                    format!("not writing --stats-json {}", path.display()),
                    std::io::Error::other(
                        "another file is there than before the run (the download?)",
                    ),
                )),
                _ => super::summary::write_stats_json(path, &summary, stats_held),
            };
            super::summary::settle_stats_write(written, result.is_err())?;
        }
    }
    // CONVENTIONS: an interrupted run prints its summary too.
    if let Err(Error::Interrupted { .. }) = &result {
        say!(
            "{}: interrupted after {} bytes in {:.2} s ({:.1} MB/s), retries: {}",
            dest.display(),
            summary.fetched_bytes(),
            summary.seconds,
            summary.mb_per_s(),
            summary.retries
        );
        if !args.quiet {
            say!("\n{}", summary.stages.table());
        }
    }
    let report = result?;
    super::summary::print_notices(&report.notices, memlock_notice.as_deref(), args.quiet);
    let mb_per_s = report.summary.mb_per_s();
    let resumed = super::summary::resumed_text(&report.summary);
    let verified_line = match &report.verification {
        Verification::Verified => format!("SHA1 {} verified", report.sha1_hex),
        Verification::VerifiedUnverifiedPrefix => format!(
            "SHA1 {} matches the published digest, but that digest is marked unverified: (client-supplied)",
            report.sha1_hex
        ),
        Verification::NotVerified { why } => format!(
            "NOT VERIFIED: {why} (SHA1 of the bytes: {})",
            report.sha1_hex
        ),
    };
    if args.quiet {
        say!(
            "{}: {} bytes{resumed} in {:.2} s ({mb_per_s:.1} MB/s), {verified_line}",
            report.dest.display(),
            report.bytes,
            report.seconds
        );
    } else {
        say!(
            "{}\n  {} bytes{resumed} in {:.2} s, {mb_per_s:.1} MB/s\n  {verified_line}\n  {}\n\n{}",
            report.dest.display(),
            report.bytes,
            report.seconds,
            super::summary::engine_line(&report.summary),
            report.summary.stages.table()
        );
    }
    // (Under --require-verified such an object fails before its download.)
    if let Verification::NotVerified { .. } = report.verification {
        say!("ringdown: warning: the download was not verified against a published SHA1");
    }
    Ok(crate::error::exit_code::OK)
}

/// For a URL whose query says when its signature expires, a thread that
/// warns once if the rest of the download will not arrive before then
/// (`presign::expiry_warning`); a warning, so also under `--quiet`.
fn watch_expiry(url: &str, progress: Arc<Progress>) -> Option<Ticker> {
    use crate::client::presign;
    let query = url.split('#').next().unwrap_or(url);
    let expiry = presign::expiry(query)?;
    let started = std::time::Instant::now();
    let mut rate = super::ticker::RecentRate::default();
    let mut warned = false;
    Some(Ticker::start(
        Duration::from_millis(config::PRESIGNED_EXPIRY_CHECK_MS),
        move || {
            let bytes_done = progress.bytes_done.load(Ordering::Relaxed);
            let rate_bytes_per_s = rate.sample(started.elapsed(), bytes_done);
            let bytes_to_fetch = progress.bytes_to_fetch.load(Ordering::Relaxed);
            let measured = started.elapsed().as_secs() >= config::PRESIGNED_EXPIRY_RATE_AFTER_S;
            if warned || !measured || bytes_to_fetch == 0 {
                return;
            }
            let bytes_left = bytes_to_fetch.saturating_sub(bytes_done);
            let now_ms = presign::now_ms();
            if let Some(warning) =
                presign::expiry_warning(&expiry, now_ms, bytes_left, rate_bytes_per_s)
            {
                say!("ringdown: warning: {warning}");
                warned = true;
            }
        },
        || {},
    ))
}

/// The progress line: bytes, rate, ETA, retries (`ticker::start_progress_line`).
fn start_progress_line(progress: Arc<Progress>) -> Ticker {
    let mut rate = super::ticker::RecentRate::default();
    super::ticker::start_progress_line(move |elapsed| {
        let bytes_done = progress.bytes_done.load(Ordering::Relaxed);
        let text = progress_text(
            bytes_done,
            progress.bytes_to_fetch.load(Ordering::Relaxed),
            progress.retries.load(Ordering::Relaxed),
            rate.sample(elapsed, bytes_done),
        );
        text + &super::ticker::last_retry_text(&progress)
    })
}

/// `512.0/1073.7 MB, 700.0 MB/s, ETA 1 s, retries 0`; before the size is
/// known (`bytes_to_fetch` 0), without total and ETA. Done never shows
/// past the total, should the counters race.
fn progress_text(
    bytes_done: u64,
    bytes_to_fetch: u64,
    retries: u64,
    rate_bytes_per_s: f64,
) -> String {
    let megabytes = |bytes: u64| bytes as f64 / 1e6;
    if bytes_to_fetch == 0 {
        return format!(
            "{:.1} MB, {:.1} MB/s, retries {retries}",
            megabytes(bytes_done),
            rate_bytes_per_s / 1e6
        );
    }
    let eta = eta_text(bytes_to_fetch.saturating_sub(bytes_done), rate_bytes_per_s);
    format!(
        "{:.1}/{:.1} MB, {:.1} MB/s, {eta}, retries {retries}",
        megabytes(bytes_done),
        megabytes(bytes_to_fetch.max(bytes_done)),
        rate_bytes_per_s / 1e6
    )
}

/// `--stats-json` must not name DEST, nor a file ringdown keeps beside it
/// (`.ringdown-…`): the stats, written after the rename, replaced the
/// verified download under its name, exit 0 (h43 #2).
fn check_stats_beside_dest(stats: &std::path::Path, dest: &std::path::Path) -> Result<()> {
    // A symbolic link there is judged by where it leads too (one step),
    // DEST not existing yet: caught after the whole download otherwise
    // (h46 #5).
    let linked = std::fs::read_link(stats)
        .ok()
        .map(|target| match stats.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        });
    let clash = stats_clash(stats, dest)
        .map(|what| ("names", what))
        .or_else(|| {
            let target = linked.as_deref()?;
            stats_clash(target, dest).map(|what| ("leads to", what))
        });
    match clash {
        Some((verb, what)) => Err(Error::Usage(format!(
            "--stats-json {} {verb} {what}; give it another path",
            stats.display()
        ))),
        None => Ok(()),
    }
}

/// What `stats` names, by its directory and name, if that is DEST or a
/// file kept beside it.
fn stats_clash(stats: &std::path::Path, dest: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let directory = |path: &std::path::Path| {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => std::path::Path::new("."),
        };
        std::fs::metadata(parent)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()))
    };
    let same_directory = directory(stats).is_some() && directory(stats) == directory(dest);
    let name = stats.file_name();
    if same_directory && name == dest.file_name() {
        Some("DEST: the stats would replace the download")
    } else if same_directory
        && name.is_some_and(|name| crate::get::is_kept_beside_dest(name.as_encoded_bytes()))
    {
        Some("a file ringdown keeps beside DEST (.ringdown-…)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_check_refuses_sizes_o_direct_cannot_write() {
        for restore in [false, true] {
            assert!(EngineConfig::defaults(restore).check().is_ok());
        }
        let mut config = EngineConfig::defaults(false);
        config.part_size_bytes = 5_000_000;
        let Err(Error::Usage(message)) = config.check() else {
            panic!("a part of 5,000,000 bytes was accepted");
        };
        assert!(message.contains("use 5242880"), "{message}");
        let mut config = EngineConfig::defaults(false);
        config.buffer_size_bytes = 1_000_000;
        assert!(matches!(config.check(), Err(Error::Usage(_))));
        let mut config = EngineConfig::defaults(false);
        config.cores = 0;
        assert!(matches!(config.check(), Err(Error::Usage(_))));
    }

    #[test]
    fn progress_shows_total_and_eta_once_the_size_is_known() {
        let cases = [
            // (done, to fetch, retries, line): the size not known yet,
            // known, nothing received, and counters read a moment apart
            // (never a negative ETA).
            (300_000_000, 0, 0, "300.0 MB, 300.0 MB/s, retries 0"),
            (
                300_000_000,
                1_200_000_000,
                2,
                "300.0/1200.0 MB, 300.0 MB/s, ETA 3 s, retries 2",
            ),
            (0, 1_000_000, 0, "0.0/1.0 MB, 0.0 MB/s, ETA ?, retries 0"),
            (
                1_500_000,
                1_000_000,
                1,
                "1.5/1.5 MB, 1.5 MB/s, ETA 0 s, retries 1",
            ),
        ];
        for (done, to_fetch, retries, line) in cases {
            let text = progress_text(done, to_fetch, retries, done as f64);
            assert_eq!(text, line);
        }
    }

    #[test]
    fn more_cores_than_cpus_are_said() {
        let cpus = runtime::available_cores();
        let mut tuning = TuningArgs::default();
        assert_eq!(tuning.cores_notice(false), None);
        tuning.cores = Some(cpus);
        assert_eq!(tuning.cores_notice(true), None);
        tuning.cores = Some(cpus + 1);
        let notice = tuning.cores_notice(false).unwrap();
        assert!(notice.contains(&format!(
            "--cores {} is more than the {cpus} CPUs",
            cpus + 1
        )));
    }

    #[test]
    fn library_defaults_are_the_cli_defaults() {
        let get = EngineConfig::defaults(false);
        assert_eq!(
            get.connections_per_core,
            config::GET_CONNECTIONS_PER_CORE_DEFAULT
        );
        assert_eq!(
            get.large_connections_per_core,
            config::LARGE_CONNECTIONS_PER_CORE_DEFAULT
        );
        assert_eq!(get.buffers_per_core, config::BUFFERS_PER_CORE_DEFAULT);
        assert_eq!(get.max_attempts, config::MAX_ATTEMPTS_DEFAULT);
        assert_eq!(get.timeout, Duration::from_secs(config::TIMEOUT_S_DEFAULT));
        assert_eq!(get.buffer_size_bytes, config::BUFFER_SIZE_BYTES_DEFAULT);
        assert_eq!(get.cores, runtime::available_cores());
        let restore = EngineConfig::defaults(true);
        assert_eq!(
            restore.connections_per_core,
            config::RESTORE_CONNECTIONS_PER_CORE_DEFAULT
        );
        assert_eq!(
            restore.large_connections_per_core,
            config::LARGE_CONNECTIONS_PER_CORE_DEFAULT
        );
        assert_eq!(
            restore.buffers_per_core,
            config::RESTORE_BUFFERS_PER_CORE_DEFAULT
        );
        // Parts fit the pool: every connection's part in flight at once.
        assert!(
            get.part_size_bytes * get.large_connections_per_core as u64
                <= (get.buffers_per_core * get.buffer_size_bytes) as u64
        );
    }
}

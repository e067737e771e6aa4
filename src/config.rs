//! Every limit and default of ringdown, with units in the names.
//!
//! Memory of a download = cores × buffers_per_core × buffer_size_bytes plus a
//! small fixed overhead per connection (TLS record buffers, response head).

/// Largest response head we accept. Real origins send < 2 KiB; 16 KiB leaves
/// room for long `x-bz-info-*` headers and bounds a hostile server.
pub const HTTP_HEAD_MAX_BYTES: usize = 16 * 1024;
/// Most response headers we parse (B2 sends ~15; 64 covers info headers).
pub const HTTP_HEADERS_MAX: usize = 64;
/// Largest JSON body of a B2 API call we read (a 10,000-name page is ~6 MiB).
pub const API_BODY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Default range size of one request. 8 MiB keeps per-request overhead below
/// 1% on loopback and the reorder window (connections × part) small.
pub const PART_SIZE_BYTES_DEFAULT: u64 = 8 << 20;
/// Default size of one registered buffer (multiple of 4 KiB for O_DIRECT).
pub const BUFFER_SIZE_BYTES_DEFAULT: usize = 1 << 20;
/// Default registered buffers per core. 16 × 1 MiB per core keeps a 2-core
/// download far under the 64 MiB RSS target and under 8 MiB × cores of memlock
/// only when shrunk; see `uring::buffers` for the RLIMIT_MEMLOCK clamp.
pub const BUFFERS_PER_CORE_DEFAULT: usize = 16;
/// A quarter of each pool is reserved for the connection at the hash
/// frontier: with one buffer it could only receive, write and hash in turn,
/// and the whole download would crawl at that speed once the window fills.
pub const HEAD_RESERVE_DIVISOR: usize = 4;
/// Default keep-alive connections per core.
pub const CONNECTIONS_PER_CORE_DEFAULT: usize = 4;
/// Upper bounds on the tuning flags, so a typo cannot exhaust memory.
pub const CONNECTIONS_PER_CORE_MAX: usize = 256;
pub const BUFFERS_PER_CORE_MAX: usize = 4096;
pub const BUFFER_SIZE_BYTES_MAX: usize = 64 << 20;
pub const CORES_MAX: usize = 1024;

/// Alignment of every buffer and of every O_DIRECT write offset and length.
pub const DIRECT_IO_ALIGN_BYTES: usize = 4096;

/// Attempts per chunk, counting the first (b2sdk uses 15 per part).
pub const MAX_ATTEMPTS_DEFAULT: u32 = 15;
pub const RETRY_BASE_MS_DEFAULT: u64 = 250;
pub const RETRY_MAX_MS_DEFAULT: u64 = 30_000;
/// `Retry-After` is honoured up to this many seconds.
pub const RETRY_AFTER_MAX_S: u64 = 300;
/// Stall timeout: connect, handshake, response head, or an idle body.
pub const TIMEOUT_S_DEFAULT: u64 = 30;
/// A SHA1 mismatch of a whole object is retried this many more times.
pub const OBJECT_REDOWNLOADS_ON_MISMATCH: u32 = 1;

/// Memory left for everything else when sizing registered buffers against
/// RLIMIT_MEMLOCK (other processes of the user share the limit).
pub const MEMLOCK_MARGIN_BYTES: u64 = 1 << 20;

/// Ciphertext read from the socket per receive on TLS connections.
pub const TLS_RECV_BYTES: usize = 64 * 1024;
/// Plain-text request head size bound (our own requests).
pub const HTTP_REQUEST_MAX_BYTES: usize = 8 * 1024;

/// Progress line cadence when stderr is not a TTY.
pub const PROGRESS_PLAIN_INTERVAL_S: u64 = 10;
/// Progress redraw cadence on a TTY.
pub const PROGRESS_TTY_INTERVAL_MS: u64 = 200;

/// Highest value a stage histogram tracks exactly (1 hour in µs); larger
/// values saturate rather than error (a two-hour stall must not fail a run).
pub const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
pub const HISTOGRAM_SIGFIGS: u8 = 3;

/// Objects at least this large use O_DIRECT under `--direct-io auto`: below
/// it, the page cache is cheaper than the padding and alignment dance.
pub const DIRECT_IO_MIN_OBJECT_BYTES: u64 = 1 << 20;
/// Attempts of one control-plane call (authorize, HEAD, list page).
pub const API_ATTEMPTS: u32 = 5;
/// Error bodies (B2 JSON) we read to learn the error code.
pub const ERROR_BODY_MAX_BYTES: usize = 64 * 1024;

/// Longest chunk-size line of a chunked body (hex size plus ignored
/// extensions). Sixteen hex digits fill a u64; the rest bounds a hostile server.
pub const HTTP_CHUNK_SIZE_LINE_MAX_BYTES: usize = 4 * 1024;
/// Largest trailer section of a chunked body (skipped, never stored).
pub const HTTP_CHUNKED_TRAILER_MAX_BYTES: usize = 16 * 1024;

/// Longest path component a Linux filesystem accepts (NAME_MAX).
pub const NAME_SEGMENT_MAX_BYTES: usize = 255;

/// Names per `b2_list_file_names` page (B2's maximum; billed per 1000).
pub const LIST_PAGE_FILES_MAX: u32 = 10_000;
/// Most buckets a `b2_list_buckets` reply may hold (B2 allows 100 per
/// account by default): a longer reply is refused while it is parsed.
pub const LIST_BUCKETS_MAX: usize = 10_000;
/// Listed entries waiting between the listing thread and the scheduler. The
/// listing blocks when it is full, so memory does not grow with the bucket
/// (one page in flight plus this many entries).
pub const LIST_QUEUE_ENTRIES: usize = 4_096;
/// Small-object jobs waiting for a connection, per core. Each queued job
/// holds two descriptors (its partial file and its parent directory).
pub const OBJECT_QUEUE_JOBS_PER_CORE: usize = 16;
/// Cap on queued small-object jobs whatever the core count, so descriptors
/// stay far below a 1024 RLIMIT_NOFILE (raised to the hard limit at start).
pub const OBJECT_QUEUE_JOBS_MAX: usize = 256;
/// Large objects waiting for the whole-engine download thread.
pub const LARGE_OBJECT_QUEUE_JOBS: usize = 2;
/// Failed names printed in the summary (the rest are in `--report`).
pub const SUMMARY_FAILED_NAMES_SHOWN: usize = 20;
/// Bytes read per step when hashing an existing local file (`--skip-existing`).
pub const LOCAL_HASH_READ_BYTES: usize = 1 << 20;

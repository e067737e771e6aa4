//! Every limit and default of ringdown, with units in the names.
//!
//! Memory of a download = cores × (buffers_per_core × buffer_size_bytes +
//! connections_per_core × `TLS_RECV_BYTES`) plus a small fixed overhead per
//! connection (response head, TLS session): at the defaults, 16 MiB and
//! 4 MiB per core.

/// Largest response head we accept. Real origins send < 2 KiB; 16 KiB leaves
/// room for long `x-bz-info-*` headers and bounds a hostile server.
pub const HTTP_HEAD_MAX_BYTES: usize = 16 * 1024;
/// A request head's first allocation: a GET with a token, a range and an
/// SSE-C key fits (longer ones grow it).
pub const REQUEST_HEAD_INITIAL_BYTES: usize = 512;
/// A receive into a full head buffer grows it by this much first (a
/// page: most heads fit in one).
pub const RECV_GROW_BYTES: usize = 4096;
/// Most response headers we parse (B2 sends ~15; 64 covers info headers).
pub const HTTP_HEADERS_MAX: usize = 64;
/// Largest JSON body of a B2 API call we read (a 10,000-name page is ~6 MiB).
pub const API_BODY_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Most plaintext one receive of an API body (JSON, an error body, a
/// streamed body of unknown length) asks for: a few TLS records.
pub const API_BODY_RECV_BYTES: usize = 64 * 1024;
/// Slowest rate at which a body (an API answer's, a download's) may arrive,
/// over each window of `--timeout-s` spent waiting on the origin
/// (`client::conn::BodyFloor`). Every receive is stall-bounded, but a server
/// trickling a byte just inside each stall window would otherwise hold a
/// run forever. 1 KiB/s is far below any working link (a full 10,000-name
/// listing page is ~5 MB) and far above a trickle.
pub const BODY_MIN_BYTES_PER_S: u64 = 1024;

/// Default range size of one request. 8 MiB keeps per-request overhead below
/// 1% on loopback and the reorder window (connections × part) small.
pub const PART_SIZE_BYTES_DEFAULT: u64 = 8 << 20;
/// ...and small enough that the pool holds this many parts per connection
/// taking chunks (before rounding up to whole buffers: restore's 12 MiB
/// pool and 4 chunk connections get 2 MiB parts, 1.5 per connection). The
/// part at the hash frontier arrives no faster than the others, which
/// meanwhile finish theirs and start the next, so the window between the
/// frontier and the furthest byte received spans about two parts per
/// connection. With one (4 MiB parts at the defaults), buffers ran
/// out behind a lagging frontier part: 1 GiB over loopback was 10-12%
/// slower than with two (2 MiB parts), against `ringdown serve` and nginx.
pub const POOL_PARTS_PER_CONNECTION: u64 = 2;
/// Default size of one registered buffer (multiple of 4 KiB for O_DIRECT).
/// `--buffer-size`'s default says it as `1MiB` for `--help`; a unit test
/// holds the two equal.
pub const BUFFER_SIZE_BYTES_DEFAULT: usize = 1 << 20;
/// Default registered buffers per core. 16 × 1 MiB per core keeps a 2-core
/// download under the 64 MiB RSS target. Above RLIMIT_MEMLOCK (8 MiB
/// unprivileged) the pool keeps its size and goes unregistered, and the
/// run says so once (`TuningArgs::engine_config`, `uring::buffers`).
pub const BUFFERS_PER_CORE_DEFAULT: usize = 16;
/// `--buffers` default of `restore`, whose small and large objects share the
/// pool, beside more connections and a listing.
/// On the mixed benchmark (2 × 256 MiB, 200 × 1 MiB, 1,000 × 16 KiB, 2 cores)
/// 16 peaked at 63-67 MiB RSS and 12 at 54-59 MiB, in the same time
/// (1.57-1.74 s against 1.65-1.77 s, 3 interleaved runs, caches dropped).
pub const RESTORE_BUFFERS_PER_CORE_DEFAULT: usize = 12;
/// A quarter of each pool is reserved for the connection at the hash
/// frontier: with one buffer it could only receive, write and hash in turn,
/// and the whole download would crawl at that speed once the window fills.
pub const HEAD_RESERVE_DIVISOR: usize = 4;
/// Connections per core that take chunks of large objects by default (all
/// of `get`'s before a round trip is known; see `GET_CONNECTIONS_PER_CORE_DEFAULT`).
/// More only widen the reorder window on loopback and a LAN.
pub const LARGE_CONNECTIONS_PER_CORE_DEFAULT: usize = 4;
/// `--connections` default of `get`: `LARGE_CONNECTIONS_PER_CORE_DEFAULT`
/// of them take chunks; the others join once the round trip is found to be
/// `LARGE_ALL_CONNECTIONS_ROUND_TRIP_MIN_US` or more (a WAN, where one
/// connection moves at most a window per round trip) and open no socket
/// otherwise. 1 GiB through a 20 ms round trip at 25 MB/s per connection
/// (`serve --latency-ms 20 --rate-per-conn 25MB/s`): 4 per core took
/// 5.6-5.9 s, 16 took 2.67-2.69 s (4 until `LONG_ROUND_TRIP_SAMPLES_MIN`
/// answers, then 16); from nginx and `ringdown serve` on loopback, 1 GiB
/// took 1.02× and 0.98× as long (10 and 8 pairs), opening 4 per core.
pub const GET_CONNECTIONS_PER_CORE_DEFAULT: usize = 16;
/// `--connections` default of `restore`. Each small object is one request,
/// so on a link with latency the requests in flight set the pace. Mixed
/// benchmark (2 cores, 20 ms added per response, 25 MB/s per connection):
/// 4 per core took 6.7-6.9 s, 8 took 3.4-3.5 s, 16 took 2.2-2.3 s; on
/// loopback 16 was as fast as 4 (mixed) or 5-10% faster (2,000 × 64 KiB), for
/// ~6 MiB more RSS (TLS buffers). Large objects still take chunks on at most
/// `LARGE_CONNECTIONS_PER_CORE_DEFAULT` of them per core (all of them over a
/// long round trip once nothing else is left).
pub const RESTORE_CONNECTIONS_PER_CORE_DEFAULT: usize = 16;
/// Upper bounds on the tuning flags, so a typo cannot exhaust memory.
pub const CONNECTIONS_PER_CORE_MAX: usize = 256;
/// Also the kernel's bound: a ring registers at most `UIO_MAXIOV` (1,024)
/// buffers, and tokio-uring keeps only that many of a longer list.
pub const BUFFERS_PER_CORE_MAX: usize = 1024;
pub const BUFFER_SIZE_BYTES_MAX: usize = 64 << 20;
pub const CORES_MAX: usize = 1024;

/// The touch-ahead feed hashes pieces of this size, each after a touch of
/// every cache line of the next (`verify::Sha1Feed`). 4-64 KiB measured
/// alike (1.8-1.9 GB/s on data out of cache); 256 KiB was slower (1.65-1.75).
pub const SHA1_PIECE_BYTES: usize = 16 << 10;

/// Each SHA1 feed is timed on this many of the run's first inputs of
/// `SHA1_FEED_TRIAL_MIN_BYTES` or more before the faster is kept (by
/// median: one preempted trial must not decide): 16 MiB of a `get`'s 1 MiB
/// buffers.
pub const SHA1_FEED_TRIALS: usize = 8;

/// Shorter inputs are hashed plainly until the choice is made, and are not
/// trials: a 64 KiB file hashes in ~40 µs, where timer and cache noise
/// decide (with 64 KiB trials, 1 restore of 2,000 × 64 KiB in 4 kept the
/// slower feed), and a file just received is still in cache, where the
/// touches gain nothing.
pub const SHA1_FEED_TRIAL_MIN_BYTES: usize = 256 << 10;

/// A chunk's connection sends the next chunk's GET (HTTP/1.1 pipelining)
/// once what is left of the body will arrive within this many round trips.
/// One would do on a steady link; two leave a margin for a rate that varies.
pub const PIPELINE_LOOKAHEAD_ROUND_TRIPS: u32 = 2;
/// ...and only where a round trip (the run's shortest request-to-head
/// wait) is at least this long. Shorter ones (loopback, a LAN) leave little
/// to hide, the other connections cover it, and a body read from a full
/// socket buffer looks fast enough to send ahead at once: 1 GiB from
/// `ringdown serve` on loopback, which sent ahead for every chunk, was 5%
/// slower than sending none. Through a 20 ms round trip (25 MiB/s per
/// connection) sending ahead took 2 MiB parts from 6.6 s to 4.9-5.3 s.
pub const PIPELINE_ROUND_TRIP_MIN_US: u64 = 1_000;

/// GETs of the next small objects a connection keeps sent ahead of the
/// answer it reads (where a round trip is `PIPELINE_ROUND_TRIP_MIN_US` or
/// more): a connection then fetches up to this many + 1 objects per round
/// trip instead of one. At most `SCHEDULER_QUEUE_JOBS_MAX` are claimed
/// ahead over all connections. 2,000 × 64 KiB through a 20 ms round trip
/// (`serve --latency-ms 20 --rate-per-conn 25MB/s`): 1.7-1.9 s one request
/// at a time, 0.74-0.95 s with 3 ahead.
pub const PIPELINE_OBJECTS_AHEAD: usize = 3;

/// Cache line of every x86-64 and most aarch64 cores; a larger line only
/// touches some lines twice.
pub const CACHE_LINE_BYTES: usize = 64;

/// Alignment of every buffer and of every O_DIRECT write offset and length.
pub const DIRECT_IO_ALIGN_BYTES: usize = 4096;

/// A buffer size the engine can use: whole O_DIRECT blocks, at most
/// `BUFFER_SIZE_BYTES_MAX` (`--buffer-size`, `EngineConfig::check`).
pub fn buffer_size_ok(bytes: u64) -> bool {
    bytes != 0 && bytes % DIRECT_IO_ALIGN_BYTES as u64 == 0 && bytes <= BUFFER_SIZE_BYTES_MAX as u64
}

/// Attempts per chunk, counting the first (b2sdk uses 15 per part).
pub const MAX_ATTEMPTS_DEFAULT: u32 = 15;
pub const RETRY_BASE_MS_DEFAULT: u64 = 250;
pub const RETRY_MAX_MS_DEFAULT: u64 = 30_000;
/// `Retry-After` is honoured up to this many seconds.
pub const RETRY_AFTER_MAX_S: u64 = 300;
/// A backoff doubles at most this many times from `--retry-base-ms`
/// (2^20 × base), so the shift cannot overflow; `--retry-max-ms` caps it
/// long before at sane settings.
pub const BACKOFF_DOUBLINGS_MAX: u32 = 20;
/// A retry's wait looks this often whether the run is being stopped
/// (SIGTERM, a fatal error elsewhere): a 300 s Retry-After must not hold a
/// restore past a scheduler's grace period.
pub const RETRY_WAIT_STOP_CHECK_MS: u64 = 100;
/// After the first stop signal, the requests in flight drain for at most
/// this long; then they are cut, and the run ends as interrupted, keeping
/// what is journaled and writing its summary and `--stats-json`. A
/// trickling origin (150 KB/s a connection: 2 MiB parts took 10-12 s to
/// drain, 8 MiB ones a minute) must not outlast a scheduler's grace period
/// (Kubernetes and Slurm: 30 s) and end in a SIGKILL instead.
pub const SIGNAL_DRAIN_MAX_S: u64 = 20;
/// Should a run still not have ended this long after its drain was cut,
/// the process exits as at a second signal (what is journaled stays).
pub const SIGNAL_DRAIN_CUT_GRACE_S: u64 = 5;
/// How often a receive or send still waiting looks for a stop signal.
pub const STOP_CHECK_MS: u64 = 250;
/// Once a stop signal came, a receive or send without progress for this
/// long is cut (instead of `--timeout-s`): requests that move finish, a
/// stalled one does not hold the exit for half a minute.
pub const STOPPING_STALL_TIMEOUT_MS: u64 = 2_000;
/// Stall timeout: connect, handshake, response head, or an idle body.
pub const TIMEOUT_S_DEFAULT: u64 = 30;
/// `--limit-rate`: how far (in time at the limit) a core's connections may
/// run ahead of the rate before they wait; also the size of one read.
pub const LIMIT_RATE_BURST_MS: u64 = 100;
/// `--limit-rate`: the smallest read, whatever the limit (a TLS record).
pub const LIMIT_RATE_READ_MIN_BYTES: usize = 16 * 1024;
/// A SHA1 mismatch of a whole object is retried this many more times.
pub const OBJECT_REDOWNLOADS_ON_MISMATCH: u32 = 1;

/// What a run takes beside its buffer pool, when fitting the pool to a
/// cgroup's memory limit: measured at ~24 MiB of peak RSS (`get` and
/// `restore` with 2 buffers per core; the mapped binary, TLS and listing
/// buffers, thread stacks), with room for a listing's largest pages.
pub const MEMORY_BESIDES_POOL_BYTES: u64 = 32 << 20;

/// Stack of the thread that runs the CLI's command (the main thread's is
/// RLIMIT_STACK, which can be small enough to overflow: 64 KiB did). Like
/// every thread stack it is mapped, not touched: pages cost when used.
pub const COMMAND_STACK_BYTES: usize = 8 << 20;

/// Memory left for everything else when sizing registered buffers against
/// RLIMIT_MEMLOCK (other processes of the user share the limit).
pub const MEMLOCK_MARGIN_BYTES: u64 = 1 << 20;

/// Ciphertext buffer of a TLS connection: the most one receive reads.
/// Measured on a 1 GiB get over TLS (loopback, 2 cores × 4 connections):
/// 256 KiB took ~5% less CPU than 64 KiB (fewer receives, ACKs and moves of
/// partial records); 1 MiB saved ~6% more but costs 1 MiB per connection,
/// up to 256 MiB per core at the `--connections` maximum.
pub const TLS_RECV_BYTES: usize = 256 * 1024;
/// Largest TLS record on the wire (TLS 1.2's limit: 16 KiB of plaintext,
/// 2 KiB of expansion, a 5-byte header; TLS 1.3 records are smaller). A
/// receive never starts with less room than this.
pub const TLS_RECORD_MAX_BYTES: usize = 16 * 1024 + 2048 + 5;
/// Bound on buffered ciphertext while a handshake message spans records (a
/// certificate chain); a server sending more is refused.
pub const TLS_INCOMING_MAX_BYTES: usize = 1 << 20;
/// Plain-text request head size bound (our own requests).
pub const HTTP_REQUEST_MAX_BYTES: usize = 8 * 1024;

/// Progress line cadence when stderr is not a TTY.
pub const PROGRESS_PLAIN_INTERVAL_S: u64 = 10;
/// Progress redraw cadence on a TTY.
pub const PROGRESS_TTY_INTERVAL_MS: u64 = 200;
/// The progress line's rate (and so its ETA) is over about this many last
/// seconds: the average since the start said "ETA 16 s" for 140 s of a
/// slow tail (a run's last large objects on a few connections).
pub const PROGRESS_RATE_WINDOW_S: u64 = 20;
/// A body of unknown length (no Content-Length) stops once it would leave
/// the destination's file system with less free than 1/20 of what it had,
/// at most 1 GiB (`engine::stream`): an endless body must not fill it.
pub const STREAM_FREE_SPACE_MARGIN_FRACTION: u64 = 20;
pub const STREAM_FREE_SPACE_MARGIN_MAX_BYTES: u64 = 1 << 30;
/// The most of the last retry's reason a progress line quotes.
pub const PROGRESS_RETRY_REASON_CHARS: usize = 60;
/// `get` of a presigned URL whose query says when it expires checks this
/// often whether the rest will arrive in time (`client::presign`)...
pub const PRESIGNED_EXPIRY_CHECK_MS: u64 = 1_000;
/// ...from this long into the download, so the rate is a measured one.
pub const PRESIGNED_EXPIRY_RATE_AFTER_S: u64 = 5;

/// Highest value a stage histogram tracks exactly (1 hour in µs); larger
/// values saturate rather than error (a two-hour stall must not fail a run).
pub const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
/// Two: every value within 1% (a p99 of 29 ms is 29.0 +/- 0.3 ms), in
/// 26 KiB per stage. Three cost 188 KiB per stage, 2 MiB per set of
/// stages, zeroed and copied some six times per run: 9 ms of a one-file
/// restore's 68 ms of CPU (`perf record`), and 10 MiB of its peak RSS.
pub const HISTOGRAM_SIGFIGS: u8 = 2;

/// Objects at least this large use O_DIRECT under `--direct-io auto`: below
/// it, the page cache is cheaper than the padding and alignment dance.
pub const DIRECT_IO_MIN_OBJECT_BYTES: u64 = 1 << 20;
/// Objects from this size up are pre-allocated with `fallocate` (ENOSPC up
/// front, one extent). Below it the call only costs: such a file is one
/// write, delayed allocation gives it one extent anyway, and a full disk
/// still stops the run with the file named when that write fails. Skipping
/// it took ~4% of the CPU out of a 2,000 × 64 KiB restore (perf).
pub const PREALLOCATE_MIN_BYTES: u64 = 1 << 20;
/// Attempts of a control-plane call that starts a run (authorize, bucket
/// lookup, probe, first listing page), or `--max-attempts` when fewer: a
/// wrong realm fails in seconds. Later listing pages retry as downloads do
/// (`--max-attempts`, `--retry-*-ms`).
pub const API_ATTEMPTS: u32 = 5;
/// Longest wait between two of those attempts.
pub const API_RETRY_MAX_MS: u64 = 5_000;
/// Addresses of one host name kept from DNS, tried in order when a connect
/// fails (a host whose IPv6 route is broken still reaches the IPv4 ones).
pub const ORIGIN_ADDRESSES_MAX: usize = 8;
/// How long a connect may take before the next address of the host is
/// tried; the last address gets the whole `--timeout-s`.
pub const CONNECT_NEXT_ADDRESS_AFTER_MS: u64 = 3_000;
/// Redirects a plain URL's probe follows before giving up (curl's `-L`
/// default is 50; browsers stop at 20; a loop is caught long before either).
pub const URL_REDIRECTS_MAX: u32 = 10;
/// Error bodies (B2 JSON) we read to learn the error code.
pub const ERROR_BODY_MAX_BYTES: usize = 64 * 1024;

/// Longest chunk-size line of a chunked body (hex size plus ignored
/// extensions). Sixteen hex digits fill a u64; the rest bounds a hostile server.
pub const HTTP_CHUNK_SIZE_LINE_MAX_BYTES: usize = 4 * 1024;
/// At most this many characters of a value that came from the network (or
/// names one going out) are quoted back in an error: enough to recognise
/// it, not a megabyte of a hostile header in a log line.
pub const HTTP_ECHO_MAX_CHARS: usize = 128;
/// Largest trailer section of a chunked body (skipped, never stored).
pub const HTTP_CHUNKED_TRAILER_MAX_BYTES: usize = 16 * 1024;

/// Longest B2 file name, in UTF-8 bytes.
pub const B2_FILE_NAME_MAX_BYTES: usize = 1024;

/// Most bytes read from `--sse-c-key-file`: a key is 32 bytes, 44 in base64;
/// more means a wrong file, refused without reading it whole.
pub const SSE_C_KEY_FILE_MAX_BYTES: u64 = 4096;

/// Most SSE-C keys one run takes (`--sse-c-key-file`, repeated): which of
/// them B2 refused for an object is a bit of a `u64`.
pub const SSE_C_KEYS_MAX: usize = 64;
/// Key IDs (b2sdk's `sse_c_key_id` in fileInfo) a run remembers the key of.
/// Past it, objects with a new ID start from the key that last opened one.
pub const SSE_C_KEY_IDS_REMEMBERED_MAX: usize = 4096;
/// Longest `sse_c_key_id` taken as a hint; a longer one is ignored.
pub const SSE_C_KEY_ID_MAX_BYTES: usize = 256;

/// Longest path component a Linux filesystem accepts (NAME_MAX).
pub const NAME_SEGMENT_MAX_BYTES: usize = 255;

/// Names per `b2_list_file_names` page (B2's maximum; billed per 1000).
pub const LIST_PAGE_FILES_MAX: u32 = 10_000;
/// Size of the first listing page; each next page is 10× larger up to
/// `LIST_PAGE_FILES_MAX`. Downloads start when the first page arrives, and a
/// 10,000-name page took the server 0.10-0.16 s to build (cold: it stats
/// every file), all of it idle time for the downloads; 100 names take a few
/// ms. Costs two extra list calls per run.
pub const LIST_FIRST_PAGE_FILES: u32 = 100;
/// Most buckets a `b2_list_buckets` reply may hold (B2 allows 100 per
/// account by default): a longer reply is refused while it is parsed.
pub const LIST_BUCKETS_MAX: usize = 10_000;
/// Listed entries waiting between the listing thread and the scheduler. The
/// listing blocks when it is full, so memory does not grow with the bucket
/// (one page in flight plus this many entries).
pub const LIST_QUEUE_ENTRIES: usize = 4_096;
/// Queued objects (small or large) waiting for a connection, per core.
/// Each queued job holds `OPEN_FILES_PER_OBJECT` descriptors.
pub const SCHEDULER_QUEUE_JOBS_PER_CORE: usize = 16;
/// Cap on queued objects whatever the core count, and on small objects
/// claimed ahead (`PIPELINE_OBJECTS_AHEAD`), so the descriptors of objects
/// not yet begun stay at most 2 × `OPEN_FILES_PER_OBJECT` × this (the soft RLIMIT_NOFILE is
/// raised to the hard limit at start; connections and objects in progress
/// add theirs).
pub const SCHEDULER_QUEUE_JOBS_MAX: usize = 256;
/// A producer waiting for room in a full queue looks this often whether
/// every core has died (a panic on each): none would make room.
pub const SUBMIT_DEAD_CORE_CHECK_MS: u64 = 100;
/// Descriptors a run holds beside its connections and objects: stdio, the
/// rings and their eventfds, the listing's and API connections, the
/// journal, the report, DIR and `.ringdown/`.
pub const OPEN_FILES_RESERVED: u64 = 64;
/// Descriptors one object of a restore holds from its planning until it is
/// named: the engine's of its file, restore's own of a small one's unnamed
/// file (`O_TMPFILE`, linked by it once verified), and its parent
/// directory (at worst one directory per file).
pub const OPEN_FILES_PER_OBJECT: u64 = 3;
/// A resumed prefix this long is re-read (to hash it) with a note first:
/// at ~1.5 GB/s, 1 GiB is under a second, 200 GiB over two silent minutes.
pub const REHASH_NOTE_MIN_BYTES: u64 = 1 << 30;
/// What the note expects that read to run at (SHA1 with SHA-NI, one core).
pub const REHASH_BYTES_PER_S_ESTIMATE: u64 = 1_500_000_000;
/// Until the last object is queued, large objects take chunks on at most
/// 1/this of all connections (together); the others keep taking small objects, so
/// files keep completing (and being journaled) beside a large download.
/// Once nothing else is left, `large_connections_per_core` of each core do.
pub const LARGE_OBJECT_CONNECTIONS_DIVISOR: usize = 2;
/// ...and once nothing else is left, where a round trip (the run's
/// shortest request-to-head wait) is at least this long, every connection
/// takes chunks, not just `large_connections_per_core` of each core's.
pub const LARGE_ALL_CONNECTIONS_ROUND_TRIP_MIN_US: u64 = 1_000;
/// ...as the shortest of at least this many answers: on loopback the first
/// ones wait on the origin's cold start (a 1 GiB `get` from a fresh `ringdown
/// serve`: every one of the first 71 took over 1 ms, later ones 0.2 ms).
pub const LONG_ROUND_TRIP_SAMPLES_MIN: u64 = 128;
/// Journal records sorted in memory at once when a resumed restore merges
/// its journal (an external sort): resume memory stays flat whatever the
/// number of files completed before.
pub const JOURNAL_SORT_RUN_BYTES: usize = 4 << 20;
/// A connection idle longer than this is closed rather than reused: below
/// the idle timeouts of common servers and load balancers (nginx 75 s, AWS
/// ALB 60 s), so a NAT or firewall that drops idle flows silently does not
/// turn the next request into a stall. The control plane's connection
/// (between listing calls) and a chunk's through a backoff after a
/// retryable answer.
pub const KEEPALIVE_IDLE_MAX_MS: u64 = 15_000;

/// After a re-authorization fails on a transient error (its own retries
/// spent), requests refused for the same token share that failure for this
/// long instead of each trying again: one at a time, 5 tries each, they
/// queued for objects × attempts × ~4 s and a restore looked hung.
pub const REAUTHORIZE_FAILURE_SHARED_MS: u64 = 10_000;

/// The longest ETag sent back as `If-Match`: the request head is bounded,
/// and a longer one would fail every chunk instead of being left out (a
/// change is still caught by comparing each answer's ETag).
pub const IF_MATCH_ETAG_MAX_BYTES: usize = 1024;
/// `--files-from` names sorted in memory at once (the rest are spilled to
/// `TMPDIR`): a list of ten million names restores in the memory of one of
/// ten thousand.
pub const FILES_FROM_SORT_RUN_BYTES: usize = 4 << 20;
/// Sorted runs read at once by an external sort's merge (more are merged
/// into fewer first): with `SORT_READ_BUFFER_BYTES` each, 4 MiB of buffers.
pub const SORT_MERGE_FAN_IN: usize = 64;
pub const SORT_READ_BUFFER_BYTES: usize = 64 << 10;
/// `restore --fsync`: files named whose directories are synced together
/// (one fsync per distinct directory). Bounds the directory descriptors
/// held between fsyncs; what a power cut can cost is bounded by the
/// journal's `durable` marks (`JOURNAL_DURABLE_INTERVAL_MS`).
pub const FSYNC_BATCH_FILES: usize = 256;
/// How often a run makes what its journal says durable (`syncfs`, then a
/// `durable` line; see `journal`): after a power cut, at most this much
/// of a run's work is fetched again. Longer than a benchmark's run, so
/// that none pays for a flush the peers never make.
pub const JOURNAL_DURABLE_INTERVAL_MS: u64 = 5_000;
/// Journal lines of another boot held while waiting for a `durable` mark
/// that covers them (a few seconds of a run's lines); beyond, they are
/// dropped, and what they name fetched again.
pub const JOURNAL_UNCONFIRMED_LINES_MAX: usize = 1 << 16;
/// Largest `get` journal read back (a line per chunk: 8 MiB chunks of a
/// 1 TiB object are ~10 MiB of lines; anything bigger is not ours).
pub const GET_JOURNAL_MAX_BYTES: u64 = 64 << 20;
/// How often a download's journal writer looks at the written prefix.
pub const JOURNAL_POLL_MS: u64 = 20;
/// Tries to lock a journal that is still under its name once locked: a
/// run that starts just as another rewrites it (a rename over the name)
/// tries again. Many in a row mean the name never leads to the file
/// locked (a file system whose fd and path disagree on st_dev/st_ino):
/// an error, not a silent spin.
pub const JOURNAL_LOCK_TRIES_MAX: u32 = 16;
/// Failed names printed in the summary (the rest are in `--report`).
pub const SUMMARY_FAILED_NAMES_SHOWN: usize = 20;
/// Bytes read per step when hashing an existing local file (`--skip-existing`).
pub const LOCAL_HASH_READ_BYTES: usize = 1 << 20;

/// Buffered writes of one large object in flight at once, across all cores
/// (`large::Job::write_gate`): ext4 serializes them on the inode lock, and
/// waiting for it there spins.
pub const BUFFERED_WRITES_PER_FILE_MAX: usize = 1;

/// Largest single write through the page cache. On these VMs (virtio-balloon
/// free page reporting), the page cache's large folios come from memory the
/// host has taken back: writing 1 GiB with `dd bs=1M` cost 1.0-1.7 s of
/// system CPU, with `bs=256K` 0.38-0.41 s, `bs=16K` 0.63-0.67 s (same run,
/// caches dropped before each). Elsewhere a 256 KiB write costs the same
/// per byte as a 1 MiB one. O_DIRECT writes stay whole.
pub const BUFFERED_WRITE_PIECE_BYTES: usize = 256 << 10;

/// The file times ringdown gives restored files (`src_last_modified_millis`):
/// from 1901-12-13 (the least a 32-bit `time_t` holds, which every Linux
/// file system keeps) to 2446-05-10 (ext4's last second). Past those, a
/// file system clamps the time, and the journal's skip, comparing it, would
/// fetch the file again on every run; the upload time is given instead.
pub const MTIME_MS_RANGE: std::ops::RangeInclusive<i64> =
    (i32::MIN as i64 * 1000)..=(15_032_385_535 * 1000 + 999);

/// The largest POSIX ACL (`system.posix_acl_access`) a replaced file's is
/// copied from: 4 + 8 bytes an entry, so about 500 entries.
pub const ACL_MAX_BYTES: usize = 4096;

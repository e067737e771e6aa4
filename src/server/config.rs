//! Limits and defaults of `ringdown serve`, with units in the names.

/// Bytes read from disk per step of a download body. 1 MiB keeps the hop to a
/// blocking thread (~10 µs) under 0.1% of the block's send time and the memory
/// per connection at two blocks (one being sent, one read ahead).
pub const BODY_BLOCK_BYTES: usize = 1 << 20;
/// Objects up to this size are read whole on the blocking thread that opens
/// them, so a small download costs one hop to a blocking thread, not two.
pub const SMALL_OBJECT_INLINE_BYTES: usize = 256 << 10;
/// Read size of the SHA1 indexer.
pub const HASH_READ_BLOCK_BYTES: usize = 1 << 20;
/// Files hashed concurrently by one listing page that finds digests missing.
pub const LISTING_HASH_CONCURRENCY_MAX: usize = 8;
/// Striped locks that stop two threads hashing the same file.
pub const SHA1_LOCK_STRIPES: usize = 64;
/// A bucket walked less than this after one of its directories last changed
/// is walked again by the next listing page: a change within the same tick
/// of the kernel's timestamp clock (≤ 10 ms) would not move the stamps the
/// cached name list is checked against.
pub const LISTING_SETTLE_MS: u64 = 50;
/// The same for a directory whose ctime has no fraction of a second: a
/// filesystem that keeps whole seconds (ext4 with 128-byte inodes) or two
/// (FAT's mtime).
pub const LISTING_SETTLE_COARSE_MS: u64 = 2000;

/// `maxFileCount` default and maximum (B2's).
pub const LIST_PAGE_DEFAULT: usize = 100;
pub const LIST_PAGE_MAX: usize = 10_000;

/// Most characters of one client-sent value (a name, a fileId, a path)
/// quoted in an error message; longer values are cut there and marked `…`,
/// so an answer never grows with what the client sent.
pub const ECHOED_INPUT_MAX_CHARS: usize = 200;

/// Largest JSON request body of an API call (B2 requests are < 4 KiB).
pub const API_REQUEST_BODY_MAX_BYTES: usize = 1 << 20;
/// Largest request head (request line and headers, with the blank line):
/// a longer one is answered 431 and the connection closed. B2 clients send
/// heads of < 2 KiB. Also hyper's read-buffer bound, which alone is soft
/// (a head of up to about twice it got through).
pub const REQUEST_HEAD_MAX_BYTES: usize = 64 * 1024;
/// Most request headers accepted.
pub const REQUEST_HEADERS_MAX: usize = 100;
/// A client that sends no complete head within this time is dropped; so is
/// one that sends no complete API request body within this time after the
/// head (answered 408 `request_timeout`).
pub const REQUEST_HEAD_TIMEOUT_S: u64 = 30;
/// A connection whose writes have waited this long for the peer to take
/// bytes is closed (a client that never reads a download would otherwise
/// hold ~2 MiB of body buffers and a descriptor forever).
pub const WRITE_STALL_TIMEOUT_S: u64 = 30;
/// Pause after a failed `accept` (EMFILE and the like): long enough not to
/// spin on a full descriptor table, short enough that a freed descriptor
/// serves the next client at once.
pub const ACCEPT_FAILURE_BACKOFF_MS: u64 = 50;
/// TLS handshakes that take longer are dropped.
pub const TLS_HANDSHAKE_TIMEOUT_S: u64 = 10;
/// A `--stall-rate` body stays silent this long, then the connection is closed
/// (so stalled connections do not pile up forever).
pub const STALL_HOLD_S: u64 = 600;
/// `--latency-ms` delay line (`delay_line`): bytes one connection has in
/// flight each way. A window per one-way delay is the most a connection
/// moves, as over TCP: 4 MiB at a 20 ms round trip is ~420 MB/s.
pub const DELAY_LINE_WINDOW_BYTES: usize = 4 << 20;
/// Largest read the delay line stamps as one segment.
pub const DELAY_LINE_SEGMENT_BYTES: usize = 64 << 10;
/// Segments in flight each way, whatever their size (the window bounds the
/// bytes): room for the window in reads of 1 KiB.
pub const DELAY_LINE_SEGMENTS_MAX: usize = DELAY_LINE_WINDOW_BYTES / 1024;
/// Longest `--latency-ms`: ten minutes is past any link worth modelling,
/// and keeps every deadline far from `Instant`'s overflow.
pub const LATENCY_MS_MAX: u64 = 600_000;
/// The in-memory pipe between the delay line and the server's TLS.
pub const DELAY_LINE_PIPE_BYTES: usize = 256 << 10;
/// Keys whose attempt counters are remembered for fault decisions (~50 bytes
/// each: a 16-byte digest of the request and a counter); the table is cleared
/// when it grows past this (decisions stay deterministic per run).
pub const FAULT_ATTEMPT_KEYS_MAX: usize = 1_000_000;

/// Defaults of the flags.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8443";
pub const LARGE_FILE_THRESHOLD_DEFAULT: &str = "100MiB";
/// Credentials used when neither flags nor environment provide any; printed
/// on the ready line so demos can use them.
pub const DEMO_KEY_ID: &str = "ringdown-demo-key-id";
pub const DEMO_KEY: &str = "ringdown-demo-application-key";

/// Longest `validDurationInSeconds` of `b2_get_download_authorization` (B2's: one week).
pub const DOWNLOAD_AUTHORIZATION_VALID_MAX_S: u64 = 604_800;

/// Reported to clients in `b2_authorize_account`.
pub const RECOMMENDED_PART_SIZE_BYTES: u64 = 100_000_000;
pub const ABSOLUTE_MINIMUM_PART_SIZE_BYTES: u64 = 5_000_000;

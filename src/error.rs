//! The one error type of the crate. Each variant says what failed and, where the
//! user can act on it, what to do. Exit codes follow CONVENTIONS.md.
//!
//! Secrets never reach this type: callers put names, URLs without query strings
//! and B2 error codes in the context, never keys or tokens.

use std::fmt;
use std::io;

/// Process exit codes (documented in `--help` and README).
pub mod exit_code {
    pub const OK: i32 = 0;
    /// Some object failed, was refused, or was unverified under `--require-verified`.
    pub const FAILED: i32 = 1;
    /// Bad flag or configuration, caught before any network I/O.
    pub const USAGE: i32 = 2;
    /// Authentication or TLS trust failed, a proxy refused the tunnel, or the
    /// key may not do what was asked.
    pub const AUTH: i32 = 3;
    /// io_uring is not available (seccomp, `kernel.io_uring_disabled`, old kernel).
    pub const URING_UNAVAILABLE: i32 = 4;
    pub const SIGINT: i32 = 130;
    pub const SIGTERM: i32 = 143;
    pub const SIGHUP: i32 = 129;
}

#[derive(Debug)]
pub enum Error {
    /// A flag, argument or environment variable is wrong; nothing was done yet.
    Usage(String),
    /// The server refused our credentials (after one re-authorization).
    Auth(String),
    /// The key is valid but may not do this: another bucket, a name outside
    /// its prefix, or a capability it lacks.
    Denied(String),
    /// A plain URL's origin answered 401 or 403. ringdown sends no
    /// credentials there, so the URL itself was refused (an expired or
    /// wrong signature, a protected path); the message says so, where
    /// `Auth` would blame a key that was never sent.
    Refused(String),
    /// The server's certificate is not trusted, or the CA file is unusable.
    Trust(String),
    /// The HTTP proxy refused to open a tunnel to the origin (4xx to
    /// `CONNECT`: its policy or credentials); the message names the proxy,
    /// the origin and what to change.
    ProxyRefused(String),
    /// io_uring could not be set up at all.
    UringUnavailable(String),
    /// A local I/O operation failed.
    Io { context: String, source: io::Error },
    /// The origin answered something we cannot use, after all retries.
    Http { context: String, detail: String },
    /// Answers of the very version being downloaded gave it another size
    /// than the one the download was planned with (a probe or a listing
    /// that disagrees with the downloads): `get` probes once more.
    SizeDisputed { context: String, detail: String },
    /// The bytes we received do not hash to the published SHA1.
    Sha1Mismatch {
        name: String,
        expected: String,
        actual: String,
        /// What the whole object's earlier downloads hashed to, each a
        /// mismatch too (`get` fetches it again once).
        earlier: Vec<String>,
    },
    /// The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP), or by its
    /// program's `EngineConfig::cancel`: then `signal` is 0
    /// (`runtime::CANCELLED`).
    Interrupted { signal: i32 },
    /// The run cannot continue, and trying again will not help until
    /// something changes (no such bucket or object, disk full, cap
    /// exceeded, read-only target).
    Fatal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn http(context: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Http {
            context: context.into(),
            detail: detail.into(),
        }
    }

    /// A refusal (exit code 3): the credentials, the key's rights, the
    /// origin's certificate or the proxy said no. Trying again as before
    /// will not help.
    pub fn is_refusal(&self) -> bool {
        self.exit_code() == exit_code::AUTH
    }

    /// B2's daily cap is spent (`download_cap_exceeded`,
    /// `transaction_cap_exceeded`): run-fatal with `b2::CAP_HINT` said.
    pub fn is_cap_spent(&self) -> bool {
        matches!(self, Error::Fatal(message) if message.ends_with(crate::b2::CAP_HINT))
    }

    /// Whether what a run fetched of a large object stays for the next
    /// run to resume from: after a refusal (exit 3) or a spent cap, which
    /// the next run gets past once the key, the certificate or the cap is
    /// fixed (a cap resets by itself); a 400 GiB object was fetched again
    /// from byte 0 after the cap stopped it (h40 #1).
    pub fn keeps_partials(&self) -> bool {
        self.is_refusal() || self.is_cap_spent()
    }

    /// Whether the same call may succeed if made again later: not after a
    /// refusal, a setting that cannot work, or what ends a run (a spent
    /// cap). Re-authorizing mid-run stops the run on these, as the first
    /// authorization would have.
    pub fn may_pass_on_retry(&self) -> bool {
        !(self.is_refusal() || matches!(self, Error::Usage(_) | Error::Fatal(_)))
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit_code::USAGE,
            Error::Auth(_)
            | Error::Denied(_)
            | Error::Refused(_)
            | Error::Trust(_)
            | Error::ProxyRefused(_) => exit_code::AUTH,
            Error::UringUnavailable(_) => exit_code::URING_UNAVAILABLE,
            Error::Interrupted { signal } if *signal == libc::SIGTERM => exit_code::SIGTERM,
            Error::Interrupted { signal } if *signal == libc::SIGHUP => exit_code::SIGHUP,
            Error::Interrupted { .. } => exit_code::SIGINT,
            Error::Io { .. }
            | Error::Http { .. }
            | Error::SizeDisputed { .. }
            | Error::Sha1Mismatch { .. }
            | Error::Fatal(_) => exit_code::FAILED,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::Auth(msg) => write!(f, "authentication failed: {msg}"),
            Error::Denied(msg) => write!(f, "not allowed: {msg}"),
            Error::Trust(msg) => write!(f, "TLS trust failed: {msg}"),
            Error::Refused(msg) | Error::ProxyRefused(msg) => write!(f, "{msg}"),
            Error::UringUnavailable(msg) => write!(f, "io_uring is unavailable: {msg}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Http { context, detail } | Error::SizeDisputed { context, detail } => {
                write!(f, "{context}: {detail}")
            }
            Error::Sha1Mismatch {
                name,
                expected,
                actual,
                earlier,
            } if earlier.is_empty() => write!(
                f,
                "{name}: SHA1 mismatch: expected {expected}, received bytes hash to {actual}"
            ),
            // Said, not left to an access log: the object came more than
            // once (h43 #15h), and whether the digests agree tells why.
            Error::Sha1Mismatch {
                name,
                expected,
                actual,
                earlier,
            } => {
                let downloads = match earlier.len() + 1 {
                    2 => "twice".to_string(),
                    count => format!("{count} times"),
                };
                if earlier.iter().all(|sha1| sha1 == actual) {
                    write!(
                        f,
                        "{name}: SHA1 mismatch, downloaded {downloads}: each time the bytes \
                         hash to {actual}, where {expected} was expected: the expected digest \
                         (published, or given with --sha1) is not that of the object stored, and \
                         downloading again will not help; DEST was left as it was"
                    )
                } else {
                    write!(
                        f,
                        "{name}: SHA1 mismatch, downloaded {downloads}: the bytes hashed to \
                         {}, then to {actual}, where {expected} was expected: they were changed on \
                         the way (a proxy, the network, this host's memory?); DEST was left as it was",
                        earlier.join(", then to ")
                    )
                }
            }
            Error::Interrupted {
                signal: crate::runtime::CANCELLED,
            } => write!(f, "cancelled (EngineConfig::cancel)"),
            Error::Interrupted { signal } if *signal == libc::SIGINT => {
                write!(f, "interrupted (SIGINT)")
            }
            Error::Interrupted { signal } if *signal == libc::SIGTERM => {
                write!(f, "interrupted (SIGTERM)")
            }
            Error::Interrupted { signal } if *signal == libc::SIGHUP => {
                write!(f, "interrupted (SIGHUP)")
            }
            Error::Interrupted { signal } => write!(f, "interrupted by signal {signal}"),
            Error::Fatal(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

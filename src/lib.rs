//! ringdown: restore data from object storage onto Linux servers with io_uring,
//! verified. See the README for the architecture.
//!
//! The library does what the CLI does, with the CLI's defaults:
//!
//! ```no_run
//! use ringdown::restore::{Restore, RestoreOptions};
//! use ringdown::{Download, DownloadOptions, Source};
//!
//! # fn main() -> ringdown::Result<()> {
//! let key_id = std::env::var("B2_APPLICATION_KEY_ID").unwrap_or_default();
//! let key = std::env::var("B2_APPLICATION_KEY").unwrap_or_default();
//!
//! // One object, verified, renamed into place only when whole.
//! let options = DownloadOptions::new("production", &key_id, &key);
//! let source = Source::parse("b2://bucket/db/dump.sql")?;
//! let report = Download::new(source, "/srv/dump.sql".into(), options).run()?;
//! println!("{} bytes in {:.1} s, SHA1 {}", report.bytes, report.seconds, report.sha1_hex);
//!
//! // A folder of a bucket, resumable; every field can be changed first.
//! let mut options =
//!     RestoreOptions::new("b2://bucket/photos", "/srv/photos", "production", &key_id, &key)?;
//! options.skip_existing = true;
//! let report = Restore::new(options).run()?;
//! if let Some(error) = report.fatal {
//!     return Err(error);
//! }
//! println!("{} files restored, {} failed", report.tally.files, report.tally.failed);
//! # Ok(())
//! # }
//! ```

/// The README's code blocks as doctests: its library example must compile.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// `eprintln!` that never panics. A run's messages must not end it: with
/// stderr closed or a broken pipe (`2>&1 | head`), `eprintln!` panics, and a
/// restore would stop mid-way over a message nobody can read.
///
/// While a progress line is drawn on a TTY (`PROGRESS_LINE_DRAWN`), the
/// message first clears it, so it does not land after the line's text;
/// the next redraw puts the line back below the message.
///
/// A program that embeds ringdown can take the messages instead
/// (`set_message_sink`).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_message(format_args!($($arg)*))
    };
}

type MessageSink = Box<dyn Fn(&str) + Send + Sync>;

static MESSAGE_SINK: std::sync::OnceLock<MessageSink> = std::sync::OnceLock::new();

/// Sends every message a run would print on stderr (notices, warnings,
/// per-file failures, one line each, without its newline) to `sink`
/// instead: a program that embeds ringdown routes them to its own log.
/// Once per process; a second call returns `Err` and changes nothing. The
/// sink is called from any of the run's threads, and must not block long.
/// Should it panic, the line goes to stderr and the run goes on.
pub fn set_message_sink(
    sink: impl Fn(&str) + Send + Sync + 'static,
) -> std::result::Result<(), &'static str> {
    MESSAGE_SINK
        .set(Box::new(sink))
        .map_err(|_| "a message sink is already set")
}

#[doc(hidden)]
pub fn say_message(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    // Messages quote names and servers' text: an escape sequence in them
    // (C0 or C1) must not move the cursor, erase a line or recolour one.
    let message = message.to_string();
    let message = printable(&message, true);
    if let Some(sink) = MESSAGE_SINK.get() {
        // A sink that panics is the program's bug: its line goes to stderr
        // instead, where it would have failed the file the run was telling
        // about, and blamed ringdown for it (h35 #7).
        let sunk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(&message)));
        if sunk.is_ok() {
            return;
        }
    }
    let mut stderr = std::io::stderr().lock();
    if PROGRESS_LINE_DRAWN.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = write!(stderr, "\r\x1b[2K");
    }
    let _ = writeln!(stderr, "{message}");
}

/// `text` with its control characters (C0, DEL, C1) escaped as `\u{1b}`,
/// but line breaks and tabs when `keep_lines` (a message's own layout);
/// borrowed when there is none.
pub fn printable(text: &str, keep_lines: bool) -> std::borrow::Cow<'_, str> {
    escape_chars(
        text,
        |c| c.is_control() && !(keep_lines && matches!(c, '\n' | '\t')),
        |c| format!("\\u{{{:x}}}", u32::from(c)),
    )
}

/// `text` with each char `escaped` says written as `escape` gives it;
/// borrowed when there is none.
pub(crate) fn escape_chars(
    text: &str,
    escaped: impl Fn(char) -> bool,
    escape: impl Fn(char) -> String,
) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(&escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match escaped(c) {
            true => out.push_str(&escape(c)),
            false => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Set while a progress line is being redrawn in place on a TTY.
pub static PROGRESS_LINE_DRAWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub mod b2;
pub mod cli;
pub mod client;
pub mod config;
pub mod dest;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod get;
pub mod http;
pub mod journal;
pub mod plan;
pub mod restore;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod tls;
pub mod units;
pub mod uring;
pub mod verify;

pub use error::{Error, Result};
pub use get::{Download, DownloadOptions, DownloadReport, Source};

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_but_a_messages_own_lines() {
        assert!(matches!(
            printable("plain ü text", false),
            std::borrow::Cow::Borrowed(_)
        ));
        let hostile = "\u{1b}[2K\u{1b}[32mok\u{9b}1A\u{7f}\nnext\tcol";
        assert_eq!(
            printable(hostile, false),
            "\\u{1b}[2K\\u{1b}[32mok\\u{9b}1A\\u{7f}\\u{a}next\\u{9}col"
        );
        assert_eq!(
            printable(hostile, true),
            "\\u{1b}[2K\\u{1b}[32mok\\u{9b}1A\\u{7f}\nnext\tcol"
        );
    }
}

//! What `get` and `restore` print and write once a run ends, in one place so
//! the two commands cannot drift apart (they had: `restore` let a failed
//! `--stats-json` write replace the run's own error and its summary).

use std::path::Path;

use crate::error::{Error, Result};
use crate::stats::RunSummary;

/// The run's notes, without the memlock one when the start already said it.
pub fn print_notices(notices: &[String], memlock_notice: Option<&str>, quiet: bool) {
    if quiet {
        return;
    }
    for notice in notices {
        if memlock_notice.is_none() || !notice.starts_with(crate::uring::REGISTRATION_SKIPPED) {
            say!("ringdown: note: {notice}");
        }
    }
}

/// ` (F fetched; R were on disk from an earlier run)` for a run that
/// resumed: its rate is of the fetched bytes only. Empty otherwise.
pub fn resumed_text(summary: &RunSummary) -> String {
    match summary.resumed_bytes {
        0 => String::new(),
        resumed_bytes => format!(
            " ({} fetched; {resumed_bytes} were on disk from an earlier run)",
            summary.fetched_bytes()
        ),
    }
}

/// `retries: N, O_DIRECT: yes|no, registered buffers: yes|no`.
pub fn engine_line(summary: &RunSummary) -> String {
    let yes_no = |flag: bool| if flag { "yes" } else { "no" };
    format!(
        "retries: {}, O_DIRECT: {}, registered buffers: {}",
        summary.retries,
        yes_no(summary.direct_io),
        yes_no(summary.registered_buffers)
    )
}

/// Writes `--stats-json`, into `held` if the start opened it (a FIFO:
/// `check_output_file`). The caller settles a failure with
/// [`settle_stats_write`] once the summary is out.
pub fn write_stats_json(
    path: &Path,
    summary: &RunSummary,
    held: Option<std::fs::File>,
) -> Result<()> {
    use std::io::Write;
    let json = serde_json::to_string_pretty(&summary.to_json()).expect("stats serialize");
    let writing = |error: std::io::Error| Error::io(format!("writing {}", path.display()), error);
    let mut file = match held {
        Some(file) => file,
        None => super::open_output(path, true).map_err(|error| {
            writing(match error.raw_os_error() {
                Some(libc::ENXIO) => std::io::Error::other(super::unwritable_output(&error)),
                _ => error,
            })
        })?,
    };
    file.write_all((json + "\n").as_bytes()).map_err(writing)
}

/// A stats file that could not be written fails a run that succeeded; a run
/// that failed (or was interrupted) keeps its own error and exit code, the
/// one a script acts on, and the write failure is a warning.
pub fn settle_stats_write(written: Result<()>, run_failed: bool) -> Result<()> {
    match written {
        Err(error) if run_failed => {
            say!("ringdown: warning: {error}");
            Ok(())
        }
        other => other,
    }
}

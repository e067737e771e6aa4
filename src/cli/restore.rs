//! `ringdown restore` flags → `RestoreOptions`, then the summary on stderr.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::get::{TuningArgs, resolve_realm};
use super::ticker::{RecentRate, Ticker, eta_text};
use crate::config;
use crate::engine::Progress;
use crate::error::{Error, Result, exit_code};
use crate::restore::paths::{NameFilter, Shard, folder_prefix};
use crate::restore::{FileCounts, Restore, RestoreOptions, RestoreReport};

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// b2://BUCKET or b2://BUCKET/PREFIX (a folder: PREFIX/a/b lands in DIR/a/b).
    pub source: String,
    /// The directory to restore into (created if missing).
    pub dir: PathBuf,
    /// `production`, `staging`, `dev` or a URL. Also B2_REALM, then B2_ENVIRONMENT.
    #[arg(long)]
    pub realm: Option<String>,
    /// Trust this CA (PEM) in addition to the system roots (SSL_CERT_FILE replaces those).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// Restore only names (relative to PREFIX) matching this glob; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out names (relative to PREFIX) matching this glob; repeatable; beats --include.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Skip files that exist locally with the same size and SHA1.
    #[arg(long)]
    pub skip_existing: bool,
    /// fsync each file before its rename; directories and the journal in batches (slower; for restores that must survive a power cut once reported done).
    #[arg(long)]
    pub fsync: bool,
    /// Restore shard K of N (0-based; by SHA-1 of the name). Else JOB_COMPLETION_INDEX or Slurm array variables.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// N for JOB_COMPLETION_INDEX (also RINGDOWN_SHARD_COUNT).
    #[arg(long, value_name = "N")]
    pub shard_count: Option<u64>,
    /// Write one JSON line per file to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the summary and stage histograms as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// List what would be restored (BYTES<TAB>NAME on stdout) and the names a real run would
    /// refuse or fail (on stderr); create nothing. Exits 1 when there are such names, as the
    /// real run would. Writes no file, so not with --report or --stats-json.
    #[arg(long, conflicts_with_all = ["report", "stats_json"])]
    pub dry_run: bool,
    /// Restore the bucket as it was at this instant: each name's newest version uploaded at or
    /// before it, leaving out names deleted (hidden) by then or created later. RFC 3339 with a
    /// zone (2026-11-20T09:30:00Z, ...+01:00) or a date (00:00 UTC). Lists all versions.
    #[arg(long, value_name = "TIME", value_parser = crate::units::parse_instant_ms)]
    pub as_of: Option<u64>,
    /// Restore exactly the names listed in FILE (`-`: stdin), one per line, relative to PREFIX
    /// (empty lines and lines starting with # are skipped). The listing jumps from one listed
    /// name to the next; a listed name the bucket lacks is a failure. Filters and shards apply.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<PathBuf>,
    /// The SSE-C key of objects B2 stores encrypted with a customer key: a file holding the 32
    /// raw bytes or their base64 (else B2_SOURCE_SSE_C_KEY_B64, as for the b2 CLI). Sent only
    /// over https, and only for objects encrypted with SSE-C. Repeat it for a bucket under
    /// several keys (a rotated key): an object B2 refuses one key for gets the next, starting
    /// from the key that opened objects with the same fileInfo sse_c_key_id, else the last.
    #[arg(long, value_name = "FILE")]
    pub sse_c_key_file: Vec<PathBuf>,
    /// Exit 1 when some file carries no digest to verify against.
    #[arg(long)]
    pub require_verified: bool,
    /// One result line plus errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `b2://BUCKET[/PREFIX]` → (bucket, prefix).
pub fn parse_source(text: &str) -> Result<(String, String)> {
    let rest = text
        .strip_prefix("b2://")
        .ok_or_else(|| Error::Usage(format!("{text:?}: expected b2://BUCKET[/PREFIX]")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Usage(format!("{text:?}: no bucket name")));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Resolves flags and environment. `credentials` overrides the
/// `B2_APPLICATION_KEY_ID`/`B2_APPLICATION_KEY` variables (used by `demo`).
pub fn options_from(
    args: &RestoreArgs,
    credentials: Option<(String, String)>,
) -> Result<(RestoreOptions, Option<String>)> {
    let (bucket, prefix) = parse_source(&args.source)?;
    let (engine, memlock_notice) = args.tuning.engine_config(true)?;
    let filter = NameFilter::new(&args.include, &args.exclude).map_err(Error::Usage)?;
    let env = |name: &str| std::env::var(name).ok();
    let (shard, source) =
        Shard::resolve_from(args.shard.as_deref(), args.shard_count, &env).map_err(Error::Usage)?;
    // A shard the environment chose is said: nothing else in the output
    // tells one pod's or task's share from a whole restore.
    if let Some(source) = source.filter(|_| shard.count > 1 && !args.quiet) {
        say!(
            "ringdown: restoring shard {}/{} (from {source})",
            shard.index,
            shard.count
        );
    }
    let credential = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(key_id), Some(key)) = credentials
        .map(|(id, key)| (Some(id), Some(key)))
        .unwrap_or_else(|| {
            (
                credential("B2_APPLICATION_KEY_ID"),
                credential("B2_APPLICATION_KEY"),
            )
        })
    else {
        return Err(Error::Usage(
            "no B2 credentials: set B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY".into(),
        ));
    };
    if let Some(ca) = &args.ca_file {
        crate::tls::check_ca_file(ca)?;
    }
    if args.dir.exists() && !args.dir.is_dir() {
        return Err(Error::Usage(format!(
            "{} exists and is not a directory",
            args.dir.display()
        )));
    }
    let folder_prefix = folder_prefix(&prefix);
    let files_from = match &args.files_from {
        Some(path) => Some(read_files_from(path, &folder_prefix)?),
        None => None,
    };
    let options = RestoreOptions {
        engine,
        realm: resolve_realm(args.realm.as_deref()),
        key_id,
        key,
        ca_file: args.ca_file.clone(),
        direct_io: args.tuning.direct_io,
        bucket,
        folder_prefix,
        dir: args.dir.clone(),
        filter,
        shard,
        skip_existing: args.skip_existing,
        fsync: args.fsync,
        dry_run: args.dry_run,
        report: args.report.clone(),
        as_of_ms: args.as_of,
        files_from,
        sse_c_keys: super::get::read_sse_c_keys(&args.sse_c_key_file)?,
        require_verified: args.require_verified,
        quiet: args.quiet,
    };
    Ok((options, memlock_notice))
}

/// The names of a `--files-from` list (`-`: stdin), each a possible B2 name
/// under `prefix`, sorted in bounded memory.
fn read_files_from(
    path: &std::path::Path,
    prefix: &str,
) -> Result<Arc<crate::restore::name_list::NameList>> {
    use crate::restore::name_list::NameList;
    let shown = path.display().to_string();
    let list = if path.as_os_str() == "-" {
        NameList::read(std::io::stdin().lock(), prefix, &shown)?
    } else {
        let file = std::fs::File::open(path)
            .map_err(|error| Error::Usage(format!("--files-from {shown}: {error}")))?;
        NameList::read(std::io::BufReader::new(file), prefix, &shown)?
    };
    Ok(Arc::new(list))
}

pub fn run(args: RestoreArgs) -> Result<i32> {
    run_with(args, None)
}

/// `run` with explicit credentials (the demo's own server).
pub fn run_with(args: RestoreArgs, credentials: Option<(String, String)>) -> Result<i32> {
    let (options, memlock_notice) = options_from(&args, credentials)?;
    // A FIFO is held open from here to the end: closed in between, its
    // reader would take that for the end of the data and be gone (and the
    // run's own open of `--report` would wait for a reader, for ever).
    let mut report_held = None;
    if !args.dry_run {
        crate::restore::check_target_dir(&args.dir)?;
        if let Some(path) = &args.report {
            report_held = super::check_output_file("--report", path, Some(&args.dir))?;
        }
    }
    let mut stats_held = None;
    if let Some(path) = &args.stats_json {
        stats_held = super::check_output_file("--stats-json", path, Some(&args.dir))?;
    }
    if !args.quiet {
        for notice in args.tuning.cores_notice(true).iter().chain(&memlock_notice) {
            say!("ringdown: note: {notice}");
        }
    }
    crate::runtime::watch_signals();
    let stats_before = args.stats_json.as_deref().and_then(super::file_identity);
    let restore = Restore::new(options);
    let progress = (!args.quiet && !args.dry_run)
        .then(|| start_progress_line(Arc::clone(&restore.progress), Arc::clone(&restore.files)));
    let result = restore.run();
    if let Some(progress) = progress {
        progress.stop();
    }
    let report = result?;
    let exit_code = finish(
        &args,
        report,
        memlock_notice.as_deref(),
        stats_before,
        stats_held,
    );
    // The run wrote the report through a descriptor of its own, closed by now.
    drop(report_held);
    exit_code
}

/// Prints the summary, writes `--stats-json`, and picks the exit code.
/// `stats_before` is what `--stats-json` named before the run; `stats_held`
/// that file, if the start opened it (a FIFO: `check_output_file`).
pub fn finish(
    args: &RestoreArgs,
    report: RestoreReport,
    memlock_notice: Option<&str>,
    stats_before: Option<(u64, u64)>,
    stats_held: Option<std::fs::File>,
) -> Result<i32> {
    super::summary::print_notices(&report.selection_notices, None, args.quiet);
    if args.dry_run {
        if let Some(error) = report.fatal {
            return Err(error);
        }
        // The dry run's exit code is the one the real run would have.
        return Ok(match dry_run_verdict(&report.tally) {
            Some(verdict) => {
                say!("ringdown: dry run: {verdict}; a real run would exit 1");
                exit_code::FAILED
            }
            None => exit_code::OK,
        });
    }
    super::summary::print_notices(&report.notices, memlock_notice, args.quiet);
    // Written now, settled after the summary: a failed write must not hide
    // the run's own outcome.
    let stats_written = match &args.stats_json {
        // Another file there than before the run: the restore put an object
        // of that name there (stats inside DIR), which the stats would have
        // overwritten, a wrong file under its name (h42 #8).
        Some(path) if super::file_identity(path).is_some_and(|now| Some(now) != stats_before) => {
            Err(Error::io(
                format!(
                    "not writing --stats-json {}: the restore put a file of that name there",
                    path.display()
                ),
                std::io::Error::other("write the stats outside DIR or under another name"),
            ))
        }
        Some(path) => super::summary::write_stats_json(path, &report.summary, stats_held),
        None => Ok(()),
    };
    let tally = &report.tally;
    let summary = &report.summary;
    // Resumed objects' prefixes were on disk: the rate leaves them out.
    let resumed = super::summary::resumed_text(summary);
    let line = format!(
        "{}: {} file{} restored ({} verified, {} unverified), {} skipped, {} failed, {} refused; {} bytes{resumed} in {:.2} s, {:.1} MB/s",
        args.dir.display(),
        tally.files,
        if tally.files == 1 { "" } else { "s" },
        tally.ok,
        tally.unverified,
        tally.skipped,
        tally.failed,
        tally.refused,
        tally.bytes,
        summary.seconds,
        summary.mb_per_s()
    );
    if args.quiet {
        say!("{line}");
    } else {
        say!("{line}\n  {}", super::summary::engine_line(summary));
        if !tally.failed_names.is_empty() {
            say!("  failed (first {}):", config::SUMMARY_FAILED_NAMES_SHOWN);
            for name in &tally.failed_names {
                say!("    {name}");
            }
        }
        say!("\n{}", summary.stages.table());
    }
    let run_failed = report.fatal.is_some()
        || tally.failed > 0
        || tally.refused > 0
        || (args.require_verified && tally.unverified > 0);
    super::summary::settle_stats_write(stats_written, run_failed)?;
    if let Some(error) = report.fatal {
        return Err(error);
    }
    if tally.failed > 0 || tally.refused > 0 {
        return Ok(exit_code::FAILED);
    }
    if tally.unverified > 0 {
        if args.require_verified {
            say!(
                "ringdown: error: --require-verified: {} files could not be verified",
                tally.unverified
            );
            return Ok(exit_code::FAILED);
        }
        say!(
            "ringdown: warning: {} files were not verified against a published SHA1",
            tally.unverified
        );
    }
    Ok(exit_code::OK)
}

/// What a dry run found a real run would refuse or fail (`2 names refused,
/// 1 would fail`), or `None` when it found nothing of the kind.
fn dry_run_verdict(tally: &crate::restore::Tally) -> Option<String> {
    let names = |count: u64| if count == 1 { "name" } else { "names" };
    match (tally.refused, tally.failed) {
        (0, 0) => None,
        (refused, 0) => Some(format!("{refused} {} refused", names(refused))),
        (0, failed) => Some(format!("{failed} {} would fail", names(failed))),
        (refused, failed) => Some(format!(
            "{refused} {} refused, {failed} would fail",
            names(refused)
        )),
    }
}

/// `files 1234/5000 (listing…), 1200.0/3400.0 MB, 180.0 MB/s, ETA 12 s, retries 0, 7 s`:
/// totals are "as listed so far" until the listing ends; the ETA waits for it.
fn progress_text(
    progress: &Progress,
    files: &FileCounts,
    elapsed: Duration,
    rate: &mut RecentRate,
) -> String {
    let bytes = progress.bytes_done.load(Ordering::Relaxed);
    // The engine's count: large objects fetched again after a SHA1 mismatch.
    let again = progress.bytes_to_fetch.load(Ordering::Relaxed);
    let to_fetch = (files.bytes_to_fetch.load(Ordering::Relaxed) + again).max(bytes);
    let listing_done = files.listing_done.load(Ordering::Relaxed);
    let rate_bytes_per_s = rate.sample(elapsed, bytes);
    let eta = if listing_done {
        eta_text(to_fetch - bytes, rate_bytes_per_s)
    } else {
        "ETA after listing".to_string()
    };
    format!(
        "files {}/{}{}, {:.1}/{:.1} MB, {:.1} MB/s, {eta}, retries {}, {:.0} s{}",
        files.done.load(Ordering::Relaxed),
        files.listed.load(Ordering::Relaxed),
        if listing_done { "" } else { " (listing…)" },
        bytes as f64 / 1e6,
        to_fetch as f64 / 1e6,
        rate_bytes_per_s / 1e6,
        progress.retries.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        super::ticker::last_retry_text(progress)
    )
}

/// Progress: files, bytes, rate, ETA (`ticker::start_progress_line`).
fn start_progress_line(progress: Arc<Progress>, files: Arc<FileCounts>) -> Ticker {
    let mut rate = RecentRate::default();
    super::ticker::start_progress_line(move |elapsed| {
        progress_text(&progress, &files, elapsed, &mut rate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large object fetched again after a SHA1 mismatch adds to the
    /// total: the line said done = total, ETA 0 s, through the whole round.
    #[test]
    fn a_round_fetched_again_adds_to_the_total() {
        let progress = Progress::default();
        let files = FileCounts::default();
        files.bytes_to_fetch.store(100_000_000, Ordering::Relaxed);
        files.listing_done.store(true, Ordering::Relaxed);
        // The object's first round (100 MB) and half of the next.
        progress.bytes_done.store(150_000_000, Ordering::Relaxed);
        progress
            .bytes_to_fetch
            .store(100_000_000, Ordering::Relaxed);
        let mut rate = RecentRate::default();
        let text = progress_text(&progress, &files, Duration::from_secs(1), &mut rate);
        assert!(text.contains("150.0/200.0 MB"), "{text}");
    }
}

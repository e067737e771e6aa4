//! The library API as a program that embeds ringdown uses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use ringdown::restore::{Restore, RestoreOptions};
use ringdown::{Download, DownloadOptions, Error, Source};

/// An origin that accepts connections and never answers: every request
/// waits out the stall timeout, attempt after attempt.
fn silent_origin() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("http://{address}")
}

/// `RestoreOptions` of `source` into `dir` from `served`, the CLI's defaults.
fn served_restore(
    source: &str,
    dir: std::path::PathBuf,
    served: &common::Served,
) -> RestoreOptions {
    RestoreOptions::new(source, dir, &served.realm, &served.key_id, &served.key).unwrap()
}

/// Sets `cancel` after `after`.
fn cancel_after(after: Duration) -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let setter = Arc::clone(&cancel);
    std::thread::spawn(move || {
        std::thread::sleep(after);
        setter.store(true, Ordering::Release);
    });
    cancel
}

/// `EngineConfig::cancel` stops a run that is still in its control-plane
/// calls (a plain URL's probe, authorization, listing), not only one whose
/// data flows: against a server that answers nothing, a cancelled Download
/// returned after 154 s and a Restore after 29 s, waiting out every stall
/// and retry. Both now return `Interrupted` (signal 0: cancelled) within
/// seconds.
#[test]
fn cancel_stops_a_run_waiting_on_the_control_plane() {
    let origin = silent_origin();
    let out = tempfile::tempdir().unwrap();

    let mut options = DownloadOptions::new("production", "", "");
    options.engine.timeout = Duration::from_secs(20);
    options.engine.cancel = Some(cancel_after(Duration::from_millis(500)));
    let source = Source::parse(&format!("{origin}/object.bin")).unwrap();
    let started = Instant::now();
    let result = Download::new(source, out.path().join("object.bin"), options).run();
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(Error::Interrupted { signal: 0 })),
        "{result:?}"
    );
    // No signal was involved, and the message does not pretend one was.
    assert_eq!(
        result.unwrap_err().to_string(),
        "cancelled (EngineConfig::cancel)"
    );
    assert!(
        waited < Duration::from_secs(10),
        "returned after {waited:?}"
    );
    assert!(!out.path().join("object.bin").exists());

    let mut options = RestoreOptions::new(
        "b2://bucket",
        out.path().join("dir"),
        &origin,
        "key-id",
        "key",
    )
    .unwrap();
    options.engine.timeout = Duration::from_secs(20);
    options.engine.cancel = Some(cancel_after(Duration::from_millis(500)));
    let started = Instant::now();
    let outcome = Restore::new(options).run();
    let waited = started.elapsed();
    let fatal = match outcome {
        Ok(report) => report.fatal,
        Err(error) => Some(error),
    };
    assert!(
        matches!(fatal, Some(Error::Interrupted { signal: 0 })),
        "{fatal:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "returned after {waited:?}"
    );
}

/// `run` from async code: through `spawn_blocking`, as the docs say, and
/// straight from an async fn on either kind of runtime. tokio's blocking
/// pool threads carry a runtime handle too, and a check on that handle
/// refused them all ("call it from spawn_blocking"), the way it named.
#[test]
fn a_run_from_async_code_or_spawn_blocking_completes() {
    const SIZE: usize = 3 << 20;
    let data = tempfile::tempdir().unwrap();
    let bytes = common::content("async.bin", SIZE);
    common::write_file(data.path(), "bkt/async.bin", &bytes);
    let served = common::serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let download = |name: &str| {
        let mut options = DownloadOptions::new(&served.realm, &served.key_id, &served.key);
        options.engine.part_size_bytes = 1 << 20;
        options.engine.buffer_size_bytes = 256 << 10;
        Download::new(
            Source::parse("b2://bkt/async.bin").unwrap(),
            out.path().join(name),
            options,
        )
    };
    let restore = |dir: &str| {
        let options = served_restore("b2://bkt", out.path().join(dir), &served);
        Restore::new(options)
    };

    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let pooled = download("pooled");
    let report = multi
        .block_on(async move { tokio::task::spawn_blocking(move || pooled.run()).await })
        .unwrap()
        .unwrap();
    assert_eq!(report.bytes, SIZE as u64);
    let pooled = restore("pooled-dir");
    let report = multi
        .block_on(async move { tokio::task::spawn_blocking(move || pooled.run()).await })
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.tally.ok, report.fatal.is_none()),
        (1, true),
        "{report:?}"
    );
    let direct = download("direct-multi");
    multi.block_on(async move { direct.run() }).unwrap();

    let single = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let direct = download("direct-single");
    single.block_on(async move { direct.run() }).unwrap();
    let direct = restore("direct-single-dir");
    let report = single.block_on(async move { direct.run() }).unwrap();
    assert_eq!(report.tally.ok, 1, "{report:?}");

    for path in [
        "pooled",
        "direct-multi",
        "direct-single",
        "pooled-dir/async.bin",
        "direct-single-dir/async.bin",
    ] {
        assert!(
            std::fs::read(out.path().join(path)).unwrap() == bytes,
            "{path}"
        );
    }
}

/// What a program can set but the CLI cannot give is a usage error before
/// any request, not a panic (a shard count of 0 divided by zero; an empty
/// DEST panicked after the first request) nor an empty success (shard 5 of
/// 2 restored nothing and said nothing).
#[test]
fn options_the_cli_cannot_give_are_usage_errors() {
    let origin = silent_origin();
    let out = tempfile::tempdir().unwrap();
    let usage = |result: Result<(), Error>, what: &str, says: &str| {
        let error = result.expect_err(what);
        assert!(matches!(error, Error::Usage(_)), "{what}: {error:?}");
        assert!(error.to_string().contains(says), "{what}: {error}");
    };
    for (index, count, says) in [(0, 0, "N must be at least 1"), (5, 2, "below N")] {
        let mut options =
            RestoreOptions::new("b2://bkt", out.path().join("d"), &origin, "id", "key").unwrap();
        options.shard.index = index;
        options.shard.count = count;
        let result = Restore::new(options).run().map(drop);
        usage(result, &format!("shard {index}/{count}"), says);
    }
    let options = RestoreOptions::new("b2://bkt", "", &origin, "id", "key").unwrap();
    usage(
        Restore::new(options).run().map(drop),
        "empty DIR",
        "DIR is empty",
    );
    // As the CLI refuses it: it was a retryable "creating …: File exists".
    let file = out.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let options = RestoreOptions::new("b2://bkt", &file, &origin, "id", "key").unwrap();
    let result = Restore::new(options).run().map(drop);
    usage(result, "DIR a file", "exists and is not a directory");
    std::fs::remove_file(&file).unwrap();
    // A report in a directory that is not there: refused before DIR and its
    // journal are made (h35 #2; it failed after them, with an Io error).
    let mut options =
        RestoreOptions::new("b2://bkt", out.path().join("d"), &origin, "id", "key").unwrap();
    options.report = Some(out.path().join("nodir/report.jsonl"));
    let result = Restore::new(options).run().map(drop);
    usage(result, "report in a missing directory", "does not exist");

    let source = Source::parse(&format!("{origin}/x")).unwrap();
    let download = |dest: &str| {
        Download::new(
            source.clone(),
            dest.into(),
            DownloadOptions::new("production", "", ""),
        )
        .run()
        .map(drop)
    };
    usage(download(""), "empty DEST", "DEST is empty");
    let missing = out.path().join("missing/..");
    usage(
        download(missing.to_str().unwrap()),
        "DEST ending in ..",
        "names no file",
    );
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none());
}

/// A bucket or object that is not there is no error to retry: a program
/// that retries what `may_pass_on_retry` says would have looped on it.
#[test]
fn what_is_not_there_is_not_worth_a_retry() {
    let data = tempfile::tempdir().unwrap();
    common::write_file(data.path(), "bkt/a.bin", b"a");
    let served = common::serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    for source in [
        "b2://bkt/missing.bin",
        "b2://nobucket/a.bin",
        // B2 answers 400 bad_request for an ID it cannot read (h35 #9).
        "b2id://4_zdoesnotexist",
    ] {
        let options = DownloadOptions::new(&served.realm, &served.key_id, &served.key);
        let download = Download::new(
            Source::parse(source).unwrap(),
            out.path().join("x"),
            options,
        );
        let error = download.run().unwrap_err();
        assert!(!error.may_pass_on_retry(), "{source}: {error:?}");
        assert_eq!(error.exit_code(), 1, "{source}: {error}");
        let says = ["not found", "no file version has this ID"];
        assert!(
            says.iter().any(|says| error.to_string().contains(says)),
            "{source}: {error}"
        );
    }
    let options = served_restore("b2://nobucket", out.path().join("dir"), &served);
    let error = Restore::new(options).run().unwrap_err();
    assert!(!error.may_pass_on_retry(), "{error:?}");
    assert!(error.to_string().contains("no bucket named"), "{error}");
}

/// A `Download` or `Restore` run again counts its progress from 0.
#[test]
fn progress_starts_from_zero_on_each_run() {
    const SIZE: usize = 2 << 20;
    let data = tempfile::tempdir().unwrap();
    common::write_file(data.path(), "bkt/a.bin", &common::content("a.bin", SIZE));
    common::write_file(data.path(), "bkt/b.bin", &common::content("b.bin", 1000));
    let served = common::serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let mut options = DownloadOptions::new(&served.realm, &served.key_id, &served.key);
    options.force = true;
    let download = Download::new(
        Source::parse("b2://bkt/a.bin").unwrap(),
        out.path().join("a.bin"),
        options,
    );
    let options = served_restore("b2://bkt", out.path().join("dir"), &served);
    let restore = Restore::new(options);
    for _ in 0..2 {
        download.run().unwrap();
        assert_eq!(
            download.progress.bytes_done.load(Ordering::Relaxed),
            SIZE as u64
        );
        std::fs::remove_dir_all(out.path().join("dir")).ok();
        restore.run().unwrap();
        assert_eq!(restore.files.done.load(Ordering::Relaxed), 2);
        assert_eq!(restore.files.listed.load(Ordering::Relaxed), 2);
        assert_eq!(
            restore.progress.bytes_done.load(Ordering::Relaxed),
            SIZE as u64 + 1000
        );
    }
}

/// A large object fetched again after a SHA1 mismatch (here B2 publishes
/// a wrong SHA1: both rounds fail) adds its size to what the run fetches,
/// as `progress.bytes_to_fetch`: a progress line's total grows with it.
#[test]
fn a_round_after_a_mismatch_adds_to_the_bytes_to_fetch() {
    const SIZE: usize = 2 << 20;
    let data = tempfile::tempdir().unwrap();
    common::write_file(data.path(), "bkt/a.bin", &common::content("a.bin", SIZE));
    let served = common::serve(data.path(), true, &["--wrong-sha1", "a.bin"]);
    let out = tempfile::tempdir().unwrap();
    let mut options = served_restore("b2://bkt", out.path().join("dir"), &served);
    options.engine.buffer_size_bytes = 64 << 10;
    options.engine.part_size_bytes = 256 << 10;
    options.quiet = true;
    let restore = Restore::new(options);
    let report = restore.run().unwrap();
    assert_eq!(report.tally.failed, 1);
    let again = restore.progress.bytes_to_fetch.load(Ordering::Relaxed);
    assert_eq!(again, SIZE as u64);
    assert_eq!(
        restore.progress.bytes_done.load(Ordering::Relaxed),
        2 * SIZE as u64
    );
}

/// An embedding program takes the messages a run would print on stderr
/// (here: a file that failed) through `set_message_sink`.
#[test]
fn messages_go_to_the_sink_an_embedding_program_sets() {
    let taken = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&taken);
    ringdown::set_message_sink(move |line| sink.lock().unwrap().push(line.to_string())).unwrap();
    assert!(
        ringdown::set_message_sink(|_| {}).is_err(),
        "once per process"
    );

    let data = tempfile::tempdir().unwrap();
    common::write_file(
        data.path(),
        "bkt/fails.bin",
        &common::content("fails.bin", 4096),
    );
    let served = common::serve(data.path(), true, &["--reset-rate", "1"]);
    let out = tempfile::tempdir().unwrap();
    let mut options = served_restore("b2://bkt", out.path().join("dir"), &served);
    options.engine.max_attempts = 1;
    let report = Restore::new(options).run().unwrap();
    assert_eq!(report.tally.failed, 1, "{report:?}");
    let taken = taken.lock().unwrap();
    assert!(
        taken
            .iter()
            .any(|line| line.starts_with("ringdown: failed: fails.bin: ")),
        "{taken:?}"
    );
    assert!(taken.iter().all(|line| !line.ends_with('\n')), "{taken:?}");
}

/// `Download::progress` counts bytes as they land, in any order: a large
/// object's chunks come in side by side, and counted as hashed (in file
/// order) the count showed only the first chunk's until the very end (a
/// rate-limited get printed "0.0 MB" 10 s in). A quarter of the object is
/// counted well before the run is over.
#[test]
fn progress_counts_chunks_as_they_land_not_in_file_order() {
    const SIZE: usize = 8 << 20;
    let data = tempfile::tempdir().unwrap();
    common::write_file(
        data.path(),
        "bkt/big.bin",
        &common::content("big.bin", SIZE),
    );
    let served = common::serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let mut options = DownloadOptions::new(&served.realm, &served.key_id, &served.key);
    options.engine.cores = 1;
    options.engine.connections_per_core = 8;
    options.engine.large_connections_per_core = 8;
    // One buffer per chunk: counted as hashed, a chunk's bytes counted
    // only once all of it had come and every chunk before it too.
    options.engine.part_size_bytes = 1 << 20;
    options.engine.buffer_size_bytes = 1 << 20;
    options.engine.buffers_per_core = 16;
    // 8 MiB at 4 MB/s: about 2 s, with the 8 chunks in flight together.
    options.engine.limit_rate_bytes_per_s = Some(4_000_000);
    let source = Source::parse("b2://bkt/big.bin").unwrap();
    let download = Download::new(source, out.path().join("big.bin"), options);
    let progress = Arc::clone(&download.progress);
    let started = Instant::now();
    let quarter_at = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            loop {
                let done = progress.bytes_done.load(Ordering::Relaxed);
                if done >= (SIZE / 4) as u64 {
                    return Some(started.elapsed());
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let report = download.run().unwrap();
        assert_eq!(report.bytes, SIZE as u64);
        watcher.join().unwrap()
    });
    let total = started.elapsed();
    let quarter_at = quarter_at.expect("a quarter was never counted");
    // Any order: about a quarter of the way; file order: at the end.
    assert!(
        quarter_at.as_secs_f64() < 0.6 * total.as_secs_f64(),
        "a quarter counted at {quarter_at:?} of {total:?}"
    );
}

/// Which `--exclude` globs matched is each run's own: options cloned for
/// another prefix (here the exclude matches nothing under it) say so, where
/// the clone used to share the first run's record and stay silent.
#[test]
fn each_run_reports_the_globs_it_matched_itself() {
    let data = tempfile::tempdir().unwrap();
    common::write_file(data.path(), "bkt/a/x.tmp", b"x");
    common::write_file(data.path(), "bkt/a/y.txt", b"y");
    common::write_file(data.path(), "bkt/b/z.txt", b"z");
    let served = common::serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let mut under_a = served_restore("b2://bkt/a/", out.path().join("a"), &served);
    under_a.filter = ringdown::restore::paths::NameFilter::new(&[], &["*.tmp".into()]).unwrap();
    let mut under_b = under_a.clone();
    under_b.folder_prefix = "b/".into();
    under_b.dir = out.path().join("b");
    let unmatched = |report: &ringdown::restore::RestoreReport| {
        report
            .selection_notices
            .iter()
            .any(|notice| notice.contains("--exclude \"*.tmp\" matched no name"))
    };
    let report = Restore::new(under_a).run().unwrap();
    assert!(!unmatched(&report), "{:?}", report.selection_notices);
    let report = Restore::new(under_b).run().unwrap();
    assert!(unmatched(&report), "{:?}", report.selection_notices);
    assert_eq!(std::fs::read(out.path().join("b/z.txt")).unwrap(), b"z");
}

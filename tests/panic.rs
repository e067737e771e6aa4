//! A bug that panics on a core thread must end a library caller's run with
//! an error, never hang it: the other cores would otherwise wait forever for
//! the chunks, writes and hashing the dead task held. (The CLI aborts on a
//! panic instead, see `main.rs`.) The engine's failpoint makes the Nth pass
//! through a site (a request, the hasher, a write, a finisher) panic; the
//! hook is process-wide, so this file holds one test that runs its cases in
//! turn.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::{Served, content, serve, write_file};
use ringdown::engine::EngineConfig;
use ringdown::engine::failpoint::{self, Site, panic_at};
use ringdown::get::DirectIo;
use ringdown::restore::{Restore, RestoreOptions};
use ringdown::{Download, DownloadOptions, Source};

const BIG_BYTES: usize = 24 * 1024 * 1024 + 777;
const SMALL_FILES: usize = 300;

/// A run that has not returned by then is hung.
const RUN_DEADLINE: Duration = Duration::from_secs(90);

/// Small parts and buffers: many chunks over both cores for a 24 MiB object.
fn engine(restore: bool) -> EngineConfig {
    let mut engine = EngineConfig::defaults(restore);
    engine.cores = 2;
    engine.pin = ringdown::runtime::PinMode::Off;
    engine.connections_per_core = 3;
    engine.large_connections_per_core = 3;
    engine.buffers_per_core = 8;
    engine.buffer_size_bytes = 256 * 1024;
    engine.part_size_bytes = 1024 * 1024;
    engine.max_attempts = 3;
    engine.retry_base_ms = 10;
    engine.retry_max_ms = 100;
    engine
}

/// Runs `work` on a thread of its own and waits at most `RUN_DEADLINE`.
fn within_deadline<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    receiver
        .recv_timeout(RUN_DEADLINE)
        .unwrap_or_else(|_| panic!("{what}: still running after {RUN_DEADLINE:?}: hung"))
}

fn get(served: &Served, name: &str, dest: PathBuf) -> ringdown::Result<ringdown::DownloadReport> {
    let mut options = DownloadOptions::new(&served.realm, &served.key_id, &served.key);
    options.engine = engine(false);
    options.ca_file = served.ca_file.clone();
    options.direct_io = DirectIo::Off;
    let source = Source::parse(&format!("b2://bkt/{name}")).unwrap();
    within_deadline("get", move || Download::new(source, dest, options).run())
}

fn restore(served: &Served, dir: PathBuf) -> ringdown::restore::RestoreReport {
    let mut options =
        RestoreOptions::new("b2://bkt", dir, &served.realm, &served.key_id, &served.key).unwrap();
    options.engine = engine(true);
    options.ca_file = served.ca_file.clone();
    options.direct_io = DirectIo::Off;
    within_deadline("restore", move || {
        Restore::new(options).run().expect("the run itself starts")
    })
}

fn restore_reported(
    served: &Served,
    dir: PathBuf,
    report: &Path,
) -> ringdown::restore::RestoreReport {
    let mut options =
        RestoreOptions::new("b2://bkt", dir, &served.realm, &served.key_id, &served.key).unwrap();
    options.engine = engine(true);
    options.ca_file = served.ca_file.clone();
    options.direct_io = DirectIo::Off;
    options.report = Some(report.to_path_buf());
    within_deadline("restore", move || {
        Restore::new(options).run().expect("the run itself starts")
    })
}

/// Files under `dir` (outside `.ringdown/`), each of which must be identical
/// to its source: a panic may leave files unrestored, never wrong.
fn assert_only_whole_files(dir: &Path, source: &Path) -> usize {
    let files = common::files_under(dir);
    for name in &files {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(source.join(name)).unwrap(),
            "{name} is not its source"
        );
    }
    files.len()
}

#[test]
fn a_panic_on_a_core_ends_the_run_with_an_error_instead_of_hanging() {
    let data = tempfile::tempdir().unwrap();
    let bucket = data.path().join("bkt");
    write_file(&bucket, "big.bin", &content("big", BIG_BYTES));
    for index in 0..SMALL_FILES {
        write_file(
            &bucket,
            &format!("small/{index:03}.bin"),
            &content(&index.to_string(), 20_000 + index * 7),
        );
    }
    let served = serve(data.path(), false, &[]);
    let out = tempfile::tempdir().unwrap();

    // Each kind of core task of a large object panics while other chunks,
    // on both cores, are in flight, hashed and written.
    for (site, pass) in [
        (Site::Request, 1),
        (Site::Request, 6),
        (Site::Request, 20),
        (Site::Hasher, 3),
        (Site::Write, 5),
        (Site::Finisher, 1),
    ] {
        panic_at(site, pass);
        let dest = out.path().join(format!("big-{site:?}-{pass}.bin"));
        let error = get(&served, "big.bin", dest.clone())
            .err()
            .unwrap_or_else(|| panic!("{site:?} {pass} panicked, yet the get succeeded"));
        let text = error.to_string();
        assert!(text.contains("panicked"), "{site:?} {pass}: {text}");
        assert!(!dest.exists(), "{}", dest.display());
    }

    // A restore of small files and a large one: the run ends with the
    // panic as its fatal error, and every file it did restore is whole.
    for (site, pass) in [
        (Site::Request, 5),
        (Site::Request, 60),
        (Site::Write, 2),
        (Site::Hasher, 2),
    ] {
        panic_at(site, pass);
        let dir = out.path().join(format!("restore-{site:?}-{pass}"));
        let report = restore(&served, dir.clone());
        let fatal = report.fatal.as_ref().map(ToString::to_string);
        assert!(
            fatal
                .as_deref()
                .is_some_and(|text| text.contains("panicked")),
            "{fatal:?}"
        );
        let restored = assert_only_whole_files(&dir, &bucket);
        assert!(
            restored < SMALL_FILES + 1,
            "{restored} files: nothing failed?"
        );
    }

    // Half the answers 503 (`Retry-After: 2`): when the panic ends the run,
    // objects are backing off away from their connections. Each one ends
    // anyway: every name the server was asked for has its report line.
    let log = out.path().join("busy-access.jsonl");
    let busy = serve(
        data.path(),
        false,
        &[
            "--status-rate",
            "503:0.5:2",
            "--seed",
            "3",
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    for pass in [150, 200, 250] {
        panic_at(Site::Request, pass);
        let dir = out.path().join(format!("restore-busy-{pass}"));
        let report_path = out.path().join(format!("busy-{pass}.jsonl"));
        let report = restore_reported(&busy, dir.clone(), &report_path);
        let fatal = report.fatal.as_ref().map(ToString::to_string);
        assert!(fatal.is_some_and(|text| text.contains("panicked")));
        let reported: std::collections::BTreeSet<String> = common::json_lines(&report_path)
            .iter()
            .map(|line| line["name"].as_str().unwrap().to_string())
            .collect();
        let asked: std::collections::BTreeSet<String> = common::json_lines(&log)
            .iter()
            .filter_map(|line| line["name"].as_str().map(str::to_string))
            .collect();
        let missing: Vec<&String> = asked.difference(&reported).collect();
        // The object whose request panicked may be left without one.
        assert!(missing.len() <= 1, "asked for, never reported: {missing:?}");
        // Emptied, not removed: the server appends to the file it opened.
        std::fs::write(&log, "").unwrap();
    }

    // The hook off, the same process downloads and restores everything:
    // a panic leaves no state behind that breaks the next run.
    failpoint::off();
    let dest = out.path().join("big-after.bin");
    get(&served, "big.bin", dest.clone()).expect("a get after the panics");
    assert_eq!(std::fs::read(&dest).unwrap(), content("big", BIG_BYTES));
    let dir = out.path().join("restore-after");
    let report = restore(&served, dir.clone());
    assert!(report.fatal.is_none(), "{:?}", report.fatal);
    assert_eq!(assert_only_whole_files(&dir, &bucket), SMALL_FILES + 1);
}

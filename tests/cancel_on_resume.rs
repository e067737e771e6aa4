//! A stop that lands as a resumed `get` starts keeps what it resumes from
//! (its own process: it sets the message sink, once per process).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use ringdown::{Download, DownloadOptions, Error, Source};

const SIZE: usize = 8 << 20;

/// The most bytes any `chunk` line of a journal in `dir` says are written.
fn journaled_bytes(dir: &Path) -> u64 {
    let mut most = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".journal") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|line| line.starts_with("chunk\t")) {
            if let Some(bytes) = line.rsplit('\t').next().and_then(|b| b.parse().ok()) {
                most = most.max(bytes);
            }
        }
    }
    most
}

/// A cancel (a signal, for the CLI) that came after the prefix was
/// re-hashed and before the round's first request ended the round with
/// "not started", not `Interrupted`, and the arm for failures removed the
/// partial file and its journal: every byte of the earlier runs was lost,
/// while the run said it kept what resumes (h37 #10).
#[test]
fn a_cancel_as_a_resumed_get_starts_keeps_its_prefix() {
    let data = tempfile::tempdir().unwrap();
    let bytes = common::content("resume.bin", SIZE);
    common::write_file(data.path(), "bkt/resume.bin", &bytes);
    let served = common::serve(data.path(), true, &["--rate-per-conn", "100KB/s"]);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("resume.bin");
    // The second run is cancelled as soon as it says it resumed: after the
    // re-hash, before any request of its round.
    let cancel_on_resume = Arc::new(AtomicBool::new(false));
    let armed = Arc::new(AtomicBool::new(false));
    {
        let (cancel, armed) = (Arc::clone(&cancel_on_resume), Arc::clone(&armed));
        ringdown::set_message_sink(move |line| {
            if armed.load(Ordering::SeqCst) && line.contains("resumed at byte") {
                cancel.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    }
    let download = |served: &common::Served, cancel: Arc<AtomicBool>| {
        let mut options = DownloadOptions::new(&served.realm, &served.key_id, &served.key);
        // Few bytes in flight (2 connections of 256 KiB parts), so a
        // cancel leaves most of the object unfetched.
        options.engine.cores = 1;
        options.engine.connections_per_core = 2;
        options.engine.large_connections_per_core = 2;
        options.engine.part_size_bytes = 256 << 10;
        options.engine.buffer_size_bytes = 64 << 10;
        options.engine.buffers_per_core = 8;
        options.engine.cancel = Some(cancel);
        Download::new(
            Source::parse("b2://bkt/resume.bin").unwrap(),
            dest.clone(),
            options,
        )
    };

    // 1. Cancelled once a chunk is journaled: the partial file stays.
    let first_cancel = Arc::new(AtomicBool::new(false));
    let first = std::thread::spawn({
        let run = download(&served, Arc::clone(&first_cancel));
        move || run.run()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while journaled_bytes(out.path()) == 0 {
        assert!(Instant::now() < deadline, "no chunk was journaled");
        std::thread::sleep(Duration::from_millis(10));
    }
    first_cancel.store(true, Ordering::SeqCst);
    let outcome = first.join().unwrap().map(|report| report.bytes);
    assert!(
        matches!(outcome, Err(Error::Interrupted { .. })),
        "{outcome:?}"
    );
    let kept = journaled_bytes(out.path());
    assert!(kept > 0 && kept < SIZE as u64, "{kept}");

    // 2. Resumed, then cancelled before its round fetched anything.
    armed.store(true, Ordering::SeqCst);
    let outcome = download(&served, Arc::clone(&cancel_on_resume))
        .run()
        .map(|report| report.bytes);
    armed.store(false, Ordering::SeqCst);
    assert!(cancel_on_resume.load(Ordering::SeqCst), "it never resumed");
    assert!(
        matches!(outcome, Err(Error::Interrupted { .. })),
        "{outcome:?}"
    );
    assert!(
        journaled_bytes(out.path()) >= kept,
        "the journal lost the prefix: {} < {kept}",
        journaled_bytes(out.path())
    );
    assert!(!dest.exists());

    // 3. The next run resumes from it and completes (from an origin of the
    // same files at full speed: the journal names the object, not the URL).
    let fast = common::serve(data.path(), true, &[]);
    let report = download(&fast, Arc::new(AtomicBool::new(false)))
        .run()
        .unwrap();
    assert!(
        report.summary.resumed_bytes >= kept,
        "resumed {} < {kept}",
        report.summary.resumed_bytes
    );
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

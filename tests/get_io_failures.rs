//! `get` fails cleanly where the kernel fails it after the download: an
//! fsync that reports EIO (`--fsync`), or a journal writer that cannot be
//! opened. Either way the run ends with an error naming what failed, and
//! leaves nothing beside DEST: no DEST, no `.ringdown-*.part`, no journal.
//! A file system that fails fsync on demand needs root tricks (dm-error,
//! FUSE), so the engine's failpoint makes the Nth pass through the site
//! fail with EIO instead; the hook is process-wide, so this file holds one
//! test that runs its cases in turn.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::{Served, content, serve, write_file};
use ringdown::engine::EngineConfig;
use ringdown::engine::failpoint::{self, Site, fail_at};
use ringdown::get::DirectIo;
use ringdown::{Download, DownloadOptions, Source};

const OBJECT_BYTES: usize = 3 * 1024 * 1024 + 321;

/// A run that has not returned by then is hung.
const RUN_DEADLINE: Duration = Duration::from_secs(90);

/// One core, small parts: several chunks, each journaled as it is written.
fn engine() -> EngineConfig {
    let mut engine = EngineConfig::defaults(false);
    engine.cores = 1;
    engine.pin = ringdown::runtime::PinMode::Off;
    engine.part_size_bytes = 1024 * 1024;
    engine.buffer_size_bytes = 256 * 1024;
    engine.buffers_per_core = 8;
    engine.max_attempts = 2;
    engine.retry_base_ms = 10;
    engine.retry_max_ms = 100;
    engine
}

/// `ringdown get SOURCE DEST --fsync` through the library (the failpoint
/// lives in this process), on a thread of its own, within `RUN_DEADLINE`.
fn get_with_fsync(served: &Served, source_text: &str, dest: PathBuf) -> ringdown::Result<()> {
    let mut options = DownloadOptions::new(&served.realm, &served.key_id, &served.key);
    options.engine = engine();
    options.ca_file = served.ca_file.clone();
    options.direct_io = DirectIo::Off;
    options.fsync = true;
    options.quiet = true;
    let source = Source::parse(source_text).unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(Download::new(source, dest, options).run().map(|_| ()));
    });
    receiver
        .recv_timeout(RUN_DEADLINE)
        .unwrap_or_else(|_| panic!("get {source_text}: still running after {RUN_DEADLINE:?}: hung"))
}

/// Every name in `dir` (its dot files too).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_failed_fsync_or_journal_writer_leaves_no_temporary_file() {
    let data = tempfile::tempdir().unwrap();
    let object = content("obj", OBJECT_BYTES);
    write_file(&data.path().join("bkt"), "obj.bin", &object);
    let served = serve(data.path(), true, &[]);
    // An origin that answers every range with the whole object: nothing
    // can resume such a download, so its temporary name is random.
    let whole_only = serve(data.path(), true, &["--ignore-range-rate", "1"]);
    let (token, _) = whole_only.authorize();
    let whole_url = format!(
        "{}/file/bkt/obj.bin?Authorization={token}",
        whole_only.realm
    );
    let b2 = "b2://bkt/obj.bin";

    for (what, origin, source, site, needle) in [
        (
            "fsync, resumable (journaled) download",
            &served,
            b2,
            Site::Fsync,
            "before renaming it to",
        ),
        (
            "fsync, download nothing can resume",
            &whole_only,
            whole_url.as_str(),
            Site::Fsync,
            "before renaming it to",
        ),
        (
            "journal writer",
            &served,
            b2,
            Site::JournalWriter,
            "duplicating .ringdown-",
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("obj.bin");
        fail_at(site, 1);
        let result = get_with_fsync(origin, source, dest.clone());
        failpoint::off();
        let error = result
            .err()
            .unwrap_or_else(|| panic!("{what}: the failure was injected, yet the get succeeded"));
        // What the CLI prints after "ringdown: error: ", and its exit code.
        let text = error.to_string();
        assert!(text.contains(needle), "{what}: {text}");
        assert!(text.contains("Input/output error"), "{what}: {text}");
        assert_eq!(
            error.exit_code(),
            ringdown::error::exit_code::FAILED,
            "{what}: {text}"
        );
        assert!(!dest.exists(), "{what}: {} exists", dest.display());
        let left = names_in(out.path());
        assert!(left.is_empty(), "{what}: left behind: {left:?}");
    }

    // The hook off, the same downloads succeed: the cases above tested the
    // failures, not a setup that fails anyway.
    for source in [b2, whole_url.as_str()] {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("obj.bin");
        let origin = if source == b2 { &served } else { &whole_only };
        get_with_fsync(origin, source, dest.clone()).expect("a get with the hook off");
        assert_eq!(std::fs::read(&dest).unwrap(), object);
        assert_eq!(names_in(out.path()), ["obj.bin"]);
    }
}

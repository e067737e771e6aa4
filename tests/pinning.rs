//! Core pinning as a program that embeds ringdown sets it. Its own test
//! binary: it looks at the core threads of the one run in this process.

use std::time::{Duration, Instant};

use ringdown::runtime::PinMode;
use ringdown::{Download, DownloadOptions, Source};

mod common;

/// The CPUs a thread's `status` (`/proc/self/task/TID/status`) allows,
/// as the kernel lists them.
fn cpus_allowed(status: &str) -> Option<String> {
    let status = std::fs::read_to_string(status).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_string())
}

/// The CPUs a run's first core thread was allowed, seen while it ran.
fn core_thread_cpus(pin: PinMode, cores: usize, served: &common::Served) -> String {
    let out = tempfile::tempdir().unwrap();
    let mut options = DownloadOptions::new(&served.realm, &served.key_id, &served.key);
    options.engine.cores = cores;
    options.engine.pin = pin;
    options.engine.part_size_bytes = 1 << 20;
    options.engine.buffer_size_bytes = 256 << 10;
    // 4 MiB at 4 MB/s: about a second to look at its threads.
    options.engine.limit_rate_bytes_per_s = Some(4_000_000);
    let download = Download::new(
        Source::parse("b2://bkt/pin.bin").unwrap(),
        out.path().join("pin.bin"),
        options,
    );
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                    let task = task.file_name().to_string_lossy().into_owned();
                    let comm = std::fs::read_to_string(format!("/proc/self/task/{task}/comm"))
                        .unwrap_or_default();
                    if comm.trim() == "ringdown-core-0" {
                        // Pinned as it starts: give it that moment.
                        std::thread::sleep(Duration::from_millis(200));
                        return cpus_allowed(&format!("/proc/self/task/{task}/status"));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        });
        download.run().unwrap();
        watcher.join().unwrap().expect("no core thread was seen")
    })
}

/// `PinMode::Auto` pins only when the affinity mask has exactly `cores`
/// CPUs, from the run's own core count: decided in `defaults()` for the
/// machine's count, it pinned a run of fewer cores too (two such runs in
/// one process both on CPU 0).
#[test]
fn auto_pins_only_a_run_of_as_many_cores_as_cpus() {
    let all = cpus_allowed("/proc/thread-self/status").unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("SKIP: one CPU ({all}): pinned or not looks the same");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    common::write_file(
        data.path(),
        "bkt/pin.bin",
        &common::content("pin.bin", 4 << 20),
    );
    let served = common::serve(data.path(), true, &[]);
    assert_eq!(
        core_thread_cpus(PinMode::Auto, 1, &served),
        all,
        "one core of {cpus}"
    );
    let pinned = core_thread_cpus(PinMode::On, 1, &served);
    assert_ne!(pinned, all, "--pin on pins");
    assert!(!pinned.contains([',', '-']), "one CPU: {pinned}");
}

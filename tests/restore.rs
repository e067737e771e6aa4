//! `ringdown restore` end to end against `ringdown serve`: bytes on disk,
//! folder prefixes, filters, hostile names and symlinks, a real `kill -9`
//! resume proven with the server's access log, shards, dry run and report.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Served, content, exit_within, files_under, send_signal, serve, sha1_hex, write_file};

const SMALL_TUNING: &[&str] = &[
    "--part-size",
    "64KiB",
    "--buffer-size",
    "16KiB",
    "--buffers",
    "4",
    "--connections",
    "3",
    "--cores",
    "2",
    "--retry-base-ms",
    "5",
    "--retry-max-ms",
    "50",
];

fn command(served: &Served, args: &[&str], dir: &Path) -> Command {
    command_tuned(served, args, dir, SMALL_TUNING)
}

fn command_tuned(served: &Served, args: &[&str], dir: &Path, tuning: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .arg("restore")
        .args(args)
        .arg(dir)
        .args(["--realm", &served.realm])
        .args(tuning)
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .env_remove("SSL_CERT_FILE")
        .env_remove("B2_REALM")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("RINGDOWN_SHARD_COUNT")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_MIN")
        .env_remove("SLURM_ARRAY_TASK_MAX")
        .env_remove("SLURM_ARRAY_TASK_STEP")
        .env_remove("SLURM_ARRAY_TASK_COUNT");
    if let Some(ca) = &served.ca_file {
        command.arg("--ca-file").arg(ca);
    }
    command
}

/// `restore b2://bkt DIR` against port 9, which is not served: a run that
/// gets as far as a request fails with another message than its checks
/// before one.
fn restore_unserved(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args(["restore", "b2://bkt"])
        .arg(dir)
        .args(["--realm", "http://127.0.0.1:9"])
        .env("B2_APPLICATION_KEY_ID", "id")
        .env("B2_APPLICATION_KEY", "key");
    command
}

/// Runs a command with a 60 s deadline (see `common::run_with_deadline`).
fn run_bounded(command: Command) -> Output {
    common::run_with_deadline(command, Duration::from_secs(60), |_| {})
}

fn restore(served: &Served, args: &[&str], dir: &Path) -> Output {
    run_bounded(command(served, args, dir))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `count` objects `PREFIX/NNN` into `bkt`, object `i` of
/// `size_of(i)` bytes; returns name → bytes.
fn numbered_objects(
    bkt: &Path,
    prefix: &str,
    count: usize,
    size_of: impl Fn(usize) -> usize,
) -> BTreeMap<String, Vec<u8>> {
    let mut objects = BTreeMap::new();
    for i in 0..count {
        let name = format!("{prefix}/{i:03}");
        let bytes = content(&name, size_of(i));
        write_file(bkt, &name, &bytes);
        // The fileId (from the mtime) is part of the server's fault key: a
        // fixed mtime makes every run roll the same dice for a --seed.
        std::fs::File::options()
            .write(true)
            .open(bkt.join(&name))
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            .unwrap();
        objects.insert(name, bytes);
    }
    objects
}

/// Builds `root/bkt` with `count` small files of mixed sizes (some empty),
/// plus two multi-chunk objects; returns name → bytes.
fn make_tree(root: &Path, count: usize) -> BTreeMap<String, Vec<u8>> {
    let mut objects = BTreeMap::new();
    for i in 0..count {
        let name = format!("d{}/s{}/file-{i:03}.bin", i % 7, i % 3);
        let size = match i % 10 {
            0 => 0,
            1 => 1,
            2 => 16 * 1024,
            3 => 16 * 1024 + 1,
            _ => (i * 997) % 40_000,
        };
        objects.insert(name, content(&format!("n{i}"), size));
    }
    // 3 and 5 parts of 64 KiB, the second above the server's large-file threshold.
    objects.insert(
        "big/three-parts.bin".into(),
        content("big3", 3 * 65536 - 123),
    );
    objects.insert("big/large-file.bin".into(), content("big5", 5 * 65536 + 7));
    for (name, bytes) in &objects {
        write_file(&root.join("bkt"), name, bytes);
    }
    objects
}

fn assert_tree(dir: &Path, objects: &BTreeMap<String, Vec<u8>>) {
    for (name, bytes) in objects {
        let path = dir.join(name);
        let actual = std::fs::read(&path).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert!(actual == *bytes, "{name}: content differs");
    }
}

/// Every request `serve_logged` recorded, in order.
fn access_records(data: &Path) -> Vec<serde_json::Value> {
    common::json_lines(&data.join("access.jsonl"))
}

/// The access log's records of one API call (`b2_list_file_names`, …), in order.
fn api_calls(data: &Path, operation: &str) -> Vec<serde_json::Value> {
    access_records(data)
        .into_iter()
        .filter(|record| {
            record["path"]
                .as_str()
                .is_some_and(|path| path.ends_with(operation))
        })
        .collect()
}

/// Names the server sent a download body for, with counts (from --access-log).
fn downloads(data: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let text = std::fs::read_to_string(data.join("access.jsonl")).unwrap_or_default();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        if record["method"] == "GET" && record["status"].as_u64().unwrap_or(0) / 100 == 2 {
            if let Some(name) = record["name"].as_str() {
                *counts.entry(name.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// From the access log: how many object GETs were answered 503, and the
/// connections every object GET came on.
fn refusals_and_connections(data: &Path) -> (usize, BTreeSet<u64>) {
    let gets: Vec<serde_json::Value> = access_records(data)
        .into_iter()
        .filter(|record| record["name"].is_string())
        .collect();
    let refused = gets.iter().filter(|record| record["status"] == 503).count();
    let connections = gets
        .iter()
        .map(|record| record["connection"].as_u64().unwrap())
        .collect();
    (refused, connections)
}

/// Serves `data` with `--access-log data/access.jsonl` (a file at the top of
/// DIR is not a bucket).
fn serve_logged(data: &Path, extra: &[&str]) -> Served {
    let log = data.join("access.jsonl");
    let mut args: Vec<&str> = extra.to_vec();
    let log_text = log.to_str().unwrap().to_string();
    args.extend(["--access-log", &log_text]);
    serve(data, false, &args)
}

#[test]
fn restores_a_tree_byte_for_byte_with_report_and_stats() {
    let data = tempfile::tempdir().unwrap();
    let objects = make_tree(data.path(), 300);
    let served = serve(data.path(), false, &["--large-file-threshold", "300KiB"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("restored");
    let report = out.path().join("report.jsonl");
    let stats = out.path().join("stats.json");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--report",
            report.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    let on_disk = files_under(&dir);
    let expected: BTreeSet<String> = objects.keys().cloned().collect();
    assert_eq!(on_disk, expected);
    assert!(!dir.join(".ringdown").exists(), "state removed on exit 0");
    // mtime comes from src_last_modified_millis (the served file's mtime),
    // small objects (set by name after the engine closed the file) and large.
    for name in objects.keys() {
        let mtime = |path: PathBuf| std::fs::metadata(path).unwrap().modified().unwrap();
        let source_mtime = mtime(data.path().join("bkt").join(name));
        let restored_mtime = mtime(dir.join(name));
        let skew = source_mtime
            .duration_since(restored_mtime)
            .unwrap_or_else(|e| e.duration());
        assert!(
            skew < Duration::from_millis(2),
            "{name}: mtime {skew:?} apart"
        );
    }
    let lines = common::json_lines(&report);
    assert_eq!(lines.len(), objects.len());
    for line in &lines {
        assert_eq!(line["status"], "ok", "{line}");
        assert_eq!(line["verified"], true, "{line}");
        let name = line["name"].as_str().unwrap();
        assert_eq!(line["sha1"].as_str().unwrap(), sha1_hex(&objects[name]));
        assert_eq!(line["bytes"].as_u64().unwrap(), objects[name].len() as u64);
        assert!(line["attempts"].as_u64().unwrap() >= 1);
        for key in ["path", "expected_sha1", "reason"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
    }
    let stats_path = stats;
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap()).unwrap();
    assert_eq!(stats["schema"], 1);
    assert_eq!(stats["command"], "restore");
    assert_eq!(stats["files"].as_u64().unwrap(), objects.len() as u64);
    assert_eq!(
        stats["verified"]["ok"].as_u64().unwrap(),
        objects.len() as u64
    );
    let total: u64 = objects.values().map(|b| b.len() as u64).sum();
    assert_eq!(stats["bytes"].as_u64().unwrap(), total);

    assert_eq!(
        (stats["skipped"].as_u64(), stats["refused"].as_u64()),
        (Some(0), Some(0))
    );

    // A second run with --skip-existing downloads nothing and exits 0, and
    // its stats say it skipped everything (not that it found nothing).
    let again = restore(
        &served,
        &[
            "b2://bkt",
            "--skip-existing",
            "--stats-json",
            stats_path.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stderr(&again).contains(&format!("{} skipped", objects.len())),
        "{}",
        stderr(&again)
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap()).unwrap();
    assert_eq!(stats["files"], 0);
    assert_eq!(stats["skipped"].as_u64().unwrap(), objects.len() as u64);

    // --fsync: the same tree, each file synced before its rename.
    let synced = out.path().join("synced");
    let output = restore(&served, &["b2://bkt", "--fsync"], &synced);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&synced, &objects);
    assert_eq!(files_under(&synced), expected);
}

#[test]
fn objects_without_a_usable_digest_are_restored_unverified_and_said_so() {
    let data = tempfile::tempdir().unwrap();
    let objects = make_tree(data.path(), 40);
    let out = tempfile::tempdir().unwrap();
    // `none` everywhere (no large_file_sha1 either): restored, unverified,
    // warned about, exit 0 — and exit 1 under --require-verified.
    let served = serve(
        data.path(),
        false,
        &["--large-file-threshold", "300KiB", "--publish-sha1", "none"],
    );
    let dir = out.path().join("none");
    let report = out.path().join("none.jsonl");
    let stats = out.path().join("none.json");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--report",
            report.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &dir,
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_tree(&dir, &objects);
    assert!(
        text.contains(&format!("{} files were not verified", objects.len())),
        "{text}"
    );
    assert!(text.contains("(0 verified,"), "{text}");
    for line in common::json_lines(&report) {
        assert_eq!(line["status"], "ok", "{line}");
        assert_eq!(line["verified"], false, "{line}");
        assert!(line["expected_sha1"].is_null(), "{line}");
        // The digest of what was written is still reported.
        let name = line["name"].as_str().unwrap();
        assert_eq!(line["sha1"].as_str().unwrap(), sha1_hex(&objects[name]));
    }
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["verified"]["ok"], 0);
    assert_eq!(
        stats["verified"]["unverified"].as_u64().unwrap(),
        objects.len() as u64
    );
    let strict = restore(
        &served,
        &["b2://bkt", "--require-verified"],
        &out.path().join("strict"),
    );
    assert_eq!(strict.status.code(), Some(1), "{}", stderr(&strict));
    assert!(stderr(&strict).contains("--require-verified"));
    // Nothing that could not be verified was fetched or put in place.
    assert!(files_under(&out.path().join("strict")).is_empty());
    drop(served);

    // A broken digest (one hex digit short) is not "no digest": every file
    // fails, unfetched, and says why.
    let served = serve(
        data.path(),
        false,
        &[
            "--large-file-threshold",
            "300KiB",
            "--publish-sha1",
            "malformed",
        ],
    );
    let report = out.path().join("malformed.jsonl");
    let broken = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &out.path().join("malformed"),
    );
    assert_eq!(broken.status.code(), Some(1), "{}", stderr(&broken));
    assert!(files_under(&out.path().join("malformed")).is_empty());
    let lines = common::json_lines(&report);
    assert_eq!(lines.len(), objects.len());
    for line in lines {
        assert_eq!(line["status"], "failed", "{line}");
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .contains("neither 40 hex digits"),
            "{line}"
        );
        assert_eq!(line["expected_sha1"].as_str().unwrap().len(), 39, "{line}");
    }
    drop(served);

    // `unverified:<hex>`: the digest is checked all the same.
    let served = serve(
        data.path(),
        false,
        &[
            "--large-file-threshold",
            "300KiB",
            "--publish-sha1",
            "unverified",
        ],
    );
    let dir = out.path().join("unverified");
    let report = out.path().join("unverified.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    let lines = common::json_lines(&report);
    assert_eq!(lines.len(), objects.len());
    for line in &lines {
        assert_eq!(line["verified"], true, "{line}");
    }
    assert!(lines.iter().any(|line| {
        line["expected_sha1"]
            .as_str()
            .is_some_and(|hex| hex.starts_with("unverified:"))
    }));
}

#[test]
fn a_plain_progress_line_every_ten_seconds_when_not_a_tty() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "p", 20, |_| 60_000);
    // 1.2 MB at 100 kB/s on one connection: ~12 s, one progress line.
    let served = serve(data.path(), false, &["--rate-per-conn", "100kB/s"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let command = command_tuned(
        &served,
        &["b2://bkt"],
        &dir,
        &["--cores", "1", "--connections", "1"],
    );
    let output = run_bounded(command);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_tree(&dir, &objects);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("ringdown: progress: "))
        .collect();
    assert!(!lines.is_empty(), "no progress line in:\n{text}");
    assert!(lines.len() <= 2, "more than one line per 10 s:\n{text}");
    // `files D/N, X/Y MB, R MB/s, ETA …, retries K, S s`
    let line = lines[0];
    assert!(line.contains("files ") && line.contains("/20"), "{line}");
    assert!(
        line.contains(" MB/s, ETA ") && line.contains("retries 0"),
        "{line}"
    );
    assert!(!text.contains('\r'), "no carriage returns when not a TTY");
}

#[test]
fn prefix_is_a_folder_and_globs_filter_relative_names() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    for name in [
        "photos/a/b.jpg",
        "photos/a/c.txt",
        "photos/top.jpg",
        "photos/tmp/x.jpg",
        "photos2/other.jpg",
        "root.jpg",
    ] {
        write_file(&bkt, name, &content(name, 1000));
    }
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("p");
    let output = restore(&served, &["b2://bkt/photos"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        files_under(&dir),
        ["a/b.jpg", "a/c.txt", "top.jpg", "tmp/x.jpg"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        std::fs::read(dir.join("a/b.jpg")).unwrap(),
        content("photos/a/b.jpg", 1000)
    );
    let filtered = out.path().join("f");
    let output = restore(
        &served,
        &[
            "b2://bkt/photos/",
            "--include",
            "*.jpg",
            "--include",
            "a/**",
            "--exclude",
            "tmp/**",
            "--exclude",
            "**/*.txt",
        ],
        &filtered,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        files_under(&filtered),
        ["a/b.jpg", "top.jpg"].map(String::from).into()
    );
}

/// A symlink planted at one of ringdown's own state paths is not followed
/// and not removed: exit 2, saying which path and what to do, and nothing
/// written where it points.
#[test]
fn a_symlink_at_a_state_path_is_a_clear_usage_error() {
    let data = tempfile::tempdir().unwrap();
    write_file(&data.path().join("bkt"), "a.txt", b"a");
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let elsewhere = out.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let victim = out.path().join("victim");
    std::fs::write(&victim, b"victim").unwrap();
    for (planted, target) in [
        (".ringdown", &elsewhere),
        (".ringdown/partial", &elsewhere),
        (".ringdown/journal-0-of-1", &victim),
    ] {
        let dir = out.path().join(planted.replace(['.', '/'], "_"));
        let link = dir.join(planted);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &link).unwrap();
        let output = restore(&served, &["b2://bkt"], &dir);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{planted}: {err}");
        assert!(
            err.contains(&format!(
                "{} is a symlink or not a directory",
                link.display()
            )),
            "{planted}: {err}"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    }
}

/// h42 #8: `--stats-json` or `--report` at the path of an object the run
/// restores (inside DIR, as the deploy scripts put theirs, under an
/// object's name). The stats overwrote the restored file after the run, a
/// wrong file under its name; the report's records went to the file the
/// object's rename unlinked. Both are exit 1, saying so; the file is the
/// object's.
#[test]
fn a_report_or_stats_file_named_like_a_restored_object_never_replaces_it() {
    let data = tempfile::tempdir().unwrap();
    write_file(&data.path().join("bkt"), "z.txt", b"zzz");
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    for (flag, says) in [
        ("--stats-json", "not writing --stats-json"),
        ("--report", "a restored object of the same name replaced it"),
    ] {
        let dir = out.path().join(flag.trim_start_matches('-'));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("z.txt");
        let output = restore(&served, &["b2://bkt", flag, path.to_str().unwrap()], &dir);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{flag}: {err}");
        assert!(err.contains(says), "{flag}: {err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"zzz", "{flag}");
    }
}

/// h42 #9, #13, #4: what is planted at ringdown's own state paths. A FIFO
/// at the journal's name held the run forever on its first read; a hard
/// link there had the journal written into a file outside DIR; a
/// `.ringdown/` of another user was trusted. Each is exit 2 with the way
/// out, and the outside file is untouched. A FIFO at the sorted journal's
/// name is passed over, and the run ends.
#[test]
fn planted_state_files_are_refused_never_waited_on_or_written_through() {
    let data = tempfile::tempdir().unwrap();
    write_file(&data.path().join("bkt"), "a.txt", b"a");
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let outside = out.path().join("outside");
    std::fs::write(&outside, b"").unwrap();
    let fifo_dir = out.path().join("fifo");
    common::make_fifo(&fifo_dir.join(".ringdown/journal-0-of-1"));
    let linked_dir = out.path().join("linked");
    std::fs::create_dir_all(linked_dir.join(".ringdown")).unwrap();
    std::fs::hard_link(&outside, linked_dir.join(".ringdown/journal-0-of-1")).unwrap();
    for (dir, needle) in [
        (&fifo_dir, "is not a regular file"),
        (&linked_dir, "is a file with 2 names (hard links)"),
    ] {
        let output = restore(&served, &["b2://bkt"], dir);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(!dir.join("a.txt").exists());
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"");
    // Another user's `.ringdown/` (DIR being this user's).
    let foreign_dir = out.path().join("foreign");
    std::fs::create_dir_all(foreign_dir.join(".ringdown")).unwrap();
    if rustix::process::geteuid().is_root() {
        let nobody = Some(rustix::process::Uid::from_raw(65534));
        rustix::fs::chown(foreign_dir.join(".ringdown"), nobody, None).unwrap();
        let output = restore(&served, &["b2://bkt"], &foreign_dir);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }
    // `.ringdown/` on a mount of its own (faster storage, say): every
    // file would fail to cross it; refused at the start (h42 #10).
    let mounted_dir = out.path().join("mounted");
    std::fs::create_dir_all(mounted_dir.join(".ringdown")).unwrap();
    if let Some(_tmpfs) = common::Tmpfs::mount(&mounted_dir.join(".ringdown"), "1m") {
        // `--dry-run` predicts it, making nothing (h46 #8a).
        for args in [&["b2://bkt", "--dry-run"][..], &["b2://bkt"]] {
            let output = restore(&served, args, &mounted_dir);
            let err = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("is on another mount than DIR"), "{err}");
        }
    }
    let sorted_fifo_dir = out.path().join("sorted");
    common::make_fifo(&sorted_fifo_dir.join(".ringdown/completed-0-of-1"));
    let output = restore(&served, &["b2://bkt"], &sorted_fifo_dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(sorted_fifo_dir.join("a.txt")).unwrap(), b"a");
}

#[test]
fn hostile_names_are_refused_and_symlinks_never_followed() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "good.txt", b"good");
    write_file(&bkt, "bad\u{1}name", b"control character");
    write_file(&bkt, ".ringdown/journal-0-of-1", b"ok\tforged\t1\n");
    write_file(&bkt, "empty-dir/.bzEmpty", b"");
    // A marker's name with content is a file, not dropped.
    write_file(&bkt, "full-dir/.bzEmpty", b"not a marker");
    // Past B2's 1,024 bytes (six segments of 200): refused, not created.
    let too_long = vec!["l".repeat(200); 6].join("/");
    write_file(&bkt, &too_long, b"too long");
    write_file(&bkt, "link/escape.txt", b"must not land outside");
    write_file(&bkt, "replace-me", b"a regular file replaces the symlink");
    write_file(&bkt, "clash-file", b"a directory is in the way");
    write_file(&bkt, "clash-dir/inner", b"a file is in the way");
    let served = serve(data.path(), false, &[]);
    let out = tempfile::tempdir().unwrap();
    let outside = out.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"untouched").unwrap();
    let dir = out.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), dir.join("replace-me")).unwrap();
    std::fs::create_dir(dir.join("clash-file")).unwrap();
    std::fs::write(dir.join("clash-dir"), b"local file").unwrap();
    let report = out.path().join("report.jsonl");
    let stats = out.path().join("stats.json");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--report",
            report.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(std::fs::read(dir.join("good.txt")).unwrap(), b"good");
    assert!(dir.join("empty-dir").is_dir());
    assert!(!dir.join("empty-dir/.bzEmpty").exists());
    assert_eq!(
        std::fs::read(dir.join("full-dir/.bzEmpty")).unwrap(),
        b"not a marker"
    );
    assert!(!dir.join("l".repeat(200)).exists());
    // Nothing was written through the planted symlinks.
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"untouched");
    // The symlink at a final path was replaced by the file itself.
    let meta = std::fs::symlink_metadata(dir.join("replace-me")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        std::fs::read(dir.join("replace-me")).unwrap(),
        b"a regular file replaces the symlink"
    );
    let lines = common::json_lines(&report);
    let status = |name: &str| {
        lines
            .iter()
            .find(|line| line["name"] == name)
            .map(|line| line["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("bad\u{1}name").as_deref(), Some("refused"));
    assert_eq!(
        status(".ringdown/journal-0-of-1").as_deref(),
        Some("refused")
    );
    assert_eq!(status("link/escape.txt").as_deref(), Some("refused"));
    assert_eq!(status("full-dir/.bzEmpty").as_deref(), Some("ok"));
    assert_eq!(status(&too_long).as_deref(), Some("refused"));
    assert_eq!(status("good.txt").as_deref(), Some("ok"));
    // --stats-json counts the refusals: `failed` 0 alone read as a clean run.
    let refused = lines
        .iter()
        .filter(|line| line["status"] == "refused")
        .count();
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["refused"].as_u64().unwrap(), refused as u64);
    assert!(refused >= 4);
    assert_eq!(status("replace-me").as_deref(), Some("ok"));
    assert_eq!(status("clash-file").as_deref(), Some("refused"));
    assert_eq!(status("clash-dir/inner").as_deref(), Some("refused"));
    assert!(dir.join("clash-file").is_dir());
    assert_eq!(std::fs::read(dir.join("clash-dir")).unwrap(), b"local file");
    // Both obstacles are named alike, with DIR in front (h34 #9).
    let reason = |name: &str| {
        let line = lines.iter().find(|line| line["name"] == name).unwrap();
        line["reason"].as_str().unwrap().to_string()
    };
    for (name, obstacle) in [
        ("clash-file", "clash-file"),
        ("clash-dir/inner", "clash-dir"),
    ] {
        let shown = format!("{}/{obstacle}: ", dir.display());
        assert!(reason(name).starts_with(&shown), "{name}: {}", reason(name));
    }
    // Exit 1 keeps the journal (for a rerun) and removes partial files.
    let journal = std::fs::read_to_string(dir.join(".ringdown/journal-0-of-1")).unwrap();
    let records = journal.lines().filter(|line| line.starts_with("ok\t"));
    assert_eq!(records.count(), 3, "{journal}");
    assert_eq!(
        std::fs::read_dir(dir.join(".ringdown/partial"))
            .unwrap()
            .count(),
        0
    );
}

/// `--skip-existing` looks at what is at a name before reading it: a FIFO
/// there is never opened (that would wait for a writer forever), it is
/// replaced like any other file that is not the object.
#[test]
fn skip_existing_never_opens_a_fifo_in_the_way() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "fifo", b"a regular file replaces the FIFO");
    write_file(&bkt, "plain", b"restored too");
    let served = serve(data.path(), false, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    common::make_fifo(&dir.join("fifo"));
    let output = restore(&served, &["b2://bkt", "--skip-existing"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        std::fs::symlink_metadata(dir.join("fifo"))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        std::fs::read(dir.join("fifo")).unwrap(),
        b"a regular file replaces the FIFO"
    );
    assert_eq!(std::fs::read(dir.join("plain")).unwrap(), b"restored too");
}

/// A reader that goes away is no reason to fail: `--dry-run | head` stops
/// listing and exits 0, and a restore whose stderr is a broken pipe (`2>&1
/// | head`) restores everything (before, each panicked on its next line).
#[test]
fn a_closed_stdout_or_stderr_does_not_stop_a_run() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "p", 300, |i| 100 + i);
    // Pages of 100, then the rest a round trip later: after the reader left.
    let served = serve(data.path(), true, &["--latency-ms", "100"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");

    let mut child = command(&served, &["b2://bkt", "--dry-run"], &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take()); // `head` exits
    let mut errors = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut errors).unwrap();
    let status = exit_within(&mut child, Duration::from_secs(20), "a dry run");
    assert_eq!(status.code(), Some(0), "{errors}");
    assert!(!errors.contains("panicked"), "{errors}");

    let mut child = command(&served, &["b2://bkt"], &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = exit_within(&mut child, Duration::from_secs(30), "a restore");
    assert_eq!(status.code(), Some(0));
    assert_tree(&dir, &objects);
}

/// Output that cannot be written is never a silent exit 0: a `--report`
/// on a full disk (here `/dev/full`) ends the run with exit 1 naming it, the
/// restore itself done; a `--dry-run` list cut short by one, the same.
#[test]
fn a_report_or_dry_run_list_that_cannot_be_written_is_an_error() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "f", 30, |i| 100 + i);
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let output = restore(&served, &["b2://bkt", "--report", "/dev/full"], &dir);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("writing the --report file /dev/full"), "{err}");
    assert!(err.contains("the report is incomplete"), "{err}");
    assert_tree(&dir, &objects);

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let output = command(&served, &["b2://bkt", "--dry-run"], &out.path().join("dry"))
        .stdout(full)
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writing the --dry-run list to stdout"),
        "{err}"
    );
}

/// Under a small RLIMIT_MEMLOCK (the capability dropped, so the rings are
/// charged) the listing's ring is small and made before the cores' rings:
/// at 56 KiB a restore used to exit 4 every time, the listing left without
/// a ring after the cores took it all.
#[test]
fn a_small_memlock_limit_never_leaves_the_listing_without_a_ring() {
    if !common::has_tool("setpriv") || !common::has_tool("prlimit") {
        eprintln!("SKIP: setpriv/prlimit not installed");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "m", 20, |i| 1000 + i);
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    for memlock in ["57344", "61440"] {
        let dir = out.path().join(memlock);
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--memlock={memlock}:{memlock}"))
            .args([
                "setpriv",
                "--inh-caps=-ipc_lock",
                "--bounding-set=-ipc_lock",
            ])
            .arg(env!("CARGO_BIN_EXE_ringdown"))
            .args(["restore", "b2://bkt"])
            .arg(&dir)
            .args(["--realm", &served.realm, "--cores", "2"])
            .env("B2_APPLICATION_KEY_ID", &served.key_id)
            .env("B2_APPLICATION_KEY", &served.key);
        let output = run_bounded(command);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{memlock}: {}",
            stderr(&output)
        );
        assert_tree(&dir, &objects);
    }
}

/// A directory that cannot be written (immutable: EPERM even for root)
/// fails the names beneath it, and the rest of the bucket is restored, as
/// a failed rename fails only its file. Before, it stopped the whole run.
#[test]
fn an_unwritable_directory_fails_only_the_names_beneath_it() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "locked/inner/a", b"cannot land");
    write_file(&bkt, "open/b", b"lands");
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    std::fs::create_dir_all(dir.join("locked")).unwrap();
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(dir.join("locked"))
            .status()
            .is_ok_and(|status| status.success())
    };
    if !chattr("+i") {
        eprintln!("SKIP: chattr +i is not available here");
        return;
    }
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert!(chattr("-i"));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(std::fs::read(dir.join("open/b")).unwrap(), b"lands");
    let lines = common::json_lines(&report);
    let status = |name: &str| {
        let line = lines.iter().find(|line| line["name"] == name).unwrap();
        (line["status"].clone(), line["reason"].clone())
    };
    let (locked, why) = status("locked/inner/a");
    assert_eq!(locked, "failed", "{why}");
    assert!(why.as_str().unwrap().contains("locked/inner"), "{why}");
    assert_eq!(status("open/b").0, "ok");
}

/// A dry run predicts the real run, exit code included: a name it would
/// refuse makes it exit 1 and say so last; without one it exits 0.
#[test]
fn dry_run_lists_and_creates_nothing() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "a/one", &content("one", 10));
    write_file(&bkt, "a/two", &content("two", 2000));
    write_file(&bkt, "bad\u{2}", b"x");
    write_file(&bkt, "l/two", &content("two", 2000));
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("never");
    let output = restore(&served, &["b2://bkt", "--dry-run"], &dir);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "10\ta/one\n2000\ta/two\n2000\tl/two\n"
    );
    assert!(err.contains("refused\t\"bad\\u{2}\""), "{err}");
    assert_eq!(
        err.lines().last(),
        Some("ringdown: dry run: 1 name refused; a real run would exit 1"),
        "{err}"
    );
    assert!(!dir.exists());
    // It writes no file: a --report or --stats-json asked of it is exit 2,
    // not silently left unwritten (h23).
    for flag in ["--report", "--stats-json"] {
        let file = out.path().join("asked.json");
        let file = file.to_str().unwrap();
        let output = restore(&served, &["b2://bkt", "--dry-run", flag, file], &dir);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains("cannot be used with"), "{err}");
        assert!(!Path::new(file).exists());
    }
    // The real run agrees.
    let real = out.path().join("real");
    assert_eq!(
        restore(&served, &["b2://bkt"], &real).status.code(),
        Some(1)
    );
    // Without the refused name, nothing to predict but success.
    let output = restore(
        &served,
        &["b2://bkt", "--dry-run", "--exclude", "bad*"],
        &dir,
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(!err.contains("dry run:"), "{err}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 3);
    // --skip-existing leaves out what the restore would skip: a file of the
    // same size, but not one seen through a symlinked parent (which the
    // restore never follows).
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("a/one"), content("one", 10)).unwrap();
    let linked = out.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::fs::write(linked.join("two"), content("two", 2000)).unwrap();
    std::os::unix::fs::symlink(&linked, dir.join("l")).unwrap();
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--dry-run",
            "--skip-existing",
            "--exclude",
            "bad*",
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "2000\ta/two\n2000\tl/two\n"
    );
}

#[test]
fn small_objects_are_requested_ahead_when_a_round_trip_is_to_be_hidden() {
    let data = tempfile::tempdir().unwrap();
    let objects = make_tree(data.path(), 300);
    // A 40 ms round trip each way of every connection (serve's delay line).
    let served = serve_logged(
        data.path(),
        &["--latency-ms", "40", "--large-file-threshold", "300KiB"],
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let output = restore(&served, &["b2://bkt"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    assert!(
        !stderr(&output).contains("pipelined"),
        "{}",
        stderr(&output)
    );
    // Seen from the server: one request at a time puts a round trip between
    // two requests of a connection; GETs sent ahead arrive together.
    let mut by_connection: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let log = std::fs::read_to_string(data.path().join("access.jsonl")).unwrap();
    for line in log.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        // Small objects: a GET of the whole object, no Range.
        if record["method"] == "GET" && record["name"].is_string() && record["range"].is_null() {
            by_connection
                .entry(record["connection"].as_u64().unwrap())
                .or_default()
                .push(record["time_ms"].as_u64().unwrap());
        }
    }
    // Every GET sent ahead was answered and read: nothing was asked twice
    // (empty objects, which need no GET, are not asked at all).
    for (name, count) in downloads(data.path()) {
        assert!(
            !name.starts_with('d') || count == 1,
            "{name} downloaded {count} times"
        );
    }
    let mut pairs = 0;
    let mut close_pairs = 0;
    for times in by_connection.values_mut() {
        times.sort_unstable();
        for pair in times.windows(2) {
            pairs += 1;
            if pair[1] - pair[0] < 20 {
                close_pairs += 1;
            }
        }
    }
    assert!(
        close_pairs * 3 >= pairs,
        "{close_pairs} of {pairs} successive small-object requests on a connection \
         came less than half a round trip apart"
    );
}

#[test]
fn over_a_long_round_trip_a_lone_large_object_takes_every_connection() {
    let data = tempfile::tempdir().unwrap();
    // 200 chunks: the round trip counts as long after 128 answers.
    let bytes = content("wide", 200 * 16384 + 5);
    write_file(&data.path().join("bkt"), "big.bin", &bytes);
    let served = serve_logged(
        data.path(),
        &["--latency-ms", "40", "--large-file-threshold", "1MiB"],
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    // 8 connections, of which restore gives large objects 4 while other
    // work may come; here nothing else comes.
    let mut tuning = common::SMALL_CHUNKS.to_vec();
    tuning.extend(["--connections", "8", "--cores", "1"]);
    let output = run_bounded(command_tuned(&served, &["b2://bkt"], &dir, &tuning));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(std::fs::read(dir.join("big.bin")).unwrap() == bytes);
    let log = data.path().join("access.jsonl");
    let chunk_connections = common::connections_serving_ranges(&log, "big.bin");
    assert!(
        chunk_connections.len() > 4,
        "chunks came over {} connections",
        chunk_connections.len()
    );
}

/// A file an unfinished run completed, then changed in place (same size):
/// a rerun with `--skip-existing` compares its SHA1, as it promises, and
/// restores it again instead of keeping it on the journal's word.
#[test]
fn skip_existing_hashes_files_the_journal_has_as_done() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "j", 6, |i| 3000 + i);
    // One object fails every run, so the journal stays.
    let served = serve_logged(data.path(), &["--wrong-sha1", "j/005"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let first = restore(&served, &["b2://bkt"], &dir);
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert!(dir.join(".ringdown").exists());
    let changed = dir.join("j/002");
    let mut bytes = std::fs::read(&changed).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&changed, &bytes).unwrap();
    let report = out.path().join("report.jsonl");
    let again = restore(
        &served,
        &[
            "b2://bkt",
            "--skip-existing",
            "--report",
            report.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        std::fs::read(&changed).unwrap() == objects["j/002"],
        "j/002 kept as changed"
    );
    let lines = common::json_lines(&report);
    let status_of = |name: &str| {
        let line = lines.iter().find(|line| line["name"] == name).unwrap();
        (line["status"].clone(), line["reason"].clone())
    };
    assert_eq!(status_of("j/002").0, "ok");
    assert_eq!(status_of("j/001"), ("skipped".into(), "exists".into()));
    assert_eq!(downloads(data.path())["j/001"], 1);
    assert_eq!(downloads(data.path())["j/002"], 2);
}

#[test]
fn a_skipped_file_gets_the_time_a_restored_one_does() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "t", 3, |i| 5000 + i);
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let restored = out.path().join("restored");
    let first = restore(&served, &["b2://bkt"], &restored);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let mtime = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    // The same bytes, with a local time of 2001: skipped, and given the
    // object's time as the restore gave it.
    let kept = out.path().join("kept");
    std::fs::create_dir_all(kept.join("t")).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(978_307_200);
    let file = kept.join("t/001");
    std::fs::write(&file, &objects["t/001"]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let report = out.path().join("report.jsonl");
    let skip_existing = || {
        let args = [
            "b2://bkt",
            "--skip-existing",
            "--report",
            report.to_str().unwrap(),
        ];
        let skipping = restore(&served, &args, &kept);
        assert_eq!(skipping.status.code(), Some(0), "{}", stderr(&skipping));
        common::json_lines(&report)
    };
    let lines = skip_existing();
    let line = lines.iter().find(|line| line["name"] == "t/001").unwrap();
    assert_eq!(
        (&line["status"], &line["reason"]),
        (&"skipped".into(), &"exists".into())
    );
    assert_eq!(mtime(&file), mtime(&restored.join("t/001")));
    assert_ne!(mtime(&file), old);
    // A file that is also another name, outside DIR (a `cp -al` snapshot):
    // skipped, and its time left alone, which is the snapshot's too.
    let snapshot = out.path().join("snapshot-001");
    std::fs::write(&snapshot, &objects["t/002"]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&snapshot)
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::remove_file(kept.join("t/002")).unwrap();
    std::fs::hard_link(&snapshot, kept.join("t/002")).unwrap();
    let lines = skip_existing();
    let line = lines.iter().find(|line| line["name"] == "t/002").unwrap();
    assert_eq!(line["reason"], "exists");
    assert_eq!(mtime(&snapshot), old);
}

#[test]
fn a_glob_that_matches_nothing_is_refused_or_said() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "nested/a.txt", b"a");
    write_file(&bkt, "nested/deep/b.txt", b"b");
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    // rclone's anchored form could match no relative name: refused at once.
    let output = restore(&served, &["b2://bkt", "--exclude", "/nested/**"], &dir);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("write \"nested/**\""), "{err}");
    assert!(!dir.exists());
    // A full name (as --dry-run prints them) under a PREFIX matches none:
    // said with what was meant, in the dry run as in the real run.
    for dry_run in [true, false] {
        let mut args = vec!["b2://bkt/nested", "--exclude", "nested/deep/**"];
        if dry_run {
            args.push("--dry-run");
        }
        let output = restore(&served, &args, &dir);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{err}");
        assert!(
            err.contains("--exclude \"nested/deep/**\" matched no name under b2://bkt/nested/")
                && err.contains("did you mean \"deep/**\"?"),
            "{err}"
        );
    }
    // A dry run that selects nothing says why, as the real run does.
    let output = restore(
        &served,
        &["b2://bkt", "--dry-run", "--include", "*.bin"],
        &dir,
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(
        err.contains("nothing to restore: none of the 2 names"),
        "{err}"
    );
    assert!(output.stdout.is_empty());
    // Globs that matched are not mentioned.
    let output = restore(
        &served,
        &["b2://bkt", "--dry-run", "--include", "**/*.txt"],
        &dir,
    );
    assert!(
        !stderr(&output).contains("matched no name"),
        "{}",
        stderr(&output)
    );
    // Nor a glob only the names of another shard match, with `--files-from`
    // as without: the filter sees every name before the shard is asked.
    let list = out.path().join("list.txt");
    std::fs::write(&list, "nested/a.txt\nnested/deep/b.txt\n").unwrap();
    let in_shard = ringdown::restore::paths::shard_of("nested/deep/b.txt", 2);
    let other = format!("{}/2", 1 - in_shard);
    for files_from in [false, true] {
        let mut args = vec![
            "b2://bkt",
            "--dry-run",
            "--shard",
            &other,
            "--include",
            "nested/deep/*",
        ];
        if files_from {
            args.extend(["--files-from", list.to_str().unwrap()]);
        }
        let output = restore(&served, &args, &dir);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let err = stderr(&output);
        assert!(
            !err.contains("matched no name"),
            "--files-from {files_from}: {err}"
        );
        // ... and what it did find is said of the list, not of the bucket.
        if files_from {
            assert!(
                err.contains("none of the 2 names of --files-from is under b2://bkt/"),
                "{err}"
            );
        }
    }
}

#[test]
fn killed_restore_resumes_without_downloading_completed_files_again() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "k", 150, |i| 1000 + i * 37);
    let served = serve_logged(data.path(), &["--plain", "--latency-ms", "40"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let journal = dir.join(".ringdown/journal-0-of-1");
    let first_log = out.path().join("first.log");
    let mut first = command(&served, &["b2://bkt"], &dir);
    let mut child = first
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&first_log).unwrap())
        .spawn()
        .unwrap();
    wait_for_journaled_files(&mut child, &dir, 40, Some(&first_log));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let journal_text = std::fs::read_to_string(&journal).unwrap();
    let completed = journal_text
        .lines()
        .filter(|line| line.starts_with("ok\t"))
        .count();
    assert!(
        completed < objects.len(),
        "killed too late to prove anything"
    );
    // Four files the journal has as done are gone or changed since (room
    // made after a disk-full stop, a slip, a hard link to a file elsewhere
    // of the same size, the same size rewritten in place): they are
    // restored again, not skipped on the journal's word (h42 #5).
    let journaled: Vec<&str> = journal_text
        .lines()
        .filter_map(|line| line.strip_prefix("ok\t")?.split('\t').next())
        .collect();
    let (deleted, cut, linked, rewritten) =
        (journaled[0], journaled[1], journaled[2], journaled[3]);
    let changed = [deleted, cut, linked, rewritten];
    std::fs::remove_file(dir.join(deleted)).unwrap();
    std::fs::write(dir.join(cut), b"cut short").unwrap();
    let elsewhere = out.path().join("elsewhere");
    std::fs::write(&elsewhere, vec![b'H'; objects[linked].len()]).unwrap();
    std::fs::remove_file(dir.join(linked)).unwrap();
    std::fs::hard_link(&elsewhere, dir.join(linked)).unwrap();
    std::fs::write(dir.join(rewritten), vec![b'R'; objects[rewritten].len()]).unwrap();
    let before = downloads(data.path());
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    assert!(!dir.join(".ringdown").exists());
    let skipped = common::skipped_by_journal(&report);
    assert!(
        skipped.len() + changed.len() >= completed,
        "{} skipped < {completed} journaled - {}",
        skipped.len(),
        changed.len()
    );
    assert!(!skipped.iter().any(|name| changed.contains(&name.as_str())));
    assert!(
        std::fs::read(&elsewhere)
            .unwrap()
            .iter()
            .all(|&b| b == b'H')
    );
    // Files completed before the kill were not downloaded again, but the
    // ones changed since.
    let after = downloads(data.path());
    for name in changed {
        assert_eq!(after[name], before[name] + 1, "{name}");
    }
    for name in &skipped {
        assert_eq!(before.get(name), after.get(name), "{name} downloaded again");
        assert_eq!(after.get(name), Some(&1), "{name}");
    }
    // Beyond one download each, the changed files and only what was in
    // flight at the kill: on each of the 6 connections one answer being read
    // and (40 ms round trip: pipelining) up to 3 GETs sent ahead.
    let total_after: usize = after.values().sum();
    assert!(
        total_after <= objects.len() + changed.len() + 6 * 4,
        "{total_after} downloads for {} files",
        objects.len()
    );
}

/// A retryable answer (503 here) on a connection with GETs sent ahead (a
/// 40 ms round trip: pipelining) does not cost the answers owed behind it:
/// the object backs off away from the connection, which goes on reading
/// them. Every body is sent once, and an object's attempts are counted
/// across its turns.
#[test]
fn a_retryable_answer_does_not_cost_the_answers_pipelined_behind_it() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "r", 150, |i| 1000 + i * 13);
    let served = serve_logged(
        data.path(),
        &[
            "--plain",
            "--latency-ms",
            "40",
            "--status-rate",
            "503:0.1",
            "--seed",
            "11",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let output = restore(&served, &["b2://bkt"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    let refused = access_records(data.path())
        .iter()
        .filter(|record| record["status"] == 503)
        .count();
    assert!(refused > 0, "no 503 was answered: nothing tested");
    let sent = downloads(data.path());
    assert_eq!(sent.len(), objects.len());
    for (name, count) in &sent {
        assert_eq!(
            *count, 1,
            "{name}: body sent {count} times ({refused} 503s)"
        );
    }

    // Half the answers 503, `--max-attempts 3`: an object that backs off
    // keeps its count of attempts (else it would be tried 3 more times at
    // each turn), so none is asked for more than 3 times; those refused
    // 3 times fail, and only they are missing.
    std::fs::remove_file(data.path().join("access.jsonl")).unwrap();
    let dir = out.path().join("attempts");
    let mut tuning = common::SMALL_CHUNKS.to_vec();
    tuning.extend(["--connections", "2", "--cores", "1", "--max-attempts", "3"]);
    tuning.extend(["--retry-base-ms", "5", "--retry-max-ms", "50"]);
    let served_often = serve_logged(
        data.path(),
        &[
            "--plain",
            "--latency-ms",
            "40",
            "--status-rate",
            "503:0.5",
            "--seed",
            "12",
        ],
    );
    let output = run_bounded(command_tuned(&served_often, &["b2://bkt"], &dir, &tuning));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let mut asked: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for record in access_records(data.path()) {
        if let Some(name) = record["name"].as_str() {
            let entry = asked.entry(name.to_string()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(record["status"] == 200);
        }
    }
    assert!(
        asked.values().any(|(requests, _)| *requests > 1),
        "no retry"
    );
    for (name, bytes) in &objects {
        let (requests, bodies) = asked.get(name).copied().unwrap_or_default();
        assert!(requests <= 3, "{name}: asked {requests} times");
        let path = dir.join(name);
        if bodies == 1 {
            assert_eq!(&std::fs::read(&path).unwrap(), bytes, "{name}");
        } else {
            assert_eq!((requests, bodies), (3, 0), "{name}");
            assert!(!path.exists(), "{name}: failed, yet on disk");
        }
    }
    drop(served);
}

/// Without GETs sent ahead (loopback), a retryable answer read to its end
/// keeps its connection too: the object backs off while the connection
/// carries others, so 503s cost no new connection each.
#[test]
fn a_retryable_answer_keeps_its_connection_for_other_objects() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "k", 150, |i| 500 + i * 29);
    let served = serve_logged(
        data.path(),
        &["--plain", "--status-rate", "503:0.2", "--seed", "13"],
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let stats = out.path().join("stats.json");
    let output = restore(
        &served,
        &["b2://bkt", "--stats-json", stats.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    // An object's `file` time covers all its turns, backoffs included.
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let longest_us = |stage: &str| stats["stages"][stage]["max_us"].as_u64().unwrap();
    assert!(
        longest_us("file") >= longest_us("retry_wait"),
        "the longest file took {} us, the longest backoff {} us",
        longest_us("file"),
        longest_us("retry_wait")
    );
    let (refused, connections) = refusals_and_connections(data.path());
    assert!(refused >= 10, "{refused} 503s: too few to test anything");
    // `--cores 2 --connections 3`: six, and another only where more
    // objects backed off at once than may (on a busy machine), when one
    // waits where it failed, as every one did before.
    assert!(
        connections.len() < 6 + refused / 3,
        "{} connections for {refused} 503s",
        connections.len()
    );
    for (name, count) in downloads(data.path()) {
        assert_eq!(count, 1, "{name}: body sent {count} times");
    }
}

/// More objects refused at once than may back off away from the connection
/// (three per connection): the others wait where they failed, and with
/// nothing owed on it, the connection waits with them instead of being
/// replaced for each.
#[test]
fn objects_waiting_where_they_failed_keep_an_idle_connection() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "w", 40, |i| 1000 + i * 37);
    let served = serve_logged(
        data.path(),
        &["--plain", "--status-rate", "503:0.5", "--seed", "4"],
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let tuning = [
        "--cores",
        "1",
        "--connections",
        "1",
        "--retry-base-ms",
        "50",
        "--retry-max-ms",
        "100",
        "--max-attempts",
        "30",
    ];
    let output = run_bounded(command_tuned(&served, &["b2://bkt"], &dir, &tuning));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    let (refused, connections) = refusals_and_connections(data.path());
    assert!(refused >= 15, "{refused} 503s: too few to test anything");
    // One, and another only where a GET was out ahead on it (a round trip
    // of 1 ms or more on a loaded machine), which drops it, as every wait
    // in place did before (10-12 connections for 30 503s).
    assert!(
        connections.len() < 1 + refused / 6,
        "{} connections for {refused} 503s",
        connections.len()
    );
}

/// When an error elsewhere stops the run (a 403: exit 3), objects backing
/// off away from their connections end as they would have waiting where
/// they failed: the report gives the answer that refused them and the
/// attempts made, never "not started".
#[test]
fn objects_backing_off_when_the_run_stops_report_their_attempts() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    numbered_objects(&bkt, "b", 300, |i| 700 + i * 7);
    let served = serve_logged(
        data.path(),
        &[
            "--plain",
            "--status-rate",
            "503:0.5:2",
            "--status-rate",
            "403:0.01",
            "--seed",
            "1",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    // name → (requests, time of the last answer); the stop: the first 403.
    let mut asked: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut stopped_ms = u64::MAX;
    for record in access_records(data.path()) {
        let Some(name) = record["name"].as_str() else {
            continue;
        };
        let time_ms = record["time_ms"].as_u64().unwrap();
        if record["status"] == 403 {
            stopped_ms = stopped_ms.min(time_ms);
        }
        let entry = asked.entry(name.to_string()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(time_ms);
    }
    let mut refused_while_backing_off = 0;
    for line in common::json_lines(&report) {
        if line["status"] != "failed" {
            continue;
        }
        let name = line["name"].as_str().unwrap();
        let reason = line["reason"].as_str().unwrap();
        let (requests, last_ms) = asked.get(name).copied().unwrap_or_default();
        let attempts = line["attempts"].as_u64().unwrap();
        // A GET sent ahead (pipelining: on a loaded machine the round trip
        // passes 1 ms) and not read before the stop is not counted.
        assert!(attempts <= requests, "{requests} requests: {line}");
        // Answered a second or more before the stop, with `Retry-After: 2`:
        // it was backing off, not on its way.
        if reason.contains("not started") && requests > 0 {
            assert!(last_ms + 1000 > stopped_ms, "{line}");
        }
        if reason.contains("503") && attempts > 0 {
            refused_while_backing_off += 1;
        }
    }
    assert!(refused_while_backing_off > 0, "no object was backing off");
}

/// A download host that answers each request head with `answer(connection
/// index from 0, request line, stream)`, which says whether to keep the
/// connection. Returns its origin.
fn scripted_origin(
    answer: impl Fn(usize, &str, &mut std::net::TcpStream) -> bool + Send + Sync + 'static,
) -> String {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for (index, stream) in listener.incoming().flatten().enumerate() {
            let answer = std::sync::Arc::clone(&answer);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let (mut line, mut request) = (String::new(), String::new());
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if request.is_empty() => request = line.clone(),
                        Ok(_) if line == "\r\n" => {
                            if !answer(index, &request, &mut writer) {
                                return;
                            }
                            request.clear();
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    origin
}

/// A download host whose first connection answers 200 after 200 ms and
/// stalls after 10 bytes of the body; every later one answers 403 after
/// 500 ms.
fn stall_first_then_refuse_origin(size_bytes: usize) -> String {
    use std::io::Write;
    scripted_origin(move |index, request, writer| {
        if index == 0 {
            // Late enough that the other object went out on a connection of
            // its own, not sent ahead behind this one.
            std::thread::sleep(Duration::from_millis(200));
            let file_id = request
                .split("fileId=")
                .nth(1)
                .and_then(|rest| rest.split([' ', '&']).next())
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {size_bytes}\r\n\
                 x-bz-file-id: {file_id}\r\n\r\n0123456789"
            );
            let _ = writer.write_all(head.as_bytes());
            std::thread::sleep(Duration::from_secs(120));
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
        let body = r#"{"status":403,"code":"unauthorized","message":"revoked"}"#;
        let reply = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(reply.as_bytes()).is_ok()
    })
}

/// An error that stops the run (a 403: exit 3) cuts a stalled receive
/// short, as a signal does: the run ends seconds after it, not when
/// `--timeout-s` runs out on the connection stalled mid-body.
#[test]
fn a_fatal_error_cuts_stalled_receives_short() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "a", &content("a", 1000));
    write_file(&bkt, "b", &content("b", 1000));
    let origin = stall_first_then_refuse_origin(1000);
    let served = serve(data.path(), true, &["--download-url", &origin]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let started = Instant::now();
    let output = restore(&served, &["b2://bkt", "--timeout-s", "60"], &dir);
    let took = started.elapsed();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(took < Duration::from_secs(20), "took {took:?}: {text}");
    assert!(!dir.join("a").exists() && !dir.join("b").exists(), "{text}");
}

#[test]
fn shards_from_flags_and_scheduler_environments_cover_the_bucket_once() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let mut objects = BTreeMap::new();
    for i in 0..90 {
        let name = format!("s/{}/{i}", i % 4);
        let bytes = content(&name, 100 + i);
        write_file(&bkt, &name, &bytes);
        objects.insert(name, bytes);
    }
    let served = serve_logged(data.path(), &["--plain"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("shared");
    // Shard 0 by flag, 1 as a Kubernetes Indexed Job, 2 as a Slurm array task.
    let mut children = Vec::new();
    for k in 0..3 {
        let mut command = command(&served, &["b2://bkt"], &dir);
        match k {
            0 => {
                command.args(["--shard", "0/3"]);
            }
            1 => {
                command
                    .env("JOB_COMPLETION_INDEX", "1")
                    .env("RINGDOWN_SHARD_COUNT", "3");
            }
            _ => {
                command
                    .env("SLURM_ARRAY_TASK_ID", "7")
                    .env("SLURM_ARRAY_TASK_MIN", "5")
                    .env("SLURM_ARRAY_TASK_COUNT", "3");
            }
        }
        children.push(std::thread::spawn(move || run_bounded(command)));
    }
    let said = [
        None,
        Some("restoring shard 1/3 (from JOB_COMPLETION_INDEX and RINGDOWN_SHARD_COUNT)"),
        Some("restoring shard 2/3 (from the Slurm array's SLURM_ARRAY_TASK_* variables)"),
    ];
    for (child, said) in children.into_iter().zip(said) {
        let output = child.join().unwrap();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{text}");
        // A shard the environment chose is said; one given by flag is not.
        match said {
            Some(said) => assert!(text.contains(said), "{text}"),
            None => assert!(!text.contains("restoring shard"), "{text}"),
        }
    }
    assert_tree(&dir, &objects);
    assert_eq!(files_under(&dir), objects.keys().cloned().collect());
    assert!(
        !dir.join(".ringdown").exists(),
        "the last shard to finish removes it"
    );
    let counts = downloads(data.path());
    for name in objects.keys() {
        assert_eq!(
            counts.get(name),
            Some(&1),
            "{name} downloaded by exactly one shard"
        );
    }
}

#[test]
fn usage_errors_exit_2_before_any_network() {
    let out = tempfile::tempdir().unwrap();
    let base = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
        command
            .arg("restore")
            .args(args)
            .arg(out.path().join("d"))
            .env("B2_APPLICATION_KEY_ID", "id")
            .env("B2_APPLICATION_KEY", "key")
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("SLURM_ARRAY_TASK_ID");
        command
    };
    for args in [
        &["s3://bkt"][..],
        &["b2://bkt", "--shard", "3/3"],
        &[
            "b2://bkt",
            "--include",
            "a[",
            "--realm",
            "http://127.0.0.1:9",
        ],
        // More buffers than a ring registers (1,024): it used to panic.
        &["b2://bkt", "--buffers", "1025"],
        // An output that cannot be written is found before the run.
        &["b2://bkt", "--stats-json", "/no/such/dir/stats.json"],
        &["b2://bkt", "--report", "/no/such/dir/report.jsonl"],
        &["b2://bkt", "--shard", "0/2", "--shard-count", "4"],
        &[
            "b2://bkt",
            "--retry-base-ms",
            "5000",
            "--retry-max-ms",
            "10",
        ],
    ] {
        let output = run_bounded(base(args));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let mut no_key = base(&["b2://bkt"]);
    no_key.env_remove("B2_APPLICATION_KEY");
    assert_eq!(run_bounded(no_key).status.code(), Some(2));
    // The count of an Indexed Job without its index (a Job not
    // `completionMode: Indexed`): refused as `--shard-count` alone is, where
    // each of N pods restored the whole bucket.
    let mut no_index = base(&["b2://bkt"]);
    no_index.env("RINGDOWN_SHARD_COUNT", "4");
    let output = run_bounded(no_index);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("RINGDOWN_SHARD_COUNT=4 needs an index"),
        "{}",
        stderr(&output)
    );
    assert!(!out.path().join("d").exists());
    // A DIR beneath a file, or that is a file: exit 2 before any request
    // (port 9 is not served: a request would fail otherwise).
    std::fs::write(out.path().join("file"), b"x").unwrap();
    let too_long = out.path().join("n".repeat(300)).join("sub");
    for dir in [
        out.path().join("file/sub"),
        out.path().join("file"),
        too_long,
    ] {
        let output = run_bounded(restore_unserved(&dir));
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{dir:?}: {text}");
        assert!(
            text.contains("is not a directory") || text.contains("File name too long"),
            "{text}"
        );
    }
}

/// A `--stats-json` or `--report` FIFO with a reader gets its lines: it is
/// held open from the start's check to the end. Closed in between, the
/// reader took that for the end of the data and was gone: the stats found
/// no reader at the end, and the report's open waited for one for ever.
#[test]
fn a_stats_json_or_report_fifo_with_a_reader_gets_its_lines() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "a/one", &content("one", 10));
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    for (flag, expect) in [
        ("--stats-json", "\"files\": 1"),
        ("--report", "\"name\":\"a/one\""),
    ] {
        let fifo = out.path().join(format!("{}.fifo", &flag[2..]));
        common::make_fifo(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        // (The reader's open may come after the run's check: retried.)
        let dir = out.path().join(&flag[2..]);
        let args = ["b2://bkt", "-q", flag, fifo.to_str().unwrap()];
        let mut output = restore(&served, &args, &dir);
        for _ in 0..50 {
            if output.status.code() != Some(2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            output = restore(&served, &args, &dir);
        }
        assert!(output.status.success(), "{flag}: {}", stderr(&output));
        let read = String::from_utf8(reader.join().unwrap()).unwrap();
        assert!(read.contains(expect), "{flag}: {read}");
    }
}

/// DIR is made as `mkdir -p` makes it, `.` and `..` walked, not named
/// (`NEW/.` failed with "creating NEW/.: No such file or directory", h46
/// #8c).
#[test]
fn a_dir_spelled_with_dot_components_is_made_as_mkdir_p_makes_it() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "a/one", &content("one", 10));
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    for (spelled, made) in [("new/.", "new"), ("x/../other/./", "other")] {
        let output = restore(&served, &["b2://bkt"], &out.path().join(spelled));
        assert!(output.status.success(), "{spelled}: {}", stderr(&output));
        assert_eq!(
            std::fs::read(out.path().join(made).join("a/one")).unwrap(),
            content("one", 10),
            "{spelled}"
        );
    }
}

/// A DIR on a file system already dead at the start (a FUSE daemon gone:
/// ENOTCONN) is exit 2 before any request, saying what to do, as `get`'s
/// DEST is; it was exit 1 at "creating DIR" after authorizing (h46 #8e).
/// Needs bindfs and /dev/fuse; skipped with a message where missing.
#[test]
fn a_dir_on_a_dead_file_system_is_exit_2_before_any_request() {
    let has = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !has("bindfs") || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs bindfs and /dev/fuse");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (source, mount) = (work.path().join("source"), work.path().join("mount"));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::create_dir_all(&mount).unwrap();
    let mut daemon = Command::new("bindfs")
        .arg("-f")
        .arg(&source)
        .arg(&mount)
        .spawn()
        .unwrap();
    let mounted = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(mount.to_str().unwrap())
    });
    if !mounted {
        let _ = daemon.kill();
        let _ = daemon.wait();
        eprintln!("skipped: bindfs did not mount (no FUSE here?)");
        return;
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let unmount = || {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg("-z")
            .arg(&mount)
            .status();
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
    };
    // Port 9 is not served: a request would fail with another message.
    for dir in [mount.clone(), mount.join("new")] {
        let output = run_bounded(restore_unserved(&dir));
        let text = stderr(&output);
        if output.status.code() != Some(2) || !text.contains("failed or is gone") {
            unmount();
            panic!("{dir:?}: {:?} {text}", output.status.code());
        }
    }
    unmount();
}

/// Issue 5's fault test: 2,000 files and two multi-chunk objects through
/// resets, stalls cut short, 503s, 429s and corrupt bytes. Every file that
/// lands is byte-identical; a file the faults defeat is reported, absent
/// under its name, and leaves no partial behind.
#[test]
fn two_thousand_files_through_every_fault_and_zero_wrong_files() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let mut objects = BTreeMap::new();
    for i in 0..2000 {
        let name = format!("f/{:02}/{i:04}", i % 37);
        let bytes = content(&name, 1 + (i * 7919) % 6000);
        write_file(&bkt, &name, &bytes);
        objects.insert(name, bytes);
    }
    for name in ["f/large-1", "f/large-2"] {
        let bytes = content(name, 5 * 65536 + 11);
        write_file(&bkt, name, &bytes);
        objects.insert(name.to_string(), bytes);
    }
    let served = serve(
        data.path(),
        true,
        &[
            "--reset-rate",
            "0.02",
            "--fail-rate",
            "0.02",
            "--throttle-rate",
            "0.01",
            "--short-body-rate",
            "0.01",
            "--corrupt-rate",
            "0.01",
            "--seed",
            "11",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    let text = stderr(&output);
    let lines = common::json_lines(&report);
    assert_eq!(lines.len(), objects.len(), "one report line per file");
    let mut restored = 0;
    for line in &lines {
        let name = line["name"].as_str().unwrap();
        let path = dir.join(name);
        match line["status"].as_str().unwrap() {
            "ok" => {
                restored += 1;
                assert!(
                    std::fs::read(&path).unwrap() == objects[name],
                    "{name}: wrong bytes under the final name"
                );
            }
            status => {
                assert_eq!(status, "failed", "{line}");
                assert!(!path.exists(), "{name} failed but exists");
            }
        }
    }
    let failed = lines.len() - restored;
    assert_eq!(
        output.status.code(),
        Some(if failed == 0 { 0 } else { 1 }),
        "{text}"
    );
    // Retries recover nearly everything; only an object corrupted on both
    // of its downloads may be refused.
    assert!(failed <= 5, "{failed} files failed:\n{text}");
    assert_eq!(files_under(&dir).len(), restored, "no stray files");
    if failed == 0 {
        assert!(!dir.join(".ringdown").exists());
    } else {
        let partial = dir.join(".ringdown/partial");
        let left = std::fs::read_dir(&partial).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "partials left behind");
    }
}

/// Objects below a part written with O_DIRECT (`--direct-io on`; `auto`
/// leaves them to the page cache): whole blocks go direct, the last partial
/// block through the page cache, so every size comes out exact, also when
/// bodies are cut off mid-buffer (only the cut buffer's whole blocks are
/// kept, the rest fetched again). An object whose digest never matches is
/// downloaded again after its last block turned O_DIRECT off, and fails
/// without a file under its name.
#[test]
fn objects_below_a_part_are_written_direct_to_the_exact_byte() {
    const MIB: usize = 1 << 20;
    let mib_sizes = [
        MIB,
        MIB + 1,
        MIB + 4095,
        MIB + 4096,
        2 * MIB - 1,
        3 * MIB + 5000,
    ];
    let small_sizes = [0, 1, 4095, 4096, 4097, 65537, 200_000];
    // Plain HTTP cuts bodies anywhere; TLS at a record's end.
    for (sizes, plain) in [(&mib_sizes[..], true), (&small_sizes[..], false)] {
        let mode = if plain { "plain" } else { "TLS" };
        let data = tempfile::tempdir().unwrap();
        let bkt = data.path().join("bkt");
        let mut objects = BTreeMap::new();
        for round in 0..4 {
            for (i, &size) in sizes.iter().enumerate() {
                let name = format!("r{round}/o{i}");
                let bytes = content(&name, size);
                write_file(&bkt, &name, &bytes);
                objects.insert(name, bytes);
            }
        }
        // Its last block is partial in both modes.
        let never_matches = "r0/o1";
        let served = serve(
            data.path(),
            plain,
            &[
                "--reset-rate",
                "0.1",
                "--short-body-rate",
                "0.1",
                "--seed",
                "5",
                "--wrong-sha1",
                never_matches,
            ],
        );
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("dir");
        let stats = out.path().join("stats.json");
        // Buffers of 64 KiB: an object spans many, and a cut-off body
        // leaves a part-filled one. Parts stay larger than every object.
        let output = run_bounded(command_tuned(
            &served,
            &["b2://bkt", "--stats-json", stats.to_str().unwrap()],
            &dir,
            &[
                "--direct-io",
                "on",
                "--buffer-size",
                "64KiB",
                "--part-size",
                "8MiB",
                "--retry-base-ms",
                "1",
                "--retry-max-ms",
                "5",
            ],
        ));
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{mode}: {text}");
        assert!(
            text.contains(&format!("failed: {never_matches}: SHA1 mismatch")),
            "{mode}: {text}"
        );
        assert!(!dir.join(never_matches).exists(), "{mode}");
        objects.remove(never_matches);
        assert_tree(&dir, &objects);
        assert_eq!(
            files_under(&dir).len(),
            objects.len(),
            "{mode}: stray files"
        );
        let stats: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
        assert_eq!(stats["direct_io"], true, "{mode}: {stats}");
        // Cut-off bodies, besides the mismatch's download again.
        assert!(
            stats["retries"].as_u64().unwrap() > 1,
            "{mode}: no fault hit"
        );
    }
}

#[test]
fn corrupted_bodies_are_downloaded_again_and_never_land_under_their_name() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let mut objects = numbered_objects(&bkt, "c", 60, |i| 3000 + i * 101);
    // Two large objects (all cores, whole-object re-download on mismatch).
    for name in ["c/large-1", "c/large-2"] {
        let bytes = content(name, 6 * 65536 + 7);
        write_file(&bkt, name, &bytes);
        objects.insert(name.to_string(), bytes);
    }
    let served = serve(data.path(), true, &["--corrupt-rate", "0.2", "--seed", "3"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let report = out.path().join("report.jsonl");
    let stats = out.path().join("stats.json");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--report",
            report.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &dir,
    );
    let lines = common::json_lines(&report);
    assert_eq!(lines.len(), objects.len());
    let mut failed = 0;
    for line in &lines {
        let name = line["name"].as_str().unwrap();
        match line["status"].as_str().unwrap() {
            "ok" => assert_eq!(std::fs::read(dir.join(name)).unwrap(), objects[name]),
            "failed" => {
                failed += 1;
                assert!(
                    line["reason"].as_str().unwrap().contains("SHA1 mismatch"),
                    "{line}"
                );
                assert!(
                    !dir.join(name).exists(),
                    "{name}: a wrong file under its name"
                );
            }
            other => panic!("{name}: {other}"),
        }
    }
    let expected_code = if failed == 0 { 0 } else { 1 };
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "{}",
        stderr(&output)
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(
        stats["retries"].as_u64().unwrap() > 0,
        "the corrupt objects were fetched again"
    );
}

/// A B2 answer of the listed file id whose length is not the listed size
/// is a broken reply, not a changed object (a file id's content never
/// changes): it is retried, as the same fault on a range is. It used to
/// fail its object on the first attempt, whatever `--max-attempts` said.
#[test]
fn a_wrong_length_from_the_listed_version_is_retried() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    // Small objects (one whole GET each) and one of several chunks.
    let mut objects = numbered_objects(&bkt, "w", 12, |i| 1000 + i * 37);
    let large = content("w/large", 5 * 65536 + 3);
    write_file(&bkt, "w/large", &large);
    objects.insert("w/large".to_string(), large);
    let out = tempfile::tempdir().unwrap();

    // Every answer's length is wrong (whole objects' 200s and the large
    // object's 206s): each object spends its 3 attempts.
    let served = serve(
        data.path(),
        true,
        &["--short-object-rate", "1", "--long-body-rate", "1"],
    );
    let dir = out.path().join("all");
    let report = out.path().join("all.jsonl");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--max-attempts",
            "3",
            "--report",
            report.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = common::json_lines(&report);
    assert_eq!(lines.len(), objects.len());
    for line in &lines {
        assert_eq!(line["status"], "failed", "{line}");
        assert_eq!(line["attempts"], 3, "{line}");
        assert!(!dir.join(line["name"].as_str().unwrap()).exists(), "{line}");
    }

    // One answer in three: every object gets through.
    let served = serve(
        data.path(),
        true,
        &[
            "--short-object-rate",
            "0.35",
            "--long-body-rate",
            "0.35",
            "--seed",
            "5",
        ],
    );
    let dir = out.path().join("some");
    let output = restore(&served, &["b2://bkt", "--max-attempts", "15"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
}

/// `--report`'s `path` is where the name's file is: set for `ok` and
/// `skipped`, null for `failed` and `refused`, which put no file there. A
/// failed download (wrong lengths until attempts run out) and a SHA1
/// mismatch on every download, small and chunked alike, leave nothing
/// under the name, or the older local file as it was.
#[test]
fn a_failed_or_refused_name_claims_no_path_in_the_report() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let small = content("p/small", 3000);
    let large = content("p/large", 5 * 65536 + 3);
    write_file(&bkt, "p/small", &small);
    write_file(&bkt, "p/large", &large);
    write_file(&bkt, "p/bad\u{2}", b"x");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    std::fs::create_dir_all(dir.join("p")).unwrap();
    std::fs::write(dir.join("p/small"), b"an older copy").unwrap();
    let path_of = |name: &str| format!("{}/{name}", dir.display());
    let run = |faults: &[&str], extra: &[&str]| {
        let served = serve(data.path(), true, faults);
        let report = out.path().join("report.jsonl");
        let mut args = vec!["b2://bkt", "--max-attempts", "2", "--report"];
        args.push(report.to_str().unwrap());
        args.extend(extra);
        let output = restore(&served, &args, &dir);
        // The unsafe name is refused every time.
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let lines: BTreeMap<String, serde_json::Value> = common::json_lines(&report)
            .into_iter()
            .map(|line| (line["name"].as_str().unwrap().to_string(), line))
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let refused = &lines["p/bad\u{2}"];
        assert_eq!(refused["status"], "refused", "{refused}");
        assert!(refused["path"].is_null(), "{refused}");
        lines
    };
    let wrong_lengths = ["--short-object-rate", "1", "--long-body-rate", "1"];
    for faults in [&wrong_lengths[..], &["--corrupt-rate", "1"]] {
        let lines = run(faults, &[]);
        for name in ["p/small", "p/large"] {
            let line = &lines[name];
            assert_eq!(line["status"], "failed", "{faults:?}: {line}");
            assert!(line["path"].is_null(), "{faults:?}: {line}");
        }
        assert!(!dir.join("p/large").exists(), "{faults:?}");
        assert_eq!(
            std::fs::read(dir.join("p/small")).unwrap(),
            b"an older copy"
        );
    }
    // Restored, then found in place: the path is where the file is.
    let lines = run(&[], &[]);
    for name in ["p/small", "p/large"] {
        assert_eq!(lines[name]["status"], "ok", "{}", lines[name]);
        assert_eq!(lines[name]["path"], path_of(name).as_str());
    }
    assert_eq!(std::fs::read(dir.join("p/small")).unwrap(), small);
    assert_eq!(std::fs::read(dir.join("p/large")).unwrap(), large);
    let lines = run(&[], &["--skip-existing"]);
    for name in ["p/small", "p/large"] {
        assert_eq!(lines[name]["status"], "skipped", "{}", lines[name]);
        assert_eq!(lines[name]["path"], path_of(name).as_str());
    }
}

#[test]
fn slurm_array_script_runs_every_task_and_covers_the_bucket() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let mut objects = BTreeMap::new();
    for i in 0..40 {
        let name = format!("set/{i}");
        let bytes = content(&name, 500 + i);
        write_file(&bkt, &name, &bytes);
        objects.insert(name, bytes);
    }
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("dest");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm-array.sh");
    // The array 3-6 (four tasks): K = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN.
    let tasks: Vec<_> = (3..7)
        .map(|task| {
            let mut command = Command::new("bash");
            command
                .arg(&script)
                .env("SOURCE", "b2://bkt/set")
                .env("DEST", &dest)
                .env("RINGDOWN", env!("CARGO_BIN_EXE_ringdown"))
                .env("B2_REALM", &served.realm)
                .env("B2_APPLICATION_KEY_ID", &served.key_id)
                .env("B2_APPLICATION_KEY", &served.key)
                .env("SLURM_ARRAY_TASK_ID", task.to_string())
                .env("SLURM_ARRAY_TASK_MIN", "3")
                .env("SLURM_ARRAY_TASK_COUNT", "4")
                .env("SLURM_CPUS_PER_TASK", "1")
                .env_remove("JOB_COMPLETION_INDEX");
            std::thread::spawn(move || run_bounded(command))
        })
        .collect();
    for task in tasks {
        let output = task.join().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    let restored: BTreeSet<String> = files_under(&dest)
        .into_iter()
        .filter(|name| !name.starts_with(".ringdown-"))
        .collect();
    let expected: BTreeSet<String> = objects
        .keys()
        .map(|name| name.strip_prefix("set/").unwrap().to_string())
        .collect();
    assert_eq!(restored, expected);
    for (name, bytes) in &objects {
        assert_eq!(
            &std::fs::read(dest.join(name.strip_prefix("set/").unwrap())).unwrap(),
            bytes
        );
    }
    // One report per task; together they name every object once.
    let mut reported = BTreeSet::new();
    for task in 3..7 {
        for line in common::json_lines(&dest.join(format!(".ringdown-report-{task}.jsonl"))) {
            assert!(reported.insert(line["name"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(reported, objects.keys().cloned().collect());
}

/// Range requests the server answered for `name`, from the access log.
fn range_requests(data: &Path, name: &str) -> usize {
    let text = std::fs::read_to_string(data.join("access.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|record| record["name"] == name && record["status"] == 206)
        .count()
}

/// Bytes of large objects' chunks the journal in `dir` records done.
fn journaled_chunk_bytes(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(".ringdown/journal-0-of-1"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("chunk\t"))
        .filter_map(|rest| rest.rsplit('\t').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// SIGKILLs a restore into `dir` once its journal records `min_bytes` of
/// chunks done; returns what it records then.
fn kill_once_chunks_are_journaled(mut child: Child, dir: &Path, min_bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while journaled_chunk_bytes(dir) < min_bytes {
        assert!(Instant::now() < deadline, "no chunk was journaled");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    journaled_chunk_bytes(dir)
}

/// Files the journal in `dir` records completed (`ok` lines).
fn journaled_files(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(".ringdown/journal-0-of-1"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("ok\t")?.split('\t').next())
        .map(str::to_string)
        .collect()
}

/// Waits (30 s at most) until a restore into `dir` has journaled at least
/// `count` files, while it still runs; `log` is shown if it ended first.
fn wait_for_journaled_files(child: &mut Child, dir: &Path, count: usize, log: Option<&Path>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while journaled_files(dir).len() < count {
        assert!(Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished too soon: {}",
            log.map(|log| std::fs::read_to_string(log).unwrap_or_default())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `--fsync` syncs directories and the journal in batches of 256 files,
/// but writes each file's journal line as it is named: a kill keeps the
/// page cache, so the rerun trusts those lines and skips the files. (The
/// lines waited for the batch, and a kill lost every one of them: h37 #1.)
#[test]
fn a_killed_fsync_restore_keeps_the_record_of_every_file_it_named() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "k", 150, |i| 1000 + i * 37);
    let served = serve_logged(data.path(), &["--plain", "--latency-ms", "40"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let mut child = command(&served, &["b2://bkt", "--fsync"], &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_under(&dir).len() < 40 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let named = files_under(&dir);
    assert!(
        named.len() < objects.len(),
        "killed too late to prove anything"
    );
    let journaled = journaled_files(&dir);
    // A file is named, then journaled: a kill between the two leaves it
    // unrecorded, at most one per request in flight.
    assert!(
        journaled.len() + 32 >= named.len(),
        "{} files named, {} journaled",
        named.len(),
        journaled.len()
    );
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--fsync", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    let skipped = common::skipped_by_journal(&report).len();
    assert_eq!(skipped, journaled.len());
}

/// A partial file a killed run left goes once a later run ends without
/// needing it (here the object is excluded): exit 0 leaves no `.ringdown/`.
#[test]
fn partials_of_a_killed_run_go_when_a_later_run_finishes() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "large.bin", &content("large", 64 * 65536));
    write_file(&bkt, "small.txt", b"small");
    let served = serve_logged(data.path(), &["--plain", "--latency-ms", "40"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let child = command(&served, &["b2://bkt"], &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_once_chunks_are_journaled(child, &dir, 4 * 65536);
    let partial = dir.join(".ringdown/partial");
    assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 1);
    let output = restore(&served, &["b2://bkt", "--exclude", "large.bin"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(dir.join("small.txt")).unwrap(), b"small");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, ["small.txt"], "left in DIR: {left:?}");
}

#[test]
fn killed_restore_resumes_a_large_object_from_its_journaled_chunks() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let size = 64 * 65536 + 1000; // 65 chunks of 64 KiB
    let bytes = content("large", size);
    write_file(&bkt, "large.bin", &bytes);
    let served = serve_logged(data.path(), &["--plain", "--latency-ms", "40"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let child = command(&served, &["b2://bkt"], &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = kill_once_chunks_are_journaled(child, &dir, 16 * 65536);
    assert!(done < size as u64, "killed too late");
    // Responses in flight at the kill are logged when the server gives up on them.
    std::thread::sleep(Duration::from_millis(500));
    let before = range_requests(data.path(), "large.bin");
    // The partial may run past the object's end: an O_DIRECT run writes the
    // tail padded to a block, and a kill can come before it is cut back. A
    // resume that does not use O_DIRECT itself still cuts it to size.
    let partials: Vec<PathBuf> = std::fs::read_dir(dir.join(".ringdown/partial"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(partials.len(), 1, "{partials:?}");
    let mut partial = std::fs::OpenOptions::new()
        .append(true)
        .open(&partials[0])
        .unwrap();
    std::io::Write::write_all(&mut partial, &[0xAB; 5000]).unwrap();
    drop(partial);
    let stats = out.path().join("stats.json");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--direct-io",
            "off",
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("resuming at byte"),
        "{}",
        stderr(&output)
    );
    // The prefix came from disk: counted apart, and left out of the rate.
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let resumed = stats["resumed_bytes"].as_u64().unwrap();
    assert!(resumed >= 16 * 65536 && resumed <= done, "{stats}");
    assert_eq!(stats["bytes"], size as u64);
    let rate = (size as u64 - resumed) as f64 / stats["seconds"].as_f64().unwrap() / 1e6;
    assert!((stats["mb_per_s"].as_f64().unwrap() - rate).abs() < 1e-6 * rate.max(1.0));
    assert!(
        stderr(&output).contains(&format!(
            "({} fetched; {resumed} were on disk from an earlier run)",
            size as u64 - resumed
        )),
        "{}",
        stderr(&output)
    );
    assert!(std::fs::read(dir.join("large.bin")).unwrap() == bytes);
    let again = range_requests(data.path(), "large.bin") - before;
    let chunks_left = (size as u64 - done).div_ceil(65536) as usize;
    assert!(
        again <= chunks_left,
        "{again} range requests after the kill; only {chunks_left} chunks were missing"
    );
}

/// A rate-limited restore of one large object into `dir` (65 chunks of
/// 64 KiB at 1 MiB/s: about 4 s), once its journal records 8 chunks.
fn slow_large_restore(served: &Served, dir: &Path) -> Child {
    let mut child = command(served, &["b2://bkt", "--limit-rate", "1MiB"], dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while journaled_chunk_bytes(dir) < 8 * 65536 {
        assert!(Instant::now() < deadline, "no chunk was journaled");
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// h46 #8b: DIR renamed away mid-run. The file lands in the directory
/// opened at the start (wherever it is now), and the run says that its
/// paths name where DIR was.
#[test]
fn dir_moved_away_mid_run_is_said() {
    let data = tempfile::tempdir().unwrap();
    let bytes = large_object_bucket(data.path());
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let run = slow_large_restore(&served, &dir);
    let moved = out.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    let run = run.wait_with_output().unwrap();
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the paths said here and in --report name where it was"),
        "{err}"
    );
    assert!(std::fs::read(moved.join("large.bin")).unwrap() == bytes);
    assert!(!dir.exists());
}

fn large_object_bucket(data: &Path) -> Vec<u8> {
    let bytes = content("large", 64 * 65536 + 1000);
    write_file(&data.join("bkt"), "large.bin", &bytes);
    bytes
}

/// h42 #2: a journal deleted under a running restore let a second run of the
/// same command in. It removed the first run's partial file (not in its new
/// journal) and made its own under the same name, which the first then
/// renamed into place, reported verified from its own bytes: mostly zeros.
/// A run's named partial files are its own (locked): the second leaves it
/// alone and fails that object; the first finishes it, right.
#[test]
fn a_second_run_let_in_by_a_deleted_journal_leaves_the_first_ones_partial_alone() {
    let data = tempfile::tempdir().unwrap();
    let bytes = large_object_bucket(data.path());
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let first = slow_large_restore(&served, &dir);
    std::fs::remove_file(dir.join(".ringdown/journal-0-of-1")).unwrap();
    let second = restore(&served, &["b2://bkt"], &dir);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("belongs to another ringdown restore into this DIR"),
        "{}",
        stderr(&second)
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(std::fs::read(dir.join("large.bin")).unwrap() == bytes);
}

/// h42 #4: the partial file replaced by name during the download (same
/// size, other bytes). The rename went by name: the other file became the
/// final one, reported verified. A run names only the file it wrote.
#[test]
fn a_partial_replaced_during_the_run_is_never_named() {
    let data = tempfile::tempdir().unwrap();
    large_object_bucket(data.path());
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let run = slow_large_restore(&served, &dir);
    let partials: Vec<PathBuf> = std::fs::read_dir(dir.join(".ringdown/partial"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "part"))
        .collect();
    assert_eq!(partials.len(), 1, "{partials:?}");
    let impostor = out.path().join("impostor");
    std::fs::write(&impostor, vec![b'G'; 64 * 65536 + 1000]).unwrap();
    std::fs::rename(&impostor, &partials[0]).unwrap();
    let output = run.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no longer leads to the file written and verified"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.join("large.bin").exists());
}

/// A resumed prefix damaged on disk (a torn write, a bad block): the
/// object fails its SHA1, is downloaded again from byte 0, and the
/// summary counts every byte as fetched, none as resumed.
#[test]
fn a_damaged_resumed_prefix_is_fetched_again_and_not_counted_as_resumed() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let size = 64 * 65536 + 1000;
    let bytes = content("damaged", size);
    write_file(&bkt, "large.bin", &bytes);
    let served = serve_logged(data.path(), &["--plain", "--latency-ms", "40"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let child = command(&served, &["b2://bkt"], &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = kill_once_chunks_are_journaled(child, &dir, 16 * 65536);
    assert!(done < size as u64, "killed too late");
    let partials: Vec<PathBuf> = std::fs::read_dir(dir.join(".ringdown/partial"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(partials.len(), 1, "{partials:?}");
    let partial = std::fs::OpenOptions::new()
        .write(true)
        .open(&partials[0])
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&partial, &[0u8; 4096], 4096).unwrap();
    drop(partial);
    let stats = out.path().join("stats.json");
    let output = restore(
        &served,
        &["b2://bkt", "--stats-json", stats.to_str().unwrap()],
        &dir,
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(err.contains("SHA1 mismatch; downloading it again"), "{err}");
    assert!(std::fs::read(dir.join("large.bin")).unwrap() == bytes);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["resumed_bytes"], 0, "{stats}");
    assert!(!err.contains("were on disk from an earlier run"), "{err}");
}

#[test]
fn large_and_small_objects_share_the_same_keep_alive_connections() {
    // One scheduler for all sizes: chunks of the large objects and whole
    // small objects travel on the cores' connections, which outlive each
    // object (no new connection set per large object).
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let mut objects = BTreeMap::new();
    for i in 0..3 {
        objects.insert(
            format!("large-{i}.bin"),
            content(&format!("large{i}"), 12 * 65536 + 321 * (i + 1)),
        );
    }
    for i in 0..60 {
        objects.insert(
            format!("small/{i:02}.txt"),
            content(&format!("small{i}"), 100 + 997 * i),
        );
    }
    for (name, bytes) in &objects {
        write_file(&bkt, name, bytes);
    }
    let served = serve_logged(data.path(), &["--latency-ms", "5"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let output = restore(&served, &["b2://bkt"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);

    let log = std::fs::read_to_string(data.path().join("access.jsonl")).unwrap();
    // connection → (range requests of large objects, whole small objects)
    let mut carried: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for line in log.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(name) = record["name"].as_str() else {
            continue;
        };
        let entry = carried
            .entry(record["connection"].as_u64().unwrap())
            .or_default();
        match record["status"].as_u64() {
            Some(206) if name.starts_with("large-") => entry.0 += 1,
            Some(200) if name.starts_with("small/") => entry.1 += 1,
            other => panic!("unexpected {other:?} for {name}: {line}"),
        }
    }
    // `--cores 2 --connections 3`: six download connections in all.
    assert!(
        carried.len() <= 6,
        "{} connections: {carried:?}",
        carried.len()
    );
    let chunks: usize = carried.values().map(|(chunks, _)| chunks).sum();
    assert_eq!(chunks, 3 * 13, "one range request per 64 KiB part");
    let on_large = carried.values().filter(|(chunks, _)| *chunks > 0).count();
    assert!(on_large > 1, "chunks spread over connections: {carried:?}");
    assert!(
        carried
            .values()
            .any(|(chunks, small)| *chunks > 0 && *small > 0),
        "a connection carried both chunks and small objects: {carried:?}"
    );
}

/// The listing thread keeps its API connection: a `--files-from` walk of 20
/// scattered names (a call per name) runs on one connection, each call after
/// the first without a TCP or TLS handshake. A server that closes the
/// connections it kept costs no attempt: with every reused connection closed
/// unanswered, a run allowed one attempt per call still lists every name,
/// each call on a new connection.
#[test]
fn listing_calls_share_one_keep_alive_connection() {
    let out = tempfile::tempdir().unwrap();
    let list = out.path().join("list.txt");
    let wanted: Vec<String> = (0..400).step_by(20).map(|i| format!("n/{i:04}")).collect();
    std::fs::write(&list, wanted.join("\n")).unwrap();
    let mut tuning = SMALL_TUNING.to_vec();
    tuning.extend(["--max-attempts", "1"]);
    for closing in [false, true] {
        let data = tempfile::tempdir().unwrap();
        for i in 0..400 {
            write_file(&data.path().join("bkt"), &format!("n/{i:04}"), b"");
        }
        let faults: &[&str] = if closing {
            &["--close-keepalive-rate", "1"]
        } else {
            &[]
        };
        let served = serve_logged(data.path(), faults);
        let dir = out.path().join("never");
        let args = [
            "b2://bkt",
            "--files-from",
            list.to_str().unwrap(),
            "--dry-run",
        ];
        let output = run_bounded(command_tuned(&served, &args, &dir, &tuning));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let listed: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| line.split_once('\t').unwrap().1.to_string())
            .collect();
        assert_eq!(listed, wanted, "closing: {closing}");
        let calls = api_calls(data.path(), "b2_list_file_names");
        let answered: Vec<&serde_json::Value> = calls
            .iter()
            .filter(|record| record["status"] == 200 && record["fault"].is_null())
            .collect();
        assert!(answered.len() >= 10, "{} answered calls", answered.len());
        let connections: BTreeSet<u64> = answered
            .iter()
            .map(|record| record["connection"].as_u64().unwrap())
            .collect();
        if closing {
            assert_eq!(connections.len(), answered.len(), "{calls:?}");
            assert_eq!(calls.len(), 2 * answered.len() - 1, "{calls:?}");
        } else {
            assert_eq!(connections.len(), 1, "{calls:?}");
        }
    }
}

/// `--files-from` sorts its list on disk: 400,000 names (27 MB, which as
/// strings in memory came to ~130 MB) are walked in the memory of a short
/// list. The names the bucket has are found among them, every other one is
/// reported missing, and nothing is left in `TMPDIR`.
#[test]
fn a_long_files_from_list_is_walked_in_bounded_memory() {
    const NAMES: usize = 400_000;
    const RSS_MAX_KIB: u64 = 48 * 1024;
    let data = tempfile::tempdir().unwrap();
    write_file(&data.path().join("bkt"), "keep/a.txt", b"a");
    write_file(&data.path().join("bkt"), "keep/b.txt", b"b");
    // Names after them the list does not want: a page longer than the
    // names sought would list them.
    for i in 0..3_000 {
        write_file(&data.path().join("bkt"), &format!("keep/c/{i:04}"), b"");
    }
    let served = serve_logged(data.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    let list = out.path().join("list.txt");
    let mut text = String::from("keep/b.txt\n");
    for i in 0..NAMES {
        // Out of order, as a manifest may be.
        let scrambled = (i * 7919) % NAMES;
        text.push_str(&format!("zz/{scrambled:08}/a-directory/file-{i:012}.dat\n"));
    }
    text.push_str("keep/a.txt\n");
    std::fs::write(&list, &text).unwrap();
    let spill = out.path().join("tmp");
    std::fs::create_dir(&spill).unwrap();
    let dir = out.path().join("never");
    let mut walk = command(
        &served,
        &[
            "b2://bkt",
            "--files-from",
            list.to_str().unwrap(),
            "--dry-run",
        ],
        &dir,
    );
    walk.env("TMPDIR", &spill);
    let mut peak_kib = 0;
    let output = common::run_with_deadline(walk, Duration::from_secs(120), |pid| {
        if let Some(rss) = common::peak_rss_kib(pid) {
            peak_kib = peak_kib.max(rss);
        }
    });
    let stderr = stderr(&output);
    // As the restore would, the dry run exits 1 for the names it lacks.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(
            format!("ringdown: dry run: {NAMES} names would fail; a real run would exit 1")
                .as_str()
        )
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let found: Vec<&str> = stdout
        .lines()
        .map(|line| line.split_once('\t').unwrap().1)
        .collect();
    assert_eq!(found, ["keep/a.txt", "keep/b.txt"]);
    let missing: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("missing\t"))
        .map(|rest| rest.split('\t').next().unwrap().trim_matches('"'))
        .collect();
    assert_eq!(missing.len(), NAMES);
    assert!(
        missing.windows(2).all(|pair| pair[0] < pair[1]),
        "in B2's order, each once"
    );
    assert!(peak_kib > 0, "RSS never sampled");
    assert!(
        peak_kib <= RSS_MAX_KIB,
        "peak RSS {peak_kib} KiB for a list of {NAMES} names"
    );
    assert_eq!(
        std::fs::read_dir(&spill).unwrap().count(),
        0,
        "left in TMPDIR"
    );
    assert!(!dir.exists());

    // Excluded, the 400,000 are neither sought nor missing, and the pages
    // are as short as the two names still sought (B2 bills per 1,000).
    let calls_before = api_calls(data.path(), "b2_list_file_names").len();
    let args = [
        "b2://bkt",
        "--files-from",
        list.to_str().unwrap(),
        "--dry-run",
        "--exclude",
        "zz/**",
    ];
    let output = run_bounded(command(&served, &args, &dir));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("missing"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 2);
    let listing_bytes: u64 = api_calls(data.path(), "b2_list_file_names")[calls_before..]
        .iter()
        .map(|record| record["bytes_sent"].as_u64().unwrap())
        .sum();
    assert!(listing_bytes < 4_000, "{listing_bytes} bytes of listing");
}

#[test]
fn listing_streams_across_pages() {
    // More names than one 10,000-name page; a dry run lists them all in order.
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let count = 10_050;
    for directory in 0..10 {
        std::fs::create_dir_all(bkt.join(format!("p{directory}"))).unwrap();
    }
    for i in 0..count {
        std::fs::write(bkt.join(format!("p{}/{i:05}", i % 10)), b"").unwrap();
    }
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("never");
    let output = restore(&served, &["b2://bkt", "--dry-run"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let names: Vec<&str> = stdout
        .lines()
        .map(|line| line.split_once('\t').unwrap().1)
        .collect();
    assert_eq!(names.len(), count);
    assert!(
        names.windows(2).all(|pair| pair[0] < pair[1]),
        "sorted, no repeats"
    );
    assert!(!dir.exists());
}

/// Listing pages after the first are fetched all through a run, so they
/// retry as downloads do (`--max-attempts`), not with the five attempts of
/// the calls that start a run. With seed 14 one page is refused (HTTP 500)
/// eight times in a row and listed on the ninth attempt; `--max-attempts 5`
/// ends the run there with an error naming the call.
#[test]
fn listing_pages_mid_run_retry_as_patiently_as_downloads() {
    let data = tempfile::tempdir().unwrap();
    let count = 1_200; // pages of 100, 1,000 and 100 names
    for i in 0..count {
        let directory = data.path().join(format!("bkt/p{}", i % 4));
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join(format!("{i:05}")), b"").unwrap();
    }
    let served = serve_logged(data.path(), &["--status-rate", "500:0.6", "--seed", "14"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("never");
    let output = restore(&served, &["b2://bkt", "--dry-run"], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().count(),
        count
    );
    // Pages are fetched one after another: a run of refused listing calls
    // is one page's attempts.
    let mut longest = 0;
    let mut run = 0;
    for record in api_calls(data.path(), "b2_list_file_names") {
        run = if record["status"] == 200 { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    assert!(
        longest >= 5,
        "seed 14 no longer refuses one page five times in a row ({longest}); pick another seed"
    );
    std::fs::remove_file(data.path().join("access.jsonl")).unwrap();
    let served = serve_logged(data.path(), &["--status-rate", "500:0.6", "--seed", "14"]);
    let output = restore(
        &served,
        &["b2://bkt", "--dry-run", "--max-attempts", "5"],
        &dir,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("b2_list_file_names"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.exists());
}

/// A keep-alive connection the server closed while it idled is found out
/// only by the next request on it: that request goes again on a new
/// connection without using up an attempt (`--max-attempts 1` still
/// restores everything).
#[test]
fn a_closed_keep_alive_connection_costs_no_attempt() {
    let data = tempfile::tempdir().unwrap();
    let objects = make_tree(data.path(), 40);
    let served = serve_logged(data.path(), &["--close-keepalive-rate", "1"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let output = command(&served, &["b2://bkt", "--max-attempts", "1"], &dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_tree(&dir, &objects);
    let log = std::fs::read_to_string(data.path().join("access.jsonl")).unwrap();
    let closed = log
        .lines()
        .filter(|line| line.contains("close_keepalive"))
        .count();
    assert!(
        closed >= 10,
        "only {closed} keep-alive connections were closed"
    );
}

/// A download host that answers every request with 503 and
/// `Retry-After: 300`, on keep-alive connections. Returns its origin.
fn always_busy_origin() -> String {
    use std::io::Write;
    scripted_origin(|_, _, writer| {
        let reply = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 300\r\n\
                     Content-Length: 0\r\n\r\n";
        writer.write_all(reply.as_bytes()).is_ok()
    })
}

/// SIGTERM cuts the engine's retry waits short: listing works, every
/// download (a small object, and the chunks of a large one) meets 503 with
/// `Retry-After: 300`, and the restore still stops within seconds.
#[test]
fn sigterm_cuts_retry_waits_short() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "small", &content("small", 3000));
    write_file(&bkt, "large", &content("large", 4 * 65536 + 5));
    let busy = always_busy_origin();
    let served = serve(data.path(), true, &["--download-url", &busy]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let log = out.path().join("stderr.log");
    let mut child = command(&served, &["b2://bkt", "--stats-json", "/dev/full"], &dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it should be waiting to retry"
    );
    send_signal(child.id(), "-TERM");
    let code = exit_within(&mut child, Duration::from_secs(5), "SIGTERM").code();
    let text = std::fs::read_to_string(&log).unwrap();
    // The stats file cannot be written (/dev/full): a warning, and the
    // run's own exit code and summary stay (they were replaced by exit 1).
    assert_eq!(code, Some(143), "{text}");
    assert!(text.contains("warning: writing /dev/full"), "{text}");
    assert!(text.contains("files restored"), "{text}");
    assert!(
        !dir.join("small").exists() && !dir.join("large").exists(),
        "{text}"
    );
}

/// A run that succeeded but whose `--stats-json` cannot be written exits 1
/// naming the file, after its summary; and an output file inside a DIR the
/// run creates is accepted however DIR is spelled.
#[test]
fn stats_that_cannot_be_written_fail_a_run_that_succeeded() {
    let data = tempfile::tempdir().unwrap();
    write_file(&data.path().join("bkt"), "a", &content("a", 3000));
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let output = command(
        &served,
        &["b2://bkt", "--stats-json", "/dev/full"],
        &out.path().join("d1"),
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("1 file restored"), "{text}");
    assert!(text.contains("error: writing /dev/full"), "{text}");
    // `DIR/report.jsonl` with DIR spelled `./d2/` on the command line.
    let output = command(&served, &["b2://bkt"], Path::new("./d2/"))
        .current_dir(out.path())
        .args([
            "--report",
            &format!("{}/d2/report.jsonl", out.path().display()),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(out.path().join("d2/report.jsonl").is_file(), "{text}");
}

#[test]
fn sigterm_drains_keeps_the_journal_and_exits_143() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let mut objects = numbered_objects(&bkt, "t", 100, |i| 2000 + i * 13);
    let large = content("t-large", 32 * 65536 + 5);
    write_file(&bkt, "a-large.bin", &large);
    objects.insert("a-large.bin".into(), large);
    let served = serve_logged(data.path(), &["--plain", "--latency-ms", "40"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let log = out.path().join("first.log");
    let mut child = command(&served, &["b2://bkt"], &dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_journaled_files(&mut child, &dir, 10, Some(&log));
    send_signal(child.id(), "-TERM");
    let code = exit_within(&mut child, Duration::from_secs(20), "SIGTERM").code();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(143), "{text}");
    assert!(text.contains("files restored"), "summary printed: {text}");
    // The summary counts what finished; a note says what did not.
    assert!(
        text.contains(
            "(the listing had not ended) were not finished; run the same command again to resume"
        ),
        "{text}"
    );
    let completed = journaled_files(&dir).len();
    assert!(completed >= 10 && completed < objects.len(), "{completed}");
    // Every file reported so far is complete; nothing half-written under a name.
    for name in files_under(&dir) {
        assert_eq!(
            std::fs::read(dir.join(&name)).unwrap(),
            objects[&name],
            "{name}"
        );
    }
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    let skipped = common::skipped_by_journal(&report).len();
    assert_eq!(skipped, completed);
}

/// A power cut loses what was still in the page cache: a journaled file
/// can read back as zeros at its full size. After a reboot (another
/// `boot` line than this boot's id), records that no `durable` mark
/// covers are not trusted: those files are fetched again, never skipped
/// on the journal's word. (A kill keeps the page cache: the other tests
/// prove those records are trusted within the same boot.)
#[test]
fn after_a_power_cut_unconfirmed_journal_records_are_not_trusted() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let objects = numbered_objects(&bkt, "p", 80, |i| 3000 + i * 17);
    let served = serve_logged(data.path(), &["--plain", "--latency-ms", "40"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let journal = dir.join(".ringdown/journal-0-of-1");
    let mut child = command(&served, &["b2://bkt"], &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_journaled_files(&mut child, &dir, 10, None);
    child.kill().unwrap(); // SIGKILL: as abrupt as a power cut
    child.wait().unwrap();
    // The machine "reboots": the journal was written by another boot, and
    // the journaled files' bytes never reached the disk.
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(
        text.lines().any(|line| line.starts_with("boot\t")),
        "{text}"
    );
    let rebooted: String = text
        .lines()
        .map(|line| {
            if line.starts_with("boot\t") {
                "boot\tbefore-the-power-cut\n".to_string()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&journal, rebooted).unwrap();
    let journaled = journaled_files(&dir);
    assert!(journaled.len() >= 10);
    for name in &journaled {
        let size = std::fs::metadata(dir.join(name)).unwrap().len() as usize;
        std::fs::write(dir.join(name), vec![0u8; size]).unwrap();
    }
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_tree(&dir, &objects);
    let skipped = common::json_lines(&report)
        .iter()
        .filter(|line| line["status"] == "skipped")
        .count();
    assert_eq!(skipped, 0, "skipped on an unconfirmed journal's word");
}

#[test]
fn demo_restores_its_generated_bucket() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args(["demo", "--files", "40", "--large-size", "2MiB"])
        .env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY")
        .env_remove("SSL_CERT_FILE")
        // Run as task 1 of an array job of 4: the demo still restores (and
        // checks) the whole bucket. It restored a quarter and said FAILED.
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "4")
        .env("JOB_COMPLETION_INDEX", "1");
    let output = run_bounded(command);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // --size small's 100 objects of about 1 MiB and one large, the README,
    // and --files small ones: the count said is the count made.
    let text = stderr(&output);
    assert!(
        text.contains(
            "generating 142 objects (40 of up to 32 KiB, 100 of about 1 MiB, 1 of 2 MiB, and a README)"
        ),
        "{text}"
    );
    assert!(text.contains("demo: 142 objects, "), "{text}");
    assert!(text.contains("byte-for-byte equal"), "{text}");
}

/// Ctrl-C while the demo generates its bucket: exit 130, said, and its
/// temporary directory removed (it used to die of the signal and leave
/// hundreds of MB in /tmp).
#[test]
fn demo_interrupted_while_generating_removes_its_files() {
    use std::io::BufRead;
    let temp = tempfile::tempdir().unwrap();
    // SIGINT as a terminal's foreground job has it (see tests/get.rs).
    let mut child = Command::new("env")
        .arg("--default-signal=INT")
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args(["demo", "--files", "40", "--large-size", "4GiB"])
        .env("TMPDIR", temp.path())
        .env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = stderr_lines.next().unwrap().unwrap();
    assert!(first.starts_with("demo: generating "), "{first}");
    common::send_signal(child.id(), "-INT");
    let exit = common::exit_within(&mut child, Duration::from_secs(30), "SIGINT");
    let rest: Vec<String> = stderr_lines.map_while(|line| line.ok()).collect();
    let text = rest.join("\n");
    assert_eq!(exit.code(), Some(130), "{text}");
    assert!(text.contains("demo: interrupted; removed "), "{text}");
    let left: Vec<_> = std::fs::read_dir(temp.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `restore --as-of`: the bucket as it was at an instant, from a `serve`
/// tree with history (`DIR/.versions/BUCKET/NAME/@MS[.hide]`): replaced
/// names come back in their old version (a large one too, in ranged parts
/// by fileId), deleted ones come back, later ones stay out, and each file
/// gets its version's time. A name with 150 versions spans listing pages,
/// so the choice also continues across a page that ends inside a name.
#[test]
fn restores_the_bucket_as_it_was_at_an_instant() {
    const T1: u64 = 1_700_000_100_000;
    const T2: u64 = 1_700_000_200_000;
    const T3: u64 = 1_700_000_300_000;
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let history = data.path().join(".versions/bkt");
    let current = |name: &str, bytes: &[u8], ms: u64| {
        write_file(&bkt, name, bytes);
        let file = std::fs::File::options()
            .write(true)
            .open(bkt.join(name))
            .unwrap();
        file.set_modified(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .unwrap();
    };
    let older = |name: &str, bytes: &[u8], ms: u64| {
        write_file(&history, &format!("{name}/@{ms}"), bytes);
    };
    let hidden = |name: &str, ms: u64| write_file(&history, &format!("{name}/@{ms}.hide"), b"");
    let big_v1 = content("big-v1", 3 * 65536 - 5);
    let big_v3 = content("big-v3", 5 * 65536 + 7);
    current("a.txt", b"a-v3", T3);
    older("a.txt", b"a-v2", T2);
    older("a.txt", b"a-version-1", T1);
    current("big.bin", &big_v3, T3);
    older("big.bin", &big_v1, T1);
    // Deleted at T2.
    older("dir/gone.txt", b"gone-v1", T1);
    hidden("dir/gone.txt", T2);
    // Deleted at T2, uploaded again at T3.
    current("back.txt", b"back-v3", T3);
    hidden("back.txt", T2);
    older("back.txt", b"back-v1", T1);
    // Deleted at T3 (its newest version is the hide marker).
    current("hidden-now.txt", b"here until T3", T1);
    hidden("hidden-now.txt", T3);
    current("new.txt", b"created at T3", T3);
    current("many.txt", b"many-current", T3);
    for i in 0..150u64 {
        older(
            "many.txt",
            &content("many", 1000 + i as usize),
            T1 - 150 + i,
        );
    }
    let served = serve_logged(data.path(), &["--large-file-threshold", "128KiB"]);
    let at = |ms: u64| ringdown::units::format_instant_ms(ms);

    // Between T1 and T2.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("t1");
    let report = out.path().join("t1.jsonl");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--as-of",
            &at(T1 + 50_000),
            "--report",
            report.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // The report says which version each file came from.
    let lines = common::json_lines(&report);
    let line = |name: &str| {
        lines
            .iter()
            .find(|line| line["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(line("a.txt")["upload_timestamp"], T1);
    assert_eq!(line("hidden-now.txt")["upload_timestamp"], T1);
    assert_eq!(line("many.txt")["upload_timestamp"], T1 - 1);
    assert!(
        line("a.txt")["file_id"]
            .as_str()
            .unwrap()
            .starts_with("4_z")
    );
    assert!(
        stderr(&output).contains("as of 2023-11-14T22:15:50Z"),
        "{}",
        stderr(&output)
    );
    let expected: BTreeMap<String, Vec<u8>> = [
        ("a.txt", b"a-version-1".to_vec()),
        ("big.bin", big_v1.clone()),
        ("dir/gone.txt", b"gone-v1".to_vec()),
        ("back.txt", b"back-v1".to_vec()),
        ("hidden-now.txt", b"here until T3".to_vec()),
        ("many.txt", content("many", 1149)),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_string(), bytes))
    .collect();
    assert_tree(&dir, &expected);
    assert_eq!(
        files_under(&dir),
        expected.keys().cloned().collect::<BTreeSet<_>>()
    );
    let mtime = |path: PathBuf| {
        std::fs::metadata(path)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    assert_eq!(mtime(dir.join("a.txt")), T1);
    assert_eq!(mtime(dir.join("big.bin")), T1);
    // The old large version came in ranged parts, by its own fileId.
    let big_ranges = access_records(data.path())
        .iter()
        .filter(|record| record["name"] == "big.bin" && record["method"] == "GET")
        .count();
    assert!(big_ranges >= 3, "{big_ranges} GETs of big.bin");

    // Between T2 and T3: a.txt's second version; gone and back are deleted.
    let dir = out.path().join("t2");
    let output = restore(&served, &["b2://bkt", "--as-of", &at(T2 + 1)], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"a-v2");
    assert_eq!(
        files_under(&dir),
        ["a.txt", "big.bin", "hidden-now.txt", "many.txt"]
            .map(String::from)
            .into()
    );

    // Exactly T3 (inclusive) and without --as-of: the bucket as it is now.
    let now: BTreeMap<String, Vec<u8>> = [
        ("a.txt", b"a-v3".to_vec()),
        ("big.bin", big_v3.clone()),
        ("back.txt", b"back-v3".to_vec()),
        ("new.txt", b"created at T3".to_vec()),
        ("many.txt", b"many-current".to_vec()),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_string(), bytes))
    .collect();
    for (label, args) in [
        (
            "t3",
            vec!["b2://bkt", "--as-of", "2023-11-14T23:18:20+01:00"],
        ),
        ("now", vec!["b2://bkt"]),
    ] {
        let dir = out.path().join(label);
        let output = restore(&served, &args, &dir);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{label}: {}",
            stderr(&output)
        );
        assert_tree(&dir, &now);
        assert_eq!(
            files_under(&dir),
            now.keys().cloned().collect::<BTreeSet<_>>(),
            "{label}"
        );
    }

    // Before T1, only many.txt existed; its version then is on the second
    // listing page (the first holds 100 versions and ends inside its name).
    let dry = restore(
        &served,
        &["b2://bkt", "--dry-run", "--as-of", &at(T1 - 100)],
        &out.path().join("never"),
    );
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert_eq!(String::from_utf8(dry.stdout).unwrap(), "1050\tmany.txt\n");
    let version_pages = api_calls(data.path(), "b2_list_file_versions").len();
    assert!(version_pages >= 2 * 4, "{version_pages} pages of versions");

    // `--files-from` with `--as-of`: the listed names' versions then, from
    // listing pages that jump between names and continue within many.txt's
    // 150 versions; a name created later is missing, and said so.
    let list = out.path().join("list.txt");
    std::fs::write(&list, "many.txt\na.txt\nnew.txt\ndir/gone.txt\n").unwrap();
    let dir = out.path().join("listed");
    let report = out.path().join("listed.jsonl");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--as-of",
            &at(T1 + 50_000),
            "--files-from",
            list.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let listed: BTreeMap<String, Vec<u8>> = [
        ("a.txt", b"a-version-1".to_vec()),
        ("dir/gone.txt", b"gone-v1".to_vec()),
        ("many.txt", content("many", 1149)),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_string(), bytes))
    .collect();
    assert_tree(&dir, &listed);
    assert_eq!(
        files_under(&dir),
        listed.keys().cloned().collect::<BTreeSet<_>>()
    );
    let missing: Vec<_> = common::json_lines(&report)
        .into_iter()
        .filter(|line| line["status"] == "failed")
        .collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["name"], "new.txt");
    assert!(
        missing[0]["reason"]
            .as_str()
            .is_some_and(|error| error.contains("not in the bucket at 2023-11-14T22:15:50Z")),
        "{missing:?}"
    );
    // One listed name whose version then lies ~100 versions deep: the pages
    // within its versions grow, so that is a few calls, not one a version.
    let version_calls = || api_calls(data.path(), "b2_list_file_versions").len();
    std::fs::write(&list, "many.txt\n").unwrap();
    let before = version_calls();
    let dir = out.path().join("deep");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--as-of",
            &at(T1 - 100),
            "--files-from",
            list.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(dir.join("many.txt")).unwrap().len(), 1050);
    let calls = version_calls() - before;
    assert!(calls <= 5, "{calls} listing calls for one name");

    // Bad instants are usage errors, before any network.
    for bad in ["yesterday", "2023-11-14T22:15:00", "2023-02-30"] {
        let output = restore(
            &served,
            &["b2://bkt", "--as-of", bad],
            &out.path().join("x"),
        );
        assert_eq!(output.status.code(), Some(2), "{bad}: {}", stderr(&output));
        assert!(stderr(&output).contains("--as-of"), "{}", stderr(&output));
    }
}

/// `--limit-rate` holds a restore of many small files (one GET each, on
/// every core) to the total: 40 files of 50 kB at 1 MB/s take at least
/// 1.9 s. Only the lower bound is checked.
#[test]
fn limit_rate_paces_small_files_too() {
    let data = tempfile::tempdir().unwrap();
    for i in 0..40 {
        write_file(
            &data.path().join("bkt"),
            &format!("f{i:02}"),
            &content(&format!("f{i}"), 50_000),
        );
    }
    let served = serve(data.path(), false, &[]);
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = restore(&served, &["b2://bkt", "--limit-rate", "1MB/s"], out.path());
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(files_under(out.path()).len(), 40);
    assert!(
        elapsed >= Duration::from_millis(1900),
        "2 MB at 1 MB/s in {elapsed:?}"
    );
}

/// `--files-from`: exactly the listed names (stdin too), found by listing
/// pages that jump from one listed name to the next instead of walking the
/// bucket; a listed name the bucket lacks is a failure in the summary and
/// the report; filters apply to the list.
#[test]
fn files_from_restores_exactly_the_listed_names_without_walking_the_bucket() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    for i in 0..2000 {
        write_file(
            &bkt,
            &format!("n/{i:04}.txt"),
            format!("name {i}").as_bytes(),
        );
    }
    let big = content("big", 3 * 65536 + 5);
    write_file(&bkt, "big.bin", &big);
    let served = serve_logged(data.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    let list = out.path().join("list.txt");
    // Saved on Windows: a byte-order mark and CRLF line ends.
    let mut text = String::from(
        "\u{feff}# incident 42\r\nn/0005.txt\r\nbig.bin\nabsent.txt\n\nn/1500.txt\nn/0005.txt\n",
    );
    for i in 100..120 {
        text.push_str(&format!("n/{i:04}.txt\n"));
    }
    std::fs::write(&list, text).unwrap();
    let dir = out.path().join("restored");
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &[
            "b2://bkt",
            "--files-from",
            list.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("absent.txt"),
        "{}",
        stderr(&output)
    );
    let mut expected: BTreeMap<String, Vec<u8>> = [5, 1500]
        .into_iter()
        .chain(100..120)
        .map(|i| (format!("n/{i:04}.txt"), format!("name {i}").into_bytes()))
        .collect();
    expected.insert("big.bin".into(), big.clone());
    assert_tree(&dir, &expected);
    assert_eq!(
        files_under(&dir),
        expected.keys().cloned().collect::<BTreeSet<_>>()
    );
    let failed: Vec<_> = common::json_lines(&report)
        .into_iter()
        .filter(|line| line["status"] != "ok")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["name"], "absent.txt");
    assert_eq!(failed[0]["status"], "failed");
    // The listing fetched about what was asked for, not the bucket's 2,001
    // names (~300 bytes of JSON each).
    let listing_bytes: u64 = api_calls(data.path(), "b2_list_file_names")
        .iter()
        .map(|record| record["bytes_sent"].as_u64().unwrap())
        .sum();
    assert!(listing_bytes < 40_000, "{listing_bytes} bytes of listing");

    // From stdin, relative to a prefix, with a filter; nothing missing.
    let dir = out.path().join("prefixed");
    let mut command = command(
        &served,
        &["b2://bkt/n", "--files-from", "-", "--exclude", "01*"],
        &dir,
    );
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"0007.txt\n0110.txt\n1999.txt\n").unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        files_under(&dir),
        ["0007.txt", "1999.txt"].map(String::from).into()
    );

    // A list with no names, or not UTF-8, is a usage error.
    std::fs::write(&list, "# nothing\n\n").unwrap();
    let output = restore(
        &served,
        &["b2://bkt", "--files-from", list.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    std::fs::write(&list, b"ok.txt\nbad\xff.txt\n").unwrap();
    let output = restore(
        &served,
        &["b2://bkt", "--files-from", list.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("line 2 is not UTF-8"),
        "{}",
        stderr(&output)
    );
    std::fs::write(&list, "ok.txt\n# comment\nbell\u{7}.txt\n").unwrap();
    let output = restore(
        &served,
        &["b2://bkt", "--files-from", list.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("line 3 is not a B2 file name: a control character"),
        "{}",
        stderr(&output)
    );
}

/// A large object's `attempts` in `--report` is what `--max-attempts`
/// bounds: the most attempts one of its chunks took. It used to be the
/// object's download rounds, 1 however often its chunks were retried.
#[test]
fn a_large_objects_report_counts_its_chunks_attempts() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    let size = 32 * 65536;
    write_file(&bkt, "large.bin", &content("large", size));
    write_file(&bkt, "small.txt", &content("small", 1000));
    let served = serve_logged(data.path(), &["--fail-rate", "0.3", "--seed", "7"]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let report = out.path().join("report.jsonl");
    let output = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines = common::json_lines(&report);
    let large = lines
        .iter()
        .find(|line| line["name"] == "large.bin")
        .unwrap();
    let attempts = large["attempts"].as_u64().unwrap();
    let gets = access_records(data.path())
        .iter()
        .filter(|record| record["name"] == "large.bin" && record["method"] == "GET")
        .count() as u64;
    let refused = access_records(data.path())
        .iter()
        .filter(|record| record["name"] == "large.bin" && record["status"] == 503)
        .count() as u64;
    // 32 chunks, 30% of answers refused: some chunk needed a second try.
    assert!(refused > 0, "no GET of large.bin was refused");
    assert!((2..=15).contains(&attempts), "{large}");
    assert!(
        attempts <= refused + 1 && attempts < gets,
        "{gets} GETs: {large}"
    );
}

/// 20 objects of 100 kB served slowly enough that 1 s tokens expire
/// mid-run, and one authorization answered: the next get `answer`
/// (`--authorize-max-answer`).
fn serve_expiring_tokens(data: &Path, answer: &str) -> Served {
    numbered_objects(&data.join("bkt"), "t", 20, |_| 100_000);
    serve_logged(
        data,
        &[
            "--token-ttl-s",
            "1",
            "--authorize-max",
            "1",
            "--authorize-max-answer",
            answer,
            "--rate-per-conn",
            "200kB/s",
        ],
    )
}

/// Tokens expire mid-run and the API refuses to authorize again (an
/// outage): requests refused for the same token share the failed refresh
/// instead of each making one, one behind another, 5 tries each (20
/// objects took minutes, looking hung). The run ends soon, every object
/// failed and reported.
#[test]
fn a_failed_refresh_is_shared_not_repeated_per_request() {
    let data = tempfile::tempdir().unwrap();
    let served = serve_expiring_tokens(data.path(), "outage");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let started = Instant::now();
    let output = run_bounded(command_tuned(
        &served,
        &["b2://bkt", "--max-attempts", "3"],
        &dir,
        &[
            "--cores",
            "1",
            "--connections",
            "2",
            "--retry-base-ms",
            "5",
            "--retry-max-ms",
            "50",
        ],
    ));
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("re-authorizing"), "{text}");
    let refreshes = api_calls(data.path(), "b2_authorize_account").len();
    // The first, then one refresh (of 5 tries) per
    // REAUTHORIZE_FAILURE_SHARED_MS (10 s) at most.
    assert!(refreshes <= 11, "{refreshes} authorizations:\n{text}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// Tokens expire mid-run and re-authorizing is refused for good: the key
/// was deleted (401), or the account's daily transaction cap is spent (403
/// `transaction_cap_exceeded`). Either ends the run at once, as it would
/// have at the start, with its own exit code and advice, rather than each
/// object backing off through its attempts.
#[test]
fn a_refused_refresh_ends_the_run_with_its_reason() {
    for (answer, code, says) in [
        ("cap", 1, "daily cap is spent"),
        ("revoked", 3, "check B2_APPLICATION_KEY_ID"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let served = serve_expiring_tokens(data.path(), answer);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("dir");
        let started = Instant::now();
        // Backoffs long enough that attempts through them would show.
        let output = run_bounded(command_tuned(
            &served,
            &["b2://bkt", "--quiet"],
            &dir,
            &[
                "--cores",
                "1",
                "--connections",
                "2",
                "--retry-base-ms",
                "2000",
            ],
        ));
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(code), "{answer}: {text}");
        assert!(text.contains(says), "{answer}: {text}");
        // `--quiet`: the error once (it was said when it came too), and no
        // line per object the stop left unstarted (h23).
        assert_eq!(
            text.matches("ringdown: error: ").count(),
            1,
            "{answer}: {text}"
        );
        assert!(!text.contains("not started"), "{answer}: {text}");
        let refreshes = api_calls(data.path(), "b2_authorize_account").len();
        assert!(
            refreshes <= 3,
            "{answer}: {refreshes} authorizations:\n{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{answer}: took {:?}:\n{text}",
            started.elapsed()
        );
    }
}

/// A selection that restores nothing exits 0 but says so, and why: a PREFIX
/// with no file (a typo, or an object's name given as a folder), or filters
/// that let nothing through. It used to end at "0 files restored".
#[test]
fn nothing_selected_is_said() {
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "photos/a.jpg", b"a");
    write_file(&bkt, "photos/b.jpg", b"b");
    let served = serve(data.path(), false, &[]);
    let out = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (&["b2://bkt/nosuch"][..], "lists no file"),
        (
            &["b2://bkt/photos/a.jpg"],
            "for one object, use `ringdown get",
        ),
        (
            &["b2://bkt/photos", "--include", "photos/*"],
            "none of the 2 names under b2://bkt/photos/ passed",
        ),
    ] {
        let output = restore(&served, args, &out.path().join("dir"));
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{text}");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    let output = restore(&served, &["b2://bkt/photos"], &out.path().join("dir"));
    assert!(
        !stderr(&output).contains("nothing to restore"),
        "{}",
        stderr(&output)
    );
}

/// A file past RLIMIT_FSIZE fails that file (EFBIG), not the process:
/// SIGXFSZ's default action killed it (exit 153), with no word said.
#[test]
fn a_file_size_limit_fails_the_file_not_the_process() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIP: prlimit not installed");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let bkt = data.path().join("bkt");
    write_file(&bkt, "big.bin", &content("big", 3 << 20));
    write_file(&bkt, "small.txt", b"small");
    let served = serve(data.path(), false, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let mut command = Command::new("prlimit");
    command.args(["--fsize=1048576", "--"]);
    let inner = command_tuned(&served, &["b2://bkt"], &dir, &["--direct-io", "off"]);
    command.arg(inner.get_program()).args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let output = run_bounded(command);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("File too large"), "{text}");
    assert_eq!(std::fs::read(dir.join("small.txt")).unwrap(), b"small");
    assert!(!dir.join("big.bin").exists());
}

/// Another mount inside DIR cannot take a rename from
/// DIR/.ringdown/partial (EXDEV): its files fail before they are
/// downloaded, saying why, instead of after, every run again. A bind mount
/// of DIR's own file system too: it has DIR's device, and a check of the
/// device alone let its files be downloaded to fail at the rename.
#[test]
fn a_mount_inside_dir_fails_its_files_before_downloading_them() {
    let bind_source = tempfile::tempdir().unwrap();
    let bind_source = bind_source.path().to_str().unwrap().to_string();
    for mount in [
        vec!["-t", "tmpfs", "-o", "size=1M", "tmpfs"],
        vec!["--bind", bind_source.as_str()],
    ] {
        let data = tempfile::tempdir().unwrap();
        let bkt = data.path().join("bkt");
        write_file(&bkt, "a.txt", b"a");
        write_file(&bkt, "sub/b.txt", b"b");
        let served = serve_logged(data.path(), &[]);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("dir");
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let mounted = Command::new("mount")
            .args(&mount)
            .arg(&sub)
            .output()
            .is_ok_and(|output| output.status.success());
        if !mounted {
            eprintln!("SKIP: cannot mount {mount:?} (not root?)");
            return;
        }
        let output = restore(&served, &["b2://bkt"], &dir);
        let _ = Command::new("umount").arg(&sub).output();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{mount:?}: {text}");
        assert!(text.contains("another mount than DIR"), "{mount:?}: {text}");
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"a");
        let fetched_b = access_records(data.path())
            .iter()
            .any(|record| record["name"] == "sub/b.txt" && record["method"] == "GET");
        assert!(!fetched_b, "{mount:?}: sub/b.txt was downloaded");
    }
}

/// A download host in front of `upstream` (a plain `ringdown serve`'s
/// origin, set once it runs) that loses the second GET it finds sent ahead
/// (HTTP/1.1 pipelining): it never answers that one, and answers the next
/// in its place, as a proxy that drops a pipelined request does. Answers
/// wait 5 ms, a round trip the client sends ahead for. Returns its origin
/// and how many GETs it lost.
fn lossy_pipelining_origin(
    upstream: std::sync::Arc<std::sync::OnceLock<String>>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let lost = std::sync::Arc::new(AtomicUsize::new(0));
    let sent_ahead = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&lost);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (upstream, lost, sent_ahead) = (
                std::sync::Arc::clone(&upstream),
                std::sync::Arc::clone(&lost),
                std::sync::Arc::clone(&sent_ahead),
            );
            std::thread::spawn(move || {
                let read_head = |reader: &mut dyn BufRead| -> Option<String> {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).ok()? == 0 {
                            return None;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            return Some(head);
                        }
                    }
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let address = upstream.get().unwrap().trim_start_matches("http://");
                let up = std::net::TcpStream::connect(address).unwrap();
                let mut up_reader = BufReader::new(up.try_clone().unwrap());
                let mut up_writer = up;
                let mut pipelined = false;
                while let Some(request) = read_head(&mut reader) {
                    if pipelined && sent_ahead.fetch_add(1, Ordering::Relaxed) == 1 {
                        lost.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    up_writer.write_all(request.as_bytes()).unwrap();
                    let Some(head) = read_head(&mut up_reader) else {
                        return;
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    up_reader.read_exact(&mut body).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                    if writer.write_all(head.as_bytes()).is_err()
                        || writer.write_all(&body).is_err()
                    {
                        return;
                    }
                    // Was the next GET here before this answer ended?
                    let mut byte = [0u8; 1];
                    writer.set_nonblocking(true).unwrap();
                    pipelined = !reader.buffer().is_empty()
                        || matches!(writer.peek(&mut byte), Ok(n) if n > 0);
                    writer.set_nonblocking(false).unwrap();
                }
            });
        }
    });
    (origin, counted)
}

/// The answer to a GET sent ahead that names another version is taken as
/// the connection out of step (an origin or proxy lost a pipelined GET and
/// answered the next in its place), not as the object replaced: it goes
/// again, alone, and the run sends one request at a time from then on.
/// Every file is restored. It used to fail the object for good, as
/// "replaced" (exit 1; h24).
#[test]
fn an_answer_for_another_pipelined_get_is_out_of_step_not_a_replacement() {
    let data = tempfile::tempdir().unwrap();
    let objects = numbered_objects(&data.path().join("bkt"), "o", 40, |i| 30_000 + i);
    let upstream = std::sync::Arc::new(std::sync::OnceLock::new());
    let (proxy, lost) = lossy_pipelining_origin(std::sync::Arc::clone(&upstream));
    let served = serve(data.path(), true, &["--download-url", &proxy]);
    upstream.set(served.realm.clone()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let tuning = ["--cores", "1", "--connections", "2", "--retry-base-ms", "5"];
    let output = run_bounded(command_tuned(&served, &["b2://bkt"], &dir, &tuning));
    let text = stderr(&output);
    assert_eq!(lost.load(std::sync::atomic::Ordering::Relaxed), 1, "{text}");
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("it answers pipelined requests out of step"),
        "{text}"
    );
    assert_tree(&dir, &objects);
}

/// `--dry-run` lists a name as it is into a pipe (a program reads it), and
/// with its C1 controls escaped on a terminal, where U+009B (CSI) could
/// recolour the screen or move the cursor, as `ls` escapes them. (It wrote
/// them raw to both.)
#[test]
fn a_dry_run_escapes_c1_controls_on_a_terminal_only() {
    const NAME: &str = "esc\u{9b}31mred.txt";
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` (util-linux) to give the run a terminal");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    write_file(&data.path().join("bkt"), NAME, b"x");
    let served = serve(data.path(), true, &[]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dir");
    let piped = restore(&served, &["b2://bkt", "--dry-run"], &dir);
    assert_eq!(piped.status.code(), Some(0), "{}", stderr(&piped));
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        format!("1\t{NAME}\n")
    );
    // The same command on a terminal (`script` runs it on a pty and copies
    // what it wrote).
    let run = command(&served, &["b2://bkt", "--dry-run"], &dir);
    let mut line = vec![run.get_program().to_owned()];
    line.extend(run.get_args().map(|arg| arg.to_owned()));
    let line: Vec<String> = line
        .iter()
        .map(|arg| format!("'{}'", arg.to_str().unwrap()))
        .collect();
    let mut on_terminal = Command::new("script");
    on_terminal.args(["-q", "-e", "-c", &line.join(" "), "/dev/null"]);
    for (key, value) in run.get_envs() {
        match value {
            Some(value) => on_terminal.env(key, value),
            None => on_terminal.env_remove(key),
        };
    }
    let shown = run_bounded(on_terminal);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(0), "{text}");
    assert!(text.contains("1\tesc\\u{9b}31mred.txt"), "{text:?}");
    assert!(!text.contains('\u{9b}'), "{text:?}");
    // The --report of a real run holds the name JSON-escaped, the same
    // string to a reader and nothing a terminal acts on under `cat`.
    let report = out.path().join("report.jsonl");
    let real = restore(
        &served,
        &["b2://bkt", "--report", report.to_str().unwrap()],
        &dir,
    );
    assert_eq!(real.status.code(), Some(0), "{}", stderr(&real));
    let line = std::fs::read_to_string(&report).unwrap();
    assert!(line.contains(r#""name":"esc\u009b31mred.txt""#), "{line:?}");
    let record: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(record["name"], NAME);
    assert_eq!(std::fs::read(dir.join(NAME)).unwrap(), b"x");
}

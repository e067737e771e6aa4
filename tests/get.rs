//! `ringdown get` end to end: the built binary against `ringdown serve`
//! (TLS and plain), a plain-URL origin, every fault flag, and bad input.
//! Correctness only: speed lives in benches/ and scripts/bench*.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Served, content, exit_within, send_signal, serve, sha1_hex, write_file};

/// Small parts and buffers so a few hundred KiB exercise many chunks, both
/// cores, several connections and the reserve buffer.
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

fn ringdown(served: &Served, args: &[&str]) -> Output {
    run_bounded(get_command(served, args))
}

fn get_command(served: &Served, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .arg("get")
        .args(args)
        .args(["--realm", &served.realm])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .env_remove("SSL_CERT_FILE")
        .env_remove("B2_REALM");
    if let Some(ca) = &served.ca_file {
        command.arg("--ca-file").arg(ca);
    }
    command
}

trait RunBounded {
    fn run_bounded(&mut self) -> Output;
}

impl RunBounded for Command {
    fn run_bounded(&mut self) -> Output {
        let command = std::mem::replace(self, Command::new("true"));
        run_bounded(command)
    }
}

/// Runs a command with a deadline, so an engine hang fails the test instead
/// of hanging CI.
fn run_bounded(command: Command) -> Output {
    common::run_with_deadline(command, std::time::Duration::from_secs(180), |_| {})
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\n{}",
        output.status.code(),
        stderr(output)
    );
}

/// Exit code `code`, and stderr says `needle`.
fn assert_exit(output: &Output, code: i32, needle: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

/// No `.ringdown-*.part` left in `dir`.
fn assert_no_temp(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".ringdown-"),
            "temporary file left behind: {name}"
        );
    }
}

struct Fixture {
    data: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Fixture {
    fn new(files: &[(&str, usize)]) -> Fixture {
        let data = tempfile::tempdir().unwrap();
        for (name, size) in files {
            let relative = format!("bkt/{name}");
            write_file(data.path(), &relative, &content(name, *size));
            // The fileId (from the mtime) is part of the server's fault key:
            // a fixed mtime makes every run roll the same dice.
            std::fs::File::options()
                .write(true)
                .open(data.path().join(&relative))
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
                .unwrap();
        }
        Fixture {
            data,
            out: tempfile::tempdir().unwrap(),
        }
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }

    fn dest_str(&self, name: &str) -> String {
        self.dest(name).to_string_lossy().into_owned()
    }
}

fn assert_same(path: &Path, name: &str, size: usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len(), size, "size of {name}");
    assert_eq!(
        sha1_hex(&bytes),
        sha1_hex(&content(name, size)),
        "content of {name}"
    );
}

const PART: usize = 64 * 1024;

#[test]
fn sizes_around_part_boundaries_over_tls_and_plain() {
    let sizes = [0, 1, PART - 1, PART, PART + 1, 17 * PART + 4097];
    let files: Vec<(String, usize)> = sizes
        .iter()
        .map(|&size| (format!("size-{size}.bin"), size))
        .collect();
    let refs: Vec<(&str, usize)> = files.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let fixture = Fixture::new(&refs);
    for plain in [false, true] {
        let served = serve(fixture.data.path(), plain, &[]);
        for (name, size) in &files {
            let dest = fixture.dest_str(name);
            let mut args = vec![format!("b2://bkt/{name}"), dest.clone(), "--force".into()];
            args.extend(SMALL_TUNING.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = ringdown(&served, &args);
            assert_ok(&output);
            assert_same(Path::new(&dest), name, *size);
            assert!(stderr(&output).contains("verified"), "{}", stderr(&output));
        }
        assert_no_temp(fixture.out.path());
    }
}

/// Both write paths, forced: `auto` picks by size (and falls back where the
/// file system's alignment does not suit), so each path is named here.
#[test]
fn direct_io_on_and_off_write_the_same_bytes() {
    let sizes = [1, PART - 1, 3 * PART, 17 * PART + 4097];
    let files: Vec<(String, usize)> = sizes
        .iter()
        .map(|&size| (format!("dio-{size}.bin"), size))
        .collect();
    let refs: Vec<(&str, usize)> = files.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let fixture = Fixture::new(&refs);
    let served = serve(fixture.data.path(), false, &[]);
    for mode in ["on", "off"] {
        for (name, size) in &files {
            // A file below one block gets no direct write (its one partial
            // block goes through the page cache), and is not said to.
            let said = if mode == "on" && *size >= 4096 {
                "O_DIRECT: yes"
            } else {
                "O_DIRECT: no"
            };
            let dest = fixture.dest_str(name);
            let mut args = vec![format!("b2://bkt/{name}"), dest.clone(), "--force".into()];
            args.extend(SMALL_TUNING.iter().map(|s| s.to_string()));
            args.extend(["--direct-io".to_string(), mode.to_string()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = ringdown(&served, &args);
            assert_ok(&output);
            assert_same(Path::new(&dest), name, *size);
            assert!(
                stderr(&output).contains(said),
                "{mode}: {}",
                stderr(&output)
            );
        }
    }
    assert_no_temp(fixture.out.path());
}

#[test]
fn names_with_spaces_unicode_percent_and_plus() {
    let names = [
        "a b.txt",
        "ünï cødé.bin",
        "100% real.txt",
        "1+1=2.txt",
        "dir/sub dir/x y.bin",
    ];
    let files: Vec<(&str, usize)> = names.iter().map(|n| (*n, 70_000)).collect();
    let fixture = Fixture::new(&files);
    let served = serve(fixture.data.path(), false, &[]);
    for name in names {
        // DEST is the directory: the object's base name is appended.
        let output = ringdown(
            &served,
            &[
                &format!("b2://bkt/{name}"),
                &fixture.dest_str(""),
                "--force",
            ],
        );
        assert_ok(&output);
        let base = name.rsplit('/').next().unwrap();
        assert_same(&fixture.dest(base), name, 70_000);
    }
}

#[test]
fn large_file_is_verified_with_large_file_sha1_and_stats_json_is_written() {
    let fixture = Fixture::new(&[("large.bin", 300_000)]);
    let served = serve(
        fixture.data.path(),
        false,
        &["--large-file-threshold", "100KiB"],
    );
    let stats = fixture.out.path().join("stats.json");
    let dest = fixture.dest_str("large.bin");
    let mut args = vec![
        "b2://bkt/large.bin",
        &dest,
        "--stats-json",
        stats.to_str().unwrap(),
    ];
    args.extend_from_slice(SMALL_TUNING);
    let output = ringdown(&served, &args);
    assert_ok(&output);
    assert_same(&fixture.dest("large.bin"), "large.bin", 300_000);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["command"], "get");
    assert_eq!(json["bytes"], 300_000);
    assert_eq!(json["verified"]["ok"], 1);
    // One file, one `file` sample (the engine's; get recorded a second).
    assert_eq!(json["stages"]["file"]["count"], 1, "{json}");
    for stage in [
        "connect",
        "ttfb",
        "recv",
        "buffer_wait",
        "write",
        "hash",
        "chunk",
    ] {
        assert!(
            json["stages"][stage]["count"].as_u64().unwrap() > 0,
            "stage {stage} recorded"
        );
        assert!(json["stages"][stage]["hdr_v2_deflate_b64"].is_string());
    }
    // 300,000 bytes in 64 KiB parts: 5 chunks, each one ranged request.
    assert_eq!(json["stages"]["chunk"]["count"], 5);
    // Too few inputs to time both SHA1 feeds: said as null, not guessed.
    assert!(
        json.get("sha1_feed").is_some_and(|feed| feed.is_null()),
        "{json}"
    );
}

#[test]
fn plain_url_origin_with_and_without_sha1() {
    let fixture = Fixture::new(&[("u.bin", 200_000)]);
    let served = serve(fixture.data.path(), true, &[]);
    let (token, _) = served.authorize();
    let url = format!("{}/file/bkt/u.bin?Authorization={token}", served.realm);
    let dest = fixture.dest_str("u.bin");
    let mut args = vec![url.as_str(), &dest];
    args.extend_from_slice(SMALL_TUNING);
    // The origin sends x-bz-content-sha1: verified.
    let output = ringdown(&served, &args);
    assert_ok(&output);
    assert_same(Path::new(&dest), "u.bin", 200_000);
    // A wrong --sha1 is a mismatch: retried once, then exit 1, nothing at DEST.
    std::fs::remove_file(&dest).unwrap();
    let wrong = "0".repeat(40);
    let mut wrong_args = args.clone();
    wrong_args.extend(["--sha1", &wrong]);
    let output = ringdown(&served, &wrong_args);
    assert_exit(&output, 1, "SHA1 mismatch");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
    // The token is in the URL's query: it must never be printed.
    assert!(
        !stderr(&output).contains(&token),
        "token leaked: {}",
        stderr(&output)
    );
}

/// `https://` to a plain HTTP port names the likely cause: the message was
/// rustls' "received corrupt message of type InvalidContentType" (h25).
#[test]
fn https_to_a_plain_http_port_says_to_use_http() {
    let fixture = Fixture::new(&[("p.bin", 1000)]);
    let served = serve(fixture.data.path(), true, &[]);
    assert!(served.realm.starts_with("http://"), "{}", served.realm);
    let (token, _) = served.authorize();
    let https = served.realm.replacen("http://", "https://", 1);
    let url = format!("{https}/file/bkt/p.bin?Authorization={token}");
    let dest = fixture.dest_str("p.bin");
    let output = ringdown(&served, &[&url, &dest, "--max-attempts", "1"]);
    assert_exit(
        &output,
        1,
        "as a plain HTTP port does (for one, use http://)",
    );
    assert_no_temp(fixture.out.path());
}

/// A plain-URL origin that ignores Range and sends no Content-Length:
/// `chunked` bodies (in 10,000-byte chunks), else HTTP/1.0 bodies delimited
/// by the close. Its answer number `cut_answer` (0: the probe) stops
/// halfway through, closing the connection.
fn lengthless_origin(body: Vec<u8>, chunked: bool, cut_answer: usize) -> String {
    use std::io::{BufRead, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let answered = AtomicUsize::new(0);
    let address = test_origin(move |reader, writer| {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let cut = answered.fetch_add(1, Ordering::SeqCst) == cut_answer;
            let sent = if cut { body.len() / 2 } else { body.len() };
            let mut out = Vec::new();
            if chunked {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                for piece in body[..sent].chunks(10_000) {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                if !cut {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            } else {
                out.extend_from_slice(b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n");
                out.extend_from_slice(&body[..sent]);
            }
            let _ = writer.write_all(&out);
            if cut || !chunked {
                // Half a chunked body is cut by the close too.
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    });
    format!("http://{address}/l.bin")
}

/// An origin that ignores Range and sends no Content-Length (a chunked
/// body: CGI, on-the-fly filters; or HTTP/1.0 up to the close) is fetched
/// in one stream, its size known at its end, verified with --sha1, and
/// fetched again from byte 0 when a transfer is cut. It used to be refused:
/// "the origin ignores Range and sends no Content-Length" (h25 #5).
#[test]
fn a_body_without_content_length_is_streamed_whole() {
    let size = 300_007;
    let body = content("l.bin", size);
    let sha1 = sha1_hex(&body);
    // (chunked, the answer cut: 1 is the first download after the probe)
    for (chunked, cut) in [
        (true, usize::MAX),
        (false, usize::MAX),
        (true, 1),
        (false, 1),
    ] {
        let url = lengthless_origin(body.clone(), chunked, cut);
        let fixture = Fixture::new(&[]);
        let dest = fixture.dest_str("l.bin");
        let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
            .args(["get", url.as_str(), &dest, "--sha1", &sha1])
            .args(["--retry-base-ms", "5"])
            .run_bounded();
        assert_ok(&output);
        let text = stderr(&output);
        assert!(text.contains("sends no Content-Length"), "{text}");
        assert!(text.contains(&format!("{size} bytes")), "{text}");
        assert!(text.contains("verified"), "{text}");
        let retried = !text.contains("retries: 0,");
        assert_eq!(retried, cut == 1, "chunked {chunked}, cut {cut}: {text}");
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert_no_temp(fixture.out.path());
    }
    // A wrong --sha1: fetched twice, then a mismatch, nothing left.
    let url = lengthless_origin(body.clone(), true, usize::MAX);
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("l.bin");
    let wrong = "0".repeat(40);
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", url.as_str(), &dest, "--sha1", &wrong])
        .run_bounded();
    assert_exit(&output, 1, "SHA1 mismatch");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
    // --limit-rate paces such a body too (it was refused, h28 #2): 300 kB
    // at 100 kB/s take at least 2.5 s (the first 100 ms burst is free).
    // At 500 B/s, below the 1 KiB/s floor of a trickling server, a wait is
    // over 30 s: it goes on (the waits are ours, not the server's), and a
    // signal ends it. Only lower bounds are checked: a busy machine can
    // only be slower.
    for rate in ["100kB/s", "500B/s"] {
        let url = lengthless_origin(body.clone(), true, usize::MAX);
        let fixture = Fixture::new(&[]);
        let dest = fixture.dest_str("l.bin");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
        command.args([
            "get",
            url.as_str(),
            &dest,
            "--sha1",
            &sha1,
            "--limit-rate",
            rate,
        ]);
        if rate == "500B/s" {
            command.args(["--timeout-s", "1"]);
            let mut child = command
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_secs(4));
            assert!(
                child.try_wait().unwrap().is_none(),
                "the paced body was cut short"
            );
            send_signal(child.id(), "-TERM");
            let output = child.wait_with_output().unwrap();
            assert_eq!(output.status.code(), Some(143), "{}", stderr(&output));
            continue;
        }
        let started = std::time::Instant::now();
        let output = command.run_bounded();
        let elapsed = started.elapsed();
        assert_ok(&output);
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert!(
            elapsed >= std::time::Duration::from_millis(2500),
            "300 kB at 100 kB/s in {elapsed:?}"
        );
    }
}

/// An origin that answers every `Range` with the whole object (Python's
/// http.server, some CDNs): the probe sees the 200, the object comes in one
/// GET, and a reset mid-body starts over from byte 0 when the retry's range
/// is ignored too. Without this, every ranged chunk failed until
/// --max-attempts ran out.
#[test]
fn over_a_long_round_trip_get_widens_to_every_connection() {
    let size = 200 * 16384 + 5;
    let fixture = Fixture::new(&[("wide.bin", size)]);
    let log = fixture.out.path().join("access.jsonl");
    let served = serve(
        fixture.data.path(),
        false,
        &["--latency-ms", "40", "--access-log", log.to_str().unwrap()],
    );
    let dest = fixture.dest_str("wide.bin");
    // Default connections (16 per core, 4 taking chunks until the round
    // trip is known to be long: after 128 answers of the 200).
    let mut args = vec!["b2://bkt/wide.bin", &dest, "--cores", "1"];
    args.extend(common::SMALL_CHUNKS);
    let output = ringdown(&served, &args);
    assert_ok(&output);
    assert_same(Path::new(&dest), "wide.bin", size);
    let connections = common::connections_serving_ranges(&log, "wide.bin");
    // The probe's connection, the 4 chunk takers, then the others.
    assert!(
        connections.len() > 5,
        "ranges came over {} connections",
        connections.len()
    );
}

#[test]
fn an_origin_that_ignores_range_gets_one_whole_get_and_restarts_after_a_reset() {
    let size = 5 * PART + 777;
    let fixture = Fixture::new(&[("w.bin", size)]);
    let mut restarted = 0;
    for seed in 0..6 {
        let reset_rate = if seed == 0 { "0" } else { "0.5" };
        let seed = seed.to_string();
        let log = fixture.out.path().join(format!("access-{seed}.jsonl"));
        let served = serve(
            fixture.data.path(),
            seed == "0",
            &[
                "--ignore-range-rate",
                "1",
                "--reset-rate",
                reset_rate,
                "--seed",
                &seed,
                "--access-log",
                log.to_str().unwrap(),
            ],
        );
        let (token, _) = served.authorize();
        let url = format!("{}/file/bkt/w.bin?Authorization={token}", served.realm);
        let dest = fixture.dest_str(&format!("w-{seed}.bin"));
        let mut args = vec![url.as_str(), &dest, "--max-attempts", "40"];
        args.extend_from_slice(SMALL_TUNING);
        let output = ringdown(&served, &args);
        assert_ok(&output);
        assert_same(Path::new(&dest), "w.bin", size);
        let text = stderr(&output);
        assert!(text.contains("ignores Range"), "{text}");
        // Beside the probe (bytes=0-0, its body never read), whole-object
        // GETs only: no part of the object was asked for from its start.
        let log = std::fs::read_to_string(&log).unwrap();
        let downloads: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|record| record["method"] == "GET" && record["name"] == "w.bin")
            .filter(|record| record["range"] != "bytes=0-0")
            .collect();
        assert!(
            downloads.iter().all(|record| record["status"] == 200),
            "{downloads:?}"
        );
        if seed == "0" {
            assert_eq!(downloads.len(), 1, "{downloads:?}");
            assert!(downloads[0]["range"].is_null(), "{downloads:?}");
        }
        // Reset, then resumed with a Range the origin ignored: the whole
        // object again, written from byte 0.
        let resets = downloads.iter().filter(|r| r["fault"] == "reset").count();
        let resumed = downloads.iter().filter(|r| r["range"].is_string()).count();
        if resets >= 1 && resumed >= 1 {
            assert!(!text.contains("retries: 0,"), "{text}");
            restarted += 1;
        }
    }
    assert!(restarted >= 1, "no seed reset a transfer and resumed it");
    assert_no_temp(fixture.out.path());
}

/// SIGTERM cuts a whole-object GET (an origin that ignores Range) short
/// instead of waiting for all of it: exit 143, nothing at DEST, no
/// temporary file (nothing can resume it). Before, it finished the object
/// (at 200 KB/s here: 20 s) and exited 0.
#[test]
fn a_signal_cuts_a_whole_object_get_short() {
    let size = 4 << 20;
    let fixture = Fixture::new(&[("w.bin", size)]);
    let served = serve(
        fixture.data.path(),
        true,
        &["--ignore-range-rate", "1", "--rate-per-conn", "200KB/s"],
    );
    let (token, _) = served.authorize();
    let url = format!("{}/file/bkt/w.bin?Authorization={token}", served.realm);
    let dest = fixture.dest_str("w.bin");
    let child = get_command(&served, &[&url, &dest])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    signal_while_waiting(child, "it should still be downloading", "-TERM", 143, 5);
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

/// A download nothing can resume (an origin that ignores Range) goes into
/// the partial file named from DEST too: a run killed with SIGKILL (an OOM
/// kill, a systemd stop timeout) leaves it, and the next run into DEST
/// starts over in it. Before, its name was random: each killed run left a
/// hidden file of the object's size for good (h25: three kills of a
/// 100 MB download left 401 MB beside DEST).
#[test]
fn a_killed_unresumable_get_leaves_nothing_after_the_next_run() {
    let size = 4 << 20;
    let fixture = Fixture::new(&[("w.bin", size)]);
    let range_ignored = ["--ignore-range-rate", "1"];
    let slow = serve(
        fixture.data.path(),
        true,
        &[&range_ignored[..], &["--rate-per-conn", "200KB/s"]].concat(),
    );
    let dest = fixture.dest_str("w.bin");
    let partial_files = || -> Vec<String> {
        std::fs::read_dir(fixture.out.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".ringdown-") && name.ends_with(".part"))
            .collect()
    };
    for _ in 0..2 {
        let (token, _) = slow.authorize();
        let url = format!("{}/file/bkt/w.bin?Authorization={token}", slow.realm);
        let mut child = get_command(&slow, &[&url, &dest])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while partial_files().is_empty() {
            assert!(started.elapsed().as_secs() < 30, "no partial file appeared");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(partial_files().len(), 1, "{:?}", partial_files());
    let fast = serve(fixture.data.path(), true, &range_ignored);
    let (token, _) = fast.authorize();
    let url = format!("{}/file/bkt/w.bin?Authorization={token}", fast.realm);
    let output = ringdown(&fast, &[&url, &dest]);
    assert_ok(&output);
    assert_same(Path::new(&dest), "w.bin", size);
    assert_no_temp(fixture.out.path());
}

/// An origin that answers every range with the whole object breaks HTTP
/// the same way each time: its attempts do not back off ever longer (at
/// the defaults, 15 attempts up to 30 s apart held the run 3 minutes;
/// `run_bounded` allows 180 s), they wait the base backoff each.
#[test]
fn ranges_answered_with_the_whole_object_fail_without_growing_backoff() {
    let size = 3 * PART + 5;
    let fixture = Fixture::new(&[("whole.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--ignore-range-rate", "1"]);
    let dest = fixture.dest_str("whole.bin");
    // The default backoff (250 ms growing to 30 s) and attempts (15).
    let args = [
        "b2://bkt/whole.bin",
        &dest,
        "--part-size",
        "64KiB",
        "--buffer-size",
        "16KiB",
    ];
    let started = std::time::Instant::now();
    let output = ringdown(&served, &args);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("200 (whole object) where a range was requested after 15 attempts"),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

/// A plain-HTTP server on 127.0.0.1 that answers every request with a 302
/// to `route(path)` (or a 404 when it gives `None`). Runs until the test
/// process exits.
fn redirector(route: impl Fn(&str) -> Option<String> + Send + 'static) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Some((request_line, mut reader)) = common::read_request_head(stream) else {
                continue;
            };
            let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
            let reply = match route(&path) {
                Some(location) => format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string(),
            };
            let _ = reader.get_mut().write_all(reply.as_bytes());
        }
    });
    format!("http://{address}")
}

/// `get URL` follows redirects (relative and absolute, here from plain http
/// up to https) to the object, names DEST from the URL given, and stops a
/// loop with a clear error and nothing left behind.
#[test]
fn redirects_are_followed_and_loops_stopped() {
    let size = 3 * PART + 5;
    let fixture = Fixture::new(&[("r.bin", size)]);
    let served = serve(fixture.data.path(), true, &[]);
    let (token, _) = served.authorize();
    let target = format!("{}/file/bkt/r.bin?Authorization={token}", served.realm);
    let base = redirector(move |path| match path {
        "/start/here.bin" => Some("../hop/two?x=1".to_string()),
        "/hop/two?x=1" => Some(target.clone()),
        "/loop" => Some("/loop".to_string()),
        _ => None,
    });
    let url = format!("{base}/start/here.bin");
    let out = fixture.out.path().to_str().unwrap().to_string();
    let mut args = vec![url.as_str(), &out];
    args.extend_from_slice(SMALL_TUNING);
    let output = ringdown(&served, &args);
    assert_ok(&output);
    assert_same(&fixture.out.path().join("here.bin"), "r.bin", size);
    let text = stderr(&output);
    assert!(text.contains("followed 2 redirect(s)"), "{text}");
    assert!(!text.contains(&token), "token leaked: {text}");

    let url = format!("{base}/loop");
    let dest = fixture.dest_str("loop.bin");
    let output = ringdown(&served, &[url.as_str(), &dest]);
    assert_exit(&output, 1, "more than 10 redirects");
    let url = format!("{base}/nowhere");
    let output = ringdown(&served, &[url.as_str(), &dest]);
    assert_exit(&output, 1, "HTTP 404");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

/// `http_proxy`/`https_proxy` from the environment: the origin is reached
/// through a CONNECT tunnel, its name resolved by the proxy (the client
/// never looks up `origin.test`); loopback origins and `no_proxy` hosts go
/// direct; a proxy that refuses the tunnel (407) ends the run at once with
/// exit 3 and says what to do.
#[test]
fn proxies_from_the_environment_tunnel_with_connect() {
    let size = 4 * PART + 9;
    let fixture = Fixture::new(&[("x.bin", size)]);
    let served = serve(fixture.data.path(), true, &[]);
    let (token, _) = served.authorize();
    let port = served.realm.rsplit(':').next().unwrap().to_string();
    let proxy = common::ConnectProxy::start(None);
    let get = |url: &str, dest: &str, env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
        command.arg("get").arg(url).arg(dest).args(SMALL_TUNING);
        for name in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
            command.env_remove(name).env_remove(name.to_uppercase());
        }
        command.envs(env.iter().copied());
        run_bounded(command)
    };
    let through = format!("http://origin.test:{port}/file/bkt/x.bin?Authorization={token}");
    let dest = fixture.dest_str("x.bin");
    let output = get(&through, &dest, &[("http_proxy", &proxy.url)]);
    assert_ok(&output);
    assert_same(Path::new(&dest), "x.bin", size);
    let targets = proxy.targets();
    assert!(
        targets.len() >= 2,
        "the probe and the download: {targets:?}"
    );
    assert!(
        targets.iter().all(|t| *t == format!("origin.test:{port}")),
        "{targets:?}"
    );
    assert!(!stderr(&output).contains(&token));

    // Loopback goes direct, proxy or not.
    let direct = format!("http://127.0.0.1:{port}/file/bkt/x.bin?Authorization={token}");
    let dest = fixture.dest_str("direct.bin");
    let output = get(&direct, &dest, &[("http_proxy", &proxy.url)]);
    assert_ok(&output);
    assert_eq!(proxy.targets().len(), targets.len(), "loopback was proxied");

    // no_proxy: origin.test is looked up locally, where it does not exist.
    let dest = fixture.dest_str("bypass.bin");
    let output = get(
        &through,
        &dest,
        &[("http_proxy", &proxy.url), ("no_proxy", ".test")],
    );
    assert_exit(&output, 2, "cannot resolve origin.test");
    assert_eq!(proxy.targets().len(), targets.len());

    // B2 over TLS inside the tunnels: authorize, probe and the parallel
    // ranged download all go to `origin.test` (the certificate's only name),
    // which only the proxy can reach.
    let tls_served = serve(
        fixture.data.path(),
        false,
        &[
            "--cert-name",
            "origin.test",
            "--download-url",
            "https://origin.test",
        ],
    );
    let tls_port: u16 = tls_served
        .realm
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let tls_proxy = common::ConnectProxy::start_to(None, Some(tls_port));
    let dest = fixture.dest_str("tls.bin");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args([
            "get",
            "b2://bkt/x.bin",
            &dest,
            "--realm",
            "https://origin.test",
        ])
        .arg("--ca-file")
        .arg(tls_served.ca_file.as_ref().unwrap())
        .args(SMALL_TUNING)
        .env("B2_APPLICATION_KEY_ID", &tls_served.key_id)
        .env("B2_APPLICATION_KEY", &tls_served.key)
        .env("https_proxy", &tls_proxy.url)
        .env_remove("SSL_CERT_FILE")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY");
    let output = run_bounded(command);
    assert_ok(&output);
    assert_same(Path::new(&dest), "x.bin", size);
    let tunnels = tls_proxy.targets();
    // Authorize, probe, and a connection per core and slot for the chunks.
    assert!(tunnels.len() >= 3, "{tunnels:?}");
    assert!(
        tunnels.iter().all(|t| t == "origin.test:443"),
        "{tunnels:?}"
    );

    // A refusal is final: one CONNECT, exit 3, and the fix in the message,
    // which says the proxy refused, naming it and the origin, and never
    // blames TLS (the origin here is plain http).
    let dest = fixture.dest_str("refused.bin");
    let refusing = common::ConnectProxy::start(Some(407));
    let output = get(&through, &dest, &[("http_proxy", &refusing.url)]);
    let proxy_address = refusing.url.trim_start_matches("http://");
    assert_exit(
        &output,
        3,
        &format!(
            "proxy {proxy_address} (from http_proxy) refused CONNECT to origin.test:{port} \
             with HTTP 407 (Proxy Authentication Required); put the credentials in the proxy URL"
        ),
    );
    assert!(!stderr(&output).contains("TLS"), "{}", stderr(&output));
    assert_eq!(refusing.targets().len(), 1, "{:?}", refusing.targets());
    // 403, to a download and to a B2 API call (b2_authorize_account).
    let forbidding = common::ConnectProxy::start(Some(403));
    let proxy_address = forbidding.url.trim_start_matches("http://");
    let refused_403 = format!(
        "ringdown: error: proxy {proxy_address} (from http_proxy) refused CONNECT to \
         origin.test:{port} with HTTP 403; check http_proxy, or add the origin to no_proxy \
         if it should be reached directly"
    );
    let output = get(&through, &dest, &[("http_proxy", &forbidding.url)]);
    assert_exit(&output, 3, &refused_403);
    assert!(!stderr(&output).contains("TLS"), "{}", stderr(&output));
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args(["get", "b2://bkt/x.bin", &dest, "--realm"])
        .arg(format!("http://origin.test:{port}"))
        .args(SMALL_TUNING)
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .env("http_proxy", &forbidding.url)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY");
    let output = run_bounded(command);
    assert_exit(&output, 3, &refused_403);
    assert!(!stderr(&output).contains("TLS"), "{}", stderr(&output));
    assert_eq!(forbidding.targets().len(), 2, "{:?}", forbidding.targets());
    // An unusable setting is an error, not a silent direct connection.
    let output = get(&through, &dest, &[("http_proxy", "socks5://127.0.0.1:1")]);
    assert_exit(&output, 2, "http_proxy");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

#[test]
fn every_fault_flag_is_survived() {
    let size = 40 * PART + 123;
    let fixture = Fixture::new(&[("f.bin", size)]);
    let faults: &[&[&str]] = &[
        &["--reset-rate", "0.2"],
        &["--fail-rate", "0.3"],
        &["--throttle-rate", "0.3"],
        &["--short-body-rate", "0.2"],
        &["--stall-rate", "0.1"],
    ];
    for (index, fault) in faults.iter().enumerate() {
        let mut extra = vec!["--seed", "7"];
        extra.extend_from_slice(fault);
        let served = serve(fixture.data.path(), index % 2 == 0, &extra);
        let dest = fixture.dest_str(&format!("f{index}.bin"));
        let mut args = vec![
            "b2://bkt/f.bin",
            &dest,
            "--timeout-s",
            "1",
            "--max-attempts",
            "20",
        ];
        args.extend_from_slice(SMALL_TUNING);
        let output = ringdown(&served, &args);
        assert_ok(&output);
        assert_same(Path::new(&dest), "f.bin", size);
        let text = stderr(&output);
        assert!(
            !text.contains("retries: 0,"),
            "{fault:?} caused no retry:\n{text}"
        );
    }
    assert_no_temp(fixture.out.path());
}

/// A DEST that another program makes while the download runs is not
/// replaced without `--force` (exit 2, left as it is), and the verified
/// download is kept with its journal, which says it is whole: the rerun
/// with `--force` resumes it, fetching no more than its last block again
/// (it fetched the whole last chunk again, 32 KiB here; h23).
#[test]
fn a_dest_made_during_the_download_is_not_replaced_without_force() {
    let size = 40 * PART + PART / 2 + 77;
    let fixture = Fixture::new(&[("ap.bin", size)]);
    let log = fixture.out.path().join("access.jsonl");
    let served = serve(
        fixture.data.path(),
        true,
        &[
            "--rate-per-conn",
            "400KB/s",
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let dest = fixture.dest_str("ap.bin");
    let mut args = vec!["b2://bkt/ap.bin", &dest];
    args.extend_from_slice(SMALL_TUNING);
    // The stats of such a run (exit 2, the whole object fetched) are
    // written too (h43 #15m).
    let stats = fixture.data.path().join("stats.json");
    let stats_arg = stats.to_str().unwrap();
    let mut child = get_command(&served, &[&args[..], &["--stats-json", stats_arg]].concat())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(&dest, b"precious").unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before DEST was made: nothing tested"
    );
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("was made by another program during the download"),
        "{err}"
    );
    assert!(err.contains("run again with --force"), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"precious");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(json["verified"]["failed"], 1, "{json}");
    assert!(json["bytes"].as_u64().unwrap() >= size as u64, "{json}");
    let ranges = || {
        common::json_lines(&log)
            .iter()
            .filter(|record| record["name"] == "ap.bin" && record["range"].is_string())
            .count()
    };
    let fetched = ranges();
    let again = ringdown(&served, &[&args[..], &["--force"]].concat());
    assert_ok(&again);
    assert_same(Path::new(&dest), "ap.bin", size);
    // Resumed where the last whole block ends (O_DIRECT resumes there).
    assert_resumed_at(&again, (size / 4096 * 4096) as u64);
    assert!(
        ranges() <= fetched + 1,
        "the rerun fetched {} ranges again",
        ranges() - fetched
    );
    assert_no_temp(fixture.out.path());
}

/// h40 #1: the account's cap, spent midway (the token expires and the
/// next authorization is refused with `transaction_cap_exceeded`), removed
/// what had arrived while the message said to run again "to resume". What
/// is journaled stays, as after a refusal, and the next run, once the
/// origin authorizes again, resumes from it.
#[test]
fn a_cap_spent_midway_keeps_what_arrived_for_the_next_run() {
    let size = 40 * PART + PART / 2 + 77;
    let fixture = Fixture::new(&[("cap.bin", size)]);
    let capped = &[
        "--rate-per-conn",
        "300KB/s",
        "--token-ttl-s",
        "1",
        "--authorize-max",
        "1",
        "--authorize-max-answer",
        "cap",
    ];
    let served = serve(fixture.data.path(), true, capped);
    let dest = fixture.dest_str("cap.bin");
    let mut args = vec!["b2://bkt/cap.bin", &dest];
    args.extend_from_slice(SMALL_TUNING);
    let first = ringdown(&served, &args);
    let err = stderr(&first);
    assert_eq!(first.status.code(), Some(1), "{err}");
    assert!(err.contains("daily cap is spent"), "{err}");
    assert!(err.contains("the cap raised or reset"), "{err}");
    drop(served);
    let served = serve(fixture.data.path(), true, &[]);
    let again = ringdown(&served, &args);
    assert_ok(&again);
    assert_same(Path::new(&dest), "cap.bin", size);
    assert!(
        stderr(&again).contains("resumed at byte"),
        "{}",
        stderr(&again)
    );
    assert_no_temp(fixture.out.path());
}

/// Connections beyond what the open files limit (hard and soft) allows are
/// not opened only to fail with EMFILE for minutes: the run fits them to
/// the limit and says so; a limit below one connection per core is exit 2.
#[test]
fn connections_are_fitted_to_the_open_files_limit() {
    let size = 20 * PART + 3;
    let fixture = Fixture::new(&[("nf.bin", size)]);
    let served = serve(fixture.data.path(), true, &[]);
    let dest = fixture.dest_str("nf.bin");
    let run = |nofile: &str, connections: &str| {
        let _ = std::fs::remove_file(&dest);
        Command::new("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_ringdown"))
            .args(["get", "b2://bkt/nf.bin", &dest, "--realm", &served.realm])
            .args([
                "--part-size",
                "64KiB",
                "--buffer-size",
                "16KiB",
                "--cores",
                "2",
            ])
            .args(["--connections", connections])
            .env("B2_APPLICATION_KEY_ID", &served.key_id)
            .env("B2_APPLICATION_KEY", &served.key)
            .run_bounded()
    };
    let output = run("128", "64");
    assert_ok(&output);
    assert_same(Path::new(&dest), "nf.bin", size);
    let err = stderr(&output);
    assert!(
        err.contains("(RLIMIT_NOFILE 128) fits 31 connections per core, not the 64 asked"),
        "{err}"
    );
    let output = run("32", "4");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the open files limit (RLIMIT_NOFILE) is 32"),
        "{err}"
    );
    assert!(!Path::new(&dest).exists());
}

/// Buffers the address-space limit cannot hold are an error of the run's
/// start that says what to lower, not an allocator abort (exit 134).
#[test]
fn buffers_beyond_the_address_space_limit_are_a_clear_error() {
    let fixture = Fixture::new(&[("as.bin", 3 * PART)]);
    let served = serve(fixture.data.path(), true, &[]);
    let dest = fixture.dest_str("as.bin");
    let limited = |command: &str, target: &str| {
        Command::new("prlimit")
            .arg(format!("--as={}", 512u64 << 20))
            .arg(env!("CARGO_BIN_EXE_ringdown"))
            .args([command, target, &dest, "--realm", &served.realm])
            .args(["--buffers", "64", "--buffer-size", "16MiB", "--cores", "1"])
            .env("B2_APPLICATION_KEY_ID", &served.key_id)
            .env("B2_APPLICATION_KEY", &served.key)
            .run_bounded()
    };
    // A restore maps the whole 1 GiB pool asked for.
    let output = limited("restore", "b2://bkt");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("mapping its 64 buffers of 16777216 bytes"),
        "{err}"
    );
    assert!(err.contains("lower --buffers or --buffer-size"), "{err}");
    assert!(!Path::new(&dest).join("as.bin").exists());
    // A get maps no more than its object needs (two buffers here).
    let _ = std::fs::remove_dir_all(&dest);
    let output = limited("get", "b2://bkt/as.bin");
    assert_ok(&output);
    assert_same(Path::new(&dest), "as.bin", 3 * PART);
    assert_no_temp(fixture.out.path());
}

/// At RLIMIT_STACK 64 KiB the main thread overflowed (a bare SIGSEGV for
/// `get`, an abort for `restore`): the command runs on a thread of its own.
/// (Not less: the arguments and environment sit on that stack too, and at
/// 16 KiB a large environment left the runtime's start-up too little.)
#[test]
fn a_small_stack_limit_is_not_a_crash() {
    let fixture = Fixture::new(&[("st.bin", 3 * PART)]);
    // Over TLS: its handshake is what took the old main thread over 64 KiB.
    let served = serve(fixture.data.path(), false, &[]);
    let ca_file = served.ca_file.clone().expect("a TLS origin has a CA");
    let dest = fixture.dest_str("st.bin");
    for (command, target) in [("get", "b2://bkt/st.bin"), ("restore", "b2://bkt")] {
        let output = Command::new("prlimit")
            .arg("--stack=65536")
            .arg(env!("CARGO_BIN_EXE_ringdown"))
            .args([command, target, &dest, "--realm", &served.realm])
            .arg("--ca-file")
            .arg(&ca_file)
            .env("B2_APPLICATION_KEY_ID", &served.key_id)
            .env("B2_APPLICATION_KEY", &served.key)
            .run_bounded();
        assert_ok(&output);
        let file = if command == "get" {
            PathBuf::from(&dest)
        } else {
            Path::new(&dest).join("st.bin")
        };
        assert_same(&file, "st.bin", 3 * PART);
        if command == "get" {
            std::fs::remove_file(&dest).unwrap();
        }
    }
}

/// A memory cgroup's limit is read at start: a pool above it would be
/// touched whole when registered and OOM-killed, with nothing said. It is
/// fitted (with a notice), or refused when not two buffers per core fit.
/// Needs root and a writable memory controller (v1 or v2), else skipped.
#[test]
fn buffers_are_fitted_to_a_memory_cgroup() {
    let Some(cgroup) = common::MemoryCgroup::create("ringdown-test-get") else {
        eprintln!("SKIP: no writable memory cgroup here");
        return;
    };
    let size = 24 << 20;
    let fixture = Fixture::new(&[("cg.bin", size)]);
    let served = serve(fixture.data.path(), true, &[]);
    let dest = fixture.dest_str("cg.bin");
    let in_cgroup = |limit_mib: u64| {
        cgroup.limit(limit_mib << 20);
        let mut command = cgroup.command(env!("CARGO_BIN_EXE_ringdown"));
        command
            .args(["get", "b2://bkt/cg.bin", &dest, "--realm", &served.realm])
            .args(["--cores", "2", "--buffers", "16", "--part-size", "4MiB"])
            .env("B2_APPLICATION_KEY_ID", &served.key_id)
            .env("B2_APPLICATION_KEY", &served.key);
        command.run_bounded()
    };
    // 48 MiB: 16 MiB for buffers beside the rest's 32 is 8 per core.
    let output = in_cgroup(48);
    assert_ok(&output);
    assert!(
        stderr(&output).contains("memory limit (48 MiB) fits 8 buffers per core, not the 16"),
        "{}",
        stderr(&output)
    );
    assert_same(Path::new(&dest), "cg.bin", size);
    std::fs::remove_file(&dest).unwrap();
    // 34 MiB: not two per core.
    let output = in_cgroup(34);
    assert_exit(&output, 2, "memory limit is 34 MiB");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

/// A chunk's 503, read to its end, costs no connection: the chunk backs off
/// (briefly) and asks again on the same one, with no new handshake.
#[test]
fn a_retryable_answer_to_a_chunk_keeps_its_connection() {
    let size = 40 * PART + 77;
    let fixture = Fixture::new(&[("r.bin", size)]);
    let log = fixture.out.path().join("access.jsonl");
    let served = serve(
        fixture.data.path(),
        true,
        &[
            "--status-rate",
            "503:0.25",
            "--seed",
            "3",
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let dest = fixture.dest_str("r.bin");
    let mut args = vec!["b2://bkt/r.bin", &dest, "--max-attempts", "20"];
    args.extend_from_slice(SMALL_TUNING);
    let output = ringdown(&served, &args);
    assert_ok(&output);
    assert_same(Path::new(&dest), "r.bin", size);
    let refused = common::json_lines(&log)
        .iter()
        .filter(|record| record["name"] == "r.bin" && record["range"].is_string())
        .filter(|record| record["status"] == 503)
        .count();
    assert!(refused >= 8, "{refused} 503s: too few to test anything");
    let connections = common::connections_serving_ranges(&log, "r.bin");
    // `--cores 2 --connections 3`: six, and another only where a 503 came
    // with a GET sent ahead owed on its connection (a loaded machine's round
    // trip), which drops it, as every 503 did before.
    assert!(
        connections.len() < 6 + refused / 2,
        "{} connections for {refused} 503s",
        connections.len()
    );
}

/// An answer that ends the download (a 400) while buffers are scarce and
/// writes are in flight ends the run. A write that completed after the
/// abort used to park its buffer where nothing would free it any more, and
/// a connection waiting for a buffer, with the whole run behind it, waited
/// forever: even SIGTERM only asked it to finish (a helper's campaign: 1 in
/// 3 runs of this one hung).
#[test]
fn a_fatal_answer_among_scarce_buffers_ends_the_run() {
    let size = 8 * 1024 * 1024 + 1;
    let fixture = Fixture::new(&[("s.bin", size)]);
    for seed in ["7", "8", "9"] {
        let served = serve(
            fixture.data.path(),
            true,
            &[
                "--seed",
                seed,
                "--status-rate",
                "400:0.02",
                "--stall-rate",
                "0.1",
                "--latency-ms",
                "5",
            ],
        );
        let dest = fixture.dest_str(&format!("s{seed}.bin"));
        let args = [
            "b2://bkt/s.bin",
            &dest,
            "--buffer-size",
            "4K",
            "--part-size",
            "8K",
            "--cores",
            "4",
            "--buffers",
            "3",
            "--timeout-s",
            "1",
            "--retry-base-ms",
            "5",
            "--retry-max-ms",
            "50",
        ];
        let command = get_command(&served, &args);
        let output = common::run_with_deadline(command, std::time::Duration::from_secs(60), |_| {});
        assert_exit(&output, 1, "400");
        assert!(!Path::new(&dest).exists());
    }
    assert_no_temp(fixture.out.path());
}

#[test]
fn expired_token_is_refreshed() {
    let fixture = Fixture::new(&[("t.bin", 30 * PART)]);
    // Tokens live 1 s; 100 KB/s per connection makes the download outlive them.
    let served = serve(
        fixture.data.path(),
        true,
        &["--token-ttl-s", "1", "--rate-per-conn", "200KB/s"],
    );
    let dest = fixture.dest_str("t.bin");
    // An expired token is no failed attempt: one attempt each suffices.
    let mut args = vec!["b2://bkt/t.bin", &dest, "--max-attempts", "1"];
    args.extend_from_slice(SMALL_TUNING);
    let output = ringdown(&served, &args);
    assert_ok(&output);
    assert_same(Path::new(&dest), "t.bin", 30 * PART);
    let log = std::fs::read_to_string(served.work.path().join("stderr.log")).unwrap_or_default();
    assert!(!log.contains(&served.key), "serve logged the key");
}

#[test]
fn exhausted_attempts_leave_nothing_behind() {
    let fixture = Fixture::new(&[("x.bin", 10 * PART)]);
    let served = serve(fixture.data.path(), true, &["--fail-rate", "1"]);
    let dest = fixture.dest_str("x.bin");
    let mut args = vec!["b2://bkt/x.bin", &dest, "--max-attempts", "3"];
    args.extend_from_slice(SMALL_TUNING);
    let output = ringdown(&served, &args);
    // The probe itself meets the 503s: a clear error either way, exit 1.
    assert_exit(&output, 1, "503");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());

    // Faults only on bodies: the probe passes, every chunk is cut, attempts run out.
    // --stats-json still tells where the failed run's time went.
    let served = serve(fixture.data.path(), true, &["--reset-rate", "1"]);
    let stats = fixture.out.path().join("failed-stats.json");
    let mut with_stats = args.clone();
    with_stats.extend(["--stats-json", stats.to_str().unwrap()]);
    let output = ringdown(&served, &with_stats);
    assert_exit(&output, 1, "after 3 attempts");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(json["command"], "get");
    assert_eq!(json["verified"]["failed"], 1, "{json}");
    // What it fetched before it gave up: less than the object.
    assert!(json["bytes"].as_u64().unwrap() < 10 * PART as u64, "{json}");
    assert_eq!(json["files"], 0, "{json}");
    assert!(json["retries"].as_u64().unwrap() >= 2, "{json}");
    assert!(
        json["stages"]["ttfb"]["count"].as_u64().unwrap() >= 3,
        "{json}"
    );
    std::fs::remove_file(&stats).unwrap();

    // Every body corrupted: the mismatch is retried once, then refused loudly.
    let served = serve(fixture.data.path(), true, &["--corrupt-rate", "1"]);
    let output = ringdown(&served, &args);
    assert_exit(&output, 1, "SHA1 mismatch");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

#[test]
fn bad_input_gets_clear_errors_and_exit_codes() {
    let fixture = Fixture::new(&[("a.bin", 1000)]);
    let served = serve(fixture.data.path(), false, &[]);
    let dest = fixture.dest_str("a.bin");

    // Unknown object and bucket: exit 1, "not found".
    for source in ["b2://bkt/missing.bin", "b2://nobucket/a.bin"] {
        let output = ringdown(&served, &[source, &dest]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{source}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("not found"), "{}", stderr(&output));
    }

    // Wrong credentials: exit 3, names the variables, never prints the key.
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args([
            "get",
            "b2://bkt/a.bin",
            &dest,
            "--realm",
            &served.realm,
            "--ca-file",
        ])
        .arg(served.ca_file.as_ref().unwrap())
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", "wrong-secret-value");
    let output = run_bounded(command);
    assert_exit(&output, 3, "B2_APPLICATION_KEY");
    assert!(!stderr(&output).contains("wrong-secret-value"));

    // Untrusted CA: exit 3 and the message names --ca-file.
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", "b2://bkt/a.bin", &dest, "--realm", &served.realm])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .env_remove("SSL_CERT_FILE")
        .run_bounded();
    assert_exit(&output, 3, "--ca-file");

    // A trusted CA, a certificate for another name: exit 3, and the way out
    // is the name, not the CA it was given already (h40 #6).
    let elsewhere = serve(fixture.data.path(), false, &["--cert-name", "origin.test"]);
    let output = ringdown(&elsewhere, &["b2://bkt/a.bin", &dest]);
    assert_exit(&output, 3, "connect by a name the certificate covers");
    assert!(
        !stderr(&output).contains("pass the origin's CA"),
        "{}",
        stderr(&output)
    );
    drop(elsewhere);

    // SSL_CERT_FILE is honoured as the trust store.
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", "b2://bkt/a.bin", &dest, "--realm", &served.realm])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .env("SSL_CERT_FILE", served.ca_file.as_ref().unwrap())
        .run_bounded();
    assert_ok(&output);
    // A trust store named in the environment that cannot be read, or set
    // but empty (`ENV SSL_CERT_FILE=`), would leave no root at all: a
    // configuration error (exit 2) saying so, not an untrusted server (3).
    for (variable, value, said) in [
        (
            "SSL_CERT_FILE",
            "/no/such/ca.pem",
            "SSL_CERT_FILE /no/such/ca.pem",
        ),
        ("SSL_CERT_FILE", "", "SSL_CERT_FILE is set but empty"),
        ("SSL_CERT_DIR", "", "SSL_CERT_DIR is set but empty"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
            .args([
                "get",
                "b2://bkt/a.bin",
                &dest,
                "--force",
                "--realm",
                &served.realm,
            ])
            .env("B2_APPLICATION_KEY_ID", &served.key_id)
            .env("B2_APPLICATION_KEY", &served.key)
            .env_remove("SSL_CERT_FILE")
            .env(variable, value)
            .run_bounded();
        assert_exit(&output, 2, said);
    }

    // DEST exists: exit 2 without --force, file untouched.
    std::fs::write(&dest, b"keep me").unwrap();
    let output = ringdown(&served, &["b2://bkt/a.bin", &dest]);
    assert_exit(&output, 2, "--force");
    assert_eq!(std::fs::read(&dest).unwrap(), b"keep me");

    // DEST's directory missing: exit 2.
    let missing = fixture.out.path().join("no/such/dir/a.bin");
    let output = ringdown(&served, &["b2://bkt/a.bin", missing.to_str().unwrap()]);
    assert_exit(&output, 2, "does not exist");
    // DEST's directory read-only (a read-only mount; root ignores modes):
    // exit 2 before the download.
    let read_only = fixture.out.path().join("ro");
    std::fs::create_dir(&read_only).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
        .arg(&read_only)
        .output()
        .is_ok_and(|output| output.status.success());
    if mounted {
        let output = ringdown(&served, &["b2://bkt/a.bin", read_only.to_str().unwrap()]);
        let _ = Command::new("umount").arg(&read_only).output();
        assert_exit(&output, 2, "is not writable");
    }
    // --stats-json that cannot be written: exit 2 before the download.
    let unwritten = fixture.dest_str("never.bin");
    let output = ringdown(
        &served,
        &[
            "b2://bkt/a.bin",
            &unwritten,
            "--stats-json",
            "/no/such/dir/s.json",
        ],
    );
    assert_exit(&output, 2, "--stats-json");
    assert!(!Path::new(&unwritten).exists());
    // DEST names a directory that is not there: exit 2, no file `newdir`.
    let new_dir = format!("{}/newdir/", fixture.out.path().display());
    let output = ringdown(&served, &["b2://bkt/a.bin", &new_dir]);
    assert_exit(&output, 2, "ends in '/'");
    assert!(!fixture.out.path().join("newdir").exists());
    // So does one ending in '/.', which `Path` reads as the file `newdir`:
    // it was created, or, where a file of that name was, the whole object
    // was fetched before "made by another program" (h24).
    let new_dir = format!("{}/newdir/.", fixture.out.path().display());
    let output = ringdown(&served, &["b2://bkt/a.bin", &new_dir]);
    assert_exit(&output, 2, "ends in '/.'");
    assert!(!fixture.out.path().join("newdir").exists());
    let a_file = fixture.out.path().join("afile");
    std::fs::write(&a_file, "kept").unwrap();
    let output = ringdown(
        &served,
        &["b2://bkt/a.bin", &format!("{}/.", a_file.display())],
    );
    assert_exit(&output, 2, "ends in '/.'");
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), "kept");
    assert_no_temp(fixture.out.path());
    // Through a file that is not a directory: said so, not "create it".
    let output = ringdown(
        &served,
        &["b2://bkt/a.bin", &format!("{}/", a_file.display())],
    );
    assert_exit(&output, 2, "but");
    assert!(
        stderr(&output).contains("is a regular file"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), "kept");
    // A device or FIFO as DEST: renaming over it would replace the node
    // (`/dev/null` with a file), so it is refused, --force or not.
    let fifo = fixture.out.path().join("fifo");
    common::make_fifo(&fifo);
    for force in [false, true] {
        let mut args = vec!["b2://bkt/a.bin", fifo.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        let output = ringdown(&served, &args);
        assert_exit(&output, 2, "is a FIFO");
        assert!(
            !stderr(&output).contains("pass --force"),
            "{}",
            stderr(&output)
        );
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(
            std::os::unix::fs::FileTypeExt::is_fifo(&kind),
            "--force {force}"
        );
    }
    assert_no_temp(fixture.out.path());
    // A folder is no file: pointed to `restore` before any request.
    let output = ringdown(&served, &["b2://bkt/folder/", &unwritten]);
    assert_exit(&output, 2, "ringdown restore b2://bkt/folder/ DIR");

    // A URL whose last segment decodes to a path ('%2F') is refused into a
    // DEST directory: it joined to a path outside it, an absolute one
    // replacing DEST altogether. Nothing is fetched (port 9 is not served).
    let inner = fixture.out.path().join("a/b/dest");
    std::fs::create_dir_all(&inner).unwrap();
    let outside = fixture.out.path().join("ABSOLUTE.bin");
    for url in [
        "http://127.0.0.1:9/x/..%2F..%2Fescaped.bin".to_string(),
        format!(
            "http://127.0.0.1:9/x/{}",
            outside.to_str().unwrap().replace('/', "%2F")
        ),
        "http://127.0.0.1:9/x/..".to_string(),
        "http://127.0.0.1:9/x/a%00b".to_string(),
    ] {
        let output = ringdown(&served, &[&url, inner.to_str().unwrap()]);
        assert_exit(&output, 2, "give DEST as the file's path");
    }
    assert!(!fixture.out.path().join("a/escaped.bin").exists());
    assert!(!outside.exists());

    // A URL that cannot be used is shown without its userinfo or query.
    for url in [
        "http://user:PASSWORD@127.0.0.1:9/x.bin",
        "http://127.0.0.1:99999/x.bin?Signature=PASSWORD",
        "http://127.0.0.1:9/x.bin?sig=PASSWORD#frag",
    ] {
        let output = ringdown(&served, &[url, &fixture.dest_str("never.bin")]);
        assert_exit(&output, 2, "not a usable URL");
        assert!(!stderr(&output).contains("PASSWORD"), "{}", stderr(&output));
    }

    // --sha1 on a B2 object is checked against the published one: another
    // digest fails before any byte lands; the same one verifies.
    let checked = fixture.dest_str("checked.bin");
    let output = ringdown(
        &served,
        &["b2://bkt/a.bin", &checked, "--sha1", &"0".repeat(40)],
    );
    assert_exit(&output, 1, "is not the SHA1 B2 publishes for it (");
    assert!(stderr(&output).contains("); check which one is right"));
    assert!(!Path::new(&checked).exists());
    let right = sha1_hex(&content("a.bin", 1000));
    let output = ringdown(&served, &["b2://bkt/a.bin", &checked, "--sha1", &right]);
    assert_ok(&output);
    assert!(stderr(&output).contains("verified"), "{}", stderr(&output));

    // No credentials: exit 2 before any network I/O.
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args([
            "get",
            "b2://bkt/a.bin",
            &fixture.dest_str("new.bin"),
            "--realm",
            &served.realm,
        ])
        .env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY")
        .run_bounded();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    // Bad sizes and sources: exit 2 with the reason.
    let output = ringdown(
        &served,
        &[
            "b2://bkt/a.bin",
            &fixture.dest_str("n.bin"),
            "--part-size",
            "3X",
        ],
    );
    assert_exit(&output, 2, "unknown unit");
    let output = ringdown(&served, &["b2://bkt", &fixture.dest_str("n.bin")]);
    assert_exit(&output, 2, "b2://BUCKET/NAME");
    // Unreadable CA file: exit 2.
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args([
            "get",
            "b2://bkt/a.bin",
            &fixture.dest_str("n.bin"),
            "--realm",
            &served.realm,
            "--ca-file",
            "/nonexistent.pem",
        ])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .run_bounded();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_no_temp(fixture.out.path());
}

/// Registered buffers need locked memory. Without CAP_IPC_LOCK and with a
/// 1 MiB limit (room for the rings, not for the pool), registration is impossible: the download must fall back to
/// plain positional writes, say so once, and still be correct.
#[test]
fn memlock_fallback_without_cap_ipc_lock() {
    if !common::has_tool("setpriv") || !common::has_tool("prlimit") {
        eprintln!("SKIP: setpriv/prlimit not installed");
        return;
    }
    let size = 3 << 20;
    let fixture = Fixture::new(&[("m.bin", size)]);
    let served = serve(fixture.data.path(), true, &[]);
    let dest = fixture.dest_str("m.bin");
    let output = Command::new("prlimit")
        .args([
            "--memlock=1048576:1048576",
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
        ])
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args([
            "get",
            "b2://bkt/m.bin",
            &dest,
            "--realm",
            &served.realm,
            "--buffers",
            "8",
        ])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .run_bounded();
    assert_ok(&output);
    let text = stderr(&output);
    assert_eq!(
        text.matches("RLIMIT_MEMLOCK").count(),
        1,
        "said once:\n{text}"
    );
    assert!(text.contains("registered buffers: no"), "{text}");
    assert_same(Path::new(&dest), "m.bin", size);

    // At 64 KiB (older distributions' default), two cores' rings of 256
    // entries do not fit either: smaller rings are made instead of exit 4.
    std::fs::remove_file(&dest).unwrap();
    let output = Command::new("prlimit")
        .args([
            "--memlock=65536:65536",
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
        ])
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", "b2://bkt/m.bin", &dest, "--realm", &served.realm])
        .args(["--buffers", "8", "--cores", "2", "--part-size", "1M"])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .run_bounded();
    assert_ok(&output);
    assert_same(Path::new(&dest), "m.bin", size);

    // Four cores' rings do not fit even at 16 entries: the run goes on with
    // the cores that got one, and says so (it used to exit 4).
    std::fs::remove_file(&dest).unwrap();
    let output = Command::new("prlimit")
        .args([
            "--memlock=65536:65536",
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
        ])
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", "b2://bkt/m.bin", &dest, "--realm", &served.realm])
        .args(["--buffers", "8", "--cores", "4", "--part-size", "256K"])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .run_bounded();
    assert_ok(&output);
    assert_same(Path::new(&dest), "m.bin", size);
    let text = stderr(&output);
    assert!(text.contains("cores: the others could not start"), "{text}");

    // With the capability, the same download registers its buffers.
    std::fs::remove_file(&dest).unwrap();
    let output = Command::new("prlimit")
        .args(["--memlock=1048576:1048576"])
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args([
            "get",
            "b2://bkt/m.bin",
            &dest,
            "--realm",
            &served.realm,
            "--buffers",
            "8",
        ])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .run_bounded();
    assert_ok(&output);
    if is_root() {
        assert!(
            stderr(&output).contains("registered buffers: yes"),
            "{}",
            stderr(&output)
        );
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
}

/// The issue asks for 1 GiB in the release test run; debug builds skip it.
#[test]
fn one_gib_object_in_release() {
    if cfg!(debug_assertions) {
        eprintln!("SKIP: 1 GiB download runs in the release test run only");
        return;
    }
    let size = 1usize << 30;
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("bkt/gib.bin");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Cheap deterministic content: a 1 MiB block, each copy stamped with its index.
    let mut block = content("gib", 1 << 20);
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for index in 0..1024u32 {
            block[..4].copy_from_slice(&index.to_le_bytes());
            file.write_all(&block).unwrap();
        }
    }
    let expected = {
        use sha1::{Digest, Sha1};
        let mut hasher = Sha1::new();
        for index in 0..1024u32 {
            block[..4].copy_from_slice(&index.to_le_bytes());
            hasher.update(&block);
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let out = tempfile::tempdir().unwrap();
    let served = serve(data.path(), false, &["--no-index"]);
    let dest = out.path().join("gib.bin");
    // O_DIRECT forced: `auto` would fall back to the page cache on a file
    // system whose alignment does not suit, and this must prove O_DIRECT.
    let output = ringdown(
        &served,
        &[
            "b2://bkt/gib.bin",
            dest.to_str().unwrap(),
            "--direct-io",
            "on",
        ],
    );
    assert_ok(&output);
    assert!(
        stderr(&output).contains("O_DIRECT: yes"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(&format!("SHA1 {expected} verified")),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), size as u64);
    // Verified by ringdown in memory; check the bytes on disk independently.
    let on_disk = {
        use sha1::{Digest, Sha1};
        use std::io::Read;
        let mut hasher = Sha1::new();
        let mut file = std::fs::File::open(&dest).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(on_disk, expected);
}

/// Starts `ringdown get` of `name` into `dest` without waiting for it.
fn spawn_get(served: &Served, name: &str, dest: &str) -> std::process::Child {
    spawn_get_with_timeout(served, name, dest, "5")
}

/// `spawn_get` with this `--timeout-s`.
fn spawn_get_with_timeout(
    served: &Served,
    name: &str,
    dest: &str,
    timeout_s: &str,
) -> std::process::Child {
    spawn_get_with(served, name, dest, timeout_s, SMALL_TUNING)
}

/// `spawn_get` with this `--timeout-s`, and `tuning` in place of the tests'
/// `SMALL_TUNING`.
fn spawn_get_with(
    served: &Served,
    name: &str,
    dest: &str,
    timeout_s: &str,
    tuning: &[&str],
) -> std::process::Child {
    // SIGINT as a terminal's foreground job has it, even where the tests
    // run as a background job (SIGINT ignored, which ringdown keeps); and
    // SIGHUP, which `nohup cargo test` ignores.
    Command::new("env")
        .arg("--default-signal=INT,HUP")
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args([
            "get",
            &format!("b2://bkt/{name}"),
            dest,
            "--realm",
            &served.realm,
            "--timeout-s",
            timeout_s,
        ])
        .args(tuning)
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The resume journals of the gets into `dir`.
fn journals_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "journal"))
        .collect()
}

/// Bytes `[0, N)` the journal beside DEST says are on disk (0 if none).
fn journaled_bytes(dir: &Path) -> u64 {
    let mut most = 0;
    for path in journals_in(dir) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|line| line.starts_with("chunk\t")) {
            if let Some(bytes) = line.rsplit('\t').next().and_then(|b| b.parse().ok()) {
                most = most.max(bytes);
            }
        }
    }
    most
}

/// Waits until the journal in `dir` says at least `at_least` bytes are
/// done (the run must still be going), then SIGKILLs `child`: no cleanup at
/// all. The bytes journaled then.
fn kill_once_journaled(dir: &Path, child: &mut std::process::Child, at_least: u64) -> u64 {
    let started = std::time::Instant::now();
    while journaled_bytes(dir) < at_least {
        assert!(started.elapsed().as_secs() < 30, "no chunk was journaled");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    journaled_bytes(dir)
}

/// The run said it resumed at byte `journaled`.
fn assert_resumed_at(output: &Output, journaled: u64) {
    assert!(
        stderr(output).contains(&format!("resumed at byte {journaled}")),
        "{}",
        stderr(output)
    );
}

fn wait_for_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    exit_within(child, std::time::Duration::from_secs(30), what)
}

/// SIGINT, SIGTERM and SIGHUP stop the download: in-flight writes are
/// drained, nothing appears at DEST, exit 130 / 143 / 129, and the partial
/// file and its journal stay so that the same command resumes. (SIGHUP, a
/// dropped ssh session, killed the process mid-write, saying nothing.)
#[test]
fn signals_stop_cleanly_and_keep_what_resumes() {
    let size = 4 << 20;
    let fixture = Fixture::new(&[("s.bin", size)]);
    // Slow enough that the signal arrives mid-download.
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "200KB/s"]);
    let dest = fixture.dest_str("s.bin");
    for (signal, code) in [("-INT", 130), ("-TERM", 143), ("-HUP", 129)] {
        let before = journaled_bytes(fixture.out.path());
        let mut child = spawn_get(&served, "s.bin", &dest);
        // Wait until a chunk more is journaled: the engine is writing.
        let started = std::time::Instant::now();
        while journaled_bytes(fixture.out.path()) <= before {
            assert!(started.elapsed().as_secs() < 30, "no chunk was journaled");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        send_signal(child.id(), signal);
        let exit = wait_for_exit(&mut child, signal);
        let output = child.wait_with_output().unwrap();
        let text = stderr(&output);
        assert_eq!(exit.code(), Some(code), "{text}");
        assert!(text.contains("interrupted"), "{text}");
        assert!(
            text.contains("run the same command again to resume"),
            "{text}"
        );
        // The summary, with what was fetched and the stage table.
        assert!(text.contains(": interrupted after "), "{text}");
        assert!(text.contains("\nstage "), "{text}");
        assert!(!Path::new(&dest).exists());
        if before > 0 {
            assert!(text.contains("resumed at byte"), "{text}");
        }
    }
    // The third run finishes from where the second stopped.
    let journaled = journaled_bytes(fixture.out.path());
    assert!(journaled > 0);
    let mut child = spawn_get(&served, "s.bin", &dest);
    let exit = wait_for_exit(&mut child, "completion");
    let output = child.wait_with_output().unwrap();
    assert_eq!(exit.code(), Some(0), "{}", stderr(&output));
    assert_resumed_at(&output, journaled);
    assert_same(&fixture.dest("s.bin"), "s.bin", size);
    assert_no_temp(fixture.out.path());
}

/// A signal lets the chunks in flight finish, as the run says ("finishing
/// requests in flight"), at full speed: what they received is kept for the
/// rerun, not only the chunks complete when it came. Each connection used
/// to stop at its next buffer, and a get whose chunks were all part-way
/// through (here: 6 of 512 KiB at 300 KB/s between them) kept nothing.
#[test]
fn a_signal_lets_the_chunks_in_flight_finish() {
    let size = 4 << 20;
    let fixture = Fixture::new(&[("f.bin", size)]);
    let served = serve(fixture.data.path(), true, &[]);
    let dest = fixture.dest_str("f.bin");
    let slow = [
        "--part-size",
        "512KiB",
        "--buffer-size",
        "64KiB",
        "--buffers",
        "8",
        "--connections",
        "3",
        "--cores",
        "2",
        "--limit-rate",
        "300KB/s",
    ];
    let mut child = spawn_get_with(&served, "f.bin", &dest, "5", &slow);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "finished too soon");
    assert_eq!(journaled_bytes(fixture.out.path()), 0, "a chunk finished");
    send_signal(child.id(), "-INT");
    let exit = wait_for_exit(&mut child, "-INT");
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert_eq!(exit.code(), Some(130), "{text}");
    let fetched: u64 = text
        .split(": interrupted after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|bytes| bytes.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {text}"));
    // Every chunk taken was fetched whole and journaled.
    let journaled = journaled_bytes(fixture.out.path());
    assert!(journaled >= 512 << 10, "{journaled} journaled; {text}");
    assert_eq!(journaled % (512 << 10), 0, "{text}");
    assert_eq!(fetched, journaled, "{text}");
    let output = spawn_get(&served, "f.bin", &dest)
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_resumed_at(&output, journaled);
    assert_same(&fixture.dest("f.bin"), "f.bin", size);
    assert_no_temp(fixture.out.path());
}

/// The drain after a signal is bounded (`config::SIGNAL_DRAIN_MAX_S`, 20
/// s): chunks that trickle in at 20 KB/s a connection (1 MiB parts: 50 s
/// each) are cut then, and the run ends as interrupted, with its summary
/// and `--stats-json`, before a scheduler's grace period (30 s) ends in its
/// SIGKILL. It used to wait for them, however long.
#[test]
fn a_signal_drains_for_20_s_at_most() {
    let size = 4 << 20;
    let fixture = Fixture::new(&[("t.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "20KB/s"]);
    let dest = fixture.dest_str("t.bin");
    let stats = fixture.out.path().join("stats.json");
    let trickle = [
        "--stats-json",
        stats.to_str().unwrap(),
        "--part-size",
        "1MiB",
        "--buffer-size",
        "64KiB",
        "--buffers",
        "8",
        "--connections",
        "2",
        "--cores",
        "1",
    ];
    let mut child = spawn_get_with(&served, "t.bin", &dest, "30", &trickle);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "finished too soon");
    let signalled = std::time::Instant::now();
    send_signal(child.id(), "-TERM");
    let exit = wait_for_exit(&mut child, "-TERM");
    let took = signalled.elapsed();
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert_eq!(exit.code(), Some(143), "{text}");
    assert!(
        took >= std::time::Duration::from_secs(19) && took < std::time::Duration::from_secs(24),
        "exited {took:?} after the signal: {text}"
    );
    assert!(text.contains("cutting them"), "{text}");
    assert!(!text.contains("exiting now"), "{text}");
    // It ended as a run does: its summary, and its stats.
    assert!(text.contains(": interrupted after "), "{text}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["verified"]["failed"], 1, "{stats}");
    assert!(!Path::new(&dest).exists());
}

/// A plain-URL origin (strong ETag) that sends each range at
/// `bytes_per_s` (0: at once), and the first time the range starting at
/// `stall_at` is asked for, sends 64 KiB of it and then nothing, holding
/// the connection open. `stalled` is set then.
fn stalling_origin(
    body: Vec<u8>,
    stall_at: usize,
    bytes_per_s: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> String {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let address = test_origin(move |reader, writer| {
        loop {
            let Some(range) = read_request(reader, body.len()) else {
                return;
            };
            let (first, last) = range;
            let head = partial_content_head(first, last, body.len(), "ETag: \"s1\"\r\n");
            if writer.write_all(head.as_bytes()).is_err() {
                return;
            }
            let stall = first == stall_at && !stalled.swap(true, Ordering::SeqCst);
            for piece in body[first..=last].chunks(16 << 10) {
                if writer.write_all(piece).is_err() {
                    return;
                }
                if stall && piece.as_ptr() > body[first..].as_ptr().wrapping_add(48 << 10) {
                    // Holds the connection, sending nothing more.
                    std::thread::sleep(std::time::Duration::from_secs(120));
                    return;
                }
                let rate = bytes_per_s.load(Ordering::Relaxed);
                if rate > 0 {
                    let piece_s = piece.len() as f64 / rate as f64;
                    std::thread::sleep(std::time::Duration::from_secs_f64(piece_s));
                }
            }
        }
    });
    format!("http://{address}/s.bin")
}

/// After a stop, a chunk that cannot finish (here: its range stalls) gives
/// up alone: the chunks below it finish and are journaled, and the rerun
/// resumes from them. It used to abort the whole object, cutting the
/// chunks below it too, and the run kept nothing (h26 S1).
#[test]
fn a_chunk_that_cannot_finish_after_a_signal_gives_up_alone() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let part = 512 << 10;
    let size = 4 * part;
    let body = content("s.bin", size);
    // 5 s a chunk: they end well after the stalled one is cut (2 s).
    let rate = Arc::new(AtomicUsize::new(100_000));
    let stalled = Arc::new(AtomicBool::new(false));
    let url = stalling_origin(
        body.clone(),
        3 * part,
        Arc::clone(&rate),
        Arc::clone(&stalled),
    );
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("s.bin");
    let tuning = [
        "--part-size",
        "512KiB",
        "--buffer-size",
        "64KiB",
        "--cores",
        "1",
        "--connections",
        "4",
    ];
    // SIGINT as a terminal's foreground job has it (see `spawn_get_with`).
    let mut child = Command::new("env")
        .arg("--default-signal=INT")
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", url.as_str(), &dest])
        .args(tuning)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !stalled.load(Ordering::SeqCst) {
        assert!(
            started.elapsed().as_secs() < 30,
            "the last chunk was not asked for"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(journaled_bytes(fixture.out.path()), 0, "a chunk finished");
    send_signal(child.id(), "-INT");
    let exit = wait_for_exit(&mut child, "-INT");
    let text = stderr(&child.wait_with_output().unwrap());
    assert_eq!(exit.code(), Some(130), "{text}");
    // The three chunks below the stalled one, whole.
    let journaled = journaled_bytes(fixture.out.path());
    assert_eq!(journaled, 3 * part as u64, "{text}");
    rate.store(0, Ordering::Relaxed);
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", url.as_str(), &dest])
        .args(tuning)
        .run_bounded();
    assert_ok(&output);
    assert_resumed_at(&output, journaled);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_no_temp(fixture.out.path());
}

/// A SIGINT the process started with ignored stays ignored, as a shell's
/// background job expects (`ringdown get … &` in a script, whose SIGINT the
/// shell ignores, is not stopped by a Ctrl-C meant for the foreground): the
/// download goes on to its end. SIGTERM still stops it.
#[test]
fn a_sigint_ignored_at_start_stays_ignored() {
    let size = 2 << 20;
    let fixture = Fixture::new(&[("i.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "400KB/s"]);
    let dest = fixture.dest_str("i.bin");
    // `trap '' INT` makes SIGINT ignored across the exec, as `&` does.
    let mut child = Command::new("sh")
        .args(["-c", "trap '' INT; exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", "b2://bkt/i.bin", &dest, "--realm", &served.realm])
        .args(SMALL_TUNING)
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while journaled_bytes(fixture.out.path()) == 0 {
        assert!(started.elapsed().as_secs() < 30, "no chunk was journaled");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send_signal(child.id(), "-INT");
    let exit = wait_for_exit(&mut child, "completion");
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert_eq!(exit.code(), Some(0), "{text}");
    assert!(!text.contains("SIGINT"), "{text}");
    assert_same(&fixture.dest("i.bin"), "i.bin", size);
    assert_no_temp(fixture.out.path());
}

/// Two gets of one object into one DEST at once: the second refuses to
/// start (it would remove or overwrite the first one's partial file, and the
/// first would then rename a file that is not its own into place, reported
/// verified), and the first finishes, byte for byte.
#[test]
fn a_second_get_of_the_same_object_refuses_while_the_first_runs() {
    let size = 4 << 20;
    let fixture = Fixture::new(&[("c.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "400KB/s"]);
    let dest = fixture.dest_str("c.bin");
    let mut first = spawn_get(&served, "c.bin", &dest);
    let started = std::time::Instant::now();
    while journaled_bytes(fixture.out.path()) == 0 {
        assert!(started.elapsed().as_secs() < 30, "no chunk was journaled");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = ringdown(&served, &["b2://bkt/c.bin", &dest, "--force"]);
    // Exit 2, as restore's lock: nothing was tried.
    assert_exit(&second, 2, "); wait for it to finish");
    let exit = wait_for_exit(&mut first, "completion");
    let output = first.wait_with_output().unwrap();
    assert_eq!(exit.code(), Some(0), "{}", stderr(&output));
    assert_same(&fixture.dest("c.bin"), "c.bin", size);
    assert_no_temp(fixture.out.path());
}

/// A signal cuts a retry's wait short: a server that answers every
/// download with 503 and `Retry-After: 300` does not hold the process for
/// minutes after SIGTERM.
#[test]
fn a_signal_cuts_retry_waits_short() {
    let fixture = Fixture::new(&[("w.bin", 4 << 20)]);
    let served = serve(fixture.data.path(), true, &["--status-rate", "503:1:300"]);
    let dest = fixture.dest_str("w.bin");
    let child = spawn_get(&served, "w.bin", &dest);
    signal_while_waiting(
        child,
        "it should still be waiting to retry",
        "-TERM",
        143,
        5,
    );
    assert!(!Path::new(&dest).exists());
}

/// Sends `signal` to `child` 1.5 s after its start, while it is still at
/// work (`waiting` says on what), and checks that it exits with `code`
/// within `within_s` seconds of the signal.
fn signal_while_waiting(
    mut child: std::process::Child,
    waiting: &str,
    signal: &str,
    code: i32,
    within_s: u64,
) {
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "{waiting}");
    send_signal(child.id(), signal);
    let signalled = std::time::Instant::now();
    let exit = wait_for_exit(&mut child, signal);
    let waited = signalled.elapsed();
    let output = child.wait_with_output().unwrap();
    assert_eq!(exit.code(), Some(code), "{}", stderr(&output));
    assert!(
        waited.as_secs() < within_s,
        "stopped {waited:?} after {signal}"
    );
}

/// A signal cuts a stalled receive short: a server that goes silent in
/// the middle of every body does not hold the process for the whole stall
/// timeout (30 s by default) after SIGINT.
#[test]
fn a_signal_cuts_a_stalled_receive_short() {
    let fixture = Fixture::new(&[("st.bin", 4 << 20)]);
    let served = serve(fixture.data.path(), true, &["--stall-rate", "1"]);
    let dest = fixture.dest_str("st.bin");
    // The default stall timeout: without the cut, 30 s after the signal.
    let child = spawn_get_with_timeout(&served, "st.bin", &dest, "30");
    signal_while_waiting(
        child,
        "it should still be waiting on the stalled bodies",
        "-INT",
        130,
        6,
    );
    assert!(!Path::new(&dest).exists());
}

/// A resumed get rewrites its journal through `NAME.new`; where that file
/// cannot be made (a full disk; here a directory in its place), the
/// journal is still rewritten, cut and written in place: its first lines
/// are the restated prefix and this run's boot, never the old run's lines
/// with this run's after them (its `durable` marks would vouch for both).
#[test]
fn a_journal_that_cannot_be_replaced_is_rewritten_in_place() {
    let size = 3 << 20;
    let fixture = Fixture::new(&[("jr.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "300KB/s"]);
    let dest = fixture.dest_str("jr.bin");
    let mut child = spawn_get(&served, "jr.bin", &dest);
    let first = kill_once_journaled(fixture.out.path(), &mut child, 256 << 10);
    let journal = journals_in(fixture.out.path()).remove(0);
    let blocked = format!("{}.new", journal.display());
    std::fs::create_dir_all(Path::new(&blocked).join("busy")).unwrap();
    let mut child = spawn_get(&served, "jr.bin", &dest);
    kill_once_journaled(fixture.out.path(), &mut child, first + 1);
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("chunk\t"), "{text}");
    assert!(lines[0].ends_with(&format!("\t{first}")), "{text}");
    assert!(lines[1].starts_with("durable\t"), "{text}");
    assert!(lines[2].starts_with("boot\t"), "{text}");
    assert_eq!(text.matches("boot\t").count(), 1, "{text}");
    std::fs::remove_dir_all(&blocked).unwrap();
    let output = spawn_get(&served, "jr.bin", &dest)
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_same(&fixture.dest("jr.bin"), "jr.bin", size);
    assert_no_temp(fixture.out.path());
}

/// After a reboot (the journal's `boot` line is not this boot's), chunk
/// records no `durable` mark covers are not trusted: a power cut may have
/// lost their bytes, which an object without a digest would never catch.
/// The download starts over.
#[test]
fn after_a_power_cut_a_get_does_not_resume_from_unconfirmed_chunks() {
    let size = 3 << 20;
    let fixture = Fixture::new(&[("pc.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "300KB/s"]);
    let dest = fixture.dest_str("pc.bin");
    let mut child = spawn_get(&served, "pc.bin", &dest);
    kill_once_journaled(fixture.out.path(), &mut child, 1 << 20);
    for path in journals_in(fixture.out.path()) {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("boot\t"), "{text}");
        let rebooted: String = text
            .lines()
            .map(|line| match line.starts_with("boot\t") {
                true => "boot\tbefore-the-power-cut\n".to_string(),
                false => format!("{line}\n"),
            })
            .collect();
        std::fs::write(&path, rebooted).unwrap();
    }
    let output = spawn_get(&served, "pc.bin", &dest)
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        !stderr(&output).contains("resumed at byte"),
        "{}",
        stderr(&output)
    );
    assert_same(&fixture.dest("pc.bin"), "pc.bin", size);
    assert_no_temp(fixture.out.path());
}

/// `kill -9` mid-download, then the same command: it continues from the
/// journaled chunks (the prefix is re-hashed from disk, not fetched again).
#[test]
fn killed_get_resumes_from_its_journal() {
    let size = 3 << 20;
    let fixture = Fixture::new(&[("k.bin", size)]);
    let log = fixture.out.path().join("access.jsonl");
    let served = serve(
        fixture.data.path(),
        true,
        &[
            "--rate-per-conn",
            "300KB/s",
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let dest = fixture.dest_str("k.bin");
    let mut child = spawn_get(&served, "k.bin", &dest);
    let journaled = kill_once_journaled(fixture.out.path(), &mut child, 1 << 20);
    assert!(!Path::new(&dest).exists());
    // The server logs the killed run's cut responses when it notices the
    // close: wait until the log is quiet.
    let mut first_sent = bytes_sent_in(&log, "k.bin");
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = bytes_sent_in(&log, "k.bin");
        if now == first_sent {
            break;
        }
        first_sent = now;
    }
    let output = spawn_get(&served, "k.bin", &dest)
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_resumed_at(&output, journaled);
    // The summary's rate is of what this run fetched, and says so.
    let fetched = size as u64 - journaled;
    assert!(
        stderr(&output).contains(&format!(
            "{size} bytes ({fetched} fetched; {journaled} were on disk from an earlier run)"
        )),
        "{}",
        stderr(&output)
    );
    assert_same(&fixture.dest("k.bin"), "k.bin", size);
    assert_no_temp(fixture.out.path());
    // The second run fetched the rest, not the journaled prefix.
    let second_sent = bytes_sent_in(&log, "k.bin") - first_sent;
    assert!(
        second_sent <= size as u64 - journaled,
        "{second_sent} bytes fetched again, {journaled} were journaled"
    );
}

/// What a killed run leaves beside DEST is resumed only while it is
/// ringdown's own: a regular file of one link, this user's. A partial file
/// made a hard link (a `cp -al` snapshot of the directory) is not written
/// through: the rerun starts over, its other name untouched (h43 #1). A
/// FIFO at the journal's name is refused at once, not read forever (h43
/// #9), and a journal with two names is not written into (h43 #11).
#[test]
fn leftovers_that_are_not_ringdowns_own_are_never_resumed_nor_written() {
    let size = 3 << 20;
    let fixture = Fixture::new(&[("h.bin", size), ("f.bin", 1000), ("l.bin", 1000)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "300KB/s"]);
    let dest = fixture.dest_str("h.bin");
    let mut child = spawn_get(&served, "h.bin", &dest);
    kill_once_journaled(fixture.out.path(), &mut child, 1 << 20);
    let hex = &sha1_hex(b"h.bin")[..16];
    let part = fixture.out.path().join(format!(".ringdown-{hex}.part"));
    let snapshot = tempfile::tempdir().unwrap();
    let other_name = snapshot.path().join("part-snapshot");
    std::fs::hard_link(&part, &other_name).unwrap();
    let before = std::fs::read(&other_name).unwrap();
    let output = spawn_get(&served, "h.bin", &dest)
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        !stderr(&output).contains("resumed at"),
        "{}",
        stderr(&output)
    );
    assert_same(&fixture.dest("h.bin"), "h.bin", size);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&dest).unwrap().nlink(), 1);
    assert!(
        std::fs::read(&other_name).unwrap() == before,
        "written through a hard link"
    );
    assert_no_temp(fixture.out.path());

    let hex = &sha1_hex(b"f.bin")[..16];
    let journal = fixture.out.path().join(format!(".ringdown-{hex}.journal"));
    common::make_fifo(&journal);
    let output = ringdown(&served, &["b2://bkt/f.bin", &fixture.dest_str("f.bin")]);
    assert_exit(&output, 2, "is a FIFO");
    assert!(!fixture.dest("f.bin").exists());
    std::fs::remove_file(&journal).unwrap();

    let hex = &sha1_hex(b"l.bin")[..16];
    let journal = fixture.out.path().join(format!(".ringdown-{hex}.journal"));
    let notes = snapshot.path().join("notes.txt");
    std::fs::write(&notes, "precious line\n").unwrap();
    std::fs::hard_link(&notes, &journal).unwrap();
    let output = ringdown(&served, &["b2://bkt/l.bin", &fixture.dest_str("l.bin")]);
    assert_exit(&output, 2, "a file with 2 names (hard links)");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "precious line\n");
}

/// DEST forms whose download would land wrongly are refused before any
/// request (exit 2): `--stats-json` naming DEST, whose stats replaced the
/// verified download (h43 #2); a symbolic link to a device, replaced by a
/// file even with `--force` (h43 #3: `/dev/stdout`); a source named like a
/// file ringdown keeps beside DEST (h43 #8). A link to a file is said to
/// be one: `--force` replaces the link.
#[test]
fn dest_forms_that_would_land_wrongly_are_refused_up_front() {
    let fixture = Fixture::new(&[("a.bin", 1000), (".ringdown-0123456789abcdef.part", 10)]);
    let served = serve(fixture.data.path(), false, &[]);
    let dest = fixture.dest_str("a.bin");
    let out = fixture.out.path().to_str().unwrap();
    for args in [
        vec!["b2://bkt/a.bin", &dest, "--stats-json", &dest],
        vec!["b2://bkt/a.bin", out, "--stats-json", &dest],
    ] {
        let output = ringdown(&served, &args);
        assert_exit(&output, 2, "names DEST");
        assert!(!fixture.dest("a.bin").exists());
    }
    let to_null = fixture.dest("to-null");
    std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
    let output = ringdown(
        &served,
        &["b2://bkt/a.bin", to_null.to_str().unwrap(), "--force"],
    );
    assert_exit(&output, 2, "a symbolic link to a character device");
    assert!(to_null.is_symlink());
    let to_file = fixture.dest("to-file");
    std::fs::write(fixture.dest("file"), b"old").unwrap();
    std::os::unix::fs::symlink(fixture.dest("file"), &to_file).unwrap();
    let output = ringdown(&served, &["b2://bkt/a.bin", to_file.to_str().unwrap()]);
    assert_exit(&output, 2, "--force replaces the link");
    let output = ringdown(&served, &["b2://bkt/.ringdown-0123456789abcdef.part", out]);
    assert_exit(&output, 2, "a file ringdown keeps beside a download");
    let theirs = fixture.dest(".ringdown-0123456789abcdef.part");
    let output = ringdown(&served, &["b2://bkt/a.bin", theirs.to_str().unwrap()]);
    assert_exit(&output, 2, "named like a file ringdown keeps");
    // `/dev/stdout` leads to a regular file when stdout is one (h43 #3).
    let output = ringdown(
        &served,
        &["b2://bkt/a.bin", "/dev/ringdown-test-dest", "--force"],
    );
    assert_exit(&output, 2, "on the system's /dev");
    assert!(!Path::new("/dev/ringdown-test-dest").exists());
    // A mount point at DEST (a bind-mounted file): the rename at the end
    // fails with EBUSY, after the whole download (h43 #4).
    let mounted = fixture.dest("mounted");
    std::fs::write(&mounted, b"").unwrap();
    let bound = std::process::Command::new("mount")
        .args(["--bind", "/etc/hostname"])
        .arg(&mounted)
        .output()
        .is_ok_and(|output| output.status.success());
    if bound {
        let output = ringdown(
            &served,
            &["b2://bkt/a.bin", mounted.to_str().unwrap(), "--force"],
        );
        let _ = std::process::Command::new("umount").arg(&mounted).output();
        assert_exit(&output, 2, "is a mount point");
    } else {
        eprintln!("skipped: cannot bind-mount a file (not root?)");
    }
    // Stats through a symbolic link to DEST, which does not exist yet:
    // refused up front (h45, h46 #5); after the run, a link made since is
    // not written through either (`cli::get`).
    let linked_stats = fixture.dest("stats-link");
    std::os::unix::fs::symlink(fixture.dest("linked.bin"), &linked_stats).unwrap();
    let output = ringdown(
        &served,
        &[
            "b2://bkt/a.bin",
            &fixture.dest_str("linked.bin"),
            "--stats-json",
            linked_stats.to_str().unwrap(),
        ],
    );
    assert_exit(&output, 2, "leads to DEST");
    assert!(!fixture.dest("linked.bin").exists());

    // `--force` over a file keeps its permissions (and, as root, its
    // owner): a 0600 dump became 0644 (h43 #5).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let private = fixture.dest("private");
    std::fs::write(&private, b"secret").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let nobody = rustix::process::Uid::from_raw(65534);
    if is_root() {
        rustix::fs::chown(&private, Some(nobody), None).unwrap();
    }
    assert_ok(&ringdown(
        &served,
        &["b2://bkt/a.bin", private.to_str().unwrap(), "--force"],
    ));
    let meta = std::fs::metadata(&private).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    if is_root() {
        assert_eq!(meta.uid(), nobody.as_raw());
    }
    assert_same(&private, "a.bin", 1000);
    // In a sticky directory, a file another user planted is not handed the
    // download, nor writable by others (h46 #6).
    if is_root() {
        let shared = fixture.dest("sticky");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let planted = shared.join("config");
        std::fs::write(&planted, b"planted").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
        rustix::fs::chown(&planted, Some(nobody), None).unwrap();
        assert_ok(&ringdown(
            &served,
            &["b2://bkt/a.bin", planted.to_str().unwrap(), "--force"],
        ));
        let meta = std::fs::metadata(&planted).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o644));
    }
}

/// An origin that answers every range with a chunked 206 (valid HTTP/1.1,
/// from some proxies) gets one streamed GET, whose body must hold the
/// length its probe's Content-Range announced: each chunk failed all its
/// attempts before (h41 #7). `extra_bytes` is what the whole body holds
/// past (or short of, negative) the object.
fn chunked_range_origin(size: usize, extra_bytes: isize) -> String {
    use std::io::Write;
    let body = content("c.bin", size);
    let address = test_origin(move |reader, writer| {
        use std::io::BufRead;
        loop {
            // (`read_request` does not say whether a Range came: without
            // one, the answer is a 200, chunked too.)
            let mut range = None;
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) <= 2 {
                    break;
                }
                let lower = line.trim().to_ascii_lowercase();
                if let Some((first, last)) = lower
                    .strip_prefix("range: bytes=")
                    .and_then(|spec| spec.split_once('-'))
                {
                    range = Some((first.parse().unwrap(), last.parse().unwrap()));
                }
            }
            let (first, last): (usize, usize) = range.unwrap_or((0, size - 1));
            let part = &body[first..=last];
            // The probe's answer is right; the whole body is not.
            let part = match extra_bytes {
                _ if range.is_some() => part.to_vec(),
                0 => part.to_vec(),
                n if n > 0 => [part, &vec![b'x'; n as usize][..]].concat(),
                n => part[..part.len() - n.unsigned_abs()].to_vec(),
            };
            let head = match range {
                Some(_) => format!(
                    "HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\
                     Content-Range: bytes {first}-{last}/{size}\r\nETag: \"c1\"\r\n\r\n"
                ),
                None => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"c1\"\r\n\r\n"
                    .to_string(),
            };
            let mut answer = head.into_bytes();
            for piece in part.chunks(10_000) {
                answer.extend(format!("{:x}\r\n", piece.len()).as_bytes());
                answer.extend(piece);
                answer.extend(b"\r\n");
            }
            answer.extend(b"0\r\n\r\n");
            if writer.write_all(&answer).is_err() {
                return;
            }
        }
    });
    format!("http://{address}/c.bin")
}

#[test]
fn ranges_answered_chunked_come_in_one_streamed_get_of_the_announced_length() {
    let size = 300_000;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("c.bin");
    let get = |url: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
        command
            .args(["get", url, dest.to_str().unwrap(), "--max-attempts", "2"])
            .args(SMALL_TUNING);
        run_bounded(command)
    };
    let output = get(&chunked_range_origin(size, 0));
    assert_ok(&output);
    assert!(
        stderr(&output).contains("chunked bodies"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read(&dest).unwrap(), content("c.bin", size));
    std::fs::remove_file(&dest).unwrap();
    for extra_bytes in [-10, 20] {
        let output = get(&chunked_range_origin(size, extra_bytes));
        assert_exit(&output, 1, "where Content-Range announced 300000");
        assert!(!dest.exists());
        assert_no_temp(out.path());
    }
}

/// A rerun with a part size that does not divide the journaled prefix
/// (64 KiB parts killed, 3 MiB parts again) resumes from all of it: rounded
/// down to the new part size, it fetched the whole prefix again, and said
/// nothing.
#[test]
fn a_rerun_with_another_part_size_resumes_from_the_whole_journaled_prefix() {
    let size = 6 << 20;
    let fixture = Fixture::new(&[("p.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "300KB/s"]);
    let dest = fixture.dest_str("p.bin");
    let mut child = spawn_get(&served, "p.bin", &dest);
    let journaled = kill_once_journaled(fixture.out.path(), &mut child, 1 << 20);
    assert_ne!(
        journaled % (3 << 20),
        0,
        "3 MiB parts would divide {journaled}"
    );
    let rerun = [
        "b2://bkt/p.bin",
        &dest,
        "--part-size",
        "3MiB",
        "--buffer-size",
        "64KiB",
        "--cores",
        "1",
    ];
    let output = ringdown(&served, &rerun);
    assert_ok(&output);
    assert_resumed_at(&output, journaled);
    assert_same(&fixture.dest("p.bin"), "p.bin", size);
    assert_no_temp(fixture.out.path());
}

/// A journal beside a finished DEST whose partial file is gone (a kill
/// between the rename into DEST and the journal's removal) is removed by
/// the next run, which refuses DEST as it exists; only `--force`, a whole
/// download again, took it away. A journal whose partial file is there
/// stays: `--force` resumes from it.
#[test]
fn a_journal_left_beside_a_finished_dest_is_removed() {
    let fixture = Fixture::new(&[("j.bin", 100_000)]);
    let served = serve(fixture.data.path(), true, &[]);
    let dest = fixture.dest_str("j.bin");
    assert_ok(&ringdown(&served, &["b2://bkt/j.bin", &dest]));
    let hex = &sha1_hex(b"j.bin")[..16];
    let journal = fixture.out.path().join(format!(".ringdown-{hex}.journal"));
    let part = fixture.out.path().join(format!(".ringdown-{hex}.part"));
    std::fs::write(&journal, "chunk\tid\t100000\t65536\n").unwrap();
    let output = ringdown(&served, &["b2://bkt/j.bin", &dest]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(!journal.exists(), "the orphan journal stayed");
    std::fs::write(&journal, "chunk\tid\t100000\t65536\n").unwrap();
    std::fs::write(&part, b"partial").unwrap();
    let output = ringdown(&served, &["b2://bkt/j.bin", &dest]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        journal.exists() && part.exists(),
        "a resumable pair was removed"
    );
    assert_same(&fixture.dest("j.bin"), "j.bin", 100_000);
}

fn bytes_sent_in(log: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["method"] == "GET" && record["name"] == name)
        .map(|record| record["bytes_sent"].as_u64().unwrap_or(0))
        .sum()
}

/// A flipped byte is only visible to the whole-object SHA1: the object is
/// downloaded once more, then refused. Over several seeds every run must end
/// either with correct bytes or with a clear mismatch error and nothing left
/// behind, and at least one run must recover through the second download.
#[test]
fn corrupt_bodies_are_caught_by_sha1() {
    let size = 6 * PART;
    let fixture = Fixture::new(&[("c.bin", size)]);
    let mut recovered = 0;
    let mut refused = 0;
    for seed in 1..=24 {
        let seed = seed.to_string();
        let served = serve(
            fixture.data.path(),
            true,
            &["--corrupt-rate", "0.1", "--seed", &seed],
        );
        let dest = fixture.dest_str("c.bin");
        let _ = std::fs::remove_file(&dest);
        let mut args = vec!["b2://bkt/c.bin", &dest];
        args.extend_from_slice(SMALL_TUNING);
        let output = ringdown(&served, &args);
        let text = stderr(&output);
        if output.status.success() {
            assert_same(Path::new(&dest), "c.bin", size);
            if text.contains("downloading again") {
                // The second download counts as a retry.
                assert!(!text.contains("retries: 0,"), "{text}");
                recovered += 1;
            }
        } else {
            assert_eq!(output.status.code(), Some(1), "{text}");
            assert!(text.contains("SHA1 mismatch"), "{text}");
            assert!(
                !Path::new(&dest).exists(),
                "a refused object must not be at DEST"
            );
            refused += 1;
        }
        assert_no_temp(fixture.out.path());
    }
    assert!(
        recovered > 0,
        "no seed recovered through a second download ({refused} refused)"
    );
}

/// B2 publishes download hosts apart from API hosts: `get` must download
/// from `downloadUrl`, never from the realm. The API server here publishes a
/// second server as its download host; that one does not know the first
/// one's tokens, so the download is refused there (401), which proves where
/// it went, and nothing is downloaded from the API server.
#[test]
fn downloads_go_to_the_published_download_url() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "bkt/a.bin", &content("a", 70_000));
    let logs = tempfile::tempdir().unwrap();
    let download_log = logs.path().join("download-access.jsonl");
    let download_host = serve(
        root.path(),
        true,
        &["--access-log", download_log.to_str().unwrap()],
    );
    let api_log = logs.path().join("api-access.jsonl");
    let api_host = serve(
        root.path(),
        true,
        &[
            "--access-log",
            api_log.to_str().unwrap(),
            "--download-url",
            &download_host.realm,
        ],
    );
    let dest = tempfile::tempdir().unwrap();
    let output = ringdown(
        &api_host,
        &[
            "b2://bkt/a.bin",
            dest.path().to_str().unwrap(),
            "--max-attempts",
            "2",
        ],
    );
    // 3: authentication failed (the download host refused the token), told
    // apart from a valid key that may not read the name.
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("authentication failed: GET b2://bkt/a.bin: HTTP 401 bad_auth_token"),
        "{}",
        stderr(&output)
    );
    let downloads = std::fs::read_to_string(&download_log).unwrap();
    assert!(
        downloads.contains("/file/bkt/a.bin") && downloads.contains("401"),
        "the download host saw the download: {downloads}"
    );
    let api = std::fs::read_to_string(&api_log).unwrap_or_default();
    assert!(
        !api.contains("/file/"),
        "nothing downloaded from the API host: {api}"
    );
    assert!(!dest.path().join("a.bin").exists());
}

/// `get --as-of`: the version of one name current at an instant, by its
/// fileId (a large old version in ranged parts, verified against its own
/// `large_file_sha1`), with that version's time; a name that did not exist
/// then, or was deleted by then, is an error that says so; a plain URL is
/// refused before any network.
#[test]
fn as_of_gets_the_version_current_at_an_instant() {
    // Before the bucket files' mtime (`Fixture`: 1_700_000_000 s), which
    // makes those the newest versions.
    const T1: u64 = 1_699_999_000_000;
    const T2: u64 = 1_699_999_500_000;
    const NOW: u64 = 1_700_000_000_000;
    let fixture = Fixture::new(&[("doc.bin", 5 * PART + 7)]);
    let history = fixture.data.path().join(".versions/bkt");
    let old_doc = content("doc-v1", 3 * PART - 5);
    write_file(&history, &format!("doc.bin/@{T1}"), &old_doc);
    write_file(&history, &format!("deleted.txt/@{T1}"), b"deleted at T2");
    write_file(&history, &format!("deleted.txt/@{T2}.hide"), b"");
    let served = serve(
        fixture.data.path(),
        false,
        &["--large-file-threshold", "128KiB"],
    );
    let at = |ms: u64| ringdown::units::format_instant_ms(ms);
    let mut args = SMALL_TUNING.to_vec();

    let dest = fixture.dest_str("doc-then.bin");
    let between = at(T1 + 1);
    args.extend([
        "b2://bkt/doc.bin",
        dest.as_str(),
        "--as-of",
        between.as_str(),
    ]);
    let output = ringdown(&served, &args);
    assert_ok(&output);
    assert!(stderr(&output).contains("the version uploaded at 2023-11-14T21:56:40Z"));
    assert_eq!(std::fs::read(&dest).unwrap(), old_doc);
    let mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();
    assert_eq!(
        mtime,
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(T1)
    );
    // From NOW on (inclusive), and without --as-of: the bucket's file.
    let now = at(NOW);
    for (label, as_of) in [("at-now", Some(now.as_str())), ("now", None)] {
        let dest = fixture.dest_str(label);
        let mut args = SMALL_TUNING.to_vec();
        args.extend(["b2://bkt/doc.bin", dest.as_str()]);
        args.extend(as_of.map(|time| ["--as-of", time]).into_iter().flatten());
        assert_ok(&ringdown(&served, &args));
        assert_same(Path::new(&dest), "doc.bin", 5 * PART + 7);
    }

    for (name, instant, needle) in [
        ("deleted.txt", at(T2), "no version existed then"),
        ("deleted.txt", at(T1 - 1), "no version existed then"),
        ("never.txt", at(T2), "no version existed then"),
    ] {
        let dest = fixture.dest_str("x");
        let source = format!("b2://bkt/{name}");
        let mut args = SMALL_TUNING.to_vec();
        args.extend([source.as_str(), dest.as_str(), "--as-of", instant.as_str()]);
        assert_exit(&ringdown(&served, &args), 1, needle);
        assert!(!Path::new(&dest).exists());
    }
    let dest = fixture.dest_str("deleted.txt");
    let mut args = SMALL_TUNING.to_vec();
    let before_deletion = at(T2 - 1);
    args.extend([
        "b2://bkt/deleted.txt",
        dest.as_str(),
        "--as-of",
        before_deletion.as_str(),
    ]);
    assert_ok(&ringdown(&served, &args));
    assert_eq!(std::fs::read(&dest).unwrap(), b"deleted at T2");

    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args([
            "get",
            "https://127.0.0.1:9/x?sig=secret",
            "/tmp/never",
            "--as-of",
            "2023-11-14",
        ])
        .output()
        .unwrap();
    assert_exit(&output, 2, "--as-of needs a b2://BUCKET/NAME source");
    assert!(!stderr(&output).contains("secret"));
    assert_no_temp(fixture.out.path());
}

/// `b2id://FILEID` gets that one version (an old one in ranged parts, by
/// fileId), says which file and upload it is, and refuses a hide marker, an
/// unknown ID, a malformed one, a directory DEST and `--as-of`.
#[test]
fn b2id_gets_one_version_by_its_file_id() {
    const T1: u64 = 1_699_999_000_000;
    const T2: u64 = 1_699_999_500_000;
    let fixture = Fixture::new(&[("doc.bin", 2 * PART + 3)]);
    let history = fixture.data.path().join(".versions/bkt");
    let old_doc = content("doc-v1", 3 * PART - 5);
    write_file(&history, &format!("doc.bin/@{T1}"), &old_doc);
    write_file(&history, &format!("gone.txt/@{T1}"), b"gone at T2");
    write_file(&history, &format!("gone.txt/@{T2}.hide"), b"");
    let served = serve(fixture.data.path(), false, &[]);
    let (token, _) = served.authorize();
    let bucket_id = served.bucket_id(&token, "bkt");
    let listing = served.post(
        "b2_list_file_versions",
        &token,
        serde_json::json!({"bucketId": bucket_id}),
    );
    let id_of = |name: &str, action: &str, upload_ms: u64| {
        listing.json()["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|file| {
                file["fileName"] == name
                    && file["action"] == action
                    && file["uploadTimestamp"] == upload_ms
            })
            .and_then(|file| file["fileId"].as_str())
            .unwrap_or_else(|| panic!("{name} {action} {upload_ms} not listed"))
            .to_string()
    };

    let old = format!("b2id://{}", id_of("doc.bin", "upload", T1));
    let dest = fixture.dest_str("doc-v1.bin");
    let mut args = SMALL_TUNING.to_vec();
    args.extend([old.as_str(), dest.as_str()]);
    let output = ringdown(&served, &args);
    assert_ok(&output);
    assert!(
        stderr(&output).contains("is \"doc.bin\", the version uploaded at 2023-11-14T21:56:40Z"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read(&dest).unwrap(), old_doc);
    let mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();
    assert_eq!(
        mtime,
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(T1)
    );
    // --quiet: the result line alone; the note is left out too.
    let quiet_dest = fixture.dest_str("doc-quiet.bin");
    let mut quiet = SMALL_TUNING.to_vec();
    quiet.extend([old.as_str(), quiet_dest.as_str(), "--quiet"]);
    let output = ringdown(&served, &quiet);
    assert_ok(&output);
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));

    let hidden = format!("b2id://{}", id_of("gone.txt", "hide", T2));
    let dest = fixture.dest_str("gone.txt");
    assert_exit(
        &ringdown(&served, &[hidden.as_str(), dest.as_str()]),
        1,
        "hidden",
    );
    assert!(!Path::new(&dest).exists());
    // A well-formed ID of no version: the old one's with its version hash
    // (`_f<hex>`) changed.
    let at = old.find("_f").expect("serve's fileId format") + 2;
    let flipped = if &old[at..=at] == "0" { "1" } else { "0" };
    let unknown = format!("{}{flipped}{}", &old[..at], &old[at + 1..]);
    assert_exit(
        &ringdown(&served, &[unknown.as_str(), dest.as_str()]),
        1,
        "b2_get_file_info",
    );
    assert!(!Path::new(&dest).exists());

    let out_dir = fixture.out.path().to_str().unwrap().to_string();
    assert_exit(
        &ringdown(&served, &[old.as_str(), out_dir.as_str()]),
        2,
        "give DEST as the file's path",
    );
    assert_exit(
        &ringdown(&served, &["b2id://4_z/../x", dest.as_str()]),
        2,
        "expected b2id://FILEID",
    );
    assert_exit(
        &ringdown(
            &served,
            &[old.as_str(), dest.as_str(), "--as-of", "2023-11-14"],
        ),
        2,
        "one version already",
    );
    assert_no_temp(fixture.out.path());
}

/// `--limit-rate` is a total over every core and connection: 3 MB at 2 MB/s
/// take at least 1.4 s (the first 100 ms burst is free), in ranged parts
/// over 2 cores × 3 connections; the waits show as the `rate_wait` stage.
/// Only the lower bound is checked: a busy machine can only be slower.
#[test]
fn limit_rate_caps_the_total_over_every_connection() {
    let size = 3_000_000;
    let fixture = Fixture::new(&[("paced.bin", size)]);
    let served = serve(fixture.data.path(), false, &[]);
    let dest = fixture.dest_str("paced.bin");
    let stats = fixture.dest_str("stats.json");
    let mut args = SMALL_TUNING.to_vec();
    args.extend(["b2://bkt/paced.bin", dest.as_str(), "--limit-rate", "2MB/s"]);
    args.extend(["--stats-json", stats.as_str()]);
    let started = std::time::Instant::now();
    let output = ringdown(&served, &args);
    let elapsed = started.elapsed();
    assert_ok(&output);
    assert_same(Path::new(&dest), "paced.bin", size);
    assert!(
        elapsed >= std::time::Duration::from_millis(1400),
        "3 MB at 2 MB/s in {elapsed:?}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(stats["stages"]["rate_wait"]["count"].as_u64().unwrap() > 0);
    let mut args = SMALL_TUNING.to_vec();
    args.extend(["b2://bkt/paced.bin", "/tmp/never", "--limit-rate", "0"]);
    assert_exit(
        &ringdown(&served, &args),
        2,
        "--limit-rate must be positive",
    );
}

/// A plain-HTTP origin on 127.0.0.1 for one object, slow enough for sending
/// ahead to pay: each answer starts 20 ms after its request is read (a round
/// trip) and its body comes at ~16 MB/s. It counts the requests that were
/// already waiting when the answer before them ended (pipelined), and of
/// those, the ones after a cut (`Pipelining::CutOnce`).
fn pipelining_origin(
    data: std::sync::Arc<Vec<u8>>,
    mode: Pipelining,
) -> (String, std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>) {
    use std::io::{BufRead, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let pipelined = std::sync::Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let seen = std::sync::Arc::clone(&pipelined);
    let cut = AtomicBool::new(false);
    let changed = AtomicBool::new(false);
    let address = test_origin(move |reader, writer| {
        let mut answered_here = 0;
        loop {
            let Some(range) = read_request(reader, data.len()) else {
                return;
            };
            std::thread::sleep(std::time::Duration::from_millis(20));
            let (first, last) = range;
            let version = if changed.load(Ordering::Relaxed) {
                2
            } else {
                1
            };
            let etag = format!("ETag: \"v{version}\"\r\n");
            let head = partial_content_head(first, last, data.len(), &etag);
            if writer.write_all(head.as_bytes()).is_err() {
                return;
            }
            let body = &data[first..=last];
            let last_piece = body.len().saturating_sub(32 * 1024);
            for piece in body[..last_piece].chunks(32 * 1024) {
                if writer.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            // Is the next request here before this answer ends?
            let mut byte = [0u8; 1];
            writer.set_nonblocking(true).unwrap();
            let waiting =
                !reader.buffer().is_empty() || matches!(writer.peek(&mut byte), Ok(n) if n > 0);
            writer.set_nonblocking(false).unwrap();
            if writer.write_all(&body[last_piece..]).is_err() {
                return;
            }
            if waiting {
                seen[0].fetch_add(1, Ordering::Relaxed);
                // (`CutOnce`: after this connection answered one,
                // whose head the client has read by now.)
                let (close, stall) = match mode {
                    Pipelining::Answers => (false, false),
                    Pipelining::ChangesWhenSentAhead => {
                        changed.store(true, Ordering::Relaxed);
                        (false, false)
                    }
                    Pipelining::Refuses => (true, false),
                    Pipelining::CutOnce => (
                        answered_here > 0 && !cut.swap(true, Ordering::Relaxed),
                        false,
                    ),
                    Pipelining::StallsAfterOne => (false, cut.swap(true, Ordering::Relaxed)),
                };
                answered_here += 1;
                let after_cut =
                    matches!(mode, Pipelining::CutOnce) && cut.load(Ordering::Relaxed) && !close;
                if after_cut || stall {
                    seen[1].fetch_add(1, Ordering::Relaxed);
                }
                if stall {
                    // Never answered, until the client gives up.
                    let _ = std::io::copy(reader, &mut std::io::sink());
                    return;
                }
                if close {
                    // Read the request it will not answer, so the
                    // close is a FIN after this whole answer, not a
                    // reset that could cut it short.
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let _ = writer.shutdown(std::net::Shutdown::Write);
                    return;
                }
            }
        }
    });
    (format!("http://{address}/p.bin"), pipelined)
}

/// How `pipelining_origin` takes a GET that waits (sent ahead) when the
/// answer before it ends.
#[derive(Clone, Copy)]
enum Pipelining {
    /// Answers it.
    Answers,
    /// A server that does not pipeline: closes the connection instead.
    Refuses,
    /// Answers them all but one, after that connection has answered one:
    /// there it closes the connection (a keep-alive limit, a restart), once.
    CutOnce,
    /// Answers the first; leaves every later one unanswered, holding its
    /// connection open (an intermediary that loses pipelined requests).
    StallsAfterOne,
    /// Answers it, and every later request, with a new version (another
    /// ETag): the object changed just then.
    ChangesWhenSentAhead,
}

/// `get` of a `mib` MiB object in 1 MiB parts on two connections of one
/// core from `pipelining_origin`: the run's output, how many GETs the
/// origin saw sent ahead, and how many of them it answered after its cut
/// (`CutOnce`) or left unanswered (`StallsAfterOne`). The file is checked
/// whole (and verified by `--sha1`).
fn get_from_pipelining_origin(
    mode: Pipelining,
    mib: usize,
    extra: &[&str],
) -> (Output, usize, usize) {
    let data = std::sync::Arc::new(content("p.bin", mib << 20));
    let (url, pipelined) = pipelining_origin(std::sync::Arc::clone(&data), mode);
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("p.bin");
    let sha1 = sha1_hex(&data);
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .arg("get")
        .args([url.as_str(), &dest, "--sha1", &sha1, "--part-size", "1MiB"])
        .args(["--connections", "2", "--cores", "1"])
        .args(extra)
        .run_bounded();
    assert_ok(&output);
    assert_eq!(std::fs::read(&dest).unwrap(), *data);
    assert_no_temp(fixture.out.path());
    let count = |i: usize| pipelined[i].load(std::sync::atomic::Ordering::Relaxed);
    (output, count(0), count(1))
}

/// On a link with a round trip to hide, a chunk's connection sends the next
/// chunk's GET before the body ends (HTTP/1.1 pipelining) and reads both
/// answers in order: the file is whole and verified.
#[test]
fn chunks_are_requested_ahead_when_a_round_trip_is_to_be_hidden() {
    let (output, pipelined, _) = get_from_pipelining_origin(Pipelining::Answers, 6, &[]);
    let text = stderr(&output);
    assert!(pipelined > 0, "no GET was sent ahead:\n{text}");
    assert!(!text.contains("pipelined"), "{text}");
}

/// A server that closes the connection instead of answering a pipelined
/// GET: that GET goes out again on a new connection, not counted as an
/// attempt (`--max-attempts 1` still succeeds), the run says once that it
/// stops sending ahead, and the file is whole.
#[test]
fn a_server_that_does_not_pipeline_gets_one_request_at_a_time() {
    let (output, pipelined, _) =
        get_from_pipelining_origin(Pipelining::Refuses, 6, &["--max-attempts", "1"]);
    let text = stderr(&output);
    assert!(pipelined > 0, "no GET was sent ahead:\n{text}");
    assert_eq!(
        text.matches("did not answer a pipelined request").count(),
        1,
        "{text}"
    );
}

/// An origin that has answered a GET sent ahead takes pipelining: a
/// connection it closes later with GETs out ahead (a keep-alive limit, a
/// reset) is that connection's end, not a refusal. The GET goes out again
/// on a new connection, and the run keeps sending ahead: one cut used to
/// turn pipelining off for the rest of the run.
#[test]
fn one_cut_after_pipelined_answers_does_not_stop_pipelining() {
    let (output, pipelined, after_cut) =
        get_from_pipelining_origin(Pipelining::CutOnce, 16, &["--max-attempts", "1"]);
    let text = stderr(&output);
    assert!(pipelined > 1, "no cut:\n{text}");
    assert!(
        !text.contains("did not answer a pipelined request"),
        "{text}"
    );
    assert!(after_cut > 0, "no GET sent ahead after the cut:\n{text}");
}

/// A stall is not a cut: an origin that has answered a GET sent ahead but
/// leaves the later ones unanswered, holding the connection open, costs
/// `--timeout-s` once per connection waiting on one, and the run stops
/// sending ahead. The leniency for cuts (above) used to cover stalls too:
/// every new connection sent ahead again and waited out its stall, 13 of
/// them in a 16 MiB get (h24).
#[test]
fn a_stall_after_pipelined_answers_stops_pipelining() {
    let (output, _, stalls) =
        get_from_pipelining_origin(Pipelining::StallsAfterOne, 16, &["--timeout-s", "2"]);
    let text = stderr(&output);
    assert!(stalls >= 1, "no stall:\n{text}");
    assert!(stalls <= 2, "{stalls} stalls:\n{text}");
    assert_eq!(
        text.matches("did not answer a pipelined request").count(),
        1,
        "{text}"
    );
}

/// An object that really changes while GETs go out ahead fails as a
/// change, and only that is said: the answer sent ahead that names the new
/// version could also be an origin out of step, so the GET goes again
/// alone first, and the note that the run stops sending ahead waited for
/// that answer. It used to come first, before the change error (h25 #6g).
#[test]
fn a_change_seen_in_a_pipelined_answer_is_said_once_as_a_change() {
    let data = std::sync::Arc::new(content("p.bin", 6 << 20));
    let (url, pipelined) = pipelining_origin(data, Pipelining::ChangesWhenSentAhead);
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("p.bin");
    // One connection: the first answer sent ahead is the first to name v2.
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .arg("get")
        .args([url.as_str(), &dest, "--part-size", "1MiB"])
        .args(["--connections", "1", "--cores", "1"])
        .run_bounded();
    let text = stderr(&output);
    assert!(
        pipelined[0].load(std::sync::atomic::Ordering::Relaxed) > 0,
        "{text}"
    );
    assert_exit(
        &output,
        1,
        "the object changed on the origin during the download",
    );
    assert!(!text.contains("pipelined"), "{text}");
    assert!(!Path::new(&dest).exists());
}

/// A test origin on 127.0.0.1: `serve` runs for each connection, on a
/// thread of its own, with its reader and writer. Its address.
fn test_origin<F>(serve: F) -> std::net::SocketAddr
where
    F: Fn(&mut std::io::BufReader<std::net::TcpStream>, &mut std::net::TcpStream)
        + Send
        + Sync
        + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let serve = std::sync::Arc::clone(&serve);
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = std::io::BufReader::new(stream);
                serve(&mut reader, &mut writer);
            });
        }
    });
    address
}

/// A test origin's `206` head for bytes `first..=last` of `size`, with
/// `headers` (whole lines, each ending in CRLF) after the framing ones.
fn partial_content_head(first: usize, last: usize, size: usize, headers: &str) -> String {
    format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
         Content-Range: bytes {first}-{last}/{size}\r\n{headers}\r\n",
        last - first + 1
    )
}

/// Reads one request of a test origin's client: `None` once the client
/// closed, else the byte range it asks for (`Range: bytes=A-B`; the whole
/// `size` bytes without one).
fn read_request(reader: &mut impl std::io::BufRead, size: usize) -> Option<(usize, usize)> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return None;
    }
    let mut range = (0, size - 1);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) <= 2 {
            return Some(range);
        }
        let lower = line.trim().to_ascii_lowercase();
        if let Some((first, last)) = lower
            .strip_prefix("range: bytes=")
            .and_then(|spec| spec.split_once('-'))
        {
            range = (first.parse().unwrap(), last.parse().unwrap());
        }
    }
}

/// A plain-URL origin whose object changes after `switch_after` answers:
/// version 1 before, version 2 after, each answer carrying `header(v)`. It
/// ignores `If-Match`, as some origins do.
fn changing_origin(size: usize, switch_after: usize, header: fn(u32) -> String) -> String {
    origin_of_versions(size, switch_after, (usize::MAX, 403), header)
}

/// `changing_origin` that answers `refusal.1` (401 or 403, with no body)
/// from its `refusal.0`th request on: a presigned URL that expired.
fn origin_of_versions(
    size: usize,
    switch_after: usize,
    refusal: (usize, u16),
    header: fn(u32) -> String,
) -> String {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let versions = [content("v1", size), content("v2", size)];
    let answered = AtomicUsize::new(0);
    let address = test_origin(move |reader, writer| {
        loop {
            let Some(range) = read_request(reader, size) else {
                return;
            };
            let answer = answered.fetch_add(1, Ordering::Relaxed);
            if answer >= refusal.0 {
                let refusal = format!(
                    "HTTP/1.1 {} Refused\r\nContent-Length: 0\r\n\r\n",
                    refusal.1
                );
                if writer.write_all(refusal.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            let version = if answer < switch_after { 1 } else { 2 };
            let (first, last) = range;
            let head = partial_content_head(first, last, size, &format!("{}\r\n", header(version)));
            let body = &versions[version as usize - 1][first..=last];
            if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body).is_err() {
                return;
            }
        }
    });
    format!("http://{address}/c.bin")
}

/// An object that changes on an origin that ignores `If-Match` fails
/// loudly, whatever names its version (strong or weak ETag, Last-Modified):
/// it used to be spliced from both versions and reported done.
#[test]
fn an_object_that_changes_mid_download_is_never_spliced() {
    let headers: [fn(u32) -> String; 3] = [
        |v| format!("ETag: \"v{v}\""),
        |v| format!("ETag: W/\"v{v}\""),
        |v| format!("Last-Modified: Tue, 0{v} Nov 2026 10:00:00 GMT"),
    ];
    for header in headers {
        let url = changing_origin(1 << 20, 3, header);
        let fixture = Fixture::new(&[]);
        let dest = fixture.dest_str("c.bin");
        let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
            .arg("get")
            .args([
                url.as_str(),
                &dest,
                "--part-size",
                "64KiB",
                "--buffer-size",
                "64KiB",
            ])
            .args(["--retry-base-ms", "5", "--retry-max-ms", "20"])
            .run_bounded();
        assert_exit(&output, 1, "changed on the origin during the download");
        assert!(!Path::new(&dest).exists(), "{}", header(1));
        assert_no_temp(fixture.out.path());
    }
    // Unchanged, each validator lets the download through.
    for header in headers {
        let url = changing_origin(1 << 20, usize::MAX, header);
        let fixture = Fixture::new(&[]);
        let dest = fixture.dest_str("c.bin");
        let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
            .arg("get")
            .args([
                url.as_str(),
                &dest,
                "--part-size",
                "64KiB",
                "--buffer-size",
                "64KiB",
            ])
            .run_bounded();
        assert_ok(&output);
        assert_eq!(std::fs::read(&dest).unwrap(), content("v1", 1 << 20));
    }
    // A body marked `Content-Encoding: gzip` is saved as sent (as curl
    // does), and the summary says so.
    let url = changing_origin(1 << 20, usize::MAX, |_| {
        "ETag: \"g\"\r\nContent-Encoding: gzip".to_string()
    });
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("c.bin");
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", url.as_str(), &dest, "--part-size", "256KiB"])
        .run_bounded();
    assert_ok(&output);
    assert_eq!(std::fs::read(&dest).unwrap(), content("v1", 1 << 20));
    assert!(
        stderr(&output).contains("`Content-Encoding: gzip`: it was saved as sent"),
        "{}",
        stderr(&output)
    );
}

/// An origin with neither ETag nor Last-Modified gives nothing to tell two
/// versions apart: an object replaced mid-download would be spliced from
/// both without a word beyond "not verified" (h25 #3). The run says so,
/// and points at --sha1; with a digest to check, it has no need to.
#[test]
fn an_origin_without_validators_is_said_to_be_unable_to_catch_a_change() {
    let url = changing_origin(1 << 20, usize::MAX, |_| "X-Served-By: test".to_string());
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("c.bin");
    let tuning = ["--part-size", "64KiB", "--buffer-size", "64KiB"];
    let get = |extra: &[&str]| {
        let _ = std::fs::remove_file(&dest);
        Command::new(env!("CARGO_BIN_EXE_ringdown"))
            .args(["get", url.as_str(), &dest])
            .args(tuning)
            .args(extra)
            .run_bounded()
    };
    let output = get(&[]);
    assert_ok(&output);
    assert_eq!(std::fs::read(&dest).unwrap(), content("v1", 1 << 20));
    let note = "sends no ETag or Last-Modified";
    assert!(stderr(&output).contains(note), "{}", stderr(&output));
    let sha1 = sha1_hex(&content("v1", 1 << 20));
    let output = get(&["--sha1", &sha1]);
    assert_ok(&output);
    assert!(!stderr(&output).contains(note), "{}", stderr(&output));
}

/// A URL refused midway (a presigned URL that expired: its signature is
/// checked on every range) keeps what arrived, and the run with a URL the
/// origin accepts resumes from it: the journal names the object (its ETag),
/// not the URL. Before, exit 3 removed the partial file, and the fresh URL
/// started from byte 0 (h25 #2).
#[test]
fn a_url_refused_midway_keeps_what_arrived_for_a_fresh_one() {
    for status in [403, 401] {
        url_refused_midway_keeps_what_arrived(status);
    }
}

fn url_refused_midway_keeps_what_arrived(status: u16) {
    let size = 1 << 20;
    let etag = |_| "ETag: \"e1\"".to_string();
    let expiring = origin_of_versions(size, usize::MAX, (6, status), etag);
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("c.bin");
    // One connection: the probe, then ranges in order.
    let tuning = [
        "--part-size",
        "64KiB",
        "--buffer-size",
        "64KiB",
        "--cores",
        "1",
        "--connections",
        "1",
    ];
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", expiring.as_str(), &dest])
        .args(tuning)
        .run_bounded();
    assert_exit(&output, 3, "a presigned URL that expired?");
    // No credentials were sent: none are blamed, and none are retried
    // (a 401 used to be an attempt per backoff until they ran out).
    assert!(
        stderr(&output).contains("resumes from them")
            && !stderr(&output).contains("authentication failed")
            && !stderr(&output).contains("retries"),
        "{}",
        stderr(&output)
    );
    assert!(!Path::new(&dest).exists());
    let journaled = journaled_bytes(fixture.out.path());
    assert!(journaled > 0, "{}", stderr(&output));
    let fresh = changing_origin(size, usize::MAX, |_| "ETag: \"e1\"".to_string());
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", fresh.as_str(), &dest])
        .args(tuning)
        .run_bounded();
    assert_ok(&output);
    assert_resumed_at(&output, journaled);
    assert_eq!(std::fs::read(&dest).unwrap(), content("v1", size));
    assert_no_temp(fixture.out.path());
}

/// A plain URL refused at once (401 or 403) is the URL's own refusal:
/// ringdown sent no credentials, and the message blamed them ("authentication
/// failed", h25 #6a). Exit 3 as before, nothing left behind.
#[test]
fn a_plain_url_refused_at_once_blames_no_credentials() {
    for status in [403, 401] {
        let refusing = origin_of_versions(1000, usize::MAX, (0, status), |_| String::new());
        let fixture = Fixture::new(&[]);
        let dest = fixture.dest_str("c.bin");
        let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
            .args(["get", refusing.as_str(), &dest])
            .run_bounded();
        assert_exit(
            &output,
            3,
            &format!("HTTP {status}: the origin refuses this URL. ringdown sends no credentials"),
        );
        assert!(
            !stderr(&output).contains("authentication failed"),
            "{}",
            stderr(&output)
        );
        assert!(!Path::new(&dest).exists());
        assert_no_temp(fixture.out.path());
    }
}

/// `YYYYMMDDTHHMMSSZ` of `unix_s`, as an S3 SigV4 URL's `X-Amz-Date`.
fn amz_date(unix_s: u64) -> String {
    let extended = ringdown::units::format_instant_ms(unix_s * 1000);
    extended.replace(['-', ':'], "")
}

/// A presigned URL refused whose query says it expired says when, as a
/// fact, where the message could only guess; its signature stays out of
/// the message.
#[test]
fn a_refused_presigned_url_says_when_it_expired() {
    let refusing = origin_of_versions(1000, usize::MAX, (0, 403), |_| String::new());
    let url = format!(
        "{refusing}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20200101T000000Z\
         &X-Amz-Expires=60&X-Amz-Signature=s3cr3t"
    );
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("c.bin");
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", url.as_str(), &dest])
        .run_bounded();
    assert_exit(
        &output,
        3,
        "its signature expired at 2020-01-01T00:01:00Z (X-Amz-Date + X-Amz-Expires)",
    );
    assert!(!stderr(&output).contains("s3cr3t"), "{}", stderr(&output));
}

/// A download that will not finish before its presigned URL expires is
/// told so while there is time to act, and what to do: once the rate is
/// measured, not at the end when the origin refuses the rest.
#[test]
fn a_download_that_will_outlast_its_presigned_url_is_warned() {
    let size = 2 << 20;
    let origin = origin_of_versions(size, usize::MAX, (usize::MAX, 403), |_| {
        "ETag: \"e1\"".to_string()
    });
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // 10 s of life; at 100 kB/s the 2 MiB need 21 s.
    let url = format!(
        "{origin}?X-Amz-Date={}&X-Amz-Expires=10&X-Amz-Signature=s3cr3t",
        amz_date(now_s)
    );
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("c.bin");
    let mut command = Command::new("env");
    command
        .arg("--default-signal=INT")
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args([
            "get",
            url.as_str(),
            &dest,
            "--limit-rate",
            "100KB/s",
            "--quiet",
        ])
        // What SIGINT lets finish is one 64 KiB range.
        .args(["--part-size", "64KiB", "--buffer-size", "64KiB"])
        .args(["--cores", "1", "--connections", "1"]);
    let started = std::time::Instant::now();
    let mut interrupted = false;
    let output = common::run_with_deadline(command, std::time::Duration::from_secs(60), |pid| {
        if !interrupted && started.elapsed() > std::time::Duration::from_secs(8) {
            common::send_signal(pid, "-INT");
            interrupted = true;
        }
    });
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{text}");
    assert_eq!(
        text.matches("ringdown: warning: the URL's signature expires at")
            .count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("run the same command with a fresh URL to resume"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "{text}");
}

/// An object emptied on the origin mid-download (every later range is
/// answered 416) says that it shrank and to run again: the message was a
/// bare "HTTP 416" (h25).
#[test]
fn an_object_that_shrinks_mid_download_says_so() {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let size = 1 << 20;
    let body = content("e.bin", size);
    let answered = AtomicUsize::new(0);
    let address = test_origin(move |reader, writer| {
        while let Some((first, last)) = read_request(reader, size) {
            let answer = if answered.fetch_add(1, Ordering::SeqCst) < 3 {
                let mut answer = partial_content_head(first, last, size, "").into_bytes();
                answer.extend_from_slice(&body[first..=last]);
                answer
            } else {
                b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */0\r\n\
              Content-Length: 0\r\n\r\n"
                    .to_vec()
            };
            if writer.write_all(&answer).is_err() {
                return;
            }
        }
    });
    let url = format!("http://{address}/e.bin");
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("e.bin");
    let output = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", url.as_str(), &dest])
        .args(["--part-size", "64KiB", "--buffer-size", "64KiB"])
        .args(["--retry-base-ms", "5", "--retry-max-ms", "20"])
        .run_bounded();
    assert_exit(&output, 1, "shrank on the origin during the download");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

/// Bytes that cannot be verified where that is not acceptable are not
/// fetched: a published digest that is broken, or none under
/// `--require-verified` (which used to download the object, leave it under
/// DEST and exit 1).
#[test]
fn unverifiable_objects_are_refused_before_any_byte_lands() {
    let fixture = Fixture::new(&[("n.bin", 100_000), ("big.bin", 300_000)]);
    for (mode, name, extra, needle) in [
        ("none", "n.bin", "--require-verified", "--require-verified"),
        ("malformed", "n.bin", "", "neither 40 hex digits"),
        ("malformed", "big.bin", "", "neither 40 hex digits"),
    ] {
        let served = serve(
            fixture.data.path(),
            true,
            &["--publish-sha1", mode, "--large-file-threshold", "200KiB"],
        );
        let dest = fixture.dest_str(name);
        let source = format!("b2://bkt/{name}");
        let mut args = vec![source.as_str(), &dest];
        if !extra.is_empty() {
            args.push(extra);
        }
        let output = ringdown(&served, &args);
        assert_exit(&output, 1, needle);
        assert!(!Path::new(&dest).exists(), "{mode} {name}");
        assert_no_temp(fixture.out.path());
    }
}

/// Not on a TTY (a log, cron, a pod), `get` writes a plain progress line
/// every 10 s, as `restore` does; it used to say nothing until the end.
#[test]
fn get_writes_a_plain_progress_line_every_ten_seconds_when_not_a_tty() {
    let size = 1_400_000;
    let fixture = Fixture::new(&[("slow.bin", size)]);
    // 1.4 MB at 100 kB/s on one connection: ~14 s, one progress line.
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "100kB/s"]);
    let dest = fixture.dest_str("slow.bin");
    let output = ringdown(
        &served,
        &[
            "b2://bkt/slow.bin",
            &dest,
            "--cores",
            "1",
            "--connections",
            "1",
        ],
    );
    assert_ok(&output);
    assert_same(Path::new(&dest), "slow.bin", size);
    let text = stderr(&output);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("ringdown: progress: "))
        .collect();
    assert!(!lines.is_empty(), "no progress line in:\n{text}");
    assert!(lines.len() <= 2, "more than one line per 10 s:\n{text}");
    assert!(
        lines[0].contains("/1.4 MB, ") && lines[0].contains(" MB/s, ETA "),
        "{}",
        lines[0]
    );
    assert!(!text.contains('\r'), "no carriage returns when not a TTY");
}

/// Interrupted, then the object changed on the origin (a new fileId): the
/// next run downloads the new version from byte 0 and leaves nothing of the
/// old one behind. The partial file was named from the version, so the old
/// one stayed beside DEST for good, at the object's full size.
#[test]
fn a_partial_of_an_older_version_does_not_outlive_the_next_run() {
    let size = 4 << 20;
    let fixture = Fixture::new(&[("v.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "200KB/s"]);
    let dest = fixture.dest_str("v.bin");
    let mut child = spawn_get(&served, "v.bin", &dest);
    let started = std::time::Instant::now();
    while journaled_bytes(fixture.out.path()) == 0 {
        assert!(started.elapsed().as_secs() < 30, "no chunk was journaled");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send_signal(child.id(), "-TERM");
    assert_eq!(wait_for_exit(&mut child, "SIGTERM").code(), Some(143));
    // A new upload under the same name: other bytes, another fileId.
    let newer = content("newer", size);
    write_file(fixture.data.path(), "bkt/v.bin", &newer);
    let mut child = spawn_get(&served, "v.bin", &dest);
    let exit = wait_for_exit(&mut child, "completion");
    let output = child.wait_with_output().unwrap();
    assert_eq!(exit.code(), Some(0), "{}", stderr(&output));
    assert!(
        !stderr(&output).contains("resumed at byte"),
        "{}",
        stderr(&output)
    );
    assert!(std::fs::read(&dest).unwrap() == newer);
    assert_no_temp(fixture.out.path());
}

/// A signal before any chunk was journaled keeps nothing: there is nothing
/// to resume from, and the preallocated file was the object's full size.
#[test]
fn a_signal_before_the_first_chunk_keeps_nothing() {
    let size = 4 << 20;
    let fixture = Fixture::new(&[("e.bin", size)]);
    let served = serve(fixture.data.path(), true, &["--latency-ms", "3000"]);
    let dest = fixture.dest_str("e.bin");
    let mut child = spawn_get_with_timeout(&served, "e.bin", &dest, "30");
    // The probe is answered after 3 s; the chunks 3 s after they are sent.
    let started = std::time::Instant::now();
    while !std::fs::read_dir(fixture.out.path()).unwrap().any(|entry| {
        entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".part")
    }) {
        assert!(started.elapsed().as_secs() < 30, "no partial file was made");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send_signal(child.id(), "-TERM");
    assert_eq!(wait_for_exit(&mut child, "SIGTERM").code(), Some(143));
    assert_eq!(journaled_bytes(fixture.out.path()), 0);
    assert_no_temp(fixture.out.path());
}

/// A directory of DEST that cannot be one says why, not "does not exist;
/// create it first" (h43 #15a): a file in its path (ENOTDIR), a path
/// longer than the system takes (ENAMETOOLONG). Exit 2, before any request.
#[test]
fn a_dest_directory_that_cannot_be_says_why() {
    let fixture = Fixture::new(&[]);
    let out = fixture.out.path();
    std::fs::write(out.join("file"), b"f").unwrap();
    let get = |dest: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ringdown"))
            .args(["get", "http://127.0.0.1:9/x.bin"])
            .arg(dest)
            .run_bounded()
    };
    for (dest, said) in [
        ("file/x/", "and it cannot be one: "),
        ("file/y/x", "cannot be one: "),
    ] {
        let output = get(&out.join(dest));
        assert_exit(&output, 2, said);
        let file = out.join("file");
        assert_exit(
            &output,
            2,
            &format!("{} is a regular file, not a directory", file.display()),
        );
    }
    // 25 directories of 200 bytes: every one there, the path past PATH_MAX
    // (made one beneath the other, by descriptor: no path reaches them).
    use rustix::fs::{Mode, OFlags};
    let mut deep = out.to_path_buf();
    let mut parent = rustix::fs::open(out, OFlags::DIRECTORY, Mode::empty()).unwrap();
    let name = "d".repeat(200);
    for _ in 0..25 {
        rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        parent =
            rustix::fs::openat(&parent, name.as_str(), OFlags::DIRECTORY, Mode::empty()).unwrap();
        deep.push(&name);
    }
    for dest in [deep.join("x"), deep.join("")] {
        let output = get(&dest);
        assert_exit(&output, 2, "is longer than a path may be");
        assert!(
            !stderr(&output).contains("does not exist"),
            "{}",
            stderr(&output)
        );
    }
}

/// A chunked body (no Content-Length, Range ignored) sent a piece every
/// few milliseconds, for minutes: a stream to stop or fail midway.
fn slow_chunked_origin() -> String {
    use std::io::Write;
    let address = test_origin(|reader, writer| {
        if read_request(reader, 1).is_none() {
            return;
        }
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        let piece = content("slow.bin", 64 * 1024);
        for _ in 0..20_000 {
            let mut out = format!("{:x}\r\n", piece.len()).into_bytes();
            out.extend_from_slice(&piece);
            out.extend_from_slice(b"\r\n");
            if writer.write_all(&out).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    format!("http://{address}/slow.bin")
}

/// A write of a streamed body that fails names DEST and says what to do,
/// as the pre-allocating path's errors do; it was "writing at byte N: File
/// too large (os error 27)" (h43 #15e). Nothing is left.
#[test]
fn a_streamed_write_that_fails_names_dest_and_what_to_do() {
    if !common::has_tool("prlimit") {
        eprintln!("skipped: no prlimit");
        return;
    }
    let url = lengthless_origin(content("l.bin", 300_007), true, usize::MAX);
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("l.bin");
    let output = Command::new("prlimit")
        .arg("--fsize=100000")
        .arg(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", url.as_str(), &dest, "--max-attempts", "2"])
        .run_bounded();
    assert_exit(&output, 1, &format!("writing {dest} (its partial file)"));
    assert_exit(&output, 1, "File too large");
    assert_exit(&output, 1, "ulimit -f");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

/// A stop during a streamed body says how much arrived and that it was
/// discarded (nothing can resume it); it said "interrupted after 0 bytes"
/// (h43 #15f).
#[test]
fn a_signal_during_a_streamed_body_says_what_was_discarded() {
    let url = slow_chunked_origin();
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("slow.bin");
    let child = Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["get", url.as_str(), &dest, "-q"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = stop_once_going(child);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(143), "{text}");
    assert!(text.contains("bytes received were discarded"), "{text}");
    assert!(text.contains("cannot resume"), "{text}");
    assert!(!text.contains("interrupted after 0 bytes"), "{text}");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

/// SIGTERM after 1.5 s (the child must still be running), and its output.
fn stop_once_going(mut child: std::process::Child) -> Output {
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before the stop"
    );
    send_signal(child.id(), "-TERM");
    wait_for_exit(&mut child, "SIGTERM");
    child.wait_with_output().unwrap()
}

/// `--stats-json` naming a FIFO that nobody reads is exit 2 at once; the
/// run waited in `open` before its download, forever (h43 #15g). With a
/// reader, the stats reach it.
#[test]
fn a_stats_json_fifo_without_a_reader_is_refused_at_once() {
    let body = content("l.bin", 100_000);
    let sha1 = sha1_hex(&body);
    let url = lengthless_origin(body, false, usize::MAX);
    let fixture = Fixture::new(&[]);
    let dest = fixture.dest_str("l.bin");
    let fifo = fixture.data.path().join("stats.fifo");
    common::make_fifo(&fifo);
    let get = || {
        Command::new(env!("CARGO_BIN_EXE_ringdown"))
            .args(["get", url.as_str(), &dest, "-q", "--sha1", &sha1])
            .arg("--stats-json")
            .arg(&fifo)
            .run_bounded()
    };
    let output = get();
    assert_exit(&output, 2, "is a FIFO that no process reads");
    assert!(!Path::new(&dest).exists());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    // (The reader's open may come after the run's check: retried.)
    let mut output = get();
    for _ in 0..50 {
        if output.status.code() != Some(2) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        output = get();
    }
    assert_ok(&output);
    let json: serde_json::Value = serde_json::from_slice(&reader.join().unwrap()).unwrap();
    assert_eq!(json["verified"]["ok"], 1, "{json}");
}

/// An object fetched twice after SHA1 mismatches says so, and that the
/// digest is the likely culprit when both downloads agree (h43 #15h: one
/// line naming neither, with 40 MiB fetched for a 20 MiB object).
#[test]
fn a_mismatch_fetched_twice_says_so() {
    let fixture = Fixture::new(&[("w.bin", 3 * PART)]);
    let served = serve(fixture.data.path(), true, &["--wrong-sha1", "w.bin"]);
    let dest = fixture.dest_str("w.bin");
    let mut args = vec!["b2://bkt/w.bin", &dest];
    args.extend_from_slice(SMALL_TUNING);
    let output = ringdown(&served, &args);
    assert_exit(
        &output,
        1,
        "SHA1 mismatch, downloaded twice: each time the bytes",
    );
    assert_exit(&output, 1, "downloading again will not help");
    assert!(!Path::new(&dest).exists());
    assert_no_temp(fixture.out.path());
}

/// An object `name` of 40 parts and a bit, served at 400 KB/s per
/// connection: its download takes seconds (`start_get`). Returns its size.
fn slowly_served(name: &str) -> (usize, Fixture, Served) {
    let size = 40 * PART + 77;
    let fixture = Fixture::new(&[(name, size)]);
    let served = serve(fixture.data.path(), true, &["--rate-per-conn", "400KB/s"]);
    (size, fixture, served)
}

/// Starts `ringdown get ARGS` (stderr piped) and gives it half a second: a
/// download under way (of a `slowly_served` object), for a test to change
/// what is around it.
fn start_get(served: &Served, args: &[&str]) -> std::process::Child {
    let child = get_command(served, args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    child
}

/// DEST's directory moved away during the download: the file is in the
/// directory opened at the start, and the run says where, exit 1; it said
/// DEST held it, exit 0 (h43 #15l).
#[test]
fn a_dest_directory_moved_during_the_download_is_said() {
    let (size, fixture, served) = slowly_served("mv.bin");
    let sub = fixture.out.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let dest = sub.join("mv.bin");
    let dest = dest.to_str().unwrap();
    let mut args = vec!["b2://bkt/mv.bin", dest];
    args.extend_from_slice(SMALL_TUNING);
    let child = start_get(&served, &args);
    let moved = fixture.out.path().join("sub.old");
    std::fs::rename(&sub, &moved).unwrap();
    std::fs::create_dir(&sub).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("does not hold the download"), "{text}");
    assert!(
        text.contains(&moved.join("mv.bin").display().to_string()),
        "{text}"
    );
    assert!(!Path::new(dest).exists());
    assert_same(&moved.join("mv.bin"), "mv.bin", size);
    assert_no_temp(&moved);
}

/// A directory made at DEST's name during a download keeps that download
/// for the next run; a run with `--force` then went into the directory,
/// and the kept files stayed beside it for good (h43 #15c). It is refused,
/// and once the directory is gone the download resumes.
#[test]
fn a_directory_that_took_dest_is_not_downloaded_into_while_its_download_is_kept() {
    let (size, fixture, served) = slowly_served("dd.bin");
    let dest = fixture.dest_str("dd.bin");
    let mut args = vec!["b2://bkt/dd.bin", &dest];
    args.extend_from_slice(SMALL_TUNING);
    let child = start_get(&served, &args);
    std::fs::create_dir(&dest).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let forced = ringdown(&served, &[&args[..], &["--force"]].concat());
    assert_exit(&forced, 2, "is a directory, and beside it ringdown keeps");
    assert!(!Path::new(&dest).join("dd.bin").exists());
    std::fs::remove_dir(&dest).unwrap();
    let again = ringdown(&served, &args);
    assert_ok(&again);
    assert!(
        stderr(&again).contains("resumed at byte"),
        "{}",
        stderr(&again)
    );
    assert_same(Path::new(&dest), "dd.bin", size);
    assert_no_temp(fixture.out.path());
}

/// A rename refused by an immutable directory, which refuses removing the
/// partial file too: the run says that it stays and how to resume
/// (h43 #15d). Root only (chattr).
#[test]
fn a_rename_an_immutable_directory_refuses_says_what_stays() {
    if !is_root() || !common::has_tool("chattr") {
        eprintln!("skipped: needs root and chattr");
        return;
    }
    let (size, fixture, served) = slowly_served("im.bin");
    let sub = fixture.out.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let dest = sub.join("im.bin");
    let dest = dest.to_str().unwrap();
    let mut args = vec!["b2://bkt/im.bin", dest];
    args.extend_from_slice(SMALL_TUNING);
    let child = start_get(&served, &args);
    let chattr = |flag: &str| Command::new("chattr").arg(flag).arg(&sub).status().unwrap();
    if !chattr("+i").success() {
        eprintln!("skipped: this file system takes no chattr +i");
        let _ = child.wait_with_output();
        return;
    }
    let output = child.wait_with_output().unwrap();
    chattr("-i");
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("could not be removed either"), "{text}");
    assert!(text.contains("run the same command again"), "{text}");
    assert!(!Path::new(dest).exists());
    let again = ringdown(&served, &args);
    assert_ok(&again);
    assert!(
        stderr(&again).contains("resumed at byte"),
        "{}",
        stderr(&again)
    );
    assert_same(Path::new(dest), "im.bin", size);
    assert_no_temp(&sub);
}

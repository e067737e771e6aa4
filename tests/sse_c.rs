//! SSE-C: objects B2 stores encrypted with a key the customer keeps. Every
//! download of one must carry the key; without it (or with another) B2
//! answers 403 access_denied. `ringdown serve --sse-c-key-file` stores
//! objects so, and `restore`/`get` send the key, only where it belongs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Request, Served, content, serve, write_file};

/// The key `ringdown serve` encrypts `enc/…` under, its base64 and its MD5
/// (`openssl md5 -binary | base64`), computed apart from the code under test.
const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const KEY_BASE64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_MD5: &str = "hRasmdxgYDKV3nvbahU1MA==";
/// Another well-formed key: 32 bytes of 0x09.
const OTHER_KEY_BASE64: &str = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";
const OTHER_KEY_MD5: &str = "SCY5xzBvyA28HDOoR/qKFA==";

const BIG_BYTES: usize = 5 * 1024 * 1024 + 12_345;

/// `served/bkt`: `enc/small.bin`, `enc/deep/big.bin` (several ranged parts
/// at `--part-size 1MiB`), `plain/p.txt` and `plain/q.bin`; key files beside
/// `served`.
fn data() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let bucket = data.path().join("served/bkt");
    write_file(&bucket, "enc/small.bin", &content("small", 70_000));
    write_file(&bucket, "enc/deep/big.bin", &content("big", BIG_BYTES));
    write_file(&bucket, "plain/p.txt", b"plain text");
    write_file(&bucket, "plain/q.bin", &content("q", 30_000));
    std::fs::write(data.path().join("key.raw"), KEY).unwrap();
    std::fs::write(
        data.path().join("other.b64"),
        format!("{OTHER_KEY_BASE64}\n"),
    )
    .unwrap();
    data
}

/// Serves `data/served` with `enc/…` stored under `KEY`.
fn served(data: &Path, plain: bool) -> Served {
    let key_file = data.join("key.raw");
    serve(
        &data.join("served"),
        plain,
        &[
            "--sse-c-key-file",
            key_file.to_str().unwrap(),
            "--sse-c-prefix",
            "enc/",
            "--access-log",
            data.join("access.jsonl").to_str().unwrap(),
        ],
    )
}

fn ringdown(served: &Served, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args(args)
        .args(["--realm", &served.realm, "--quiet"])
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .env_remove("B2_SOURCE_SSE_C_KEY_B64")
        .env_remove("SSL_CERT_FILE")
        .env_remove("B2_REALM")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("RINGDOWN_SHARD_COUNT")
        .env_remove("SLURM_ARRAY_TASK_ID");
    if let Some(ca_file) = &served.ca_file {
        command.arg("--ca-file").arg(ca_file);
    }
    if !args.contains(&"--cores") {
        command.args(["--cores", "2"]);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    common::run_with_deadline(command, Duration::from_secs(120), |_| {})
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Per downloaded name: (requests, requests that carried a key), from the
/// access log; then the log is emptied for the next run.
fn key_use(data: &Path) -> BTreeMap<String, (usize, usize)> {
    let log = data.join("access.jsonl");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::write(&log, "").unwrap();
    let mut use_by_name = BTreeMap::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(name) = record["name"].as_str() {
            let entry = use_by_name.entry(name.to_string()).or_insert((0, 0));
            entry.0 += 1;
            if record["sse_c_key"] == true {
                entry.1 += 1;
            }
        }
    }
    use_by_name
}

fn report(path: &Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            (record["name"].as_str().unwrap().to_string(), record)
        })
        .collect()
}

/// Every regular file under `dir`, relative and sorted, excluding `.ringdown/`.
fn files_under(dir: &Path) -> Vec<String> {
    common::files_under(dir).into_iter().collect()
}

#[test]
fn serve_keeps_objects_under_a_customer_key_as_b2_does() {
    let data = data();
    let served = served(data.path(), false);
    let (token, _) = served.authorize();
    let bucket_id = served.bucket_id(&token, "bkt");
    let listing = served.post(
        "b2_list_file_names",
        &token,
        serde_json::json!({"bucketId": bucket_id}),
    );
    assert_eq!(listing.status, 200);
    let modes: BTreeMap<String, serde_json::Value> = listing.json()["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| {
            (
                file["fileName"].as_str().unwrap().to_string(),
                file["serverSideEncryption"].clone(),
            )
        })
        .collect();
    let sse_c = serde_json::json!({"mode": "SSE-C", "algorithm": "AES256"});
    assert_eq!(modes["enc/small.bin"], sse_c);
    assert_eq!(modes["enc/deep/big.bin"], sse_c);
    assert_eq!(modes["plain/p.txt"], serde_json::json!({"mode": "none"}));

    let download = |name: &str, method: &str, key: Option<(&str, &str, &str)>| {
        let target = format!("/file/bkt/{name}");
        let mut request = Request::new(method, &target).header("Authorization", token.clone());
        if let Some((algorithm, key, md5)) = key {
            request = request
                .header("X-Bz-Server-Side-Encryption-Customer-Algorithm", algorithm)
                .header("X-Bz-Server-Side-Encryption-Customer-Key", key)
                .header("X-Bz-Server-Side-Encryption-Customer-Key-Md5", md5);
        }
        served.send(request)
    };
    let right = Some(("AES256", KEY_BASE64, KEY_MD5));
    for method in ["GET", "HEAD"] {
        let response = download("enc/small.bin", method, right);
        assert_eq!(response.status, 200, "{method}");
        assert_eq!(
            response.header("x-bz-server-side-encryption-customer-algorithm"),
            Some("AES256")
        );
        assert_eq!(
            response.header("x-bz-server-side-encryption-customer-key-md5"),
            Some(KEY_MD5)
        );
        // Missing or another key: B2's 403 access_denied (a HEAD has no body).
        assert_eq!(download("enc/small.bin", method, None).status, 403);
        let other = Some(("AES256", OTHER_KEY_BASE64, OTHER_KEY_MD5));
        assert_eq!(download("enc/small.bin", method, other).status, 403);
    }
    assert_eq!(
        download("enc/small.bin", "GET", right).body,
        content("small", 70_000)
    );
    let refused = download("enc/small.bin", "GET", None);
    assert_eq!(refused.json()["code"], "access_denied");
    // Headers that do not make a key: 400.
    for malformed in [
        ("AES128", KEY_BASE64, KEY_MD5),
        ("AES256", KEY_BASE64, OTHER_KEY_MD5),
        ("AES256", "c2hvcnQ=", KEY_MD5),
    ] {
        let response = download("enc/small.bin", "GET", Some(malformed));
        assert_eq!(response.status, 400, "{malformed:?}");
    }
    // An object stored without SSE-C is served with or without a key.
    let plain = download("plain/p.txt", "GET", right);
    assert_eq!(
        (plain.status, plain.body.as_slice()),
        (200, &b"plain text"[..])
    );
    assert_eq!(
        plain.header("x-bz-server-side-encryption-customer-algorithm"),
        None
    );
    assert_eq!(download("plain/p.txt", "GET", None).status, 200);
}

#[test]
fn restore_sends_the_key_only_for_objects_listed_as_sse_c() {
    let data = data();
    let served = served(data.path(), false);
    let source = data.path().join("served/bkt");
    let restore = |dir: &str, extra: &[&str], env: &[(&str, &str)]| {
        let dir = data.path().join(dir);
        let report_path = data.path().join(format!("{}.jsonl", dir.display()));
        let mut args = vec![
            "restore",
            "b2://bkt",
            dir.to_str().unwrap(),
            "--part-size",
            "1MiB",
            "--report",
            report_path.to_str().unwrap(),
        ];
        args.extend(extra);
        let output = ringdown(&served, &args, env);
        (output, dir.clone(), report(&report_path))
    };

    // No key: the unencrypted files are restored, the SSE-C ones fail
    // without a request (one without the key could only be refused).
    key_use(data.path());
    let (output, dir, records) = restore("none", &[], &[]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("encrypted with SSE-C"), "{text}");
    assert!(text.contains("--sse-c-key-file"), "{text}");
    assert_eq!(files_under(&dir), ["plain/p.txt", "plain/q.bin"]);
    for name in ["enc/small.bin", "enc/deep/big.bin"] {
        assert_eq!(records[name]["status"], "failed", "{name}");
        assert!(
            records[name]["reason"]
                .as_str()
                .unwrap()
                .contains("encrypted with SSE-C"),
            "{:?}",
            records[name]
        );
    }
    let used = key_use(data.path());
    assert!(!used.contains_key("enc/small.bin"), "{used:?}");
    assert!(!used.contains_key("enc/deep/big.bin"), "{used:?}");

    // The key (raw bytes in a file): everything, byte for byte; the key went
    // with every request for an SSE-C object, and with no other.
    let key_file = data.path().join("key.raw");
    let (output, dir, _) = restore(
        "keyed",
        &["--sse-c-key-file", key_file.to_str().unwrap()],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        files_under(&dir),
        [
            "enc/deep/big.bin",
            "enc/small.bin",
            "plain/p.txt",
            "plain/q.bin"
        ]
    );
    for name in [
        "enc/deep/big.bin",
        "enc/small.bin",
        "plain/p.txt",
        "plain/q.bin",
    ] {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(source.join(name)).unwrap(),
            "{name}"
        );
    }
    let used = key_use(data.path());
    let (big_requests, big_keyed) = used["enc/deep/big.bin"];
    assert!(big_requests >= 5, "ranged parts expected: {used:?}");
    assert_eq!(big_keyed, big_requests, "{used:?}");
    assert_eq!(used["enc/small.bin"].0, used["enc/small.bin"].1, "{used:?}");
    assert_eq!(used["plain/p.txt"].1, 0, "{used:?}");
    assert_eq!(used["plain/q.bin"].1, 0, "{used:?}");

    // The b2 CLI's variable works too.
    let (output, dir, _) = restore("env", &[], &[("B2_SOURCE_SSE_C_KEY_B64", KEY_BASE64)]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(files_under(&dir).len(), 4);
    key_use(data.path());

    // Another key: each SSE-C object fails on B2's refusal, naming the key
    // by its MD5 only; nothing of them (nor a partial file) is left behind.
    let other = data.path().join("other.b64");
    let (output, dir, records) =
        restore("wrong", &["--sse-c-key-file", other.to_str().unwrap()], &[]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("refuses the SSE-C key given"), "{text}");
    assert!(text.contains(OTHER_KEY_MD5), "{text}");
    assert!(
        !text.contains(OTHER_KEY_BASE64),
        "the key itself was printed: {text}"
    );
    assert_eq!(files_under(&dir), ["plain/p.txt", "plain/q.bin"]);
    assert_eq!(records["enc/deep/big.bin"]["status"], "failed");
    assert_eq!(records["plain/q.bin"]["status"], "ok");
    // One refusal per object, not --max-attempts of them.
    let used = key_use(data.path());
    assert!(used["enc/small.bin"].0 <= 2, "{used:?}");

    // A dry run says which would fail, exits 1 as the real run does, and
    // creates nothing.
    let dry = data.path().join("dry");
    let output = ringdown(
        &served,
        &["restore", "b2://bkt", dry.to_str().unwrap(), "--dry-run"],
        &[],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("failed\t\"enc/small.bin\"\tencrypted with SSE-C"),
        "{text}"
    );
    assert!(
        text.contains("names would fail; a real run would exit 1"),
        "{text}"
    );
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        listed.contains("plain/q.bin") && !listed.contains("enc/"),
        "{listed}"
    );
    assert!(!dry.exists());
}

#[test]
fn a_key_never_goes_over_plain_http_and_a_bad_key_file_is_a_usage_error() {
    let data = data();
    let key_file = data.path().join("key.raw");
    let plain = served(data.path(), true);
    let dir = data.path().join("out");
    let output = ringdown(
        &plain,
        &[
            "restore",
            "b2://bkt",
            dir.to_str().unwrap(),
            "--sse-c-key-file",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("clear text"), "{text}");
    assert!(!dir.exists());
    assert!(key_use(data.path()).is_empty());
    // A dry run downloads nothing, so it sends no key and may run there.
    let output = ringdown(
        &plain,
        &[
            "restore",
            "b2://bkt",
            dir.to_str().unwrap(),
            "--dry-run",
            "--sse-c-key-file",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("enc/small.bin"));
    assert!(!dir.exists());
    let dest = data.path().join("small.bin");
    let output = ringdown(
        &plain,
        &["get", "b2://bkt/enc/small.bin", dest.to_str().unwrap()],
        &[("B2_SOURCE_SSE_C_KEY_B64", KEY_BASE64)],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(!dest.exists());
    // Refused before any download request.
    assert!(!key_use(data.path()).contains_key("enc/small.bin"));

    let bad = data.path().join("bad.key");
    std::fs::write(&bad, "0123456789abcdef\n").unwrap();
    let output = ringdown(
        &plain,
        &[
            "get",
            "b2://bkt/enc/small.bin",
            dest.to_str().unwrap(),
            "--sse-c-key-file",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("32-byte key"), "{text}");
    assert!(
        !text.contains("0123456789abcdef"),
        "the key file was quoted: {text}"
    );
}

#[test]
fn get_sends_the_key_with_every_request_for_the_object() {
    let data = data();
    let served = served(data.path(), false);
    let key_file = data.path().join("key.raw");
    let get = |name: &str, dest: &str, extra: &[&str], env: &[(&str, &str)]| {
        let dest = data.path().join(dest);
        let source = format!("b2://bkt/{name}");
        let mut args = vec![
            "get",
            source.as_str(),
            dest.to_str().unwrap(),
            "--part-size",
            "1MiB",
        ];
        args.extend(extra);
        (ringdown(&served, &args, env), dest)
    };

    let (output, dest) = get(
        "enc/deep/big.bin",
        "big.bin",
        &["--sse-c-key-file", key_file.to_str().unwrap()],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(dest).unwrap(), content("big", BIG_BYTES));
    let used = key_use(data.path());
    assert!(used["enc/deep/big.bin"].0 >= 6, "HEAD and parts: {used:?}");
    assert_eq!(
        used["enc/deep/big.bin"].0, used["enc/deep/big.bin"].1,
        "{used:?}"
    );

    // --as-of too: the version is found by listing, then fetched by fileId.
    let (output, dest) = get(
        "enc/small.bin",
        "small-as-of.bin",
        &["--as-of", "2100-01-01"],
        &[("B2_SOURCE_SSE_C_KEY_B64", KEY_BASE64)],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(dest).unwrap(), content("small", 70_000));
    let (output, dest) = get(
        "enc/small.bin",
        "small-as-of-no-key.bin",
        &["--as-of", "2100-01-01"],
        &[],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("encrypted with SSE-C"), "{text}");
    assert!(!dest.exists());

    // Without the key, B2's refusal says what it may mean.
    let (output, dest) = get("enc/small.bin", "small.bin", &[], &[]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(text.contains("--sse-c-key-file"), "{text}");
    assert!(!dest.exists());

    // Another key: the object failed (exit 1, as in `restore`).
    let other = data.path().join("other.b64");
    let (output, dest) = get(
        "enc/small.bin",
        "small.bin",
        &["--sse-c-key-file", other.to_str().unwrap()],
        &[],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("refuses the SSE-C key given"), "{text}");
    assert!(text.contains(OTHER_KEY_MD5), "{text}");
    assert!(!dest.exists());
    let leftovers: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".ringdown-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A plain URL has no SSE-C headers to send: the flag is refused, the
    // variable ignored.
    let url = format!("{}/file/bkt/plain/p.txt", served.realm);
    let dest = data.path().join("p.txt");
    let mut args = vec![
        "get",
        url.as_str(),
        dest.to_str().unwrap(),
        "--sse-c-key-file",
    ];
    args.push(key_file.to_str().unwrap());
    let output = ringdown(&served, &args, &[]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("b2://"), "{text}");
    key_use(data.path());
    let output = ringdown(
        &served,
        &["get", url.as_str(), dest.to_str().unwrap()],
        &[("B2_SOURCE_SSE_C_KEY_B64", KEY_BASE64)],
    );
    // The bucket is private, so the URL (without a token) is refused by the
    // origin (exit 3); what matters is that the variable was no usage error.
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(!text.contains("--sse-c-key-file"), "{text}");
    // And the key stayed home.
    let log = std::fs::read_to_string(data.path().join("access.jsonl")).unwrap();
    assert!(
        log.contains("/file/bkt/plain/p.txt") && !log.contains("\"sse_c_key\""),
        "{log}"
    );
}

/// `served/bkt` of a bucket whose key was rotated: `a-new/` under
/// `OTHER_KEY` (listed first), `b-old/` under `KEY`, each with
/// `ROTATED_SMALL` small objects and one of several parts, and `plain/`.
/// Key files beside `served`: `key.raw`, `other.b64`, and `third.raw`, a key
/// of no object.
const ROTATED_SMALL: usize = 10;

fn rotated_data() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let bucket = data.path().join("served/bkt");
    for prefix in ["a-new", "b-old"] {
        for n in 0..ROTATED_SMALL {
            let name = format!("{prefix}/s{n:02}.bin");
            write_file(&bucket, &name, &content(&name, 20_000 + n * 1_000));
        }
        let name = format!("{prefix}/big.bin");
        write_file(&bucket, &name, &content(&name, BIG_BYTES));
    }
    write_file(&bucket, "plain/p.txt", b"plain text");
    std::fs::write(data.path().join("key.raw"), KEY).unwrap();
    std::fs::write(data.path().join("other.b64"), OTHER_KEY_BASE64).unwrap();
    std::fs::write(data.path().join("third.raw"), [5u8; 32]).unwrap();
    data
}

/// Serves `data/served` with names under `key_prefix` encrypted with `KEY`
/// and under `other_prefix` with `OTHER_KEY` (key files beside `served`),
/// an access log, and `extra` flags.
fn serve_two_keys(data: &Path, key_prefix: &str, other_prefix: &str, extra: &[&str]) -> Served {
    let key = data.join("key.raw");
    let other = data.join("other.b64");
    let log = data.join("access.jsonl");
    let mut args = vec![
        "--sse-c-key-file",
        key.to_str().unwrap(),
        "--sse-c-prefix",
        key_prefix,
        "--sse-c-key-file",
        other.to_str().unwrap(),
        "--sse-c-prefix",
        other_prefix,
        "--access-log",
        log.to_str().unwrap(),
    ];
    args.extend(extra);
    serve(&data.join("served"), false, &args)
}

/// Serves `data/served` with `a-new/` under `OTHER_KEY` and `b-old/` under
/// `KEY`.
fn served_rotated(data: &Path) -> Served {
    serve_two_keys(data, "b-old/", "a-new/", &[])
}

/// The download requests of the access log (those naming an object); the
/// log is emptied for the next run.
fn downloads(data: &Path) -> Vec<serde_json::Value> {
    let log = data.join("access.jsonl");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::write(&log, "").unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|record| record["name"].is_string())
        .collect()
}

/// Download requests B2 refused (403) since the last call, per name.
fn refusals(data: &Path) -> BTreeMap<String, usize> {
    let mut refused = BTreeMap::new();
    for record in downloads(data) {
        if record["status"] == 403 {
            *refused
                .entry(record["name"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    refused
}

fn assert_restored(data: &Path, dir: &Path, names: &[String]) {
    let source = data.join("served/bkt");
    assert_eq!(files_under(dir), names, "{}", dir.display());
    for name in names {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(source.join(name)).unwrap(),
            "{name}"
        );
    }
}

fn all_names() -> Vec<String> {
    let mut names: Vec<String> = common::files_under(&rotated_data().path().join("served/bkt"))
        .into_iter()
        .collect();
    names.sort();
    names
}

#[test]
fn a_bucket_under_rotated_keys_is_restored_in_one_run() {
    let data = rotated_data();
    let served = served_rotated(data.path());
    let key = data.path().join("key.raw");
    let other = data.path().join("other.b64");
    let third = data.path().join("third.raw");
    let restore = |dir: &str, extra: &[&str]| {
        let dir = data.path().join(dir);
        let mut args = vec![
            "restore",
            "b2://bkt",
            dir.to_str().unwrap(),
            "--part-size",
            "1MiB",
        ];
        args.extend(extra);
        (ringdown(&served, &args, &[]), dir)
    };
    let names = all_names();
    refusals(data.path());

    // One request at a time: an object starts with the key that opened the
    // one before it, so B2 refuses a key only where the key changes (once
    // into a-new/, once into b-old/, and where a large object's chunks and
    // the small objects take turns), not once per object of a-new/.
    let keys = ["--sse-c-key-file", key.to_str().unwrap()];
    let keys = [&keys[..], &["--sse-c-key-file", other.to_str().unwrap()]].concat();
    let one_at_a_time = [&keys[..], &["--cores", "1", "--connections", "1"]].concat();
    let (output, dir) = restore("serial", &one_at_a_time);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_restored(data.path(), &dir, &names);
    let requests = downloads(data.path());
    let refused: Vec<&str> = requests
        .iter()
        .filter(|record| record["status"] == 403)
        .map(|record| record["name"].as_str().unwrap())
        .collect();
    assert!(
        (1..=4).contains(&refused.len()),
        "{} refusals for {} encrypted objects: {refused:?}",
        refused.len(),
        2 * (ROTATED_SMALL + 1)
    );
    // A refusal is a whole answer on a kept-alive connection: the next key
    // goes out on the same one.
    let connections: std::collections::BTreeSet<u64> = requests
        .iter()
        .map(|record| record["connection"].as_u64().unwrap())
        .collect();
    assert_eq!(connections.len(), 1, "{connections:?}");

    // Many at a time (the defaults): every object under its key, byte for byte.
    let (output, dir) = restore("parallel", &keys);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_restored(data.path(), &dir, &names);
    refusals(data.path());

    // No key of b-old/ among those given: its objects fail, naming each key
    // tried by its MD5, never by its bytes; the rest is restored.
    let wrong = [
        "--sse-c-key-file",
        third.to_str().unwrap(),
        "--sse-c-key-file",
        other.to_str().unwrap(),
    ];
    let (output, dir) = restore("wrong", &wrong);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("each of the 2 SSE-C keys given"), "{text}");
    assert!(text.contains(OTHER_KEY_MD5), "{text}");
    assert!(!text.contains(OTHER_KEY_BASE64), "{text}");
    let restored: Vec<String> = names
        .iter()
        .filter(|name| !name.starts_with("b-old/"))
        .cloned()
        .collect();
    assert_restored(data.path(), &dir, &restored);
    // Each b-old/ object: at most one refusal per key (per chunk in flight
    // for the large one), not --max-attempts of them.
    let refused = refusals(data.path());
    for n in 0..ROTATED_SMALL {
        let name = format!("b-old/s{n:02}.bin");
        assert!(refused.get(&name).copied().unwrap_or(0) <= 2, "{refused:?}");
    }
}

/// Objects whose keys alternate name by name (`alt/f0.bin` under `KEY`,
/// `alt/f1.bin` under `OTHER_KEY`, ...), as after a rotation that re-wrote
/// some files; with `key_ids`, their fileInfo names each key.
const ALTERNATING: usize = 8;

fn served_alternating(data: &Path, key_ids: bool, extra: &[&str]) -> Served {
    let bucket = data.join("served/bkt");
    let mut args: Vec<String> = Vec::new();
    for n in 0..ALTERNATING {
        let name = format!("alt/f{n}.bin");
        write_file(&bucket, &name, &content(&name, 30_000 + n));
        let (key_file, key_id) = match n % 2 {
            0 => ("key.raw", "key-2024"),
            _ => ("other.b64", "key-2026"),
        };
        args.extend([
            "--sse-c-key-file".into(),
            data.join(key_file).to_str().unwrap().into(),
            "--sse-c-prefix".into(),
            name,
        ]);
        if key_ids {
            args.extend(["--sse-c-key-id".into(), key_id.into()]);
        }
    }
    args.extend([
        "--access-log".into(),
        data.join("access.jsonl").to_str().unwrap().into(),
    ]);
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve(&data.join("served"), false, &args)
}

#[test]
fn key_ids_in_file_info_send_each_object_its_key() {
    // Each run as it comes (on loopback, one GET at a time unless the
    // machine is busy), and with IDs once more through a 5 ms round trip,
    // where GETs surely go out ahead of the answers that teach the ring.
    for (key_ids, extra) in [
        (false, &[][..]),
        (true, &[][..]),
        (true, &["--latency-ms", "5"][..]),
    ] {
        let data = rotated_data();
        let served = served_alternating(data.path(), key_ids, extra);
        let keys = key_args(data.path());
        refusals(data.path());
        let dir = data.path().join("out");
        let output = restore_on_one_core(&served, "b2://bkt/alt", &dir, "1", &keys);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        for n in 0..ALTERNATING {
            let name = format!("f{n}.bin");
            assert_eq!(
                std::fs::read(dir.join(&name)).unwrap(),
                content(&format!("alt/{name}"), 30_000 + n),
                "{name}"
            );
        }
        // With IDs, no refusal: an object of a known ID gets that ID's key,
        // and the first guess for a new ID is a key no other ID has. This
        // holds whether the connection sends one GET at a time or sends
        // GETs ahead of answers (the 5 ms run).
        //
        // Without IDs, each object's first guess is the key that last opened
        // one, so f1, guessed once f0 has opened with `KEY`, is always
        // refused: the same objects do cost refusals without IDs. How many
        // depends on timing, not on the keyring: one GET at a time, every
        // change of key costs one (7 here); but once the shortest round trip
        // seen is `PIPELINE_ROUND_TRIP_MIN_US` (1 ms) or more, as loopback
        // answers are on a CPU-starved machine, the connection sends the
        // next GETs ahead with the same guess and only 2-3 are refused.
        let refused: usize = refusals(data.path()).values().sum();
        if key_ids {
            assert_eq!(refused, 0, "with key IDs {extra:?}");
        } else {
            assert!(refused >= 1, "{refused} refusals without key IDs");
        }
    }

    // `get` of an object under the second key given: by name (HEAD), and
    // by listing (--as-of).
    let data = rotated_data();
    let served = served_alternating(data.path(), true, &[]);
    let keys = key_args(data.path());
    refusals(data.path());
    for (dest, as_of) in [("by-name.bin", None), ("as-of.bin", Some("2100-01-01"))] {
        let dest = data.path().join(dest);
        let mut args = vec!["get", "b2://bkt/alt/f1.bin", dest.to_str().unwrap()];
        args.extend(keys.iter().map(String::as_str));
        if let Some(at) = as_of {
            args.extend(["--as-of", at]);
        }
        let output = ringdown(&served, &args, &[]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_eq!(std::fs::read(&dest).unwrap(), content("alt/f1.bin", 30_001));
        // By name, the HEADs find the key (one refused); by listing, one
        // refused GET.
        let refused = refusals(data.path());
        assert_eq!(refused["alt/f1.bin"], 1, "{refused:?}");
    }
}

/// `ringdown restore SOURCE DIR --cores 1 --connections CONNECTIONS`
/// with the key flags `keys`.
fn restore_on_one_core(
    served: &Served,
    source: &str,
    dir: &Path,
    connections: &str,
    keys: &[String],
) -> Output {
    let mut args = vec![
        "restore",
        source,
        dir.to_str().unwrap(),
        "--cores",
        "1",
        "--connections",
        connections,
    ];
    args.extend(keys.iter().map(String::as_str));
    ringdown(served, &args, &[])
}

/// `--sse-c-key-file key.raw --sse-c-key-file other.b64` under `data`.
fn key_args(data: &Path) -> Vec<String> {
    ["key.raw", "other.b64"]
        .iter()
        .flat_map(|file| {
            [
                "--sse-c-key-file".to_string(),
                data.join(file).to_str().unwrap().to_string(),
            ]
        })
        .collect()
}

#[test]
fn a_refused_key_does_not_cost_the_answers_pipelined_behind_it() {
    // Two keys in runs of names, 40 ms round trips: GETs of small objects
    // go out ahead of answers (HTTP/1.1 pipelining), each with a guessed
    // key. A refusal then waits its turn again instead of dropping the
    // connection and the answers owed on it.
    let data = tempfile::tempdir().unwrap();
    let bucket = data.path().join("served/bkt");
    for prefix in ["a", "b"] {
        for n in 0..60 {
            let name = format!("{prefix}/f{n:02}.bin");
            write_file(&bucket, &name, &content(&name, 2_000 + n));
        }
    }
    std::fs::write(data.path().join("key.raw"), KEY).unwrap();
    std::fs::write(data.path().join("other.b64"), OTHER_KEY_BASE64).unwrap();
    let key = data.path().join("key.raw");
    let served = serve_two_keys(data.path(), "a/", "b/", &["--latency-ms", "40"]);
    let dir = data.path().join("out");
    let output = restore_on_one_core(&served, "b2://bkt", &dir, "4", &key_args(data.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let names = common::files_under(&bucket);
    assert_restored(
        data.path(),
        &dir,
        &names.iter().cloned().collect::<Vec<_>>(),
    );

    let requests = downloads(data.path());
    let mut answers: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for record in &requests {
        let entry = answers.entry(record["name"].as_str().unwrap()).or_default();
        match record["status"].as_u64() {
            Some(200) => entry.0 += 1,
            Some(403) => entry.1 += 1,
            other => panic!("{other:?} in {record}"),
        }
    }
    assert!(
        requests.len() > answers.len(),
        "no key was refused: nothing tested"
    );
    for (name, (bodies, refused)) in &answers {
        assert_eq!(*bodies, 1, "{name}: body sent {bodies} times: {answers:?}");
        assert!(
            *refused <= 1,
            "{name}: refused {refused} times: {answers:?}"
        );
    }
    let connections: std::collections::BTreeSet<u64> = requests
        .iter()
        .map(|record| record["connection"].as_u64().unwrap())
        .collect();
    assert!(connections.len() <= 4, "{connections:?}");

    // Only the key of a/: each b/ object fails on its one refusal, and the
    // connection goes on to the answers it owes the objects behind it.
    let dir = data.path().join("only-a");
    let only_a = [
        "--sse-c-key-file".to_string(),
        key.to_str().unwrap().to_string(),
    ];
    let output = restore_on_one_core(&served, "b2://bkt", &dir, "4", &only_a);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let restored: Vec<String> = names
        .iter()
        .filter(|name| name.starts_with("a/"))
        .cloned()
        .collect();
    assert_restored(data.path(), &dir, &restored);
    let requests = downloads(data.path());
    let mut answers: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for record in &requests {
        let name = record["name"].as_str().unwrap();
        answers
            .entry(name)
            .or_default()
            .push(record["status"].as_u64().unwrap());
    }
    for (name, statuses) in &answers {
        let expected = if name.starts_with("a/") { 200 } else { 403 };
        assert_eq!(statuses, &[expected], "{name}: {answers:?}");
    }
    let connections: std::collections::BTreeSet<u64> = requests
        .iter()
        .map(|record| record["connection"].as_u64().unwrap())
        .collect();
    assert!(connections.len() <= 4, "{connections:?}");
}

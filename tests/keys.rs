//! Restricted application keys (one bucket, a name prefix, a few
//! capabilities), as production restores use them: `ringdown serve` refuses
//! what such a key may not do, as B2 does, and `restore`/`get` say what the
//! key lacks before their first request, or do the job with what it has.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Request, Served, serve, write_file};

/// `bkt` holds `backups/…` and `photos/…`; `other` one file.
fn data() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    write_file(&data.path().join("bkt"), "backups/db/a.txt", b"alpha");
    write_file(&data.path().join("bkt"), "backups/b.txt", b"bravo");
    write_file(&data.path().join("bkt"), "photos/p.jpg", b"photo");
    write_file(&data.path().join("other"), "o.txt", b"other");
    data
}

fn serve_key(data: &Path, key: &[&str]) -> Served {
    serve(data, false, key)
}

fn ringdown(served: &Served, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringdown"));
    command
        .args(args)
        .args(["--realm", &served.realm, "--quiet", "--cores", "1"])
        .arg("--ca-file")
        .arg(served.ca_file.as_ref().unwrap())
        .env("B2_APPLICATION_KEY_ID", &served.key_id)
        .env("B2_APPLICATION_KEY", &served.key)
        .env_remove("SSL_CERT_FILE")
        .env_remove("B2_REALM")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("RINGDOWN_SHARD_COUNT")
        .env_remove("SLURM_ARRAY_TASK_ID");
    common::run_with_deadline(command, Duration::from_secs(60), |_| {})
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit 3, a message containing every part of `says`, and no DEST at all.
fn assert_refused(output: &Output, says: &[&str], dest: &Path) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    for part in says {
        assert!(text.contains(part), "expected {part:?} in: {text}");
    }
    assert!(!dest.exists(), "{} was created", dest.display());
}

#[test]
fn serve_refuses_what_a_restricted_key_may_not_do() {
    let data = data();
    let served = serve(
        data.path(),
        false,
        &[
            "--key-bucket",
            "bkt",
            "--key-name-prefix",
            "backups/",
            "--key-capabilities",
            "listBuckets,listFiles,readFiles",
        ],
    );
    // The key's reach, in each API version's shape.
    let authorize = |version: u8| {
        let target = format!("/b2api/v{version}/b2_authorize_account");
        let response =
            served.send(Request::new("GET", &target).header("Authorization", served.basic_auth()));
        assert_eq!(response.status, 200);
        response.json()
    };
    let v1 = authorize(1);
    assert_eq!(v1["allowed"]["bucketName"], "bkt");
    assert_eq!(v1["allowed"]["namePrefix"], "backups/");
    let v3 = authorize(3);
    let storage = &v3["apiInfo"]["storageApi"];
    assert_eq!(storage["bucketName"], "bkt");
    assert_eq!(storage["bucketId"], v1["allowed"]["bucketId"]);
    assert_eq!(
        storage["capabilities"],
        serde_json::json!(["listBuckets", "listFiles", "readFiles"])
    );
    let v4 = authorize(4);
    let allowed = &v4["apiInfo"]["storageApi"]["allowed"];
    assert_eq!(allowed["buckets"][0]["name"], "bkt");
    assert_eq!(allowed["namePrefix"], "backups/");
    // v4 drops v3's single-bucket fields and `infoType` (b2-api.md §1).
    let storage = v4["apiInfo"]["storageApi"].as_object().unwrap();
    for dropped in ["bucketId", "bucketName", "infoType"] {
        assert!(!storage.contains_key(dropped), "v4 has {dropped}");
    }
    assert_eq!(v3["apiInfo"]["storageApi"]["infoType"], "storageApi");

    let (token, account) = served.authorize();
    let status = |operation: &str, body: serde_json::Value| {
        let response = served.post(operation, &token, body);
        if response.status == 401 {
            assert_eq!(response.json()["code"], "unauthorized");
        }
        response
    };
    // Buckets: only its own, and only when the call names it.
    assert_eq!(
        status("b2_list_buckets", serde_json::json!({"accountId": account})).status,
        401
    );
    let own = status(
        "b2_list_buckets",
        serde_json::json!({"accountId": account, "bucketName": "bkt"}),
    );
    assert_eq!(own.status, 200);
    let bucket_id = own.json()["buckets"][0]["bucketId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        status(
            "b2_list_buckets",
            serde_json::json!({"accountId": account, "bucketName": "other"})
        )
        .status,
        401
    );
    // Listings: only with a prefix inside the key's.
    let list = |prefix: &str| {
        status(
            "b2_list_file_names",
            serde_json::json!({"bucketId": bucket_id, "prefix": prefix}),
        )
    };
    assert_eq!(list("").status, 401);
    assert_eq!(list("photos/").status, 401);
    let names: Vec<String> = list("backups/").json()["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["fileName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["backups/b.txt", "backups/db/a.txt"]);
    // Downloads and file info: names inside the prefix, in its bucket.
    assert_eq!(served.get("/file/bkt/backups/b.txt", &token).body, b"bravo");
    assert_eq!(served.get("/file/bkt/photos/p.jpg", &token).status, 401);
    assert_eq!(served.get("/file/other/o.txt", &token).status, 401);
    // A refusal says nothing of what exists.
    assert_eq!(served.get("/file/bkt/photos/none.jpg", &token).status, 401);

    // Without readFiles nothing downloads; without listFiles nothing lists.
    let list_only = serve(
        data.path(),
        false,
        &["--key-capabilities", "listBuckets,listFiles"],
    );
    let (token, _) = list_only.authorize();
    assert_eq!(list_only.get("/file/bkt/backups/b.txt", &token).status, 401);
    let read_only = serve(data.path(), false, &["--key-capabilities", "readFiles"]);
    let (token, account) = read_only.authorize();
    let response = read_only.post(
        "b2_list_buckets",
        &token,
        serde_json::json!({"accountId": account, "bucketName": "bkt"}),
    );
    assert_eq!(response.status, 401);
    assert_eq!(
        read_only.get("/file/bkt/backups/b.txt", &token).body,
        b"bravo"
    );
}

#[test]
fn restore_and_get_say_what_a_restricted_key_lacks_or_work_within_it() {
    let data = data();
    let out = tempfile::tempdir().unwrap();
    let dest = |name: &str| out.path().join(name);

    // A key for one bucket, without listBuckets: the bucket's ID comes
    // from the key itself, so b2_list_buckets is never called.
    let log = out.path().join("access.jsonl");
    let bucket_key = serve_key(
        data.path(),
        &[
            "--key-bucket",
            "bkt",
            "--key-capabilities",
            "listFiles,readFiles",
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let restored = dest("bucket-key");
    let output = ringdown(
        &bucket_key,
        &["restore", "b2://bkt", restored.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(restored.join("backups/db/a.txt")).unwrap(),
        b"alpha"
    );
    assert_eq!(
        std::fs::read(restored.join("photos/p.jpg")).unwrap(),
        b"photo"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("b2_list_buckets"), "{log}");
    assert!(log.contains("b2_list_file_names"), "{log}");
    // `get --as-of` looks the bucket up for its listing the same way.
    let got = dest("a-as-of.txt");
    let output = ringdown(
        &bucket_key,
        &[
            "get",
            "b2://bkt/backups/db/a.txt",
            got.to_str().unwrap(),
            "--as-of",
            "2100-01-01",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(&got).unwrap(), b"alpha");
    // Another bucket: the message names the key's, before any request.
    let refused = dest("other");
    let output = ringdown(
        &bucket_key,
        &["restore", "b2://other", refused.to_str().unwrap()],
    );
    assert_refused(
        &output,
        &["not allowed", "restricted to bucket \"bkt\", not \"other\""],
        &refused,
    );

    // A key for two buckets (B2 describes those only in b2api/v4, and
    // refuses them on v1–v3): both restore, a third is refused by name.
    let two_key = serve_key(
        data.path(),
        &["--key-bucket", "bkt", "--key-bucket", "other"],
    );
    let v3 = two_key.send(
        Request::new("GET", "/b2api/v3/b2_authorize_account")
            .header("Authorization", two_key.basic_auth()),
    );
    assert_eq!(v3.status, 401);
    for bucket in ["bkt", "other"] {
        let restored = dest(&format!("two-{bucket}"));
        let source = format!("b2://{bucket}");
        let output = ringdown(&two_key, &["restore", &source, restored.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    assert_eq!(
        std::fs::read(dest("two-other").join("o.txt")).unwrap(),
        b"other"
    );
    let output = ringdown(
        &two_key,
        &["restore", "b2://third", refused.to_str().unwrap()],
    );
    assert_refused(
        &output,
        &["restricted to buckets \"bkt\", \"other\", not \"third\""],
        &refused,
    );

    // A key for a bucket deleted since: said so, not "no such bucket".
    let gone_key = serve_key(data.path(), &["--key-bucket", "gone"]);
    let output = ringdown(
        &gone_key,
        &["restore", "b2://bkt", refused.to_str().unwrap()],
    );
    assert_refused(&output, &["no longer exists"], &refused);

    // A name prefix: the whole bucket is refused with the command that
    // works; the prefix itself restores, relative to it.
    let prefix_key = serve_key(data.path(), &["--key-name-prefix", "backups/"]);
    let output = ringdown(
        &prefix_key,
        &["restore", "b2://bkt", refused.to_str().unwrap()],
    );
    assert_refused(
        &output,
        &[
            "only read names starting with \"backups/\"",
            "restore b2://bkt/backups/",
        ],
        &refused,
    );
    let output = ringdown(
        &prefix_key,
        &["restore", "b2://bkt/photos", refused.to_str().unwrap()],
    );
    assert_refused(&output, &["nothing under b2://bkt/photos/"], &refused);
    let restored = dest("prefix-key");
    let output = ringdown(
        &prefix_key,
        &["restore", "b2://bkt/backups", restored.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(restored.join("db/a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(restored.join("b.txt")).unwrap(), b"bravo");
    assert!(!restored.join("photos").exists());
    let got = dest("p.jpg");
    let output = ringdown(
        &prefix_key,
        &["get", "b2://bkt/photos/p.jpg", got.to_str().unwrap()],
    );
    assert_refused(&output, &["not \"photos/p.jpg\""], &got);

    // Missing capabilities are named, with the list to ask for. A dry run
    // only lists, so listFiles is enough for it.
    let read_key = serve_key(
        data.path(),
        &["--key-capabilities", "listBuckets,readFiles"],
    );
    let output = ringdown(
        &read_key,
        &["restore", "b2://bkt", refused.to_str().unwrap()],
    );
    assert_refused(
        &output,
        &[
            "lacks the listFiles capability",
            "use a key with listBuckets,listFiles,readFiles",
        ],
        &refused,
    );
    let list_key = serve_key(
        data.path(),
        &["--key-capabilities", "listBuckets,listFiles"],
    );
    let output = ringdown(
        &list_key,
        &[
            "restore",
            "b2://bkt",
            refused.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("photos/p.jpg"));
    let output = ringdown(
        &list_key,
        &["restore", "b2://bkt", refused.to_str().unwrap()],
    );
    assert_refused(&output, &["lacks the readFiles capability"], &refused);

    // A server that does not describe its key: B2's own refusals, told
    // apart from bad credentials (exit 3 either way).
    let silent_key = serve_key(data.path(), &["--key-capabilities", ""]);
    let output = ringdown(
        &silent_key,
        &["restore", "b2://bkt", refused.to_str().unwrap()],
    );
    assert_refused(
        &output,
        &[
            "not allowed: b2_list_buckets: HTTP 401 unauthorized",
            "b2 key list --long",
        ],
        &refused,
    );
    assert!(!stderr(&output).contains("authentication failed"));
    let output = ringdown(
        &silent_key,
        &["get", "b2://bkt/backups/b.txt", got.to_str().unwrap()],
    );
    assert_refused(
        &output,
        &["not allowed: GET b2://bkt/backups/b.txt: HTTP 401 unauthorized"],
        &got,
    );
}

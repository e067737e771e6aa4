//! Integration tests of `ringdown serve`: the real binary on port 0, spoken to
//! over plain HTTP (and TLS in one test) with a tiny blocking client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A small tree: bucket `bkt` with a few files, bucket `other`, a 0-byte file.
fn small_tree() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "bkt/a.txt", b"hello world");
    write_file(root.path(), "bkt/dir/b c+d.bin", &content("b", 3000));
    write_file(root.path(), "bkt/dir/sub/e.bin", &content("e", 10));
    write_file(root.path(), "bkt/empty", b"");
    write_file(root.path(), "other/x", b"x");
    root
}

#[test]
fn ready_line_has_demo_credentials_and_plain_realm() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let port = served.address.rsplit(':').next().unwrap();
    assert_eq!(
        served.line,
        format!("realm=http://127.0.0.1:{port} ca_file=none key_id={DEMO_KEY_ID} key={DEMO_KEY}")
    );
    let response = served.send(
        Request::new("GET", "/b2api/v3/b2_authorize_account")
            .header("Authorization", served.basic_auth()),
    );
    assert_eq!(response.status, 200);
    assert!(response.header("date").is_some(), "Date on every response");
    assert_eq!(response.header("content-type"), Some("application/json"));
}

#[test]
fn credentials_from_environment_are_not_printed_and_wrong_ones_are_refused() {
    let tree = small_tree();
    let served = serve_with_env(
        tree.path(),
        true,
        &[],
        &[
            ("B2_APPLICATION_KEY_ID", "envkeyid"),
            ("B2_APPLICATION_KEY", "envsecret"),
        ],
    );
    assert!(served.line.ends_with("key_id=envkeyid"), "{}", served.line);
    assert!(!served.line.contains("envsecret"));
    served.authorize();
    let wrong = format!("Basic {}", base64_encode("envkeyid:nope"));
    for version in 1..=4 {
        let target = format!("/b2api/v{version}/b2_authorize_account");
        let response =
            served.send(Request::new("GET", &target).header("Authorization", wrong.clone()));
        assert_eq!(response.status, 401);
        assert_eq!(response.json()["code"], "unauthorized");
        assert_eq!(response.json()["status"], 401);
    }
    let missing =
        served.send(Request::new("POST", "/b2api/v3/b2_authorize_account").json(json!({})));
    assert_eq!(missing.status, 401);
    assert!(!served.stderr().contains("envsecret"));
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn authorize_is_shaped_per_version() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let call = |version: u32, method: &str| {
        let target = format!("/b2api/v{version}/b2_authorize_account");
        let mut request =
            Request::new(method, &target).header("Authorization", served.basic_auth());
        if method == "POST" {
            request = request.json(json!({}));
        }
        let response = served.send(request);
        assert_eq!(response.status, 200);
        response.json()
    };
    for version in [1, 2] {
        let json = call(version, "GET");
        assert_eq!(json["apiUrl"], served.realm.as_str());
        assert_eq!(json["downloadUrl"], served.realm.as_str());
        assert!(
            json["allowed"]["capabilities"]
                .as_array()
                .unwrap()
                .contains(&json!("listBuckets"))
        );
        assert!(json["authorizationToken"].is_string());
    }
    let v3 = call(3, "POST");
    let storage = &v3["apiInfo"]["storageApi"];
    assert_eq!(storage["apiUrl"], served.realm.as_str());
    for field in [
        "downloadUrl",
        "s3ApiUrl",
        "recommendedPartSize",
        "absoluteMinimumPartSize",
        "bucketId",
        "bucketName",
        "capabilities",
        "namePrefix",
    ] {
        assert!(storage.get(field).is_some(), "v3 storageApi.{field}");
    }
    let v4 = call(4, "GET");
    assert!(v4["apiInfo"]["storageApi"]["allowed"]["capabilities"].is_array());
    assert!(v4["apiInfo"]["storageApi"].get("bucketId").is_none());
}

#[test]
fn list_buckets_filters() {
    let tree = small_tree();
    std::os::unix::fs::symlink(tree.path().join("bkt"), tree.path().join("linked")).unwrap();
    let served = serve(tree.path(), true, &[]);
    let (token, account) = served.authorize();
    let all = served.post(
        "b2_list_buckets",
        &token,
        json!({"accountId": account, "bucketTypes": ["all"], "bucketName": null}),
    );
    let names: Vec<_> = all.json()["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucketName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["bkt", "other"],
        "symlinked directories are not buckets"
    );
    let bucket = &all.json()["buckets"][0];
    assert_eq!(bucket["bucketType"], "allPrivate");
    assert!(bucket["fileLockConfiguration"]["value"]["isFileLockEnabled"] == json!(false));
    let by_name = served.post(
        "b2_list_buckets",
        &token,
        json!({"accountId": account, "bucketName": "other"}),
    );
    assert_eq!(by_name.json()["buckets"].as_array().unwrap().len(), 1);
    let id = by_name.json()["buckets"][0]["bucketId"]
        .as_str()
        .unwrap()
        .to_string();
    let by_id = served.get(
        &format!("/b2api/v2/b2_list_buckets?accountId={account}&bucketId={id}"),
        &token,
    );
    assert_eq!(by_id.json()["buckets"][0]["bucketName"], "other");
    let unknown = served.post("b2_list_buckets", &token, json!({"bucketName": "nope"}));
    assert_eq!(unknown.json()["buckets"], json!([]));
    let snapshot_only = served.post(
        "b2_list_buckets",
        &token,
        json!({"bucketTypes": ["snapshot"]}),
    );
    assert_eq!(snapshot_only.json()["buckets"], json!([]));
}

#[test]
fn listing_paginates_sorted_by_utf8_bytes() {
    let root = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for index in 0..250 {
        let name = format!("f/{index:04}");
        write_file(
            root.path(),
            &format!("bkt/{name}"),
            format!("{index}").as_bytes(),
        );
        expected.push(name);
    }
    for name in ["B", "a", "a-b", "a.b", "aa/b", "é", "z+ y"] {
        write_file(root.path(), &format!("bkt/{name}"), name.as_bytes());
        expected.push(name.to_string());
    }
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let served = serve(root.path(), true, &[]);
    let (token, _) = served.authorize();
    let bucket_id = served.bucket_id(&token, "bkt");

    let mut seen = Vec::new();
    let mut start = json!(null);
    let mut pages = 0;
    loop {
        let response = served.post("b2_list_file_names", &token, json!({"bucketId": bucket_id, "startFileName": start, "maxFileCount": 100, "prefix": null}));
        assert_eq!(response.status, 200);
        let json = response.json();
        let files = json["files"].as_array().unwrap();
        assert!(files.len() <= 100);
        for file in files {
            assert_eq!(file["action"], "upload");
            seen.push(file["fileName"].as_str().unwrap().to_string());
        }
        pages += 1;
        if json["nextFileName"].is_null() {
            break;
        }
        start = json["nextFileName"].clone();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);

    // startFileName is inclusive and need not exist; default page is 100; 0 means default.
    let from = served.post(
        "b2_list_file_names",
        &token,
        json!({"bucketId": bucket_id, "startFileName": "f/0100"}),
    );
    assert_eq!(from.json()["files"][0]["fileName"], "f/0100");
    assert_eq!(from.json()["files"].as_array().unwrap().len(), 100);
    let between = served.post(
        "b2_list_file_names",
        &token,
        json!({"bucketId": bucket_id, "startFileName": "f/0099x", "maxFileCount": 0}),
    );
    assert_eq!(between.json()["files"][0]["fileName"], "f/0100");

    // Prefix and delimiter fold into folder entries; GET with query parameters works too.
    let folded = served.get(
        &format!(
            "/b2api/v1/b2_list_file_names?bucketId={bucket_id}&delimiter=%2F&maxFileCount=1000"
        ),
        &token,
    );
    let entries: Vec<(String, String)> = folded.json()["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["fileName"].as_str().unwrap().to_string(),
                f["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["B", "a", "a-b", "a.b", "aa/", "f/", "z+ y", "é"]);
    assert_eq!(entries[4].1, "folder");
    let v1 = &folded.json()["files"][0];
    assert_eq!(v1["size"], 1, "v1 listings carry size");
    let prefixed = served.post(
        "b2_list_file_names",
        &token,
        json!({"bucketId": bucket_id, "prefix": "f/01", "maxFileCount": 5}),
    );
    let json = prefixed.json();
    let names: Vec<_> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fileName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["f/0100", "f/0101", "f/0102", "f/0103", "f/0104"]);
    assert_eq!(json["nextFileName"], "f/0105");

    // Versions: same entries, with nextFileId.
    let versions = served.post(
        "b2_list_file_versions",
        &token,
        json!({"bucketId": bucket_id, "maxFileCount": 2}),
    );
    let json = versions.json();
    assert_eq!(json["files"].as_array().unwrap().len(), 2);
    assert_eq!(json["nextFileName"], expected[2].as_str());
    assert!(json["nextFileId"].as_str().unwrap().starts_with("4_z"));

    let bad = served.post("b2_list_file_names", &token, json!({"bucketId": "nope"}));
    assert_eq!(bad.status, 400);
    let missing = served.post("b2_list_file_names", &token, json!({}));
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["code"], "bad_request");
}

#[test]
fn file_objects_info_and_ids_are_stable_across_restarts() {
    let tree = small_tree();
    let mtime_ms = std::fs::metadata(tree.path().join("bkt/a.txt"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let listing = |served: &Served| {
        let (token, _) = served.authorize();
        let bucket_id = served.bucket_id(&token, "bkt");
        let response = served.post("b2_list_file_names", &token, json!({"bucketId": bucket_id}));
        (token, response.json()["files"].as_array().unwrap().clone())
    };
    let served = serve(tree.path(), true, &[]);
    let (token, files) = listing(&served);
    let a = files
        .iter()
        .find(|f| f["fileName"] == "a.txt")
        .unwrap()
        .clone();
    assert_eq!(a["contentLength"], 11);
    assert_eq!(a["contentSha1"], sha1_hex(b"hello world"));
    assert_eq!(a["contentType"], "text/plain");
    assert_eq!(
        a["fileInfo"]["src_last_modified_millis"],
        mtime_ms.to_string()
    );
    assert_eq!(a["uploadTimestamp"], mtime_ms);
    assert!(a["fileRetention"].is_object() && a["legalHold"].is_object());
    let info = served.post("b2_get_file_info", &token, json!({"fileId": a["fileId"]}));
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["fileName"], "a.txt");
    assert_eq!(info.json()["contentSha1"], a["contentSha1"]);
    let unknown = served.post("b2_get_file_info", &token, json!({"fileId": "4_zgarbage"}));
    assert_eq!(unknown.status, 400);
    // Same name, another version hash: that version is gone.
    let id = a["fileId"].as_str().unwrap();
    let at = id.find("_f").unwrap() + 2;
    let flipped = if &id[at..at + 1] == "0" { "1" } else { "0" };
    let gone = format!("{}{flipped}{}", &id[..at], &id[at + 1..]);
    assert_eq!(
        served
            .post("b2_get_file_info", &token, json!({"fileId": gone}))
            .status,
        404
    );
    let cache = std::fs::read_to_string(served.work.path().join("cache/sha1-index.jsonl")).unwrap();
    assert!(
        cache.contains(&sha1_hex(b"hello world")),
        "digest cached outside DIR"
    );
    drop(served);

    let again = serve(tree.path(), true, &[]);
    let (_, files_again) = listing(&again);
    assert_eq!(
        files, files_again,
        "IDs and metadata stable across restarts"
    );
}

fn download(served: &Served, token: &str, name: &str, range: Option<&str>) -> Response {
    let target = format!("/file/bkt/{name}");
    let mut request = Request::new("GET", &target).header("Authorization", token);
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    served.send(request)
}

#[test]
fn downloads_ranges_and_headers() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let data = content("b", 3000);
    let name = "dir/b%20c%2Bd.bin";

    let whole = download(&served, &token, name, None);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);
    assert_eq!(whole.content_length(), Some(3000));
    assert_eq!(whole.header("x-bz-file-name"), Some("dir/b%20c%2Bd.bin"));
    assert_eq!(
        whole.header("x-bz-content-sha1"),
        Some(sha1_hex(&data).as_str())
    );
    assert_eq!(
        whole.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(whole.header("x-bz-file-id").unwrap().starts_with("4_z"));
    assert!(
        whole
            .header("x-bz-upload-timestamp")
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert!(whole.header("x-bz-info-src_last_modified_millis").is_some());
    assert!(whole.header("date").is_some());
    assert!(whole.header("content-range").is_none());

    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=2999-2999", 2999, 2999),
        ("bytes=0-2999", 0, 2999),
        ("bytes=-10", 2990, 2999),
        ("bytes=1000-", 1000, 2999),
        ("bytes=2990-5000", 2990, 2999),
    ] {
        let response = download(&served, &token, name, Some(range));
        assert_eq!(response.status, 206, "{range}");
        assert_eq!(response.body, &data[start..=end], "{range}");
        assert_eq!(
            response.header("content-range"),
            Some(format!("bytes {start}-{end}/3000").as_str()),
            "{range}"
        );
        assert_eq!(response.content_length(), Some(end - start + 1));
        assert_eq!(
            response.header("x-bz-content-sha1"),
            Some(sha1_hex(&data).as_str()),
            "whole-file SHA1 on ranges"
        );
    }
    let outside = download(&served, &token, name, Some("bytes=3000-"));
    assert_eq!(outside.status, 416);
    assert_eq!(outside.json()["code"], "range_not_satisfiable");
    assert_eq!(outside.header("content-range"), Some("bytes */3000"));

    let empty = download(&served, &token, "empty", None);
    assert_eq!(
        (empty.status, empty.body.len(), empty.content_length()),
        (200, 0, Some(0))
    );
    assert_eq!(
        empty.header("x-bz-content-sha1"),
        Some(sha1_hex(b"").as_str())
    );
    for range in ["bytes=0-", "bytes=0-0", "bytes=-1"] {
        let response = download(&served, &token, "empty", Some(range));
        assert_eq!(response.status, 416, "{range}");
        assert_eq!(response.header("content-range"), Some("bytes */0"));
    }

    // HEAD: same headers, no body.
    let head =
        served.send(Request::new("HEAD", "/file/bkt/a.txt").header("Authorization", token.clone()));
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(11));
    assert_eq!(
        head.header("x-bz-content-sha1"),
        Some(sha1_hex(b"hello world").as_str())
    );

    // By ID, with the token in the query string.
    let file_id = whole.header("x-bz-file-id").unwrap();
    let by_id = served.send(
        Request::new(
            "GET",
            &format!("/b2api/v3/b2_download_file_by_id?fileId={file_id}&Authorization={token}"),
        )
        .header("Range", "bytes=5-9"),
    );
    assert_eq!(by_id.status, 206);
    assert_eq!(by_id.body, &data[5..10]);
    let query_token = served.send(Request::new(
        "GET",
        &format!("/file/bkt/a.txt?Authorization={token}"),
    ));
    assert_eq!(query_token.body, b"hello world");

    // Keep-alive: two requests on one connection.
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&served.address).unwrap();
    let one = format!("GET /file/bkt/a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n");
    let two = format!(
        "GET /file/bkt/a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(format!("{one}{two}").as_bytes()).unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("hello world").count(), 2);
}

#[test]
fn errors_are_b2_json() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let check = |response: Response, status: u16, code: &str| {
        assert_eq!(
            response.status,
            status,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let json = response.json();
        assert_eq!(json["status"], status);
        assert_eq!(json["code"], code);
        assert!(json["message"].is_string());
    };
    check(
        served.post("b2_list_buckets", "4_bogus", json!({})),
        401,
        "bad_auth_token",
    );
    check(
        served.send(Request::new("POST", "/b2api/v3/b2_list_buckets").json(json!({}))),
        401,
        "bad_auth_token",
    );
    check(served.get("/file/bkt/a.txt", "nope"), 401, "bad_auth_token");
    check(
        served.send(Request::new("GET", "/file/bkt/a.txt")),
        401,
        "bad_auth_token",
    );
    check(served.get("/file/nope/a.txt", &token), 404, "not_found");
    check(
        served.get("/file/bkt/missing.txt", &token),
        404,
        "not_found",
    );
    check(served.get("/file/bkt/dir", &token), 404, "not_found");
    check(
        served.post("b2_no_such_call", &token, json!({})),
        404,
        "not_found",
    );
    check(
        served.get("/b2api/v9/b2_list_buckets", &token),
        404,
        "not_found",
    );
    check(
        served.get("/b2api/v3/b2_download_file_by_id?fileId=junk", &token),
        400,
        "bad_request",
    );
    let not_json = served.send(
        Request::new("POST", "/b2api/v3/b2_list_buckets")
            .header("Authorization", token.clone())
            .json(json!(null)),
    );
    assert_eq!(not_json.status, 200, "null body = no parameters");
    let mut garbage =
        Request::new("POST", "/b2api/v3/b2_list_buckets").header("Authorization", token.clone());
    garbage.body = Some(b"{not json".to_vec());
    check(served.send(garbage), 400, "bad_request");
    let mut huge =
        Request::new("POST", "/b2api/v3/b2_list_buckets").header("Authorization", token.clone());
    huge.body = Some(vec![b' '; 2 << 20]);
    check(served.send(huge), 400, "bad_request");
    // An oversized head is refused (431) or the connection dropped; never served.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&served.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "GET /file/bkt/a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nX-Long: {}\r\n\r\n",
            "x".repeat(1 << 20)
        );
        let _ = stream.write_all(head.as_bytes());
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }
    // The server is still alive after all that.
    assert_eq!(served.get("/file/bkt/a.txt", &token).status, 200);
}

#[test]
fn nothing_outside_dir_is_served() {
    let outside = tempfile::tempdir().unwrap();
    write_file(outside.path(), "secret.txt", b"TOP SECRET");
    let tree = small_tree();
    let bucket = tree.path().join("bkt");
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), bucket.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), bucket.join("linkdir")).unwrap();
    std::fs::write(tree.path().join("root-secret.txt"), b"TOP SECRET").unwrap();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    for target in [
        "/file/bkt/../root-secret.txt",
        "/file/bkt/%2e%2e/root-secret.txt",
        "/file/bkt/%2E%2E%2Froot-secret.txt",
        "/file/bkt/dir/..%2f..%2froot-secret.txt",
        "/file/bkt//etc/passwd",
        "/file/bkt/%2Fetc%2Fpasswd",
        "/file/bkt/link.txt",
        "/file/bkt/linkdir/secret.txt",
        "/file/bkt/.",
        "/file/../root-secret.txt",
        "/file/%2e%2e/root-secret.txt",
    ] {
        let response = served.get(target, &token);
        assert!(
            response.status == 400 || response.status == 404,
            "{target}: {}",
            response.status
        );
        assert!(
            !String::from_utf8_lossy(&response.body).contains("TOP SECRET"),
            "{target}"
        );
    }
    let bucket_id = served.bucket_id(&token, "bkt");
    let listing = served.post(
        "b2_list_file_names",
        &token,
        json!({"bucketId": bucket_id, "maxFileCount": 1000}),
    );
    let text = String::from_utf8_lossy(&listing.body).to_string();
    assert!(
        !text.contains("link.txt") && !text.contains("secret"),
        "symlinks are not listed: {text}"
    );
}

#[test]
fn large_file_threshold_switches_to_large_file_sha1() {
    let root = tempfile::tempdir().unwrap();
    let big = content("big", 4096);
    write_file(root.path(), "bkt/big.bin", &big);
    write_file(root.path(), "bkt/small.bin", &content("small", 4095));
    let served = serve(root.path(), true, &["--large-file-threshold", "4KiB"]);
    let (token, _) = served.authorize();
    let bucket_id = served.bucket_id(&token, "bkt");
    let files = served
        .post("b2_list_file_names", &token, json!({"bucketId": bucket_id}))
        .json()["files"]
        .clone();
    assert_eq!(files[0]["fileName"], "big.bin");
    assert_eq!(files[0]["contentSha1"], "none");
    assert_eq!(files[0]["fileInfo"]["large_file_sha1"], sha1_hex(&big));
    assert_eq!(files[1]["contentSha1"], sha1_hex(&content("small", 4095)));
    assert!(files[1]["fileInfo"].get("large_file_sha1").is_none());
    let response = served.get("/file/bkt/big.bin", &token);
    assert_eq!(response.header("x-bz-content-sha1"), Some("none"));
    assert_eq!(
        response.header("x-bz-info-large_file_sha1"),
        Some(sha1_hex(&big).as_str())
    );
    assert_eq!(response.body, big);
}

#[test]
fn tls_with_the_printed_ca() {
    let tree = small_tree();
    let served = serve(tree.path(), false, &[]);
    let ca_file = served.ca_file.clone().expect("ca_file");
    assert!(ca_file.is_absolute());
    assert!(served.realm.starts_with("https://127.0.0.1:"));
    assert!(
        std::fs::read_to_string(&ca_file)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        !ca_file.parent().unwrap().join("server-key.pem").exists(),
        "no key written by default"
    );
    let (token, _) = served.authorize();
    let response = served.get("/file/bkt/a.txt", &token);
    assert_eq!(response.body, b"hello world");
    // The certificate also names localhost.
    let stream = std::net::TcpStream::connect(&served.address).unwrap();
    let mut tls = rustls::StreamOwned::new(tls_client(&ca_file, "localhost"), stream);
    use std::io::Write;
    tls.write_all(b"GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut text);
    assert!(String::from_utf8_lossy(&text).starts_with("HTTP/1.1 404"));
}

fn statuses(served: &Served, token: &str, count: usize) -> Vec<u16> {
    (0..count)
        .map(|_| download(served, token, "a.txt", None).status)
        .collect()
}

#[test]
fn fail_and_throttle_faults_are_deterministic_and_retryable() {
    let tree = small_tree();
    let first = serve(tree.path(), true, &["--fail-rate", "0.5", "--seed", "42"]);
    let (token, _) = first.authorize();
    let run_one = statuses(&first, &token, 20);
    let second = serve(tree.path(), true, &["--fail-rate", "0.5", "--seed", "42"]);
    let (token2, _) = second.authorize();
    assert_eq!(
        run_one,
        statuses(&second, &token2, 20),
        "same seed, same decisions"
    );
    assert!(
        run_one.contains(&503) && run_one.contains(&200),
        "{run_one:?}"
    );
    let other_seed = serve(tree.path(), true, &["--fail-rate", "0.5", "--seed", "43"]);
    let (token3, _) = other_seed.authorize();
    assert_ne!(run_one, statuses(&other_seed, &token3, 20));

    let failing = serve(tree.path(), true, &["--fail-rate", "1"]);
    let (token, _) = failing.authorize();
    let response = download(&failing, &token, "a.txt", None);
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["code"], "service_unavailable");
    assert_eq!(response.header("retry-after"), Some("1"));

    let throttled = serve(tree.path(), true, &["--throttle-rate", "1"]);
    let (token, _) = throttled.authorize();
    let response = throttled.post("b2_list_buckets", &token, json!({}));
    assert_eq!(response.status, 429);
    assert_eq!(response.json()["code"], "too_many_requests");
    assert!(response.header("retry-after").is_none());
    let with_header = serve(
        tree.path(),
        true,
        &["--throttle-rate", "1", "--retry-after-s", "3"],
    );
    let (token, _) = with_header.authorize();
    assert_eq!(
        download(&with_header, &token, "a.txt", None).header("retry-after"),
        Some("3")
    );
}

#[test]
fn body_faults_cut_stall_and_corrupt() {
    let tree = small_tree();
    let data = content("b", 3000);
    let name = "dir/b%20c%2Bd.bin";

    for flag in ["--reset-rate", "--short-body-rate"] {
        let served = serve(tree.path(), true, &[flag, "1", "--seed", "1"]);
        let (token, _) = served.authorize();
        let response = download(&served, &token, name, None);
        assert_eq!(response.content_length(), Some(3000), "{flag}");
        assert!(response.body.len() < 3000, "{flag}: body cut short");
        assert_eq!(
            response.body,
            &data[..response.body.len()],
            "{flag}: a prefix of the data"
        );
        assert!(!response.timed_out, "{flag}: connection closed");
    }

    let stalled = serve(tree.path(), true, &["--stall-rate", "1"]);
    let (token, _) = stalled.authorize();
    let target = format!("/file/bkt/{name}");
    let started = Instant::now();
    let response = stalled.send(
        Request::new("GET", &target)
            .header("Authorization", token)
            .timeout(Duration::from_millis(700)),
    );
    assert!(response.timed_out, "stalled body keeps the socket open");
    assert!(response.body.len() < 3000);
    assert!(started.elapsed() >= Duration::from_millis(600));

    let corrupt = serve(tree.path(), true, &["--corrupt-rate", "1"]);
    let (token, _) = corrupt.authorize();
    let response = download(&corrupt, &token, name, None);
    assert_eq!(response.body.len(), 3000);
    let differing = response
        .body
        .iter()
        .zip(&data)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 1, "exactly one byte flipped");
    assert_eq!(
        response.header("x-bz-content-sha1"),
        Some(sha1_hex(&data).as_str())
    );
}

#[test]
fn latency_rate_limit_and_token_expiry() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "bkt/half.bin", &content("half", 500_000));
    let slow = serve(root.path(), true, &["--latency-ms", "300"]);
    let (token, _) = slow.authorize();
    let started = Instant::now();
    assert_eq!(slow.get("/file/bkt/half.bin", &token).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let limited = serve(root.path(), true, &["--rate-per-conn", "1MB/s"]);
    let (token, _) = limited.authorize();
    let started = Instant::now();
    let response = limited.get("/file/bkt/half.bin", &token);
    let elapsed = started.elapsed();
    assert_eq!(response.body, content("half", 500_000));
    assert!(
        elapsed >= Duration::from_millis(350),
        "500 KB at 1 MB/s took {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    let expiring = serve(root.path(), true, &["--token-ttl-s", "1"]);
    let (token, _) = expiring.authorize();
    assert_eq!(expiring.get("/file/bkt/half.bin", &token).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    let response = expiring.get("/file/bkt/half.bin", &token);
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["code"], "expired_auth_token");
    let (fresh, _) = expiring.authorize();
    assert_eq!(expiring.get("/file/bkt/half.bin", &fresh).status, 200);
}

#[test]
fn access_log_records_downloads() {
    let tree = small_tree();
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("access.jsonl");
    let served = serve(tree.path(), true, &["--access-log", log.to_str().unwrap()]);
    let (token, _) = served.authorize();
    download(&served, &token, "dir/b%20c%2Bd.bin", Some("bytes=10-19"));
    download(&served, &token, "a.txt", None);
    download(&served, &token, "missing", None);
    std::thread::sleep(Duration::from_millis(100));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ranged = lines
        .iter()
        .find(|l| l["name"] == "dir/b c+d.bin")
        .expect("ranged download logged");
    assert_eq!(ranged["range"], "bytes=10-19");
    assert_eq!(ranged["status"], 206);
    assert_eq!(ranged["bytes_sent"], 10);
    assert_eq!(ranged["method"], "GET");
    let whole = lines.iter().find(|l| l["name"] == "a.txt").unwrap();
    assert_eq!(whole["bytes_sent"], 11);
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == 404 && l["path"] == "/file/bkt/missing")
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&token), "tokens never logged");
}

#[test]
fn sigterm_exits_cleanly() {
    let tree = small_tree();
    let mut served = serve(tree.path(), true, &[]);
    send_signal(served.child.id(), "-TERM");
    let status = exit_within(&mut served.child, Duration::from_secs(5), "SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Sends raw request bytes on one plain connection and returns everything
/// received until the server closes it (or 5 s pass).
fn raw_exchange(served: &Served, requests: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&served.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(requests).unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    received
}

#[test]
fn status_range_digest_and_connection_fault_flags() {
    let tree = small_tree();
    let data = content("b", 3000);
    let name = "dir/b%20c%2Bd.bin";

    for (flag, status, code, retry_after) in [
        ("500:1", 500, "internal_error", None),
        ("503:1:2", 503, "service_unavailable", Some("2")),
        ("408:1", 408, "request_timeout", None),
    ] {
        let served = serve(tree.path(), true, &["--status-rate", flag]);
        let (token, _) = served.authorize();
        let response = download(&served, &token, name, None);
        assert_eq!(response.status, status, "{flag}");
        assert_eq!(response.json()["code"], code, "{flag}");
        assert_eq!(response.header("retry-after"), retry_after, "{flag}");
    }

    let served = serve(tree.path(), true, &["--wrong-range-rate", "1"]);
    let (token, _) = served.authorize();
    let response = download(&served, &token, name, Some("bytes=0-99"));
    assert_eq!(response.status, 206);
    assert_eq!(response.header("content-range"), Some("bytes 1-100/3000"));
    assert_eq!(response.body.len(), 100);

    let served = serve(tree.path(), true, &["--ignore-range-rate", "1"]);
    let (token, _) = served.authorize();
    let response = download(&served, &token, name, Some("bytes=10-19"));
    assert_eq!(response.status, 200);
    assert!(response.header("content-range").is_none());
    assert_eq!(response.body, data);

    let served = serve(tree.path(), true, &["--long-body-rate", "1"]);
    let (token, _) = served.authorize();
    let response = download(&served, &token, name, Some("bytes=0-99"));
    assert_eq!(response.status, 206);
    assert_eq!(response.header("content-range"), Some("bytes 0-99/3000"));
    let length = response.content_length().unwrap();
    assert!(length < 100, "{length}");
    assert_eq!(response.body, &data[..length]);

    let served = serve(tree.path(), true, &["--wrong-sha1", "dir/b c+d.bin"]);
    let (token, _) = served.authorize();
    let response = download(&served, &token, name, None);
    assert_eq!(response.body, data, "the bytes are right");
    let published = response.header("x-bz-content-sha1").unwrap().to_string();
    assert_ne!(published, sha1_hex(&data));
    let listed = served.post(
        "b2_list_file_names",
        &token,
        json!({"bucketId": served.bucket_id(&token, "bkt"), "prefix": "dir/b"}),
    );
    assert_eq!(listed.json()["files"][0]["contentSha1"], published.as_str());

    // Reset mid-head: some bytes of the status line, never a whole head.
    let served = serve(tree.path(), true, &["--reset-head-rate", "1"]);
    let (token, _) = served.authorize();
    let request =
        format!("GET /file/bkt/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n");
    let received = raw_exchange(&served, request.as_bytes());
    assert!(!received.is_empty() && received.len() < 100, "{received:?}");
    assert!(b"HTTP/1.1 200 OK\r\n".starts_with(&received[..received.len().min(17)]));
    assert!(!received.windows(4).any(|w| w == b"\r\n\r\n"));

    // Keep-alive closed: the first request is answered, the second on the
    // same connection gets nothing at all.
    let served = serve(tree.path(), true, &["--close-keepalive-rate", "1"]);
    let (token, _) = served.authorize();
    let request =
        format!("GET /file/bkt/a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n");
    let received = raw_exchange(&served, request.repeat(2).as_bytes());
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello world"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
}

#[test]
fn tls_handshake_reset_and_certificate_name_flags() {
    use std::io::Write;
    let tree = small_tree();
    let handshake = |served: &Served, server_name: &str| {
        let stream = std::net::TcpStream::connect(&served.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(
            tls_client(served.ca_file.as_ref().unwrap(), server_name),
            stream,
        );
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .and_then(|()| tls.flush())
            .and_then(|()| {
                let mut byte = [0u8; 1];
                std::io::Read::read_exact(&mut tls, &mut byte)
            })
            .map_err(|error| error.to_string())
    };
    let served = serve(tree.path(), false, &["--reset-handshake-rate", "1"]);
    let error = handshake(&served, "127.0.0.1").unwrap_err();
    assert!(!error.contains("certificate"), "{error}");

    let served = serve(tree.path(), false, &["--cert-name", "other.example"]);
    let error = handshake(&served, "127.0.0.1").unwrap_err();
    assert!(error.contains("certificate"), "{error}");
    handshake(&served, "other.example").expect("valid for its own name");
}

#[test]
fn download_url_is_published_in_every_authorize_version() {
    let tree = small_tree();
    let served = serve(
        tree.path(),
        true,
        &["--download-url", "https://f005.example:8443/"],
    );
    for version in 1..=4 {
        let target = format!("/b2api/v{version}/b2_authorize_account");
        let json = served
            .send(Request::new("GET", &target).header("Authorization", served.basic_auth()))
            .json();
        let (api_url, download_url) = if version <= 2 {
            (&json["apiUrl"], &json["downloadUrl"])
        } else {
            let storage = &json["apiInfo"]["storageApi"];
            (&storage["apiUrl"], &storage["downloadUrl"])
        };
        assert_eq!(
            api_url,
            served.realm.as_str(),
            "v{version}: the API stays here"
        );
        assert_eq!(download_url, "https://f005.example:8443", "v{version}");
    }
}

#[test]
fn download_url_with_a_path_is_refused() {
    let tree = small_tree();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .arg("serve")
        .arg(tree.path())
        .args(["--listen", "127.0.0.1:0", "--plain"])
        .args(["--download-url", "http://127.0.0.1:9/file/bkt"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("scheme://host[:port] only"), "{stderr}");
}

/// Opening a FIFO for reading waits for a writer: the server must refuse it
/// as "not an object" at once instead of hanging the request (and a blocking
/// thread), and listings must not show it.
#[test]
fn fifos_in_a_bucket_are_not_found_at_once() {
    let tree = small_tree();
    common::make_fifo(&tree.path().join("bkt/pipe"));
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let started = Instant::now();
    let response = served.send(
        Request::new("GET", "/file/bkt/pipe")
            .header("Authorization", token.clone())
            .timeout(Duration::from_secs(5)),
    );
    assert!(!response.timed_out, "GET of a FIFO hung");
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["code"], "not_found");
    assert!(started.elapsed() < Duration::from_secs(5));

    let bucket_id = served.bucket_id(&token, "bkt");
    for operation in ["b2_list_file_names", "b2_list_file_versions"] {
        let target = format!("/b2api/v3/{operation}");
        let listing = served.send(
            Request::new("POST", &target)
                .header("Authorization", token.clone())
                .json(json!({"bucketId": bucket_id}))
                .timeout(Duration::from_secs(5)),
        );
        assert!(!listing.timed_out, "{operation} hung on a FIFO");
        assert_eq!(listing.status, 200, "{operation}");
        let files = listing.json()["files"].as_array().unwrap().clone();
        assert!(
            files.iter().all(|file| file["fileName"] != "pipe"),
            "{operation} lists the FIFO"
        );
        assert!(files.iter().any(|file| file["fileName"] == "a.txt"));
    }
    // The server still answers other requests.
    assert_eq!(
        download(&served, &token, "a.txt", None).body,
        b"hello world"
    );
}

/// A name replaced (by rename) while it is downloaded: every response must
/// describe one version, so `x-bz-content-sha1` is the SHA1 of the body sent.
/// The digest used to come from a second open by name, which could find the
/// newer file.
#[test]
fn published_sha1_is_the_sha1_of_the_bytes_sent_while_the_name_is_replaced() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tree = tempfile::tempdir().unwrap();
    write_file(tree.path(), "bkt/obj", &content("v0", 4096));
    // --no-index: no background hashing, so each new version is hashed by
    // the download that first sees it, while the writer keeps renaming.
    let served = serve(tree.path(), true, &["--no-index"]);
    let (token, _) = served.authorize();
    let stop = AtomicBool::new(false);
    let root = tree.path();
    let (downloads, mismatches) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut version = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Outside the bucket (a plain file in DIR is not a bucket), then renamed in.
                let staged = root.join(format!("staged-{}", version % 2));
                // Each version a different size, so that versions written within one
                // tick of the file timestamps still differ in the SHA1 cache's key.
                let size_bytes = 4096 + (version % 4096) as usize;
                std::fs::write(&staged, content(&format!("v{version}"), size_bytes)).unwrap();
                std::fs::rename(&staged, root.join("bkt/obj")).unwrap();
                version += 1;
            }
        });
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let (mut downloads, mut mismatches) = (0u32, Vec::new());
                    let started = Instant::now();
                    while started.elapsed() < Duration::from_secs(6) {
                        let response = download(&served, &token, "obj", None);
                        assert_eq!(response.status, 200);
                        downloads += 1;
                        let published = response.header("x-bz-content-sha1").unwrap();
                        if published != sha1_hex(&response.body) {
                            mismatches.push(published.to_string());
                        }
                    }
                    (downloads, mismatches)
                })
            })
            .collect();
        // Stop the writer before a reader's panic is passed on, or the scope never ends.
        let results: Vec<_> = readers.into_iter().map(|reader| reader.join()).collect();
        stop.store(true, Ordering::Relaxed);
        results.into_iter().map(|result| result.unwrap()).fold(
            (0, Vec::new()),
            |(total, mut all), (count, bad)| {
                all.extend(bad);
                (total + count, all)
            },
        )
    });
    assert!(downloads > 100, "only {downloads} downloads");
    assert!(
        mismatches.is_empty(),
        "{} of {downloads} downloads published another version's SHA1",
        mismatches.len()
    );
}

/// Content rewritten with the same size and its mtime put back (`cp -p`,
/// `rsync -t`, `touch -d`, a fixture generator's `os.utime`) is a new
/// version to its SHA1: the new digest, not the cached one of the old
/// content.
#[test]
fn a_same_size_rewrite_with_its_mtime_put_back_is_a_new_version() {
    let tree = tempfile::tempdir().unwrap();
    let path = tree.path().join("bkt/obj.bin");
    let pinned = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let write_pinned = |bytes: &[u8]| {
        write_file(tree.path(), "bkt/obj.bin", bytes);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(pinned)
            .unwrap();
    };
    write_pinned(b"AAAAAAAAAAAAAAAA");
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let first = download(&served, &token, "obj.bin", None);
    assert_eq!(
        first.header("x-bz-content-sha1"),
        Some(sha1_hex(b"AAAAAAAAAAAAAAAA").as_str())
    );
    let first_id = first.header("x-bz-file-id").unwrap().to_string();

    write_pinned(b"BBBBBBBBBBBBBBBB");
    let second = download(&served, &token, "obj.bin", None);
    assert_eq!(second.body, b"BBBBBBBBBBBBBBBB");
    assert_eq!(
        second.header("x-bz-content-sha1"),
        Some(sha1_hex(b"BBBBBBBBBBBBBBBB").as_str()),
        "the digest of the bytes now in the file"
    );
    // The fileId is made of size and mtime only, so that fixtures with a
    // fixed mtime roll the same fault dice on every run (`file_id_for`).
    assert_eq!(second.header("x-bz-file-id"), Some(first_id.as_str()));
    let bucket_id = served.bucket_id(&token, "bkt");
    let listing = served.post("b2_list_file_names", &token, json!({"bucketId": bucket_id}));
    assert_eq!(
        listing.json()["files"][0]["contentSha1"],
        sha1_hex(b"BBBBBBBBBBBBBBBB")
    );
    let info = served.post("b2_get_file_info", &token, json!({"fileId": first_id}));
    assert_eq!(info.json()["contentSha1"], sha1_hex(b"BBBBBBBBBBBBBBBB"));
}

/// Sends `head` (an API call announcing a body it never sends) on a plain
/// connection; returns what arrived before the server closed it (or 60 s passed).
fn send_head_without_body(served: &Served, head: &str) -> (Vec<u8>, Duration) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&served.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    (received, started.elapsed())
}

/// A client that sends an API call's head and not its body: without
/// credentials it is refused at once (the body is not waited for); with them,
/// it gets 408 and the connection is closed after the head timeout, instead
/// of holding the connection (and a descriptor) forever.
#[test]
fn an_api_body_that_never_arrives_times_out() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let (refused, elapsed) = send_head_without_body(
        &served,
        "POST /b2api/v3/b2_list_buckets HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
    );
    let refused = String::from_utf8_lossy(&refused).to_string();
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    let (answer, elapsed) = send_head_without_body(
        &served,
        &format!(
            "POST /b2api/v3/b2_list_buckets HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nContent-Length: 100\r\n\r\n"
        ),
    );
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        (Duration::from_secs(25)..Duration::from_secs(45)).contains(&elapsed),
        "closed after {elapsed:?}"
    );
}

/// A client that asks for a large object and never reads: the server closes
/// the connection once its writes have waited `WRITE_STALL_TIMEOUT_S` (30 s),
/// instead of holding the connection and ~2 MiB of body buffers forever.
#[test]
fn a_client_that_never_reads_is_disconnected() {
    use std::io::{Read, Write};
    let tree = tempfile::tempdir().unwrap();
    let object_bytes = 256u64 << 20;
    std::fs::create_dir_all(tree.path().join("bkt")).unwrap();
    // Sparse: far more than the kernel's socket buffers hold, at no disk cost.
    std::fs::File::create(tree.path().join("bkt/big.bin"))
        .unwrap()
        .set_len(object_bytes)
        .unwrap();
    let served = serve(tree.path(), true, &["--no-index"]);
    let (token, _) = served.authorize();
    let mut stream = std::net::TcpStream::connect(&served.address).unwrap();
    stream
        .write_all(
            format!("GET /file/bkt/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(40));
    // Now drain: a closed connection ends after what the kernels had buffered.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received_bytes = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    let ended = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break "closed",
            Ok(count) => received_bytes += count as u64,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(error) => {
                break if error.kind() == std::io::ErrorKind::WouldBlock {
                    "still open"
                } else {
                    "failed"
                };
            }
        }
        if received_bytes > object_bytes {
            break "whole body";
        }
    };
    assert!(
        matches!(ended, "closed" | "reset") && received_bytes < object_bytes,
        "{ended} after {received_bytes} of {object_bytes} body bytes"
    );
}

/// With a fault flag on, the attempt counters of distinct requests are kept
/// (up to `FAULT_ATTEMPT_KEYS_MAX`): each must cost a fixed few bytes, not a
/// copy of the request, whose API body can be up to 1 MiB.
#[test]
fn fault_attempt_counters_do_not_keep_request_bodies() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &["--fail-rate", "0.001"]);
    let (token, account) = served.authorize();
    let pid = served.child.id();
    let call = |index: usize| {
        served.post(
            "b2_list_buckets",
            &token,
            json!({"accountId": account, "pad": format!("{index:06}{}", "x".repeat(900_000))}),
        )
    };
    call(0);
    let before_kib = peak_rss_kib(pid).unwrap();
    for index in 1..=100 {
        call(index);
    }
    let after_kib = peak_rss_kib(pid).unwrap();
    // 100 distinct ~900 KB bodies: kept, they would add ~90 MiB.
    assert!(
        after_kib < before_kib + 40 * 1024,
        "peak RSS grew from {before_kib} KiB to {after_kib} KiB"
    );
}

/// `b2_download_file_by_id` is a download: GET and HEAD only, 405 for any
/// other method (it used to answer DELETE, PUT, PATCH and OPTIONS with the
/// file, and POST with 404).
#[test]
fn download_by_id_takes_only_get_and_head() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let file_id = download(&served, &token, "a.txt", None)
        .header("x-bz-file-id")
        .unwrap()
        .to_string();
    let target = format!("/b2api/v3/b2_download_file_by_id?fileId={file_id}");
    for method in ["GET", "HEAD"] {
        let response =
            served.send(Request::new(method, &target).header("Authorization", token.clone()));
        assert_eq!(response.status, 200, "{method}");
        assert_eq!(response.content_length(), Some(11), "{method}");
    }
    for method in ["DELETE", "PUT", "PATCH", "OPTIONS", "POST"] {
        let response = served.send(
            Request::new(method, &target)
                .header("Authorization", token.clone())
                .json(json!({"fileId": file_id})),
        );
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.json()["code"], "method_not_allowed", "{method}");
        assert!(!response.body.starts_with(b"hello world"), "{method}");
    }
}

/// A `b2_get_download_authorization` token downloads names under its prefix
/// in its bucket, for its duration, and nothing else (it used to be a full
/// account token: other names, other buckets, API calls, forever).
#[test]
fn download_authorization_is_limited_to_its_bucket_prefix_and_duration() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let bucket_id = served.bucket_id(&token, "bkt");
    let authorize =
        |body: serde_json::Value| served.post("b2_get_download_authorization", &token, body);
    let granted = authorize(
        json!({"bucketId": bucket_id, "fileNamePrefix": "dir/", "validDurationInSeconds": 60}),
    );
    assert_eq!(granted.status, 200);
    let limited = granted.json()["authorizationToken"]
        .as_str()
        .unwrap()
        .to_string();
    let fetch = |target: &str| served.get(target, &limited);
    let inside = fetch("/file/bkt/dir/sub/e.bin");
    assert_eq!(inside.status, 200);
    assert_eq!(inside.body, content("e", 10));
    let by_id = inside.header("x-bz-file-id").unwrap().to_string();
    assert_eq!(
        fetch(&format!("/b2api/v3/b2_download_file_by_id?fileId={by_id}")).status,
        200
    );
    for outside in ["/file/bkt/a.txt", "/file/other/x", "/file/bkt/dir"] {
        let response = fetch(outside);
        assert_eq!(response.status, 401, "{outside}");
        assert_eq!(response.json()["code"], "unauthorized", "{outside}");
    }
    let api_call = served.post(
        "b2_list_file_names",
        &limited,
        json!({"bucketId": bucket_id}),
    );
    assert_eq!(api_call.status, 401, "not an account token");

    for duration in [json!(null), json!(0), json!(-5), json!(604_801)] {
        let refused = authorize(
            json!({"bucketId": bucket_id, "fileNamePrefix": "dir/", "validDurationInSeconds": duration}),
        );
        assert_eq!(refused.status, 400, "validDurationInSeconds {duration}");
    }
    let short = authorize(
        json!({"bucketId": bucket_id, "fileNamePrefix": "", "validDurationInSeconds": 1}),
    );
    let short = short.json()["authorizationToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(served.get("/file/bkt/a.txt", &short).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    let expired = served.get("/file/bkt/a.txt", &short);
    assert_eq!(expired.status, 401);
    assert_eq!(expired.json()["code"], "expired_auth_token");
}

/// B2 lists an upload as soon as it is acknowledged: a listing sent once a
/// file is written (or removed) in a bucket directory shows it, also for
/// writes that follow each other within one tick of the kernel's timestamp
/// clock (the listing cache used to be trusted for a second unchecked).
#[test]
fn a_listing_sent_after_a_write_shows_it() {
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let bucket_id = served.bucket_id(&token, "bkt");
    let listed = || -> Vec<String> {
        let response = served.post(
            "b2_list_file_names",
            &token,
            json!({"bucketId": bucket_id, "prefix": "new/", "maxFileCount": 1000}),
        );
        assert_eq!(response.status, 200);
        response.json()["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|file| file["fileName"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(listed().is_empty(), "the bucket's names are now cached");
    write_file(tree.path(), "bkt/new/first", b"1");
    assert_eq!(listed(), ["new/first"]);
    let mut expected = vec!["new/first".to_string()];
    for round in 0..20 {
        // Into a directory already listed, and into a new one.
        let name = if round % 2 == 0 {
            format!("new/r{round:02}")
        } else {
            format!("new/d{round:02}/f")
        };
        write_file(tree.path(), &format!("bkt/{name}"), b"x");
        let target = format!("/file/bkt/{name}");
        assert_eq!(served.get(&target, &token).status, 200, "{name}");
        expected.push(name);
        expected.sort();
        assert_eq!(listed(), expected, "round {round}");
    }
    std::fs::remove_file(tree.path().join("bkt/new/first")).unwrap();
    expected.retain(|name| name != "new/first");
    assert_eq!(listed(), expected, "a removed file is not listed");
}

/// `--long-body-rate` shortens what a 206 claims, as its help says, and
/// leaves whole-object answers alone (it used to answer a 10-byte object
/// `200` with `Content-Length: 7`); `--short-object-rate` does that to 200s.
#[test]
fn long_body_shortens_ranges_and_short_object_shortens_whole_objects() {
    let tree = small_tree();
    let data = content("b", 3000);
    let name = "dir/b%20c%2Bd.bin";

    let served = serve(tree.path(), true, &["--long-body-rate", "1"]);
    let (token, _) = served.authorize();
    for (target, size) in [("a.txt", 11), ("dir/sub/e.bin", 10), (name, 3000)] {
        let whole = download(&served, &token, target, None);
        assert_eq!(whole.status, 200, "{target}");
        assert!(whole.header("content-range").is_none(), "{target}");
        assert_eq!(whole.content_length(), Some(size), "{target}");
        assert_eq!(whole.body.len(), size, "{target}");
    }
    assert!(download(&served, &token, name, None).body == data);
    let range = download(&served, &token, name, Some("bytes=0-99"));
    assert_eq!(range.status, 206);
    assert!(range.content_length().unwrap() < 100);

    let served = serve(tree.path(), true, &["--short-object-rate", "1"]);
    let (token, _) = served.authorize();
    let whole = download(&served, &token, name, None);
    assert_eq!(whole.status, 200);
    let length = whole.content_length().unwrap();
    assert!(length < 3000, "{length}");
    assert!(whole.body == data[..length]);
    // A HEAD sends no body to shorten: it gives the size as it is.
    let target = format!("/file/bkt/{name}");
    let head = served.send(Request::new("HEAD", &target).header("Authorization", token.clone()));
    assert_eq!((head.status, head.content_length()), (200, Some(3000)));
    let range = download(&served, &token, name, Some("bytes=0-99"));
    assert_eq!(
        (range.status, range.content_length()),
        (206, Some(100)),
        "ranges are --long-body-rate's"
    );
    assert_eq!(range.body, &data[..100]);
}

/// A request head longer than `REQUEST_HEAD_MAX_BYTES` is answered 431 and
/// the connection closed; one of exactly that size is served. (hyper's
/// buffer bound alone let heads of up to ~114 KB through.)
#[test]
fn request_heads_over_the_limit_get_431() {
    use ringdown::server::config::REQUEST_HEAD_MAX_BYTES;
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let head = |length: usize| {
        let bare = format!(
            "GET /file/bkt/a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nConnection: close\r\nX-Pad: \r\n\r\n"
        );
        let head = bare.replace(
            "X-Pad: ",
            &format!("X-Pad: {}", "p".repeat(length - bare.len())),
        );
        assert_eq!(head.len(), length);
        head
    };
    let received = raw_exchange(&served, head(REQUEST_HEAD_MAX_BYTES).as_bytes());
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("hello world"), "{text}");
    for length in [
        REQUEST_HEAD_MAX_BYTES + 1,
        REQUEST_HEAD_MAX_BYTES * 3 / 2,
        REQUEST_HEAD_MAX_BYTES * 2,
    ] {
        let received = raw_exchange(&served, head(length).as_bytes());
        let text = String::from_utf8_lossy(&received);
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
            "a {length}-byte head: {}",
            &text[..text.len().min(200)]
        );
    }
}

/// An error message quotes at most `ECHOED_INPUT_MAX_CHARS` characters of
/// any value the client sent, cut with `…` (a 100 KB fileId used to come
/// back whole in the 400's JSON).
#[test]
fn error_messages_quote_client_input_only_up_to_a_bound() {
    use ringdown::server::config::ECHOED_INPUT_MAX_CHARS;
    let tree = small_tree();
    let served = serve(tree.path(), true, &[]);
    let (token, _) = served.authorize();
    let bucket_id = served.bucket_id(&token, "bkt");
    let assert_bounded = |response: Response, what: &str| {
        let message = response.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.chars().count() <= ECHOED_INPUT_MAX_CHARS + 80 && message.contains('…'),
            "{what}: {} {} chars: {}",
            response.status,
            message.chars().count(),
            message.chars().take(300).collect::<String>()
        );
    };
    // In JSON bodies (up to 1 MiB).
    let huge = "x".repeat(100_000);
    let long_name_id = {
        let real = download(&served, &token, "a.txt", None);
        let id = real.header("x-bz-file-id").unwrap().to_string();
        let (prefix, _) = id.split_once("_n").unwrap();
        use base64::Engine;
        let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&huge);
        format!("{prefix}_n{name}")
    };
    for (operation, body) in [
        ("b2_get_file_info", json!({"fileId": huge})),
        ("b2_get_file_info", json!({"fileId": long_name_id})),
        ("b2_list_file_names", json!({"bucketId": huge})),
        ("b2_list_file_names", json!({"bucketId": [huge]})),
        (
            "b2_list_file_names",
            json!({"bucketId": bucket_id, "prefix": {"p": huge}}),
        ),
    ] {
        assert_bounded(served.post(operation, &token, body), operation);
    }
    // In request heads (up to 64 KiB).
    let long = "y".repeat(60_000);
    for target in [
        format!("/file/bkt/{long}"),
        format!("/file/{}/a.txt", &long[..250]),
        // Longer than a directory name can be: no such bucket, a 404 (it
        // was a 500 "File name too long").
        format!("/file/{}/a.txt", &long[..1000]),
        format!("/b2api/v3/b2_download_file_by_id?fileId={long}"),
        format!("/b2api/v3/{long}"),
        format!("/{long}"),
        format!("/file/bkt/a.txt?bad=%zz{long}"),
    ] {
        let response = served.get(&target, &token);
        assert!(
            response.status < 500,
            "{}: {}",
            &target[..40],
            response.status
        );
        assert_bounded(response, &target[..40]);
    }
    let range = format!("bytes={}99-", "0".repeat(60_000));
    assert_bounded(download(&served, &token, "a.txt", Some(&range)), "Range");
}

/// `ringdown serve DIR --cert-dir CERTS` on port 0 with the demo
/// credentials (`common::serve` gives every server a cert dir of its own).
fn serve_on_cert_dir(dir: &std::path::Path, cert_dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .arg("serve")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--no-index", "--cert-dir"])
        .arg(cert_dir)
        .env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The ready line of a server started by `serve_on_cert_dir`, as `Served`.
fn served_from(mut child: std::process::Child) -> Served {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let line = line.trim_end().to_string();
    let field = |name: &str| {
        line.split(' ')
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
            .to_string()
    };
    Served {
        address: field("realm").split("://").nth(1).unwrap().to_string(),
        realm: field("realm"),
        ca_file: Some(field("ca_file").into()),
        key_id: field("key_id"),
        key: field("key"),
        child,
        line,
        work: tempfile::tempdir().unwrap(),
    }
}

/// Two servers on one `--cert-dir` would each write `ca.pem`, and the first
/// one's clients would then fail to verify it: the second is refused while
/// the first runs, naming the directory. Once the first has exited, a server
/// on the same directory starts as before.
#[test]
fn a_cert_dir_is_used_by_one_running_server_at_a_time() {
    let tree = small_tree();
    let certs = tempfile::tempdir().unwrap();
    let cert_dir = certs.path().join("certs");
    let first = served_from(serve_on_cert_dir(tree.path(), &cert_dir));
    let ca_file = cert_dir.canonicalize().unwrap().join("ca.pem");
    assert_eq!(first.ca_file.as_deref(), Some(ca_file.as_path()));
    let first_ca = std::fs::read(&ca_file).unwrap();

    let mut second = serve_on_cert_dir(tree.path(), &cert_dir);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("a second server runs on the cert dir of a running one");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "no ready line");
    let cert_dir_text = cert_dir.canonicalize().unwrap().display().to_string();
    assert!(stderr.contains(&cert_dir_text), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&ca_file).unwrap(), first_ca, "ca.pem kept");
    first.authorize();

    drop(first);
    let again = served_from(serve_on_cert_dir(tree.path(), &cert_dir));
    assert_eq!(again.ca_file.as_deref(), Some(ca_file.as_path()));
    assert_ne!(std::fs::read(&ca_file).unwrap(), first_ca, "a new CA");
    again.authorize();
}

/// A start that fails after the TLS identity is made leaves no temporary
/// certificate directory behind (it was removed only on a clean exit), and
/// `--write-server-key` writes the private key owner-only.
#[test]
fn a_failed_start_leaves_no_certificate_directory_and_the_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tree = small_tree();
    let tmp = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringdown"))
        .args(["serve"])
        .arg(tree.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            "/nonexistent/dir/log.jsonl",
        ])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("/nonexistent/dir/log.jsonl"), "{text}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let served = common::serve(tree.path(), false, &["--write-server-key"]);
    let certs = served
        .ca_file
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let mode = |name: &str| {
        std::fs::metadata(certs.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("server-key.pem"), 0o600);
    assert_eq!(mode("ca.pem") & 0o600, 0o600);
    drop(served);
}

/// Downloads that workers serve from the kernel's caches (h47: no blocking
/// thread when nothing can block) answer as the blocking path does: a name
/// whose newest version is a hide marker stays hidden by name however warm
/// its file, an older version is still found by ID, and a bucket directory
/// renamed away or replaced while serving is followed at once.
#[test]
fn warm_downloads_keep_hide_markers_versions_and_a_replaced_bucket() {
    let tree = small_tree();
    let root = tree.path();
    write_file(root, ".versions/bkt/a.txt/@1000", b"first upload");
    let served = serve(root, true, &[]);
    let (token, _) = served.authorize();
    let by_id = |file_id: &str| {
        served.get(
            &format!("/b2api/v3/b2_download_file_by_id?fileId={file_id}"),
            &token,
        )
    };
    let listed = served.send(
        Request::new("POST", "/b2api/v3/b2_list_file_versions")
            .header("Authorization", token.clone())
            .json(json!({"bucketId": served.bucket_id(&token, "bkt"), "prefix": "a.txt"})),
    );
    let old_id = listed.json()["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|file| file["uploadTimestamp"] == 1000)
        .expect("the older upload is listed")["fileId"]
        .as_str()
        .unwrap()
        .to_string();
    let current = download(&served, &token, "a.txt", None);
    assert_eq!(current.body, b"hello world");
    let current_id = current.header("x-bz-file-id").unwrap().to_string();
    for _ in 0..3 {
        assert_eq!(by_id(&old_id).body, b"first upload");
        assert_eq!(by_id(&current_id).body, b"hello world");
        assert_eq!(
            download(&served, &token, "a.txt", None).body,
            b"hello world"
        );
    }

    // Hidden after its last upload: gone by name, still there by ID.
    let hide_ms = std::fs::metadata(root.join("bkt/a.txt"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1;
    write_file(root, &format!(".versions/bkt/a.txt/@{hide_ms}.hide"), b"");
    for _ in 0..3 {
        let hidden = download(&served, &token, "a.txt", None);
        assert_eq!(hidden.status, 404, "a hidden name is served by name");
        assert_eq!(hidden.json()["code"], "not_found");
        assert_eq!(by_id(&current_id).body, b"hello world");
    }

    // The bucket renamed away, then another directory in its place.
    std::fs::rename(root.join("bkt"), root.join("moved")).unwrap();
    let gone = download(&served, &token, "dir/sub/e.bin", None);
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["code"], "not_found");
    assert_eq!(by_id(&current_id).status, 404);
    write_file(root, "bkt/dir/sub/e.bin", b"replaced");
    for _ in 0..3 {
        assert_eq!(
            download(&served, &token, "dir/sub/e.bin", None).body,
            b"replaced"
        );
        assert_eq!(by_id(&current_id).status, 404);
    }
}

//! The B2 JSON calls: authorize (shaped per API version), list buckets, list
//! file names/versions with pagination and delimiter folding, file info and
//! download authorization. Handlers here are blocking (they stat and may hash
//! files); the router runs them on blocking threads.

use std::fs::File;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Server;
use super::config::{
    ABSOLUTE_MINIMUM_PART_SIZE_BYTES, DOWNLOAD_AUTHORIZATION_VALID_MAX_S, LIST_PAGE_DEFAULT,
    LIST_PAGE_MAX, LISTING_HASH_CONCURRENCY_MAX, RECOMMENDED_PART_SIZE_BYTES,
};
use super::encoding::{echoed, hex};
use super::history::{Version, VersionKind};
use super::http::ApiError;
use super::store::{self, Bucket, ObjectMeta, OpenError, parse_file_id};

/// Request parameters from a query string or a JSON object; `null` = absent.
pub struct Params(Map<String, Value>);

impl Params {
    pub fn from_query(pairs: Vec<(String, String)>) -> Params {
        Params(
            pairs
                .into_iter()
                .map(|(key, value)| (key, Value::String(value)))
                .collect(),
        )
    }

    pub fn from_json(body: &[u8]) -> Result<Params, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params(Map::new()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Null) => Ok(Params(Map::new())),
            Ok(Value::Object(map)) => Ok(Params(
                map.into_iter()
                    .filter(|(_, value)| !value.is_null())
                    .collect(),
            )),
            Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
            Err(error) => Err(ApiError::bad_request(format!(
                "request body is not JSON: {error}"
            ))),
        }
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key} must be a string, not {}",
                echoed(&other.to_string())
            ))),
        }
    }

    pub fn required_string(&self, key: &str) -> Result<String, ApiError> {
        self.string(key)?
            .ok_or_else(|| ApiError::bad_request(format!("required field {key} is missing")))
    }

    pub fn count(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Number(number)) => number.as_u64().map(Some).ok_or_else(|| {
                ApiError::bad_request(format!("{key} must be a non-negative integer"))
            }),
            Some(Value::String(text)) => text.trim().parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("{key} must be a non-negative integer"))
            }),
            Some(_) => Err(ApiError::bad_request(format!(
                "{key} must be a non-negative integer"
            ))),
        }
    }

    /// A list of strings, given as a JSON array or (GET) a comma-separated or JSON-array string.
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ApiError> {
        let bad = || ApiError::bad_request(format!("{key} must be a list of strings"));
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(Value::String(text)) => {
                if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) {
                    return Ok(Some(
                        items
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect(),
                    ));
                }
                Ok(Some(
                    text.split(',')
                        .map(|item| item.trim().to_string())
                        .collect(),
                ))
            }
            Some(_) => Err(bad()),
        }
    }
}

/// The key may read `name` in `bucket` (downloads, file info): checked
/// before the object is looked up, so a refusal says nothing of what exists.
/// A call outside the key gets 401 `unauthorized`, as on B2.
pub fn check_read(server: &Server, bucket: &str, name: &str) -> Result<(), ApiError> {
    server
        .key
        .allows("readFiles", Some(bucket), Some(name))
        .map_err(ApiError::unauthorized)
}

/// The answer for a key with the server's restriction, in the shape of API
/// `version`. A multi-bucket key fails on v1–v3, as on B2.
pub fn authorize_account(server: &Server, version: u8) -> Result<Value, ApiError> {
    let token = server.tokens.issue();
    let key = &server.key;
    let capabilities = &key.capabilities;
    let name_prefix = &key.name_prefix;
    if key.buckets.len() > 1 && version < 4 {
        return Err(ApiError::unauthorized(
            "this application key is restricted to several buckets, which only b2api/v4 describes",
        ));
    }
    // A key for a bucket that is gone has its ID and no name, as on B2.
    let allowed: Vec<(String, Option<&str>)> = key
        .buckets
        .iter()
        .map(|name| {
            let exists = server
                .store
                .bucket_by_name(name)
                .is_ok_and(|bucket| bucket.is_some());
            (store::bucket_id_for(name), exists.then_some(name.as_str()))
        })
        .collect();
    let bucket_id = allowed.first().map(|(id, _)| id);
    let bucket_name = allowed.first().and_then(|(_, name)| *name);
    let realm = &server.realm;
    let download_url = &server.download_url;
    let account_id = &server.credentials.account_id;
    Ok(match version {
        1 | 2 => json!({
            "accountId": account_id,
            "authorizationToken": token,
            "apiUrl": realm,
            "downloadUrl": download_url,
            "s3ApiUrl": realm,
            "recommendedPartSize": RECOMMENDED_PART_SIZE_BYTES,
            "absoluteMinimumPartSize": ABSOLUTE_MINIMUM_PART_SIZE_BYTES,
            "minimumPartSize": RECOMMENDED_PART_SIZE_BYTES,
            "allowed": {"bucketId": bucket_id, "bucketName": bucket_name, "capabilities": capabilities, "namePrefix": name_prefix},
        }),
        3 => json!({
            "accountId": account_id,
            "authorizationToken": token,
            "apiInfo": {"storageApi": {
                "infoType": "storageApi",
                "apiUrl": realm,
                "downloadUrl": download_url,
                "s3ApiUrl": realm,
                "recommendedPartSize": RECOMMENDED_PART_SIZE_BYTES,
                "absoluteMinimumPartSize": ABSOLUTE_MINIMUM_PART_SIZE_BYTES,
                "bucketId": bucket_id,
                "bucketName": bucket_name,
                "capabilities": capabilities,
                "namePrefix": name_prefix,
            }},
        }),
        // v4 drops v3's `bucketId`, `bucketName` and `infoType`.
        _ => json!({
            "accountId": account_id,
            "authorizationToken": token,
            "apiInfo": {"storageApi": {
                "apiUrl": realm,
                "downloadUrl": download_url,
                "s3ApiUrl": realm,
                "recommendedPartSize": RECOMMENDED_PART_SIZE_BYTES,
                "absoluteMinimumPartSize": ABSOLUTE_MINIMUM_PART_SIZE_BYTES,
                "allowed": {
                    "buckets": (!allowed.is_empty()).then(|| {
                        allowed
                            .iter()
                            .map(|(id, name)| json!({"id": id, "name": name}))
                            .collect::<Vec<_>>()
                    }),
                    "capabilities": capabilities,
                    "namePrefix": name_prefix,
                },
            }},
        }),
    })
}

fn io_error(context: &str, error: std::io::Error) -> ApiError {
    ApiError::internal(format!("{context}: {error}"))
}

fn bucket_json(server: &Server, bucket: &Bucket) -> Value {
    json!({
        "accountId": server.credentials.account_id,
        "bucketId": bucket.id,
        "bucketName": bucket.name,
        "bucketType": "allPrivate",
        "bucketInfo": {},
        "corsRules": [],
        "lifecycleRules": [],
        "revision": 1,
        "options": [],
        "defaultServerSideEncryption": {"isClientAuthorizedToRead": true, "value": {"mode": "none"}},
        "fileLockConfiguration": {"isClientAuthorizedToRead": true, "value": {
            "defaultRetention": {"mode": null, "period": null}, "isFileLockEnabled": false}},
        "replicationConfiguration": {"isClientAuthorizedToRead": true, "value": null},
    })
}

fn check_account(server: &Server, params: &Params) -> Result<(), ApiError> {
    match params.string("accountId")? {
        Some(account_id) if account_id != server.credentials.account_id => {
            Err(ApiError::unauthorized(
                "accountId does not match the account of the authorization token",
            ))
        }
        _ => Ok(()),
    }
}

pub fn list_buckets(server: &Server, params: &Params) -> Result<Value, ApiError> {
    check_account(server, params)?;
    let bucket_name = params.string("bucketName")?;
    let bucket_id = params.string("bucketId")?;
    let named = match (&bucket_name, &bucket_id) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(id)) => server
            .store
            .bucket_by_id(id)
            .map_err(|error| io_error("listing buckets", error))?
            .map(|bucket| bucket.name.clone()),
        (None, None) => None,
    };
    server
        .key
        .allows("listBuckets", named.as_deref(), None)
        .map_err(ApiError::unauthorized)?;
    let types = params.string_list("bucketTypes")?;
    let type_matches = types
        .as_ref()
        .is_none_or(|types| types.iter().any(|t| t == "all" || t == "allPrivate"));
    let buckets = server
        .store
        .buckets()
        .map_err(|error| io_error("listing buckets", error))?;
    let selected: Vec<Value> = buckets
        .iter()
        .filter(|_| type_matches)
        .filter(|bucket| bucket_name.as_ref().is_none_or(|name| *name == bucket.name))
        .filter(|bucket| bucket_id.as_ref().is_none_or(|id| *id == bucket.id))
        .map(|bucket| bucket_json(server, bucket))
        .collect();
    Ok(json!({ "buckets": selected }))
}

fn content_type_of(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" | "md" => "text/plain",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "json" => "application/json",
        "js" => "text/javascript",
        "xml" => "application/xml",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// Everything the API and download headers say about one object.
pub struct ObjectView {
    pub meta: ObjectMeta,
    pub sha1: [u8; 20],
    pub is_large: bool,
    pub publish: PublishSha1,
}

/// What the server tells clients about each object's SHA1 (`--publish-sha1`):
/// B2 has objects uploaded with `unverified:` digests and with none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishSha1 {
    /// contentSha1 (or large_file_sha1 for large files), as B2 does.
    Real,
    /// `unverified:<hex>` (large files: large_file_sha1 as usual).
    Unverified,
    /// contentSha1 "none" and no large_file_sha1: nothing to verify against.
    None,
    /// Broken metadata: a digest one hex digit short (contentSha1, or
    /// large_file_sha1 for large files).
    Malformed,
}

impl ObjectView {
    pub fn content_sha1(&self) -> String {
        match self.publish {
            _ if self.is_large => "none".to_string(),
            PublishSha1::Real => hex(&self.sha1),
            PublishSha1::Unverified => format!("unverified:{}", hex(&self.sha1)),
            PublishSha1::None => "none".to_string(),
            PublishSha1::Malformed => hex(&self.sha1)[1..].to_string(),
        }
    }

    pub fn content_type(&self) -> &'static str {
        content_type_of(&self.meta.name)
    }

    /// fileInfo: `src_last_modified_millis` always; `large_file_sha1` for
    /// large objects; `sse_c_key_id` for SSE-C objects whose key has an ID.
    pub fn file_info(&self, server: &Server) -> Vec<(&'static str, String)> {
        let mut info = vec![("src_last_modified_millis", self.meta.mtime_ms.to_string())];
        match self.publish {
            _ if !self.is_large => {}
            PublishSha1::None => {}
            PublishSha1::Malformed => {
                info.push(("large_file_sha1", hex(&self.sha1)[1..].to_string()))
            }
            PublishSha1::Real | PublishSha1::Unverified => {
                info.push(("large_file_sha1", hex(&self.sha1)));
            }
        }
        if let Some(key_id) = server
            .sse_c(&self.meta.name)
            .and_then(|sse_c| sse_c.key_id.as_ref())
        {
            info.push(("sse_c_key_id", key_id.clone()));
        }
        info
    }

    /// The object as B2 describes it in listings and `b2_get_file_info`.
    pub fn to_json<'a>(&'a self, server: &'a Server) -> FileJson<'a> {
        FileJson {
            action: "upload",
            content_length: self.meta.size_bytes,
            size: self.meta.size_bytes,
            content_sha1: self.content_sha1(),
            content_type: self.content_type(),
            file_info: FileInfo(self.file_info(server)),
            upload_timestamp: self.meta.mtime_ms,
            server_side_encryption: match server.sse_c_key(&self.meta.name) {
                Some(_) => Encryption {
                    mode: "SSE-C",
                    algorithm: Some(crate::b2::SSE_C_ALGORITHM),
                },
                None => Encryption::NONE,
            },
            ..FileJson::new(
                server,
                &self.meta.bucket,
                &self.meta.file_id,
                &self.meta.name,
            )
        }
    }
}

/// A hide marker as B2 lists it among a name's versions.
fn hide_json<'a>(server: &'a Server, bucket: &'a Bucket, version: &'a Version) -> FileJson<'a> {
    FileJson {
        action: "hide",
        content_type: "application/x-bz-hide-marker",
        upload_timestamp: version.upload_ms,
        ..FileJson::new(server, bucket, &version.file_id, &version.name)
    }
}

/// One uploaded file in B2's JSON. Typed, not a `Value`: a listing page holds
/// up to 10,000 of them, and building maps of maps for each cost more than
/// the rest of the listing.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileJson<'a> {
    account_id: &'a str,
    bucket_id: &'a str,
    file_id: &'a str,
    file_name: &'a str,
    action: &'static str,
    content_length: u64,
    size: u64,
    content_sha1: String,
    content_md5: Option<&'static str>,
    content_type: &'static str,
    file_info: FileInfo,
    upload_timestamp: u64,
    server_side_encryption: Encryption,
    file_retention: Readable<Retention>,
    legal_hold: Readable<Option<&'static str>>,
    replication_status: Option<&'static str>,
}

impl<'a> FileJson<'a> {
    /// The fields every entry shares; the rest as for an empty upload.
    fn new(
        server: &'a Server,
        bucket: &'a Bucket,
        file_id: &'a str,
        file_name: &'a str,
    ) -> FileJson<'a> {
        FileJson {
            account_id: &server.credentials.account_id,
            bucket_id: &bucket.id,
            file_id,
            file_name,
            action: "upload",
            content_length: 0,
            size: 0,
            content_sha1: "none".to_string(),
            content_md5: None,
            content_type: "application/octet-stream",
            file_info: FileInfo(Vec::new()),
            upload_timestamp: 0,
            server_side_encryption: Encryption::NONE,
            file_retention: Readable {
                is_client_authorized_to_read: true,
                value: Retention {
                    mode: None,
                    retain_until_timestamp: None,
                },
            },
            legal_hold: Readable {
                is_client_authorized_to_read: true,
                value: None,
            },
            replication_status: None,
        }
    }
}

/// `fileInfo`: a JSON object of string values.
struct FileInfo(Vec<(&'static str, String)>);

impl Serialize for FileInfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

#[derive(Serialize)]
struct Encryption {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    algorithm: Option<&'static str>,
}

impl Encryption {
    const NONE: Encryption = Encryption {
        mode: "none",
        algorithm: None,
    };
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Readable<T> {
    is_client_authorized_to_read: bool,
    value: T,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Retention {
    mode: Option<&'static str>,
    retain_until_timestamp: Option<u64>,
}

/// An entry of a listing's `files`.
#[derive(Serialize)]
#[allow(clippy::large_enum_variant)] // nearly all are files: boxing them costs an allocation each
#[serde(untagged)]
enum ListedJson<'a> {
    File(FileJson<'a>),
    Folder(Value),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListJson<'a> {
    files: Vec<ListedJson<'a>>,
    next_file_name: Option<&'a str>,
    /// `b2_list_file_versions` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_file_id: Option<Option<&'a str>>,
}

/// A response body: `value` serialized.
pub fn to_body(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("response serialises")
}

/// Adds the SHA1 to the metadata of an open `file` (`meta` from its
/// `fstat`), hashing that descriptor if the cache does not know the digest:
/// the published SHA1 is always that of the bytes this file holds. Blocking.
pub fn view_of(server: &Server, meta: ObjectMeta, file: &File) -> std::io::Result<ObjectView> {
    let (sha1, _) =
        server
            .store
            .sha1_cache
            .digest_of(&sha1_cache_key(&meta), &meta.version, file)?;
    Ok(view_with(server, meta, sha1))
}

/// `view_of` when the SHA1 cache holds the digest of this version: no
/// hashing, so no read of the file.
pub fn view_if_cached(server: &Server, meta: ObjectMeta) -> Option<ObjectView> {
    let sha1 = server
        .store
        .sha1_cache
        .lookup(&sha1_cache_key(&meta), &meta.version)?;
    Some(view_with(server, meta, sha1))
}

/// The view of an object whose `meta` came from a stat by name (listings):
/// from the cache for that version, else the file is opened and what was
/// opened is described, which may be a newer version than the stat saw.
/// Blocking.
pub fn view_of_listed(server: &Server, meta: ObjectMeta) -> std::io::Result<ObjectView> {
    if let Some(sha1) = server
        .store
        .sha1_cache
        .lookup(&sha1_cache_key(&meta), &meta.version)
    {
        return Ok(view_with(server, meta, sha1));
    }
    let (file, opened) = server.store.reopen(&meta).map_err(|error| match error {
        OpenError::Io(error) => error,
        _ => std::io::Error::new(std::io::ErrorKind::NotFound, "file vanished"),
    })?;
    view_of(server, opened, &file)
}

fn view_with(server: &Server, meta: ObjectMeta, sha1: [u8; 20]) -> ObjectView {
    let is_large = meta.size_bytes >= server.large_file_threshold_bytes;
    let mut sha1 = sha1;
    if server.faults.wrong_sha1(&meta.name) {
        // `--wrong-sha1 NAME`: every place that publishes the digest agrees on a wrong one.
        sha1[0] ^= 0xff;
    }
    ObjectView {
        meta,
        sha1,
        is_large,
        publish: server.publish_sha1,
    }
}

/// Where the SHA1 cache keeps an object's digest: its path beneath DIR.
fn sha1_cache_key(meta: &ObjectMeta) -> String {
    match &meta.history_path {
        Some(path) => path.clone(),
        None => format!("{}/{}", meta.bucket.name, meta.name),
    }
}

/// Hashes the objects of one page that the cache lacks, a few at a time, and
/// returns their views in order, `None` for an object that vanished meanwhile.
fn views_of(server: &Server, metas: Vec<ObjectMeta>) -> Vec<Option<ObjectView>> {
    let missing = metas
        .iter()
        .filter(|meta| {
            server
                .store
                .sha1_cache
                .lookup(&sha1_cache_key(meta), &meta.version)
                .is_none()
        })
        .count();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(LISTING_HASH_CONCURRENCY_MAX)
        .min(missing.max(1));
    if missing > 1 && threads > 1 {
        // Warm the cache in parallel; the sequential pass below then only looks up.
        std::thread::scope(|scope| {
            for thread_index in 0..threads {
                let metas = &metas;
                scope.spawn(move || {
                    for meta in metas.iter().skip(thread_index).step_by(threads) {
                        let _ = view_of_listed(server, meta.clone());
                    }
                });
            }
        });
    }
    metas
        .into_iter()
        .map(|meta| view_of_listed(server, meta).ok())
        .collect()
}

/// The entry after a page: its name and, for a file, its ID.
type NextEntry = Option<(String, Option<String>)>;

enum ListEntry<'h> {
    File(ObjectMeta),
    Folder(String),
    /// `b2_list_file_versions` of a bucket with history.
    Hide(&'h Version),
}

/// One page of names: (entries, next entry's name and, for files, its ID).
fn list_page(
    server: &Server,
    bucket: &Arc<Bucket>,
    start: &str,
    prefix: &str,
    delimiter: Option<&str>,
    max_count: usize,
) -> Result<(Vec<ListEntry<'static>>, NextEntry), ApiError> {
    let names = server
        .store
        .names(bucket)
        .map_err(|error| io_error("listing the bucket", error))?;
    // Opened for the first name that needs a stat, then once per page.
    let mut bucket_fd = None;
    let first = if start > prefix { start } else { prefix };
    let mut index = names.partition_point(|name| name.as_str() < first);
    let mut entries = Vec::new();
    let mut next = None;
    while index < names.len() {
        let name = &names[index];
        if !name.starts_with(prefix) {
            break;
        }
        let rest = &name[prefix.len()..];
        let folder = delimiter
            .filter(|delimiter| !delimiter.is_empty())
            .and_then(|delimiter| {
                rest.find(delimiter)
                    .map(|at| format!("{prefix}{}", &rest[..at + delimiter.len()]))
            });
        if let Some(folder) = folder {
            if entries.len() == max_count {
                next = Some((folder, None));
                break;
            }
            index = names.partition_point(|name| {
                name.as_str() < folder.as_str() || name.starts_with(folder.as_str())
            });
            entries.push(ListEntry::Folder(folder));
            continue;
        }
        index += 1;
        if bucket_fd.is_none() {
            match server.store.open_bucket(bucket) {
                Ok(fd) => bucket_fd = Some(fd),
                // The bucket's directory went away since the walk: its files are not listed.
                Err(OpenError::NotFound | OpenError::InvalidName) => continue,
                Err(OpenError::Io(error)) => return Err(io_error("opening the bucket", error)),
            }
        }
        let bucket_fd = bucket_fd.as_ref().expect("opened above");
        let meta = match server.store.stat_in(bucket_fd, bucket, name) {
            Ok(meta) => meta,
            // Deleted or replaced by a non-file since the walk: not listed.
            Err(OpenError::NotFound | OpenError::InvalidName) => continue,
            Err(OpenError::Io(error)) => return Err(io_error(&format!("stat {name}"), error)),
        };
        if entries.len() == max_count {
            next = Some((name.clone(), Some(meta.file_id.clone())));
            break;
        }
        entries.push(ListEntry::File(meta));
    }
    Ok((entries, next))
}

fn bucket_for_listing(server: &Server, params: &Params) -> Result<Arc<Bucket>, ApiError> {
    let bucket_id = params.required_string("bucketId")?;
    server
        .store
        .bucket_by_id(&bucket_id)
        .map_err(|error| io_error("listing buckets", error))?
        .ok_or_else(|| {
            ApiError::bad_request_code(
                "invalid_bucket_id",
                format!("invalid bucketId: {}", echoed(&bucket_id)),
            )
        })
}

pub fn list_files(server: &Server, params: &Params, versions: bool) -> Result<Vec<u8>, ApiError> {
    let bucket = bucket_for_listing(server, params)?;
    let start = params.string("startFileName")?.unwrap_or_default();
    let prefix = params.string("prefix")?.unwrap_or_default();
    server
        .key
        .allows("listFiles", Some(&bucket.name), Some(&prefix))
        .map_err(ApiError::unauthorized)?;
    let delimiter = params.string("delimiter")?;
    let max_count = match params.count("maxFileCount")? {
        None | Some(0) => LIST_PAGE_DEFAULT,
        Some(count) => (count as usize).min(LIST_PAGE_MAX),
    };
    let history = server
        .store
        .history(&bucket)
        .map_err(|error| io_error("reading the version history", error))?;
    if let (Some(history), true) = (&history, versions) {
        if delimiter
            .as_deref()
            .is_some_and(|delimiter| !delimiter.is_empty())
        {
            return Err(ApiError::bad_request(
                "ringdown serve: delimiter is not supported in b2_list_file_versions of a bucket with version history (DIR/.versions)",
            ));
        }
        let start_id = params.string("startFileId")?;
        return list_versions_page(
            server,
            &bucket,
            history,
            (&start, start_id.as_deref()),
            &prefix,
            max_count,
        );
    }
    let (mut entries, next) = list_page(
        server,
        &bucket,
        &start,
        &prefix,
        delimiter.as_deref(),
        max_count,
    )?;
    if let Some(history) = &history {
        // A name whose newest version is a hide marker is not listed.
        entries.retain(|entry| match entry {
            ListEntry::File(meta) => newest_hide_ms(history, &meta.name)
                .is_none_or(|hidden_ms| hidden_ms < meta.mtime_ms),
            _ => true,
        });
    }
    Ok(page_body(server, &bucket, &entries, &next, versions))
}

/// The JSON of one listing page: uploads (hashed a few at a time; one that
/// vanished meanwhile is dropped), folders and hide markers in order, and
/// where the next page starts (`nextFileId` for versions listings).
fn page_body(
    server: &Server,
    bucket: &Bucket,
    entries: &[ListEntry],
    next: &NextEntry,
    versions: bool,
) -> Vec<u8> {
    let metas = entries
        .iter()
        .filter_map(|entry| match entry {
            ListEntry::File(meta) => Some(meta.clone()),
            ListEntry::Folder(_) | ListEntry::Hide(_) => None,
        })
        .collect();
    // One view per file entry, in order (a replaced file's view has the new fileId).
    let views = views_of(server, metas);
    let mut views = views.iter();
    let mut files = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            ListEntry::Folder(name) => {
                files.push(ListedJson::Folder(folder_json(server, bucket, name)))
            }
            ListEntry::Hide(hidden) => {
                files.push(ListedJson::File(hide_json(server, bucket, hidden)))
            }
            ListEntry::File(_) => {
                if let Some(Some(view)) = views.next() {
                    files.push(ListedJson::File(view.to_json(server)));
                }
            }
        }
    }
    to_body(&ListJson {
        files,
        next_file_name: next.as_ref().map(|(name, _)| name.as_str()),
        next_file_id: versions.then(|| next.as_ref().and_then(|(_, id)| id.as_deref())),
    })
}

/// The newest hide marker of `name` in a bucket's history (ms).
fn newest_hide_ms(history: &[Version], name: &str) -> Option<u64> {
    let first = history.partition_point(|version| version.name.as_str() < name);
    history[first..]
        .iter()
        .take_while(|version| version.name == name)
        .find(|version| version.kind == VersionKind::Hide)
        .map(|version| version.upload_ms)
}

/// One version of a name in a versions listing.
enum Listed<'h> {
    Upload(ObjectMeta),
    Hide(&'h Version),
}

impl Listed<'_> {
    fn upload_ms(&self) -> u64 {
        match self {
            Listed::Upload(meta) => meta.mtime_ms,
            Listed::Hide(version) => version.upload_ms,
        }
    }

    fn file_id(&self) -> &str {
        match self {
            Listed::Upload(meta) => &meta.file_id,
            Listed::Hide(version) => &version.file_id,
        }
    }
}

/// A `b2_list_file_versions` page of a bucket with history: every name of
/// the bucket directory or the history, each with its versions newest
/// first, from (`startFileName`, `startFileId`).
fn list_versions_page(
    server: &Server,
    bucket: &Arc<Bucket>,
    history: &[Version],
    (start, start_id): (&str, Option<&str>),
    prefix: &str,
    max_count: usize,
) -> Result<Vec<u8>, ApiError> {
    let names = server
        .store
        .names(bucket)
        .map_err(|error| io_error("listing the bucket", error))?;
    let first = if start > prefix { start } else { prefix };
    let mut current = names.partition_point(|name| name.as_str() < first);
    let mut older = history.partition_point(|version| version.name.as_str() < first);
    let mut entries: Vec<ListEntry> = Vec::new();
    let mut next: NextEntry = None;
    'names: loop {
        let candidates = [
            names.get(current).map(String::as_str),
            history.get(older).map(|version| version.name.as_str()),
        ];
        let Some(name) = candidates
            .into_iter()
            .flatten()
            .filter(|name| name.starts_with(prefix))
            .min()
            .map(str::to_string)
        else {
            break;
        };
        let mut versions = Vec::new();
        if names.get(current) == Some(&name) {
            current += 1;
            match server.store.stat(bucket, &name) {
                Ok(meta) => versions.push(Listed::Upload(meta)),
                Err(OpenError::NotFound | OpenError::InvalidName) => {}
                Err(OpenError::Io(error)) => return Err(io_error(&format!("stat {name}"), error)),
            }
        }
        while let Some(version) = history.get(older).filter(|version| version.name == name) {
            older += 1;
            match version.kind {
                VersionKind::Hide => versions.push(Listed::Hide(version)),
                VersionKind::Upload { .. } => match server.store.version_meta(bucket, version) {
                    Ok(meta) => versions.push(Listed::Upload(meta)),
                    Err(OpenError::NotFound | OpenError::InvalidName) => {}
                    Err(OpenError::Io(error)) => {
                        return Err(io_error(&format!("stat a version of {name}"), error));
                    }
                },
            }
        }
        // Newest first; a hide marker before an upload of the same millisecond.
        versions.sort_by(|a, b| {
            b.upload_ms()
                .cmp(&a.upload_ms())
                .then(matches!(b, Listed::Hide(_)).cmp(&matches!(a, Listed::Hide(_))))
        });
        let skip = match start_id {
            Some(id) if name == start => versions
                .iter()
                .position(|version| version.file_id() == id)
                .unwrap_or(0),
            _ => 0,
        };
        for listed in versions.into_iter().skip(skip) {
            if entries.len() == max_count {
                next = Some((name, Some(listed.file_id().to_string())));
                break 'names;
            }
            entries.push(match listed {
                Listed::Upload(meta) => ListEntry::File(meta),
                Listed::Hide(hidden) => ListEntry::Hide(hidden),
            });
        }
    }
    Ok(page_body(server, bucket, &entries, &next, true))
}

fn folder_json(server: &Server, bucket: &Bucket, name: &str) -> Value {
    json!({
        "accountId": server.credentials.account_id,
        "bucketId": bucket.id,
        "fileId": null,
        "fileName": name,
        "action": "folder",
        "contentLength": 0,
        "size": 0,
        "contentSha1": null,
        "contentMd5": null,
        "contentType": null,
        "fileInfo": {},
        "uploadTimestamp": 0,
    })
}

/// Resolves a file ID to its object, refusing IDs of versions that no longer exist.
pub fn object_by_id(server: &Server, file_id: &str) -> Result<(Arc<Bucket>, String), ApiError> {
    let quoted = echoed(file_id);
    let not_found = || ApiError::not_found(format!("file not present: {quoted}"));
    let (bucket_id, name) = parse_file_id(file_id)
        .ok_or_else(|| ApiError::bad_request(format!("bad fileId: {quoted}")))?;
    let bucket = server
        .store
        .bucket_by_id(&bucket_id)
        .map_err(|error| io_error("listing buckets", error))?
        .ok_or_else(not_found)?;
    Ok((bucket, name))
}

pub fn get_file_info(server: &Server, params: &Params) -> Result<Vec<u8>, ApiError> {
    let file_id = params.required_string("fileId")?;
    let (bucket, name) = object_by_id(server, &file_id)?;
    check_read(server, &bucket.name, &name)?;
    let (quoted_id, quoted_name) = (echoed(&file_id), echoed(&name));
    let not_found = || ApiError::not_found(format!("file not present: {quoted_id}"));
    let (file, meta) = match server.store.open_object(&bucket, &name) {
        Ok((file, meta)) if meta.file_id == file_id => (file, meta),
        Ok(_) | Err(OpenError::NotFound | OpenError::InvalidName) => {
            match server.store.open_version(&bucket, &name, &file_id) {
                Ok(opened) => opened,
                // A hide marker has an ID too, and B2 describes it (b2sdk's
                // simulator does, with action "hide").
                Err(OpenError::NotFound | OpenError::InvalidName) => {
                    return match server.store.hide_marker(&bucket, &name, &file_id) {
                        Some(marker) => Ok(to_body(&hide_json(server, &bucket, &marker))),
                        None => Err(not_found()),
                    };
                }
                Err(OpenError::Io(error)) => {
                    return Err(io_error(&format!("stat {quoted_name}"), error));
                }
            }
        }
        Err(OpenError::Io(error)) => return Err(io_error(&format!("stat {quoted_name}"), error)),
    };
    let view = view_of(server, meta, &file)
        .map_err(|error| io_error(&format!("hashing {quoted_name}"), error))?;
    Ok(to_body(&view.to_json(server)))
}

/// A token for downloads of names starting with `fileNamePrefix` in one
/// bucket, for `validDurationInSeconds` (required, 1 s to a week, as on B2);
/// API calls and other names refuse it.
pub fn get_download_authorization(server: &Server, params: &Params) -> Result<Value, ApiError> {
    let bucket_id = params.required_string("bucketId")?;
    let prefix = params.required_string("fileNamePrefix")?;
    let valid_s = params
        .count("validDurationInSeconds")?
        .ok_or_else(|| ApiError::bad_request("required field validDurationInSeconds is missing"))?;
    if !(1..=DOWNLOAD_AUTHORIZATION_VALID_MAX_S).contains(&valid_s) {
        return Err(ApiError::bad_request(format!(
            "validDurationInSeconds must be from 1 to {DOWNLOAD_AUTHORIZATION_VALID_MAX_S}, not {valid_s}"
        )));
    }
    let bucket = bucket_for_listing(server, params)?;
    server
        .key
        .allows("shareFiles", Some(&bucket.name), Some(&prefix))
        .map_err(ApiError::unauthorized)?;
    Ok(json!({
        "bucketId": bucket_id,
        "fileNamePrefix": prefix,
        "authorizationToken": server.tokens.issue_download(&bucket.id, &prefix, valid_s * 1000),
    }))
}

//! Serde types of the B2 responses a client reads (b2-api.md §1–§6), and the
//! request bodies it sends. Unknown fields are ignored and `null` is treated
//! as absent everywhere, as b2sdk sends and servers answer both.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// What kind of JSON problem, without quoting the input (it may hold a
/// token): a missing field is named (serde's message quotes no value), a
/// mistyped one is not (its message would quote the value).
fn json_error_kind(error: &serde_json::Error) -> String {
    match error.classify() {
        serde_json::error::Category::Io => "I/O error".into(),
        serde_json::error::Category::Syntax => "syntax error".into(),
        serde_json::error::Category::Data => {
            let message = error.to_string();
            match message.strip_prefix("missing field ") {
                Some(rest) => format!(
                    "missing field {}",
                    rest.split(" at line").next().unwrap_or(rest)
                ),
                None => "a field of the wrong type".into(),
            }
        }
        serde_json::error::Category::Eof => "truncated".into(),
    }
}

/// A number where one is expected; anything else (a string, a fraction, a
/// negative or nested value) is no value: a field nothing depends on must
/// not fail the answer.
fn lenient_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<Scalar>::deserialize(deserializer)? {
        Some(Scalar::Number(number)) => Some(number),
        _ => None,
    })
}

/// A JSON value of a field read leniently (as the old `Value::as_str` /
/// `as_u64` did): arrays and objects are skipped without being stored.
pub(crate) enum Scalar {
    Text(String),
    Number(u64),
    Other,
}

impl Scalar {
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Scalar::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(value.to_string()))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Scalar, E> {
                Ok(Scalar::Number(value))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Scalar, E> {
                Ok(u64::try_from(value).map_or(Scalar::Other, Scalar::Number))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// `null` → `T::default()` (serde's `default` only covers a missing field).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `b2_authorize_account` v3 (v4's `storageApi.allowed` is read too).
/// `Debug` redacts the token.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    pub account_id: String,
    pub authorization_token: String,
    pub api_info: ApiInfo,
}

impl fmt::Debug for AuthorizeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeResponse")
            .field("account_id", &self.account_id)
            .field("authorization_token", &"<redacted>")
            .field("api_info", &self.api_info)
            .finish()
    }
}

/// Parses a `b2_authorize_account` body; the error says what is missing
/// (never echoing the body, which holds the token).
pub fn parse_authorize(body: &[u8]) -> Result<AuthorizeResponse, String> {
    let parsed: AuthorizeResponse = serde_json::from_slice(body).map_err(|error| {
        format!(
            "b2_authorize_account answer is not the expected JSON (line {}, column {}): {}",
            error.line(),
            error.column(),
            json_error_kind(&error)
        )
    })?;
    let storage = &parsed.api_info.storage_api;
    if storage.api_url.is_empty() || storage.download_url.is_empty() {
        return Err(
            "b2_authorize_account answer has no apiInfo.storageApi.apiUrl/downloadUrl".to_string(),
        );
    }
    Ok(parsed)
}

/// Parses a B2 error body; `None` when it is not JSON (a proxy's HTML page, or
/// the empty body of a `HEAD`).
/// The code and message are the server's text, bound for a terminal or a
/// log: control characters in them (an escape sequence, a line break that
/// would forge a line of ours) come escaped, as `\u{1b}`.
pub fn parse_error_body(body: &[u8]) -> Option<B2ErrorBody> {
    let mut error: B2ErrorBody = serde_json::from_slice(body).ok()?;
    for text in [&mut error.code, &mut error.message] {
        if let std::borrow::Cow::Owned(escaped) = crate::printable(text, false) {
            *text = escaped;
        }
    }
    Some(error)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiInfo {
    pub storage_api: StorageApi,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StorageApi {
    #[serde(deserialize_with = "null_as_default")]
    pub api_url: String,
    #[serde(deserialize_with = "null_as_default")]
    pub download_url: String,
    /// Read leniently: only a hint.
    #[serde(deserialize_with = "lenient_u64")]
    pub recommended_part_size: Option<u64>,
    /// Read leniently: nothing here depends on it.
    #[serde(deserialize_with = "lenient_u64")]
    pub absolute_minimum_part_size: Option<u64>,
    /// Set when the key is restricted to one bucket (v3).
    pub bucket_id: Option<String>,
    pub bucket_name: Option<String>,
    pub name_prefix: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub capabilities: Vec<String>,
    /// v4 only: the buckets a key may use.
    pub allowed: Option<StorageAllowed>,
}

/// v4 `storageApi.allowed`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StorageAllowed {
    /// `None`: all buckets of the account.
    pub buckets: Option<Vec<AllowedBucket>>,
    #[serde(deserialize_with = "null_as_default")]
    pub capabilities: Vec<String>,
    pub name_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AllowedBucket {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// `b2_list_buckets` request body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListBucketsRequest<'a> {
    pub account_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_id: Option<&'a str>,
    /// `["all"]` lists every type (without it, only allPublic, allPrivate, snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_types: Option<&'a [&'a str]>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ListBucketsResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Bucket {
    pub account_id: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub bucket_id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub bucket_name: String,
    pub bucket_type: Option<String>,
    pub revision: Option<u64>,
}

/// `b2_list_file_names` request body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListFileNamesRequest<'a> {
    pub bucket_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_file_name: Option<&'a str>,
    /// At most 10,000 (billed per 1,000 returned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<&'a str>,
}

/// One page of `b2_list_file_names` (or `_versions`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListFileNamesResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub files: Vec<FileObject>,
    /// Send back as `startFileName`; `None` means this was the last page.
    pub next_file_name: Option<String>,
    pub next_file_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Upload,
    Hide,
    Start,
    Folder,
    #[serde(other)]
    Other,
}

/// A file version as listed or returned by `b2_get_file_info`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileObject {
    pub account_id: Option<String>,
    pub bucket_id: Option<String>,
    /// `None` for `folder` entries.
    pub file_id: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub file_name: String,
    pub action: Option<FileAction>,
    /// v2+.
    pub content_length: Option<u64>,
    /// v1's name for `contentLength`.
    pub size: Option<u64>,
    pub content_sha1: Option<String>,
    pub content_md5: Option<String>,
    pub content_type: Option<String>,
    /// Values are strings in practice; kept as JSON so one odd value cannot
    /// fail a whole listing page.
    #[serde(deserialize_with = "null_as_default")]
    pub file_info: BTreeMap<String, Value>,
    /// Milliseconds since the epoch.
    pub upload_timestamp: Option<u64>,
    /// Absent when the object is not encrypted at rest.
    pub server_side_encryption: Option<ServerSideEncryption>,
}

/// `serverSideEncryption` of a listed object: `{"mode": "SSE-B2" | "SSE-C",
/// "algorithm": "AES256"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ServerSideEncryption {
    pub mode: Option<String>,
    pub algorithm: Option<String>,
}

impl FileObject {
    /// `contentLength`, else v1 `size`.
    pub fn length_bytes(&self) -> Option<u64> {
        self.content_length.or(self.size)
    }

    /// A `fileInfo` value that is a string.
    pub fn info_str(&self, key: &str) -> Option<&str> {
        self.file_info.get(key).and_then(Value::as_str)
    }

    pub fn large_file_sha1(&self) -> Option<&str> {
        self.info_str("large_file_sha1")
    }

    /// `fileInfo.src_last_modified_millis` (a decimal string).
    pub fn src_last_modified_millis(&self) -> Option<i64> {
        self.info_str("src_last_modified_millis")
            .and_then(parse_millis)
    }

    /// The mtime to give the restored file: `src_last_modified_millis`, else
    /// `uploadTimestamp` (CONVENTIONS.md).
    pub fn modified_millis(&self) -> Option<i64> {
        self.src_last_modified_millis().or(self
            .upload_timestamp
            .and_then(|millis| i64::try_from(millis).ok())
            .filter(|millis| crate::config::MTIME_MS_RANGE.contains(millis)))
    }

    /// Encrypted with a customer key (SSE-C): downloads must carry it.
    pub fn is_sse_c(&self) -> bool {
        super::is_sse_c(
            self.server_side_encryption
                .as_ref()
                .and_then(|sse| sse.mode.as_deref()),
        )
    }

    pub fn expected_sha1(&self) -> ExpectedSha1 {
        expected_sha1(self.content_sha1.as_deref(), self.large_file_sha1())
    }
}

/// `{"status":401,"code":"expired_auth_token","message":".."}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct B2ErrorBody {
    pub status: Option<u16>,
    #[serde(deserialize_with = "null_as_default")]
    pub code: String,
    #[serde(deserialize_with = "null_as_default")]
    pub message: String,
}

/// The digest to check a downloaded object against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedSha1 {
    /// Computed by B2 (`contentSha1`), or `large_file_sha1` set by the uploader.
    Verified([u8; 20]),
    /// `unverified:<hex>`: sent by the uploading client, never checked by B2.
    /// We still compare against it (as b2sdk and rclone do).
    Unverified([u8; 20]),
    /// `none` (or no field) without a `large_file_sha1`: nothing to compare.
    None,
    /// A digest is published but is neither 40 hex digits (after an
    /// optional `unverified:`) nor `none`: the metadata is broken, and
    /// bytes checked against nothing must not pass as merely unverified.
    Malformed(String),
}

impl ExpectedSha1 {
    pub fn digest(&self) -> Option<&[u8; 20]> {
        match self {
            ExpectedSha1::Verified(digest) | ExpectedSha1::Unverified(digest) => Some(digest),
            ExpectedSha1::None | ExpectedSha1::Malformed(_) => None,
        }
    }

    /// Why bytes cannot be checked against this, when it is malformed.
    pub fn malformed(&self) -> Option<String> {
        match self {
            ExpectedSha1::Malformed(text) => Some(format!(
                "the published SHA1 {text:?} is neither 40 hex digits nor \"none\": \
                 the object's metadata is broken, so its bytes cannot be verified"
            )),
            _ => None,
        }
    }
}

/// What to verify a download against, from `contentSha1` (or the
/// `x-bz-content-sha1` header) and `fileInfo.large_file_sha1`: `none`, an
/// empty or absent field is no digest; any other text that is not 40 hex
/// digits is `Malformed`.
pub fn expected_sha1(
    content_sha1: Option<&str>,
    file_info_large_file_sha1: Option<&str>,
) -> ExpectedSha1 {
    let from = |text: &str| {
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return None;
        }
        Some(
            match text.strip_prefix("unverified:") {
                Some(hex) => parse_sha1_hex(hex).map(ExpectedSha1::Unverified),
                None => parse_sha1_hex(text).map(ExpectedSha1::Verified),
            }
            .unwrap_or_else(|| ExpectedSha1::Malformed(text.chars().take(80).collect())),
        )
    };
    content_sha1
        .and_then(from)
        .or_else(|| file_info_large_file_sha1.and_then(from))
        .unwrap_or(ExpectedSha1::None)
}

/// 40 hex digits (either case) → 20 bytes.
pub fn parse_sha1_hex(hex: &str) -> Option<[u8; 20]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 40 {
        return None;
    }
    let mut digest = [0u8; 20];
    for (slot, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *slot = (high * 16 + low) as u8;
    }
    Some(digest)
}

/// Milliseconds since the epoch, as B2's `src_last_modified_millis` and
/// `x-bz-info-src_last_modified_millis` carry them: signed, for a file
/// older than 1970 (b2sdk writes `int(mtime * 1000)`, negative then; h42
/// #7 saw such files given the upload time). `None` for anything else, and
/// for a time past what file systems keep (`config::MTIME_MS_RANGE`: ext4
/// clamped -99999999999999999 to 1901, and the journal's skip, comparing
/// times, fetched the file again on every rerun: h46 #1).
pub fn parse_millis(text: &str) -> Option<i64> {
    let millis = text.trim().parse().ok()?;
    crate::config::MTIME_MS_RANGE
        .contains(&millis)
        .then_some(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_SHA1: &str = "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed";

    #[test]
    fn authorize_v3() {
        let text = r#"{"accountId":"a1","authorizationToken":"4_tSECRET","apiInfo":{"storageApi":{"infoType":"storageApi",
 "apiUrl":"https://api005.backblazeb2.com","downloadUrl":"https://f005.backblazeb2.com","s3ApiUrl":"..","recommendedPartSize":100000000,"absoluteMinimumPartSize":5000000,
 "bucketId":null,"bucketName":null,"capabilities":["listBuckets","listFiles","readFiles"],"namePrefix":null}},"extra":1}"#;
        let auth: AuthorizeResponse = serde_json::from_str(text).unwrap();
        let storage = &auth.api_info.storage_api;
        assert_eq!(auth.account_id, "a1");
        assert_eq!(auth.authorization_token, "4_tSECRET");
        assert_eq!(storage.api_url, "https://api005.backblazeb2.com");
        assert_eq!(storage.download_url, "https://f005.backblazeb2.com");
        assert_eq!(storage.recommended_part_size, Some(100_000_000));
        assert_eq!(storage.absolute_minimum_part_size, Some(5_000_000));
        assert_eq!(storage.bucket_id, None);
        assert_eq!(
            storage.capabilities,
            ["listBuckets", "listFiles", "readFiles"]
        );
        let debug = format!("{auth:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn authorize_v4_and_nulls() {
        let text = r#"{"accountId":"a1","authorizationToken":"t","apiInfo":{"storageApi":{"apiUrl":"u","downloadUrl":"d",
 "capabilities":null,"allowed":{"buckets":[{"id":"b1","name":"bkt"}],"capabilities":["readFiles"],"namePrefix":null}}}}"#;
        let auth: AuthorizeResponse = serde_json::from_str(text).unwrap();
        let allowed = auth.api_info.storage_api.allowed.unwrap();
        assert_eq!(allowed.buckets.unwrap()[0].name.as_deref(), Some("bkt"));
        assert!(auth.api_info.storage_api.capabilities.is_empty());
        assert!(serde_json::from_str::<AuthorizeResponse>(r#"{"accountId":"a1"}"#).is_err());
    }

    #[test]
    fn authorize_hints_are_read_leniently_and_missing_fields_named() {
        for odd in ["-1", "\"100\"", "1.5e20", "[1,[2]]", "{\"a\":1}", "true"] {
            let text = format!(
                r#"{{"accountId":"a1","authorizationToken":"t","apiInfo":{{"storageApi":{{"apiUrl":"u","downloadUrl":"d","recommendedPartSize":{odd},"absoluteMinimumPartSize":{odd}}}}}}}"#
            );
            let auth = parse_authorize(text.as_bytes()).unwrap_or_else(|e| panic!("{odd}: {e}"));
            assert_eq!(
                auth.api_info.storage_api.recommended_part_size, None,
                "{odd}"
            );
        }
        let missing = parse_authorize(br#"{"accountId":"a1","apiInfo":{"storageApi":{}}}"#);
        assert!(
            missing
                .unwrap_err()
                .contains("missing field `authorizationToken`")
        );
        // A mistyped field is not quoted: its value could be the token.
        let mistyped =
            parse_authorize(br#"{"accountId":"a1","authorizationToken":["SECRET"],"apiInfo":{}}"#)
                .unwrap_err();
        assert!(
            !mistyped.contains("SECRET") && mistyped.contains("wrong type"),
            "{mistyped}"
        );
    }

    #[test]
    fn list_buckets() {
        let text = r#"{"buckets":[{"accountId":"a1","bucketId":"b1","bucketName":"bkt","bucketType":"allPrivate","bucketInfo":{},
 "corsRules":[],"lifecycleRules":[],"revision":1,"options":[],
 "defaultServerSideEncryption":{"isClientAuthorizedToRead":true,"value":{"mode":"none"}},
 "fileLockConfiguration":{"isClientAuthorizedToRead":true,"value":{"defaultRetention":{"mode":null,"period":null},"isFileLockEnabled":false}}}]}"#;
        let list: ListBucketsResponse = serde_json::from_str(text).unwrap();
        assert_eq!(list.buckets.len(), 1);
        assert_eq!(list.buckets[0].bucket_id, "b1");
        assert_eq!(list.buckets[0].bucket_name, "bkt");
        assert!(
            serde_json::from_str::<ListBucketsResponse>(r#"{"buckets":[]}"#)
                .unwrap()
                .buckets
                .is_empty()
        );
        let request = ListBucketsRequest {
            account_id: "a1",
            bucket_name: Some("bkt"),
            bucket_id: None,
            bucket_types: Some(&["all"]),
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"accountId":"a1","bucketName":"bkt","bucketTypes":["all"]}"#
        );
    }

    #[test]
    fn list_file_names_page() {
        let text = r#"{"files":[{"accountId":"a1","bucketId":"b1","fileId":"4_z.._f1..","fileName":"dir/a.txt","action":"upload",
 "contentLength":11,"contentSha1":"2aae6c35c94fcfb415dbe95f408b9ce91ee846ed","contentMd5":null,
 "contentType":"text/plain","fileInfo":{"src_last_modified_millis":"1700000000000"},"uploadTimestamp":1700000000123,
 "serverSideEncryption":{"mode":"none"},
 "fileRetention":{"isClientAuthorizedToRead":true,"value":{"mode":null,"retainUntilTimestamp":null}},
 "legalHold":{"isClientAuthorizedToRead":true,"value":null}},
 {"fileId":null,"fileName":"dir/sub/","action":"folder","contentLength":0,"contentSha1":null,"contentType":null,"fileInfo":{},"uploadTimestamp":0},
 {"fileId":"f2","fileName":"big.bin","action":"upload","size":300000000,"contentSha1":"none","fileInfo":{"large_file_sha1":"2AAE6C35C94FCFB415DBE95F408B9CE91EE846ED","n":5}},
 {"fileId":"f3","fileName":"odd","action":"copy","contentLength":null,"fileInfo":null}],
 "nextFileName":"dir/b.txt"}"#;
        let page: ListFileNamesResponse = serde_json::from_str(text).unwrap();
        assert_eq!(page.next_file_name.as_deref(), Some("dir/b.txt"));
        let [upload, folder, large, odd] = &page.files[..] else {
            panic!("four files")
        };
        assert_eq!(upload.action, Some(FileAction::Upload));
        assert_eq!(upload.length_bytes(), Some(11));
        assert_eq!(upload.src_last_modified_millis(), Some(1_700_000_000_000));
        assert_eq!(upload.modified_millis(), Some(1_700_000_000_000));
        assert_eq!(
            upload.expected_sha1(),
            ExpectedSha1::Verified(parse_sha1_hex(HELLO_SHA1).unwrap())
        );
        assert_eq!(folder.action, Some(FileAction::Folder));
        assert_eq!(folder.file_id, None);
        assert_eq!(folder.modified_millis(), Some(0));
        assert_eq!(large.length_bytes(), Some(300_000_000));
        assert_eq!(
            large.expected_sha1(),
            ExpectedSha1::Verified(parse_sha1_hex(HELLO_SHA1).unwrap())
        );
        assert_eq!(odd.action, Some(FileAction::Other));
        assert_eq!(odd.length_bytes(), None);
        assert_eq!(odd.expected_sha1(), ExpectedSha1::None);
        let last: ListFileNamesResponse =
            serde_json::from_str(r#"{"files":[],"nextFileName":null}"#).unwrap();
        assert_eq!(last.next_file_name, None);
        let request = ListFileNamesRequest {
            bucket_id: "b1",
            start_file_name: Some(""),
            max_file_count: Some(10_000),
            prefix: Some("photos/"),
            delimiter: None,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"bucketId":"b1","startFileName":"","maxFileCount":10000,"prefix":"photos/"}"#
        );
    }

    #[test]
    fn parse_helpers() {
        let good = br#"{"accountId":"a1","authorizationToken":"4_tSECRET","apiInfo":{"storageApi":{"apiUrl":"u","downloadUrl":"d"}}}"#;
        assert_eq!(
            parse_authorize(good)
                .unwrap()
                .api_info
                .storage_api
                .download_url,
            "d"
        );
        let no_urls = br#"{"accountId":"a1","authorizationToken":"4_tSECRET","apiInfo":{"storageApi":{"apiUrl":null}}}"#;
        assert!(parse_authorize(no_urls).unwrap_err().contains("apiUrl"));
        let wrong = br#"{"accountId":"a1","authorizationToken":4}"#;
        let message = parse_authorize(wrong).unwrap_err();
        assert!(message.contains("a field of the wrong type"), "{message}");
        assert!(
            !parse_authorize(b"{\"authorizationToken\":\"4_tSECRET\"")
                .unwrap_err()
                .contains("SECRET")
        );
        assert_eq!(
            parse_error_body(br#"{"status":503,"code":"service_unavailable","message":"busy"}"#)
                .unwrap()
                .code,
            "service_unavailable"
        );
        assert!(parse_error_body(b"<html>bad gateway</html>").is_none());
        assert!(parse_error_body(b"").is_none());
    }

    #[test]
    fn error_body() {
        let body: B2ErrorBody = serde_json::from_str(
            r#"{"status":401,"code":"expired_auth_token","message":"token expired"}"#,
        )
        .unwrap();
        assert_eq!(body.status, Some(401));
        assert_eq!(body.code, "expired_auth_token");
        let sparse: B2ErrorBody = serde_json::from_str(r#"{"code":null}"#).unwrap();
        assert_eq!(sparse.code, "");
    }

    #[test]
    fn expected_digests() {
        let digest = parse_sha1_hex(HELLO_SHA1).unwrap();
        assert_eq!(digest[0], 0x2a);
        assert_eq!(digest[19], 0xed);
        assert_eq!(
            expected_sha1(Some(HELLO_SHA1), None),
            ExpectedSha1::Verified(digest)
        );
        assert_eq!(
            expected_sha1(Some(&format!("unverified:{HELLO_SHA1}")), None),
            ExpectedSha1::Unverified(digest)
        );
        assert_eq!(
            expected_sha1(Some("none"), Some(HELLO_SHA1)),
            ExpectedSha1::Verified(digest)
        );
        assert_eq!(expected_sha1(Some("none"), None), ExpectedSha1::None);
        assert_eq!(expected_sha1(None, None), ExpectedSha1::None);
        assert_eq!(expected_sha1(Some(""), Some(" none ")), ExpectedSha1::None);
        // A digest that is there but unreadable is not "no digest".
        for bad in [
            "not-hex".to_string(),
            HELLO_SHA1[..39].to_string(),
            format!("{}g", &HELLO_SHA1[..39]),
            format!("{HELLO_SHA1}0"),
            "unverified:zz".to_string(),
        ] {
            assert!(
                matches!(expected_sha1(Some(&bad), None), ExpectedSha1::Malformed(_)),
                "{bad}"
            );
            assert!(
                matches!(
                    expected_sha1(Some("none"), Some(&bad)),
                    ExpectedSha1::Malformed(_)
                ),
                "{bad}"
            );
        }
        assert!(
            ExpectedSha1::Malformed("x".into())
                .malformed()
                .unwrap()
                .contains("\"x\"")
        );
        assert_eq!(ExpectedSha1::Unverified(digest).digest(), Some(&digest));
        assert_eq!(parse_sha1_hex("+a".repeat(20).as_str()), None);
    }
}

//! `b2_list_file_names` and `b2_list_file_versions` pages: request bodies,
//! parsing, the listing-loop checks, and the choice of each name's version at
//! an instant (`--as-of`). I/O-free; `restore` drives the requests from its
//! listing thread.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

use crate::b2::{ExpectedSha1, Scalar};
use crate::config::{LIST_BUCKETS_MAX, LIST_FIRST_PAGE_FILES, LIST_PAGE_FILES_MAX};

/// What an entry of a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Upload,
    Folder,
    /// A deletion marker: the name is gone from this version on.
    Hide,
    /// `start` (an unfinished large file) or unknown: not restored.
    Other,
}

/// One listed object, reduced to what a restore needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub name: String,
    pub file_id: Option<String>,
    pub action: Action,
    pub size_bytes: u64,
    pub expected: ExpectedSha1,
    /// `src_last_modified_millis`, else `uploadTimestamp`.
    pub mtime_ms: Option<i64>,
    /// `uploadTimestamp`: when B2 took this version (or hid the name).
    pub upload_ms: Option<u64>,
    /// Encrypted with a customer key (SSE-C): its downloads must carry it.
    pub sse_c: Option<SseC>,
}

/// What a listing says of an object encrypted with a customer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseC {
    /// `sse_c_key_id` of its fileInfo: the name b2sdk and the b2 CLI store
    /// for the key when given one (`KeyChoice` takes it as a hint).
    pub key_id: Option<String>,
}

impl ListEntry {
    /// A name with nothing else known: no fileId, size 0, no digest.
    pub fn named(name: impl Into<String>, action: Action) -> ListEntry {
        ListEntry {
            name: name.into(),
            file_id: None,
            action,
            size_bytes: 0,
            expected: ExpectedSha1::None,
            mtime_ms: None,
            upload_ms: None,
            sse_c: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub entries: Vec<ListEntry>,
    pub next_file_name: Option<String>,
    /// `b2_list_file_versions` only: where the next page starts within
    /// `next_file_name`'s versions.
    pub next_file_id: Option<String>,
}

/// Where a page starts: `startFileName`, and for versions `startFileId`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageStart {
    pub file_name: Option<String>,
    pub file_id: Option<String>,
}

impl PageStart {
    /// The first page from `name` (inclusive), from its newest version.
    pub fn at(name: impl Into<String>) -> PageStart {
        PageStart {
            file_name: Some(name.into()),
            file_id: None,
        }
    }

    /// The start of the page after `page`, or `None` at the end.
    pub fn after(page: &ListPage) -> Option<PageStart> {
        page.next_file_name.as_ref().map(|name| PageStart {
            file_name: Some(name.clone()),
            file_id: page.next_file_id.clone(),
        })
    }
}

/// `maxFileCount` of the listing page after one of `previous` names (the
/// first page: `None`): small first, so downloads start early, then growing.
pub fn next_page_files(previous: Option<u32>) -> u32 {
    match previous {
        None => LIST_FIRST_PAGE_FILES.min(LIST_PAGE_FILES_MAX),
        Some(files) => files.saturating_mul(10).min(LIST_PAGE_FILES_MAX),
    }
}

/// The JSON body of one `b2_list_file_names` or `b2_list_file_versions`
/// request (`startFileId` is only ever set for versions).
pub fn request_body(bucket_id: &str, prefix: &str, start: &PageStart, max_files: u32) -> Vec<u8> {
    let mut body = json!({
        "bucketId": bucket_id,
        "maxFileCount": max_files.min(LIST_PAGE_FILES_MAX),
        "prefix": prefix,
    });
    if let Some(name) = &start.file_name {
        body["startFileName"] = Value::String(name.clone());
        if let Some(id) = &start.file_id {
            body["startFileId"] = Value::String(id.clone());
        }
    }
    serde_json::to_vec(&body).expect("list request serialises")
}

/// The `bucketId` from a `b2_list_buckets` reply for `bucket_name`.
pub fn parse_bucket_id(body: &[u8], bucket_name: &str) -> Result<Option<String>, String> {
    let reply: RawBuckets =
        serde_json::from_slice(body).map_err(|error| format!("unexpected reply: {error}"))?;
    Ok(reply
        .buckets
        .into_iter()
        .find(|bucket| bucket.bucket_name.as_ref().and_then(Scalar::text) == Some(bucket_name))
        .and_then(|bucket| {
            bucket
                .bucket_id
                .as_ref()
                .and_then(Scalar::text)
                .map(str::to_string)
        }))
}

/// Parses one page. Entries keep the server's order.
///
/// Typed and bounded: at most [`LIST_PAGE_FILES_MAX`] entries, fields we do
/// not read are skipped without being stored, so a hostile page near
/// `API_BODY_MAX_BYTES` cannot turn into gigabytes of parsed values (a
/// `serde_json::Value` costs ~16× the JSON of `[0,0,…]`).
pub fn parse_page(body: &[u8]) -> Result<ListPage, String> {
    let page: RawPage =
        serde_json::from_slice(body).map_err(|error| format!("unexpected reply: {error}"))?;
    let mut entries = Vec::with_capacity(page.files.len());
    for file in page.files {
        let text =
            |value: &Option<Scalar>| value.as_ref().and_then(Scalar::text).map(str::to_string);
        // No action at all is an upload (older answers); one that is not
        // text (`"action": 7`) is no action we know.
        let action = match file.action.as_ref().map(Scalar::text) {
            Some(Some("upload")) | None => Action::Upload,
            Some(Some("folder")) => Action::Folder,
            Some(Some("hide")) => Action::Hide,
            Some(_) => Action::Other,
        };
        let size_bytes = match (file.content_length, file.size) {
            (Some(length), _) | (None, Some(length)) => length,
            (None, None) if action == Action::Upload => {
                return Err(format!("{:?}: no contentLength", file.file_name));
            }
            (None, None) => 0,
        };
        let info = file.file_info.and_then(|info| info.0).unwrap_or_default();
        let expected = crate::b2::expected_sha1(
            file.content_sha1.as_ref().and_then(Scalar::text),
            info.large_file_sha1.as_ref().and_then(Scalar::text),
        );
        let upload_ms = match file.upload_timestamp {
            Some(Scalar::Number(millis)) if millis > 0 => Some(millis),
            _ => None,
        };
        let mtime_ms = match &info.src_last_modified_millis {
            Some(Scalar::Text(text)) => crate::b2::parse_millis(text),
            Some(Scalar::Number(millis)) => i64::try_from(*millis)
                .ok()
                .filter(|millis| crate::config::MTIME_MS_RANGE.contains(millis)),
            _ => None,
        }
        .or(upload_ms
            .and_then(|millis| i64::try_from(millis).ok())
            .filter(|millis| crate::config::MTIME_MS_RANGE.contains(millis)));
        let sse_c = crate::b2::is_sse_c(
            file.server_side_encryption
                .as_ref()
                .and_then(|encryption| encryption.0.as_ref()?.mode.as_ref()?.text()),
        )
        .then(|| SseC {
            key_id: info
                .sse_c_key_id
                .as_ref()
                .and_then(Scalar::text)
                .filter(|id| id.len() <= crate::config::SSE_C_KEY_ID_MAX_BYTES)
                .map(str::to_string),
        });
        entries.push(ListEntry {
            file_id: text(&file.file_id),
            name: file.file_name,
            action,
            size_bytes,
            expected,
            mtime_ms,
            upload_ms,
            sse_c,
        });
    }
    Ok(ListPage {
        entries,
        next_file_name: page.next_file_name,
        next_file_id: page.next_file_id,
    })
}

/// Chooses, for each name of a `b2_list_file_versions` listing, the version
/// that was current at an instant: the newest one uploaded at or before it,
/// unless that one is a hide marker (the name was deleted then). Later
/// versions, unfinished large files and names that did not exist yet are
/// left out. Streaming: one name's versions may span pages, and the state is
/// that name alone, so memory does not grow with the bucket.
#[derive(Debug)]
pub struct VersionAt {
    at_ms: u64,
    name: Option<String>,
    /// The name's version at `at_ms` was found (or the name was hidden then).
    decided: bool,
    /// Upload time of the name's previous entry: versions come newest first.
    previous_ms: u64,
}

impl VersionAt {
    pub fn new(at_ms: u64) -> VersionAt {
        VersionAt {
            at_ms,
            name: None,
            decided: false,
            previous_ms: u64::MAX,
        }
    }

    /// Takes the next entry of the listing; returns it if it is the version
    /// to restore. An entry out of B2's order (names ascending, each name's
    /// versions newest first) is an error: the choice would be wrong.
    pub fn pick(&mut self, entry: ListEntry) -> Result<Option<ListEntry>, String> {
        if self.name.as_deref() != Some(entry.name.as_str()) {
            if self.name.as_deref() > Some(entry.name.as_str()) {
                return Err(format!(
                    "versions out of order: {:?} listed after {:?}",
                    entry.name,
                    self.name.as_deref().unwrap_or_default()
                ));
            }
            self.name = Some(entry.name.clone());
            self.decided = false;
            self.previous_ms = u64::MAX;
        }
        if entry.action == Action::Folder {
            return Ok(None);
        }
        let Some(upload_ms) = entry.upload_ms else {
            return Err(format!(
                "{:?}: a version without uploadTimestamp; cannot tell when it was current",
                entry.name
            ));
        };
        if upload_ms > self.previous_ms {
            return Err(format!(
                "versions of {:?} out of order: uploadTimestamp {upload_ms} listed after {}; expected newest first",
                entry.name, self.previous_ms
            ));
        }
        self.previous_ms = upload_ms;
        if self.decided || upload_ms > self.at_ms {
            return Ok(None);
        }
        match entry.action {
            Action::Upload => {
                self.decided = true;
                Ok(Some(entry))
            }
            Action::Hide => {
                self.decided = true;
                Ok(None)
            }
            // An unfinished large file is no version: look further back.
            Action::Other | Action::Folder => Ok(None),
        }
    }
}

/// B2 lists names in ascending order, each once (`b2_list_file_names`), or
/// each name's versions together (`_versions`: `repeats_allowed`). A page
/// out of that order is refused: a name listed twice would be restored
/// twice into one path (the last write wins, both reported done), and the
/// resume journal's merge and "first name wins" rely on the order. Pages
/// follow each other in order by `check_progress`.
pub fn check_order(page: &ListPage, repeats_allowed: bool) -> Result<(), String> {
    for pair in page.entries.windows(2) {
        let (before, after) = (&pair[0].name, &pair[1].name);
        if after < before || (after == before && !repeats_allowed) {
            let what = if after == before {
                format!("{after:?} listed twice")
            } else {
                format!("{after:?} out of order, after {before:?}")
            };
            return Err(format!(
                "listing broken: {what}; B2 lists each name once, in ascending order"
            ));
        }
    }
    Ok(())
}

/// A server that sends a `nextFileName` not past this page would make us
/// list forever: refuse it. `start` is the page's own start.
/// `startFileName` is inclusive, so entries before it mean the server went
/// backwards (or ignored the start and repeats its first page). A versions
/// page may end inside a name (`nextFileId`): the next page may start at
/// the same name, never at the same version it started from.
pub fn check_progress(start: &PageStart, page: &ListPage) -> Result<(), String> {
    let start_name = start.file_name.as_deref();
    if let Some(start_name) = start_name {
        if let Some(entry) = page
            .entries
            .iter()
            .find(|entry| entry.name.as_str() < start_name)
        {
            return Err(format!(
                "listing went backwards: {:?} comes before this page's startFileName {start_name:?}; the server would repeat names forever",
                entry.name
            ));
        }
    }
    let Some(next) = page.next_file_name.as_deref() else {
        return Ok(());
    };
    // Empty pages whose nextFileName only grows ("a", "aa", …) move past
    // every floor below, and would be asked for forever.
    if next.len() > crate::config::B2_FILE_NAME_MAX_BYTES + 1 {
        return Err(format!(
            "listing loop: nextFileName of {} bytes cannot name a B2 file (at most {}); the server would list forever",
            next.len(),
            crate::config::B2_FILE_NAME_MAX_BYTES
        ));
    }
    let within_name = page.next_file_id.is_some();
    let last = page.entries.last().map(|entry| entry.name.as_str());
    for floor in [start_name, last].into_iter().flatten() {
        if next < floor || (next == floor && !within_name) {
            return Err(format!(
                "listing loop: nextFileName {next:?} is not past {floor:?}; the server would repeat names forever"
            ));
        }
    }
    if within_name && start_name == Some(next) && start.file_id == page.next_file_id {
        return Err(format!(
            "listing loop: the page after {next:?} starts where this one did; the server would repeat versions forever"
        ));
    }
    Ok(())
}

/// `b2_list_file_names` reply, as far as a restore reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPage {
    #[serde(deserialize_with = "bounded_files")]
    files: Vec<RawFile>,
    #[serde(default)]
    next_file_name: Option<String>,
    #[serde(default)]
    next_file_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFile {
    file_name: String,
    #[serde(default)]
    file_id: Option<Scalar>,
    #[serde(default)]
    action: Option<Scalar>,
    /// Strict: a negative or fractional length refuses the page.
    #[serde(default)]
    content_length: Option<u64>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    content_sha1: Option<Scalar>,
    #[serde(default)]
    file_info: Option<ObjectOr<RawInfo>>,
    #[serde(default)]
    upload_timestamp: Option<Scalar>,
    #[serde(default)]
    server_side_encryption: Option<ObjectOr<RawEncryption>>,
}

/// `{"mode": "SSE-C", "algorithm": "AES256"}`; only the mode matters here.
#[derive(Deserialize)]
struct RawEncryption {
    #[serde(default)]
    mode: Option<Scalar>,
}

/// A field that should hold a JSON object, read as `T`; anything else is
/// none, not a reason to refuse the page (a `fileInfo` of `"x"`, a
/// `serverSideEncryption` of `"SSE-C"`). Read in one pass:
/// `#[serde(untagged)]` would first buffer the whole value, and a hostile
/// page's 60 MiB of nested arrays with it.
struct ObjectOr<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ObjectOr<T>, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = ObjectOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ObjectOr<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| ObjectOr(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ObjectOr<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOr(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }
        }
        deserializer.deserialize_any(ObjectVisitor(std::marker::PhantomData))
    }
}

#[derive(Default, Deserialize)]
struct RawInfo {
    #[serde(default)]
    large_file_sha1: Option<Scalar>,
    #[serde(default)]
    src_last_modified_millis: Option<Scalar>,
    #[serde(default)]
    sse_c_key_id: Option<Scalar>,
}

#[derive(Deserialize)]
struct RawBuckets {
    #[serde(deserialize_with = "bounded_buckets")]
    buckets: Vec<RawBucket>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBucket {
    #[serde(default)]
    bucket_name: Option<Scalar>,
    #[serde(default)]
    bucket_id: Option<Scalar>,
}

/// A JSON array of at most `max` elements, refused as soon as it has more
/// (before the rest is parsed).
fn bounded_vec<'de, D, T>(
    deserializer: D,
    max: usize,
    what: &'static str,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T> {
        max: usize,
        what: &'static str,
        element: PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an array of at most {} {}", self.max, self.what)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<T>()? {
                if items.len() == self.max {
                    return Err(de::Error::custom(format!(
                        "more than {} {} in one reply",
                        self.max, self.what
                    )));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_seq(Bounded {
        max,
        what,
        element: PhantomData,
    })
}

fn bounded_files<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RawFile>, D::Error> {
    bounded_vec(deserializer, LIST_PAGE_FILES_MAX as usize, "files")
}

fn bounded_buckets<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RawBucket>, D::Error> {
    bounded_vec(deserializer, LIST_BUCKETS_MAX, "buckets")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"{"files":[
        {"accountId":"a1","bucketId":"b1","fileId":"4_z1","fileName":"dir/a.txt","action":"upload",
         "contentLength":11,"contentSha1":"2aae6c35c94fcfb415dbe95f408b9ce91ee846ed","contentMd5":null,
         "contentType":"text/plain","fileInfo":{"src_last_modified_millis":"1700000000000"},"uploadTimestamp":1700000000123},
        {"fileId":"4_z2","fileName":"dir/big","action":"upload","contentLength":5,"contentSha1":"none",
         "fileInfo":{"large_file_sha1":"unverified:2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"},"uploadTimestamp":17},
        {"fileId":null,"fileName":"dir/sub/","action":"folder","contentLength":0,"contentSha1":null,"fileInfo":{},"uploadTimestamp":0},
        {"fileId":"4_z3","fileName":"dir/gone","action":"hide","contentLength":0,"contentSha1":"none","fileInfo":{},"uploadTimestamp":1},
        {"fileId":"4_z4","fileName":"v1","size":3,"contentSha1":"none","fileInfo":{},"uploadTimestamp":2}
    ],"nextFileName":"dir/zz"}"#;

    #[test]
    fn parses_a_page() {
        let page = parse_page(PAGE.as_bytes()).unwrap();
        assert_eq!(page.entries.len(), 5);
        let a = &page.entries[0];
        assert_eq!(a.name, "dir/a.txt");
        assert_eq!(a.file_id.as_deref(), Some("4_z1"));
        assert_eq!(a.size_bytes, 11);
        assert_eq!(a.mtime_ms, Some(1_700_000_000_000));
        assert!(matches!(a.expected, ExpectedSha1::Verified(_)));
        let big = &page.entries[1];
        assert!(matches!(big.expected, ExpectedSha1::Unverified(_)));
        assert_eq!(big.mtime_ms, Some(17));
        assert_eq!(page.entries[2].action, Action::Folder);
        assert_eq!(page.entries[2].file_id, None);
        assert_eq!(page.entries[3].action, Action::Hide);
        assert_eq!(page.entries[4].size_bytes, 3);
        assert_eq!(page.entries[4].expected, ExpectedSha1::None);
        assert_eq!(page.next_file_name.as_deref(), Some("dir/zz"));
    }

    #[test]
    fn odd_actions_and_file_infos_are_read_leniently_per_entry() {
        let page = br#"{"files":[
            {"fileName":"seven","action":7,"contentLength":1},
            {"fileName":"null","action":null,"contentLength":1},
            {"fileName":"info-text","action":"upload","contentLength":1,"fileInfo":"x"},
            {"fileName":"info-list","action":"upload","contentLength":1,"fileInfo":[1,2]},
            {"fileName":"plain","contentLength":1}
        ],"nextFileName":null}"#;
        let page = parse_page(page).unwrap();
        let actions: Vec<Action> = page.entries.iter().map(|entry| entry.action).collect();
        assert_eq!(
            actions,
            [
                Action::Other,
                Action::Upload, // null is no action, as an absent one
                Action::Upload,
                Action::Upload,
                Action::Upload
            ]
        );
        assert_eq!(page.entries[2].mtime_ms, None);
    }

    #[test]
    fn only_the_sse_c_mode_marks_an_entry_as_needing_a_key() {
        let page = br#"{"files":[
            {"fileName":"c","contentLength":1,"serverSideEncryption":{"mode":"SSE-C","algorithm":"AES256"}},
            {"fileName":"b2","contentLength":1,"serverSideEncryption":{"mode":"SSE-B2","algorithm":"AES256"}},
            {"fileName":"none","contentLength":1,"serverSideEncryption":{"mode":"none"}},
            {"fileName":"null","contentLength":1,"serverSideEncryption":{"mode":null}},
            {"fileName":"odd","contentLength":1,"serverSideEncryption":{"mode":7}},
            {"fileName":"text","contentLength":1,"serverSideEncryption":"SSE-C"},
            {"fileName":"absent","contentLength":1}
        ],"nextFileName":null}"#;
        let page = parse_page(page).unwrap();
        let sse_c: Vec<(&str, bool)> = page
            .entries
            .iter()
            .map(|entry| (entry.name.as_str(), entry.sse_c.is_some()))
            .collect();
        assert_eq!(
            sse_c,
            [
                ("c", true),
                ("b2", false),
                ("none", false),
                ("null", false),
                ("odd", false),
                ("text", false),
                ("absent", false)
            ]
        );
    }

    #[test]
    fn an_sse_c_entry_carries_its_key_id_when_it_has_a_usable_one() {
        let long = "k".repeat(crate::config::SSE_C_KEY_ID_MAX_BYTES + 1);
        let page = format!(
            r#"{{"files":[
            {{"fileName":"a","contentLength":1,"serverSideEncryption":{{"mode":"SSE-C"}},"fileInfo":{{"sse_c_key_id":"rotation-2"}}}},
            {{"fileName":"b","contentLength":1,"serverSideEncryption":{{"mode":"SSE-C"}},"fileInfo":{{"sse_c_key_id":7}}}},
            {{"fileName":"c","contentLength":1,"serverSideEncryption":{{"mode":"SSE-C"}},"fileInfo":{{"sse_c_key_id":"{long}"}}}},
            {{"fileName":"d","contentLength":1,"serverSideEncryption":{{"mode":"SSE-C"}}}},
            {{"fileName":"e","contentLength":1,"fileInfo":{{"sse_c_key_id":"plain"}}}}
        ],"nextFileName":null}}"#
        );
        let page = parse_page(page.as_bytes()).unwrap();
        let key_ids: Vec<Option<Option<&str>>> = page
            .entries
            .iter()
            .map(|entry| entry.sse_c.as_ref().map(|sse_c| sse_c.key_id.as_deref()))
            .collect();
        assert_eq!(
            key_ids,
            [
                Some(Some("rotation-2")),
                Some(None),
                Some(None),
                Some(None),
                None
            ]
        );
    }

    #[test]
    fn rejects_malformed_pages() {
        assert!(parse_page(b"{}").is_err());
        assert!(parse_page(b"not json").is_err());
        assert!(parse_page(br#"{"files":[{"action":"upload"}]}"#).is_err());
        assert!(parse_page(br#"{"files":[{"fileName":"x","action":"upload"}]}"#).is_err());
        assert!(parse_page(br#"{"files":[],"nextFileName":5}"#).is_err());
    }

    /// A page of empty uploads named `names`.
    fn page(names: &[&str], next: Option<&str>) -> ListPage {
        ListPage {
            entries: names
                .iter()
                .map(|name| ListEntry::named(*name, Action::Upload))
                .collect(),
            next_file_name: next.map(str::to_string),
            next_file_id: None,
        }
    }

    #[test]
    fn detects_listing_loops() {
        assert!(check_progress(&PageStart::default(), &page(&["a", "b"], Some("c"))).is_ok());
        assert!(check_progress(&PageStart::default(), &page(&["a", "b"], Some("b\0"))).is_ok());
        assert!(check_progress(&PageStart::default(), &page(&["a", "b"], None)).is_ok());
        assert!(check_progress(&PageStart::default(), &page(&["a", "b"], Some("b"))).is_err());
        assert!(check_progress(&PageStart::default(), &page(&["a", "b"], Some("a"))).is_err());
        assert!(check_progress(&PageStart::at("m"), &page(&[], Some("m"))).is_err());
        assert!(check_progress(&PageStart::at("m"), &page(&[], Some("n"))).is_ok());
        // An ever longer nextFileName on empty pages ends at B2's name limit.
        let long = "a".repeat(1026);
        let error =
            check_progress(&PageStart::at(&long[..1025]), &page(&[], Some(&long))).unwrap_err();
        assert!(error.contains("cannot name a B2 file"), "{error}");
    }

    #[test]
    fn hostile_pages_are_refused_without_blowing_up() {
        // More entries than we asked for: refused while parsing.
        let many = format!(
            "{{\"files\":[{}],\"nextFileName\":null}}",
            vec![r#"{"fileName":"x","contentLength":0}"#; LIST_PAGE_FILES_MAX as usize + 1]
                .join(",")
        );
        let error = parse_page(many.as_bytes()).unwrap_err();
        assert!(error.contains("more than 10000 files"), "{error}");
        // Exactly the maximum is fine.
        let full = format!(
            "{{\"files\":[{}]}}",
            vec![r#"{"fileName":"x","contentLength":0}"#; LIST_PAGE_FILES_MAX as usize].join(",")
        );
        assert_eq!(parse_page(full.as_bytes()).unwrap().entries.len(), 10_000);
        // Entries that are not objects, negative or fractional lengths.
        assert!(parse_page(br#"{"files":[0,0,0]}"#).is_err());
        assert!(parse_page(br#"{"files":[{}]}"#).is_err());
        let negative = parse_page(br#"{"files":[{"fileName":"a","contentLength":-5}]}"#);
        assert!(negative.unwrap_err().contains("-5"));
        assert!(parse_page(br#"{"files":[{"fileName":"a","contentLength":1.5}]}"#).is_err());
        assert!(parse_page(b"{\"files\":[{\"fileName\":\"a\xff\",\"contentLength\":1}]}").is_err());
        // Odd shapes of fields we read leniently are skipped, not stored.
        let deep = format!(
            r#"{{"files":[{{"fileName":"a","contentLength":1,"contentSha1":[1],"fileId":{{}},"fileInfo":{{"src_last_modified_millis":[{}],"large_file_sha1":5}},"uploadTimestamp":-3}}]}}"#,
            vec!["[]"; 100_000].join(",")
        );
        let page = parse_page(deep.as_bytes()).unwrap();
        assert_eq!(page.entries[0].mtime_ms, None);
        assert_eq!(page.entries[0].file_id, None);
        assert_eq!(page.entries[0].expected, ExpectedSha1::None);
        // Buckets: bounded the same way.
        let buckets = format!(
            "{{\"buckets\":[{}]}}",
            vec!["{}"; LIST_BUCKETS_MAX + 1].join(",")
        );
        assert!(
            parse_bucket_id(buckets.as_bytes(), "b")
                .unwrap_err()
                .contains("more than")
        );
        assert!(parse_bucket_id(br#"{"buckets":[0]}"#, "b").is_err());
        assert_eq!(
            parse_bucket_id(
                br#"{"buckets":[{"bucketName":5},{"bucketName":"b","bucketId":"i"}]}"#,
                "b"
            )
            .unwrap()
            .as_deref(),
            Some("i")
        );
    }

    #[test]
    fn refuses_pages_out_of_order() {
        assert!(check_order(&page(&["a", "b", "c"], None), false).is_ok());
        assert!(check_order(&page(&[], None), false).is_ok());
        let twice = check_order(&page(&["a", "b", "b"], None), false).unwrap_err();
        assert!(twice.contains("listed twice"), "{twice}");
        assert!(check_order(&page(&["a", "b", "b"], None), true).is_ok());
        let backwards = check_order(&page(&["a", "c", "b"], None), false).unwrap_err();
        assert!(backwards.contains("out of order"), "{backwards}");
        assert!(check_order(&page(&["a", "c", "b"], None), true).is_err());
        // Bytewise, as B2 sorts UTF-8: "Z" < "a" < "é".
        assert!(check_order(&page(&["Z", "a", "\u{e9}"], None), false).is_ok());
    }

    #[test]
    fn detects_pages_that_repeat_or_go_backwards() {
        // A server that ignores startFileName and repeats its first page.
        let repeated = page(&["a", "b"], Some("c"));
        assert!(check_progress(&PageStart::default(), &repeated).is_ok());
        let error = check_progress(&PageStart::at("c"), &repeated).unwrap_err();
        assert!(error.contains("went backwards"), "{error}");
        // nextFileName equal to the start of an empty page.
        assert!(check_progress(&PageStart::at("c"), &page(&[], Some("c"))).is_err());
        // nextFileName behind the start even though past the last name.
        assert!(check_progress(&PageStart::at("m"), &page(&["m"], Some("l"))).is_err());
        // The start itself may be listed (startFileName is inclusive).
        assert!(check_progress(&PageStart::at("c"), &page(&["c", "d"], Some("e"))).is_ok());
    }

    #[test]
    fn pages_start_small_and_grow_to_the_maximum() {
        let mut sizes = Vec::new();
        let mut previous = None;
        for _ in 0..5 {
            let files = next_page_files(previous);
            sizes.push(files);
            previous = Some(files);
        }
        assert_eq!(sizes, [100, 1_000, 10_000, 10_000, 10_000]);
    }

    #[test]
    fn request_and_bucket_bodies() {
        let body: Value =
            serde_json::from_slice(&request_body("b1", "p/", &PageStart::at("p/x"), 1_000_000))
                .unwrap();
        assert_eq!(body["maxFileCount"], 10_000);
        assert_eq!(body["startFileName"], "p/x");
        assert_eq!(body["prefix"], "p/");
        assert!(body.get("startFileId").is_none());
        let start = PageStart {
            file_name: Some("p/x".into()),
            file_id: Some("4_z9".into()),
        };
        let body: Value = serde_json::from_slice(&request_body("b1", "p/", &start, 100)).unwrap();
        assert_eq!(body["startFileId"], "4_z9");
        let reply = br#"{"buckets":[{"bucketId":"id1","bucketName":"bkt"}]}"#;
        assert_eq!(
            parse_bucket_id(reply, "bkt").unwrap().as_deref(),
            Some("id1")
        );
        assert_eq!(parse_bucket_id(reply, "other").unwrap(), None);
    }

    /// A versions listing entry: `name`, action, uploadTimestamp.
    fn version(name: &str, action: Action, upload_ms: u64) -> ListEntry {
        ListEntry {
            name: name.to_string(),
            file_id: Some(format!("{name}@{upload_ms}")),
            action,
            size_bytes: 1,
            expected: ExpectedSha1::None,
            mtime_ms: Some(upload_ms as i64),
            upload_ms: Some(upload_ms),
            sse_c: None,
        }
    }

    /// The names and upload times `VersionAt::new(at_ms)` picks from `listing`.
    fn picked(at_ms: u64, listing: &[ListEntry]) -> Result<Vec<(String, u64)>, String> {
        let mut choice = VersionAt::new(at_ms);
        let mut picked = Vec::new();
        for entry in listing {
            if let Some(entry) = choice.pick(entry.clone())? {
                picked.push((entry.name, entry.upload_ms.unwrap()));
            }
        }
        Ok(picked)
    }

    #[test]
    fn the_version_current_at_an_instant_is_picked_per_name() {
        use Action::{Hide, Other, Upload};
        let listing = [
            // Replaced at 30: as of 20 the version of 10 is current.
            version("a", Upload, 30),
            version("a", Upload, 10),
            // Deleted at 25: there before, gone after.
            version("b", Hide, 25),
            version("b", Upload, 5),
            // Created at 40.
            version("c", Upload, 40),
            // Deleted at 15, uploaded again at 35.
            version("d", Upload, 35),
            version("d", Hide, 15),
            version("d", Upload, 1),
            // An unfinished large file at 12 is no version.
            version("e", Other, 12),
            version("e", Upload, 11),
            version("f", Other, 3),
        ];
        assert_eq!(
            picked(20, &listing).unwrap(),
            [("a".into(), 10), ("b".into(), 5), ("e".into(), 11)]
        );
        assert_eq!(
            picked(12, &listing).unwrap(),
            [
                ("a".into(), 10),
                ("b".into(), 5),
                ("d".into(), 1),
                ("e".into(), 11)
            ]
        );
        assert_eq!(
            picked(u64::MAX, &listing).unwrap(),
            [
                ("a".into(), 30),
                ("c".into(), 40),
                ("d".into(), 35),
                ("e".into(), 11)
            ]
        );
        // The instant is inclusive, to the millisecond.
        assert_eq!(
            picked(25, &listing).unwrap(),
            [("a".into(), 10), ("e".into(), 11)]
        );
        assert_eq!(picked(24, &listing).unwrap()[1], ("b".into(), 5));
        assert_eq!(picked(0, &listing).unwrap(), []);
    }

    #[test]
    fn versions_out_of_order_are_refused() {
        use Action::Upload;
        let oldest_first = [version("a", Upload, 10), version("a", Upload, 30)];
        let error = picked(20, &oldest_first).unwrap_err();
        assert!(error.contains("newest first"), "{error}");
        let names_backwards = [version("b", Upload, 10), version("a", Upload, 10)];
        assert!(picked(20, &names_backwards).is_err());
        let mut no_time = version("a", Upload, 1);
        no_time.upload_ms = None;
        assert!(picked(20, &[no_time]).is_err());
    }

    #[test]
    fn a_versions_page_may_end_inside_a_name_but_not_repeat_itself() {
        let mut inside = page(&["a", "b"], Some("b"));
        inside.next_file_id = Some("b@2".into());
        assert!(check_progress(&PageStart::default(), &inside).is_ok());
        // The next page starts at b@2 and ends inside b again, further on.
        let start = PageStart {
            file_name: Some("b".into()),
            file_id: Some("b@2".into()),
        };
        let mut further = page(&["b"], Some("b"));
        further.next_file_id = Some("b@1".into());
        assert!(check_progress(&start, &further).is_ok());
        // A page that would start where it did: a loop.
        let mut same = page(&[], Some("b"));
        same.next_file_id = Some("b@2".into());
        assert!(check_progress(&start, &same).is_err());
        // Behind the last name, even with an id.
        let mut behind = page(&["a", "b"], Some("a"));
        behind.next_file_id = Some("a@1".into());
        assert!(check_progress(&PageStart::default(), &behind).is_err());
    }

    #[test]
    fn versions_pages_parse_hide_markers_and_next_ids() {
        let page = parse_page(
            br#"{"files":[
                {"fileId":"4_z2","fileName":"a","action":"hide","contentLength":0,"uploadTimestamp":20},
                {"fileId":"4_z1","fileName":"a","action":"upload","contentLength":3,"contentSha1":"none",
                 "fileInfo":{"src_last_modified_millis":"7"},"uploadTimestamp":10},
                {"fileId":"4_z3","fileName":"b","action":"upload","contentLength":3,"contentSha1":"none",
                 "fileInfo":{"src_last_modified_millis":"-86400000"},"uploadTimestamp":10},
                {"fileId":"4_z4","fileName":"c","action":"upload","contentLength":3,"contentSha1":"none",
                 "fileInfo":{"src_last_modified_millis":"-99999999999999999"},"uploadTimestamp":10}
            ],"nextFileName":"b","nextFileId":"4_z0"}"#,
        )
        .unwrap();
        assert_eq!(page.entries[0].action, Action::Hide);
        assert_eq!(page.entries[0].upload_ms, Some(20));
        assert_eq!(page.entries[1].mtime_ms, Some(7));
        assert_eq!(page.entries[1].upload_ms, Some(10));
        // Before 1970 (h42 #7); past what a file system keeps: the upload
        // time instead.
        assert_eq!(page.entries[2].mtime_ms, Some(-86_400_000));
        assert_eq!(page.entries[3].mtime_ms, Some(10));
        assert_eq!(page.next_file_id.as_deref(), Some("4_z0"));
        assert_eq!(
            PageStart::after(&page),
            Some(PageStart {
                file_name: Some("b".into()),
                file_id: Some("4_z0".into()),
            })
        );
    }
}

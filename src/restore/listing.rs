//! `b2_list_file_names` pages: request bodies, parsing, and the listing-loop
//! check. I/O-free; `restore` drives the requests from its listing thread.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

use crate::b2::ExpectedSha1;
use crate::config::{LIST_BUCKETS_MAX, LIST_FIRST_PAGE_FILES, LIST_PAGE_FILES_MAX};

/// What an entry of a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Upload,
    Folder,
    /// `hide`, `start` or unknown: not restored.
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
    pub mtime_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub entries: Vec<ListEntry>,
    pub next_file_name: Option<String>,
}

/// `maxFileCount` of the listing page after one of `previous` names (the
/// first page: `None`): small first, so downloads start early, then growing.
pub fn next_page_files(previous: Option<u32>) -> u32 {
    match previous {
        None => LIST_FIRST_PAGE_FILES.min(LIST_PAGE_FILES_MAX),
        Some(files) => files.saturating_mul(10).min(LIST_PAGE_FILES_MAX),
    }
}

/// The JSON body of one `b2_list_file_names` request.
pub fn request_body(
    bucket_id: &str,
    prefix: &str,
    start_file_name: Option<&str>,
    max_files: u32,
) -> Vec<u8> {
    let mut body = json!({
        "bucketId": bucket_id,
        "maxFileCount": max_files.min(LIST_PAGE_FILES_MAX),
        "prefix": prefix,
    });
    if let Some(start) = start_file_name {
        body["startFileName"] = Value::String(start.to_string());
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
        let action = match file.action.as_ref().and_then(Scalar::text) {
            Some("upload") | None => Action::Upload,
            Some("folder") => Action::Folder,
            Some(_) => Action::Other,
        };
        let size_bytes = match (file.content_length, file.size) {
            (Some(length), _) | (None, Some(length)) => length,
            (None, None) if action == Action::Upload => {
                return Err(format!("{:?}: no contentLength", file.file_name));
            }
            (None, None) => 0,
        };
        let info = file.file_info.unwrap_or_default();
        let expected = crate::b2::expected_sha1(
            file.content_sha1.as_ref().and_then(Scalar::text),
            info.large_file_sha1.as_ref().and_then(Scalar::text),
        );
        let mtime_ms = match &info.src_last_modified_millis {
            Some(Scalar::Text(text)) => text.parse().ok(),
            Some(Scalar::Number(millis)) => Some(*millis),
            _ => None,
        }
        .or(match file.upload_timestamp {
            Some(Scalar::Number(millis)) if millis > 0 => Some(millis),
            _ => None,
        });
        entries.push(ListEntry {
            file_id: text(&file.file_id),
            name: file.file_name,
            action,
            size_bytes,
            expected,
            mtime_ms,
        });
    }
    Ok(ListPage {
        entries,
        next_file_name: page.next_file_name,
    })
}

/// A server that sends a `nextFileName` not past this page would make us
/// list forever: refuse it. `start` is the page's own `startFileName`.
/// `startFileName` is inclusive, so entries before it mean the server went
/// backwards (or ignored the start and repeats its first page).
pub fn check_progress(start: Option<&str>, page: &ListPage) -> Result<(), String> {
    if let Some(start) = start {
        if let Some(entry) = page
            .entries
            .iter()
            .find(|entry| entry.name.as_str() < start)
        {
            return Err(format!(
                "listing went backwards: {:?} comes before this page's startFileName {start:?}; the server would repeat names forever",
                entry.name
            ));
        }
    }
    let Some(next) = page.next_file_name.as_deref() else {
        return Ok(());
    };
    let last = page.entries.last().map(|entry| entry.name.as_str());
    for floor in [start, last].into_iter().flatten() {
        if next <= floor {
            return Err(format!(
                "listing loop: nextFileName {next:?} is not past {floor:?}; the server would repeat names forever"
            ));
        }
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
    file_info: Option<RawInfo>,
    #[serde(default)]
    upload_timestamp: Option<Scalar>,
}

#[derive(Default, Deserialize)]
struct RawInfo {
    #[serde(default)]
    large_file_sha1: Option<Scalar>,
    #[serde(default)]
    src_last_modified_millis: Option<Scalar>,
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

/// A JSON value of a field read leniently (as the old `Value::as_str` /
/// `as_u64` did): arrays and objects are skipped without being stored.
enum Scalar {
    Text(String),
    Number(u64),
    Other,
}

impl Scalar {
    fn text(&self) -> Option<&str> {
        match self {
            Scalar::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
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
        assert_eq!(page.entries[3].action, Action::Other);
        assert_eq!(page.entries[4].size_bytes, 3);
        assert_eq!(page.entries[4].expected, ExpectedSha1::None);
        assert_eq!(page.next_file_name.as_deref(), Some("dir/zz"));
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
                .map(|name| ListEntry {
                    name: name.to_string(),
                    file_id: None,
                    action: Action::Upload,
                    size_bytes: 0,
                    expected: ExpectedSha1::None,
                    mtime_ms: None,
                })
                .collect(),
            next_file_name: next.map(str::to_string),
        }
    }

    #[test]
    fn detects_listing_loops() {
        assert!(check_progress(None, &page(&["a", "b"], Some("c"))).is_ok());
        assert!(check_progress(None, &page(&["a", "b"], Some("b\0"))).is_ok());
        assert!(check_progress(None, &page(&["a", "b"], None)).is_ok());
        assert!(check_progress(None, &page(&["a", "b"], Some("b"))).is_err());
        assert!(check_progress(None, &page(&["a", "b"], Some("a"))).is_err());
        assert!(check_progress(Some("m"), &page(&[], Some("m"))).is_err());
        assert!(check_progress(Some("m"), &page(&[], Some("n"))).is_ok());
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
    fn detects_pages_that_repeat_or_go_backwards() {
        // A server that ignores startFileName and repeats its first page.
        let repeated = page(&["a", "b"], Some("c"));
        assert!(check_progress(None, &repeated).is_ok());
        let error = check_progress(Some("c"), &repeated).unwrap_err();
        assert!(error.contains("went backwards"), "{error}");
        // nextFileName equal to the start of an empty page.
        assert!(check_progress(Some("c"), &page(&[], Some("c"))).is_err());
        // nextFileName behind the start even though past the last name.
        assert!(check_progress(Some("m"), &page(&["m"], Some("l"))).is_err());
        // The start itself may be listed (startFileName is inclusive).
        assert!(check_progress(Some("c"), &page(&["c", "d"], Some("e"))).is_ok());
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
            serde_json::from_slice(&request_body("b1", "p/", Some("p/x"), 1_000_000)).unwrap();
        assert_eq!(body["maxFileCount"], 10_000);
        assert_eq!(body["startFileName"], "p/x");
        assert_eq!(body["prefix"], "p/");
        let reply = br#"{"buckets":[{"bucketId":"id1","bucketName":"bkt"}]}"#;
        assert_eq!(
            parse_bucket_id(reply, "bkt").unwrap().as_deref(),
            Some("id1")
        );
        assert_eq!(parse_bucket_id(reply, "other").unwrap(), None);
    }
}

//! `b2_list_file_names` pages: request bodies, parsing, and the listing-loop
//! check. I/O-free; `restore` drives the requests from its listing thread.

use serde_json::{Value, json};

use crate::b2::ExpectedSha1;
use crate::config::LIST_PAGE_FILES_MAX;

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

/// The JSON body of one `b2_list_file_names` request.
pub fn request_body(bucket_id: &str, prefix: &str, start_file_name: Option<&str>) -> Vec<u8> {
    let mut body = json!({
        "bucketId": bucket_id,
        "maxFileCount": LIST_PAGE_FILES_MAX,
        "prefix": prefix,
    });
    if let Some(start) = start_file_name {
        body["startFileName"] = Value::String(start.to_string());
    }
    serde_json::to_vec(&body).expect("list request serialises")
}

/// The `bucketId` from a `b2_list_buckets` reply for `bucket_name`.
pub fn parse_bucket_id(body: &[u8], bucket_name: &str) -> Result<Option<String>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|error| format!("invalid JSON: {error}"))?;
    let buckets = value["buckets"]
        .as_array()
        .ok_or("no \"buckets\" array in the reply")?;
    Ok(buckets
        .iter()
        .find(|bucket| bucket["bucketName"].as_str() == Some(bucket_name))
        .and_then(|bucket| bucket["bucketId"].as_str())
        .map(str::to_string))
}

/// The fields of a page a restore reads. Typed, so a 10,000-name page
/// (~5 MiB of JSON with `fileInfo`) parses into the entries alone instead of
/// a `Value` tree several times its size: the listing's memory stays flat.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageJson {
    files: Option<Vec<FileJson>>,
    #[serde(default)]
    next_file_name: Option<Value>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileJson {
    file_name: Option<String>,
    action: Option<String>,
    content_length: Option<Value>,
    size: Option<Value>,
    content_sha1: Option<Value>,
    file_id: Option<Value>,
    upload_timestamp: Option<Value>,
    file_info: Option<FileInfoJson>,
}

#[derive(serde::Deserialize, Default)]
struct FileInfoJson {
    large_file_sha1: Option<Value>,
    src_last_modified_millis: Option<Value>,
}

/// Parses one page. Entries keep the server's order.
pub fn parse_page(body: &[u8]) -> Result<ListPage, String> {
    let page: PageJson =
        serde_json::from_slice(body).map_err(|error| format!("invalid JSON: {error}"))?;
    let files = page.files.ok_or("no \"files\" array in the reply")?;
    let mut entries = Vec::with_capacity(files.len());
    for file in files {
        let name = file.file_name.ok_or("a file entry without fileName")?;
        let action = match file.action.as_deref() {
            Some("upload") | None => Action::Upload,
            Some("folder") => Action::Folder,
            Some(_) => Action::Other,
        };
        let content_length = file.content_length.as_ref().and_then(Value::as_u64);
        let size = file.size.as_ref().and_then(Value::as_u64);
        if action == Action::Upload && content_length.is_none() && size.is_none() {
            return Err(format!("{name:?}: no contentLength"));
        }
        let info = file.file_info.unwrap_or_default();
        let expected = crate::b2::expected_sha1(
            file.content_sha1.as_ref().and_then(Value::as_str),
            info.large_file_sha1.as_ref().and_then(Value::as_str),
        );
        let mtime_ms = match &info.src_last_modified_millis {
            Some(Value::String(text)) => text.parse().ok(),
            Some(other) => other.as_u64(),
            None => None,
        }
        .or_else(|| {
            file.upload_timestamp
                .as_ref()
                .and_then(Value::as_u64)
                .filter(|&t| t > 0)
        });
        entries.push(ListEntry {
            name,
            file_id: file
                .file_id
                .as_ref()
                .and_then(Value::as_str)
                .map(str::to_string),
            action,
            size_bytes: content_length.or(size).unwrap_or(0),
            expected,
            mtime_ms,
        });
    }
    let next_file_name = match page.next_file_name {
        None | Some(Value::Null) => None,
        Some(Value::String(next)) => Some(next),
        Some(other) => return Err(format!("nextFileName is not a string: {other}")),
    };
    Ok(ListPage {
        entries,
        next_file_name,
    })
}

/// A server that sends a `nextFileName` not past this page would make us
/// list forever: refuse it. `start` is the page's own `startFileName`.
pub fn check_progress(start: Option<&str>, page: &ListPage) -> Result<(), String> {
    let Some(next) = page.next_file_name.as_deref() else {
        return Ok(());
    };
    let last = page.entries.last().map(|entry| entry.name.as_str());
    let floor = last.or(start).unwrap_or("");
    if next <= floor {
        return Err(format!(
            "listing loop: nextFileName {next:?} is not past {floor:?}; the server would repeat names forever"
        ));
    }
    Ok(())
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

    #[test]
    fn detects_listing_loops() {
        let page = |names: &[&str], next: Option<&str>| ListPage {
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
        };
        assert!(check_progress(None, &page(&["a", "b"], Some("c"))).is_ok());
        assert!(check_progress(None, &page(&["a", "b"], Some("b\0"))).is_ok());
        assert!(check_progress(None, &page(&["a", "b"], None)).is_ok());
        assert!(check_progress(None, &page(&["a", "b"], Some("b"))).is_err());
        assert!(check_progress(None, &page(&["a", "b"], Some("a"))).is_err());
        assert!(check_progress(Some("m"), &page(&[], Some("m"))).is_err());
        assert!(check_progress(Some("m"), &page(&[], Some("n"))).is_ok());
    }

    #[test]
    fn request_and_bucket_bodies() {
        let body: Value = serde_json::from_slice(&request_body("b1", "p/", Some("p/x"))).unwrap();
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

//! Request heads we send. Everything that goes into a header line is checked
//! first, so a name or token from the network cannot inject a header; on error
//! `out` is left as it was.

use super::HttpError;
use crate::config::HTTP_REQUEST_MAX_BYTES;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("ringdown/", env!("CARGO_PKG_VERSION"));

/// Appends a `GET` or `HEAD` request head to `out`:
///
/// ```text
/// GET {path_and_query} HTTP/1.1\r\n
/// Host: {host_header}\r\n
/// Range: bytes={first}-{last}\r\n        (when `range` is given; inclusive)
/// User-Agent: ringdown/{version}\r\n
/// Accept-Encoding: identity\r\n
/// {name}: {value}\r\n                    (each of `extra_headers`, in order)
/// \r\n
/// ```
///
/// `Accept-Encoding: identity` because we hash the stored bytes: a compressed
/// body would not match `x-bz-content-sha1`.
pub fn write_get_request(
    out: &mut Vec<u8>,
    method: &str,
    host_header: &str,
    path_and_query: &str,
    range: Option<(u64, u64)>,
    extra_headers: &[(&str, &str)],
) -> Result<(), HttpError> {
    if method != "GET" && method != "HEAD" {
        return Err(HttpError::InvalidRequest(format!(
            "method {method:?} is not GET or HEAD"
        )));
    }
    check_request_target(path_and_query)?;
    check_header_value("Host", host_header)?;
    if host_header.is_empty() {
        return Err(HttpError::InvalidRequest("empty Host header".to_string()));
    }
    if let Some((first, last)) = range {
        if last < first {
            return Err(HttpError::InvalidRequest(format!(
                "range {first}-{last} ends before it starts"
            )));
        }
    }
    check_extra_headers(extra_headers)?;

    let start = out.len();
    push_line(out, &[method, " ", path_and_query, " HTTP/1.1"]);
    push_line(out, &["Host: ", host_header]);
    if let Some((first, last)) = range {
        out.extend_from_slice(format!("Range: bytes={first}-{last}\r\n").as_bytes());
    }
    push_line(out, &["User-Agent: ", USER_AGENT]);
    push_line(out, &["Accept-Encoding: identity"]);
    for (name, value) in extra_headers {
        push_line(out, &[name, ": ", value]);
    }
    out.extend_from_slice(b"\r\n");
    finish(out, start)
}

/// Appends a `POST` of a JSON body (a B2 API call): request line, `Host`,
/// `User-Agent`, `Accept-Encoding: identity`, `Content-Type:
/// application/json`, `Content-Length`, the extra headers, a blank line, then
/// `body`. Only the head is bounded by `HTTP_REQUEST_MAX_BYTES`.
pub fn write_post_json(
    out: &mut Vec<u8>,
    host_header: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HttpError> {
    check_request_target(path_and_query)?;
    check_header_value("Host", host_header)?;
    if host_header.is_empty() {
        return Err(HttpError::InvalidRequest("empty Host header".to_string()));
    }
    check_extra_headers(extra_headers)?;

    let start = out.len();
    push_line(out, &["POST ", path_and_query, " HTTP/1.1"]);
    push_line(out, &["Host: ", host_header]);
    push_line(out, &["User-Agent: ", USER_AGENT]);
    push_line(out, &["Accept-Encoding: identity"]);
    push_line(out, &["Content-Type: application/json"]);
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    for (name, value) in extra_headers {
        push_line(out, &[name, ": ", value]);
    }
    out.extend_from_slice(b"\r\n");
    finish(out, start)?;
    out.extend_from_slice(body);
    Ok(())
}

fn push_line(out: &mut Vec<u8>, parts: &[&str]) {
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), HttpError> {
    if out.len() - start > HTTP_REQUEST_MAX_BYTES {
        out.truncate(start);
        return Err(HttpError::RequestTooLarge {
            limit_bytes: HTTP_REQUEST_MAX_BYTES,
        });
    }
    Ok(())
}

/// Origin-form target: starts with `/`, no whitespace or control bytes (a space
/// would end the target, CR/LF would end the line). Callers percent-encode.
fn check_request_target(path_and_query: &str) -> Result<(), HttpError> {
    if !path_and_query.starts_with('/') {
        return Err(HttpError::InvalidRequest(format!(
            "request target {:?} does not start with /",
            super::shown(path_and_query)
        )));
    }
    if let Some(bad) = path_and_query.bytes().find(|&b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::InvalidRequest(format!(
            "request target {:?} contains byte 0x{bad:02x} (space, CR, LF or another control byte)",
            super::shown(path_and_query)
        )));
    }
    Ok(())
}

fn check_extra_headers(extra_headers: &[(&str, &str)]) -> Result<(), HttpError> {
    for (name, value) in extra_headers {
        let is_token_byte = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HttpError::InvalidRequest(format!(
                "header name {:?} is not a token",
                super::shown(name)
            )));
        }
        check_header_value(name, value)?;
    }
    Ok(())
}

/// Values may hold any visible byte, spaces and tabs; CR, LF, NUL and other
/// controls are refused (header injection, or a truncated header).
fn check_header_value(name: &str, value: &str) -> Result<(), HttpError> {
    if let Some(bad) = value
        .bytes()
        .find(|&b| (b < b' ' && b != b'\t') || b == 0x7f)
    {
        // Never echo the value: it may be a token.
        return Err(HttpError::InvalidRequest(format!(
            "value of header {:?} contains control byte 0x{bad:02x}",
            super::shown(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranged_get_exact_bytes() {
        let mut out = b"previous".to_vec();
        write_get_request(
            &mut out,
            "GET",
            "f005.backblazeb2.com",
            "/file/bkt/dir/a%20b.txt",
            Some((0, 8_388_607)),
            &[("Authorization", "4_token"), ("If-Match", "\"abc\"")],
        )
        .unwrap();
        let expected = format!(
            "previousGET /file/bkt/dir/a%20b.txt HTTP/1.1\r\n\
             Host: f005.backblazeb2.com\r\n\
             Range: bytes=0-8388607\r\n\
             User-Agent: ringdown/{}\r\n\
             Accept-Encoding: identity\r\n\
             Authorization: 4_token\r\n\
             If-Match: \"abc\"\r\n\
             \r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn head_without_range() {
        let mut out = Vec::new();
        write_get_request(&mut out, "HEAD", "127.0.0.1:8080", "/f?x=1", None, &[]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "HEAD /f?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: {USER_AGENT}\r\nAccept-Encoding: identity\r\n\r\n"
            )
        );
    }

    #[test]
    fn post_json_exact_bytes() {
        let mut out = Vec::new();
        let body = br#"{"bucketId":"b1"}"#;
        write_post_json(
            &mut out,
            "api.example",
            "/b2api/v3/b2_list_file_names",
            &[("Authorization", "t")],
            body,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "POST /b2api/v3/b2_list_file_names HTTP/1.1\r\nHost: api.example\r\nUser-Agent: {USER_AGENT}\r\n\
                 Accept-Encoding: identity\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\
                 Authorization: t\r\n\r\n{{\"bucketId\":\"b1\"}}"
            )
        );
    }

    #[test]
    fn injection_and_bad_input_are_refused_and_leave_out_untouched() {
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<(u64, u64)>,
            Vec<(&'a str, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            ("GET", "h", "/a\r\nX-Evil: 1", None, vec![]),
            ("GET", "h", "/a b", None, vec![]),
            ("GET", "h", "/a\nb", None, vec![]),
            ("GET", "h", "a", None, vec![]),
            ("GET", "h\r\nX: y", "/a", None, vec![]),
            ("GET", "", "/a", None, vec![]),
            ("GET", "h", "/a", None, vec![("X-Ok", "v\r\nX-Evil: 1")]),
            ("GET", "h", "/a", None, vec![("X-Ok", "v\0")]),
            ("GET", "h", "/a", None, vec![("Bad Name", "v")]),
            ("GET", "h", "/a", None, vec![("Bad:Name", "v")]),
            ("GET", "h", "/a", None, vec![("", "v")]),
            ("GET", "h", "/a", Some((5, 4)), vec![]),
            ("POST", "h", "/a", None, vec![]),
            ("GET\r\n", "h", "/a", None, vec![]),
        ];
        for (method, host, path, range, extra) in cases {
            let mut out = b"keep".to_vec();
            let result = write_get_request(&mut out, method, host, path, range, &extra);
            assert!(
                result.is_err(),
                "{method:?} {host:?} {path:?} {extra:?} accepted"
            );
            assert_eq!(out, b"keep");
        }
        let mut out = Vec::new();
        assert!(write_post_json(&mut out, "h", "/a", &[("A", "b\nc")], b"{}").is_err());
        assert!(out.is_empty());
        let error = write_get_request(
            &mut out,
            "GET",
            "h",
            "/a",
            None,
            &[("Authorization", "secret\r\n")],
        )
        .unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn request_head_is_bounded() {
        let long_path = format!("/{}", "a".repeat(HTTP_REQUEST_MAX_BYTES));
        let mut out = b"keep".to_vec();
        assert_eq!(
            write_get_request(&mut out, "GET", "h", &long_path, None, &[]),
            Err(HttpError::RequestTooLarge {
                limit_bytes: HTTP_REQUEST_MAX_BYTES
            })
        );
        assert_eq!(out, b"keep");
        // A large body is fine: only the head is bounded.
        write_post_json(&mut out, "h", "/a", &[], &vec![b' '; 1 << 20]).unwrap();
    }
}

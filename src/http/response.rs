//! Response-head parsing: status, framing (Content-Length or chunked),
//! Content-Range, keep-alive and Retry-After, from bytes received so far.

use super::HttpError;
use super::range::{ContentRange, ContentRangeValue, parse_content_range_value, parse_decimal};
use crate::config::{HTTP_HEAD_MAX_BYTES, HTTP_HEADERS_MAX, RETRY_AFTER_MAX_S};
use crate::units::{days_from_civil, days_in_month};

/// A parsed response head. Header names are lowercased; values are decoded as
/// lossy UTF-8 (B2 percent-encodes anything else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head including its blank line (and any skipped 1xx heads):
    /// the body starts at `buf[head_len..]`.
    pub head_len: usize,
    pub content_length: Option<u64>,
    /// Set for a satisfied `Content-Range` (206).
    pub content_range: Option<ContentRange>,
    /// `Content-Range: bytes */N` (416): the object's length. `*/0` is an
    /// empty object, which answers every range with 416.
    pub unsatisfied_range_complete_length: Option<u64>,
    pub chunked: bool,
    /// Whether the server lets us reuse the connection after this body.
    /// A body framed by connection close ([`BodyFraming::UntilClose`]) also
    /// ends the connection whatever this says.
    pub keep_alive: bool,
    /// `Retry-After` in seconds (from seconds or an HTTP date), capped at
    /// `RETRY_AFTER_MAX_S`; `None` when absent or unparsable.
    pub retry_after_s: Option<u64>,
    /// HTTP minor version: 0 or 1.
    pub http_minor_version: u8,
    headers: Vec<(String, String)>,
}

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`: feed [`super::ChunkedDecoder`].
    Chunked,
    /// Neither length nor chunked: the body ends when the server closes.
    /// The connection cannot be reused.
    UntilClose,
}

impl ResponseHead {
    /// The first value of a header, by lowercase name.
    pub fn header(&self, name_lowercase: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name == name_lowercase)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of a header, in order, by lowercase name.
    pub fn header_all<'a>(&'a self, name_lowercase: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(name, _)| name == name_lowercase)
            .map(|(_, value)| value.as_str())
    }

    /// All headers in order, names lowercased.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// How to read the body. `request_was_head`: the request was `HEAD`, whose
    /// response never has a body whatever its headers say.
    pub fn body_framing(&self, request_was_head: bool) -> BodyFraming {
        if request_was_head
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            BodyFraming::Empty
        } else if self.chunked {
            BodyFraming::Chunked
        } else if let Some(length) = self.content_length {
            BodyFraming::Length(length)
        } else {
            BodyFraming::UntilClose
        }
    }
}

/// Parses a response head from the bytes received so far: `Ok(None)` means
/// more bytes are needed. Interim 1xx heads (100 Continue, 103 Early Hints) are
/// skipped and counted in `head_len`. An HTTP-date `Retry-After` is measured
/// against the system clock; use [`parse_response_head_at`] to pass one.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, HttpError> {
    let now_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    parse_response_head_at(buf, now_unix_s)
}

/// [`parse_response_head`] with the current time given (seconds since the Unix
/// epoch), for a `Retry-After` sent as an HTTP date.
pub fn parse_response_head_at(
    buf: &[u8],
    now_unix_s: u64,
) -> Result<Option<ResponseHead>, HttpError> {
    // Parsing only the first HTTP_HEAD_MAX_BYTES makes the answer independent of
    // how many body bytes came with the head, and bounds the work per call.
    let window = &buf[..buf.len().min(HTTP_HEAD_MAX_BYTES)];
    let mut offset = 0;
    loop {
        let mut header_slots = [httparse::EMPTY_HEADER; HTTP_HEADERS_MAX];
        let mut response = httparse::Response::new(&mut header_slots);
        let head_len = match response.parse(&window[offset..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= HTTP_HEAD_MAX_BYTES {
                    Err(HttpError::HeadTooLarge {
                        limit_bytes: HTTP_HEAD_MAX_BYTES,
                    })
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::TooManyHeaders {
                    limit: HTTP_HEADERS_MAX,
                });
            }
            Err(other) => return Err(HttpError::MalformedHead(describe(other))),
        };
        let status = response
            .code
            .ok_or(HttpError::MalformedHead("no status code"))?;
        if status == 101 {
            return Err(HttpError::UnexpectedUpgrade);
        }
        if (100..200).contains(&status) {
            offset += head_len;
            continue;
        }
        let minor = response
            .version
            .ok_or(HttpError::MalformedHead("no HTTP version"))?;
        return build_head(
            status,
            minor,
            offset + head_len,
            response.headers,
            now_unix_s,
        )
        .map(Some);
    }
}

fn build_head(
    status: u16,
    http_minor_version: u8,
    head_len: usize,
    raw_headers: &[httparse::Header<'_>],
    now_unix_s: u64,
) -> Result<ResponseHead, HttpError> {
    let mut headers = Vec::with_capacity(raw_headers.len());
    let mut content_length: Option<u64> = None;
    let mut content_range = None;
    let mut unsatisfied_range_complete_length = None;
    let mut transfer_codings: Vec<String> = Vec::new();
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut retry_after_s = None;

    for header in raw_headers {
        let name = header.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(header.value)
            .trim_matches([' ', '\t'])
            .to_string();
        match name.as_str() {
            "content-length" => {
                // RFC 9110 §8.6: a list of identical values may be treated as one.
                for item in value.split(',') {
                    let item = item.trim_matches([' ', '\t']);
                    let length = parse_decimal(item)
                        .ok_or_else(|| HttpError::InvalidContentLength(super::shown(&value)))?;
                    match content_length {
                        Some(first) if first != length => {
                            return Err(HttpError::ConflictingContentLength {
                                first,
                                second: length,
                            });
                        }
                        _ => content_length = Some(length),
                    }
                }
            }
            "transfer-encoding" => {
                transfer_codings.extend(
                    value
                        .split(',')
                        .map(|coding| coding.trim_matches([' ', '\t']).to_ascii_lowercase())
                        .filter(|coding| !coding.is_empty()),
                );
            }
            "connection" => {
                for token in value.split(',') {
                    let token = token.trim_matches([' ', '\t']);
                    connection_close |= token.eq_ignore_ascii_case("close");
                    connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
            "content-range" => {
                let parsed = parse_content_range_value(&value)?;
                let first = match (content_range, unsatisfied_range_complete_length) {
                    (Some(range), _) => Some(ContentRangeValue::Satisfied(range)),
                    (None, Some(complete_length)) => {
                        Some(ContentRangeValue::Unsatisfied { complete_length })
                    }
                    (None, None) => None,
                };
                // One range per answer: of two that disagree, the last one
                // won, and planned a 999-byte object from a probe of 3 MB
                // (h41 #6). A framing error, as two Content-Lengths are.
                if first.is_some_and(|first| first != parsed) {
                    return Err(HttpError::InvalidContentRange {
                        value: super::shown(&value),
                        reason: "a second Content-Range that disagrees with the first",
                    });
                }
                match parsed {
                    ContentRangeValue::Satisfied(range) => content_range = Some(range),
                    ContentRangeValue::Unsatisfied { complete_length } => {
                        unsatisfied_range_complete_length = Some(complete_length)
                    }
                }
            }
            "retry-after" if retry_after_s.is_none() => {
                retry_after_s = self::retry_after_s(&value, now_unix_s);
            }
            _ => {}
        }
        headers.push((name, value));
    }

    let chunked = match transfer_codings.as_slice() {
        [] => false,
        [only] if only == "chunked" => true,
        _ => {
            return Err(HttpError::UnsupportedTransferEncoding(super::shown(
                &transfer_codings.join(", "),
            )));
        }
    };
    if chunked && content_length.is_some() {
        return Err(HttpError::ContentLengthWithChunked);
    }
    let keep_alive = if http_minor_version == 0 {
        connection_keep_alive && !connection_close
    } else {
        !connection_close
    };
    Ok(ResponseHead {
        status,
        head_len,
        content_length,
        content_range,
        unsatisfied_range_complete_length,
        chunked,
        keep_alive,
        retry_after_s,
        http_minor_version,
        headers,
    })
}

/// `Retry-After` (RFC 9110 §10.2.3) in seconds from `now_unix_s`: delay-seconds
/// or an HTTP date (a date in the past is 0). Capped at `RETRY_AFTER_MAX_S`;
/// `None` when the value is neither.
pub fn retry_after_s(value: &str, now_unix_s: u64) -> Option<u64> {
    let value = value.trim_matches([' ', '\t']);
    let seconds = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // A delay too large for u64 is still "a long time": saturate.
        parse_decimal(value).unwrap_or(u64::MAX)
    } else {
        parse_http_date(value)?.saturating_sub(now_unix_s)
    };
    Some(seconds.min(RETRY_AFTER_MAX_S))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7)
/// into seconds since the Unix epoch. The obsolete RFC 850 and asctime forms
/// are not accepted (no B2 or common origin sends them).
pub fn parse_http_date(value: &str) -> Option<u64> {
    let bytes = value.as_bytes();
    if bytes.len() != 29
        || &bytes[3..5] != b", "
        || bytes[7] != b' '
        || bytes[11] != b' '
        || bytes[16] != b' '
    {
        return None;
    }
    if bytes[19] != b':' || bytes[22] != b':' || &bytes[25..] != b" GMT" {
        return None;
    }
    const DAY_NAMES: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTH_NAMES: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    if !DAY_NAMES.contains(&&bytes[0..3]) {
        return None;
    }
    let day = digits(&bytes[5..7])?;
    let month = MONTH_NAMES.iter().position(|name| *name == &bytes[8..11])? as u64 + 1;
    let year = digits(&bytes[12..16])?;
    let hour = digits(&bytes[17..19])?;
    let minute = digits(&bytes[20..22])?;
    let second = digits(&bytes[23..25])?;
    if year < 1970
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "not an HTTP/1.x response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn parse(text: &str) -> Result<Option<ResponseHead>, HttpError> {
        parse_response_head_at(text.as_bytes(), NOW)
    }

    fn full(text: &str) -> ResponseHead {
        parse(text).unwrap().expect("complete head")
    }

    const B2_RANGE_RESPONSE: &str = "HTTP/1.1 206 Partial Content\r\n\
        Server: nginx\r\n\
        Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n\
        Content-Type: text/plain\r\n\
        Content-Length: 4\r\n\
        Content-Range: bytes 2-5/11\r\n\
        x-bz-file-id: 4_zabc_f1\r\n\
        x-bz-file-name: dir/a%20b.txt\r\n\
        x-bz-content-sha1: 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed\r\n\
        X-Bz-Upload-Timestamp: 1700000000123\r\n\
        ETag: \"abc\"\r\n\
        \r\n\
        llo ";

    #[test]
    fn every_split_gives_none_then_the_same_head() {
        let bytes = B2_RANGE_RESPONSE.as_bytes();
        let whole = parse_response_head_at(bytes, NOW).unwrap().unwrap();
        assert_eq!(&bytes[whole.head_len..], b"llo ");
        for split in 0..whole.head_len {
            assert_eq!(
                parse_response_head_at(&bytes[..split], NOW).unwrap(),
                None,
                "split at {split}"
            );
        }
        for end in whole.head_len..=bytes.len() {
            assert_eq!(
                parse_response_head_at(&bytes[..end], NOW).unwrap().as_ref(),
                Some(&whole)
            );
        }
        assert_eq!(whole.status, 206);
        assert_eq!(whole.content_length, Some(4));
        assert_eq!(
            whole.content_range,
            Some(ContentRange {
                first: 2,
                last: 5,
                complete_length: Some(11)
            })
        );
        assert!(whole.keep_alive);
        assert!(!whole.chunked);
        assert_eq!(whole.header("x-bz-file-name"), Some("dir/a%20b.txt"));
        assert_eq!(whole.header("x-bz-upload-timestamp"), Some("1700000000123"));
        assert_eq!(whole.header("etag"), Some("\"abc\""));
        assert_eq!(whole.header("missing"), None);
        assert_eq!(whole.body_framing(false), BodyFraming::Length(4));
        assert_eq!(whole.body_framing(true), BodyFraming::Empty);
    }

    #[test]
    fn interim_responses_are_skipped_at_every_split() {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let whole = full(text);
        assert_eq!(whole.status, 200);
        assert_eq!(whole.head_len, text.len());
        for split in 0..text.len() {
            assert_eq!(parse(&text[..split]).unwrap(), None, "split at {split}");
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(full("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            !full("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        assert!(
            !full("HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(!full("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            full("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        let until_close = full("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(until_close.body_framing(false), BodyFraming::UntilClose);
        assert_eq!(
            full("HTTP/1.1 204 No Content\r\n\r\n").body_framing(false),
            BodyFraming::Empty
        );
    }

    #[test]
    fn chunked_framing() {
        let head = full("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(head.chunked);
        assert_eq!(head.body_framing(false), BodyFraming::Chunked);
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            Err(HttpError::ContentLengthWithChunked)
        );
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(HttpError::UnsupportedTransferEncoding(_))
        ));
        assert!(matches!(
            parse(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Err(HttpError::UnsupportedTransferEncoding(_))
        ));
    }

    #[test]
    fn a_second_content_range_must_agree_with_the_first() {
        let head = |ranges: &str| {
            parse(&format!(
                "HTTP/1.1 206 P\r\n{ranges}Content-Length: 1\r\n\r\n"
            ))
        };
        let same = head("Content-Range: bytes 0-0/3000\r\nContent-Range: bytes 0-0/3000\r\n");
        assert!(same.is_ok(), "{same:?}");
        for other in ["bytes 0-0/999", "bytes */3000", "bytes 1-1/3000"] {
            let two = head(&format!(
                "Content-Range: bytes 0-0/3000\r\nContent-Range: {other}\r\n"
            ));
            assert!(
                matches!(two, Err(HttpError::InvalidContentRange { .. })),
                "{other}: {two:?}"
            );
        }
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(
            full("HTTP/1.1 200 OK\r\nContent-Length: 42\r\nContent-Length: 42\r\n\r\n")
                .content_length,
            Some(42)
        );
        assert_eq!(
            full("HTTP/1.1 200 OK\r\nContent-Length: 42, 42\r\n\r\n").content_length,
            Some(42)
        );
        assert_eq!(
            full("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n").content_length,
            Some(u64::MAX)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 42\r\nContent-Length: 43\r\n\r\n"),
            Err(HttpError::ConflictingContentLength {
                first: 42,
                second: 43
            })
        );
        for bad in [
            "-1",
            "18446744073709551616",
            "99999999999999999999999",
            "",
            "1.5",
            "+5",
            "0x10",
            "4 2",
            "42,",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(parse(&text), Err(HttpError::InvalidContentLength(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn size_limits() {
        // A head just under the limit is fine, one over is refused.
        let mut text = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        let filler_len = HTTP_HEAD_MAX_BYTES - text.len() - "x-pad: \r\n\r\n".len();
        text.push_str(&format!("x-pad: {}\r\n\r\n", "a".repeat(filler_len)));
        assert_eq!(text.len(), HTTP_HEAD_MAX_BYTES);
        assert_eq!(full(&text).head_len, HTTP_HEAD_MAX_BYTES);
        let over = text.replacen("x-pad: ", "x-pad: a", 1);
        assert_eq!(
            parse(&over),
            Err(HttpError::HeadTooLarge {
                limit_bytes: HTTP_HEAD_MAX_BYTES
            })
        );

        let huge_line = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "b".repeat(1 << 20));
        assert_eq!(
            parse(&huge_line),
            Err(HttpError::HeadTooLarge {
                limit_bytes: HTTP_HEAD_MAX_BYTES
            })
        );
        // Never-ending head without a blank line.
        let endless = "HTTP/1.1 200 OK\r\n".to_string() + &"x: y\r\n".repeat(10);
        assert_eq!(parse(&endless), Ok(None));

        let many = "HTTP/1.1 200 OK\r\n".to_string() + &"a: b\r\n".repeat(10_000) + "\r\n";
        assert_eq!(
            parse(&many),
            Err(HttpError::TooManyHeaders {
                limit: HTTP_HEADERS_MAX
            })
        );
        let exactly =
            "HTTP/1.1 200 OK\r\n".to_string() + &"a: b\r\n".repeat(HTTP_HEADERS_MAX) + "\r\n";
        assert_eq!(full(&exactly).header_all("a").count(), HTTP_HEADERS_MAX);
        let one_more =
            "HTTP/1.1 200 OK\r\n".to_string() + &"a: b\r\n".repeat(HTTP_HEADERS_MAX + 1) + "\r\n";
        assert_eq!(
            parse(&one_more),
            Err(HttpError::TooManyHeaders {
                limit: HTTP_HEADERS_MAX
            })
        );
    }

    #[test]
    fn malformed_heads() {
        for bad in [
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx y: z\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Range: bytes 9-1/10\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse("HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(HttpError::UnexpectedUpgrade)
        );
    }

    #[test]
    fn unsatisfied_range_of_an_empty_object() {
        let head = full(
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */0\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(head.status, 416);
        assert_eq!(head.content_range, None);
        assert_eq!(head.unsatisfied_range_complete_length, Some(0));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(retry_after_s("1", NOW), Some(1));
        assert_eq!(retry_after_s(" 120 ", NOW), Some(120));
        assert_eq!(retry_after_s("100000", NOW), Some(RETRY_AFTER_MAX_S));
        assert_eq!(
            retry_after_s("99999999999999999999999", NOW),
            Some(RETRY_AFTER_MAX_S)
        );
        assert_eq!(retry_after_s("-1", NOW), None);
        assert_eq!(retry_after_s("soon", NOW), None);
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"), Some(NOW));
        assert_eq!(
            retry_after_s("Tue, 14 Nov 2023 22:13:50 GMT", NOW),
            Some(30)
        );
        assert_eq!(retry_after_s("Tue, 14 Nov 2023 22:00:00 GMT", NOW), Some(0));
        assert_eq!(
            retry_after_s("Wed, 15 Nov 2023 22:13:20 GMT", NOW),
            Some(RETRY_AFTER_MAX_S)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(951_782_400)
        );
        assert_eq!(
            parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(253_402_300_799)
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 0a Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?} accepted");
        }
        let head = full(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: Tue, 14 Nov 2023 22:13:21 GMT\r\n\r\n",
        );
        assert_eq!(head.retry_after_s, Some(1));
    }
}

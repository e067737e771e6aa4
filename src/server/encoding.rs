//! I/O-free text helpers of the server: URL percent-encoding as b2sdk does it,
//! percent-decoding of paths and query strings, the `Range` header parser,
//! and the bound on client input quoted in error messages.

use std::borrow::Cow;

pub use crate::b2::b2_url_encode;

use super::config::ECHOED_INPUT_MAX_CHARS;

/// Client input as an error message may quote it: at most
/// `ECHOED_INPUT_MAX_CHARS` characters, a longer value cut there and ended
/// with `…`. Every message that quotes what a client sent goes through it.
pub fn echoed(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(ECHOED_INPUT_MAX_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut_at, _)) => Cow::Owned(format!("{}…", &text[..cut_at])),
    }
}

/// Percent-decodes once. `plus_is_space` is for query strings (form encoding);
/// paths keep `+` literally. Returns `None` for a malformed escape or bytes
/// that are not UTF-8 (B2 names are UTF-8).
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let decoded = if plus_is_space {
        crate::b2::percent_decode_plus(text)
    } else {
        crate::b2::percent_decode(text)
    };
    String::from_utf8(decoded.ok()?).ok()
}

/// Splits a query string into decoded `(key, value)` pairs; malformed pairs
/// are returned as `Err` with the offending text.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|part| !part.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let bad = || format!("bad query parameter {:?}", echoed(part));
        let key = percent_decode(key, true).ok_or_else(bad)?;
        let value = percent_decode(value, true).ok_or_else(bad)?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// What a `Range` header asks of an object of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole object with 200. Multi-range and
    /// syntactically invalid headers land here too (RFC 9110 allows ignoring).
    Whole,
    /// Serve bytes `start..=end` with 206.
    Slice { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Resolves a `Range` header value against the object size.
pub fn parse_range(header: Option<&str>, size_bytes: u64) -> RangeRequest {
    let Some(header) = header else {
        return RangeRequest::Whole;
    };
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if first.is_empty() {
        // Suffix range: the last n bytes.
        if !digits(last) {
            return RangeRequest::Whole;
        }
        // Past u64: more than any object holds, so all of it (RFC 9110: a
        // suffix longer than the object selects the whole object), as a 206.
        let suffix_bytes = last.parse::<u64>().unwrap_or(u64::MAX);
        if suffix_bytes == 0 || size_bytes == 0 {
            return RangeRequest::Unsatisfiable;
        }
        let start = size_bytes.saturating_sub(suffix_bytes);
        return RangeRequest::Slice {
            start,
            end: size_bytes - 1,
        };
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return RangeRequest::Whole;
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Unsatisfiable;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        // Past u64: clamped to the end of the object like any long range.
        last.parse::<u64>().unwrap_or(u64::MAX)
    };
    if end < start {
        return RangeRequest::Whole;
    }
    if start >= size_bytes {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Slice {
        start,
        end: end.min(size_bytes - 1),
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    crate::verify::to_hex(bytes)
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(hex_value(pair[0])? << 4 | hex_value(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_python_quote() {
        assert_eq!(b2_url_encode("a b+c/d~e.f_g-h"), "a%20b%2Bc/d~e.f_g-h");
        assert_eq!(b2_url_encode("é"), "%C3%A9");
        assert_eq!(b2_url_encode("%"), "%25");
    }

    #[test]
    fn decodes_once() {
        assert_eq!(percent_decode("%252e", false).unwrap(), "%2e");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert_eq!(percent_decode("%2e%2E", false).unwrap(), "..");
        assert!(percent_decode("%zz", false).is_none());
        assert!(percent_decode("%f", false).is_none());
        assert!(percent_decode("%ff", false).is_none());
    }

    #[test]
    fn echoed_input_is_cut_at_its_bound() {
        assert_eq!(echoed("4_zabc"), "4_zabc");
        let at_bound = "é".repeat(ECHOED_INPUT_MAX_CHARS);
        assert_eq!(echoed(&at_bound), at_bound);
        let over = format!("{at_bound}x");
        assert_eq!(echoed(&over), format!("{at_bound}…"));
        let long = "x".repeat(100_000);
        assert_eq!(echoed(&long).chars().count(), ECHOED_INPUT_MAX_CHARS + 1);
        assert!(parse_query(&format!("a=%zz{long}")).unwrap_err().len() < 300);
    }

    #[test]
    fn query_pairs() {
        let pairs = parse_query("fileId=4_z&Authorization=a%2Bb&x").unwrap();
        assert_eq!(pairs[1], ("Authorization".into(), "a+b".into()));
        assert_eq!(pairs[2], ("x".into(), "".into()));
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(
            parse_range(Some("bytes=0-0"), 10),
            Slice { start: 0, end: 0 }
        );
        assert_eq!(
            parse_range(Some("bytes=9-9"), 10),
            Slice { start: 9, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=3-"), 10),
            Slice { start: 3, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=3-100"), 10),
            Slice { start: 3, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-4"), 10),
            Slice { start: 6, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-40"), 10),
            Slice { start: 0, end: 9 }
        );
        // Numbers past u64 clamp, in either position.
        assert_eq!(
            parse_range(Some("bytes=0-99999999999999999999999"), 10),
            Slice { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-99999999999999999999999"), 10),
            Slice { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-99999999999999999999999"), 0),
            Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 10),
            Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-5"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=a-b"), 10), Whole);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
        assert_eq!(unhex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(unhex("0").is_none());
    }
}

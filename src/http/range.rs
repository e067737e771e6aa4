//! `Content-Range` (RFC 9110 §14.4): `bytes FIRST-LAST/COMPLETE`,
//! `bytes FIRST-LAST/*` and the unsatisfied form `bytes */COMPLETE` of a 416.

use super::HttpError;

/// A satisfied byte range: `first..=last` of an object of `complete_length`
/// bytes (`None` when the server sent `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub complete_length: Option<u64>,
}

impl ContentRange {
    /// Bytes in the range (`last - first + 1`); `None` only for the one range
    /// `0-u64::MAX`, whose length does not fit.
    pub fn len_bytes(&self) -> Option<u64> {
        (self.last - self.first).checked_add(1)
    }
}

/// Either form a `Content-Range` value can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRangeValue {
    Satisfied(ContentRange),
    /// `bytes */N`, sent with 416: the object has `complete_length` bytes.
    Unsatisfied {
        complete_length: u64,
    },
}

/// Parses a satisfied `Content-Range`; the unsatisfied form is an error here
/// (use [`parse_content_range_value`] for 416 responses).
pub fn parse_content_range(value: &str) -> Result<ContentRange, HttpError> {
    match parse_content_range_value(value)? {
        ContentRangeValue::Satisfied(range) => Ok(range),
        ContentRangeValue::Unsatisfied { .. } => Err(invalid(
            value,
            "unsatisfied range (bytes */N) where a range was expected",
        )),
    }
}

/// Parses any `Content-Range` value.
pub fn parse_content_range_value(value: &str) -> Result<ContentRangeValue, HttpError> {
    let trimmed = value.trim_matches([' ', '\t']);
    let (unit, rest) = trimmed
        .split_once(' ')
        .ok_or_else(|| invalid(value, "expected \"bytes FIRST-LAST/LENGTH\""))?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(invalid(value, "range unit is not bytes"));
    }
    let (range_text, complete_text) = rest
        .split_once('/')
        .ok_or_else(|| invalid(value, "missing \"/LENGTH\""))?;
    let complete_length =
        if complete_text == "*" {
            None
        } else {
            Some(parse_decimal(complete_text).ok_or_else(|| {
                invalid(value, "complete length is not a decimal number below 2^64")
            })?)
        };
    if range_text == "*" {
        let complete_length =
            complete_length.ok_or_else(|| invalid(value, "\"*/*\" says nothing"))?;
        return Ok(ContentRangeValue::Unsatisfied { complete_length });
    }
    let (first_text, last_text) = range_text
        .split_once('-')
        .ok_or_else(|| invalid(value, "expected FIRST-LAST"))?;
    let first = parse_decimal(first_text)
        .ok_or_else(|| invalid(value, "first byte is not a decimal number below 2^64"))?;
    let last = parse_decimal(last_text)
        .ok_or_else(|| invalid(value, "last byte is not a decimal number below 2^64"))?;
    if last < first {
        return Err(invalid(value, "last byte is before the first"));
    }
    if let Some(complete) = complete_length {
        if last >= complete {
            return Err(invalid(value, "last byte is past the end of the object"));
        }
    }
    Ok(ContentRangeValue::Satisfied(ContentRange {
        first,
        last,
        complete_length,
    }))
}

/// Digits only: no sign, no spaces, no empty string; `None` on overflow.
pub(super) fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.bytes().try_fold(0u64, |acc, digit| {
        acc.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

fn invalid(value: &str, reason: &'static str) -> HttpError {
    HttpError::InvalidContentRange {
        value: super::shown(value),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfied_forms() {
        assert_eq!(
            parse_content_range("bytes 0-499/1234").unwrap(),
            ContentRange {
                first: 0,
                last: 499,
                complete_length: Some(1234)
            }
        );
        assert_eq!(
            parse_content_range("bytes 500-999/*").unwrap(),
            ContentRange {
                first: 500,
                last: 999,
                complete_length: None
            }
        );
        assert_eq!(
            parse_content_range("BYTES 7-7/8").unwrap().len_bytes(),
            Some(1)
        );
        let max = u64::MAX;
        let range = parse_content_range(&format!("bytes 0-{}/{max}", max - 1)).unwrap();
        assert_eq!(range.len_bytes(), Some(max));
        assert_eq!(
            parse_content_range(&format!("bytes 0-{max}/*"))
                .unwrap()
                .len_bytes(),
            None
        );
    }

    #[test]
    fn unsatisfied_form() {
        assert_eq!(
            parse_content_range_value("bytes */0").unwrap(),
            ContentRangeValue::Unsatisfied { complete_length: 0 }
        );
        assert_eq!(
            parse_content_range_value("bytes */1234").unwrap(),
            ContentRangeValue::Unsatisfied {
                complete_length: 1234
            }
        );
        assert!(parse_content_range("bytes */1234").is_err());
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in [
            "",
            "bytes",
            "bytes ",
            "items 0-1/2",
            "bytes 0-1",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes -1-4/10",
            "bytes +1-4/10",
            "bytes 1 -4/10",
            "bytes 0-18446744073709551616/*",
            "bytes 0-1/18446744073709551616",
            "bytes 0x1-2/3",
            "bytes */*",
            "bytes 1-2/-3",
            "bytes 1-/3",
            "bytes -2/3",
        ] {
            assert!(
                parse_content_range_value(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn error_says_why() {
        let message = parse_content_range("bytes 5-4/10").unwrap_err().to_string();
        assert!(message.contains("before the first"), "{message}");
    }
}

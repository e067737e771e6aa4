//! Percent-encoding of object names, exactly as b2sdk's `b2_url_encode`
//! (Python `quote(name.encode("utf-8"), safe="/")`), and decoding of names
//! and `x-bz-info-*` values the server sends back.

use std::fmt;

/// Keeps `A-Z a-z 0-9 _ . - ~ /`; every other byte of the UTF-8 name becomes
/// `%XX` with uppercase hex.
pub fn b2_url_encode(name: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(name.len());
    for &byte in name.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-' | b'~' | b'/') {
            encoded.push(byte as char);
        } else {
            encoded.push('%');
            encoded.push(HEX[usize::from(byte >> 4)] as char);
            encoded.push(HEX[usize::from(byte & 0xf)] as char);
        }
    }
    encoded
}

/// A `%` not followed by two hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PercentDecodeError {
    pub position: usize,
}

impl fmt::Display for PercentDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'%' at byte {} is not followed by two hex digits",
            self.position
        )
    }
}

impl std::error::Error for PercentDecodeError {}

/// Decodes `%XX` escapes; `+` stays `+`. Returns bytes: the result need not
/// be UTF-8.
pub fn percent_decode(text: &str) -> Result<Vec<u8>, PercentDecodeError> {
    decode(text, false)
}

/// Like [`percent_decode`] but `+` is a space (Python `unquote_plus`, which
/// b2sdk applies to `x-bz-file-name`).
pub fn percent_decode_plus(text: &str) -> Result<Vec<u8>, PercentDecodeError> {
    decode(text, true)
}

fn decode(text: &str, plus_is_space: bool) -> Result<Vec<u8>, PercentDecodeError> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut position = 0;
    while position < bytes.len() {
        match bytes[position] {
            b'%' => {
                let hex_value = |offset: usize| {
                    bytes
                        .get(position + offset)
                        .and_then(|&b| (b as char).to_digit(16))
                };
                match (hex_value(1), hex_value(2)) {
                    (Some(high), Some(low)) => decoded.push((high * 16 + low) as u8),
                    _ => return Err(PercentDecodeError { position }),
                }
                position += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                position += 1;
            }
            other => {
                decoded.push(other);
                position += 1;
            }
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_python_quote_with_slash_safe() {
        assert_eq!(b2_url_encode("dir/a b+c.txt"), "dir/a%20b%2Bc.txt");
        assert_eq!(b2_url_encode("A-Z_a.z~0/9"), "A-Z_a.z~0/9");
        assert_eq!(
            b2_url_encode("!$'()*;=:@&?#%"),
            "%21%24%27%28%29%2A%3B%3D%3A%40%26%3F%23%25"
        );
        assert_eq!(b2_url_encode("café/日本"), "caf%C3%A9/%E6%97%A5%E6%9C%AC");
        assert_eq!(b2_url_encode("\u{7f}\n"), "%7F%0A");
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b+c%2b").unwrap(), b"a b+c+");
        assert_eq!(percent_decode_plus("a%20b+c%2B").unwrap(), b"a b c+");
        assert_eq!(percent_decode("%C3%a9").unwrap(), "é".as_bytes());
        assert_eq!(percent_decode("%FF").unwrap(), vec![0xff]);
        assert_eq!(
            percent_decode("abc%"),
            Err(PercentDecodeError { position: 3 })
        );
        assert_eq!(
            percent_decode("%4"),
            Err(PercentDecodeError { position: 0 })
        );
        assert_eq!(
            percent_decode("x%zz"),
            Err(PercentDecodeError { position: 1 })
        );
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(name in any::<String>()) {
            let encoded = b2_url_encode(&name);
            prop_assert!(encoded.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert_eq!(percent_decode(&encoded).unwrap(), name.as_bytes());
            prop_assert_eq!(percent_decode_plus(&encoded).unwrap(), name.as_bytes());
        }
    }
}

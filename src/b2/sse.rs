//! SSE-C: objects B2 stores encrypted with a key the customer keeps. Every
//! download (and `HEAD`) of such an object must carry the key:
//!
//! ```text
//! X-Bz-Server-Side-Encryption-Customer-Algorithm: AES256
//! X-Bz-Server-Side-Encryption-Customer-Key: base64(key)
//! X-Bz-Server-Side-Encryption-Customer-Key-Md5: base64(md5(key))
//! ```
//!
//! and B2 answers a missing or wrong key with `403 access_denied` (b2sdk
//! reads that as `SSECKeyError`). A listing marks such objects with
//! `"serverSideEncryption": {"mode": "SSE-C", "algorithm": "AES256"}`.
//! I/O-free: reading the key's text, the request headers, and the server's
//! check of them (`ringdown serve` emulates SSE-C objects).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest, Md5};

/// The one algorithm B2 offers for SSE-C.
pub const SSE_C_ALGORITHM: &str = "AES256";
/// Bytes of an AES-256 key.
pub const SSE_C_KEY_BYTES: usize = 32;

/// Where a key comes from besides `--sse-c-key-file`: the b2 CLI's variable.
pub const KEY_ENV: &str = "B2_SOURCE_SSE_C_KEY_B64";

/// Why an SSE-C object is not downloaded when no key was given.
pub const NO_KEY: &str = "encrypted with SSE-C (a key B2 does not keep): give its key with --sse-c-key-file FILE or B2_SOURCE_SSE_C_KEY_B64";

pub const HEADER_ALGORITHM: &str = "X-Bz-Server-Side-Encryption-Customer-Algorithm";
pub const HEADER_KEY: &str = "X-Bz-Server-Side-Encryption-Customer-Key";
pub const HEADER_KEY_MD5: &str = "X-Bz-Server-Side-Encryption-Customer-Key-Md5";
/// The three request headers, in the order `headers` sends them.
pub const REQUEST_HEADERS: [&str; 3] = [HEADER_ALGORITHM, HEADER_KEY, HEADER_KEY_MD5];

/// An SSE-C key, held as the header values it is sent as. `Debug` shows
/// only the key's MD5 (which B2 itself returns in response headers): the
/// key never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey {
    key_base64: String,
    key_md5_base64: String,
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomerKey(md5 {})", self.key_md5_base64)
    }
}

impl CustomerKey {
    pub fn from_bytes(key: &[u8; SSE_C_KEY_BYTES]) -> CustomerKey {
        CustomerKey {
            key_base64: BASE64.encode(key),
            key_md5_base64: BASE64.encode(Md5::digest(key)),
        }
    }

    /// A key file's contents: the 32 raw bytes, or their base64 (what
    /// `B2_SOURCE_SSE_C_KEY_B64` holds for the b2 CLI), surrounding
    /// whitespace allowed. The error never quotes the contents.
    pub fn parse(contents: &[u8]) -> Result<CustomerKey, String> {
        if let Ok(raw) = <&[u8; SSE_C_KEY_BYTES]>::try_from(contents) {
            // 32 bytes can only be the raw key: base64 of 32 bytes is 44.
            return Ok(CustomerKey::from_bytes(raw));
        }
        CustomerKey::parse_base64(contents)
    }

    /// The key's base64 only (`B2_SOURCE_SSE_C_KEY_B64`, a request header):
    /// 32 characters there are text to decode, as the b2 CLI reads them.
    pub fn parse_base64(contents: &[u8]) -> Result<CustomerKey, String> {
        let text = contents.trim_ascii();
        let decoded = std::str::from_utf8(text)
            .ok()
            .and_then(|text| BASE64.decode(text).ok())
            .ok_or_else(|| {
                format!(
                    "{} bytes that are neither a raw {SSE_C_KEY_BYTES}-byte key nor base64",
                    contents.len()
                )
            })?;
        let key = <[u8; SSE_C_KEY_BYTES]>::try_from(decoded.as_slice()).map_err(|_| {
            format!(
                "base64 of {} bytes; an SSE-C key is an AES-256 key of {SSE_C_KEY_BYTES} bytes",
                decoded.len()
            )
        })?;
        Ok(CustomerKey::from_bytes(&key))
    }

    /// base64 of the key's MD5, as B2 echoes it in
    /// `X-Bz-Server-Side-Encryption-Customer-Key-Md5`.
    pub fn md5_base64(&self) -> &str {
        &self.key_md5_base64
    }

    /// What B2's `403 access_denied` to a request carrying this key means,
    /// naming the key by its MD5 only.
    pub fn refused(&self) -> String {
        format!(
            "B2 refuses the SSE-C key given (key MD5 {}): the object was encrypted with another key",
            self.key_md5_base64
        )
    }

    /// The key as requests carry it: a secret, for `http::redact`.
    pub fn secret(&self) -> &str {
        &self.key_base64
    }

    /// The three request headers, in order.
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_ALGORITHM, SSE_C_ALGORITHM),
            (HEADER_KEY, &self.key_base64),
            (HEADER_KEY_MD5, &self.key_md5_base64),
        ]
    }

    /// The server's check of a request for an object encrypted with this
    /// key, given the request's three header values.
    pub fn check_request(
        &self,
        algorithm: Option<&str>,
        key_base64: Option<&str>,
        key_md5_base64: Option<&str>,
    ) -> Result<(), KeyRefusal> {
        let (Some(algorithm), Some(key_base64), Some(key_md5_base64)) =
            (algorithm, key_base64, key_md5_base64)
        else {
            return Err(KeyRefusal::Missing);
        };
        if algorithm != SSE_C_ALGORITHM {
            return Err(KeyRefusal::Malformed(format!(
                "{HEADER_ALGORITHM} must be {SSE_C_ALGORITHM}"
            )));
        }
        let sent = CustomerKey::parse_base64(key_base64.as_bytes())
            .ok()
            .ok_or_else(|| {
                KeyRefusal::Malformed(format!(
                    "{HEADER_KEY} must be the base64 of a {SSE_C_KEY_BYTES}-byte key"
                ))
            })?;
        if sent.key_md5_base64 != key_md5_base64 {
            return Err(KeyRefusal::Malformed(format!(
                "{HEADER_KEY_MD5} is not the MD5 of the key sent"
            )));
        }
        if sent != *self {
            return Err(KeyRefusal::Wrong);
        }
        Ok(())
    }
}

/// Why a server refuses the SSE-C headers of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No key sent for an encrypted object (403 access_denied).
    Missing,
    /// A well-formed key, but not this object's (403 access_denied).
    Wrong,
    /// Headers that do not make a key (400 bad_request).
    Malformed(String),
}

/// A key goes to the download host only over TLS: `http://` would put it on
/// the wire in clear text.
pub fn check_key_transport(download_url: &str) -> Result<(), String> {
    let scheme_is_http = download_url
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
    if scheme_is_http {
        return Err(format!(
            "the download host {download_url} is plain http://: an SSE-C key would cross the \
             network in clear text; use an https:// realm"
        ));
    }
    Ok(())
}

/// What a listing's `serverSideEncryption` says of one object.
pub fn is_sse_c(mode: Option<&str>) -> bool {
    mode == Some("SSE-C")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

    #[test]
    fn headers_carry_the_key_and_its_md5_in_base64() {
        let key = CustomerKey::from_bytes(&KEY);
        let headers = key.headers();
        assert_eq!(headers[0], (HEADER_ALGORITHM, "AES256"));
        assert_eq!(
            headers[1],
            (HEADER_KEY, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
        );
        // `printf %s 0123456789abcdef0123456789abcdef | openssl md5 -binary | base64`
        assert_eq!(headers[2], (HEADER_KEY_MD5, "hRasmdxgYDKV3nvbahU1MA=="));
        assert_eq!(key.md5_base64(), "hRasmdxgYDKV3nvbahU1MA==");
    }

    #[test]
    fn a_key_file_holds_raw_bytes_or_base64_and_errors_never_quote_it() {
        let raw = CustomerKey::parse(&KEY).unwrap();
        let text = CustomerKey::parse(b"  MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
        assert_eq!(raw, text);
        let short = CustomerKey::parse(b"c2hvcnQga2V5\n").unwrap_err();
        assert!(short.contains("base64 of 9 bytes"), "{short}");
        let junk = CustomerKey::parse(b"not a key at all!").unwrap_err();
        assert!(junk.contains("17 bytes"), "{junk}");
        assert!(!junk.contains("not a key"), "{junk}");
        let long = CustomerKey::parse(&[7u8; 33]).unwrap_err();
        assert!(long.contains("33 bytes"), "{long}");
        // The variable holds base64 only: 32 characters are not a raw key.
        assert!(CustomerKey::parse_base64(&KEY).is_err());
        assert_eq!(
            CustomerKey::parse_base64(b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
            Ok(raw.clone())
        );
        assert_eq!(
            format!("{raw:?}"),
            "CustomerKey(md5 hRasmdxgYDKV3nvbahU1MA==)"
        );
    }

    #[test]
    fn the_server_tells_a_missing_or_wrong_key_from_malformed_headers() {
        let key = CustomerKey::from_bytes(&KEY);
        let [(_, algorithm), (_, sent), (_, md5)] = key.headers();
        assert_eq!(
            key.check_request(Some(algorithm), Some(sent), Some(md5)),
            Ok(())
        );
        assert_eq!(
            key.check_request(None, None, None),
            Err(KeyRefusal::Missing)
        );
        assert_eq!(
            key.check_request(Some(algorithm), Some(sent), None),
            Err(KeyRefusal::Missing)
        );
        let other = CustomerKey::from_bytes(&[9u8; 32]);
        let [_, (_, other_sent), (_, other_md5)] = other.headers();
        assert_eq!(
            key.check_request(Some(algorithm), Some(other_sent), Some(other_md5)),
            Err(KeyRefusal::Wrong)
        );
        for (algorithm, sent, md5) in [
            ("AES128", sent, md5),
            (algorithm, "c2hvcnQ=", md5),
            (algorithm, "!!!", md5),
            // The raw key in the header instead of its base64.
            (algorithm, "0123456789abcdef0123456789abcdef", md5),
            (algorithm, sent, other_md5),
        ] {
            assert!(
                matches!(
                    key.check_request(Some(algorithm), Some(sent), Some(md5)),
                    Err(KeyRefusal::Malformed(_))
                ),
                "{algorithm} {sent} {md5}"
            );
        }
    }

    #[test]
    fn a_key_never_goes_over_plain_http() {
        assert!(check_key_transport("https://f001.backblazeb2.com").is_ok());
        let refused = check_key_transport("HTTP://127.0.0.1:8080").unwrap_err();
        assert!(refused.contains("clear text"), "{refused}");
    }

    proptest::proptest! {
        /// Any file contents: a key that the server then accepts, or a
        /// refusal; never a panic. Raw bytes and their base64 are one key.
        #[test]
        fn any_key_file_is_a_usable_key_or_refused(
            contents in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            raw in proptest::prelude::any::<[u8; 32]>(),
        ) {
            if let Ok(key) = CustomerKey::parse(&contents) {
                let [(_, algorithm), (_, sent), (_, md5)] = key.headers();
                proptest::prop_assert_eq!(key.check_request(Some(algorithm), Some(sent), Some(md5)), Ok(()));
            }
            let text = format!("{}\n", BASE64.encode(raw));
            proptest::prop_assert_eq!(CustomerKey::parse(text.as_bytes()), Ok(CustomerKey::from_bytes(&raw)));
            proptest::prop_assert_eq!(CustomerKey::parse(&raw), Ok(CustomerKey::from_bytes(&raw)));
        }
    }

    #[test]
    fn only_the_sse_c_mode_needs_a_key() {
        assert!(is_sse_c(Some("SSE-C")));
        assert!(!is_sse_c(Some("SSE-B2")));
        assert!(!is_sse_c(None));
    }
}

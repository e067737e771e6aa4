//! Credentials kept out of messages built from what a server says.
//!
//! An error answer's text is the server's: a broken or hostile one can quote
//! the request back, token and all, and that text reaches stderr, `--report`
//! and `--stats-json`. Every message built from an answer passes through
//! [`redact`] with the credentials of the request it answers.

use base64::Engine as _;

/// Credentials shorter than this are not looked for: replacing every `1` of a
/// message would wreck it, and no real token, key or signature is this short.
pub const SECRET_MIN_BYTES: usize = 8;

/// What replaces a credential.
pub const REDACTED: &str = "[redacted]";

/// The credentials a request head carries: the `Authorization` and
/// `Proxy-Authorization` headers' values (and, for `Basic`, the key id:key
/// pair and the key decoded), an SSE-C customer key (its MD5 is not a
/// secret: messages name keys by it), and every query parameter's value
/// (`?Authorization=`, presigned-URL signatures).
pub fn request_secrets(request: &[u8]) -> Vec<String> {
    let head = match request.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &request[..end],
        None => request,
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let mut secrets = Vec::new();
    if let Some(target) = lines.next().and_then(|line| line.split(' ').nth(1)) {
        secrets.extend(query_secrets(target));
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("proxy-authorization")
        {
            secrets.extend(authorization_secrets(value.trim()));
        } else if name.eq_ignore_ascii_case(crate::b2::sse::HEADER_KEY) {
            secrets.push(value.trim().to_string());
        }
    }
    secrets
}

/// The values of a request target's query parameters, as sent and decoded.
pub fn query_secrets(path_and_query: &str) -> Vec<String> {
    let Some((_, query)) = path_and_query.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or("");
    let mut secrets = Vec::new();
    for pair in query.split('&') {
        let value = pair.split_once('=').map_or("", |(_, value)| value);
        secrets.push(value.to_string());
        if let Ok(decoded) = crate::b2::percent_decode_plus(value) {
            secrets.push(String::from_utf8_lossy(&decoded).into_owned());
        }
    }
    secrets
}

/// An `Authorization` value, with the scheme and without, and the key of a
/// `Basic` pair.
fn authorization_secrets(value: &str) -> Vec<String> {
    let mut secrets = vec![value.to_string()];
    if let Some((scheme, credentials)) = value.split_once(' ') {
        let credentials = credentials.trim();
        secrets.push(credentials.to_string());
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            if let Some(pair) = decoded {
                if let Some((_, key)) = pair.split_once(':') {
                    secrets.push(key.to_string());
                }
                secrets.push(pair);
            }
        }
    }
    secrets
}

/// `text` with every occurrence of each secret (of `SECRET_MIN_BYTES` or
/// more) replaced by `[redacted]`, longest first, so a secret that contains
/// another goes whole.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|secret| secret.len() >= SECRET_MIN_BYTES)
        .collect();
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    let mut text = text.to_string();
    for secret in secrets {
        if text.contains(secret) {
            text = text.replace(secret, REDACTED);
        }
    }
    text
}

/// `redact` on bytes that may not be UTF-8 (a body before it is parsed):
/// unchanged when nothing is found.
pub fn redact_bytes(bytes: &mut Vec<u8>, secrets: &[String]) {
    let found = secrets.iter().any(|secret| {
        secret.len() >= SECRET_MIN_BYTES
            && bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes())
    });
    if found {
        *bytes = redact(&String::from_utf8_lossy(bytes), secrets).into_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_and_query_values_are_found_and_replaced() {
        let request = b"GET /file/b/x?Authorization=4_00abc%2Bdef_token&v=1 HTTP/1.1\r\n\
                        Host: h\r\nAuthorization: 4_002token_secret_value\r\n\r\n";
        let secrets = request_secrets(request);
        let message = "bad_auth_token: token 4_002token_secret_value is not valid; \
                       or 4_00abc+def_token; v=1";
        let shown = redact(message, &secrets);
        assert_eq!(
            shown,
            "bad_auth_token: token [redacted] is not valid; or [redacted]; v=1"
        );
    }

    #[test]
    fn an_sse_c_key_and_proxy_credentials_are_found_and_replaced() {
        let request = b"GET /file/b/x HTTP/1.1\r\nHost: h\r\n\
                        Proxy-Authorization: Basic cHJveHl1c2VyOnByb3h5cGFzc3dvcmQ=\r\n\
                        X-Bz-Server-Side-Encryption-Customer-Algorithm: AES256\r\n\
                        x-bz-server-side-encryption-customer-key: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\r\n\
                        X-Bz-Server-Side-Encryption-Customer-Key-Md5: bWQ1bWQ1bWQ1bWQ1bWQ1bQ==\r\n\r\n";
        let secrets = request_secrets(request);
        let message = "access_denied: key MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= \
                       (MD5 bWQ1bWQ1bWQ1bWQ1bWQ1bQ==) refused; proxy proxypassword";
        assert_eq!(
            redact(message, &secrets),
            "access_denied: key [redacted] (MD5 bWQ1bWQ1bWQ1bWQ1bWQ1bQ==) refused; proxy [redacted]"
        );
    }

    #[test]
    fn basic_credentials_are_found_encoded_and_decoded() {
        let basic =
            base64::engine::general_purpose::STANDARD.encode("keyid0001:K001secretkeyvalue");
        let request = format!(
            "POST /b2api/v4/b2_authorize_account HTTP/1.1\r\nauthorization: Basic {basic}\r\n\r\n{{}}"
        );
        let secrets = request_secrets(request.as_bytes());
        for quoted in [
            basic.clone(),
            format!("Basic {basic}"),
            "K001secretkeyvalue".to_string(),
            "keyid0001:K001secretkeyvalue".to_string(),
        ] {
            let shown = redact(&format!("refused {quoted}."), &secrets);
            assert_eq!(shown, "refused [redacted].", "{quoted}");
        }
        // The key id is no secret.
        assert_eq!(redact("key keyid0001", &secrets), "key keyid0001");
    }

    #[test]
    fn short_values_are_left_alone_and_bytes_are_untouched_without_a_find() {
        let secrets = vec!["1".to_string(), "abcdefgh".to_string()];
        assert_eq!(redact("1 abcdefgh 1", &secrets), "1 [redacted] 1");
        let mut body = vec![0xff, b'x', b'y'];
        redact_bytes(&mut body, &secrets);
        assert_eq!(body, vec![0xff, b'x', b'y']);
        let mut body = br#"{"message":"abcdefgh"}"#.to_vec();
        redact_bytes(&mut body, &secrets);
        assert_eq!(body, br#"{"message":"[redacted]"}"#.to_vec());
    }

    #[test]
    fn a_request_without_credentials_gives_nothing_to_hide() {
        let secrets = request_secrets(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(secrets.is_empty());
    }
}

//! Backblaze B2 native API, the I/O-free part: JSON types of what a client
//! reads (b2-api.md), the expected digest of an object, name encoding for
//! download URLs, and which errors to retry.

mod keyring;
mod scope;
pub mod sse;
mod types;
mod url;

pub use keyring::{AfterRefusal, KeyChoice, Keyring};
pub use scope::{KeyScope, Reach, ScopeBucket};
pub use sse::{CustomerKey, KeyRefusal, SSE_C_ALGORITHM, is_sse_c};
pub(crate) use types::Scalar;
pub use types::{
    AllowedBucket, ApiInfo, AuthorizeResponse, B2ErrorBody, Bucket, ExpectedSha1, FileAction,
    FileObject, ListBucketsRequest, ListBucketsResponse, ListFileNamesRequest,
    ListFileNamesResponse, StorageAllowed, StorageApi, expected_sha1, parse_authorize,
    parse_error_body, parse_millis, parse_sha1_hex,
};
pub use url::{PercentDecodeError, b2_url_encode, percent_decode, percent_decode_plus};

/// What to do about a failed B2 call or download (b2-api.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Back off and try again (408, 429, 5xx), honouring `Retry-After`.
    Retry,
    /// The token expired or is bad: authorize again, then repeat once.
    ReauthorizeOnce,
    /// This object (or call) fails; the run goes on.
    Fatal,
    /// The whole run must stop: every further request would fail too.
    RunFatal,
}

/// A refusal of a valid token: the key may not make this call (another
/// bucket, a name outside its prefix, a capability it lacks). Retrying or
/// re-authorizing cannot help.
pub fn is_denial(status: u16, code: &str) -> bool {
    matches!(
        (status, code),
        (401, "unauthorized") | (403, "access_denied")
    )
}

/// The account's daily download or transaction cap is spent: nothing in
/// this run can succeed until it is raised or resets, whatever call met it.
pub fn is_cap_exceeded(status: u16, code: &str) -> bool {
    classify(status, code) == ErrorClass::RunFatal
}

/// What to do when a cap is spent.
pub const CAP_HINT: &str = "the B2 account's daily cap is spent: raise it (B2 web console, Caps & Alerts) or wait for its reset, then run the same command again to resume";

/// What to check when B2 refuses a valid key.
pub const DENIED_HINT: &str = "the application key is valid but B2 does not let it do this: check the bucket, name prefix and capabilities it was made with (`b2 key list --long`)";

/// Classifies an error response by HTTP status and B2 `code` (empty when the
/// response had no body, as for `HEAD`).
pub fn classify(status: u16, code: &str) -> ErrorClass {
    match (status, code) {
        (408 | 429, _) | (500..=599, _) => ErrorClass::Retry,
        // A HEAD 401 has no body: b2sdk re-authorizes once, so do we.
        (401, "bad_auth_token" | "expired_auth_token" | "") => ErrorClass::ReauthorizeOnce,
        (403, "download_cap_exceeded" | "transaction_cap_exceeded") => ErrorClass::RunFatal,
        _ => ErrorClass::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_table() {
        assert_eq!(classify(408, "request_timeout"), ErrorClass::Retry);
        assert_eq!(classify(429, "too_many_requests"), ErrorClass::Retry);
        assert_eq!(classify(500, "internal_error"), ErrorClass::Retry);
        assert_eq!(classify(503, "service_unavailable"), ErrorClass::Retry);
        assert_eq!(classify(504, ""), ErrorClass::Retry);
        assert_eq!(
            classify(401, "expired_auth_token"),
            ErrorClass::ReauthorizeOnce
        );
        assert_eq!(classify(401, "bad_auth_token"), ErrorClass::ReauthorizeOnce);
        assert_eq!(classify(401, ""), ErrorClass::ReauthorizeOnce);
        assert_eq!(classify(401, "unauthorized"), ErrorClass::Fatal);
        assert_eq!(classify(401, "missing_auth_token"), ErrorClass::Fatal);
        assert_eq!(classify(403, "download_cap_exceeded"), ErrorClass::RunFatal);
        assert!(is_cap_exceeded(403, "transaction_cap_exceeded"));
        assert!(!is_cap_exceeded(403, "access_denied") && !is_cap_exceeded(401, ""));
        assert_eq!(
            classify(403, "transaction_cap_exceeded"),
            ErrorClass::RunFatal
        );
        assert_eq!(classify(403, "access_denied"), ErrorClass::Fatal);
        assert_eq!(classify(400, "bad_request"), ErrorClass::Fatal);
        assert_eq!(classify(404, "not_found"), ErrorClass::Fatal);
        assert_eq!(classify(416, "range_not_satisfiable"), ErrorClass::Fatal);
    }
}

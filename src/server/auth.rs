//! Credentials and authorization tokens. Tokens are stateless: `4_<issued ms
//! in hex>_<SHA1(secret, issued ms) in hex>`, with a per-process random secret,
//! so memory does not grow with the number of authorizations and
//! `--token-ttl-s` is checked from the token alone. Neither keys nor tokens
//! are ever logged; `Debug` redacts the key.

use std::fmt;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha1::{Digest, Sha1};

use super::encoding::{echoed, hex};

pub struct Credentials {
    pub key_id: String,
    key: String,
    pub account_id: String,
    /// The demo credentials were used (no flags, no environment): the ready
    /// line then prints the key too.
    pub is_demo: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .field("account_id", &self.account_id)
            .finish()
    }
}

fn sha1_of(parts: &[&[u8]]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0u8]);
    }
    hasher.finalize().into()
}

impl Credentials {
    pub fn new(key_id: String, key: String, is_demo: bool) -> Credentials {
        let account_id = hex(&sha1_of(&[b"ringdown-account", key_id.as_bytes()])[..6]);
        Credentials {
            key_id,
            key,
            account_id,
            is_demo,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Checks an `Authorization: Basic base64(keyId:key)` header value.
    pub fn check_basic(&self, header: Option<&str>) -> bool {
        let Some(encoded) = header.and_then(|value| value.trim().strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let expected = format!("{}:{}", self.key_id, self.key);
        // Compare digests, not the strings: no early exit on the first differing byte.
        sha1_of(&[&decoded]) == sha1_of(&[expected.as_bytes()])
    }
}

/// Capabilities of an unrestricted key here (read-only: serve stores nothing).
pub const CAPABILITIES_DEFAULT: [&str; 4] = ["listBuckets", "listFiles", "readFiles", "shareFiles"];

/// What this server's one key may do, as B2 restricts application keys
/// (`--key-bucket`, `--key-name-prefix`, `--key-capabilities`): a call
/// outside it is refused with 401 `unauthorized`, as B2 does.
#[derive(Debug, Clone)]
pub struct KeyRestriction {
    /// The only buckets the key may use, by name (empty: every bucket).
    /// More than one makes a multi-bucket key, which only API v4 describes.
    pub buckets: Vec<String>,
    /// Only names starting with this.
    pub name_prefix: Option<String>,
    pub capabilities: Vec<String>,
}

impl Default for KeyRestriction {
    fn default() -> KeyRestriction {
        KeyRestriction {
            buckets: Vec::new(),
            name_prefix: None,
            capabilities: CAPABILITIES_DEFAULT.iter().map(|c| c.to_string()).collect(),
        }
    }
}

/// Why a restricted key may not make a call (the 401 `unauthorized` message).
pub type Refusal = String;

impl KeyRestriction {
    /// A call that needs `capability`, on `bucket`, reaching `names` (a
    /// listing's prefix or one name; `None`: a call about buckets only).
    pub fn allows(
        &self,
        capability: &str,
        bucket: Option<&str>,
        names: Option<&str>,
    ) -> Result<(), Refusal> {
        self.require(capability)?;
        self.bucket(bucket)?;
        names.map_or(Ok(()), |names| self.names(names))
    }

    fn require(&self, capability: &str) -> Result<(), Refusal> {
        if self.capabilities.iter().any(|has| has == capability) {
            Ok(())
        } else {
            Err(format!("application key lacks the {capability} capability"))
        }
    }

    /// `bucket` (a name) may be used; `None` (no bucket named in the call)
    /// only by a key for every bucket.
    fn bucket(&self, bucket: Option<&str>) -> Result<(), Refusal> {
        match bucket {
            _ if self.buckets.is_empty() => Ok(()),
            Some(bucket) if self.buckets.iter().any(|allowed| allowed == bucket) => Ok(()),
            Some(bucket) => Err(format!(
                "application key is restricted to other buckets than {}",
                echoed(bucket)
            )),
            None => Err("application key is restricted to buckets: name one in the call".into()),
        }
    }

    /// Every name a listing with `prefix` (or the one name) may return
    /// lies within the key's prefix.
    fn names(&self, prefix: &str) -> Result<(), Refusal> {
        match self.name_prefix.as_deref() {
            Some(allowed) if !prefix.starts_with(allowed) => Err(format!(
                "application key is restricted to names starting with {allowed:?}"
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Missing, malformed or not ours: 401 `bad_auth_token`.
    Bad,
    /// Ours but older than `--token-ttl-s`: 401 `expired_auth_token`.
    Expired,
}

/// What a token accepted for a download may read.
#[derive(Debug, PartialEq, Eq)]
pub enum DownloadGrant {
    /// An account token: whatever the key may read.
    Account,
    /// A `b2_get_download_authorization` token: names starting with
    /// `name_prefix` in one bucket, until it expires.
    Prefix {
        bucket_id: String,
        name_prefix: String,
    },
}

impl DownloadGrant {
    pub fn allows(&self, bucket_id: &str, name: &str) -> bool {
        match self {
            DownloadGrant::Account => true,
            DownloadGrant::Prefix {
                bucket_id: granted,
                name_prefix,
            } => granted == bucket_id && name.starts_with(name_prefix.as_str()),
        }
    }
}

/// Prefix of download-authorization tokens, which `check` (API calls) refuses.
const DOWNLOAD_TOKEN_PREFIX: &str = "4_d_";

pub struct Tokens {
    secret: [u8; 32],
    ttl_ms: Option<u64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Tokens {
    pub fn new(ttl_s: Option<u64>) -> Tokens {
        let mut secret = [0u8; 32];
        let from_urandom =
            std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut secret));
        if from_urandom.is_err() {
            let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
            secret[..20].copy_from_slice(&sha1_of(&[seed.as_bytes()]));
        }
        Tokens {
            secret,
            ttl_ms: ttl_s.map(|s| s.saturating_mul(1000)),
        }
    }

    fn mac(&self, issued_hex: &str) -> String {
        hex(&sha1_of(&[&self.secret, issued_hex.as_bytes()]))
    }

    pub fn issue(&self) -> String {
        let issued_hex = format!("{:016x}", now_ms());
        format!("4_{issued_hex}_{}", self.mac(&issued_hex))
    }

    fn download_mac(&self, expiry_hex: &str, bucket_id: &str, prefix_b64: &str) -> String {
        hex(&sha1_of(&[
            &self.secret,
            b"download\0",
            expiry_hex.as_bytes(),
            b"\0",
            bucket_id.as_bytes(),
            b"\0",
            prefix_b64.as_bytes(),
        ]))
    }

    /// A token good only for downloads of names starting with `name_prefix`
    /// in `bucket_id`, for `valid_ms`: the bucket, prefix and expiry travel in
    /// the token under the MAC, so no table is needed.
    pub fn issue_download(&self, bucket_id: &str, name_prefix: &str, valid_ms: u64) -> String {
        let expiry_hex = format!("{:016x}", now_ms().saturating_add(valid_ms));
        let prefix_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name_prefix);
        let mac = self.download_mac(&expiry_hex, bucket_id, &prefix_b64);
        format!("{DOWNLOAD_TOKEN_PREFIX}{expiry_hex}_{bucket_id}_{prefix_b64}_{mac}")
    }

    /// Checks a token presented for a download: an account token, or a
    /// download-authorization token (its own expiry, not `--token-ttl-s`).
    pub fn check_download(&self, token: Option<&str>) -> Result<DownloadGrant, TokenError> {
        let Some(rest) = token
            .map(str::trim)
            .and_then(|t| t.strip_prefix(DOWNLOAD_TOKEN_PREFIX))
        else {
            return self.check(token).map(|()| DownloadGrant::Account);
        };
        // The base64url prefix may hold `_`: the MAC (hex) is split off the end.
        let (fields, mac) = rest.rsplit_once('_').ok_or(TokenError::Bad)?;
        let mut parts = fields.splitn(3, '_');
        let (Some(expiry_hex), Some(bucket_id), Some(prefix_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Bad);
        };
        let expected = self.download_mac(expiry_hex, bucket_id, prefix_b64);
        if expiry_hex.len() != 16 || sha1_of(&[mac.as_bytes()]) != sha1_of(&[expected.as_bytes()]) {
            return Err(TokenError::Bad);
        }
        let expiry_ms = u64::from_str_radix(expiry_hex, 16).map_err(|_| TokenError::Bad)?;
        if now_ms() >= expiry_ms {
            return Err(TokenError::Expired);
        }
        let name_prefix = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(prefix_b64)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(TokenError::Bad)?;
        Ok(DownloadGrant::Prefix {
            bucket_id: bucket_id.to_string(),
            name_prefix,
        })
    }

    /// Checks an account token (API calls and downloads); a
    /// download-authorization token is not one.
    pub fn check(&self, token: Option<&str>) -> Result<(), TokenError> {
        let token = token.map(str::trim).ok_or(TokenError::Bad)?;
        let rest = token.strip_prefix("4_").ok_or(TokenError::Bad)?;
        let (issued_hex, mac) = rest.split_once('_').ok_or(TokenError::Bad)?;
        if issued_hex.len() != 16
            || sha1_of(&[mac.as_bytes()]) != sha1_of(&[self.mac(issued_hex).as_bytes()])
        {
            return Err(TokenError::Bad);
        }
        let issued_ms = u64::from_str_radix(issued_hex, 16).map_err(|_| TokenError::Bad)?;
        if let Some(ttl_ms) = self.ttl_ms {
            if now_ms().saturating_sub(issued_ms) >= ttl_ms {
                return Err(TokenError::Expired);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire() {
        let tokens = Tokens::new(None);
        let token = tokens.issue();
        assert_eq!(tokens.check(Some(&token)), Ok(()));
        assert_eq!(tokens.check(None), Err(TokenError::Bad));
        assert_eq!(
            tokens.check(Some("4_0000000000000000_00")),
            Err(TokenError::Bad)
        );
        let other = Tokens::new(None);
        assert_eq!(other.check(Some(&token)), Err(TokenError::Bad));
        let expiring = Tokens::new(Some(0));
        assert_eq!(
            expiring.check(Some(&expiring.issue())),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn download_tokens_carry_their_bucket_and_prefix() {
        let tokens = Tokens::new(None);
        // "\u{3ff}?" encodes with `_` in base64url: the prefix may hold the separator.
        for prefix in ["", "dir/", "\u{3ff}?", "a_b"] {
            let token = tokens.issue_download("bucket", prefix, 60_000);
            let grant = tokens.check_download(Some(&token)).unwrap();
            assert!(grant.allows("bucket", &format!("{prefix}x")), "{prefix:?}");
            assert!(!grant.allows("other", &format!("{prefix}x")), "{prefix:?}");
            assert_eq!(
                tokens.check(Some(&token)),
                Err(TokenError::Bad),
                "not for API calls"
            );
        }
        let token = tokens.issue_download("bucket", "dir/", 60_000);
        let forged = token.replace("_bucket_", "_other_");
        assert_eq!(tokens.check_download(Some(&forged)), Err(TokenError::Bad));
        assert_eq!(
            tokens.check_download(Some(&tokens.issue())),
            Ok(DownloadGrant::Account)
        );
    }

    #[test]
    fn a_restricted_key_reaches_its_bucket_prefix_and_capabilities_only() {
        let open = KeyRestriction::default();
        assert!(open.bucket(None).is_ok() && open.names("").is_ok());
        assert!(open.require("readFiles").is_ok() && open.require("writeFiles").is_err());
        let key = KeyRestriction {
            buckets: vec!["bkt".into()],
            name_prefix: Some("p/".into()),
            capabilities: vec!["listFiles".into()],
        };
        assert!(key.bucket(Some("bkt")).is_ok());
        assert!(key.bucket(Some("other")).is_err());
        assert!(key.bucket(None).is_err());
        assert!(key.names("p/").is_ok() && key.names("p/x").is_ok());
        assert!(key.names("").is_err() && key.names("p").is_err() && key.names("q/").is_err());
        assert!(key.require("listFiles").is_ok() && key.require("readFiles").is_err());
    }

    #[test]
    fn basic_auth() {
        let credentials = Credentials::new("id".into(), "secret".into(), false);
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("id:secret")
        );
        assert!(credentials.check_basic(Some(&good)));
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("id:nope")
        );
        assert!(!credentials.check_basic(Some(&bad)));
        assert!(!credentials.check_basic(None));
        assert!(!format!("{credentials:?}").contains("secret"));
    }
}

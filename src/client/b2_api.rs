//! B2 control-plane calls: authorize (v4, which multi-bucket keys need) and object metadata by
//! name. Keys and tokens never reach a message or a `Debug` output.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

use super::conn::Origin;
use super::url::Url;
use super::{Exchange, exchange, resolve};
use crate::b2;
use crate::config::API_BODY_MAX_BYTES;
use crate::error::Error;
use crate::http;

/// `production|staging|dev` or a URL (b2sdk's REALM_URLS).
pub fn realm_url(realm: &str) -> String {
    match realm {
        "production" => "https://api.backblazeb2.com".into(),
        "staging" => "https://api.backblaze.net".into(),
        "dev" => "http://api.backblazeb2.xyz:8180".into(),
        url => url.trim_end_matches('/').into(),
    }
}

pub struct Credentials {
    pub key_id: String,
    pub key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What one authorization gave us.
struct Session {
    /// Counts authorizations: tells a request whose token was refused
    /// whether someone refreshed it since.
    generation: u64,
    account_id: Option<String>,
    token: String,
    /// The token this one replaced: an answer to a request sent with it can
    /// still arrive (and quote it).
    previous_token: Option<String>,
    api_url: String,
    download_url: String,
    recommended_part_size_bytes: Option<u64>,
    /// What the key may do (bucket, name prefix, capabilities).
    scope: b2::KeyScope,
}

/// Holds the account token and refreshes it on `expired_auth_token`. Shared
/// by every core; the lock is held only to copy or swap the token.
pub struct Authorizer {
    realm: Url,
    realm_origin: Origin,
    credentials: Credentials,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    /// How the calls that start a run retry (`limit_attempts`).
    startup_retry: super::ApiRetry,
    session: Mutex<Option<Session>>,
    /// The API host, resolved once per authorization (`api_origin`), as the
    /// download host is once per run: no DNS lookup per listing page, so a
    /// resolver hiccup hours into a restore cannot end it.
    api: Mutex<Option<(u64, ApiHost)>>,
    /// One re-authorization at a time across every core: when a token
    /// expires, all requests in flight are refused together.
    refreshing: tokio::sync::Mutex<()>,
    /// The last re-authorization that failed on a transient error: the
    /// token generation it tried to replace, when, and why.
    failed_refresh: Mutex<Option<(u64, std::time::Instant, String)>>,
}

/// Where control-plane calls go.
#[derive(Clone)]
pub struct ApiHost {
    pub origin: Origin,
    /// The apiUrl's own path prefix, without a trailing `/`.
    pub base_path: String,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("realm", &self.realm.display_without_query())
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    pub fn new(
        realm: &str,
        credentials: Credentials,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Authorizer, Error> {
        let realm =
            Url::parse(&realm_url(realm)).map_err(|why| {
                Error::Usage(format!(
                    "the realm (--realm, else B2_REALM, else B2_ENVIRONMENT): {why}; a realm is production, staging, dev or an http(s) URL"
                ))
            })?;
        let realm_origin = resolve(&realm)?;
        Ok(Authorizer {
            realm,
            realm_origin,
            credentials,
            tls,
            timeout,
            startup_retry: super::ApiRetry::STARTUP,
            session: Mutex::new(None),
            api: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            failed_refresh: Mutex::new(None),
        })
    }

    /// At most `max_attempts` (the run's `--max-attempts`) for the calls
    /// that start a run: authorization (and re-authorization), the bucket
    /// lookup, the first listing page, an object's metadata.
    pub fn limit_attempts(mut self, max_attempts: u32) -> Authorizer {
        self.startup_retry = super::ApiRetry::startup(max_attempts);
        self
    }

    /// How a call that starts a run retries (`limit_attempts`).
    pub fn startup_retry(&self) -> super::ApiRetry {
        self.startup_retry
    }

    pub fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }

    /// `b2_authorize_account`. 401 means the key is wrong: exit code 3.
    pub async fn authorize(&self) -> Result<(), Error> {
        // v4: the version that describes (and accepts) multi-bucket keys;
        // its answer is v3's without the single-bucket fields. A
        // B2-compatible server that stops at v3 (b2sdk's version) answers
        // v4 with 404: then v3, whose answer `parse_authorize` reads too.
        let mut reply = self.authorize_on("v4").await?;
        if reply.head.status == 404 {
            reply = self.authorize_on("v3").await?;
        }
        let context = format!(
            "b2_authorize_account at {}",
            self.realm.display_without_query()
        );
        if let Some(spent) = cap_spent(&format!("{context}: {}", describe_error(&reply)), &reply) {
            return Err(spent);
        }
        if reply.head.status == 401 || reply.head.status == 403 {
            return Err(Error::Auth(format!(
                "{context}: {}; check B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY",
                describe_error(&reply)
            )));
        }
        if reply.head.status != 200 {
            return Err(Error::http(context, describe_error(&reply)));
        }
        let parsed = b2::parse_authorize(&reply.body).map_err(|why| Error::http(&context, why))?;
        check_no_downgrade(&context, self.realm.tls, &parsed.api_info.storage_api)?;
        let scope = b2::KeyScope::from_storage_api(&parsed.api_info.storage_api);
        let mut session = self.session.lock().expect("session lock");
        let generation = session.as_ref().map_or(0, |session| session.generation + 1);
        let previous_token = session.take().map(|session| session.token);
        *session = Some(Session {
            generation,
            account_id: Some(parsed.account_id),
            token: parsed.authorization_token,
            previous_token,
            api_url: parsed.api_info.storage_api.api_url,
            download_url: parsed.api_info.storage_api.download_url,
            recommended_part_size_bytes: parsed.api_info.storage_api.recommended_part_size,
            scope,
        });
        Ok(())
    }

    /// `b2_authorize_account` on API `version` (`v4`), as answered.
    async fn authorize_on(&self, version: &str) -> Result<super::Exchange, Error> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.credentials.key_id, self.credentials.key
        ));
        let authorization = format!("Basic {basic}");
        let path = format!(
            "{}b2api/{version}/b2_authorize_account",
            base_path(&self.realm)
        );
        let mut request = Vec::new();
        http::write_post_json(
            &mut request,
            &self.realm_origin.host_header(),
            &path,
            &[("Authorization", &authorization)],
            b"{}",
        )
        .map_err(|error| Error::Usage(format!("authorize request: {error}")))?;
        exchange(
            &self.realm_origin,
            self.tls.as_ref(),
            self.timeout,
            &request,
            false,
            API_BODY_MAX_BYTES,
            self.startup_retry,
            None,
        )
        .await
        .map_err(|error| super::in_context(error, "b2_authorize_account"))
    }

    /// For a request that met `expired_auth_token`/`bad_auth_token` and had
    /// seen the token of `seen_generation` before it was sent: authorizes
    /// again, unless another request already did since (then `false`: try
    /// the new token). One at a time, so the requests a token expiry refuses
    /// together make one `b2_authorize_account`.
    ///
    /// A refresh that failed on a transient error (the API unreachable,
    /// 503s) answers the requests that wait for the same token for
    /// `REAUTHORIZE_FAILURE_SHARED_MS` with the same error, so each backs
    /// off on its own schedule instead of trying again one behind another.
    pub async fn reauthorize(&self, seen_generation: u64) -> Result<bool, Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        if self.generation() != seen_generation {
            return Ok(false);
        }
        let shared_for = Duration::from_millis(crate::config::REAUTHORIZE_FAILURE_SHARED_MS);
        if let Some((generation, at, why)) = &*self.failed_refresh.lock().expect("refresh lock") {
            if *generation == seen_generation && at.elapsed() < shared_for {
                return Err(Error::http(
                    "b2_authorize_account",
                    format!(
                        "{why} ({:.1} s ago; tried again later)",
                        at.elapsed().as_secs_f64()
                    ),
                ));
            }
        }
        match self.authorize().await {
            Ok(()) => Ok(true),
            Err(error) if !error.may_pass_on_retry() => Err(error),
            Err(error) => {
                *self.failed_refresh.lock().expect("refresh lock") = Some((
                    seen_generation,
                    std::time::Instant::now(),
                    error.to_string(),
                ));
                Err(error)
            }
        }
    }

    pub fn token(&self) -> String {
        self.with_session(|session| session.token.clone())
    }

    /// What must never be shown of this account: the application key and
    /// the tokens a request in flight may carry (see `http::redact`).
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.credentials.key.clone()];
        if let Some(session) = self.session.lock().expect("session lock").as_ref() {
            secrets.push(session.token.clone());
            secrets.extend(session.previous_token.clone());
        }
        secrets
    }

    /// Changes with every authorization (see `reauthorize`).
    pub fn generation(&self) -> u64 {
        self.with_session(|session| session.generation)
    }

    /// The account of the key (`b2_list_buckets` needs it).
    pub fn account_id(&self) -> Option<String> {
        self.with_session(|session| session.account_id.clone())
    }

    pub fn download_url(&self) -> String {
        self.with_session(|session| session.download_url.clone())
    }

    /// The apiUrl of the current authorization, parsed and resolved the
    /// first time it is asked for.
    pub fn api_host(&self) -> Result<ApiHost, Error> {
        let generation = self.generation();
        let mut cached = self.api.lock().expect("api host lock");
        if let Some((seen, host)) = cached.as_ref() {
            if *seen == generation {
                return Ok(host.clone());
            }
        }
        let api_url = self.with_session(|session| session.api_url.clone());
        let api =
            Url::parse(&api_url).map_err(|why| Error::http("b2_authorize_account apiUrl", why))?;
        let host = ApiHost {
            origin: resolve(&api)?,
            base_path: api.path_and_query.trim_end_matches('/').to_string(),
        };
        *cached = Some((generation, host.clone()));
        Ok(host)
    }

    /// The reach of the key, as the last authorization described it.
    pub fn scope(&self) -> b2::KeyScope {
        self.with_session(|session| session.scope.clone())
    }

    pub fn recommended_part_size_bytes(&self) -> Option<u64> {
        self.with_session(|session| session.recommended_part_size_bytes)
    }

    fn with_session<T>(&self, f: impl FnOnce(&Session) -> T) -> T {
        let session = self.session.lock().expect("session lock");
        f(session
            .as_ref()
            .expect("authorize() runs before any other call"))
    }
}

/// `/` or the realm URL's own path prefix, ending in `/`.
fn base_path(url: &Url) -> String {
    let path = url.path_and_query.split('?').next().unwrap_or("/");
    if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    }
}

/// A 401/403 that re-authorizing did not (or cannot) cure, `detail` naming
/// the call: a valid key refused (`not allowed`, with what to check), else
/// bad credentials.
pub fn refusal(detail: String, reply: &Exchange) -> Error {
    if let Some(spent) = cap_spent(&detail, reply) {
        return spent;
    }
    let code = b2::parse_error_body(&reply.body).map(|e| e.code);
    if b2::is_denial(reply.head.status, code.as_deref().unwrap_or("")) {
        denied(detail)
    } else {
        Error::Auth(detail)
    }
}

/// A spent download or transaction cap, wherever it is met: run-fatal, and
/// saying what to do (`detail` names the call).
fn cap_spent(detail: &str, reply: &Exchange) -> Option<Error> {
    let code = b2::parse_error_body(&reply.body).map(|e| e.code);
    b2::is_cap_exceeded(reply.head.status, code.as_deref().unwrap_or(""))
        .then(|| Error::Fatal(format!("{detail}; {}", b2::CAP_HINT)))
}

/// `not allowed: DETAIL; <what to check>`.
pub fn denied(detail: impl fmt::Display) -> Error {
    Error::Denied(format!("{detail}; {}", b2::DENIED_HINT))
}

/// "HTTP 404 not_found: ..." from a B2 error reply (or just the status).
pub fn describe_error(reply: &Exchange) -> String {
    match b2::parse_error_body(&reply.body) {
        Some(error) => format!(
            "HTTP {} {}: {}",
            reply.head.status, error.code, error.message
        ),
        None => format!("HTTP {}", reply.head.status),
    }
}

/// The token an https realm hands out travels over https only: an answer
/// naming a plain http:// apiUrl or downloadUrl (a misconfigured
/// B2-compatible server, or an answer tampered with before TLS ends) would
/// have every later call carry it in clear (h41 #3). An http:// realm (a
/// test server, `ringdown serve --plain`) has nothing to downgrade.
fn check_no_downgrade(
    context: &str,
    realm_tls: bool,
    storage: &b2::StorageApi,
) -> Result<(), Error> {
    if !realm_tls {
        return Ok(());
    }
    let urls = [
        ("apiUrl", &storage.api_url),
        ("downloadUrl", &storage.download_url),
    ];
    for (field, url) in urls {
        if !url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        {
            return Err(Error::Trust(format!(
                "{context}: the answer names {field} {url}, not https://, though the realm is \
                 https: the account's authorization token would travel to it in clear; refusing \
                 (a test server without TLS takes an http:// realm)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Authorizer, Credentials, Session, check_no_downgrade};
    use std::time::Duration;

    #[test]
    fn an_https_realm_hands_its_token_to_https_hosts_only() {
        let storage = |api: &str, download: &str| crate::b2::StorageApi {
            api_url: api.into(),
            download_url: download.into(),
            ..Default::default()
        };
        let secure = storage("https://api", "HTTPS://f");
        assert!(check_no_downgrade("authorize", true, &secure).is_ok());
        for (api, download) in [("http://api", "https://f"), ("https://api", "http://f")] {
            let error = check_no_downgrade("authorize", true, &storage(api, download)).unwrap_err();
            assert!(matches!(error, crate::error::Error::Trust(_)), "{error}");
            assert!(error.to_string().contains("in clear"), "{error}");
        }
        // A test server without TLS: nothing to downgrade.
        assert!(check_no_downgrade("authorize", false, &storage("http://a", "http://f")).is_ok());
    }

    fn authorized(api_url: &str, generation: u64) -> Session {
        Session {
            generation,
            account_id: None,
            token: "token".into(),
            previous_token: None,
            api_url: api_url.into(),
            download_url: api_url.into(),
            recommended_part_size_bytes: None,
            scope: Default::default(),
        }
    }

    /// The API host is looked up once per authorization, not once per call.
    #[test]
    fn the_api_host_is_resolved_once_per_authorization() {
        let credentials = Credentials {
            key_id: "id".into(),
            key: "key".into(),
        };
        let auth = Authorizer::new(
            "http://127.0.0.1:1",
            credentials,
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        *auth.session.lock().unwrap() = Some(authorized("http://127.0.0.1:9/prefix/", 0));
        let first = auth.api_host().unwrap();
        assert_eq!(first.base_path, "/prefix");
        assert_eq!(first.origin.addrs[0].to_string(), "127.0.0.1:9");
        // Same authorization, another apiUrl: the cached host is used.
        *auth.session.lock().unwrap() = Some(authorized("http://127.0.0.2:10/", 0));
        assert_eq!(
            auth.api_host().unwrap().origin.addrs[0].to_string(),
            "127.0.0.1:9"
        );
        // A new authorization resolves again.
        *auth.session.lock().unwrap() = Some(authorized("http://127.0.0.2:10/", 1));
        let again = auth.api_host().unwrap();
        assert_eq!(again.origin.addrs[0].to_string(), "127.0.0.2:10");
        assert_eq!(again.base_path, "");
    }
}

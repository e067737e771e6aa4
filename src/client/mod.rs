//! The network side of the client: connections (`conn`), URL parsing, and
//! the B2 control-plane calls (`b2_api`). Hot-path downloads live in `engine/`.

pub mod b2_api;
pub mod conn;
pub mod presign;
pub mod proxy;
pub mod url;

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::http::ResponseHead;
use conn::{ConnError, Connection, Origin};

/// Resolves a URL's host once (DNS stays off the hot path), keeping up to
/// `ORIGIN_ADDRESSES_MAX` addresses to fall back on. With a proxy from the
/// environment (`proxy::select`), the proxy's name is resolved instead and
/// the origin's is left to the proxy.
pub fn resolve(url: &url::Url) -> Result<Origin, Error> {
    let proxy = proxy::select(
        |name| std::env::var(name).ok(),
        url.tls,
        &url.host,
        url.port,
    )
    .map_err(Error::Usage)?;
    let Some(proxy) = proxy else {
        return Ok(Origin::new(
            url.tls,
            url.host.clone(),
            url.port,
            addresses(url)?,
        ));
    };
    let proxy_addrs = addresses(&proxy.url()).map_err(|error| match error {
        Error::Usage(detail) => Error::Usage(format!("proxy from {}: {detail}", proxy.variable)),
        other => other,
    })?;
    Ok(Origin::new(url.tls, url.host.clone(), url.port, proxy_addrs).through(proxy))
}

/// Up to `ORIGIN_ADDRESSES_MAX` distinct addresses of a URL's host.
fn addresses(url: &url::Url) -> Result<Vec<std::net::SocketAddr>, Error> {
    let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
    let resolved = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|error| Error::Usage(format!("cannot resolve {}: {error}", url.host)))?;
    for addr in resolved {
        if !addrs.contains(&addr) && addrs.len() < crate::config::ORIGIN_ADDRESSES_MAX {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(Error::Usage(format!("{} resolves to no address", url.host)));
    }
    Ok(addrs)
}

/// One control-plane exchange, on a fresh connection or a caller's
/// `KeepAlive`: API calls and probes do not share the engine's connections.
pub struct Exchange {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

/// How a control-plane call retries transport failures and 408/429/5xx:
/// exponential backoff from `base_ms` up to `max_ms`, `Retry-After` honoured
/// (capped at `RETRY_AFTER_MAX_S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRetry {
    pub attempts: u32,
    pub base_ms: u64,
    pub max_ms: u64,
}

impl ApiRetry {
    /// Calls that start a run (see `API_ATTEMPTS`).
    pub const STARTUP: ApiRetry = ApiRetry {
        attempts: crate::config::API_ATTEMPTS,
        base_ms: crate::config::RETRY_BASE_MS_DEFAULT,
        max_ms: crate::config::API_RETRY_MAX_MS,
    };

    /// `STARTUP`, with no more attempts than `max_attempts` (a run's
    /// `--max-attempts`: who asks for 1 wants a dead origin said at once).
    pub fn startup(max_attempts: u32) -> ApiRetry {
        ApiRetry {
            attempts: ApiRetry::STARTUP.attempts.min(max_attempts.max(1)),
            ..ApiRetry::STARTUP
        }
    }

    /// The wait after failed attempt `attempt` (1-based), before any
    /// `Retry-After`.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }
}

/// One idle keep-alive connection, for a caller whose control-plane calls
/// come one after another (the listing thread, page after page): each call
/// after the first skips the TCP and TLS handshakes, two round trips of
/// three. Owned by that caller, on its thread and runtime (a connection
/// never crosses threads); dropped with it.
///
/// Only for idempotent calls (listings): a call whose reused connection
/// turns out closed goes out again, and "closed before any answer" cannot
/// tell a request the server never read from one it read.
#[derive(Default)]
pub struct KeepAlive {
    idle: Option<Idle>,
}

struct Idle {
    /// The origin's base URL.
    base_url: String,
    connection: Connection,
    since: std::time::Instant,
}

impl KeepAlive {
    /// The idle connection to `origin`, unless it idled so long that a
    /// middlebox may have dropped it without a word (a request on such a
    /// connection would wait a whole `--timeout-s`, and count as a failure),
    /// or something arrived on it since its last answer (bytes past it, or
    /// the origin closing it: `Connection::is_quiet`).
    fn take_for(&mut self, origin: &Origin) -> Option<Connection> {
        let idle = self.idle.take()?;
        let max_idle = Duration::from_millis(crate::config::KEEPALIVE_IDLE_MAX_MS);
        let fresh = idle.since.elapsed() < max_idle;
        if idle.base_url == origin.base_url() && fresh && idle.connection.is_quiet() {
            return Some(idle.connection);
        }
        idle.connection.shutdown();
        None
    }

    /// Keeps `connection` if its answer leaves it ready for another
    /// request: not closing, the body delimited (not by the close), and no
    /// byte past it.
    fn offer(&mut self, origin: &Origin, head: &ResponseHead, connection: Connection) {
        let delimited = head.content_length.is_some() || head.chunked || !has_body(head);
        if head.keep_alive && delimited && connection.has_nothing_buffered() {
            self.idle = Some(Idle {
                base_url: origin.base_url(),
                connection,
                since: std::time::Instant::now(),
            });
        } else {
            connection.shutdown();
        }
    }
}

/// Sends `request` and reads the response (no body for HEAD), retrying
/// transport failures and 408/429/5xx as `retry` says. With `keep`, the
/// call goes out on its idle connection when there is one, and leaves its
/// own there.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    origin: &Origin,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
    request: &[u8],
    is_head: bool,
    body_limit_bytes: usize,
    retry: ApiRetry,
    mut keep: Option<&mut KeepAlive>,
) -> Result<Exchange, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last_attempt = attempt >= retry.attempts.max(1);
        let once = exchange_once(
            origin,
            tls,
            timeout,
            request,
            is_head,
            body_limit_bytes,
            keep.as_deref_mut(),
        );
        let retry_after_s = match once.await {
            Ok(mut exchange)
                if last_attempt || !matches!(exchange.head.status, 408 | 429 | 500..=599) =>
            {
                // An error answer's text ends up in messages: it must not
                // quote our credentials back (see `http::redact`).
                if !(200..300).contains(&exchange.head.status) {
                    crate::http::redact_bytes(
                        &mut exchange.body,
                        &crate::http::request_secrets(request),
                    );
                }
                return Ok(exchange);
            }
            Ok(exchange) => exchange.head.retry_after_s,
            Err(ConnError::Trust(detail)) => return Err(Error::Trust(detail)),
            Err(ConnError::ProxyRefused(detail)) => return Err(Error::ProxyRefused(detail)),
            Err(error) if last_attempt => {
                let context = format!("request to {}", origin.base_url());
                return Err(Error::http(
                    context,
                    format!("{error} after {}", crate::units::attempts(attempt)),
                ));
            }
            Err(_) => None,
        };
        let retry_after_ms = retry_after_s.map(|s| s.min(crate::config::RETRY_AFTER_MAX_S) * 1000);
        let delay =
            Duration::from_millis(retry_after_ms.unwrap_or(0).max(retry.backoff_ms(attempt)));
        crate::runtime::back_off(delay).await?;
    }
}

/// Prefixes the context of an HTTP error with the call it belongs to
/// (`b2_list_file_names: request to http://…: response body exceeds …`).
pub fn in_context(error: Error, call: &str) -> Error {
    match error {
        Error::Http { context, detail } => Error::Http {
            context: format!("{call}: {context}"),
            detail,
        },
        other => other,
    }
}

async fn exchange_once(
    origin: &Origin,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
    request: &[u8],
    is_head: bool,
    body_limit_bytes: usize,
    mut keep: Option<&mut KeepAlive>,
) -> Result<Exchange, ConnError> {
    let idle = keep.as_deref_mut().and_then(|keep| keep.take_for(origin));
    if let Some(connection) = idle {
        match exchange_on(connection, request, is_head, body_limit_bytes).await {
            // Some servers and proxies write a 408 and close to a connection
            // that idled too long: that answers no request of ours.
            Ok((exchange, connection))
                if exchange.head.status == 408 && !exchange.head.keep_alive =>
            {
                connection.shutdown();
            }
            Ok((exchange, connection)) => {
                if let Some(keep) = keep {
                    keep.offer(origin, &exchange.head, connection);
                }
                return Ok(exchange);
            }
            // Closed while idle (the server's keep-alive timeout) before a
            // byte of the answer: not a failed attempt; a new connection
            // asks again. A stall is one: it is not waited for twice.
            Err((ConnError::Transport(error), true))
                if error.kind() != std::io::ErrorKind::TimedOut => {}
            Err((error, _)) => return Err(error),
        }
    }
    let connection = Connection::open(origin, tls, timeout, None, &|_, _| {}).await?;
    let (exchange, connection) = exchange_on(connection, request, is_head, body_limit_bytes)
        .await
        .map_err(|(error, _)| error)?;
    match keep {
        Some(keep) => keep.offer(origin, &exchange.head, connection),
        None => connection.shutdown(),
    }
    Ok(exchange)
}

/// Whether a response to anything but HEAD carries a body.
fn has_body(head: &ResponseHead) -> bool {
    !matches!(head.status, 204 | 304)
}

/// `request` on `connection`, the connection back when the answer was read
/// whole. A failure says whether no byte of an answer had come.
async fn exchange_on(
    mut connection: Connection,
    request: &[u8],
    is_head: bool,
    body_limit_bytes: usize,
) -> Result<(Exchange, Connection), (ConnError, bool)> {
    if let Err(error) = connection.send(request.to_vec()).await {
        connection.shutdown();
        return Err((error, true));
    }
    let head = match connection.read_head().await {
        Ok(head) => head,
        Err(error) => {
            let silent = connection.has_nothing_buffered();
            connection.shutdown();
            return Err((error, silent));
        }
    };
    let body = if is_head || !has_body(&head) {
        Vec::new()
    } else {
        match connection.read_body_to_vec(&head, body_limit_bytes).await {
            Ok(body) => body,
            Err(error) => {
                connection.shutdown();
                return Err((error, false));
            }
        }
    };
    Ok((Exchange { head, body }, connection))
}

#[cfg(test)]
mod tests {
    use super::ApiRetry;

    #[test]
    fn api_backoff_doubles_up_to_its_cap_and_never_overflows() {
        let retry = ApiRetry {
            attempts: 200,
            base_ms: 250,
            max_ms: 30_000,
        };
        let waits: Vec<u64> = (1..=9).map(|attempt| retry.backoff_ms(attempt)).collect();
        assert_eq!(
            waits,
            [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]
        );
        assert_eq!(retry.backoff_ms(64), 30_000);
        assert_eq!(retry.backoff_ms(200), 30_000);
        assert_eq!(ApiRetry::STARTUP.backoff_ms(4), 2_000);
        assert_eq!(ApiRetry::STARTUP.backoff_ms(5), 4_000);
    }
}

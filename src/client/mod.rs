//! The network side of the client: connections (`conn`), URL parsing, and
//! the B2 control-plane calls (`b2_api`). Hot-path downloads live in `engine/`.

pub mod b2_api;
pub mod conn;
pub mod url;

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::http::ResponseHead;
use conn::{ConnError, Connection, Origin};

/// Resolves a URL's host once (DNS stays off the hot path), keeping up to
/// `ORIGIN_ADDRESSES_MAX` addresses to fall back on.
pub fn resolve(url: &url::Url) -> Result<Origin, Error> {
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
    Ok(Origin::new(url.tls, url.host.clone(), url.port, addrs))
}

/// One control-plane exchange on a fresh connection: API calls and probes are
/// rare, so they do not share the engine's connections.
pub struct Exchange {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

/// Sends `request` and reads the response (no body for HEAD), retrying
/// transport failures and 408/429/5xx a few times with backoff.
pub async fn exchange(
    origin: &Origin,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
    request: &[u8],
    is_head: bool,
    body_limit_bytes: usize,
) -> Result<Exchange, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last_attempt = attempt >= crate::config::API_ATTEMPTS;
        let retry_after_s =
            match exchange_once(origin, tls, timeout, request, is_head, body_limit_bytes).await {
                Ok(exchange)
                    if last_attempt || !matches!(exchange.head.status, 408 | 429 | 500..=599) =>
                {
                    return Ok(exchange);
                }
                Ok(exchange) => exchange.head.retry_after_s,
                Err(ConnError::Trust(detail)) => return Err(Error::Trust(detail)),
                Err(error) if last_attempt => {
                    let context = format!("request to {}", origin.base_url());
                    return Err(Error::http(
                        context,
                        format!("{error} after {attempt} attempts"),
                    ));
                }
                Err(_) => None,
            };
        let backoff_ms = (crate::config::RETRY_BASE_MS_DEFAULT << (attempt - 1)).min(5_000);
        let retry_after_ms = retry_after_s.map(|s| s.min(crate::config::RETRY_AFTER_MAX_S) * 1000);
        let delay = Duration::from_millis(retry_after_ms.unwrap_or(0).max(backoff_ms));
        let interrupted = crate::runtime::interrupted;
        if !crate::runtime::sleep_unless(delay, || interrupted().is_some()).await {
            let signal = interrupted().unwrap_or(0);
            return Err(Error::Interrupted { signal });
        }
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
) -> Result<Exchange, ConnError> {
    let mut connection = Connection::open(origin, tls, timeout, &|_, _| {}).await?;
    connection.send(request.to_vec()).await?;
    let head = connection.read_head().await?;
    let body = if is_head || head.status == 204 || head.status == 304 {
        Vec::new()
    } else {
        connection.read_body_to_vec(&head, body_limit_bytes).await?
    };
    connection.shutdown();
    Ok(Exchange { head, body })
}

//! HTTP proxies from the environment, as curl, b2sdk (requests) and rclone
//! honour them: `https_proxy`/`HTTPS_PROXY` for https origins,
//! `http_proxy`/`HTTP_PROXY` for plain ones, `all_proxy`/`ALL_PROXY` for
//! both, and `no_proxy`/`NO_PROXY` for hosts reached directly. Every origin
//! is reached through an HTTP/1.1 `CONNECT` tunnel (TLS, when the origin
//! speaks it, runs end to end inside). I/O-free: the caller sends
//! [`Proxy::connect_request`] and checks the reply with [`check_connect_reply`].

use std::fmt;
use std::net::IpAddr;

use base64::Engine;

use super::url::Url;

/// A proxy to tunnel through. Its credentials never reach a message.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` value, from `user:password@` in the proxy URL.
    authorization: Option<String>,
    /// Which variable named it (for messages).
    pub variable: &'static str,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("variable", &self.variable)
            .finish()
    }
}

impl Proxy {
    /// `host:port` as messages show it (never the credentials).
    pub fn display(&self) -> String {
        format!(
            "{} (from {})",
            authority(&self.host, self.port),
            self.variable
        )
    }

    /// The proxy's own address as a URL, for resolving it.
    pub fn url(&self) -> Url {
        Url {
            tls: false,
            host: self.host.clone(),
            port: self.port,
            path_and_query: "/".into(),
        }
    }

    /// `CONNECT host:port` for the origin.
    pub fn connect_request(&self, origin_host: &str, origin_port: u16) -> Vec<u8> {
        let authority = authority(origin_host, origin_port);
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        request.push_str(&format!("User-Agent: {}\r\n", crate::http::USER_AGENT));
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        request.into_bytes()
    }
}

/// `host:port` as `CONNECT` names the origin (an IPv6 address in brackets).
pub fn authority(host: &str, port: u16) -> String {
    format!("{}:{port}", super::url::host_text(host))
}

/// The proxy for an origin, given a way to read the environment. `Err` when
/// a variable is set but unusable (better than silently going direct).
pub fn select(
    env: impl Fn(&str) -> Option<String>,
    origin_tls: bool,
    origin_host: &str,
    origin_port: u16,
) -> Result<Option<Proxy>, String> {
    let non_empty = |name: &'static str| {
        env(name)
            .filter(|value| !value.trim().is_empty())
            .map(|value| (name, value))
    };
    let candidates: &[&'static str] = if origin_tls {
        &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
    } else {
        // Not HTTP_PROXY: under CGI it is set from a request header (httpoxy).
        &["http_proxy", "all_proxy", "ALL_PROXY"]
    };
    let Some((variable, value)) = candidates.iter().find_map(|name| non_empty(name)) else {
        return Ok(None);
    };
    if is_loopback(origin_host) {
        // A proxy cannot reach this machine's loopback (as in Go's
        // net/http): ringdown serve, the demo and the tests stay direct.
        return Ok(None);
    }
    let no_proxy = non_empty("no_proxy").or_else(|| non_empty("NO_PROXY"));
    if let Some((_, list)) = no_proxy {
        if bypasses(&list, origin_host, origin_port) {
            return Ok(None);
        }
    }
    parse_proxy_url(&value, variable).map(Some)
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 and ::1.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `[http://][user[:password]@]host[:port][/]`; the port defaults to 1080
/// as in curl. Only plain-HTTP proxies: the tunnel's content is TLS anyway.
fn parse_proxy_url(value: &str, variable: &'static str) -> Result<Proxy, String> {
    let bad = |why: &str| format!("{variable}: not a usable proxy URL ({why})");
    let value = value.trim();
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "{scheme}:// proxies are not supported; use an http:// proxy (CONNECT)"
            )));
        }
        None => value,
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, host_port) = match rest.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, rest),
    };
    if host_port.contains('/') {
        return Err(bad("a path after the host"));
    }
    let with_port = if host_port.ends_with(']') || !host_port.contains(':') {
        format!("http://{host_port}:1080/")
    } else {
        format!("http://{host_port}/")
    };
    let url = Url::parse(&with_port).map_err(|_| bad("bad host or port"))?;
    let authorization = userinfo
        .map(|userinfo| {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |text: &str| {
                crate::b2::percent_decode(text)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| bad("bad percent-encoding in the credentials"))
            };
            let credentials = format!("{}:{}", decode(user)?, decode(password)?);
            Ok::<_, String>(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ))
        })
        .transpose()?;
    Ok(Proxy {
        host: url.host,
        port: url.port,
        authorization,
        variable,
    })
}

/// Whether `no_proxy` sends this origin direct: `*`; a name matching the
/// host or a parent domain (`example.com`, `.example.com`); an IP address or
/// CIDR block containing a literal host; each optionally with `:port`.
pub fn bypasses(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    no_proxy
        .split([',', ' '])
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            let (pattern, entry_port) = split_port(&entry);
            if entry_port.is_some_and(|entry_port| entry_port != port) {
                return false;
            }
            if let Some(ip) = host_ip {
                return ip_matches(pattern, ip);
            }
            let domain = pattern.trim_start_matches('.').trim_end_matches('.');
            !domain.is_empty()
                && (host == domain
                    || host
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.ends_with('.')))
        })
}

/// `pattern[:port]`, brackets of an IPv6 literal removed.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(bracketed) = entry.strip_prefix('[') {
        if let Some((inside, after)) = bracketed.split_once(']') {
            return (inside, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match entry.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address (or CIDR).
        Some((pattern, port)) if !pattern.contains(':') => (pattern, port.parse().ok()),
        _ => (entry, None),
    }
}

fn ip_matches(pattern: &str, ip: IpAddr) -> bool {
    let (address, prefix_bits) = match pattern.split_once('/') {
        Some((address, bits)) => match bits.parse::<u32>() {
            Ok(bits) => (address, Some(bits)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    let Ok(network) = address.parse::<IpAddr>() else {
        return false;
    };
    match (network, ip) {
        (IpAddr::V4(network), IpAddr::V4(ip)) => {
            let bits = prefix_bits.unwrap_or(32).min(32);
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(network) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(network), IpAddr::V6(ip)) => {
            let bits = prefix_bits.unwrap_or(128).min(128);
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(network) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// Why a tunnel was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRefused {
    /// The proxy's status, when it answered with one.
    pub status: Option<u16>,
    pub message: String,
}

impl ConnectRefused {
    /// 4xx (403, 407: policy, credentials) will not change by retrying;
    /// 5xx (502, 503: the origin unreachable from the proxy) may.
    pub fn is_final(&self) -> bool {
        matches!(self.status, Some(400..=499))
    }
}

/// Checks the proxy's answer to `CONNECT` for `origin` (`host:port`, see
/// [`authority`]; the bytes received so far). `Ok(None)`: the head is not
/// complete yet. `Ok(Some(()))`: the tunnel is open (2xx, and nothing after
/// the head: the origin speaks only once we do). `Err`: a refusal or a
/// broken reply, said so the operator can act: a refusal is the proxy's
/// policy or credentials, whatever the origin speaks, never TLS's.
pub fn check_connect_reply(
    received: &[u8],
    proxy: &Proxy,
    origin: &str,
) -> Result<Option<()>, ConnectRefused> {
    let refused = |status: Option<u16>, message: String| ConnectRefused { status, message };
    let head = match crate::http::parse_response_head_at(received, 0) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(error) => {
            return Err(refused(
                None,
                format!(
                    "proxy {}: unreadable answer to CONNECT: {error}",
                    proxy.display()
                ),
            ));
        }
    };
    let status = Some(head.status);
    match head.status {
        200..=299 if head.head_len == received.len() => Ok(Some(())),
        200..=299 => Err(refused(
            None,
            format!(
                "proxy {}: bytes after its CONNECT answer, before the tunnel carried anything",
                proxy.display()
            ),
        )),
        407 => Err(refused(
            status,
            format!(
                "proxy {} refused CONNECT to {origin} with HTTP 407 (Proxy Authentication \
                 Required); put the credentials in the proxy URL (http://user:password@host:port)",
                proxy.display()
            ),
        )),
        code @ 400..=499 => Err(refused(
            status,
            format!(
                "proxy {} refused CONNECT to {origin} with HTTP {code}; check {}, or add the \
                 origin to no_proxy if it should be reached directly",
                proxy.display(),
                proxy.variable
            ),
        )),
        // 502, 503: the proxy could not reach the origin (for now).
        code => Err(refused(
            status,
            format!(
                "proxy {} answered CONNECT to {origin} with HTTP {code}",
                proxy.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn picks_the_variable_for_the_scheme_and_honours_no_proxy() {
        let vars = env(&[
            ("HTTPS_PROXY", "http://user:p%40ss@proxy.corp:3128"),
            ("http_proxy", "proxy.corp"),
            ("HTTP_PROXY", "http://evil:1"),
            (
                "no_proxy",
                "localhost, .internal.corp,10.0.0.0/8,[fd00::1]:9000",
            ),
        ]);
        let proxy = select(&vars, true, "api.backblazeb2.com", 443)
            .unwrap()
            .unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.corp", 3128));
        assert_eq!(proxy.variable, "HTTPS_PROXY");
        let request =
            String::from_utf8(proxy.connect_request("f001.backblazeb2.com", 443)).unwrap();
        assert!(request.starts_with(
            "CONNECT f001.backblazeb2.com:443 HTTP/1.1\r\nHost: f001.backblazeb2.com:443\r\n"
        ));
        // user:p@ss, percent-decoded, in Basic.
        assert!(
            request.contains("Proxy-Authorization: Basic dXNlcjpwQHNz\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n"));
        assert!(!format!("{proxy:?}").contains("dXNlcjpwQHNz"));
        assert!(!proxy.display().contains("user"));
        // Plain origins: http_proxy, never HTTP_PROXY; the port defaults to 1080.
        let plain = select(&vars, false, "example.com", 80).unwrap().unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("proxy.corp", 1080));
        // Loopback is never proxied.
        for host in [
            "localhost",
            "api.localhost",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
        ] {
            let only_proxy = env(&[("https_proxy", "http://p:1")]);
            assert_eq!(select(only_proxy, true, host, 443).unwrap(), None, "{host}");
        }
        // no_proxy: names, parent domains, CIDR, ports.
        for (host, port) in [
            ("store.internal.corp", 443),
            ("internal.corp", 443),
            ("10.1.2.3", 443),
            ("fd00::1", 9000),
        ] {
            assert_eq!(select(&vars, true, host, port).unwrap(), None, "{host}");
        }
        for (host, port) in [
            ("xinternal.corp", 443),
            ("11.0.0.1", 443),
            ("fd00::1", 9001),
        ] {
            assert!(select(&vars, true, host, port).unwrap().is_some(), "{host}");
        }
        assert_eq!(select(env(&[]), true, "x", 443).unwrap(), None);
        assert_eq!(
            select(
                env(&[("ALL_PROXY", "p:8"), ("NO_PROXY", "*")]),
                true,
                "x",
                443
            )
            .unwrap(),
            None
        );
        let all = select(env(&[("ALL_PROXY", "[fd00::1]:8080")]), false, "x", 80)
            .unwrap()
            .unwrap();
        assert_eq!((all.host.as_str(), all.port), ("fd00::1", 8080));
    }

    #[test]
    fn unusable_proxy_settings_are_errors_not_silent_direct_connections() {
        let error = select(env(&[("https_proxy", "socks5://p:1080")]), true, "x", 443).unwrap_err();
        assert!(
            error.contains("https_proxy") && error.contains("socks5"),
            "{error}"
        );
        assert!(
            select(
                env(&[("https_proxy", "http://p:1080/path")]),
                true,
                "x",
                443
            )
            .is_err()
        );
        assert!(select(env(&[("https_proxy", "http://p:99999")]), true, "x", 443).is_err());
        assert!(select(env(&[("https_proxy", "http://u:%zz@p:1")]), true, "x", 443).is_err());
    }

    #[test]
    fn connect_replies() {
        let proxy = parse_proxy_url("http://p:1", "https_proxy").unwrap();
        let origin = authority("f001.backblazeb2.com", 443);
        let check = |reply: &[u8]| check_connect_reply(reply, &proxy, &origin);
        assert_eq!(check(b"HTTP/1.1 200 Conn"), Ok(None));
        assert_eq!(
            check(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Ok(Some(()))
        );
        let early = check(b"HTTP/1.0 200 OK\r\n\r\n\x16\x03").unwrap_err();
        assert!(
            early.message.contains("bytes after") && !early.is_final(),
            "{early:?}"
        );
        let auth = check(b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert!(auth.message.contains("http://user:password@host:port") && auth.is_final());
        let refused = check(b"HTTP/1.1 403 No\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert_eq!(
            refused.message,
            "proxy p:1 (from https_proxy) refused CONNECT to f001.backblazeb2.com:443 with \
             HTTP 403; check https_proxy, or add the origin to no_proxy if it should be reached \
             directly"
        );
        assert!(refused.is_final());
        let gateway = check(b"HTTP/1.1 502 Bad\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert!(!gateway.is_final(), "a 502 is worth retrying");
        assert!(!gateway.message.contains("refused"), "{gateway:?}");
        assert!(check(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert_eq!(authority("::1", 8080), "[::1]:8080");
    }
}

//! Minimal, I/O-free parsing of the `http(s)://host[:port]/path?query` URLs we
//! accept (realms, download URLs, plain-URL sources). No userinfo, no
//! fragments: they have no meaning for a download and hide mistakes.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// Host without brackets (IPv6 literals included).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("{text:?} is not a usable URL: {why}");
        let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("expected http:// or https://"));
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if tail.contains('#') {
            return Err(bad("fragments (#...) are not allowed"));
        }
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; use B2_APPLICATION_KEY_ID/B2_APPLICATION_KEY",
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let close = bracketed
                .find(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            let host = &bracketed[..close];
            let after = &bracketed[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(bad("junk after ]")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => {
                    (host.to_string(), port.parse().map_err(|_| bad("bad port"))?)
                }
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if tail.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters; percent-encode them"));
        }
        let path_and_query = if tail.is_empty() {
            "/".to_string()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_string()
        };
        Ok(Url {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// The URL as shown in messages: without the query (it may hold a token).
    pub fn display_without_query(&self) -> String {
        let path = self.path_and_query.split('?').next().unwrap_or("/");
        let default_port = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let port = if self.port == default_port {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        format!(
            "{}://{host}{port}{path}",
            if self.tls { "https" } else { "http" }
        )
    }

    /// The last path segment (for `DEST` directories), percent-decoded when valid.
    pub fn base_name(&self) -> Option<String> {
        let path = self.path_and_query.split('?').next().unwrap_or("");
        let last = path.rsplit('/').next().filter(|s| !s.is_empty())?;
        Some(percent_decode_lossy(last))
    }
}

fn percent_decode_lossy(text: &str) -> String {
    match crate::b2::percent_decode(text) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_paths() {
        let url = Url::parse("https://127.0.0.1:8443/file/bkt/a%20b.txt?x=1").unwrap();
        assert_eq!(
            url,
            Url {
                tls: true,
                host: "127.0.0.1".into(),
                port: 8443,
                path_and_query: "/file/bkt/a%20b.txt?x=1".into()
            }
        );
        assert_eq!(
            url.display_without_query(),
            "https://127.0.0.1:8443/file/bkt/a%20b.txt"
        );
        assert_eq!(url.base_name().unwrap(), "a b.txt");
        let url = Url::parse("http://example.com").unwrap();
        assert_eq!((url.port, url.path_and_query.as_str()), (80, "/"));
        let url = Url::parse("https://[::1]:9000/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 9000));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(Url::parse("ftp://x/y").is_err());
        assert!(Url::parse("https://user:pw@x/y").is_err());
        assert!(Url::parse("https://x/y#frag").is_err());
        assert!(Url::parse("https://:80/").is_err());
        assert!(Url::parse("https://x/a b").is_err());
        assert!(Url::parse("https://x:99999/").is_err());
    }
}

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
        let bad = |why: &str| format!("{:?} is not a usable URL: {why}", redacted(text));
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
                "credentials in the URL (user:password@) are not supported: a plain URL is \
                 fetched as it is, so presign it or serve it without authentication",
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
        let bracketed = authority.starts_with('[');
        let host_ok = if bracketed {
            host.contains(':')
                && host
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        } else {
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        };
        if !host_ok {
            return Err(bad(
                "the host is neither a name, an IPv4 address nor a bracketed IPv6 address",
            ));
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

    /// Where a redirect's `Location` points, seen from this URL (RFC 3986
    /// §5.2: absolute, scheme-relative, absolute-path or relative reference;
    /// dot segments removed, any fragment dropped). Refuses a redirect from
    /// https to plain http: the bytes would travel unauthenticated.
    pub fn redirect_to(&self, location: &str) -> Result<Url, String> {
        let location = location.trim();
        let location = location.split('#').next().unwrap_or("");
        if location.is_empty() {
            return Err("a redirect without a Location".into());
        }
        if let Some((maybe_scheme, _)) = location.split_once(':') {
            let is_scheme = maybe_scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && maybe_scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            let lowered = maybe_scheme.to_ascii_lowercase();
            if is_scheme && lowered != "http" && lowered != "https" {
                return Err(format!("a redirect to a {maybe_scheme}: URL"));
            }
        }
        let scheme = if self.tls { "https" } else { "http" };
        let lowered = location.get(..8).unwrap_or(location).to_ascii_lowercase();
        let target = if lowered.starts_with("http://") || lowered.starts_with("https://") {
            let (given, rest) = location.split_once("://").expect("checked above");
            Url::parse(&format!("{}://{rest}", given.to_ascii_lowercase()))?
        } else if let Some(rest) = location.strip_prefix("//") {
            Url::parse(&format!("{scheme}://{rest}"))?
        } else {
            let (path, query) = match location.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (location, None),
            };
            let base_path = self.path_and_query.split('?').next().unwrap_or("/");
            let merged = if path.starts_with('/') {
                path.to_string()
            } else if path.is_empty() {
                base_path.to_string()
            } else {
                let directory = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
                format!("{directory}{path}")
            };
            let query = query.map(|query| format!("?{query}")).unwrap_or_default();
            Url::parse(&format!("{}{merged}{query}", self.origin_text()))?
        };
        // Dot segments go from every path (RFC 3986 §5.2.2), absolute and
        // network-path references included.
        let mut target = target;
        let (path, query) = match target.path_and_query.split_once('?') {
            Some((path, query)) => (path.to_string(), Some(query.to_string())),
            None => (target.path_and_query.clone(), None),
        };
        target.path_and_query = remove_dot_segments(&path);
        if let Some(query) = query {
            target.path_and_query.push('?');
            target.path_and_query.push_str(&query);
        }
        if self.tls && !target.tls {
            return Err(format!(
                "refusing a redirect from https to plain http ({})",
                target.display_without_query()
            ));
        }
        Ok(target)
    }

    /// `scheme://host:port`, as `parse` reads it back.
    pub(crate) fn origin_text(&self) -> String {
        let host = host_text(&self.host);
        format!(
            "{}://{host}:{}",
            if self.tls { "https" } else { "http" },
            self.port
        )
    }

    /// The URL as shown in messages: without the query (it may hold a token).
    pub fn display_without_query(&self) -> String {
        let path = self.path_and_query.split('?').next().unwrap_or("/");
        let default_port = if self.tls { 443 } else { 80 };
        let host = host_text(&self.host);
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

/// A host as URLs, `Host` headers and `CONNECT` write it: an IPv6 literal
/// (kept without brackets once parsed) in brackets, so its colons are not
/// read as a port's (RFC 3986 §3.2.2).
pub fn host_text(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

/// `text` as a message may show it: a URL's userinfo and query (and a
/// fragment) may hold a password, a token or a signature, so they become
/// `…`. Used for URLs that did not parse, where nothing else is known.
pub fn redacted(text: &str) -> String {
    // The query (it may hold a signature) or a fragment, shown as what it
    // is: `?…` or `#…`.
    let (before, hidden_tail) = match text.find(['?', '#']) {
        Some(at) => (&text[..at], Some(&text[at..at + 1])),
        None => (text, None),
    };
    let shown = match before.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
                None => before.to_string(),
            }
        }
        None => before.to_string(),
    };
    match hidden_tail {
        Some(separator) => shown + separator + "…",
        None => shown,
    }
}

/// RFC 3986 §5.2.4 on an absolute path: `.` and `..` segments resolved, never
/// above the root.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (index, segment) in segments.iter().enumerate() {
        let last = index + 1 == segments.len();
        match *segment {
            "." => {
                if last {
                    kept.push("");
                }
            }
            ".." => {
                kept.pop();
                if last {
                    kept.push("");
                }
            }
            other => kept.push(other),
        }
    }
    format!("/{}", kept.join("/"))
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
    fn unusable_urls_are_shown_without_secrets() {
        for (text, secret) in [
            ("http://user:SECRET@127.0.0.1/x", "SECRET"),
            ("http://127.0.0.1:99999/x?Authorization=SECRET", "SECRET"),
            ("http://127.0.0.1/x?sig=SECRET#frag", "SECRET"),
            ("https://127.0.0.1/x#SECRET", "SECRET"),
            ("http://u:SECRET@[::1/x", "SECRET"),
            ("ftp://user:SECRET@host/x?y", "SECRET"),
            ("http://127.0.0.1/a b?token=SECRET", "SECRET"),
        ] {
            let error = Url::parse(text).unwrap_err();
            assert!(!error.contains(secret), "{error}");
            assert!(
                error.contains("127.0.0.1") || error.contains("host") || error.contains("::1"),
                "{error}"
            );
        }
        assert_eq!(redacted("http://a@b/c@d?e"), "http://…@b/c@d?…");
        assert_eq!(redacted("not a url"), "not a url");
        // A fragment is shown as one, not as a query that is not there.
        assert_eq!(redacted("http://h/a.bin#frag"), "http://h/a.bin#…");
        assert_eq!(redacted("http://h/a.bin?sig=1#frag"), "http://h/a.bin?…");
    }

    #[test]
    fn redirects_resolve_as_rfc_3986_says() {
        let base = Url::parse("http://a.example/b/c/d;p?q=secret").unwrap();
        let to = |location: &str| {
            base.redirect_to(location)
                .map(|url| format!("{}{}", url.origin_text(), url.path_and_query))
        };
        // RFC 3986 §5.4.1, the cases a Location can carry.
        assert_eq!(to("g").unwrap(), "http://a.example:80/b/c/g");
        assert_eq!(to("./g").unwrap(), "http://a.example:80/b/c/g");
        assert_eq!(to("g/").unwrap(), "http://a.example:80/b/c/g/");
        assert_eq!(to("/g").unwrap(), "http://a.example:80/g");
        assert_eq!(to("//g").unwrap(), "http://g:80/");
        assert_eq!(to("?y").unwrap(), "http://a.example:80/b/c/d;p?y");
        assert_eq!(to("g?y").unwrap(), "http://a.example:80/b/c/g?y");
        assert_eq!(to("g#s").unwrap(), "http://a.example:80/b/c/g");
        assert_eq!(to(".").unwrap(), "http://a.example:80/b/c/");
        assert_eq!(to("..").unwrap(), "http://a.example:80/b/");
        assert_eq!(to("../g").unwrap(), "http://a.example:80/b/g");
        assert_eq!(to("../../g").unwrap(), "http://a.example:80/g");
        assert_eq!(to("../../../../g").unwrap(), "http://a.example:80/g");
        assert_eq!(to("/./g/../h").unwrap(), "http://a.example:80/h");
        assert_eq!(to("//g/../h").unwrap(), "http://g:80/h");
        assert_eq!(
            to("http://x/a/./b/../c?d/../e").unwrap(),
            "http://x:80/a/c?d/../e"
        );
        assert_eq!(
            to("HTTPS://cdn.example:8443/x?sig=1").unwrap(),
            "https://cdn.example:8443/x?sig=1"
        );
        // Upgrades are fine, downgrades and junk are not.
        let secure = Url::parse("https://[::1]:9000/a/b").unwrap();
        assert_eq!(secure.redirect_to("c").unwrap().path_and_query, "/a/c");
        assert_eq!(secure.redirect_to("c").unwrap().host, "::1");
        let downgrade = secure.redirect_to("http://x/y").unwrap_err();
        assert!(downgrade.contains("https to plain http"), "{downgrade}");
        assert!(base.redirect_to("").is_err());
        assert!(base.redirect_to("ftp://x/y").is_err());
        assert!(base.redirect_to("/a b").is_err());
        assert!(base.redirect_to("https://user:pw@x/").is_err());
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(Url::parse("ftp://x/y").is_err());
        assert!(Url::parse("https://user:pw@x/y").is_err());
        assert!(Url::parse("https://x/y#frag").is_err());
        assert!(Url::parse("https://:80/").is_err());
        assert!(Url::parse("https://x/a b").is_err());
        assert!(Url::parse("https://x:99999/").is_err());
        assert!(Url::parse("https://c[::1]:9000/").is_err());
        assert!(Url::parse("https://a:b:80/").is_err());
        assert!(Url::parse("https://[host]/").is_err());
        assert!(Url::parse("https://ex%41mple.com/").is_err());
        assert!(Url::parse("https://my_host.internal-1:8080/").is_ok());
    }
}

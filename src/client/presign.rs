//! When a presigned URL stops being accepted, as its own query says. Every
//! range request shows the signature again, so a parallel download needs
//! the URL valid until its last request, where a single stream needs it at
//! its first. I/O-free: the query in, an instant out.
//!
//! Read: S3 (and R2, MinIO, B2's S3 endpoint) SigV4 `X-Amz-Date` +
//! `X-Amz-Expires`; Google Cloud Storage V4 `X-Goog-Date` + `X-Goog-Expires`;
//! S3 SigV2, CloudFront and GCS V2 `Expires` (Unix seconds); an Azure SAS
//! `se` (with its `sig`). Names match without regard to case.

use crate::units::{format_instant_ms, parse_instant_ms};

/// The instant a URL's signature expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// Unix time, in ms.
    pub at_ms: u64,
    /// The query parameters it was read from, as a message names them.
    pub from: &'static str,
}

/// The expiry a presigned URL's query (`path_and_query` from its first `?`,
/// a fragment already gone) carries; `None` for a URL that carries none
/// this reads, or one whose values do not parse.
pub fn expiry(path_and_query: &str) -> Option<Expiry> {
    let (_, query) = path_and_query.split_once('?')?;
    let parameter = |name: &str| -> Option<String> {
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            key.eq_ignore_ascii_case(name).then(|| {
                let decoded = crate::b2::percent_decode(value).unwrap_or_default();
                String::from_utf8_lossy(&decoded).into_owned()
            })
        })
    };
    let dated = |date: &str, expires: &str, from: &'static str| -> Option<Expiry> {
        let signed_ms = basic_instant_ms(&parameter(date)?)?;
        let lifetime_s = seconds(&parameter(expires)?)?;
        Some(Expiry {
            at_ms: signed_ms.checked_add(lifetime_s.checked_mul(1000)?)?,
            from,
        })
    };
    dated("X-Amz-Date", "X-Amz-Expires", "X-Amz-Date + X-Amz-Expires")
        .or_else(|| {
            dated(
                "X-Goog-Date",
                "X-Goog-Expires",
                "X-Goog-Date + X-Goog-Expires",
            )
        })
        .or_else(|| {
            let at_s = seconds(&parameter("Expires")?)?;
            Some(Expiry {
                at_ms: at_s.checked_mul(1000)?,
                from: "Expires",
            })
        })
        .or_else(|| {
            parameter("sig")?;
            Some(Expiry {
                at_ms: parse_instant_ms(&parameter("se")?).ok()?,
                from: "se",
            })
        })
}

/// What a refusal (401/403) of the URL with `path_and_query` at `now_ms`
/// means, for its message, when its query says when it expires.
pub fn refusal_cause(path_and_query: &str, now_ms: u64) -> Option<String> {
    let cause = match expiry(path_and_query)? {
        expiry if expiry.at_ms <= now_ms => format!(
            "its signature expired at {} ({}), {} before this request; \
             run the command again with a fresh URL",
            format_instant_ms(expiry.at_ms),
            expiry.from,
            duration_text((now_ms - expiry.at_ms) / 1000)
        ),
        expiry => format!(
            "its signature is valid until {} ({}), so the origin refuses it for another reason \
             (a wrong signature, this machine's clock, a path it protects)",
            format_instant_ms(expiry.at_ms),
            expiry.from
        ),
    };
    Some(cause)
}

/// The warning for a download whose URL expires (`expiry`, at `now_ms`)
/// before the `bytes_left` would arrive at `rate_bytes_per_s`; `None` while
/// it will make it, or once it has expired (the refusal says so then).
pub fn expiry_warning(
    expiry: &Expiry,
    now_ms: u64,
    bytes_left: u64,
    rate_bytes_per_s: f64,
) -> Option<String> {
    if bytes_left == 0 || rate_bytes_per_s <= 0.0 || now_ms >= expiry.at_ms {
        return None;
    }
    let needed_s = (bytes_left as f64 / rate_bytes_per_s).ceil() as u64;
    let left_s = (expiry.at_ms - now_ms) / 1000;
    (needed_s > left_s).then(|| {
        format!(
            "the URL's signature expires at {} ({}), in {}, and the download needs about {} \
             more at its current rate: the origin will refuse the rest. What arrived is kept: \
             run the same command with a fresh URL to resume",
            format_instant_ms(expiry.at_ms),
            expiry.from,
            duration_text(left_s),
            duration_text(needed_s)
        )
    })
}

/// Now, as Unix time in ms (`refusal_cause`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// `3 h 5 min`, `12 min 30 s`, `40 s`.
pub fn duration_text(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, seconds / 60 % 60),
    }
}

/// `20261128T180000Z` (ISO 8601 basic, as SigV4 signs it).
fn basic_instant_ms(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 16
        && bytes[8] == b'T'
        && bytes[15] == b'Z'
        && bytes[..8]
            .iter()
            .chain(&bytes[9..15])
            .all(u8::is_ascii_digit);
    if !shaped {
        return None;
    }
    let extended = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    parse_instant_ms(&extended).ok()
}

/// Whole seconds: digits only, at most 12 (a lifetime, or a Unix time
/// before the year 33658).
fn seconds(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.len() <= 12 && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_28_18H_MS: u64 = 1_795_888_800_000; // 2026-11-28T18:00:00Z

    #[test]
    fn reads_each_scheme() {
        let sigv4 = "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261128T180000Z\
                     &X-Amz-Expires=3600&X-Amz-Signature=ab";
        assert_eq!(
            expiry(sigv4),
            Some(Expiry {
                at_ms: NOV_28_18H_MS + 3_600_000,
                from: "X-Amz-Date + X-Amz-Expires"
            })
        );
        let gcs = "/b/k?x-goog-date=20261128T180000Z&x-goog-expires=60&x-goog-signature=1";
        assert_eq!(expiry(gcs).unwrap().at_ms, NOV_28_18H_MS + 60_000);
        let sigv2 = "/k?AWSAccessKeyId=A&Expires=1795888800&Signature=s%2Fx";
        assert_eq!(expiry(sigv2).unwrap().at_ms, NOV_28_18H_MS);
        let azure = "/c/k?sv=2022-11-02&se=2026-11-28T18%3A00%3A00Z&sr=b&sp=r&sig=x%3D";
        assert_eq!(
            expiry(azure),
            Some(Expiry {
                at_ms: NOV_28_18H_MS,
                from: "se"
            })
        );
    }

    #[test]
    fn reads_nothing_it_cannot_parse() {
        for url in [
            "/k",
            "/k?",
            "/k?X-Amz-Date=20261128T180000Z",
            "/k?X-Amz-Date=2026-11-28&X-Amz-Expires=60",
            "/k?X-Amz-Date=20261328T180000Z&X-Amz-Expires=60",
            "/k?X-Amz-Date=20261128T180000Z&X-Amz-Expires=-1",
            "/k?Expires=soon",
            "/k?Expires=99999999999999999999",
            "/k?se=2026-11-28T18:00:00Z",
            "/k?sig=x&se=tomorrow",
            "/k?Authorization=3_token",
        ] {
            assert_eq!(expiry(url), None, "{url}");
        }
    }

    #[test]
    fn a_refusal_names_the_expiry_or_says_it_is_not_the_cause() {
        let url = "/k?X-Amz-Date=20261128T180000Z&X-Amz-Expires=3600";
        let expired_at = NOV_28_18H_MS + 3_600_000;
        assert_eq!(
            refusal_cause(url, expired_at + 125_000).unwrap(),
            "its signature expired at 2026-11-28T19:00:00Z (X-Amz-Date + X-Amz-Expires), \
             2 min 5 s before this request; run the command again with a fresh URL"
        );
        let valid = refusal_cause(url, expired_at - 1).unwrap();
        assert!(
            valid.contains("valid until 2026-11-28T19:00:00Z"),
            "{valid}"
        );
        assert_eq!(refusal_cause("/k", 0), None);
    }

    #[test]
    fn a_download_is_warned_only_when_its_url_expires_first() {
        let expiry = Expiry {
            at_ms: NOV_28_18H_MS,
            from: "Expires",
        };
        let minute_before = NOV_28_18H_MS - 60_000;
        // 100 MB at 1 MB/s: 100 s, against 60 s left.
        let warning = expiry_warning(&expiry, minute_before, 100_000_000, 1e6).unwrap();
        assert!(
            warning.contains("2026-11-28T18:00:00Z (Expires), in 1 min 0 s")
                && warning.contains("needs about 1 min 40 s more"),
            "{warning}"
        );
        assert_eq!(
            expiry_warning(&expiry, minute_before, 50_000_000, 1e6),
            None
        );
        assert_eq!(expiry_warning(&expiry, minute_before, 0, 1e6), None);
        assert_eq!(expiry_warning(&expiry, minute_before, 100, 0.0), None);
        assert_eq!(
            expiry_warning(&expiry, NOV_28_18H_MS, 100_000_000, 1e6),
            None
        );
    }

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        assert_eq!(duration_text(40), "40 s");
        assert_eq!(duration_text(750), "12 min 30 s");
        assert_eq!(duration_text(11_100), "3 h 5 min");
    }
}

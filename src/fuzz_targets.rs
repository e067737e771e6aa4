//! The fuzz targets' bodies, shared by `fuzz/` (cargo-fuzz, nightly) and
//! `tests/fuzz_corpus.rs` (stable, replays `fuzz/corpus/*`). Each takes
//! arbitrary bytes and panics only when an invariant of the parsers breaks.

use crate::b2::{
    AuthorizeResponse, B2ErrorBody, FileObject, ListBucketsResponse, ListFileNamesResponse,
    b2_url_encode, percent_decode, percent_decode_plus,
};
use crate::config::{HTTP_HEAD_MAX_BYTES, NAME_SEGMENT_MAX_BYTES, RETRY_AFTER_MAX_S};
use crate::http::{
    ChunkedDecoder, ChunkedStep, ContentRangeValue, parse_content_range_value, parse_http_date,
    parse_response_head_at, retry_after_s,
};

const NOW_UNIX_S: u64 = 1_700_000_000;

/// Response head, then the bytes after it as a chunked body fed in pieces.
pub fn http_head(data: &[u8]) {
    if let Ok(Some(head)) = parse_response_head_at(data, NOW_UNIX_S) {
        assert!(head.head_len <= data.len() && head.head_len <= HTTP_HEAD_MAX_BYTES);
        // The head alone parses to the same thing: extra bytes never change it.
        let again = parse_response_head_at(&data[..head.head_len], NOW_UNIX_S);
        assert_eq!(again.as_ref().ok().and_then(Option::as_ref), Some(&head));
        assert!(head.retry_after_s.is_none_or(|s| s <= RETRY_AFTER_MAX_S));
        if let Some(range) = head.content_range {
            assert!(range.first <= range.last);
        }
    }
    // Chunked decoding of the whole input, cut into pieces whose sizes come
    // from the first byte, must agree with decoding it in one piece.
    let piece_len = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let whole = decode_chunked(&[data]);
    let pieces: Vec<&[u8]> = data.chunks(piece_len).collect();
    assert_eq!(decode_chunked(&pieces), whole);
}

/// Chunked body framing alone: the first byte sets the piece size, the rest is
/// the body. Whole, in pieces and byte by byte must agree, payload never
/// exceeds the input, and the end of the body lies within the input.
pub fn chunked(data: &[u8]) {
    let (first, body) = data.split_first().unwrap_or((&1, &[]));
    let piece_len = usize::from(*first).max(1);
    let whole = decode_chunked(&[body]);
    assert!(whole.0.len() <= body.len());
    if let Ok(Some(consumed)) = whole.1 {
        assert!(consumed <= body.len());
    }
    let pieces: Vec<&[u8]> = body.chunks(piece_len).collect();
    assert_eq!(decode_chunked(&pieces), whole);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(decode_chunked(&bytes), whole);
}

/// (payload, Ok(consumed-at-done) | Err) of a chunked body fed in pieces.
fn decode_chunked(pieces: &[&[u8]]) -> (Vec<u8>, Result<Option<usize>, crate::http::HttpError>) {
    let mut decoder = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed_total = 0;
    for piece in pieces {
        pending.extend_from_slice(piece);
        loop {
            match decoder.decode(&pending) {
                Err(error) => return (payload, Err(error)),
                Ok(ChunkedStep::NeedMore { consumed }) => {
                    assert_eq!(consumed, pending.len());
                    consumed_total += consumed;
                    pending.clear();
                    break;
                }
                Ok(ChunkedStep::Data { start, len }) => {
                    assert!(len > 0 && start + len <= pending.len());
                    payload.extend_from_slice(&pending[start..start + len]);
                    consumed_total += start + len;
                    pending.drain(..start + len);
                }
                Ok(ChunkedStep::Done { consumed }) => {
                    assert!(consumed <= pending.len());
                    assert_eq!(decoder.payload_bytes(), payload.len() as u64);
                    return (payload, Ok(Some(consumed_total + consumed)));
                }
            }
        }
    }
    (payload, Ok(None))
}

/// `Content-Range`, `Retry-After` and HTTP dates.
pub fn content_range(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_content_range_value(text) {
        Ok(ContentRangeValue::Satisfied(range)) => {
            assert!(range.first <= range.last);
            assert!(
                range
                    .complete_length
                    .is_none_or(|complete| range.last < complete)
            );
        }
        Ok(ContentRangeValue::Unsatisfied { .. }) | Err(_) => {}
    }
    assert!(retry_after_s(text, NOW_UNIX_S).is_none_or(|s| s <= RETRY_AFTER_MAX_S));
    let _ = parse_http_date(text);
}

/// Every B2 JSON type, and name encoding round trips.
pub fn b2_json(data: &[u8]) {
    if let Ok(auth) = serde_json::from_slice::<AuthorizeResponse>(data) {
        assert!(format!("{auth:?}").contains("authorization_token: \"<redacted>\""));
    }
    let _ = serde_json::from_slice::<ListBucketsResponse>(data);
    if let Ok(page) = serde_json::from_slice::<ListFileNamesResponse>(data) {
        for file in &page.files {
            let _ = (
                file.expected_sha1(),
                file.length_bytes(),
                file.modified_millis(),
            );
        }
    }
    if let Ok(file) = serde_json::from_slice::<FileObject>(data) {
        let _ = file.expected_sha1();
    }
    let _ = serde_json::from_slice::<B2ErrorBody>(data);
    let text = String::from_utf8_lossy(data);
    let encoded = b2_url_encode(&text);
    assert_eq!(percent_decode(&encoded).unwrap(), text.as_bytes());
    let _ = percent_decode(&text);
    let _ = percent_decode_plus(&text);
}

/// Name mapping as `restore` does it: the first line is the folder prefix,
/// the rest the name.
pub fn names(data: &[u8]) {
    use crate::restore::paths::{folder_prefix, relative_name};
    let text = String::from_utf8_lossy(data);
    restore_paths(&text);
    let (prefix, name) = text.split_once('\n').unwrap_or(("", &text));
    let folder = folder_prefix(prefix);
    assert!(folder.is_empty() || (folder.ends_with('/') && !folder.ends_with("//")));
    if let Some(relative) = relative_name(name, &folder) {
        assert_eq!(format!("{folder}{relative}"), name);
        restore_paths(relative);
    }
}

/// The mapping `restore` uses (`restore::paths`), with the same invariants:
/// refused, or segments that stay strictly beneath DIR.
fn restore_paths(name: &str) {
    use crate::restore::paths::{Mapped as PathMapped, STATE_DIR_NAME, map_entry};
    for (is_folder_entry, size_bytes) in [(false, 0), (true, 0), (false, 1)] {
        let (segments, is_file) = match map_entry(name, is_folder_entry, size_bytes) {
            PathMapped::Refused(reason) => {
                assert!(!reason.is_empty());
                continue;
            }
            PathMapped::File(segments) => (segments, true),
            PathMapped::Directory(segments) => (segments, false),
        };
        assert!(!is_file || (!segments.is_empty() && !is_folder_entry));
        for segment in &segments {
            assert!(!segment.is_empty() && *segment != "." && *segment != "..");
            assert!(!segment.contains('/'));
            assert!(!segment.bytes().any(|b| b < 0x20 || b == 0x7f));
            assert!(segment.len() <= NAME_SEGMENT_MAX_BYTES);
        }
        assert!(segments.first() != Some(&STATE_DIR_NAME));
    }
}

/// URL parsing and redirect resolution as `get` does it: the first line is
/// the URL given, the second a `Location`. Whatever parses re-parses to
/// itself; a redirect target is a clean absolute path (no dot segments) on
/// an http(s) origin and never a downgrade from https.
pub fn urls(data: &[u8]) {
    use crate::client::url::Url;
    let text = String::from_utf8_lossy(data);
    let (given, location) = text.split_once('\n').unwrap_or((&text, ""));
    // A presigned URL's expiry is read from any text, parsed or not.
    let _ = crate::client::presign::refusal_cause(given, u64::MAX);
    let _ = crate::client::presign::refusal_cause(given, 0);
    let Ok(base) = Url::parse(given) else {
        return;
    };
    let reparsed = Url::parse(&format!("{}{}", base.origin_text(), base.path_and_query));
    assert_eq!(reparsed.as_ref(), Ok(&base));
    let _ = base.base_name();
    let _ = base.display_without_query();
    if let Ok(target) = base.redirect_to(location) {
        assert!(target.path_and_query.starts_with('/'));
        assert!(!target.host.is_empty());
        assert!(target.tls || !base.tls, "a downgrade from https");
        let path = target.path_and_query.split('?').next().unwrap_or("");
        assert!(
            !path
                .split('/')
                .any(|segment| segment == "." || segment == ".."),
            "dot segments left in {path:?}"
        );
        let again = Url::parse(&format!(
            "{}{}",
            target.origin_text(),
            target.path_and_query
        ));
        assert_eq!(again.as_ref(), Ok(&target));
    }
}

/// Proxy settings as `resolve` reads them: lines are a proxy URL, a
/// `no_proxy` list, a host and a port; then the bytes as a proxy's answer to
/// CONNECT. Never a panic; a chosen proxy has a host, and its `Debug` and
/// messages never show the credentials.
pub fn proxy(data: &[u8]) {
    use crate::client::proxy::{bypasses, check_connect_reply, select};
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let (proxy_url, no_proxy, host) = (
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
    );
    let port: u16 = lines
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(443);
    let env = |name: &str| match name {
        "https_proxy" => Some(proxy_url.to_string()),
        "no_proxy" => Some(no_proxy.to_string()),
        _ => None,
    };
    let _ = bypasses(no_proxy, host, port);
    if let Ok(Some(chosen)) = select(env, true, host, port) {
        assert!(!chosen.host.is_empty());
        // The same proxy without its credentials shows exactly the same.
        if let Some((before, host_port)) = proxy_url.rsplit_once('@') {
            let scheme = before.split_once("://").map_or("", |(scheme, _)| scheme);
            let bare = if scheme.is_empty() {
                host_port.to_string()
            } else {
                format!("{scheme}://{host_port}")
            };
            let bare_env = |name: &str| match name {
                "https_proxy" => Some(bare.clone()),
                "no_proxy" => Some(no_proxy.to_string()),
                _ => None,
            };
            if let Ok(Some(without)) = select(bare_env, true, host, port) {
                assert_eq!(chosen.display(), without.display());
                let shown = format!("{chosen:?}").replace("Some(\"<redacted>\")", "None");
                assert_eq!(shown, format!("{without:?}"));
            }
        }
        let _ = chosen.connect_request(host, port);
        let origin = crate::client::proxy::authority(host, port);
        let _ = check_connect_reply(data, &chosen, &origin);
    }
}

/// `--as-of`: the first line is an instant, the rest a
/// `b2_list_file_versions` page whose entries go through the version choice
/// at that instant (or at the first line's length, in ms, if it is none).
/// An instant reads back from its own formatting; the choice picks at most
/// one upload per name, never one uploaded after the instant, and refuses
/// rather than guesses when the order is not B2's.
pub fn versions(data: &[u8]) {
    use crate::restore::listing::{Action, PageStart, VersionAt, check_progress, parse_page};
    use crate::units::{format_instant_ms, parse_instant_ms};
    let (first, page) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(first);
    let at_ms = match parse_instant_ms(&text) {
        Ok(ms) => {
            let formatted = format_instant_ms(ms);
            assert_eq!(
                parse_instant_ms(&formatted),
                Ok(ms),
                "{text:?} → {formatted}"
            );
            ms
        }
        Err(why) => {
            assert!(!why.is_empty());
            first.len() as u64
        }
    };
    let Ok(page) = parse_page(page) else {
        return;
    };
    let _ = check_progress(&PageStart::default(), &page);
    let mut choice = VersionAt::new(at_ms);
    let mut picked: Vec<String> = Vec::new();
    for entry in page.entries {
        match choice.pick(entry) {
            Ok(Some(entry)) => {
                assert_eq!(entry.action, Action::Upload);
                assert!(entry.upload_ms.is_some_and(|ms| ms <= at_ms));
                assert!(
                    picked.last() < Some(&entry.name),
                    "one version per name, names ascending"
                );
                picked.push(entry.name);
            }
            Ok(None) => {}
            // Out of order: the rest of the listing is not trusted.
            Err(_) => return,
        }
    }
}

/// `--files-from`: the first byte is the page size, then bucket names (one
/// per line) up to a NUL, then the list. Walking a simulated listing as the
/// listing thread does (pages from `startFileName`, jumps to the next wanted
/// name), every listed name is found if the bucket has it and reported
/// missing if not, exactly once, in order, at no more than one call a name.
pub fn files_from(data: &[u8]) {
    use crate::restore::listing::{Action, ListEntry, PageStart};
    use crate::restore::wanted::{Wanted, parse_list, sorted_names};
    let (first, rest) = data.split_first().unwrap_or((&1, &[]));
    let page_max = usize::from(*first).max(1);
    let (bucket_text, list_text) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let bucket_text = String::from_utf8_lossy(bucket_text);
    let mut bucket: Vec<&str> = bucket_text.split('\n').collect();
    bucket.sort_unstable();
    bucket.dedup();
    let list_text = String::from_utf8_lossy(list_text);
    let list: Vec<&str> = parse_list(&list_text)
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    let (names, count) = sorted_names(list.iter().copied());
    let mut wanted = Wanted::new(names, count, "", Box::new(|_, _| true));
    let (mut found, mut missing, mut calls) = (Vec::new(), Vec::new(), 0usize);
    let mut start = wanted.first_start();
    while let Some(from) = start {
        calls += 1;
        let from = from.file_name.expect("starts name a file");
        let max =
            usize::try_from(wanted.remaining()).map_or(page_max, |left| left.clamp(1, page_max));
        let mut after = bucket.iter().filter(|name| **name >= from.as_str());
        let page: Vec<&str> = after.by_ref().take(max).copied().collect();
        let next = after.next().map(|name| PageStart::at(*name));
        let mut gather = |name| {
            missing.push(name);
            true
        };
        for name in page {
            wanted.observe(name, &mut gather);
            if let Some(kept) = wanted.accept(ListEntry::named(name, Action::Upload), &mut gather) {
                found.push(kept.name);
            }
        }
        start = wanted.continue_from(next, &mut gather);
    }
    let mut asked: Vec<&str> = list;
    asked.sort_unstable();
    asked.dedup();
    let (expect_found, expect_missing): (Vec<&str>, Vec<&str>) = asked
        .iter()
        .partition(|name| bucket.binary_search(name).is_ok());
    assert_eq!(found, expect_found);
    assert_eq!(missing, expect_missing);
    assert!(
        calls <= asked.len(),
        "{calls} calls for {} names",
        asked.len()
    );
}

/// A journal's text (lossy UTF-8), read under the boot named by its first
/// `boot` line and under another: the lines handed on are exactly those a
/// plain reading of the rule gives. Records of this boot's sections, and of
/// another's those a later `durable` line of the same section covers; never
/// a `boot` or `durable` line, never a line cut at the end.
pub fn journal(data: &[u8]) {
    use crate::config::JOURNAL_UNCONFIRMED_LINES_MAX;
    let text = String::from_utf8_lossy(data);
    let first_boot = text
        .split('\n')
        .find_map(|line| line.strip_prefix("boot\t"))
        .map(str::to_string);
    for boot in [first_boot.as_deref(), Some("another boot"), None] {
        let trusted = crate::journal::trusted_lines(&text, boot);
        // The rule, read plainly: whole lines with their end offsets.
        let mut lines = Vec::new();
        let mut end = 0usize;
        for line in text.split_inclusive('\n') {
            end += line.len();
            match line.strip_suffix('\n') {
                Some(line) => lines.push((line, end as u64)),
                None => break,
            }
        }
        if lines.len() > JOURNAL_UNCONFIRMED_LINES_MAX {
            return;
        }
        let is_marker = |line: &str| line.starts_with("boot\t") || line.starts_with("durable\t");
        let mut expected = Vec::new();
        let mut section_boot: Option<&str> = None;
        for (at, &(line, line_end)) in lines.iter().enumerate() {
            if let Some(id) = line.strip_prefix("boot\t") {
                section_boot = Some(id);
                continue;
            }
            if is_marker(line) {
                continue;
            }
            let this_boot = boot.is_some() && section_boot.is_some() && section_boot == boot;
            let covered = lines[at + 1..]
                .iter()
                .take_while(|(later, _)| !later.starts_with("boot\t"))
                .filter_map(|(later, _)| later.strip_prefix("durable\t")?.parse::<u64>().ok())
                .any(|offset| offset >= line_end);
            if this_boot || covered {
                expected.push(line.to_string());
            }
        }
        assert_eq!(trusted, expected, "boot {boot:?}");
    }
}

//! Replays every file of `fuzz/corpus/<target>/` through the fuzz target of the
//! same name under stable `cargo test` (cargo-fuzz needs nightly). A crash
//! found by `scripts/fuzz.sh` is fixed by adding its input here.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut replayed = 0;
    for entry in
        fs::read_dir(&directory).unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
    {
        let path = entry.unwrap().path();
        if path.is_file() {
            let data = fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} panicked on {}",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus files in {}", directory.display());
}

#[test]
fn http_head_corpus() {
    replay("http_head", ringdown::fuzz_targets::http_head);
}

#[test]
fn content_range_corpus() {
    replay("content_range", ringdown::fuzz_targets::content_range);
}

#[test]
fn b2_json_corpus() {
    replay("b2_json", ringdown::fuzz_targets::b2_json);
}

#[test]
fn chunked_corpus() {
    replay("chunked", ringdown::fuzz_targets::chunked);
}

#[test]
fn names_corpus() {
    replay("names", ringdown::fuzz_targets::names);
}

#[test]
fn urls_corpus() {
    replay("urls", ringdown::fuzz_targets::urls);
}

#[test]
fn proxy_corpus() {
    replay("proxy", ringdown::fuzz_targets::proxy);
}

#[test]
fn versions_corpus() {
    replay("versions", ringdown::fuzz_targets::versions);
}

#[test]
fn files_from_corpus() {
    replay("files_from", ringdown::fuzz_targets::files_from);
}

#[test]
fn journal_corpus() {
    replay("journal", ringdown::fuzz_targets::journal);
}

/// Stable stand-in for the fuzzer when nightly is unavailable: random
/// mutations (byte flips, truncation, splices) of the corpus files.
mod mutations {
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::fs;
    use std::path::Path;
    use std::sync::{Mutex, OnceLock};

    /// The corpus of `target`, read once per test binary (cases run thousands of times).
    fn corpus(target: &str) -> &'static [Vec<u8>] {
        type Cache = Mutex<HashMap<String, &'static [Vec<u8>]>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
        cache.entry(target.to_string()).or_insert_with(|| {
            let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target);
            let mut files: Vec<Vec<u8>> = fs::read_dir(directory)
                .unwrap()
                .map(|entry| fs::read(entry.unwrap().path()).unwrap())
                .collect();
            files.sort();
            Vec::leak(files)
        })
    }

    fn mutate(seed: &[u8], edits: &[(usize, u8, u8)], cut: usize) -> Vec<u8> {
        let mut data = seed.to_vec();
        for &(position, kind, byte) in edits {
            if data.is_empty() {
                data.push(byte);
                continue;
            }
            let at = position % data.len();
            match kind % 4 {
                0 => data[at] = byte,
                1 => data.insert(at, byte),
                2 => {
                    data.remove(at);
                }
                _ => {
                    let copy: Vec<u8> = data[at..].iter().copied().take(16).collect();
                    data.splice(at..at, copy);
                }
            }
        }
        let keep = if data.is_empty() {
            0
        } else {
            data.len() - cut % (data.len() + 1) / 4
        };
        data.truncate(keep);
        data
    }

    fn check(target: &str, run: fn(&[u8]), pick: usize, edits: &[(usize, u8, u8)], cut: usize) {
        let seeds = corpus(target);
        run(&mutate(&seeds[pick % seeds.len()], edits, cut));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn http_head(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("http_head", ringdown::fuzz_targets::http_head, pick, &edits, cut);
        }

        #[test]
        fn content_range(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("content_range", ringdown::fuzz_targets::content_range, pick, &edits, cut);
        }

        #[test]
        fn b2_json(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("b2_json", ringdown::fuzz_targets::b2_json, pick, &edits, cut);
        }

        #[test]
        fn chunked(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("chunked", ringdown::fuzz_targets::chunked, pick, &edits, cut);
        }

        #[test]
        fn names(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("names", ringdown::fuzz_targets::names, pick, &edits, cut);
        }

        #[test]
        fn urls(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("urls", ringdown::fuzz_targets::urls, pick, &edits, cut);
        }

        #[test]
        fn proxy(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("proxy", ringdown::fuzz_targets::proxy, pick, &edits, cut);
        }

        #[test]
        fn versions(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("versions", ringdown::fuzz_targets::versions, pick, &edits, cut);
        }

        #[test]
        fn files_from(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("files_from", ringdown::fuzz_targets::files_from, pick, &edits, cut);
        }

        #[test]
        fn journal(pick in any::<usize>(), edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..8), cut in any::<usize>()) {
            check("journal", ringdown::fuzz_targets::journal, pick, &edits, cut);
        }

        #[test]
        fn random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
            ringdown::fuzz_targets::http_head(&data);
            ringdown::fuzz_targets::content_range(&data);
            ringdown::fuzz_targets::b2_json(&data);
            ringdown::fuzz_targets::names(&data);
            ringdown::fuzz_targets::chunked(&data);
            ringdown::fuzz_targets::urls(&data);
            ringdown::fuzz_targets::proxy(&data);
            ringdown::fuzz_targets::versions(&data);
            ringdown::fuzz_targets::files_from(&data);
            ringdown::fuzz_targets::journal(&data);
        }
    }
}

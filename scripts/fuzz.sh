#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 60) each. Needs a nightly
# toolchain and cargo-fuzz; installs cargo-fuzz if missing, and says clearly
# when nightly cannot be had. New corpus entries land in fuzz/corpus/<target>/,
# which `cargo test --test fuzz_corpus` replays on stable.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
targets=(http_head chunked content_range b2_json names urls proxy versions files_from)

if ! command -v rustup >/dev/null 2>&1; then
    echo "fuzz.sh: NIGHTLY IS UNAVAILABLE: rustup is not installed, so no nightly toolchain can be added." >&2
    echo "fuzz.sh: not fuzzing. The corpus is still replayed on stable by: cargo test --test fuzz_corpus" >&2
    exit 2
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: no nightly toolchain; trying 'rustup toolchain install nightly --profile minimal'" >&2
    if ! rustup toolchain install nightly --profile minimal >&2; then
        echo "fuzz.sh: NIGHTLY IS UNAVAILABLE on this machine (cargo-fuzz needs it)." >&2
        echo "fuzz.sh: not fuzzing. The corpus is still replayed on stable by: cargo test --test fuzz_corpus" >&2
        exit 2
    fi
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    if ! cargo install cargo-fuzz --locked >&2; then
        echo "fuzz.sh: could not install cargo-fuzz; not fuzzing." >&2
        exit 2
    fi
fi

for target in "${targets[@]}"; do
    echo "fuzz.sh: $target for ${seconds}s" >&2
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -max_len=65536 -print_final_stats=1
done
echo "fuzz.sh: all targets ran ${seconds}s without a crash" >&2

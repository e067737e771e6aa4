#!/usr/bin/env bash
# The one test command (README, .ci/run): builds everything in release mode and
# runs unit, integration and interop tests. Installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

# Edition 2024 needs Rust 1.85; distributions' packaged Rust is often older.
rust=$(rustc --version | sed -n 's/^rustc \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
if [ -n "$rust" ] && [ "${rust% *}" -eq 1 ] && [ "${rust#* }" -lt 85 ]; then
    echo "test.sh: $(rustc --version) is older than the 1.85 this crate needs (edition 2024): rustup update stable" >&2
    exit 2
fi
# fmt and clippy are rustup components a minimal profile leaves out.
if command -v rustup >/dev/null; then
    for component in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$component" ||
            rustup component add "$component"
    done
fi

cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
if [ -x scripts/interop.sh ]; then
    scripts/interop.sh
fi

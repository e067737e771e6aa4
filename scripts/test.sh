#!/usr/bin/env bash
# The one test command (README, .ci/run): builds everything in release mode and
# runs unit, integration and interop tests. Installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
if [ -x scripts/interop.sh ]; then
    scripts/interop.sh
fi

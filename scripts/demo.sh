#!/usr/bin/env bash
# The README's main job: build ringdown, then `ringdown demo`: generate a small
# mixed bucket (hundreds of small objects, some empty, one large file), serve it
# with ringdown's own B2-compatible server over TLS on 127.0.0.1, restore the
# whole bucket with the io_uring engine, verify every SHA1, and compare the
# restored tree byte for byte with the source. Needs only Rust.
#
# Extra arguments go to `ringdown demo` (e.g. --files 2000 --large-size 256MiB --keep).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
exec target/release/ringdown demo "$@"

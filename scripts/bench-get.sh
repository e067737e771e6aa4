#!/usr/bin/env bash
# The `get` headline (issue 4): one 1 GiB object with a real contentSha1,
# ringdown vs b2sdk vs curl vs aria2c, interleaved, min and median.
#   scripts/bench-get.sh [--runs N (default 5, at least 3)] [--out DIR] [--quick]
# Same harness as scripts/bench.sh (see there); this only fixes the scenario and peers.
# It never touches README.md or docs/bench/ (one scenario of the full run).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift ;;
        *) args+=("$1") ;;
    esac
    shift
done
if [ "$runs" -lt 3 ]; then echo "bench-get.sh: --runs must be at least 3" >&2; exit 2; fi
exec scripts/bench.sh --scenario big --tools ringdown,b2sdk,curl,aria2c --runs "$runs" --out bench-out/get --no-readme "${args[@]}"

#!/usr/bin/env bash
# The benchmark: ringdown against b2sdk 2.8.0, curl, aria2c and rclone, on one
# local TLS origin (`ringdown serve`), interleaved runs, every output verified.
#
#   scripts/bench.sh [--quick] [--scenario NAME...] [--runs N] [--out DIR]
#                    [--tools ringdown,b2sdk,curl,aria2c,rclone] [--no-drop-caches] [--readme|--no-readme]
#
# Scenarios: big big-large small mixed wan (= wan-big wan-small wan-mixed wan-faults) faults nginx (= nginx-big nginx-small
# nginx-mixed: downloads served by nginx, the issue's reference origin) memlock direct (`--direct-io on`,
# where the CPU target applies) (default: all).
# --quick: small datasets and 2 runs (a few minutes). Output: bench-out/ (results.json,
# report.md, *.png, logs/, stats/). Rewrites the README block between
# <!-- bench:begin --> and <!-- bench:end --> (and docs/bench/*.png) when both
# markers exist, only after a complete default run: full data, >= 3 runs, every
# scenario and every default tool, ringdown never skipped and always correct
# (--no-readme: never). Exits non-zero when ringdown was skipped or wrong.
#
# Installs what it needs: a venv in target/bench-venv (b2sdk==2.8.0, matplotlib),
# aria2/curl/rclone/nginx from apt when possible (a peer that cannot be installed is
# reported as skipped). Datasets are cached in target/bench-data.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
VENV=$TARGET/bench-venv
B2SDK_PIN="b2sdk==2.8.0"

say() { echo "bench.sh: $*" >&2; }

# Arguments are passed through to scripts/bench.py; --scenario accepts several names.
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --scenario)
            shift
            while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do ARGS+=(--scenario "$1"); shift; done
            continue ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done

# 1. Peers from apt (best effort: a missing peer is reported as skipped, never faked).
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v aria2c >/dev/null || missing+=(aria2)
command -v rclone >/dev/null || missing+=(rclone)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
PY=$(command -v python3 || true)
if [ -n "$PY" ] && [ ! -x "$VENV/bin/python" ] && ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
          for p in "${missing[@]}"; do
              apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$p" || say "could not install $p (reported as skipped)"
          done; } >&2 || say "apt-get failed; missing peers will be reported as skipped"
    else
        say "not root or no apt-get: ${missing[*]} missing (reported as skipped)"
    fi
fi

# 2. The venv (cached): b2sdk pinned, matplotlib for the charts.
if ! "$VENV/bin/python" -c 'import b2sdk.version as v, matplotlib; assert v.VERSION == "2.8.0"' 2>/dev/null; then
    say "creating $VENV ($B2SDK_PIN, matplotlib)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$B2SDK_PIN" matplotlib >&2
fi

# 3. ringdown itself.
RINGDOWN=("--ringdown" "$TARGET/release/ringdown")
if ! cargo build --release --bin ringdown >&2; then
    say "cargo build --release failed: every run will be reported as skipped"
    RINGDOWN=("--ringdown" "/nonexistent/ringdown")  # never time a stale binary
fi

# 4. The self-check of the correctness checker (a flipped byte must fail), then the runs.
PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" scripts/bench_data.py selftest >&2
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" scripts/bench.py --venv-python "$VENV/bin/python" "${RINGDOWN[@]}" "${ARGS[@]}"

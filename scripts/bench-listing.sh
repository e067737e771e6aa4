#!/usr/bin/env bash
# Benchmark (not a test): restore's memory does not grow with the number of
# names. For buckets of zero-byte objects (default 10,000 and 200,000, in
# directories of 1,000), from `ringdown serve` over TLS: `restore --dry-run`
# (the listing alone) and a full restore into an empty directory, each run's
# wall time and peak RSS. Both are checked: exit 0, and exactly the bucket's
# names listed (dry run) and on disk (restore). Peak RSS is ringdown's own,
# from wait4 (scripts/bench_runner.py, as the main harness measures); it is
# never below the runner's floor, printed first. Target (bulk restore issue):
# peak RSS <= 64 MiB, the same for both.
#
#   scripts/bench-listing.sh [NAMES...]      (default: 10000 200000)
#   RUNS=3 scripts/bench-listing.sh          (runs per size, default 1)
#
# With the default sizes, when every run checked out, the table also replaces
# README.md's block between <!-- bench-listing:begin --> and
# <!-- bench-listing:end --> (NO_README=1: never), with the date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1}
SIZES=("$@")
DEFAULT_SIZES=no
[ ${#SIZES[@]} -gt 0 ] || { SIZES=(10000 200000); DEFAULT_SIZES=yes; }

cargo build --release --quiet
BIN=$PWD/target/release/ringdown
DATA=$PWD/target/bench-listing
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringdown-bench-listing.XXXXXX")
SERVE_PID=
cleanup() {
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# Buckets are made once and kept (200,000 creates take a while).
for n in "${SIZES[@]}"; do
    bucket="$DATA/buckets/names-$n"
    [ -f "$DATA/buckets/.made-$n" ] && continue
    echo "bench-listing: creating $n empty objects in $bucket" >&2
    rm -rf "$bucket"
    python3 - "$bucket" "$n" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d)
    open(os.path.join(d, f"f{i:07d}"), "wb").close()
EOF
    touch "$DATA/buckets/.made-$n"
done
# What was just created is written back now, not during the first measurement.
sync

# --no-index: no background walk of the 210,000 files while the runs are timed
# (the objects are empty: each is hashed on its first use at once).
# serve adopts B2_APPLICATION_KEY_ID/B2_APPLICATION_KEY from the environment and
# then prints no key=: run it without the caller's, so it makes up the key it prints.
env -u B2_APPLICATION_KEY_ID -u B2_APPLICATION_KEY "$BIN" serve "$DATA/buckets" --listen 127.0.0.1:0 --cert-dir "$WORK/certs" \
    --cache-dir "$DATA/sha1-cache" --no-index >"$WORK/ready" 2>"$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 1 600); do
    [ -s "$WORK/ready" ] && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
    sleep 0.1
done
READY=$(head -n1 "$WORK/ready")
field() { tr ' ' '\n' <<<"$READY" | sed -n "s/^$1=//p"; }
export B2_APPLICATION_KEY_ID B2_APPLICATION_KEY
B2_APPLICATION_KEY_ID=$(field key_id)
B2_APPLICATION_KEY=$(field key)
[ -n "$B2_APPLICATION_KEY_ID" ] && [ -n "$B2_APPLICATION_KEY" ] || { echo "bench-listing: no key_id=/key= in serve's line: $READY" >&2; exit 1; }
REALM=$(field realm)
CA=$(field ca_file)

# measure OUT CMD...: runs CMD under scripts/bench_runner.py (fork, exec,
# wait4: the rusage of CMD itself, not of a Python wrapper), its stdout to
# OUT, its stderr to $WORK/last.err; prints "WALL_S PEAK_RSS_MIB EXIT". `sh -c
# exec` only redirects stdout; it is replaced by CMD, and its own RSS is far
# below the runner's floor.
measure() {
    local out=$1
    shift
    rm -f "$WORK/run.json"
    python3 -S -I scripts/bench_runner.py "$WORK/run.json" 3600 "$WORK/last.err" -- \
        sh -c 'exec "$@" >"$0"' "$out" "$@"
    python3 -S -I - "$WORK/run.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print("0 0 runner-failed")
    sys.exit()
code = r["exit_code"] if r["exit_code"] is not None else f"signal-{r['signal']}"
print(f"{r['wall_s']:.2f} {r['peak_rss_bytes'] / 1048576:.1f} {code}")
EOF
}
read -r _ floor_mib _ < <(measure /dev/null true)
echo "bench-listing: peak RSS below is ringdown's own (wait4); the runner's floor here is $floor_mib MiB" >&2

# expected N: the names of bucket names-N, sorted as `sort` sorts.
expected() {
    python3 -c 'import sys
for i in range(int(sys.argv[1])):
    print(f"d{i // 1000:04d}/f{i:07d}")' "$1" | LC_ALL=C sort
}

TABLE=$WORK/table.md
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
{
    echo "| names | run | dry-run s | dry-run peak RSS MiB | restore s | files/s | restore peak RSS MiB |"
    echo "|---|---|---|---|---|---|---|"
} | tee "$TABLE"
status=0
for n in "${SIZES[@]}"; do
    for run in $(seq 1 "$RUNS"); do
        dest="$WORK/dest"
        expected "$n" >"$WORK/expected"
        read -r dry_s dry_mib dry_code < <(measure "$WORK/dry.out" "$BIN" restore "b2://names-$n" "$dest" \
            --realm "$REALM" --ca-file "$CA" --quiet --dry-run)
        cp "$WORK/last.err" "$WORK/dry.err"
        read -r restore_s restore_mib restore_code < <(measure /dev/null "$BIN" restore "b2://names-$n" "$dest" \
            --realm "$REALM" --ca-file "$CA" --quiet)
        # The names, not just how many: dry run (BYTES<TAB>NAME) and tree on disk.
        cut -f2- "$WORK/dry.out" | LC_ALL=C sort >"$WORK/listed"
        { find "$dest" -path "$dest/.ringdown" -prune -o -type f -printf '%P\n' 2>/dev/null || true; } |
            LC_ALL=C sort >"$WORK/on-disk"
        on_disk=$(wc -l <"$WORK/on-disk")
        listed_ok=yes
        cmp -s "$WORK/expected" "$WORK/listed" || listed_ok=no
        disk_ok=yes
        cmp -s "$WORK/expected" "$WORK/on-disk" || disk_ok=no
        if [ "$dry_code" != 0 ] || [ "$restore_code" != 0 ] || [ $listed_ok != yes ] || [ $disk_ok != yes ]; then
            echo "bench-listing: names-$n run $run: dry-run exit $dry_code (names as expected: $listed_ok)," \
                "restore exit $restore_code ($on_disk of $n files on disk, names as expected: $disk_ok)" >&2
            [ $listed_ok = yes ] || diff "$WORK/expected" "$WORK/listed" | head -n 5 >&2 || true
            [ $disk_ok = yes ] || diff "$WORK/expected" "$WORK/on-disk" | head -n 5 >&2 || true
            [ "$dry_code" = 0 ] || tail -n 20 "$WORK/dry.err" >&2
            [ "$restore_code" = 0 ] || tail -n 20 "$WORK/last.err" >&2
            status=1
        fi
        files_per_s=$(python3 -c "print(f'{$n / max($restore_s, 0.01):,.0f}')")
        echo "| $n | $run | $dry_s | $dry_mib | $restore_s | $files_per_s | $restore_mib |" | tee -a "$TABLE"
        rm -rf "$dest"
    done
done
if [ $status = 0 ] && [ $DEFAULT_SIZES = yes ] && [ -z "${NO_README:-}" ]; then
    python3 - README.md "$TABLE" "$STARTED" "$RUNS" "$floor_mib" <<'EOF'
import os, sys
readme, table, started, runs, floor = sys.argv[1:]
begin, end = "<!-- bench-listing:begin -->", "<!-- bench-listing:end -->"
text = open(readme).read()
if begin not in text or end not in text or text.index(begin) > text.index(end):
    sys.exit(0)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
body = [begin, "",
        f"Generated by `scripts/bench-listing.sh` ({started}, {runs} run(s) per size, nproc {os.cpu_count()}, "
        f"{cpu}); do not edit by hand. Every run checked: exit 0, every name listed and on disk. "
        f"Peak RSS is ringdown's own (wait4; the runner's floor here: {floor} MiB).", "",
        open(table).read().rstrip("\n"), "", end]
text = text[:text.index(begin)] + "\n".join(body) + text[text.index(end) + len(end):]
open(readme, "w").write(text)
print(f"bench-listing: rewrote the block in {readme}", file=sys.stderr)
EOF
fi
exit $status

#!/usr/bin/env bash
# Soak test (not CI; issue 7): restore SOAK_FILES (20,000) small files from
# `ringdown serve` with 1% connection resets and 1% 503s, killing the restore
# with SIGKILL at random points and restarting it for SOAK_SECONDS (600),
# then one final uninterrupted run. Reports files restored, retries (summed
# from the --stats-json of every run that exited on its own), restarts, and
# wrong files (byte comparison against the source; must be 0). A run that
# finishes between kills (exit 0) is a complete pass: its tree is compared the
# same way before it is deleted, and the first difference fails the soak.
#
#   SOAK_SECONDS=120 scripts/soak.sh
#
# Environment: SOAK_SECONDS (600), SOAK_FILES (20000), SOAK_SEED (1),
# RINGDOWN_SOAK_DIR (the generated bucket is cached there; default
# ${TMPDIR:-/tmp}/ringdown-soak). Exit 0 only when every file is correct. On a
# failure the run's directory (logs, restored tree) is kept and named.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_FILES=${SOAK_FILES:-20000}
SOAK_SEED=${SOAK_SEED:-1}
ROOT=${RINGDOWN_SOAK_DIR:-${TMPDIR:-/tmp}/ringdown-soak}
RANDOM=$SOAK_SEED

cargo build --release --quiet
BIN=$PWD/target/release/ringdown

# The bucket: deterministic names (nested prefixes) and contents, 0-16 KiB,
# generated once per file count.
DATA=$ROOT/data-$SOAK_FILES
if [ ! -e "$DATA/.complete" ]; then
    echo "soak: generating $SOAK_FILES files in $DATA" >&2
    rm -rf "$DATA"
    python3 - "$DATA/bkt" "$SOAK_FILES" <<'EOF'
import hashlib, os, sys
root, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    name = f"d{i % 37:02d}/e{i % 11:02d}/file-{i:06d}.bin"
    seed = hashlib.sha1(name.encode()).digest()
    size = 0 if i % 97 == 0 else int.from_bytes(seed[:4], "big") % 16384
    block = (seed * (size // 20 + 1))[:size]
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(block)
EOF
    touch "$DATA/.complete"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringdown-soak-run.XXXXXX")
SERVER_PID=
CLIENT_PID=
KEEP_WORK=
cleanup() {
    [ -n "$CLIENT_PID" ] && kill -9 "$CLIENT_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ -n "$KEEP_WORK" ]; then
        echo "soak: kept $WORK (restore.log, serve.log, dest/); delete it when done" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
# fail MESSAGE: the soak failed; $WORK is kept, so the log named here still exists.
fail() {
    KEEP_WORK=1
    echo "soak: FAILED: $* (see $WORK/restore.log)" >&2
    tail -20 "$WORK/restore.log" >&2 || true
    exit 1
}

# serve adopts B2_APPLICATION_KEY_ID/B2_APPLICATION_KEY from the environment and
# then prints no key=: run it without the caller's, so it makes up the key it prints.
env -u B2_APPLICATION_KEY_ID -u B2_APPLICATION_KEY "$BIN" serve "$DATA" --listen 127.0.0.1:0 --cert-dir "$WORK/certs" \
    --cache-dir "$ROOT/cache" --seed "$SOAK_SEED" \
    --reset-rate 0.01 --fail-rate 0.01 \
    >"$WORK/ready" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 200); do
    [ -s "$WORK/ready" ] && break
    sleep 0.05
done
read -r READY <"$WORK/ready" || { echo "soak: serve did not start" >&2; cat "$WORK/serve.log" >&2; exit 1; }
field() { tr ' ' '\n' <<<"$READY" | sed -n "s/^$1=//p"; }
REALM=$(field realm)
CA_FILE=$(field ca_file)
export B2_APPLICATION_KEY_ID=$(field key_id)
export B2_APPLICATION_KEY=$(field key)
[ -n "$B2_APPLICATION_KEY_ID" ] && [ -n "$B2_APPLICATION_KEY" ] || { echo "soak: no key_id=/key= in serve's line: $READY" >&2; exit 1; }
unset SSL_CERT_FILE B2_REALM JOB_COMPLETION_INDEX SLURM_ARRAY_TASK_ID

DEST=$WORK/dest
RUNS=0
restore() { # $1 = stats file; exec, so that `restore &` gives ringdown's own PID
    exec "$BIN" restore b2://bkt "$DEST" --realm "$REALM" --ca-file "$CA_FILE" \
        --quiet --stats-json "$1" >/dev/null 2>>"$WORK/restore.log"
}

# compare: byte comparison of every source file with its copy in $DEST;
# prints "RESTORED WRONG MISSING EXTRA" (.ringdown/ is not an extra file).
compare() {
    python3 - "$DATA/bkt" "$DEST" <<'EOF'
import os, sys
src, dest = sys.argv[1], sys.argv[2]
restored = wrong = missing = 0
names = set()
for base, _, files in os.walk(src):
    for f in files:
        rel = os.path.relpath(os.path.join(base, f), src)
        names.add(rel)
        try:
            same = open(os.path.join(src, rel), "rb").read() == open(os.path.join(dest, rel), "rb").read()
        except FileNotFoundError:
            missing += 1
            continue
        if same:
            restored += 1
        else:
            wrong += 1
extra = 0
for base, dirs, files in os.walk(dest):
    dirs[:] = [d for d in dirs if os.path.relpath(os.path.join(base, d), dest) != ".ringdown"]
    for f in files:
        if os.path.relpath(os.path.join(base, f), dest) not in names:
            extra += 1
print(restored, wrong, missing, extra)
EOF
}

restarts=0
passes=0
failed_runs=0
retries=0
add_retries() {
    if [ -s "$1" ]; then
        retries=$((retries + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["retries"])' "$1")))
    fi
}

started=$(date +%s)
deadline=$((started + SOAK_SECONDS))
echo "soak: $SOAK_FILES files, ${SOAK_SECONDS}s of kill -9 restarts, serve at $REALM" >&2
while [ "$(date +%s)" -lt "$deadline" ]; do
    RUNS=$((RUNS + 1))
    stats=$WORK/stats-$RUNS.json
    restore "$stats" &
    CLIENT_PID=$!
    # Kill somewhere in 0.2 .. 8 s.
    delay_ms=$((200 + RANDOM % 7800))
    waited=0
    while [ $waited -lt $delay_ms ] && kill -0 "$CLIENT_PID" 2>/dev/null; do
        sleep 0.05
        waited=$((waited + 50))
    done
    if kill -0 "$CLIENT_PID" 2>/dev/null; then
        kill -9 "$CLIENT_PID" 2>/dev/null || true
        wait "$CLIENT_PID" 2>/dev/null || true
        restarts=$((restarts + 1))
    else
        code=0
        wait "$CLIENT_PID" || code=$?
        add_retries "$stats"
        if [ "$code" -eq 0 ]; then
            # A whole pass finished between kills: check its tree, then start
            # the next from scratch.
            read -r p_restored p_wrong p_missing p_extra < <(compare) || true
            [ -n "$p_extra" ] || fail "comparing run $RUNS's tree with the source failed"
            if [ "$p_wrong" -ne 0 ] || [ "$p_missing" -ne 0 ] || [ "$p_extra" -ne 0 ]; then
                fail "run $RUNS exited 0 but its tree differs from the source:" \
                    "$p_restored identical, $p_wrong wrong, $p_missing missing, $p_extra extra files"
            fi
            passes=$((passes + 1))
            rm -rf "$DEST"
        else
            failed_runs=$((failed_runs + 1))
        fi
    fi
    CLIENT_PID=
done

echo "soak: final run" >&2
final_code=0
(restore "$WORK/stats-final.json") || final_code=$?
add_retries "$WORK/stats-final.json"

# Byte comparison of every source file with its restored copy.
read -r restored wrong missing extra < <(compare) || true
[ -n "$extra" ] || fail "comparing the final tree with the source failed"

elapsed=$(($(date +%s) - started))
cat <<EOF
soak: files            $SOAK_FILES
soak: seconds          $elapsed
soak: restarts (kill -9) $restarts
soak: runs that exited on their own: $passes complete passes (each compared: identical), $failed_runs with exit != 0
soak: retries          $retries (from --stats-json of runs that exited on their own)
soak: final run exit   $final_code
soak: files restored   $restored
soak: wrong files      $wrong
soak: missing files    $missing
soak: extra files      $extra
EOF
if [ "$final_code" -ne 0 ] || [ "$wrong" -ne 0 ] || [ "$missing" -ne 0 ] || [ "$extra" -ne 0 ]; then
    fail "final run exit $final_code, $wrong wrong, $missing missing, $extra extra files"
fi
echo "soak: OK"

#!/usr/bin/env bash
# Interop check of `ringdown serve` with the real clients: b2sdk 2.8.0, the b2
# CLI 4.x and rclone's b2 backend, over TLS with the CA the server prints.
# Exits non-zero on any mismatch. The venv is cached in target/interop-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/interop-venv
log() { echo "interop: $*" >&2; }

if [ ! -x "$VENV/bin/b2" ] || ! "$VENV/bin/python" -c 'import b2sdk' 2>/dev/null; then
    log "creating $VENV"
    if ! venv_err=$(python3 -m venv "$VENV" 2>&1); then
        rm -rf "$VENV"
        # Debian and Ubuntu ship python3 without ensurepip: the venv module is
        # the python3-venv package (python3.X-venv on some releases).
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            log "python3 -m venv failed; installing python3-venv"
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "$venv_err" >&2
            pkg=$(python3 -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])' 2>/dev/null || echo python3-venv)
            log "FAIL: python3 -m venv failed, and this script installs packages only as root with apt-get."
            log "Install Python's venv module and rerun; on Debian/Ubuntu: sudo apt-get install python3-venv (or $pkg)."
            exit 1
        fi
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check b2sdk==2.8.0 'b2>=4,<5' 'docutils<0.22'
fi

cargo build --release --quiet
BIN=$PWD/target/release/ringdown

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringdown-interop.XXXXXX")
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# ~200 files in nested folders with awkward names, plus a bucket with one file
# below and one above the large-file threshold.
"$VENV/bin/python" - "$WORK/data" <<'EOF'
import os, random, sys
root = sys.argv[1]
rng = random.Random(1234)
names = []
for index in range(200):
    depth = index % 4
    parts = [f"d{rng.randrange(5)}" for _ in range(depth)]
    special = ["plain", "with space", "plus+sign", "ünïcödé", "semi;colon", "percent%41"][index % 6]
    parts.append(f"{special}-{index:03d}.bin")
    names.append("/".join(parts))
for name in names:
    path = os.path.join(root, "tree", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.randbytes(rng.randrange(0, 64 * 1024)))
os.makedirs(os.path.join(root, "big"))
with open(os.path.join(root, "big", "small.bin"), "wb") as f:
    f.write(rng.randbytes(300 * 1024))
with open(os.path.join(root, "big", "large.bin"), "wb") as f:
    f.write(rng.randbytes(5 * 1024 * 1024 + 7))
open(os.path.join(root, "tree", "empty.bin"), "wb").close()
# Version history (`serve`'s DIR/.versions): doc.txt replaced twice, old.txt deleted.
os.makedirs(os.path.join(root, "hist"))
with open(os.path.join(root, "hist", "doc.txt"), "wb") as f:
    f.write(b"doc v3")
os.utime(os.path.join(root, "hist", "doc.txt"), (1700000300, 1700000300))
for name, stamp, body in (("doc.txt", "@1700000100000", b"doc v1"), ("doc.txt", "@1700000200000", b"doc v2 longer"),
                          ("old.txt", "@1700000100000", b"old v1"), ("old.txt", "@1700000200000.hide", b"")):
    os.makedirs(os.path.join(root, ".versions", "hist", name), exist_ok=True)
    with open(os.path.join(root, ".versions", "hist", name, stamp), "wb") as f:
        f.write(body)
EOF

# start_serve NAME ARGS...: `ringdown serve` of the data with ARGS, in place of
# the one running; sets SERVER_PID, READY (its ready line), REALM and CA, and
# points Python's and rclone's trust at CA.
field() { tr ' ' '\n' <<<"$READY" | sed -n "s/^$1=//p"; }
start_serve() {
    local name=$1
    shift
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; fi
    # serve adopts B2_APPLICATION_KEY_ID/B2_APPLICATION_KEY from the environment
    # and then prints no key=: the first server runs without the caller's (it
    # makes up a key and prints it); the later ones get that same key, which
    # the clients below keep using.
    local key_env=(-u B2_APPLICATION_KEY_ID -u B2_APPLICATION_KEY)
    if [ -n "${SERVE_KEY_ID:-}" ]; then
        key_env=(B2_APPLICATION_KEY_ID="$SERVE_KEY_ID" B2_APPLICATION_KEY="$SERVE_KEY")
    fi
    env "${key_env[@]}" "$BIN" serve "$WORK/data" --listen 127.0.0.1:0 --cert-dir "$WORK/certs" --cache-dir "$WORK/cache" \
        "$@" >"$WORK/ready-$name" 2>"$WORK/serve-$name.log" &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$WORK/ready-$name" ] && break
        sleep 0.1
    done
    READY=$(head -n1 "$WORK/ready-$name")
    [ -n "$READY" ] || { cat "$WORK/serve-$name.log" >&2; log "FAIL: no ready line ($name)"; exit 1; }
    log "$READY"
    REALM=$(field realm)
    CA=$(field ca_file)
    export REQUESTS_CA_BUNDLE=$CA SSL_CERT_FILE=$CA
}

start_serve main --large-file-threshold 2MiB --access-log "$WORK/access.jsonl"
SERVE_KEY_ID=$(field key_id)
SERVE_KEY=$(field key)
[ -n "$SERVE_KEY_ID" ] && [ -n "$SERVE_KEY" ] || { log "FAIL: no key_id=/key= in serve's ready line"; exit 1; }
export B2_APPLICATION_KEY_ID=$SERVE_KEY_ID
export B2_APPLICATION_KEY=$SERVE_KEY
export B2_ACCOUNT_INFO=$WORK/b2_account_info

log "b2sdk 2.8.0: small (contentSha1) and large (large_file_sha1) downloads"
"$VENV/bin/python" - "$REALM" "$WORK" <<'EOF'
import hashlib, os, sys
from b2sdk.v2 import B2Api, InMemoryAccountInfo
realm, work = sys.argv[1], sys.argv[2]
api = B2Api(InMemoryAccountInfo())
api.authorize_account(realm, os.environ["B2_APPLICATION_KEY_ID"], os.environ["B2_APPLICATION_KEY"])
bucket = api.get_bucket_by_name("big")
for name, expect_sha1 in (("small.bin", "real"), ("large.bin", "none")):
    target = os.path.join(work, "sdk-" + name)
    downloaded = bucket.download_file_by_name(name)
    downloaded.save_to(target)
    with open(os.path.join(work, "data", "big", name), "rb") as f:
        source = f.read()
    with open(target, "rb") as f:
        got = f.read()
    assert got == source, f"{name}: bytes differ"
    sha1 = downloaded.download_version.content_sha1
    info_sha1 = downloaded.download_version.file_info.get("large_file_sha1")
    if expect_sha1 == "real":
        assert sha1 == hashlib.sha1(source).hexdigest(), (name, sha1)
    else:
        assert info_sha1 == hashlib.sha1(source).hexdigest(), (name, sha1, info_sha1)
    print(f"interop: b2sdk {name}: {len(got)} bytes ok (content_sha1={sha1}, large_file_sha1={info_sha1})", file=sys.stderr)
names = [fv.file_name for fv, _ in bucket.ls(recursive=True)]
assert names == ["large.bin", "small.bin"], names
# Versions: b2sdk reads the hide marker and downloads an old version by id.
hist = api.get_bucket_by_name("hist")
versions = [(fv.file_name, fv.action, fv.upload_timestamp) for fv, _ in hist.ls(latest_only=False, recursive=True)]
assert versions == [("doc.txt", "upload", 1700000300000), ("doc.txt", "upload", 1700000200000),
                    ("doc.txt", "upload", 1700000100000), ("old.txt", "hide", 1700000200000),
                    ("old.txt", "upload", 1700000100000)], versions
assert [fv.file_name for fv, _ in hist.ls(recursive=True)] == ["doc.txt"]
v2 = [fv for fv, _ in hist.ls(latest_only=False, recursive=True) if fv.upload_timestamp == 1700000200000][0]
target = os.path.join(work, "sdk-doc-v2")
downloaded = hist.download_file_by_id(v2.id_)
downloaded.save_to(target)
assert open(target, "rb").read() == b"doc v2 longer"
assert downloaded.download_version.content_sha1 == hashlib.sha1(b"doc v2 longer").hexdigest()
print(f"interop: b2sdk versions: {len(versions)} listed, an old version downloaded by id", file=sys.stderr)
EOF

log "ringdown restore --as-of against the same history"
"$BIN" restore b2://hist "$WORK/out-as-of" --realm "$REALM" --ca-file "$CA" --quiet --as-of 2023-11-14T22:15:00Z
[ "$(cat "$WORK/out-as-of/doc.txt")" = "doc v1" ] && [ "$(cat "$WORK/out-as-of/old.txt")" = "old v1" ] \
    || { log "FAIL: restore --as-of"; exit 1; }

log "b2 CLI: sync b2://tree"
B2_ENVIRONMENT=$REALM "$VENV/bin/b2" sync --no-progress "b2://tree" "$WORK/out-b2" >"$WORK/b2-sync.log" 2>&1 \
    || { cat "$WORK/b2-sync.log" >&2; log "FAIL: b2 sync"; exit 1; }
diff -r "$WORK/data/tree" "$WORK/out-b2" || { log "FAIL: b2 sync output differs"; exit 1; }
log "b2 sync: $(find "$WORK/out-b2" -type f | wc -l) files identical"

if ! command -v rclone >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get install -y -qq rclone >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq rclone >/dev/null 2>&1; }) || true
    fi
fi
if command -v rclone >/dev/null 2>&1; then
    log "rclone $(rclone version 2>/dev/null | head -n1): lsf and copy"
    export RCLONE_CONFIG_RD_TYPE=b2
    export RCLONE_CONFIG_RD_ACCOUNT=$B2_APPLICATION_KEY_ID
    export RCLONE_CONFIG_RD_KEY=$B2_APPLICATION_KEY
    RCLONE=(rclone --config /dev/null --b2-endpoint "$REALM" --ca-cert "$CA" --retries 1)
    LISTED=$("${RCLONE[@]}" lsf -R --files-only rd:tree | sort)
    EXPECTED=$(cd "$WORK/data/tree" && find . -type f | sed 's|^\./||' | sort)
    [ "$LISTED" = "$EXPECTED" ] || { diff <(echo "$EXPECTED") <(echo "$LISTED") >&2; log "FAIL: rclone lsf"; exit 1; }
    "${RCLONE[@]}" copy rd:tree "$WORK/out-rclone" 2>"$WORK/rclone.log" || { cat "$WORK/rclone.log" >&2; log "FAIL: rclone copy"; exit 1; }
    mkdir -p "$WORK/out-rclone"
    diff -r "$WORK/data/tree" "$WORK/out-rclone" || { log "FAIL: rclone copy output differs"; exit 1; }
    "${RCLONE[@]}" copy rd:big "$WORK/out-rclone-big" 2>>"$WORK/rclone.log" || { cat "$WORK/rclone.log" >&2; log "FAIL: rclone copy big"; exit 1; }
    diff -r "$WORK/data/big" "$WORK/out-rclone-big" || { log "FAIL: rclone big differs"; exit 1; }
    log "rclone: $(echo "$LISTED" | wc -l) files listed, copies identical"
else
    echo "interop: SKIP rclone: not installed and could not be installed" >&2
fi

# A restricted key (one bucket, a name prefix, read-only), as production
# restores use: b2sdk reads the key's reach from the authorize answer and
# works within it; ringdown refuses what is outside it and restores the rest.
start_serve key --key-bucket tree --key-name-prefix d1/ --key-capabilities listBuckets,listFiles,readFiles
log "b2sdk 2.8.0 with a key restricted to tree/d1/"
"$VENV/bin/python" - "$REALM" "$WORK" <<'EOF'
import os, sys
from b2sdk.v2 import B2Api, InMemoryAccountInfo
from b2sdk.v2.exception import RestrictedBucket, Unauthorized
realm, work = sys.argv[1], sys.argv[2]
api = B2Api(InMemoryAccountInfo())
api.authorize_account(realm, os.environ["B2_APPLICATION_KEY_ID"], os.environ["B2_APPLICATION_KEY"])
allowed = api.account_info.get_allowed()
assert allowed["bucketName"] == "tree" and allowed["namePrefix"] == "d1/", allowed
try:
    api.get_bucket_by_name("big")
    raise AssertionError("b2sdk used a bucket outside the key")
except RestrictedBucket:
    pass
tree = api.get_bucket_by_name("tree")
root = os.path.join(work, "data", "tree")
names = sorted(fv.file_name for fv, _ in tree.ls("d1", recursive=True))
expected = sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(os.path.join(root, "d1")) for f in fs)
assert names == expected and names, (names[:3], expected[:3])
target = os.path.join(work, "sdk-key")
tree.download_file_by_name(names[0]).save_to(target)
assert open(target, "rb").read() == open(os.path.join(root, names[0]), "rb").read()
outside = sorted(f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f)))[0]
try:
    tree.download_file_by_name(outside).save_to(target + "-outside")
    raise AssertionError("a name outside the key's prefix downloaded")
except Unauthorized:
    pass
print(f"interop: b2sdk restricted key: {len(names)} names under d1/ listed, one downloaded; another bucket and {outside!r} refused", file=sys.stderr)
EOF
log "ringdown restore with the restricted key"
if "$BIN" restore b2://tree "$WORK/out-key-all" --realm "$REALM" --ca-file "$CA" --quiet 2>"$WORK/key-refused.log"; then
    log "FAIL: restore of the whole bucket with a prefix key succeeded"; exit 1
fi
grep -q 'restore b2://tree/d1/' "$WORK/key-refused.log" || { cat "$WORK/key-refused.log" >&2; log "FAIL: refusal message"; exit 1; }
"$BIN" restore b2://tree/d1 "$WORK/out-key" --realm "$REALM" --ca-file "$CA" --quiet
diff -r "$WORK/data/tree/d1" "$WORK/out-key" || { log "FAIL: restore with the restricted key differs"; exit 1; }
log "restore b2://tree/d1 with the restricted key: $(find "$WORK/out-key" -type f | wc -l) files identical"
if command -v rclone >/dev/null 2>&1; then
    RCLONE=(rclone --config /dev/null --b2-endpoint "$REALM" --ca-cert "$CA" --retries 1)
    LISTED=$("${RCLONE[@]}" lsf -R --files-only rd:tree/d1 | sort)
    EXPECTED=$(cd "$WORK/data/tree/d1" && find . -type f | sed 's|^\./||' | sort)
    [ "$LISTED" = "$EXPECTED" ] || { diff <(echo "$EXPECTED") <(echo "$LISTED") >&2; log "FAIL: rclone lsf with the restricted key"; exit 1; }
    if "${RCLONE[@]}" lsf rd:big >/dev/null 2>"$WORK/rclone-key.log"; then
        log "FAIL: rclone listed a bucket outside the key"; exit 1
    fi
    grep -q 'must use bucket' "$WORK/rclone-key.log" || { cat "$WORK/rclone-key.log" >&2; log "FAIL: rclone did not read the key's bucket"; exit 1; }
    log "rclone with the restricted key: $(echo "$LISTED" | wc -l) files under d1/ listed; bucket big refused"
fi

# SSE-C: tree/d1/ stored under a customer key. b2sdk reads the listing's
# serverSideEncryption and needs the key to download; the b2 CLI's sync sends
# it for every file; ringdown sends it only for the SSE-C ones.
head -c 32 /dev/urandom >"$WORK/sse-c.key"
export B2_SOURCE_SSE_C_KEY_B64=$(base64 -w0 <"$WORK/sse-c.key")
start_serve sse-c --sse-c-key-file "$WORK/sse-c.key" --sse-c-prefix d1/
log "b2sdk 2.8.0 with SSE-C objects under tree/d1/"
"$VENV/bin/python" - "$REALM" "$WORK" <<'EOF'
import base64, os, sys
from b2sdk.v2 import B2Api, InMemoryAccountInfo, EncryptionAlgorithm, EncryptionKey, EncryptionMode, EncryptionSetting
from b2sdk.v2.exception import SSECKeyError
realm, work = sys.argv[1], sys.argv[2]
api = B2Api(InMemoryAccountInfo())
api.authorize_account(realm, os.environ["B2_APPLICATION_KEY_ID"], os.environ["B2_APPLICATION_KEY"])
tree = api.get_bucket_by_name("tree")
modes = {fv.file_name: fv.server_side_encryption.mode for fv, _ in tree.ls(recursive=True)}
encrypted = sorted(name for name, mode in modes.items() if mode == EncryptionMode.SSE_C)
assert encrypted and all(name.startswith("d1/") for name in encrypted), encrypted
assert all(mode in (EncryptionMode.NONE, EncryptionMode.UNKNOWN) for name, mode in modes.items() if not name.startswith("d1/")), modes
name = max(encrypted, key=lambda n: os.path.getsize(os.path.join(work, "data", "tree", n)))
target = os.path.join(work, "sdk-sse-c")
try:
    tree.download_file_by_name(name).save_to(target + "-nokey")
    raise AssertionError("an SSE-C object downloaded without its key")
except SSECKeyError:
    pass
secret = base64.b64decode(os.environ["B2_SOURCE_SSE_C_KEY_B64"])
setting = EncryptionSetting(EncryptionMode.SSE_C, EncryptionAlgorithm.AES256, EncryptionKey(secret=secret, key_id=None))
tree.download_file_by_name(name, encryption=setting).save_to(target)
assert open(target, "rb").read() == open(os.path.join(work, "data", "tree", name), "rb").read()
print(f"interop: b2sdk SSE-C: {len(encrypted)} objects listed as SSE-C; {name!r} refused without the key, identical with it", file=sys.stderr)
EOF
log "b2 CLI: sync --source-server-side-encryption SSE-C b2://tree"
B2_ENVIRONMENT=$REALM "$VENV/bin/b2" sync --no-progress --source-server-side-encryption SSE-C "b2://tree" "$WORK/out-b2-sse-c" \
    >"$WORK/b2-sync-sse-c.log" 2>&1 || { cat "$WORK/b2-sync-sse-c.log" >&2; log "FAIL: b2 sync with SSE-C"; exit 1; }
diff -r "$WORK/data/tree" "$WORK/out-b2-sse-c" || { log "FAIL: b2 sync with SSE-C differs"; exit 1; }
log "ringdown restore with and without the SSE-C key"
if B2_SOURCE_SSE_C_KEY_B64= "$BIN" restore b2://tree "$WORK/out-sse-c-nokey" --realm "$REALM" --ca-file "$CA" --quiet 2>"$WORK/sse-c-nokey.log"; then
    log "FAIL: restore of SSE-C objects without the key succeeded"; exit 1
fi
grep -q 'encrypted with SSE-C' "$WORK/sse-c-nokey.log" || { cat "$WORK/sse-c-nokey.log" >&2; log "FAIL: no SSE-C message"; exit 1; }
"$BIN" restore b2://tree "$WORK/out-sse-c" --realm "$REALM" --ca-file "$CA" --quiet --sse-c-key-file "$WORK/sse-c.key"
diff -r "$WORK/data/tree" "$WORK/out-sse-c" || { log "FAIL: restore with the SSE-C key differs"; exit 1; }
log "SSE-C: b2 sync and ringdown restore identical ($(find "$WORK/out-sse-c/d1" -type f | wc -l) encrypted files)"
unset B2_SOURCE_SSE_C_KEY_B64

log "OK"

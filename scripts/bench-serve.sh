#!/usr/bin/env bash
# Benchmark (not a test): one 1 GiB range GET over TLS to `curl -o /dev/null`,
# ringdown serve against nginx serving the same file with the same certificate,
# interleaved runs, min and median of each. Also reports how long the SHA1
# indexer took for the 1 GiB file (from a cold cache).
#
#   scripts/bench-serve.sh [RUNS]      (default 7; needs nginx: apt-get install -y nginx-light)
set -euo pipefail
cd "$(dirname "$0")/.."
# Loopback only: curl would send these requests through a proxy from the environment.
unset http_proxy https_proxy all_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
RUNS=${1:-7}
SIZE_MIB=${SIZE_MIB:-1024}

command -v nginx >/dev/null || { echo "bench-serve: nginx not found (apt-get install -y nginx-light)" >&2; exit 2; }
cargo build --release --quiet
BIN=$PWD/target/release/ringdown

DATA=$PWD/target/bench-serve/data
mkdir -p "$DATA/bkt"
if [ "$(stat -c %s "$DATA/bkt/big.bin" 2>/dev/null || echo 0)" != $((SIZE_MIB << 20)) ]; then
    echo "bench-serve: writing a ${SIZE_MIB} MiB test file" >&2
    head -c $((SIZE_MIB << 20)) /dev/urandom >"$DATA/bkt/big.bin"
fi
cat "$DATA/bkt/big.bin" >/dev/null # page cache warm for both servers

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringdown-bench-serve.XXXXXX")
SERVE_PID=
NGINX_PID=
cleanup() {
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# A cold SHA1 cache, so the indexer's line reports hashing the whole file; the
# headline object carries a real contentSha1 (threshold above its size).
# serve adopts B2_APPLICATION_KEY_ID/B2_APPLICATION_KEY from the environment and
# then prints no key=: run it without the caller's, so it makes up the key it prints.
env -u B2_APPLICATION_KEY_ID -u B2_APPLICATION_KEY "$BIN" serve "$DATA" --listen 127.0.0.1:0 --cert-dir "$WORK/certs" --write-server-key \
    --cache-dir "$WORK/cache" --large-file-threshold 2TiB >"$WORK/ready" 2>"$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 1 600); do
    grep -q "SHA1 index ready" "$WORK/serve.log" 2>/dev/null && break
    sleep 0.1
done
grep "SHA1 index ready" "$WORK/serve.log" >&2 || { cat "$WORK/serve.log" >&2; exit 1; }
READY=$(head -n1 "$WORK/ready")
field() { tr ' ' '\n' <<<"$READY" | sed -n "s/^$1=//p"; }
REALM=$(field realm)
CA=$(field ca_file)
[ -n "$(field key_id)" ] && [ -n "$(field key)" ] || { echo "bench-serve: no key_id=/key= in serve's line: $READY" >&2; exit 1; }
TOKEN=$(curl -s --cacert "$CA" -u "$(field key_id):$(field key)" "$REALM/b2api/v3/b2_authorize_account" |
    sed 's/.*"authorizationToken":"\([^"]*\)".*/\1/')

NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        # nginx 1.22 leaves TLS 1.3 out of its default; compare like with like.
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $WORK/certs/server.pem;
        ssl_certificate_key $WORK/certs/server-key.pem;
        root $DATA;
    }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
# Ready when it answers (at most 10 s): a fixed wait fails the first fetch on a busy machine.
for _ in $(seq 100); do
    curl -s -o /dev/null --cacert "$CA" "https://127.0.0.1:$NGINX_PORT/" && break
    kill -0 "$NGINX_PID" 2>/dev/null || { echo "bench-serve: nginx exited; see $WORK/nginx/error.log" >&2; exit 1; }
    sleep 0.1
done

LAST=$(((SIZE_MIB << 20) - 1))
fetch() { # URL [header]
    curl -s -o /dev/null --cacert "$CA" -H "Range: bytes=0-$LAST" ${2:+-H "$2"} -w '%{time_total} %{size_download} %{http_code}\n' "$1"
}
echo "bench-serve: ciphers: ringdown $(curl -sv -o /dev/null --cacert "$CA" -H "Authorization: $TOKEN" -r 0-0 "$REALM/file/bkt/big.bin" 2>&1 | sed -n 's/.*SSL connection using //p')," \
    "nginx $(curl -sv -o /dev/null --cacert "$CA" -r 0-0 "https://127.0.0.1:$NGINX_PORT/bkt/big.bin" 2>&1 | sed -n 's/.*SSL connection using //p')" >&2

: >"$WORK/serve.times"
: >"$WORK/nginx.times"
for run in $(seq 1 "$RUNS"); do
    read -r t_serve bytes_serve code_serve < <(fetch "$REALM/file/bkt/big.bin" "Authorization: $TOKEN")
    read -r t_nginx bytes_nginx code_nginx < <(fetch "https://127.0.0.1:$NGINX_PORT/bkt/big.bin")
    [ "$code_serve" = 206 ] && [ "$code_nginx" = 206 ] && [ "$bytes_serve" = $((LAST + 1)) ] && [ "$bytes_nginx" = $((LAST + 1)) ] ||
        { echo "bench-serve: bad transfer: serve $code_serve/$bytes_serve nginx $code_nginx/$bytes_nginx" >&2; exit 1; }
    echo "$t_serve" >>"$WORK/serve.times"
    echo "$t_nginx" >>"$WORK/nginx.times"
    echo "run $run: ringdown serve ${t_serve}s  nginx ${t_nginx}s" >&2
done
python3 - "$WORK/serve.times" "$WORK/nginx.times" <<'EOF'
import statistics, sys
serve = sorted(float(x) for x in open(sys.argv[1]))
nginx = sorted(float(x) for x in open(sys.argv[2]))
print(f"ringdown serve: min {serve[0]:.3f} s  median {statistics.median(serve):.3f} s  (n={len(serve)})")
print(f"nginx:          min {nginx[0]:.3f} s  median {statistics.median(nginx):.3f} s  (n={len(nginx)})")
print(f"ratio serve/nginx: min {serve[0]/nginx[0]:.2f}  median {statistics.median(serve)/statistics.median(nginx):.2f}")
EOF

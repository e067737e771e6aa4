#!/usr/bin/env python3
"""The benchmark orchestrator behind scripts/bench.sh (run it through that
script: it installs the peers, the venv and builds ringdown first).

For each scenario: start `ringdown serve` over TLS on loopback with the
scenario's flags, authorize once (untimed, also warms the origin), then run
every tool N times interleaved (A B C A B C ...). Each run: delete the output,
drop the page cache, run the tool under scripts/bench_runner.py (fork/exec +
wait4: wall, user+sys CPU of the process tree, peak RSS), then check every
output file's size and SHA1 against the dataset manifest. A run with a wrong or
missing byte is `correct: false` and is left out of the timing statistics.

Writes OUT/results.json, OUT/report.md, OUT/*.png, OUT/logs/, OUT/stats/, and
rewrites the README block between <!-- bench:begin --> and <!-- bench:end -->
(and docs/bench/*.png) when those markers exist, only after a complete default
run: full profile, >= 3 runs, every scenario and default tool, ringdown run
everywhere and always correct (bench_report.readme_blockers). Exits 1 when a
ringdown output was wrong, ringdown was skipped somewhere, or the corrupting
self-check was not caught.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench_data  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20

# --------------------------------------------------------------- scenarios
# kind: single (one object, `get`) or tree (a bucket, `restore`).
# threshold: "above" = every object carries a real contentSha1;
#            "below" = the object is a B2 large file (contentSha1 "none",
#            fileInfo.large_file_sha1).
WAN = ["--latency-ms", "20", "--rate-per-conn", "25MB/s"]
FAULTS = ["--reset-rate", "0.01", "--fail-rate", "0.01", "--seed", "1"]
SCENARIOS = {
    "big": dict(kind="single", bucket="bench-big", name="big.bin", threshold="above", serve=[],
                about="one object with a real contentSha1 (the `get` headline)"),
    "big-large": dict(kind="single", bucket="bench-big", name="big.bin", threshold="below", serve=[],
                      about="the same object served as a B2 large file (contentSha1 `none`, large_file_sha1)"),
    "small": dict(kind="tree", bucket="bench-small", threshold="above", serve=[],
                  about="many 64 KiB objects"),
    "mixed": dict(kind="tree", bucket="bench-mixed", threshold="above", serve=[],
                  about="2 large + 1 MiB + 16 KiB objects"),
    "wan-big": dict(kind="single", bucket="bench-big", name="big.bin", threshold="above", serve=WAN,
                    about="`big` through serve " + " ".join(WAN)),
    "wan-small": dict(kind="tree", bucket="bench-small", threshold="above", serve=WAN,
                      about="`small` through serve " + " ".join(WAN)),
    "wan-mixed": dict(kind="tree", bucket="bench-mixed", threshold="above", serve=WAN,
                      about="`mixed` through serve " + " ".join(WAN)),
    "faults": dict(kind="tree", bucket="bench-mixed", threshold="above", serve=FAULTS,
                   about="`mixed` through serve " + " ".join(FAULTS) + "; did each tool finish correctly? "
                   "Every tool runs with the same flags as in `mixed` (its defaults): curl retries nothing "
                   "without --retry, aria2c does not retry a 503 unless --retry-wait > 0"),
    # Resets on a link where GETs go out ahead: one reset used to turn
    # ringdown's pipelining off for the rest of the run.
    "wan-faults": dict(kind="tree", bucket="bench-small", threshold="above", serve=WAN + FAULTS,
                       about="`small` through serve " + " ".join(WAN + FAULTS) + "; tools as in `faults`"),
    # The issue's targets were measured with nginx as the origin: the same
    # files, downloads served by nginx (nginx.conf generated from the listing,
    # B2's headers included), the B2 API still by `ringdown serve`, which
    # publishes nginx as its downloadUrl. No fault or WAN flags there.
    # The origin's files are read into its page cache before each run (after
    # the drop, so the client still writes into a cold cache): the targets'
    # curl time, 1.03 s for 1 GiB, is below what this VM's disk reads cold.
    "nginx-big": dict(kind="single", bucket="bench-big", name="big.bin", threshold="above", serve=[],
                      origin="nginx", origin_cache="warm",
                      about="`big`, downloads served by nginx from its page cache"),
    "nginx-small": dict(kind="tree", bucket="bench-small", threshold="above", serve=[], origin="nginx",
                        origin_cache="warm", about="`small`, downloads served by nginx from its page cache"),
    "nginx-mixed": dict(kind="tree", bucket="bench-mixed", threshold="above", serve=[], origin="nginx",
                        origin_cache="warm", about="`mixed`, downloads served by nginx from its page cache"),
    "memlock": dict(kind="single", bucket="bench-big", name="big.bin", threshold="above", serve=[],
                    tools=["ringdown", "ringdown-memlock"],
                    about="ringdown with and without CAP_IPC_LOCK (ulimit -l 8192): the registered-buffer fallback cost"),
    # CONVENTIONS.md: the `get` CPU target (<= 1.2 s/GiB) is meant with
    # O_DIRECT on a disk file system, which `auto` picks for 1 GiB. This runs
    # it against the page cache (`--direct-io off`), with curl for reference.
    "direct": dict(kind="single", bucket="bench-big", name="big.bin", threshold="above", serve=[],
                   origin="nginx", origin_cache="warm", tools=["ringdown", "ringdown-cached", "curl"],
                   about="`nginx-big` with ringdown's default (`--direct-io auto`: O_DIRECT for this object) "
                   "and with `--direct-io off` (the page cache); curl (page cache, no hash) for reference"),
}
GROUPS = {"wan": ["wan-big", "wan-small", "wan-mixed", "wan-faults"], "nginx": ["nginx-big", "nginx-small", "nginx-mixed"],
          "all": list(SCENARIOS)}
DEFAULT_TOOLS = ["ringdown", "b2sdk", "curl", "aria2c", "rclone"]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Redactor:
    def __init__(self):
        self.secrets = []

    def add(self, s):
        if s and len(s) >= 6 and s not in self.secrets:
            self.secrets.append(s)

    def __call__(self, text):
        if text is None:
            return None
        for s in self.secrets:
            text = text.replace(s, "<redacted>")
            text = text.replace(urllib.parse.quote(s, safe=""), "<redacted>")
        return text

    def file(self, path):
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError:
            return
        red = self(text)
        if red != text:
            with open(path, "w") as f:
                f.write(red)


REDACT = Redactor()


# --------------------------------------------------------------- helpers

def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "cpu_model": model, "kernel": platform.release(),
            "loadavg_start": open("/proc/loadavg").read().split()[:3]}


def tool_version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def drop_caches():
    """Same for every tool, before every run. Returns None or why it failed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as e:
        return f"page cache not dropped ({e})"


def cold_read_s(path):
    """Seconds to read `path` once with the page cache dropped: what the
    origin's disk alone needs for a `single` scenario, which every run (its
    cache dropped too) waits for as well. None if the cache cannot be
    dropped. On a VM the host's cache makes it vary from run to run."""
    if drop_caches():
        return None
    started = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while f.read(4 << 20):
            pass
    return time.monotonic() - started


def warm_origin(ctx):
    """Reads the scenario's source files into the page cache (untimed):
    the origin then serves from memory, as a real object store's front end
    does. Returns the seconds it took."""
    started = time.monotonic()
    for e in ctx.files:
        with open(os.path.join(ctx.buckets_dir, ctx.bucket, e["name"]), "rb", buffering=0) as f:
            while f.read(4 << 20):
                pass
    return round(time.monotonic() - started, 3)


_PROGRAM_FILES = {}


def program_files(exe):
    """The executable `exe` and the shared libraries it loads (`ldd`)."""
    if exe not in _PROGRAM_FILES:
        path = shutil.which(exe) or exe
        files = [path]
        try:
            out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=20).stdout
            files += [w for line in out.splitlines() for w in line.split() if w.startswith("/")]
        except (OSError, subprocess.SubprocessError):
            pass
        _PROGRAM_FILES[exe] = [f for f in dict.fromkeys(files) if os.path.isfile(f)]
    return _PROGRAM_FILES[exe]


def warm_tool(plan):
    """Reads the tool's own program back into the page cache (untimed),
    after the drop that makes the origin and the output cold: its binary
    and libraries, and what its start-up command touches (b2sdk: importing
    b2sdk, 1.1-1.2 s from a cold cache against 0.5 s warm on this VM). A
    user's second run of any tool starts warm; without this every timed run
    paid a cold start, largest for the Python peer."""
    for argv in plan.get("warm", []):
        for path in program_files(argv[0]):
            try:
                with open(path, "rb", buffering=0) as f:
                    while f.read(4 << 20):
                        pass
            except OSError:
                pass
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120, check=False)


def proc_cpu_s(pid):
    """utime+stime of a live process (the origin), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tck
    except (OSError, IndexError, ValueError):
        return None


def ringdown_has(ringdown, sub):
    if not ringdown or not os.path.exists(ringdown):
        return False
    r = subprocess.run([ringdown, sub, "--help"], capture_output=True, text=True)
    return r.returncode == 0


def tail(path, n=600):
    """The last few meaningful lines of a tool's log, for the error field."""
    try:
        with open(path, errors="replace") as f:
            text = f.read()[-20000:]
    except OSError:
        return ""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    out = []
    for ln in reversed(lines):
        if sum(len(x) for x in out) + len(ln) > n and out:
            break
        out.insert(0, ln[-n:])
    return REDACT(" / ".join(out))


def ringdown_cause(path, n=600):
    """Why a ringdown run failed, from its stderr: the `ringdown: error:` lines
    and the first `ringdown: failed:` lines (the summary and stage table it
    prints last say nothing about the cause). Falls back to tail()."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("ringdown: error:")]
    failed = [ln for ln in lines if ln.startswith("ringdown: failed:")]
    if not errors and not failed:
        return tail(path, n)
    out = errors[:3]
    if len(failed) > 1:
        out.append(f"{len(failed)} `ringdown: failed:` lines, the first: {failed[0]}")
    else:
        out += failed
    text = " / ".join(out)
    return REDACT(text if len(text) <= n else text[:n - 1] + "…")


# --------------------------------------------------------------- the origin

class Origin:
    def __init__(self, ringdown, buckets_dir, work, logs, name, threshold, extra, key_id, key):
        self.proc = None
        self.error = None
        self.info = {}
        cert_dir = os.path.join(work, "certs")
        os.makedirs(cert_dir, exist_ok=True)
        # The SHA1 index persists next to the data (hashed once per dataset);
        # --no-index: no background hashing competing with the timed runs; the
        # untimed listing before the runs hashes what the scenario serves.
        # bench_data deletes it whenever it regenerates a bucket.
        cache_dir = bench_data.serve_cache_dir(os.path.dirname(buckets_dir))
        self.argv_display = ["ringdown", "serve", "BUCKETS", "--listen", "127.0.0.1:0", "--cert-dir", "CERTS",
                             "--cache-dir", "CACHE", "--no-index",
                             "--large-file-threshold", str(threshold)] + extra + ["# env B2_APPLICATION_KEY_ID, B2_APPLICATION_KEY"]
        argv = [ringdown, "serve", buckets_dir, "--listen", "127.0.0.1:0", "--cert-dir", cert_dir,
                "--cache-dir", cache_dir, "--no-index", "--large-file-threshold", str(threshold)] + extra
        env = dict(os.environ, B2_APPLICATION_KEY_ID=key_id, B2_APPLICATION_KEY=key)
        self.log_path = os.path.join(logs, f"serve-{name}.log")
        self.log_f = open(self.log_path, "w")
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log_f, env=env,
                                         stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        except OSError as e:
            self.error = f"cannot start ringdown serve: {e}"
            return
        line = self._readline(120)
        if not line:
            self.stop()
            self.error = "ringdown serve did not print its realm line: " + (tail(self.log_path, 300) or "no output")
            return
        for part in line.split():
            if "=" in part:
                k, v = part.split("=", 1)
                self.info[k] = v
        if "realm" not in self.info or "ca_file" not in self.info:
            self.stop()
            self.error = f"unexpected serve line: {REDACT(line)!r}"

    def _readline(self, timeout):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                return self.proc.stdout.readline().strip()
            if self.proc.poll() is not None:
                return None
        return None

    def cpu_s(self):
        return proc_cpu_s(self.proc.pid) if self.proc and self.proc.poll() is None else None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_f.close()
        REDACT.file(self.log_path)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b2_list_names(realm, ca_file, key_id, key, bucket):
    """Every upload in `bucket`, as b2_list_file_names returns it (raw JSON:
    fileId, fileName, contentSha1, uploadTimestamp, fileInfo)."""
    import base64
    import ssl
    import urllib.request
    tls = ssl.create_default_context(cafile=ca_file)

    def call(url, token, body=None):
        req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": token})
        with urllib.request.urlopen(req, context=tls, timeout=600) as r:
            return json.load(r)

    basic = "Basic " + base64.b64encode(f"{key_id}:{key}".encode()).decode()
    auth = call(realm + "/b2api/v3/b2_authorize_account", basic)
    REDACT.add(auth["authorizationToken"])
    api, token = auth["apiInfo"]["storageApi"]["apiUrl"], auth["authorizationToken"]
    buckets = call(api + "/b2api/v3/b2_list_buckets", token, {"accountId": auth["accountId"], "bucketName": bucket})
    bucket_id = buckets["buckets"][0]["bucketId"]
    files, start = [], None
    while True:
        page = call(api + "/b2api/v3/b2_list_file_names", token,
                    {"bucketId": bucket_id, "startFileName": start, "maxFileCount": 10000})
        files += [f for f in page["files"] if f.get("action", "upload") == "upload"]
        start = page.get("nextFileName")
        if not start:
            return files


def nginx_conf(prefix, port, cert_dir, buckets_dir, bucket, files):
    """nginx serving `bucket` the way B2's download hosts do: /file/BUCKET/NAME
    and b2_download_file_by_id, ranges, and the x-bz-* headers clients check
    (from maps keyed by the decoded URI). It checks no token."""
    def q(text):
        return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    maps = {"bz_id": [], "bz_name": [], "bz_sha1": [], "bz_ts": [], "bz_mtime": [], "bz_large_sha1": []}
    by_id = []
    for f in files:
        uri = f"/file/{bucket}/{f['fileName']}"
        info = f.get("fileInfo") or {}
        maps["bz_id"].append((uri, f["fileId"]))
        maps["bz_name"].append((uri, urllib.parse.quote(f["fileName"], safe="/")))
        maps["bz_sha1"].append((uri, f["contentSha1"]))
        maps["bz_ts"].append((uri, f["uploadTimestamp"]))
        if "src_last_modified_millis" in info:
            maps["bz_mtime"].append((uri, info["src_last_modified_millis"]))
        if "large_file_sha1" in info:
            maps["bz_large_sha1"].append((uri, info["large_file_sha1"]))
        # `rewrite` sets the URI as given, not decoded again: the decoded
        # name, as the maps above and `alias` expect ('?' would start a
        # query, so it alone stays encoded).
        by_id.append((f["fileId"], f"/file/{bucket}/{f['fileName'].replace('?', '%3F')}"))
    lines = [
        "worker_processes auto;",
        f"pid {prefix}/nginx.pid;",
        f"error_log {prefix}/error.log;",
        "events { worker_connections 4096; }",
        "http {",
        "    access_log off;",
        "    default_type application/octet-stream;",
        "    keepalive_requests 1000000;",
        "    keepalive_timeout 300s;",
        "    map_hash_max_size 1048576;",
        "    map_hash_bucket_size 256;",
    ]
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        lines.append(f"    {d if d != 'body' else 'client_body'}_temp_path {prefix}/{d};")
    for var, pairs in maps.items():
        lines.append(f"    map $uri ${var} {{")
        lines.append('        default "";')
        lines += [f"        {q(k)} {q(v)};" for k, v in pairs]
        lines.append("    }")
    lines.append("    map $arg_fileId $bz_by_id {")
    lines.append('        default "";')
    lines += [f"        {q(k)} {q(v)};" for k, v in by_id]
    lines.append("    }")
    lines += [
        "    server {",
        f"        listen 127.0.0.1:{port} ssl;",
        "        ssl_protocols TLSv1.2 TLSv1.3;",
        f"        ssl_certificate {cert_dir}/server.pem;",
        f"        ssl_certificate_key {cert_dir}/server-key.pem;",
        f"        location ^~ /file/{bucket}/ {{",
        f"            alias {buckets_dir}/{bucket}/;",
        "            add_header x-bz-file-id $bz_id;",
        "            add_header x-bz-file-name $bz_name;",
        "            add_header x-bz-content-sha1 $bz_sha1;",
        "            add_header x-bz-upload-timestamp $bz_ts;",
        "            add_header x-bz-info-src_last_modified_millis $bz_mtime;",
        "            add_header x-bz-info-large_file_sha1 $bz_large_sha1;",
        "        }",
        "        location ~ ^/b2api/v[0-9]+/b2_download_file_by_id$ {",
        '            if ($bz_by_id = "") { return 404; }',
        "            rewrite ^ $bz_by_id? last;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class NginxOrigin:
    """`ringdown serve` for the B2 API, publishing nginx (same files, same
    certificate) as the downloadUrl: the origin the issue's targets were
    measured against. Same interface as Origin."""

    def __init__(self, ringdown, buckets_dir, work, logs, name, threshold, extra, key_id, key, bucket):
        self.nginx = None
        self.error = None
        if not shutil.which("nginx"):
            self.serve = None
            self.error = "nginx not installed (apt-get install nginx-light)"
            return
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        self.serve = Origin(ringdown, buckets_dir, work, logs, name, threshold,
                            extra + ["--write-server-key", "--download-url", url], key_id, key)
        self.info = self.serve.info
        if self.serve.error:
            self.error = self.serve.error
            return
        self.argv_display = (["nginx (downloads; config in logs/nginx-" + name + ".conf)", "+"]
                             + ["NGINX" if a == url else a for a in self.serve.argv_display])
        try:
            files = b2_list_names(self.info["realm"], self.info["ca_file"], key_id, key, bucket)
        except (OSError, ValueError, KeyError, IndexError) as e:
            self.stop()
            self.error = f"listing {bucket} for nginx's config failed: {REDACT(str(e))}"
            return
        prefix = os.path.join(work, "nginx")
        os.makedirs(prefix, exist_ok=True)
        conf = os.path.join(prefix, "nginx.conf")
        cert_dir = os.path.dirname(self.info["ca_file"])
        with open(conf, "w") as f:
            f.write(nginx_conf(prefix, port, cert_dir, buckets_dir, bucket, files))
        shutil.copy(conf, os.path.join(logs, f"nginx-{name}.conf"))
        self.nginx_log = open(os.path.join(logs, f"nginx-{name}.log"), "w")
        try:
            self.nginx = subprocess.Popen(["nginx", "-p", prefix, "-c", conf, "-g", "daemon off;"],
                                          stdout=self.nginx_log, stderr=self.nginx_log,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self.stop()
            self.error = f"cannot start nginx: {e}"
            return
        import socket
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        self.error = "nginx did not start listening: " + (tail(os.path.join(logs, f"nginx-{name}.log"), 300)
                                                          or "no output")

    def cpu_s(self):
        """serve + nginx's master and workers."""
        parts = [self.serve.cpu_s() if self.serve else None]
        if self.nginx and self.nginx.poll() is None:
            pids = [self.nginx.pid]
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat") as f:
                            if int(f.read().rsplit(")", 1)[1].split()[1]) == self.nginx.pid:
                                pids.append(int(entry))
                    except (OSError, IndexError, ValueError):
                        pass
            parts += [proc_cpu_s(pid) for pid in pids]
        else:
            parts.append(None)
        return None if any(p is None for p in parts) else sum(parts)

    def stop(self):
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.nginx.pid, signal.SIGKILL)
                self.nginx.wait()
        if self.nginx:
            self.nginx_log.close()
        if self.serve:
            self.serve.stop()


# --------------------------------------------------------------- tools

class Ctx:
    """Everything a tool needs to build its command for one scenario."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def object_url(ctx, name):
    return f"{ctx.download_url}/file/{ctx.bucket}/{urllib.parse.quote(name, safe='/')}"


def plan_ringdown(ctx, memlock=False, page_cache=False):
    sub = "get" if ctx.kind == "single" else "restore"
    if not ctx.ringdown_subs.get(sub):
        return {"skip": f"`ringdown {sub}` does not exist yet in this build"}
    src = f"b2://{ctx.bucket}/{ctx.name}" if ctx.kind == "single" else f"b2://{ctx.bucket}"
    stats = os.path.join(ctx.stats_dir, "STATS")
    argv = [ctx.ringdown, sub, src, ctx.dest_target, "--realm", ctx.realm, "--ca-file", ctx.ca_file,
            "--stats-json", stats]
    if ctx.kind == "single":
        argv.append("--force")
    display = ["ringdown", sub, src, "DEST", "--realm", "REALM", "--ca-file", "ca.pem", "--stats-json", "FILE"]
    display += ["--force"] if ctx.kind == "single" else []
    if page_cache:
        argv += ["--direct-io", "off"]
        display += ["--direct-io", "off"]
    if memlock:
        if not shutil.which("setpriv"):
            return {"skip": "setpriv (util-linux) not installed"}
        argv = ["bash", "-c", 'ulimit -l 8192 && exec "$@"', "bench-memlock",
                "setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--"] + argv
        display = ["bash -c 'ulimit -l 8192 && exec \"$@\"' _", "setpriv", "--inh-caps=-ipc_lock",
                   "--bounding-set=-ipc_lock", "--"] + display
    return {"argv": argv, "display": display, "env": ctx.cred_env, "stats": stats, "verify": "stats",
            "warm": [[ctx.ringdown, "--version"]]}


def plan_b2sdk(ctx):
    if not ctx.venv_python:
        return {"skip": "no venv with b2sdk==2.8.0"}
    py = [ctx.venv_python, os.path.join(HERE, "bench_b2sdk.py")]
    env = dict(ctx.cred_env, B2_REALM=ctx.realm, REQUESTS_CA_BUNDLE=ctx.ca_file)
    if ctx.kind == "single":
        argv = py + ["get", "--bucket", ctx.bucket, "--name", ctx.name, "--dest", ctx.dest_target]
        display = ["bench_b2sdk.py get", "# bucket.download_file_by_name(name).save_to(DEST)"]
    else:
        argv = py + ["sync", "--bucket", ctx.bucket, "--dest", ctx.dest_target, "--threads", "10"]
        display = ["bench_b2sdk.py sync --threads 10",
                   "# Synchronizer(max_workers=10), B2Api(max_download_workers=10), b2://BUCKET -> DEST"]
    # b2sdk checks a real contentSha1; a large file's `none` it does not check.
    verified = ctx.threshold == "above"
    return {"argv": argv, "display": display, "env": env, "verify": verified, "warm": [py + ["warm"]],
            "label": None if verified else "unverified"}


def plan_curl(ctx):
    if not shutil.which("curl"):
        return {"skip": "curl not installed"}
    cfg = os.path.join(ctx.secret_dir, "curl.cfg")
    lines = [f'header = "Authorization: {ctx.token}"']
    if ctx.kind == "single":
        lines += [f'url = "{object_url(ctx, ctx.name)}"', f'output = "{ctx.dest_target}"']
    else:
        for e in ctx.manifest["files"]:
            lines += [f'url = "{object_url(ctx, e["name"])}"',
                      f'output = "{os.path.join(ctx.dest_target, e["name"])}"']
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    argv = ["curl", "-sS", "--no-progress-meter", "--fail", "--cacert", ctx.ca_file, "-K", cfg]
    display = ["curl", "-sS", "--no-progress-meter", "--fail", "--cacert", "ca.pem", "-K", "CFG"]
    if ctx.kind == "tree":
        extra = ["--parallel", "--parallel-max", "16", "--create-dirs"]
        argv += extra
        display += extra + ["# CFG: header Authorization, then url/output per object"]
    else:
        display += ["# CFG: header Authorization, url, output"]
    return {"argv": argv, "display": display, "env": {}, "verify": False, "warm": [["curl", "--version"]]}


def plan_aria2c(ctx):
    if not shutil.which("aria2c"):
        return {"skip": "aria2c not installed (apt-get install aria2 failed or not run)"}
    inp = os.path.join(ctx.secret_dir, "aria2.txt")
    entries = [(ctx.name, ctx.name)] if ctx.kind == "single" else [(e["name"], e["name"]) for e in ctx.manifest["files"]]
    lines = []
    for name, out in entries:
        lines += [object_url(ctx, name), f"  out={out}", f"  header=Authorization: {ctx.token}"]
    fd = os.open(inp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    dest_dir = ctx.dest_dir
    common = ["--ca-certificate=" + ctx.ca_file, "-d", dest_dir, "-i", inp,
              "--allow-overwrite=true", "--auto-file-renaming=false",
              "--console-log-level=warn", "--summary-interval=0", "--download-result=hide",
              "--show-console-readout=false"]
    par = ["-x8", "-s8"] if ctx.kind == "single" else ["-j16"]
    argv = ["aria2c"] + par + common
    display = ["aria2c"] + par + ["--ca-certificate=ca.pem", "-d", "DEST", "-i", "LIST",
                                  "--allow-overwrite=true", "--auto-file-renaming=false",
                                  "--console-log-level=warn", "--summary-interval=0", "--download-result=hide",
                                  "--show-console-readout=false", "# LIST: URL, out=NAME, header=Authorization per object"]
    return {"argv": argv, "display": display, "env": {}, "verify": False, "warm": [["aria2c", "--version"]]}


def plan_rclone(ctx):
    if not shutil.which("rclone"):
        return {"skip": "rclone not installed"}
    conf = os.path.join(ctx.secret_dir, "rclone.conf")
    open(conf, "a").close()
    env = {"RCLONE_B2_ACCOUNT": ctx.key_id, "RCLONE_B2_KEY": ctx.key}
    src = f":b2:{ctx.bucket}/{ctx.name}" if ctx.kind == "single" else f":b2:{ctx.bucket}"
    flags = ["--b2-endpoint", ctx.realm, "--ca-cert", ctx.ca_file, "--config", conf]
    par = [] if ctx.kind == "single" else ["--transfers", "16", "--checkers", "16"]
    argv = ["rclone", "copy", src, ctx.dest_dir] + flags + par
    display = ["rclone", "copy", src, "DEST", "--b2-endpoint", "REALM", "--ca-cert", "ca.pem",
               "--config", "EMPTY"] + par + ["# env RCLONE_B2_ACCOUNT, RCLONE_B2_KEY"]
    # rclone compares the SHA1 it computes with the listing's (large_file_sha1
    # for large files) after each transfer.
    return {"argv": argv, "display": display, "env": env, "verify": True, "warm": [["rclone", "version"]]}


def plan_corrupt(ctx):
    """Harness self-check, only when asked for (--tools ...,corrupt): curl, then
    flip one byte of the (first) output file. Every run must come out
    correct=false."""
    plan = plan_curl(ctx)
    if "skip" in plan:
        return plan
    victim = ctx.dest_target if ctx.kind == "single" else os.path.join(ctx.dest_target, ctx.manifest["files"][0]["name"])
    flip = ("import sys; f = open(sys.argv[1], 'r+b'); f.seek(int(sys.argv[2])); b = f.read(1); "
            "f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 1]))")
    offset = str(ctx.files[0]["size"] // 2)
    plan["argv"] = ["sh", "-c", '"$@" && exec "$0" -S -I -c "$FLIP" "$VICTIM" "$OFFSET"', sys.executable] + plan["argv"]
    plan["env"] = {"FLIP": flip, "VICTIM": victim, "OFFSET": offset}
    plan["display"] = plan["display"] + [f"# then flip the byte at offset {offset} of one output file"]
    return plan


PLANS = {
    "ringdown": plan_ringdown,
    "ringdown-memlock": lambda ctx: plan_ringdown(ctx, memlock=True),
    "ringdown-cached": lambda ctx: plan_ringdown(ctx, page_cache=True),
    "b2sdk": plan_b2sdk,
    "curl": plan_curl,
    "aria2c": plan_aria2c,
    "rclone": plan_rclone,
    "corrupt": plan_corrupt,
}


# --------------------------------------------------------------- running

def run_one(ctx, tool, plan, run_no, args):
    """One measured run. Returns the results.json row."""
    row = {"scenario": ctx.scenario, "tool": tool, "run": run_no, "wall_s": None, "cpu_user_s": None,
           "cpu_sys_s": None, "peak_rss_bytes": None, "bytes": 0, "files": 0, "correct": False,
           "verified_by_tool": None, "error": None}
    shutil.rmtree(ctx.dest_dir, ignore_errors=True)
    # Outputs set aside stay whole until the scenario ends: with many runs
    # (`big`: 1 GiB each) they could fill the disk mid-scenario. Below room
    # for two more, they are emptied now (untimed; see `empty_set_aside`).
    if shutil.disk_usage(os.path.dirname(ctx.dest_dir)).free < 2 * ctx.manifest_bytes + (1 << 30):
        log(f"{ctx.scenario}: little free space left; emptying the outputs set aside so far")
        empty_set_aside(ctx.trash_dir)
    os.makedirs(ctx.dest_dir)
    argv = list(plan["argv"])
    stats_path = None
    if plan.get("stats"):
        stats_path = os.path.join(ctx.stats_dir, f"{ctx.scenario}-{tool}-{run_no}.json")
        if os.path.exists(stats_path):
            os.unlink(stats_path)
        argv = [stats_path if a == plan["stats"] else a for a in argv]
    drop_note = None if args.no_drop_caches else drop_caches()
    if args.no_drop_caches:
        drop_note = "page cache not dropped (--no-drop-caches)"
    row["page_cache_dropped"] = drop_note is None
    if drop_note is None:
        warm_tool(plan)
    if ctx.origin_cache == "warm":
        row["origin_cache_warmed_s"] = warm_origin(ctx)
    env = dict(os.environ)
    for k in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "RCLONE_B2_ACCOUNT", "RCLONE_B2_KEY"):
        env.pop(k, None)
    env.update(plan.get("env") or {})
    result_path = os.path.join(ctx.work, "run.json")
    log_path = os.path.join(ctx.logs, f"{ctx.scenario}-{tool}-{run_no}.log")
    origin_before = ctx.origin.cpu_s()
    # A hang, not a slow tool: 2 min plus 1 MB/s (rclone took 52 s for
    # 131 MB under `wan-faults`). A run killed for time is not correct and
    # leaves the statistics, so this must never cut a slow but live run.
    timeout = args.timeout or 120 + ctx.manifest_bytes / 1e6
    runner = [sys.executable, "-S", "-I", os.path.join(HERE, "bench_runner.py"), result_path,
              str(round(timeout)), log_path, "--"] + argv
    if os.path.exists(result_path):
        os.unlink(result_path)
    run_measured(runner, env)
    origin_after = ctx.origin.cpu_s()
    # What the tool left in the page cache reaches the disk only now: the
    # time to flush it (the run started with nothing dirty, after `sync`),
    # untimed by `wall_s`, is what "on disk" adds. ~0 for O_DIRECT writes.
    synced = time.monotonic()
    os.sync()
    sync_s = time.monotonic() - synced
    REDACT.file(log_path)
    try:
        with open(result_path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        row["error"] = f"runner failed: {e}"
        set_aside(ctx, f"{tool}-{run_no}")
        return row
    for k in ("wall_s", "cpu_user_s", "cpu_sys_s", "peak_rss_bytes"):
        row[k] = m[k]
    row["sync_s"] = round(sync_s, 3)
    row["exit_code"] = m["exit_code"]
    if origin_before is not None and origin_after is not None:
        row["origin_cpu_s"] = round(origin_after - origin_before, 3)
    check = (bench_data.check_file(ctx.entry, ctx.dest_target) if ctx.kind == "single"
             else bench_data.check_tree(ctx.manifest, ctx.dest_target))
    row["bytes"], row["files"] = check["bytes"], check["files"]
    problems = []
    if m["timed_out"]:
        problems.append(f"timed out after {round(timeout)} s (killed)")
    elif m["exit_code"] != 0:
        cause = ringdown_cause(log_path, 300) if tool.startswith("ringdown") else tail(log_path, 300)
        problems.append(f"exit {m['exit_code'] if m['exit_code'] is not None else 'signal %s' % m['signal']}: "
                        + (cause or "no output"))
    if not check["correct"]:
        problems.append(check["error"])
    row["correct"] = not problems
    row["error"] = REDACT("; ".join(problems)) if problems else None
    # Did the tool itself verify what it wrote?
    if plan["verify"] == "stats":
        row["stats_json"] = os.path.relpath(stats_path, args.out) if stats_path and os.path.exists(stats_path) else None
        try:
            with open(stats_path) as f:
                st = json.load(f)
            v = st.get("verified", {})
            row["verified_by_tool"] = (v.get("ok", 0) >= len(ctx.files) and not v.get("failed")
                                       and not v.get("unverified"))
            row["registered_buffers"] = st.get("registered_buffers")
            row["direct_io"] = st.get("direct_io")
            row["sha1_feed"] = st.get("sha1_feed")
        except (OSError, ValueError, TypeError):
            row["verified_by_tool"] = None
    else:
        row["verified_by_tool"] = plan["verify"]
    set_aside(ctx, f"{tool}-{run_no}")
    return row


def run_measured(runner, env):
    """Runs `bench_runner.py`. Should the harness be stopped meanwhile, the
    runner gets SIGTERM (not the SIGKILL `subprocess.run` would send), so it
    kills the tool's process group before it goes."""
    p = subprocess.Popen(runner, env=env, stdin=subprocess.DEVNULL)
    try:
        p.wait()
    except BaseException:
        p.terminate()
        p.wait()
        raise


def set_aside_root(scratch):
    """Where runs' outputs are set aside: one directory per scenario."""
    return os.path.join(scratch, "set-aside")


def empty_set_aside(trash):
    """Empties the outputs a scenario set aside in `trash` (see `set_aside`):
    every file is cut to length 0, which gives its blocks back, and stays,
    which keeps its inode allocated. Then waits for the writeback of what that
    dirtied, so the next scenario starts on an even footing.
    `delete_set_aside` removes them all once the last scenario is done."""
    if not os.path.isdir(trash):
        return
    for dirpath, _, fnames in os.walk(trash):
        for fn in fnames:
            try:
                os.truncate(os.path.join(dirpath, fn), 0)
            except OSError:
                pass
    try:
        with open("/proc/sys/vm/dirty_expire_centisecs") as f:
            window_s = int(f.read()) / 100 + 1
    except (OSError, ValueError):
        window_s = 31
    log(f"emptied the set-aside outputs; waiting {window_s:.0f} s for their writeback")
    time.sleep(window_s)


def delete_set_aside(scratch):
    """Deletes the outputs set aside, after the last measured run."""
    shutil.rmtree(set_aside_root(scratch), ignore_errors=True)


def set_aside(ctx, label):
    """Moves a run's output out of the way of the next run; it is emptied
    when its scenario ends and deleted when the benchmark ends, never between
    runs. On ext4 without a journal (these VMs), creating a file skips every
    inode freed in the last 60 s, and in the last 6 minutes while that inode's
    table block is dirty again (and creates in the same group dirty it),
    reading each one's dtime to find that out. Deleting the 2,000 files of a
    run made 2,000 creates cost 1.5 s of system CPU instead of 0.07 s, still
    31 s later (measured 2026-11-28), charged to whichever tool ran next, and
    a scenario's first runs were slower for every tool (b2sdk 15.9, 11.7,
    8.3 s in the 01:54 run's three runs of 2,000 files). A real restore does
    not start beside thousands of just-deleted files. A single file is set
    aside too: freeing 1 GiB waits for its discard on a `-o discard` mount."""
    if os.path.exists(ctx.dest_dir):
        os.makedirs(ctx.trash_dir, exist_ok=True)
        os.rename(ctx.dest_dir, os.path.join(ctx.trash_dir, label))


def skipped_row(scenario, tool, reason):
    return {"scenario": scenario, "tool": tool, "run": None, "wall_s": None, "cpu_user_s": None,
            "cpu_sys_s": None, "peak_rss_bytes": None, "bytes": 0, "files": 0, "correct": None,
            "verified_by_tool": None, "error": "skipped: " + reason, "skipped": True}


def run_scenario(name, args, env_info, manifests, results, meta):
    sc = SCENARIOS[name]
    manifest = manifests[sc["bucket"]]
    if "tools" in sc:  # memlock, direct: ringdown against itself (and curl)
        tools = sc["tools"] if "ringdown" in args.tools else []
    else:
        tools = [t for t in args.tools if t not in ("ringdown-memlock", "ringdown-cached")]
    work = os.path.join(args.scratch, "work")
    shutil.rmtree(work, ignore_errors=True)
    trash_dir = os.path.join(set_aside_root(args.scratch), name)
    secret_dir = os.path.join(work, "secret")
    os.makedirs(secret_dir, mode=0o700)
    largest = max(e["size"] for e in manifest["files"])
    threshold = largest * 2 if sc["threshold"] == "above" else max(largest // 4, 5_000_000)
    smeta = {"about": sc["about"], "kind": sc["kind"], "bucket": sc["bucket"], "objects": manifest["count"],
             "bytes": manifest["bytes"], "large_file_threshold": threshold, "commands": {}, "skipped": {}}
    meta["scenarios"][name] = smeta

    def skip_all(reason):
        for t in tools:
            smeta["skipped"][t] = reason
            results.append(skipped_row(name, t, reason))
        log(f"{name}: skipped ({reason})")

    if not env_info["ringdown"]:
        return skip_all("no ringdown binary (cargo build --release failed)")
    if not env_info["serve"]:
        return skip_all("`ringdown serve` is not available in this build")
    if sc.get("origin") == "nginx":
        origin = NginxOrigin(env_info["ringdown"], env_info["buckets_dir"], work, args.logs, name, threshold,
                             sc["serve"], env_info["key_id"], env_info["key"], sc["bucket"])
    else:
        origin = Origin(env_info["ringdown"], env_info["buckets_dir"], work, args.logs, name, threshold,
                        sc["serve"], env_info["key_id"], env_info["key"])
    if origin.error:
        return skip_all(REDACT(origin.error))
    smeta["serve"] = " ".join(origin.argv_display)
    try:
        realm, ca_file = origin.info["realm"], origin.info["ca_file"]
        cred_env = {"B2_APPLICATION_KEY_ID": env_info["key_id"], "B2_APPLICATION_KEY": env_info["key"]}
        auth = None
        if env_info["venv_python"]:
            auth_path = os.path.join(secret_dir, "auth.json")
            try:
                r = subprocess.run([env_info["venv_python"], os.path.join(HERE, "bench_b2sdk.py"), "auth",
                                    "--bucket", sc["bucket"], "--out", auth_path],
                                   env=dict(os.environ, B2_REALM=realm, REQUESTS_CA_BUNDLE=ca_file, **cred_env),
                                   capture_output=True, text=True, timeout=600)
                if r.returncode == 0:
                    with open(auth_path) as f:
                        auth = json.load(f)
                    REDACT.add(auth["authorizationToken"])
                else:
                    log(f"{name}: authorize/list failed: {REDACT(r.stderr[-400:])}")
            except (subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
                # The peers that need it are skipped; the scenario goes on.
                log(f"{name}: authorize/list failed: {REDACT(str(e))}")
                auth = None
        single = sc["kind"] == "single"
        entry = next(e for e in manifest["files"] if e["name"] == sc["name"]) if single else None
        dest_dir = os.path.join(args.scratch, "dest")
        ctx = Ctx(scenario=name, kind=sc["kind"], manifest_bytes=entry["size"] if single else manifest["bytes"], bucket=sc["bucket"], name=sc.get("name"), manifest=manifest,
                  entry=entry, files=[entry] if single else manifest["files"], threshold=sc["threshold"],
                  realm=realm, ca_file=ca_file, cred_env=cred_env, key_id=env_info["key_id"],
                  key=env_info["key"], ringdown=env_info["ringdown"], ringdown_subs=env_info["subs"],
                  venv_python=env_info["venv_python"], secret_dir=secret_dir, work=work, logs=args.logs,
                  stats_dir=args.stats, dest_dir=dest_dir, trash_dir=trash_dir,
                  dest_target=os.path.join(dest_dir, sc["name"]) if single else dest_dir,
                  download_url=auth["downloadUrl"] if auth else None, token=auth["authorizationToken"] if auth else None,
                  origin=origin, origin_cache=sc.get("origin_cache", "cold"),
                  buckets_dir=env_info["buckets_dir"])
        plans = {}
        for t in tools:
            if t in ("curl", "aria2c") and not auth:
                plan = {"skip": "no download URL/token (authorize via b2sdk failed)"}
            else:
                plan = PLANS[t](ctx)
            if "skip" in plan:
                smeta["skipped"][t] = plan["skip"]
                results.append(skipped_row(name, t, plan["skip"]))
                log(f"{name}: {t} skipped: {plan['skip']}")
            else:
                plans[t] = plan
                smeta["commands"][t] = " ".join(plan["display"])
                if plan.get("label"):
                    smeta.setdefault("labels", {})[t] = plan["label"]
        smeta["origin_cache"] = ctx.origin_cache
        if single and plans and not args.no_drop_caches and ctx.origin_cache == "cold":
            smeta["cold_read_s"] = cold_read_s(os.path.join(env_info["buckets_dir"], sc["bucket"], sc["name"]))
            if smeta["cold_read_s"] is not None:
                log(f"{name}: the origin reads {sc['name']} cold in {smeta['cold_read_s']:.3f}s")
        # Interleaved, and rotated: round k starts with the k-th tool, so
        # no tool always runs first in a scenario (after the origin starts,
        # after the previous scenario's writeback) or always after the same one.
        order = list(plans.items())
        for run_no in range(1, args.runs + 1):
            k = (run_no - 1) % len(order) if order else 0
            for position, (t, plan) in enumerate(order[k:] + order[:k]):
                row = run_one(ctx, t, plan, run_no, args)
                row["position"] = position
                results.append(row)
                status = "ok" if row["correct"] else f"FAILED ({row['error'][:160] if row['error'] else ''})"
                wall = f"{row['wall_s']:.3f}s" if row["wall_s"] is not None else "-"
                log(f"{name} run {run_no}/{args.runs} {t}: {wall} {status}")
                write_json(os.path.join(args.out, "results.json"), results)
    finally:
        origin.stop()
        shutil.rmtree(work, ignore_errors=True)
        empty_set_aside(trash_dir)


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.rename(path + ".tmp", path)


# --------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small datasets, 2 runs")
    p.add_argument("--scenario", action="append", default=[], help="scenario or group (repeatable, comma-separated)")
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                   help="comma-separated subset of " + ",".join(DEFAULT_TOOLS) + " (memlock and direct run ringdown twice)")
    p.add_argument("--runs", type=int)
    p.add_argument("--out", default=os.path.join(REPO, "bench-out"))
    p.add_argument("--ringdown", default=None, help="path to the ringdown binary")
    p.add_argument("--venv-python", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--timeout", type=float, default=None,
                   help="per-run timeout in seconds (default: 120 s + the scenario's bytes at 1 MB/s)")
    p.add_argument("--no-drop-caches", action="store_true")
    p.add_argument("--readme", dest="readme", action="store_true", default=None,
                   help="rewrite the README bench block and docs/bench/*.png (default: yes for full runs; "
                   "done only when the run is complete: every scenario and default tool, >= 3 runs, "
                   "ringdown never skipped and always correct)")
    p.add_argument("--no-readme", dest="readme", action="store_false")
    args = p.parse_args()
    # Every request of the benchmark goes to 127.0.0.1. A proxy from the
    # environment would take the peers' (requests, curl and aria2c proxy
    # loopback unless told not to; ringdown and rclone never do), with the
    # key and token, off the machine, and time the proxy instead.
    for k in [k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")]:
        del os.environ[k]
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    # SIGTERM unwinds like Ctrl-C, so each scenario's `finally` stops its
    # origin (serve, nginx: own sessions, so no signal reaches them otherwise).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    names = []
    for s in args.scenario or ["all"]:
        for part in s.split(","):
            part = part.strip()
            if part in GROUPS:
                names += GROUPS[part]
            elif part in SCENARIOS:
                names.append(part)
            else:
                p.error(f"unknown scenario {part!r}; known: {', '.join(list(SCENARIOS) + list(GROUPS))}")
    names = list(dict.fromkeys(names))
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in args.tools:
        if t not in PLANS:
            p.error(f"unknown tool {t!r}; known: {', '.join(PLANS)}")
    args.runs = args.runs or (2 if args.quick else 5)
    if args.readme is None:
        args.readme = not args.quick
    profile = "quick" if args.quick else "full"
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    args.data_root = args.data_root or os.path.join(target, "bench-data")
    args.scratch = os.path.join(target, "bench-scratch")
    args.out = os.path.abspath(args.out)
    args.logs = os.path.join(args.out, "logs")
    args.stats = os.path.join(args.out, "stats")
    for d in (args.logs, args.stats):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    for f in os.listdir(args.out):
        if f.endswith(".png") or f in ("results.json", "report.md", "meta.json"):
            os.unlink(os.path.join(args.out, f))
    os.makedirs(args.scratch, exist_ok=True)
    if os.path.isdir(set_aside_root(args.scratch)):
        log("deleting the outputs an earlier, unfinished benchmark set aside (the first "
            "scenario may pay for it: see `set_aside`)")
        delete_set_aside(args.scratch)

    ringdown = args.ringdown or os.path.join(target, "release", "ringdown")
    ringdown = ringdown if os.path.exists(ringdown) else None
    key_id = "bench" + os.urandom(4).hex()
    key = os.urandom(16).hex()
    REDACT.add(key)
    env_info = {
        "ringdown": ringdown, "serve": ringdown_has(ringdown, "serve"),
        "subs": {s: ringdown_has(ringdown, s) for s in ("get", "restore")},
        "venv_python": args.venv_python, "key_id": key_id, "key": key,
    }
    log(f"profile={profile} runs={args.runs} scenarios={','.join(names)} tools={','.join(args.tools)}")
    log(f"ringdown={ringdown} serve={env_info['serve']} get={env_info['subs']['get']} "
        f"restore={env_info['subs']['restore']}")

    needed = {SCENARIOS[n]["bucket"] for n in names}
    profile_dir, manifests = bench_data.ensure_profile(args.data_root, profile, needed)
    env_info["buckets_dir"] = os.path.join(profile_dir, "buckets")

    machine = machine_info()
    versions = {
        "ringdown": tool_version([ringdown, "--version"]) if ringdown else None,
        "b2sdk": tool_version([args.venv_python, "-c", "import b2sdk.version as v; print('b2sdk', v.VERSION)"])
        if args.venv_python else None,
        "curl": " ".join(tool_version(["curl", "--version"]).split()[:2]) if shutil.which("curl") else None,
        "aria2c": tool_version(["aria2c", "--version"]) if shutil.which("aria2c") else None,
        "rclone": tool_version(["rclone", "version"]) if shutil.which("rclone") else None,
    }
    # --no-drop-caches: not even once here (sync plus a global `echo 3`).
    probe = "not dropped (--no-drop-caches)" if args.no_drop_caches else drop_caches()
    meta = {"profile": profile, "runs": args.runs, "machine": machine, "versions": versions,
            "page_cache": probe or "dropped before every run (sync; echo 3 > /proc/sys/vm/drop_caches)",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "scenarios": {},
            "requested": {"scenarios": names, "tools": args.tools, "all_scenarios": GROUPS["all"],
                          "default_tools": DEFAULT_TOOLS}}
    results = []
    t0 = time.monotonic()
    try:
        for name in names:
            run_scenario(name, args, env_info, manifests, results, meta)
    finally:
        delete_set_aside(args.scratch)
    machine["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_json(os.path.join(args.out, "results.json"), results)
    write_json(os.path.join(args.out, "meta.json"), meta)
    # Last line of defence: no key or token in anything we leave behind.
    for dirpath, _, fnames in os.walk(args.out):
        for fn in fnames:
            if not fn.endswith(".png"):
                REDACT.file(os.path.join(dirpath, fn))
    import bench_report
    bench_report.write_all(args.out, results, meta, readme=os.path.join(REPO, "README.md") if args.readme else None)
    log(f"done in {meta['elapsed_s']} s: {args.out}/report.md")
    # Exit 1 when ringdown wrote a wrong file or was not run at all (no binary,
    # e.g. a failed build, no get/restore, no origin), or the corrupting
    # self-check was not caught.
    bad = [r for r in results if r.get("correct") is False and r["tool"].startswith("ringdown")]
    bad += [r for r in results if r["tool"] == "corrupt" and r.get("correct") is True]
    for r in bad:
        log(f"ERROR: {r['scenario']} {r['tool']} run {r['run']}: correct={r['correct']} {r['error'] or ''}")
    skipped = [r for r in results if r.get("skipped") and r["tool"].startswith("ringdown")]
    for r in skipped:
        log(f"ERROR: {r['scenario']} {r['tool']} not run: {r['error']}")
    return 1 if bad or skipped else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Deterministic benchmark datasets for scripts/bench.sh.

Layout (ROOT defaults to target/bench-data):

    ROOT/<profile>/buckets/<bucket>/<name>      served by `ringdown serve ROOT/<profile>/buckets`
    ROOT/<profile>/manifests/<bucket>.json      {"bucket", "spec", "files": [{"name","size","sha1"}]}
    ROOT/<profile>/serve-sha1-cache/            `ringdown serve --cache-dir` (bench.py)

Every byte is a function of (SEED, bucket, name): a file's content comes from
random.Random seeded with the SHA-256 of those, so the same spec always yields
the same bytes, SHA1s and (fixed) mtimes. Datasets are cached: a bucket is
regenerated only when its spec or the generator version changes. serve's SHA1
cache is keyed by (name, size, mtime), and a regenerated file has the same name,
size and fixed mtime, so regenerating a bucket deletes that cache first (else
serve would advertise the old contentSha1 for the new bytes).

Also the correctness checker used by the harness: check_tree(), check_file().
"""

import hashlib
import json
import os
import random
import shutil
import sys

GENERATOR_VERSION = 1
SEED = 20240611
MTIME = 1_700_000_000  # fixed mtime: `ringdown serve` derives file ids from it
SERVE_CACHE = "serve-sha1-cache"  # under ROOT/<profile>; see serve_cache_dir()
CHUNK = 8 << 20
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# bucket -> list of (name pattern, count, size). Two profiles: full and quick.
PROFILES = {
    "full": {
        "bench-big": [("big.bin", 1, 1 * GiB)],
        "bench-small": [("small/d{d:02}/f{i:05}.bin", 2000, 64 * KiB)],
        "bench-mixed": [
            ("large/l{i:02}.bin", 2, 256 * MiB),
            ("medium/m{d:02}/f{i:04}.bin", 200, 1 * MiB),
            ("tiny/t{d:02}/f{i:05}.bin", 1000, 16 * KiB),
        ],
    },
    "quick": {
        "bench-big": [("big.bin", 1, 64 * MiB)],
        "bench-small": [("small/d{d:02}/f{i:05}.bin", 200, 64 * KiB)],
        "bench-mixed": [
            ("large/l{i:02}.bin", 2, 16 * MiB),
            ("medium/m{d:02}/f{i:04}.bin", 20, 1 * MiB),
            ("tiny/t{d:02}/f{i:05}.bin", 100, 16 * KiB),
        ],
    },
}


def expand(spec):
    """[(pattern, count, size)] -> [(name, size)] in a stable order."""
    out = []
    for pattern, count, size in spec:
        for i in range(count):
            out.append((pattern.format(i=i, d=i // 100), size))
    return out


def file_seed(bucket, name):
    h = hashlib.sha256(f"{SEED}\0{bucket}\0{name}".encode()).digest()
    return int.from_bytes(h[:16], "big")


def write_file(path, bucket, name, size):
    rng = random.Random(file_seed(bucket, name))
    sha1 = hashlib.sha1()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            block = rng.randbytes(n)
            sha1.update(block)
            f.write(block)
            left -= n
    os.utime(tmp, (MTIME, MTIME))
    os.rename(tmp, path)
    return sha1.hexdigest()


def serve_cache_dir(profile_dir):
    """`ringdown serve --cache-dir` for this profile's buckets."""
    return os.path.join(profile_dir, SERVE_CACHE)


def ensure_bucket(profile_dir, bucket, spec, log=sys.stderr):
    """Generate (or reuse) one bucket; return its manifest dict."""
    bucket_dir = os.path.join(profile_dir, "buckets", bucket)
    man_dir = os.path.join(profile_dir, "manifests")
    man_path = os.path.join(man_dir, bucket + ".json")
    spec_key = {"generator": GENERATOR_VERSION, "seed": SEED, "spec": [list(s) for s in spec]}
    if os.path.exists(man_path):
        with open(man_path) as f:
            manifest = json.load(f)
        def intact(e):
            path = os.path.join(bucket_dir, e["name"])
            return os.path.isfile(path) and os.path.getsize(path) == e["size"]
        if manifest.get("spec") == spec_key and all(intact(e) for e in manifest["files"]):
            return manifest
    files = expand(spec)
    total = sum(s for _, s in files)
    print(f"bench_data: generating {bucket}: {len(files)} files, {total / MiB:.0f} MiB", file=log, flush=True)
    # Same names, sizes and mtime as before, possibly other bytes: serve's
    # persisted SHA1s (all buckets share one index) would be stale.
    cache = serve_cache_dir(profile_dir)
    if os.path.exists(cache):
        shutil.rmtree(cache)
        print(f"bench_data: deleted serve's SHA1 cache {cache}", file=log, flush=True)
    entries = []
    for name, size in files:
        path = os.path.join(bucket_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        entries.append({"name": name, "size": size, "sha1": write_file(path, bucket, name, size)})
    os.makedirs(man_dir, exist_ok=True)
    manifest = {"bucket": bucket, "spec": spec_key, "files": entries,
                "bytes": total, "count": len(entries)}
    with open(man_path + ".tmp", "w") as f:
        json.dump(manifest, f)
    os.rename(man_path + ".tmp", man_path)
    return manifest


def ensure_profile(root, profile, buckets=None):
    profile_dir = os.path.join(root, profile)
    out = {}
    for bucket, spec in PROFILES[profile].items():
        if buckets is None or bucket in buckets:
            out[bucket] = ensure_bucket(profile_dir, bucket, spec)
    return profile_dir, out


# ---------------------------------------------------------------- checking

def sha1_file(path):
    h = hashlib.sha1()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def check_entries(pairs):
    """pairs: [(manifest entry, local path)]. Returns dict(correct, files, bytes, error).

    correct is True only if every expected file exists with the expected size
    and SHA1. `files`/`bytes` count what is present on disk."""
    files = nbytes = 0
    problems = []
    for entry, path in pairs:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(f"missing {entry['name']}")
            continue
        files += 1
        nbytes += st.st_size
        if st.st_size != entry["size"]:
            problems.append(f"size {entry['name']}: {st.st_size} != {entry['size']}")
            continue
        got = sha1_file(path)
        if got != entry["sha1"]:
            problems.append(f"sha1 {entry['name']}: {got} != {entry['sha1']}")
    error = None
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        error = f"{len(problems)} wrong/missing file(s): " + "; ".join(problems[:3]) + more
    return {"correct": not problems, "files": files, "bytes": nbytes, "error": error}


def check_tree(manifest, dest_dir):
    return check_entries([(e, os.path.join(dest_dir, e["name"])) for e in manifest["files"]])


def check_file(entry, path):
    return check_entries([(entry, path)])


# ---------------------------------------------------------------- self-test

def selftest():
    """A wrong byte, a short file and a missing file must all be caught."""
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix="bench-selftest-")
    try:
        spec = [("a/f{i}.bin", 3, 100_000)]
        manifest = ensure_bucket(tmp, "bkt", spec, log=open(os.devnull, "w"))
        src = os.path.join(tmp, "buckets", "bkt")
        dest = os.path.join(tmp, "dest")
        shutil.copytree(src, dest)
        ok = check_tree(manifest, dest)
        assert ok["correct"] and ok["files"] == 3 and ok["bytes"] == 300_000, ok
        # Determinism: regenerating gives the same SHA1s.
        again = ensure_bucket(os.path.join(tmp, "again"), "bkt", spec, log=open(os.devnull, "w"))
        assert [e["sha1"] for e in again["files"]] == [e["sha1"] for e in manifest["files"]]
        # One flipped byte.
        victim = os.path.join(dest, manifest["files"][1]["name"])
        with open(victim, "r+b") as f:
            f.seek(12345)
            b = f.read(1)
            f.seek(12345)
            f.write(bytes([b[0] ^ 1]))
        bad = check_tree(manifest, dest)
        assert not bad["correct"] and "sha1 a/f1.bin" in bad["error"], bad
        # Single-file check on the corrupted file.
        assert not check_file(manifest["files"][1], victim)["correct"]
        # Truncated and missing.
        os.truncate(os.path.join(dest, manifest["files"][0]["name"]), 10)
        os.unlink(os.path.join(dest, manifest["files"][2]["name"]))
        bad = check_tree(manifest, dest)
        assert not bad["correct"] and bad["files"] == 2 and "missing a/f2.bin" in bad["error"], bad
        print("bench_data selftest: ok (flipped byte, truncation and missing file caught)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    if sys.argv[1:] == ["selftest"]:
        selftest()
    elif len(sys.argv) == 3:
        _, root, profile = sys.argv
        _, manifests = ensure_profile(root, profile)
        for b, m in manifests.items():
            print(f"{b}: {m['count']} files, {m['bytes']} bytes")
    else:
        sys.exit("usage: bench_data.py ROOT full|quick | bench_data.py selftest")

#!/usr/bin/env python3
"""b2sdk 2.8.0 peer for scripts/bench.sh, plus the one authorize call the
plain-URL peers need.

Credentials and realm come from the environment only (never argv, so they do
not show in `ps` or in the report): B2_APPLICATION_KEY_ID, B2_APPLICATION_KEY,
B2_REALM (the `ringdown serve` realm URL). TLS trust: REQUESTS_CA_BUNDLE.

  bench_b2sdk.py auth --bucket B --out FILE
        b2_authorize_account once and list the bucket (also warms the origin's
        SHA1 cache); writes {"downloadUrl","authorizationToken"} to FILE (0600).
  bench_b2sdk.py get --bucket B --name NAME --dest PATH
        bucket.download_file_by_name(NAME).save_to(PATH)  (b2sdk verifies the
        SHA1 when the object has a contentSha1; a large file's `none` is not
        checked: b2sdk 2.8.0 ignores large_file_sha1)
  bench_b2sdk.py sync --bucket B --dest DIR [--threads 10]
        Synchronizer(max_workers=10) b2://B -> DIR, as `b2 sync` does.
  bench_b2sdk.py warm
        Imports what `get` and `sync` use and makes a B2Api, with no request:
        run untimed after the page cache is dropped, so a timed run starts
        with its code in the cache, as a user's second run does.
"""

import argparse
import json
import os
import sys
import time


def api_from_env(threads=None):
    from b2sdk.v2 import B2Api, InMemoryAccountInfo

    kwargs = {}
    if threads:
        kwargs["max_download_workers"] = threads
    api = B2Api(InMemoryAccountInfo(), **kwargs)
    api.authorize_account(
        realm=os.environ["B2_REALM"],
        application_key_id=os.environ["B2_APPLICATION_KEY_ID"],
        application_key=os.environ["B2_APPLICATION_KEY"],
    )
    return api


def cmd_auth(args):
    api = api_from_env()
    bucket = api.get_bucket_by_name(args.bucket)
    count = 0
    for _version, _folder in bucket.ls(recursive=True, latest_only=True):
        count += 1
    info = api.account_info
    out = {
        "downloadUrl": info.get_download_url(),
        "authorizationToken": info.get_account_auth_token(),
        "listed": count,
    }
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(out, f)


def cmd_get(args):
    api = api_from_env()
    bucket = api.get_bucket_by_name(args.bucket)
    bucket.download_file_by_name(args.name).save_to(args.dest)


def cmd_sync(args):
    from b2sdk.v2 import (
        CompareVersionMode,
        KeepOrDeleteMode,
        NewerFileSyncMode,
        ScanPoliciesManager,
        SyncReport,
        Synchronizer,
        parse_sync_folder,
    )

    api = api_from_env(threads=args.threads)
    os.makedirs(args.dest, exist_ok=True)
    source = parse_sync_folder(f"b2://{args.bucket}", api)
    dest = parse_sync_folder(args.dest, api)
    sync = Synchronizer(
        max_workers=args.threads,
        policies_manager=ScanPoliciesManager(exclude_all_symlinks=True),
        dry_run=False,
        allow_empty_source=True,
        newer_file_mode=NewerFileSyncMode.REPLACE,
        keep_days_or_delete=KeepOrDeleteMode.NO_DELETE,
        compare_version_mode=CompareVersionMode.MODTIME,
    )
    with SyncReport(sys.stderr, no_progress=True) as reporter:
        sync.sync_folders(source, dest, now_millis=int(time.time() * 1000), reporter=reporter)
        failed = reporter.has_errors_or_warnings()
    if failed:
        print("bench_b2sdk: sync reported errors or warnings", file=sys.stderr)
        return 1
    return 0


def cmd_warm(_args):
    import hashlib, ssl  # noqa: F401  (TLS and SHA1, loaded by the first download)

    import requests  # noqa: F401
    from b2sdk.v2 import B2Api, InMemoryAccountInfo, Synchronizer, SyncReport, parse_sync_folder  # noqa: F401

    B2Api(InMemoryAccountInfo())


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("auth")
    a.add_argument("--bucket", required=True)
    a.add_argument("--out", required=True)
    g = sub.add_parser("get")
    g.add_argument("--bucket", required=True)
    g.add_argument("--name", required=True)
    g.add_argument("--dest", required=True)
    s = sub.add_parser("sync")
    s.add_argument("--bucket", required=True)
    s.add_argument("--dest", required=True)
    s.add_argument("--threads", type=int, default=10)
    sub.add_parser("warm")
    args = p.parse_args()
    rc = {"auth": cmd_auth, "get": cmd_get, "sync": cmd_sync, "warm": cmd_warm}[args.cmd](args)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()

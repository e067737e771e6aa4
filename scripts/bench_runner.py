#!/usr/bin/env python3
"""Measure one client run: bench_runner.py RESULT.json TIMEOUT_S LOG -- CMD ARGS...

Forks, execs CMD (in its own process group, stdin /dev/null, stdout+stderr to
LOG), waits with os.wait4 and writes {wall_s, cpu_user_s, cpu_sys_s,
peak_rss_bytes, exit_code, signal, timed_out} to RESULT.json.

rusage from wait4 covers the child and every descendant it waited for, so a
tool's worker processes count. ru_maxrss is the largest single process in that
tree, and it is never below the RSS of the process that forked (Linux keeps the
pre-exec high-water mark), which is why this runner is a separate, tiny
interpreter (`python3 -S -I`, ~6.5 MB) rather than the orchestrator.

Imports only a few standard modules on purpose.
"""

import json
import os
import signal
import sys
import time


def main():
    argv = sys.argv[1:]
    sep = argv.index("--")
    result_path, timeout_s, log_path = argv[0], float(argv[1]), argv[2]
    cmd = argv[sep + 1:]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.dup2(null_fd, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.execvp(cmd[0], cmd)
        except BaseException as e:  # exec failed
            os.write(2, f"bench_runner: cannot run {cmd[0]}: {e}\n".encode())
        os._exit(127)
    os.close(log_fd)
    timed_out = False

    def on_alarm(_sig, _frame):
        nonlocal timed_out
        timed_out = True
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def on_term(sig, _frame):
        # The harness is being stopped (Ctrl-C, SIGTERM, a closed terminal):
        # the tool, in its own group, would run on orphaned, writing into
        # the scratch directory and taking CPU from whatever runs next.
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os._exit(128 + sig)

    signal.signal(signal.SIGALRM, on_alarm)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_term)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    while True:
        try:
            _, status, ru = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    wall = time.monotonic() - t0
    signal.setitimer(signal.ITIMER_REAL, 0)
    # Anything the tool left running in its group (it should not) is stopped too.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    exit_code = os.waitstatus_to_exitcode(status)
    res = {
        "wall_s": round(wall, 6),
        "cpu_user_s": round(ru.ru_utime, 6),
        "cpu_sys_s": round(ru.ru_stime, 6),
        "peak_rss_bytes": ru.ru_maxrss * 1024,
        "exit_code": exit_code if exit_code >= 0 else None,
        "signal": -exit_code if exit_code < 0 else None,
        "timed_out": timed_out,
    }
    with open(result_path, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()

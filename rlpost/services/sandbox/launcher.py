"""Runs inside the sandbox, stdlib only, as `python3 -I -S -c <this file's text> SPEC_FD REPORT_FD`.

It writes the request's files into the working directory, runs the program under the run's rlimits and reports the
exit status, timings and the requested files on REPORT_FD. The rlimits are set here, inside the sandbox's own user
namespace, because the kernel counts RLIMIT_NPROC per user namespace: a fork bomb uses up its own sandbox's quota,
not the host user's, and concurrent runs do not share one.

The program runs with this process's uid, so this process keeps it out: it makes itself non-dumpable (no
/proc/<pid>/fd or /proc/<pid>/mem access for the same uid), the sandbox's seccomp filter refuses ptrace and
pidfd_getfd, and the report carries an HMAC under a key that only the spec (read before the program starts) held.
"""

import base64
import ctypes
import hashlib
import hmac
import json
import os
import resource
import stat
import subprocess
import sys
import time


def _write_files(cwd: str, files: dict) -> None:
    for path, content in files.items():
        full = os.path.join(cwd, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(base64.b64decode(content) if content else b"")


def _fetch(cwd: str, paths: list, budget: int) -> tuple:
    """Regular files inside the working directory only, `budget` bytes in all: a symlink to /dev/zero must not
    make this unlimited process read forever."""
    found, missing, root = {}, [], os.path.realpath(cwd) + os.sep
    for path in paths:
        full = os.path.realpath(os.path.join(cwd, path))
        try:
            if not full.startswith(root):
                raise OSError(path)
            with open(os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise OSError(path)
                data = f.read(budget + 1)
            if len(data) > budget:
                raise OSError(path)
            budget -= len(data)
            found[path] = base64.b64encode(data).decode()
        except OSError:
            missing.append(path)
    return found, missing


def main() -> None:
    spec_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    # at the run's memory limit the kernel kills the program, not this process: the program is born with 1000 (raised
    # here, then lowered back after the fork); opened before PR_SET_DUMPABLE, which makes /proc/self root's
    oom_adj = open("/proc/self/oom_score_adj", "w")
    oom_adj.write("1000")
    oom_adj.flush()
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0
        sys.exit(f"launcher: prctl(PR_SET_DUMPABLE) failed: {os.strerror(ctypes.get_errno())}")
    with os.fdopen(spec_fd, "rb") as f:
        spec = json.loads(f.read())
    key = bytes.fromhex(spec.pop("key"))
    _write_files(spec["cwd"], spec["files"])

    def limit() -> None:
        for name, value in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))

    start = time.monotonic()
    proc = subprocess.Popen(spec["argv"], cwd=spec["cwd"], preexec_fn=limit)
    oom_adj.seek(0)
    oom_adj.write("0")
    oom_adj.close()
    return_code = proc.wait()
    elapsed = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    files, missing = _fetch(spec["cwd"], spec["fetch_files"], spec["fetch_budget"])
    report = {"return_code": return_code, "execution_time": elapsed, "cpu_time": usage.ru_utime + usage.ru_stime,
              "files": files, "missing_files": missing}
    body = json.dumps(report).encode()
    with os.fdopen(report_fd, "wb") as f:
        f.write(hmac.new(key, body, hashlib.sha256).hexdigest().encode() + b"\n" + body)


if __name__ == "__main__":
    main()

"""Runs inside the sandbox, stdlib only, as `python3 -I -S -c <this file's text> SPEC_FD REPORT_FD`.

It writes the request's files into the working directory, runs the program under the run's rlimits and reports the
exit status, timings and the requested files on REPORT_FD. The rlimits are set here, inside the sandbox's own user
namespace, because the kernel counts RLIMIT_NPROC per user namespace: a fork bomb uses up its own sandbox's quota,
not the host user's, and concurrent runs do not share one.
"""

import base64
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
    with os.fdopen(spec_fd, "rb") as f:
        spec = json.loads(f.read())
    _write_files(spec["cwd"], spec["files"])

    def limit() -> None:
        for name, value in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))

    start = time.monotonic()
    proc = subprocess.Popen(spec["argv"], cwd=spec["cwd"], preexec_fn=limit)
    return_code = proc.wait()
    elapsed = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    files, missing = _fetch(spec["cwd"], spec["fetch_files"], spec["fetch_budget"])
    report = {"return_code": return_code, "execution_time": elapsed, "cpu_time": usage.ru_utime + usage.ru_stime,
              "files": files, "missing_files": missing}
    with os.fdopen(report_fd, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()

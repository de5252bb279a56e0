"""One program run under bubblewrap: its own user, PID, network, IPC, UTS and cgroup namespaces (so no network at
all), the host's /usr read-only and nothing else of the host's files (no home, no project, no /etc beyond what the
dynamic loader needs), a private size-capped /tmp, rlimits on memory, CPU time, processes and file size, a seccomp
filter against reaching other processes (rlpost.services.sandbox.seccomp), a memory + pids cgroup for the run as a
whole where the host allows one (rlpost.services.sandbox.cgroups), a wall-clock timeout and a cap on every output."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.services.sandbox.cgroups import CgroupsUnavailable, RunCgroup, RunCgroups
from rlpost.services.sandbox.protocol import RunCodeRequest, command_result, run_code_response
from rlpost.services.sandbox.seccomp import SeccompUnsupported, deny_filter

LAUNCHER = (Path(__file__).parent / "launcher.py").read_text()
WORKDIR = "/tmp"
_ETC = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")
_HOST_PATH = "/usr/bin:/bin"  # bwrap's whole environment: the sandbox's PID 1 is bwrap, readable in /proc/1/environ
_PROGRAMS = {"python": "main.py", "bash": "main.sh"}  # language (a SandboxSettings interpreter field) -> code file


@dataclass
class SandboxSettings:
    python: str = "/usr/bin/python3"
    bash: str = "/usr/bin/bash"
    default_memory_mb: int = 1024
    max_memory_mb: int = 8192
    max_run_timeout_s: float = 300.0
    max_output_bytes: int = 1 << 20
    tmp_size_mb: int = 64
    max_processes: int = 64
    max_open_files: int = 256
    unprivileged_uid: int = 65534
    ro_binds: tuple[str, ...] = field(default_factory=tuple)
    cgroups: str = "auto"  # auto: one per run where the host allows it; require: refuse to start without; off

    def languages(self) -> tuple[str, ...]:
        return tuple(_PROGRAMS)


class SandboxUnavailable(RuntimeError):
    pass


class Sandbox:
    def __init__(self, settings: SandboxSettings | None = None):
        self.settings = settings or SandboxSettings()
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed; on Debian/Ubuntu: "
                                     "apt-get install bubblewrap")
        visible = ("/usr/", *(p.rstrip("/") + "/" for p in self.settings.ro_binds))
        for path in (self.settings.python, self.settings.bash, *self.settings.ro_binds):
            if not Path(path).exists():
                raise SandboxUnavailable(f"sandbox path '{path}' does not exist")
        for path in (self.settings.python, self.settings.bash):
            if not path.startswith(visible):
                raise SandboxUnavailable(f"'{path}' is not inside the sandbox: use an interpreter under /usr or "
                                         f"add its installation prefix to the read-only binds")
        self._bwrap_argv = self._argv()
        try:
            self._seccomp = deny_filter()
        except SeccompUnsupported as e:
            raise SandboxUnavailable(str(e)) from e
        self.cgroups, self.cgroups_why = None, "off in the settings"
        if self.settings.cgroups not in ("auto", "require", "off"):
            raise SandboxUnavailable(f"cgroups '{self.settings.cgroups}' is not one of auto, require, off")
        if self.settings.cgroups != "off":
            try:
                self.cgroups = RunCgroups.detect()
            except CgroupsUnavailable as e:
                if self.settings.cgroups == "require":
                    raise SandboxUnavailable(f"no cgroup for each run can be made here: {e}") from e
                self.cgroups_why = str(e)

    def bounds(self) -> str:
        """What bounds a run's memory, for the server's start-up line."""
        if self.cgroups is not None:
            return (f"each run's memory (its processes, /tmp, memfds and inodes together) and process count are "
                    f"bounded by a {self.cgroups.describe()}")
        return (f"WARNING: no cgroup per run ({self.cgroups_why}): memory is bounded per process only "
                f"(RLIMIT_AS x up to {self.settings.max_processes} processes), not for the run as a whole")

    def check_request(self, req: RunCodeRequest) -> str | None:
        """Why this server will not run the request, or None."""
        s = self.settings
        if req.language not in _PROGRAMS:
            return f"language '{req.language}' is not supported by this sandbox (it runs {list(_PROGRAMS)})"
        if req.run_timeout > s.max_run_timeout_s:
            return f"run_timeout {req.run_timeout:g} s is over this sandbox's limit of {s.max_run_timeout_s:g} s"
        if req.memory_limit_MB > s.max_memory_mb:
            return f"memory_limit_MB {req.memory_limit_MB} is over this sandbox's limit of {s.max_memory_mb}"
        size = len(req.code) + sum(len(c or "") * 3 // 4 for c in req.files.values())
        if size > s.tmp_size_mb << 20:
            return f"code and files ({size} bytes) do not fit the sandbox's {s.tmp_size_mb} MiB /tmp"
        if _PROGRAMS[req.language] in req.files:
            return f"files: '{_PROGRAMS[req.language]}' is where the code goes; name the file differently"
        return None

    def _argv(self) -> list[str]:
        s = self.settings
        # --disable-userns: no nested user namespace, so no mounting a bigger /tmp over the capped one
        argv = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--cap-drop", "ALL",
                "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            if Path(f"/usr/{link}").exists():
                argv += ["--symlink", f"usr/{link}", f"/{link}"]
        for path in (*_ETC, *s.ro_binds):
            if Path(path).exists():
                argv += ["--ro-bind", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(s.tmp_size_mb << 20), "--tmpfs", WORKDIR,
                 "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
        for key, value in (("PATH", "/usr/local/bin:/usr/bin:/bin"), ("HOME", WORKDIR), ("TMPDIR", WORKDIR),
                           ("LANG", "C.UTF-8"), ("PYTHONDONTWRITEBYTECODE", "1")):
            argv += ["--setenv", key, value]
        return argv

    def _identity(self) -> dict:
        """Who bwrap runs as: root is exempt from RLIMIT_NPROC, so a root server drops to an unprivileged uid."""
        uid = self.settings.unprivileged_uid
        return {"user": uid, "group": uid, "extra_groups": []} if os.geteuid() == 0 else {}

    async def run(self, req: RunCodeRequest) -> dict:
        s = self.settings
        filename = _PROGRAMS[req.language]
        memory_mb = s.default_memory_mb if req.memory_limit_MB == -1 else req.memory_limit_MB
        cpu_s = int(req.run_timeout) + 1
        key = secrets.token_bytes(32)
        spec = {"cwd": WORKDIR, "argv": [getattr(s, req.language), filename], "key": key.hex(),
                "files": {**req.files, filename: _b64(req.code)}, "fetch_files": req.fetch_files,
                "fetch_budget": s.tmp_size_mb << 20,
                "rlimits": {"RLIMIT_AS": memory_mb << 20, "RLIMIT_CPU": cpu_s,
                            "RLIMIT_NPROC": s.max_processes, "RLIMIT_FSIZE": s.tmp_size_mb << 20,
                            "RLIMIT_NOFILE": s.max_open_files, "RLIMIT_CORE": 0}}
        cgroup = None
        if self.cgroups is not None:
            try:
                cgroup = await asyncio.to_thread(self.cgroups.create, (memory_mb + s.tmp_size_mb) << 20,
                                                 s.max_processes + 2)  # + bwrap's two
            except OSError as e:
                return run_code_response(command_result("Error", stderr=str(e)),
                                         f"could not make the run's cgroup: {e}")
        try:
            return await self._run(req, spec, key, cgroup, memory_mb, cpu_s)
        finally:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)

    async def _run(self, req: RunCodeRequest, spec: dict, key: bytes, cgroup: RunCgroup | None, memory_mb: int,
                   cpu_s: int) -> dict:
        s = self.settings
        spec_r, spec_w = os.pipe()
        report_r, report_w = os.pipe()
        seccomp = os.memfd_create("rlpost-seccomp")
        os.write(seccomp, self._seccomp)
        os.lseek(seccomp, 0, os.SEEK_SET)
        start = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._bwrap_argv, "--seccomp", str(seccomp), s.python, "-I", "-S", "-c", LAUNCHER, str(spec_r),
                str(report_w), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, pass_fds=(spec_r, report_w, seccomp), start_new_session=True,
                env={"PATH": _HOST_PATH}, **self._identity())
        except OSError as e:
            for fd in (spec_r, spec_w, report_r, report_w, seccomp):
                os.close(fd)
            return run_code_response(command_result("Error", stderr=str(e)), f"could not start bubblewrap: {e}")
        for fd in (spec_r, report_w, seccomp):
            os.close(fd)
        if cgroup is not None:  # before the spec goes out: the launcher waits for it, so nothing has run yet
            try:
                await asyncio.to_thread(cgroup.enter_tree, proc.pid)
            except OSError as e:
                _kill(proc)
                os.close(spec_w)
                os.close(report_r)
                await proc.communicate()
                return run_code_response(command_result("Error", stderr=str(e)),
                                         f"could not move the run into its cgroup: {e}")
        feeding = asyncio.gather(_write_pipe(spec_w, json.dumps(spec).encode()), self._feed_stdin(proc, req.stdin))
        # the report holds the fetched files (base64) and a few numbers: anything longer is not the launcher's
        report_cap = (s.tmp_size_mb << 20) * 4 // 3 + (64 << 10)
        reporting = asyncio.ensure_future(_read_pipe(report_r, report_cap))
        out, err = _Capped(s.max_output_bytes), _Capped(s.max_output_bytes)
        reading = asyncio.gather(out.drain(proc.stdout, proc), err.drain(proc.stderr, proc))
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(reading), req.run_timeout)
        except asyncio.TimeoutError:
            timed_out = True
            _kill(proc)
            await reading
        await proc.wait()
        await feeding
        report_raw = await reporting
        elapsed = time.monotonic() - start
        stdout, stderr = out.text(), err.text()
        if timed_out:
            result = command_result("TimeLimitExceeded", elapsed, None, stdout, stderr)
            return run_code_response(result, f"the program ran past run_timeout ({req.run_timeout:g} s) and was killed")
        if out.overflow or err.overflow:
            result = command_result("Finished", elapsed, -signal.SIGKILL, stdout, stderr)
            return run_code_response(result, f"the program wrote more than {s.max_output_bytes} bytes to "
                                             f"{'stdout' if out.overflow else 'stderr'} and was killed")
        report = _valid_report(report_raw, key)
        if report is None:
            result = command_result("Error", elapsed, proc.returncode, stdout, stderr)
            return run_code_response(result, f"the sandbox failed (exit {proc.returncode}; no valid report from its "
                                             f"launcher): {stderr[-2000:]}")
        result = command_result("Finished", report["execution_time"], report["return_code"], stdout, stderr,
                                report["cpu_time"])
        oom = cgroup is not None and cgroup.oom_kills() > 0
        return run_code_response(result, _explain(report, cpu_s, memory_mb, s.tmp_size_mb, oom), report["files"])

    async def _feed_stdin(self, proc: asyncio.subprocess.Process, stdin: str | None) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if stdin:
                proc.stdin.write(stdin.encode())
                await proc.stdin.drain()
            proc.stdin.close()


class _Capped:
    """One output stream, kept up to a byte cap; past it the run is killed."""

    def __init__(self, cap: int):
        self.cap, self.data, self.overflow = cap, bytearray(), False

    async def drain(self, stream: asyncio.StreamReader, proc: asyncio.subprocess.Process) -> None:
        while chunk := await stream.read(1 << 16):
            if not self.overflow:
                self.data += chunk[: self.cap - len(self.data)]
                if len(self.data) >= self.cap:
                    self.overflow = True
                    _kill(proc)

    def text(self) -> str:
        return self.data.decode(errors="replace")


def _explain(report: dict, cpu_s: int, memory_mb: int, tmp_mb: int, oom: bool) -> str:
    code = report["return_code"]
    notes = []
    if oom:
        notes.append(f"the run's processes together reached its memory limit ({memory_mb} MB, plus {tmp_mb} MB for "
                     f"/tmp) and the kernel killed one of them")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        notes.append(f"the program was killed by {name}")
        if -code == signal.SIGXCPU:
            notes.append(f"its CPU time limit is {cpu_s} s")
        elif -code in (signal.SIGSEGV, signal.SIGKILL, signal.SIGABRT):
            notes.append(f"its memory limit is {memory_mb} MB")
    if report["missing_files"]:
        notes.append(f"fetch_files not found (or not regular files inside the working directory, or over the size "
                     f"budget): {report['missing_files']}")
    return "; ".join(notes)


def _kill(proc: asyncio.subprocess.Process) -> None:
    """bwrap dies, and with it (--die-with-parent, PID namespace) everything the program started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _write_pipe(fd: int, data: bytes) -> None:
    """Non-blocking (a thread per pipe would starve the default pool under concurrent runs)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb"))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _read_pipe(fd: int, cap: int) -> bytes:
    """Up to cap + 1 bytes: one more than the cap tells the caller it was exceeded; the rest is never held."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb"))
    data = bytearray()
    try:
        while len(data) <= cap and (chunk := await reader.read(1 << 16)):
            data += chunk
        return bytes(data[: cap + 1])
    finally:
        transport.close()


def _valid_report(raw: bytes, key: bytes) -> dict | None:
    """The launcher's report, or None when it is missing, malformed, too long or not signed with the run's key (the
    program may have tampered with it)."""
    mac, _, body = raw.partition(b"\n")
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).hexdigest().encode()):
        return None
    try:
        report = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    numbers = ("execution_time", "cpu_time")
    if (not isinstance(report, dict) or not isinstance(report.get("return_code"), int)
            or not all(isinstance(report.get(k), (int, float)) for k in numbers)
            or not isinstance(report.get("files"), dict) or not isinstance(report.get("missing_files"), list)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in report["files"].items())):
        return None
    return report

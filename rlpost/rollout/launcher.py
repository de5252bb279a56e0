"""Start and stop rollout server processes: `python -m sglang.launch_server` on GPU clusters, `rlpost serve engine`
elsewhere. Both take the same flags for what they share, run in their own process group (SGLang forks scheduler
and detokenizer processes that must die with it) and are ready when /health answers 200.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerSpec:
    model_path: str
    engine: str = "embedded"  # or "sglang"
    host: str = "127.0.0.1"
    port: int = 30000
    dtype: str = "bfloat16"
    tp_size: int = 1
    mem_fraction_static: float | None = None
    context_length: int | None = None
    max_running_requests: int | None = None
    random_seed: int | None = None
    deterministic_inference: bool = False  # the only mode in which either engine honours sampling_seed
    base_gpu_id: int | None = None
    enable_memory_saver: bool = False
    disable_radix_cache: bool = False
    tool_call_parser: str | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def server_command(spec: ServerSpec) -> list[str]:
    if spec.engine not in ("embedded", "sglang"):
        raise ValueError(f"rollout engine '{spec.engine}' is not one of embedded, sglang")
    if spec.engine == "embedded":
        if spec.tp_size != 1:
            raise ValueError("the embedded engine runs with tp_size 1; use engine 'sglang' for tensor parallel")
        cmd = [sys.executable, "-m", "rlpost.cli", "serve", "engine"]
    else:
        cmd = [sys.executable, "-m", "sglang.launch_server", "--tp-size", str(spec.tp_size), "--trust-remote-code"]
    cmd += ["--model-path", spec.model_path, "--host", spec.host, "--port", str(spec.port), "--dtype", spec.dtype]
    options = {"--context-length": spec.context_length, "--max-running-requests": spec.max_running_requests,
               "--random-seed": spec.random_seed}
    cmd += ["--enable-deterministic-inference"] * spec.deterministic_inference
    if spec.engine == "embedded" and spec.disable_radix_cache:
        options["--prefix-cache-tokens"] = 0
    if spec.engine == "sglang":
        options.update({"--mem-fraction-static": spec.mem_fraction_static, "--base-gpu-id": spec.base_gpu_id,
                        "--tool-call-parser": spec.tool_call_parser})
        cmd += ["--enable-memory-saver"] * spec.enable_memory_saver
        cmd += ["--disable-radix-cache"] * spec.disable_radix_cache
    for flag, value in options.items():
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(spec.extra_args)


class ServerProcess:
    """One server process and its log; a context manager that always stops what it started."""

    def __init__(self, spec: ServerSpec, log_path: str | Path | None = None, env: dict | None = None):
        self.spec, self.env = spec, env
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="rlpost-server-", suffix=".log")
            os.close(handle)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(server_command(self.spec), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env={**os.environ, **(self.env or {})})

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout_s: float = 600.0, interval_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self.stop()
                raise RuntimeError(f"server {self.spec.url} exited with code {code} before becoming healthy; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.spec.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server {self.spec.url} not healthy after {timeout_s:.0f}s; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            time.sleep(interval_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after timeout_s; children are killed even when the leader
        already died (a crashed SGLang leaves its scheduler holding GPU memory)."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        if self.process.poll() is None:
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

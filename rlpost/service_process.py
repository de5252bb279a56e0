"""A server command run in its own process group with its log: started, waited on until /health answers 200, and
stopped group and all (SGLang forks scheduler and detokenizer processes that must die with it). The rollout
servers' and the retrieval server's launchers are this with their own command."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


class ServiceProcess:
    """Subclasses give `url`, `command()` and what the messages call the service (`kind`)."""

    kind = "server"
    stop_timeout_s = 30.0

    def __init__(self, log_path: str | Path | None = None, env: dict | None = None, log_prefix: str = "rlpost-"):
        self.env = env
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
            os.close(handle)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env={**os.environ, **(self.env or {})})

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_healthy(self, timeout_s: float = 600.0, interval_s: float = 0.5) -> None:
        """Stops the process group before raising: a server that never became healthy is not left running."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self.stop()
                raise RuntimeError(f"{self.kind} {self.url} exited with code {code} before becoming healthy; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.kind} {self.url} not healthy after {timeout_s:.0f}s; log "
                                   f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(interval_s)

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM to the whole process group, SIGKILL after timeout_s; children are killed even when the leader
        already died (a crashed SGLang leaves its scheduler holding GPU memory)."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        if self.process.poll() is None:
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

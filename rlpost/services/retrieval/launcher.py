"""Start `rlpost serve retrieval` as a process on a free loopback port, wait until /health answers, stop its whole
process group; a context manager for tests, benchmarks and recipes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rlpost.net import free_port

STARTUP_PREFIX = "rlpost retrieval serving on "


class RetrievalServerProcess:
    def __init__(self, corpus: str | Path, retriever: str = "bm25", topk: int = 3, host: str = "127.0.0.1",
                 port: int | None = None, rebuild: bool = False, log_path: str | Path | None = None,
                 env: dict | None = None, ready_timeout_s: float = 600.0):
        self.corpus, self.retriever, self.topk, self.rebuild = Path(corpus), retriever, topk, rebuild
        self.host, self.port = host, port or free_port(host)
        self.env, self.ready_timeout_s = env, ready_timeout_s
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="rlpost-retrieval-", suffix=".log")
            os.close(handle)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def retrieve_url(self) -> str:
        return self.url + "/retrieve"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "rlpost.cli", "serve", "retrieval", "--corpus", str(self.corpus),
                "--retriever", self.retriever, "--topk", str(self.topk), "--host", self.host, "--port",
                str(self.port)] + ["--rebuild"] * self.rebuild

    def __enter__(self) -> RetrievalServerProcess:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
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

    def startup_line(self) -> str | None:
        """The server's start-up line (URL, retriever, corpus size, index loaded or built), once printed."""
        return next((line for line in self.log_text().splitlines() if line.startswith(STARTUP_PREFIX)), None)

    def wait_healthy(self, timeout_s: float | None = None, interval_s: float = 0.1) -> None:
        deadline = time.monotonic() + (self.ready_timeout_s if timeout_s is None else timeout_s)
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"retrieval server {self.url} exited with code {code} before becoming healthy; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"retrieval server {self.url} not healthy in time; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            time.sleep(interval_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after timeout_s."""
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

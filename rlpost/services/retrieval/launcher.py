"""Start `rlpost serve retrieval` as a process on a free loopback port, wait until /health answers, stop its whole
process group; a context manager for tests, benchmarks and recipes."""

from __future__ import annotations

import sys
from pathlib import Path

from rlpost.net import free_port
from rlpost.service_process import ServiceProcess

STARTUP_PREFIX = "rlpost retrieval serving on "


class RetrievalServerProcess(ServiceProcess):
    """Waits for /health on entering: the index may take minutes to build."""

    kind = "retrieval server"
    stop_timeout_s = 10.0

    def __init__(self, corpus: str | Path, retriever: str = "bm25", topk: int = 3, host: str = "127.0.0.1",
                 port: int | None = None, rebuild: bool = False, log_path: str | Path | None = None,
                 env: dict | None = None, ready_timeout_s: float = 600.0):
        super().__init__(log_path, env, log_prefix="rlpost-retrieval-")
        self.corpus, self.retriever, self.topk, self.rebuild = Path(corpus), retriever, topk, rebuild
        self.host, self.port = host, port or free_port(host)
        self.ready_timeout_s = ready_timeout_s

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
        self.wait_healthy(self.ready_timeout_s, interval_s=0.1)  # stops the process before it raises
        return self

    def startup_line(self) -> str | None:
        """The server's start-up line (URL, retriever, corpus size, index loaded or built), once printed."""
        return next((line for line in self.log_text().splitlines() if line.startswith(STARTUP_PREFIX)), None)

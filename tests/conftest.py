import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import requests

from rlpost.net import free_port
from rlpost.testing.tiny_models import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tokenizer(tiny_llama):
    from rlpost.models.hf import load_tokenizer

    return load_tokenizer(tiny_llama)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """`rlpost serve sandbox` on loopback, as a real server process (with a secret in its environment that no run may
    see): its url, limits and the secret."""
    import os

    port, canary = free_port(), "canary-3f9a1c"
    log = open(tmp_path_factory.mktemp("sandbox") / "server.log", "wb")
    limits = SimpleNamespace(max_output=1 << 20, max_processes=64, max_run_timeout=30, max_concurrency=8)
    proc = subprocess.Popen([sys.executable, "-m", "rlpost.cli", "serve", "sandbox", "--port", str(port),
                             "--max-concurrency", str(limits.max_concurrency),
                             "--max-run-timeout", str(limits.max_run_timeout),
                             "--max-processes", str(limits.max_processes),
                             "--max-output-bytes", str(limits.max_output)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RLPOST_TEST_SECRET": canary})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/v1/ping", timeout=1).json() == "pong":
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the sandbox server did not start:\n{open(log.name).read()}")
        time.sleep(0.1)
    yield SimpleNamespace(url=url, secret=canary, pid=proc.pid, log=log.name, **vars(limits))
    proc.terminate()
    proc.wait(timeout=10)
    log.close()

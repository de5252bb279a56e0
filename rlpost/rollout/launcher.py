"""Start and stop rollout server processes: `python -m sglang.launch_server` on GPU clusters, `rlpost serve engine`
elsewhere. Both take the same flags for what they share, run in their own process group (SGLang forks scheduler
and detokenizer processes that must die with it) and are ready when /health answers 200.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.service_process import ServiceProcess

# A multimodal prompt sent as token ids keeps its ids, each image's one <|image_pad|> expanded to its run, instead of
# being decoded and re-tokenised (which can drift from the trainer's ids); SGLang versions without it ignore it
SGLANG_ENV = {"SGLANG_MM_AVOID_RETOKENIZE": "1"}


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


class ServerProcess(ServiceProcess):
    """One rollout server process and its log; a context manager that always stops what it started."""

    def __init__(self, spec: ServerSpec, log_path: str | Path | None = None, env: dict | None = None):
        if spec.engine == "sglang":
            env = {**SGLANG_ENV, **(env or {})}
        super().__init__(log_path, env, log_prefix="rlpost-server-")
        self.spec = spec

    @property
    def url(self) -> str:
        return self.spec.url

    def command(self) -> list[str]:
        return server_command(self.spec)

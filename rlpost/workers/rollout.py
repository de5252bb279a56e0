"""Rollout engines inside Ray workers: the embedded engine behind its HTTP API, in a training worker (hybrid engine,
colocated placement) or in a worker of its own (split placement). Either way the rollout client reaches it by URL,
as it would an SGLang server."""

from __future__ import annotations

from rlpost.config.schema import RolloutConfig
from rlpost.net import free_port
from rlpost.workers.base import Worker


class EngineHost:
    """An Engine looping on a background thread plus its HTTP server on another."""

    def __init__(self, model_dir: str, cfg: RolloutConfig, context_length: int, seed: int, host: str | None = None):
        """host: where HTTP binds; by default this Ray node's address, which the trainer's client reaches."""
        from rlpost.rollout.engine.engine import Engine
        from rlpost.rollout.engine.server import HTTPThread

        self.engine = Engine(model_dir, dtype=cfg.dtype, max_running=cfg.max_num_seqs, context_length=context_length,
                             prefix_cache_tokens=cfg.prefix_cache_tokens, seed=seed,
                             deterministic=cfg.deterministic_inference).start()
        if host is None:
            import ray

            host = ray.util.get_node_ip_address()
        port = free_port()
        self.http = HTTPThread(self.engine, host, port)
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.http.stop()
        self.engine.shutdown()


class SGLangHost:
    """`python -m sglang.launch_server` on this worker's devices (a bundle of infer_tp GPUs)."""

    def __init__(self, model_dir: str, cfg: RolloutConfig, context_length: int, seed: int, log_dir: str):
        import ray

        from rlpost.rollout.launcher import ServerProcess, ServerSpec

        spec = ServerSpec(model_dir, engine="sglang", host=ray.util.get_node_ip_address(), port=free_port(),
                          dtype=cfg.dtype, tp_size=cfg.infer_tp, mem_fraction_static=cfg.mem_fraction,
                          context_length=context_length, max_running_requests=cfg.max_num_seqs, random_seed=seed,
                          deterministic_inference=cfg.deterministic_inference)
        self.process = ServerProcess(spec, f"{log_dir}/sglang_{spec.port}.log")
        self.process.start()
        self.process.wait_healthy(timeout_s=1800)
        self.url = spec.url

    def stop(self) -> None:
        self.process.stop()


class RolloutWorker(Worker):
    """Split placement: one inference server per bundle; weights arrive over /update_weights_from_distributed."""

    def __init__(self, rank: int, world: int, per_node: int, model_dir: str, cfg: RolloutConfig, context_length: int,
                 seed: int, log_dir: str):
        super().__init__(rank, world, per_node, log_dir)
        if cfg.engine == "sglang":
            self.host = SGLangHost(model_dir, cfg, context_length, seed + rank, log_dir)
        else:
            self.host = EngineHost(model_dir, cfg, context_length, seed + rank)

    def init_distributed(self, address: str, port: int) -> None:
        """Servers do not form a training world; they join the trainer's weight-update group over HTTP."""

    def url(self) -> str:
        return self.host.url

    def shutdown(self) -> None:
        self.host.stop()

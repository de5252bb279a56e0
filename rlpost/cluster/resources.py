"""Ray connection and resource pools: one placement group per node, one bundle per device.

On machines without GPUs a device is a worker process: the local Ray gets as many logical GPUs as the config
names, so placement (and what runs where) is the same as on a GPU cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def connect(address: str | None, devices: int) -> None:
    """Join an existing cluster (address, else RAY_ADDRESS) or start a local one with `devices` logical GPUs."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    gpus = _cuda_devices()
    ray.init(num_cpus=max(os.cpu_count() or 1, devices), num_gpus=gpus or devices, include_dashboard=False,
             runtime_env=env, log_to_driver=True)


def wait_for_nodes(address: str | None, n_nodes: int, timeout_s: float) -> None:
    """Returns once the cluster has `n_nodes` live nodes; a launch script calls it before training starts."""
    import time

    import ray

    ray.init(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=False, logging_level="ERROR")
    try:
        deadline = time.monotonic() + timeout_s
        while (alive := sum(node["Alive"] for node in ray.nodes())) < n_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{alive} of {n_nodes} Ray nodes joined within {timeout_s:g} s")
            time.sleep(1.0)
        print(f"all {n_nodes} Ray nodes joined", flush=True)
    finally:
        ray.shutdown()


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class ResourcePool:
    """`n_nodes` x `per_node` bundles of `gpus_per_bundle` devices and one CPU, one STRICT_PACK placement group per
    node."""

    name: str
    n_nodes: int
    per_node: int
    gpus_per_bundle: int = 1
    groups: list = None

    @property
    def size(self) -> int:
        return self.n_nodes * self.per_node

    def create(self, timeout_s: float = 300.0) -> ResourcePool:
        import ray
        from ray.util.placement_group import placement_group

        bundles = [{"GPU": self.gpus_per_bundle, "CPU": 1} for _ in range(self.per_node)]
        self.groups = [placement_group(bundles, strategy="STRICT_PACK", name=f"rlpost_{self.name}_{node}")
                       for node in range(self.n_nodes)]
        ready, _ = ray.wait([g.ready() for g in self.groups], num_returns=len(self.groups), timeout=timeout_s)
        if len(ready) < len(self.groups):
            raise TimeoutError(
                f"resource pool '{self.name}': {self.n_nodes} node(s) x {self.per_node} devices not available after "
                f"{timeout_s:.0f}s; the cluster has {ray.available_resources()}")
        return self

    def bundles(self) -> list[tuple[object, int]]:
        """(placement group, bundle index) per device, node by node: the order of global ranks."""
        return [(g, i) for g in self.groups for i in range(self.per_node)]

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for g in self.groups or []:
            remove_placement_group(g)
        self.groups = None

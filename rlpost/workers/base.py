"""What every worker process does first: pin its threads, join the group's torch.distributed world."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rlpost.net import free_port
from rlpost.run_log import warnings_to_file


class Worker:
    def __init__(self, rank: int, world: int, per_node: int, run_dir: str | None = None):
        """run_dir: where this process's Python warnings go (rlpost.run_log), instead of the driver's console."""
        self.rank, self.world = rank, world
        if run_dir is not None:
            warnings_to_file(run_dir, f"{type(self).__name__} rank {rank}")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if not torch.cuda.is_available():
            # a "device" is a process here: share the node's cores between its workers
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))

    def rendezvous_address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def init_distributed(self, address: str, port: int) -> None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(0)  # Ray gives each worker one visible device
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=self.rank, world_size=self.world)

    def pid(self) -> int:
        return os.getpid()

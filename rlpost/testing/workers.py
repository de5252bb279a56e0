"""A minimal worker for cluster tests (Ray workers import classes by module, so it cannot live in a test file)."""

import torch
import torch.distributed as dist

from rlpost.workers.base import Worker


class SumWorker(Worker):
    def all_reduce(self, value: int) -> int:
        t = torch.tensor([value])
        dist.all_reduce(t)
        return int(t)

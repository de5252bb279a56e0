"""A minimal worker for cluster tests (Ray workers import classes by module, so it cannot live in a test file)."""

import torch
import torch.distributed as dist

from rlpost.workers.base import Worker


class SumWorker(Worker):
    def all_reduce(self, value: int) -> int:
        t = torch.tensor([value])
        dist.all_reduce(t)
        return int(t)

    def crash_if(self, rank: int) -> int:
        """Dies the way an OOM kill or a segfault would: no exception, no cleanup."""
        if self.rank == rank:
            import os

            os._exit(1)
        return self.rank

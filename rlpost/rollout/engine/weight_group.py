"""The process group a trainer broadcasts new weights through (/init_weights_update_group,
/update_weights_from_distributed): rank 0 is the trainer, which hosts the rendezvous store; servers join at
rank_offset. Built directly on a store and a gloo group so it does not touch the server's default process group.
"""

from __future__ import annotations

from datetime import timedelta
import torch
import torch.distributed as dist

from rlpost.rollout.engine.model import DTYPES
from rlpost.rollout.engine.request import RequestError

def dtype_from_name(name: str) -> torch.dtype:
    key = str(name).removeprefix("torch.")
    if key not in DTYPES:
        raise RequestError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    return DTYPES[key]


def new_group(master_address: str, master_port: int, rank: int, world_size: int, group_name: str,
              timeout_s: float = 300.0):
    """A gloo group of world_size members; rank 0 hosts the store."""
    store = dist.TCPStore(master_address, master_port, world_size, is_master=rank == 0,
                          timeout=timedelta(seconds=timeout_s))
    return dist.ProcessGroupGloo(dist.PrefixStore(group_name, store), rank, world_size,
                                 timedelta(seconds=timeout_s)), store


def broadcast(group, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


class WeightUpdateGroup:
    def __init__(self, master_address: str, master_port: int, rank_offset: int, world_size: int, group_name: str):
        if not 0 < rank_offset < world_size:
            raise RequestError(f"rank_offset {rank_offset} must be in [1, world_size) (rank 0 is the trainer)")
        self.group, self._store = new_group(master_address, master_port, rank_offset, world_size, group_name)

    def receive(self, names: list[str], dtypes: list[str], shapes: list[list[int]]) -> list[tuple[str, torch.Tensor]]:
        """Every announced tensor, in order. Called only after the announcement was checked: a receiver that
        stopped half-way would leave the trainer blocked and later broadcasts paired with the wrong tensors."""
        out = []
        for name, dtype, shape in zip(names, dtypes, shapes):
            tensor = torch.empty(tuple(shape), dtype=dtype_from_name(dtype))
            broadcast(self.group, tensor)
            out.append((name, tensor))
        return out

    def close(self) -> None:
        self.group, self._store = None, None

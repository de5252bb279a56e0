"""The process group a trainer broadcasts new weights through (/init_weights_update_group,
/update_weights_from_distributed): rank 0 is the trainer, which hosts the rendezvous store; servers join at
rank_offset. Built directly on a store so it does not touch either side's default process group.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from rlpost.dtypes import torch_dtype


def backend_for(server_engine: str, device: torch.device) -> str:
    """The group's backend, sent as /init_weights_update_group's `backend`: NCCL between a CUDA trainer and
    SGLang's GPU servers, gloo with a CPU trainer or the embedded engine (which runs on CPUs)."""
    return "nccl" if server_engine == "sglang" and device.type == "cuda" else "gloo"


def new_group(master_address: str, master_port: int, rank: int, world_size: int, group_name: str, backend: str,
              timeout_s: float = 300.0):
    """A group of world_size members (rank 0 hosts the store) and its store, which must outlive it."""
    store = dist.TCPStore(master_address, master_port, world_size, is_master=rank == 0,
                          timeout=timedelta(seconds=timeout_s))
    prefixed = dist.PrefixStore(group_name, store)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(prefixed, rank, world_size), store
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world_size, timedelta(seconds=timeout_s)), store
    raise ValueError(f"weight update backend '{backend}' is not one of nccl, gloo")


def broadcast(group, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


class WeightUpdateGroup:
    """A server's membership: it receives what the trainer (rank 0) broadcasts."""

    def __init__(self, master_address: str, master_port: int, rank_offset: int, world_size: int, group_name: str,
                 backend: str):
        if not 0 < rank_offset < world_size:
            raise ValueError(f"rank_offset {rank_offset} must be in [1, world_size) (rank 0 is the trainer)")
        self.group, self._store = new_group(master_address, master_port, rank_offset, world_size, group_name, backend)

    def receive(self, names: list[str], dtypes: list[str], shapes: list[list[int]]) -> list[tuple[str, torch.Tensor]]:
        """Every announced tensor, in order. Call only after the announcement was checked: a receiver that stopped
        half-way would leave the trainer blocked and later broadcasts paired with the wrong tensors."""
        out = []
        for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
            tensor = torch.empty(tuple(shape), dtype=torch_dtype(dtype))
            broadcast(self.group, tensor)
            out.append((name, tensor))
        return out

    def close(self) -> None:
        self.group, self._store = None, None

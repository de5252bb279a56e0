"""The process group a trainer broadcasts new weights through (/init_weights_update_group,
/update_weights_from_distributed): rank 0 is the trainer, which hosts the rendezvous store; a server's TP ranks join
at rank_offset, rank_offset + 1, ...

Both ends must build the group exactly as SGLang's scheduler does (sglang.srt.utils.init_custom_process_group): a
tcp:// rendezvous, the store prefixed with the group name, then torch's own group constructor, which prefixes it
again ("<group_name>/", then the device type) and has rank 0 publish a sequence number. A group built any other way
waits on store keys the other side never writes and times out. The constructor is torch's private
`_new_process_group_helper` because that is what SGLang calls: sharing it keeps the two layouts equal in whatever
torch version both sides run.
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


def _tcp_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"tcp://{host}:{port}"


def join(master_address: str, master_port: int, rank: int, world_size: int, group_name: str, backend: str,
         timeout_s: float = 300.0):
    """This process's membership of the group (rank 0 hosts the store and must join while the others do). The
    group is registered under group_name in this process, so a name serves one group at a time: `leave` frees it.
    The process's default group, if any, must not be bound to a device (init_process_group's device_id): torch would
    then split this group's communicator from it, which the servers outside it cannot join."""
    from torch.distributed.distributed_c10d import _new_process_group_helper, _world

    if backend not in ("nccl", "gloo"):
        raise ValueError(f"weight update backend '{backend}' is not one of nccl, gloo")
    timeout = timedelta(seconds=timeout_s)
    store, rank, world_size = next(dist.rendezvous(_tcp_url(master_address, master_port), rank, world_size,
                                                   timeout=timeout))
    store.set_timeout(timeout)
    group, _ = _new_process_group_helper(world_size, rank, [], dist.Backend(backend),
                                         dist.PrefixStore(group_name, store), group_name=group_name, timeout=timeout)
    # group ranks are global ranks here, so dist.broadcast(src=0, group=...) addresses the trainer (SGLang does this)
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def leave(group) -> None:
    dist.destroy_process_group(group)


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
        self.group = join(master_address, master_port, rank_offset, world_size, group_name, backend)

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
        leave(self.group)
        self.group = None

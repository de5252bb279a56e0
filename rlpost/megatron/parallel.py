"""Process groups for one training layout. parallel_state is global, so a new layout tears down the old one."""

from __future__ import annotations

import torch

from rlpost.megatron import cpu_compat


def setup_model_parallel(tp: int, pp: int, seed: int) -> None:
    """(Re)initialise megatron's TP/PP/DP groups over the current world and seed its RNG tracker.

    Requires torch.distributed to be initialised (gloo on CPU, NCCL on GPU); every rank must call it in the same
    order. Seeds: the data-parallel stream gets `seed`, each TP rank's stream `seed + 2718 + tp_rank`.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    cpu_compat.enable()
    world = torch.distributed.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"tp * pp = {tp * pp} does not divide the world size {world}")
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    model_parallel_cuda_manual_seed(seed)


def ranks() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    return {
        "tp_rank": ps.get_tensor_model_parallel_rank(), "pp_rank": ps.get_pipeline_model_parallel_rank(),
        "dp_rank": ps.get_data_parallel_rank(), "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(), "dp": ps.get_data_parallel_world_size(),
    }

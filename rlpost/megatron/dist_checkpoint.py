"""Training checkpoints (model, optimizer, scheduler, RNG, caller's extra state) with megatron distributed
checkpointing, and export to a Hugging Face directory.

A checkpoint is written into a hidden sibling directory and renamed once every rank has finished, with a
completion marker inside, so a crash mid-save never leaves something that looks like a good checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from rlpost.atomic import fresh_partial, partial_path, publish
from rlpost.megatron.model import StageModel, stream_hf_weights

COMPLETE = "rlpost_complete.json"
# megatron 0.16's default optimizer format (fully_sharded_model_space) trips its own flattened_range check;
# dp_reshardable saves and loads without communication and reshards across DP (resume keeps TP/PP)
OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "dp_reshardable"}


def is_complete(directory: str | Path) -> bool:
    return (Path(directory) / COMPLETE).is_file()


def _rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _torch_optimizers(optimizer):
    """The torch optimizers inside megatron's (possibly chained) optimizer."""
    return [chained.optimizer for chained in getattr(optimizer, "chained_optimizers", [optimizer])]


def _init_empty_adam_state(optimizer) -> None:
    """A fresh optimizer has no Adam state, and megatron's distributed optimizer reads `step` from it before it
    would fill in dummies (torch AdamW fallback, i.e. without Apex/TE). Create the state torch would create lazily;
    loading overwrites all of it."""
    for inner in _torch_optimizers(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                          exp_avg_sq=torch.zeros_like(p))


def _restore_adam_step(optimizer, loaded_optimizer: dict) -> None:
    """The checkpoint keeps Adam's step count in its param groups; on the torch AdamW path the per-parameter
    states keep the dummy step unless it is copied back (measured: weights and moments restored, step left at 0)."""
    steps = {g["step"] for g in loaded_optimizer["optimizer"]["param_groups"] if "step" in g}
    if len(steps) != 1:
        return
    step = float(steps.pop())
    for inner in _torch_optimizers(optimizer):
        for state in inner.state.values():
            if "step" in state:
                state["step"] = torch.tensor(step)


def _sharded_state(stage: StageModel, optimizer, scheduler, is_loading: bool, extra: dict) -> dict:
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    model = stage.core.sharded_state_dict()
    rank = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank())
    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
             ps.get_data_parallel_world_size())
    return {
        "model": model,
        "optimizer": optimizer.sharded_state_dict(model, is_loading=is_loading, metadata=OPTIMIZER_FORMAT),
        "scheduler": scheduler.state_dict(),
        "rng": ShardedObject("rng_state", _rng_state(), shape, rank, replica_id=0),
        "extra": extra,
    }


def save_checkpoint(stage: StageModel, optimizer, scheduler, directory: str | Path, extra: dict | None = None) -> Path:
    """Every rank calls this. `extra` (JSON-able, same on all ranks) comes back from load_checkpoint."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"checkpoint '{directory}' already exists")
    partial = fresh_partial(directory) if dist.get_rank() == 0 else partial_path(directory)
    dist.barrier()  # every rank writes its shards into the partial directory
    dist_checkpointing.save(_sharded_state(stage, optimizer, scheduler, False, extra or {}), str(partial))
    dist.barrier()
    if dist.get_rank() == 0:
        (partial / COMPLETE).write_text(json.dumps({"extra": extra or {}}))
        publish(partial, directory)
    dist.barrier()
    return directory


def load_checkpoint(stage: StageModel, optimizer, scheduler, directory: str | Path) -> dict:
    """Restore what save_checkpoint wrote, into a stage/optimizer/scheduler built the same way; returns extra."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if not is_complete(directory):
        raise FileNotFoundError(f"'{directory}' is not a complete rlpost checkpoint (no {COMPLETE})")
    _init_empty_adam_state(optimizer)
    loaded = dist_checkpointing.load(_sharded_state(stage, optimizer, scheduler, True, {}), str(directory))
    with torch.no_grad():  # fp32 main params are views of the model's leaf parameters
        stage.core.load_state_dict(loaded["model"])
        optimizer_state = loaded["optimizer"]
        optimizer.load_state_dict(optimizer_state)
        _restore_adam_step(optimizer, optimizer_state)
    scheduler.load_state_dict(loaded["scheduler"])
    _set_rng_state(loaded["rng"])
    return json.loads((directory / COMPLETE).read_text())["extra"]


def export_hf(stage: StageModel, out_dir: str | Path, source_dir: str | Path) -> Path:
    """Write an HF directory: one safetensors file per pipeline stage, an index, and the source's config and
    tokenizer files. Every rank calls this; TP rank 0 of DP replica 0 of each stage writes its file."""
    from megatron.core import parallel_state as ps
    from safetensors.torch import save_file

    out_dir, source_dir = Path(out_dir), Path(source_dir)
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    writer = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    tensors = {name: t.contiguous().cpu() for name, t in stream_hf_weights(stage)}
    filename = f"model-{pp_rank + 1:05d}-of-{pp:05d}.safetensors"
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, out_dir / filename, metadata={"format": "pt"})
    stages = [None] * dist.get_world_size()
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    dist.all_gather_object(stages, (filename, sorted(tensors), size) if writer else None)
    if dist.get_rank() == 0:
        weight_map, total = {}, 0
        for file, names, stage_size in filter(None, stages):
            weight_map.update(dict.fromkeys(names, file))
            total += stage_size
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        for f in source_dir.iterdir():
            if f.is_file() and not f.name.startswith("model") and f.suffix in (".json", ".jinja", ".txt", ".model"):
                shutil.copy(f, out_dir / f.name)
    dist.barrier()
    return out_dir

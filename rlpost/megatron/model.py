"""megatron-core models built from HF directories: build, load HF weights per rank, stream weights back to HF."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from rlpost.models.megatron_config import build_gpt_model, transformer_config, use_transformer_engine
from rlpost.models.safetensors_dir import SafetensorsDir
from rlpost.models.vision import text_config
from rlpost.models.weights import ModelDims, hf_to_megatron_shard, megatron_to_hf, padded_vocab, stage_layers


@dataclass
class StageModel:
    """This rank's pipeline stage of a GPT model, with what conversions need to know about it."""

    module: torch.nn.Module
    hf_config: object
    dims: ModelDims
    tp: int
    pp: int
    tp_rank: int
    pp_rank: int
    value_head: bool = False
    spec: str = "local"  # the layer spec the stage was built with: "te" names its norms differently

    @property
    def core(self) -> torch.nn.Module:
        """The GPTModel itself, also once wrap_ddp has put it inside megatron's DDP."""
        from megatron.core.distributed import DistributedDataParallel

        return self.module.module if isinstance(self.module, DistributedDataParallel) else self.module

    @property
    def vocab_padded(self) -> int:
        return padded_vocab(self.dims.vocab, self.tp)

    @property
    def layer_offset(self) -> int:
        return stage_layers(self.dims.num_layers, self.pp, self.pp_rank).start


class ValueHead(torch.nn.Module):
    """The critic's scalar head in place of the LM head: same call signature and parameter names
    (output_layer.weight / .bias, which megatron's checkpointing expects) as megatron's output layer, replicated over
    TP (every TP rank sees the same hidden states, or its sequence slice under sequence parallelism)."""

    def __init__(self, hidden: int, sequence_parallel: bool, dtype: torch.dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(1, hidden, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.zeros(1, dtype=dtype))
        torch.nn.init.normal_(self.weight, std=1.0 / (hidden + 1) ** 0.5)
        for p in (self.weight, self.bias):
            p.sequence_parallel = sequence_parallel  # tells megatron to all-reduce these grads over TP

    def forward(self, hidden_states, weight=None, runtime_gather_output=None):
        return torch.nn.functional.linear(hidden_states, self.weight, self.bias), None


def build_stage(hf_dir: str | Path, dtype: str = "float32", load_weights: bool = True, value_head: bool = False,
                **config_overrides) -> StageModel:
    """This rank's stage of the model in the current megatron layout (call setup_model_parallel first).

    value_head=True builds the critic: the actor's backbone with a scalar head (seeded by megatron's default RNG,
    so identical on every rank) instead of the LM head; the output is [b, s, 1]."""
    from megatron.core import parallel_state as ps
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(hf_dir)
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    config = transformer_config(hf_config, tp, pp, dtype, **config_overrides)
    if value_head:
        hf_config.tie_word_embeddings = text_config(hf_config).tie_word_embeddings = False  # no LM head to tie
    dims = ModelDims.from_hf_config(hf_config)
    module = build_gpt_model(hf_config, config, pre_process=ps.is_pipeline_first_stage(),
                             post_process=ps.is_pipeline_last_stage())
    if value_head and ps.is_pipeline_last_stage():
        module.output_layer = ValueHead(dims.hidden, config.sequence_parallel, config.params_dtype)
    _to_params_dtype(module, config.params_dtype)
    stage = StageModel(module, hf_config, dims, tp, pp, ps.get_tensor_model_parallel_rank(),
                       ps.get_pipeline_model_parallel_rank(), value_head, "te" if use_transformer_engine() else "local")
    if torch.cuda.is_available():
        module.cuda()
    if load_weights:
        load_hf_weights(stage, hf_dir)
    return stage


def _to_params_dtype(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """The local spec's torch norms ignore params_dtype and stay fp32. One dtype for every parameter, as with TE on
    GPUs; besides, megatron's distributed optimizer misindexes its checkpoint state when a parameter group (the
    no-weight-decay one: norms and biases) mixes fp32 and 16-bit parameters."""
    for param in module.parameters():
        if param.dtype != dtype:
            param.data = param.data.to(dtype)


def load_hf_weights(stage: StageModel, hf_dir: str | Path) -> None:
    """Copy this rank's shard of the HF weights into the stage; reads only the tensors this rank needs."""
    reader = SafetensorsDir(hf_dir)
    shard = hf_to_megatron_shard(reader.get, stage.dims, stage.tp, stage.pp, stage.tp_rank, stage.pp_rank,
                                 stage.vocab_padded, spec=stage.spec, lm_head=not stage.value_head)
    expected = {k for k in stage.core.state_dict()
                if not k.endswith("_extra_state") and not _is_value_head(stage, k)}
    if set(shard) != expected:
        raise RuntimeError(f"converted names differ from the model's: missing {sorted(expected - set(shard))}, "
                           f"unexpected {sorted(set(shard) - expected)}")
    with torch.no_grad():
        params = dict(stage.core.named_parameters())
        for name, tensor in shard.items():
            params[name].copy_(tensor)


def _is_value_head(stage: StageModel, name: str) -> bool:
    return stage.value_head and name.startswith("output_layer.")


def _tp_gather(param: torch.Tensor, group) -> list[torch.Tensor]:
    if getattr(param, "tensor_model_parallel", False) and dist.get_world_size(group) > 1:
        shards = [torch.empty_like(param) for _ in range(dist.get_world_size(group))]
        dist.all_gather(shards, param.detach().contiguous(), group=group)
        return shards
    return [param.detach()]


def stream_hf_weights(stage: StageModel) -> Iterator[tuple[str, torch.Tensor]]:
    """This stage's weights as full HF tensors, one parameter at a time (each gathered across TP, so every TP rank
    of the stage must iterate). A critic's value head has no HF counterpart and is not included."""
    from megatron.core import parallel_state as ps

    group = ps.get_tensor_model_parallel_group()
    for name, param in stage.core.named_parameters():
        if _is_value_head(stage, name):
            continue
        yield from megatron_to_hf(name, _tp_gather(param, group), stage.dims, stage.layer_offset, spec=stage.spec)

"""HF Llama/Qwen2/Qwen3 weights <-> megatron-core GPTModel shards, as pure tensor functions.

One table (per pipeline stage) maps each megatron parameter to the HF tensors it is made of and how it splits over
tensor parallelism, so the forward conversion and its streaming inverse cannot disagree. Layouts that matter:
- linear_qkv: per query group, the group's q heads then its k head then its v head; a TP shard is whole groups.
- linear_fc1 (SwiGLU, partition_stride 2): TP rank r holds [gate_r; up_r], not a contiguous chunk of [gate; up].
- embeddings / output layer: zero rows pad the vocabulary to a multiple of TP; padding never reaches HF.
- with tied embeddings and pp > 1 the last stage keeps its own copy of the embedding as output_layer.weight.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlpost.models.vision import PREFIX as VISION_PREFIX
from rlpost.models.vision import VISION_MODEL_TYPES, VisionDims, config_get, is_vision_language, text_config

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SPECS = ("local", "te")
_NORM_NAMES = {
    "local": ("input_layernorm.weight", "pre_mlp_layernorm.weight"),
    "te": ("self_attention.linear_qkv.layer_norm_weight", "mlp.linear_fc1.layer_norm_weight"),
}


@dataclass(frozen=True)
class ModelDims:
    """The shape facts the converters need, so they run from a config alone (no model, no megatron)."""

    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    qkv_bias: bool
    qk_norm: bool
    vision: VisionDims | None = None  # Qwen2.5-VL's tower, on the first pipeline stage

    @classmethod
    def from_hf_config(cls, config) -> ModelDims:
        vision = VisionDims.from_hf_config(config) if is_vision_language(config) else None
        config = text_config(config)
        get = functools.partial(config_get, config)
        model_type = "qwen2" if vision else get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            supported = ", ".join(SUPPORTED_MODEL_TYPES + VISION_MODEL_TYPES)
            raise ValueError(f"model_type '{model_type}' is not supported; supported: {supported}")
        if get("mlp_bias", False) or (model_type != "qwen2" and get("attention_bias", False)):
            # megatron cannot bias linear_proj or the MLP without biasing both; dropping them would be silent
            raise ValueError(f"{model_type} with attention_bias/mlp_bias (biases on o_proj or the MLP) is not "
                             f"supported")
        heads, hidden = get("num_attention_heads"), get("hidden_size")
        return cls(
            num_layers=get("num_hidden_layers"), hidden=hidden, heads=heads,
            kv_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim") or hidden // heads,
            ffn=get("intermediate_size"), vocab=get("vocab_size"), tied=bool(get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or bool(get("attention_bias", False)), qk_norm=model_type == "qwen3",
            vision=vision,
        )


_HF_SHAPES = {  # name suffix -> shape as a function of the dims
    "q_proj.weight": lambda d: (d.heads * d.head_dim, d.hidden), "q_proj.bias": lambda d: (d.heads * d.head_dim,),
    "k_proj.weight": lambda d: (d.kv_heads * d.head_dim, d.hidden), "k_proj.bias": lambda d: (d.kv_heads * d.head_dim,),
    "v_proj.weight": lambda d: (d.kv_heads * d.head_dim, d.hidden), "v_proj.bias": lambda d: (d.kv_heads * d.head_dim,),
    "o_proj.weight": lambda d: (d.hidden, d.heads * d.head_dim), "gate_proj.weight": lambda d: (d.ffn, d.hidden),
    "up_proj.weight": lambda d: (d.ffn, d.hidden), "down_proj.weight": lambda d: (d.hidden, d.ffn),
    "q_norm.weight": lambda d: (d.head_dim,), "k_norm.weight": lambda d: (d.head_dim,),
    "layernorm.weight": lambda d: (d.hidden,), "model.norm.weight": lambda d: (d.hidden,),
    "embed_tokens.weight": lambda d: (d.vocab, d.hidden), "lm_head.weight": lambda d: (d.vocab, d.hidden),
}


def hf_shard_dim(name: str) -> int | None:
    """The dimension tensor parallelism splits an HF tensor along (None: replicated, e.g. norms and the vision
    tower)."""
    if name.startswith(VISION_PREFIX):
        return None
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return 1
    if name.endswith(("_proj.weight", "_proj.bias", "embed_tokens.weight", "lm_head.weight")):
        return 0
    return None


def hf_shape(name: str, dims: ModelDims) -> tuple[int, ...]:
    """The shape of an HF tensor of this model, from its dims alone (receivers allocate before data arrives)."""
    if name.startswith(VISION_PREFIX) and dims.vision is not None and name in dims.vision.shapes():
        return dims.vision.shapes()[name]
    for suffix, shape in _HF_SHAPES.items():
        if name.endswith(suffix):
            return shape(dims)
    raise ValueError(f"'{name}' is not a tensor of a Llama/Qwen2/Qwen3/Qwen2.5-VL model")


def padded_vocab(vocab: int, tp: int, multiple: int = 128) -> int:
    """Megatron's vocabulary size: every TP rank gets an equal, GEMM-friendly slice of the embedding."""
    step = multiple * tp
    return -(-vocab // step) * step


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """Global indices of a stage's layers; megatron names them 0.. on every stage, so conversions need the offset."""
    if num_layers % pp:
        raise ValueError(f"pp = {pp} does not divide the model's {num_layers} layers")
    n = num_layers // pp
    return range(stage * n, (stage + 1) * n)


def check_tp(dims: ModelDims, tp: int, name: str = "tp") -> None:
    """A tensor-parallel size (training tp, or an inference server's infer_tp) must split heads and FFN evenly."""
    for what, n in (("attention heads", dims.heads), ("key/value heads", dims.kv_heads), ("FFN width", dims.ffn)):
        if n % tp:
            raise ValueError(f"{name} = {tp} does not divide the model's {n} {what}")


@dataclass(frozen=True)
class _Entry:
    megatron: str
    hf: tuple[str, ...]
    kind: str  # copy (replicated) | col (split on dim 1) | vocab | qkv | fc1


def _layer_entries(dims: ModelDims, local: int, layer: int, spec: str) -> list[_Entry]:
    m, h = f"decoder.layers.{local}.", f"model.layers.{layer}."
    attn = h + "self_attn."
    input_norm, mlp_norm = _NORM_NAMES[spec]
    entries = [
        _Entry(m + input_norm, (h + "input_layernorm.weight",), "copy"),
        _Entry(m + "self_attention.linear_qkv.weight", tuple(f"{attn}{p}_proj.weight" for p in "qkv"), "qkv"),
        _Entry(m + "self_attention.linear_proj.weight", (attn + "o_proj.weight",), "col"),
        _Entry(m + mlp_norm, (h + "post_attention_layernorm.weight",), "copy"),
        _Entry(m + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), "fc1"),
        _Entry(m + "mlp.linear_fc2.weight", (h + "mlp.down_proj.weight",), "col"),
    ]
    if dims.qkv_bias:
        qkv_bias = tuple(f"{attn}{p}_proj.bias" for p in "qkv")
        entries.append(_Entry(m + "self_attention.linear_qkv.bias", qkv_bias, "qkv"))
    if dims.qk_norm:
        entries += [_Entry(m + "self_attention.q_layernorm.weight", (attn + "q_norm.weight",), "copy"),
                    _Entry(m + "self_attention.k_layernorm.weight", (attn + "k_norm.weight",), "copy")]
    return entries


def _vision_entries(dims: ModelDims) -> list[_Entry]:
    """The tower keeps HF's names and is replicated over TP."""
    return [_Entry(name, (name,), "copy") for name in dims.vision.shapes()] if dims.vision else []


def _check_spec(spec: str) -> None:
    if spec not in SPECS:
        raise ValueError(f"layer spec '{spec}' is not one of {', '.join(SPECS)}")


def _stage_entries(dims: ModelDims, pp: int, pp_rank: int, spec: str, lm_head: bool = True) -> list[_Entry]:
    """lm_head=False for the critic, whose last stage ends in a value head instead."""
    _check_spec(spec)
    layers = stage_layers(dims.num_layers, pp, pp_rank)
    entries = []
    if pp_rank == 0:
        entries.append(_Entry("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab"))
        entries += _vision_entries(dims)
    for local, layer in enumerate(layers):
        entries += _layer_entries(dims, local, layer, spec)
    if pp_rank == pp - 1:
        entries.append(_Entry("decoder.final_layernorm.weight", ("model.norm.weight",), "copy"))
        if lm_head and not dims.tied:
            entries.append(_Entry("output_layer.weight", ("lm_head.weight",), "vocab"))
        elif lm_head and pp > 1:
            entries.append(_Entry("output_layer.weight", ("model.embed_tokens.weight",), "vocab"))
    return entries


def _vocab_rows(w: torch.Tensor, rows: int, rank: int) -> torch.Tensor:
    """Rank's rows of the zero-padded matrix, without materialising the padded whole (embeddings are the largest
    tensors of a model)."""
    start = min(rank * rows, w.shape[0])
    own = w[start: min(start + rows, w.shape[0])]
    return torch.cat([own, own.new_zeros(rows - own.shape[0], *w.shape[1:])]) if own.shape[0] < rows else own


def _split(entry: _Entry, tensors: list[torch.Tensor], dims: ModelDims, tp: int, rank: int, vocab_padded: int):
    if entry.kind == "copy":
        return tensors[0]
    if entry.kind == "col":
        return tensors[0].chunk(tp, dim=1)[rank]
    if entry.kind == "vocab":
        return _vocab_rows(tensors[0], vocab_padded // tp, rank)
    if entry.kind == "fc1":
        gate, up = tensors
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
    q, k, v = tensors
    groups, rest = dims.kv_heads, q.shape[1:]
    fused = torch.cat([q.reshape(groups, -1, *rest), k.reshape(groups, -1, *rest), v.reshape(groups, -1, *rest)], 1)
    return fused.chunk(tp)[rank].reshape(-1, *rest)


def _merge(entry: _Entry, shards: list[torch.Tensor], dims: ModelDims) -> list[torch.Tensor]:
    if entry.kind == "copy":
        return [shards[0]]
    if entry.kind == "col":
        return [torch.cat(shards, 1)]
    if entry.kind == "vocab":
        return [torch.cat(shards)[: dims.vocab]]
    if entry.kind == "fc1":
        halves = [s.chunk(2) for s in shards]
        return [torch.cat([g for g, _ in halves]), torch.cat([u for _, u in halves])]
    return _unfuse_qkv(torch.cat(shards), dims.kv_heads, dims)


def _unfuse_qkv(fused: torch.Tensor, groups: int, dims: ModelDims) -> list[torch.Tensor]:
    """[groups * (q_per_group + 2) * head_dim, ...] interleaved per query group -> HF q, k, v rows of those groups."""
    rest = fused.shape[1:]
    q_rows = dims.heads // dims.kv_heads * dims.head_dim
    q, k, v = fused.reshape(groups, q_rows + 2 * dims.head_dim, *rest).split([q_rows, dims.head_dim, dims.head_dim], 1)
    return [t.reshape(-1, *rest) for t in (q, k, v)]


def megatron_param_names(dims: ModelDims, pp: int, pp_rank: int, spec: str = "local",
                         lm_head: bool = True) -> list[str]:
    """The names a built stage must have, to catch a converter/model mismatch before copying anything."""
    return [e.megatron for e in _stage_entries(dims, pp, pp_rank, spec, lm_head)]


def hf_names_for_rank(dims: ModelDims, tp: int, pp: int, tp_rank: int, pp_rank: int, spec: str = "local",
                      lm_head: bool = True) -> list[str]:
    """The HF tensors one rank reads: its stage's, nothing else (memory-lean loading of big checkpoints)."""
    check_tp(dims, tp)
    return sorted({name for e in _stage_entries(dims, pp, pp_rank, spec, lm_head) for name in e.hf})


def hf_to_megatron_shard(get_hf: Callable[[str], torch.Tensor], dims: ModelDims, tp: int, pp: int, tp_rank: int,
                         pp_rank: int, vocab_padded: int, spec: str = "local", lm_head: bool = True,
                         ) -> dict[str, torch.Tensor]:
    """This (tp_rank, pp_rank)'s megatron state dict, reading HF tensors one at a time through get_hf."""
    check_tp(dims, tp)
    if vocab_padded < dims.vocab or vocab_padded % tp:
        raise ValueError(f"padded vocabulary {vocab_padded} must be >= {dims.vocab} and divisible by tp = {tp}")
    return {
        e.megatron: _split(e, [get_hf(n) for n in e.hf], dims, tp, tp_rank, vocab_padded).contiguous().clone()
        for e in _stage_entries(dims, pp, pp_rank, spec, lm_head)
    }


_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def _entry_for(name: str, dims: ModelDims, layer_offset: int, spec: str) -> _Entry:
    _check_spec(spec)
    match = _LAYER.fullmatch(name)
    if name.startswith(VISION_PREFIX):
        entries = _vision_entries(dims)
    elif match:
        local = int(match.group(1))
        entries = _layer_entries(dims, local, local + layer_offset, spec)
    else:
        entries = [_Entry("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab"),
                   _Entry("decoder.final_layernorm.weight", ("model.norm.weight",), "copy"),
                   _Entry("output_layer.weight", () if dims.tied else ("lm_head.weight",), "vocab")]
    entry = next((e for e in entries if e.megatron == name), None)
    if entry is None:
        raise ValueError(f"megatron parameter '{name}' has no HF counterpart for this model (spec '{spec}')")
    return entry


def megatron_to_hf(name: str, tp_shards: list[torch.Tensor], dims: ModelDims, layer_offset: int,
                   spec: str = "local") -> list[tuple[str, torch.Tensor]]:
    """One megatron parameter (all its TP shards, or one copy if replicated) -> the HF tensors it holds.

    The tied output layer of the last stage yields nothing: HF ties lm_head to the embedding the first stage yields.
    """
    entry = _entry_for(name, dims, layer_offset, spec)
    if not entry.hf:
        return []
    return list(zip(entry.hf, _merge(entry, tp_shards, dims)))


# the HF dimension a TP shard slices (None: replicated), by entry kind
_HF_SHARD_DIM = {"copy": None, "col": 1, "vocab": 0, "qkv": 0, "fc1": 0}


def megatron_shard_to_hf(name: str, shard: torch.Tensor, dims: ModelDims, tp: int, layer_offset: int,
                         spec: str = "local") -> list[tuple[str, torch.Tensor, int | None]]:
    """One TP shard of a megatron parameter -> (HF name, the slice of that HF tensor it holds, the HF dim it is a
    slice along or None when replicated). Vocabulary rows keep megatron's padding. Concatenating the slices of
    consecutive TP ranks gives the HF tensor's slice for all of them, which is how resharding assembles an
    inference shard without the full tensor."""
    entry = _entry_for(name, dims, layer_offset, spec)
    dim = _HF_SHARD_DIM[entry.kind]
    if not entry.hf:
        return []
    if entry.kind == "fc1":
        return [(n, t, dim) for n, t in zip(entry.hf, shard.chunk(2))]
    if entry.kind == "qkv":
        return [(n, t, dim) for n, t in zip(entry.hf, _unfuse_qkv(shard, dims.kv_heads // tp, dims))]
    return [(entry.hf[0], shard, dim)]

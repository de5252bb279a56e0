"""Inference shards assembled from the training shards a plan routes to them, against slices of the HF tensors."""

import pytest
import torch

from rlpost.models.weights import ModelDims, hf_names_for_rank, hf_to_megatron_shard, padded_vocab, stage_layers
from rlpost.resharding.assemble import VOCAB_NAMES, inference_shard
from rlpost.resharding.plan import make_plan

DIMS = {
    "qwen2_untied": ModelDims(num_layers=8, hidden=32, heads=16, kv_heads=8, head_dim=4, ffn=48, vocab=500,
                              tied=False, qkv_bias=True, qk_norm=False),
    "qwen3_tied": ModelDims(num_layers=8, hidden=32, heads=8, kv_heads=8, head_dim=4, ffn=48, vocab=500,
                            tied=True, qkv_bias=False, qk_norm=True),
}


def hf_state(dims: ModelDims) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q, kv, h = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.hidden
    shapes = {"q_proj.weight": (q, h), "k_proj.weight": (kv, h), "v_proj.weight": (kv, h), "q_proj.bias": (q,),
              "k_proj.bias": (kv,), "v_proj.bias": (kv,), "o_proj.weight": (h, q), "gate_proj.weight": (dims.ffn, h),
              "up_proj.weight": (dims.ffn, h), "down_proj.weight": (h, dims.ffn), "q_norm.weight": (dims.head_dim,),
              "k_norm.weight": (dims.head_dim,), "layernorm.weight": (h,), "norm.weight": (h,),
              "embed_tokens.weight": (dims.vocab, h), "lm_head.weight": (dims.vocab, h)}
    state = {}
    for name in hf_names_for_rank(dims, 1, 1, 0, 0):
        shape = next(v for k, v in shapes.items() if name.endswith(k))
        state[name] = torch.randn(*shape, generator=g)
    return state


def reference_slice(name: str, full: torch.Tensor, dims: ModelDims, tp: int, infer_tp: int, j: int) -> torch.Tensor:
    if name in VOCAB_NAMES:
        rows = padded_vocab(dims.vocab, tp) // infer_tp
        return full[j * rows: min((j + 1) * rows, dims.vocab)]
    if full.dim() == 1 and not name.endswith("_proj.bias"):
        return full  # norms are replicated
    dim = 1 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0
    return full.chunk(infer_tp, dim=dim)[j]


def layouts():
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 4, 8):
            for infer_tp in (1, 2, 4):
                if tp * pp <= 8:
                    yield tp, pp, infer_tp


@pytest.mark.parametrize("model", sorted(DIMS))
def test_every_inference_shard_is_bitwise_the_hf_slice(model):
    dims, checked = DIMS[model], 0
    state = hf_state(dims)
    for tp, pp, infer_tp in layouts():
        vocab_padded = padded_vocab(dims.vocab, tp)
        shards = {(t, s): hf_to_megatron_shard(state.__getitem__, dims, tp, pp, t, s, vocab_padded)
                  for t in range(tp) for s in range(pp)}
        dp = max(1, infer_tp // tp)  # enough data-parallel replicas for the layout to hold an inference replica
        plan = make_plan(tp, pp, dp, infer_tp)
        for j in range(infer_tp):
            got = {}
            for stage in range(pp):
                offset = stage_layers(dims.num_layers, pp, stage).start
                for name in shards[(0, stage)]:
                    parts = {t: shards[(t, stage)][name] for t in plan.source_tp_ranks[j]}
                    for hf_name, tensor in inference_shard(name, parts, dims, tp, infer_tp, j, offset):
                        assert hf_name not in got or torch.equal(got[hf_name], tensor), (hf_name, tp, pp)
                        got[hf_name] = tensor
            assert sorted(got) == sorted(state), (tp, pp, infer_tp)
            for hf_name, tensor in got.items():
                expected = reference_slice(hf_name, state[hf_name], dims, tp, infer_tp, j)
                assert torch.equal(tensor, expected), (hf_name, tp, pp, infer_tp, j)
                checked += 1
    assert checked > 1000


def test_wrong_sources_and_indivisible_heads_are_refused():
    dims = DIMS["qwen2_untied"]
    shard = hf_to_megatron_shard(hf_state(dims).__getitem__, dims, 2, 1, 0, 0, padded_vocab(dims.vocab, 2))
    name = "decoder.layers.0.self_attention.linear_qkv.weight"
    with pytest.raises(ValueError, match=r"needs training TP shards \[0, 1\]"):
        inference_shard(name, {0: shard[name]}, dims, 2, 1, 0, 0)
    odd = ModelDims(num_layers=2, hidden=32, heads=6, kv_heads=6, head_dim=4, ffn=48, vocab=500, tied=False,
                    qkv_bias=False, qk_norm=False)
    with pytest.raises(ValueError, match="infer_tp = 4 does not divide the model's 6 attention heads"):
        inference_shard(name, {0: shard[name]}, odd, 1, 4, 0, 0)

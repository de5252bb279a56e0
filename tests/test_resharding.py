"""Resharding: inference shards from the training shards a plan routes to them, bitwise against HF slices; the
gloo transfer inside micro-DP groups, its bytes against the HybridFlow formula, and its buckets."""

import pytest
import torch

from rlpost.models.weights import ModelDims, hf_to_megatron_shard, padded_vocab, stage_layers
from rlpost.resharding.assemble import VOCAB_NAMES, inference_shard
from rlpost.resharding.plan import make_plan, train_coord
from rlpost.testing.distributed import run_ranks
from rlpost.testing.state_dicts import random_hf_state

DIMS = {
    "qwen2_untied": ModelDims(num_layers=8, hidden=32, heads=16, kv_heads=8, head_dim=4, ffn=48, vocab=500,
                              tied=False, qkv_bias=True, qk_norm=False),
    "qwen3_tied": ModelDims(num_layers=8, hidden=32, heads=8, kv_heads=8, head_dim=4, ffn=48, vocab=500,
                            tied=True, qkv_bias=False, qk_norm=True),
}


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
    state = random_hf_state(dims)
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
    shard = hf_to_megatron_shard(random_hf_state(dims).__getitem__, dims, 2, 1, 0, 0, padded_vocab(dims.vocab, 2))
    name = "decoder.layers.0.self_attention.linear_qkv.weight"
    with pytest.raises(ValueError, match=r"needs training TP shards \[0, 1\]"):
        inference_shard(name, {0: shard[name]}, dims, 2, 1, 0, 0)
    odd = ModelDims(num_layers=2, hidden=32, heads=6, kv_heads=6, head_dim=4, ffn=48, vocab=500, tied=False,
                    qkv_bias=False, qk_norm=False)
    with pytest.raises(ValueError, match="infer_tp = 4 does not divide the model's 6 attention heads"):
        inference_shard(name, {0: shard[name]}, odd, 1, 4, 0, 0)


def _transfer_rank(rank, world, model, tp, pp, dp, infer_tp, bucket_bytes):
    from rlpost.resharding.transfer import TransferStats, inference_buckets, make_groups

    dims = DIMS[model]
    state = random_hf_state(dims)
    c = train_coord(rank, tp, pp, dp)
    params = hf_to_megatron_shard(state.__getitem__, dims, tp, pp, c.tp_rank, c.pp_rank, padded_vocab(dims.vocab, tp))
    plan = make_plan(tp, pp, dp, infer_tp)
    stats = TransferStats()
    received = {}
    for bucket in inference_buckets(plan, rank, params, dims, make_groups(plan), bucket_bytes, torch.float32, stats):
        received.update(bucket)
    own = sum(t.numel() * t.element_size() for n, t in params.items() if not (dims.tied and n == "output_layer.weight"))
    return received, stats, own


@pytest.mark.parametrize("model,tp,pp,dp,infer_tp", [
    ("qwen2_untied", 2, 2, 1, 1), ("qwen2_untied", 2, 2, 1, 2), ("qwen3_tied", 1, 2, 2, 2),
    ("qwen3_tied", 4, 1, 1, 2), ("qwen2_untied", 2, 1, 2, 4),
])
def test_gloo_transfer_delivers_each_rank_its_shard(model, tp, pp, dp, infer_tp):
    dims, world, bucket_bytes = DIMS[model], tp * pp * dp, 8192
    results = run_ranks(_transfer_rank, world, model, tp, pp, dp, infer_tp, bucket_bytes)
    state, plan = random_hf_state(dims), make_plan(tp, pp, dp, infer_tp)
    for rank, (received, stats, own) in enumerate(results):
        _, j = plan.inference_position(rank)
        assert sorted(received) == sorted(state)
        for name, tensor in received.items():
            assert torch.equal(tensor, reference_slice(name, state[name], dims, tp, infer_tp, j)), (rank, name)
        assert stats.bytes_sent == own * (len(plan.group_of(rank)) - 1)
        assert all(size < bucket_bytes + max(t.numel() * 4 for t in received.values()) for size in stats.bucket_sizes)
        assert stats.buckets > 1
    if tp % infer_tp == 0:
        # the HybridFlow formula with M = the model as the training layout stores it (padded vocabulary, norms on
        # every TP rank): what one training replica's ranks send, per rank, is (d_g - 1) / (tp * pp) * M
        replica = [r for r in range(world) if train_coord(r, tp, pp, dp).dp_rank == 0]
        stored = sum(results[r][2] for r in replica)
        sent = sum(results[r][1].bytes_sent for r in replica)
        assert sent / (tp * pp) == plan.sent_fraction() * stored

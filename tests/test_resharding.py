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


def _push_rank(rank, world, base, urls, master_port):
    from transformers import AutoConfig

    from rlpost.models.safetensors_dir import SafetensorsDir
    from rlpost.resharding.transfer import inference_buckets, make_groups
    from rlpost.resharding.transports import BroadcastTransport, HTTPTransport, push_buckets

    dims = ModelDims.from_hf_config(AutoConfig.from_pretrained(base))
    reader = SafetensorsDir(base)
    params = hf_to_megatron_shard(reader.get, dims, world, 1, rank, 0, padded_vocab(dims.vocab, world))
    plan = make_plan(world, 1, 1, 1)
    buckets = inference_buckets(plan, rank, params, dims, make_groups(plan), 16384, torch.float32)
    if rank == 0:
        transport = HTTPTransport(urls[0])
    else:
        transport = BroadcastTransport([urls[1]], "127.0.0.1", master_port)
    return push_buckets(buckets, transport, "v7")


def test_resharded_weights_pushed_over_http_and_broadcast_serve_the_trained_model(tmp_path):
    """Two training TP ranks, two inference replicas: rank 0 pushes through /update_weights_from_tensor, rank 1
    broadcasts through /update_weights_from_distributed; both servers started with other weights."""
    import json
    import urllib.request

    from rlpost.rollout.launcher import ServerProcess, ServerSpec
    from rlpost.testing.checkpoints import make_tiny_checkpoint
    from rlpost.testing.distributed import free_port
    from transformers import AutoModelForCausalLM

    base = make_tiny_checkpoint("qwen2", tmp_path / "base")
    other = make_tiny_checkpoint("qwen2", tmp_path / "other", seed=1)
    prompt = [15, 27, 99, 140, 200, 33]
    expected = AutoModelForCausalLM.from_pretrained(base).generate(
        torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    servers = [ServerProcess(ServerSpec(str(other), port=free_port(), dtype="float32"), tmp_path / f"s{i}.log")
               for i in range(2)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_healthy(timeout_s=120)
        urls = [s.spec.url for s in servers]
        counts = run_ranks(_push_rank, 2, str(base), urls, free_port())
        assert counts[0] == counts[1] > 0
        for url in urls:
            body = json.dumps({"input_ids": prompt, "sampling_params": {"max_new_tokens": 8, "temperature": 0}})
            request = urllib.request.Request(url + "/generate", data=body.encode(), method="POST")
            answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
            assert answer["output_ids"] == expected and answer["meta_info"]["weight_version"] == "v7"
    finally:
        for server in servers:
            server.stop()


def test_in_process_push_into_a_colocated_engine(tmp_path):
    from rlpost.models.safetensors_dir import SafetensorsDir
    from rlpost.resharding.transfer import inference_buckets
    from rlpost.resharding.transports import EngineTransport, push_buckets
    from rlpost.rollout.engine.engine import Engine
    from rlpost.rollout.engine.request import Request, SamplingParams
    from rlpost.testing.checkpoints import make_tiny_checkpoint

    base = make_tiny_checkpoint("llama", tmp_path / "base", tie_word_embeddings=True)
    other = make_tiny_checkpoint("llama", tmp_path / "other", seed=1, tie_word_embeddings=True)
    engine = Engine(other, dtype="float32").start()
    reference = Engine(base, dtype="float32")
    try:
        dims = engine.model.dims
        params = hf_to_megatron_shard(SafetensorsDir(base).get, dims, 1, 1, 0, 0, padded_vocab(dims.vocab, 1))
        buckets = inference_buckets(make_plan(1, 1, 1, 1), 0, params, dims, {}, 4096, torch.float32)
        push_buckets(buckets, EngineTransport(engine), "step-3")
        prompt = [5, 9, 200, 31]
        got = engine.run([Request("a", prompt, SamplingParams(max_new_tokens=6, temperature=0.0))])[0]
        want = reference.run([Request("b", prompt, SamplingParams(max_new_tokens=6, temperature=0.0))])[0]
        assert got.output_ids == want.output_ids and engine.weight_version == "step-3"
    finally:
        engine.shutdown()
        reference.shutdown()


def _full_rank(rank, world, model, tp, pp, dp, infer_tp):
    from rlpost.resharding.transfer import full_buckets, inference_buckets, make_groups

    dims = DIMS[model]
    c = train_coord(rank, tp, pp, dp)
    params = hf_to_megatron_shard(random_hf_state(dims).__getitem__, dims, tp, pp, c.tp_rank, c.pp_rank,
                                  padded_vocab(dims.vocab, tp))
    plan = make_plan(tp, pp, dp, infer_tp)
    groups, replicas = make_groups(plan), make_groups(plan, replicas=True)
    shards = inference_buckets(plan, rank, params, dims, groups, 8192, torch.float32)
    return {name: t for bucket in full_buckets(plan, rank, shards, dims, replicas) for name, t in bucket}


@pytest.mark.parametrize("model,tp,pp,dp,infer_tp", [
    ("qwen2_untied", 2, 2, 1, 2), ("qwen3_tied", 4, 1, 1, 2), ("qwen2_untied", 1, 2, 2, 2),
])
def test_full_tensors_for_sglang_are_gathered_across_the_inference_replica(model, tp, pp, dp, infer_tp):
    state = random_hf_state(DIMS[model])
    for received in run_ranks(_full_rank, tp * pp * dp, model, tp, pp, dp, infer_tp):
        assert sorted(received) == sorted(state)
        assert all(torch.equal(received[name], state[name]) for name in state)

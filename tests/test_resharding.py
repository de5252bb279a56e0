"""Resharding: inference shards from the training shards a plan routes to them, bitwise against HF slices; the
gloo transfer inside micro-DP groups, its bytes against the HybridFlow formula, and its buckets."""

import pytest
import torch

from rlpost.models.weights import ModelDims, hf_to_megatron_shard, padded_vocab, stage_layers
from rlpost.resharding.assemble import VOCAB_NAMES, inference_shard
from rlpost.resharding.plan import LayoutError, make_plan, train_coord
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


def gloo_layouts():
    """Every (tp, pp, dp, infer_tp) with world <= 8 the plan accepts, for TP sizes the heads allow."""
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 4, 8):
            for dp in range(1, 9):
                for infer_tp in (1, 2, 4):
                    if tp * pp * dp <= 8:
                        try:
                            make_plan(tp, pp, dp, infer_tp)
                        except LayoutError:
                            continue
                        yield tp, pp, dp, infer_tp


def _layouts_rank(rank, world, bucket_bytes):
    """Runs every layout on the first tp * pp * dp of 8 ranks (the rest only join group creation) and checks, on
    the rank, both deliveries against the reference: each inference shard and, gathered across the inference
    replica, each full HF tensor."""
    from rlpost.resharding.transfer import TransferStats, full_buckets, inference_buckets, make_groups

    report = []
    for index, (tp, pp, dp, infer_tp) in enumerate(gloo_layouts()):
        dims = DIMS[sorted(DIMS)[index % len(DIMS)]]
        state = random_hf_state(dims)
        plan = make_plan(tp, pp, dp, infer_tp)
        groups, replica_groups = make_groups(plan), make_groups(plan, replicas=True)
        if rank >= plan.world:
            continue
        c = train_coord(rank, tp, pp, dp)
        params = hf_to_megatron_shard(state.__getitem__, dims, tp, pp, c.tp_rank, c.pp_rank,
                                      padded_vocab(dims.vocab, tp))
        _, j = plan.inference_position(rank)
        stats, shards = TransferStats(), {}

        def recorded(buckets, shards=shards):
            for bucket in buckets:
                shards.update(bucket)
                yield bucket

        sent = inference_buckets(plan, rank, params, dims, groups, bucket_bytes, torch.float32, stats)
        full = {name: t for bucket in full_buckets(plan, rank, recorded(sent), dims, replica_groups)
                for name, t in bucket}
        bad = [name for name in state if not torch.equal(shards[name], reference_slice(name, state[name], dims, tp,
                                                                                         infer_tp, j))]
        bad += [f"full {name}" for name in state if not torch.equal(full[name], state[name])]
        if sorted(shards) != sorted(state) or sorted(full) != sorted(state):
            bad.append("names differ")
        largest = max(t.numel() * 4 for t in shards.values())
        own = sum(t.numel() * t.element_size() for n, t in params.items()
                  if not (dims.tied and n == "output_layer.weight"))
        report.append(((tp, pp, dp, infer_tp), rank, bad, stats.bytes_sent, own,
                       stats.buckets > 1 and max(stats.bucket_sizes) < bucket_bytes + largest))
    return report


def test_gloo_transfer_delivers_every_layout_up_to_8_ranks():
    """Issue 5's matrix: every layout with world <= 8 and infer_tp in {1, 2, 4}, both deliveries bitwise, bytes
    against the HybridFlow formula, buckets bounded."""
    results = [entry for report in run_ranks(_layouts_rank, 8, 8192) for entry in report]
    by_layout = {}
    for layout, rank, bad, sent, own, bounded in results:
        assert not bad, (layout, rank, bad[:5])
        assert bounded, (layout, rank)
        by_layout.setdefault(layout, {})[rank] = (sent, own)
    assert sorted(by_layout) == sorted(gloo_layouts()) and len(by_layout) > 40
    for (tp, pp, dp, infer_tp), ranks in by_layout.items():
        plan = make_plan(tp, pp, dp, infer_tp)
        assert sorted(ranks) == list(range(plan.world))
        for rank, (sent, own) in ranks.items():
            assert sent == own * (len(plan.group_of(rank)) - 1), (tp, pp, dp, infer_tp, rank)
        if tp % infer_tp == 0:
            # the HybridFlow formula with M = the model as the training layout stores it (padded vocabulary, norms
            # on every TP rank): one training replica's ranks send, per rank, (d_g - 1) / (tp * pp) * M
            replica = [r for r in ranks if train_coord(r, tp, pp, dp).dp_rank == 0]
            stored = sum(ranks[r][1] for r in replica)
            assert sum(ranks[r][0] for r in replica) / (tp * pp) == plan.sent_fraction() * stored


def _push_rank(rank, world, base, urls, master_port):
    from transformers import AutoConfig

    from rlpost.models.safetensors_dir import SafetensorsDir
    from rlpost.resharding.servers import WeightServers
    from rlpost.resharding.transfer import inference_buckets, make_groups
    from rlpost.resharding.transports import BroadcastTransport, HTTPTransport, push_buckets

    dims = ModelDims.from_hf_config(AutoConfig.from_pretrained(base))
    reader = SafetensorsDir(base)
    params = hf_to_megatron_shard(reader.get, dims, world, 1, rank, 0, padded_vocab(dims.vocab, world))
    plan = make_plan(world, 1, 1, 1)
    buckets = inference_buckets(plan, rank, params, dims, make_groups(plan), 16384, torch.float32)
    if rank == 0:
        transport = HTTPTransport(WeightServers(urls[:1]))
    else:
        transport = BroadcastTransport(WeightServers(urls[1:]), "127.0.0.1", master_port, "gloo")
    return push_buckets(buckets, transport, "v7")


def test_resharded_weights_pushed_over_http_and_broadcast_serve_the_trained_model(tmp_path):
    """Two training TP ranks, two inference replicas: rank 0 pushes through /update_weights_from_tensor, rank 1
    broadcasts through /update_weights_from_distributed; both servers started with other weights."""
    import json
    import urllib.request

    from transformers import AutoModelForCausalLM

    from rlpost.net import free_port
    from rlpost.rollout.launcher import ServerProcess, ServerSpec
    from rlpost.testing.tiny_models import make_tiny_checkpoint

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
    from rlpost.testing.tiny_models import make_tiny_checkpoint

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

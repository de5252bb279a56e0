"""Pure-tensor HF <-> megatron conversion: the fused layouts against HF's own modules, per-rank reads, layouts
and specs beyond what the megatron parity test runs (tp=4, pp=4, TE names), and the error messages."""

import pytest
import torch
import torch.nn.functional as F

from rlpost.models.weights import (
    ModelDims, hf_names_for_rank, hf_to_megatron_shard, megatron_param_names, megatron_to_hf, padded_vocab,
    stage_layers,
)
from rlpost.testing.checkpoints import tiny_config


def hf_state(arch, **overrides):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, 500, **overrides)
    torch.manual_seed(0)
    return config, AutoModelForCausalLM.from_config(config)


def round_trip(config, state, tp, pp, spec="local"):
    dims = ModelDims.from_hf_config(config)
    vocab = padded_vocab(dims.vocab, tp)
    out = {}
    for stage in range(pp):
        shards = [hf_to_megatron_shard(state.__getitem__, dims, tp, pp, r, stage, vocab, spec) for r in range(tp)]
        assert sorted(shards[0]) == sorted(megatron_param_names(dims, pp, stage, spec))
        offset = stage_layers(dims.num_layers, pp, stage).start
        for name in shards[0]:
            for hf_name, tensor in megatron_to_hf(name, [s[name] for s in shards], dims, offset, spec):
                assert hf_name not in out
                out[hf_name] = tensor
    return out


@pytest.mark.parametrize("arch,tp,pp,overrides", [
    ("llama", 4, 1, {"num_key_value_heads": 4}),
    ("qwen2", 1, 4, {"num_hidden_layers": 4}),
    ("qwen3", 2, 2, {"tie_word_embeddings": True}),
    ("llama", 4, 2, {"num_key_value_heads": 4, "tie_word_embeddings": True}),
])
@pytest.mark.parametrize("spec", ["local", "te"])
def test_round_trip_is_bitwise(arch, tp, pp, overrides, spec):
    config, model = hf_state(arch, **overrides)
    state = model.state_dict()
    back = round_trip(config, state, tp, pp, spec)
    expected = {k for k in state if not (config.tie_word_embeddings and k == "lm_head.weight")}
    assert set(back) == expected
    for name in expected:
        assert torch.equal(back[name], state[name]), name


def test_fused_qkv_matches_hf_projections():
    config, model = hf_state("qwen2")  # with QKV bias
    dims = ModelDims.from_hf_config(config)
    attn = model.model.layers[0].self_attn
    x = torch.randn(3, dims.hidden)
    for tp in (1, 2):
        for rank in range(tp):
            shard = hf_to_megatron_shard(model.state_dict().__getitem__, dims, tp, 1, rank, 0, 512)
            out = F.linear(x, shard["decoder.layers.0.self_attention.linear_qkv.weight"],
                           shard["decoder.layers.0.self_attention.linear_qkv.bias"])
            q_per_group = dims.heads // dims.kv_heads
            out = out.view(3, dims.kv_heads // tp, q_per_group + 2, dims.head_dim)
            groups = slice(rank * dims.kv_heads // tp, (rank + 1) * dims.kv_heads // tp)
            q = attn.q_proj(x).view(3, dims.kv_heads, q_per_group, dims.head_dim)[:, groups]
            k = attn.k_proj(x).view(3, dims.kv_heads, 1, dims.head_dim)[:, groups]
            v = attn.v_proj(x).view(3, dims.kv_heads, 1, dims.head_dim)[:, groups]
            torch.testing.assert_close(out, torch.cat([q, k, v], 2))


def test_fc1_shards_are_stride_two():
    config, model = hf_state("llama")
    dims = ModelDims.from_hf_config(config)
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, dims.hidden)
    reference = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    tp = 2
    for rank in range(tp):
        w = hf_to_megatron_shard(model.state_dict().__getitem__, dims, tp, 1, rank, 0, 512)["decoder.layers.0.mlp.linear_fc1.weight"]
        gate, up = F.linear(x, w).chunk(2, -1)
        cols = slice(rank * dims.ffn // tp, (rank + 1) * dims.ffn // tp)
        torch.testing.assert_close(F.silu(gate) * up, reference[:, cols])
    # why the stride matters: a contiguous chunk of [gate; up] gives rank 0 both halves of gate and no up
    fused = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
    gate, up = F.linear(x, fused.chunk(tp)[0]).chunk(2, -1)
    assert not torch.allclose(F.silu(gate) * up, reference[:, : dims.ffn // tp])


def test_each_rank_reads_only_its_stage():
    config, model = hf_state("llama", num_hidden_layers=4)
    dims = ModelDims.from_hf_config(config)
    state = model.state_dict()
    for stage in range(4):
        read = []
        hf_to_megatron_shard(lambda n: read.append(n) or state[n], dims, 2, 4, 1, stage, 512)
        assert sorted(set(read)) == hf_names_for_rank(dims, 2, 4, 1, stage)
        assert all(f"layers.{stage}." in n for n in read if "layers." in n)
        assert ("model.embed_tokens.weight" in read) == (stage == 0)
        assert ("lm_head.weight" in read) == (stage == 3)


def test_vocab_padding():
    assert padded_vocab(500, 1) == 512 and padded_vocab(500, 2) == 512 and padded_vocab(49152, 4) == 49152
    config, model = hf_state("llama")
    dims = ModelDims.from_hf_config(config)
    shard = hf_to_megatron_shard(model.state_dict().__getitem__, dims, 2, 1, 1, 0, 512)
    emb = shard["embedding.word_embeddings.weight"]
    assert emb.shape == (256, dims.hidden) and torch.all(emb[500 - 256:] == 0)


def test_errors_are_clear():
    config, model = hf_state("llama")
    dims = ModelDims.from_hf_config(config)
    with pytest.raises(ValueError, match="pp = 3 does not divide the model's 2 layers"):
        hf_names_for_rank(dims, 1, 3, 0, 0)
    with pytest.raises(ValueError, match="tp = 4 does not divide the model's 2 key/value heads"):
        hf_names_for_rank(dims, 4, 1, 0, 0)
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported; supported: llama, qwen2, qwen3"):
        ModelDims.from_hf_config({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="'decoder.layers.0.mlp.router.weight' has no HF counterpart"):
        megatron_to_hf("decoder.layers.0.mlp.router.weight", [torch.zeros(1)], dims, 0)
    with pytest.raises(ValueError, match="padded vocabulary 255 must be >= 500"):
        hf_to_megatron_shard(model.state_dict().__getitem__, dims, 1, 1, 0, 0, 255)
    with pytest.raises(ValueError, match="layer spec 'fused' is not one of local, te"):
        megatron_param_names(dims, 1, 0, "fused")

"""Pure-tensor HF <-> megatron conversion on real transformers models: bitwise round trips over every layout, the
fused layouts checked against HF's own modules, per-rank reads, and the error messages."""

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

from rlpost.models.weights import (
    ModelDims,
    hf_names_for_rank,
    hf_to_megatron_shard,
    megatron_param_names,
    megatron_to_hf,
    padded_vocab,
    stage_layers,
)
from rlpost.testing.tiny_models import tiny_config

VOCAB = 500  # not a multiple of 8 * tp for any tp used here, so every layout pads


@functools.cache
def hf_model(arch: str, **overrides):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, VOCAB, **overrides)
    torch.manual_seed(0)
    return config, AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def hf_state(arch: str, **overrides):
    config, model = hf_model(arch, **overrides)
    return config, model.state_dict()


def megatron_shape(name: str, dims: ModelDims, tp: int, vocab_padded: int) -> tuple[int, ...]:
    """Per-rank shapes as measured on megatron-core 0.16.1's GPTModel, written out independently of the converter."""
    qkv_rows = (dims.heads + 2 * dims.kv_heads) * dims.head_dim // tp
    shapes = {
        "word_embeddings.weight": (vocab_padded // tp, dims.hidden),
        "output_layer.weight": (vocab_padded // tp, dims.hidden),
        "linear_qkv.weight": (qkv_rows, dims.hidden), "linear_qkv.bias": (qkv_rows,),
        "linear_proj.weight": (dims.hidden, dims.heads * dims.head_dim // tp),
        "linear_fc1.weight": (2 * dims.ffn // tp, dims.hidden), "linear_fc2.weight": (dims.hidden, dims.ffn // tp),
        "q_layernorm.weight": (dims.head_dim,), "k_layernorm.weight": (dims.head_dim,),
    }
    return next((shape for suffix, shape in shapes.items() if name.endswith(suffix)), (dims.hidden,))


def round_trip(config, state, tp: int, pp: int, spec: str = "local") -> dict[str, torch.Tensor]:
    """HF -> every rank's shard -> back to HF, the way a trainer exports: stage by stage, parameter by parameter."""
    dims = ModelDims.from_hf_config(config)
    vocab = padded_vocab(dims.vocab, tp, multiple=8)
    out = {}
    for stage in range(pp):
        shards = [hf_to_megatron_shard(state.__getitem__, dims, tp, pp, r, stage, vocab, spec) for r in range(tp)]
        assert list(shards[0]) == megatron_param_names(dims, pp, stage, spec)
        offset = stage_layers(dims.num_layers, pp, stage).start
        for name in shards[0]:
            assert all(s[name].shape == megatron_shape(name, dims, tp, vocab) for s in shards), name
            for hf_name, tensor in megatron_to_hf(name, [s[name] for s in shards], dims, offset, spec):
                assert hf_name not in out, hf_name
                out[hf_name] = tensor
    return out


LAYOUTS = [(1, 1, {}), (1, 2, {}), (2, 1, {}), (2, 2, {}), (4, 1, {"num_key_value_heads": 4}),
           (4, 2, {"num_key_value_heads": 4}), (1, 4, {"num_hidden_layers": 4})]


@pytest.mark.parametrize("spec", ["local", "te"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("tp,pp,overrides", LAYOUTS, ids=[f"tp{tp}-pp{pp}" for tp, pp, _ in LAYOUTS])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_round_trip_is_bitwise(arch, tp, pp, overrides, tied, spec):
    config, state = hf_state(arch, tie_word_embeddings=tied, **overrides)
    back = round_trip(config, state, tp, pp, spec)
    if tied:  # HF keeps lm_head as the embedding itself; megatron_to_hf leaves the tie to HF
        assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    expected = {k for k in state if not (tied and k == "lm_head.weight")}
    assert set(back) == expected
    for name in expected:
        assert torch.equal(back[name], state[name]), name


def test_te_spec_renames_only_the_fused_norms():
    config, _ = hf_model("qwen3")
    dims = ModelDims.from_hf_config(config)
    local, te = megatron_param_names(dims, 1, 0, "local"), megatron_param_names(dims, 1, 0, "te")
    renamed = (n.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
               .replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight") for n in local)
    assert list(renamed) == te
    assert len(set(local) - set(te)) == 2 * dims.num_layers


def test_replicated_params_take_one_copy():
    """A trainer gathers only TP-partitioned parameters; replicated ones arrive as their single local copy."""
    config, state = hf_state("qwen3", num_hidden_layers=4)
    dims = ModelDims.from_hf_config(config)
    shard = hf_to_megatron_shard(state.__getitem__, dims, 2, 2, 1, 1, 512)
    pairs = [("decoder.layers.1.input_layernorm.weight", "model.layers.3.input_layernorm.weight"),
             ("decoder.layers.0.self_attention.k_layernorm.weight", "model.layers.2.self_attn.k_norm.weight"),
             ("decoder.final_layernorm.weight", "model.norm.weight")]
    for name, hf_name in pairs:
        [(got_name, tensor)] = megatron_to_hf(name, [shard[name]], dims, layer_offset=2)
        assert got_name == hf_name and torch.equal(tensor, state[hf_name])


def test_dims_from_config_object_and_dict():
    config, _ = hf_model("qwen3")
    dims = ModelDims.from_hf_config(config)
    assert dims == ModelDims.from_hf_config(config.to_dict())
    assert (dims.head_dim, dims.qk_norm, dims.qkv_bias, dims.tied) == (16, True, False, False)
    qwen2 = ModelDims.from_hf_config({"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 96,
                                      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                                      "vocab_size": 10, "tie_word_embeddings": True})
    assert (qwen2.head_dim, qwen2.qkv_bias, qwen2.qk_norm, qwen2.tied) == (24, True, False, True)


def test_fused_qkv_matches_hf_projections():
    config, model = hf_model("qwen2")  # with QKV bias
    dims = ModelDims.from_hf_config(config)
    attn = model.model.layers[0].self_attn
    x = torch.randn(3, dims.hidden)
    q_per_group, head_dim = dims.heads // dims.kv_heads, dims.head_dim
    for tp in (1, 2):
        groups_per_rank = dims.kv_heads // tp
        for rank in range(tp):
            shard = hf_to_megatron_shard(model.state_dict().__getitem__, dims, tp, 1, rank, 0, 512)
            out = x @ shard["decoder.layers.0.self_attention.linear_qkv.weight"].T
            out = (out + shard["decoder.layers.0.self_attention.linear_qkv.bias"]).view(3, groups_per_rank, -1)
            q, k, v = out.split([q_per_group * head_dim, head_dim, head_dim], dim=-1)
            groups = slice(rank * groups_per_rank, (rank + 1) * groups_per_rank)
            torch.testing.assert_close(q.flatten(1), attn.q_proj(x).view(3, dims.kv_heads, -1)[:, groups].flatten(1))
            torch.testing.assert_close(k.flatten(1), attn.k_proj(x).view(3, dims.kv_heads, -1)[:, groups].flatten(1))
            torch.testing.assert_close(v.flatten(1), attn.v_proj(x).view(3, dims.kv_heads, -1)[:, groups].flatten(1))


def test_fc1_shards_are_stride_two():
    config, model = hf_model("llama")
    dims = ModelDims.from_hf_config(config)
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, dims.hidden)
    reference = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    tp = 2
    cols = [slice(r * dims.ffn // tp, (r + 1) * dims.ffn // tp) for r in range(tp)]
    for rank in range(tp):
        shard = hf_to_megatron_shard(model.state_dict().__getitem__, dims, tp, 1, rank, 0, 512)
        gate, up = F.linear(x, shard["decoder.layers.0.mlp.linear_fc1.weight"]).chunk(2, -1)
        torch.testing.assert_close(F.silu(gate) * up, reference[:, cols[rank]])
    # why the stride matters: a contiguous chunk of [gate; up] hands rank 0 all of gate and rank 1 all of up
    fused = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
    for rank in range(tp):
        gate, up = F.linear(x, fused.chunk(tp)[rank]).chunk(2, -1)
        assert not torch.allclose(F.silu(gate) * up, reference[:, cols[rank]], atol=1e-3)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_each_rank_reads_only_its_stage(tied):
    config, state = hf_state("llama", num_hidden_layers=4, tie_word_embeddings=tied)
    dims = ModelDims.from_hf_config(config)
    for stage in range(4):
        for rank in range(2):
            read = []
            hf_to_megatron_shard(lambda n, read=read: read.append(n) or state[n], dims, 2, 4, rank, stage, 512)
            assert sorted(read) == hf_names_for_rank(dims, 2, 4, rank, stage)  # each tensor read once, none extra
            assert all(n.startswith(f"model.layers.{stage}.") for n in read if ".layers." in n)
            # megatron gives a tied last stage (pp > 1) its own copy of the embedding as output_layer.weight
            assert ("model.embed_tokens.weight" in read) == (stage == 0 or (tied and stage == 3))
            assert ("lm_head.weight" in read) == (not tied and stage == 3)
            assert ("model.norm.weight" in read) == (stage == 3)


def test_vocab_padding():
    assert [padded_vocab(500, tp, multiple=8) for tp in (1, 2, 4)] == [504, 512, 512]
    assert padded_vocab(500, 1) == 512 and padded_vocab(49152, 4) == 49152 and padded_vocab(49153, 4) == 49664
    config, state = hf_state("llama", num_key_value_heads=4)
    dims = ModelDims.from_hf_config(config)
    lm_head = state["lm_head.weight"]
    shards = [hf_to_megatron_shard(state.__getitem__, dims, 4, 1, r, 0, 768)["output_layer.weight"] for r in range(4)]
    assert all(s.shape == (192, dims.hidden) for s in shards)
    assert torch.equal(shards[2][: 500 - 384], lm_head[384:]) and not shards[2][500 - 384:].any()
    assert not shards[3].any()  # a rank can hold nothing but padding
    assert torch.equal(megatron_to_hf("output_layer.weight", shards, dims, 0)[0][1], lm_head)


def test_errors_are_clear():
    config, state = hf_state("llama")
    dims = ModelDims.from_hf_config(config)
    with pytest.raises(ValueError, match="pp = 3 does not divide the model's 2 layers"):
        hf_names_for_rank(dims, 1, 3, 0, 0)
    with pytest.raises(ValueError, match="tp = 3 does not divide the model's 4 attention heads"):
        hf_to_megatron_shard(state.__getitem__, dims, 3, 1, 0, 0, 504)
    with pytest.raises(ValueError, match="tp = 4 does not divide the model's 2 key/value heads"):
        hf_names_for_rank(dims, 4, 1, 0, 0)
    with pytest.raises(ValueError, match="tp = 2 does not divide the model's 129 FFN width"):
        hf_names_for_rank(dataclasses.replace(dims, ffn=129), 2, 1, 0, 0)
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported; supported: llama, qwen2, qwen3"):
        ModelDims.from_hf_config({"model_type": "gpt2"})
    with pytest.raises(ValueError, match=r"'decoder\.layers\.0\.mlp\.router\.weight' has no HF counterpart"):
        megatron_to_hf("decoder.layers.0.mlp.router.weight", [torch.zeros(1)], dims, 0)
    with pytest.raises(ValueError, match=r"'decoder\.layers\.0\.self_attention\.linear_qkv\.bias' has no HF"):
        megatron_to_hf("decoder.layers.0.self_attention.linear_qkv.bias", [torch.zeros(1)], dims, 0)  # llama
    with pytest.raises(ValueError, match="padded vocabulary 255 must be >= 500"):
        hf_to_megatron_shard(state.__getitem__, dims, 1, 1, 0, 0, 255)
    with pytest.raises(ValueError, match="layer spec 'fused' is not one of local, te"):
        megatron_param_names(dims, 1, 0, "fused")
    with pytest.raises(ValueError, match="layer spec 'fused' is not one of local, te"):
        megatron_to_hf("decoder.final_layernorm.weight", [torch.zeros(1)], dims, 0, spec="fused")


@pytest.mark.parametrize("arch,flag", [("llama", "attention_bias"), ("llama", "mlp_bias"), ("qwen3", "attention_bias")])
def test_output_and_mlp_biases_are_refused_not_dropped(arch, flag):
    with pytest.raises(ValueError, match="attention_bias/mlp_bias .* is not supported"):
        ModelDims.from_hf_config(tiny_config(arch, 512, **{flag: True}))

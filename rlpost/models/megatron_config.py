"""HF config -> megatron-core TransformerConfig, layer spec and GPTModel (Llama, Qwen2, Qwen3)."""

from __future__ import annotations

import importlib.util

import torch

from rlpost.dtypes import torch_dtype
from rlpost.models.rope import rope_settings
from rlpost.models.vision import is_vision_language, mrope_section, text_config
from rlpost.models.weights import ModelDims, padded_vocab


def use_transformer_engine() -> bool:
    """TE cannot even import without CUDA; on GPUs with TE installed its fused spec is used."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def transformer_config(hf_config, tp: int, pp: int, dtype: str = "float32", **overrides):
    from megatron.core.transformer import TransformerConfig

    dims = ModelDims.from_hf_config(hf_config)
    on_gpu = torch.cuda.is_available()
    params_dtype = torch_dtype(dtype)
    vision = is_vision_language(hf_config)
    settings = dict(
        num_layers=dims.num_layers, hidden_size=dims.hidden, ffn_hidden_size=dims.ffn,
        num_attention_heads=dims.heads, num_query_groups=dims.kv_heads, kv_channels=dims.head_dim,
        normalization="RMSNorm", layernorm_epsilon=float(text_config(hf_config).rms_norm_eps), gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, add_qkv_bias=dims.qkv_bias,
        qk_layernorm=dims.qk_norm, hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        # the vision tower's features are spliced into full-sequence embeddings (rlpost.models.megatron_vlm)
        sequence_parallel=on_gpu and tp > 1 and use_transformer_engine() and not vision,
        mrope_section=mrope_section(hf_config) if vision else None,
        params_dtype=params_dtype, pipeline_dtype=params_dtype, bf16=dtype == "bfloat16", fp16=dtype == "float16",
        attention_softmax_in_fp32=True, use_cpu_initialization=not on_gpu,
        # micro-batches differ in length; megatron checks this flag against the MoE dispatcher even without MoE
        variable_seq_lengths=True, moe_token_dispatcher_type="alltoall",
        # fused kernels are CUDA-only; gloo computes wrong results with batched p2p
        bias_dropout_fusion=on_gpu, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False, masked_softmax_fusion=on_gpu, bias_activation_fusion=on_gpu,
        batch_p2p_comm=on_gpu,
    )
    settings.update(overrides)
    return TransformerConfig(**settings)


def layer_spec(dims: ModelDims):
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if use_transformer_engine():
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=dims.qk_norm)
    from rlpost.models.sdpa_attention import SDPAttention

    spec = specs.get_gpt_layer_local_spec(qk_layernorm=dims.qk_norm, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def build_gpt_model(hf_config, config, pre_process: bool, post_process: bool):
    """One pipeline stage of the GPTModel (Qwen2.5-VL: with mRoPE and, on the first stage, the vision tower); the
    vocabulary is padded so it splits evenly over TP."""
    from megatron.core.models.gpt import GPTModel

    dims = ModelDims.from_hf_config(hf_config)
    text = text_config(hf_config)
    rope = rope_settings(text)
    model_class, extra = GPTModel, {}
    if dims.vision is not None:
        from rlpost.models.megatron_vlm import VisionGPTModel

        model_class, extra = VisionGPTModel, {"hf_config": hf_config}
    return model_class(
        config=config, transformer_layer_spec=layer_spec(dims),
        vocab_size=padded_vocab(dims.vocab, config.tensor_model_parallel_size),
        max_sequence_length=int(text.max_position_embeddings), pre_process=pre_process,
        post_process=post_process, parallel_output=True, share_embeddings_and_output_weights=dims.tied,
        position_embedding_type="mrope" if dims.vision else "rope", rotary_base=rope.base, rope_scaling=rope.scaling,
        rope_scaling_factor=rope.scaling_factor, seq_len_interpolation_factor=rope.interpolation_factor, **extra,
    )

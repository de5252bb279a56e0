"""Incremental multi-turn tokenisation with real Qwen2.5 / Qwen3 tokenizers and their tool-calling templates."""

import pytest

from rlpost.models.tokenizers import packaged_tokenizer
from rlpost.rollout.chat import ChatTokens

ANSWER = {"type": "object", "properties": {"answer": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "calc_gsm8k_reward", "description": "check an answer",
                                            "parameters": ANSWER}}]
PROMPT = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": "What is 6 * 7?"}]
REPLY = 'I will check.\n<tool_call>\n{"name": "calc_gsm8k_reward", "arguments": {"answer": "42"}}\n</tool_call>'


@pytest.fixture(scope="module", params=["qwen2.5", "qwen3"])
def tokenizer(request):
    return packaged_tokenizer(request.param)


def sampled(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_tool_round_trip_matches_full_retokenisation(tokenizer):
    chat = ChatTokens(tokenizer, PROMPT, tools=TOOLS)
    prompt = tokenizer.apply_chat_template(PROMPT, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert chat.ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generated = sampled(tokenizer, REPLY)
    chat.add_generated(generated, REPLY)
    chat.add_messages([{"role": "tool", "content": "Correct."}])
    assert tokenizer.decode(chat.ids[-8:]).endswith("<|im_start|>assistant\n")
    # Qwen3 writes an (empty) think block at the start of its final turn; its template re-renders it that way
    final = ("<think>\n\n</think>\n\n" if "<think>" in tokenizer.chat_template else "") + "#### 42"
    second = sampled(tokenizer, final)
    chat.add_generated(second, final)
    assert chat.check() is None
    # loss mask: exactly the two generated spans
    ones = [i for i, m in enumerate(chat.mask) if m]
    first_start = chat.prompt_length
    second_start = len(chat.ids) - len(second)
    assert ones == list(range(first_start, first_start + len(generated))) + list(range(second_start, len(chat.ids)))
    assert "<tool_response>\nCorrect.\n</tool_response>" in tokenizer.decode(chat.ids)


def test_sampled_ids_are_kept_and_the_check_reports_where_retokenisation_differs(tokenizer):
    chat = ChatTokens(tokenizer, PROMPT, tools=TOOLS)
    text = "forty-two"
    odd = [t for ch in text for t in tokenizer(ch, add_special_tokens=False)["input_ids"]] + [tokenizer.eos_token_id]
    assert odd[:-1] != tokenizer(text, add_special_tokens=False)["input_ids"]  # a valid but non-canonical spelling
    chat.add_generated(odd, text)
    assert chat.ids[chat.prompt_length:] == odd
    mismatch = chat.check()
    assert mismatch is not None and mismatch.position >= chat.prompt_length
    assert "first difference at token" in str(mismatch)


def test_unfinished_turn_is_closed_without_training_on_the_eos(tokenizer):
    chat = ChatTokens(tokenizer, PROMPT)
    cut = tokenizer("The answer is", add_special_tokens=False)["input_ids"]
    chat.add_generated(cut)
    assert chat.ids[-1] == tokenizer.eos_token_id and chat.mask[-1] == 0 and chat.mask[-2] == 1
    chat.add_messages([{"role": "user", "content": "Go on."}])
    assert chat.check() is None

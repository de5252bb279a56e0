"""A multi-turn conversation as token ids, built incrementally the way the policy saw it.

Generated tokens are kept exactly as sampled (loss mask 1): re-tokenising their text can give different ids, and
training on ids the policy did not produce biases the log-probs. Appended turns (tool results, user replies) are the
chat template's delta (mask 0). The delta is taken from a fixed base conversation, cut right after the assistant's
end-of-turn token, so it does not depend on what the assistant wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

_BASE = [{"role": "user", "content": "base"}, {"role": "assistant", "content": "base"}]


@dataclass
class Mismatch:
    position: int
    incremental: list[int]  # a few ids from the position on
    retokenized: list[int]

    def __str__(self) -> str:
        return f"first difference at token {self.position}: incremental {self.incremental} vs full {self.retokenized}"


class ChatTokens:
    def __init__(self, tokenizer, messages: list[dict], tools: list[dict] | None = None):
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no eos token to end assistant turns with")
        self.tokenizer, self.tools = tokenizer, tools
        self.messages = [dict(m) for m in messages]
        self.ids = self._encode(self._render(self.messages, generation_prompt=True))
        self.mask = [0] * len(self.ids)
        self.prompt_length = len(self.ids)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.tools, add_generation_prompt=generation_prompt,
                                                  tokenize=False)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def add_generated(self, token_ids: list[int], text: str | None = None) -> None:
        """The policy's tokens, as sampled. A turn that did not end with eos (cut by a length or stop limit) is
        closed with eos, which the policy did not generate (mask 0)."""
        self.ids += list(token_ids)
        self.mask += [1] * len(token_ids)
        if not token_ids or token_ids[-1] != self.tokenizer.eos_token_id:
            self.ids.append(self.tokenizer.eos_token_id)
            self.mask.append(0)
        content = text if text is not None else self.tokenizer.decode(token_ids, skip_special_tokens=True)
        self.messages.append({"role": "assistant", "content": content})

    def template_delta(self, new_messages: list[dict]) -> str:
        """What the template writes after an assistant's end token for these messages, up to the next
        assistant generation prompt."""
        eos = self.tokenizer.eos_token
        turns = self._render(_BASE, generation_prompt=False).count(eos)
        full = self._render(_BASE + new_messages, generation_prompt=True)
        # templates may re-render earlier assistant turns (Qwen3 drops empty think blocks once a turn is not the
        # last), so cut after the base's end tokens rather than after the base's text
        cut = -1
        for _ in range(turns):
            cut = full.find(eos, cut + 1)
            if cut < 0:
                raise ValueError("the chat template does not end each turn with the eos token; incremental "
                                 "tokenisation cannot be used with it")
        return full[cut + len(eos):]

    def delta_ids(self, new_messages: list[dict]) -> list[int]:
        return self._encode(self.template_delta(new_messages))

    def add_messages(self, new_messages: list[dict], delta: list[int] | None = None) -> None:
        """Tool results / user turns after an assistant turn, then the next generation prompt (all mask 0);
        `delta` is their delta_ids when already computed."""
        delta = self.delta_ids(new_messages) if delta is None else delta
        self.ids += delta
        self.mask += [0] * len(delta)
        self.messages += [dict(m) for m in new_messages]

    def check(self, context: int = 4) -> Mismatch | None:
        """Compare with a full re-tokenisation of the conversation's text; None when they agree."""
        generation_prompt = self.messages[-1]["role"] != "assistant"
        text = self._render(self.messages, generation_prompt=generation_prompt)
        full = self._encode(text)
        if not generation_prompt:  # the template adds a newline after the last end token; the ids stop at eos
            full = full[: len(self.ids)]
        for i, (a, b) in enumerate(zip(self.ids, full)):
            if a != b:
                return Mismatch(i, self.ids[i : i + context], full[i : i + context])
        if len(self.ids) != len(full):
            n = min(len(self.ids), len(full))
            return Mismatch(n, self.ids[n : n + context], full[n : n + context])
        return None


def renders_tools(tokenizer, tools: list[dict]) -> bool:
    """Whether the chat template writes tool schemas into the prompt (Qwen2.5-VL's, for one, does not)."""
    probe = [{"role": "user", "content": "probe"}]
    return (tokenizer.apply_chat_template(probe, tools=tools, tokenize=False)
            != tokenizer.apply_chat_template(probe, tokenize=False))

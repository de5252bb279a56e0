"""Generation requests as the engine sees them: SGLang's sampling parameters (same names, same defaults), checked
on arrival so a bad request is refused with a message instead of failing inside the batch."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from rlpost.registry import did_you_mean


class RequestError(ValueError):
    """A request the engine refuses; the server answers it with HTTP 400."""


@dataclass
class SamplingParams:
    max_new_tokens: int | None = 128  # None: up to the context length
    min_new_tokens: int = 0
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    sampling_seed: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SamplingParams:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise RequestError(f"sampling_params has unknown field '{unknown[0]}'{did_you_mean(unknown[0], known)}")
        if isinstance(data.get("stop"), str):
            data["stop"] = [data["stop"]]
        if isinstance(data.get("stop_token_ids"), int):
            data["stop_token_ids"] = [data["stop_token_ids"]]
        params = cls(**{k: v for k, v in data.items() if v is not None or k == "max_new_tokens"})
        params.check()
        return params

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise RequestError(f"sampling_params.{message}")

        for name in ("min_new_tokens", "top_k", "n") + (("max_new_tokens",) if self.max_new_tokens is not None else ()):
            need(isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool),
                 f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} must be a number, got "
                                                                                  f"{value!r}")
            need(math.isfinite(value), f"{name} must be finite, got {value}")  # JSON's Infinity/NaN: NaN log-probs
        need(self.max_new_tokens is None or self.max_new_tokens >= 0,
             f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        need(0 <= self.min_new_tokens <= (self.max_new_tokens if self.max_new_tokens is not None else 1 << 62),
             f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        need(self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}")
        need(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        need(self.top_k == -1 or self.top_k >= 1, f"top_k must be -1 (disabled) or >= 1, got {self.top_k}")
        need(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        need(-2.0 <= self.frequency_penalty <= 2.0,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        need(-2.0 <= self.presence_penalty <= 2.0, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        need(0.0 < self.repetition_penalty <= 2.0,  # SGLang admits 0, which divides the logits by zero
             f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        need(self.n >= 1, f"n must be >= 1, got {self.n}")
        need(self.stop is None or all(isinstance(s, str) and s for s in self.stop),
             "stop must be a string or a list of non-empty strings")
        need(self.stop_token_ids is None or all(isinstance(t, int) for t in self.stop_token_ids),
             "stop_token_ids must be a list of integers")
        need(self.sampling_seed is None or isinstance(self.sampling_seed, int), "sampling_seed must be an integer")


@dataclass(eq=False)
class Request:
    """One sequence to generate; n > 1 arrives as n of these sharing a prompt."""

    rid: str
    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    on_update: Callable[[Request], None] | None = None  # called from the engine thread after each new token
    stream: bool = False
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_logprobs: list[float | None] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[float, int]] | None] = field(default_factory=list)
    finish_reason: dict | None = None
    cached_tokens: int = 0
    created: float = field(default_factory=time.time)
    finished_at: float | None = None
    seed: int | None = None  # None: the engine's shared generator
    weight_version: str = "default"
    images: list = field(default_factory=list)  # ImageInputs (rlpost.rollout.engine.images), in prompt order
    rope_positions: torch.Tensor | None = None  # mRoPE positions [3, len(input_ids)] when the prompt has images
    image_token_id: int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def length(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def kv_length(self) -> int:
        """How many of its tokens have keys/values in the cache: all but the newest sampled one."""
        return self.length - 1 if self.output_ids else self.length

    def cache_keys(self) -> list[int]:
        """input + output ids with each image's tokens replaced by its content key: what identifies the keys and
        values of a prefix (the pad tokens alone are the same for every image)."""
        keys = self.input_ids + self.output_ids
        for (start, length), image in zip(self.image_spans(), self.images):
            keys[start:start + length] = [image.key] * length
        return keys

    def image_spans(self) -> list[tuple[int, int]]:
        """(start, length) of each image's run of tokens in input_ids."""
        spans, i = [], 0
        for image in self.images:
            while self.input_ids[i] != self.image_token_id:
                i += 1
            spans.append((i, image.tokens))
            i += image.tokens
        return spans

    def rope_range(self, start: int, end: int) -> torch.Tensor:
        """mRoPE positions [3, end - start] of tokens start..end-1 of input + output (output tokens are text, one
        position after another from the prompt's last)."""
        n_in = len(self.input_ids)
        prompt = self.rope_positions if self.rope_positions is not None else torch.arange(n_in).expand(3, -1)
        after = torch.arange(max(start, n_in), max(end, n_in)) + self.rope_delta
        return torch.cat([prompt[:, start:min(end, n_in)], after.expand(3, -1)], dim=1)

    @functools.cached_property
    def rope_delta(self) -> int:
        """How far a text token's position is from its slot after the prompt's images (0 without images); read
        every decode step, computed once."""
        if self.rope_positions is None:
            return 0
        return int(self.rope_positions.max()) + 1 - len(self.input_ids)

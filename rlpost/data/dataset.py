"""Prompt datasets: rows read from files, validated, rendered through the chat template and length-filtered."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlpost.data.images import PromptVision, check_placeholders, decode, image_bytes, to_content_parts
from rlpost.data.io import read_rows
from rlpost.data.schema import RowError, validate_row
from rlpost.models.image_inputs import expand_image_pads

log = logging.getLogger(__name__)


@dataclass
class PromptSample:
    uid: str  # "file:row", stable across runs; every sample generated from this prompt shares it
    data_source: str
    messages: list[dict]  # with a vision-language model, image placeholders are content parts
    ground_truth: Any
    prompt_ids: list[int]
    ability: str = ""
    extra_info: dict = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list)  # encoded, in prompt order; prompt_ids hold their image runs
    agent_name: str | None = None  # verl's: the agent loop the row asks for

    @property
    def tools_kwargs(self) -> dict:
        return self.extra_info.get("tools_kwargs", {})

    @property
    def interaction_kwargs(self) -> dict:
        return self.extra_info.get("interaction_kwargs", {})


def truncate(ids: list[int], limit: int, side: str) -> list[int]:
    """verl's truncation: 'left' cuts the start (keeps the last tokens), 'right' the end, 'middle' the middle."""
    if side == "left":
        return ids[-limit:]
    if side == "right":
        return ids[:limit]
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head):]


class RLDataset:
    """All rows of the given files in memory (prompt datasets are small next to the model).

    Prompts longer than max_prompt_length tokens are dropped when filter_overlong is set (the count is logged
    and kept in n_filtered); otherwise truncation decides: 'error' names the row, 'left'/'right'/'middle' cut
    tokens there.
    """

    @classmethod
    def from_config(cls, files: Sequence[str | Path], tokenizer, data, tools: list[dict] | None = None,
                    vision: PromptVision | None = None) -> RLDataset:
        """With the data section's settings (rlpost.config.schema.DataConfig): how training and evaluation read
        prompts alike."""
        return cls(files, tokenizer, data.max_prompt_length, prompt_key=data.prompt_key, image_key=data.image_key,
                   filter_overlong=data.filter_overlong_prompts, truncation=data.truncation, tools=tools,
                   vision=vision)

    def __init__(
        self,
        files: Sequence[str | Path],
        tokenizer,
        max_prompt_length: int,
        *,
        prompt_key: str = "prompt",
        image_key: str = "images",
        filter_overlong: bool = True,
        truncation: str = "error",
        tools: list[dict] | None = None,
        vision: PromptVision | None = None,
    ):
        if not files:
            raise ValueError("no data files given")
        self.samples: list[PromptSample] = []
        self.n_filtered = 0
        self.vision = vision
        for path in files:
            rows = [validate_row(r, str(path), i, prompt_key, image_key) for i, r in enumerate(read_rows(path))]
            images, image_tokens = [], []  # per row: encoded images, image tokens of each
            for i, r in enumerate(rows):
                check_placeholders(r["prompt"], len(r["images"]), str(path), i, prompt_key, image_key)
                fields = [f"{image_key}[{k}]" for k in range(len(r["images"]))]
                images.append([image_bytes(e, str(path), i, f, Path(path).parent) for e, f in zip(r["images"], fields)])
                decoded = [decode(data, str(path), i, f) for data, f in zip(images[-1], fields)]
                image_tokens.append(vision.tokens_per_image(decoded) if vision and decoded else [])
            first = next((i for i, r in enumerate(rows) if r["images"]), None)
            if first is not None and vision is None:  # training on the text alone would drop them without a word
                raise RowError(str(path), first, image_key, f"holds {len(rows[first]['images'])} image(s), but the "
                               f"model is text-only, so the images would be dropped without a word; use a "
                               f"vision-language model (Qwen2.5-VL) or text-only rows")
            # a vision-language model's chat template takes images as content parts; the agent loop renders these
            messages = [to_content_parts(r["prompt"], str(path), i, prompt_key) if vision else r["prompt"]
                        for i, r in enumerate(rows)]
            texts = [tokenizer.apply_chat_template(m, tools=tools, add_generation_prompt=True, tokenize=False)
                     for m in messages]
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
            if vision:
                ids = [expand_image_pads(row_ids, tokens, vision.image_token_id) if tokens else row_ids
                       for row_ids, tokens in zip(ids, image_tokens)]
            kept = 0
            for i, (row, prompt_ids) in enumerate(zip(rows, ids)):
                if len(prompt_ids) > max_prompt_length:
                    if filter_overlong:
                        self.n_filtered += 1
                        continue
                    if truncation == "error" or images[i]:  # a cut image run would not match its image
                        counted = " (image tokens included; a prompt with images is not cut)" if images[i] else ""
                        raise RowError(str(path), i, prompt_key, f"renders to {len(prompt_ids)} tokens{counted}, "
                                       f"more than data.max_prompt_length = {max_prompt_length}")
                    prompt_ids = truncate(prompt_ids, max_prompt_length, truncation)
                self.samples.append(PromptSample(
                    uid=f"{path}:{i}", data_source=row["data_source"], messages=messages[i],
                    ground_truth=row["reward_model"]["ground_truth"], prompt_ids=list(prompt_ids),
                    ability=row["ability"], extra_info=row["extra_info"], images=images[i],
                    agent_name=row["agent_name"],
                ))
                kept += 1
            if len(rows) > kept:
                log.warning("%s: filtered %d of %d prompts longer than %d tokens", path, len(rows) - kept, len(rows),
                            max_prompt_length)
        if not self.samples:
            raise ValueError(f"no prompts left in {', '.join(map(str, files))}: all {self.n_filtered} are longer "
                             f"than data.max_prompt_length = {max_prompt_length}")

    def check_agent_loop(self, multi_turn: bool) -> None:
        """verl picks a row's agent loop by its agent_name; rlpost runs one loop for the whole run, so a row asking for
        the other one fails here, naming it, instead of running in a loop it did not ask for."""
        want = "tool_agent" if multi_turn else "single_turn_agent"
        other = next((s for s in self.samples if s.agent_name not in (None, want)), None)
        if other is not None:
            source, _, row = other.uid.rpartition(":")
            raise RowError(source, int(row), "agent_name", f"asks for {other.agent_name!r}, but this run's rollouts "
                           f"are {want} (rollout.multi_turn.enable={str(multi_turn).lower()}); set "
                           f"rollout.multi_turn.enable={str(not multi_turn).lower()}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> PromptSample:
        return self.samples[i]

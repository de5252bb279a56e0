"""Multi-turn rollout: one trajectory per sample, a state machine run concurrently across samples with asyncio.

    generate -> tool calls?  -> run them (in parallel, each with a timeout) -> tool turn -> generate ...
             -> interaction? -> the simulated user's reply (or its verdict: done)  -> user turn -> generate ...
             -> otherwise done

The conversation is kept as token ids (rlpost.rollout.chat.ChatTokens): the policy's tokens exactly as sampled
(loss mask 1, with their rollout log-probs), tool and user turns as the chat template's delta (mask 0).
data.max_response_length bounds everything after the prompt, all turns together; a turn that would not fit ends
the trajectory. Tools live for the whole trajectory: `create` with the sample's tools_kwargs[name].create_kwargs,
`execute` per call with execute_kwargs, `calc_reward` and `release` at the end (calc_reward_kwargs,
release_kwargs); an interaction is chosen by interaction_kwargs.name.

Images (a vision-language model): the prompt's and those tools return (ToolResponse.image) are content parts of
their messages, so the conversation's ids hold one <|image_pad|> per image, the form the servers expand with
`image_data`. The finished sample has each image's full run of pads and all its images' model inputs, in order;
image tokens count against the response budget. A turn in which the policy wrote <|image_pad|> itself ends the
trajectory: the next request would hold more pads than images.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlpost.batch import Batch
from rlpost.data.images import PromptVision, data_uri, escape_vision_tokens, open_image, tool_image
from rlpost.registry import did_you_mean
from rlpost.rollout.chat import ChatTokens
from rlpost.rollout.client import SGLangClient
from rlpost.rollout.generate import Sample, parse_answer, sample_seed
from rlpost.rollout.tool_parser import parse_tool_calls
from rlpost.tools import openai_schemas
from rlpost.tools.base import as_response, create_instance


@dataclass(kw_only=True)
class AgentSettings:
    """rollout.multi_turn, plus the response budget (data.max_response_length)."""

    max_response_tokens: int
    max_assistant_turns: int | None = None
    max_user_turns: int | None = None  # tool turns and interaction turns both count
    max_parallel_calls: int = 1
    max_tool_response_length: int = 256  # characters of one tool's answer
    tool_response_truncate_side: str = "middle"  # left keeps the start, right the end, middle both ends (verl's)
    tool_timeout_s: float = 30.0
    tool_call_format: str = "hermes"  # rlpost.rollout.tool_parser.FORMATS
    sanity_check: bool = False  # compare the ids with a full re-tokenisation at the end (slow; on in tests)


def truncate_tool_text(text: str, limit: int, side: str) -> str:
    if len(text) <= limit:
        return text
    if side == "left":
        return text[:limit] + "...(truncated)"
    if side == "right":
        return "(truncated)..." + text[-limit:]
    return text[: limit // 2] + "...(truncated)..." + text[len(text) - limit // 2 :]


class Trajectory:
    """One sample's conversation with its tools and interaction."""

    def __init__(self, client: SGLangClient, tokenizer, messages: list[dict], *, tools: dict[str, Any],
                 interaction, fields: dict, settings: AgentSettings, sampling: dict,
                 vision: PromptVision | None = None):
        self.client, self.tokenizer, self.tools, self.interaction = client, tokenizer, tools, interaction
        self.fields, self.settings, self.sampling = fields, settings, sampling
        self.chat = ChatTokens(tokenizer, messages, tools=openai_schemas(tools))
        self.log_probs = [0.0] * len(self.chat.ids)
        self.tools_kwargs = fields.get("tools_kwargs") or {}
        self.interaction_kwargs = dict(fields.get("interaction_kwargs") or {})
        self.assistant_turns = self.user_turns = 0
        self.tool_rewards: list[float] = []
        self.turn_scores: list[float] = []
        self.tool_final_rewards: dict[str, float] = {}
        self.interaction_score: float | None = None
        self.tool_calls = 0
        self.finish_reason = "stop"
        self.id = str(uuid.uuid4())
        self.vision = vision
        self.image_data = list(fields.get("image_data") or [])  # every image so far, as the servers take them
        self.tool_images: list[bytes] = []
        self.extra_image_tokens = 0  # tool images' tokens beyond the one pad each that chat.ids holds

    @property
    def response_tokens(self) -> int:
        return len(self.chat.ids) - self.chat.prompt_length + self.extra_image_tokens

    def _kwargs(self, tool: str, stage: str) -> dict:
        return dict((self.tools_kwargs.get(tool) or {}).get(f"{stage}_kwargs") or {})

    async def run(self) -> Sample:
        instances, started = {}, False
        try:
            for name, tool in self.tools.items():
                instances[name] = await create_instance(tool, f"{self.id}-{name}", self._kwargs(name, "create"))
            if self.interaction is not None:
                await self.interaction.start_interaction(self.id, **self.interaction_kwargs)
                started = True
            await self._loop(instances)
            for name, tool in self.tools.items():
                self.tool_final_rewards[name] = float(
                    await tool.calc_reward(instances[name], **self._kwargs(name, "calc_reward")))
            if self.interaction is not None:
                self.interaction_score = float(await self.interaction.calculate_score(self.id))
        except BaseException:
            await self._clean_up(instances, started)  # its own failures must not hide this one
            raise
        failures = await self._clean_up(instances, started)
        if failures:
            raise failures[0]
        return self._sample()

    async def _clean_up(self, instances: dict[str, str], started: bool) -> list[BaseException]:
        """Releases what was created, each on its own, so one failing release does not leak the others."""
        steps = [self.tools[name].release(instance, **self._kwargs(name, "release"))
                 for name, instance in instances.items()]
        if started:
            steps.append(self.interaction.finalize_interaction(self.id))
        return [r for r in await asyncio.gather(*steps, return_exceptions=True) if isinstance(r, BaseException)]

    async def _loop(self, instances: dict[str, str]) -> None:
        s = self.settings
        while True:  # _append leaves room under the budget, so every generation has at least one token
            ids, text = await self._generate(s.max_response_tokens - self.response_tokens)
            out_of_turns = s.max_assistant_turns and self.assistant_turns >= s.max_assistant_turns
            if self.finish_reason != "stop" or out_of_turns:
                return
            if self.vision is not None and self.vision.image_token_id in ids:
                return
            if s.max_user_turns and self.user_turns >= s.max_user_turns:  # before tools or the user act on it
                return
            parsed = parse_tool_calls(text, self.tools.keys(), s.tool_call_format) if self.tools else None
            images = []
            if parsed is not None and (parsed.tool_calls or parsed.errors):
                turn, images = await self._call_tools(parsed, instances)
            elif self.interaction is not None:
                done, reply, score, _ = await self.interaction.generate_response(self.id, self.chat.messages,
                                                                                 **self.interaction_kwargs)
                self.turn_scores.append(float(score))
                if done:
                    return
                turn = [{"role": "user", "content": reply}]
            else:
                return
            if not self._append(turn, images):
                return

    async def _generate(self, budget: int) -> tuple[list[int], str]:
        images = {"image_data": self.image_data} if self.image_data else {}
        answer = await self.client.generate(self.chat.ids, {**self.sampling, "max_new_tokens": budget, "n": 1},
                                            return_logprob=True, **images)
        ids, log_probs, self.finish_reason = parse_answer(answer)
        self.chat.add_generated(ids, answer["text"])
        self.log_probs += log_probs + [0.0] * (len(self.chat.ids) - len(self.log_probs) - len(ids))  # a closing eos
        self.assistant_turns += 1
        return ids, answer["text"]

    async def _call_tools(self, parsed, instances: dict[str, str]) -> tuple[list[dict], list[bytes]]:
        """One tool message per call or malformed call, in the order written (models match answers by position):
        the first max_parallel_calls calls run concurrently, later ones are answered with a refusal. A call's
        images come first in its message (verl's order); they are returned, encoded, in conversation order."""
        limit = self.settings.max_parallel_calls
        calls = parsed.tool_calls[:limit]
        self.tool_calls += len(calls)
        results = iter(await asyncio.gather(*(self._call(c.name, c.arguments, instances[c.name]) for c in calls)))
        refusal = f"Error: tool call not run: at most {limit} call(s) per turn."
        messages, images, seen = [], [], 0
        for item in parsed.items:
            if isinstance(item, str):
                text, shown = item, []
            else:
                seen += 1
                text, shown = next(results) if seen <= limit else (refusal, [])
            content = [{"type": "image"}] * len(shown) + [{"type": "text", "text": text}] if shown else text
            messages.append({"role": "tool", "content": content})
            images += shown
        return messages, images

    async def _call(self, name: str, arguments: dict, instance: str) -> tuple[str, list[bytes]]:
        s = self.settings
        try:
            answer, reward, _ = await asyncio.wait_for(
                self.tools[name].execute(instance, arguments, **self._kwargs(name, "execute")), s.tool_timeout_s)
        except asyncio.TimeoutError:
            return f"Error: tool '{name}' did not answer within {s.tool_timeout_s:g} s.", []
        except Exception as e:  # a tool's failure is the model's observation, not the rollout's crash
            return f"Error when executing tool '{name}': {type(e).__name__}: {e}", []
        response = as_response(answer, name)
        if response.video:
            raise ValueError(f"tool '{name}' returned a video; videos are not supported (images are)")
        if reward is not None:
            self.tool_rewards.append(float(reward))
        text = truncate_tool_text(response.text or "", s.max_tool_response_length, s.tool_response_truncate_side)
        shown = [image for image in response.image or [] if image is not None]
        if shown and self.vision is None:  # the model could not see them: a configuration error, not an observation
            raise ValueError(f"tool '{name}' returned {len(shown)} image(s), but the model is text-only; use a "
                             f"vision-language model (Qwen2.5-VL) with this tool")
        return text, [tool_image(image, name, k) for k, image in enumerate(shown)]

    def _append(self, messages: list[dict], images: list[bytes]) -> bool:
        """Adds a tool/user turn unless it would leave no room under the response budget (its images' full runs
        of tokens counted). With a vision model, text that spells a vision token is escaped first."""
        if self.vision is not None:
            messages = [{**m, "content": _escaped(m["content"])} for m in messages]
        delta = self.chat.delta_ids(messages)
        extra = 0
        if images:
            extra = sum(self.vision.tokens_per_image([open_image(data) for data in images])) - len(images)
        if self.response_tokens + len(delta) + extra >= self.settings.max_response_tokens:
            self.finish_reason = "length"
            return False
        self.chat.add_messages(messages, delta)
        self.image_data += [data_uri(data) for data in images]
        self.tool_images += images
        self.extra_image_tokens += extra
        self.log_probs += [0.0] * (len(self.chat.ids) - len(self.log_probs))
        self.user_turns += 1
        return True

    def _sample(self) -> Sample:
        if self.settings.sanity_check:
            mismatch = self.chat.check()
            if mismatch is not None:
                raise RuntimeError(f"multi-turn tokenisation differs from the full conversation's: {mismatch}")
        p, end = self.chat.prompt_length, len(self.chat.ids)
        while end > p and self.chat.mask[end - 1] == 0:  # the eos closing a turn cut by the budget: not the policy's
            end -= 1
        num_turns = self.assistant_turns + self.user_turns + 1
        scores = {"tool_final_rewards": self.tool_final_rewards, "tool_rewards": self.tool_rewards,
                  "interaction_score": self.interaction_score, "turn_scores": self.turn_scores, "num_turns": num_turns}
        fields = {**self.fields, "num_turns": num_turns, "tool_calls": self.tool_calls,
                  "rollout_reward_scores": scores, "messages_out": self.chat.messages}
        text = self.tokenizer.decode(self.chat.ids[p:end], skip_special_tokens=True)
        ids, mask, log_probs = self.chat.ids[:end], self.chat.mask[:end], self.log_probs[:end]
        if self.vision is not None:
            inputs = self._image_inputs()
            fields |= {"image_data": self.image_data, "multi_modal_inputs": inputs}
            if inputs:
                ids, mask, log_probs, p = self._expand(inputs["image_grid_thw"], ids, mask, log_probs, p)
        return Sample(ids[:p], ids[p:], log_probs[p:], mask[p:], text, self.finish_reason, fields)

    def _image_inputs(self) -> dict:
        """{pixel_values, image_grid_thw} of the prompt's images and then the tools', in conversation order."""
        prompt = self.fields.get("multi_modal_inputs") or {}
        if not self.tool_images:
            return prompt
        tools = self.vision.model_inputs(self.tool_images)
        return {k: torch.cat([prompt[k], v]) if prompt else v for k, v in tools.items()}

    def _expand(self, grids: torch.Tensor, ids: list[int], mask: list[int], log_probs: list[float],
                prompt_length: int) -> tuple[list[int], list[int], list[float], int]:
        """Each image's one pad -> its run of pads (mask 0, log-prob 0); a pad the policy wrote (mask 1) is text.
        Returns the expanded lists and the prompt's expanded length."""
        runs = iter((grids.prod(-1) // self.vision.merge ** 2).tolist())
        out_ids, out_mask, out_lp, out_p = [], [], [], 0
        for i, (t, m, lp) in enumerate(zip(ids, mask, log_probs)):
            k = next(runs) if t == self.vision.image_token_id and m == 0 else 1
            out_ids += [t] * k
            out_mask += [m] * k
            out_lp += [lp] * k
            out_p += k if i < prompt_length else 0
        return out_ids, out_mask, out_lp, out_p


def _escaped(content: str | list) -> str | list:
    if isinstance(content, str):
        return escape_vision_tokens(content)
    return [{**part, "text": escape_vision_tokens(part["text"])} if part.get("type") == "text" else part
            for part in content]


def pick_interaction(interactions: dict[str, Any], kwargs: dict, uid: str):
    """The interaction named by the row's interaction_kwargs.name (the only one configured when unnamed)."""
    if not interactions:
        return None
    name = kwargs.get("name")
    if name is None:
        if len(interactions) == 1:
            return next(iter(interactions.values()))
        raise ValueError(f"row {uid}: extra_info.interaction_kwargs has no 'name' to choose among the configured "
                         f"interactions {sorted(interactions)}")
    if name not in interactions:
        raise ValueError(f"row {uid}: interaction '{name}' is not configured{did_you_mean(name, interactions)}; "
                         f"configured: {sorted(interactions)}")
    return interactions[name]


async def generate_multi_turn(client: SGLangClient, tokenizer, prompts: Batch, *, n: int, sampling: dict,
                              settings: AgentSettings, tools: dict[str, Any], interactions: dict[str, Any],
                              seed: int | None = None, key: tuple = (),
                              on_sample_done: Callable[[], object] | None = None,
                              vision: PromptVision | None = None) -> list[Sample]:
    """n trajectories per prompt, all concurrently; samples of a prompt are adjacent, sample k of a prompt seeded
    from (seed, *key, uid, k). tools_kwargs and interaction_kwargs come from each row's extra_info (verl's layout)."""

    async def one(i: int, k: int) -> Sample:
        fields = {key: values[i] for key, values in prompts.fields.items()}
        extra = fields.get("extra_info") or {}
        fields["tools_kwargs"] = extra.get("tools_kwargs") or {}
        fields["interaction_kwargs"] = extra.get("interaction_kwargs") or {}
        interaction = pick_interaction(interactions, fields["interaction_kwargs"], str(fields.get("uid")))
        params = dict(sampling)
        if seed is not None:
            params["sampling_seed"] = sample_seed(seed, *key, fields.get("uid"), k)
        sample = await Trajectory(client, tokenizer, fields["messages"], tools=tools, interaction=interaction,
                                  fields=fields, settings=settings, sampling=params, vision=vision).run()
        if on_sample_done is not None:
            on_sample_done()
        return sample

    return list(await asyncio.gather(*(one(i, k) for i in range(len(prompts)) for k in range(n))))

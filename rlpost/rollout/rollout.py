"""The rollout: one object that turns prompts into scored samples, so the driver does not hold an event loop, an
HTTP client or engine memory flags. It owns the client of the rollout servers and its event loop, the tools and
interactions of multi-turn rollouts, the hybrid engine's memory hand-off (KV cache taken back before generating,
given back after, over SGLang's /resume_memory_occupation and /release_memory_occupation), sampling seeds, scoring
through the reward it is handed, DAPO's dynamic sampling and ReMax's greedy baselines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from rlpost.batch import Batch
from rlpost.config.derived import estimator
from rlpost.config.schema import RLConfig, SamplingConfig
from rlpost.data.images import PromptVision
from rlpost.rollout.agent_loop import AgentSettings, generate_multi_turn
from rlpost.rollout.chat import renders_tools
from rlpost.rollout.client import SGLangClient
from rlpost.rollout.generate import Sample, generate, to_batch
from rlpost.tools import load_interactions, load_tools, openai_schemas

log = logging.getLogger(__name__)
Timer = Callable[[str], AbstractContextManager]  # timer("phase") times the block under that name
Reward = Callable[[list[str], list[dict], list[int]], list[dict]]  # rlpost.rewards.reward.Reward
_MEMORY = ["kv_cache"]  # what the hybrid engine hands back while training


class Rollout:
    def __init__(self, cfg: RLConfig, tokenizer, vision: PromptVision | None = None):
        """Loads the tools and interactions (their schemas go into prompts, so datasets need them first); connect
        to the servers before generating. `vision`: the policy's image processing, None for a text-only model."""
        self.cfg, self.tokenizer, self.vision = cfg, tokenizer, vision
        mt = cfg.rollout.multi_turn
        self.tools = load_tools(mt.tool_config_path) if mt.enable and mt.tool_config_path else {}
        self.interactions = (load_interactions(mt.interaction_config_path)
                             if mt.enable and mt.interaction_config_path else {})
        self.tool_schemas = openai_schemas(self.tools)
        if self.tool_schemas and not renders_tools(tokenizer, self.tool_schemas):
            log.warning("the chat template does not write tool schemas into prompts, so the model sees only what "
                        "the prompts themselves say about the tools %s and how to call them",
                        [t["function"]["name"] for t in self.tool_schemas])
        self.agent = AgentSettings(
            max_response_tokens=cfg.data.max_response_length, max_assistant_turns=mt.max_assistant_turns,
            max_user_turns=mt.max_user_turns, max_parallel_calls=mt.max_parallel_calls,
            max_tool_response_length=mt.max_tool_response_length,
            tool_response_truncate_side=mt.tool_response_truncate_side, tool_timeout_s=mt.tool_timeout_s,
            tool_call_format=mt.format)
        self.hybrid = cfg.cluster.placement == "colocated"
        self.loop = asyncio.new_event_loop()
        self.client: SGLangClient | None = None
        self.progress: Callable | None = None

    def connect(self, server_urls: list[str], progress: Callable[[str, int], object] | None = None) -> None:
        """progress(description, total) -> a bar with update() and close(), or None. With
        rollout.deterministic_inference, every server must say it honours sampling seeds."""
        self.client, self.progress = SGLangClient(server_urls), progress
        if self.cfg.rollout.deterministic_inference:
            infos = self.loop.run_until_complete(self.client.broadcast("/server_info", method="GET"))
            ignoring = [s.url for s, info in zip(self.client.servers, infos)
                        if not info.get("enable_deterministic_inference")]
            if ignoring:
                raise RuntimeError(f"rollout.deterministic_inference is on, but {ignoring} run without "
                                   f"--enable-deterministic-inference and would ignore sampling seeds")

    # ---- a training step's batch ----------------------------------------------------------------------------------

    def generate(self, step: int, prompts: Iterator[Batch], reward: Reward, timer: Timer) -> Batch:
        """A batch of prompts from `prompts`, n samples each, scored by `reward`. With DAPO dynamic sampling, prompts
        whose samples all score the same are dropped and more batches generated until train_batch_size prompts
        remain (extra ones cut)."""
        cfg, fg = self.cfg, self.cfg.algorithm.filter_groups
        want = cfg.data.train_batch_size * cfg.rollout.sampling.n
        kept, round_ = [], 0
        while True:
            batch = next(prompts)
            with timer("gen"):
                samples = self.sample(batch, cfg.rollout.sampling, ("train", step, round_))
                greedy = self.sample(batch, self._greedy, ("greedy", step, round_)) if self._needs_greedy else None
            with timer("reward"):
                self.score(samples, reward)
                if greedy is not None:  # ReMax: each prompt's greedy response, scored, is its samples' baseline
                    self.score(greedy, reward)
                    baseline = {g.fields["uid"]: g.fields["score"] for g in greedy}
                    for s in samples:
                        s.fields["reward_baseline"] = baseline[s.fields["uid"]]
            round_ += 1
            if not fg.enable:
                kept = samples
                break
            kept += [samples[i] for i in varied_groups(samples, fg.metric)]
            if len(kept) >= want:
                kept = kept[:want]
                break
            if fg.max_num_gen_batches and round_ >= fg.max_num_gen_batches:
                raise RuntimeError(f"dynamic sampling: {len(kept) // cfg.rollout.sampling.n} of "
                                   f"{cfg.data.train_batch_size} prompts with varied '{fg.metric}' after {round_} "
                                   f"generation rounds (algorithm.filter_groups.max_num_gen_batches); the data is "
                                   f"too easy or too hard for the model")
        out = to_batch(kept, self.tokenizer.pad_token_id)
        if self._needs_greedy:
            out["reward_baselines"] = torch.tensor(out["reward_baseline"], dtype=torch.float32)
        return out

    @property
    def _needs_greedy(self) -> bool:
        return estimator(self.cfg).needs_greedy_baseline

    @property
    def _greedy(self) -> SamplingConfig:
        return dataclasses.replace(self.cfg.rollout.val_sampling, n=1, temperature=0.0)

    # ---- the pieces ------------------------------------------------------------------------------------------------

    def sample(self, prompts: Batch, sampling: SamplingConfig, key: tuple) -> list[Sample]:
        """sampling.n samples of each prompt (agent loops when multi-turn is on), seeded from the run's seed and
        `key` (what is sampled: phase, step, round); a prompt's samples are adjacent."""
        if self.client is None:
            raise RuntimeError("the rollout is not connected to servers (Rollout.connect)")
        cfg, multi_turn = self.cfg, self.cfg.rollout.multi_turn.enable
        params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                  "min_p": sampling.min_p}
        what = "generate (samples)" if multi_turn else "generate (prompts)"
        bar = self.progress(what, len(prompts) * (sampling.n if multi_turn else 1)) if self.progress else None
        done = bar.update if bar is not None else None
        if multi_turn:
            work = generate_multi_turn(self.client, self.tokenizer, prompts, n=sampling.n, sampling=params,
                                       settings=self.agent, tools=self.tools, interactions=self.interactions,
                                       seed=cfg.trainer.seed, key=key, on_sample_done=done, vision=self.vision)
        else:
            work = generate(self.client, prompts, n=sampling.n, sampling=params,
                            max_new_tokens=cfg.data.max_response_length, seed=cfg.trainer.seed, key=key,
                            on_prompt_done=done, image_token_id=self.vision.image_token_id if self.vision else None)
        try:
            with self._engine_memory():
                return self.loop.run_until_complete(work)
        finally:
            if bar is not None:
                bar.close()

    def score(self, samples: list[Sample], reward: Reward) -> None:
        """Each sample's fields get `score` and whatever else the reward function reported (e.g. `acc`)."""
        results = reward([s.text for s in samples], [s.fields for s in samples],
                         [len(s.response_ids) for s in samples])
        for s, result in zip(samples, results, strict=True):
            s.fields.update(result)

    @contextmanager
    def _engine_memory(self) -> Iterator[None]:
        """Hybrid engine: the KV cache is the engines' while generating and the trainer's otherwise."""
        if not self.hybrid:
            yield
            return
        self.loop.run_until_complete(self.client.resume_memory(_MEMORY))
        try:
            yield
        finally:
            self.loop.run_until_complete(self.client.release_memory(_MEMORY))

    def close(self) -> None:
        if self.client is not None:
            self.loop.run_until_complete(self.client.close())
        self.loop.close()


def varied_groups(samples: list[Sample], metric: str) -> list[int]:
    """Indices of samples whose prompt (uid) has more than one distinct value of `metric` (score or an extra)."""
    groups: dict = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.fields["uid"], []).append(i)
    return [i for members in groups.values() if len({samples[j].fields.get(metric) for j in members}) > 1
            for i in members]

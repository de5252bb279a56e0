"""Rewards for finished samples: the scorer's value plus DAPO's overlong shaping, stored in each sample's fields
(`score` and the reward function's extras, e.g. `acc`); the token where a score lands; DAPO's dynamic-sampling
filter (a prompt whose samples all score the same gives every one of them advantage 0)."""

from __future__ import annotations

import torch

from rlpost.batch import Batch
from rlpost.config.schema import OverlongBufferConfig
from rlpost.rewards.registry import RewardScorer
from rlpost.rollout.generate import Sample


def overlong_penalty(length: int, max_response_length: int, cfg: OverlongBufferConfig) -> float:
    """0 up to max_response_length - len tokens, then linearly down to -penalty_factor at the limit (DAPO)."""
    if not cfg.enable:
        return 0.0
    exceed = length - (max_response_length - cfg.len)
    return min(-exceed / cfg.len * cfg.penalty_factor, 0.0)


def score_samples(samples: list[Sample], scorer: RewardScorer, max_response_length: int,
                  overlong: OverlongBufferConfig) -> None:
    f = [s.fields for s in samples]
    scores, extras = scorer.score([s.text for s in samples], [x["data_source"] for x in f],
                                  [x["ground_truth"] for x in f], [_extra_info(x) for x in f])
    for s, score, extra in zip(samples, scores, extras):
        s.fields.update(extra)
        s.fields["score"] = score + overlong_penalty(len(s.response_ids), max_response_length, overlong)


def _extra_info(fields: dict) -> dict:
    """The row's extra_info plus, for multi-turn samples, what the tools and the interaction scored
    (extra_info['rollout_reward_scores']), so a custom reward function can use them."""
    extra = dict(fields.get("extra_info") or {})
    if "rollout_reward_scores" in fields:
        extra["rollout_reward_scores"] = fields["rollout_reward_scores"]
    return extra


def token_level_scores(batch: Batch) -> torch.Tensor:
    """[n, s-1]: each sample's score at the position that predicts its last response token."""
    out = torch.zeros(batch["loss_mask"].shape)
    out[torch.arange(len(batch)), batch["lengths"] - 2] = torch.tensor(batch["score"], dtype=out.dtype)
    return out


def varied_groups(samples: list[Sample], metric: str) -> list[int]:
    """Indices of samples whose prompt (uid) has more than one distinct value of `metric` (score or an extra)."""
    groups: dict = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.fields["uid"], []).append(i)
    return [i for members in groups.values() if len({samples[j].fields[metric] for j in members}) > 1
            for i in members]

"""Advantage estimators. Each maps per-token rewards (plus what it needs) to (advantages, returns), both [B, T].

Inputs every estimator receives as keywords (it ignores what it does not use):
    token_level_rewards [B, T], response_mask [B, T] (1 = policy token), index (group id per sample: prompt uid),
    values [B, T] (critic), reward_baselines [B] (ReMax greedy score), gamma, lam, norm_adv_by_std, eps.
Outcome-reward estimators (grpo, rloo, ...) score a sample by the sum of its token rewards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rlpost.algorithms.masked import masked_whiten
from rlpost.registry import Registry


@dataclass(frozen=True)
class EstimatorFacts:
    """What an estimator needs besides the samples' rewards; the trainer and the config check ask these."""

    needs_critic: bool = False  # values from a critic (which then trains too)
    needs_groups: bool = False  # several samples per prompt to compare
    needs_greedy_baseline: bool = False  # each prompt's greedy response, scored (reward_baselines)


ADV_ESTIMATORS: Registry = Registry("advantage estimator", EstimatorFacts)


def group_ids(index: Sequence | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Dense 0..G-1 ids for arbitrary hashable group labels (uuid strings, ints)."""
    if isinstance(index, torch.Tensor):
        return torch.unique(index, return_inverse=True)[1]
    return torch.from_numpy(np.unique(np.asarray(index, dtype=object).astype(str), return_inverse=True)[1].reshape(-1))


def group_mean_std(scores: torch.Tensor, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group mean, unbiased group std and group size, vectorised over all groups at once.

    Groups of one sample get mean 0 and std 1: with no peers there is no baseline, the raw score stands.
    """
    gid = group_ids(index).to(scores.device)
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    counts = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add_(0, gid, torch.ones_like(scores))
    sums = torch.zeros_like(counts).index_add_(0, gid, scores)
    mean = sums / counts
    sq_dev = torch.zeros_like(counts).index_add_(0, gid, (scores - mean[gid]) ** 2)
    std = torch.sqrt(sq_dev / (counts - 1).clamp(min=1))
    single = counts == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean[gid], std[gid], counts[gid]


def _broadcast(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_sample.unsqueeze(-1) * mask


@ADV_ESTIMATORS.register("gae", needs_critic=True)
def gae(token_level_rewards, response_mask, values, gamma: float, lam: float, **_):
    """Generalised advantage estimation. Masked positions (tool output inside a multi-turn response) are skipped:
    they neither bootstrap a value nor reset the running estimate."""
    mask = response_mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    out = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * running
        running = torch.where(mask[:, t] > 0, candidate, running)
        next_value = torch.where(mask[:, t] > 0, values[:, t], next_value)
        out[:, t] = running
    returns = out + values
    return masked_whiten(out, mask) * mask, returns * mask


@ADV_ESTIMATORS.register("grpo", needs_groups=True)
def grpo(token_level_rewards, response_mask, index, norm_adv_by_std: bool = True, eps: float = 1e-6, **_):
    """GRPO: score minus group mean, divided by group std unless norm_adv_by_std is off (Dr. GRPO)."""
    scores = token_level_rewards.sum(-1)
    mean, std, _counts = group_mean_std(scores, index)
    adv = scores - mean
    if norm_adv_by_std:
        adv = adv / (std + eps)
    adv = _broadcast(adv, response_mask)
    return adv, adv


@ADV_ESTIMATORS.register("rloo", needs_groups=True)
def rloo(token_level_rewards, response_mask, index, **_):
    """Leave-one-out baseline: each score minus the mean of the other samples of its prompt."""
    scores = token_level_rewards.sum(-1)
    mean, _std, counts = group_mean_std(scores, index)
    n = counts
    adv = torch.where(n > 1, scores * n / (n - 1).clamp(min=1) - mean * n / (n - 1).clamp(min=1), scores)
    adv = _broadcast(adv, response_mask)
    return adv, adv


@ADV_ESTIMATORS.register("reinforce_plus_plus")
def reinforce_plus_plus(token_level_rewards, response_mask, gamma: float, **_):
    """Discounted return-to-go over the policy's tokens, whitened across the batch (no critic, no group baseline).
    Masked positions (tool and user turns of a multi-turn sample) carry the return through undiscounted, so earlier
    assistant turns are credited with the final score."""
    mask = response_mask.to(token_level_rewards.dtype)
    returns = torch.zeros_like(token_level_rewards)
    running = torch.zeros_like(token_level_rewards[:, 0])
    for t in reversed(range(token_level_rewards.shape[1])):
        running = torch.where(mask[:, t] > 0, token_level_rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return masked_whiten(returns, mask) * mask, returns * mask


@ADV_ESTIMATORS.register("reinforce_plus_plus_baseline", needs_groups=True)
def reinforce_plus_plus_baseline(token_level_rewards, response_mask, index, **_):
    """Group-mean baseline, then whitening across the whole batch instead of per group."""
    mask = response_mask.to(token_level_rewards.dtype)
    scores = token_level_rewards.sum(-1)
    mean, _std, _counts = group_mean_std(scores, index)
    adv = masked_whiten(_broadcast(scores - mean, mask), mask) * mask
    return adv, adv


@ADV_ESTIMATORS.register("remax", needs_greedy_baseline=True)
def remax(token_level_rewards, response_mask, reward_baselines, **_):
    """ReMax: return-to-go minus the score of the greedy response to the same prompt."""
    mask = response_mask.to(token_level_rewards.dtype)
    returns = (token_level_rewards * mask).flip(-1).cumsum(-1).flip(-1)
    adv = (returns - reward_baselines.unsqueeze(-1)) * mask
    return adv, returns


def compute_advantages(estimator: str, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    return ADV_ESTIMATORS.get(estimator)(**inputs)

"""Per-step metrics from the training Batch, the no-signal watch, and phase timing."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch

from rlpost.algorithms import Denominators, agg_loss
from rlpost.algorithms.masked import masked_mean
from rlpost.batch import Batch
from rlpost.config.derived import policy_loss_settings
from rlpost.config.schema import RLConfig

log = logging.getLogger(__name__)


def _stats(prefix: str, x: torch.Tensor) -> dict:
    x = x.float()
    return {f"{prefix}/mean": float(x.mean()), f"{prefix}/max": float(x.max()), f"{prefix}/min": float(x.min())}


def _mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float(masked_mean(x, mask))


def present_mean(values) -> float | None:
    """The mean of the values that are not None (a mixed batch holds None where a sample's reward function reported
    no such extra, e.g. gsm8k's samples beside math_dapo's `acc`); None when no sample has one."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def batch_metrics(batch: Batch, cfg: RLConfig) -> dict:
    """What the step's batch says: rewards, lengths, advantages, values; with the old-log-prob pass, the entropy of
    the policy before this step's update (verl's actor/entropy, aggregated like the loss; without the pass, the
    single update step reports the same quantity) and how far the servers' log-probs were from the trainer's."""
    mask, max_response_length = batch["loss_mask"], cfg.data.max_response_length
    scores = torch.tensor(batch["score"], dtype=torch.float32)
    out = {"reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(batch) > 1 else 0.0,
           "reward/max": float(scores.max()), "reward/min": float(scores.min())}
    acc = present_mean(batch["acc"]) if "acc" in batch else None
    if acc is not None:
        out["reward/acc"] = acc
    lengths = batch["response_lengths"]
    out |= _stats("response_length", lengths) | _stats("prompt_length", batch["prompt_lengths"])
    out["response_length/std"] = float(lengths.float().std()) if len(batch) > 1 else 0.0
    out |= collapse_metrics(batch)
    out["response_length/clip_ratio"] = float((lengths >= max_response_length).float().mean())
    out |= _stats("advantages", masked_mean(batch["advantages"], mask, dim=-1))
    if "values" in batch:
        out["critic/values_mean"] = _mean(batch["values"], mask)
        out["critic/returns_mean"] = _mean(batch["returns"], mask)
    if "entropy" in batch:
        loss = policy_loss_settings(cfg)
        out["actor/entropy"] = float(agg_loss(batch["entropy"], mask, loss.loss_agg_mode,
                                              Denominators.of(mask, loss.loss_scale_factor)))
    if "ref_log_probs" in batch and "old_log_probs" in batch:
        out["actor/kl_ref"] = _mean(batch["old_log_probs"] - batch["ref_log_probs"], mask)
    for key, name in (("num_turns", "multi_turn/num_turns_mean"), ("tool_calls", "multi_turn/tool_calls_mean")):
        mean = present_mean(batch[key]) if key in batch else None
        if mean is not None:
            out[name] = mean
    if "old_log_probs" in batch:
        diff = (batch["rollout_log_probs"] - batch["old_log_probs"]).abs()
        out["actor/rollout_logprob_diff_mean"] = _mean(diff, mask)
        out["actor/rollout_logprob_diff_max"] = float((diff * mask).max())
    return out


def collapse_metrics(batch: Batch) -> dict:
    """What an RL practitioner reads first for reward hacking and collapse: the share of prompt groups whose samples
    all scored the same (GRPO-style estimators give them zero advantage: nothing to learn), the share of response
    tokens with exactly zero advantage, and the share of distinct responses in the batch (identical short answers)."""
    groups: dict = {}
    for uid, score in zip(batch["uid"], batch["score"]):
        groups.setdefault(uid, []).append(score)
    mask = batch["loss_mask"].bool()
    return {"collapse/flat_group_frac": sum(len(set(g)) == 1 for g in groups.values()) / len(groups),
            "collapse/zero_adv_token_frac": float((batch["advantages"][mask] == 0).float().mean()),
            "collapse/distinct_response_frac": len(set(batch["response_text"])) / len(batch)}


class SignalWatch:
    """Warns when every group has been flat for `steps` steps in a row: the policy gets no gradient from the reward
    (the task is too hard or too easy for it, or it collapsed onto one answer)."""

    def __init__(self, steps: int):
        self.steps, self.flat_in_a_row = steps, 0

    def update(self, step: int, metrics: dict) -> str | None:
        self.flat_in_a_row = self.flat_in_a_row + 1 if metrics["collapse/flat_group_frac"] == 1.0 else 0
        if not self.steps or self.flat_in_a_row < self.steps:
            return None
        warning = (f"step {step}: no learning signal for {self.flat_in_a_row} steps in a row: in every group all "
                   f"samples scored the same (reward {metrics['reward/mean']:.3f}), so every advantage is zero; the "
                   f"task is too hard or too easy for the policy, or it collapsed (see the logged samples)")
        log.warning(warning)
        return warning


SAMPLE_KEYS = ("uid", "data_source", "score", "finish_reason", "num_turns", "tool_calls", "response_text")


def sample_rows(batch: Batch, count: int) -> list[dict]:
    """The step's first `count` samples as JSON rows (what the policy wrote, tool turns included, and its score)."""
    return [{k: batch[k][i] for k in SAMPLE_KEYS if k in batch} | {"response_length": int(batch["response_lengths"][i])}
            for i in range(min(count, len(batch)))]


class Timer:
    """Seconds per phase of one step: `with timer("gen"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self, tokens: int) -> dict:
        out = {f"timing_s/{k}": v for k, v in self.seconds.items()}
        total = sum(self.seconds.values())
        out["timing_s/step"] = total
        out["throughput/tokens_per_s"] = tokens / total if total else 0.0
        return out


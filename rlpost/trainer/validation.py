"""Validation: the validation prompts (or their first data.val_max_samples) with rollout.val_sampling, scored by the
same reward; mean reward (and accuracy, when the reward function reports `acc`; with n > 1 samples per prompt also
pass@n, the share of prompts with at least one correct sample) per data_source."""

from __future__ import annotations

from rlpost.config.schema import RLConfig
from rlpost.data.collate import in_order
from rlpost.data.dataset import RLDataset
from rlpost.rewards.reward import Reward
from rlpost.rollout.rollout import Rollout


def validate(rollout: Rollout, data: RLDataset, reward: Reward, cfg: RLConfig) -> dict:
    """Sampled validation draws the same seeds every time, so scores at two steps differ by the policy only."""
    d = cfg.data
    samples = []
    for prompts in in_order(data, d.val_batch_size or len(data), d.val_max_samples, rollout.tokenizer.pad_token_id):
        samples += rollout.sample(prompts, cfg.rollout.val_sampling, ("val",))
    rollout.score(samples, reward)
    by_source: dict[str, list] = {}
    for s in samples:
        by_source.setdefault(s.fields["data_source"], []).append(s)
    out = {}
    for source, group in sorted(by_source.items()):
        out[f"val/{source}/reward_mean"] = sum(s.fields["score"] for s in group) / len(group)
        scored = [s for s in group if s.fields.get("acc") is not None]  # the samples whose reward reported acc
        if scored:
            out[f"val/{source}/acc"] = sum(float(s.fields["acc"]) for s in scored) / len(scored)
            n = cfg.rollout.val_sampling.n
            if n > 1:
                solved: dict = {}
                for s in scored:
                    solved[s.fields["uid"]] = solved.get(s.fields["uid"], False) or bool(s.fields["acc"])
                out[f"val/{source}/pass@{n}"] = sum(solved.values()) / len(solved)
        out[f"val/{source}/response_length_mean"] = sum(len(s.response_ids) for s in group) / len(group)
    return out

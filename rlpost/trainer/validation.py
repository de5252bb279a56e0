"""Validation: the validation prompts (or their first data.val_max_samples) with rollout.val_sampling, scored by
the same rules; mean reward (and accuracy, when the reward function reports `acc`) per data_source."""

from __future__ import annotations

from rlpost.data.collate import collate
from rlpost.data.dataset import RLDataset
from rlpost.trainer.scoring import score_samples


def validate(trainer, data: RLDataset) -> dict:
    cfg = trainer.cfg
    n = min(len(data), cfg.data.val_max_samples or len(data))
    size = cfg.data.val_batch_size or n
    samples = []
    for start in range(0, n, size):
        prompts = collate([data[i] for i in range(start, min(start + size, n))], trainer.pad_id)
        samples += trainer.generate_samples(prompts, cfg.rollout.val_sampling, step_key=-1)
    score_samples(samples, trainer.scorer, cfg.data.max_response_length, cfg.reward.overlong_buffer)
    by_source: dict[str, list] = {}
    for s in samples:
        by_source.setdefault(s.fields["data_source"], []).append(s)
    out = {}
    for source, group in sorted(by_source.items()):
        out[f"val/{source}/reward_mean"] = sum(s.fields["score"] for s in group) / len(group)
        if all("acc" in s.fields for s in group):
            out[f"val/{source}/acc"] = sum(float(s.fields["acc"]) for s in group) / len(group)
        out[f"val/{source}/response_length_mean"] = sum(len(s.response_ids) for s in group) / len(group)
    return out

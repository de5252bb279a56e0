"""The step's reward for finished responses: the rule for each row's data_source (or the custom function) plus DAPO's
overlong shaping. Multi-turn samples also hand the function what their tools and interaction scored."""

from __future__ import annotations

from collections.abc import Sequence

from rlpost.config.schema import OverlongBufferConfig, RewardConfig
from rlpost.rewards.registry import RewardScorer


def overlong_penalty(length: int, max_response_length: int, cfg: OverlongBufferConfig) -> float:
    """0 up to max_response_length - len tokens, then linearly down to -penalty_factor at the limit (DAPO)."""
    if not cfg.enable:
        return 0.0
    exceed = length - (max_response_length - cfg.len)
    return min(-exceed / cfg.len * cfg.penalty_factor, 0.0)


class Reward:
    def __init__(self, cfg: RewardConfig, max_response_length: int):
        self.scorer = RewardScorer(cfg.custom_function, cfg.kwargs)
        self.overlong, self.max_response_length = cfg.overlong_buffer, max_response_length

    def check_sources(self, data_sources: Sequence[str]) -> None:
        """Fail at start-up, not at the first reward, when a dataset names a source with no rule."""
        self.scorer.check_sources(data_sources)

    def __call__(self, texts: Sequence[str], fields: Sequence[dict], response_lengths: Sequence[int]) -> list[dict]:
        """Per response, {"score": reward + overlong penalty, **what the function returned besides 'score'}. fields:
        each sample's row fields (data_source, ground_truth, extra_info, rollout_reward_scores of multi-turn)."""
        scores, extras = self.scorer.score(texts, [f["data_source"] for f in fields],
                                           [f["ground_truth"] for f in fields], [_extra_info(f) for f in fields])
        return [{**extra, "score": score + overlong_penalty(length, self.max_response_length, self.overlong)}
                for score, extra, length in zip(scores, extras, response_lengths, strict=True)]


def _extra_info(fields: dict) -> dict:
    """The row's extra_info plus, for multi-turn samples, what the tools and the interaction scored
    (extra_info['rollout_reward_scores']), so a custom reward function can use them."""
    extra = dict(fields.get("extra_info") or {})
    if "rollout_reward_scores" in fields:
        extra["rollout_reward_scores"] = fields["rollout_reward_scores"]
    return extra

"""The driver's pure pieces against hand-computed values: packing samples into the training Batch, where scores
land, DAPO's overlong shaping and group filter, and advantages through the configured estimator."""

import pytest
import torch

from rlpost.config import load_config
from rlpost.config.schema import OverlongBufferConfig, RewardConfig
from rlpost.rewards.reward import Reward, overlong_penalty
from rlpost.rollout.generate import Sample, to_batch
from rlpost.rollout.rollout import varied_groups
from rlpost.trainer.advantage import add_advantages


def sample(prompt, response, uid, score=None, logprobs=None):
    fields = {"uid": uid} | ({"score": score} if score is not None else {})
    return Sample(prompt, response, logprobs or [-0.5] * len(response), [1] * len(response), "", "stop", fields)


def test_samples_pack_right_padded_with_masks_on_the_predicting_positions():
    batch = to_batch([sample([1, 2, 3], [4, 5], "a", logprobs=[-0.1, -0.2]), sample([6], [7, 8, 9], "b")],
                     pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert batch["lengths"].tolist() == [5, 4]
    # position t predicts token t + 1: response tokens 4, 5 are predicted at positions 2, 3
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert batch["rollout_log_probs"][0].tolist() == pytest.approx([0, 0, -0.1, -0.2])
    assert batch["response_lengths"].tolist() == [2, 3] and batch["prompt_lengths"].tolist() == [3, 1]


def test_score_lands_on_the_position_predicting_the_last_response_token():
    batch = to_batch([sample([1, 2, 3], [4, 5], "a", 1.5), sample([6], [7, 8, 9], "b", -1.0)], pad_token_id=0)
    assert batch["token_level_scores"].tolist() == [[0, 0, 0, 1.5], [0, 0, -1.0, 0]]


def test_multi_turn_scores_reach_the_reward_function_in_extra_info(tmp_path):
    (tmp_path / "reward.py").write_text(
        "def by_interaction(data_source, solution_str, ground_truth, extra_info=None, **_):\n"
        "    scores = extra_info['rollout_reward_scores']\n"
        "    return scores['interaction_score'] + sum(scores['tool_rewards']) + extra_info['row']\n")
    scores = {"tool_final_rewards": {}, "tool_rewards": [-0.05], "interaction_score": 1.0, "turn_scores": [0.0, 1.0],
              "num_turns": 3}
    fields = {"uid": "a", "data_source": "d", "ground_truth": "1", "extra_info": {"row": 10.0}, "num_turns": 3,
              "rollout_reward_scores": scores}
    reward = Reward(RewardConfig(f"{tmp_path / 'reward.py'}:by_interaction", {}, OverlongBufferConfig(False, 4, 1.0)),
                    max_response_length=16)
    [result] = reward(["text"], [fields], [1])
    assert result == {"score": pytest.approx(10.95)}
    assert "rollout_reward_scores" not in fields["extra_info"]  # the row's own extra_info is left as it was


def test_overlong_penalty_is_linear_over_the_buffer():
    cfg = OverlongBufferConfig(enable=True, len=4, penalty_factor=1.0)
    # limit 16, buffer 4: no penalty up to 12 tokens, then -1/4 per token down to -1 at 16
    assert [overlong_penalty(n, 16, cfg) for n in (10, 12, 13, 14, 16)] == [0.0, 0.0, -0.25, -0.5, -1.0]
    assert overlong_penalty(16, 16, OverlongBufferConfig(enable=False, len=4, penalty_factor=1.0)) == 0.0


def test_dynamic_sampling_keeps_only_groups_with_different_scores():
    samples = [sample([1], [2], uid, score) for uid, score in
               [("a", 1.0), ("a", 1.0), ("b", 0.0), ("b", 1.0), ("c", 0.0), ("c", 0.0)]]
    assert varied_groups(samples, "score") == [2, 3]


def test_grpo_advantages_from_the_batch():
    cfg = load_config(None, [], check_files=False).algorithm
    samples = [sample([1, 2], [3, 4], "a", 1.0), sample([1, 2], [3], "a", 0.0), sample([5], [6, 7], "b", 2.0),
               sample([5], [6], "b", 2.0)]
    batch = to_batch(samples, pad_token_id=0)
    assert add_advantages(batch, cfg, kl_coef=0.0) == {}
    # group a: scores 1, 0 -> mean 0.5, std (unbiased) 0.7071 -> +-0.7071; group b: equal scores -> 0
    expected = torch.tensor([0.5, -0.5, 0.0, 0.0]) / torch.tensor([0.5 ** 0.5 + 1e-6, 0.5 ** 0.5 + 1e-6, 1e-6 + 1, 1])
    per_sample = (batch["advantages"] * batch["loss_mask"]).sum(-1) / batch["loss_mask"].sum(-1)
    assert per_sample.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert (batch["advantages"] * (1 - batch["loss_mask"])).abs().sum() == 0

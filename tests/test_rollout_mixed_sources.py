"""A batch that mixes data sources whose reward functions report different extras (math_dapo: score, acc, pred;
gsm8k: a number): the Batch keeps every key, with None where a sample lacks one, and the step and validation
metrics average an extra over the samples that report it. The values are worked out by hand."""

import pytest

from rlpost.config import load_config
from rlpost.config.schema import OverlongBufferConfig, RewardConfig
from rlpost.rewards.reward import Reward
from rlpost.rollout.generate import Sample, to_batch
from rlpost.trainer import validation
from rlpost.trainer.advantage import add_advantages
from rlpost.trainer.step_metrics import batch_metrics, present_mean

# (uid, data_source, ground truth, response): math_dapo reads "Answer:", gsm8k (strict) reads "#### "
ROWS = [
    ("m", "math_dapo", "42", "so Answer: 42"),    # math_dapo right: +1, acc True, pred "42"
    ("m", "math_dapo", "42", "so Answer: 41"),    # math_dapo wrong: -1, acc False, pred "41"
    ("g", "openai/gsm8k", "18", "#### 18"),       # gsm8k right: 1.0
    ("g", "openai/gsm8k", "18", "#### 18.00"),    # gsm8k wrong (strings differ): 0.0
]


def scored_samples(rows) -> list[Sample]:
    """Samples scored by the real rules, as Rollout.score does it: the reward's result merged into the fields."""
    samples = [Sample([1, 2], [3, 4, 5], [-0.5] * 3, [1] * 3, text, "stop",
                      {"uid": uid, "data_source": source, "ground_truth": truth, "extra_info": {}})
               for uid, source, truth, text in rows]
    reward = Reward(RewardConfig(None, {}, OverlongBufferConfig(False, 4, 1.0)), max_response_length=16)
    for s, result in zip(samples, reward([s.text for s in samples], [s.fields for s in samples],
                                         [len(s.response_ids) for s in samples]), strict=True):
        s.fields.update(result)
    return samples


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 3, 0, 1], [2, 0, 3, 1]], ids=["dapo-first", "gsm8k-first",
                                                                                      "interleaved"])
def test_mixed_batch_keeps_every_reward_key_and_its_metrics_skip_the_missing(order):
    samples = scored_samples([ROWS[i] for i in order])
    batch = to_batch(samples, pad_token_id=0)
    expected = {0: (1.0, True, "42"), 1: (-1.0, False, "41"), 2: (1.0, None, None), 3: (0.0, None, None)}
    assert batch["score"] == [expected[i][0] for i in order]
    assert batch["acc"] == [expected[i][1] for i in order]
    assert batch["pred"] == [expected[i][2] for i in order]
    assert batch["data_source"] == [ROWS[i][1] for i in order]
    assert batch["token_level_scores"].sum(-1).tolist() == [expected[i][0] for i in order]

    cfg = load_config(None, [], check_files=False)
    add_advantages(batch, cfg.algorithm, kl_coef=0.0)
    metrics = batch_metrics(batch, cfg)
    assert metrics["reward/acc"] == 0.5  # the two math_dapo samples: True, False; gsm8k reports no acc
    assert metrics["reward/mean"] == pytest.approx((1.0 - 1.0 + 1.0 + 0.0) / 4)
    # a batch whose samples all lack acc reports none (not a division by zero)
    only_gsm8k = to_batch(scored_samples(ROWS[2:]), pad_token_id=0)
    assert "acc" not in only_gsm8k
    add_advantages(only_gsm8k, cfg.algorithm, kl_coef=0.0)
    assert "reward/acc" not in batch_metrics(only_gsm8k, cfg)


def test_present_mean():
    assert present_mean([True, None, False, None, True, True]) == 0.75
    assert present_mean([None, None]) is None and present_mean([]) is None


class _Tokenizer:
    pad_token_id = 0


class _Rollout:
    """Hands validate() the prepared samples and scores them with the reward, as Rollout does."""

    tokenizer = _Tokenizer()

    def __init__(self, samples):
        self.samples = samples

    def sample(self, prompts, sampling, key):
        return self.samples

    def score(self, samples, reward):
        for s, result in zip(samples, reward([s.text for s in samples], [s.fields for s in samples],
                                             [len(s.response_ids) for s in samples]), strict=True):
            s.fields.update(result)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0]])
def test_validation_metrics_of_mixed_sources(monkeypatch, order):
    rows = [ROWS[i] for i in order]
    samples = [Sample([1, 2], [3, 4, 5], [-0.5] * 3, [1] * 3, text, "stop",
                      {"uid": uid, "data_source": source, "ground_truth": truth, "extra_info": {}})
               for uid, source, truth, text in rows]
    monkeypatch.setattr(validation, "in_order", lambda *args: [None])  # one round: _Rollout ignores the prompts
    cfg = load_config(None, ["rollout.val_sampling.n=2"], check_files=False)
    reward = Reward(RewardConfig(None, {}, OverlongBufferConfig(False, 4, 1.0)), max_response_length=16)
    out = validation.validate(_Rollout(samples), list(range(2)), reward, cfg)
    assert out == {
        "val/math_dapo/reward_mean": 0.0, "val/math_dapo/acc": 0.5, "val/math_dapo/pass@2": 1.0,
        "val/math_dapo/response_length_mean": 3.0,
        "val/openai/gsm8k/reward_mean": 0.5, "val/openai/gsm8k/response_length_mean": 3.0,
    }


def test_validation_accuracy_counts_only_the_samples_that_report_it(monkeypatch, tmp_path):
    """A custom function that reports acc for some samples of a source only: acc and pass@n over those samples."""
    (tmp_path / "reward.py").write_text(
        "def sometimes(solution_str, ground_truth, **_):\n"
        "    right = float(solution_str == ground_truth)\n"
        "    return right if solution_str.startswith('plain') else {'score': right, 'acc': bool(right)}\n")
    rows = [("a", "x"), ("a", "y"), ("b", "plain"), ("b", "z")]  # acc reported: a True, a False, b False
    samples = [Sample([1], [2], [-0.5], [1], text, "stop", {"uid": uid, "data_source": "s", "ground_truth": truth,
                                                          "extra_info": {}})
               for (uid, text), truth in zip(rows, ["x", "x", "plain", "x"])]
    monkeypatch.setattr(validation, "in_order", lambda *args: [None])
    cfg = load_config(None, ["rollout.val_sampling.n=2"], check_files=False)
    reward = Reward(RewardConfig(f"{tmp_path / 'reward.py'}:sometimes", {}, OverlongBufferConfig(False, 4, 1.0)),
                    max_response_length=16)
    out = validation.validate(_Rollout(samples), list(range(2)), reward, cfg)
    assert out["val/s/reward_mean"] == 0.5
    assert out["val/s/acc"] == pytest.approx(1 / 3)
    assert out["val/s/pass@2"] == 0.5  # a solved (x), b's one reporting sample (z) not

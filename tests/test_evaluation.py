"""What a run reports about learning: collapse metrics and the no-signal warning, `rlpost eval` (accuracy through the
trainer's validation code) and `rlpost plot`."""

import json
import logging
import subprocess
import sys

import pytest
import torch
from PIL import Image

from rlpost.batch import Batch
from rlpost.data.io import write_rows
from rlpost.data.preprocess.arithmetic import make_row
from rlpost.trainer.plots import PANELS, plot_run
from rlpost.trainer.step_metrics import SignalWatch, collapse_metrics


def _batch(scores_by_group: list[list[float]], advantages: list[float], texts: list[str]) -> Batch:
    uids = [f"u{g}" for g, scores in enumerate(scores_by_group) for _ in scores]
    scores = [s for group in scores_by_group for s in group]
    n = len(scores)
    mask = torch.tensor([[0, 1, 1, 0]] * n, dtype=torch.float32)
    adv = torch.tensor(advantages)[:, None] * mask
    return Batch(tensors={"advantages": adv, "loss_mask": mask},
                 fields={"uid": uids, "score": scores, "response_text": texts})


def test_flat_groups_give_1_and_zero_advantages_are_counted():
    flat = _batch([[0.0, 0.0], [1.0, 1.0]], [0.0, 0.0, 0.0, 0.0], ["#### 6", "#### 6", "7", "7"])
    assert collapse_metrics(flat) == {"collapse/flat_group_frac": 1.0, "collapse/zero_adv_token_frac": 1.0,
                                      "collapse/distinct_response_frac": 0.5}
    mixed = _batch([[0.0, 1.0], [1.0, 1.0]], [-1.0, 1.0, 0.0, 0.0], ["a", "b", "c", "d"])
    assert collapse_metrics(mixed) == {"collapse/flat_group_frac": 0.5, "collapse/zero_adv_token_frac": 0.5,
                                       "collapse/distinct_response_frac": 1.0}


def test_the_no_signal_warning_comes_after_the_configured_flat_steps_and_resets(caplog):
    watch = SignalWatch(3)
    flat, varied = {"collapse/flat_group_frac": 1.0, "reward/mean": 0.1}, {"collapse/flat_group_frac": 0.5}
    with caplog.at_level(logging.WARNING, logger="rlpost.trainer.step_metrics"):
        said = [watch.update(step, m) for step, m in enumerate([flat, flat, varied, flat, flat, flat, flat], 1)]
    assert said[:6] == [None] * 5 + [said[5]] and said[5] is not None and said[6] is not None
    assert "step 6: no learning signal for 3 steps in a row" in said[5] and "reward 0.100" in said[5]
    assert [r.message for r in caplog.records] == [said[5], said[6]]
    assert SignalWatch(0).update(1, flat) is None


def test_rlpost_eval_scores_a_model_as_hand_scored(tmp_path):
    """A scripted policy always answers "The answer is 7"; of the six held-out problems three have 7 for answer (one
    asked as the echo-prone "0 + 7 ="), so accuracy is 3/6 greedy, and pass@2 the same (the policy never varies)."""
    from rlpost.testing.tiny_models import make_scripted_checkpoint

    model = make_scripted_checkpoint(tmp_path / "scripted", ["The answer is ", "7"])
    problems = [("3 + 4 =", "7"), ("9 - 2 =", "7"), ("1 + 1 =", "2"), ("0 + 7 =", "7"), ("5 - 8 =", "-3"),
                ("2 + 2 + 2 =", "6")]
    data = write_rows([make_row(f"State the final answer to the following arithmetic problem: {q}", a, i, "test")
                       for i, (q, a) in enumerate(problems)], tmp_path / "test.jsonl")
    out = tmp_path / "eval.json"
    common = [sys.executable, "-m", "rlpost.cli", "eval", "--data", str(data), "--out", str(out)]
    subprocess.run(common + [str(model), "rollout.dtype=float32"], check=True, capture_output=True)
    greedy = json.loads(out.read_text())
    subprocess.run(common + ["--n", "2", "--temperature", "1.0", str(model), "rollout.dtype=float32"], check=True,
                   capture_output=True)
    sampled = json.loads(out.read_text())
    key = "val/reasoning_gym/chain_sum"
    assert greedy["metrics"][f"{key}/acc"] == pytest.approx(3 / 6) and greedy["prompts"] == 6
    assert (greedy["n"], greedy["temperature"], greedy["model"]) == (1, 0.0, str(model))
    assert sampled["metrics"][f"{key}/pass@2"] == pytest.approx(3 / 6) and sampled["n"] == 2


def test_eval_finds_a_runs_latest_checkpoint_export(tmp_path):
    from rlpost.trainer.checkpoints import STATE
    from rlpost.trainer.evaluate import resolve_model

    for step in (2, 5):
        directory = tmp_path / "run" / "checkpoints" / f"step_{step}"
        (directory / "actor_hf").mkdir(parents=True)
        (directory / STATE).write_text("{}")
    (tmp_path / "run" / "checkpoints" / "step_9" / "actor_hf").mkdir(parents=True)  # incomplete: no state
    assert resolve_model(str(tmp_path / "run")) == tmp_path / "run" / "checkpoints" / "step_5" / "actor_hf"
    assert resolve_model(str(tmp_path / "run" / "checkpoints" / "step_2")).name == "actor_hf"


def test_rlpost_plot_writes_one_png_per_panel(tmp_path):
    rows = [{"step": 0, "val/x/acc": 0.1}] + [
        {"step": s, "reward/mean": 0.1 * s, "response_length/mean": 20.0 - s, "actor/entropy": 1.0 / s,
         "collapse/flat_group_frac": 0.5, "timing_s/gen": 3.0, "timing_s/update_actor": 9.0} for s in (1, 2, 3)]
    rows.append({"step": 3, "val/x/acc": 0.4})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_run(tmp_path)
    assert [p.name for p in written] == [f"{name}.png" for name in PANELS]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (600, 360)
    result = subprocess.run([sys.executable, "-m", "rlpost.cli", "plot", str(tmp_path)], capture_output=True,
                            text=True, check=True)
    assert result.stdout.count("wrote") == len(PANELS)

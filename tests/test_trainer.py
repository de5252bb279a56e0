"""The trainer end to end on a tiny random model with Ray on this machine: actor (tp, pp, dp) = (2, 2, 1) and
infer_tp 2 in colocated and split placement; a run killed after a checkpoint resumes to the same metrics, each
step logged once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rlpost.testing.rewards
from rlpost.testing.runs import make_tiny_run

REWARD = f"reward.custom_function={rlpost.testing.rewards.__file__}:share_of_a"


def read_metrics(run_root: Path, experiment: str) -> dict[int, dict]:
    path = run_root / "runs" / "rlpost" / experiment / "metrics.jsonl"
    return {m["step"]: m for m in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("trainer"))


@pytest.mark.parametrize("placement", ["colocated", "split"])
def test_tp2_pp2_actor_with_infer_tp2_trains_two_steps(tiny, placement):
    from rlpost.config import load_config
    from rlpost.trainer.ppo import PPOTrainer

    devices = ["cluster.n_gpus_per_node=4"] if placement == "colocated" else [
        "cluster.n_gpus_per_node=6", "cluster.placement=split", "cluster.rollout_n_gpus=2"]
    cfg = load_config(None, tiny["overrides"] + devices + [
        REWARD, "actor.tp=2", "actor.pp=2", "rollout.infer_tp=2", "actor.micro_batch_size=2",
        "trainer.total_training_steps=2", f"trainer.experiment_name={placement}"])
    trainer = PPOTrainer(cfg)
    try:
        assert len(trainer.placement.server_urls) == (2 if placement == "colocated" else 1)
        trainer.fit()
    finally:
        trainer.close()
    metrics = read_metrics(Path(cfg.trainer.output_dir).parent, placement)
    assert sorted(metrics) == [1, 2]
    for m in metrics.values():
        assert m["reward/std"] > 0 and m["actor/grad_norm"] > 0 and m["response_length/mean"] > 0
    # step 2 samples from the servers after the first update: their log-probs match the updated actor's only if
    # the resharded weights arrived (an update at lr 1e-3 moves log-probs by far more than this)
    assert metrics[2]["actor/rollout_logprob_diff_max"] < 1e-4
    run = Path(cfg.trainer.output_dir) / "rlpost" / placement
    assert (run / "checkpoints" / "step_000002" / "trainer_state.json").is_file()


def _train(tiny, experiment: str, extra: list[str]) -> subprocess.Popen:
    recipe = Path(tiny["model"]).parent / "recipe.yaml"
    recipe.write_text(f"trainer:\n  experiment_name: {experiment}\n")
    cmd = [sys.executable, "-m", "rlpost.cli", "train", str(recipe), *tiny["overrides"], REWARD,
           "trainer.total_training_steps=4", "trainer.save_every=1", "trainer.keep_last=5", *extra]
    log = open(Path(tiny["model"]).parent / f"{experiment}.log", "a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_killed_run_resumes_to_the_same_metrics(tiny):
    assert _train(tiny, "straight", []).wait(timeout=600) == 0
    straight = read_metrics(Path(tiny["model"]).parent, "straight")
    # a clean console: the workers' library warnings (megatron's, torch's) are in the run's warnings.log instead
    console = (Path(tiny["model"]).parent / "straight.log").read_text()
    assert "Warning" not in console and "(TrainWorker" not in console, console[:2000]
    run = Path(tiny["model"]).parent / "runs" / "rlpost" / "straight"
    assert "TrainWorker rank 0: " in (run / "warnings.log").read_text()
    assert "saved checkpoint of step 4" in (run / "rlpost.log").read_text()
    run = Path(tiny["model"]).parent / "runs" / "rlpost" / "killed"
    process = _train(tiny, "killed", [])
    deadline = time.monotonic() + 600
    while not (run / "checkpoints" / "step_000002").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = {int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*")}
    assert _train(tiny, "killed", ["trainer.resume=auto"]).wait(timeout=600) == 0
    resumed = read_metrics(Path(tiny["model"]).parent, "killed")
    # one history: the steps the killed run logged after its checkpoint were dropped, not logged twice
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    first = max(done) + 1
    assert first <= 4
    for key in ("reward/mean", "reward/std", "response_length/mean", "actor/pg_loss", "actor/grad_norm",
                "actor/entropy"):
        assert resumed[first][key] == pytest.approx(straight[first][key], rel=1e-5, abs=1e-7), key

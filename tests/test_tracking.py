"""The metric sinks write what they were given: JSONL lines, TensorBoard scalars (read back with TensorBoard's
own reader) and an offline W&B run (its summary, and the values in the run file `wandb sync` uploads)."""

import json
import os
import time

from rlpost.trainer.tracking import Tracker

STEPS = {1: {"reward/mean": 0.25, "actor/grad_norm": 1.5}, 2: {"reward/mean": 0.75, "actor/grad_norm": 0.5}}


def test_jsonl_and_tensorboard_hold_every_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = Tracker(["jsonl", "tensorboard"], tmp_path, 2, 0, {}, "p", "e")
    for step, metrics in STEPS.items():
        tracker.log(metrics, step)
    tracker.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": s, **m} for s, m in STEPS.items()]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("reward/mean", "actor/grad_norm"):
        assert [(e.step, e.value) for e in events.Scalars(key)] == [(s, m[key]) for s, m in STEPS.items()]


def test_wandb_runs_offline_with_config_and_history(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(["wandb"], tmp_path, 2, 0, {"actor": {"optim": {"lr": 1e-5}}}, "proj", "exp")
    assert os.environ["WANDB_MODE"] == "offline"
    run = tracker._wandb
    for step, metrics in STEPS.items():
        tracker.log(metrics, step)
    assert run.config["actor"]["optim"]["lr"] == 1e-5 and run.project == "proj" and run.name == "exp"
    assert run.summary["reward/mean"] == 0.75 and run.summary["_step"] == 2
    tracker.close()
    # the offline run file (synced later by `wandb sync`) holds every logged value; wandb's service process may still
    # be writing it when finish returns on a loaded machine, so it gets a few seconds
    [record] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 15
    while True:
        data = record.read_bytes()
        complete = all(key.encode() in data for key in STEPS[1]) and b"0.25" in data and b"0.75" in data
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert complete


def test_console_shows_short_names(tmp_path, capsys):
    tracker = Tracker(["console"], tmp_path, 2, 0, {}, "p", "e")
    tracker.log({"reward/mean": 0.5, "response_length/mean": 12.0, "val/gsm8k/acc": 0.25, "other": 1.0}, 1)
    tracker.close()
    out = capsys.readouterr()
    line = next(text for text in (out.out + out.err).splitlines() if text.startswith("step 1:"))
    assert line == "step 1: reward=0.5 response_len=12 val/gsm8k/acc=0.25"

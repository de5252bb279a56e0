"""Security suite, trainer: a run's files describe one history (issue 18, finding 9). The end-to-end kill-and-resume
run is tests/test_trainer.py::test_killed_run_resumes_to_the_same_metrics, which checks the same on a real run."""

import json

from rlpost.trainer.tracking import Tracker, drop_steps_after


def test_resume_drops_the_killed_runs_later_steps(tmp_path):
    """A run killed after its checkpoint of step 3 had logged steps 4 and 5 (the last line half written); resumed
    from step 3 it logs 4 and 5 again, and each file holds steps 1..5 once, 4 and 5 from the resumed run."""
    killed = Tracker(["jsonl"], tmp_path, 5, 0, {}, "p", "e")
    for step in range(1, 6):
        killed.log({"reward/mean": 0.0}, step)
        killed.log_samples([{"output": "killed"}], step)
    killed.close()
    for name in ("metrics.jsonl", "samples.jsonl"):
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 6, "rew')
    drop_steps_after(tmp_path, 3)
    resumed = Tracker(["jsonl"], tmp_path, 5, 3, {}, "p", "e")
    for step in (4, 5):
        resumed.log({"reward/mean": 1.0}, step)
        resumed.log_samples([{"output": "resumed"}], step)
    resumed.close()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [{"step": s, "reward/mean": 0.0 if s <= 3 else 1.0} for s in range(1, 6)]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples == [{"step": s, "output": "killed" if s <= 3 else "resumed"} for s in range(1, 6)]

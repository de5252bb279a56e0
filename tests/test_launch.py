"""Launch scripts: shellcheck on every script, and the SLURM batch script run end to end on this machine with SLURM
faked (its variables, `scontrol show hostnames`, an `srun` that runs its command here, an `sbatch` that records):
a real two-node Ray cluster comes up through the script's own code, trains one step, and is torn down with no
process left behind, also when the job is cancelled mid-training; submit.sh refuses a config typo before submitting."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlpost.net import free_port
from rlpost.testing.runs import make_tiny_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("launch/**/*.sh"), *ROOT.glob("launch/**/*.sbatch"), *ROOT.glob("scripts/*.sh"),
                  ROOT / ".ci" / "run"])
FAKE_SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: $*" >&2; exit 1; }
tr ',' '\\n' <<< "$3"
"""
FAKE_SRUN = """#!/usr/bin/env bash
# runs the step here; records which node it was meant for
while [ $# -gt 0 ]; do
  case $1 in
    -w|--nodelist) echo "$2 $3" >> "$FAKE_SRUN_LOG"; shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script):
    result = subprocess.run([Path(sys.executable).parent / "shellcheck", "-x", str(script)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _ray_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "raylet|gcs_server|ray start"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _assert_no_ray_left(within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes() == []


def _fake_slurm_env(tmp_path: Path) -> dict:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN),
                       ("sbatch", '#!/usr/bin/env bash\necho "$@" > "$FAKE_SRUN_LOG.sbatch"\n')):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{fake}:{Path(sys.executable).parent}:{env['PATH']}", SLURM_JOB_ID="4243",
               SLURM_JOB_NODELIST="node-a,node-b", SLURM_GPUS_ON_NODE="1", SLURM_CPUS_ON_NODE="2",
               RLPOST_RAY_PORT=str(free_port()), RLPOST_RAY_JOIN_TIMEOUT="120", FAKE_SRUN_LOG=str(tmp_path / "srun"))
    return env


def test_slurm_script_brings_up_ray_trains_and_tears_down(tmp_path):
    assert _ray_processes() == [], "a Ray cluster is already running here"
    run = make_tiny_run(tmp_path / "run")
    env = _fake_slurm_env(tmp_path)
    overrides = [*run["overrides"], "trainer.total_training_steps=1", "actor.micro_batch_size=1",
                 "reward.overlong_buffer.enable=false"]
    result = subprocess.run(["bash", "launch/slurm/rlpost.sbatch", "recipes/gsm8k/quickstart.yaml", *overrides],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all 2 Ray nodes joined" in result.stdout
    metrics_file = tmp_path / "run" / "runs" / "rlpost" / "gsm8k-quickstart" / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    steps = (tmp_path / "srun").read_text().split()
    assert steps.count("node-a") >= 2 and steps.count("node-b") >= 2  # ray start and ray stop on each node
    _assert_no_ray_left()


def test_a_cancelled_job_tears_the_cluster_down(tmp_path):
    """scancel sends SIGTERM to the batch script: Ray must stop on every node even while training runs."""
    import signal

    assert _ray_processes() == [], "a Ray cluster is already running here"
    run = make_tiny_run(tmp_path / "run")
    proc = subprocess.Popen(["bash", "launch/slurm/rlpost.sbatch", "recipes/gsm8k/quickstart.yaml", *run["overrides"],
                             "actor.micro_batch_size=1", "reward.overlong_buffer.enable=false"], cwd=ROOT,
                            env=_fake_slurm_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "all 2 Ray nodes joined" in line:
            break
    time.sleep(3)  # training has started
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    _assert_no_ray_left()


def test_submit_checks_the_config_before_submitting(tmp_path):
    env = _fake_slurm_env(tmp_path)
    ok = subprocess.run(["bash", "launch/slurm/submit.sh", "recipes/gsm8k/quickstart.yaml", "3", "trainer.seed=7"],
                        cwd=ROOT, env={**env, "SBATCH_ARGS": "--partition=gpu --time=1:00:00"}, capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "srun.sbatch").read_text().split() == [
        "--nodes=3", "--partition=gpu", "--time=1:00:00", "launch/slurm/rlpost.sbatch", "recipes/gsm8k/quickstart.yaml",
        "trainer.seed=7"]
    (tmp_path / "srun.sbatch").unlink()
    typo = subprocess.run(["bash", "launch/slurm/submit.sh", "recipes/gsm8k/quickstart.yaml", "3", "trainer.sed=7"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert typo.returncode != 0 and "trainer.sed" in typo.stderr and not (tmp_path / "srun.sbatch").exists()

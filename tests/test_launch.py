"""Launch scripts: shellcheck on every script, and the SLURM batch script run end to end on this machine with SLURM
faked (its variables, `scontrol show hostnames`, and an `srun` that runs its command here): a real two-node Ray
cluster comes up through the script's own code, trains one step, and is torn down with no process left behind."""

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


def test_slurm_script_brings_up_ray_trains_and_tears_down(tmp_path):
    assert _ray_processes() == [], "a Ray cluster is already running here"
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    run = make_tiny_run(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{fake}:{Path(sys.executable).parent}:{env['PATH']}", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="node-a,node-b", SLURM_GPUS_ON_NODE="1", SLURM_CPUS_ON_NODE="2",
               RLPOST_RAY_PORT=str(free_port()), RLPOST_RAY_JOIN_TIMEOUT="120", FAKE_SRUN_LOG=str(tmp_path / "srun"))
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
    deadline = time.monotonic() + 30
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes() == []

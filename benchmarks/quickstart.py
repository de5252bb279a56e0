"""Claim (issue 6): the quickstart recipe trains for its configured steps in under 20 minutes on a 2-core CPU
machine, and the mean reward of the training batches rises (the last 3 steps against the first 3).

Runs `rlpost train recipes/gsm8k/quickstart.yaml` exactly as the README does (into a temporary run directory),
prints the per-step table, the wall time against the 20-minute budget and the reward of the last 3 steps against
the first 3, and exits 1 when either claim fails.

    python benchmarks/quickstart.py      # needs data/gsm8k (rlpost preprocess gsm8k --out-dir data/gsm8k)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 20 * 60
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "gsm8k" / "quickstart.yaml"


def main() -> int:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rlpost.cli", "train", str(RECIPE), f"trainer.output_dir={out}",
                        "trainer.resume=disable"], check=True)
        wall = time.perf_counter() - start
        [metrics_file] = Path(out).glob("*/*/metrics.jsonl")
        steps = [m for m in map(json.loads, metrics_file.read_text().splitlines()) if m["step"] > 0]
    print(f"\n{'step':>4} {'reward':>8} {'resp len':>9} {'clipped':>8} {'s/step':>7}")
    for m in steps:
        print(f"{m['step']:>4} {m['reward/mean']:>8.3f} {m['response_length/mean']:>9.1f} "
              f"{m['response_length/clip_ratio']:>8.2f} {m['timing_s/step']:>7.1f}")
    first = sum(m["reward/mean"] for m in steps[:3]) / 3
    last = sum(m["reward/mean"] for m in steps[-3:]) / 3
    print(f"\nwall time {wall:.0f} s = {wall / BUDGET_S:.2f} of the {BUDGET_S} s budget")
    print(f"mean reward, first 3 steps {first:+.3f}, last 3 steps {last:+.3f} (gain {last - first:+.3f})")
    ok = wall < BUDGET_S and last > first
    print("claim holds" if ok else "claim FAILS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

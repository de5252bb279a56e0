"""Claim (issue 7): the multi-turn recipe completes its 2 training steps on a 2-core CPU machine, with tool calls
present in the logged samples.

Runs `rlpost train recipes/gsm8k/multiturn.yaml` as its README does (into a temporary run directory), prints the
per-step table and how many logged samples called the tool or got a simulated user's reply, and exits 1 unless
every step ran, the final checkpoint exists and at least one logged sample made a tool call.

    python benchmarks/multiturn_recipe.py   # needs requirements/assets-qwen-nodeps.txt installed and data/gsm8k_mt
                                            # (rlpost preprocess gsm8k --out-dir data/gsm8k_mt --multiturn)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "gsm8k" / "multiturn.yaml"
STEPS = 2


def main() -> int:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rlpost.cli", "train", str(RECIPE), f"trainer.output_dir={out}",
                        "trainer.resume=disable", f"trainer.total_training_steps={STEPS}"], check=True)
        wall = time.perf_counter() - start
        [run] = Path(out).glob("*/*/")
        steps = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if m["step"] > 0]
        samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
        checkpoint = any((run / "checkpoints").glob(f"step_*{STEPS}"))
    print(f"\n{'step':>4} {'reward':>8} {'tool calls':>11} {'turns':>6} {'resp len':>9} {'s/step':>7}")
    for m in steps:
        print(f"{m['step']:>4} {m['reward/mean']:>8.3f} {m['multi_turn/tool_calls_mean']:>11.2f} "
              f"{m['multi_turn/num_turns_mean']:>6.2f} {m['response_length/mean']:>9.1f} {m['timing_s/step']:>7.1f}")
    called = sum(s["tool_calls"] > 0 for s in samples)
    answered = sum("<tool_response>" not in s["response_text"] and s["num_turns"] > 2 for s in samples)
    print(f"\nwall time {wall:.0f} s; logged samples: {len(samples)}, with tool calls: {called}, "
          f"with simulated-user turns only: {answered}; final checkpoint: {checkpoint}")
    ok = [m["step"] for m in steps] == list(range(1, STEPS + 1)) and checkpoint and called > 0
    print("claim holds" if ok else "claim FAILS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

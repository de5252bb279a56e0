"""Claim (issue 17): the README's main command trains a model that learnt something real: greedy accuracy on at least
200 held-out problems it never trained on rises by at least 10 points absolute, and the run (data preparation and
training, after the install) ends within 15 minutes on a 2-core CPU machine.

Runs the README's first command after its install step (`rlpost preprocess arithmetic`, then `rlpost train
recipes/arithmetic/quickstart.yaml`, into a temporary output directory), then `rlpost eval` on the base model and on
the run's final checkpoint: the same validation code, outside the trainer, which must agree with the trainer's own
before/after numbers. Prints the per-step table with the collapse signals, the accuracy before and after (the
baseline is the base model, measured in the same run) and the last step's logged samples; exits 1 when a claim fails.

    python benchmarks/quickstart.py [--plots-to DIR]   # DIR: keep the run's curves (rlpost plot's PNGs)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 15 * 60
MIN_GAIN = 0.10
MIN_HELD_OUT = 200
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "arithmetic" / "quickstart.yaml"
ACC = "val/reasoning_gym/chain_sum/acc"


def rlpost(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rlpost.cli", *args], check=True, cwd=ROOT)


def evaluate(model: str, data: Path, out: Path) -> dict:
    rlpost("eval", "--recipe", str(RECIPE), "--data", str(data), "--out", str(out), model)
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plots-to", default=None, help="copy the run's PNG curves into this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        rlpost("preprocess", "arithmetic", "--out-dir", "data/arithmetic")
        rlpost("train", str(RECIPE), f"trainer.output_dir={tmp}", "trainer.resume=disable")
        wall = time.perf_counter() - start
        [run] = [p.parent for p in Path(tmp).glob("*/*/metrics.jsonl")]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
        test = ROOT / "data" / "arithmetic" / "test.parquet"
        base = evaluate("smollm2-135m-instruct", test, Path(tmp) / "base.json")
        final = evaluate(str(run), test, Path(tmp) / "final.json")
        if args.plots_to:
            shutil.copytree(run / "plots", args.plots_to, dirs_exist_ok=True)
    steps = [r for r in rows if "reward/mean" in r]
    print(f"\n{'step':>4} {'reward':>7} {'flat groups':>11} {'zero-adv tok':>12} {'distinct':>8} {'resp len':>8} "
          f"{'entropy':>7} {'s/step':>6}")
    for r in steps:
        print(f"{r['step']:>4} {r['reward/mean']:>7.3f} {r['collapse/flat_group_frac']:>11.2f} "
              f"{r['collapse/zero_adv_token_frac']:>12.2f} {r['collapse/distinct_response_frac']:>8.2f} "
              f"{r['response_length/mean']:>8.1f} {r.get('actor/entropy', float('nan')):>7.3f} "
              f"{r['timing_s/step']:>6.1f}")
    val = [r for r in rows if ACC in r]
    before, after = val[0][ACC], val[-1][ACC]
    held_out = base["prompts"]
    print(f"\nheld-out problems: {held_out} (greedy, none in the training set)")
    print(f"{'':>22} {'trainer validation':>18} {'rlpost eval':>11}")
    print(f"{'base model (baseline)':>22} {before:>18.3f} {base['metrics'][ACC]:>11.3f}")
    print(f"{'after training':>22} {after:>18.3f} {final['metrics'][ACC]:>11.3f}")
    print(f"gain {after - before:+.3f} ({(after - before) * 100:+.1f} points, {after / max(before, 1e-9):.2f}x the "
          f"baseline); wall time {wall:.0f} s = {wall / BUDGET_S:.2f} of the {BUDGET_S} s budget")
    print("\nlast step's logged samples:")
    for s in samples[-4:]:
        print(f"  score {s['score']:.0f}: {s['response_text']!r}")
    checks = {"gain >= 10 points": after - before >= MIN_GAIN, f">= {MIN_HELD_OUT} held-out": held_out >= MIN_HELD_OUT,
              "within 15 minutes": wall < BUDGET_S,
              "rlpost eval agrees with the trainer": (abs(base["metrics"][ACC] - before) < 1e-9
                                                      and abs(final["metrics"][ACC] - after) < 1e-9)}
    for name, ok in checks.items():
        print(f"{'ok    ' if ok else 'FAILED'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

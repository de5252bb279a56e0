"""Metric sinks chosen by trainer.logger: console (a progress bar with ETA over the run's steps), a JSONL file,
TensorBoard and Weights & Biases (offline: runs sync later with `wandb sync`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rlpost.atomic import atomic_file

METRICS, SAMPLES = "metrics.jsonl", "samples.jsonl"
CONSOLE_KEYS = {"reward/mean": "reward", "reward/acc": "acc", "response_length/mean": "response_len",
                "actor/pg_loss": "pg_loss", "actor/kl_ref": "kl_ref", "actor/grad_norm": "grad_norm",
                "timing_s/step": "step_s"}


class Tracker:
    def __init__(self, backends: list[str], run_dir: Path, total_steps: int, first_step: int, config: dict,
                 project: str, experiment: str):
        self.backends, self.run_dir = list(backends), Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._bar = self._jsonl = self._tb = self._wandb = None
        if "console" in backends:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=first_step, desc=experiment, unit="step", dynamic_ncols=True)
        if "jsonl" in backends:
            self._jsonl = open(self.run_dir / METRICS, "a")
        if "tensorboard" in backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("trainer.logger has 'tensorboard': pip install tensorboard") from e
            # purge_step: TensorBoard hides what a killed run logged after the checkpoint this run resumes from
            purge = first_step + 1 if first_step else None
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        if "wandb" in backends:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("trainer.logger has 'wandb': pip install wandb") from e
            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(project=project, name=experiment, config=config, dir=str(self.run_dir),
                                     resume="allow")

    def log(self, metrics: dict, step: int) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step, commit=True)  # now, not when the next step arrives
        if self._bar is not None:
            shown = {CONSOLE_KEYS.get(k, k): v for k, v in metrics.items() if k in CONSOLE_KEYS or k.startswith("val/")}
            self._bar.write(f"step {step}: " + " ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
            self._bar.update(max(0, step - self._bar.n))

    def log_samples(self, rows: list[dict], step: int) -> None:
        """Rows to samples.jsonl beside metrics.jsonl (jsonl logger only)."""
        if self._jsonl is None or not rows:
            return
        with open(self.run_dir / SAMPLES, "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def progress(self, desc: str, total: int):
        """A transient bar with ETA under the run's bar for a long phase (console only, else None)."""
        if self._bar is None:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, position=1, dynamic_ncols=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def drop_steps_after(run_dir: Path, step: int) -> None:
    """Keep only the rows of steps <= `step` in the run's JSONL files, so that a run resumed from the checkpoint of
    `step` logs each step once: a run killed after that checkpoint had already logged some of the steps the resumed
    one redoes (step -1: a run starting afresh keeps none). A row that does not parse (the half-written last line of
    a killed run) goes too."""
    for name in (METRICS, SAMPLES):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        with open(path, "rb") as src, atomic_file(path) as tmp, open(tmp, "wb") as dst:
            for line in src:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                    dst.write(line.rstrip(b"\n") + b"\n")  # a kill just before the newline leaves none


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)

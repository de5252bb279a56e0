"""`rlpost plot RUN_DIR`: the run's curves from its metrics.jsonl as PNG files in RUN_DIR/plots/, one per panel;
`rlpost train` writes them when a run ends."""

from __future__ import annotations

import json
import re
from pathlib import Path

METRICS = "metrics.jsonl"
# panel -> (title, y label, the metric keys it draws: a regular expression matched against whole keys)
PANELS = {
    "reward": ("Training reward", "mean over the batch", r"reward/(mean|acc)"),
    "accuracy": ("Held-out accuracy", "accuracy (validation)", r"val/.+/(acc|pass@\d+)"),
    "response_length": ("Response length", "tokens", r"response_length/(mean|min|max)"),
    "entropy": ("Policy entropy", "nats per token", r"actor/entropy"),
    "kl": ("KL to the reference and between updates", "KL", r"actor/(kl_ref|kl_loss|ppo_kl)"),
    "collapse": ("Collapse signals", "share", r"collapse/.+"),
    "timing": ("Seconds per phase", "seconds", r"timing_s/.+"),
}


def _series(rows: list[dict], pattern: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and re.fullmatch(pattern, key):
                steps, values = out.setdefault(key, ([], []))
                steps.append(row["step"])
                values.append(float(value))
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """One PNG per panel in PANELS (a panel without data says so); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    source = run_dir / METRICS
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: plots need the jsonl logger (trainer.logger)")
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, (title, ylabel, wanted) in PANELS.items():
        fig, ax = plt.subplots(figsize=(6, 3.6))
        series = _series(rows, wanted)
        for key, (steps, values) in sorted(series.items()):
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        if series:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written

"""Run checkpoints: runs/<project>/<experiment>/checkpoints/step_<k>/ holds the workers' megatron checkpoints and
the driver's state (trainer_state.json, written last). A step directory is built under a .partial name and renamed
when complete, so a run killed mid-save leaves the previous checkpoint as the latest good one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

STATE = "trainer_state.json"
_STEP = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and (p / STATE).is_file()]
    return sorted(found)


def resume_path(resume: str, run_dir: Path) -> Path | None:
    """trainer.resume: 'disable' -> None; 'auto' -> the latest complete checkpoint, if any; else that path."""
    if resume == "disable":
        return None
    if resume == "auto":
        found = complete_checkpoints(checkpoint_root(run_dir))
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"trainer.resume = '{resume}' is not a complete checkpoint (no {STATE})")
    return path


def begin(run_dir: Path, step: int) -> Path:
    """A fresh .partial directory for step's checkpoint (a leftover from a killed save is removed)."""
    partial = checkpoint_root(run_dir) / f".step_{step:06d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def commit(partial: Path, step: int, state: dict, keep_last: int) -> Path:
    (partial / STATE).write_text(json.dumps(state, indent=1))
    final = partial.parent / f"step_{step:06d}"
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for _, old in complete_checkpoints(partial.parent)[:-keep_last]:
        shutil.rmtree(old)
    return final


def load_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE).read_text())

"""Run checkpoints: runs/<project>/<experiment>/checkpoints/step_<k>/ holds the workers' megatron checkpoints and
the driver's state (trainer_state.json). A step directory is built under a hidden name and renamed when complete
(rlpost.atomic), so a run killed mid-save leaves the previous checkpoint as the latest good one."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlpost.atomic import atomic_directory

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


@contextmanager
def checkpoint(run_dir: Path, step: int, keep_last: int) -> Iterator[Path]:
    """The directory to save step's checkpoint into; on leaving the block the caller has written STATE there, the
    directory replaces any earlier one of that step and only the newest keep_last complete checkpoints remain."""
    root = checkpoint_root(run_dir)
    with atomic_directory(root / f"step_{step:06d}", replace=True) as partial:
        yield partial
        if not (partial / STATE).is_file():
            raise RuntimeError(f"checkpoint of step {step} was not given its {STATE}")
    for _, old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)


def write_state(directory: Path, state: dict) -> None:
    (directory / STATE).write_text(json.dumps(state, indent=1))


def load_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE).read_text())

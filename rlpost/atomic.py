"""Writes that are never seen half done: a file or directory is built under a hidden sibling name and renamed into
place only once complete, so an interrupted build never leaves something later runs would take as finished, and a
failed one leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it replaces `path` (readable by all, like any file written with
    the default umask) when the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared file from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def partial_path(out: str | Path) -> Path:
    """The `.<name>.partial` sibling a directory is built in: known to every process that writes into it."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def fresh_partial(out: str | Path) -> Path:
    """The partial directory, empty (a leftover of a killed build is removed first)."""
    partial = partial_path(out)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def publish(partial: Path, out: str | Path, replace: bool = False) -> Path:
    """Rename a finished partial directory into place; with replace, an existing `out` goes first."""
    out = Path(out)
    if replace:
        shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


@contextmanager
def atomic_directory(out: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh partial directory to fill; it becomes `out` only if the block finishes."""
    partial = fresh_partial(out)
    try:
        yield partial
        publish(partial, out, replace)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

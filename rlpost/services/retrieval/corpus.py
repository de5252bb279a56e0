"""Search-R1's corpus format: JSONL, one {"id": str, "contents": str} object a line, `contents` holding the title in
double quotes on its first line and the passage after it. The file is read once at start-up (every row checked, the
bytes hashed for the index manifest); afterwards a document is read back from the file by its row, so the server
holds 16 bytes a row in memory, not the corpus's text."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CorpusError(ValueError):
    """A corpus file that cannot be served, naming the file and the line."""


@dataclass
class Corpus:
    path: Path
    starts: np.ndarray  # byte offset of each row's line
    ends: np.ndarray  # byte offset just past each row's line
    size: int  # bytes
    sha256: str

    def __len__(self) -> int:
        return len(self.starts)

    def documents(self, rows) -> list[dict]:
        """{"id", "contents"} of each row, read back from the file (os.pread: safe from any thread)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            out = []
            for row in rows:
                line = os.pread(fd, int(self.ends[row] - self.starts[row]), int(self.starts[row]))
                doc = json.loads(line)
                out.append({"id": doc["id"], "contents": doc["contents"]})
            return out
        finally:
            os.close(fd)

    def contents(self) -> Iterator[str]:
        """Every row's contents, in row order (one sequential read: what index builds use)."""
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["contents"]


def _row(raw: bytes, where: str) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where}: not valid UTF-8 (byte {e.start})") from e
    try:
        row = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CorpusError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(row, dict):
        raise CorpusError(f"{where}: expected a JSON object with 'id' and 'contents', got {type(row).__name__}")
    for key in ("id", "contents"):
        if not isinstance(row.get(key), str):
            found = "missing" if key not in row else f"a {type(row[key]).__name__}"
            raise CorpusError(f"{where}: '{key}' must be a string ({found})")
    if not row["id"]:
        raise CorpusError(f"{where}: 'id' is empty")


def load_corpus(path: str | Path) -> Corpus:
    """Check every row and note where each one lies; blank lines are skipped. Raises CorpusError naming the file and
    line of the first bad row, FileNotFoundError for a missing file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    digest, starts, ends, offset = hashlib.sha256(), [], [], 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            digest.update(line)
            if line.strip():
                _row(line, f"{path}:{lineno}")
                starts.append(offset)
                ends.append(offset + len(line))
            offset += len(line)
    if not starts:
        raise CorpusError(f"{path}: the corpus has no documents")
    return Corpus(path, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64), offset,
                  digest.hexdigest())

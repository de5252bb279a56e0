"""Row files: parquet (verl's format) and jsonl, read as lists of dicts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlpost.atomic import atomic_file

FORMATS = (".parquet", ".jsonl", ".json")


def _format(path: Path) -> str:
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: unsupported data file type '{path.suffix}'; expected one of {', '.join(FORMATS)}")
    return path.suffix


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file '{path}' does not exist")
    if fmt == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{path}: not a readable parquet file: {e}") from None
    if fmt == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a .json data file must hold a list of rows, got {type(rows).__name__}")
        return rows
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno}: not valid JSON: {e.msg}") from None
    return rows


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Atomic write; parquet keeps nested dicts as structs, as verl's preprocessing scripts produce."""
    path = Path(path)
    fmt = _format(path)
    with atomic_file(path) as tmp:
        if fmt == ".parquet":
            # every key of every row: Table.from_pylist takes the columns from the first row and drops the rest
            names = list(dict.fromkeys(k for r in rows for k in r))
            pq.write_table(pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in names}), tmp)
        else:
            with open(tmp, "w") as f:
                if fmt == ".json":
                    json.dump(rows, f)
                else:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return path

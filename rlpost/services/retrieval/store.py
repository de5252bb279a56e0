"""Where an index lives and whether it is current: `<corpus>.<retriever>/` beside the corpus, holding the index's own
files and a manifest.json written last. The manifest names the corpus by size and SHA-256 and the index's settings
(BM25 parameters, the embedding model), so an index built from another corpus or with other settings is rebuilt,
never silently reused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rlpost.atomic import atomic_directory
from rlpost.services.retrieval.corpus import Corpus

FORMAT = 1
MANIFEST = "manifest.json"


def index_dir(corpus: Corpus, retriever: str) -> Path:
    return corpus.path.with_name(f"{corpus.path.name}.{retriever}")


def expected_manifest(corpus: Corpus, retriever: str, settings: dict) -> dict:
    return {"format": FORMAT, "retriever": retriever,
            "corpus": {"file": corpus.path.name, "bytes": corpus.size, "sha256": corpus.sha256,
                       "documents": len(corpus)},
            "settings": settings}


def stale_reason(path: Path, expected: dict) -> str | None:
    """None when the index at `path` was built from this corpus with these settings, else why not."""
    try:
        found = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no saved index at {path}"
    except (OSError, ValueError) as e:
        return f"unreadable manifest {path / MANIFEST} ({e})"
    if not isinstance(found, dict):
        return f"unreadable manifest {path / MANIFEST}"
    for key in ("format", "retriever", "corpus", "settings"):
        if found.get(key) != expected[key]:
            what = "the corpus changed" if key == "corpus" else f"its {key} differ"
            return f"the saved index at {path} is stale: {what} (saved {found.get(key)}, now {expected[key]})"
    return None


def save(path: Path, write: Callable[[Path], None], manifest: dict) -> None:
    """`write(directory)` fills a fresh directory, the manifest goes in last, and only then does it replace `path`:
    a build that dies half way leaves the old index or none, never a half-written one that looks current."""
    with atomic_directory(path, replace=True) as partial:
        write(partial)
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

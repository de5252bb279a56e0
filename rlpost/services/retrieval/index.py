"""Open the index a server answers from: load the saved one when its manifest matches the corpus and settings, build
(and save) it otherwise."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rlpost.services.retrieval import store
from rlpost.services.retrieval.bm25 import BM25Index
from rlpost.services.retrieval.corpus import Corpus, load_corpus
from rlpost.services.retrieval.dense import DenseIndex
from rlpost.services.retrieval.encoder import Encoder

log = logging.getLogger(__name__)
RETRIEVERS = {"bm25": BM25Index, "dense": DenseIndex}


@dataclass
class OpenedIndex:
    index: BM25Index | DenseIndex
    corpus: Corpus
    retriever: str
    path: Path
    loaded: bool  # False: built now
    seconds: float  # to load it, or to build it (the embedding model's loading included)
    saved: bool = True

    def search(self, queries: list[str], k: int) -> list[list[tuple[dict, float]]]:
        """Each query's k best documents with their scores, best first: one index call for all the queries."""
        rows, scores = self.index.search(queries, k)
        docs = iter(self.corpus.documents(rows.reshape(-1).tolist()))
        return [[(next(docs), float(s)) for s in query_scores] for query_scores in scores.tolist()]

    def describe(self) -> str:
        if self.loaded:
            how = f"index loaded from {self.path} in {self.seconds:.3g} s"
        else:
            how = f"index built in {self.seconds:.3g} s, " + (f"saved to {self.path}" if self.saved else "not saved")
        return f"{self.retriever} over {len(self.corpus)} documents of {self.corpus.path}; {how}"


def open_index(corpus_path: str | Path, retriever: str = "bm25", rebuild: bool = False,
               encoder: Encoder | None = None) -> OpenedIndex:
    if retriever not in RETRIEVERS:
        raise ValueError(f"retriever '{retriever}' is not one of {', '.join(RETRIEVERS)}")
    kind = RETRIEVERS[retriever]
    settings = kind.default_settings()
    options = {"encoder": encoder} if kind is DenseIndex else {"settings": settings}
    corpus = load_corpus(corpus_path)
    path = store.index_dir(corpus, retriever)
    manifest = store.expected_manifest(corpus, retriever, settings)
    reason = "--rebuild" if rebuild else store.stale_reason(path, manifest)
    if reason is None:
        start = time.perf_counter()
        try:
            index = kind.load(path, **options)
            if len(index) != len(corpus):
                raise ValueError(f"it holds {len(index)} documents, the corpus {len(corpus)}")
            return OpenedIndex(index, corpus, retriever, path, True, time.perf_counter() - start)
        except Exception as e:  # a damaged or foreign index is rebuilt, not fatal
            reason = f"the saved index at {path} does not load ({type(e).__name__}: {e})"
            log.warning("%s", reason)
    log.info("building the %s index of %d documents: %s", retriever, len(corpus), reason)
    start = time.perf_counter()
    index = kind.build(corpus, **options)
    seconds = time.perf_counter() - start
    try:
        store.save(path, index.save, {**manifest, "build_seconds": round(seconds, 3)})
        saved = True
    except OSError as e:
        log.warning("could not save the index to %s (%s); serving it unsaved, the next start builds it again", path, e)
        saved = False
    return OpenedIndex(index, corpus, retriever, path, False, seconds, saved)

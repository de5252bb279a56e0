"""The dense index: every document's all-MiniLM-L6-v2 embedding in a faiss IndexFlatIP. Vectors are unit length, so
inner product is cosine similarity, and a flat index searches exhaustively: its answers are exact."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rlpost.services.retrieval.corpus import Corpus
from rlpost.services.retrieval.encoder import MAX_LENGTH, Encoder, model_id

log = logging.getLogger(__name__)
INDEX_FILE = "index.faiss"


def _faiss():
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs each CPU variant it tries
    try:
        import faiss
    except ImportError as e:
        raise ImportError("the dense retriever needs faiss-cpu: pip install -c constraints.txt -e '.[retrieval]'") \
            from e
    return faiss


class DenseIndex:
    def __init__(self, index, encoder: Encoder):
        self.index, self.encoder = index, encoder

    @staticmethod
    def default_settings() -> dict:
        return {"library": "faiss", "index": "IndexFlatIP", "model": model_id(), "max_length": MAX_LENGTH,
                "pooling": "mean", "normalized": True, "dtype": "float32"}

    @classmethod
    def build(cls, corpus: Corpus, encoder: Encoder | None = None) -> DenseIndex:
        encoder = encoder or Encoder()
        log.info("embedding %d documents with %s", len(corpus), model_id())
        return cls.from_embeddings(encoder.encode(list(corpus.contents()), progress=True), encoder)

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, encoder: Encoder) -> DenseIndex:
        index = _faiss().IndexFlatIP(embeddings.shape[1])
        index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        return cls(index, encoder)

    def save(self, directory: Path) -> None:
        _faiss().write_index(self.index, str(directory / INDEX_FILE))

    @classmethod
    def load(cls, directory: Path, encoder: Encoder | None = None) -> DenseIndex:
        index = _faiss().read_index(str(directory / INDEX_FILE))
        encoder = encoder or Encoder()
        if index.d != encoder.dim:
            raise ValueError(f"{directory / INDEX_FILE} holds {index.d}-dimensional vectors, the model makes "
                             f"{encoder.dim}")
        return cls(index, encoder)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def embeddings(self) -> np.ndarray:
        """The stored document vectors, (documents, dim): what exact brute-force search compares against."""
        return self.index.reconstruct_n(0, self.index.ntotal)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows (int64) and inner products (float32) of each query's k best documents, best first."""
        scores, rows = self.index.search(self.encoder.encode(queries), k)
        return rows.astype(np.int64), scores.astype(np.float32)

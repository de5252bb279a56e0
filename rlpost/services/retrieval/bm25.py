"""The sparse index: bm25s over each document's contents.

Scoring is Lucene's BM25 (bm25s method "lucene": idf = ln(1 + (N - df + 0.5) / (df + 0.5)), term weight
tf / (tf + k1 (1 - b + b |d| / avgdl))) with Pyserini's parameters k1 = 0.9, b = 0.4, the BM25 behind Search-R1's
sparse retriever. Tokens: lower-cased words of two or more letters or digits (scikit-learn's pattern), English stop
words removed, no stemming (Pyserini stems with Porter; this does not)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rlpost.services.retrieval.corpus import Corpus

SETTINGS = {"library": "bm25s", "method": "lucene", "k1": 0.9, "b": 0.4, "lower": True,
            "token_pattern": r"(?u)\b\w\w+\b", "stopwords": "en", "stemmer": None}


def _bm25s():
    try:
        import bm25s
    except ImportError as e:
        raise ImportError("the bm25 retriever needs bm25s: pip install -c constraints.txt -e '.[retrieval]'") from e
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every query without a known token
    return bm25s


def tokenize(texts: list[str], settings: dict | None = None) -> list[list[str]]:
    """The tokens BM25 sees, for documents and queries alike (tests give the same tokens to rank-bm25)."""
    settings = settings or SETTINGS
    return _bm25s().tokenize(texts, lower=settings["lower"], token_pattern=settings["token_pattern"],
                             stopwords=settings["stopwords"], return_ids=False, show_progress=False)


class BM25Index:
    def __init__(self, retriever, settings: dict):
        self.retriever, self.settings = retriever, settings

    @staticmethod
    def default_settings() -> dict:
        return dict(SETTINGS)

    @classmethod
    def build(cls, corpus: Corpus, settings: dict | None = None) -> BM25Index:
        settings = settings or cls.default_settings()
        bm25s = _bm25s()
        tokens = bm25s.tokenize(list(corpus.contents()), lower=settings["lower"],
                                token_pattern=settings["token_pattern"], stopwords=settings["stopwords"],
                                return_ids=True, show_progress=False)
        retriever = bm25s.BM25(method=settings["method"], k1=settings["k1"], b=settings["b"])
        retriever.index(tokens, show_progress=False)
        return cls(retriever, settings)

    def save(self, directory: Path) -> None:
        self.retriever.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path, settings: dict | None = None) -> BM25Index:
        return cls(_bm25s().BM25.load(str(directory), show_progress=False), settings or cls.default_settings())

    def __len__(self) -> int:
        return int(self.retriever.scores["num_docs"])

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows (int64) and scores (float32) of each query's k best documents, best first."""
        rows, scores = self.retriever.retrieve(tokenize(queries, self.settings), k=k, show_progress=False)
        return np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)

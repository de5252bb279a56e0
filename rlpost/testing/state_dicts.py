"""Random HF state dicts from model dims alone: converter and resharding tests need tensors, not models."""

from __future__ import annotations

import torch

from rlpost.models.weights import ModelDims, hf_names_for_rank, hf_shape


def random_hf_state(dims: ModelDims, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*hf_shape(name, dims), generator=g) for name in hf_names_for_rank(dims, 1, 1, 0, 0)}

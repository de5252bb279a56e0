"""The dtypes rlpost trains and serves in, by the names configs, SGLang's API and torch use."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """'bfloat16' or 'torch.bfloat16' -> torch.bfloat16; anything else is a ValueError naming the choices."""
    key = str(name).removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

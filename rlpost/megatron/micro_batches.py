"""Micro-batches for the pipeline schedule: a fixed number of samples, or as many as fit a token budget.

Sequences are right-padded; a micro-batch costs (samples x its longest sequence) tokens, so packing by budget sorts
by length and each micro-batch is trimmed to its own longest sequence instead of the batch's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def budget_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Sample indices grouped so that len(group) * max(length in group) <= max_tokens, longest first."""
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > max_tokens:
            raise ValueError(f"sample {i} has {lengths[i]} tokens, more than max_tokens_per_micro_batch = {max_tokens}")
        if current and max(longest, lengths[i]) * (len(current) + 1) > max_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    if current:
        groups.append(current)
    return groups


def fixed_groups(n: int, micro_batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + micro_batch_size, n))) for i in range(0, n, micro_batch_size)]


def make_micro_batches(tensors: dict[str, torch.Tensor], lengths: Sequence[int], micro_batch_size: int | None = None,
                       max_tokens: int | None = None) -> tuple[list[dict[str, torch.Tensor]], list[list[int]]]:
    """Split [n, s] / [n, s-1] tensors into micro-batches trimmed to their longest sequence; returns them with
    the sample indices of each, so per-sample outputs can be put back in order."""
    if (micro_batch_size is None) == (max_tokens is None):
        raise ValueError("give exactly one of micro_batch_size and max_tokens")
    n = len(lengths)
    groups = budget_groups(lengths, max_tokens) if max_tokens is not None else fixed_groups(n, micro_batch_size)
    width = tensors["input_ids"].shape[1]
    out = []
    for group in groups:
        keep = max(lengths[i] for i in group)
        idx = torch.tensor(group)
        # the last dimension is the sequence's ([n, s], [n, s-1], mRoPE positions [n, 3, s])
        out.append({k: v[idx][..., : keep - (width - v.shape[-1])] for k, v in tensors.items()})
    return out, groups


def attach_images(micro_batches: list[dict[str, torch.Tensor]], groups: list[list[int]],
                  multi_modal_inputs: Sequence[dict]) -> None:
    """Each micro-batch gets its samples' images, concatenated in its sample order (the order the model splices
    image features into image tokens); a micro-batch with no image gets none."""
    for mb, group in zip(micro_batches, groups):
        present = [multi_modal_inputs[i] for i in group if multi_modal_inputs[i]]
        if present:
            mb["pixel_values"] = torch.cat([m["pixel_values"] for m in present])
            mb["image_grid_thw"] = torch.cat([m["image_grid_thw"] for m in present])


def restore(per_group: list[torch.Tensor], groups: list[list[int]], width: int, fill: float = 0.0) -> torch.Tensor:
    """Per-micro-batch outputs [g, w_g] back to one [n, width] tensor in the original sample order."""
    n = sum(len(g) for g in groups)
    out = per_group[0].new_full((n, width), fill)
    for values, group in zip(per_group, groups):
        out[torch.tensor(group), : values.shape[1]] = values
    return out

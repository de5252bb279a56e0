"""Qwen2.5-VL's multimodal RoPE positions, computed by rlpost for any layout of images in a sequence (several
images, images returned by tools in later turns), so training, the embedded engine and resharding checks all use one
definition.

Each image is a run of `<|image_pad|>` tokens, (t x h/m x w/m) of them for its patch grid (t, h, w) and spatial
merge m, laid out row-major. Its tokens take positions (start + t_i, start + h_i, start + w_i) in the (temporal,
height, width) sections; a text token takes the same position in all three. After an image the next position is
start + max(t, h/m, w/m); after a text token, one more than its own. A still image has t = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mrope_positions(input_ids: Sequence[int] | torch.Tensor, image_grid_thw: Sequence[Sequence[int]] | torch.Tensor,
                    image_token_id: int, spatial_merge_size: int,
                    image_slots: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
    """[3, len(input_ids)] positions; images are taken from image_grid_thw in order of appearance.

    Grids are matched to runs by their token counts, so two images with no text between them are still two images;
    a count that does not add up is an error, not a silent shift of every later position. image_slots (default: every
    image token) says which image tokens hold an image: a policy may sample `<|image_pad|>` itself, and such a token
    is text."""
    ids = torch.as_tensor(input_ids).tolist()
    slots = (torch.as_tensor(ids) == image_token_id if image_slots is None else torch.as_tensor(image_slots)).tolist()
    grids = [tuple(int(x) for x in g) for g in torch.as_tensor(image_grid_thw).reshape(-1, 3).tolist()]
    out = torch.empty(3, len(ids), dtype=torch.long)
    pos, i, image = 0, 0, 0
    while i < len(ids):
        if not slots[i]:
            out[:, i] = pos
            pos, i = pos + 1, i + 1
            continue
        if image >= len(grids):
            raise ValueError(f"image token at index {i} belongs to no image: only {len(grids)} image grid(s) given")
        t, h, w = grids[image]
        h, w = h // spatial_merge_size, w // spatial_merge_size
        n = t * h * w
        if slots[i:i + n] != [True] * n:
            raise ValueError(f"image {image} (grid {grids[image]}) needs {n} image tokens from index {i}, the "
                             f"sequence has {_run(slots, i)}")
        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
        out[:, i:i + n] = grid.reshape(3, -1) + pos
        pos, i, image = pos + max(t, h, w), i + n, image + 1
    if image != len(grids):
        raise ValueError(f"{len(grids)} image grid(s) given, the sequence has image tokens for {image}")
    return out


def _run(slots: list[bool], start: int) -> int:
    end = start
    while end < len(slots) and slots[end]:
        end += 1
    return end - start


def image_tokens(grid_thw: Sequence[int], spatial_merge_size: int) -> int:
    """How many `<|image_pad|>` tokens one image of this patch grid takes in the language model."""
    t, h, w = (int(x) for x in grid_thw)
    return t * (h // spatial_merge_size) * (w // spatial_merge_size)


def batch_mrope_positions(input_ids: torch.Tensor, lengths: Sequence[int], image_grids: Sequence,
                          image_token_id: int, spatial_merge_size: int, image_slots: torch.Tensor) -> torch.Tensor:
    """[n, 3, s] for right-padded rows: each row's first lengths[i] tokens with its own grids (None or empty: no
    images) and image slots [n, s]; padding continues the row's last position, as text would (the causal mask keeps
    it out of real positions)."""
    n, width = input_ids.shape
    out = torch.empty(n, 3, width, dtype=torch.long)
    for i, (length, grids) in enumerate(zip(lengths, image_grids, strict=True)):
        grids = torch.zeros(0, 3, dtype=torch.long) if grids is None else grids
        out[i, :, :length] = mrope_positions(input_ids[i, :length], grids, image_token_id, spatial_merge_size,
                                             image_slots[i, :length])
        last = out[i, :, length - 1].max() if length else -1
        out[i, :, length:] = torch.arange(1, width - length + 1) + last
    return out

"""What a Qwen2.5-VL prompt's images become: pixel patches and grids from the model directory's image processor, and
the prompt's image tokens expanded to one per merged patch. The data loader, the trainer and the embedded engine all
go through these, so a prompt has the same tokens and pixels wherever it is read.

A prompt marks each image with one `<|image_pad|>` (what the chat template writes, and what SGLang expands), or
already holds each image's full run of pads (a trainer's token ids); any other count is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def load_image_processor(model_dir: str | Path):
    """The Qwen2-VL image processor of a model directory, PIL implementation (the torchvision one is not needed)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if not (Path(model_dir) / "preprocessor_config.json").is_file():
        raise ValueError(f"vision-language model '{model_dir}' has no preprocessor_config.json (the image "
                         f"processor's settings: patch size, min/max pixels, normalisation)")
    return Qwen2VLImageProcessorPil.from_pretrained(model_dir)


def process_images(processor, images: Sequence) -> tuple[list[torch.Tensor], list[tuple[int, int, int]]]:
    """RGB PIL images -> per image (its patches [t*h*w, channels*temporal*patch*patch], its grid (t, h, w))."""
    if not images:
        return [], []
    out = processor(images=list(images), return_tensors="pt")
    grids = [tuple(int(x) for x in g) for g in out["image_grid_thw"].tolist()]
    return list(out["pixel_values"].split([t * h * w for t, h, w in grids])), grids


def expand_image_pads(input_ids: Sequence[int], tokens_per_image: Sequence[int], image_token_id: int) -> list[int]:
    """Each image's single pad -> its run; ids that already hold every run are returned as they are."""
    pads = sum(t == image_token_id for t in input_ids)
    if pads == len(tokens_per_image):
        runs, out = iter(tokens_per_image), []
        for t in input_ids:
            out += [t] * next(runs) if t == image_token_id else [t]
        return out
    if tokens_per_image and pads == sum(tokens_per_image):
        return list(input_ids)
    raise ValueError(f"the prompt has {pads} image token(s) for {len(tokens_per_image)} image(s): mark each image "
                     f"with one <|image_pad|> (or its full run of {list(tokens_per_image)} pads)")


def collapse_image_pads(input_ids: Sequence[int], image_token_id: int) -> list[int]:
    """Each run of image tokens -> one: the form SGLang expands (with SGLANG_MM_AVOID_RETOKENIZE, keeping the other
    ids as they are). A run is one image because the chat template puts <|vision_start|> and <|vision_end|> around
    each."""
    out = []
    for i, t in enumerate(input_ids):
        if t != image_token_id or i == 0 or input_ids[i - 1] != image_token_id:
            out.append(t)
    return out

"""Images of generation requests: SGLang's `image_data` items decoded, run through the model's image processor, and
the prompt's image tokens expanded to one per merged patch (rlpost.models.image_inputs), with mRoPE positions for
the expanded prompt.

Image content, not the pad tokens, identifies an image to the prefix cache: each image's tokens are keyed by a
digest of its pixels, so two prompts with the same text and different images never share keys/values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from rlpost.models.image_inputs import expand_image_pads, load_image_processor, process_images
from rlpost.models.mrope import image_tokens, mrope_positions
from rlpost.rollout.engine.request import RequestError

_DIGEST_BITS = 60  # keys stay negative int64s: they never equal a real token id


@dataclass(eq=False)
class ImageInput:
    pixel_values: torch.Tensor  # [patches, channels x temporal patch x patch x patch]
    grid_thw: tuple[int, int, int]
    tokens: int  # image tokens in the language model
    key: int  # stands in for each of its tokens in prefix-cache keys


def decode_image(item) -> object:
    """One `image_data` item: a data URI, a base64 string, or a path to a file on this machine (http(s) URLs are
    not fetched: the engine makes no outgoing requests)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(item, str) or not item:
        raise RequestError(f"image_data items must be non-empty strings (data URI, base64 or path), got "
                           f"{type(item).__name__}")
    if item.startswith(("http://", "https://")):
        raise RequestError("image_data URLs are not fetched by the embedded engine; send a data URI, base64 or a "
                           "local path")
    try:
        if item.startswith("data:"):
            data = base64.b64decode(item.partition(",")[2], validate=True)
        elif Path(item.removeprefix("file://")).is_file():
            data = Path(item.removeprefix("file://")).read_bytes()
        else:
            data = base64.b64decode(item, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise RequestError(f"image_data item is not a readable image (data URI, base64 or path): "
                           f"{type(e).__name__}: {e}") from None


class ImagePreparer:
    """The model directory's image processor and the expansion of a prompt's image pads."""

    def __init__(self, model_path: str | Path, image_token_id: int, merge: int):
        self.processor = load_image_processor(model_path)
        self.image_token_id, self.merge = image_token_id, merge

    def images(self, items: list) -> list[ImageInput]:
        patches, grids = process_images(self.processor, [decode_image(item) for item in items])
        result = []
        for pixels, grid in zip(patches, grids):
            digest = hashlib.blake2b(pixels.numpy().tobytes() + bytes(str(grid), "ascii"), digest_size=8).digest()
            key = -1 - (int.from_bytes(digest, "little") >> (64 - _DIGEST_BITS))
            result.append(ImageInput(pixels, grid, image_tokens(grid, self.merge), key))
        return result

    def expand(self, input_ids: list[int], images: list[ImageInput]) -> tuple[list[int], torch.Tensor]:
        """The prompt with each image's run of pads, and its mRoPE positions [3, len]."""
        try:
            expanded = expand_image_pads(input_ids, [im.tokens for im in images], self.image_token_id)
            positions = mrope_positions(expanded, [im.grid_thw for im in images], self.image_token_id, self.merge)
        except ValueError as e:
            raise RequestError(str(e)) from None
        return expanded, positions

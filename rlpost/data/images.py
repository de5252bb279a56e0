"""Images of vision-language rows: placeholders counted against images, images decoded and size-checked, with
errors that name the file, row and field.

A row's text marks where each image goes with `<image>` (verl's convention); the messages are rewritten into content
parts, `[{"type": "image"}, {"type": "text", "text": ...}]`, in the order the placeholders appear, which is what
Qwen2.5-VL's chat template renders as `<|vision_start|><|image_pad|><|vision_end|>`.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlpost.data.schema import RowError

PLACEHOLDER = "<image>"
_SPLIT = re.compile(r"(<image>|<video>)")
MAX_ASPECT_RATIO = 200  # Qwen2.5-VL's resizing refuses images more elongated than this
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb bound: larger images are refused, not decoded


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def escape_vision_tokens(text: str) -> str:
    """Text that spells a vision token (a tool echoing what the policy wrote, say) with the bars dropped, so it
    tokenises as text and cannot pose as an image: the servers expand every <|image_pad|> they get."""
    for token in VISION_TOKENS:
        text = text.replace(token, token.replace("|", ""))
    return text


def count_placeholders(messages: list[dict]) -> int:
    return sum(m["content"].count(PLACEHOLDER) for m in messages if isinstance(m.get("content"), str))


def to_content_parts(messages: list[dict], source: str, row: int, prompt_key: str) -> list[dict]:
    """Messages with `<image>` placeholders -> messages whose content is a list of image and text parts."""
    out = []
    for i, m in enumerate(messages):
        content = m["content"]
        if not isinstance(content, str):
            out.append(m)
            continue
        if "<video>" in content:
            raise RowError(source, row, f"{prompt_key}[{i}].content", "has a <video> placeholder; videos are not "
                           "supported")
        parts = [{"type": "image"} if piece == PLACEHOLDER else {"type": "text", "text": piece}
                 for piece in _SPLIT.split(content) if piece]
        out.append({**m, "content": parts} if PLACEHOLDER in content else m)
    return out


def check_placeholders(messages: list[dict], n_images: int, source: str, row: int, prompt_key: str,
                       image_key: str) -> None:
    n = count_placeholders(messages)
    if n != n_images:
        raise RowError(source, row, image_key, f"holds {n_images} image(s) but '{prompt_key}' has {n} "
                       f"'{PLACEHOLDER}' placeholder(s); each image needs one placeholder where it goes")


def image_bytes(entry: Any, source: str, row: int, field: str, base_dir: Path | None = None) -> bytes:
    """A row image's encoded bytes ({bytes}, {path} or a path string; relative paths are relative to the data
    file)."""
    data, path = (entry.get("bytes"), entry.get("path")) if isinstance(entry, dict) else (None, entry)
    if data is not None:
        return data
    file = Path(path)
    if not file.is_absolute() and base_dir is not None:
        file = base_dir / file
    try:
        return file.read_bytes()
    except OSError as e:
        raise RowError(source, row, field, f"is not a readable image (file '{path}'): {type(e).__name__}: {e}"
                       ) from None


def open_image(data: bytes):
    """Encoded bytes -> an RGB PIL image, size-checked; a ValueError says what is wrong with it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"is {width}x{height} pixels, more than {MAX_PIXELS}")
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                raise ValueError(f"is {width}x{height} pixels: an aspect ratio above {MAX_ASPECT_RATIO} cannot be "
                                 f"resized for the vision encoder")
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"is not a readable image: {type(e).__name__}: {e}") from None


def decode(data: bytes, source: str, row: int, field: str):
    """A row's image, opened; errors name the file, row and field."""
    try:
        return open_image(data)
    except ValueError as e:
        raise RowError(source, row, field, str(e)) from None


def encoded_image(image: Any) -> bytes:
    """An image as tools hand them over (a PIL image, encoded bytes, {bytes} or {path}, a path, a file:// or data
    URI) -> its encoded bytes; a ValueError says, after "as", what it got instead."""
    if isinstance(image, dict):
        image = image.get("bytes") if image.get("bytes") is not None else image.get("path")
    if hasattr(image, "save"):  # a PIL image
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()
    if isinstance(image, bytes):
        return image
    if isinstance(image, str) and image.startswith("data:"):
        return base64.b64decode(image.partition(",")[2])
    if isinstance(image, str | Path):
        path = Path(str(image).removeprefix("file://"))
        try:
            return path.read_bytes()
        except OSError as e:
            raise ValueError(f"as the file '{image}', which cannot be read: {e}") from None
    raise ValueError(f"as {type(image).__name__}; expected a PIL image, encoded bytes, {{'bytes': ...}}, "
                     f"{{'path': ...}}, a file path or a data URI")


def tool_image(image: Any, tool: str, index: int) -> bytes:
    """An image a tool returned (ToolResponse.image) -> its encoded bytes, checked as a row's image is."""
    what = f"tool '{tool}' returned image {index}"
    try:
        data = encoded_image(image)
    except ValueError as e:
        raise ValueError(f"{what} {e}") from None
    try:
        open_image(data)
    except ValueError as e:
        raise ValueError(f"{what}, which {e}") from None
    return data


def data_uri(data: bytes) -> str:
    """How an image travels to a rollout server (SGLang's image_data accepts data URIs)."""
    return "data:image;base64," + base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class PromptVision:
    """What a vision-language model makes of a prompt's images: its image processor, image token and merge size."""

    processor: Any
    image_token_id: int
    merge: int

    @classmethod
    def for_model(cls, model_dir: str | Path) -> PromptVision | None:
        """None for a text-only model."""
        from transformers import AutoConfig

        from rlpost.models.image_inputs import load_image_processor
        from rlpost.models.vision import is_vision_language

        config = AutoConfig.from_pretrained(model_dir)
        if not is_vision_language(config):
            return None
        return cls(load_image_processor(model_dir), int(config.image_token_id),
                   int(config.vision_config.spatial_merge_size))

    def tokens_per_image(self, images: list) -> list[int]:
        """From each image's size by the processor's own resize rule, without computing its pixels."""
        return [self.processor.get_number_of_image_patches(im.height, im.width) // self.merge ** 2 for im in images]

    def model_inputs(self, encoded: list[bytes]) -> dict:
        """{pixel_values, image_grid_thw} of one sample's images (encoded, already checked when the dataset was
        read; {} without images): what the trainer's model reads with its token ids."""
        from PIL import Image

        from rlpost.models.image_inputs import process_images

        if not encoded:
            return {}
        patches, grids = process_images(self.processor, [Image.open(io.BytesIO(d)).convert("RGB") for d in encoded])
        return {"pixel_values": torch.cat(patches), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}

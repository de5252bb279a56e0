"""Images of vision-language rows: placeholders counted against images, images decoded and size-checked, with
errors that name the file, row and field.

A row's text marks where each image goes with `<image>` (verl's convention); the messages are rewritten into content
parts, `[{"type": "image"}, {"type": "text", "text": ...}]`, in the order the placeholders appear, which is what
Qwen2.5-VL's chat template renders as `<|vision_start|><|image_pad|><|vision_end|>`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from rlpost.data.schema import RowError

PLACEHOLDER = "<image>"
_SPLIT = re.compile(r"(<image>|<video>)")
MAX_ASPECT_RATIO = 200  # Qwen2.5-VL's resizing refuses images more elongated than this
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb bound: larger images are refused, not decoded


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


def load_image(entry: Any, source: str, row: int, field: str, base_dir: Path | None = None):
    """One row image ({bytes}, {path} or a path string; relative paths are relative to the data file) -> RGB."""
    from PIL import Image

    data, path = (entry.get("bytes"), entry.get("path")) if isinstance(entry, dict) else (None, entry)
    origin = "its bytes" if data is not None else f"file '{path}'"
    try:
        if data is None:
            file = Path(path)
            if not file.is_absolute() and base_dir is not None:
                file = base_dir / file
            data = file.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise RowError(source, row, field, f"is {width}x{height} pixels, more than {MAX_PIXELS}")
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                raise RowError(source, row, field, f"is {width}x{height} pixels: an aspect ratio above "
                               f"{MAX_ASPECT_RATIO} cannot be resized for the vision encoder")
            return image.convert("RGB")
    except RowError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise RowError(source, row, field, f"is not a readable image ({origin}): {type(e).__name__}: {e}") from None

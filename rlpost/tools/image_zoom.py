"""Zoom in on the trajectory's image (verl's ImageZoomInTool): the model names a box, the tool answers with that
crop as a new image, so a vision-language policy can look closer before it answers.

The image comes from the row's tools_kwargs (`create_kwargs.image`: a PIL image, a path, a data URI or {bytes}).
Boxes are pixel coordinates [x1, y1, x2, y2] of that image, clamped to it; a box narrower than MIN_SIDE pixels is
grown about its centre, as verl's tool does. Config keys are verl's: crops run in threads, `num_workers` at a time
per process and `rate_limit` at a time for the job (this process alone without `enable_global_rate_limit`), each
within `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Any

from rlpost.data.images import encoded_image, open_image
from rlpost.tools.base import BaseTool, ToolResponse, tool_config
from rlpost.tools.http import is_int, is_number
from rlpost.tools.rate_limit import in_flight
from rlpost.tools.schema import ToolSchema

MIN_SIDE = 28  # one merged 2x2 patch of 14-pixel patches: the smallest crop Qwen2.5-VL sees as more than a dot
MAX_ASPECT_RATIO = 100
FAILED_CALL_REWARD = -0.05  # verl's: an invalid box costs a little, so the policy learns to name real regions
DEFAULTS = {"num_workers": 20, "rate_limit": 50, "enable_global_rate_limit": True, "timeout": 30}


def _valid(left: float, top: float, right: float, bottom: float) -> bool:
    width, height = right - left, bottom - top
    return width > 0 and height > 0 and max(width, height) / min(width, height) <= MAX_ASPECT_RATIO


def fit_box(box: list[float], width: int, height: int) -> list[float] | None:
    """The box clamped to the image and grown to MIN_SIDE about its centre when smaller (scaled down to fit the
    image, shifted inside it); None when no valid crop of at least MIN_SIDE x MIN_SIDE results."""
    left, top = max(0.0, float(box[0])), max(0.0, float(box[1]))
    right, bottom = min(float(width), float(box[2])), min(float(height), float(box[3]))
    if not _valid(left, top, right, bottom):
        return None
    w, h = right - left, bottom - top
    if min(w, h) < MIN_SIDE:
        scale = MIN_SIDE / min(w, h)
        w, h = w * scale, h * scale
        shrink = min(1.0, width / w, height / h)
        w, h = w * shrink, h * shrink
        x = min(max(0.0, (left + right - w) / 2), width - w)
        y = min(max(0.0, (top + bottom - h) / 2), height - h)
        left, top, right, bottom = math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)
    if not _valid(left, top, right, bottom) or min(math.floor(right) - math.floor(left),
                                                   math.floor(bottom) - math.floor(top)) < MIN_SIDE:
        return None
    return [left, top, right, bottom]


class ImageZoomInTool(BaseTool):
    CHECKS = {"num_workers": (lambda v: is_int(v) and v > 0, "an integer > 0"),
              "rate_limit": (lambda v: is_int(v) and v > 0, "an integer > 0 (crops in flight for the job)"),
              "timeout": (lambda v: is_number(v) and v > 0, "a number of seconds > 0")}

    def __init__(self, config: dict, tool_schema: ToolSchema | None):
        super().__init__(config, tool_schema)
        self.settings = tool_config(config, DEFAULTS, f"tool '{self.name}'")
        for key, (ok, expected) in self.CHECKS.items():
            if not ok(self.settings[key]):
                raise ValueError(f"tool '{self.name}': {key} must be {expected}, got {self.settings[key]!r}")
        self._slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per event loop, as asyncio wants
        self._images: dict[str, Any] = {}

    def get_openai_tool_schema(self) -> ToolSchema:
        return ToolSchema("image_zoom_in_tool", "Zoom in on a region of the image: crops it to a bounding box.", {
            "type": "object", "properties": {
                "bbox_2d": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                            "description": "The region as [x1, y1, x2, y2] in pixels: top-left and bottom-right."},
                "label": {"type": "string", "description": "What is in the region (optional)."}},
            "required": ["bbox_2d"]})

    async def create(self, instance_id: str | None = None, image: Any = None, **kwargs) -> tuple[str, ToolResponse]:
        instance_id, response = await super().create(instance_id)
        if image is None:
            raise ValueError(f"tool '{self.name}' needs the image to zoom into: set the row's "
                             f"extra_info.tools_kwargs.{self.name}.create_kwargs.image")
        try:
            self._images[instance_id] = open_image(encoded_image(image))
        except ValueError as e:
            raise ValueError(f"tool '{self.name}': create_kwargs.image is not a readable image: {e}") from None
        return instance_id, response

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs):
        box, label = parameters.get("bbox_2d"), parameters.get("label") or ""
        if not isinstance(box, list) or len(box) != 4 or not all(is_number(v) for v in box):
            return (ToolResponse(text="Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2]."),
                    FAILED_CALL_REWARD, {"success": False})
        image = self._images[instance_id]
        fitted = fit_box(box, *image.size)
        if fitted is None:
            return (ToolResponse(text=f"Error: the box {box} is invalid or gives a crop smaller than "
                                      f"{MIN_SIDE}x{MIN_SIDE} pixels of the {image.width}x{image.height} image."),
                    FAILED_CALL_REWARD, {"success": False})
        s = self.settings
        slots = self._slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(s["num_workers"]))
        async with slots, in_flight(f"tool:{self.name}", s["rate_limit"], shared=s["enable_global_rate_limit"]):
            crop = await asyncio.wait_for(asyncio.to_thread(image.crop, fitted), s["timeout"])
        text = f"Zoomed in on the image to the region {box}" + (f" with label {label}." if label else ".")
        return ToolResponse(text=text, image=[crop]), 0.0, {"success": True}

    async def release(self, instance_id: str, **kwargs) -> None:
        self._images.pop(instance_id, None)

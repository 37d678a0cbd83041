"""Screenshot preparation and the ONE coordinate conversion every provider adapter shares.

Coordinate spaces (``ModelSpec.coordinates``, ``/work/shared/PROVIDERS.md``):

- ``pixels``: pixels of the screenshot sent (OpenAI, Anthropic). The screenshot is scaled down first when the
  spec sets ``max_pixels`` / ``max_long_edge`` (Anthropic: ~1.15 MP, 1568 px a side); model coordinates are scaled
  back by ``viewport / sent`` per axis.
- ``normalized``: 0-999 or 0-1000 (Northstar, UI-TARS 1.0, Qwen3-VL): ``px = int(v / 1000 * viewport)``.
- ``smart-resize``: pixels of the screenshot resized by Qwen's ``smart_resize`` (sides multiples of 28, area within
  ``[min_pixels, max_pixels]``; UI-TARS 1.5, Qwen2.5-VL). The screenshot is resized to exactly that size before
  sending, so the server's own resize is a no-op and the mapping is the ``pixels`` one.

:meth:`Screen.to_viewport` is the only place model coordinates become viewport CSS pixels.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from shared.models import ModelSpec
from worker.computer import Observation
from worker.providers.answers import AnswerError, point_of

JPEG_QUALITY = 85
"""Quality of screenshots re-encoded after scaling (unscaled ones are sent as the computer took them)."""


@dataclass(frozen=True)
class Frame:
    """One screenshot as sent to the model. ``width`` x ``height``: the image sent (pixels); ``viewport_*``: the
    screen it was taken of (CSS pixels); ``original``: the viewport-size JPEG (for zoom crops)."""

    image: bytes
    mime: str
    width: int
    height: int
    viewport_width: int
    viewport_height: int
    original: bytes

    def base64(self) -> str:
        """The image as base64 text (Anthropic's ``source.data``)."""
        return base64.b64encode(self.image).decode("ascii")

    def data_url(self) -> str:
        """The image as a ``data:image/jpeg;base64,...`` URL (Responses API and chat completions)."""
        return f"data:{self.mime};base64,{self.base64()}"


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
    """Qwen2.5-VL's ``smart_resize`` (qwen-vl-utils): ``(height, width)`` rounded to multiples of ``factor`` with
    the area kept within ``[min_pixels, max_pixels]`` and the aspect ratio about the same.

    Raises:
        ValueError: an aspect ratio over 200.
    """
    if max(height, width) / max(min(height, width), 1) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} is over 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fit_within(width: int, height: int, max_pixels: int | None, max_long_edge: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down (aspect kept) so the area is at most ``max_pixels`` and the longest side at
    most ``max_long_edge``; unchanged when it already fits."""
    scale = 1.0
    if max_pixels and width * height > max_pixels:
        scale = min(scale, math.sqrt(max_pixels / (width * height)))
    if max_long_edge and max(width, height) > max_long_edge:
        scale = min(scale, max_long_edge / max(width, height))
    if scale >= 1.0:
        return width, height
    return max(1, int(width * scale)), max(1, int(height * scale))


def _resize_jpeg(jpeg: bytes, size: tuple[int, int]) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as img:
        out = io.BytesIO()
        img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


class Screen:
    """Prepares screenshots for one model and converts its coordinates (see the module docstring)."""

    def __init__(self, spec: ModelSpec):
        self.coordinates = spec.coordinates
        self.max_pixels = spec.max_pixels
        self.min_pixels = spec.min_pixels
        self.max_long_edge = spec.max_long_edge

    def sent_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a ``width`` x ``height`` screenshot is sent at."""
        if self.coordinates == "smart-resize":
            h, w = smart_resize(height, width, min_pixels=self.min_pixels or 56 * 56,
                                max_pixels=self.max_pixels or 16384 * 28 * 28)
            return w, h
        return fit_within(width, height, self.max_pixels, self.max_long_edge)

    def frame(self, observation: Observation) -> Frame:
        """The observation's screenshot as the model gets it (scaled with Pillow when the spec wants it)."""
        w, h = self.sent_size(observation.width, observation.height)
        image = observation.screenshot
        if (w, h) != (observation.width, observation.height):
            image = _resize_jpeg(image, (w, h))
        return Frame(image, "image/jpeg", w, h, observation.width, observation.height, observation.screenshot)

    def to_viewport(self, frame: Frame, x: float, y: float) -> tuple[int, int]:
        """Model coordinates -> viewport CSS pixels (rounded down; a value on the far edge lands on the last pixel).
        Points outside the screen are returned as they are: the computer refuses them with a clear error."""
        if self.coordinates == "normalized":
            px, py = x / 1000 * frame.viewport_width, y / 1000 * frame.viewport_height
        else:
            px, py = x * frame.viewport_width / frame.width, y * frame.viewport_height / frame.height
        ix, iy = math.floor(px), math.floor(py)
        return (frame.viewport_width - 1 if ix == frame.viewport_width else ix,
                frame.viewport_height - 1 if iy == frame.viewport_height else iy)

    def from_viewport(self, frame: Frame, px: int, py: int) -> tuple[int, int]:
        """Viewport CSS pixels -> model coordinates (the inverse of :meth:`to_viewport`, for answers such as
        Anthropic's ``cursor_position``)."""
        if self.coordinates == "normalized":
            return round(px / frame.viewport_width * 1000), round(py / frame.viewport_height * 1000)
        return round(px * frame.width / frame.viewport_width), round(py * frame.height / frame.viewport_height)

    def crop(self, frame: Frame, region: Sequence[float]) -> Frame:
        """The ``[x0, y0, x1, y1]`` region (model coordinates) of the viewport screenshot, at viewport resolution
        (Anthropic's ``zoom``). Raises AnswerError for a region that is not four numbers forming a box."""
        if len(region) != 4:
            raise AnswerError(f"zoom region must be [x0, y0, x1, y1], got {region!r}")
        x0, y0 = self.to_viewport(frame, *point_of(region[:2]))
        x1, y1 = self.to_viewport(frame, *point_of(region[2:]))
        box = (max(0, x0), max(0, y0), min(frame.viewport_width, x1), min(frame.viewport_height, y1))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise AnswerError(f"zoom region {list(region)} is empty on screen")
        with Image.open(io.BytesIO(frame.original)) as img:
            out = io.BytesIO()
            img.convert("RGB").crop(box).save(out, "JPEG", quality=JPEG_QUALITY)
        w, h = box[2] - box[0], box[3] - box[1]
        return Frame(out.getvalue(), "image/jpeg", w, h, w, h, out.getvalue())

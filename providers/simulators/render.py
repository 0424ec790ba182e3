"""The pictures both simulators serve: cheap, deterministic, and provably derived from the inputs.

Generate: a picture that depends only on (seed, prompt): a four-corner colour gradient plus a few shapes,
with the seed and prompt written in the top-left corner. Same seed and prompt, same bytes.

Edit: the canvas is split into k equal-width vertical bands, k = the number of input images, in input
order; band i is input image i scaled to cover the band (centre-cropped, aspect kept). Band i spans
x in [i*W//k, (i+1)*W//k). Nothing is drawn over the bands except a small label in the top-left corner,
so the pixel at the centre of band i, (x = (2i+1)*W/(2k), y = H/2), is input image i's centre pixel.
End-to-end tests rely on this: send k solid-colour PNGs and check the colour at the centre of each band
(allow a small tolerance for JPEG/WebP output).

NSFW (simulated): a solid black image, like fal's safety checker returns.

Rendering is CPU work: callers run `render_image` in a worker thread (`RenderCache.get` does this) and
cache the encoded bytes, because clients often fetch the same URL more than once.
"""

from __future__ import annotations

import asyncio
import functools
import io
import random
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from types import MappingProxyType

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

# Encoder names Pillow uses, keyed by every file extension / format name the providers use.
PIL_FORMATS = MappingProxyType({"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"})
CONTENT_TYPES = MappingProxyType({"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"})
# Input pixels that cannot be decoded (truncated data that passed the header check) render as this grey.
UNREADABLE_INPUT_FILL = (128, 128, 128)


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """Everything that determines one output image's bytes."""

    width: int
    height: int
    format: str  # a key of PIL_FORMATS
    seed: int
    prompt: str
    inputs: tuple[bytes, ...] = ()  # edit reference images, in order; empty for generate
    quality: int = 90  # JPEG/WebP quality; ignored for PNG
    black: bool = False  # the simulated NSFW case


def render_image(spec: RenderSpec) -> bytes:
    """Draw and encode one image (CPU-bound: call it off the event loop)."""
    if spec.black:
        canvas = Image.new("RGB", (spec.width, spec.height), (0, 0, 0))
    elif spec.inputs:
        canvas = _edit_canvas(spec)
    else:
        canvas = _generated_canvas(spec)
    return encode(canvas, spec.format, spec.quality)


def encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """Encode with settings chosen for speed: these images are test fixtures, not art."""
    out = io.BytesIO()
    pil_format = PIL_FORMATS[fmt]
    if pil_format == "PNG":
        image.save(out, "PNG", compress_level=1)
    elif pil_format == "JPEG":
        image.save(out, "JPEG", quality=max(1, min(quality, 95)))
    else:
        image.save(out, "WEBP", quality=max(1, min(quality, 100)), method=0)
    return out.getvalue()


def _rgb(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _generated_canvas(spec: RenderSpec) -> Image.Image:
    # crc32, not hash(): str hashes are salted per process, and the picture must be stable across runs.
    rng = random.Random((spec.seed << 32) ^ zlib.crc32(spec.prompt.encode()))
    corners = Image.new("RGB", (2, 2))
    corners.putdata([_rgb(rng) for _ in range(4)])
    # Upscaling a 2x2 image bilinearly is the cheapest smooth gradient Pillow can make.
    canvas = corners.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    w, h = spec.width, spec.height
    for _ in range(rng.randint(3, 6)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = min(w, x0 + rng.randint(w // 10 + 1, w // 3 + 2)), min(h, y0 + rng.randint(h // 10 + 1, h // 3 + 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=_rgb(rng), outline=(0, 0, 0))
    _label(draw, f"seed {spec.seed}: {spec.prompt[:60]}")
    return canvas


def _edit_canvas(spec: RenderSpec) -> Image.Image:
    w, h = spec.width, spec.height
    k = len(spec.inputs)
    canvas = Image.new("RGB", (w, h))
    for i, data in enumerate(spec.inputs):
        left, right = i * w // k, (i + 1) * w // k
        if right <= left:
            continue
        canvas.paste(_band(data, (right - left, h)), (left, 0))
    _label(ImageDraw.Draw(canvas), f"edit {k} image(s)")
    return canvas


def _band(data: bytes, size: tuple[int, int]) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as source:
            rgb = source.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return Image.new("RGB", size, UNREADABLE_INPUT_FILL)
    return ImageOps.fit(rgb, size, Image.Resampling.BILINEAR)


def _label(draw: ImageDraw.ImageDraw, text: str) -> None:
    # Top-left corner only: band centres must stay untouched (see the module docstring).
    draw.text((4, 2), text, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))


class RenderCache:
    """Renders images in worker threads, shares one render between concurrent requests, keeps a few."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._done: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._pending: dict[Hashable, asyncio.Future[bytes]] = {}

    async def get(self, key: Hashable, spec: RenderSpec) -> bytes:
        """The encoded image for `key`, rendering `spec` in a worker thread if it is not cached."""
        if (cached := self._done.get(key)) is not None:
            self._done.move_to_end(key)
            return cached
        pending = self._pending.get(key)
        if pending is None:
            # Not tied to this request: a client that goes away must not waste a render others wait for.
            pending = asyncio.get_running_loop().run_in_executor(None, render_image, spec)
            self._pending[key] = pending
            pending.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(pending)

    def _finished(self, key: Hashable, future: asyncio.Future[bytes]) -> None:
        self._pending.pop(key, None)
        if not future.cancelled() and future.exception() is None:
            self._store(key, future.result())

    def _store(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        self._done[key] = data
        self._bytes += len(data)
        while len(self._done) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._done.popitem(last=False)
            self._bytes -= len(evicted)

    def clear(self) -> None:
        self._done.clear()
        self._bytes = 0
